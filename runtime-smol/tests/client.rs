//! The smol client against the smol broker server, in one process on loopback: when each
//! call completes and what it returns, handlers that publish under load, reconnecting after
//! the server restarts, and a disconnect that flushes what was published before it.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use smol::{Timer, future};
use ternmq_core::client::DisconnectReason;
use ternmq_core::codec::{
    MqttStr, ProtocolVersion, QoS, ReasonCode, Subscription, Will, WillProperties,
};
use ternmq_core::topic::{TopicFilter, TopicName};
use ternmq_smol::{Client, ConnectOptions, Error, ReconnectOptions, Server, ServerConfig};

/// A smol server on its own thread; shut down and joined on drop.
struct Running {
    addr: SocketAddr,
    handle: ternmq_smol::ShutdownHandle,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(addr: SocketAddr) -> Running {
        let server = Server::bind_blocking(ServerConfig::new(addr)).unwrap();
        let addr = server.local_addrs()[0];
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run_blocking().unwrap());
        Running { addr, handle, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn server() -> Running {
    Running::start("127.0.0.1:0".parse().unwrap())
}

fn options(addr: SocketAddr, version: ProtocolVersion, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.protocol = version;
    o.connect.client_id = MqttStr::new(id).unwrap();
    o.timeout = Duration::from_secs(10);
    o
}

/// `fut`, or a panic after `secs` seconds.
async fn bounded<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    future::or(fut, async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        panic!("{what}: not done within {secs} s")
    })
    .await
}

async fn next(c: &Client) -> ternmq_core::codec::Publish {
    bounded(10, "next message", c.next_message()).await.expect("the client stopped")
}

#[test]
fn publish_completes_at_every_qos_with_the_servers_reason_code() {
    let s = server();
    smol::block_on(async {
        for (v, tag) in [(ProtocolVersion::V5, "5"), (ProtocolVersion::V3_1_1, "311")] {
            let sub = Client::connect(options(s.addr, v, &format!("sub-{tag}"))).await.unwrap();
            assert_eq!(
                sub.subscribe("a/#", QoS::ExactlyOnce).await.unwrap(),
                ReasonCode::GrantedQoS2
            );
            let publ = Client::connect(options(s.addr, v, &format!("pub-{tag}"))).await.unwrap();
            for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].iter().enumerate()
            {
                let code = publ.publish(&format!("a/{i}"), format!("m{i}"), *qos).await.unwrap();
                assert_eq!(code, ReasonCode::Success, "{v} {qos:?}");
            }
            for i in 0..3 {
                let m = next(&sub).await;
                assert_eq!(m.topic.as_str(), format!("a/{i}"));
                assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
            }
            // The code is the server's: MQTT 5 says when nobody subscribed, 3.1.1 cannot.
            let code = publ.publish("nobody/here", "x", QoS::AtLeastOnce).await.unwrap();
            let expected =
                if v.is_v5() { ReasonCode::NoMatchingSubscribers } else { ReasonCode::Success };
            assert_eq!(code, expected);
            // QoS 2 ends with PUBCOMP, whose code is Success (0x10 was in the PUBREC).
            let code = publ.publish("nobody/here", "x", QoS::ExactlyOnce).await.unwrap();
            assert_eq!(code, ReasonCode::Success);
            assert!(matches!(
                publ.publish("a/+", "x", QoS::AtMostOnce).await,
                Err(Error::Topic(_))
            ));
            sub.disconnect().await.unwrap();
            publ.disconnect().await.unwrap();
            assert!(!publ.is_connected());
        }
    });
}

#[test]
fn subscribe_and_unsubscribe_return_the_servers_reason_codes() {
    let s = server();
    smol::block_on(async {
        for (v, tag) in [(ProtocolVersion::V5, "5"), (ProtocolVersion::V3_1_1, "311")] {
            let c = Client::connect(options(s.addr, v, &format!("subs-{tag}"))).await.unwrap();
            let subs = [
                Subscription::new(TopicFilter::new("x/#").unwrap(), QoS::AtMostOnce),
                Subscription::new(TopicFilter::new("y").unwrap(), QoS::AtLeastOnce),
                Subscription::new(TopicFilter::new("z/+").unwrap(), QoS::ExactlyOnce),
            ];
            assert_eq!(
                c.subscribe_many(&subs).await.unwrap(),
                [ReasonCode::Success, ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS2]
            );
            let codes = c.unsubscribe("y").await.unwrap();
            let never = c.unsubscribe("never/subscribed").await.unwrap();
            if v.is_v5() {
                assert_eq!(codes, [ReasonCode::Success]);
                assert_eq!(never, [ReasonCode::NoSubscriptionExisted]);
            } else {
                assert!(codes.is_empty() && never.is_empty(), "3.1.1 has no reason codes");
            }
            assert!(matches!(c.subscribe("a/#/b", QoS::AtMostOnce).await, Err(Error::Topic(_))));
            c.disconnect().await.unwrap();
            // A stopped client refuses at once, saying why it stopped (not a timeout).
            assert!(matches!(
                c.subscribe("x", QoS::AtMostOnce).await,
                Err(Error::Disconnected(DisconnectReason::Requested))
            ));
            assert!(c.next_message().await.is_none(), "no message after the stop");
        }
    });
}

#[test]
fn async_handlers_publish_and_await_their_acks_under_load() {
    const N: usize = 500;
    let s = server();
    smol::block_on(bounded(60, "500 commands answered", async {
        let v = ProtocolVersion::V5;
        let controller = Client::connect(options(s.addr, v, "controller")).await.unwrap();
        controller.subscribe("devices/+/command", QoS::AtLeastOnce).await.unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let (c, a) = (controller.clone(), Arc::clone(&answered));
        controller.on_message_async(move |msg| {
            let (c, a) = (c.clone(), Arc::clone(&a));
            async move {
                let status =
                    format!("{{\"status\":\"{}\"}}", String::from_utf8_lossy(&msg.payload));
                if c.publish("devices/status", status, QoS::AtLeastOnce).await.is_ok() {
                    a.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let watcher = Client::connect(options(s.addr, v, "watcher")).await.unwrap();
        watcher.subscribe("devices/status", QoS::AtLeastOnce).await.unwrap();
        let device = Client::connect(options(s.addr, v, "device")).await.unwrap();
        for i in 0..N {
            device
                .publish("devices/lamp/command", format!("cmd{i}"), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        for _ in 0..N {
            next(&watcher).await;
        }
        // The last statuses can reach the watcher before their PUBACKs reach the controller.
        for _ in 0..250 {
            if answered.load(Ordering::SeqCst) == N {
                break;
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        assert_eq!(answered.load(Ordering::SeqCst), N);
    }));
}

#[test]
fn reconnects_after_the_server_restarts() {
    let mut s = server();
    let addr = s.addr;
    let client = smol::block_on(async {
        let client = Client::connect(options(addr, ProtocolVersion::V5, "phoenix")).await.unwrap();
        client.set_reconnect_options(ReconnectOptions {
            enable: true,
            initial_delay: ternmq_core::time::Duration::from_millis(100),
            max_delay: ternmq_core::time::Duration::from_millis(400),
            backoff_multiplier: 2.0,
            jitter: false,
            ..Default::default()
        });
        client.subscribe("after/#", QoS::AtLeastOnce).await.unwrap();
        client
    });
    let (ups, downs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (u, d) = (Arc::clone(&ups), Arc::clone(&downs));
    client.on_connect(move || {
        u.fetch_add(1, Ordering::SeqCst);
    });
    client.on_disconnect(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    // Shutdown tells the client why (DISCONNECT 0x8B); a fresh server on the same port has no
    // session for it.
    s.stop();
    let deadline = StdInstant::now() + Duration::from_secs(10);
    while client.is_connected() {
        assert!(StdInstant::now() < deadline, "still connected after the shutdown");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _s = Running::start(addr);
    smol::block_on(async {
        for _ in 0..200 {
            if client.is_connected() && ups.load(Ordering::SeqCst) >= 1 {
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        assert!(client.is_connected(), "the client did not reconnect");
        assert_eq!(downs.load(Ordering::SeqCst), 1);
        assert_eq!(ups.load(Ordering::SeqCst), 1);
        // The client subscribed again by itself; that may land a moment after CONNACK.
        let publisher =
            Client::connect(options(addr, ProtocolVersion::V5, "after-pub")).await.unwrap();
        let mut got = None;
        for i in 0..40 {
            publisher.publish("after/restart", format!("m{i}"), QoS::AtLeastOnce).await.unwrap();
            let wait = future::or(async { client.next_message().await }, async {
                smol::Timer::after(Duration::from_millis(250)).await;
                None
            });
            if let Some(m) = wait.await {
                got = Some(m);
                break;
            }
        }
        assert!(got.is_some_and(|m| m.payload.starts_with(b"m")), "no message after the restart");
        client.disconnect().await.unwrap();
    });
}

/// Holds smol's global executor (one thread unless `SMOL_THREADS` says otherwise) until the
/// returned sender is dropped, so that what the test queues meanwhile reaches the driver task
/// in one batch.
fn hold_the_executor() -> std::sync::mpsc::Sender<()> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    smol::spawn(async move {
        let _ = started_tx.send(());
        let _ = gate_rx.recv_timeout(Duration::from_secs(5));
    })
    .detach();
    started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    gate_tx
}

#[test]
fn disconnect_flushes_the_publishes_made_before_it() {
    const N: usize = 200;
    let s = server();
    smol::block_on(bounded(30, "flush on disconnect", async {
        let v = ProtocolVersion::V3_1_1;
        let sub = Client::connect(options(s.addr, v, "flush-sub")).await.unwrap();
        sub.subscribe("flush/#", QoS::AtMostOnce).await.unwrap();
        let mut o = options(s.addr, v, "flush-pub");
        // Sent by the server only if the connection ends without a DISCONNECT.
        o.connect.will = Some(Will {
            topic: TopicName::new("flush/will").unwrap(),
            payload: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let publ = Client::connect(o).await.unwrap();
        let gate = hold_the_executor();
        // Each publish is queued on its first poll and then waits for its write; the
        // DISCONNECT is queued behind all of them, before the driver task writes any.
        let mut pending: Vec<_> = (0..N)
            .map(|i| {
                let p = publ.clone();
                Box::pin(
                    async move { p.publish(&format!("flush/{i}"), "x", QoS::AtMostOnce).await },
                )
            })
            .collect();
        for p in &mut pending {
            assert!(future::poll_once(p).await.is_none(), "done before it was written");
        }
        let mut disconnect = Box::pin(publ.disconnect());
        assert!(future::poll_once(&mut disconnect).await.is_none());
        drop(gate);
        disconnect.await.unwrap();
        for p in pending {
            assert_eq!(p.await.unwrap(), ReasonCode::Success);
        }
        for i in 0..N {
            assert_eq!(next(&sub).await.topic.as_str(), format!("flush/{i}"));
        }
        // The DISCONNECT arrived: no will.
        let will = future::or(async { sub.next_message().await }, async {
            smol::Timer::after(Duration::from_millis(300)).await;
            None
        });
        assert_eq!(will.await, None, "the server published the will");
        // Refused at once by the stopped client (a timeout would say Timeout).
        assert!(matches!(
            publ.publish("flush/late", "x", QoS::AtMostOnce).await,
            Err(Error::Disconnected(DisconnectReason::Requested))
        ));
    }));
}

#[test]
fn a_message_larger_than_one_read_arrives_whole() {
    let s = server();
    smol::block_on(async {
        let c = Client::connect(options(s.addr, ProtocolVersion::V5, "big")).await.unwrap();
        c.subscribe("big", QoS::AtLeastOnce).await.unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.publish("big", payload.clone(), QoS::AtLeastOnce).await.unwrap();
        let m = next(&c).await;
        assert_eq!(&m.payload[..], &payload[..]);
    });
}

#[test]
fn connecting_to_a_closed_port_is_an_io_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let err = smol::block_on(Client::connect(options(addr, ProtocolVersion::V5, "x"))).unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
}

#[test]
fn dropping_every_handle_closes_the_connection_and_the_will_goes_out() {
    let s = server();
    future::block_on(async {
        let watcher =
            Client::connect(options(s.addr, ProtocolVersion::V5, "drop-watch")).await.unwrap();
        watcher.subscribe("drop/will", QoS::AtLeastOnce).await.unwrap();
        let mut o = options(s.addr, ProtocolVersion::V5, "dropped");
        o.connect.will = Some(Will {
            topic: TopicName::new("drop/will").unwrap(),
            payload: "gone".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let client = Client::connect(o).await.unwrap();
        let clone = client.clone();
        drop(client);
        assert!(clone.is_connected(), "a clone still holds it");
        drop(clone);
        let will = future::or(async { watcher.next_message().await }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        })
        .await
        .expect("the will, once the last handle is gone");
        assert_eq!(&will.payload[..], b"gone");
    });
}

#[test]
fn a_custom_dialer_carries_the_connection_and_every_reconnection() {
    let s = server();
    let addr = s.addr;
    let dials = Arc::new(AtomicUsize::new(0));
    let dialer: ternmq_smol::Dialer = {
        let dials = Arc::clone(&dials);
        Arc::new(move || {
            dials.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let stream = smol::net::TcpStream::connect(addr).await?;
                Ok(Box::new(stream) as Box<dyn ternmq_smol::Transport>)
            })
        })
    };
    future::block_on(async {
        let mut o = options(addr, ProtocolVersion::V5, "dialed");
        o.config.reconnect.initial_delay = ternmq_core::time::Duration::from_millis(50);
        let client = Client::connect_via(o, dialer).await.unwrap();
        client.publish("x", "y", QoS::AtLeastOnce).await.unwrap();
        // A takeover disconnects it; it dials again through the dialer.
        let thief = Client::connect(options(addr, ProtocolVersion::V5, "dialed")).await.unwrap();
        thief.disconnect().await.unwrap();
        let deadline = StdInstant::now() + Duration::from_secs(10);
        while !(dials.load(Ordering::SeqCst) >= 2 && client.is_connected()) {
            assert!(StdInstant::now() < deadline, "no reconnection through the dialer");
            Timer::after(Duration::from_millis(20)).await;
        }
        client.publish("x", "z", QoS::AtLeastOnce).await.unwrap();
    });
}
