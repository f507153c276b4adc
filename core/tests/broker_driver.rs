//! The server-side `Driver`: write window, pausing and resuming input, closing.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::BytesMut;
use ternmq_core::broker::driver::{
    ACCEPT_BACKOFF, Command, Driver, LINGER, SHUTDOWN_FLUSH, WRITE_TIMEOUT, WRITE_WINDOW,
};
use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::codec::{
    Encoder, Packet, ProtocolVersion, QoS, Subscribe, Subscription, SubscriptionOptions,
};
use ternmq_core::time::{Duration, Instant};

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
        let id = d.handle_accepted(NOW, PeerInfo::default(), h).unwrap();
        d.handle_bytes(NOW, id, bytes(connect_packet(V5, &format!("c{h}"), true).into()));
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
    d.handle_bytes(NOW, ids[0], bytes(Packet::Subscribe(sub)));
    // Every writer writes what it got (CONNACK, SUBACK).
    while let Some(c) = d.poll_command() {
        if let Command::Write(h, chunks) = c {
            let n = chunks.iter().map(|c| c.len()).sum();
            d.handle_written(NOW, ids[h as usize], n);
        }
    }
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
    while let Some(a) = d.poll_command() {
        match a {
            Command::Write(h, chunks) => {
                let n: usize = chunks.iter().map(|c| c.len()).sum();
                assert!(n <= WRITE_WINDOW, "a write larger than the window");
                seen.writes.push((h, n));
            }
            Command::PauseRead(h) => {
                assert_eq!(h, 1);
                seen.paused = true;
            }
            Command::ResumeRead(_) => seen.paused = false,
            Command::Close(h) => seen.closed.push(h),
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
    d.handle_bytes(NOW, publisher, burst(20_000));
    drain(&mut d, &mut seen);
    assert!(seen.paused);
    // The client sent everything and closed; what it sent is not lost.
    d.handle_closed(NOW, publisher);
    drain(&mut d, &mut seen);
    assert!(seen.closed.is_empty(), "closed before its input was handled");
    let mut delivered = 0;
    let before = d.broker().stats().messages_received;
    while !seen.writes.is_empty() {
        let (h, n) = seen.writes.remove(0);
        assert_eq!(h, 0, "only the subscriber is written to");
        delivered += n;
        d.handle_written(NOW, sub, n);
        d.handle_timeout(NOW);
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
    d.handle_bytes(NOW, publisher, burst(5_000));
    drain(&mut d, &mut seen);
    assert!(seen.paused, "the burst did not pause the publisher");
    while seen.paused {
        assert!(!seen.writes.is_empty(), "paused with nothing left to write");
        let (h, n) = seen.writes.remove(0);
        assert_eq!(h, 0);
        d.handle_written(NOW, sub, n);
        drain(&mut d, &mut seen);
    }
    assert_eq!(d.broker().stats().dropped_slow_consumer, 0);
}

/// Every command the driver has, as a list.
fn commands(d: &mut Driver<u32>) -> Vec<Command<u32>> {
    std::iter::from_fn(|| d.poll_command()).collect()
}

fn aborted(commands: &[Command<u32>]) -> Vec<u32> {
    commands
        .iter()
        .filter_map(|c| if let Command::Abort(h) = c { Some(*h) } else { None })
        .collect()
}

#[test]
fn a_writer_that_writes_nothing_for_the_write_timeout_is_dropped() {
    let (mut d, sub, publisher) = setup(BrokerConfig::default());
    d.handle_bytes(NOW, publisher, burst(1));
    assert!(commands(&mut d).iter().any(|c| matches!(c, Command::Write(0, _))));
    // The subscriber's writer holds the message and reports nothing.
    let due = d.poll_timeout().unwrap();
    assert!(due <= NOW + WRITE_TIMEOUT);
    d.handle_timeout(NOW + (WRITE_TIMEOUT - Duration::from_millis(1)));
    assert!(aborted(&commands(&mut d)).is_empty(), "dropped before its time");
    d.handle_timeout(NOW + WRITE_TIMEOUT);
    assert_eq!(aborted(&commands(&mut d)), [0]);
    assert_eq!(d.connections(), 1);
    // The publisher, whose writer holds nothing, stays.
    d.handle_timeout(NOW + WRITE_TIMEOUT * 3);
    assert!(commands(&mut d).is_empty());
    let _ = sub;
}

#[test]
fn progress_puts_the_write_timeout_off() {
    let (mut d, sub, publisher) = setup(BrokerConfig::default());
    d.handle_bytes(NOW, publisher, burst(2));
    let _ = commands(&mut d);
    // Half written after 20 s; the rest is due 30 s after that progress, not before.
    let later = NOW + Duration::from_secs(20);
    d.handle_written(later, sub, 10);
    d.handle_timeout(NOW + WRITE_TIMEOUT);
    assert!(aborted(&commands(&mut d)).is_empty(), "progress did not count");
    d.handle_timeout(later + WRITE_TIMEOUT);
    assert_eq!(aborted(&commands(&mut d)), [0]);
}

#[test]
fn a_closed_connection_lingers_until_its_peer_closes_or_the_linger_deadline() {
    let (mut d, sub, publisher) = setup(BrokerConfig::default());
    // DISCONNECT from both; one peer then closes its side, the other never does.
    for id in [sub, publisher] {
        d.handle_bytes(NOW, id, bytes(Packet::Disconnect(Default::default())));
    }
    let closed: Vec<u32> = commands(&mut d)
        .into_iter()
        .filter_map(|c| if let Command::Close(h) = c { Some(h) } else { None })
        .collect();
    assert_eq!(closed, [0, 1]);
    assert_eq!(d.connections(), 0);
    d.handle_closed(NOW + Duration::from_secs(1), sub);
    d.handle_timeout(NOW + (LINGER - Duration::from_millis(1)));
    assert!(aborted(&commands(&mut d)).is_empty());
    d.handle_timeout(NOW + LINGER);
    assert_eq!(aborted(&commands(&mut d)), [1], "only the one still lingering is dropped");
    // Nothing else is ever due.
    d.handle_timeout(NOW + WRITE_TIMEOUT * 10);
    assert!(commands(&mut d).is_empty());
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn a_peer_gone_reported_after_the_close_leaves_the_close_lingering() {
    let (mut d, sub, publisher) = setup(BrokerConfig::default());
    // The broker closes the subscriber; its reader, apart from the driver, then reports the
    // peer's end of stream it saw before that close reached it.
    d.handle_bytes(NOW, sub, bytes(Packet::Disconnect(Default::default())));
    assert!(commands(&mut d).iter().any(|c| matches!(c, Command::Close(0))));
    d.handle_peer_gone(NOW, sub);
    // Not the end of the close: its linger deadline still drops a writer that never finishes.
    d.handle_timeout(NOW + LINGER);
    assert_eq!(aborted(&commands(&mut d)), [0]);
    // While open, a peer gone is a close: the broker forgets the publisher at once.
    assert_eq!(d.connections(), 1);
    d.handle_peer_gone(NOW, publisher);
    assert_eq!(d.connections(), 0);
}

#[test]
fn shutdown_finishes_when_every_peer_closed_or_at_the_flush_deadline() {
    let (mut d, sub, publisher) = setup(BrokerConfig::default());
    d.handle_bytes(NOW, publisher, burst(1));
    let _ = commands(&mut d);
    d.shutdown(NOW);
    assert!(!d.is_finished());
    d.handle_closed(NOW, publisher);
    // The subscriber's writer is stuck: the write timeout is later than the shutdown's.
    d.handle_timeout(NOW + (SHUTDOWN_FLUSH - Duration::from_millis(1)));
    assert!(aborted(&commands(&mut d)).is_empty());
    assert!(!d.is_finished());
    assert_eq!(d.poll_timeout(), Some(NOW + SHUTDOWN_FLUSH));
    d.handle_timeout(NOW + SHUTDOWN_FLUSH);
    assert_eq!(aborted(&commands(&mut d)), [0]);
    assert!(d.is_finished());
    let _ = sub;
}

#[test]
fn a_failed_accept_pauses_that_listener_for_the_backoff() {
    let (mut d, _, _) = setup(BrokerConfig::default());
    d.handle_accept_failed(NOW, 3);
    d.handle_accept_failed(NOW, 3);
    assert_eq!(d.poll_timeout(), Some(NOW + ACCEPT_BACKOFF));
    d.handle_timeout(NOW + ACCEPT_BACKOFF);
    let resumed: Vec<_> = commands(&mut d)
        .into_iter()
        .filter_map(|c| if let Command::ResumeAccept(l) = c { Some(l) } else { None })
        .collect();
    assert_eq!(resumed, [3], "resumed once");
}
