//! Authorization that answers later: the authorizer defers, the broker holds the connection's
//! input in order, and carries on with the answer given to `handle_authorization`.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use std::sync::Arc;

use broker_harness::*;
use ternmq_core::broker::{Action, Authorizer, AuthzDecision, ClientInfo, Command};
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
    h.commands
        .drain(..)
        .filter_map(|e| match e {
            Command::Authorize { ticket, action, topic, .. } => Some((ticket, action, topic)),
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
    h.broker.handle_authorization(now, asked[0].0, true);
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
    h.broker.handle_authorization(now, asked[0].0, false);
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
    h.broker.handle_authorization(now, asked[0].0, false);
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

// ---------------------------------------------------------------- read access on delivery

/// Grants every subscription and publish; client `reader` may not receive `secret/...`.
struct NoSecretsForReader;

impl Authorizer for NoSecretsForReader {
    fn authorize(&self, _: &ClientInfo<'_>, _: Action, _: &str) -> bool {
        true
    }
    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        !(client.client_id.starts_with("reader") && topic.starts_with("secret/"))
    }
}

fn reading_harness() -> Harness {
    Harness::config(|c| c.authorizer = Some(Arc::new(NoSecretsForReader)))
}

fn topics(got: &[ternmq_core::codec::Publish]) -> Vec<&str> {
    got.iter().map(|p| p.topic.as_str()).collect()
}

/// Live publishes, at every QoS and in both versions: a wide subscription delivers only what
/// its client may receive; others still get everything.
#[test]
fn a_wide_subscription_delivers_only_what_the_client_may_receive() {
    for version in [V311, V5] {
        let mut h = reading_harness();
        let mut reader = h.connect(version, "reader", true);
        let mut other = h.connect(version, "other", true);
        assert_eq!(h.subscribe(&mut reader, "#", QoS::ExactlyOnce), [ReasonCode::GrantedQoS2]);
        h.subscribe(&mut other, "#", QoS::ExactlyOnce);
        let p = h.connect(version, "p", true);
        for (i, qos) in
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate()
        {
            h.send(&p, publish("secret/x", b"s", qos, 2 * i as u16 + 1));
            h.send(&p, publish("open/x", b"o", qos, 2 * i as u16 + 2));
        }
        let got = h.recv_publishes(&mut reader);
        assert_eq!(topics(&got), ["open/x"; 3], "{version:?}");
        assert_eq!(h.recv_publishes(&mut other).len(), 6, "{version:?}");
        assert_eq!(h.broker.stats().dropped_not_authorized, 3);
    }
}

/// Retained messages sent on subscribe, and messages queued for an offline session, are
/// checked too.
#[test]
fn retained_and_queued_messages_are_checked_on_delivery() {
    for version in [V311, V5] {
        let mut h = reading_harness();
        let p = h.connect(version, "p", true);
        let mut r = publish("secret/r", b"s", QoS::AtLeastOnce, 1);
        r.retain = true;
        h.send(&p, r);
        let mut r = publish("open/r", b"o", QoS::AtLeastOnce, 2);
        r.retain = true;
        h.send(&p, r);
        let persistent = || {
            let mut c = connect_packet(version, "reader", false);
            if version == V5 {
                c.properties.session_expiry_interval = Some(60);
            }
            c
        };
        let (mut reader, _) = h.connect_with(persistent());
        h.subscribe(&mut reader, "+/+", QoS::AtLeastOnce);
        let got = h.recv_publishes(&mut reader);
        assert_eq!(topics(&got), ["open/r"], "{version:?}");
        h.puback(&reader, got[0].packet_id.unwrap());
        h.drop_peer(&reader);
        h.send(&p, publish("secret/q", b"s", QoS::AtLeastOnce, 3));
        h.send(&p, publish("open/q", b"o", QoS::AtLeastOnce, 4));
        let (mut reader, ack) = h.connect_with(persistent());
        assert!(ack.session_present, "{version:?}");
        assert_eq!(topics(&h.recv_publishes(&mut reader)), ["open/q"], "{version:?}");
    }
}

/// A will is delivered like any message: not to a subscriber that may not receive its topic.
#[test]
fn a_will_is_checked_for_each_subscriber() {
    for version in [V311, V5] {
        let mut h = reading_harness();
        let mut reader = h.connect(version, "reader", true);
        let mut other = h.connect(version, "other", true);
        h.subscribe(&mut reader, "secret/#", QoS::AtLeastOnce);
        h.subscribe(&mut other, "secret/#", QoS::AtLeastOnce);
        let mut c = connect_packet(version, "dying", true);
        c.will = Some(will("secret/will", "bye", QoS::AtLeastOnce, false));
        let (dying, _) = h.connect_with(c);
        h.drop_peer(&dying);
        assert!(h.recv_publishes(&mut reader).is_empty(), "{version:?}");
        assert_eq!(topics(&h.recv_publishes(&mut other)), ["secret/will"], "{version:?}");
    }
}

/// A shared subscription's message goes to a member that may receive it.
#[test]
fn a_shared_group_passes_over_a_member_that_may_not_receive() {
    for version in [V311, V5] {
        let mut h = reading_harness();
        let mut reader = h.connect(version, "reader", true);
        let mut other = h.connect(version, "other", true);
        h.subscribe(&mut reader, "$share/g/+/x", QoS::AtLeastOnce);
        h.subscribe(&mut other, "$share/g/+/x", QoS::AtLeastOnce);
        let p = h.connect(version, "p", true);
        for i in 1..=4 {
            h.send(&p, publish("secret/x", b"s", QoS::AtLeastOnce, i));
        }
        h.send(&p, publish("open/x", b"o", QoS::AtLeastOnce, 5));
        h.send(&p, publish("open/x", b"o", QoS::AtLeastOnce, 6));
        let to_reader = h.recv_publishes(&mut reader);
        let to_other = h.recv_publishes(&mut other);
        assert!(topics(&to_reader).iter().all(|t| *t == "open/x"), "{version:?}");
        let secrets = topics(&to_other).iter().filter(|t| **t == "secret/x").count();
        assert_eq!(secrets, 4, "{version:?}: every secret went to the member that may read it");
        assert_eq!(to_reader.len() + to_other.len(), 6, "{version:?}: none lost");
    }
}
