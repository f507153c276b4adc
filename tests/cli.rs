//! The `ternmq` program, run as a user would.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn ternmq(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decode_prints_each_packet_of_a_stream() {
    // PINGRESP, then a v5 PUBACK with reason 0x10 (No matching subscribers).
    let (code, out, err) = ternmq(&["decode", "d000", "40 03 00 07 10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("@0: PingResp"), "{out}");
    assert!(out.contains("@2: PubAck"), "{out}");
    assert!(out.contains("NoMatchingSubscribers"), "{out}");
}

#[test]
fn decode_as_server_takes_the_version_from_connect() {
    // A 3.1.1 CONNECT, then a PUBLISH decoded as 3.1.1 (no properties).
    let (code, out, err) =
        ternmq(&["decode", "--server", "100c00044d515454040200 3c0000", "3005000161 6869"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("V3_1_1"), "{out}");
    assert!(out.contains("payload: b\"hi\""), "{out}");
}

#[test]
fn decode_names_the_reason_code_of_a_malformed_packet() {
    // PUBLISH with QoS 3 [MQTT-3.3.1-4].
    let (code, _, err) = ternmq(&["decode", "36 05 0001 61 0001"]);
    assert_eq!(code, 1);
    assert!(err.contains("QoS 3") && err.contains("0x81"), "{err}");
}

#[test]
fn decode_rejects_bad_hex_and_bad_flags() {
    let (code, _, err) = ternmq(&["decode", "c0z0"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a hex byte"), "{err}");
    let (code, _, err) = ternmq(&["decode", "-V", "4"]);
    assert_eq!(code, 1);
    assert!(err.contains("-V"), "{err}");
}

#[test]
fn commands_not_built_yet_say_so() {
    let (code, _, err) = ternmq(&["broker"]);
    assert_eq!(code, 2);
    assert!(err.contains("not available"), "{err}");
}
