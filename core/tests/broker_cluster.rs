//! The cluster seam between two brokers, by hand: a session handed over from one node to
//! another arrives whole (Session Present 1, its subscription, its queued messages) and, with
//! persistence, in the new node's store; the old node forgets it.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use ternmq_core::broker::persist::{Persistence, Replay};
use ternmq_core::broker::{ClusterOut, ClusterSeq};
use ternmq_core::codec::{Packet, QoS, Subscribe, Subscription, SubscriptionOptions};

fn node() -> Harness {
    let mut h = Harness::config(|c| {
        c.cluster = true;
        c.persistence = Persistence::Log;
    });
    let now = h.now;
    h.broker.handle_cluster_link(now, true);
    h
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
            ClusterOut::Publish { seq, .. } | ClusterOut::Interest { seq, .. } => Some(seq.0),
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
    let sub = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription {
            filter: filter("cmd/#"),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
        properties: Default::default(),
    };
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
