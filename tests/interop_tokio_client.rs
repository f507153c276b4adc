//! The async `Client` (ternmq-tokio) against a real Mosquitto on loopback: the seed's basic
//! client example, QoS levels, many tasks on clones of one client, async handlers that publish
//! under load, and reconnecting after the broker is killed and restarted.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode};
use ternmq::tokio::{Client, ConnectOptions};

fn options(port: u16, v: ProtocolVersion, id: &'static str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = v;
    o.connect.client_id = MqttStr::from_static(id);
    o.timeout = Duration::from_secs(5);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_basic_client_example_works() {
    let Some(broker) = support::Broker::start() else { return };
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut opts = options(broker.port, v, "my_client");
        opts.connect.username = Some(MqttStr::from_static("user"));
        opts.connect.password = Some(bytes::Bytes::from_static(b"pass"));
        opts.connect.keep_alive = 60;
        let client = Client::connect(opts).await.unwrap();
        assert_eq!(
            client.subscribe("sensor/#", QoS::AtLeastOnce).await.unwrap(),
            ReasonCode::GrantedQoS1
        );
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        client.on_message(move |msg| {
            assert_eq!(msg.topic.as_str(), "sensor/temp");
            s.fetch_add(1, Ordering::SeqCst);
        });
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(
                client.publish("sensor/temp", "22.5", qos).await.unwrap(),
                ReasonCode::Success
            );
        }
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(5), client.next_message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&m.payload[..], b"22.5");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 3, "{v}");
        client.disconnect().await.unwrap();
        assert!(!client.is_connected());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_publish_concurrently_from_many_tasks() {
    let Some(broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let sub = Client::connect(options(broker.port, v, "fan-sub")).await.unwrap();
    sub.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    let publ = Client::connect(options(broker.port, v, "fan-pub")).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|t| {
            let c = publ.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let r = c.publish(&format!("load/{t}"), format!("{i}"), QoS::AtLeastOnce).await;
                    assert_eq!(r.unwrap(), ReasonCode::Success);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut n = 0;
    while n < 500 {
        tokio::time::timeout(Duration::from_secs(5), sub.next_message()).await.unwrap().unwrap();
        n += 1;
    }
    assert_eq!(n, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handler_publishes_without_deadlock_under_load() {
    // Command & control: the controller answers every command from its async handler at QoS 1.
    let Some(broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let controller = Client::connect(options(broker.port, v, "controller")).await.unwrap();
    controller.subscribe("devices/+/command", QoS::AtLeastOnce).await.unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let (c, a) = (controller.clone(), Arc::clone(&answered));
    controller.on_message_async(move |msg| {
        let (c, a) = (c.clone(), Arc::clone(&a));
        async move {
            let status = format!("{{\"status\":\"{}\"}}", String::from_utf8_lossy(&msg.payload));
            if c.publish("devices/status", status, QoS::AtLeastOnce).await.is_ok() {
                a.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let watcher = Client::connect(options(broker.port, v, "watcher")).await.unwrap();
    watcher.subscribe("devices/status", QoS::AtLeastOnce).await.unwrap();
    let device = Client::connect(options(broker.port, v, "device")).await.unwrap();
    for i in 0..200 {
        device.publish("devices/lamp/command", format!("cmd{i}"), QoS::AtLeastOnce).await.unwrap();
    }
    for _ in 0..200 {
        tokio::time::timeout(Duration::from_secs(5), watcher.next_message())
            .await
            .unwrap()
            .unwrap();
    }
    // The last statuses can reach the watcher before their PUBACKs reach the controller.
    for _ in 0..100 {
        if answered.load(Ordering::SeqCst) == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered.load(Ordering::SeqCst), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_broker_is_killed_and_restarted() {
    let Some(mut broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let client = Client::connect(options(broker.port, v, "phoenix")).await.unwrap();
    // As in the seed's auto-reconnect example.
    client.set_reconnect_options(ternmq::tokio::ReconnectOptions {
        enable: true,
        initial_delay: ternmq::core::time::Duration::from_millis(100),
        max_delay: ternmq::core::time::Duration::from_millis(400),
        backoff_multiplier: 2.0,
        jitter: false,
        ..Default::default()
    });
    let (ups, downs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (u, d) = (Arc::clone(&ups), Arc::clone(&downs));
    client.on_connect(move || {
        u.fetch_add(1, Ordering::SeqCst);
    });
    client.on_disconnect(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    client.subscribe("after/#", QoS::AtLeastOnce).await.unwrap();
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if client.is_connected() && ups.load(Ordering::SeqCst) >= 1 {
            break;
        }
    }
    assert!(client.is_connected(), "client did not reconnect");
    assert_eq!(downs.load(Ordering::SeqCst), 1);
    // The fresh broker has no session: the client subscribed again by itself.
    let publisher = Client::connect(options(broker.port, v, "after-pub")).await.unwrap();
    let mut got = None;
    for i in 0..20 {
        publisher.publish("after/restart", format!("m{i}"), QoS::AtLeastOnce).await.unwrap();
        let next = tokio::time::timeout(Duration::from_millis(250), client.next_message()).await;
        if let Ok(Some(m)) = next {
            got = Some(m);
            break;
        }
    }
    assert!(got.is_some(), "no message after the restart");
}
