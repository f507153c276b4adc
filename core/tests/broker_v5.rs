//! The broker against MQTT 5.0 clients, packet by packet, named after the statements of the
//! MQTT 5.0 specification they check.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::Bytes;
use ternmq_core::broker::{Command, Event};
use ternmq_core::codec::{
    Auth, ConnAckProperties, Disconnect, MqttStr, Packet, PayloadFormat, PubAck, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, Subscription, SubscriptionOptions, WillProperties,
};
use ternmq_core::time::Duration;

fn sub_opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

// ---------------------------------------------------------------- CONNECT and CONNACK

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let mut h = Harness::new();
    let mut p = h.accept(V5);
    h.send_raw(&p, &[0xc0, 0x00]); // PINGREQ
    assert!(h.is_closed(&mut p));
    assert!(h.recv(&mut p).is_empty(), "nothing is sent to a client that skipped CONNECT");
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "a", true);
    h.send(&p, connect_packet(V5, "a", true));
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::ProtocolError));
    assert!(p.closed);
}

#[test]
fn mqtt_3_1_4_5_valid_connect_gets_connack_success() {
    let mut h = Harness::new();
    let (_, ack) = h.connect_with(connect_packet(V5, "a", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    // The broker's limits travel in the CONNACK.
    assert_eq!(ack.properties.maximum_packet_size.map(|m| m.get()), Some(256 * 1024));
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    assert!(matches!(h.events[0], Event::Connected { session_present: false, .. }));
}

#[test]
fn mqtt_3_2_0_2_one_connack_per_connection() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "a", true);
    h.send(&p, Packet::PingReq);
    assert_eq!(h.recv(&mut p), vec![Packet::PingResp]);
}

#[test]
fn mqtt_3_1_3_6_empty_client_id_gets_assigned_one() {
    let mut h = Harness::new();
    let (_, ack) = h.connect_with(connect_packet(V5, "", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let id = ack.properties.assigned_client_identifier.expect("assigned id");
    assert!(!id.is_empty());
    // [MQTT-3.2.2-16]: unique among current sessions.
    let (_, ack2) = h.connect_with(connect_packet(V5, "", true));
    assert_ne!(ack2.properties.assigned_client_identifier, Some(id));
}

/// [MQTT-3.1.3-7], [MQTT-3.2.2-16]
#[test]
fn mqtt_3_1_3_7_assigned_id_is_the_session_name() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "", false);
    c.properties.session_expiry_interval = Some(100);
    let (p, ack) = h.connect_with(c);
    let id = ack.properties.assigned_client_identifier.unwrap();
    assert_eq!(h.broker.client_id(p.id), Some(&id));
    h.drop_peer(&p);
    let (_, ack) = h.connect_v5_session(id.as_str(), false, 100);
    assert!(ack.session_present);
}

#[test]
fn mqtt_3_1_3_5_accepts_short_alphanumeric_ids() {
    let mut h = Harness::new();
    h.connect(V5, "0123456789abcdefghijABC", true);
    h.connect(V5, "z", true);
}

#[test]
fn mqtt_3_1_3_8_rejected_client_id_gets_0x85_and_close() {
    let mut h = Harness::config(|c| {
        c.allow_zero_length_client_id = false;
        c.max_client_id_len = 8;
    });
    let (mut p, ack) = h.connect_with(connect_packet(V5, "", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(h.is_closed(&mut p));
    let (mut p, ack) = h.connect_with(connect_packet(V5, "123456789", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(h.is_closed(&mut p));
    assert!(h.events.iter().any(|e| matches!(e, Event::Refused { .. })));
}

#[test]
fn mqtt_3_1_4_6_nothing_is_processed_after_a_refusal() {
    let mut h = Harness::config(|c| c.allow_zero_length_client_id = false);
    let mut p = h.accept(V5);
    let mut bytes = bytes::BytesMut::new();
    ternmq_core::codec::Encoder::new(V5)
        .encode(&connect_packet(V5, "", true).into(), &mut bytes)
        .unwrap();
    ternmq_core::codec::Encoder::new(V5)
        .encode(
            &Subscribe {
                packet_id: pid(1),
                subscriptions: vec![Subscription::new(filter("#"), QoS::AtMostOnce)],
                properties: Default::default(),
            }
            .into(),
            &mut bytes,
        )
        .unwrap();
    h.send_raw(&p, &bytes);
    let out = h.recv(&mut p);
    assert_eq!(out.len(), 1, "only the CONNACK: {out:?}");
    assert!(p.closed);
    assert_eq!(h.broker.gauges().subscriptions, 0);
}

#[test]
fn mqtt_3_1_4_3_takeover_sends_0x8e_to_the_old_connection() {
    let mut h = Harness::new();
    let mut old = h.connect(V5, "dup", true);
    let _new = h.connect(V5, "dup", true);
    assert_eq!(reason_of_disconnect(&h.recv(&mut old)), Some(ReasonCode::SessionTakenOver));
    assert!(old.closed);
    h.drop_peer(&old);
    assert_eq!(h.broker.gauges().clients_connected, 1);
}

/// 5.0 section 3.1.2.11.2: a session with Session Expiry 0 ends when its connection closes,
/// a takeover included; a Clean Start 0 connection that takes the client id over starts a new
/// session (section 3.1.4: Session Present 0, no subscriptions). The common form: a client
/// reconnecting with Clean Start 0 and no Session Expiry while its old connection is half-open.
#[test]
fn sec_3_1_2_11_2_takeover_does_not_revive_a_session_with_expiry_0() {
    for new_expiry in [None, Some(0), Some(300)] {
        let mut h = Harness::new();
        let mut old = h.connect(V5, "dup", true);
        h.subscribe(&mut old, "t", QoS::AtLeastOnce);
        let mut c = connect_packet(V5, "dup", false);
        c.properties.session_expiry_interval = new_expiry;
        let (mut new, ack) = h.connect_with(c);
        assert_eq!(ack.reason_code, ReasonCode::Success);
        assert!(!ack.session_present, "expiry {new_expiry:?}: the old session ended");
        assert_eq!(reason_of_disconnect(&h.recv(&mut old)), Some(ReasonCode::SessionTakenOver));
        h.drop_peer(&old);
        assert_eq!(h.broker.gauges().subscriptions, 0);
        let p = h.connect(V5, "p", true);
        h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
        assert!(h.recv_publishes(&mut new).is_empty(), "expiry {new_expiry:?}: inherited");
    }
}

/// The same with a will: it is published (the session ended), and Session Present stays 0.
#[test]
fn sec_3_1_2_11_2_takeover_of_a_session_with_expiry_0_and_a_will() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (mut old, _) = h.connect_with(will_connect("dup", None, 0));
    h.subscribe(&mut old, "t", QoS::AtLeastOnce);
    let (_new, ack) = h.connect_v5_session("dup", false, 300);
    assert!(!ack.session_present);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
    assert_eq!(h.broker.gauges().subscriptions, 1, "only the watcher's");
}

/// A session with an expiry is taken over whole, and a will with a delay is not published:
/// the session lives on in the new connection ([MQTT-3.1.3-9]).
#[test]
fn mqtt_3_1_4_3_takeover_resumes_a_session_that_outlives_its_connection() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (mut old, _) = h.connect_with(will_connect("dup", Some(30), 300));
    h.subscribe(&mut old, "t", QoS::AtLeastOnce);
    let (mut new, ack) = h.connect_v5_session("dup", false, 300);
    assert!(ack.session_present);
    h.drop_peer(&old);
    h.secs(60);
    assert!(h.recv_publishes(&mut watcher).is_empty(), "the delayed will is cancelled");
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert_eq!(h.recv_publishes(&mut new).len(), 1);
}

#[test]
fn mqtt_3_2_2_2_clean_start_means_no_session_present() {
    let mut h = Harness::new();
    let (p, _) = h.connect_v5_session("s", false, 100);
    h.drop_peer(&p);
    let (_, ack) = h.connect_v5_session("s", true, 100);
    assert!(!ack.session_present);
}

/// [MQTT-3.1.2-5], [MQTT-3.1.2-6], [MQTT-3.2.2-3]
#[test]
fn mqtt_3_2_2_3_session_present_says_whether_state_existed() {
    let mut h = Harness::new();
    let (mut p, ack) = h.connect_v5_session("s", false, 100);
    assert!(!ack.session_present);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    h.drop_peer(&p);
    let (_, ack) = h.connect_v5_session("s", false, 100);
    assert!(ack.session_present);
    assert_eq!(h.broker.gauges().subscriptions, 1, "the subscription came back with it");
}

#[test]
fn sec_3_1_2_11_2_session_expiry_is_capped_by_the_broker() {
    let mut h = Harness::config(|c| c.session_expiry_interval = 60);
    let (_, ack) = h.connect_v5_session("s", false, 1000);
    assert_eq!(ack.properties.session_expiry_interval, Some(60));
    let (_, ack) = h.connect_v5_session("t", false, 30);
    assert_eq!(ack.properties.session_expiry_interval, None, "granted as asked");
}

#[test]
fn session_expires_after_its_interval() {
    let mut h = Harness::new();
    let (mut p, _) = h.connect_v5_session("s", false, 10);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    h.drop_peer(&p);
    h.secs(9);
    assert!(h.broker.has_session("s"));
    h.secs(2);
    assert!(!h.broker.has_session("s"));
    assert_eq!(h.broker.gauges().subscriptions, 0);
    assert!(h.events.iter().any(|e| matches!(e, Event::SessionExpired { .. })));
    let (_, ack) = h.connect_v5_session("s", false, 10);
    assert!(!ack.session_present);
}

// Found by the deterministic simulation: after a clock jump, a CONNECT handled before the
// overdue expiry timer resumed a session that had expired.
#[test]
fn a_session_past_its_expiry_is_not_resumed_even_before_its_timer_runs() {
    let mut h = Harness::new();
    let (mut p, _) = h.connect_v5_session("s", false, 3);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    h.drop_peer(&p);
    // The clock jumps past the expiry; the CONNECT is handled before `handle_timeout`.
    h.now += ternmq_core::time::Duration::from_secs(6);
    let (_, ack) = h.connect_v5_session("s", false, 3);
    assert!(!ack.session_present, "the session expired 3 s ago");
    assert!(h.events.iter().any(|e| matches!(e, Event::SessionExpired { .. })));
}

#[test]
fn session_with_expiry_zero_ends_with_the_connection() {
    let mut h = Harness::new();
    let (mut p, _) = h.connect_v5_session("s", false, 0);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    h.drop_peer(&p);
    assert!(!h.broker.has_session("s"));
    assert_eq!(h.broker.gauges().subscriptions, 0);
}

#[test]
fn mqtt_3_14_2_2_disconnect_may_change_expiry_but_not_from_zero() {
    let mut h = Harness::new();
    let (mut p, _) = h.connect_v5_session("s", false, 0);
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(100);
    h.send(&p, d);
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::ProtocolError));

    let (mut p, _) = h.connect_v5_session("t", false, 100);
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(0);
    h.send(&p, d);
    assert!(h.is_closed(&mut p));
    h.drop_peer(&p);
    assert!(!h.broker.has_session("t"), "expiry 0 from DISCONNECT ends the session");
}

#[test]
fn mqtt_3_2_2_22_server_keep_alive_overrides_the_clients() {
    let mut h = Harness::config(|c| c.max_keepalive = 30);
    let mut c = connect_packet(V5, "a", true);
    c.keep_alive = 100;
    let (_, ack) = h.connect_with(c);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let mut c = connect_packet(V5, "b", true);
    c.keep_alive = 20;
    let (_, ack) = h.connect_with(c);
    assert_eq!(ack.properties.server_keep_alive, None, "the client's own value is used");
}

#[test]
fn mqtt_3_1_2_22_keep_alive_timeout_at_one_and_a_half_times() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "a", true);
    c.keep_alive = 10;
    let (mut p, _) = h.connect_with(c);
    h.secs(14);
    h.send(&p, Packet::PingReq);
    assert_eq!(h.recv(&mut p), vec![Packet::PingResp]);
    h.secs(14);
    assert!(!h.is_closed(&mut p));
    h.secs(2);
    let out = h.recv(&mut p);
    assert_eq!(reason_of_disconnect(&out), Some(ReasonCode::KeepAliveTimeout));
    assert!(p.closed);
}

#[test]
fn connect_timeout_closes_silent_connections() {
    let mut h = Harness::new();
    let mut p = h.accept(V5);
    h.secs(29);
    assert!(!h.is_closed(&mut p));
    assert_eq!(h.broker.stats().connect_timeouts, 0);
    h.secs(2);
    assert!(h.is_closed(&mut p));
    // Counted: a silent TLS handshake or WebSocket upgrade ends the same way.
    assert_eq!(h.broker.stats().connect_timeouts, 1);
}

#[test]
fn mqtt_3_2_2_9_connack_states_maximum_qos_and_limits() {
    let mut h = Harness::config(|c| {
        c.max_qos = QoS::AtLeastOnce;
        c.retain_available = false;
        c.wildcard_subscription_available = false;
        c.shared_subscription_available = false;
        c.subscription_identifiers_available = false;
        c.receive_maximum = 7;
    });
    let (_, ack) = h.connect_with(connect_packet(V5, "a", true));
    let p: &ConnAckProperties = &ack.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.receive_maximum.map(|r| r.get()), Some(7));
}

#[test]
fn mqtt_3_2_2_10_subscribe_at_any_qos_with_lower_maximum() {
    let mut h = Harness::config(|c| c.max_qos = QoS::AtMostOnce);
    let mut p = h.connect(V5, "a", true);
    assert_eq!(h.subscribe(&mut p, "t", QoS::ExactlyOnce), vec![ReasonCode::Success]);
}

#[test]
fn mqtt_3_2_2_12_will_qos_above_maximum_is_refused() {
    let mut h = Harness::config(|c| c.max_qos = QoS::AtMostOnce);
    let mut c = connect_packet(V5, "a", true);
    c.will = Some(will("w", "x", QoS::AtLeastOnce, false));
    let (mut p, ack) = h.connect_with(c);
    assert_eq!(ack.reason_code, ReasonCode::QoSNotSupported);
    assert!(h.is_closed(&mut p));
}

#[test]
fn mqtt_3_2_2_13_will_retain_without_retain_support_is_refused() {
    let mut h = Harness::config(|c| c.retain_available = false);
    let mut c = connect_packet(V5, "a", true);
    c.will = Some(will("w", "x", QoS::AtMostOnce, true));
    let (mut p, ack) = h.connect_with(c);
    assert_eq!(ack.reason_code, ReasonCode::RetainNotSupported);
    assert!(h.is_closed(&mut p));
}

/// A CONNECT that does not match the format is answered with a CONNACK of 0x80 or above and
/// the connection closed [MQTT-3.1.4-1].
#[test]
fn mqtt_3_2_2_7_malformed_connect_gets_connack_and_close() {
    let mut h = Harness::new();
    let mut p = h.accept(V5);
    // CONNECT v5 whose property length overruns the packet.
    h.send_raw(&p, b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x00\x09\x00\x01a");
    match h.recv(&mut p).first() {
        Some(Packet::ConnAck(a)) => assert!(a.reason_code.is_error()),
        other => panic!("{other:?}"),
    }
    assert!(p.closed);
}

/// A protocol level the broker does not speak is refused with a CONNACK in the 3.1.1 form,
/// which any client can read, and the connection is closed [MQTT-3.1.2-2].
#[test]
fn unsupported_protocol_level_gets_a_3_1_1_connack_0x01() {
    let mut h = Harness::new();
    let mut p = h.accept(V311);
    h.send_raw(&p, b"\x10\x0d\x00\x04MQTT\x07\x02\x00\x3c\x00\x01a");
    assert!(h.broker.poll_writable().is_some());
    let bytes = h.broker.poll_transmit(p.id, 100).unwrap();
    assert_eq!(&bytes[..], b"\x20\x02\x00\x01");
    assert!(h.is_closed(&mut p));
}

#[test]
fn mqtt_3_1_2_28_response_information_only_when_requested() {
    let mut h = Harness::config(|c| c.response_information = Some("replies/".into()));
    let (_, ack) = h.connect_with(connect_packet(V5, "a", true));
    assert_eq!(ack.properties.response_information, None);
    let mut c = connect_packet(V5, "b", true);
    c.properties.request_response_information = Some(true);
    let (_, ack) = h.connect_with(c);
    assert_eq!(ack.properties.response_information.unwrap().as_str(), "replies/");
}

// ---------------------------------------------------------------- publish and QoS

#[test]
fn qos0_message_is_routed_with_its_properties() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "a/+", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    let mut p = publish("a/b", b"hello", QoS::AtMostOnce, 0);
    p.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    p.properties.content_type = Some(MqttStr::new("text/plain").unwrap());
    p.properties.response_topic = Some(topic("reply/here"));
    p.properties.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    p.properties.user_properties = vec![up("k", "v"), up("k", "w")];
    h.send(&publisher, p.clone());
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    // [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-20]
    assert_eq!(got[0].properties, p.properties);
    assert_eq!(got[0].payload, p.payload);
    assert_eq!(got[0].topic, p.topic);
}

/// [MQTT-3.3.2-4], [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-20]
#[test]
fn mqtt_3_3_2_17_metadata_passes_through_at_qos1() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "a", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    let mut p = publish("a", b"x", QoS::AtLeastOnce, 5);
    p.properties.user_properties = vec![up("a", "1")];
    p.properties.content_type = Some(MqttStr::new("c").unwrap());
    h.send(&publisher, p.clone());
    assert_eq!(h.recv_one(&mut publisher), Packet::PubAck(PubAck::new(pid(5))));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got[0].properties.user_properties, p.properties.user_properties);
    assert_eq!(got[0].properties.content_type, p.properties.content_type);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[test]
fn puback_says_no_matching_subscribers() {
    let mut h = Harness::new();
    let mut publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("nobody", b"x", QoS::AtLeastOnce, 1));
    match h.recv_one(&mut publisher) {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NoMatchingSubscribers),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mqtt_3_8_4_8_delivered_qos_is_the_minimum() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "a", QoS::AtLeastOnce);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("a", b"2", QoS::ExactlyOnce, 1));
    h.send(&publisher, publish("a", b"0", QoS::AtMostOnce, 0));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].qos, QoS::AtMostOnce);
}

#[test]
fn mqtt_3_3_4_2_overlapping_subscriptions_deliver_once_at_max_qos() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    let mut s = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![
            Subscription::new(filter("a/+"), QoS::AtMostOnce),
            Subscription::new(filter("a/#"), QoS::ExactlyOnce),
        ],
        properties: Default::default(),
    };
    s.properties.subscription_identifier = None;
    h.send(&sub, s);
    h.recv(&mut sub);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("a/b", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

/// [MQTT-3.3.4-3], [MQTT-3.3.4-4]
#[test]
fn mqtt_3_3_4_4_one_copy_carries_every_subscription_identifier() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    for (id, f) in [(7u32, "a/+"), (9, "a/#")] {
        let mut s = Subscribe {
            packet_id: pid(1),
            subscriptions: vec![Subscription::new(filter(f), QoS::AtMostOnce)],
            properties: Default::default(),
        };
        s.properties.subscription_identifier = core::num::NonZeroU32::new(id);
        h.send(&sub, s);
    }
    h.recv(&mut sub);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("a/b", b"x", QoS::AtMostOnce, 0));
    let got = h.recv_publishes(&mut sub);
    let mut ids: Vec<u32> =
        got[0].properties.subscription_identifiers.iter().map(|i| i.get()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
}

#[test]
fn subscription_identifier_unsupported_is_a_disconnect_0xa1() {
    let mut h = Harness::config(|c| c.subscription_identifiers_available = false);
    let mut p = h.connect(V5, "sub", true);
    let mut s = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription::new(filter("a"), QoS::AtMostOnce)],
        properties: Default::default(),
    };
    s.properties.subscription_identifier = core::num::NonZeroU32::new(1);
    h.send(&p, s);
    assert_eq!(
        reason_of_disconnect(&h.recv(&mut p)),
        Some(ReasonCode::SubscriptionIdentifiersNotSupported)
    );
}

#[test]
fn mqtt_3_8_3_3_no_local_skips_the_publishers_own_messages() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "me", true);
    h.subscribe_opts(
        &mut p,
        "t",
        SubscriptionOptions { no_local: true, ..sub_opts(QoS::AtMostOnce) },
    );
    let mut other = h.connect(V5, "other", true);
    h.subscribe(&mut other, "t", QoS::AtMostOnce);
    h.send(&p, publish("t", b"x", QoS::AtMostOnce, 0));
    assert!(h.recv(&mut p).is_empty());
    assert_eq!(h.recv_publishes(&mut other).len(), 1);
    h.send(&other, publish("t", b"y", QoS::AtMostOnce, 0));
    assert_eq!(h.recv_publishes(&mut p).len(), 1);
}

#[test]
fn mqtt_3_3_1_12_retain_as_published_0_forwards_retain_0() {
    let mut h = Harness::new();
    let mut a = h.connect(V5, "a", true);
    h.subscribe(&mut a, "t", QoS::AtMostOnce);
    let mut b = h.connect(V5, "b", true);
    h.subscribe_opts(
        &mut b,
        "t",
        SubscriptionOptions { retain_as_published: true, ..sub_opts(QoS::AtMostOnce) },
    );
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("t", b"x", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&publisher, m);
    assert!(!h.recv_publishes(&mut a)[0].retain);
    // [MQTT-3.3.1-13]
    assert!(h.recv_publishes(&mut b)[0].retain);
}

#[test]
fn mqtt_3_3_1_13_retain_as_published_1_keeps_the_flag() {
    let mut h = Harness::new();
    let mut b = h.connect(V5, "b", true);
    h.subscribe_opts(
        &mut b,
        "t",
        SubscriptionOptions { retain_as_published: true, ..sub_opts(QoS::AtMostOnce) },
    );
    let publisher = h.connect(V5, "p", true);
    h.send(&publisher, publish("t", b"x", QoS::AtMostOnce, 0));
    assert!(!h.recv_publishes(&mut b)[0].retain);
}

#[test]
fn mqtt_3_3_4_9_outbound_window_is_the_clients_receive_maximum() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "sub", true);
    c.properties.receive_maximum = core::num::NonZeroU16::new(2);
    let (mut sub, _) = h.connect_with(c);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let publisher = h.connect(V5, "p", true);
    for i in 1..=5 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 2, "two in flight");
    h.puback(&sub, got[0].packet_id.unwrap());
    let more = h.recv_publishes(&mut sub);
    assert_eq!(more.len(), 1);
    // [MQTT-3.3.4-10]: non-PUBLISH packets are not held back by the quota.
    h.send(&sub, Packet::PingReq);
    assert_eq!(h.recv(&mut sub), vec![Packet::PingResp]);
    // [MQTT-2.2.1-4]: the new id is not one still in flight.
    assert_ne!(more[0].packet_id, got[1].packet_id);
}

#[test]
fn mqtt_2_2_1_5_acks_carry_the_publish_packet_id() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 300));
    match h.recv_one(&mut p) {
        Packet::PubRec(a) => assert_eq!(a.packet_id, pid(300)),
        other => panic!("{other:?}"),
    }
    h.send(&p, Packet::PubRel(PubAck::new(pid(300))));
    match h.recv_one(&mut p) {
        Packet::PubComp(a) => {
            assert_eq!(a.packet_id, pid(300));
            assert_eq!(a.reason_code, ReasonCode::Success);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn qos2_inbound_is_delivered_once_even_if_resent() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 9));
    let mut again = publish("t", b"x", QoS::ExactlyOnce, 9);
    again.dup = true;
    h.send(&p, again);
    assert_eq!(h.recv(&mut p).len(), 2, "PUBREC twice");
    assert_eq!(h.recv_publishes(&mut sub).len(), 1);
    h.send(&p, Packet::PubRel(PubAck::new(pid(9))));
    // After PUBREL the id is free: the same id is a new message.
    h.send(&p, publish("t", b"y", QoS::ExactlyOnce, 9));
    assert_eq!(h.recv_publishes(&mut sub).len(), 1);
}

#[test]
fn pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    h.send(&p, Packet::PubRel(PubAck::new(pid(3))));
    match h.recv_one(&mut p) {
        Packet::PubComp(a) => assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound),
        other => panic!("{other:?}"),
    }
}

#[test]
fn receive_maximum_exceeded_is_a_disconnect_0x93() {
    let mut h = Harness::config(|c| c.receive_maximum = 2);
    let mut p = h.connect(V5, "p", true);
    for i in 1..=3 {
        h.send(&p, publish("t", b"x", QoS::ExactlyOnce, i));
    }
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::ReceiveMaximumExceeded));
}

#[test]
fn qos2_outbound_flow_publish_pubrec_pubrel_pubcomp() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    let publisher = h.connect(V5, "p", true);
    h.send(&publisher, publish("t", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut sub);
    let id = got[0].packet_id.unwrap();
    h.send(&sub, Packet::PubRec(PubAck::new(id)));
    assert_eq!(h.recv_one(&mut sub), Packet::PubRel(PubAck::new(id)));
    h.send(&sub, Packet::PubComp(PubAck::new(id)));
    assert_eq!(h.broker.gauges().inflight, 0);
}

#[test]
fn mqtt_3_3_1_3_redelivery_on_resume_sets_dup() {
    let mut h = Harness::new();
    let (mut sub, _) = h.connect_v5_session("sub", false, 100);
    h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    let publisher = h.connect(V5, "p", true);
    h.send(&publisher, publish("t", b"1", QoS::AtLeastOnce, 1));
    h.send(&publisher, publish("t", b"2", QoS::ExactlyOnce, 2));
    let first = h.recv_publishes(&mut sub);
    assert!(first.iter().all(|p| !p.dup));
    // The QoS 2 one reaches PUBREL before the connection drops.
    h.send(&sub, Packet::PubRec(PubAck::new(first[1].packet_id.unwrap())));
    h.recv(&mut sub);
    h.drop_peer(&sub);
    let (mut sub, ack) = h.connect_v5_session("sub", false, 100);
    assert!(ack.session_present);
    let out = h.recv(&mut sub);
    match &out[..] {
        [Packet::Publish(p), Packet::PubRel(r)] => {
            assert!(p.dup);
            assert_eq!(p.packet_id, first[0].packet_id);
            assert_eq!(p.payload, first[0].payload);
            assert_eq!(r.packet_id, first[1].packet_id.unwrap());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn offline_messages_are_queued_and_delivered_on_resume() {
    let mut h = Harness::new();
    let (mut sub, _) = h.connect_v5_session("sub", false, 100);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    h.drop_peer(&sub);
    let publisher = h.connect(V5, "p", true);
    h.send(&publisher, publish("t", b"1", QoS::AtLeastOnce, 1));
    h.send(&publisher, publish("t", b"0", QoS::AtMostOnce, 0));
    h.send(&publisher, publish("t", b"2", QoS::AtLeastOnce, 2));
    let (mut sub, _) = h.connect_v5_session("sub", false, 100);
    let got = h.recv_publishes(&mut sub);
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, vec![&b"1"[..], b"2"], "QoS 0 is not queued offline by default");
}

#[test]
fn full_queue_drops_and_counts() {
    let mut h = Harness::config(|c| c.max_queued_messages = 2);
    let (mut sub, _) = h.connect_v5_session("sub", false, 100);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    h.drop_peer(&sub);
    let publisher = h.connect(V5, "p", true);
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(h.broker.stats().dropped_queue_full, 2);
    let (mut sub, _) = h.connect_v5_session("sub", false, 100);
    assert_eq!(h.recv_publishes(&mut sub).len(), 2);
}

/// [MQTT-3.3.2-5], [MQTT-3.3.2-6]
#[test]
fn mqtt_3_3_2_6_message_expiry_counts_down_and_expires_queued_messages() {
    let mut h = Harness::new();
    let (mut sub, _) = h.connect_v5_session("sub", false, 1000);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    h.drop_peer(&sub);
    let publisher = h.connect(V5, "p", true);
    let mut short = publish("t", b"short", QoS::AtLeastOnce, 1);
    short.properties.message_expiry_interval = Some(5);
    let mut long = publish("t", b"long", QoS::AtLeastOnce, 2);
    long.properties.message_expiry_interval = Some(60);
    h.send(&publisher, short);
    h.send(&publisher, long);
    h.secs(10);
    let (mut sub, _) = h.connect_v5_session("sub", false, 1000);
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(50));
    assert_eq!(h.broker.stats().dropped_expired, 1);
}

#[test]
fn mqtt_3_1_2_25_too_large_for_the_client_is_dropped() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "small", true);
    c.properties.maximum_packet_size = core::num::NonZeroU32::new(30);
    let (mut small, _) = h.connect_with(c);
    h.subscribe(&mut small, "t", QoS::AtLeastOnce);
    let publisher = h.connect(V5, "p", true);
    h.send(&publisher, publish("t", &[0u8; 64], QoS::AtLeastOnce, 1));
    h.send(&publisher, publish("t", b"ok", QoS::AtLeastOnce, 2));
    let got = h.recv_publishes(&mut small);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"ok");
    assert_eq!(h.broker.stats().dropped_too_large, 1);
    assert_eq!(h.broker.gauges().inflight, 1, "the dropped one counts as sent");
}

#[test]
fn publish_qos_above_maximum_is_a_disconnect_0x9b() {
    let mut h = Harness::config(|c| c.max_qos = QoS::AtLeastOnce);
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 1));
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::QoSNotSupported));
}

#[test]
fn retain_without_support_is_a_disconnect_0x9a() {
    let mut h = Harness::config(|c| c.retain_available = false);
    let mut p = h.connect(V5, "p", true);
    let mut m = publish("t", b"x", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&p, m);
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::RetainNotSupported));
}

#[test]
fn payload_format_utf8_with_invalid_payload_gets_0x99() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    let mut m = publish("t", b"\xff\xfe", QoS::AtLeastOnce, 1);
    m.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    h.send(&p, m);
    match h.recv_one(&mut p) {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::PayloadFormatInvalid),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- topic aliases

/// [MQTT-3.3.2-12]
#[test]
fn mqtt_3_3_2_12_incoming_aliases_up_to_the_maximum() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "long/topic", QoS::AtMostOnce);
    let p = h.connect(V5, "p", true);
    let mut m = publish("long/topic", b"1", QoS::AtMostOnce, 0);
    m.properties.topic_alias = core::num::NonZeroU16::new(10);
    h.send(&p, m);
    let mut m = Publish {
        topic: ternmq_core::topic::TopicName::new("x").unwrap(),
        ..publish("x", b"2", QoS::AtMostOnce, 0)
    };
    m.topic = topic("long/topic");
    // Now by alias alone: encode an empty topic by hand.
    h.send_raw(&p, b"\x30\x07\x00\x00\x03\x23\x00\x0a2");
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.topic.as_str() == "long/topic"));
    assert!(got.iter().all(|g| g.properties.topic_alias.is_none()));
    let _ = m;
}

#[test]
fn mqtt_3_3_2_9_alias_above_maximum_is_a_disconnect_0x94() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    let mut m = publish("t", b"1", QoS::AtMostOnce, 0);
    m.properties.topic_alias = core::num::NonZeroU16::new(11);
    h.send(&p, m);
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::TopicAliasInvalid));
}

#[test]
fn unknown_alias_is_a_protocol_error() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    h.send_raw(&p, b"\x30\x07\x00\x00\x03\x23\x00\x05x");
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::ProtocolError));
}

#[test]
fn mqtt_3_3_2_7_aliases_do_not_carry_over_to_a_new_connection() {
    let mut h = Harness::new();
    let p = h.connect(V5, "p", true);
    let mut m = publish("t", b"1", QoS::AtMostOnce, 0);
    m.properties.topic_alias = core::num::NonZeroU16::new(1);
    h.send(&p, m);
    h.drop_peer(&p);
    let mut p = h.connect(V5, "p", true);
    h.send_raw(&p, b"\x30\x07\x00\x00\x03\x23\x00\x01x");
    assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::ProtocolError));
}

/// [MQTT-3.1.2-26], [MQTT-3.3.2-11]
#[test]
fn mqtt_3_3_2_11_outgoing_aliases_stay_within_the_clients_maximum() {
    let mut h = Harness::config(|c| c.outgoing_topic_aliases = true);
    let mut c = connect_packet(V5, "sub", true);
    c.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = h.connect_with(c);
    h.subscribe(&mut sub, "#", QoS::AtMostOnce);
    let p = h.connect(V5, "p", true);
    for t in ["a", "b", "a", "c", "a", "b"] {
        h.send(&p, publish(t, b"x", QoS::AtMostOnce, 0));
    }
    let got = h.recv_publishes(&mut sub);
    let mut known: std::collections::BTreeMap<u16, String> = Default::default();
    let mut topics = Vec::new();
    for g in &got {
        let alias = g.properties.topic_alias.unwrap().get();
        assert!(alias <= 2);
        if !g.topic.is_empty() {
            known.insert(alias, g.topic.as_str().to_owned());
        }
        topics.push(known[&alias].clone());
    }
    assert_eq!(topics, ["a", "b", "a", "c", "a", "b"]);
    assert!(got[2].topic.is_empty(), "a known topic goes by alias alone");
}

/// [MQTT-3.1.2-27]
#[test]
fn mqtt_3_1_2_27_no_aliases_to_clients_that_allow_none() {
    let mut h = Harness::config(|c| c.outgoing_topic_aliases = true);
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "#", QoS::AtMostOnce);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("a", b"x", QoS::AtMostOnce, 0));
    h.send(&p, publish("a", b"x", QoS::AtMostOnce, 0));
    let got = h.recv_publishes(&mut sub);
    assert!(got.iter().all(|g| g.properties.topic_alias.is_none() && !g.topic.is_empty()));
}

// ---------------------------------------------------------------- subscribe

#[test]
fn mqtt_3_8_4_6_one_reason_code_per_filter_in_order() {
    let mut h = Harness::config(|c| c.wildcard_subscription_available = false);
    let mut p = h.connect(V5, "p", true);
    let s = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![
            Subscription::new(filter("a"), QoS::ExactlyOnce),
            Subscription::new(filter("b/#"), QoS::AtMostOnce),
            Subscription::new(filter("c"), QoS::AtLeastOnce),
        ],
        properties: Default::default(),
    };
    h.send(&p, s);
    match h.recv_one(&mut p) {
        Packet::SubAck(a) => assert_eq!(
            a.reason_codes,
            vec![
                ReasonCode::GrantedQoS2,
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::GrantedQoS1
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn shared_subscription_unsupported_gets_0x9e() {
    let mut h = Harness::config(|c| c.shared_subscription_available = false);
    let mut p = h.connect(V5, "p", true);
    assert_eq!(
        h.subscribe(&mut p, "$share/g/t", QoS::AtMostOnce),
        vec![ReasonCode::SharedSubscriptionsNotSupported]
    );
}

#[test]
fn mqtt_3_3_1_9_retain_handling_0_sends_retained() {
    let mut h = Harness::new();
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("r/1", b"kept", QoS::AtLeastOnce, 1);
    m.retain = true;
    h.send(&publisher, m);
    let mut sub = h.connect(V5, "s", true);
    h.send(
        &sub,
        Subscribe {
            packet_id: pid(2),
            subscriptions: vec![Subscription::new(filter("r/+"), QoS::AtLeastOnce)],
            properties: Default::default(),
        },
    );
    let out = h.recv(&mut sub);
    assert!(matches!(out[0], Packet::SubAck(_)), "SUBACK first");
    match &out[1] {
        Packet::Publish(p) => {
            assert!(p.retain);
            assert_eq!(&p.payload[..], b"kept");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mqtt_3_3_1_10_retain_handling_1_only_for_new_subscriptions() {
    let mut h = Harness::new();
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("r", b"kept", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&publisher, m);
    let mut sub = h.connect(V5, "s", true);
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendOnNewSubscribe,
        ..sub_opts(QoS::AtMostOnce)
    };
    h.subscribe_opts(&mut sub, "r", opts);
    assert_eq!(h.recv_publishes(&mut sub).len(), 1);
    h.subscribe_opts(&mut sub, "r", opts);
    assert_eq!(h.recv_publishes(&mut sub).len(), 0);
}

#[test]
fn mqtt_3_3_1_11_retain_handling_2_sends_none() {
    let mut h = Harness::new();
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("r", b"kept", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&publisher, m);
    let mut sub = h.connect(V5, "s", true);
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..sub_opts(QoS::AtMostOnce)
    };
    h.subscribe_opts(&mut sub, "r", opts);
    assert!(h.recv(&mut sub).is_empty());
}

/// [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7], [MQTT-3.3.1-8]
#[test]
fn mqtt_3_3_1_6_empty_retained_payload_clears() {
    let mut h = Harness::new();
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("r", b"v1", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&publisher, m.clone());
    m.payload = Bytes::from_static(b"v2");
    h.send(&publisher, m.clone());
    assert_eq!(h.broker.gauges().retained, 1);
    // RETAIN 0 leaves it alone.
    h.send(&publisher, publish("r", b"v3", QoS::AtMostOnce, 0));
    let mut sub = h.connect(V5, "s", true);
    h.subscribe(&mut sub, "r", QoS::AtMostOnce);
    assert_eq!(&h.recv_publishes(&mut sub)[0].payload[..], b"v2");
    m.payload = Bytes::new();
    h.send(&publisher, m);
    assert_eq!(h.broker.gauges().retained, 0);
}

#[test]
fn retained_message_expires() {
    let mut h = Harness::new();
    let publisher = h.connect(V5, "p", true);
    let mut m = publish("r", b"v", QoS::AtMostOnce, 0);
    m.retain = true;
    m.properties.message_expiry_interval = Some(5);
    h.send(&publisher, m);
    h.secs(2);
    let mut sub = h.connect(V5, "s", true);
    h.subscribe(&mut sub, "r", QoS::AtMostOnce);
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got[0].properties.message_expiry_interval, Some(3));
    h.secs(5);
    let mut sub2 = h.connect(V5, "s2", true);
    h.subscribe(&mut sub2, "r", QoS::AtMostOnce);
    assert!(h.recv(&mut sub2).is_empty());
}

#[test]
fn mqtt_3_8_4_3_same_filter_replaces_the_subscription() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "s", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    assert_eq!(h.broker.gauges().subscriptions, 1);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[test]
fn mqtt_3_10_4_5_unsuback_codes_even_when_nothing_was_deleted() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "s", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    match h.unsubscribe(&mut sub, "t") {
        Packet::UnsubAck(a) => {
            assert_eq!(a.packet_id, pid(77));
            assert_eq!(a.reason_codes, vec![ReasonCode::Success]);
        }
        other => panic!("{other:?}"),
    }
    match h.unsubscribe(&mut sub, "t") {
        Packet::UnsubAck(a) => assert_eq!(a.reason_codes, vec![ReasonCode::NoSubscriptionExisted]),
        other => panic!("{other:?}"),
    }
}

/// [MQTT-3.10.4-2], [MQTT-3.10.4-3]
#[test]
fn mqtt_3_10_4_3_inflight_deliveries_complete_after_unsubscribe() {
    let mut h = Harness::new();
    let mut sub = h.connect(V5, "s", true);
    h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut sub);
    h.unsubscribe(&mut sub, "t");
    h.send(&p, publish("t", b"y", QoS::ExactlyOnce, 2));
    let id = got[0].packet_id.unwrap();
    h.send(&sub, Packet::PubRec(PubAck::new(id)));
    assert_eq!(h.recv(&mut sub), vec![Packet::PubRel(PubAck::new(id))]);
}

// ---------------------------------------------------------------- wills

fn will_connect(client_id: &str, delay: Option<u32>, expiry: u32) -> ternmq_core::codec::Connect {
    let mut c = connect_packet(V5, client_id, true);
    c.properties.session_expiry_interval = Some(expiry);
    let mut w = will("will/t", "gone", QoS::AtLeastOnce, false);
    w.properties = WillProperties { will_delay_interval: delay, ..Default::default() };
    w.properties.user_properties = vec![up("why", "test")];
    c.will = Some(w);
    c
}

fn will_watcher(h: &mut Harness) -> Peer {
    let mut w = h.connect(V5, "watcher", true);
    h.subscribe(&mut w, "will/#", QoS::AtLeastOnce);
    w
}

#[test]
fn mqtt_3_1_2_8_will_published_on_abnormal_close() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (p, _) = h.connect_with(will_connect("dying", None, 0));
    h.drop_peer(&p);
    let got = h.recv_publishes(&mut watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"gone");
    assert_eq!(got[0].properties.user_properties[0].0.as_str(), "why");
    // [MQTT-3.1.2-14]
    assert!(!got[0].retain);
}

#[test]
fn mqtt_3_1_3_10_will_user_properties_keep_their_order() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let mut c = will_connect("ordered", None, 0);
    let order = vec![up("z", "1"), up("a", "2"), up("z", "3"), up("m", "4")];
    c.will.as_mut().unwrap().properties.user_properties = order.clone();
    let (p, _) = h.connect_with(c);
    h.drop_peer(&p);
    let got = h.recv_publishes(&mut watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.user_properties, order);
}

#[test]
fn mqtt_3_14_4_3_normal_disconnect_discards_the_will() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (mut p, _) = h.connect_with(will_connect("polite", None, 0));
    h.disconnect(&mut p, ReasonCode::Success);
    assert!(h.recv(&mut watcher).is_empty());
}

#[test]
fn disconnect_with_will_message_publishes_it() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (mut p, _) = h.connect_with(will_connect("w", None, 0));
    h.disconnect(&mut p, ReasonCode::DisconnectWithWillMessage);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
}

#[test]
fn will_published_on_keep_alive_timeout() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let mut c = will_connect("w", None, 0);
    c.keep_alive = 2;
    let (_p, _) = h.connect_with(c);
    h.secs(4);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
}

#[test]
fn mqtt_3_1_3_9_no_will_if_the_session_reconnects_within_the_delay() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (p, _) = h.connect_with(will_connect("w", Some(10), 100));
    h.drop_peer(&p);
    h.secs(5);
    let mut c = connect_packet(V5, "w", false);
    c.properties.session_expiry_interval = Some(100);
    let (_p, ack) = h.connect_with(c);
    assert!(ack.session_present);
    h.secs(20);
    assert!(h.recv(&mut watcher).is_empty());
}

#[test]
fn will_delay_passes_then_will_is_published() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (p, _) = h.connect_with(will_connect("w", Some(10), 100));
    h.drop_peer(&p);
    h.secs(9);
    assert!(h.recv(&mut watcher).is_empty());
    h.secs(2);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
}

#[test]
fn will_is_published_when_the_session_ends_before_the_delay() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (p, _) = h.connect_with(will_connect("w", Some(100), 5));
    h.drop_peer(&p);
    h.secs(4);
    assert!(h.recv(&mut watcher).is_empty());
    h.secs(2);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
}

#[test]
fn mqtt_3_1_2_15_will_retain_is_stored() {
    let mut h = Harness::new();
    let mut c = will_connect("w", None, 0);
    c.will.as_mut().unwrap().retain = true;
    let (p, _) = h.connect_with(c);
    h.drop_peer(&p);
    let mut late = h.connect(V5, "late", true);
    h.subscribe(&mut late, "will/t", QoS::AtMostOnce);
    let got = h.recv_publishes(&mut late);
    assert!(got[0].retain);
}

#[test]
fn will_on_takeover() {
    let mut h = Harness::new();
    let mut watcher = will_watcher(&mut h);
    let (_old, _) = h.connect_with(will_connect("w", None, 0));
    h.connect(V5, "w", true);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1);
}

// ---------------------------------------------------------------- shared subscriptions

#[test]
fn shared_subscription_round_robin() {
    let mut h = Harness::new();
    let mut a = h.connect(V5, "a", true);
    let mut b = h.connect(V5, "b", true);
    h.subscribe(&mut a, "$share/g/t", QoS::AtLeastOnce);
    h.subscribe(&mut b, "$share/g/t", QoS::AtMostOnce);
    let p = h.connect(V5, "p", true);
    for i in 1..=4 {
        h.send(&p, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    let ga = h.recv_publishes(&mut a);
    let gb = h.recv_publishes(&mut b);
    assert_eq!((ga.len(), gb.len()), (2, 2));
    // [MQTT-4.8.2-3]: each member gets its own granted QoS.
    assert!(ga.iter().all(|p| p.qos == QoS::AtLeastOnce));
    assert!(gb.iter().all(|p| p.qos == QoS::AtMostOnce));
}

/// Section 4.8.2: a member whose session ends before acknowledging its shared messages: they
/// go to another member.
#[test]
fn sec_4_8_2_unacknowledged_shared_messages_go_to_another_member_when_a_session_ends() {
    let mut h = Harness::new();
    let mut a = h.connect(V5, "a", true);
    let mut b = h.connect(V5, "b", true);
    h.subscribe(&mut a, "$share/g/t", QoS::AtLeastOnce);
    h.subscribe(&mut b, "$share/g/t", QoS::AtLeastOnce);
    let p = h.connect(V5, "p", true);
    for (i, body) in [b"1", b"2", b"3", b"4"].into_iter().enumerate() {
        h.send(&p, publish("t", body, QoS::AtLeastOnce, i as u16 + 1));
    }
    let to_a = h.recv_publishes(&mut a);
    let to_b = h.recv_publishes(&mut b);
    assert_eq!((to_a.len(), to_b.len()), (2, 2));
    // `a` acknowledges one of its two and vanishes (clean session: its session ends).
    h.puback(&a, to_a[0].packet_id.unwrap());
    h.drop_peer(&a);
    let again = h.recv_publishes(&mut b);
    assert_eq!(again.len(), 1, "only the unacknowledged one moves");
    assert_eq!(again[0].payload, to_a[1].payload);
    assert_eq!(h.broker.stats().shared_redelivered, 1);
    // With nobody left in the group the message is lost, and counted.
    let (mut c, _) = h.connect_v5_session("c", true, 0);
    h.subscribe(&mut c, "$share/h/u", QoS::AtLeastOnce);
    h.send(&p, publish("u", b"x", QoS::AtLeastOnce, 9));
    assert_eq!(h.recv_publishes(&mut c).len(), 1);
    h.drop_peer(&c);
    assert_eq!(h.broker.stats().dropped_no_member, 1);
}

#[test]
fn shared_group_with_offline_members_queues_for_one() {
    let mut h = Harness::new();
    let (mut a, _) = h.connect_v5_session("a", false, 100);
    h.subscribe(&mut a, "$share/g/t", QoS::AtLeastOnce);
    h.drop_peer(&a);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"kept", QoS::AtLeastOnce, 1));
    let (mut a, _) = h.connect_v5_session("a", false, 100);
    assert_eq!(h.recv_publishes(&mut a).len(), 1);
}

#[test]
fn shared_subscription_prefers_connected_members() {
    let mut h = Harness::new();
    let (mut a, _) = h.connect_v5_session("a", false, 100);
    h.subscribe(&mut a, "$share/g/t", QoS::AtLeastOnce);
    let mut b = h.connect(V5, "b", true);
    h.subscribe(&mut b, "$share/g/t", QoS::AtLeastOnce);
    h.drop_peer(&a);
    let p = h.connect(V5, "p", true);
    for i in 1..=3 {
        h.send(&p, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(h.recv_publishes(&mut b).len(), 3);
}

// ---------------------------------------------------------------- authentication

mod auth {
    use super::*;
    use std::sync::Arc;
    use ternmq_core::broker::{
        Action, AuthDecision, AuthRequest, AuthStage, Authenticator, Authorizer, ClientInfo,
    };

    struct Passwords;
    impl Authenticator for Passwords {
        fn authenticate(&self, r: &AuthRequest) -> AuthDecision {
            match (r.username.as_ref().map(|u| u.as_str()), r.password.as_deref()) {
                (Some("alice"), Some(b"secret")) => AuthDecision::Allow,
                (Some("later"), _) => AuthDecision::Defer,
                _ => AuthDecision::Deny(ReasonCode::BadUserNameOrPassword),
            }
        }
    }

    fn with_user(client_id: &str, user: &str, pass: &'static [u8]) -> ternmq_core::codec::Connect {
        let mut c = connect_packet(V5, client_id, true);
        c.username = Some(MqttStr::new(user).unwrap());
        c.password = Some(Bytes::from_static(pass));
        c
    }

    /// [MQTT-3.1.4-2]
    #[test]
    fn mqtt_3_1_4_2_bad_password_is_refused_and_closed() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Passwords)));
        let (mut p, ack) = h.connect_with(with_user("a", "alice", b"wrong"));
        assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
        assert!(h.is_closed(&mut p));
        let (_, ack) = h.connect_with(with_user("a", "alice", b"secret"));
        assert_eq!(ack.reason_code, ReasonCode::Success);
    }

    #[test]
    fn deferred_authentication_holds_input_in_order() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Passwords)));
        let mut p = h.accept(V5);
        h.send(&p, with_user("a", "later", b""));
        h.send(&p, Packet::PingReq);
        assert!(h.recv(&mut p).is_empty(), "nothing before the decision");
        let ticket = h
            .commands
            .iter()
            .find_map(|e| match e {
                Command::Authenticate { ticket, request, .. } => {
                    assert_eq!(request.stage, AuthStage::Connect);
                    Some(*ticket)
                }
                _ => None,
            })
            .unwrap();
        let now = h.now;
        h.broker.handle_auth(now, ticket, AuthDecision::Allow);
        let out = h.recv(&mut p);
        assert!(
            matches!(&out[..], [Packet::ConnAck(a), Packet::PingResp] if a.reason_code == ReasonCode::Success)
        );
    }

    #[test]
    fn deferred_denial() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Passwords)));
        let mut p = h.accept(V5);
        h.send(&p, with_user("a", "later", b""));
        let ticket = h
            .commands
            .iter()
            .find_map(|e| match e {
                Command::Authenticate { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .unwrap();
        let now = h.now;
        h.broker.handle_auth(now, ticket, AuthDecision::Deny(ReasonCode::NotAuthorized));
        match h.recv(&mut p).first() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
            other => panic!("{other:?}"),
        }
        assert!(p.closed);
    }

    struct Challenge;
    impl Authenticator for Challenge {
        fn supports_method(&self, m: &str) -> bool {
            m == "CHALLENGE"
        }
        fn authenticate(&self, r: &AuthRequest) -> AuthDecision {
            match (r.stage, r.data.as_deref()) {
                (AuthStage::Connect, _) => {
                    AuthDecision::Continue(Some(Bytes::from_static(b"nonce")))
                }
                (AuthStage::Continue | AuthStage::Reauthenticate, Some(b"nonce-signed")) => {
                    AuthDecision::AllowWithData(Bytes::from_static(b"welcome"))
                }
                (AuthStage::Reauthenticate, Some(b"again")) => {
                    AuthDecision::Continue(Some(Bytes::from_static(b"nonce")))
                }
                _ => AuthDecision::Deny(ReasonCode::NotAuthorized),
            }
        }
    }

    fn auth(code: ReasonCode, data: &'static [u8]) -> Auth {
        let mut a = Auth { reason_code: code, properties: Default::default() };
        a.properties.authentication_method = Some(MqttStr::new("CHALLENGE").unwrap());
        a.properties.authentication_data = Some(Bytes::from_static(data));
        a
    }

    /// The AUTH exchange: the server's challenge carries 0x18 [MQTT-4.12.0-2] and the method of
    /// the CONNECT, as does the CONNACK [MQTT-4.12.0-5]; a failed re-authentication closes the
    /// connection [MQTT-4.12.1-2].
    #[test]
    fn enhanced_authentication_and_reauthentication() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Challenge)));
        let mut p = h.accept(V5);
        let mut c = connect_packet(V5, "a", true);
        c.properties.authentication_method = Some(MqttStr::new("CHALLENGE").unwrap());
        h.send(&p, c);
        match h.recv_one(&mut p) {
            Packet::Auth(a) => {
                assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
                assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"nonce"[..]));
            }
            other => panic!("{other:?}"),
        }
        h.send(&p, auth(ReasonCode::ContinueAuthentication, b"nonce-signed"));
        match h.recv_one(&mut p) {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason_code, ReasonCode::Success);
                assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"welcome"[..]));
            }
            other => panic!("{other:?}"),
        }
        h.send(&p, auth(ReasonCode::ReAuthenticate, b"again"));
        assert!(
            matches!(h.recv_one(&mut p), Packet::Auth(a) if a.reason_code == ReasonCode::ContinueAuthentication)
        );
        h.send(&p, auth(ReasonCode::ContinueAuthentication, b"nonce-signed"));
        assert!(
            matches!(h.recv_one(&mut p), Packet::Auth(a) if a.reason_code == ReasonCode::Success)
        );
        h.send(&p, auth(ReasonCode::ReAuthenticate, b"bad"));
        assert_eq!(reason_of_disconnect(&h.recv(&mut p)), Some(ReasonCode::NotAuthorized));
        assert!(h.is_closed(&mut p));
    }

    /// A server that rejects the authentication sends CONNACK 0x80 or above and closes
    /// [MQTT-4.12.0-4] [MQTT-4.13.2-1].
    #[test]
    fn mqtt_4_12_0_4_a_failed_authentication_gets_connack_and_close() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Challenge)));
        let mut p = h.accept(V5);
        let mut c = connect_packet(V5, "a", true);
        c.properties.authentication_method = Some(MqttStr::new("CHALLENGE").unwrap());
        h.send(&p, c);
        assert!(matches!(h.recv_one(&mut p), Packet::Auth(_)));
        h.send(&p, auth(ReasonCode::ContinueAuthentication, b"wrong"));
        match h.recv_one(&mut p) {
            Packet::ConnAck(a) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
            other => panic!("{other:?}"),
        }
        assert!(h.is_closed(&mut p));
    }

    /// An authentication method the server does not support gets CONNACK 0x8C and a close
    /// [MQTT-4.12.0-1] [MQTT-4.13.2-1].
    #[test]
    fn unknown_authentication_method_gets_0x8c() {
        let mut h = Harness::config(|c| c.authenticator = Some(Arc::new(Challenge)));
        let mut c = connect_packet(V5, "a", true);
        c.properties.authentication_method = Some(MqttStr::new("OTHER").unwrap());
        let (mut p, ack) = h.connect_with(c);
        assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
        assert!(h.is_closed(&mut p));
    }

    struct ReadOnly;
    impl Authorizer for ReadOnly {
        fn authorize(&self, _: &ClientInfo<'_>, action: Action, topic: &str) -> bool {
            action == Action::Subscribe && topic != "secret" || topic == "open"
        }
    }

    /// Allows only the user "device-7" to publish under "devices/device-7/".
    struct OwnTopic;
    impl Authorizer for OwnTopic {
        fn authorize(&self, client: &ClientInfo<'_>, action: Action, topic: &str) -> bool {
            action != Action::Publish
                || client.username.is_some_and(|u| topic.starts_with(&format!("devices/{u}/")))
        }
    }

    #[test]
    fn a_transport_identity_is_the_user_name_and_needs_no_password() {
        let mut h = Harness::config(|c| {
            c.authenticator = Some(Arc::new(Passwords));
            c.authorizer = Some(Arc::new(OwnTopic));
        });
        let peer = ternmq_core::broker::PeerInfo {
            identity: Some(MqttStr::new("device-7").unwrap()),
            ..Default::default()
        };
        // The CONNECT names someone else, with a wrong password: the certificate decides.
        let mut p = h.accept_from(V5, peer);
        h.send(&p, with_user("d7", "mallory", b"wrong"));
        assert!(
            matches!(&h.recv(&mut p)[..], [Packet::ConnAck(a)] if a.reason_code == ReasonCode::Success)
        );
        let mut sub = h.accept(V5);
        h.send(&sub, with_user("watcher", "alice", b"secret"));
        let _ = h.recv(&mut sub);
        h.subscribe(&mut sub, "devices/#", QoS::AtMostOnce);
        h.send(&p, publish("devices/device-7/t", b"mine", QoS::AtLeastOnce, 1));
        h.send(&p, publish("devices/mallory/t", b"not mine", QoS::AtLeastOnce, 2));
        let acks: Vec<_> = h
            .recv(&mut p)
            .into_iter()
            .filter_map(|p| if let Packet::PubAck(a) = p { Some(a.reason_code) } else { None })
            .collect();
        assert_eq!(acks, [ReasonCode::Success, ReasonCode::NotAuthorized]);
        let got = h.recv_publishes(&mut sub);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic.as_str(), "devices/device-7/t");
        // Without an identity, the same CONNECT is refused by the authenticator.
        let mut q = h.accept(V5);
        h.send(&q, with_user("d8", "mallory", b"wrong"));
        assert!(
            matches!(&h.recv(&mut q)[..], [Packet::ConnAck(a)] if a.reason_code == ReasonCode::BadUserNameOrPassword)
        );
    }

    #[test]
    fn refused_publish_gets_0x87_and_is_not_delivered() {
        let mut h = Harness::config(|c| c.authorizer = Some(Arc::new(ReadOnly)));
        let mut sub = h.connect(V5, "s", true);
        assert_eq!(
            h.subscribe(&mut sub, "secret", QoS::AtMostOnce),
            vec![ReasonCode::NotAuthorized]
        );
        h.subscribe(&mut sub, "#", QoS::AtMostOnce);
        let mut p = h.connect(V5, "p", true);
        h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
        match h.recv_one(&mut p) {
            Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
            other => panic!("{other:?}"),
        }
        h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 2));
        match h.recv_one(&mut p) {
            Packet::PubRec(a) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
            other => panic!("{other:?}"),
        }
        h.send(&p, publish("open", b"x", QoS::AtMostOnce, 0));
        let got = h.recv_publishes(&mut sub);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic.as_str(), "open");
        assert_eq!(h.broker.stats().publish_denied, 2);
    }
}

#[test]
fn mqtt_3_1_2_29_no_reason_strings_without_problem_information() {
    // The broker sends no Reason Strings today; this checks the stripping path does not break
    // acknowledgements of a client that asked for none.
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "a", true);
    c.properties.request_problem_information = Some(false);
    let (mut p, _) = h.connect_with(c);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    match h.recv_one(&mut p) {
        Packet::PubAck(a) => {
            assert!(a.properties.reason_string.is_none());
            assert!(a.properties.user_properties.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sys_topics_are_published_on_the_interval() {
    let mut h = Harness::config(|c| c.sys_interval = Some(Duration::from_secs(10)));
    let mut s = h.connect(V5, "s", true);
    h.subscribe(&mut s, "$SYS/broker/clients/connected", QoS::AtMostOnce);
    h.secs(10);
    let got = h.recv_publishes(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"1");
    // Clients do not write $SYS.
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("$SYS/broker/clients/connected", b"999", QoS::AtLeastOnce, 1));
    assert!(
        matches!(h.recv_one(&mut p), Packet::PubAck(a) if a.reason_code == ReasonCode::NotAuthorized)
    );
    // And "#" does not match $ topics ([MQTT-4.7.2-1]).
    let mut all = h.connect(V5, "all", true);
    h.subscribe(&mut all, "#", QoS::AtMostOnce);
    h.secs(10);
    assert!(h.recv(&mut all).is_empty());
}
