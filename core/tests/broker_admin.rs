//! Administration requests: listing and kicking clients, retained messages, publishing as the
//! broker, counters, and reloading the configuration.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use std::sync::Arc;

use broker_harness::*;
use bytes::Bytes;
use ternmq_core::broker::admin::{AdminError, Request, Response};
use ternmq_core::broker::{
    AuthDecision, AuthRequest, Authenticator, BrokerConfig, PeerInfo, version_index,
};
use ternmq_core::codec::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use ternmq_core::time::Duration;

fn ask(h: &mut Harness, r: Request) -> Response {
    let out = h.broker.handle_admin(h.now, r);
    h.pump();
    out
}

fn list(
    h: &mut Harness,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<String>, Option<String>) {
    let r = Request::ListClients { prefix: prefix.into(), after: after.map(Into::into), limit };
    match ask(h, r) {
        Response::Clients { clients, next } => {
            (clients.into_iter().map(|c| c.client_id).collect(), next)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn clients_are_listed_in_order_by_prefix_and_page() {
    let mut h = Harness::new();
    let mut peers = Vec::new();
    for id in ["b-2", "a-1", "b-1", "b-3", "c"] {
        peers.push(h.connect(V5, id, true));
    }
    assert_eq!(list(&mut h, "", None, 10).0, ["a-1", "b-1", "b-2", "b-3", "c"]);
    let (page, next) = list(&mut h, "b-", None, 2);
    assert_eq!(page, ["b-1", "b-2"]);
    assert_eq!(next.as_deref(), Some("b-2"));
    let (page, next) = list(&mut h, "b-", next.as_deref(), 2);
    assert_eq!(page, ["b-3"]);
    assert_eq!(next, None);
    assert_eq!(list(&mut h, "zz", None, 5).0, Vec::<String>::new());
    assert_eq!(list(&mut h, "", None, usize::MAX).0.len(), 5);
    // Pages smaller than the match: every client once, in order.
    for limit in [1, 2, 3] {
        let (mut all, mut cursor) = (Vec::new(), None);
        loop {
            let (page, next) = list(&mut h, "", cursor.as_deref(), limit);
            assert!(page.len() <= limit);
            all.extend(page);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(all, ["a-1", "b-1", "b-2", "b-3", "c"], "pages of {limit}");
    }
}

#[test]
fn a_client_shows_its_connection_session_and_subscriptions() {
    let mut h = Harness::new();
    let peer = PeerInfo {
        addr: Some("127.0.0.1:5000".parse().unwrap()),
        listener: 2,
        identity: None,
        trusted: false,
    };
    let mut p = h.accept_from(V5, peer);
    let mut c = connect_packet(V5, "dev", false);
    c.keep_alive = 30;
    c.properties.session_expiry_interval = Some(600);
    h.send(&p, c);
    assert!(matches!(h.recv(&mut p)[0], Packet::ConnAck(_)));
    h.subscribe(&mut p, "a/+", QoS::AtLeastOnce);
    h.subscribe(&mut p, "$share/g/b/#", QoS::AtMostOnce);
    h.secs(5);
    let Response::Client(Some(d)) = ask(&mut h, Request::GetClient { client_id: "dev".into() })
    else {
        panic!()
    };
    let i = &d.info;
    assert!(i.connected);
    assert_eq!(i.peer, Some("127.0.0.1:5000".parse().unwrap()));
    assert_eq!((i.listener, i.keep_alive, i.session_expiry), (2, 30, 600));
    assert_eq!(i.protocol, ProtocolVersion::V5);
    assert_eq!(i.connected_for, Some(Duration::from_secs(5)));
    assert_eq!(i.subscriptions, 2);
    let subs: Vec<_> = d.subscriptions.iter().map(|s| (s.filter.as_str(), s.qos)).collect();
    assert_eq!(subs, [("$share/g/b/#", QoS::AtMostOnce), ("a/+", QoS::AtLeastOnce)]);
    assert!(matches!(
        ask(&mut h, Request::GetClient { client_id: "nobody".into() }),
        Response::Client(None)
    ));
    // Disconnected, the session is listed with its time left.
    h.drop_peer(&p);
    h.secs(100);
    let Response::Client(Some(d)) = ask(&mut h, Request::GetClient { client_id: "dev".into() })
    else {
        panic!()
    };
    assert!(!d.info.connected);
    assert_eq!(d.info.expires_in, Some(Duration::from_secs(500)));
}

#[test]
fn a_kicked_v5_client_gets_administrative_action_and_its_session_may_go() {
    let mut h = Harness::new();
    let (mut p, _) = h.connect_v5_session("k", true, 300);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    let kick = |discard| Request::Disconnect {
        client_id: "k".into(),
        reason: ReasonCode::AdministrativeAction,
        discard_session: discard,
    };
    assert!(matches!(ask(&mut h, kick(false)), Response::Disconnected { found: true }));
    let got = h.recv(&mut p);
    assert_eq!(reason_of_disconnect(&got), Some(ReasonCode::AdministrativeAction));
    assert!(p.closed);
    h.drop_peer(&p);
    // The session outlives the connection…
    assert!(h.broker.has_session("k"));
    // …until it is discarded.
    assert!(matches!(ask(&mut h, kick(true)), Response::Disconnected { found: true }));
    assert!(!h.broker.has_session("k"));
    assert!(matches!(ask(&mut h, kick(true)), Response::Disconnected { found: false }));
    // Discarding a connected client's session: it reconnects to a new one.
    let (mut p, _) = h.connect_v5_session("k", true, 300);
    ask(&mut h, kick(true));
    assert!(h.is_closed(&mut p));
    h.drop_peer(&p);
    let (_, ack) = h.connect_v5_session("k", false, 300);
    assert!(!ack.session_present);
}

#[test]
fn the_broker_publishes_retains_lists_and_clears() {
    let mut h = Harness::new();
    let mut s = h.connect(V5, "s", true);
    h.subscribe(&mut s, "sensors/#", QoS::AtLeastOnce);
    let mut p = Publish::new(topic("sensors/t1"), Bytes::from_static(b"21.5"));
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    p.properties.message_expiry_interval = Some(60);
    let Response::Published { matched } = ask(&mut h, Request::Publish(p)) else { panic!() };
    assert_eq!(matched, 1);
    let got = h.recv_publishes(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!((&got[0].payload[..], got[0].qos), (&b"21.5"[..], QoS::AtLeastOnce));
    ask(&mut h, Request::Publish(Publish::new(topic("other"), Bytes::from_static(b"x"))));
    let mut r = Publish::new(topic("sensors/t2"), Bytes::from_static(b"\xff"));
    r.retain = true;
    let Response::Published { matched } = ask(&mut h, Request::Publish(r)) else { panic!() };
    assert_eq!(matched, 1);
    h.secs(10);
    let retained = |h: &mut Harness, f: &str, limit| match ask(
        h,
        Request::ListRetained { filter: filter(f), limit },
    ) {
        Response::Retained { messages, truncated } => (messages, truncated),
        other => panic!("{other:?}"),
    };
    let (m, truncated) = retained(&mut h, "sensors/#", 10);
    assert!(!truncated);
    assert_eq!(
        m.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["sensors/t1", "sensors/t2"]
    );
    assert_eq!(m[0].expires_in, Some(Duration::from_secs(50)));
    assert_eq!(m[1].expires_in, None);
    let (m, truncated) = retained(&mut h, "sensors/+", 1);
    assert_eq!((m.len(), truncated), (1, true));
    assert!(matches!(
        ask(&mut h, Request::ClearRetained { topic: topic("sensors/t1") }),
        Response::Cleared { found: true }
    ));
    assert!(matches!(
        ask(&mut h, Request::ClearRetained { topic: topic("sensors/t1") }),
        Response::Cleared { found: false }
    ));
    assert_eq!(retained(&mut h, "#", 10).0.len(), 1);
    // Expired messages are not listed.
    h.broker.handle_admin(
        h.now,
        Request::Publish({
            let mut e = Publish::new(topic("gone"), Bytes::from_static(b"x"));
            e.retain = true;
            e.properties.message_expiry_interval = Some(1);
            e
        }),
    );
    h.secs(2);
    assert_eq!(retained(&mut h, "gone", 10).0.len(), 0);
}

#[test]
fn a_publish_the_broker_cannot_send_is_refused_with_the_reason() {
    let mut h = Harness::config(|c| c.max_packet_size = 100);
    let big = Publish::new(topic("t"), Bytes::from(vec![0u8; 200]));
    assert!(matches!(
        ask(&mut h, Request::Publish(big)),
        Response::Refused(AdminError::TooLarge { max: 100, .. })
    ));
    let sys = Publish::new(topic("$SYS/x"), Bytes::from_static(b"x"));
    assert!(matches!(
        ask(&mut h, Request::Publish(sys)),
        Response::Refused(AdminError::Invalid(_))
    ));
    let mut h = Harness::config(|c| c.retain_available = false);
    let mut r = Publish::new(topic("t"), Bytes::from_static(b"x"));
    r.retain = true;
    assert!(matches!(ask(&mut h, Request::Publish(r)), Response::Refused(AdminError::Invalid(_))));
}

#[test]
fn stats_count_by_listener_version_and_qos() {
    let mut h = Harness::new();
    let mut a = h.accept_from(V5, PeerInfo { listener: 1, ..PeerInfo::default() });
    h.send(&a, connect_packet(V5, "a", true));
    h.recv(&mut a);
    let mut b = h.connect(V311, "b", true);
    h.subscribe(&mut b, "t", QoS::AtLeastOnce);
    h.send(&a, publish("t", b"hello", QoS::AtLeastOnce, 1));
    h.recv_publishes(&mut b);
    let Response::Stats { stats, gauges, .. } = ask(&mut h, Request::Stats) else { panic!() };
    assert_eq!(gauges.clients_connected, 2);
    assert_eq!(stats.listeners[0].open, 1);
    assert_eq!(stats.listeners[1].accepted, 1);
    assert_eq!(stats.versions[version_index(V5)].connected, 1);
    assert_eq!(stats.versions[version_index(V311)].connects, 1);
    assert_eq!(stats.received_by_qos, [0, 1, 0]);
    assert_eq!(stats.sent_by_qos, [0, 1, 0]);
    assert_eq!(stats.payload_bytes_received_by_qos[1], 5);
    h.drop_peer(&a);
    let Response::Stats { stats, .. } = ask(&mut h, Request::Stats) else { panic!() };
    assert_eq!(stats.listeners[1].open, 0);
    assert_eq!(stats.versions[version_index(V5)].connected, 0);
}

struct Only(&'static str);

impl Authenticator for Only {
    fn authenticate(&self, r: &AuthRequest) -> AuthDecision {
        if r.username.as_ref().is_some_and(|u| u.as_str() == self.0) {
            AuthDecision::Allow
        } else {
            AuthDecision::Deny(ReasonCode::BadUserNameOrPassword)
        }
    }
}

fn connect_as(h: &mut Harness, id: &str, user: &str) -> (Peer, ReasonCode) {
    let mut c = connect_packet(V5, id, true);
    c.username = Some(ternmq_core::codec::MqttStr::new(user).unwrap());
    let (p, ack) = h.connect_with(c);
    (p, ack.reason_code)
}

#[test]
fn a_reload_swaps_the_authenticator_applies_limits_and_names_what_needs_a_restart() {
    let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Only("alice"))));
    let (mut alice, code) = connect_as(&mut h, "a", "alice");
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(connect_as(&mut h, "b", "bob").1, ReasonCode::BadUserNameOrPassword);
    let mut config = BrokerConfig::default();
    config.authenticator = Some(Arc::new(Only("bob")));
    config.max_queued_messages = 7;
    config.max_qos = QoS::AtLeastOnce;
    let r = Request::Reload { config: Box::new(config), disconnect_users: vec!["alice".into()] };
    let Response::Reloaded { restart_needed, disconnected } = ask(&mut h, r) else { panic!() };
    assert_eq!(restart_needed, ["max_qos"]);
    assert_eq!(disconnected, 1);
    assert_eq!(h.broker.config().max_queued_messages, 7);
    assert_eq!(h.broker.config().max_qos, QoS::ExactlyOnce);
    assert_eq!(reason_of_disconnect(&h.recv(&mut alice)), Some(ReasonCode::NotAuthorized));
    assert_eq!(connect_as(&mut h, "b", "bob").1, ReasonCode::Success);
    let Response::Stats { stats, .. } = ask(&mut h, Request::Stats) else { panic!() };
    assert_eq!(stats.auth_failures, 1);
    // A configuration that does not validate changes nothing.
    let mut bad = BrokerConfig::default();
    bad.max_packet_size = 0;
    let r = Request::Reload { config: Box::new(bad), disconnect_users: vec![] };
    assert!(matches!(ask(&mut h, r), Response::Refused(AdminError::Invalid(_))));
    assert_eq!(h.broker.config().max_queued_messages, 7);
}
