//! Conformance vectors for MQTT 3.1.1 (OASIS Standard, 29 October 2014), and for the one
//! packet of MQTT 3.1 the codec reads (CONNECT with protocol name "MQIsdp", level 3).
//!
//! Every vector is written out by hand, byte by byte, from the specification's packet layouts;
//! none is produced by the encoder. Each byte or field carries a comment naming it and the
//! section it comes from. A valid vector must decode to exactly the packet built field by field
//! in the test, encode back to exactly the same bytes, and `encoded_len` must agree. An invalid
//! vector must be refused with the exact [`ErrorKind`], the MQTT 5 reason code the codec maps it
//! to, and (for CONNECT) the CONNACK return code a 3.1.1 server owes before closing.
//!
//! Tests are named after the normative statement they check (`mqtt_3_3_1_4_...` for
//! [MQTT-3.3.1-4]) or, where the specification states the rule without a statement number, after
//! its section (`sec_3_2_2_1_...` for section 3.2.2.1).

use bytes::{Bytes, BytesMut};
use ternmq_core::codec::*;
use ternmq_core::topic::{TopicError, TopicFilter, TopicName};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("packet identifiers in vectors are non-zero")
}

fn s(v: &'static str) -> MqttStr {
    MqttStr::from_static(v)
}

fn topic(v: &'static str) -> TopicName {
    TopicName::from_static(v)
}

fn filter(v: &'static str) -> TopicFilter {
    TopicFilter::from_static(v)
}

/// A decoder on a connection whose version is already known to be 3.1.1.
fn decoder() -> Decoder {
    Decoder::new(Some(V311), MAX_PACKET_SIZE)
}

/// A server-side decoder that has not seen CONNECT yet.
fn server() -> Decoder {
    Decoder::new(None, MAX_PACKET_SIZE)
}

/// Decodes one packet that must take up all of `bytes`.
fn decode_whole(decoder: &mut Decoder, bytes: &[u8]) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = match decoder.decode(&mut buf) {
        Ok(Some(p)) => p,
        other => panic!("{bytes:02x?} did not decode: {other:?}"),
    };
    assert!(buf.is_empty(), "{} bytes left over after {packet:?}", buf.len());
    packet
}

fn assert_encodes_to(packet: &Packet, version: ProtocolVersion, bytes: &[u8]) {
    let mut buf = BytesMut::new();
    let written = packet.encode(version, &mut buf).expect("a valid packet encodes");
    assert_eq!(&buf[..], bytes, "encoding of {packet:?}");
    assert_eq!(written, bytes.len(), "bytes reported written");
    assert_eq!(packet.encoded_len(version), Ok(bytes.len()), "encoded_len");
}

/// A valid vector on a 3.1.1 connection: decodes to `expected`, which encodes back to it.
fn assert_vector(bytes: &[u8], expected: Packet) {
    let packet = decode_whole(&mut decoder(), bytes);
    assert_eq!(packet, expected);
    assert_encodes_to(&expected, V311, bytes);
}

/// A valid CONNECT, read by a server that learns the protocol version from it.
fn assert_connect_vector(bytes: &[u8], expected: Connect) {
    let mut d = server();
    let packet = decode_whole(&mut d, bytes);
    assert_eq!(d.version(), Some(expected.protocol), "version learnt from CONNECT");
    let expected = Packet::from(expected);
    assert_eq!(packet, expected);
    // A CONNECT is written in its own version whatever the connection's.
    assert_encodes_to(&expected, V311, bytes);
}

fn decode_error(decoder: &mut Decoder, bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decoder.decode(&mut buf) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} was not refused: {p:?}"),
    }
}

/// The packet type an error must name: the one in the fixed header, unless that is reserved.
fn expected_type(bytes: &[u8], kind: &ErrorKind) -> Option<PacketType> {
    match kind {
        ErrorKind::ReservedPacketType(_) => None,
        _ => PacketType::from_u8(bytes[0] >> 4),
    }
}

/// Decodes `bytes` on an established 3.1.1 connection and returns the error.
fn refused(bytes: &[u8]) -> DecodeError {
    decode_error(&mut decoder(), bytes)
}

/// An invalid vector on an established 3.1.1 connection.
fn assert_refused(bytes: &[u8], kind: ErrorKind, reason: ReasonCode) {
    let e = refused(bytes);
    assert_eq!(e.kind(), &kind, "{bytes:02x?}");
    assert_eq!(e.reason_code(), reason, "{bytes:02x?}");
    assert_eq!(e.packet_type(), expected_type(bytes, &kind), "{bytes:02x?}");
    assert_eq!(e.connect_return_code(), None, "only a CONNECT can be owed a CONNACK");
}

/// An invalid CONNECT read by a fresh server decoder; returns the decoder to check what it
/// learnt.
fn assert_connect_refused(
    bytes: &[u8],
    kind: ErrorKind,
    reason: ReasonCode,
    return_code: Option<ConnectReturnCode>,
) -> Decoder {
    let mut d = server();
    let e = decode_error(&mut d, bytes);
    assert_eq!(e.kind(), &kind);
    assert_eq!(e.reason_code(), reason);
    assert_eq!(e.packet_type(), Some(PacketType::Connect));
    assert_eq!(e.connect_return_code(), return_code);
    d
}

// ---------------------------------------------------------------------------------------------
// Valid vectors, one or more per packet type (section 3)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CONNECT_MINIMAL: &[u8] = &[
    0x10,                         // fixed header: CONNECT (1), reserved flags 0000 (§3.1.1)
    0x0E,                         // remaining length 14 (§2.2.3)
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT" (§3.1.2.1)
    0x04,                         // protocol level 4 (§3.1.2.2)
    0x02,                         // connect flags: clean session (§3.1.2.3, §3.1.2.4)
    0x00, 0x3C,                   // keep alive 60 s (§3.1.2.10)
    0x00, 0x02, b'a', b'b',       // client identifier "ab" (§3.1.3.1)
];

/// §3.1: a CONNECT with only a client identifier.
#[test]
fn sec_3_1_connect_minimal() {
    assert_connect_vector(CONNECT_MINIMAL, Connect::new(V311, s("ab")));
}

#[rustfmt::skip]
const CONNECT_FULL: &[u8] = &[
    0x10,                         // fixed header: CONNECT (§3.1.1)
    0x1F,                         // remaining length 31
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT" (§3.1.2.1)
    0x04,                         // protocol level 4 (§3.1.2.2)
    0xEC,                         // connect flags: user name (0x80), password (0x40), will retain
                                  //   (0x20), will QoS 1 (0x08), will flag (0x04); clean session 0
    0x00, 0x0A,                   // keep alive 10 s (§3.1.2.10)
    0x00, 0x02, b'c', b'1',       // client identifier "c1" (§3.1.3.1)
    0x00, 0x03, b'w', b'/', b't', // will topic "w/t" (§3.1.3.2)
    0x00, 0x03, b'b', b'y', b'e', // will message "bye" (§3.1.3.3)
    0x00, 0x01, b'u',             // user name "u" (§3.1.3.4)
    0x00, 0x02, 0x01, 0x02,       // password, binary 01 02 (§3.1.3.5)
];

/// [MQTT-3.1.3-1]: client identifier, will topic, will message, user name and password, in this
/// order, present as the flags say.
#[test]
fn mqtt_3_1_3_1_connect_with_will_user_name_and_password() {
    assert_connect_vector(
        CONNECT_FULL,
        Connect {
            protocol: V311,
            clean_start: false,
            keep_alive: 10,
            client_id: s("c1"),
            will: Some(Will {
                topic: topic("w/t"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties::default(),
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(&[0x01, 0x02])),
            properties: ConnectProperties::default(),
            bridge: false,
        },
    );
}

#[rustfmt::skip]
const CONNECT_EMPTY_CLIENT_ID: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0C,                         // remaining length 12
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x00,                   // client identifier: zero bytes (§3.1.3.1)
];

/// [MQTT-3.1.3-6], [MQTT-3.1.3-7]: a zero-byte client identifier with clean session 1 is a
/// well-formed CONNECT (whether to accept it is the server's decision, not the codec's).
#[test]
fn mqtt_3_1_3_6_zero_byte_client_id_decodes() {
    assert_connect_vector(CONNECT_EMPTY_CLIENT_ID, Connect::new(V311, s("")));
}

#[rustfmt::skip]
const CONNECT_MQTT_3_1: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x10,                         // remaining length 16
    0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name "MQIsdp" (MQTT 3.1)
    0x03,                         // protocol level 3 (MQTT 3.1)
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-2]: a server may support other levels; this codec reads MQTT 3.1 ("MQIsdp",
/// level 3) and writes it back unchanged.
#[test]
fn mqtt_3_1_2_2_mqtt_3_1_mqisdp_level_3_connect_decodes() {
    assert_connect_vector(CONNECT_MQTT_3_1, Connect::new(ProtocolVersion::V3_1, s("ab")));
    // After it, the connection speaks 3.1, which frames everything else as 3.1.1 does.
    let mut d = server();
    decode_whole(&mut d, CONNECT_MQTT_3_1);
    assert_eq!(d.version(), Some(ProtocolVersion::V3_1));
    assert_eq!(decode_whole(&mut d, &[0xC0, 0x00]), Packet::PingReq);
}

#[rustfmt::skip]
const CONNACK_ACCEPTED: &[u8] = &[
    0x20,                         // fixed header: CONNACK (2), reserved flags 0000 (§3.2.1)
    0x02,                         // remaining length 2
    0x00,                         // connect acknowledge flags: session present 0 (§3.2.2.1)
    0x00,                         // return code 0x00: connection accepted (§3.2.2.3)
];

#[rustfmt::skip]
const CONNACK_SESSION_PRESENT: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x02,                         // remaining length 2
    0x01,                         // connect acknowledge flags: session present 1 (§3.2.2.2)
    0x00,                         // return code 0x00: connection accepted
];

/// §3.2: CONNACK accepting the connection, without and with a session.
#[test]
fn sec_3_2_connack_accepted() {
    assert_vector(CONNACK_ACCEPTED, Packet::ConnAck(ConnAck::default()));
    assert_vector(
        CONNACK_SESSION_PRESENT,
        Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }),
    );
}

/// §3.2.2.3, table 3.1: the six return codes, each mapped to the MQTT 5 reason code with the
/// same meaning and written back as itself.
#[test]
fn sec_3_2_2_3_connack_every_return_code() {
    let table = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for (code, reason) in table {
        // CONNACK, remaining length 2, session present 0, return code.
        let vector = [0x20, 0x02, 0x00, code];
        let expected = ConnAck { reason_code: reason, ..ConnAck::default() };
        assert_vector(&vector, Packet::ConnAck(expected));
        assert_eq!(ConnectReturnCode::from_reason(reason) as u8, code);
    }
}

#[rustfmt::skip]
const PUBLISH_QOS0: &[u8] = &[
    0x30,                         // fixed header: PUBLISH (3), DUP 0, QoS 0, RETAIN 0 (§3.3.1)
    0x0A,                         // remaining length 10
    0x00, 0x03, b'a', b'/', b'b', // topic name "a/b" (§3.3.2.1); no packet identifier at QoS 0
    b'h', b'e', b'l', b'l', b'o', // payload "hello" (§3.3.3)
];

/// §3.3: a QoS 0 PUBLISH has no packet identifier.
#[test]
fn sec_3_3_publish_qos0() {
    assert_vector(PUBLISH_QOS0, Packet::Publish(Publish::new(topic("a/b"), &b"hello"[..])));
}

#[rustfmt::skip]
const PUBLISH_QOS1_DUP_RETAIN: &[u8] = &[
    0x3B,                         // fixed header: PUBLISH, DUP 1 (0x08), QoS 1 (0x02), RETAIN 1
    0x08,                         // remaining length 8
    0x00, 0x01, b't',             // topic name "t"
    0x00, 0x0A,                   // packet identifier 10 (§3.3.2.2)
    0x01, 0x02, 0x03,             // payload 01 02 03
];

/// §3.3.1: DUP, QoS and RETAIN in the fixed header of a QoS 1 PUBLISH.
#[test]
fn sec_3_3_1_publish_qos1_dup_retain() {
    assert_vector(
        PUBLISH_QOS1_DUP_RETAIN,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            packet_id: Some(pid(10)),
            ..Publish::new(topic("t"), &[0x01, 0x02, 0x03][..])
        }),
    );
}

#[rustfmt::skip]
const PUBLISH_QOS2_EMPTY_PAYLOAD: &[u8] = &[
    0x34,                         // fixed header: PUBLISH, DUP 0, QoS 2 (0x04), RETAIN 0
    0x05,                         // remaining length 5
    0x00, 0x01, b't',             // topic name "t"
    0x12, 0x34,                   // packet identifier 0x1234
                                  // zero-length payload (§3.3.3)
];

/// §3.3.3: a PUBLISH may have an empty payload.
#[test]
fn sec_3_3_3_publish_qos2_with_empty_payload() {
    assert_vector(
        PUBLISH_QOS2_EMPTY_PAYLOAD,
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(0x1234)),
            ..Publish::new(topic("t"), Bytes::new())
        }),
    );
}

#[rustfmt::skip]
const PUBLISH_TWO_BYTE_LENGTH_HEAD: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0xCB, 0x01,                   // remaining length 203 = 0x4B + 1 * 128 (§2.2.3)
    0x00, 0x01, b't',             // topic name "t"
                                  // followed by 200 payload bytes 'x'
];

/// §2.2.3: a remaining length of 128 or more takes two bytes, least significant group first.
#[test]
fn sec_2_2_3_remaining_length_of_two_bytes() {
    let vector = [PUBLISH_TWO_BYTE_LENGTH_HEAD, &[b'x'; 200]].concat();
    assert_vector(&vector, Packet::Publish(Publish::new(topic("t"), vec![b'x'; 200])));
}

#[rustfmt::skip]
const PUBLISH_BOM_TOPIC: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a', // topic name U+FEFF "a": BOM then 'a' (§1.5.3)
];

/// [MQTT-1.5.3-3]: 0xEF 0xBB 0xBF is U+FEFF and must not be skipped or stripped.
#[test]
fn mqtt_1_5_3_3_bom_in_topic_is_kept() {
    let packet = decode_whole(&mut decoder(), PUBLISH_BOM_TOPIC);
    let Packet::Publish(p) = &packet else { panic!("not a PUBLISH: {packet:?}") };
    assert_eq!(p.topic.as_str(), "\u{feff}a");
    assert_vector(
        PUBLISH_BOM_TOPIC,
        Packet::Publish(Publish::new(topic("\u{feff}a"), Bytes::new())),
    );
}

#[rustfmt::skip]
const PUBACK: &[u8] = &[
    0x40,                         // fixed header: PUBACK (4), reserved flags 0000 (§3.4.1)
    0x02,                         // remaining length 2
    0x00, 0x01,                   // packet identifier 1 (§3.4.2)
];

#[rustfmt::skip]
const PUBREC: &[u8] = &[
    0x50,                         // fixed header: PUBREC (5), reserved flags 0000 (§3.5.1)
    0x02,                         // remaining length 2
    0x00, 0x02,                   // packet identifier 2 (§3.5.2)
];

#[rustfmt::skip]
const PUBREL: &[u8] = &[
    0x62,                         // fixed header: PUBREL (6), reserved flags 0010 (§3.6.1)
    0x02,                         // remaining length 2
    0x00, 0x03,                   // packet identifier 3 (§3.6.2)
];

#[rustfmt::skip]
const PUBCOMP: &[u8] = &[
    0x70,                         // fixed header: PUBCOMP (7), reserved flags 0000 (§3.7.1)
    0x02,                         // remaining length 2
    0xFF, 0xFF,                   // packet identifier 65535 (§3.7.2)
];

/// §3.4: PUBACK.
#[test]
fn sec_3_4_puback() {
    assert_vector(PUBACK, Packet::PubAck(PubAck::new(pid(1))));
}

/// §3.5: PUBREC.
#[test]
fn sec_3_5_pubrec() {
    assert_vector(PUBREC, Packet::PubRec(PubAck::new(pid(2))));
}

/// §3.6: PUBREL, whose fixed header carries flags 0010.
#[test]
fn sec_3_6_pubrel() {
    assert_vector(PUBREL, Packet::PubRel(PubAck::new(pid(3))));
}

/// §3.7: PUBCOMP, with the largest packet identifier.
#[test]
fn sec_3_7_pubcomp() {
    assert_vector(PUBCOMP, Packet::PubComp(PubAck::new(pid(0xFFFF))));
}

#[rustfmt::skip]
const SUBSCRIBE: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE (8), reserved flags 0010 (§3.8.1)
    0x0C,                         // remaining length 12
    0x00, 0x0A,                   // packet identifier 10 (§3.8.2)
    0x00, 0x03, b'a', b'/', b'+', // topic filter "a/+" (§3.8.3)
    0x01,                         // requested QoS 1
    0x00, 0x01, b'#',             // topic filter "#"
    0x02,                         // requested QoS 2
];

/// §3.8: SUBSCRIBE with two topic filter / QoS pairs.
#[test]
fn sec_3_8_subscribe() {
    assert_vector(
        SUBSCRIBE,
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            subscriptions: vec![
                Subscription::new(filter("a/+"), QoS::AtLeastOnce),
                Subscription::new(filter("#"), QoS::ExactlyOnce),
            ],
            properties: SubscribeProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const SUBACK: &[u8] = &[
    0x90,                         // fixed header: SUBACK (9), reserved flags 0000 (§3.9.1)
    0x06,                         // remaining length 6
    0x00, 0x0A,                   // packet identifier 10 (§3.9.2)
    0x00,                         // return code: success, maximum QoS 0 (§3.9.3)
    0x01,                         // return code: success, maximum QoS 1
    0x02,                         // return code: success, maximum QoS 2
    0x80,                         // return code: failure
];

/// §3.9, [MQTT-3.9.3-2]: SUBACK with each of the four allowed return codes.
#[test]
fn sec_3_9_suback_with_every_return_code() {
    assert_vector(
        SUBACK,
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const UNSUBSCRIBE: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE (10), reserved flags 0010 (§3.10.1)
    0x0A,                         // remaining length 10
    0x00, 0x0B,                   // packet identifier 11 (§3.10.2)
    0x00, 0x03, b'a', b'/', b'+', // topic filter "a/+" (§3.10.3)
    0x00, 0x01, b'#',             // topic filter "#"
];

/// §3.10: UNSUBSCRIBE with two topic filters.
#[test]
fn sec_3_10_unsubscribe() {
    assert_vector(
        UNSUBSCRIBE,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(11),
            filters: vec![filter("a/+"), filter("#")],
            properties: UnsubscribeProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const UNSUBACK: &[u8] = &[
    0xB0,                         // fixed header: UNSUBACK (11), reserved flags 0000 (§3.11.1)
    0x02,                         // remaining length 2
    0x00, 0x0B,                   // packet identifier 11 (§3.11.2); no payload (§3.11.3)
];

/// §3.11: UNSUBACK has no payload, so no reason codes.
#[test]
fn sec_3_11_unsuback() {
    assert_vector(
        UNSUBACK,
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(11),
            reason_codes: vec![],
            properties: AckProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const PINGREQ: &[u8] = &[
    0xC0,                         // fixed header: PINGREQ (12), reserved flags 0000 (§3.12.1)
    0x00,                         // remaining length 0
];

#[rustfmt::skip]
const PINGRESP: &[u8] = &[
    0xD0,                         // fixed header: PINGRESP (13), reserved flags 0000 (§3.13.1)
    0x00,                         // remaining length 0
];

#[rustfmt::skip]
const DISCONNECT: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT (14), reserved flags 0000 (§3.14.1)
    0x00,                         // remaining length 0
];

/// §3.12: PINGREQ.
#[test]
fn sec_3_12_pingreq() {
    assert_vector(PINGREQ, Packet::PingReq);
}

/// §3.13: PINGRESP.
#[test]
fn sec_3_13_pingresp() {
    assert_vector(PINGRESP, Packet::PingResp);
}

/// §3.14: DISCONNECT has no variable header and no payload.
#[test]
fn sec_3_14_disconnect() {
    assert_vector(DISCONNECT, Packet::Disconnect(Disconnect::default()));
}

/// §3.14: the 3.1.1 DISCONNECT cannot carry a reason code: one set on the packet is not sent.
#[test]
fn sec_3_14_disconnect_reason_code_is_not_sent_in_3_1_1() {
    let p = Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_encodes_to(&p, V311, DISCONNECT);
}

/// §3.4: MQTT 5 fields of an acknowledgement (reason code, properties) are not sent in 3.1.1.
#[test]
fn sec_3_4_puback_v5_fields_are_not_sent_in_3_1_1() {
    let ack = PubAck {
        packet_id: pid(1),
        reason_code: ReasonCode::NoMatchingSubscribers,
        properties: AckProperties {
            reason_string: Some(s("why")),
            user_properties: vec![(s("k"), s("v"))],
        },
    };
    assert_encodes_to(&Packet::PubAck(ack), V311, PUBACK);
}

/// §2.2.1, table 2.1: type 15 is reserved in 3.1.1, so AUTH cannot be written.
#[test]
fn sec_2_2_1_auth_cannot_be_encoded_in_3_1_1() {
    let mut buf = BytesMut::new();
    let auth = Packet::Auth(Auth::default());
    assert_eq!(auth.encode(V311, &mut buf), Err(EncodeError::NotInVersion(V311)));
    assert!(buf.is_empty());
}

/// [MQTT-3.1.2-22]: the encoder refuses to write a password without a user name in 3.1.1.
#[test]
fn mqtt_3_1_2_22_password_without_user_name_is_not_encoded() {
    let connect =
        Connect { password: Some(Bytes::from_static(b"p")), ..Connect::new(V311, s("ab")) };
    let mut buf = BytesMut::new();
    assert_eq!(Packet::from(connect).encode(V311, &mut buf), Err(EncodeError::NotInVersion(V311)));
    assert!(buf.is_empty());
}

/// Every valid vector of this file, with the decoder that reads it.
fn all_valid_vectors() -> Vec<(&'static [u8], Decoder)> {
    vec![
        (CONNECT_MINIMAL, server()),
        (CONNECT_FULL, server()),
        (CONNECT_EMPTY_CLIENT_ID, server()),
        (CONNECT_MQTT_3_1, server()),
        (CONNACK_ACCEPTED, decoder()),
        (CONNACK_SESSION_PRESENT, decoder()),
        (PUBLISH_QOS0, decoder()),
        (PUBLISH_QOS1_DUP_RETAIN, decoder()),
        (PUBLISH_QOS2_EMPTY_PAYLOAD, decoder()),
        (PUBLISH_BOM_TOPIC, decoder()),
        (PUBACK, decoder()),
        (PUBREC, decoder()),
        (PUBREL, decoder()),
        (PUBCOMP, decoder()),
        (SUBSCRIBE, decoder()),
        (SUBACK, decoder()),
        (UNSUBSCRIBE, decoder()),
        (UNSUBACK, decoder()),
        (PINGREQ, decoder()),
        (PINGRESP, decoder()),
        (DISCONNECT, decoder()),
    ]
}

/// §2.2.3: until the remaining length's worth of bytes has arrived, the decoder waits
/// (`Ok(None)`) and consumes nothing, whatever the cut.
#[test]
fn sec_2_2_3_every_truncated_vector_waits_for_more() {
    for (vector, mut d) in all_valid_vectors() {
        for cut in 0..vector.len() {
            let mut buf = BytesMut::from(&vector[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "{:02x?}", &vector[..cut]);
            assert_eq!(&buf[..], &vector[..cut], "nothing may be consumed");
        }
        // The rest arrives: now it decodes and nothing is left.
        let mut buf = BytesMut::from(&vector[..vector.len() - 1]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&vector[vector.len() - 1..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
    }
}

/// §4.2: packets follow each other on the stream; each decode takes exactly one.
#[test]
fn sec_4_2_packets_back_to_back_decode_in_order() {
    let stream = [CONNECT_MINIMAL, PUBLISH_QOS0, SUBSCRIBE, PINGREQ, DISCONNECT].concat();
    let mut d = server();
    let mut buf = BytesMut::from(&stream[..]);
    let mut types = vec![];
    while let Some(p) = d.decode(&mut buf).unwrap() {
        types.push(p.packet_type());
    }
    assert!(buf.is_empty());
    use PacketType::*;
    assert_eq!(types, [Connect, Publish, Subscribe, PingReq, Disconnect]);
}

// ---------------------------------------------------------------------------------------------
// Fixed header (section 2.2)
// ---------------------------------------------------------------------------------------------

/// Valid vectors of every packet type whose fixed-header flags are fixed, with those flags.
const FIXED_FLAG_VECTORS: &[(&[u8], u8)] = &[
    (CONNECT_MINIMAL, 0b0000),
    (CONNACK_ACCEPTED, 0b0000),
    (PUBACK, 0b0000),
    (PUBREC, 0b0000),
    (PUBREL, 0b0010),
    (PUBCOMP, 0b0000),
    (SUBSCRIBE, 0b0010),
    (SUBACK, 0b0000),
    (UNSUBSCRIBE, 0b0010),
    (UNSUBACK, 0b0000),
    (PINGREQ, 0b0000),
    (PINGRESP, 0b0000),
    (DISCONNECT, 0b0000),
];

/// [MQTT-2.2.2-1], [MQTT-2.2.2-2]: for every type but PUBLISH the flags are fixed (table 2.2);
/// any other value closes the connection. Every wrong value of every type is tried.
#[test]
fn mqtt_2_2_2_2_reserved_flags_are_malformed_for_every_packet_type() {
    for &(vector, flags) in FIXED_FLAG_VECTORS {
        assert_eq!(vector[0] & 0x0F, flags);
        for wrong in (0..16u8).filter(|&f| f != flags) {
            let mut bad = vector.to_vec();
            bad[0] = (vector[0] & 0xF0) | wrong;
            assert_refused(&bad, ErrorKind::InvalidFlags(wrong), ReasonCode::MalformedPacket);
        }
    }
}

#[rustfmt::skip]
const PUBREL_FLAGS_0000: &[u8] = &[
    0x60,                         // fixed header: PUBREL with flags 0000 instead of 0010
    0x02,                         // remaining length 2
    0x00, 0x03,                   // packet identifier 3
];

/// [MQTT-3.6.1-1]: PUBREL flags must be 0010.
#[test]
fn mqtt_3_6_1_1_pubrel_reserved_flags_are_malformed() {
    assert_refused(PUBREL_FLAGS_0000, ErrorKind::InvalidFlags(0), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const SUBSCRIBE_FLAGS_0000: &[u8] = &[
    0x80,                         // fixed header: SUBSCRIBE with flags 0000 instead of 0010
    0x06,                         // remaining length 6
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // requested QoS 0
];

/// [MQTT-3.8.1-1]: SUBSCRIBE flags must be 0010.
#[test]
fn mqtt_3_8_1_1_subscribe_reserved_flags_are_malformed() {
    assert_refused(SUBSCRIBE_FLAGS_0000, ErrorKind::InvalidFlags(0), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const UNSUBSCRIBE_FLAGS_0011: &[u8] = &[
    0xA3,                         // fixed header: UNSUBSCRIBE with flags 0011 instead of 0010
    0x05,                         // remaining length 5
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x01, b'#',             // topic filter "#"
];

/// [MQTT-3.10.1-1]: UNSUBSCRIBE flags must be 0010.
#[test]
fn mqtt_3_10_1_1_unsubscribe_reserved_flags_are_malformed() {
    assert_refused(UNSUBSCRIBE_FLAGS_0011, ErrorKind::InvalidFlags(3), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const DISCONNECT_FLAGS_1000: &[u8] = &[
    0xE8,                         // fixed header: DISCONNECT with flags 1000 instead of 0000
    0x00,                         // remaining length 0
];

/// [MQTT-3.14.1-1]: the server must check DISCONNECT's reserved bits are zero.
#[test]
fn mqtt_3_14_1_1_disconnect_reserved_flags_are_malformed() {
    assert_refused(DISCONNECT_FLAGS_1000, ErrorKind::InvalidFlags(8), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const TYPE_0: &[u8] = &[
    0x00,                         // fixed header: packet type 0, "Reserved, Forbidden" (§2.2.1)
    0x00,                         // remaining length 0
];

/// §2.2.1, table 2.1: packet type 0 is forbidden.
#[test]
fn sec_2_2_1_packet_type_0_is_malformed() {
    assert_refused(TYPE_0, ErrorKind::ReservedPacketType(0), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const TYPE_15: &[u8] = &[
    0xF0,                         // fixed header: packet type 15, "Reserved, Forbidden" in 3.1.1
    0x00,                         // remaining length 0 (an MQTT 5 AUTH would look like this)
];

/// §2.2.1, table 2.1: type 15 (AUTH in MQTT 5) is forbidden in 3.1.1.
#[test]
fn sec_2_2_1_packet_type_15_is_malformed_in_3_1_1() {
    assert_refused(TYPE_15, ErrorKind::ReservedPacketType(15), ReasonCode::MalformedPacket);
    // Also on a connection that speaks MQTT 3.1.
    let mut d = Decoder::new(Some(ProtocolVersion::V3_1), MAX_PACKET_SIZE);
    assert_eq!(decode_error(&mut d, TYPE_15).kind(), &ErrorKind::ReservedPacketType(15));
}

#[rustfmt::skip]
const REMAINING_LENGTH_FIVE_BYTES: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0xFF, 0xFF, 0xFF, 0xFF,       // remaining length: four bytes, all with the continuation bit
    0x7F,                         //   and a fifth byte, which the encoding cannot have (§2.2.3)
];

/// §2.2.3: the remaining length is at most four bytes; a fifth is refused as soon as the fourth
/// continuation bit shows that one would follow.
#[test]
fn sec_2_2_3_remaining_length_with_a_fifth_byte_is_malformed() {
    assert_refused(
        REMAINING_LENGTH_FIVE_BYTES,
        ErrorKind::VarintTooLong,
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        &REMAINING_LENGTH_FIVE_BYTES[..5],
        ErrorKind::VarintTooLong,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBACK_LENGTH_3: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x03,                         // remaining length 3: one more than a 3.1.1 PUBACK holds
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // a byte 3.1.1 has no field for (§3.4.2)
];

/// §3.4.1: a 3.1.1 PUBACK's remaining length is 2; a longer one has bytes no field explains.
#[test]
fn sec_3_4_1_remaining_length_longer_than_the_fields_is_malformed() {
    assert_refused(PUBACK_LENGTH_3, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const CONNECT_TRAILING_BYTE: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15: one byte more than the fields use
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session, no user name, no password
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // stray byte: no flag announces a field here
];

/// [MQTT-3.1.4-1]: a CONNECT must match the format of section 3.1; a byte after the last field
/// the flags announce does not.
#[test]
fn mqtt_3_1_4_1_connect_with_trailing_byte_is_malformed() {
    assert_connect_refused(
        CONNECT_TRAILING_BYTE,
        ErrorKind::TrailingBytes,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const PUBLISH_TOPIC_PAST_END: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x03,                         // remaining length 3
    0x00, 0x05, b'a',             // topic name length 5, but only 1 byte left in the packet
];

/// §2.2.3, §1.5.3: a length prefix that runs past the remaining length is malformed, even though
/// the frame itself is complete.
#[test]
fn sec_2_2_3_field_running_past_the_remaining_length_is_malformed() {
    assert_refused(PUBLISH_TOPIC_PAST_END, ErrorKind::Truncated, ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const PUBACK_TRUNCATED: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x02,                         // remaining length 2
    0x00,                         // first byte of the packet identifier; the second has not come
];

/// §2.2.3: a remaining length larger than the bytes received so far means "wait for more": the
/// decoder returns `Ok(None)` and decodes once the rest arrives.
#[test]
fn sec_2_2_3_remaining_length_larger_than_the_data_waits() {
    let mut d = decoder();
    let mut buf = BytesMut::from(PUBACK_TRUNCATED);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], PUBACK_TRUNCATED);
    buf.extend_from_slice(&[0x01]); // packet identifier LSB
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubAck(PubAck::new(pid(1))))));
    assert!(buf.is_empty());
}

#[rustfmt::skip]
const PINGREQ_WITH_BODY: &[u8] = &[
    0xC0,                         // fixed header: PINGREQ
    0x01,                         // remaining length 1: PINGREQ has no variable header (§3.12.2)
    0x00,                         //   nor payload (§3.12.3)
];

/// §3.12.2, §3.12.3: PINGREQ has neither variable header nor payload.
#[test]
fn sec_3_12_pingreq_with_a_body_is_malformed() {
    assert_refused(PINGREQ_WITH_BODY, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
}

/// §3.13, §3.14, §3.11: PINGRESP and DISCONNECT have no body, UNSUBACK only a packet identifier.
#[test]
fn sec_3_13_bodiless_packets_with_a_body_are_malformed() {
    #[rustfmt::skip]
    let vectors: [&[u8]; 3] = [
        &[0xD0, 0x01, 0x00],             // PINGRESP, remaining length 1, stray byte
        &[0xE0, 0x01, 0x00],             // DISCONNECT, remaining length 1, stray byte (§3.14.2)
        &[0xB0, 0x03, 0x00, 0x01, 0x00], // UNSUBACK, packet identifier 1, stray byte (§3.11.3)
    ];
    for v in vectors {
        assert_refused(v, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
    }
}

/// [MQTT-3.1.0-1]: the first packet from a client must be CONNECT.
#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let e = decode_error(&mut server(), PUBLISH_QOS0);
    assert_eq!(e.kind(), &ErrorKind::NotConnect);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert_eq!(e.packet_type(), Some(PacketType::Publish));
    assert_eq!(e.connect_return_code(), None);
}

// ---------------------------------------------------------------------------------------------
// Data representation (section 1.5.3)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const PUBLISH_TOPIC_INVALID_UTF8: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x03,                         // remaining length 3
    0x00, 0x01, 0xFF,             // topic name: 0xFF, which is never valid in UTF-8
];

/// [MQTT-1.5.3-1]: ill-formed UTF-8 closes the connection.
#[test]
fn mqtt_1_5_3_1_ill_formed_utf8_in_topic_is_malformed() {
    assert_refused(
        PUBLISH_TOPIC_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBLISH_TOPIC_SURROGATE: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x05,                         // remaining length 5
    0x00, 0x03, 0xED, 0xA0, 0x80, // topic name: U+D800 (a surrogate) encoded as if a character
];

/// [MQTT-1.5.3-1]: code points U+D800 to U+DFFF must not be encoded.
#[test]
fn mqtt_1_5_3_1_encoded_surrogate_in_topic_is_malformed() {
    assert_refused(
        PUBLISH_TOPIC_SURROGATE,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_CLIENT_ID_NULL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', 0x00,       // client identifier "a" U+0000
];

/// [MQTT-1.5.3-2], [MQTT-3.1.3-4]: U+0000 in a string (here the client identifier) closes the
/// connection; no CONNACK is owed.
#[test]
fn mqtt_1_5_3_2_null_character_in_client_id_is_malformed() {
    let d = assert_connect_refused(
        CONNECT_CLIENT_ID_NULL,
        ErrorKind::InvalidString(StrError::NullCharacter),
        ReasonCode::MalformedPacket,
        None,
    );
    assert_eq!(d.version(), Some(V311), "the version was read before the bad field");
}

// ---------------------------------------------------------------------------------------------
// CONNECT (section 3.1)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CONNECT_BAD_PROTOCOL_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'X', // protocol name "MQTX": not "MQTT" (§3.1.2.1)
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-1]: with an unknown protocol name the server may disconnect; it owes no CONNACK.
#[test]
fn mqtt_3_1_2_1_unknown_protocol_name_is_refused_without_connack() {
    let d = assert_connect_refused(
        CONNECT_BAD_PROTOCOL_NAME,
        ErrorKind::InvalidProtocolName,
        ReasonCode::UnsupportedProtocolVersion,
        None,
    );
    assert_eq!(d.version(), None);
}

#[rustfmt::skip]
const CONNECT_LEVEL_6: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x06,                         // protocol level 6: not supported (§3.1.2.2)
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-2]: an unsupported protocol level is answered with CONNACK return code 0x01
/// (unacceptable protocol version) before the connection is closed.
#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_is_answered_with_return_code_1() {
    let d = assert_connect_refused(
        CONNECT_LEVEL_6,
        ErrorKind::UnsupportedProtocolLevel(6),
        ReasonCode::UnsupportedProtocolVersion,
        Some(ConnectReturnCode::UnacceptableProtocolVersion),
    );
    assert_eq!(d.version(), None);
    assert_eq!(ConnectReturnCode::UnacceptableProtocolVersion as u8, 0x01);
}

#[rustfmt::skip]
const CONNECT_RESERVED_FLAG: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x03,                         // connect flags: clean session, and reserved bit 0 set
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-3]: the reserved connect flag must be 0, else the client is disconnected.
#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_is_malformed() {
    let d = assert_connect_refused(
        CONNECT_RESERVED_FLAG,
        ErrorKind::ConnectReservedFlag,
        ReasonCode::MalformedPacket,
        None,
    );
    assert_eq!(d.version(), Some(V311), "the version was read before the bad field");
}

#[rustfmt::skip]
const CONNECT_WILL_QOS_WITHOUT_WILL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x0A,                         // connect flags: will QoS 1 (0x08) but will flag 0; clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-11], [MQTT-3.1.2-13]: without the will flag, will QoS must be 0.
#[test]
fn mqtt_3_1_2_13_will_qos_without_will_flag_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_QOS_WITHOUT_WILL,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_RETAIN_WITHOUT_WILL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x22,                         // connect flags: will retain (0x20) but will flag 0; clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-11], [MQTT-3.1.2-15]: without the will flag, will retain must be 0.
#[test]
fn mqtt_3_1_2_15_will_retain_without_will_flag_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_RETAIN_WITHOUT_WILL,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_QOS_3: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x13,                         // remaining length 19
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x1E,                         // connect flags: will QoS 3 (0x18), will flag (0x04), clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'w',             // will topic "w"
    0x00, 0x00,                   // will message, empty
];

/// [MQTT-3.1.2-14]: will QoS must not be 3.
#[test]
fn mqtt_3_1_2_14_will_qos_3_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_QOS_3,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_PASSWORD_WITHOUT_USER_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x11,                         // remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x42,                         // connect flags: password (0x40) without user name; clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'p',             // password "p"
];

/// [MQTT-3.1.2-22]: if the user name flag is 0, the password flag must be 0.
#[test]
fn mqtt_3_1_2_22_password_without_user_name_is_malformed() {
    assert_connect_refused(
        CONNECT_PASSWORD_WITHOUT_USER_NAME,
        ErrorKind::PasswordWithoutUsername,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_CLIENT_ID_PAST_END: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x05, b'a', b'b',       // client identifier of length 5, but only 2 bytes remain
];

/// [MQTT-3.1.3-3], [MQTT-3.1.4-1]: the client identifier must be present in full.
#[test]
fn mqtt_3_1_3_3_client_id_running_past_the_packet_is_malformed() {
    assert_connect_refused(
        CONNECT_CLIENT_ID_PAST_END,
        ErrorKind::Truncated,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_USER_NAME_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x82,                         // connect flags: user name (0x80), clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"; the user name is missing
];

/// [MQTT-3.1.2-19]: if the user name flag is 1, a user name must be present.
#[test]
fn mqtt_3_1_2_19_missing_user_name_is_malformed() {
    assert_connect_refused(
        CONNECT_USER_NAME_MISSING,
        ErrorKind::Truncated,
        ReasonCode::MalformedPacket,
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// CONNACK (section 3.2)
// ---------------------------------------------------------------------------------------------

/// §3.2.2.1: bits 7-1 of the connect acknowledge flags are reserved and must be 0.
#[test]
fn sec_3_2_2_1_connack_reserved_flag_bits_are_malformed() {
    for bit in 1..8 {
        // CONNACK, remaining length 2, flags with one reserved bit set, return code 0.
        let vector = [0x20, 0x02, 1u8 << bit, 0x00];
        assert_refused(&vector, ErrorKind::ConnAckReservedFlags, ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const CONNACK_SESSION_PRESENT_REFUSED: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x02,                         // remaining length 2
    0x01,                         // connect acknowledge flags: session present 1
    0x05,                         // return code 0x05: refused, not authorized
];

/// [MQTT-3.2.2-4]: a CONNACK with a non-zero return code must have session present 0.
#[test]
fn mqtt_3_2_2_4_session_present_with_a_refusal_is_refused() {
    assert_refused(
        CONNACK_SESSION_PRESENT_REFUSED,
        ErrorKind::SessionPresentOnRefusal,
        ReasonCode::ProtocolError,
    );
    for code in 1..=5u8 {
        // CONNACK, remaining length 2, session present 1, a refusal return code.
        let vector = [0x20, 0x02, 0x01, code];
        assert_refused(&vector, ErrorKind::SessionPresentOnRefusal, ReasonCode::ProtocolError);
    }
}

/// [MQTT-3.2.2-4]: the encoder writes session present 0 on a refusal whatever the field says.
#[test]
fn mqtt_3_2_2_4_encoder_clears_session_present_on_a_refusal() {
    let ack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::NotAuthorized,
        properties: ConnAckProperties::default(),
    };
    // CONNACK, remaining length 2, session present 0, return code 0x05.
    assert_encodes_to(&Packet::ConnAck(ack), V311, &[0x20, 0x02, 0x00, 0x05]);
}

#[rustfmt::skip]
const CONNACK_RETURN_CODE_6: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x02,                         // remaining length 2
    0x00,                         // connect acknowledge flags: 0
    0x06,                         // return code 6: "reserved for future use" (§3.2.2.3)
];

/// §3.2.2.3, table 3.1: return codes 6 to 255 are reserved.
#[test]
fn sec_3_2_2_3_connack_reserved_return_codes_are_malformed() {
    assert_refused(
        CONNACK_RETURN_CODE_6,
        ErrorKind::InvalidReasonCode(6),
        ReasonCode::MalformedPacket,
    );
    for code in 6..=255u8 {
        // CONNACK, remaining length 2, flags 0, reserved return code.
        let vector = [0x20, 0x02, 0x00, code];
        assert_refused(&vector, ErrorKind::InvalidReasonCode(code), ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const CONNACK_LENGTH_3: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x03,                         // remaining length 3, but a 3.1.1 CONNACK's is 2 (§3.2.1)
    0x00,                         // connect acknowledge flags: 0
    0x00,                         // return code 0
    0x00,                         // no field: (an MQTT 5 property length would sit here)
];

/// §3.2.1: the remaining length of a 3.1.1 CONNACK is 2.
#[test]
fn sec_3_2_1_connack_longer_than_two_bytes_is_malformed() {
    assert_refused(CONNACK_LENGTH_3, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
}

// ---------------------------------------------------------------------------------------------
// PUBLISH (section 3.3)
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.1-4]: a PUBLISH with both QoS bits set closes the connection, whatever DUP and
/// RETAIN say.
#[test]
fn mqtt_3_3_1_4_publish_qos3_is_malformed() {
    #[rustfmt::skip]
    const PUBLISH_QOS3: &[u8] = &[
        0x36,                     // fixed header: PUBLISH, QoS bits 11 (0x06)
        0x05,                     // remaining length 5
        0x00, 0x01, b't',         // topic name "t"
        0x00, 0x01,               // packet identifier 1
    ];
    assert_refused(PUBLISH_QOS3, ErrorKind::InvalidQoS, ReasonCode::MalformedPacket);
    for first in [0x37, 0x3E, 0x3F] {
        // The same with RETAIN, DUP, and both set.
        let mut v = PUBLISH_QOS3.to_vec();
        v[0] = first;
        assert_refused(&v, ErrorKind::InvalidQoS, ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const PUBLISH_DUP_QOS0: &[u8] = &[
    0x38,                         // fixed header: PUBLISH, DUP 1 (0x08), QoS 0
    0x03,                         // remaining length 3
    0x00, 0x01, b't',             // topic name "t"
];

/// [MQTT-3.3.1-2]: DUP must be 0 for QoS 0 messages.
#[test]
fn mqtt_3_3_1_2_dup_on_qos0_is_refused() {
    assert_refused(PUBLISH_DUP_QOS0, ErrorKind::DupOnQoS0, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const PUBLISH_PACKET_ID_0: &[u8] = &[
    0x32,                         // fixed header: PUBLISH, QoS 1
    0x05,                         // remaining length 5
    0x00, 0x01, b't',             // topic name "t"
    0x00, 0x00,                   // packet identifier 0
];

/// [MQTT-2.3.1-1]: a PUBLISH with QoS > 0 must carry a non-zero packet identifier.
#[test]
fn mqtt_2_3_1_1_publish_packet_id_0_is_refused() {
    assert_refused(PUBLISH_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const SUBSCRIBE_PACKET_ID_0: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x06,                         // remaining length 6
    0x00, 0x00,                   // packet identifier 0
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // requested QoS 0
];

/// [MQTT-2.3.1-1]: SUBSCRIBE must carry a non-zero packet identifier.
#[test]
fn mqtt_2_3_1_1_subscribe_packet_id_0_is_refused() {
    assert_refused(SUBSCRIBE_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const UNSUBSCRIBE_PACKET_ID_0: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x05,                         // remaining length 5
    0x00, 0x00,                   // packet identifier 0
    0x00, 0x01, b'#',             // topic filter "#"
];

/// [MQTT-2.3.1-1]: UNSUBSCRIBE must carry a non-zero packet identifier.
#[test]
fn mqtt_2_3_1_1_unsubscribe_packet_id_0_is_refused() {
    assert_refused(UNSUBSCRIBE_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

/// [MQTT-2.3.1-1], §2.3.1: an acknowledgement carries the identifier of the packet it answers,
/// which cannot be 0.
#[test]
fn mqtt_2_3_1_1_acknowledgement_packet_id_0_is_refused() {
    #[rustfmt::skip]
    let vectors: [&[u8]; 6] = [
        &[0x40, 0x02, 0x00, 0x00],       // PUBACK, packet identifier 0
        &[0x50, 0x02, 0x00, 0x00],       // PUBREC, packet identifier 0
        &[0x62, 0x02, 0x00, 0x00],       // PUBREL, packet identifier 0
        &[0x70, 0x02, 0x00, 0x00],       // PUBCOMP, packet identifier 0
        &[0x90, 0x03, 0x00, 0x00, 0x00], // SUBACK, packet identifier 0, return code 0
        &[0xB0, 0x02, 0x00, 0x00],       // UNSUBACK, packet identifier 0
    ];
    for v in vectors {
        assert_refused(v, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
    }
}

#[rustfmt::skip]
const PUBLISH_TOPIC_PLUS: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x05,                         // remaining length 5
    0x00, 0x03, b'a', b'/', b'+', // topic name "a/+": contains the single-level wildcard
];

#[rustfmt::skip]
const PUBLISH_TOPIC_HASH: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x05,                         // remaining length 5
    0x00, 0x03, b'a', b'/', b'#', // topic name "a/#": contains the multi-level wildcard
];

/// [MQTT-3.3.2-2], [MQTT-4.7.1-1]: a topic name must not contain wildcards.
#[test]
fn mqtt_3_3_2_2_topic_name_with_wildcards_is_refused() {
    for v in [PUBLISH_TOPIC_PLUS, PUBLISH_TOPIC_HASH] {
        let e = refused(v);
        assert!(matches!(e.kind(), ErrorKind::InvalidTopicName(_)), "{:?}", e.kind());
        assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
        assert_eq!(e.packet_type(), Some(PacketType::Publish));
    }
}

#[rustfmt::skip]
const PUBLISH_EMPTY_TOPIC: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x04,                         // remaining length 4
    0x00, 0x00,                   // topic name: zero length
    b'h', b'i',                   // payload "hi"
];

/// [MQTT-4.7.3-1]: a topic name must be at least one character long (3.1.1 has no topic aliases).
#[test]
fn mqtt_4_7_3_1_empty_topic_name_is_refused() {
    assert_refused(
        PUBLISH_EMPTY_TOPIC,
        ErrorKind::InvalidTopicName(TopicError::Empty),
        ReasonCode::TopicNameInvalid,
    );
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE (sections 3.8 to 3.10)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const SUBSCRIBE_NO_FILTERS: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x02,                         // remaining length 2
    0x00, 0x01,                   // packet identifier 1; no payload
];

/// [MQTT-3.8.3-3]: a SUBSCRIBE with no payload is a protocol violation.
#[test]
fn mqtt_3_8_3_3_subscribe_without_filters_is_refused() {
    assert_refused(SUBSCRIBE_NO_FILTERS, ErrorKind::NoTopicFilters, ReasonCode::ProtocolError);
}

/// [MQTT-3.8.3-4]: bits 7-2 of the requested QoS byte are reserved; any set is malformed.
#[test]
fn mqtt_3_8_3_4_subscribe_reserved_option_bits_are_malformed() {
    for bit in 2..8 {
        #[rustfmt::skip]
        let vector = [
            0x82,                 // fixed header: SUBSCRIBE
            0x06,                 // remaining length 6
            0x00, 0x01,           // packet identifier 1
            0x00, 0x01, b'#',     // topic filter "#"
            1u8 << bit,           // requested QoS byte with reserved bit `bit` set
        ];
        assert_refused(
            &vector,
            ErrorKind::SubscriptionOptionsReserved,
            ReasonCode::MalformedPacket,
        );
    }
}

#[rustfmt::skip]
const SUBSCRIBE_QOS3: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x06,                         // remaining length 6
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x01, b'#',             // topic filter "#"
    0x03,                         // requested QoS 3
];

/// [MQTT-3.8.3-4]: a requested QoS other than 0, 1 or 2 is malformed.
#[test]
fn mqtt_3_8_3_4_subscribe_qos3_is_malformed() {
    assert_refused(SUBSCRIBE_QOS3, ErrorKind::InvalidQoS, ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const SUBSCRIBE_HASH_NOT_LAST: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x0A,                         // remaining length 10
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x05, b'a', b'/', b'#', b'/', b'b', // topic filter "a/#/b": '#' is not last
    0x00,                         // requested QoS 0
];

/// [MQTT-4.7.1-2]: the multi-level wildcard must be the last character of the filter.
#[test]
fn mqtt_4_7_1_2_multi_level_wildcard_not_last_is_refused() {
    let e = refused(SUBSCRIBE_HASH_NOT_LAST);
    assert!(matches!(e.kind(), ErrorKind::InvalidTopicFilter(_)), "{:?}", e.kind());
    assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
    assert_eq!(e.packet_type(), Some(PacketType::Subscribe));
}

#[rustfmt::skip]
const SUBSCRIBE_EMPTY_FILTER: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x05,                         // remaining length 5
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x00,                   // topic filter: zero length
    0x00,                         // requested QoS 0
];

/// [MQTT-4.7.3-1]: a topic filter must be at least one character long.
#[test]
fn mqtt_4_7_3_1_empty_topic_filter_is_refused() {
    assert_refused(
        SUBSCRIBE_EMPTY_FILTER,
        ErrorKind::InvalidTopicFilter(TopicError::Empty),
        ReasonCode::TopicFilterInvalid,
    );
}

#[rustfmt::skip]
const UNSUBSCRIBE_NO_FILTERS: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x02,                         // remaining length 2
    0x00, 0x01,                   // packet identifier 1; no payload
];

/// [MQTT-3.10.3-2]: an UNSUBSCRIBE with no payload is a protocol violation.
#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_is_refused() {
    assert_refused(UNSUBSCRIBE_NO_FILTERS, ErrorKind::NoTopicFilters, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const SUBACK_RETURN_CODE_3: &[u8] = &[
    0x90,                         // fixed header: SUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x03,                         // return code 3: reserved (§3.9.3)
];

/// [MQTT-3.9.3-2]: SUBACK return codes other than 0x00, 0x01, 0x02 and 0x80 are reserved; every
/// one of them is refused.
#[test]
fn mqtt_3_9_3_2_suback_reserved_return_codes_are_malformed() {
    assert_refused(
        SUBACK_RETURN_CODE_3,
        ErrorKind::InvalidReasonCode(3),
        ReasonCode::MalformedPacket,
    );
    for code in (0..=255u8).filter(|c| ![0x00, 0x01, 0x02, 0x80].contains(c)) {
        // SUBACK, remaining length 3, packet identifier 1, the return code.
        let vector = [0x90, 0x03, 0x00, 0x01, code];
        assert_refused(&vector, ErrorKind::InvalidReasonCode(code), ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const SUBACK_NO_RETURN_CODES: &[u8] = &[
    0x90,                         // fixed header: SUBACK
    0x02,                         // remaining length 2
    0x00, 0x01,                   // packet identifier 1; no return codes
];

/// [MQTT-3.8.4-5]: a SUBACK carries one return code per topic filter, and a SUBSCRIBE has at
/// least one, so a SUBACK without any is refused.
#[test]
fn mqtt_3_8_4_5_suback_without_return_codes_is_refused() {
    assert_refused(SUBACK_NO_RETURN_CODES, ErrorKind::NoReasonCodes, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const UNSUBSCRIBE_FILTER_NULL: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x06,                         // remaining length 6
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x02, b'a', 0x00,       // topic filter "a" U+0000
];

/// [MQTT-4.7.3-2], [MQTT-1.5.3-2]: topic filters must not include U+0000.
#[test]
fn mqtt_4_7_3_2_null_character_in_topic_filter_is_malformed() {
    assert_refused(
        UNSUBSCRIBE_FILTER_NULL,
        ErrorKind::InvalidString(StrError::NullCharacter),
        ReasonCode::MalformedPacket,
    );
}

/// [MQTT-4.7.3-1]: 3.1.1 has no topic aliases, so an empty topic name cannot be written.
#[test]
fn mqtt_4_7_3_1_empty_topic_name_is_not_encoded() {
    let Packet::Publish(mut p) = decode_whole(&mut decoder(), PUBLISH_QOS0) else {
        panic!("not a PUBLISH")
    };
    // Only a decoded MQTT 5 PUBLISH with a Topic Alias can hold an empty topic name.
    let mut d = Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE);
    #[rustfmt::skip]
    let v5_alias_only: &[u8] = &[
        0x30,                     // fixed header: PUBLISH, QoS 0
        0x06,                     // remaining length 6
        0x00, 0x00,               // topic name: zero length
        0x03,                     // property length 3
        0x23, 0x00, 0x01,         //   Topic Alias 1
    ];
    let Packet::Publish(aliased) = decode_whole(&mut d, v5_alias_only) else {
        panic!("not a PUBLISH")
    };
    p.topic = aliased.topic;
    let mut buf = BytesMut::new();
    assert_eq!(Packet::Publish(p).encode(V311, &mut buf), Err(EncodeError::NotInVersion(V311)));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Fields the flags announce, and the UTF-8 fields (sections 2.3.1, 3.1.2, 3.1.3, 3.3.2, 3.8.3,
// 3.10.3)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const PUBLISH_QOS0_PAYLOAD_LIKE_AN_ID: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x01, b't',             // topic name "t"
    0x00, 0x07, b'x',             // payload 00 07 'x': at QoS 0 no packet identifier follows the
                                  //   topic (§3.3.2.2), so these bytes are payload
];

/// [MQTT-2.3.1-5]: a QoS 0 PUBLISH has no packet identifier: the bytes after the topic are the
/// payload, and the encoder refuses to write an identifier at QoS 0.
#[test]
fn mqtt_2_3_1_5_qos0_publish_has_no_packet_identifier() {
    assert_vector(
        PUBLISH_QOS0_PAYLOAD_LIKE_AN_ID,
        Packet::Publish(Publish::new(topic("t"), &[0x00, 0x07, b'x'][..])),
    );
    let with_id = Publish { packet_id: Some(pid(7)), ..Publish::new(topic("t"), &b"x"[..]) };
    let mut buf = BytesMut::new();
    assert_eq!(
        Packet::Publish(with_id).encode(V311, &mut buf),
        Err(EncodeError::UnexpectedPacketId)
    );
    assert!(buf.is_empty());
}

#[rustfmt::skip]
const CONNECT_WILL_QOS1_RETAIN: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x15,                         // remaining length 21
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x2E,                         // connect flags: will retain (0x20), will QoS 1 (0x08), will flag
                                  //   (0x04), clean session (0x02)
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'w',             // will topic "w" (§3.1.3.2)
    0x00, 0x02, b'h', b'i',       // will message "hi" (§3.1.3.3)
];

#[rustfmt::skip]
const CONNECT_WILL_FIELDS_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x06,                         // connect flags: will flag (0x04), clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"; no will topic, no will message
];

#[rustfmt::skip]
const CONNECT_WILL_MESSAGE_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x11,                         // remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x06,                         // connect flags: will flag, clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'w',             // will topic "w"; the will message is missing
];

/// [MQTT-3.1.2-9]: with the will flag set, the will topic and will message follow the client
/// identifier, and the will QoS and will retain bits give the will's QoS and retain; without
/// either field the CONNECT is malformed.
#[test]
fn mqtt_3_1_2_9_will_flag_means_will_topic_and_message_are_present() {
    assert_connect_vector(
        CONNECT_WILL_QOS1_RETAIN,
        Connect {
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties::default(),
            }),
            ..Connect::new(V311, s("ab"))
        },
    );
    for v in [CONNECT_WILL_FIELDS_MISSING, CONNECT_WILL_MESSAGE_MISSING] {
        assert_connect_refused(v, ErrorKind::Truncated, ReasonCode::MalformedPacket, None);
    }
}

#[rustfmt::skip]
const CONNECT_USER_NAME_WITHOUT_FLAG: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x11,                         // remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x02,                         // connect flags: clean session; user name flag 0
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // a user name the flags do not announce
];

/// [MQTT-3.1.2-18]: with the user name flag 0 there is no user name in the payload; a string
/// where one would be is not read as one but refused as left-over bytes.
#[test]
fn mqtt_3_1_2_18_user_name_flag_0_means_no_user_name() {
    assert_connect_refused(
        CONNECT_USER_NAME_WITHOUT_FLAG,
        ErrorKind::TrailingBytes,
        ReasonCode::MalformedPacket,
        None,
    );
    let mut buf = BytesMut::new();
    Packet::from(Connect::new(V311, s("ab"))).encode(V311, &mut buf).unwrap();
    assert_eq!(buf[9] & 0x80, 0, "user name flag of a CONNECT without a user name");
    assert_eq!(&buf[12..], b"\x00\x02ab", "the payload ends after the client identifier");
}

#[rustfmt::skip]
const CONNECT_PASSWORD_WITHOUT_FLAG: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x14,                         // remaining length 20
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x82,                         // connect flags: user name (0x80), clean session; password 0
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // user name "u"
    0x00, 0x01, b'p',             // a password the flags do not announce
];

/// [MQTT-3.1.2-20]: with the password flag 0 there is no password in the payload.
#[test]
fn mqtt_3_1_2_20_password_flag_0_means_no_password() {
    assert_connect_refused(
        CONNECT_PASSWORD_WITHOUT_FLAG,
        ErrorKind::TrailingBytes,
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_PASSWORD_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x11,                         // remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0xC2,                         // connect flags: user name (0x80), password (0x40), clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // user name "u"; the password is missing
];

#[rustfmt::skip]
const CONNECT_EMPTY_PASSWORD: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x13,                         // remaining length 19
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0xC2,                         // connect flags: user name, password, clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // user name "u"
    0x00, 0x00,                   // password: present, zero bytes long (§3.1.3.5)
];

/// [MQTT-3.1.2-21]: with the password flag 1 a password follows the user name, even an empty
/// one; without it the CONNECT is malformed.
#[test]
fn mqtt_3_1_2_21_password_flag_1_means_a_password() {
    assert_connect_refused(
        CONNECT_PASSWORD_MISSING,
        ErrorKind::Truncated,
        ReasonCode::MalformedPacket,
        None,
    );
    assert_connect_vector(
        CONNECT_EMPTY_PASSWORD,
        Connect {
            username: Some(s("u")),
            password: Some(Bytes::new()),
            ..Connect::new(V311, s("ab"))
        },
    );
}

#[rustfmt::skip]
const CONNECT_WILL_TOPIC_INVALID_UTF8: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x14,                         // remaining length 20
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x06,                         // connect flags: will flag, clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x02, 0xC3, 0x28,       // will topic: C3 starts a two-byte sequence, 28 cannot go on it
    0x00, 0x00,                   // will message, empty
];

/// [MQTT-3.1.3-10]: the will topic is a UTF-8 encoded string; ill-formed UTF-8 there is
/// malformed.
#[test]
fn mqtt_3_1_3_10_will_topic_must_be_utf8() {
    assert_connect_refused(
        CONNECT_WILL_TOPIC_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const CONNECT_USER_NAME_SURROGATE: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x13,                         // remaining length 19
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x04,                         // protocol level 4
    0x82,                         // connect flags: user name, clean session
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x03, 0xED, 0xA0, 0x80, // user name: U+D800 (a surrogate) encoded as if a character
];

/// [MQTT-3.1.3-11]: the user name is a UTF-8 encoded string; ill-formed UTF-8 there is
/// malformed.
#[test]
fn mqtt_3_1_3_11_user_name_must_be_utf8() {
    assert_connect_refused(
        CONNECT_USER_NAME_SURROGATE,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
        None,
    );
}

#[rustfmt::skip]
const PUBLISH_NO_TOPIC: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x00,                         // remaining length 0: no topic name at all
];

#[rustfmt::skip]
const PUBLISH_TOPIC_OVERLONG_UTF8: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x05,                         // remaining length 5
    0x00, 0x02, 0xC0, 0xAF,       // topic name: '/' in an over-long two-byte form, not UTF-8
    b'x',                         // payload "x"
];

#[rustfmt::skip]
const PUBLISH_QOS1_TOPIC_FIRST: &[u8] = &[
    0x32,                         // fixed header: PUBLISH, QoS 1
    0x07,                         // remaining length 7
    0x00, 0x03, b'a', b'/', b'b', // topic name "a/b": the first field of the variable header
    0x00, 0x2A,                   // packet identifier 42, after the topic name
];

/// [MQTT-3.3.2-1]: the topic name is the first field of the PUBLISH variable header, it must be
/// there, and it is a UTF-8 encoded string.
#[test]
fn mqtt_3_3_2_1_topic_name_is_present_first_and_utf8() {
    assert_vector(
        PUBLISH_QOS1_TOPIC_FIRST,
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            packet_id: Some(pid(42)),
            ..Publish::new(topic("a/b"), Bytes::new())
        }),
    );
    assert_refused(PUBLISH_NO_TOPIC, ErrorKind::Truncated, ReasonCode::MalformedPacket);
    assert_refused(
        PUBLISH_TOPIC_OVERLONG_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const SUBSCRIBE_MULTIBYTE_FILTER: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x09,                         // remaining length 9
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x04, 0xC3, 0xA4, b'/', b'#', // topic filter "ä/#": 'ä' is two bytes in UTF-8
    0x01,                         // requested QoS 1
];

#[rustfmt::skip]
const SUBSCRIBE_FILTER_INVALID_UTF8: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x07,                         // remaining length 7
    0x00, 0x01,                   // packet identifier 1
    0x00, 0x02, 0xC0, 0x80,       // topic filter: U+0000 in an over-long form, not UTF-8
    0x00,                         // requested QoS 0
];

/// [MQTT-3.8.3-1]: SUBSCRIBE topic filters are UTF-8 encoded strings: a multi-byte character is
/// read as one, and ill-formed UTF-8 is malformed.
#[test]
fn mqtt_3_8_3_1_subscribe_topic_filters_are_utf8() {
    assert_vector(
        SUBSCRIBE_MULTIBYTE_FILTER,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            subscriptions: vec![Subscription::new(filter("ä/#"), QoS::AtLeastOnce)],
            properties: SubscribeProperties::default(),
        }),
    );
    assert_refused(
        SUBSCRIBE_FILTER_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const UNSUBSCRIBE_THREE_FILTERS: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x0E,                         // remaining length 14
    0x00, 0x05,                   // packet identifier 5
    0x00, 0x02, 0xC3, 0xA4,       // topic filter "ä"
    0x00, 0x01, b'+',             // topic filter "+", right after the first
    0x00, 0x03, b'a', b'/', b'b', // topic filter "a/b", right after the second
];

#[rustfmt::skip]
const UNSUBSCRIBE_SECOND_FILTER_INVALID_UTF8: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x08,                         // remaining length 8
    0x00, 0x05,                   // packet identifier 5
    0x00, 0x01, b'a',             // topic filter "a"
    0x00, 0x01, 0xFF,             // topic filter: 0xFF, which is never valid in UTF-8
];

/// [MQTT-3.10.3-1]: UNSUBSCRIBE topic filters are UTF-8 encoded strings packed one after the
/// other: each is read in turn, and an ill-formed one anywhere is malformed.
#[test]
fn mqtt_3_10_3_1_unsubscribe_filters_are_packed_utf8_strings() {
    assert_vector(
        UNSUBSCRIBE_THREE_FILTERS,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(5),
            filters: vec![filter("ä"), filter("+"), filter("a/b")],
            properties: UnsubscribeProperties::default(),
        }),
    );
    assert_refused(
        UNSUBSCRIBE_SECOND_FILTER_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

/// Mosquitto's bridge flag: protocol level 0x84 is MQTT 3.1.1 from another broker's bridge,
/// read and written as such (not a protocol level of its own).
#[test]
fn the_bridge_flag_is_the_protocol_level_s_top_bit() {
    #[rustfmt::skip]
    const BRIDGE: &[u8] = &[
        0x10, 0x0E,                   // CONNECT, remaining length 14
        0x00, 0x04, b'M', b'Q', b'T', b'T',
        0x84,                         // protocol level 4 with the bridge bit
        0x00,                         // flags: persistent session
        0x00, 0x3C,                   // keep alive 60
        0x00, 0x02, b'b', b'r',       // client id "br"
    ];
    let mut expected = Connect::new(V311, s("br"));
    expected.clean_start = false;
    expected.bridge = true;
    assert_connect_vector(BRIDGE, expected);
}
