//! The Tokio broker server with the Tokio client, in one process on loopback.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ternmq_core::broker::{AuthDecision, AuthRequest, Authenticator};
use ternmq_core::codec::{MqttStr, QoS, ReasonCode};
use ternmq_tokio::server::AuthFuture;
use ternmq_tokio::{AsyncAuthenticator, Client, ConnectOptions, Error, Server, ServerConfig};

async fn start(config: ServerConfig) -> (SocketAddr, ternmq_tokio::ShutdownHandle) {
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.shutdown_handle();
    tokio::spawn(server.run());
    (addr, handle)
}

fn loopback() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0".parse().unwrap())
}

fn options(addr: SocketAddr, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.client_id = MqttStr::new(id).unwrap();
    o.timeout = Duration::from_secs(10);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_at_every_qos() {
    let (addr, stop) = start(loopback()).await;
    let sub = Client::connect(options(addr, "sub")).await.unwrap();
    assert_eq!(sub.subscribe("a/#", QoS::ExactlyOnce).await.unwrap(), ReasonCode::GrantedQoS2);
    let publisher = Client::connect(options(addr, "pub")).await.unwrap();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let code = publisher.publish(&format!("a/{i}"), format!("m{i}"), qos).await.unwrap();
        assert_eq!(code, ReasonCode::Success);
    }
    for i in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.topic.as_str(), format!("a/{i}"));
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
    }
    stop.shutdown();
}

/// Defers every decision to the async side.
struct DeferAll;

impl Authenticator for DeferAll {
    fn authenticate(&self, _: &AuthRequest) -> AuthDecision {
        AuthDecision::Defer
    }
}

/// Looks the password up "remotely" (after a sleep).
struct SlowLookup;

impl AsyncAuthenticator for SlowLookup {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let user = request.username.as_ref().map(MqttStr::as_str);
            match (user, request.password.as_deref()) {
                (Some("alice"), Some(b"secret")) => AuthDecision::Allow,
                _ => AuthDecision::Deny(ReasonCode::BadUserNameOrPassword),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_authentication_is_answered_by_the_async_authenticator() {
    let mut config = loopback();
    config.broker.authenticator = Some(Arc::new(DeferAll));
    config.async_authenticator = Some(Arc::new(SlowLookup));
    let (addr, stop) = start(config).await;
    let mut good = options(addr, "alice-1");
    good.connect.username = Some(MqttStr::new("alice").unwrap());
    good.connect.password = Some("secret".into());
    let client = Client::connect(good).await.unwrap();
    // Connected and usable: nobody subscribes to `x`, which MQTT 5 reports as 0x10.
    let code = client.publish("x", "y", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(code, ReasonCode::NoMatchingSubscribers);
    let mut bad = options(addr, "mallory");
    bad.connect.username = Some(MqttStr::new("alice").unwrap());
    bad.connect.password = Some("guess".into());
    match Client::connect(bad).await {
        Err(Error::Refused(code)) => assert_eq!(code, ReasonCode::BadUserNameOrPassword),
        other => panic!("expected a refusal, got {other:?}"),
    }
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_hold_up_other_subscribers() {
    let mut config = loopback();
    config.broker.max_outbound_bytes = 256 * 1024;
    let (addr, stop) = start(config).await;
    // A raw subscriber that subscribes and then never reads.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    let mut connect = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b's'];
    connect.extend_from_slice(&[0x82, 8, 0, 1, 0, 3, b'b', b'/', b'#', 0]);
    stalled.write_all(&connect).unwrap();

    let healthy = Client::connect(options(addr, "healthy")).await.unwrap();
    healthy.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(options(addr, "pub")).await.unwrap();
    let payload = vec![7u8; 16 * 1024];
    const N: usize = 1000; // 16 MB in all, far beyond what the stalled socket can absorb
    let send = tokio::spawn(async move {
        for i in 0..N {
            publisher.publish(&format!("b/{i}"), payload.clone(), QoS::AtLeastOnce).await.unwrap();
        }
    });
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(30), healthy.next_message())
            .await
            .expect("the healthy subscriber was held up")
            .unwrap();
        assert_eq!(m.topic.as_str(), format!("b/{i}"));
    }
    send.await.unwrap();
    drop(stalled);
    stop.shutdown();
}
