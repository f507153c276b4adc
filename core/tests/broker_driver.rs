//! The server-side `Driver`: write window, pausing and resuming input, closing.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::BytesMut;
use ternmq_core::broker::driver::{Action, Driver, WRITE_WINDOW};
use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::codec::{
    Encoder, Packet, ProtocolVersion, QoS, Subscribe, Subscription, SubscriptionOptions,
};
use ternmq_core::time::Instant;

const NOW: Instant = Instant::from_secs(10);

fn bytes(p: Packet) -> BytesMut {
    let mut b = BytesMut::new();
    Encoder::new(ProtocolVersion::V5).encode(&p, &mut b).unwrap();
    b
}

/// A driver with a QoS 0 subscriber to `t` (handle 0) and a publisher (handle 1).
fn setup(config: BrokerConfig) -> (Driver<u32>, ConnId, ConnId) {
    let mut d = Driver::new(Broker::new(config, NOW).unwrap());
    let mut ids = Vec::new();
    for h in 0..2u32 {
        let id = d.accepted(NOW, PeerInfo::default(), h).unwrap();
        d.input(NOW, id, bytes(connect_packet(V5, &format!("c{h}"), true).into()));
        ids.push(id);
    }
    let sub = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription {
            filter: filter("t"),
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        }],
        properties: Default::default(),
    };
    d.input(NOW, ids[0], bytes(Packet::Subscribe(sub)));
    while d.poll_action().is_some() {}
    (d, ids[0], ids[1])
}

fn burst(n: usize) -> BytesMut {
    let mut b = BytesMut::new();
    for _ in 0..n {
        let p = publish("t", &[7u8; 64], QoS::AtMostOnce, 0);
        Encoder::new(ProtocolVersion::V5).encode(&p.into(), &mut b).unwrap();
    }
    b
}

#[derive(Default)]
struct Seen {
    /// Bytes handed to each handle's writer and not yet acknowledged.
    writes: Vec<(u32, usize)>,
    paused: bool,
    closed: Vec<u32>,
}

fn drain(d: &mut Driver<u32>, seen: &mut Seen) {
    while let Some(a) = d.poll_action() {
        match a {
            Action::Write(h, chunks) => {
                let n: usize = chunks.iter().map(|c| c.len()).sum();
                assert!(n <= WRITE_WINDOW, "a write larger than the window");
                seen.writes.push((h, n));
            }
            Action::PauseRead(h) => {
                assert_eq!(h, 1);
                seen.paused = true;
            }
            Action::ResumeRead(_) => seen.paused = false,
            Action::Close(h) => seen.closed.push(h),
            _ => {}
        }
    }
}

#[test]
fn a_publisher_that_leaves_while_paused_loses_nothing() {
    let mut config = BrokerConfig::default();
    config.max_packet_size = 1024;
    config.max_outbound_bytes = 4096;
    let (mut d, sub, publisher) = setup(config);
    let mut seen = Seen::default();
    // Far more than the window and the broker's output limit: the publisher gets paused.
    d.input(NOW, publisher, burst(20_000));
    drain(&mut d, &mut seen);
    assert!(seen.paused);
    // The client sent everything and closed; what it sent is not lost.
    d.closed(NOW, publisher);
    drain(&mut d, &mut seen);
    assert!(seen.closed.is_empty(), "closed before its input was handled");
    let mut delivered = 0;
    let before = d.broker().stats().messages_received;
    while !seen.writes.is_empty() {
        let (h, n) = seen.writes.remove(0);
        assert_eq!(h, 0, "only the subscriber is written to");
        delivered += n;
        d.written(sub, n);
        d.timeout(NOW);
        drain(&mut d, &mut seen);
    }
    assert_eq!(seen.closed, [1], "closed once its input was handled");
    assert!(d.broker().stats().messages_received > before);
    assert_eq!(d.broker().stats().messages_received, 20_000);
    assert_eq!(d.broker().stats().dropped_slow_consumer, 0);
    assert!(delivered > 20_000 * 64);
}

#[test]
fn a_paused_publisher_is_resumed_by_the_subscriber_s_writes_alone() {
    // A server that acts only on what happens (no timer is due while a publisher is paused and
    // the subscriber sends nothing) must learn from `written` that it may read again.
    let mut config = BrokerConfig::default();
    config.max_packet_size = 1024;
    let (mut d, sub, publisher) = setup(config);
    let mut seen = Seen::default();
    d.input(NOW, publisher, burst(5_000));
    drain(&mut d, &mut seen);
    assert!(seen.paused, "the burst did not pause the publisher");
    while seen.paused {
        assert!(!seen.writes.is_empty(), "paused with nothing left to write");
        let (h, n) = seen.writes.remove(0);
        assert_eq!(h, 0);
        d.written(sub, n);
        drain(&mut d, &mut seen);
    }
    assert_eq!(d.broker().stats().dropped_slow_consumer, 0);
}
