//! Server-side statements about SUBSCRIBE, UNSUBSCRIBE, PINGREQ, packet identifiers, wills and
//! shared subscriptions that hold in both protocol versions: each test runs against a 3.1.1 and
//! an MQTT 5 client, and cites the statement numbers of both versions.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use ternmq_core::codec::{
    Packet, ProtocolVersion, PubAck, QoS, ReasonCode, RetainHandling, Subscribe, Subscription,
    SubscriptionOptions, Unsubscribe,
};

const BOTH: [ProtocolVersion; 2] = [V311, V5];

fn subscribe_many(h: &mut Harness, p: &mut Peer, id: u16, filters: &[(&str, QoS)]) -> Packet {
    let sub = Subscribe {
        packet_id: pid(id),
        subscriptions: filters.iter().map(|(f, q)| Subscription::new(filter(f), *q)).collect(),
        properties: Default::default(),
    };
    h.send(p, sub);
    h.recv(p).remove(0)
}

/// 3.1.1: [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-2.3.1-7]; 5.0: [MQTT-3.8.4-1], [MQTT-3.8.4-2],
/// [MQTT-3.8.4-5], [MQTT-3.8.4-7], [MQTT-3.9.3-1]: every SUBSCRIBE gets one SUBACK with its
/// packet identifier and one code per filter, in order, each a granted QoS or a failure.
#[test]
fn mqtt_3_8_4_1_every_subscribe_gets_one_suback_in_filter_order() {
    for v in BOTH {
        let mut h = Harness::config(|c| c.max_qos = QoS::AtLeastOnce);
        let mut p = h.connect(v, "c", true);
        let ack = subscribe_many(
            &mut h,
            &mut p,
            321,
            &[("a/#", QoS::ExactlyOnce), ("b", QoS::AtMostOnce), ("$share/g/c", QoS::AtLeastOnce)],
        );
        let Packet::SubAck(ack) = ack else { panic!("{ack:?}") };
        assert_eq!(ack.packet_id.get(), 321);
        assert_eq!(
            ack.reason_codes,
            [ReasonCode::GrantedQoS1, ReasonCode::Success, ReasonCode::GrantedQoS1],
            "{v:?}: capped by the broker's maximum QoS, in order"
        );
        assert!(h.recv(&mut p).is_empty(), "one SUBACK only");
    }
}

/// 3.1.1: [MQTT-3.10.4-1], [MQTT-3.10.4-2], [MQTT-3.10.4-6], [MQTT-2.3.1-7]; 5.0:
/// [MQTT-3.10.4-1], [MQTT-3.10.4-4], [MQTT-3.10.4-6], [MQTT-3.11.3-1]: filters are compared
/// character by character, several are one UNSUBACK with the packet identifier, and delivery
/// stops.
#[test]
fn mqtt_3_10_4_1_unsubscribe_matches_filters_exactly_and_answers_once() {
    for v in BOTH {
        let mut h = Harness::new();
        let mut p = h.connect(v, "c", true);
        h.subscribe(&mut p, "a/+", QoS::AtLeastOnce);
        h.subscribe(&mut p, "b/#", QoS::AtLeastOnce);
        let u = Unsubscribe {
            packet_id: pid(55),
            // "a/x" is not "a/+": nothing happens to that subscription.
            filters: vec![filter("a/x"), filter("b/#")],
            properties: Default::default(),
        };
        h.send(&p, u);
        let out = h.recv(&mut p);
        assert_eq!(out.len(), 1, "{v:?}: one UNSUBACK");
        let Packet::UnsubAck(ack) = &out[0] else { panic!("{out:?}") };
        assert_eq!(ack.packet_id.get(), 55);
        if v == V5 {
            assert_eq!(ack.reason_codes, [ReasonCode::NoSubscriptionExisted, ReasonCode::Success]);
        }
        let publisher = h.connect(v, "pub", true);
        h.send(&publisher, publish("b/1", b"x", QoS::AtLeastOnce, 1));
        h.send(&publisher, publish("a/1", b"y", QoS::AtLeastOnce, 2));
        let got = h.recv_publishes(&mut p);
        assert_eq!(got.len(), 1, "{v:?}: b/# no longer delivers, a/+ still does");
        assert_eq!(got[0].topic.as_str(), "a/1");
    }
}

/// 3.1.1: [MQTT-3.10.4-3]; 5.0: section 3.10.4: a QoS 1/2 delivery already started completes
/// after UNSUBSCRIBE.
#[test]
fn mqtt_3_10_4_3_deliveries_started_complete_after_unsubscribe_v311() {
    let mut h = Harness::new();
    let mut p = h.connect(V311, "c", true);
    h.subscribe(&mut p, "t", QoS::ExactlyOnce);
    let publisher = h.connect(V311, "pub", true);
    h.send(&publisher, publish("t", b"x", QoS::ExactlyOnce, 1));
    let got = h.recv_publishes(&mut p);
    let id = got[0].packet_id.unwrap();
    h.unsubscribe(&mut p, "t");
    h.send(&p, Packet::PubRec(PubAck::new(id)));
    assert!(matches!(h.recv_one(&mut p), Packet::PubRel(r) if r.packet_id == id));
}

/// 5.0: [MQTT-3.12.4-1]; 3.1.1: [MQTT-3.12.4-1]: PINGREQ gets PINGRESP.
#[test]
fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    for v in BOTH {
        let mut h = Harness::new();
        let mut p = h.connect(v, "c", true);
        h.send_raw(&p, &[0xc0, 0x00]);
        assert_eq!(h.recv_one(&mut p), Packet::PingResp, "{v:?}");
    }
}

/// 3.1.1: [MQTT-3.3.2-3]; 5.0: [MQTT-3.3.2-3]: the topic sent matches the subscription's
/// filter (it is the publisher's topic, never rewritten).
#[test]
fn mqtt_3_3_2_3_topic_sent_matches_the_filter() {
    for v in BOTH {
        let mut h = Harness::new();
        let mut p = h.connect(v, "c", true);
        h.subscribe(&mut p, "s/+/t/#", QoS::AtMostOnce);
        let publisher = h.connect(v, "pub", true);
        h.send(&publisher, publish("s/1/t/2/3", b"x", QoS::AtMostOnce, 0));
        let got = h.recv_publishes(&mut p);
        assert_eq!(got[0].topic.as_str(), "s/1/t/2/3");
        assert!(filter("s/+/t/#").matches(&got[0].topic));
    }
}

/// 3.1.1: [MQTT-2.3.1-4], [MQTT-2.3.1-6]: the broker gives its QoS>0 PUBLISH packets unused
/// non-zero identifiers, and acknowledgements carry the publisher's identifier.
#[test]
fn mqtt_2_3_1_4_server_packet_ids_are_unused_and_acks_echo_them_v311() {
    let mut h = Harness::new();
    let mut p = h.connect(V311, "c", true);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V311, "pub", true);
    for i in [9u16, 700, 65535] {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
        assert!(matches!(h.recv_one(&mut publisher), Packet::PubAck(a) if a.packet_id.get() == i));
    }
    let got = h.recv_publishes(&mut p);
    let mut ids: Vec<u16> = got.iter().map(|m| m.packet_id.unwrap().get()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different identifiers while all are in flight");
}

/// 3.1.1: [MQTT-3.8.4-3]; 5.0: [MQTT-3.8.4-4]: subscribing again to an identical filter
/// replaces the subscription, sends the retained messages again (Retain Handling 0), and loses
/// nothing.
#[test]
fn mqtt_3_8_4_3_identical_filter_replaces_and_resends_retained() {
    for v in BOTH {
        let mut h = Harness::new();
        let publisher = h.connect(v, "pub", true);
        let mut r = publish("t", b"kept", QoS::AtLeastOnce, 1);
        r.retain = true;
        h.send(&publisher, r);
        let mut p = h.connect(v, "c", true);
        h.subscribe(&mut p, "t", QoS::AtMostOnce);
        assert_eq!(h.recv_publishes(&mut p).len(), 1);
        let codes = h.subscribe_opts(
            &mut p,
            "t",
            SubscriptionOptions {
                retain_handling: RetainHandling::SendOnSubscribe,
                ..SubscriptionOptions::qos(QoS::AtLeastOnce)
            },
        );
        assert_eq!(codes, [ReasonCode::GrantedQoS1]);
        let again = h.recv_publishes(&mut p);
        assert_eq!(again.len(), 1, "{v:?}: the retained message again");
        h.send(&publisher, publish("t", b"new", QoS::AtLeastOnce, 2));
        let got = h.recv_publishes(&mut p);
        assert_eq!(got.len(), 1, "{v:?}: one subscription, not two");
        assert_eq!(got[0].qos, QoS::AtLeastOnce, "the new options apply");
    }
}

/// 3.1.1: [MQTT-3.1.2.7] (sic); 5.0: section 3.1.2.4: retained messages are not session state
/// and outlive the session that published them.
#[test]
fn mqtt_3_1_2_7_retained_messages_outlive_the_publishers_session_v311() {
    let mut h = Harness::new();
    let mut publisher = h.connect(V311, "pub", true);
    let mut r = publish("t", b"kept", QoS::AtLeastOnce, 1);
    r.retain = true;
    h.send(&publisher, r);
    h.disconnect(&mut publisher, ReasonCode::Success);
    let mut p = h.connect(V311, "c", true);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    assert_eq!(h.recv_publishes(&mut p).len(), 1);
}

/// 5.0: [MQTT-3.1.2-7], [MQTT-3.1.2-10], [MQTT-3.1.2-14]: the will is kept with the session,
/// removed by DISCONNECT 0x00 and once published, and published non-retained when Will Retain
/// is 0.
#[test]
fn mqtt_3_1_2_10_will_is_removed_by_a_normal_disconnect_and_once_published_v5() {
    let mut h = Harness::new();
    let mut watcher = h.connect(V5, "w", true);
    h.subscribe(&mut watcher, "will/#", QoS::AtLeastOnce);
    // Normal DISCONNECT: no will.
    let mut c = connect_packet(V5, "a", true);
    c.will = Some(will("will/a", "gone", QoS::AtLeastOnce, false));
    let (mut a, _) = h.connect_with(c);
    h.disconnect(&mut a, ReasonCode::Success);
    assert!(h.recv_publishes(&mut watcher).is_empty());
    // Abnormal close: the will, once, not retained.
    let mut c = connect_packet(V5, "b", false);
    c.properties.session_expiry_interval = Some(100);
    c.will = Some(will("will/b", "gone", QoS::AtLeastOnce, false));
    let (b, _) = h.connect_with(c);
    h.drop_peer(&b);
    let got = h.recv_publishes(&mut watcher);
    assert_eq!(got.len(), 1);
    assert!(!got[0].retain);
    // The session lives on; its end publishes nothing more.
    h.secs(200);
    assert!(h.recv_publishes(&mut watcher).is_empty());
    let mut late = h.connect(V5, "late", true);
    h.subscribe(&mut late, "will/#", QoS::AtLeastOnce);
    assert!(h.recv_publishes(&mut late).is_empty(), "not retained");
}

/// 5.0: [MQTT-3.1.4-4], [MQTT-3.2.0-1], [MQTT-3.14.0-1]; 3.1.1: [MQTT-3.1.4-3]: after a
/// successful CONNECT the broker applies Clean Start and its first packet is CONNACK; a
/// connection refused before CONNACK 0x00 gets no DISCONNECT.
#[test]
fn mqtt_3_2_0_1_connack_first_and_clean_start_applied() {
    for v in BOTH {
        let mut h = Harness::new();
        let (mut a, _) = h.connect_v5_session("a", false, 100);
        h.subscribe(&mut a, "t", QoS::AtLeastOnce);
        h.drop_peer(&a);
        // Clean start: the old session (and its subscription) is gone.
        let mut p = h.accept(v);
        h.send(&p, connect_packet(v, "a", true));
        let out = h.recv(&mut p);
        let Packet::ConnAck(ack) = &out[0] else { panic!("{v:?}: CONNACK first, got {out:?}") };
        assert!(!ack.session_present);
        let publisher = h.connect(v, "pub", true);
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 1));
        assert!(h.recv_publishes(&mut p).is_empty(), "{v:?}: the old subscription is gone");
    }
    // A refused CONNECT: CONNACK with the code, no DISCONNECT.
    let mut h = Harness::config(|c| c.allow_zero_length_client_id = false);
    let mut p = h.accept(V5);
    h.send(&p, connect_packet(V5, "", true));
    let out = h.recv(&mut p);
    assert!(matches!(&out[0], Packet::ConnAck(a) if a.reason_code.is_error()));
    assert!(!out.iter().any(|p| matches!(p, Packet::Disconnect(_))));
}

/// 5.0: [MQTT-3.3.4-10]: with its window to a client full, the broker still sends that client
/// SUBACK, PINGRESP and acknowledgements.
#[test]
fn mqtt_3_3_4_10_a_full_window_does_not_delay_other_packets_v5() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "c", true);
    c.properties.receive_maximum = std::num::NonZeroU16::new(1);
    let (mut p, _) = h.connect_with(c);
    h.subscribe(&mut p, "t", QoS::AtLeastOnce);
    let publisher = h.connect(V5, "pub", true);
    for i in 1..=3 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(h.recv_publishes(&mut p).len(), 1, "the window is 1");
    h.send_raw(&p, &[0xc0, 0x00]);
    assert_eq!(h.recv_one(&mut p), Packet::PingResp);
    assert_eq!(h.subscribe(&mut p, "other", QoS::AtMostOnce), [ReasonCode::Success]);
    h.send(&p, publish("mine", b"x", QoS::AtLeastOnce, 9));
    assert!(matches!(h.recv_one(&mut p), Packet::PubAck(_)));
}

/// 5.0: [MQTT-4.8.2-4], [MQTT-4.8.2-5]: a QoS 2 shared delivery that was interrupted completes
/// to the same client when it reconnects, and if its session ends first nobody else gets it.
#[test]
fn mqtt_4_8_2_5_an_interrupted_qos2_shared_delivery_stays_with_its_member_v5() {
    let mut h = Harness::new();
    let (mut a, _) = h.connect_v5_session("a", false, 10);
    h.subscribe(&mut a, "$share/g/t", QoS::ExactlyOnce);
    let mut b = h.connect(V5, "b", true);
    h.subscribe(&mut b, "$share/g/t", QoS::ExactlyOnce);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("t", b"first", QoS::ExactlyOnce, 1));
    let to_a = h.recv_publishes(&mut a);
    assert_eq!(to_a.len(), 1, "round robin starts with a");
    h.drop_peer(&a);
    // Reconnecting in time: the same message again, to the same member.
    let (mut a, _) = h.connect_v5_session("a", false, 10);
    let again = h.recv_publishes(&mut a);
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    h.drop_peer(&a);
    // The session expires: the started QoS 2 delivery is not given to b.
    h.secs(11);
    assert!(h.recv_publishes(&mut b).is_empty());
}

/// 5.0: [MQTT-4.8.2-3], [MQTT-4.8.2-6]: shared members get their own granted QoS, and a
/// PUBACK with an error code discards the message: no other member gets it.
#[test]
fn mqtt_4_8_2_6_an_error_ack_discards_a_shared_message_v5() {
    let mut h = Harness::new();
    let mut a = h.connect(V5, "a", true);
    h.subscribe(&mut a, "$share/g/t", QoS::AtLeastOnce);
    let mut b = h.connect(V5, "b", true);
    h.subscribe(&mut b, "$share/g/t", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 1));
    let got = h.recv_publishes(&mut a);
    assert_eq!(got[0].qos, QoS::AtLeastOnce, "a's own granted QoS");
    let refuse = PubAck {
        reason_code: ReasonCode::UnspecifiedError,
        ..PubAck::new(got[0].packet_id.unwrap())
    };
    h.send(&a, Packet::PubAck(refuse));
    h.drop_peer(&a);
    assert!(h.recv_publishes(&mut b).is_empty(), "discarded, not redelivered");
}
