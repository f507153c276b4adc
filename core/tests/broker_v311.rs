//! The broker against MQTT 3.1.1 (and 3.1) clients, named after the statements of the MQTT
//! 3.1.1 specification they check; and mixed-version routing.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::Bytes;
use ternmq_core::codec::{
    Disconnect, MqttStr, Packet, ProtocolVersion, PubAck, QoS, ReasonCode, Subscribe, Subscription,
    UnsubAck,
};

/// A protocol violation closes the connection it came on [MQTT-4.8.0-1].
#[test]
fn mqtt_3_1_0_2_second_connect_closes() {
    let mut h = Harness::new();
    let mut p = h.connect(V311, "a", true);
    h.send(&p, connect_packet(V311, "a", true));
    let out = h.recv(&mut p);
    assert!(out.is_empty(), "3.1.1 has no DISCONNECT from the server: {out:?}");
    assert!(p.closed);
}

/// [MQTT-3.1.4-4], [MQTT-3.2.0-1], [MQTT-3.2.2-1]
#[test]
fn mqtt_3_2_2_1_clean_session_connack_is_0_with_no_session_present() {
    let mut h = Harness::new();
    let mut p = h.accept(V311);
    h.send(&p, connect_packet(V311, "a", true));
    h.broker.poll_writable().unwrap();
    let bytes = h.broker.poll_transmit(p.id, 100).unwrap();
    assert_eq!(&bytes[..], b"\x20\x02\x00\x00");
    assert!(!h.is_closed(&mut p));
}

/// [MQTT-3.2.2-2], [MQTT-3.2.2-3], [MQTT-3.1.2-5]
#[test]
fn mqtt_3_2_2_2_persistent_session_is_resumed_with_its_messages() {
    let mut h = Harness::new();
    let (mut sub, ack) = h.connect_with(connect_packet(V311, "s", false));
    assert!(!ack.session_present, "[MQTT-3.2.2-3]");
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    h.drop_peer(&sub);
    let publisher = h.connect(V311, "p", true);
    h.send(&publisher, publish("t", b"while away", QoS::AtLeastOnce, 1));
    let (mut sub, ack) = h.connect_with(connect_packet(V311, "s", false));
    assert!(ack.session_present);
    let got = h.recv_publishes(&mut sub);
    assert_eq!(&got[0].payload[..], b"while away");
}

#[test]
fn mqtt_3_1_2_6_clean_session_discards_state() {
    let mut h = Harness::new();
    let (mut sub, _) = h.connect_with(connect_packet(V311, "s", false));
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    h.drop_peer(&sub);
    let (_, ack) = h.connect_with(connect_packet(V311, "s", true));
    assert!(!ack.session_present);
    assert_eq!(h.broker.gauges().subscriptions, 0);
}

#[test]
fn clean_session_ends_when_the_connection_does() {
    let mut h = Harness::new();
    let sub = h.connect(V311, "s", true);
    h.drop_peer(&sub);
    assert!(!h.broker.has_session("s"));
}

#[test]
fn mqtt_3_1_3_6_empty_client_id_with_clean_session_is_assigned() {
    let mut h = Harness::new();
    let p = h.connect(V311, "", true);
    let id = h.broker.client_id(p.id).unwrap();
    assert!(!id.is_empty());
}

/// [MQTT-3.1.3-8], [MQTT-3.2.2-5]
#[test]
fn mqtt_3_1_3_8_empty_client_id_without_clean_session_gets_0x02() {
    let mut h = Harness::new();
    let mut p = h.accept(V311);
    h.send(&p, connect_packet(V311, "", false));
    h.broker.poll_writable().unwrap();
    let bytes = h.broker.poll_transmit(p.id, 100).unwrap();
    assert_eq!(&bytes[..], b"\x20\x02\x00\x02");
    assert!(h.is_closed(&mut p));
}

#[test]
fn mqtt_3_1_3_9_rejected_client_id_gets_0x02() {
    let mut h = Harness::config(|c| c.max_client_id_len = 4);
    let (mut p, ack) = h.connect_with(connect_packet(V311, "toolong", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(h.is_closed(&mut p));
}

#[test]
fn mqtt_3_1_3_5_accepts_23_alphanumeric_characters() {
    let mut h = Harness::new();
    h.connect(V311, "abcdefghijABCDEFGHIJ012", true);
}

#[test]
fn mqtt_3_1_is_accepted_with_its_23_character_limit() {
    let mut h = Harness::new();
    h.connect(ProtocolVersion::V3_1, "abcdefghijABCDEFGHIJ012", true);
    let (_, ack) =
        h.connect_with(connect_packet(ProtocolVersion::V3_1, "abcdefghijABCDEFGHIJ0123", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

#[test]
fn mqtt_3_1_4_2_existing_client_is_disconnected() {
    let mut h = Harness::new();
    let mut old = h.connect(V311, "dup", true);
    h.connect(V311, "dup", true);
    assert!(h.recv(&mut old).is_empty());
    assert!(old.closed);
}

/// [MQTT-3.1.2-6]: a CleanSession=1 session lasts as long as its network connection, so a
/// CleanSession=0 connection that takes its client id over starts a new session, with
/// Session Present 0 and none of the old subscriptions.
#[test]
fn mqtt_3_1_2_6_takeover_does_not_revive_a_clean_session() {
    let mut h = Harness::new();
    let mut old = h.connect(V311, "dup", true);
    h.subscribe(&mut old, "t", QoS::AtLeastOnce);
    let (mut new, ack) = h.connect_with(connect_packet(V311, "dup", false));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present, "the old session ended with its connection");
    assert!(h.recv(&mut old).is_empty(), "3.1.1 has no DISCONNECT from the server");
    assert!(old.closed);
    h.drop_peer(&old);
    assert_eq!(h.broker.gauges().subscriptions, 0);
    let p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert!(h.recv_publishes(&mut new).is_empty(), "no subscription was inherited");
}

/// The same with a will on the old connection: the will goes out (its session ends), and the
/// new connection is still told Session Present 0.
#[test]
fn mqtt_3_1_2_6_takeover_of_a_clean_session_with_a_will() {
    let mut h = Harness::new();
    let mut watcher = h.connect(V311, "watcher", true);
    h.subscribe(&mut watcher, "will/#", QoS::AtLeastOnce);
    let (mut old, _) = h.connect_with(with_will("dup", false));
    h.subscribe(&mut old, "t", QoS::AtLeastOnce);
    let (_new, ack) = h.connect_with(connect_packet(V311, "dup", false));
    assert!(!ack.session_present);
    assert_eq!(h.recv_publishes(&mut watcher).len(), 1, "the will of the ended session");
    assert_eq!(h.broker.gauges().subscriptions, 1, "only the watcher's");
}

/// A CleanSession=0 session is still taken over whole: Session Present 1, its subscriptions.
#[test]
fn mqtt_3_1_4_2_takeover_resumes_a_persistent_session() {
    let mut h = Harness::new();
    let mut old = h.connect(V311, "dup", false);
    h.subscribe(&mut old, "t", QoS::AtLeastOnce);
    let (mut new, ack) = h.connect_with(connect_packet(V311, "dup", false));
    assert!(ack.session_present);
    h.drop_peer(&old);
    let p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert_eq!(h.recv_publishes(&mut new).len(), 1);
}

/// [MQTT-3.1.4-5]
#[test]
fn mqtt_3_1_4_5_nothing_processed_after_refusal() {
    let mut h = Harness::config(|c| c.max_client_id_len = 1);
    let mut p = h.accept(V311);
    let mut bytes = bytes::BytesMut::new();
    let enc = ternmq_core::codec::Encoder::new(V311);
    enc.encode(&connect_packet(V311, "ab", true).into(), &mut bytes).unwrap();
    enc.encode(&Packet::PingReq, &mut bytes).unwrap();
    h.send_raw(&p, &bytes);
    let out = h.recv(&mut p);
    assert_eq!(out.len(), 1, "{out:?}");
}

/// [MQTT-3.1.2-24]
#[test]
fn mqtt_3_1_2_24_keep_alive_enforced_at_one_and_a_half() {
    let mut h = Harness::new();
    let mut c = connect_packet(V311, "a", true);
    c.keep_alive = 4;
    let (mut p, _) = h.connect_with(c);
    h.secs(5);
    assert!(!h.is_closed(&mut p));
    h.secs(2);
    assert!(h.is_closed(&mut p));
}

// ---------------------------------------------------------------- wills

fn with_will(client_id: &str, retain: bool) -> ternmq_core::codec::Connect {
    let mut c = connect_packet(V311, client_id, true);
    c.will = Some(will("will/t", "bye", QoS::AtLeastOnce, retain));
    c
}

/// [MQTT-3.1.2-8], [MQTT-3.1.2-16]
#[test]
fn mqtt_3_1_2_8_will_published_when_the_connection_drops() {
    let mut h = Harness::new();
    let mut w = h.connect(V311, "watch", true);
    h.subscribe(&mut w, "will/#", QoS::AtLeastOnce);
    let (p, _) = h.connect_with(with_will("d", false));
    h.drop_peer(&p);
    let got = h.recv_publishes(&mut w);
    assert_eq!(&got[0].payload[..], b"bye");
    assert!(!got[0].retain);
}

/// [MQTT-3.1.2-10], [MQTT-3.14.4-3]
#[test]
fn mqtt_3_14_4_3_disconnect_discards_the_will() {
    let mut h = Harness::new();
    let mut w = h.connect(V311, "watch", true);
    h.subscribe(&mut w, "will/#", QoS::AtLeastOnce);
    let (mut p, _) = h.connect_with(with_will("d", false));
    h.send(&p, Disconnect::new(ReasonCode::Success));
    assert!(h.is_closed(&mut p));
    h.drop_peer(&p);
    assert!(h.recv(&mut w).is_empty());
}

#[test]
fn mqtt_3_1_2_12_no_will_flag_no_will() {
    let mut h = Harness::new();
    let mut w = h.connect(V311, "watch", true);
    h.subscribe(&mut w, "#", QoS::AtLeastOnce);
    let p = h.connect(V311, "d", true);
    h.drop_peer(&p);
    assert!(h.recv(&mut w).is_empty());
}

#[test]
fn mqtt_3_1_2_17_will_retain_is_published_retained() {
    let mut h = Harness::new();
    let (p, _) = h.connect_with(with_will("d", true));
    h.drop_peer(&p);
    let mut late = h.connect(V311, "late", true);
    h.subscribe(&mut late, "will/t", QoS::AtMostOnce);
    assert!(h.recv_publishes(&mut late)[0].retain);
}

#[test]
fn will_qos_above_maximum_is_downgraded_for_3_1_1() {
    let mut h = Harness::config(|c| c.max_qos = QoS::AtMostOnce);
    let mut w = h.connect(V311, "watch", true);
    h.subscribe(&mut w, "will/#", QoS::ExactlyOnce);
    let (p, ack) = h.connect_with(with_will("d", false));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    h.drop_peer(&p);
    assert_eq!(h.recv_publishes(&mut w)[0].qos, QoS::AtMostOnce);
}

// ---------------------------------------------------------------- retained

/// [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-8]
#[test]
fn mqtt_3_3_1_6_new_subscription_gets_the_retained_message_with_retain_1() {
    let mut h = Harness::new();
    let p = h.connect(V311, "p", true);
    let mut m = publish("a/b", b"last", QoS::ExactlyOnce, 1);
    m.retain = true;
    h.send(&p, m);
    let mut s = h.connect(V311, "s", true);
    assert_eq!(h.subscribe(&mut s, "a/#", QoS::AtLeastOnce), vec![ReasonCode::GrantedQoS1]);
    let got = h.recv_publishes(&mut s);
    assert!(got[0].retain);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

#[test]
fn mqtt_3_3_1_9_established_subscription_gets_retain_0() {
    let mut h = Harness::new();
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "a", QoS::AtMostOnce);
    let p = h.connect(V311, "p", true);
    let mut m = publish("a", b"x", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&p, m);
    assert!(!h.recv_publishes(&mut s)[0].retain);
}

/// [MQTT-3.3.1-10], [MQTT-3.3.1-11]
#[test]
fn mqtt_3_3_1_10_zero_byte_retained_is_delivered_and_clears() {
    let mut h = Harness::new();
    let p = h.connect(V311, "p", true);
    let mut m = publish("a", b"x", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&p, m.clone());
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "a", QoS::AtMostOnce);
    h.recv(&mut s);
    m.payload = Bytes::new();
    h.send(&p, m);
    let got = h.recv_publishes(&mut s);
    assert_eq!(got.len(), 1, "delivered to existing subscribers");
    assert!(got[0].payload.is_empty());
    let mut s2 = h.connect(V311, "s2", true);
    h.subscribe(&mut s2, "a", QoS::AtMostOnce);
    assert!(h.recv(&mut s2).is_empty());
}

/// [MQTT-3.3.1-7]
#[test]
fn mqtt_3_3_1_7_qos0_retained_replaces() {
    let mut h = Harness::new();
    let p = h.connect(V311, "p", true);
    for payload in [&b"one"[..], b"two"] {
        let mut m = publish("a", b"", QoS::AtMostOnce, 0);
        m.payload = Bytes::copy_from_slice(payload);
        m.retain = true;
        h.send(&p, m);
    }
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "a", QoS::AtMostOnce);
    assert_eq!(&h.recv_publishes(&mut s)[0].payload[..], b"two");
}

#[test]
fn mqtt_3_3_1_12_retain_0_does_not_touch_the_retained_message() {
    let mut h = Harness::new();
    let p = h.connect(V311, "p", true);
    let mut m = publish("a", b"kept", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&p, m);
    h.send(&p, publish("a", b"", QoS::AtMostOnce, 0));
    h.send(&p, publish("a", b"other", QoS::AtMostOnce, 0));
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "a", QoS::AtMostOnce);
    assert_eq!(&h.recv_publishes(&mut s)[0].payload[..], b"kept");
}

#[test]
fn mqtt_3_1_2_7_retained_messages_outlive_sessions() {
    let mut h = Harness::new();
    let p = h.connect(V311, "p", true);
    let mut m = publish("a", b"kept", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(&p, m);
    h.drop_peer(&p);
    assert!(!h.broker.has_session("p"));
    assert_eq!(h.broker.gauges().retained, 1);
}

// ---------------------------------------------------------------- subscribe and publish

/// [MQTT-3.8.4-4], [MQTT-3.8.4-5], [MQTT-3.9.3-1]
#[test]
fn mqtt_3_8_4_5_one_return_code_per_filter() {
    let mut h = Harness::config(|c| c.max_qos = QoS::AtLeastOnce);
    let mut p = h.connect(V311, "p", true);
    let s = Subscribe {
        packet_id: pid(9),
        subscriptions: vec![
            Subscription::new(filter("a"), QoS::ExactlyOnce),
            Subscription::new(filter("b"), QoS::AtMostOnce),
        ],
        properties: Default::default(),
    };
    h.send(&p, s);
    h.broker.poll_writable().unwrap();
    let bytes = h.broker.poll_transmit(p.id, 100).unwrap();
    assert_eq!(&bytes[..], b"\x90\x04\x00\x09\x01\x00");
    h.recv(&mut p);
}

#[test]
fn mqtt_3_8_3_2_wildcards_refused_when_unsupported() {
    let mut h = Harness::config(|c| c.wildcard_subscription_available = false);
    let mut p = h.connect(V311, "p", true);
    let s = Subscribe {
        packet_id: pid(9),
        subscriptions: vec![Subscription::new(filter("a/+"), QoS::AtMostOnce)],
        properties: Default::default(),
    };
    h.send(&p, s);
    h.broker.poll_writable().unwrap();
    let bytes = h.broker.poll_transmit(p.id, 100).unwrap();
    assert_eq!(&bytes[..], b"\x90\x03\x00\x09\x80");
    h.recv(&mut p);
}

/// [MQTT-3.8.4-6]
#[test]
fn mqtt_3_8_4_6_delivered_qos_is_the_minimum() {
    let mut h = Harness::new();
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "t", QoS::AtMostOnce);
    let p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 1));
    assert_eq!(h.recv_publishes(&mut s)[0].qos, QoS::AtMostOnce);
}

/// [MQTT-3.3.5-1]
#[test]
fn mqtt_3_3_5_1_overlapping_subscriptions_at_the_maximum_qos() {
    let mut h = Harness::new();
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "t/#", QoS::AtLeastOnce);
    h.subscribe(&mut s, "t/+", QoS::AtMostOnce);
    let p = h.connect(V311, "p", true);
    h.send(&p, publish("t/x", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
}

/// [MQTT-3.10.4-4], [MQTT-3.10.4-5]
#[test]
fn mqtt_3_10_4_5_unsuback_even_if_nothing_was_deleted() {
    let mut h = Harness::new();
    let mut s = h.connect(V311, "s", true);
    match h.unsubscribe(&mut s, "never") {
        Packet::UnsubAck(UnsubAck { packet_id, .. }) => assert_eq!(packet_id, pid(77)),
        other => panic!("{other:?}"),
    }
}

/// [MQTT-3.3.5-2]
#[test]
fn mqtt_3_3_5_2_unauthorised_publish_is_acknowledged_and_dropped() {
    use std::sync::Arc;
    use ternmq_core::broker::{Action, Authorizer, ClientInfo};
    struct NoWrites;
    impl Authorizer for NoWrites {
        fn authorize(&self, _: &ClientInfo<'_>, a: Action, _: &str) -> bool {
            a == Action::Subscribe
        }
    }
    let mut h = Harness::config(|c| c.authorizer = Some(Arc::new(NoWrites)));
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "#", QoS::AtLeastOnce);
    let mut p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    assert_eq!(h.recv_one(&mut p), Packet::PubAck(PubAck::new(pid(1))));
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 2));
    assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(2))));
    h.send(&p, Packet::PubRel(PubAck::new(pid(2))));
    assert_eq!(h.recv_one(&mut p), Packet::PubComp(PubAck::new(pid(2))));
    assert!(h.recv(&mut s).is_empty());
}

/// A re-delivery carries DUP 1 and the original packet identifier [MQTT-3.3.1-1].
#[test]
fn mqtt_3_3_1_3_resent_after_reconnect_with_dup() {
    let mut h = Harness::new();
    let (mut s, _) = h.connect_with(connect_packet(V311, "s", false));
    h.subscribe(&mut s, "t", QoS::AtLeastOnce);
    let p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    let first = h.recv_publishes(&mut s);
    assert!(!first[0].dup);
    h.drop_peer(&s);
    let (mut s, _) = h.connect_with(connect_packet(V311, "s", false));
    let again = h.recv_publishes(&mut s);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
}

#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let mut h = Harness::new();
    let mut p = h.connect(V311, "p", true);
    h.send(&p, Packet::PingReq);
    assert_eq!(h.recv(&mut p), vec![Packet::PingResp]);
}

// ---------------------------------------------------------------- mixed versions

#[test]
fn v5_publisher_to_v311_subscriber_drops_properties() {
    let mut h = Harness::new();
    let mut s = h.connect(V311, "old", true);
    h.subscribe(&mut s, "t", QoS::AtLeastOnce);
    let p = h.connect(V5, "new", true);
    let mut m = publish("t", b"x", QoS::AtLeastOnce, 1);
    m.properties.user_properties = vec![up("k", "v")];
    m.properties.content_type = Some(MqttStr::new("c").unwrap());
    h.send(&p, m);
    let got = h.recv_publishes(&mut s);
    assert_eq!(&got[0].payload[..], b"x");
    assert!(got[0].properties.user_properties.is_empty());
}

#[test]
fn v311_publisher_to_v5_subscriber() {
    let mut h = Harness::new();
    let mut s = h.connect(V5, "new", true);
    h.subscribe(&mut s, "t", QoS::ExactlyOnce);
    let p = h.connect(V311, "old", true);
    h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut s);
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    assert_eq!(&got[0].payload[..], b"x");
}

// Found by the deterministic simulation: a 3.1.1 client, which is told no Receive Maximum,
// was disconnected for having more unreleased QoS 2 messages than the broker's.
#[test]
fn a_3_1_1_client_is_not_held_to_a_receive_maximum_it_was_never_told() {
    let mut h = Harness::config(|c| c.receive_maximum = 2);
    let mut p = h.connect(V311, "pub", true);
    for id in 1..=5 {
        h.send(&p, publish("t", b"x", QoS::ExactlyOnce, id));
    }
    let out = h.recv(&mut p);
    let recs = out.iter().filter(|x| matches!(x, Packet::PubRec(_))).count();
    assert_eq!(recs, 5, "{out:?}");
    assert!(!h.is_closed(&mut p));
}

// ---------------------------------------------------------------- closing without a word

/// A CONNECT that no CONNACK return code fits (it is malformed, or not MQTT at all) is
/// answered by closing the connection, with nothing sent [MQTT-3.2.2-6] [MQTT-3.1.4-1].
#[test]
fn mqtt_3_2_2_6_no_fitting_return_code_closes_without_connack() {
    let vectors: [&[u8]; 3] = [
        // CONNECT, level 4, reserved connect flag bit 0 set.
        b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01a",
        // CONNECT with the protocol name "MQTX".
        b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01a",
        // CONNECT, level 4, a client identifier that runs past the packet.
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x09a",
    ];
    for v in vectors {
        let mut h = Harness::new();
        let mut p = h.accept(V311);
        h.send_raw(&p, v);
        assert!(h.recv(&mut p).is_empty(), "no CONNACK for {v:02x?}");
        assert!(p.closed, "{v:02x?}");
    }
}

/// A packet larger than the broker can buffer is a transient error: the connection it came on
/// is closed (3.1.1 has no DISCONNECT from the server) and the packet is not processed
/// [MQTT-4.8.0-2].
#[test]
fn mqtt_4_8_0_2_a_packet_the_broker_cannot_buffer_closes_the_connection() {
    let mut h = Harness::config(|c| c.max_packet_size = 64);
    let mut s = h.connect(V311, "s", true);
    h.subscribe(&mut s, "t", QoS::AtMostOnce);
    let mut p = h.connect(V311, "p", true);
    h.send(&p, publish("t", b"fits", QoS::AtMostOnce, 0));
    assert_eq!(h.recv_publishes(&mut s).len(), 1);
    h.send(&p, publish("t", &[b'x'; 100], QoS::AtLeastOnce, 1));
    assert!(h.recv(&mut p).is_empty(), "no PUBACK, no DISCONNECT");
    assert!(p.closed);
    assert!(h.recv(&mut s).is_empty(), "the packet was not processed");
    assert!(!h.is_closed(&mut s), "only the connection it came on closes");
}
