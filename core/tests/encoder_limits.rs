//! The sender's duties around the peer's Maximum Packet Size, for every packet that may carry
//! a Reason String and User Properties, and the UTF-8 rule for every string field.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use std::num::NonZeroU16;
use ternmq_core::codec::*;

fn reason() -> Option<MqttStr> {
    Some(MqttStr::new(&"r".repeat(200)).unwrap())
}

fn users() -> Vec<UserProperty> {
    vec![(MqttStr::new("k").unwrap(), MqttStr::new(&"v".repeat(200)).unwrap())]
}

fn pid() -> PacketId {
    NonZeroU16::new(1).unwrap()
}

/// Every packet type that may shed its Reason String and User Properties, with both set.
fn heavy_packets() -> Vec<(&'static str, Packet)> {
    let ack = AckProperties { reason_string: reason(), user_properties: users() };
    let pub_ack =
        PubAck { packet_id: pid(), reason_code: ReasonCode::Success, properties: ack.clone() };
    let connack = ConnAck {
        properties: ConnAckProperties {
            reason_string: reason(),
            user_properties: users(),
            ..ConnAckProperties::default()
        },
        ..ConnAck::default()
    };
    vec![
        ("CONNACK [MQTT-3.2.2-19] [MQTT-3.2.2-20]", Packet::ConnAck(connack)),
        ("PUBACK [MQTT-3.4.2-2] [MQTT-3.4.2-3]", Packet::PubAck(pub_ack.clone())),
        ("PUBREC [MQTT-3.5.2-2] [MQTT-3.5.2-3]", Packet::PubRec(pub_ack.clone())),
        ("PUBREL [MQTT-3.6.2-2] [MQTT-3.6.2-3]", Packet::PubRel(pub_ack.clone())),
        ("PUBCOMP [MQTT-3.7.2-2] [MQTT-3.7.2-3]", Packet::PubComp(pub_ack)),
        (
            "SUBACK [MQTT-3.9.2-1] [MQTT-3.9.2-2]",
            Packet::SubAck(SubAck {
                packet_id: pid(),
                reason_codes: vec![ReasonCode::GrantedQoS1],
                properties: ack.clone(),
            }),
        ),
        (
            "UNSUBACK [MQTT-3.11.2-1] [MQTT-3.11.2-2]",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(),
                reason_codes: vec![ReasonCode::Success],
                properties: ack,
            }),
        ),
        (
            "DISCONNECT [MQTT-3.14.2-3] [MQTT-3.14.2-4]",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerBusy,
                properties: DisconnectProperties {
                    reason_string: reason(),
                    user_properties: users(),
                    ..DisconnectProperties::default()
                },
            }),
        ),
        (
            "AUTH [MQTT-3.15.2-2] [MQTT-3.15.2-3]",
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(MqttStr::new("M").unwrap()),
                    reason_string: reason(),
                    user_properties: users(),
                    ..AuthProperties::default()
                },
            }),
        ),
    ]
}

fn decoded(bytes: &mut BytesMut) -> Packet {
    let mut d = Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE);
    d.decode(bytes).unwrap().unwrap()
}

/// [MQTT-3.2.2-19] [MQTT-3.2.2-20] [MQTT-3.4.2-2] [MQTT-3.4.2-3] [MQTT-3.5.2-2] [MQTT-3.5.2-3]
/// [MQTT-3.6.2-2] [MQTT-3.6.2-3] [MQTT-3.7.2-2] [MQTT-3.7.2-3] [MQTT-3.9.2-1] [MQTT-3.9.2-2]
/// [MQTT-3.11.2-1] [MQTT-3.11.2-2] [MQTT-3.14.2-3] [MQTT-3.14.2-4] [MQTT-3.15.2-2]
/// [MQTT-3.15.2-3]: a sender leaves out the Reason String, and then the User Properties, rather
/// than exceed the receiver's Maximum Packet Size; the rest of the packet goes out unchanged.
/// MQTT 5 only.
#[test]
fn reason_string_then_user_properties_are_dropped_to_fit_the_maximum_packet_size() {
    for (name, packet) in heavy_packets() {
        let full = packet.encoded_len(ProtocolVersion::V5).unwrap();
        let mut enc = Encoder::new(ProtocolVersion::V5);

        // Room for everything: sent whole.
        enc.set_max_packet_size(full as u32);
        let mut buf = BytesMut::new();
        assert_eq!(enc.encode(&packet, &mut buf).unwrap(), full, "{name}");
        assert_eq!(decoded(&mut buf), packet, "{name}");

        // One byte short: the Reason String goes, the User Properties stay.
        enc.set_max_packet_size(full as u32 - 1);
        let mut buf = BytesMut::new();
        let n = enc.encode(&packet, &mut buf).unwrap();
        assert!(n < full, "{name}");
        let got = decoded(&mut buf);
        assert_eq!(props(&got), (false, true), "{name}: {got:?}");
        assert_eq!(got.packet_type(), packet.packet_type());

        // Room only for the bare packet: both go.
        enc.set_max_packet_size(40);
        let mut buf = BytesMut::new();
        enc.encode(&packet, &mut buf).unwrap();
        let got = decoded(&mut buf);
        assert_eq!(props(&got), (false, false), "{name}: {got:?}");

        // Not even that: refused, nothing written.
        enc.set_max_packet_size(2);
        let mut buf = BytesMut::new();
        assert!(
            matches!(enc.encode(&packet, &mut buf), Err(EncodeError::PacketTooLarge { .. })),
            "{name}"
        );
        assert!(buf.is_empty(), "{name}");
    }
}

/// (has reason string, has user properties)
fn props(p: &Packet) -> (bool, bool) {
    let (r, u) = match p {
        Packet::ConnAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            (&a.properties.reason_string, &a.properties.user_properties)
        }
        Packet::SubAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
        Packet::UnsubAck(a) => (&a.properties.reason_string, &a.properties.user_properties),
        Packet::Disconnect(a) => (&a.properties.reason_string, &a.properties.user_properties),
        Packet::Auth(a) => (&a.properties.reason_string, &a.properties.user_properties),
        other => panic!("{other:?}"),
    };
    (r.is_some(), !u.is_empty())
}

/// Replaces the first occurrence of `marker` in an encoded packet with ill-formed UTF-8 of the
/// same length, and decodes.
fn corrupt(packet: Packet, version: ProtocolVersion, marker: &[u8]) -> DecodeError {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).unwrap();
    let at = buf.windows(marker.len()).position(|w| w == marker).expect("marker in packet");
    buf[at] = 0xff;
    let mut d = Decoder::new(Some(version), MAX_PACKET_SIZE);
    d.decode(&mut buf).unwrap_err()
}

/// [MQTT-3.1.3-11] Will Topic, [MQTT-3.1.3-12] User Name, [MQTT-3.3.2-13] Response Topic,
/// [MQTT-3.3.2-19] Content Type, [MQTT-3.8.3-1] and [MQTT-3.10.3-1] topic filters of SUBSCRIBE and
/// UNSUBSCRIBE are UTF-8 Encoded Strings: ill-formed UTF-8 in any of them is malformed. MQTT 5 only.
#[test]
fn every_string_field_must_be_well_formed_utf8() {
    let v = ProtocolVersion::V5;
    let mut connect = Connect::new(v, MqttStr::new("id").unwrap());
    connect.username = Some(MqttStr::new("USERNAME").unwrap());
    connect.will = Some(Will {
        topic: ternmq_core::topic::TopicName::new("WILLTOPIC").unwrap(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let mut publish = Publish::new(ternmq_core::topic::TopicName::new("t").unwrap(), "p");
    publish.properties.response_topic =
        Some(ternmq_core::topic::TopicName::new("RESPONSE").unwrap());
    publish.properties.content_type = Some(MqttStr::new("CONTENT").unwrap());
    let filter = ternmq_core::topic::TopicFilter::new("FILTER/#").unwrap();
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(),
        subscriptions: vec![Subscription::new(filter.clone(), QoS::AtMostOnce)],
        properties: SubscribeProperties::default(),
    });
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(),
        filters: vec![filter],
        properties: UnsubscribeProperties::default(),
    });
    let cases: Vec<(Packet, &[u8])> = vec![
        (Packet::from(connect.clone()), b"WILLTOPIC"),
        (Packet::from(connect), b"USERNAME"),
        (Packet::Publish(publish.clone()), b"RESPONSE"),
        (Packet::Publish(publish), b"CONTENT"),
        (subscribe, b"FILTER"),
        (unsubscribe, b"FILTER"),
    ];
    for (packet, marker) in cases {
        let e = corrupt(packet, v, marker);
        assert!(
            matches!(e.kind(), ErrorKind::InvalidString(StrError::InvalidUtf8)),
            "{marker:?}: {e}"
        );
        assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    }
}
