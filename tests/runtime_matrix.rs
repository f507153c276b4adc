//! The full runtime matrix: each runtime's client (Tokio, smol, std) against each runtime's
//! broker server (Tokio, std, smol), nine pairs, each doing a QoS 2 round trip (subscribe,
//! publish, receive exactly once) on loopback in both protocol versions; a graceful shutdown
//! that tells MQTT 5 clients why; and, on every server, a subscriber that never reads without
//! holding up the others.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::{Running, serve};
use ternmq::blocking::SyncClient;
use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(runtime: &str) -> (SocketAddr, Running) {
    start_with(runtime, ternmq::broker::BrokerConfig::default())
}

fn start_with(runtime: &str, broker: ternmq::broker::BrokerConfig) -> (SocketAddr, Running) {
    let mut config = ternmq::tokio::ServerConfig::new(loopback());
    config.broker = broker;
    let (addrs, running) = serve(runtime, config);
    (addrs[0], running)
}

/// Subscribes, publishes at QoS 2 and receives the message exactly once, with `client`.
fn round_trip(client: &str, addr: SocketAddr, version: ProtocolVersion, tag: &str) {
    let mut o = ternmq::blocking::ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.protocol = version;
    o.connect.client_id = MqttStr::new(&format!("{client}-{tag}")).unwrap();
    support::round_trip(client, o, &format!("matrix/{tag}"));
}

/// Every client runtime, in both versions, against `server`'s runtime.
fn every_client_against(server: &str) {
    let (addr, running) = start(server);
    for client in ["tokio", "smol", "std"] {
        for (version, v) in [(ProtocolVersion::V5, "5"), (ProtocolVersion::V3_1_1, "311")] {
            round_trip(client, addr, version, &format!("{server}-{client}-{v}"));
        }
    }
    drop(running);
}

#[test]
fn tokio_smol_and_std_clients_against_the_tokio_server_qos2_round_trip() {
    every_client_against("tokio");
}

#[test]
fn tokio_smol_and_std_clients_against_the_std_server_qos2_round_trip() {
    every_client_against("std");
}

#[test]
fn tokio_smol_and_std_clients_against_the_std_server_with_io_threads_qos2_round_trip() {
    every_client_against("std-io");
}

#[test]
fn tokio_smol_and_std_clients_against_the_smol_server_qos2_round_trip() {
    every_client_against("smol");
}

#[test]
fn std_server_shutdown_sends_server_shutting_down_to_v5_clients() {
    for runtime in ["std", "std-io"] {
        std_server_shutdown_sends_server_shutting_down(runtime);
    }
}

fn std_server_shutdown_sends_server_shutting_down(runtime: &str) {
    let (addr, running) = start(runtime);
    let o = ternmq::blocking::ConnectOptions::new("127.0.0.1", addr.port());
    let c = SyncClient::connect(o).unwrap();
    assert!(c.is_connected());
    drop(running);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.is_connected() {
        assert!(std::time::Instant::now() < deadline, "still connected after shutdown");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client still sending when the broker ends its connection for a protocol error reads the
/// DISCONNECT and its reason, on every server: the broker shuts its side and drains the
/// client's input until the client closes, instead of closing on unread input, which resets
/// the connection (the client's next write fails, and the reason can be lost).
fn a_client_still_sending_reads_the_disconnect(server: &str) {
    use std::io::{Read, Write};
    use ternmq::codec::{Connect, Decoder, Encoder, Packet};
    let (addr, _running) = start(server);
    let v5 = ProtocolVersion::V5;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut out = bytes::BytesMut::new();
    let connect = Connect::new(v5, MqttStr::new(&format!("still-sending-{server}")).unwrap());
    Encoder::new(v5).encode(&connect.into(), &mut out).unwrap();
    // A PUBLISH whose topic has a wildcard: a protocol error the broker answers with DISCONNECT.
    out.extend_from_slice(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00]);
    s.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for n in 0..50 {
        s.write_all(&[0xC0, 0x00]).unwrap_or_else(|e| panic!("{server}: PINGREQ {n}: {e}"));
        std::thread::sleep(Duration::from_millis(5));
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap_or_else(|e| panic!("{server}: reading: {e}"));
    let mut got = bytes::BytesMut::from(&got[..]);
    let mut dec = Decoder::new(Some(v5), u32::MAX);
    let mut reason = None;
    while let Some(p) = dec.decode(&mut got).unwrap() {
        if let Packet::Disconnect(d) = p {
            reason = Some(d.reason_code);
        }
    }
    assert_eq!(reason, Some(ReasonCode::TopicNameInvalid), "{server}");
}

#[test]
fn a_client_still_sending_reads_the_disconnect_on_every_server() {
    for server in ["tokio", "std", "std-io", "smol"] {
        a_client_still_sending_reads_the_disconnect(server);
    }
}

fn sync_client(addr: SocketAddr, id: &str) -> SyncClient {
    let mut o = ternmq::blocking::ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.client_id = MqttStr::new(id).unwrap();
    SyncClient::connect(o).unwrap()
}

/// A subscriber that never reads gets no say in how fast the others are served: its socket
/// fills, its output stays within the broker's limits, and a healthy subscriber of the same
/// messages gets every one of them, in order.
fn a_stalled_reader_does_not_hold_up_others(server: &str) {
    use std::io::Write;
    let mut config = ternmq::broker::BrokerConfig::default();
    config.max_outbound_bytes = 256 * 1024;
    let (addr, _running) = start_with(server, config);
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    let mut connect = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b's'];
    connect.extend_from_slice(&[0x82, 8, 0, 1, 0, 3, b'b', b'/', b'#', 0]);
    stalled.write_all(&connect).unwrap();

    let healthy = sync_client(addr, &format!("healthy-{server}"));
    healthy.subscribe("b/#", QoS::AtLeastOnce).unwrap();
    let publisher = sync_client(addr, &format!("pub-{server}"));
    const N: usize = 600; // about 10 MB, far beyond what the stalled socket absorbs
    let send = std::thread::spawn(move || {
        let payload = vec![7u8; 16 * 1024];
        for i in 0..N {
            publisher.publish(&format!("b/{i}"), payload.clone(), QoS::AtLeastOnce).unwrap();
        }
    });
    for i in 0..N {
        let m = healthy
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{server}: the healthy subscriber was held up at {i}"));
        assert_eq!(m.topic.as_str(), format!("b/{i}"), "{server}");
    }
    send.join().unwrap();
    drop(stalled);
}

#[test]
fn a_stalled_reader_does_not_hold_up_others_on_every_server() {
    for server in ["tokio", "std", "std-io", "smol"] {
        a_stalled_reader_does_not_hold_up_others(server);
    }
}

/// Defers every decision on `slow/...` and allows the rest.
struct Deferring;

impl ternmq::broker::Authorizer for Deferring {
    fn authorize(
        &self,
        _: &ternmq::broker::ClientInfo<'_>,
        _: ternmq::broker::Action,
        _: &str,
    ) -> bool {
        true
    }
    fn decide(
        &self,
        _: &ternmq::broker::ClientInfo<'_>,
        _: ternmq::broker::Action,
        topic: &str,
    ) -> ternmq::broker::AuthzDecision {
        if topic.starts_with("slow/") {
            ternmq::broker::AuthzDecision::Defer
        } else {
            ternmq::broker::AuthzDecision::Allow
        }
    }
}

/// Answers a deferred decision later: `slow/ok` is allowed, the rest refused.
fn answer(topic: &str) -> bool {
    std::thread::sleep(Duration::from_millis(20));
    topic == "slow/ok"
}

struct AsyncAnswer;

impl ternmq::tokio::AsyncAuthorizer for AsyncAnswer {
    fn authorize(
        &self,
        request: ternmq::tokio::server::AuthorizeRequest,
    ) -> ternmq::tokio::server::AuthzFuture {
        Box::pin(async move { answer(&request.topic) })
    }
}

struct BlockingAnswer;

impl ternmq::blocking::BlockingAuthorizer for BlockingAnswer {
    fn authorize(&self, request: ternmq::blocking::server::AuthorizeRequest) -> bool {
        answer(&request.topic)
    }
}

/// Every server waits for a deferred authorization and carries on with its answer, whichever
/// kind of hook gives it: an async one or a blocking one (all servers share one configuration).
#[test]
fn every_server_waits_for_a_deferred_authorization() {
    for runtime in ["tokio", "std", "std-io", "smol"] {
        for blocking in [false, true] {
            let mut config = ternmq::tokio::ServerConfig::new(loopback());
            config.broker.authorizer = Some(std::sync::Arc::new(Deferring));
            if blocking {
                config.blocking_authorizer = Some(std::sync::Arc::new(BlockingAnswer));
            } else {
                config.async_authorizer = Some(std::sync::Arc::new(AsyncAnswer));
            }
            let (addrs, _running) = serve(runtime, config);
            let addr = addrs[0];
            let what = format!("{runtime}, blocking hook: {blocking}");
            let mut o = ternmq::blocking::ConnectOptions::new("127.0.0.1", addr.port());
            o.connect.client_id = MqttStr::new(&format!("deferred-{runtime}")).unwrap();
            let c = SyncClient::connect(o).unwrap();
            let ok = c.publish("slow/ok", "x", QoS::AtLeastOnce).unwrap();
            assert_eq!(ok, ReasonCode::NoMatchingSubscribers, "{what}");
            let no = c.publish("slow/no", "x", QoS::AtLeastOnce).unwrap();
            assert_eq!(no, ReasonCode::NotAuthorized, "{what}");
            let no = c.subscribe("slow/no", QoS::AtLeastOnce).unwrap();
            assert_eq!(no, ReasonCode::NotAuthorized, "{what}");
            let fast = c.subscribe("fast/x", QoS::AtLeastOnce).unwrap();
            assert_eq!(fast, ReasonCode::GrantedQoS1, "{what}");
            c.disconnect().unwrap();
        }
    }
}

/// Every server carries its control handle's requests to its broker and back: listing, kicking
/// (the v5 client reads why) and publishing as the broker, and refuses them once stopped.
fn the_control_handle_reaches_the_broker(server: &str) {
    use ternmq::broker::admin::{Request, Response};
    let (addr, running) = start(server);
    let control = running.control.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !control.is_ready() {
        assert!(std::time::Instant::now() < deadline, "{server}: never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(control.listeners()[0].addr, addr);
    let sub = sync_client(addr, &format!("control-sub-{server}"));
    sub.subscribe("control/#", QoS::AtLeastOnce).unwrap();
    let listed = control
        .request_blocking(Request::ListClients {
            prefix: "control-".into(),
            after: None,
            limit: 10,
        })
        .unwrap();
    let Response::Clients { clients, next: None } = listed else { panic!("{server}: {listed:?}") };
    assert_eq!(clients.len(), 1, "{server}");
    assert_eq!(clients[0].subscriptions, 1, "{server}");

    let mut publish = ternmq::codec::Publish::new(
        ternmq::topic::TopicName::new("control/a").unwrap(),
        bytes::Bytes::from_static(b"from the operator"),
    );
    publish.qos = QoS::AtLeastOnce;
    let answer = control.request_blocking(Request::Publish(publish)).unwrap();
    assert!(matches!(answer, Response::Published { matched: 1 }), "{server}: {answer:?}");
    let got = sub.recv_timeout(Duration::from_secs(10)).expect("the broker's publish");
    assert_eq!(&got.payload[..], b"from the operator");

    let kicked = control
        .request_blocking(Request::Disconnect {
            client_id: format!("control-sub-{server}"),
            reason: ReasonCode::AdministrativeAction,
            discard_session: false,
        })
        .unwrap();
    assert!(matches!(kicked, Response::Disconnected { found: true }), "{server}: {kicked:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sub.is_connected() {
        assert!(std::time::Instant::now() < deadline, "{server}: still connected after a kick");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(running);
    assert!(!control.is_ready(), "{server}: ready after it stopped");
    assert!(control.request_blocking(Request::Stats).is_err(), "{server}: answered when stopped");
}

#[test]
fn every_server_answers_its_control_handle() {
    for server in ["tokio", "std", "std-io", "smol"] {
        the_control_handle_reaches_the_broker(server);
    }
}
