//! The blocking `SyncClient` (ternmq-std) against a real Mosquitto on loopback: the seed's
//! synchronous-client example, QoS answers, publishing from inside a message handler, and
//! reconnecting after the broker is killed and restarted.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ternmq::blocking::{ConnectOptions, Error, SyncClient};
use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode};

fn options(port: u16, v: ProtocolVersion, id: &'static str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = v;
    o.connect.client_id = MqttStr::from_static(id);
    o.timeout = Duration::from_secs(5);
    o
}

#[test]
fn seed_sync_client_example_works() {
    let Some(broker) = support::Broker::start() else { return };
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let client = SyncClient::connect(options(broker.port, v, "sync-1")).unwrap();
        assert_eq!(client.subscribe("topic/#", QoS::AtLeastOnce).unwrap(), ReasonCode::GrantedQoS1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        client.on_message(move |msg| s.lock().unwrap().push(msg.payload.clone()));
        assert_eq!(client.publish("topic", "data", QoS::AtLeastOnce).unwrap(), ReasonCode::Success);
        assert_eq!(
            client.publish("topic/2", "exactly", QoS::ExactlyOnce).unwrap(),
            ReasonCode::Success
        );
        let first = client.recv_timeout(Duration::from_secs(5)).unwrap();
        let second = client.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (&first.payload[..], &second.payload[..]),
            (&b"data"[..], &b"exactly"[..]),
            "{v}"
        );
        // The handler saw them too.
        for _ in 0..50 {
            if seen.lock().unwrap().len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "{v}");
        assert_eq!(client.unsubscribe("topic/#").unwrap().len(), usize::from(v.is_v5()));
        client.disconnect().unwrap();
        assert!(!client.is_connected());
    }
}

#[test]
fn a_handler_may_publish_and_wait_for_its_acknowledgement() {
    // Command & control: the controller answers each command from inside its handler at QoS 1.
    let Some(broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let controller = SyncClient::connect(options(broker.port, v, "controller")).unwrap();
    controller.subscribe("devices/+/command", QoS::AtLeastOnce).unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (c, a) = (controller.clone(), Arc::clone(&answers));
    controller.on_message(move |msg| {
        let status = format!("{{\"status\":\"{}\"}}", String::from_utf8_lossy(&msg.payload));
        a.lock().unwrap().push(c.publish("devices/status", status, QoS::AtLeastOnce));
    });
    let watcher = SyncClient::connect(options(broker.port, v, "watcher")).unwrap();
    watcher.subscribe("devices/status", QoS::AtLeastOnce).unwrap();
    let device = SyncClient::connect(options(broker.port, v, "device")).unwrap();
    for cmd in ["turn_on", "turn_off", "turn_on"] {
        device.publish("devices/lamp/command", cmd, QoS::AtLeastOnce).unwrap();
    }
    let got: Vec<String> = (0..3)
        .map(|_| watcher.recv_timeout(Duration::from_secs(5)).expect("status"))
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        ["{\"status\":\"turn_on\"}", "{\"status\":\"turn_off\"}", "{\"status\":\"turn_on\"}"]
    );
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|r| matches!(r, Ok(ReasonCode::Success))), "{answers:?}");
}

#[test]
fn reconnects_after_the_broker_is_killed_and_restarted() {
    let Some(mut broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let mut opts = options(broker.port, v, "phoenix");
    opts.config.reconnect.initial_delay = ternmq::core::time::Duration::from_millis(100);
    opts.config.reconnect.max_delay = ternmq::core::time::Duration::from_millis(400);
    opts.config.reconnect.jitter = false;
    let client = SyncClient::connect(opts).unwrap();
    client.subscribe("after/#", QoS::AtLeastOnce).unwrap();
    broker.restart();
    // The client notices, backs off and reconnects; the fresh broker has no session, so the
    // client subscribes again by itself.
    let mut up = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if client.is_connected() {
            up = true;
            break;
        }
    }
    assert!(up, "client did not reconnect");
    let publisher = SyncClient::connect(options(broker.port, v, "after-pub")).unwrap();
    // The restored subscription may land a moment after CONNACK; publish until it arrives.
    let mut received = None;
    for i in 0..20 {
        publisher.publish("after/restart", format!("m{i}"), QoS::AtLeastOnce).unwrap();
        if let Some(m) = client.recv_timeout(Duration::from_millis(250)) {
            received = Some(m);
            break;
        }
    }
    let m = received.expect("a message published after the restart");
    assert!(m.payload.starts_with(b"m"));
}

#[test]
fn refused_connection_is_an_error_naming_the_reason() {
    let Some(broker) = support::Broker::start() else { return };
    // MQTT 3.1.1 with an empty client id and no clean session is refused by the client itself.
    let mut opts = options(broker.port, ProtocolVersion::V3_1_1, "x");
    opts.connect.client_id = MqttStr::default();
    opts.connect.clean_start = false;
    let err = SyncClient::connect(opts).unwrap_err();
    assert!(matches!(err, Error::Client(_)), "{err}");
    // Nothing listens on a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = SyncClient::connect(options(closed, ProtocolVersion::V5, "y")).unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
}

/// The `sync_client` example, run as a user would against a real broker.
#[test]
fn sync_client_example_runs_against_mosquitto() {
    let Some(broker) = support::Broker::start() else { return };
    let bin = support::example_bin("sync_client");
    let out = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &broker.port.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("topic data"), "{stdout}");
}

/// The calls the async clients have: several filters in one SUBSCRIBE, hooks on connection
/// and loss (run in order on the dispatcher thread), and DISCONNECT with a reason code.
#[test]
fn subscribe_many_hooks_and_disconnect_with() {
    use ternmq::codec::{Disconnect, Subscription};
    use ternmq::topic::TopicFilter;
    let Some(mut broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let mut opts = options(broker.port, v, "hooks");
    opts.config.reconnect.initial_delay = ternmq::core::time::Duration::from_millis(100);
    opts.config.reconnect.max_delay = ternmq::core::time::Duration::from_millis(400);
    opts.config.reconnect.jitter = false;
    let client = SyncClient::connect(opts).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (up, down) = (Arc::clone(&events), Arc::clone(&events));
    client.on_connect(move || up.lock().unwrap().push("up"));
    client.on_disconnect(move || down.lock().unwrap().push("down"));
    let subs = [
        Subscription::new(TopicFilter::new("a/#").unwrap(), QoS::AtLeastOnce),
        Subscription::new(TopicFilter::new("b").unwrap(), QoS::ExactlyOnce),
    ];
    assert_eq!(
        client.subscribe_many(&subs).unwrap(),
        [ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS2]
    );
    broker.restart();
    let mut seen = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        seen = events.lock().unwrap().clone();
        if seen == ["down", "up"] {
            break;
        }
    }
    assert_eq!(seen, ["down", "up"], "the loss, then the reconnection");
    client.disconnect_with(Disconnect::new(ReasonCode::DisconnectWithWillMessage)).unwrap();
    assert!(!client.is_connected());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(*events.lock().unwrap(), ["down", "up"], "a requested disconnect is no loss");
}
