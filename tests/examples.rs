//! The examples, run as users run them, against a real Mosquitto on loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ternmq::blocking::{ConnectOptions, SyncClient};
use ternmq::codec::QoS;

fn watcher(port: u16, filter: &str) -> SyncClient {
    let c = SyncClient::connect(ConnectOptions::new("127.0.0.1", port)).unwrap();
    c.subscribe(filter, QoS::AtLeastOnce).unwrap();
    c
}

fn text(c: &SyncClient) -> (String, String) {
    let m = c.recv_timeout(Duration::from_secs(10)).expect("a message");
    (m.topic.to_string(), String::from_utf8_lossy(&m.payload).into_owned())
}

#[test]
fn iot_sensor_publishes_readings_and_its_status() {
    let Some(broker) = support::Broker::start() else { return };
    let w = watcher(broker.port, "sensors/temp/001/#");
    let out = Command::new(support::example_bin("iot_sensor"))
        .args(["--port", &broker.port.to_string(), "--count", "3", "--interval-ms", "50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<(String, String)> = (0..5).map(|_| text(&w)).collect();
    assert_eq!(got[0], ("sensors/temp/001/status".into(), "online".into()));
    for (topic, payload) in &got[1..4] {
        assert_eq!(topic, "sensors/temp/001");
        assert!(payload.starts_with("{\"temp\":") && payload.ends_with('}'), "{payload}");
    }
    assert_eq!(got[4], ("sensors/temp/001/status".into(), "offline".into()));
}

#[test]
fn iot_sensor_will_marks_it_offline_when_it_dies() {
    let Some(broker) = support::Broker::start() else { return };
    let w = watcher(broker.port, "sensors/temp/001/status");
    let mut sensor = Command::new(support::example_bin("iot_sensor"))
        .args(["--port", &broker.port.to_string(), "--interval-ms", "100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first reading, then kill it without a goodbye.
    let mut sensor_out = BufReader::new(sensor.stdout.take().unwrap());
    let mut line = String::new();
    sensor_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("reading 0"), "{line}");
    assert_eq!(text(&w).1, "online");
    sensor.kill().unwrap();
    sensor.wait().unwrap();
    assert_eq!(text(&w).1, "offline", "the will should mark the sensor offline");
}

#[test]
fn command_control_answers_requests_from_its_async_handler() {
    let Some(broker) = support::Broker::start() else { return };
    let port = broker.port.to_string();
    let w = watcher(broker.port, "devices/status");
    let mut controller = Command::new(support::example_bin("command_control"))
        .args(["--role", "controller", "--port", &port])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep reading its stdout for the whole test: a closed pipe would fail its prints.
    let mut controller_out = BufReader::new(controller.stdout.take().unwrap());
    let mut ready = String::new();
    controller_out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "controller ready");
    let device = Command::new(support::example_bin("command_control"))
        .args(["--role", "device", "--port", &port, "--action", "turn_off"])
        .output()
        .unwrap();
    let mut acted = String::new();
    controller_out.read_line(&mut acted).unwrap();
    assert_eq!(acted.trim(), "lamp: {\"action\":\"turn_off\"} -> off");
    controller.kill().unwrap();
    controller.wait().unwrap();
    let stdout = String::from_utf8_lossy(&device.stdout);
    assert!(device.status.success(), "{stdout}{}", String::from_utf8_lossy(&device.stderr));
    assert_eq!(stdout.trim(), "response: {\"device\":\"lamp\",\"status\":\"off\"}");
    assert_eq!(text(&w).1, "{\"device\":\"lamp\",\"status\":\"off\"}");
}

#[test]
fn smol_client_round_trips_a_message_through_the_broker() {
    let Some(broker) = support::Broker::start() else { return };
    let w = watcher(broker.port, "topic");
    let out = Command::new(support::example_bin("smol_client"))
        .args(["--host", "127.0.0.1", "--port", &broker.port.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // From its handler, then from next_message.
    assert!(stdout.contains("Received: data\n"), "{stdout}");
    assert!(stdout.contains("topic data\n"), "{stdout}");
    assert_eq!(text(&w), ("topic".into(), "data".into()));
}

/// Starts a broker example on a free port; returns it once it prints its listening line.
fn start_broker_example(name: &str, extra: &[&str]) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(support::example_bin(name))
        .args(["--port", &port.to_string(), "--seconds", "60"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains(&format!("listening on port {port}")), "{line}");
    (child, port)
}

#[test]
fn embedded_broker_serves_with_the_seeds_options_and_persistence() {
    let dir = std::env::temp_dir().join(format!("ternmq-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut broker, port) =
        start_broker_example("embedded_broker", &["--data-dir", dir.to_str().unwrap()]);
    let w = watcher(port, "sensor/#");
    let p = SyncClient::connect(ConnectOptions::new("127.0.0.1", port)).unwrap();
    p.publish("sensor/temp", "22.5", QoS::ExactlyOnce).unwrap();
    assert_eq!(text(&w), ("sensor/temp".into(), "22.5".into()));
    broker.kill().unwrap();
    broker.wait().unwrap();
    assert!(dir.join("ternmq.redb").exists(), "the seed's persistence is on");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn custom_auth_lets_known_users_in_and_refuses_the_rest() {
    let (mut broker, port) = start_broker_example("custom_auth", &[]);
    let mut ok = ConnectOptions::new("127.0.0.1", port);
    ok.connect.username = Some(ternmq::codec::MqttStr::new("alice").unwrap());
    ok.connect.password = Some("wonderland".into());
    let c = SyncClient::connect(ok).unwrap();
    c.publish("hello", "world", QoS::AtLeastOnce).unwrap();
    let mut bad = ConnectOptions::new("127.0.0.1", port);
    bad.connect.username = Some(ternmq::codec::MqttStr::new("alice").unwrap());
    bad.connect.password = Some("guess".into());
    bad.config.reconnect.enable = false;
    match SyncClient::connect(bad) {
        Err(ternmq::blocking::Error::Refused(code)) => {
            assert_eq!(code, ternmq::codec::ReasonCode::BadUserNameOrPassword);
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
}

const EXAMPLES: [&str; 6] = [
    "sync_client",
    "smol_client",
    "iot_sensor",
    "command_control",
    "embedded_broker",
    "custom_auth",
];

#[test]
fn every_example_prints_its_usage_on_help() {
    for name in EXAMPLES {
        let out = Command::new(support::example_bin(name)).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.starts_with(&format!("usage: {name}")), "{name}: {stdout}");
    }
}

#[test]
fn client_examples_say_in_words_that_no_broker_answers() {
    let port = support::free_port(); // nothing listens there
    for name in ["sync_client", "smol_client", "iot_sensor", "command_control"] {
        let out = Command::new(support::example_bin(name))
            .args(["--port", &port.to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        let expected = format!("connection refused by 127.0.0.1:{port} (is a broker running?)");
        assert!(err.contains(&expected), "{name}: {err}");
        assert!(!err.contains("Os {"), "{name}: {err}");
    }
}
