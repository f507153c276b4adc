//! Both async clients (ternmq-tokio and ternmq-smol) against a real Mosquitto on loopback, with
//! the same tests: QoS 0/1/2 both ways in both protocol versions, retained messages, the will
//! after an abrupt end (the application drops its last handle), keep-alive across an idle
//! spell, automatic topic aliases, and reconnecting after the broker is killed and restarted.
//! A macro writes each test once for both runtimes.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode, Will};
use ternmq::topic::TopicName;

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V3_1_1, ProtocolVersion::V5];

fn will(topic: &'static str, payload: &'static str) -> Will {
    Will {
        topic: TopicName::from_static(topic),
        payload: payload.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

macro_rules! async_client_suite {
    ($name:ident, $rt:ident, $block_on:expr, $sleep:expr) => {
        mod $name {
            use super::*;
            use ternmq::$rt::{Client, ConnectOptions};

            fn options(port: u16, v: ProtocolVersion, id: &str) -> ConnectOptions {
                let mut o = ConnectOptions::new("127.0.0.1", port);
                o.connect.protocol = v;
                o.connect.client_id =
                    MqttStr::try_from(format!("{}-{id}", stringify!($rt))).unwrap();
                o.timeout = Duration::from_secs(5);
                o
            }

            /// Waits up to five seconds for the next message.
            async fn next(c: &Client) -> ternmq::codec::Publish {
                let sleep = $sleep;
                smol::future::or(async { c.next_message().await }, async {
                    sleep(Duration::from_secs(5)).await;
                    None
                })
                .await
                .expect("a message within five seconds")
            }

            #[test]
            fn every_qos_both_ways_in_both_versions() {
                let Some(broker) = support::Broker::start() else { return };
                $block_on(async {
                    for v in VERSIONS {
                        let c = Client::connect(options(broker.port, v, "qos")).await.unwrap();
                        for sub in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                            let f = format!("q/{}", sub as u8);
                            let granted = c.subscribe(&format!("{f}/#"), sub).await.unwrap();
                            assert_eq!(granted as u8, sub as u8, "{v}");
                            for publ in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                                let t = format!("{f}/{}", publ as u8);
                                let code = c.publish(&t, "x", publ).await.unwrap();
                                assert_eq!(code, ReasonCode::Success);
                                let m = next(&c).await;
                                assert_eq!(m.topic.as_str(), t);
                                assert_eq!(m.qos, publ.min(sub), "{v}: the lower of the two");
                            }
                        }
                        c.disconnect().await.unwrap();
                    }
                });
            }

            #[test]
            fn retained_messages_reach_later_subscribers_and_are_cleared() {
                let Some(broker) = support::Broker::start() else { return };
                $block_on(async {
                    for v in VERSIONS {
                        let p = Client::connect(options(broker.port, v, "ret-pub")).await.unwrap();
                        let mut m = ternmq::codec::Publish::new(
                            TopicName::from_static("status/lamp"),
                            "on",
                        );
                        m.qos = QoS::AtLeastOnce;
                        m.retain = true;
                        p.publish_with(m.clone()).await.unwrap();
                        let s = Client::connect(options(broker.port, v, "ret-sub")).await.unwrap();
                        s.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
                        let got = next(&s).await;
                        assert!(got.retain, "{v}: sent as retained");
                        assert_eq!(&got.payload[..], b"on");
                        // An empty retained message clears it.
                        m.payload = bytes::Bytes::new();
                        p.publish_with(m).await.unwrap();
                        let _ = next(&s).await;
                        s.disconnect().await.unwrap();
                        let s = Client::connect(options(broker.port, v, "ret-sub2")).await.unwrap();
                        s.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
                        p.publish("status/probe", "p", QoS::AtLeastOnce).await.unwrap();
                        assert_eq!(next(&s).await.topic.as_str(), "status/probe", "{v}: cleared");
                        s.disconnect().await.unwrap();
                        p.disconnect().await.unwrap();
                    }
                });
            }

            #[test]
            fn the_will_goes_out_when_the_client_ends_without_disconnect() {
                let Some(broker) = support::Broker::start() else { return };
                $block_on(async {
                    for v in VERSIONS {
                        let w =
                            Client::connect(options(broker.port, v, "will-watch")).await.unwrap();
                        w.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
                        let mut o = options(broker.port, v, "doomed");
                        o.connect.will = Some(will("wills/doomed", "offline"));
                        let doomed = Client::connect(o).await.unwrap();
                        drop(doomed); // the last handle: the connection ends, no DISCONNECT
                        let got = next(&w).await;
                        assert_eq!(
                            (got.topic.as_str(), &got.payload[..]),
                            ("wills/doomed", &b"offline"[..])
                        );
                        // With DISCONNECT, no will.
                        let mut o = options(broker.port, v, "polite");
                        o.connect.will = Some(will("wills/polite", "offline"));
                        let polite = Client::connect(o).await.unwrap();
                        polite.disconnect().await.unwrap();
                        w.publish("wills/probe", "p", QoS::AtLeastOnce).await.unwrap();
                        assert_eq!(next(&w).await.topic.as_str(), "wills/probe", "{v}");
                        w.disconnect().await.unwrap();
                    }
                });
            }

            #[test]
            fn keep_alive_holds_an_idle_connection() {
                let Some(broker) = support::Broker::start() else { return };
                $block_on(async {
                    let mut o = options(broker.port, ProtocolVersion::V5, "idle");
                    o.connect.keep_alive = 1;
                    let c = Client::connect(o).await.unwrap();
                    c.subscribe("idle/#", QoS::AtLeastOnce).await.unwrap();
                    // Mosquitto closes a client silent for 1.5 keep-alives: PINGREQs prevent it.
                    ($sleep)(Duration::from_millis(3500)).await;
                    assert!(c.is_connected());
                    c.publish("idle/x", "still here", QoS::AtLeastOnce).await.unwrap();
                    assert_eq!(&next(&c).await.payload[..], b"still here");
                    c.disconnect().await.unwrap();
                });
            }

            #[test]
            fn automatic_topic_aliases_keep_every_topic_right() {
                let Some(broker) = support::Broker::start() else { return };
                $block_on(async {
                    let s = Client::connect(options(broker.port, ProtocolVersion::V5, "alias-sub"))
                        .await
                        .unwrap();
                    s.subscribe("alias/#", QoS::AtLeastOnce).await.unwrap();
                    let mut o = options(broker.port, ProtocolVersion::V5, "alias-pub");
                    o.config.auto_topic_alias = true;
                    let p = Client::connect(o).await.unwrap();
                    // More topics than Mosquitto's default Topic Alias Maximum (10), in turn.
                    let topics: Vec<String> = (0..15).map(|i| format!("alias/t{i}")).collect();
                    for round in 0..3 {
                        for t in &topics {
                            p.publish(t, format!("{round}"), QoS::AtLeastOnce).await.unwrap();
                            assert_eq!(next(&s).await.topic.as_str(), t.as_str());
                        }
                    }
                    p.disconnect().await.unwrap();
                    s.disconnect().await.unwrap();
                });
            }

            #[test]
            fn reconnects_after_the_broker_is_killed_and_restarted() {
                let Some(mut broker) = support::Broker::start() else { return };
                let port = broker.port;
                $block_on(async {
                    let mut o = options(port, ProtocolVersion::V5, "phoenix");
                    o.config.reconnect.initial_delay =
                        ternmq::core::time::Duration::from_millis(100);
                    o.config.reconnect.max_delay = ternmq::core::time::Duration::from_millis(400);
                    let c = Client::connect(o).await.unwrap();
                    c.subscribe("after/#", QoS::AtLeastOnce).await.unwrap();
                    broker.restart();
                    let mut up = false;
                    for _ in 0..100 {
                        ($sleep)(Duration::from_millis(50)).await;
                        if c.is_connected() {
                            up = true;
                            break;
                        }
                    }
                    assert!(up, "no reconnection");
                    // The new broker has no session: the client subscribed again by itself.
                    let p = Client::connect(options(port, ProtocolVersion::V5, "after-pub"))
                        .await
                        .unwrap();
                    p.publish("after/restart", "back", QoS::AtLeastOnce).await.unwrap();
                    assert_eq!(&next(&c).await.payload[..], b"back");
                    p.disconnect().await.unwrap();
                    c.disconnect().await.unwrap();
                });
                drop(broker);
            }
        }
    };
}

fn tokio_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async_client_suite!(tokio_client, tokio, tokio_block_on, |d: Duration| async move {
    tokio::time::sleep(d).await
});
async_client_suite!(smol_client, smol, smol::block_on, |d: Duration| async move {
    smol::Timer::after(d).await;
});
