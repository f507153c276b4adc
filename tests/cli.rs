//! The `ternmq` program, run as a user would.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

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
fn unknown_command_and_missing_arguments_are_refused_with_usage() {
    let (code, _, err) = ternmq(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown command") && err.contains("usage"), "{err}");
    let (code, _, err) = ternmq(&["passwd"]);
    assert_ne!(code, 0);
    assert!(err.contains("usage"), "{err}");
}

/// Starts `ternmq sub -p port` with `extra` arguments.
fn start_sub(port: u16, extra: &[&str]) -> Killed {
    let port = port.to_string();
    let mut args = vec!["sub", "-p", port.as_str()];
    args.extend_from_slice(extra);
    let child = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Killed(Some(child))
}

/// A `ternmq sub` killed when dropped: a test that fails before it stops the process leaves
/// nothing running (a `sub` reconnects for ever).
struct Killed(Option<std::process::Child>);

impl std::ops::Deref for Killed {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("present until finished")
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("present until finished")
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl From<Killed> for std::process::Child {
    fn from(mut k: Killed) -> Self {
        k.0.take().expect("present until finished")
    }
}

fn finish(child: impl Into<std::process::Child>) -> (i32, String, String) {
    let out = child.into().wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pub_and_sub_round_trip_through_mosquitto() {
    let Some(broker) = support::Broker::start() else { return };
    let port = broker.port.to_string();
    for v in ["311", "5"] {
        // A retained message: the subscriber gets it however late its subscription lands.
        let (code, _, err) =
            ternmq(&["pub", "-p", &port, "-V", v, "-t", "cli/a", "-m", "hello", "-q", "1", "-r"]);
        assert_eq!(code, 0, "{err}");
        let sub = start_sub(broker.port, &["-V", v, "-t", "cli/#", "-C", "1", "-v", "-W", "10"]);
        let (code, out, err) = finish(sub);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "cli/a hello");
    }
}

#[test]
fn pub_sends_each_stdin_line_and_sub_counts_them() {
    let Some(broker) = support::Broker::start() else { return };
    let port = broker.port.to_string();
    // A retained marker tells us when the subscription is in place: it arrives first.
    let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", "lines/ready", "-m", "ready", "-r"]);
    assert_eq!(code, 0, "{err}");
    let mut sub =
        start_sub(broker.port, &["-t", "lines/#", "-t", "other", "-C", "4", "-q", "1", "-W", "10"]);
    let mut stdout = std::io::BufReader::new(sub.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    let mut publ = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["pub", "-p", &port, "-t", "lines/x", "-l", "-q", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    publ.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n").unwrap();
    let (code, _, err) = finish(publ);
    assert_eq!(code, 0, "{err}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let (code, _, err) = finish(sub);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rest.lines().collect::<Vec<_>>(), ["one", "two", "three"]);
}

#[test]
fn sub_times_out_with_status_27_like_mosquitto_sub() {
    let Some(broker) = support::Broker::start() else { return };
    let sub = start_sub(broker.port, &["-t", "quiet/#", "-W", "1"]);
    let (code, _, err) = finish(sub);
    assert_eq!(code, 27, "{err}");
}

#[test]
fn refused_connection_prints_the_reason_and_fails() {
    let Some(broker) = support::Broker::start_with("allow_anonymous false\n") else { return };
    let port = broker.port.to_string();
    for v in ["311", "5"] {
        let (code, _, err) = ternmq(&["pub", "-p", &port, "-V", v, "-t", "a", "-m", "x"]);
        assert_ne!(code, 0);
        assert!(err.contains("Connection refused: not authorized"), "{v}: {err}");
    }
}

#[test]
fn bad_arguments_name_the_flag() {
    let (code, _, err) = ternmq(&["pub", "-t", "a/+", "-m", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("-t") && err.contains("wildcard"), "{err}");
    let (code, _, err) = ternmq(&["pub", "-t", "a", "-m", "x", "-q", "3"]);
    assert_eq!(code, 1);
    assert!(err.contains("-q") && err.contains("0, 1 or 2"), "{err}");
    let (code, _, err) = ternmq(&["sub", "-p", "nope", "-t", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("-p") && err.contains("not a valid number"), "{err}");
    let (code, _, err) = ternmq(&["pub", "-t", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("a message is required"), "{err}");
    let (code, out, _) = ternmq(&["sub", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("-C COUNT"), "{out}");
}

#[test]
fn a_damaged_store_stops_the_broker_with_the_file_and_the_way_out() {
    let dir = std::env::temp_dir().join(format!("ternmq-cli-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ternmq.redb"), vec![0x42; 8192]).unwrap();
    let d = dir.to_str().unwrap();
    let (code, _, err) = ternmq(&["broker", "-p", "0", "--data-dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("ternmq.redb") && err.contains("ternmq store repair"), "{err}");
    let (code, _, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("ternmq.redb"), "{err}");
    // reset wants --yes, then sets the file aside: nothing is deleted.
    let (code, _, err) = ternmq(&["store", "reset", "--data-dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("--yes"), "{err}");
    let (code, out, _) = ternmq(&["store", "reset", "--data-dir", d, "--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("ternmq.redb.bak-"), "{out}");
    let kept = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(kept, 1, "the damaged file is kept aside");
    // With the store set aside there is none to check, and check creates none.
    let (code, _, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("no store at") && err.contains("ternmq.redb"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "check creates nothing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn store_check_reads_only_and_says_when_there_is_no_store_or_a_broker_holds_it() {
    let dir = std::env::temp_dir().join(format!("ternmq-cli-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    // A mistyped --data-dir: said so, and nothing created.
    let (code, out, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("no store at") && err.contains(d), "{err}");
    assert!(!dir.exists(), "check created {d}");
    // A broker holds the store: said so, with what to do.
    let port = support::free_port();
    let broker = support::Ternmq::start_on(port, &["--data-dir", d], Stdio::null());
    let (code, _, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_ne!(code, 0);
    assert!(err.contains("a running broker holds the store") && err.contains("stop"), "{err}");
    assert!(!err.contains("run `ternmq store check`"), "{err}");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{status}");
    // Stopped: the check reads it and leaves the file as it was.
    let file = dir.join("ternmq.redb");
    let before = std::fs::read(&file).unwrap();
    let (code, out, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("readable"), "{out}");
    assert!(std::fs::read(&file).unwrap() == before, "check changed the file");
    // Killed (not closed cleanly): redb's repair on opening happens in memory only.
    let broker = support::Ternmq::start_on(port, &["--data-dir", d], Stdio::null());
    let (code, _, err) =
        ternmq(&["pub", "-p", &port.to_string(), "-t", "kept", "-m", "x", "-q", "1", "-r"]);
    assert_eq!(code, 0, "{err}");
    drop(broker); // SIGKILL
    let before = std::fs::read(&file).unwrap();
    let (code, out, err) = ternmq(&["store", "check", "--data-dir", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 retained"), "{out}");
    assert!(std::fs::read(&file).unwrap() == before, "check changed the file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sub_c_keeps_its_session_in_mqtt_5_like_mosquitto_sub() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    for v in ["5", "311"] {
        let id = format!("keeper{v}");
        let topic = format!("keep/{v}");
        let sub = ["sub", "-p", &port, "-V", v, "-c", "-i", &id, "-t", &topic, "-q", "1"];
        // Subscribe, then leave (after -W 1: status 27).
        let (code, _, err) = ternmq(&[&sub[..], &["-W", "1"]].concat());
        assert_eq!(code, 27, "{err}");
        let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", &topic, "-m", "kept", "-q", "1"]);
        assert_eq!(code, 0, "{err}");
        // The same subscriber again: the session kept the message.
        let (code, out, err) = ternmq(&[&sub[..], &["-C", "1", "-W", "10"]].concat());
        assert_eq!(code, 0, "-V {v}: {err}");
        assert_eq!(out.trim(), "kept", "-V {v}");
    }
}

/// A client of the test's own that watches `filter` (subscribed when this returns).
fn watcher(port: u16, filter: &str) -> ternmq::blocking::SyncClient {
    let client = ternmq::blocking::SyncClient::connect(ternmq::blocking::ConnectOptions::new(
        "127.0.0.1",
        port,
    ))
    .unwrap();
    client.subscribe(filter, ternmq::codec::QoS::AtLeastOnce).unwrap();
    client
}

#[test]
fn sigint_and_sigterm_stop_sub_and_pub_with_disconnect_so_no_will_fires() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let wills = watcher(broker.port, "wills/#");
    let seen = watcher(broker.port, "sig/#");
    let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", "sig/ready", "-m", "ready", "-r"]);
    assert_eq!(code, 0, "{err}");
    let _ = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    for sig in ["INT", "TERM"] {
        // `sub`: the retained marker says it is subscribed.
        let will = format!("wills/sub{sig}");
        let mut sub = start_sub(broker.port, &["-t", "sig/ready", "--will-topic", &will]);
        let mut line = String::new();
        BufReader::new(sub.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        support::signal(&sub, sig);
        let status = support::wait_exit(&mut sub, Duration::from_secs(10)).expect("sub stops");
        assert_eq!(status.code(), Some(0), "sub after SIG{sig}: {status}");

        // `pub -l` waiting for its next line: its first line says it is connected.
        let will = format!("wills/pub{sig}");
        let mut publ = Command::new(env!("CARGO_BIN_EXE_ternmq"))
            .args(["pub", "-p", &port, "-t", "sig/lines", "-l", "--will-topic", &will])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = publ.stdin.take().unwrap();
        stdin.write_all(b"first\n").unwrap();
        let m = seen.recv_timeout(Duration::from_secs(10)).expect("the first line");
        assert_eq!(&m.payload[..], b"first");
        support::signal(&publ, sig);
        let status = support::wait_exit(&mut publ, Duration::from_secs(10)).expect("pub stops");
        assert_eq!(status.code(), Some(0), "pub -l after SIG{sig}: {status}");
        drop(stdin);
    }
    if let Some(m) = wills.recv_timeout(Duration::from_secs(2)) {
        panic!("a will was published on {}", m.topic);
    }
}

#[test]
fn broker_stops_on_sigterm_when_its_stdout_is_a_closed_pipe() {
    // `ternmq broker | head -1`: the reader goes away after the first line.
    for runtime in ["tokio", "std", "smol"] {
        let port = support::free_port();
        let mut broker = Command::new(env!("CARGO_BIN_EXE_ternmq"))
            .args(["broker", "-p", &port.to_string(), "--no-persistence", "--runtime", runtime])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(broker.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.starts_with("ternmq"), "{first}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "{runtime}: the broker did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        support::signal(&broker, "TERM");
        let status = support::wait_exit(&mut broker, Duration::from_secs(15));
        let status = status.unwrap_or_else(|| panic!("{runtime}: SIGTERM did not stop the broker"));
        assert!(status.success(), "{runtime}: {status}");
    }
}

/// Every line a broker started with `flags` logs around one `ternmq pub`, up to its exit
/// on SIGTERM (which must succeed).
fn log_of_one_publish(flags: &[&str]) -> Vec<String> {
    let port = support::free_port();
    let mut broker = support::Ternmq::start_on(port, flags, Stdio::piped());
    let log = lines(broker.child.stderr.take().unwrap());
    let (code, _, err) = ternmq(&["pub", "-p", &port.to_string(), "-t", "t", "-m", "x"]);
    assert_eq!(code, 0, "{flags:?}: {err}");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{flags:?}: {status}");
    log.iter().collect()
}

/// The lines `reader` yields, on a channel (so that a test can wait for one with a time limit).
fn lines(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line from `rx` within 20 s that contains `needle` (the lines before it are
/// dropped); panics with `what` if none comes.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => eprintln!("(skipped: {line})"),
            Err(e) => panic!("no line with {needle:?}: {what} ({e})"),
        }
    }
}

/// The client id in a broker log line `... client ID connected ...`.
fn connected_id(line: &str) -> String {
    let after = line.split("client ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().to_string()
}

#[test]
fn sub_says_when_the_connection_is_lost_and_keeps_its_client_id_across_reconnects() {
    let port = support::free_port();
    let args = ["--no-persistence"];
    let broker = support::Ternmq::start_on(port, &args, Stdio::piped());
    let mut broker = broker;
    let log = lines(broker.child.stderr.take().unwrap());
    let (code, _, e) = ternmq(&["pub", "-p", &port.to_string(), "-t", "back/r", "-m", "r", "-r"]);
    assert_eq!(code, 0, "{e}");
    wait_line(&log, " connected (", "the publisher connects");
    // MQTT 3.1.1 has no DISCONNECT from the broker: a broker that stops is a lost connection.
    let mut sub = start_sub(port, &["-V", "311", "-t", "back/#", "-q", "1"]);
    let out = lines(sub.stdout.take().unwrap());
    let err = lines(sub.stderr.take().unwrap());
    let first = connected_id(&wait_line(&log, " connected (", "the subscriber connects"));
    wait_line(&out, "r", "the subscriber gets the retained message, so it is subscribed");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{status}");
    wait_line(&err, "lost", "sub says that the connection was lost");
    let mut broker = support::Ternmq::start_on(port, &args, Stdio::piped());
    let log = lines(broker.child.stderr.take().unwrap());
    let again = connected_id(&wait_line(&log, " connected (", "the subscriber reconnects"));
    assert_eq!(again, first, "the client id is kept");
    wait_line(&err, "Reconnected", "sub says that it is connected again");
    // Subscribed again: a message gets through.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, e) = ternmq(&["pub", "-p", &port.to_string(), "-t", "back/x", "-m", "hi"]);
        assert_eq!(code, 0, "{e}");
        if let Ok(line) = out.recv_timeout(Duration::from_millis(300)) {
            assert_eq!(line, "hi");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no message after the reconnection");
    }
    support::signal(&sub, "TERM");
    assert!(support::wait_exit(&mut sub, Duration::from_secs(10)).is_some());
}

#[test]
fn sub_exits_like_mosquitto_sub_when_the_broker_says_it_is_shutting_down() {
    let broker = support::Ternmq::start(&[]);
    let (code, _, err) =
        ternmq(&["pub", "-p", &broker.port.to_string(), "-t", "bye", "-m", "r", "-r"]);
    assert_eq!(code, 0, "{err}");
    let mut sub = start_sub(broker.port, &["-V", "5", "-t", "bye"]);
    let out = lines(sub.stdout.take().unwrap());
    wait_line(&out, "r", "sub is subscribed");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{status}");
    // mosquitto_sub -V 5 ends with status 0 on a DISCONNECT from the broker; it does not retry.
    let status = support::wait_exit(&mut sub, Duration::from_secs(10)).expect("sub exits");
    let (_, _, err) = finish(sub);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("server shutting down"), "{err}");
}

#[test]
fn broker_publishes_sys_statistics_by_default_like_mosquitto() {
    let broker = support::Ternmq::start(&[]);
    let sub = start_sub(broker.port, &["-t", "$SYS/broker/version", "-C", "1", "-W", "15"]);
    let (code, out, err) = finish(sub);
    assert_eq!(code, 0, "no $SYS/broker/version within 15 s: {err}");
    assert!(out.starts_with("ternmq"), "{out}");
}

#[test]
fn sighup_is_logged_and_the_broker_keeps_running() {
    let port = support::free_port();
    let mut broker = support::Ternmq::start_on(port, &["--no-persistence"], Stdio::piped());
    let log = lines(broker.child.stderr.take().unwrap());
    support::signal(&broker.child, "HUP");
    let line = wait_line(&log, "SIGHUP", "the broker logs the signal");
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(broker.child.try_wait().unwrap().is_none(), "SIGHUP stopped the broker");
    let (code, _, err) = ternmq(&["pub", "-p", &port.to_string(), "-t", "hup", "-m", "x"]);
    assert_eq!(code, 0, "{err}");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{status}");
}

/// Whether `line` starts with an RFC 3339 UTC timestamp (`2026-01-02T03:04:05.678Z `).
fn rfc3339_stamped(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() > 25
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && digits(20..23)
        && &line[23..25] == "Z "
}

#[test]
fn every_broker_log_line_has_a_timestamp() {
    for (flag, check) in [
        ("rfc3339", rfc3339_stamped as fn(&str) -> bool),
        ("epoch", |l: &str| {
            l.split_once(": ")
                .is_some_and(|(s, _)| s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        }),
    ] {
        let all = log_of_one_publish(&["--no-persistence", "--log-timestamp", flag]);
        assert!(all.iter().any(|l| l.contains(" connected (")), "{all:?}");
        for line in &all {
            assert!(check(line), "--log-timestamp {flag}: {line:?}");
        }
    }
}

#[test]
fn the_final_statistics_are_a_readable_summary() {
    for runtime in ["tokio", "std", "smol"] {
        let all = log_of_one_publish(&["--no-persistence", "--runtime", runtime]);
        let line = all.iter().find(|l| l.contains("statistics")).expect("a statistics line");
        let counted = line.contains("clients connected 1") && line.contains("messages 1 received");
        assert!(counted, "{runtime}: {line}");
        assert!(!all.iter().any(|l| l.contains("Stats {")), "{runtime}: {all:?}");
    }
}

#[test]
fn broker_v_logs_more_than_the_default() {
    for (flags, verbose) in
        [(&["--no-persistence"][..], false), (&["--no-persistence", "-v"][..], true)]
    {
        let all = log_of_one_publish(flags);
        let peer = all.iter().any(|l| l.contains("new connection from 127.0.0.1:"));
        assert_eq!(peer, verbose, "{flags:?}: {all:?}");
    }
}

#[test]
fn pub_and_sub_say_in_words_that_no_broker_answers() {
    let port = support::free_port(); // nothing listens there
    for cmd in [&["pub", "-t", "t", "-m", "x"][..], &["sub", "-t", "t"][..]] {
        let (code, _, err) = ternmq(&[cmd, &["-p", &port.to_string()]].concat());
        assert_eq!(code, 1, "{err}");
        let expected = format!("connection refused by 127.0.0.1:{port} (is a broker running?)");
        assert!(err.contains(&expected), "{cmd:?}: {err}");
    }
}

#[test]
fn broker_errors_say_what_to_do() {
    // The port is taken.
    let broker = support::Ternmq::start(&[]);
    let (code, _, err) = ternmq(&["broker", "-p", &broker.port.to_string(), "--no-persistence"]);
    assert_ne!(code, 0);
    assert!(err.contains("in use") && err.contains("--port"), "{err}");
    // A Mosquitto configuration line in the TOML file.
    let file = std::env::temp_dir().join(format!("ternmq-cli-mosq-{}.toml", std::process::id()));
    std::fs::write(&file, "listener 1883\n").unwrap();
    let (code, _, err) = ternmq(&["broker", "-c", file.to_str().unwrap(), "--no-persistence"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Mosquitto") && err.contains("TOML") && err.contains("port = 1883"),
        "{err}"
    );
    // A misspelt key.
    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let (code, _, err) = ternmq(&["broker", "-c", file.to_str().unwrap(), "--no-persistence"]);
    assert_ne!(code, 0);
    assert!(err.contains("did you mean `max_connections`?"), "{err}");
    let _ = std::fs::remove_file(&file);
    // I/O threads: a count, and only for the std server.
    for bad in ["0", "256", "many"] {
        let (code, _, err) = ternmq(&["broker", "--io-threads", bad, "--no-persistence"]);
        assert_ne!(code, 0);
        assert!(err.contains("--io-threads") && err.contains("1 to 255"), "{bad}: {err}");
    }
    let (code, _, err) =
        ternmq(&["broker", "--runtime", "tokio", "--io-threads", "2", "--no-persistence"]);
    assert_ne!(code, 0);
    assert!(err.contains("only the std server"), "{err}");
}

#[test]
fn pub_and_sub_help_list_every_flag_they_take() {
    let common = [
        "-h, --host",
        "-p, --port",
        "-L, --url",
        "-V, --protocol-version",
        "-i, --id",
        "-I, --id-prefix",
        "-u, --username",
        "-P, --pw",
        "-k, --keepalive",
        "-c, --disable-clean-session",
        "-x, --session-expiry-interval",
        "-D, --property",
        "--will-topic",
        "--will-payload",
        "--will-qos",
        "--will-retain",
        "--nodelay",
        "-d, --debug",
        "--quiet",
        "--help",
        "-q, --qos",
        "-t, --topic",
    ];
    let (code, out, _) = ternmq(&["pub", "--help"]);
    assert_eq!(code, 0);
    for flag in common.iter().chain(&[
        "-m, --message",
        "-f, --file",
        "-l, --stdin-line",
        "-n, --null-message",
        "-s, --stdin-file",
        "-r, --retain",
        "--repeat N",
        "--repeat-delay",
    ]) {
        assert!(out.contains(flag), "pub --help lacks {flag}:\n{out}");
    }
    let (code, out, _) = ternmq(&["sub", "--help"]);
    assert_eq!(code, 0);
    for flag in common.iter().chain(&[
        "-U, --unsubscribe",
        "-T, --filter-out",
        "-R ",
        "--retained-only",
        "--remove-retained",
        "--retain-as-published",
        "-C COUNT",
        "-W SECONDS",
        "-E ",
        "-v, --verbose",
        "-F FORMAT",
        "-N ",
        "--pretty",
        "--random-filter",
    ]) {
        assert!(out.contains(flag), "sub --help lacks {flag}:\n{out}");
    }
    // Every program prints its usage for --help, decode too.
    let (code, out, err) = ternmq(&["decode", "--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("usage"), "{out}");
}

#[test]
fn contradictory_flags_are_refused_naming_both() {
    for (args, both) in [
        (&["pub", "-t", "a", "-m", "y", "-s"][..], ["-m", "-s"]),
        (&["pub", "-t", "a", "-f", "x", "-l"][..], ["-f", "-l"]),
        (&["sub", "-t", "a", "-V", "311", "-x", "60"][..], ["-x", "-V 311"]),
        (
            &["pub", "-t", "a", "-m", "y", "-V", "mqttv311", "-D", "publish", "content-type", "x"]
                [..],
            ["-D", "-V mqttv311"],
        ),
        (&["sub", "-t", "a", "-i", "x", "-I", "y"][..], ["-i", "-I"]),
        (&["sub", "-t", "a", "-R", "--retained-only"][..], ["-R", "--retained-only"]),
        (&["sub", "-t", "a", "-F", "%t", "-v"][..], ["-F", "-v"]),
        (&["pub", "-t", "a", "-L", "mqtt://h/b", "-m", "x"][..], ["-t", "-L"]),
        (&["pub", "-t", "a", "-m", "x", "--will-qos", "1"][..], ["--will-qos", "--will-topic"]),
    ] {
        let (code, _, err) = ternmq(args);
        assert_eq!(code, 1, "{args:?} was accepted");
        for flag in both {
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        assert!(!err.contains("usage"), "{args:?}: the error is lost in the usage: {err}");
    }
    // What ternmq does not have is named, not called unknown.
    let (code, _, err) = ternmq(&["sub", "-t", "a", "--psk", "00"]);
    assert_eq!(code, 1);
    assert!(err.contains("--psk") && err.contains("pre-shared keys"), "{err}");
    // A TLS file that is not there is named.
    let (code, _, err) = ternmq(&["sub", "-t", "a", "--cafile", "no-such-ca.pem"]);
    assert_eq!(code, 1);
    assert!(err.contains("no-such-ca.pem"), "{err}");
    let (code, _, err) = ternmq(&["pub", "-t", "a", "-m", "x", "-D", "publish", "colour", "red"]);
    assert_eq!(code, 1);
    assert!(err.contains("-D publish colour") && err.contains("content-type"), "{err}");
    let (code, _, err) = ternmq(&["sub", "-t", "a", "-F", "%k"]);
    assert_eq!(code, 1);
    assert!(err.contains("-F") && err.contains("%k"), "{err}");
}

#[test]
fn mosquitto_sub_output_flags_format_filter_and_retained() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let p = |args: &[&str]| {
        let (code, _, err) = ternmq(&[&["pub", "-p", &port][..], args].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
    };
    p(&["-t", "f/old", "-m", "kept", "-r", "-q", "1"]);
    p(&["-t", "f/skip", "-m", "skipped", "-r", "-q", "1"]);
    // -F with -N, -T: the retained messages, one filtered out.
    let sub = start_sub(
        broker.port,
        &["-t", "f/#", "-T", "f/skip", "-F", "%t|%p|%q|%r|%l;", "-N", "-C", "1", "-W", "10"],
    );
    let (code, out, err) = finish(sub);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "f/old|kept|0|1|4;");
    // --retained-only prints the retained message and stops at the first live one.
    let (code, out, err) =
        ternmq(&["sub", "-p", &port, "-t", "f/old", "--retained-only", "-W", "10", "-E"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "-E exits once subscribed");
    // -R: the retained messages are not sent; a live one is.
    let mut sub = start_sub(broker.port, &["-t", "f/#", "-R", "-C", "1", "-W", "10", "-v", "-d"]);
    let out = lines(sub.stdout.take().unwrap());
    wait_line(&out, "received SUBACK", "-d shows the SUBACK");
    p(&["-t", "f/live", "-m", "now"]);
    let line = wait_line(&out, "f/live now", "the live message");
    assert_eq!(line, "f/live now");
    assert!(out.try_iter().all(|l| !l.contains("f/old")), "-R: a retained message was printed");
    let _ = support::wait_exit(&mut sub, Duration::from_secs(10)).expect("sub exits after -C 1");
}

#[test]
fn mosquitto_flags_d_l_i_prefix_and_properties_reach_the_broker() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let url = format!("mqtt://127.0.0.1:{port}/props/t");
    // -L for both; -D publish user-property read back with -F %P; -I shown by -d.
    let mut sub = start_sub(
        broker.port,
        &["-L", &url, "-F", "%P %C", "-C", "1", "-W", "10", "-d", "-I", "watch-"],
    );
    let out = lines(sub.stdout.take().unwrap());
    let connect = wait_line(&out, "sending CONNECT", "-d shows CONNECT");
    assert!(connect.starts_with("Client watch-"), "{connect}");
    wait_line(&out, "received SUBACK", "subscribed");
    let (code, _, err) = ternmq(&[
        "pub",
        "-L",
        &url,
        "-m",
        "x",
        "-D",
        "publish",
        "user-property",
        "k",
        "v",
        "-D",
        "publish",
        "content-type",
        "text/plain",
    ]);
    assert_eq!(code, 0, "{err}");
    let line = wait_line(&out, "k:v", "the user property and content type");
    assert_eq!(line, "k:v text/plain");
    let _ = support::wait_exit(&mut sub, Duration::from_secs(10)).expect("sub exits after -C 1");
    // --quiet: a failure says nothing, the status tells.
    let free = support::free_port().to_string();
    let (code, _, err) = ternmq(&["pub", "-p", &free, "-t", "t", "-m", "x", "--quiet"]);
    assert_eq!(code, 1);
    assert_eq!(err, "");
}

#[test]
fn the_docs_speak_in_ternmqs_terms_and_say_what_is_missing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut docs = vec![("README.md".to_string(), readme.clone())];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        docs.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
    }
    for (name, text) in &docs {
        assert!(!text.contains("the seed"), "{name} speaks of \"the seed\"");
    }
    let missing = readme.split("## Not there yet").nth(1).expect("a \"Not there yet\" section");
    for what in ["bridge", "cluster"] {
        assert!(missing[..600.min(missing.len())].contains(what), "Not there yet: {what}");
    }
    // Every mosquitto option sub refuses is in the README's table.
    for flag in ["--psk", "-A", "-S", "--proxy", "-o", "-M", "--unix"] {
        let (code, _, err) = ternmq(&["sub", "-t", "a", flag, "x"]);
        assert_eq!(code, 1, "{flag}");
        assert!(!err.contains("unknown option"), "{flag}: {err}");
        assert!(readme.contains(&format!("`{flag}")), "the README's table lacks {flag}");
    }
    // receive_maximum is described the same way in the README and the example config.
    let toml = std::fs::read_to_string(root.join("examples/broker.toml")).unwrap();
    for text in [&readme, &toml] {
        let line = text.lines().find(|l| l.contains("receive_maximum")).unwrap();
        assert!(line.contains("in flight") && line.contains("QoS 1"), "{line}");
    }
}

#[test]
fn a_signal_while_the_broker_does_not_answer_ends_sub_and_pub_at_once() {
    // Accepts connections (in the kernel's backlog) and never answers CONNECT.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    for args in [&["sub", "-p", &port, "-t", "t"][..], &["pub", "-p", &port, "-t", "t", "-m", "x"]]
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ternmq"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        support::signal(&child, "INT");
        let status = support::wait_exit(&mut child, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{args:?}: Ctrl-C did not stop it while connecting"));
        assert_eq!(status.code(), Some(1), "{args:?}: {status}");
    }
    drop(silent);
}

#[test]
fn sub_remove_retained_and_unsubscribe_work_as_in_mosquitto_sub() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", "rr/a", "-m", "old", "-r", "-q", "1"]);
    assert_eq!(code, 0, "{err}");
    // --remove-retained prints the retained message and clears it.
    let (code, out, err) =
        ternmq(&["sub", "-p", &port, "-t", "rr/#", "--remove-retained", "-C", "1", "-W", "10"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "old");
    let (code, out, _) = ternmq(&["sub", "-p", &port, "-t", "rr/#", "-W", "1"]);
    assert_eq!(code, 27, "the retained message is gone: {out}");
    // -U: subscribed to rr/# and then unsubscribed, so nothing arrives; -x -1 is accepted.
    let mut sub =
        start_sub(broker.port, &["-t", "rr/#", "-U", "rr/#", "-W", "3", "-d", "-x", "-1"]);
    let out = lines(sub.stdout.take().unwrap());
    wait_line(&out, "received UNSUBACK", "-U unsubscribes");
    let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", "rr/b", "-m", "late"]);
    assert_eq!(code, 0, "{err}");
    let status = support::wait_exit(&mut sub, Duration::from_secs(10)).expect("-W 3 ends it");
    assert_eq!(status.code(), Some(27));
    assert!(out.try_iter().all(|l| !l.contains("late")), "a message arrived after -U");
}

#[test]
fn default_client_ids_are_not_the_process_id_alone() {
    // Process ids repeat across machines and containers (often 1): a default id made of the
    // pid alone would make two subscribers take over each other's session.
    let broker = support::Ternmq::start(&[]);
    let (code, out, err) = ternmq(&["sub", "-p", &broker.port.to_string(), "-t", "x", "-E", "-d"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.contains("sending CONNECT")).unwrap();
    let id = line.split_whitespace().nth(1).unwrap();
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(parts.len(), 4, "{id}");
    assert_eq!(&parts[..2], ["ternmq", "sub"], "{id}");
    assert!(parts[2].bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert!(parts[3].len() == 8 && parts[3].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
}

#[test]
fn a_store_held_by_a_running_broker_says_so_to_a_second_broker_and_to_repair() {
    let dir = std::env::temp_dir().join(format!("ternmq-cli-held-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let broker = support::Ternmq::start_on(support::free_port(), &["--data-dir", d], Stdio::null());
    for args in
        [&["broker", "-p", "0", "--data-dir", d][..], &["store", "repair", "--data-dir", d][..]]
    {
        let (code, _, err) = ternmq(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("holds the store") && err.contains("stop it"), "{args:?}: {err}");
        assert!(!err.contains("ternmq store check"), "{args:?}: {err}");
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sub_d_subscribe_sends_a_subscription_identifier() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let (code, _, err) = ternmq(&["pub", "-p", &port, "-t", "sid/a", "-m", "x", "-r"]);
    assert_eq!(code, 0, "{err}");
    let args =
        ["sub", "-p", &port, "-t", "sid/#", "-D", "subscribe", "subscription-identifier", "7"];
    let (code, out, err) = ternmq(&[&args[..], &["-F", "%S %t", "-C", "1", "-W", "10"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "7 sid/a");
}

/// The broker's log gives the reasons a connection ended in words: `disconnected: the client
/// disconnected`, `disconnected: topic name invalid (0x90)`, never a Rust value.
#[test]
fn the_broker_log_gives_disconnect_reasons_in_words() {
    let port = support::free_port();
    let mut broker = support::Ternmq::start_on(port, &["--no-persistence"], Stdio::piped());
    let log = lines(broker.child.stderr.take().unwrap());
    let (code, _, err) = ternmq(&["pub", "-p", &port.to_string(), "-t", "t", "-m", "x"]);
    assert_eq!(code, 0, "{err}");
    wait_line(&log, "disconnected: the client disconnected", "a normal disconnect in words");
    // MQTT 5 CONNECT (client id "w"), then a PUBLISH to the topic name "+", which is invalid.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x01w").unwrap();
    s.write_all(b"\x30\x05\x00\x01+\x00x").unwrap();
    let line = wait_line(&log, "client w on", "the violation in words");
    assert!(line.contains("disconnected: topic name invalid (0x90)"), "{line}");
    let (_, status) = broker.terminate();
    assert!(status.success(), "{status}");
}

/// `bench -s idle` holds its connections, says how fast they connected and the broker's memory
/// per connection, and probes a QoS pair while they are open.
#[test]
fn bench_idle_reports_connect_rate_memory_and_a_pair_meanwhile() {
    let broker = support::Ternmq::start(&[]);
    let (port, pid) = (broker.port.to_string(), broker.child.id().to_string());
    let (code, out, err) = ternmq(&[
        "bench",
        "-p",
        &port,
        "-s",
        "idle",
        "--connections",
        "300",
        "--hold",
        "0",
        "--broker-pid",
        &pid,
        "-q",
        "1",
        "--rate",
        "1000",
    ]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("idle ")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("300 open, 0 failed, connected in"), "{row}");
    assert!(row.contains(" B/connection"), "{row}");
    assert!(row.contains("QoS 1 pair meanwhile at 1000/s: p50"), "{row}");
    assert!(row.contains(" ms, p99.9 "), "{row}");
    assert!(row.contains("1000 of 1000 delivered"), "{row}");
}

/// `bench conns` is the idle scenario by its other name, given first without `-s`; an
/// unknown name is refused with the list.
#[test]
fn bench_conns_is_the_idle_scenario_named_first() {
    let broker = support::Ternmq::start(&[]);
    let (port, pid) = (broker.port.to_string(), broker.child.id().to_string());
    let args = ["--connections", "50", "--hold", "0", "--broker-pid", &pid, "-p", &port];
    let (code, out, err) = ternmq(&[&["bench", "conns"][..], &args[..]].concat());
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("conns ")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("50 open, 0 failed, connected in"), "{row}");
    assert!(row.contains(" B/connection"), "{row}");
    let (code, _, err) = ternmq(&["bench", "nothing", "-p", &port]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown scenario \"nothing\"") && err.contains("conns"), "{err}");
}

#[test]
fn bench_latency_reports_its_rate_and_p99_9() {
    let broker = support::Ternmq::start(&[]);
    let port = broker.port.to_string();
    let (code, out, err) = ternmq(&[
        "bench",
        "-p",
        &port,
        "-s",
        "latency",
        "-q",
        "1",
        "--rate",
        "2000",
        "--seconds",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with("latency ")).unwrap_or_else(|| panic!("{out}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    // sent and received, then p50 <= p99 <= p99.9 <= max.
    assert_eq!(fields[3], "2000", "{row}");
    assert_eq!(fields[4], "2000", "{row}");
    let at = |i: usize| fields[i].parse::<f64>().unwrap_or_else(|_| panic!("{row}"));
    let p999 = row
        .split("p99.9 ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no p99.9 in {row}"));
    assert!(row.contains("at 2000/s, p99.9 "), "{row}");
    assert!(at(6) <= at(7) && at(7) <= p999 && p999 <= at(8), "{row}");
}

/// The first line the broker prints, started under `taskset -c CPUS` with `args`.
fn banner_on_cpus(cpus: &str, args: &[&str]) -> String {
    use std::io::BufRead;
    let port = support::free_port().to_string();
    let mut child = std::process::Command::new("taskset")
        .args(["-c", cpus, env!("CARGO_BIN_EXE_ternmq"), "broker", "--no-persistence", "-p"])
        .arg(&port)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("taskset (util-linux) runs the broker");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn the_default_server_is_one_thread_on_one_cpu_and_an_io_thread_per_cpu_on_more() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: this machine has one CPU");
        return;
    }
    let one = banner_on_cpus("0", &[]);
    assert!(one.contains("std (one thread) runtime"), "{one}");
    let both = banner_on_cpus("0,1", &[]);
    assert!(both.contains("std, 2 I/O threads runtime"), "{both}");
    let three = banner_on_cpus("0", &["--io-threads", "3"]);
    assert!(three.contains("std, 3 I/O threads runtime"), "{three}");
    // Asked for, Tokio it is, on one CPU too.
    let asked = banner_on_cpus("0", &["--runtime", "tokio"]);
    assert!(asked.contains("tokio runtime"), "{asked}");
}
