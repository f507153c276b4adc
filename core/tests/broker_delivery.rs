//! The broker's side of chapter 4 of both specifications: the QoS 0/1/2 exchanges as sender
//! and as receiver, resending, ordering and the send quota. Each test runs in both protocol
//! versions unless its doc comment says otherwise; where the two specifications number a rule
//! differently, the doc comment gives both.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use std::sync::Arc;

use broker_harness::*;
use ternmq_core::broker::{Action, Authorizer, ClientInfo};
use ternmq_core::codec::{Packet, ProtocolVersion, PubAck, QoS, ReasonCode, SubscriptionOptions};
use ternmq_core::time::Duration;

fn both() -> [ProtocolVersion; 2] {
    [V311, V5]
}

/// A persistent subscriber of `f` at `qos`, connected, in version `v`.
fn subscriber(h: &mut Harness, v: ProtocolVersion, id: &str, f: &str, qos: QoS) -> Peer {
    let mut c = connect_packet(v, id, false);
    if v == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    let (mut p, _) = h.connect_with(c);
    h.subscribe(&mut p, f, qos);
    p
}

fn reconnect(h: &mut Harness, v: ProtocolVersion, id: &str) -> Peer {
    let mut c = connect_packet(v, id, false);
    if v == V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    let (p, ack) = h.connect_with(c);
    assert!(ack.session_present);
    p
}

/// [MQTT-4.3.1-1]: a QoS 0 message goes out with QoS 0 and DUP 0, without an identifier.
#[test]
fn mqtt_4_3_1_1_qos0_is_sent_with_qos0_and_dup0() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtMostOnce);
        let p = h.connect(v, "p", true);
        h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
        let got = h.recv_publishes(&mut sub);
        assert_eq!((got[0].qos, got[0].dup, got[0].packet_id), (QoS::AtMostOnce, false, None));
    }
}

/// The broker as QoS 1 sender: an unused identifier, QoS 1 and DUP 0, and the message is
/// unacknowledged until PUBACK (resent on resume before it, not after it).
/// 3.1.1: [MQTT-4.3.2-1]. 5.0: [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.2-3].
#[test]
fn broker_as_qos1_sender_holds_the_message_until_puback() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtLeastOnce);
        let p = h.connect(v, "p", true);
        h.send(&p, publish("t", b"1", QoS::AtLeastOnce, 1));
        h.send(&p, publish("t", b"2", QoS::AtLeastOnce, 2));
        let got = h.recv_publishes(&mut sub);
        let (a, b) = (got[0].packet_id.unwrap(), got[1].packet_id.unwrap());
        assert_ne!(a, b, "each message its own identifier");
        assert!(got.iter().all(|m| m.qos == QoS::AtLeastOnce && !m.dup));
        h.puback(&sub, a);
        h.drop_peer(&sub);
        let mut sub = reconnect(&mut h, v, "s");
        let again = h.recv_publishes(&mut sub);
        assert_eq!(again.len(), 1, "only the unacknowledged one comes again");
        assert_eq!(
            (again[0].packet_id, again[0].dup, &again[0].payload[..]),
            (Some(b), true, &b"2"[..])
        );
    }
}

/// The broker as QoS 1 receiver: PUBACK with the identifier once it owns the message, and a
/// PUBLISH with the same identifier after that PUBACK is a new message, DUP or not.
/// 3.1.1: [MQTT-4.3.2-2]. 5.0: [MQTT-4.3.2-4] [MQTT-4.3.2-5].
#[test]
fn broker_as_qos1_receiver_acknowledges_then_takes_the_identifier_as_new() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtMostOnce);
        let mut p = h.connect(v, "p", true);
        h.send(&p, publish("t", b"first", QoS::AtLeastOnce, 5));
        assert!(matches!(h.recv_one(&mut p), Packet::PubAck(a) if a.packet_id == pid(5)));
        let mut again = publish("t", b"second", QoS::AtLeastOnce, 5);
        again.dup = true;
        h.send(&p, again);
        assert!(matches!(h.recv_one(&mut p), Packet::PubAck(a) if a.packet_id == pid(5)));
        let got: Vec<_> = h.recv_publishes(&mut sub).into_iter().map(|m| m.payload).collect();
        assert_eq!(got, [&b"first"[..], &b"second"[..]]);
    }
}

/// The broker as QoS 2 sender: QoS 2, DUP 0, an identifier; PUBREL with that identifier once
/// PUBREC comes; and after the PUBREL only the PUBREL is resent, never the PUBLISH.
/// 3.1.1: [MQTT-4.3.3-1]. 5.0: [MQTT-4.3.3-1] [MQTT-4.3.3-2] [MQTT-4.3.3-3] [MQTT-4.3.3-4]
/// [MQTT-4.3.3-5] [MQTT-4.3.3-6].
#[test]
fn broker_as_qos2_sender_releases_after_pubrec_and_never_resends_the_publish_after() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::ExactlyOnce);
        let p = h.connect(v, "p", true);
        h.send(&p, publish("t", b"x", QoS::ExactlyOnce, 1));
        let got = h.recv_publishes(&mut sub);
        assert_eq!((got[0].qos, got[0].dup), (QoS::ExactlyOnce, false));
        let id = got[0].packet_id.unwrap();
        // Unacknowledged until PUBREC: resent on resume.
        h.drop_peer(&sub);
        let mut sub = reconnect(&mut h, v, "s");
        let again = h.recv_publishes(&mut sub);
        assert_eq!((again[0].packet_id, again[0].dup), (Some(id), true));
        h.send(&sub, Packet::PubRec(PubAck::new(id)));
        assert_eq!(h.recv_one(&mut sub), Packet::PubRel(PubAck::new(id)));
        // The PUBREL is unacknowledged until PUBCOMP: it, not the PUBLISH, comes again.
        h.drop_peer(&sub);
        let mut sub = reconnect(&mut h, v, "s");
        assert_eq!(h.recv(&mut sub), vec![Packet::PubRel(PubAck::new(id))]);
        h.send(&sub, Packet::PubComp(PubAck::new(id)));
        h.drop_peer(&sub);
        let mut sub = reconnect(&mut h, v, "s");
        assert!(h.recv(&mut sub).is_empty(), "done: nothing more to resend");
    }
}

/// The broker as QoS 2 receiver: PUBREC with the identifier; a repeat before PUBREL gets PUBREC
/// again and no second delivery; PUBREL gets PUBCOMP; after it the identifier is new again.
/// 3.1.1: [MQTT-4.3.3-2]. 5.0: [MQTT-4.3.3-8] [MQTT-4.3.3-10] [MQTT-4.3.3-11] [MQTT-4.3.3-12].
#[test]
fn broker_as_qos2_receiver_delivers_once_per_exchange() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtMostOnce);
        let mut p = h.connect(v, "p", true);
        let mut m = publish("t", b"once", QoS::ExactlyOnce, 3);
        h.send(&p, m.clone());
        assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(3))));
        m.dup = true;
        h.send(&p, m.clone());
        assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(3))));
        assert_eq!(h.recv_publishes(&mut sub).len(), 1, "no duplicate onward");
        h.send(&p, Packet::PubRel(PubAck::new(pid(3))));
        assert_eq!(h.recv_one(&mut p), Packet::PubComp(PubAck::new(pid(3))));
        m.dup = false;
        h.send(&p, m);
        assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(3))));
        assert_eq!(h.recv_publishes(&mut sub).len(), 1, "a new message after PUBCOMP");
    }
}

/// Refuses publishing to `deny/...`.
struct DenyTopics;

impl Authorizer for DenyTopics {
    fn authorize(&self, _: &ClientInfo<'_>, action: Action, topic: &str) -> bool {
        !(action == Action::Publish && topic.starts_with("deny/"))
    }
}

/// MQTT 5 only: after a PUBREC of 0x80 or above, a PUBLISH with that identifier is a new
/// message [MQTT-4.3.3-9].
#[test]
fn mqtt_4_3_3_9_after_an_error_pubrec_the_identifier_is_new() {
    let mut h = Harness::config(|c| c.authorizer = Some(Arc::new(DenyTopics)));
    let mut sub = subscriber(&mut h, V5, "s", "#", QoS::AtMostOnce);
    let mut p = h.connect(V5, "p", true);
    h.send(&p, publish("deny/x", b"no", QoS::ExactlyOnce, 1));
    let Packet::PubRec(rec) = h.recv_one(&mut p) else { panic!() };
    assert!(rec.reason_code.is_error());
    h.send(&p, publish("ok/x", b"yes", QoS::ExactlyOnce, 1));
    assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(1))));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"yes");
}

/// MQTT 5 only: once a QoS 2 PUBLISH is sent the broker does not expire it: it is resent after
/// its Message Expiry Interval passed [MQTT-4.3.3-7]; and as receiver it completes an exchange
/// whose message expired [MQTT-4.3.3-13].
#[test]
fn mqtt_4_3_3_7_and_13_expiry_does_not_break_a_qos2_exchange() {
    let mut h = Harness::new();
    let mut sub = subscriber(&mut h, V5, "s", "t", QoS::ExactlyOnce);
    let mut p = h.connect(V5, "p", true);
    let mut m = publish("t", b"short-lived", QoS::ExactlyOnce, 1);
    m.properties.message_expiry_interval = Some(1);
    h.send(&p, m);
    assert_eq!(h.recv_one(&mut p), Packet::PubRec(PubAck::new(pid(1))));
    let id = h.recv_publishes(&mut sub)[0].packet_id.unwrap();
    h.drop_peer(&sub);
    h.advance(Duration::from_secs(5));
    h.send(&p, Packet::PubRel(PubAck::new(pid(1))));
    assert_eq!(h.recv_one(&mut p), Packet::PubComp(PubAck::new(pid(1))));
    let mut sub = reconnect(&mut h, V5, "s");
    let again = h.recv_publishes(&mut sub);
    assert_eq!((again.len(), again[0].packet_id), (1, Some(id)), "sent once, so resent");
}

/// MQTT 5 only: a delivery the subscriber answered with PUBACK 0x80 or above is done and never
/// retransmitted [MQTT-4.4.0-2].
#[test]
fn mqtt_4_4_0_2_an_error_puback_ends_the_delivery() {
    let mut h = Harness::new();
    let mut sub = subscriber(&mut h, V5, "s", "t", QoS::AtLeastOnce);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"x", QoS::AtLeastOnce, 1));
    let id = h.recv_publishes(&mut sub)[0].packet_id.unwrap();
    let mut ack = PubAck::new(id);
    ack.reason_code = ReasonCode::UnspecifiedError;
    h.send(&sub, Packet::PubAck(ack));
    h.drop_peer(&sub);
    let mut sub = reconnect(&mut h, V5, "s");
    assert!(h.recv_publishes(&mut sub).is_empty());
}

/// A message the broker owns goes into the session of every matching subscriber, connected or
/// not [MQTT-4.5.0-1].
#[test]
fn mqtt_4_5_0_1_an_owned_message_joins_every_matching_session() {
    for v in both() {
        let mut h = Harness::new();
        let mut online = subscriber(&mut h, v, "on", "t/+", QoS::AtLeastOnce);
        let offline = subscriber(&mut h, v, "off", "t/#", QoS::AtLeastOnce);
        h.drop_peer(&offline);
        let p = h.connect(v, "p", true);
        h.send(&p, publish("t/x", b"m", QoS::AtLeastOnce, 1));
        assert_eq!(h.recv_publishes(&mut online).len(), 1);
        let mut back = reconnect(&mut h, v, "off");
        assert_eq!(h.recv_publishes(&mut back).len(), 1);
    }
}

/// The broker resends unacknowledged messages in the order it first sent them [MQTT-4.6.0-1],
/// and forwards each client's messages on a topic in the order it received them, queued or not.
/// 3.1.1: [MQTT-4.6.0-5] [MQTT-4.6.0-6]. 5.0: [MQTT-4.6.0-5] [MQTT-4.6.0-6].
#[test]
fn mqtt_4_6_0_1_resends_and_forwarding_keep_the_order() {
    for v in both() {
        let mut h = Harness::config(|c| c.max_inflight_messages = 3);
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtLeastOnce);
        let p = h.connect(v, "p", true);
        for i in 0..10u16 {
            let body: &'static [u8] =
                [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"][usize::from(i)];
            h.send(&p, publish("t", body, QoS::AtLeastOnce, i + 1));
        }
        let first = h.recv_publishes(&mut sub);
        assert_eq!(first.len(), 3, "the window is 3; the rest are queued");
        h.drop_peer(&sub);
        let mut sub = reconnect(&mut h, v, "s");
        let mut bodies = Vec::new();
        loop {
            let got = h.recv_publishes(&mut sub);
            if got.is_empty() {
                break;
            }
            for m in got {
                bodies.push(m.payload[0] - b'0');
                h.puback(&sub, m.packet_id.unwrap());
            }
        }
        assert_eq!(bodies, (0..10).collect::<Vec<u8>>(), "resent first, in order, then the rest");
    }
}

/// PUBRELs follow the order of the PUBRECs that caused them [MQTT-4.6.0-4].
#[test]
fn mqtt_4_6_0_4_pubrels_follow_the_order_of_pubrecs() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::ExactlyOnce);
        let p = h.connect(v, "p", true);
        h.send(&p, publish("t", b"a", QoS::ExactlyOnce, 1));
        h.send(&p, publish("t", b"b", QoS::ExactlyOnce, 2));
        let got = h.recv_publishes(&mut sub);
        let (a, b) = (got[0].packet_id.unwrap(), got[1].packet_id.unwrap());
        h.send(&sub, Packet::PubRec(PubAck::new(b)));
        h.send(&sub, Packet::PubRec(PubAck::new(a)));
        let rels: Vec<_> = h
            .recv(&mut sub)
            .into_iter()
            .filter_map(|x| match x {
                Packet::PubRel(r) => Some(r.packet_id),
                _ => None,
            })
            .collect();
        assert_eq!(rels, [b, a]);
    }
}

/// MQTT 5 only: the broker's send quota starts at the client's Receive Maximum and stops QoS>0
/// PUBLISH packets at zero [MQTT-4.9.0-1] [MQTT-4.9.0-2], while every other packet is still
/// answered [MQTT-4.9.0-3].
#[test]
fn mqtt_4_9_0_2_a_spent_quota_stops_publishes_but_not_other_answers() {
    let mut h = Harness::new();
    let mut c = connect_packet(V5, "s", true);
    c.properties.receive_maximum = std::num::NonZeroU16::new(1);
    let (mut sub, _) = h.connect_with(c);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let p = h.connect(V5, "p", true);
    h.send(&p, publish("t", b"1", QoS::AtLeastOnce, 1));
    h.send(&p, publish("t", b"2", QoS::AtLeastOnce, 2));
    let got = h.recv_publishes(&mut sub);
    assert_eq!(got.len(), 1, "a quota of one");
    h.send_raw(&sub, &[0xc0, 0x00]); // PINGREQ
    assert_eq!(h.recv(&mut sub), vec![Packet::PingResp]);
    let codes = h.subscribe_opts(&mut sub, "u", SubscriptionOptions::qos(QoS::AtMostOnce));
    assert_eq!(codes, [ReasonCode::Success]);
    h.puback(&sub, got[0].packet_id.unwrap());
    assert_eq!(h.recv_publishes(&mut sub).len(), 1, "the quota is back");
}

/// A session lasts at least as long as its connection and keeps its state while the
/// connection is open, even with a Session Expiry Interval of 0.
/// 3.1.1: [MQTT-4.1.0-1] [MQTT-4.1.0-2]. 5.0: [MQTT-4.1.0-1].
#[test]
fn mqtt_4_1_0_1_session_state_lasts_as_long_as_the_connection() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = h.connect(v, "s", true);
        h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
        let p = h.connect(v, "p", true);
        h.advance(Duration::from_secs(7200));
        h.send(&p, publish("t", b"late", QoS::AtLeastOnce, 1));
        assert_eq!(h.recv_publishes(&mut sub).len(), 1, "the subscription is still there");
        assert!(h.broker.has_session("s"));
        h.drop_peer(&sub);
        assert!(!h.broker.has_session("s"), "and ends with the connection");
    }
}

/// MQTT 5 only: a malformed packet on a live connection gets DISCONNECT 0x81 and a close
/// [MQTT-4.13.1-1].
#[test]
fn mqtt_4_13_1_1_a_malformed_packet_closes_with_its_reason_code() {
    let mut h = Harness::new();
    let mut p = h.connect(V5, "p", true);
    // PUBLISH with both QoS bits set: QoS 3 does not exist.
    h.send_raw(&p, &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    let out = h.recv(&mut p);
    assert_eq!(reason_of_disconnect(&out), Some(ReasonCode::MalformedPacket), "{out:?}");
    assert!(h.is_closed(&mut p));
}

/// One message fanned out to subscribers of every form (both versions, each QoS, Retain As
/// Published on and off, one with a Subscription Identifier) reaches each as if it had been
/// encoded for it alone: its QoS, RETAIN flag, properties and a Packet Identifier of its own
/// session. The broker encodes a message once per form and copies it; this checks the copies.
#[test]
fn a_message_fanned_out_in_every_form_reaches_each_subscriber_as_its_own() {
    let mut h = Harness::new();
    let mut subs = Vec::new();
    for v in both() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for rap in [false, true] {
                if v == V311 && rap {
                    continue;
                }
                let mut p = h.connect(v, &format!("s-{v:?}-{qos:?}-{rap}"), true);
                let opts = SubscriptionOptions {
                    retain_as_published: rap,
                    ..SubscriptionOptions::qos(qos)
                };
                h.subscribe_opts(&mut p, "t/#", opts);
                subs.push((p, v, qos, rap));
            }
        }
    }
    // A session whose earlier delivery used packet identifier 1: the copies must not reuse it.
    let (mut busy, _, _, _) = subs.remove(1); // MQTT 3.1.1, QoS 1
    let publisher = h.connect(V5, "pub", true);
    let mut first = publish("t/a", b"first", QoS::AtLeastOnce, 7);
    first.properties.user_properties.push(up("k", "v"));
    h.send(&publisher, first);
    let earlier = h.recv_publishes(&mut busy);
    assert_eq!(earlier.len(), 1);
    let mut msg = publish("t/a", b"payload", QoS::ExactlyOnce, 8);
    msg.retain = true;
    msg.properties.user_properties.push(up("k", "v"));
    h.send(&publisher, msg);
    let again = h.recv_publishes(&mut busy);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].packet_id, earlier[0].packet_id, "a packet identifier still in use");
    for (p, v, qos, rap) in &mut subs {
        let got = h.recv_publishes(p);
        assert_eq!(got.len(), 2, "{v:?} {qos:?} rap {rap}");
        let m = &got[1];
        assert_eq!(m.topic.as_str(), "t/a");
        assert_eq!(&m.payload[..], b"payload");
        assert_eq!(m.qos, *qos);
        assert!(!m.dup);
        assert_eq!(m.retain, *rap, "{v:?} {qos:?}: RETAIN is kept only with Retain As Published");
        assert_eq!(m.packet_id.is_some(), *qos != QoS::AtMostOnce);
        if *qos != QoS::AtMostOnce {
            assert_ne!(m.packet_id, got[0].packet_id, "{v:?} {qos:?}: identifiers reused");
        }
        let props = if *v == V5 { vec![up("k", "v")] } else { Vec::new() };
        assert_eq!(m.properties.user_properties, props, "{v:?} {qos:?}");
    }
}

/// An acknowledgement of the wrong kind for an identifier in flight is a protocol error,
/// whichever kind it is: PUBREC or PUBCOMP for a QoS 1 message, PUBACK for a QoS 2 message,
/// PUBCOMP before PUBREC, PUBACK after PUBREC. MQTT 5 says so with DISCONNECT 0x82
/// ([MQTT-4.13.1-1]); 3.1.1 closes the connection ([MQTT-4.8.0-1]).
#[test]
fn the_wrong_acknowledgement_for_an_identifier_in_flight_closes_the_connection() {
    type Ack = fn(PubAck) -> Packet;
    let cases: [(QoS, bool, Ack, &str); 5] = [
        (QoS::AtLeastOnce, false, Packet::PubRec, "PUBREC for QoS 1"),
        (QoS::AtLeastOnce, false, Packet::PubComp, "PUBCOMP for QoS 1"),
        (QoS::ExactlyOnce, false, Packet::PubAck, "PUBACK for QoS 2"),
        (QoS::ExactlyOnce, false, Packet::PubComp, "PUBCOMP before PUBREC"),
        (QoS::ExactlyOnce, true, Packet::PubAck, "PUBACK after PUBREC"),
    ];
    for v in both() {
        for (qos, received, wrong, what) in cases {
            let mut h = Harness::new();
            let mut sub = subscriber(&mut h, v, "s", "t", qos);
            let p = h.connect(v, "p", true);
            h.send(&p, publish("t", b"x", qos, 1));
            let id = h.recv_publishes(&mut sub)[0].packet_id.unwrap();
            if received {
                h.send(&sub, Packet::PubRec(PubAck::new(id)));
                assert_eq!(h.recv_one(&mut sub), Packet::PubRel(PubAck::new(id)));
            }
            h.send(&sub, wrong(PubAck::new(id)));
            let out = h.recv(&mut sub);
            assert!(sub.closed, "{v:?} {what}: the connection is closed");
            let expected = (v == V5).then_some(ReasonCode::ProtocolError);
            assert_eq!(reason_of_disconnect(&out), expected, "{v:?} {what}: {out:?}");
        }
    }
}

/// An acknowledgement for an identifier that is not in flight is not an error: PUBACK and
/// PUBCOMP are ignored, a PUBREC gets a PUBREL (MQTT 5: 0x92 Packet Identifier not found).
#[test]
fn acknowledgements_for_identifiers_not_in_flight_are_not_errors() {
    for v in both() {
        let mut h = Harness::new();
        let mut sub = subscriber(&mut h, v, "s", "t", QoS::AtLeastOnce);
        h.send(&sub, Packet::PubAck(PubAck::new(pid(7))));
        h.send(&sub, Packet::PubComp(PubAck::new(pid(8))));
        assert!(h.recv(&mut sub).is_empty(), "{v:?}");
        h.send(&sub, Packet::PubRec(PubAck::new(pid(9))));
        let Packet::PubRel(rel) = h.recv_one(&mut sub) else { panic!("{v:?}: PUBREL") };
        let code = if v == V5 { ReasonCode::PacketIdentifierNotFound } else { ReasonCode::Success };
        assert_eq!((rel.packet_id, rel.reason_code), (pid(9), code));
        assert!(!sub.closed, "{v:?}");
    }
}
