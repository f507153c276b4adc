//! Authorization that answers later: the authorizer defers, the broker holds the connection's
//! input in order, and carries on with the answer given to `resolve_authorization`.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use std::sync::Arc;

use broker_harness::*;
use ternmq_core::broker::{Action, Authorizer, AuthzDecision, ClientInfo, Event};
use ternmq_core::codec::{Packet, QoS, ReasonCode};

/// Defers everything about `slow/...`; allows the rest.
struct SlowTopics;

impl Authorizer for SlowTopics {
    fn authorize(&self, _: &ClientInfo<'_>, _: Action, _: &str) -> bool {
        true
    }
    fn decide(&self, _: &ClientInfo<'_>, _: Action, topic: &str) -> AuthzDecision {
        if topic.starts_with("slow/") { AuthzDecision::Defer } else { AuthzDecision::Allow }
    }
}

fn harness() -> Harness {
    Harness::config(|c| c.authorizer = Some(Arc::new(SlowTopics)))
}

fn pending(h: &mut Harness) -> Vec<(ternmq_core::broker::AuthTicket, Action, String)> {
    h.pump();
    h.events
        .drain(..)
        .filter_map(|e| match e {
            Event::AuthorizeRequired { ticket, action, topic, .. } => Some((ticket, action, topic)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_deferred_publish_holds_later_packets_until_answered() {
    let mut h = harness();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "+/x", QoS::AtLeastOnce);
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("slow/x", b"1", QoS::AtLeastOnce, 1));
    h.send_raw(&p, &[0xc0, 0x00]); // PINGREQ, after it
    assert!(h.recv(&mut p).is_empty(), "nothing answered while the decision is pending");
    let asked = pending(&mut h);
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].1, asked[0].2.as_str()), (Action::Publish, "slow/x"));
    let now = h.now;
    h.broker.resolve_authorization(now, asked[0].0, true);
    let out = h.recv(&mut p);
    assert!(matches!(&out[0], Packet::PubAck(a) if a.packet_id.get() == 1), "{out:?}");
    assert!(matches!(out[1], Packet::PingResp), "then the PINGREQ's answer, in order");
    assert_eq!(h.recv_publishes(&mut sub).len(), 1);
}

#[test]
fn a_deferred_publish_refused_gets_0x87_and_is_not_routed() {
    let mut h = harness();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "+/x", QoS::AtLeastOnce);
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("slow/x", b"1", QoS::AtLeastOnce, 1));
    let asked = pending(&mut h);
    let now = h.now;
    h.broker.resolve_authorization(now, asked[0].0, false);
    let out = h.recv(&mut p);
    assert!(matches!(&out[0], Packet::PubAck(a) if a.reason_code == ReasonCode::NotAuthorized));
    assert!(h.recv_publishes(&mut sub).is_empty());
}

#[test]
fn a_subscribe_with_a_deferred_filter_is_answered_whole_once_decided() {
    let mut h = harness();
    let publisher = h.connect(V5, "pub", true);
    let mut keep = publish("fast/a", b"retained", QoS::AtLeastOnce, 1);
    keep.retain = true;
    h.send(&publisher, keep);
    let mut s = h.accept(V5);
    h.send(&s, connect_packet(V5, "s", true));
    h.recv(&mut s);
    let sub = ternmq_core::codec::Subscribe {
        packet_id: pid(5),
        subscriptions: vec![
            ternmq_core::codec::Subscription::new(filter("fast/#"), QoS::AtLeastOnce),
            ternmq_core::codec::Subscription::new(filter("slow/#"), QoS::AtLeastOnce),
        ],
        properties: Default::default(),
    };
    h.send(&s, sub);
    assert!(h.recv(&mut s).is_empty(), "no SUBACK, no retained message yet");
    let asked = pending(&mut h);
    assert_eq!(asked.len(), 1, "only the slow filter is asked about");
    let now = h.now;
    h.broker.resolve_authorization(now, asked[0].0, false);
    let out = h.recv(&mut s);
    match &out[0] {
        Packet::SubAck(a) => {
            assert_eq!(a.reason_codes, [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let retained: Vec<_> = out.iter().filter(|p| matches!(p, Packet::Publish(_))).collect();
    assert_eq!(retained.len(), 1, "the retained message once, for the allowed filter");
}

#[test]
fn a_will_cannot_wait_so_defer_refuses_it() {
    let mut h = harness();
    let mut watcher = h.connect(V5, "w", true);
    h.subscribe(&mut watcher, "fast/#", QoS::AtLeastOnce);
    let mut c = connect_packet(V5, "dying", true);
    c.will = Some(will("slow/will", "gone", QoS::AtLeastOnce, false));
    let (dying, _) = h.connect_with(c);
    h.drop_peer(&dying);
    assert!(pending(&mut h).is_empty());
    assert_eq!(h.broker.stats().publish_denied, 1);
}
