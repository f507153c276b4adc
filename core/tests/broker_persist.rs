//! The persistence log and restore: the broker's durable state goes through `poll_persist` into
//! the reference store (`Replay`), and a broker restored from its snapshot carries on as if it
//! had not stopped. Wall-clock time for the store is the harness clock in seconds.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use ternmq_core::broker::persist::{PersistOp, Persistence, Replay};
use ternmq_core::broker::{Broker, BrokerConfig};
use ternmq_core::codec::{Packet, PubAck, QoS, ReasonCode};
use ternmq_core::time::{Duration, Instant};

fn config(mode: Persistence) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.persistence = mode;
    c
}

/// A harness whose broker logs, and the store it logs into.
struct Durable {
    h: Harness,
    store: Replay,
    mode: Persistence,
    ops: Vec<PersistOp>,
}

impl Durable {
    fn new(mode: Persistence) -> Self {
        Durable { h: Harness::with(config(mode)), store: Replay::new(), mode, ops: Vec::new() }
    }

    /// The store's wall clock: the harness clock in milliseconds.
    fn wall(&self) -> u64 {
        self.h.now.as_nanos() / 1_000_000
    }

    /// Moves the log into the store (and, in durable mode, confirms it).
    fn sync(&mut self) {
        let wall = self.wall();
        let mut last = None;
        while let Some((seq, op)) = self.h.broker.poll_persist() {
            self.ops.push(op.clone());
            self.store.apply(op, wall);
            last = Some(seq);
        }
        if let Some(seq) = last {
            let now = self.h.now;
            self.h.broker.handle_persisted(now, seq);
        }
    }

    /// The process dies (nothing more reaches the store) and restarts `down` seconds later
    /// from what the store holds. Connections are gone; the clock is a new one.
    fn crash_and_restart(&mut self, down: u64) {
        let wall = self.wall() + down * 1000;
        let snapshot = self.store.snapshot(wall);
        let now = Instant::from_millis(wall);
        let broker = Broker::restore(config(self.mode), snapshot, now).unwrap();
        self.h = Harness { broker, now, events: Vec::new(), commands: Vec::new() };
    }
}

fn ids(packets: &[Packet]) -> Vec<(u16, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id.map_or(0, |i| i.get()), p.dup)),
            _ => None,
        })
        .collect()
}

#[test]
fn session_subscriptions_and_queued_messages_survive_a_restart() {
    let mut d = Durable::new(Persistence::Log);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t/#", QoS::AtLeastOnce);
    d.h.disconnect(&mut sub, ReasonCode::Success);
    let publisher = d.h.connect(V5, "pub", true);
    for (i, body) in [b"one" as &[u8], b"two", b"three"].into_iter().enumerate() {
        d.h.send(&publisher, publish("t/x", body, QoS::AtLeastOnce, i as u16 + 1));
    }
    d.sync();
    d.crash_and_restart(10);
    let (mut sub, ack) = d.h.connect_v5_session("sub", false, 3600);
    assert!(ack.session_present);
    let got = d.h.recv_publishes(&mut sub);
    let bodies: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(bodies, [b"one" as &[u8], b"two", b"three"], "in order, nothing lost");
    // The subscription came back too.
    let publisher = d.h.connect(V5, "pub2", true);
    d.h.send(&publisher, publish("t/y", b"after", QoS::AtLeastOnce, 9));
    let got = d.h.recv_publishes(&mut sub);
    assert_eq!(&got[0].payload[..], b"after");
}

#[test]
fn mqtt_4_4_0_1_inflight_messages_are_resent_after_a_restart_with_dup_and_their_ids() {
    let mut d = Durable::new(Persistence::Log);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "q1", QoS::AtLeastOnce);
    d.h.subscribe(&mut sub, "q2", QoS::ExactlyOnce);
    let publisher = d.h.connect(V5, "pub", true);
    d.h.send(&publisher, publish("q1", b"a", QoS::AtLeastOnce, 1));
    d.h.send(&publisher, publish("q2", b"b", QoS::ExactlyOnce, 2));
    let first = d.h.recv(&mut sub);
    let sent = ids(&first);
    assert_eq!(sent.len(), 2);
    // The QoS 2 one got as far as PUBREC; the QoS 1 one was never acknowledged.
    let q2 = sent[1].0;
    d.h.send(&sub, Packet::PubRec(PubAck::new(pid(q2))));
    assert!(matches!(d.h.recv_one(&mut sub), Packet::PubRel(_)));
    d.sync();
    d.crash_and_restart(5);
    let (mut sub, ack) = d.h.connect_v5_session("sub", false, 3600);
    assert!(ack.session_present);
    let again = d.h.recv(&mut sub);
    assert_eq!(ids(&again), [(sent[0].0, true)], "the PUBLISH again, with DUP and its id");
    assert!(
        again.iter().any(|p| matches!(p, Packet::PubRel(r) if r.packet_id.get() == q2)),
        "and the PUBREL, not the QoS 2 PUBLISH: {again:?}"
    );
}

#[test]
fn qos2_id_awaiting_pubrel_survives_so_a_resent_publish_is_not_delivered_twice() {
    let mut d = Durable::new(Persistence::Log);
    let mut sub = d.h.connect(V5, "sub", true);
    d.h.subscribe(&mut sub, "x", QoS::ExactlyOnce);
    let (mut publisher, _) = d.h.connect_v5_session("pub", false, 3600);
    d.h.send(&publisher, publish("x", b"once", QoS::ExactlyOnce, 7));
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubRec(_)));
    assert_eq!(d.h.recv_publishes(&mut sub).len(), 1);
    d.sync();
    d.crash_and_restart(1);
    let mut sub = d.h.connect(V5, "sub", true);
    d.h.subscribe(&mut sub, "x", QoS::ExactlyOnce);
    let (mut publisher, ack) = d.h.connect_v5_session("pub", false, 3600);
    assert!(ack.session_present);
    let mut resent = publish("x", b"once", QoS::ExactlyOnce, 7);
    resent.dup = true;
    d.h.send(&publisher, resent);
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubRec(_)));
    assert!(d.h.recv_publishes(&mut sub).is_empty(), "not delivered a second time");
    d.h.send(&publisher, Packet::PubRel(PubAck::new(pid(7))));
    assert!(
        matches!(d.h.recv_one(&mut publisher), Packet::PubComp(c) if c.reason_code == ReasonCode::Success)
    );
}

#[test]
fn retained_messages_survive_and_their_clearing_too() {
    let mut d = Durable::new(Persistence::Log);
    let publisher = d.h.connect(V5, "pub", true);
    let mut keep = publish("r/a", b"kept", QoS::AtLeastOnce, 1);
    keep.retain = true;
    d.h.send(&publisher, keep);
    let mut gone = publish("r/b", b"soon gone", QoS::AtLeastOnce, 2);
    gone.retain = true;
    d.h.send(&publisher, gone);
    let mut clear = publish("r/b", b"", QoS::AtLeastOnce, 3);
    clear.retain = true;
    d.h.send(&publisher, clear);
    d.sync();
    d.crash_and_restart(100);
    let mut sub = d.h.connect(V5, "sub", true);
    d.h.subscribe(&mut sub, "r/#", QoS::AtLeastOnce);
    let got = d.h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"kept");
    assert!(got[0].retain);
}

#[test]
fn a_session_that_expired_while_the_broker_was_down_is_gone() {
    let mut d = Durable::new(Persistence::Log);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 60);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    d.h.disconnect(&mut sub, ReasonCode::Success);
    d.sync();
    let mut later = d.store.clone();
    // 59 s later it is still there, 61 s later it is not.
    let snapshot = later.snapshot(d.wall() + 59_000);
    assert_eq!(snapshot.sessions.len(), 1);
    assert!(snapshot.sessions[0].expires_in.is_some_and(|e| e.as_secs() == 1));
    later = d.store.clone();
    assert!(later.snapshot(d.wall() + 61_000).sessions.is_empty());
    d.crash_and_restart(61);
    let (_, ack) = d.h.connect_v5_session("sub", false, 60);
    assert!(!ack.session_present);
}

/// MQTT 5 only: message expiry counts the downtime [MQTT-3.3.2-5].
#[test]
fn mqtt_3_3_2_5_message_expiry_counts_the_time_the_broker_was_down() {
    let mut d = Durable::new(Persistence::Log);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    d.h.disconnect(&mut sub, ReasonCode::Success);
    let publisher = d.h.connect(V5, "pub", true);
    let mut short = publish("t", b"short", QoS::AtLeastOnce, 1);
    short.properties.message_expiry_interval = Some(20);
    let mut long = publish("t", b"long", QoS::AtLeastOnce, 2);
    long.properties.message_expiry_interval = Some(100);
    d.h.send(&publisher, short);
    d.h.send(&publisher, long);
    d.sync();
    d.crash_and_restart(30);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    let got = d.h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(70));
}

#[test]
fn a_delayed_will_is_published_on_time_across_a_restart() {
    let mut d = Durable::new(Persistence::Log);
    let mut watcher = d.h.connect(V5, "watcher", true);
    d.h.subscribe(&mut watcher, "will/#", QoS::AtLeastOnce);
    let mut c = connect_packet(V5, "dying", false);
    c.properties.session_expiry_interval = Some(3600);
    let mut w = will("will/dying", "gone", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(30);
    c.will = Some(w);
    let (dying, _) = d.h.connect_with(c);
    d.h.drop_peer(&dying); // abnormal close: the will is due in 30 s
    d.sync();
    d.crash_and_restart(10);
    let mut watcher = d.h.connect(V5, "watcher", true);
    d.h.subscribe(&mut watcher, "will/#", QoS::AtLeastOnce);
    d.h.secs(19);
    assert!(d.h.recv_publishes(&mut watcher).is_empty(), "not before its delay");
    d.h.secs(1);
    let got = d.h.recv_publishes(&mut watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"gone");
}

#[test]
fn durable_mode_withholds_the_puback_until_the_store_confirms() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    d.h.disconnect(&mut sub, ReasonCode::Success);
    let mut publisher = d.h.connect(V5, "pub", true);
    d.h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert!(d.h.recv(&mut publisher).is_empty(), "no PUBACK before the store has it");
    d.sync();
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubAck(a) if a.packet_id.get() == 1));
    // A publish that changes nothing durable (no persistent subscriber) is acknowledged at once.
    d.h.send(&publisher, publish("other", b"x", QoS::AtLeastOnce, 2));
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubAck(a) if a.packet_id.get() == 2));
}

#[test]
fn delivered_messages_and_ended_sessions_leave_the_store() {
    let mut d = Durable::new(Persistence::Log);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    let publisher = d.h.connect(V5, "pub", true);
    for i in 1..=20 {
        d.h.send(&publisher, publish("t", b"x", QoS::ExactlyOnce, i));
        let p = d.h.recv_publishes(&mut sub);
        let id = p[0].packet_id.unwrap();
        d.h.send(&sub, Packet::PubRec(PubAck::new(id)));
        d.h.recv(&mut sub);
        d.h.send(&sub, Packet::PubComp(PubAck::new(id)));
    }
    d.sync();
    assert_eq!(d.store.deliveries(), 0, "every completed delivery was released");
    assert_eq!(d.store.sessions(), 1);
    // A clean connection ends the session, and its record goes.
    d.h.disconnect(&mut sub, ReasonCode::Success);
    let sub = d.h.connect(V5, "sub", true);
    d.h.drop_peer(&sub);
    d.sync();
    assert_eq!(d.store.sessions(), 0);
}

#[test]
fn clean_sessions_and_qos0_to_connected_clients_log_nothing() {
    let mut d = Durable::new(Persistence::Log);
    let mut sub = d.h.connect(V311, "sub", true);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let publisher = d.h.connect(V311, "pub", true);
    for i in 1..=10 {
        d.h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(d.h.recv_publishes(&mut sub).len(), 10);
    d.sync();
    assert!(d.ops.is_empty(), "{:?}", d.ops);
}

#[test]
fn persistence_off_logs_nothing_at_all() {
    let mut h = Harness::new();
    let (mut sub, _) = h.connect_v5_session("sub", false, 3600);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert!(h.broker.poll_persist().is_none());
}

#[test]
fn log_mode_holds_acks_back_once_the_store_falls_far_behind() {
    use ternmq_core::broker::persist::MAX_UNSTORED;
    let mut d = Durable::new(Persistence::Log);
    let mut publisher = d.h.connect(V5, "pub", true);
    // Retained publishes each log one operation; the store confirms nothing.
    let n = MAX_UNSTORED as usize + 10;
    let mut acked = 0;
    for i in 0..n {
        let mut p = publish(&format!("r/{i}"), b"x", QoS::AtLeastOnce, (i % 60_000) as u16 + 1);
        p.retain = true;
        d.h.send(&publisher, p);
        if i % 1000 == 0 || i + 1 == n {
            acked += d.h.recv(&mut publisher).len();
        }
    }
    assert!(acked < n, "acknowledgements stop once the store is {MAX_UNSTORED} behind");
    assert!(acked >= MAX_UNSTORED as usize - 1);
    d.sync(); // the store catches up
    acked += d.h.recv(&mut publisher).len();
    assert_eq!(acked, n, "and the rest follow");
}

// Found by the deterministic simulation (`tests/simulation.rs`): a broker that restarted
// between sending PUBREL and the store having the PUBREC sent the message again to a client
// that had completed it, a duplicate QoS 2 delivery.
#[test]
fn durable_pubrel_waits_until_the_store_has_the_pubrec() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "q2", QoS::ExactlyOnce);
    d.sync();
    let publisher = d.h.connect(V5, "pub", true);
    d.h.send(&publisher, publish("q2", b"once", QoS::ExactlyOnce, 1));
    d.sync();
    let got = d.h.recv_publishes(&mut sub);
    let id = got[0].packet_id.unwrap();
    d.h.send(&sub, Packet::PubRec(PubAck::new(id)));
    assert!(d.h.recv(&mut sub).is_empty(), "no PUBREL before the store has the PUBREC");
    d.sync();
    let rel = d.h.recv(&mut sub);
    assert!(matches!(&rel[..], [Packet::PubRel(r)] if r.packet_id == id), "{rel:?}");
}

// Found by the deterministic simulation (`tests/simulation.rs`): a QoS 2 message written to a
// subscriber before the store had it was, after a crash, received again from its publisher as
// a new message (its PUBREC had been withheld) and delivered a second time. The PUBLISH now
// waits for the store, and so does what the connection sends after it.
#[test]
fn durable_qos2_publish_reaches_the_subscriber_only_once_the_store_has_it() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    d.sync();
    let publisher = d.h.connect(V5, "pub", true);
    d.h.send(&publisher, publish("t", b"once", QoS::ExactlyOnce, 1));
    d.h.send(&publisher, publish("t", b"after", QoS::AtMostOnce, 0));
    assert!(d.h.recv(&mut sub).is_empty(), "nothing before the store has the QoS 2 message");
    // A crash now loses the message everywhere: the publisher, never answered, sends it again.
    d.crash_and_restart(1);
    let (mut sub, ack) = d.h.connect_v5_session("sub", false, 3600);
    assert!(ack.session_present);
    let mut publisher = d.h.connect(V5, "pub", true);
    let mut again = publish("t", b"once", QoS::ExactlyOnce, 1);
    again.dup = true;
    d.h.send(&publisher, again);
    assert!(d.h.recv(&mut sub).is_empty());
    d.sync();
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubRec(_)));
    let got = d.h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    assert_eq!(&got[0].payload[..], b"once");
}

/// What the connection sends after a gated QoS 2 PUBLISH keeps its place behind it; what it
/// sent before goes out at once.
#[test]
fn durable_output_after_a_gated_qos2_publish_keeps_its_order() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    d.sync();
    let publisher = d.h.connect(V5, "pub", true);
    d.h.send(&publisher, publish("t", b"0", QoS::AtMostOnce, 0));
    d.h.send(&publisher, publish("t", b"2", QoS::ExactlyOnce, 1));
    d.h.send(&publisher, publish("t", b"0'", QoS::AtMostOnce, 0));
    let early: Vec<_> = d.h.recv_publishes(&mut sub).into_iter().map(|p| p.payload).collect();
    assert_eq!(early, [&b"0"[..]]);
    d.sync();
    let rest: Vec<_> = d.h.recv_publishes(&mut sub).into_iter().map(|p| p.payload).collect();
    assert_eq!(rest, [&b"2"[..], &b"0'"[..]]);
}

#[test]
fn durable_pubcomp_waits_until_the_store_has_forgotten_the_identifier() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut publisher, _) = d.h.connect_v5_session("pub", false, 3600);
    d.h.send(&publisher, publish("t", b"x", QoS::ExactlyOnce, 7));
    d.sync();
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubRec(_)));
    d.h.send(&publisher, Packet::PubRel(PubAck::new(pid(7))));
    assert!(d.h.recv(&mut publisher).is_empty(), "no PUBCOMP before the release is stored");
    d.sync();
    assert!(matches!(d.h.recv_one(&mut publisher), Packet::PubComp(c) if c.packet_id == pid(7)));
}

// Found by the simulation: QoS 2 PUBRECs withheld for the store were counted twice against
// the broker's Receive Maximum (as withheld acks and as unreleased identifiers), so a client
// within its quota was disconnected with 0x93.
#[test]
fn sec_3_3_4_withheld_pubrecs_count_once_against_receive_maximum() {
    let mut c = config(Persistence::Durable);
    c.receive_maximum = 4;
    let mut h = Harness::with(c);
    // A persistent subscriber: every message is a delivery the store must have first.
    let (mut sub, _) = h.connect_v5_session("sub", false, 3600);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut p = h.connect(V5, "pub", true);
    h.send(&p, publish("t", b"1", QoS::ExactlyOnce, 1));
    h.send(&p, publish("t", b"2", QoS::AtLeastOnce, 2));
    h.send(&p, publish("t", b"3", QoS::ExactlyOnce, 3));
    h.send(&p, publish("t", b"4", QoS::AtLeastOnce, 4));
    // Four in flight, none acknowledged (the store has not confirmed): within the quota.
    assert!(!h.is_closed(&mut p), "a client at its Receive Maximum is not over it");
    h.send(&p, publish("t", b"5", QoS::AtLeastOnce, 5));
    assert!(h.is_closed(&mut p), "the fifth is over it");
}

/// PUBACKs and PUBRECs go in the order of their PUBLISH packets, even when one waits for the
/// store [MQTT-4.6.0-2] [MQTT-4.6.0-3]. Found by the simulation's wire monitor: a PUBACK
/// withheld for the store was overtaken by the PUBACK of a later PUBLISH that logged nothing.
#[test]
fn mqtt_4_6_0_2_acks_keep_the_order_of_their_publishes_when_one_waits_for_the_store() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "stored", QoS::AtLeastOnce);
    d.sync();
    let mut p = d.h.connect(V5, "pub", true);
    d.h.send(&p, publish("stored", b"a", QoS::AtLeastOnce, 1));
    d.h.send(&p, publish("nobody", b"b", QoS::AtLeastOnce, 2));
    d.h.send(&p, publish("nobody", b"c", QoS::ExactlyOnce, 3));
    assert!(d.h.recv(&mut p).is_empty(), "the first waits for the store, the rest behind it");
    d.sync();
    let ids: Vec<u16> =
        d.h.recv(&mut p)
            .iter()
            .filter_map(|x| match x {
                Packet::PubAck(a) | Packet::PubRec(a) => Some(a.packet_id.get()),
                _ => None,
            })
            .collect();
    assert_eq!(ids, [1, 2, 3]);
}

/// MQTT 5 only: a restart does not extend a message's expiry: the store keeps the time an operation was
/// logged to the millisecond ([MQTT-3.3.2-5]). Found by the simulation's wire monitor, when
/// the store stamped whole seconds (and the time of its commit).
#[test]
fn mqtt_3_3_2_5_a_restart_does_not_extend_message_expiry() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    d.h.drop_peer(&sub);
    d.sync();
    d.h.advance(Duration::from_millis(100));
    let p = d.h.connect(V5, "pub", true);
    let mut m = publish("t", b"short", QoS::AtLeastOnce, 1);
    m.properties.message_expiry_interval = Some(1);
    d.h.send(&p, m);
    d.sync();
    // 0.9 s after it arrived the broker restarts at once; 0.5 s later the message is 1.4 s old.
    d.h.advance(Duration::from_millis(800));
    d.crash_and_restart(0);
    d.h.advance(Duration::from_millis(500));
    let (mut sub, ack) = d.h.connect_v5_session("sub", false, 3600);
    assert!(ack.session_present);
    assert!(d.h.recv_publishes(&mut sub).is_empty(), "expired: not delivered");
}

/// A QoS 2 PUBLISH resent while its first PUBREC still waits for the store gets no PUBREC of
/// its own (the first answers both), and a later message that reuses the identifier waits
/// for the store too: each withheld answer fills its own place. Found in review: answers were
/// matched by packet identifier, so the resend's immediate PUBREC could take the first copy's
/// place, and the first copy's release then answer the next message before it was stored.
#[test]
fn a_resent_qos2_publish_does_not_answer_for_the_first_copy() {
    let mut d = Durable::new(Persistence::Durable);
    let (mut sub, _) = d.h.connect_v5_session("sub", false, 3600);
    d.h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    d.sync();
    let mut p = d.h.connect(V311, "pub", false);
    d.sync();
    let first = publish("t", b"one", QoS::ExactlyOnce, 7);
    d.h.send(&p, first.clone());
    let mut again = first;
    again.dup = true;
    d.h.send(&p, again);
    assert!(d.h.recv(&mut p).is_empty(), "nothing before the store has the message");
    d.sync();
    let recs: Vec<_> =
        d.h.recv(&mut p).into_iter().filter(|x| matches!(x, Packet::PubRec(_))).collect();
    assert_eq!(recs.len(), 1, "one PUBREC for the message and its resend");
    d.h.send(&p, Packet::PubRel(PubAck::new(pid(7))));
    d.sync();
    assert!(matches!(d.h.recv_one(&mut p), Packet::PubComp(_)));
    // Identifier 7 again, for a new message: its PUBREC waits for the store.
    d.h.send(&p, publish("t", b"two", QoS::ExactlyOnce, 7));
    assert!(d.h.recv(&mut p).is_empty(), "the new message's PUBREC waits for the store");
    d.sync();
    assert!(matches!(d.h.recv_one(&mut p), Packet::PubRec(r) if r.packet_id == pid(7)));
}
