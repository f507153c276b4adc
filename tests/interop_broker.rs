//! `ternmq broker` (the real program, on a free loopback port) against real clients:
//! Mosquitto's `mosquitto_pub`/`mosquitto_sub` and the Python `paho-mqtt` client.
//!
//! Without those peers the tests print that they were skipped, unless `TERNMQ_REQUIRE_INTEROP`
//! is set (as `scripts/test.sh` does), where a missing peer is a failure.

#![allow(clippy::unwrap_used)]

mod support;

use support::Ternmq;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_some()
}

fn have(cmd: &str, probe: &[&str]) -> bool {
    let found = Command::new(cmd)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(!required(), "{cmd} is required (TERNMQ_REQUIRE_INTEROP is set) but missing");
        eprintln!("skipped: {cmd} {probe:?} failed (scripts/test.sh installs it)");
    }
    found
}

fn have_mosquitto_clients() -> bool {
    // `mosquitto_pub --help` exits non-zero on some versions: that it runs at all is enough.
    let found = Command::new("mosquitto_pub").arg("--help").output().is_ok()
        && Command::new("mosquitto_sub").arg("--help").output().is_ok();
    if !found {
        assert!(!required(), "mosquitto clients are required (TERNMQ_REQUIRE_INTEROP) but missing");
        eprintln!(
            "skipped: mosquitto_pub/mosquitto_sub not installed (scripts/test.sh installs them)"
        );
    }
    found
}

fn have_paho() -> bool {
    have("python3", &["-c", "import paho.mqtt.client"])
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pub_cmd(port: u16, args: &[&str]) -> Output {
    run(Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args))
}

/// Starts `mosquitto_sub` and waits until its subscription is in place (it prints nothing
/// until then, so wait for the broker to count it through a probe message).
fn spawn_sub(port: u16, args: &[&str]) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_output(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a Python paho-mqtt script with `PORT` set; returns its standard output.
fn paho(port: u16, script: &str) -> String {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PORT", port.to_string())
        .env("PYTHONUNBUFFERED", "1"));
    String::from_utf8(out.stdout).unwrap()
}

const PAHO_PRELUDE: &str = r#"
import os, sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
PORT = int(os.environ["PORT"])
def client(cid, v5=True, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kw)
    return c
def wait(cond, what, timeout=10):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            print("timeout waiting for " + what); sys.exit(1)
        time.sleep(0.01)
"#;

#[test]
fn mosquitto_clients_publish_and_subscribe_at_every_qos_across_versions() {
    every_qos_across_versions(&[]);
}

#[test]
fn mosquitto_clients_against_the_std_threads_runtime() {
    every_qos_across_versions(&["--runtime", "std", "--io-threads", "1"]);
    every_qos_across_versions(&["--runtime", "std", "--io-threads", "3"]);
}

#[test]
fn mosquitto_clients_against_the_smol_runtime() {
    every_qos_across_versions(&["--runtime", "smol"]);
}

fn every_qos_across_versions(flags: &[&str]) {
    if !have_mosquitto_clients() {
        return;
    }
    let broker = Ternmq::start(flags);
    let port = broker.port;
    // Retained first, so that the subscriber's arrival proves its subscription is in place.
    pub_cmd(port, &["-t", "t/ready", "-m", "ready", "-r", "-q", "1"]);
    let sub5 =
        spawn_sub(port, &["-t", "t/#", "-v", "-q", "2", "-V", "mqttv5", "-C", "4", "-W", "20"]);
    let sub3 =
        spawn_sub(port, &["-t", "t/#", "-v", "-q", "2", "-V", "mqttv311", "-C", "4", "-W", "20"]);
    // Give both subscribers time to subscribe: the retained message reaches them on subscribe.
    std::thread::sleep(Duration::from_millis(500));
    pub_cmd(port, &["-t", "t/0", "-m", "zero", "-q", "0", "-V", "mqttv311"]);
    pub_cmd(port, &["-t", "t/1", "-m", "one", "-q", "1", "-V", "mqttv5"]);
    pub_cmd(port, &["-t", "t/2", "-m", "two", "-q", "2", "-V", "mqttv311"]);
    for out in [wait_output(sub5), wait_output(sub3)] {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, ["t/ready ready", "t/0 zero", "t/1 one", "t/2 two"], "{out}");
    }
}

#[test]
fn mosquitto_retained_message_is_delivered_then_cleared() {
    if !have_mosquitto_clients() {
        return;
    }
    let broker = Ternmq::start(&[]);
    let port = broker.port;
    pub_cmd(port, &["-t", "r/a", "-m", "kept", "-r", "-q", "1"]);
    let out = wait_output(spawn_sub(port, &["-t", "r/#", "-v", "-C", "1", "-W", "10"]));
    assert_eq!(out, "r/a kept\n");
    // An empty retained payload clears it: a fresh subscriber times out (status 27).
    pub_cmd(port, &["-t", "r/a", "-n", "-r", "-q", "1"]);
    let out =
        spawn_sub(port, &["-t", "r/#", "-v", "-C", "1", "-W", "1"]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(27), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty());
}

#[test]
fn mosquitto_persistent_session_gets_messages_queued_while_offline() {
    if !have_mosquitto_clients() {
        return;
    }
    let broker = Ternmq::start(&[]);
    let port = broker.port;
    // Subscribe with a persistent session (3.1.1 clean session 0), then leave.
    let first = spawn_sub(port, &["-i", "keeper", "-c", "-q", "1", "-t", "q/#", "-W", "1"]);
    let _ = first.wait_with_output().unwrap();
    pub_cmd(port, &["-t", "q/1", "-m", "while-away-1", "-q", "1"]);
    pub_cmd(port, &["-t", "q/2", "-m", "while-away-2", "-q", "1"]);
    let out = wait_output(spawn_sub(
        port,
        &["-i", "keeper", "-c", "-q", "1", "-t", "q/#", "-v", "-C", "2", "-W", "10"],
    ));
    assert_eq!(out, "q/1 while-away-1\nq/2 while-away-2\n");
}

#[test]
fn paho_v5_properties_will_and_shared_subscriptions() {
    if !have_paho() {
        return;
    }
    let broker = Ternmq::start(&[]);
    let script = format!(
        "{PAHO_PRELUDE}{}",
        r#"
got = []
def on_message(c, u, m):
    props = getattr(m.properties, "UserProperty", None)
    ids = getattr(m.properties, "SubscriptionIdentifier", None)
    got.append((c._client_id.decode(), m.topic, m.payload.decode(), m.qos, props, ids))
sub = client("sub")
sub.on_message = on_message
sub.connect("127.0.0.1", PORT)
sub.loop_start()
sp = Properties(PacketTypes.SUBSCRIBE); sp.SubscriptionIdentifier = 7
sub.subscribe("p/#", qos=2, properties=sp)
sub.subscribe("will/#", qos=1)
members = []
for name in ["m1", "m2"]:
    m = client(name); m.on_message = on_message
    m.connect("127.0.0.1", PORT); m.loop_start(); m.subscribe("$share/g/s/#", qos=1)
    members.append(m)
time.sleep(0.5)
pub = client("pub"); pub.connect("127.0.0.1", PORT); pub.loop_start()
pp = Properties(PacketTypes.PUBLISH); pp.UserProperty = ("k", "v")
pub.publish("p/x", "hello", qos=2, properties=pp).wait_for_publish(10)
for i in range(4):
    pub.publish("s/%d" % i, str(i), qos=1).wait_for_publish(10)
# A client with a will that vanishes without DISCONNECT.
w = client("dying"); w.will_set("will/dying", "gone", qos=1)
w.connect("127.0.0.1", PORT); w.loop_start(); time.sleep(0.3)
w.loop_stop(); w._sock.close()
wait(lambda: len(got) >= 6, "6 messages")
time.sleep(0.3)
p = [g for g in got if g[1] == "p/x"]
assert p == [("sub", "p/x", "hello", 2, [("k", "v")], [7])], got
shared = sorted(g[0] for g in got if g[1].startswith("s/"))
assert shared == ["m1", "m1", "m2", "m2"], got
assert [g[2] for g in got if g[1] == "will/dying"] == ["gone"], got
print("ok")
"#
    );
    assert_eq!(paho(broker.port, &script).trim(), "ok");
}

#[test]
fn paho_v5_client_is_told_server_shutting_down_on_sigterm() {
    if !have_paho() {
        return;
    }
    let broker = Ternmq::start(&[]);
    let port = broker.port;
    let script = format!(
        "{PAHO_PRELUDE}{}",
        r#"
reasons = []
c = client("watcher")
c.on_disconnect = lambda c, u, f, rc, p: reasons.append(rc.value)
connected = []
c.on_connect = lambda c, u, f, rc, p: connected.append(rc.value)
c.connect("127.0.0.1", PORT)
c.loop_start()
wait(lambda: connected, "CONNACK")
print("connected", flush=True)
wait(lambda: reasons, "DISCONNECT", timeout=20)
print("reason", hex(reasons[0]))
"#
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .env("PORT", port.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let (rest, status) = broker.terminate();
    assert!(status.success(), "{status}");
    assert!(rest.contains("stopped"), "{rest}");
    let mut tail = String::new();
    out.read_to_string(&mut tail).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(tail.trim(), "reason 0x8b");
}

#[test]
fn max_connections_from_the_config_file_refuses_the_excess_at_once() {
    let dir = std::env::temp_dir().join(format!("ternmq-maxconn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "max_connections = 2\n").unwrap();
    let broker = Ternmq::start(&["-c", file.to_str().unwrap()]);
    let connect = |id: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
        // Generous: CI runs many brokers and tests at once on two cores.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // MQTT 3.1.1 CONNECT, clean session, keep-alive 60, client id `id`.
        let mut pkt = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        pkt.extend_from_slice(&[0, id.len() as u8]);
        pkt.extend_from_slice(id.as_bytes());
        std::io::Write::write_all(&mut s, &pkt).unwrap();
        let mut ack = [0u8; 4];
        let n = read_fully(&mut s, &mut ack);
        (s, ack, n)
    };
    let (_a, ack_a, _) = connect("a");
    let (_b, ack_b, _) = connect("b");
    assert_eq!(ack_a, [0x20, 2, 0, 0]);
    assert_eq!(ack_b, [0x20, 2, 0, 0]);
    let started = Instant::now();
    let (_c, _, n) = connect("c");
    assert_eq!(n, 0, "the third connection must be closed without a CONNACK");
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(dir);
}

fn read_fully(s: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

#[test]
fn bad_config_file_names_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("ternmq-badconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("broker.toml");
    std::fs::write(&file, "port = 1883\nmax_qos = 2\nmax_conections = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: key `max_conections`", file.display())), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn non_loopback_listener_without_auth_is_refused_with_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "--bind", "0.0.0.0", "-p", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-anonymous") && err.contains("0.0.0.0"), "{err}");
}

#[test]
fn password_file_and_acl_file_with_real_clients() {
    if !have_mosquitto_clients() || !have_paho() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ternmq-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["passwd", "-c", "-b", passwd.to_str().unwrap(), "alice", "secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let acl = dir.join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite sensors/#\ntopic read status/#\n").unwrap();
    let conf = dir.join("broker.toml");
    std::fs::write(
        &conf,
        format!("password_file = {:?}\nacl_file = {:?}\n", passwd.display(), acl.display()),
    )
    .unwrap();
    let broker = Ternmq::start(&["-c", conf.to_str().unwrap()]);
    let port = broker.port;
    let try_pub = |args: &[&str]| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "sensors/a", "-m", "x"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(try_pub(&["-u", "alice", "-P", "secret", "-q", "1"]).status.success());
    for bad in [&["-u", "alice", "-P", "wrong"][..], &[][..], &["-u", "bob", "-P", "secret"][..]] {
        let out = try_pub(bad);
        assert!(!out.status.success(), "{bad:?} was let in");
    }
    let script = format!(
        "{PAHO_PRELUDE}{}",
        r#"
acks = {}
subacks = []
c = client("alice-paho")
c.username_pw_set("alice", "secret")
c.on_publish = lambda c, u, mid, rc, p: acks.__setitem__(mid, rc.value)
c.on_subscribe = lambda c, u, mid, rcs, p: subacks.append([r.value for r in rcs])
c.connect("127.0.0.1", PORT)
c.loop_start()
c.subscribe([("sensors/+/temp", 1), ("secret/#", 1), ("status/#", 1)])
wait(lambda: subacks, "SUBACK")
ok = c.publish("sensors/a/temp", "1", qos=1).mid
denied = c.publish("status/a", "1", qos=1).mid
wait(lambda: ok in acks and denied in acks, "PUBACKs")
print(subacks[0], hex(acks[ok]), hex(acks[denied]))
"#
    );
    let out = paho(port, &script);
    // Granted QoS 1, refused 0x87, granted; PUBACK 0x00 (a subscriber matched), refused 0x87.
    assert_eq!(out.trim(), "[1, 135, 1] 0x0 0x87");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn paho_v5_topic_alias_set_then_used_alone() {
    if !have_paho() {
        return;
    }
    let broker = Ternmq::start(&[]);
    let script = format!(
        "{PAHO_PRELUDE}{}",
        r#"
got = []
sub = client("alias-sub")
sub.on_message = lambda c, u, m: got.append((m.topic, m.payload.decode()))
sub.connect("127.0.0.1", PORT)
sub.loop_start()
sub.subscribe("a/#", qos=1)
time.sleep(0.3)
pub = client("alias-pub")
acks = {}
pub.on_publish = lambda c, u, mid, rc, p: acks.__setitem__(mid, rc.value)
pub.connect("127.0.0.1", PORT)
pub.loop_start()
time.sleep(0.3)
first = Properties(PacketTypes.PUBLISH); first.TopicAlias = 3
pub.publish("a/long/topic/name", "one", qos=1, properties=first).wait_for_publish(10)
again = Properties(PacketTypes.PUBLISH); again.TopicAlias = 3
pub.publish("", "two", qos=1, properties=again).wait_for_publish(10)
wait(lambda: len(got) >= 2, "2 messages")
assert got == [("a/long/topic/name", "one"), ("a/long/topic/name", "two")], got
print("ok")
"#
    );
    // (An alias above the broker's maximum, refused with 0x94, is checked byte by byte in
    // core/tests/broker_v5.rs: paho refuses to send one.)
    assert_eq!(paho(broker.port, &script).trim(), "ok");
}

/// An ACL file as a Mosquitto user writes it: a deny line takes topics away from a wide
/// subscription on delivery, and a subscription that can only match denied topics is refused
/// (MQTT 5 0x87, 3.1.1 0x80), as `mosquitto_sub` reports, in both protocol versions.
#[test]
fn acl_deny_lines_withhold_messages_from_wide_subscriptions_for_mosquitto_sub() {
    if !have_mosquitto_clients() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ternmq-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    for (i, user) in ["reader", "writer"].into_iter().enumerate() {
        let create = if i == 0 { "-c" } else { "-b" };
        let mut args = vec!["passwd", create];
        if i == 0 {
            args.push("-b");
        }
        args.extend([passwd.to_str().unwrap(), user, "pw"]);
        let out = Command::new(env!("CARGO_BIN_EXE_ternmq")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user reader\ntopic readwrite #\ntopic deny secret/#\n\nuser writer\ntopic write #\n",
    )
    .unwrap();
    let conf = dir.join("broker.toml");
    std::fs::write(
        &conf,
        format!("password_file = {:?}\nacl_file = {:?}\n", passwd.display(), acl.display()),
    )
    .unwrap();
    let broker = Ternmq::start(&["-c", conf.to_str().unwrap()]);
    let port = broker.port;
    for version in ["311", "5"] {
        // Granted: `#` and `+/+` can match allowed topics.
        let sub = spawn_sub(
            port,
            &["-V", version, "-u", "reader", "-P", "pw", "-t", "#", "-t", "+/+", "-v", "-C", "2"],
        );
        std::thread::sleep(Duration::from_millis(500));
        for (topic, body) in [("secret/x", "hidden"), ("open/x", "one"), ("open/y", "two")] {
            pub_cmd(port, &["-V", version, "-u", "writer", "-P", "pw", "-t", topic, "-m", body]);
        }
        let out = wait_output(sub);
        assert_eq!(out, "open/x one\nopen/y two\n", "-V {version}: secret/x withheld");
        // Refused: `secret/#` can only match denied topics.
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
            .args(["-u", "reader", "-P", "pw", "-t", "secret/#", "-W", "3"])
            .output()
            .unwrap();
        // mosquitto_sub says so and exits (with status 0 in some versions).
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("All subscription requests were denied"), "-V {version}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
