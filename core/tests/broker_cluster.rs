//! The cluster seam between two brokers, by hand: a session handed over from one node to
//! another arrives whole (Session Present 1, its subscription, its queued messages) and, with
//! persistence, in the new node's store; the old node forgets it. A node that mirrors its log
//! lets another take its sessions after it died, and acknowledges nothing before the mirror
//! holds what the message caused.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use ternmq_core::broker::persist::{LogReplay, Persistence, Replay, StoredMessage};
use ternmq_core::broker::{ClusterOut, ClusterSeq, ClusterTarget};
use ternmq_core::codec::{Packet, PubAck, QoS, Subscribe, Subscription, SubscriptionOptions};

fn node() -> Harness {
    let mut h = Harness::config(|c| {
        c.cluster = true;
        c.persistence = Persistence::Log;
    });
    let now = h.now;
    h.broker.handle_cluster_link(now, true);
    h
}

/// SUBSCRIBE to `cmd/#` at QoS 1, sent by hand: in a cluster its SUBACK waits.
fn subscribe_cmd() -> Subscribe {
    Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription {
            filter: filter("cmd/#"),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
        properties: Default::default(),
    }
}

/// Acknowledges everything the node put out so far, as a backplane would.
fn settle(h: &mut Harness) -> Vec<ClusterOut> {
    let mut out = Vec::new();
    while let Some(o) = h.broker.poll_cluster() {
        out.push(o);
    }
    let last = out
        .iter()
        .filter_map(|o| match o {
            ClusterOut::Publish { seq, .. }
            | ClusterOut::Interest { seq, .. }
            | ClusterOut::Log { seq, .. } => Some(seq.0),
            _ => None,
        })
        .max();
    if let Some(seq) = last {
        let now = h.now;
        h.broker.handle_cluster_acked(now, ClusterSeq(seq));
        h.pump();
    }
    out
}

#[test]
fn a_session_moves_whole_and_lands_in_the_new_nodes_store() {
    let mut a = node();
    let mut b = node();
    // On node a: a device with a session subscribes, and goes away; two messages wait for it.
    let (mut dev, _) = a.connect_v5_session("dev", true, 600);
    let _ = settle(&mut a);
    // The SUBACK waits for the backplane to have the interest.
    let sub = subscribe_cmd();
    a.send(&dev, sub);
    assert!(a.recv(&mut dev).is_empty(), "the SUBACK went before the backplane had the filter");
    let _ = settle(&mut a);
    assert!(matches!(a.recv(&mut dev).as_slice(), [Packet::SubAck(_)]));
    a.drop_peer(&dev);
    let (publisher, _) = a.connect_v5_session("pub", true, 0);
    for n in 1..=2 {
        a.send(&publisher, publish("cmd/x", b"m", QoS::AtLeastOnce, n));
    }
    let _ = settle(&mut a);

    // The device comes back on node b: its CONNECT waits for the claim.
    let mut store = Replay::new();
    let mut back = b.accept(V5);
    let mut c = connect_packet(V5, "dev", false);
    c.properties.session_expiry_interval = Some(600);
    b.send(&back, c);
    assert!(b.recv(&mut back).is_empty(), "CONNACK before the session was asked for");
    let ticket = settle(&mut b)
        .into_iter()
        .find_map(|o| match o {
            ClusterOut::Claim { ticket, client_id } if client_id.as_str() == "dev" => Some(ticket),
            _ => None,
        })
        .expect("a claim");
    let now = a.now;
    let session = a.broker.handle_cluster_release(now, "dev").expect("node a gives it up");
    assert_eq!(session.deliveries.len(), 2);
    assert!(a.broker.handle_cluster_release(now, "dev").is_none(), "given up once");
    let now = b.now;
    b.broker.handle_cluster_claimed(now, ticket, Some(session));
    b.pump();
    let got = b.recv(&mut back);
    match got.first() {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present, "{ack:?}"),
        other => panic!("no CONNACK: {other:?}"),
    }
    let publishes = got.iter().filter(|p| matches!(p, Packet::Publish(_))).count();
    assert_eq!(publishes, 2, "the queued messages: {got:?}");
    // Node b's store has the session, its subscription and its two deliveries.
    while let Some((_, op)) = b.broker.poll_persist() {
        store.apply(op, 1);
    }
    let snap = store.snapshot(1);
    let s = snap.sessions.iter().find(|s| s.client_id.as_str() == "dev").expect("stored");
    assert_eq!(s.subscriptions.len(), 1);
    assert_eq!(s.deliveries.len(), 2, "{s:?}");
    assert!(s.deliveries.iter().all(|d| d.packet_id.is_some()), "sent from node b: {s:?}");
}

/// Reads the node's output into `mirror` (its log, as the backplane keeps it) and returns the
/// last position, unacknowledged.
fn mirror(h: &mut Harness, mirror: &mut LogReplay, at: u64) -> (u64, u64) {
    let (mut forwarded, mut last) = (0, 0);
    while let Some(o) = h.broker.poll_cluster() {
        match o {
            ClusterOut::Log { seq, entry } => {
                mirror.apply(entry, at);
                last = last.max(seq.0);
            }
            ClusterOut::Publish { seq, .. } => forwarded = forwarded.max(seq.0),
            ClusterOut::Interest { seq, .. } => last = last.max(seq.0),
            _ => {}
        }
    }
    (forwarded, last.max(forwarded))
}

#[test]
fn a_mirrored_log_gives_another_node_the_session_of_a_node_that_died() {
    let mut a = node();
    let mut log = LogReplay::new();
    let now = a.now;
    // Node a mirrors its log from a snapshot on.
    a.broker.handle_cluster_snapshot(now);
    let (_, last) = mirror(&mut a, &mut log, 1_000);
    a.broker.handle_cluster_acked(now, ClusterSeq(last));
    let (dev, _) = a.connect_v5_session("dev", true, 600);
    let mut dev = dev;
    let sub = subscribe_cmd();
    a.send(&dev, sub);
    let (_, last) = mirror(&mut a, &mut log, 1_000);
    let now = a.now;
    a.broker.handle_cluster_acked(now, ClusterSeq(last));
    a.pump();
    assert!(matches!(a.recv(&mut dev).as_slice(), [Packet::SubAck(_)]));
    a.drop_peer(&dev);
    let (mut publisher, _) = a.connect_v5_session("pub", true, 600);
    let _ = a.recv(&mut publisher);
    a.send(&publisher, publish("cmd/x", b"m1", QoS::AtLeastOnce, 1));
    // The backplane holds the message, not yet the entry that queued it for the device.
    let (forwarded, last) = mirror(&mut a, &mut log, 2_000);
    assert!(forwarded > 0 && last > forwarded, "the queueing is mirrored after the message");
    let now = a.now;
    a.broker.handle_cluster_acked(now, ClusterSeq(forwarded));
    a.pump();
    assert!(a.recv(&mut publisher).is_empty(), "PUBACK before the mirror held the queueing");
    a.broker.handle_cluster_acked(now, ClusterSeq(last));
    a.pump();
    assert!(matches!(a.recv(&mut publisher).as_slice(), [Packet::PubAck(_)]));
    // QoS 2: the PUBCOMP waits for the mirror to have the release too.
    a.send(&publisher, publish("cmd/z", b"q2", QoS::ExactlyOnce, 2));
    let (_, last) = mirror(&mut a, &mut log, 2_500);
    a.broker.handle_cluster_acked(now, ClusterSeq(last));
    a.pump();
    assert!(matches!(a.recv(&mut publisher).as_slice(), [Packet::PubRec(_)]));
    a.send(&publisher, Packet::PubRel(PubAck::new(pid(2))));
    let (_, last) = mirror(&mut a, &mut log, 2_600);
    assert!(a.recv(&mut publisher).is_empty(), "PUBCOMP before the mirror held the release");
    a.broker.handle_cluster_acked(now, ClusterSeq(last));
    a.pump();
    assert!(matches!(a.recv(&mut publisher).as_slice(), [Packet::PubComp(_)]));
    // A message from the stream, handled at position 41: the mirror says so.
    let from_stream = StoredMessage {
        topic: topic("cmd/y"),
        payload: bytes::Bytes::from_static(b"m2"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_in: None,
    };
    a.broker.handle_cluster_publish(now, from_stream.clone(), ClusterTarget::Subscribers);
    a.broker.handle_cluster_consumed(41);
    let _ = mirror(&mut a, &mut log, 3_000);
    assert_eq!(log.consumed(), 41);

    // Node a dies. The device comes to node b, which takes its session from a's log.
    let session = log.session("dev", 4_000).expect("the mirrored session");
    assert_eq!(session.deliveries.len(), 3, "{session:?}");
    assert!(session.incoming_qos2.is_empty(), "the publisher's session is not the device's");
    assert_eq!(session.subscriptions.len(), 1);
    let mut b = node();
    let (mut other, _) = b.connect_v5_session("other", true, 0);
    let sub = subscribe_cmd();
    b.send(&other, sub);
    let _ = settle(&mut b);
    assert!(matches!(b.recv(&mut other).as_slice(), [Packet::SubAck(_)]));
    let mut back = b.accept(V5);
    let mut c = connect_packet(V5, "dev", false);
    c.properties.session_expiry_interval = Some(600);
    b.send(&back, c);
    let ticket = settle(&mut b)
        .into_iter()
        .find_map(|o| match o {
            ClusterOut::Claim { ticket, .. } => Some(ticket),
            _ => None,
        })
        .expect("a claim");
    let now = b.now;
    b.broker.handle_cluster_claimed(now, ticket, Some(session));
    b.pump();
    let got = b.recv(&mut back);
    assert!(matches!(got.first(), Some(Packet::ConnAck(a)) if a.session_present), "{got:?}");
    let payloads: Vec<&[u8]> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(&p.payload[..]),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, [&b"m1"[..], b"q2", b"m2"]);
    // A message it missed goes to it alone.
    let target = ClusterTarget::Session { client_id: "dev".into() };
    let missed = StoredMessage { payload: bytes::Bytes::from_static(b"m3"), ..from_stream };
    b.broker.handle_cluster_publish(now, missed, target);
    b.pump();
    assert_eq!(b.recv_publishes(&mut back).len(), 1);
    assert!(b.recv(&mut other).is_empty(), "a message one session missed went to another");
}
