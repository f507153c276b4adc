//! Conformance vectors for MQTT 5.0 (OASIS Standard, 7 March 2019).
//!
//! Every vector is written out by hand, byte by byte, from the specification's packet layouts;
//! none is produced by the encoder. Each byte or field carries a comment naming it and the
//! section it comes from. A valid vector must decode to exactly the packet built field by field
//! in the test, encode back to exactly the same bytes, and `encoded_len` must agree; where the
//! specification allows a longer form of the same packet (an acknowledgement that spells out a
//! Success reason code or an empty property length) the longer form must decode to the same
//! value, while the encoder writes the shortest. An invalid vector must be refused with the
//! exact [`ErrorKind`] and the reason code the receiver sends in its DISCONNECT or CONNACK.
//!
//! Tests are named after the normative statement they check (`mqtt_3_3_1_4_...` for
//! [MQTT-3.3.1-4]) or, where the specification states the rule without a statement number, after
//! its section (`sec_3_8_3_1_...` for section 3.8.3.1).

use bytes::{Bytes, BytesMut};
use std::num::{NonZeroU16, NonZeroU32};
use ternmq_core::codec::*;
use ternmq_core::topic::{TopicFilter, TopicName};

const V5: ProtocolVersion = ProtocolVersion::V5;

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

fn nz16(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).expect("non-zero")
}

fn nz32(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).expect("non-zero")
}

fn user(k: &'static str, v: &'static str) -> UserProperty {
    (s(k), s(v))
}

/// A decoder on a connection whose version is already known to be MQTT 5.
fn decoder() -> Decoder {
    Decoder::new(Some(V5), MAX_PACKET_SIZE)
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

fn assert_encodes_to(packet: &Packet, bytes: &[u8]) {
    let mut buf = BytesMut::new();
    let written = packet.encode(V5, &mut buf).expect("a valid packet encodes");
    assert_eq!(&buf[..], bytes, "encoding of {packet:?}");
    assert_eq!(written, bytes.len(), "bytes reported written");
    assert_eq!(packet.encoded_len(V5), Ok(bytes.len()), "encoded_len");
}

/// A valid vector on an MQTT 5 connection: decodes to `expected`, which encodes back to it.
fn assert_vector(bytes: &[u8], expected: Packet) {
    assert_decodes_to(bytes, &expected);
    assert_encodes_to(&expected, bytes);
}

/// A valid vector that is not the encoder's form: it must still decode to `expected`.
fn assert_decodes_to(bytes: &[u8], expected: &Packet) {
    let packet = decode_whole(&mut decoder(), bytes);
    assert_eq!(&packet, expected, "{bytes:02x?}");
}

/// A valid CONNECT, read by a server that learns the protocol version from it.
fn assert_connect_vector(bytes: &[u8], expected: Connect) {
    let mut d = server();
    let packet = decode_whole(&mut d, bytes);
    assert_eq!(d.version(), Some(V5), "version learnt from CONNECT");
    let expected = Packet::from(expected);
    assert_eq!(packet, expected);
    assert_encodes_to(&expected, bytes);
}

fn decode_error(decoder: &mut Decoder, bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decoder.decode(&mut buf) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} was not refused: {p:?}"),
    }
}

/// Decodes `bytes` on an established MQTT 5 connection and returns the error.
fn refused(bytes: &[u8]) -> DecodeError {
    decode_error(&mut decoder(), bytes)
}

/// An invalid vector on an established MQTT 5 connection.
fn assert_refused(bytes: &[u8], kind: ErrorKind, reason: ReasonCode) {
    let e = refused(bytes);
    assert_eq!(e.kind(), &kind, "{bytes:02x?}");
    assert_eq!(e.reason_code(), reason, "{bytes:02x?}");
    let expected_type = match kind {
        ErrorKind::ReservedPacketType(_) => None,
        _ => PacketType::from_u8(bytes[0] >> 4),
    };
    assert_eq!(e.packet_type(), expected_type, "{bytes:02x?}");
}

/// An invalid CONNECT read by a fresh server decoder, which learns MQTT 5 from it before the
/// error (so that the CONNACK it owes is written in MQTT 5).
fn assert_connect_refused(bytes: &[u8], kind: ErrorKind, reason: ReasonCode) {
    let mut d = server();
    let e = decode_error(&mut d, bytes);
    assert_eq!(e.kind(), &kind);
    assert_eq!(e.reason_code(), reason);
    assert_eq!(e.packet_type(), Some(PacketType::Connect));
    assert_eq!(e.connect_return_code(), None, "no 3.1.1 CONNACK for an MQTT 5 CONNECT");
    assert_eq!(d.version(), Some(V5));
}

// ---------------------------------------------------------------------------------------------
// CONNECT (section 3.1)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CONNECT_MINIMAL: &[u8] = &[
    0x10,                         // fixed header: CONNECT (1), reserved flags 0000 (§3.1.1)
    0x0F,                         // remaining length 15 (§2.1.4)
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT" (§3.1.2.1)
    0x05,                         // protocol version 5 (§3.1.2.2)
    0x02,                         // connect flags: clean start (§3.1.2.3, §3.1.2.4)
    0x00, 0x3C,                   // keep alive 60 s (§3.1.2.10)
    0x00,                         // property length 0 (§3.1.2.11.1, [MQTT-2.2.2-1])
    0x00, 0x02, b'a', b'b',       // client identifier "ab" (§3.1.3.1)
];

/// §3.1, [MQTT-2.2.2-1]: a CONNECT without properties still carries a property length of 0.
#[test]
fn mqtt_2_2_2_1_connect_minimal() {
    assert_connect_vector(CONNECT_MINIMAL, Connect::new(V5, s("ab")));
}

#[rustfmt::skip]
const CONNECT_FULL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x68,                         // remaining length 104
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x76,                         // connect flags: password (0x40), will retain (0x20),
                                  //   will QoS 2 (0x10), will flag (0x04), clean start (0x02);
                                  //   no user name (§3.1.2.9: allowed in MQTT 5)
    0x00, 0x1E,                   // keep alive 30 s
    0x28,                         // property length 40 (§3.1.2.11)
    0x11, 0x00, 0x00, 0x0E, 0x10, //   Session Expiry Interval 3600 (§3.1.2.11.2)
    0x21, 0x00, 0x14,             //   Receive Maximum 20 (§3.1.2.11.3)
    0x27, 0x00, 0x00, 0x10, 0x00, //   Maximum Packet Size 4096 (§3.1.2.11.4)
    0x22, 0x00, 0x05,             //   Topic Alias Maximum 5 (§3.1.2.11.5)
    0x19, 0x01,                   //   Request Response Information 1 (§3.1.2.11.6)
    0x17, 0x00,                   //   Request Problem Information 0 (§3.1.2.11.7)
    0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // Authentication Method "SCRAM" (§3.1.2.11.9)
    0x16, 0x00, 0x02, 0x01, 0x02, //   Authentication Data 01 02 (§3.1.2.11.10)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.1.2.11.8)
    0x00, 0x01, b'c',             // client identifier "c" (§3.1.3.1)
    0x25,                         // will property length 37 (§3.1.3.2.1)
    0x18, 0x00, 0x00, 0x00, 0x05, //   Will Delay Interval 5 (§3.1.3.2.2)
    0x01, 0x01,                   //   Payload Format Indicator 1, UTF-8 (§3.1.3.2.3)
    0x02, 0x00, 0x00, 0x00, 0x3C, //   Message Expiry Interval 60 (§3.1.3.2.4)
    0x03, 0x00, 0x04, b't', b'e', b'x', b't', // Content Type "text" (§3.1.3.2.5)
    0x08, 0x00, 0x03, b'r', b'/', b't', // Response Topic "r/t" (§3.1.3.2.6)
    0x09, 0x00, 0x02, 0xAB, 0xCD, //   Correlation Data AB CD (§3.1.3.2.7)
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // User Property ("a", "b") (§3.1.3.2.8)
    0x00, 0x01, b'w',             // will topic "w" (§3.1.3.3)
    0x00, 0x02, b'h', b'i',       // will payload "hi" (§3.1.3.4)
    0x00, 0x03, b'p', b'w', b'd', // password "pwd" (§3.1.3.6)
];

/// [MQTT-3.1.3-1]: every CONNECT and Will property, and the payload fields in order.
#[test]
fn mqtt_3_1_3_1_connect_with_every_property_and_a_will() {
    assert_connect_vector(
        CONNECT_FULL,
        Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 30,
            client_id: s("c"),
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(60),
                    content_type: Some(s("text")),
                    response_topic: Some(topic("r/t")),
                    correlation_data: Some(Bytes::from_static(&[0xAB, 0xCD])),
                    user_properties: vec![user("a", "b")],
                },
            }),
            username: None,
            password: Some(Bytes::from_static(b"pwd")),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(nz16(20)),
                maximum_packet_size: Some(nz32(4096)),
                topic_alias_maximum: Some(5),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![user("k", "v")],
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[0x01, 0x02])),
            },
            bridge: false,
        },
    );
}

#[rustfmt::skip]
const CONNECT_PASSWORD_WITHOUT_USER_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x12,                         // remaining length 18
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x42,                         // connect flags: password (0x40), no user name; clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'p',             // password "p"
];

/// [MQTT-3.1.2-18], [MQTT-3.1.2-19], §3.1.2.9: MQTT 5 allows a password without a user name.
#[test]
fn mqtt_3_1_2_19_password_without_user_name_is_valid() {
    assert_connect_vector(
        CONNECT_PASSWORD_WITHOUT_USER_NAME,
        Connect { password: Some(Bytes::from_static(b"p")), ..Connect::new(V5, s("ab")) },
    );
}

#[rustfmt::skip]
const CONNECT_BAD_PROTOCOL_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'm', b'q', b't', b't', // protocol name "mqtt": not capitalized (§3.1.2.1)
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-1]: the protocol name must be "MQTT"; the server may answer 0x84 (Unsupported
/// Protocol Version) and must close the connection.
#[test]
fn mqtt_3_1_2_1_wrong_protocol_name_is_refused() {
    let mut d = server();
    let e = decode_error(&mut d, CONNECT_BAD_PROTOCOL_NAME);
    assert_eq!(e.kind(), &ErrorKind::InvalidProtocolName);
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(e.packet_type(), Some(PacketType::Connect));
    assert_eq!(d.version(), None);
}

#[rustfmt::skip]
const CONNECT_RESERVED_FLAG: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x03,                         // connect flags: clean start, and the reserved bit 0 set
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-3]: the reserved connect flag must be 0; if not, it is a Malformed Packet.
#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_is_malformed() {
    assert_connect_refused(
        CONNECT_RESERVED_FLAG,
        ErrorKind::ConnectReservedFlag,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_QOS_WITHOUT_WILL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x0A,                         // connect flags: will QoS 1 (0x08) but will flag 0; clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-11]: if the will flag is 0, will QoS must be 0.
#[test]
fn mqtt_3_1_2_11_will_qos_without_will_flag_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_QOS_WITHOUT_WILL,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_RETAIN_WITHOUT_WILL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x22,                         // connect flags: will retain (0x20) but will flag 0; clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-13]: if the will flag is 0, will retain must be 0.
#[test]
fn mqtt_3_1_2_13_will_retain_without_will_flag_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_RETAIN_WITHOUT_WILL,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_QOS_3: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x15,                         // remaining length 21
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x1E,                         // connect flags: will QoS 3 (0x18), will flag (0x04), clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // will property length 0
    0x00, 0x01, b'w',             // will topic "w"
    0x00, 0x00,                   // will payload, empty
];

/// [MQTT-3.1.2-12]: will QoS is 0, 1 or 2; "a value of 3 (0x03) is a Malformed Packet".
#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_QOS_3,
        ErrorKind::InvalidWillFlags,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_CLIENT_ID_NULL: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', 0x00,       // client identifier "a" U+0000
];

/// [MQTT-1.5.4-2], [MQTT-3.1.3-4]: U+0000 in a UTF-8 string is a Malformed Packet.
#[test]
fn mqtt_1_5_4_2_null_character_in_client_id_is_malformed() {
    assert_connect_refused(
        CONNECT_CLIENT_ID_NULL,
        ErrorKind::InvalidString(StrError::NullCharacter),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_TOPIC_ALIAS: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x12,                         // remaining length 18
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x03,                         // property length 3
    0x23, 0x00, 0x01,             //   Topic Alias 1: a PUBLISH property, not a CONNECT one
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// §2.2.2.2: "A Control Packet which contains an Identifier which is not valid for its packet
/// type ... is a Malformed Packet" (table 2-4: Topic Alias belongs to PUBLISH only).
#[test]
fn sec_2_2_2_2_topic_alias_in_connect_is_malformed() {
    assert_connect_refused(
        CONNECT_TOPIC_ALIAS,
        ErrorKind::PropertyNotAllowed(property_id::TOPIC_ALIAS),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_SUBSCRIPTION_ID: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x17,                         // remaining length 23
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag (0x04), clean start (0x02)
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x02,                         // will property length 2
    0x0B, 0x01,                   //   Subscription Identifier 1: not a Will property
    0x00, 0x01, b'w',             // will topic "w"
    0x00, 0x00,                   // will payload, empty
];

/// §2.2.2.2, §3.1.3.2: Subscription Identifier is not one of the Will Properties.
#[test]
fn sec_2_2_2_2_subscription_identifier_in_will_properties_is_malformed() {
    assert_connect_refused(
        CONNECT_WILL_SUBSCRIPTION_ID,
        ErrorKind::PropertyNotAllowed(property_id::SUBSCRIPTION_IDENTIFIER),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_WILL_TWO_MESSAGE_EXPIRY: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x1F,                         // remaining length 31
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x0A,                         // will property length 10
    0x02, 0x00, 0x00, 0x00, 0x01, //   Message Expiry Interval 1
    0x02, 0x00, 0x00, 0x00, 0x02, //   Message Expiry Interval 2, a second time
    0x00, 0x01, b'w',             // will topic "w"
    0x00, 0x00,                   // will payload, empty
];

/// §3.1.3.2.4: "It is a Protocol Error to include the Message Expiry Interval more than once."
#[test]
fn sec_3_1_3_2_4_will_message_expiry_twice_is_a_protocol_error() {
    assert_connect_refused(
        CONNECT_WILL_TWO_MESSAGE_EXPIRY,
        ErrorKind::DuplicateProperty(property_id::MESSAGE_EXPIRY_INTERVAL),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNECT_RECEIVE_MAXIMUM_0: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x12,                         // remaining length 18
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x03,                         // property length 3
    0x21, 0x00, 0x00,             //   Receive Maximum 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// §3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value more than once or
/// for it to have the value 0."
#[test]
fn sec_3_1_2_11_3_receive_maximum_0_is_a_protocol_error() {
    assert_connect_refused(
        CONNECT_RECEIVE_MAXIMUM_0,
        ErrorKind::InvalidPropertyValue(property_id::RECEIVE_MAXIMUM),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNECT_MAXIMUM_PACKET_SIZE_0: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x14,                         // remaining length 20
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x05,                         // property length 5
    0x27, 0x00, 0x00, 0x00, 0x00, //   Maximum Packet Size 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// §3.1.2.11.4: "It is a Protocol Error to include the Maximum Packet Size more than once, or for
/// the value to be set to zero."
#[test]
fn sec_3_1_2_11_4_maximum_packet_size_0_is_a_protocol_error() {
    assert_connect_refused(
        CONNECT_MAXIMUM_PACKET_SIZE_0,
        ErrorKind::InvalidPropertyValue(property_id::MAXIMUM_PACKET_SIZE),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNECT_REQUEST_PROBLEM_INFORMATION_2: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x11,                         // remaining length 17
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x02,                         // property length 2
    0x17, 0x02,                   //   Request Problem Information 2
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// §3.1.2.11.7: "It is a Protocol Error to include Request Problem Information more than once,
/// or to have a value other than 0 or 1."
#[test]
fn sec_3_1_2_11_7_request_problem_information_2_is_a_protocol_error() {
    assert_connect_refused(
        CONNECT_REQUEST_PROBLEM_INFORMATION_2,
        ErrorKind::InvalidPropertyValue(property_id::REQUEST_PROBLEM_INFORMATION),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNECT_AUTH_DATA_WITHOUT_METHOD: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x13,                         // remaining length 19
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x04,                         // property length 4
    0x16, 0x00, 0x01, 0x00,       //   Authentication Data 00, without an Authentication Method
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is no
/// Authentication Method."
#[test]
fn sec_3_1_2_11_10_authentication_data_without_method_is_a_protocol_error() {
    assert_connect_refused(
        CONNECT_AUTH_DATA_WITHOUT_METHOD,
        ErrorKind::AuthDataWithoutMethod,
        ReasonCode::ProtocolError,
    );
}

// ---------------------------------------------------------------------------------------------
// CONNACK (section 3.2)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CONNACK_MINIMAL: &[u8] = &[
    0x20,                         // fixed header: CONNACK (2), reserved flags 0000 (§3.2.1)
    0x03,                         // remaining length 3
    0x00,                         // connect acknowledge flags: session present 0 (§3.2.2.1)
    0x00,                         // reason code 0x00 Success (§3.2.2.2)
    0x00,                         // property length 0 (§3.2.2.3.1)
];

/// §3.2: CONNACK accepting the connection, no properties.
#[test]
fn sec_3_2_connack_minimal() {
    assert_vector(CONNACK_MINIMAL, Packet::ConnAck(ConnAck::default()));
}

#[rustfmt::skip]
const CONNACK_FULL: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x42,                         // remaining length 66
    0x01,                         // connect acknowledge flags: session present 1 (§3.2.2.1.1)
    0x00,                         // reason code 0x00 Success
    0x3F,                         // property length 63 (§3.2.2.3)
    0x11, 0x00, 0x00, 0x00, 0x78, //   Session Expiry Interval 120 (§3.2.2.3.2)
    0x21, 0x00, 0x0A,             //   Receive Maximum 10 (§3.2.2.3.3)
    0x24, 0x01,                   //   Maximum QoS 1 (§3.2.2.3.4)
    0x25, 0x00,                   //   Retain Available 0 (§3.2.2.3.5)
    0x27, 0x00, 0x01, 0x00, 0x00, //   Maximum Packet Size 65536 (§3.2.2.3.6)
    0x12, 0x00, 0x03, b'x', b'y', b'z', // Assigned Client Identifier "xyz" (§3.2.2.3.7)
    0x22, 0x00, 0x0A,             //   Topic Alias Maximum 10 (§3.2.2.3.8)
    0x1F, 0x00, 0x02, b'o', b'k', //   Reason String "ok" (§3.2.2.3.9)
    0x28, 0x01,                   //   Wildcard Subscription Available 1 (§3.2.2.3.11)
    0x29, 0x00,                   //   Subscription Identifiers Available 0 (§3.2.2.3.12)
    0x2A, 0x01,                   //   Shared Subscription Available 1 (§3.2.2.3.13)
    0x13, 0x00, 0x78,             //   Server Keep Alive 120 (§3.2.2.3.14)
    0x1A, 0x00, 0x01, b'r',       //   Response Information "r" (§3.2.2.3.15)
    0x1C, 0x00, 0x01, b's',       //   Server Reference "s" (§3.2.2.3.16)
    0x15, 0x00, 0x01, b'm',       //   Authentication Method "m" (§3.2.2.3.17)
    0x16, 0x00, 0x01, 0xFF,       //   Authentication Data FF (§3.2.2.3.18)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.2.2.3.10)
];

/// §3.2.2.3: every CONNACK property.
#[test]
fn sec_3_2_2_3_connack_with_every_property() {
    assert_vector(
        CONNACK_FULL,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(nz16(10)),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(nz32(65536)),
                assigned_client_identifier: Some(s("xyz")),
                topic_alias_maximum: Some(10),
                reason_string: Some(s("ok")),
                user_properties: vec![user("k", "v")],
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(120),
                response_information: Some(s("r")),
                server_reference: Some(s("s")),
                authentication_method: Some(s("m")),
                authentication_data: Some(Bytes::from_static(&[0xFF])),
            },
        }),
    );
}

#[rustfmt::skip]
const CONNACK_NOT_AUTHORIZED: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x03,                         // remaining length 3
    0x00,                         // connect acknowledge flags: session present 0 ([MQTT-3.2.2-6])
    0x87,                         // reason code 0x87 Not authorized
    0x00,                         // property length 0
];

/// [MQTT-3.2.2-6]: a refusal has session present 0.
#[test]
fn mqtt_3_2_2_6_connack_refusal() {
    assert_vector(
        CONNACK_NOT_AUTHORIZED,
        Packet::ConnAck(ConnAck { reason_code: ReasonCode::NotAuthorized, ..ConnAck::default() }),
    );
}

/// [MQTT-3.2.2-1]: bits 7-1 of the connect acknowledge flags are reserved and must be 0.
#[test]
fn mqtt_3_2_2_1_connack_reserved_flag_bits_are_malformed() {
    for bit in 1..8 {
        // CONNACK, remaining length 3, flags with one reserved bit, Success, property length 0.
        let vector = [0x20, 0x03, 1u8 << bit, 0x00, 0x00];
        assert_refused(&vector, ErrorKind::ConnAckReservedFlags, ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const CONNACK_SESSION_PRESENT_REFUSED: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x03,                         // remaining length 3
    0x01,                         // connect acknowledge flags: session present 1
    0x80,                         // reason code 0x80 Unspecified error
    0x00,                         // property length 0
];

/// [MQTT-3.2.2-6]: a CONNACK with a non-zero reason code must have session present 0.
#[test]
fn mqtt_3_2_2_6_session_present_with_a_refusal_is_refused() {
    assert_refused(
        CONNACK_SESSION_PRESENT_REFUSED,
        ErrorKind::SessionPresentOnRefusal,
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNACK_NO_PROPERTY_LENGTH: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x02,                         // remaining length 2: the 3.1.1 form
    0x00,                         // connect acknowledge flags: 0
    0x00,                         // reason code Success; the property length is missing
];

/// §3.2.2.3.1, [MQTT-2.2.2-1]: an MQTT 5 CONNACK always has a property length.
#[test]
fn mqtt_2_2_2_1_connack_without_property_length_is_malformed() {
    assert_refused(CONNACK_NO_PROPERTY_LENGTH, ErrorKind::Truncated, ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const CONNACK_RECEIVE_MAXIMUM_0: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x06,                         // remaining length 6
    0x00,                         // connect acknowledge flags: 0
    0x00,                         // reason code Success
    0x03,                         // property length 3
    0x21, 0x00, 0x00,             //   Receive Maximum 0
];

/// §3.2.2.3.3: "It is a Protocol Error to include the Receive Maximum value more than once or
/// for it to have the value 0."
#[test]
fn sec_3_2_2_3_3_connack_receive_maximum_0_is_a_protocol_error() {
    assert_refused(
        CONNACK_RECEIVE_MAXIMUM_0,
        ErrorKind::InvalidPropertyValue(property_id::RECEIVE_MAXIMUM),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const CONNACK_MAXIMUM_QOS_2: &[u8] = &[
    0x20,                         // fixed header: CONNACK
    0x05,                         // remaining length 5
    0x00,                         // connect acknowledge flags: 0
    0x00,                         // reason code Success
    0x02,                         // property length 2
    0x24, 0x02,                   //   Maximum QoS 2
];

/// §3.2.2.3.4: "It is a Protocol Error to include Maximum QoS more than once, or to have a value
/// other than 0 or 1."
#[test]
fn sec_3_2_2_3_4_maximum_qos_2_is_a_protocol_error() {
    assert_refused(
        CONNACK_MAXIMUM_QOS_2,
        ErrorKind::InvalidPropertyValue(property_id::MAXIMUM_QOS),
        ReasonCode::ProtocolError,
    );
}

/// [MQTT-3.2.2-9]: a server that supports QoS 2 does not send Maximum QoS, so the encoder
/// refuses Maximum QoS 2.
#[test]
fn mqtt_3_2_2_9_maximum_qos_2_is_not_encoded() {
    let ack = ConnAck {
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..ConnAckProperties::default()
        },
        ..ConnAck::default()
    };
    let mut buf = BytesMut::new();
    assert!(matches!(
        Packet::ConnAck(ack).encode(V5, &mut buf),
        Err(EncodeError::InvalidPropertyValue(_))
    ));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// PUBLISH (section 3.3)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const PUBLISH_QOS0: &[u8] = &[
    0x30,                         // fixed header: PUBLISH (3), DUP 0, QoS 0, RETAIN 0 (§3.3.1)
    0x08,                         // remaining length 8
    0x00, 0x03, b'a', b'/', b'b', // topic name "a/b" (§3.3.2.1); no packet identifier at QoS 0
    0x00,                         // property length 0 (§3.3.2.3.1)
    b'h', b'i',                   // payload "hi" (§3.3.3)
];

/// §3.3: a QoS 0 PUBLISH without properties.
#[test]
fn sec_3_3_publish_qos0() {
    assert_vector(PUBLISH_QOS0, Packet::Publish(Publish::new(topic("a/b"), &b"hi"[..])));
}

#[rustfmt::skip]
const PUBLISH_FULL: &[u8] = &[
    0x33,                         // fixed header: PUBLISH, DUP 0, QoS 1 (0x02), RETAIN 1 (0x01)
    0x35,                         // remaining length 53
    0x00, 0x01, b't',             // topic name "t"
    0x00, 0x05,                   // packet identifier 5 (§3.3.2.2)
    0x2E,                         // property length 46
    0x01, 0x01,                   //   Payload Format Indicator 1, UTF-8 (§3.3.2.3.2)
    0x02, 0x00, 0x00, 0x00, 0x0A, //   Message Expiry Interval 10 (§3.3.2.3.3)
    0x23, 0x00, 0x07,             //   Topic Alias 7 (§3.3.2.3.4)
    0x08, 0x00, 0x03, b'r', b'/', b's', // Response Topic "r/s" (§3.3.2.3.5)
    0x09, 0x00, 0x01, 0x2A,       //   Correlation Data 2A (§3.3.2.3.6)
    0x0B, 0x01,                   //   Subscription Identifier 1 (§3.3.2.3.8)
    0x0B, 0x80, 0x01,             //   Subscription Identifier 128 (two-byte VBI, §1.5.5)
    0x03, 0x00, 0x04, b'j', b's', b'o', b'n', // Content Type "json" (§3.3.2.3.9)
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1', // User Property ("a", "1") (§3.3.2.3.7)
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // User Property ("a", "2"): same name again
    b'x',                         // payload "x"
];

/// §3.3.2.3: every PUBLISH property.
#[test]
fn sec_3_3_2_3_publish_with_every_property() {
    assert_vector(
        PUBLISH_FULL,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: topic("t"),
            packet_id: Some(pid(5)),
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(10),
                topic_alias: Some(nz16(7)),
                response_topic: Some(topic("r/s")),
                correlation_data: Some(Bytes::from_static(&[0x2A])),
                user_properties: vec![user("a", "1"), user("a", "2")],
                subscription_identifiers: vec![nz32(1), nz32(128)],
                content_type: Some(s("json")),
            },
            payload: Bytes::from_static(b"x"),
        }),
    );
}

#[rustfmt::skip]
const PUBLISH_ALIAS_EMPTY_TOPIC: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x07,                         // remaining length 7
    0x00, 0x00,                   // topic name: zero length, replaced by the alias (§3.3.2.3.4)
    0x03,                         // property length 3
    0x23, 0x00, 0x01,             //   Topic Alias 1
    b'p',                         // payload "p"
];

/// §3.3.2.1, §3.3.2.3.4: a zero-length topic name is valid when a Topic Alias is present.
#[test]
fn sec_3_3_2_3_4_empty_topic_with_topic_alias_is_valid() {
    let packet = decode_whole(&mut decoder(), PUBLISH_ALIAS_EMPTY_TOPIC);
    let Packet::Publish(p) = &packet else { panic!("not a PUBLISH: {packet:?}") };
    assert_eq!(p.topic.as_str(), "");
    assert_eq!(p.properties.topic_alias, Some(nz16(1)));
    assert_eq!(p.payload, Bytes::from_static(b"p"));
    assert_encodes_to(&packet, PUBLISH_ALIAS_EMPTY_TOPIC);
}

#[rustfmt::skip]
const PUBLISH_USER_PROPERTIES: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x19,                         // remaining length 25
    0x00, 0x01, b't',             // topic name "t"
    0x15,                         // property length 21
    0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'1', // User Property ("b", "1")
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // User Property ("a", "2")
    0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'3', // User Property ("b", "3"): name "b" again
                                  // empty payload
];

/// [MQTT-3.3.2-17], [MQTT-3.3.2-18], §3.3.2.3.7: User Properties may repeat, names included,
/// and keep their order.
#[test]
fn mqtt_3_3_2_18_user_properties_repeat_and_keep_their_order() {
    assert_vector(
        PUBLISH_USER_PROPERTIES,
        Packet::Publish(Publish {
            properties: PublishProperties {
                user_properties: vec![user("b", "1"), user("a", "2"), user("b", "3")],
                ..PublishProperties::default()
            },
            ..Publish::new(topic("t"), Bytes::new())
        }),
    );
}

#[rustfmt::skip]
const PUBLISH_SUBSCRIPTION_IDS: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x0A,                         // remaining length 10
    0x00, 0x01, b't',             // topic name "t"
    0x06,                         // property length 6
    0x0B, 0x02,                   //   Subscription Identifier 2
    0x0B, 0x01,                   //   Subscription Identifier 1
    0x0B, 0x02,                   //   Subscription Identifier 2 again (§3.3.4: identical ids
                                  //   when several subscriptions share one)
];

/// [MQTT-3.3.4-4]: a PUBLISH from the server carries the Subscription Identifiers of all the
/// matching subscriptions; several, even equal ones, are valid.
#[test]
fn mqtt_3_3_4_4_publish_with_several_subscription_identifiers() {
    assert_vector(
        PUBLISH_SUBSCRIPTION_IDS,
        Packet::Publish(Publish {
            properties: PublishProperties {
                subscription_identifiers: vec![nz32(2), nz32(1), nz32(2)],
                ..PublishProperties::default()
            },
            ..Publish::new(topic("t"), Bytes::new())
        }),
    );
}

#[rustfmt::skip]
const PUBLISH_BOM_TOPIC: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x07,                         // remaining length 7
    0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a', // topic name U+FEFF "a" (§1.5.4)
    0x00,                         // property length 0
];

/// [MQTT-1.5.4-3]: 0xEF 0xBB 0xBF is U+FEFF and must not be skipped or stripped.
#[test]
fn mqtt_1_5_4_3_bom_in_topic_is_kept() {
    assert_vector(
        PUBLISH_BOM_TOPIC,
        Packet::Publish(Publish::new(topic("\u{feff}a"), Bytes::new())),
    );
}

/// [MQTT-3.3.1-4]: "If a Server or Client receives a PUBLISH packet which has both QoS bits set
/// to 1 it is a Malformed Packet."
#[test]
fn mqtt_3_3_1_4_publish_qos3_is_malformed() {
    #[rustfmt::skip]
    const PUBLISH_QOS3: &[u8] = &[
        0x36,                     // fixed header: PUBLISH, QoS bits 11 (0x06)
        0x06,                     // remaining length 6
        0x00, 0x01, b't',         // topic name "t"
        0x00, 0x01,               // packet identifier 1
        0x00,                     // property length 0
    ];
    assert_refused(PUBLISH_QOS3, ErrorKind::InvalidQoS, ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const PUBLISH_DUP_QOS0: &[u8] = &[
    0x38,                         // fixed header: PUBLISH, DUP 1 (0x08), QoS 0
    0x04,                         // remaining length 4
    0x00, 0x01, b't',             // topic name "t"
    0x00,                         // property length 0
];

/// [MQTT-3.3.1-2]: DUP must be 0 for all QoS 0 messages.
#[test]
fn mqtt_3_3_1_2_dup_on_qos0_is_refused() {
    assert_refused(PUBLISH_DUP_QOS0, ErrorKind::DupOnQoS0, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const PUBLISH_PACKET_ID_0: &[u8] = &[
    0x32,                         // fixed header: PUBLISH, QoS 1
    0x06,                         // remaining length 6
    0x00, 0x01, b't',             // topic name "t"
    0x00, 0x00,                   // packet identifier 0
    0x00,                         // property length 0
];

/// [MQTT-2.2.1-3], [MQTT-2.2.1-4]: a PUBLISH with QoS > 0 has a non-zero packet identifier.
#[test]
fn mqtt_2_2_1_3_publish_packet_id_0_is_refused() {
    assert_refused(PUBLISH_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const PUBLISH_TOPIC_PLUS: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x03, b'a', b'/', b'+', // topic name "a/+": single-level wildcard
    0x00,                         // property length 0
];

#[rustfmt::skip]
const PUBLISH_TOPIC_HASH: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x04,                         // remaining length 4
    0x00, 0x01, b'#',             // topic name "#": multi-level wildcard
    0x00,                         // property length 0
];

/// [MQTT-3.3.2-2], [MQTT-4.7.0-1]: wildcards must not be used within a topic name.
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
const PUBLISH_EMPTY_TOPIC_NO_ALIAS: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x04,                         // remaining length 4
    0x00, 0x00,                   // topic name: zero length
    0x00,                         // property length 0: no Topic Alias
    b'h',                         // payload "h"
];

/// §3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no Topic
/// Alias."
#[test]
fn sec_3_3_2_1_empty_topic_without_topic_alias_is_a_protocol_error() {
    assert_refused(
        PUBLISH_EMPTY_TOPIC_NO_ALIAS,
        ErrorKind::EmptyTopicWithoutAlias,
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const PUBLISH_TOPIC_ALIAS_0: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x07,                         // remaining length 7
    0x00, 0x01, b't',             // topic name "t"
    0x03,                         // property length 3
    0x23, 0x00, 0x00,             //   Topic Alias 0
];

/// [MQTT-3.3.2-8] and §3.3.4: "A Topic Alias value of 0 or greater than the Maximum Topic Alias
/// is a Protocol Error, the receiver uses DISCONNECT with Reason Code of 0x94 (Topic Alias
/// invalid)".
#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_topic_alias_invalid() {
    assert_refused(PUBLISH_TOPIC_ALIAS_0, ErrorKind::TopicAliasZero, ReasonCode::TopicAliasInvalid);
}

#[rustfmt::skip]
const PUBLISH_TOPIC_INVALID_UTF8: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x04,                         // remaining length 4
    0x00, 0x01, 0xC3,             // topic name: 0xC3 starts a two-byte sequence that never ends
    0x00,                         // property length 0
];

/// [MQTT-1.5.4-1], [MQTT-3.3.2-1]: "If the Client or Server receives an MQTT Control Packet
/// containing ill-formed UTF-8 it is a Malformed Packet."
#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_in_topic_is_malformed() {
    assert_refused(
        PUBLISH_TOPIC_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBLISH_TOPIC_SURROGATE: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x03, 0xED, 0xA0, 0x80, // topic name: U+D800, a surrogate, encoded as a character
    0x00,                         // property length 0
];

/// [MQTT-1.5.4-1]: "the character data MUST NOT include encodings of code points between U+D800
/// and U+DFFF".
#[test]
fn mqtt_1_5_4_1_encoded_surrogate_in_topic_is_malformed() {
    assert_refused(
        PUBLISH_TOPIC_SURROGATE,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBLISH_WILL_DELAY: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x09,                         // remaining length 9
    0x00, 0x01, b't',             // topic name "t"
    0x05,                         // property length 5
    0x18, 0x00, 0x00, 0x00, 0x05, //   Will Delay Interval 5: a Will property, not a PUBLISH one
];

/// §2.2.2.2: a property not valid for the packet type is a Malformed Packet.
#[test]
fn sec_2_2_2_2_will_delay_in_publish_is_malformed() {
    assert_refused(
        PUBLISH_WILL_DELAY,
        ErrorKind::PropertyNotAllowed(property_id::WILL_DELAY_INTERVAL),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBLISH_TWO_MESSAGE_EXPIRY: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x0E,                         // remaining length 14
    0x00, 0x01, b't',             // topic name "t"
    0x0A,                         // property length 10
    0x02, 0x00, 0x00, 0x00, 0x01, //   Message Expiry Interval 1
    0x02, 0x00, 0x00, 0x00, 0x02, //   Message Expiry Interval 2, a second time
];

/// §2.2.2.2, §3.3.2.3.3: a single-valued property may appear once (see the report: the PUBLISH
/// section does not repeat the sentence its Will counterpart has).
#[test]
fn sec_3_3_2_3_3_message_expiry_twice_is_a_protocol_error() {
    assert_refused(
        PUBLISH_TWO_MESSAGE_EXPIRY,
        ErrorKind::DuplicateProperty(property_id::MESSAGE_EXPIRY_INTERVAL),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const PUBLISH_SUBSCRIPTION_ID_0: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x01, b't',             // topic name "t"
    0x02,                         // property length 2
    0x0B, 0x00,                   //   Subscription Identifier 0
];

/// §3.3.2.3.8: "It is a Protocol Error if the Subscription Identifier has a value of 0."
#[test]
fn sec_3_3_2_3_8_subscription_identifier_0_in_publish_is_a_protocol_error() {
    assert_refused(
        PUBLISH_SUBSCRIPTION_ID_0,
        ErrorKind::InvalidPropertyValue(property_id::SUBSCRIPTION_IDENTIFIER),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const PUBLISH_PAYLOAD_FORMAT_2: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x06,                         // remaining length 6
    0x00, 0x01, b't',             // topic name "t"
    0x02,                         // property length 2
    0x01, 0x02,                   //   Payload Format Indicator 2: only 0 and 1 are defined
];

/// §3.3.2.3.2: the Payload Format Indicator is 0 or 1.
#[test]
fn sec_3_3_2_3_2_payload_format_indicator_2_is_refused() {
    assert_refused(
        PUBLISH_PAYLOAD_FORMAT_2,
        ErrorKind::InvalidPropertyValue(property_id::PAYLOAD_FORMAT_INDICATOR),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const PUBLISH_RESPONSE_TOPIC_WILDCARD: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x09,                         // remaining length 9
    0x00, 0x01, b't',             // topic name "t"
    0x05,                         // property length 5
    0x08, 0x00, 0x02, b'a', b'#', //   Response Topic "a#": contains a wildcard
];

/// [MQTT-3.3.2-14]: the Response Topic must not contain wildcard characters.
#[test]
fn mqtt_3_3_2_14_response_topic_with_wildcard_is_refused() {
    assert_refused(
        PUBLISH_RESPONSE_TOPIC_WILDCARD,
        ErrorKind::InvalidPropertyValue(property_id::RESPONSE_TOPIC),
        ReasonCode::ProtocolError,
    );
}

// ---------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.4 to 3.7)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const PUBACK_SHORT: &[u8] = &[
    0x40,                         // fixed header: PUBACK (4), reserved flags 0000 (§3.4.1)
    0x02,                         // remaining length 2: Success, no properties (§3.4.2.1)
    0x00, 0x01,                   // packet identifier 1
];

#[rustfmt::skip]
const PUBACK_SUCCESS_SPELLED_OUT: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code 0x00 Success; property length omitted (§3.4.2.2.1)
];

#[rustfmt::skip]
const PUBACK_EMPTY_PROPERTIES: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x04,                         // remaining length 4
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code 0x00 Success
    0x00,                         // property length 0
];

/// §3.4.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is 0x00
/// (Success) and there are no Properties"; the encoder writes that shortest form, and the longer
/// forms decode to the same value.
#[test]
fn sec_3_4_2_1_puback_success_in_every_form() {
    let expected = Packet::PubAck(PubAck::new(pid(1)));
    assert_vector(PUBACK_SHORT, expected.clone());
    assert_decodes_to(PUBACK_SUCCESS_SPELLED_OUT, &expected);
    assert_decodes_to(PUBACK_EMPTY_PROPERTIES, &expected);
}

#[rustfmt::skip]
const PUBACK_REASON: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x03,                         // remaining length 3: a reason code, no property length
    0x00, 0x01,                   // packet identifier 1
    0x10,                         // reason code 0x10 No matching subscribers
];

#[rustfmt::skip]
const PUBACK_REASON_EMPTY_PROPERTIES: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x04,                         // remaining length 4
    0x00, 0x01,                   // packet identifier 1
    0x10,                         // reason code 0x10 No matching subscribers
    0x00,                         // property length 0
];

/// §3.4.2.2.1: "If the Remaining Length is less than 4 there is no Property Length and the value
/// of 0 is used."
#[test]
fn sec_3_4_2_2_1_puback_reason_code_without_properties() {
    let expected = Packet::PubAck(PubAck {
        reason_code: ReasonCode::NoMatchingSubscribers,
        ..PubAck::new(pid(1))
    });
    assert_vector(PUBACK_REASON, expected.clone());
    assert_decodes_to(PUBACK_REASON_EMPTY_PROPERTIES, &expected);
}

#[rustfmt::skip]
const PUBACK_WITH_PROPERTIES: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x11,                         // remaining length 17
    0x00, 0x01,                   // packet identifier 1
    0x80,                         // reason code 0x80 Unspecified error
    0x0D,                         // property length 13 (§3.4.2.2)
    0x1F, 0x00, 0x03, b'b', b'a', b'd', // Reason String "bad" (§3.4.2.2.2)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.4.2.2.3)
];

/// §3.4.2.2: PUBACK with a Reason String and a User Property.
#[test]
fn sec_3_4_2_2_puback_with_properties() {
    assert_vector(
        PUBACK_WITH_PROPERTIES,
        Packet::PubAck(PubAck {
            packet_id: pid(1),
            reason_code: ReasonCode::UnspecifiedError,
            properties: AckProperties {
                reason_string: Some(s("bad")),
                user_properties: vec![user("k", "v")],
            },
        }),
    );
}

#[rustfmt::skip]
const PUBREC_SHORT: &[u8] = &[
    0x50,                         // fixed header: PUBREC (5), reserved flags 0000 (§3.5.1)
    0x02,                         // remaining length 2: Success, no properties (§3.5.2.1)
    0x00, 0x02,                   // packet identifier 2
];

#[rustfmt::skip]
const PUBREC_IN_USE: &[u8] = &[
    0x50,                         // fixed header: PUBREC
    0x03,                         // remaining length 3
    0x00, 0x02,                   // packet identifier 2
    0x91,                         // reason code 0x91 Packet Identifier in use
];

/// §3.5: PUBREC in its shortest forms; the longer Success forms decode to the same value.
#[test]
fn sec_3_5_2_1_pubrec() {
    let ok = Packet::PubRec(PubAck::new(pid(2)));
    assert_vector(PUBREC_SHORT, ok.clone());
    // PUBREC, remaining length 3, packet identifier 2, reason code Success.
    assert_decodes_to(&[0x50, 0x03, 0x00, 0x02, 0x00], &ok);
    // PUBREC, remaining length 4, packet identifier 2, Success, property length 0.
    assert_decodes_to(&[0x50, 0x04, 0x00, 0x02, 0x00, 0x00], &ok);
    assert_vector(
        PUBREC_IN_USE,
        Packet::PubRec(PubAck {
            reason_code: ReasonCode::PacketIdentifierInUse,
            ..PubAck::new(pid(2))
        }),
    );
}

#[rustfmt::skip]
const PUBREL_SHORT: &[u8] = &[
    0x62,                         // fixed header: PUBREL (6), reserved flags 0010 (§3.6.1)
    0x02,                         // remaining length 2: Success, no properties (§3.6.2.1)
    0x00, 0x03,                   // packet identifier 3
];

#[rustfmt::skip]
const PUBREL_NOT_FOUND: &[u8] = &[
    0x62,                         // fixed header: PUBREL
    0x03,                         // remaining length 3
    0x00, 0x03,                   // packet identifier 3
    0x92,                         // reason code 0x92 Packet Identifier not found
];

/// §3.6: PUBREL in its shortest forms; the longer Success forms decode to the same value.
#[test]
fn sec_3_6_2_1_pubrel() {
    let ok = Packet::PubRel(PubAck::new(pid(3)));
    assert_vector(PUBREL_SHORT, ok.clone());
    // PUBREL, remaining length 3, packet identifier 3, reason code Success.
    assert_decodes_to(&[0x62, 0x03, 0x00, 0x03, 0x00], &ok);
    // PUBREL, remaining length 4, packet identifier 3, Success, property length 0.
    assert_decodes_to(&[0x62, 0x04, 0x00, 0x03, 0x00, 0x00], &ok);
    assert_vector(
        PUBREL_NOT_FOUND,
        Packet::PubRel(PubAck {
            reason_code: ReasonCode::PacketIdentifierNotFound,
            ..PubAck::new(pid(3))
        }),
    );
}

#[rustfmt::skip]
const PUBCOMP_SHORT: &[u8] = &[
    0x70,                         // fixed header: PUBCOMP (7), reserved flags 0000 (§3.7.1)
    0x02,                         // remaining length 2: Success, no properties (§3.7.2.1)
    0x00, 0x04,                   // packet identifier 4
];

#[rustfmt::skip]
const PUBCOMP_NOT_FOUND_WITH_REASON: &[u8] = &[
    0x70,                         // fixed header: PUBCOMP
    0x0A,                         // remaining length 10
    0x00, 0x04,                   // packet identifier 4
    0x92,                         // reason code 0x92 Packet Identifier not found
    0x06,                         // property length 6
    0x1F, 0x00, 0x03, b'g', b'o', b'n', // Reason String "gon" (§3.7.2.2.2)
];

/// §3.7: PUBCOMP in its shortest forms; the longer Success forms decode to the same value.
#[test]
fn sec_3_7_2_1_pubcomp() {
    let ok = Packet::PubComp(PubAck::new(pid(4)));
    assert_vector(PUBCOMP_SHORT, ok.clone());
    // PUBCOMP, remaining length 3, packet identifier 4, reason code Success.
    assert_decodes_to(&[0x70, 0x03, 0x00, 0x04, 0x00], &ok);
    // PUBCOMP, remaining length 4, packet identifier 4, Success, property length 0.
    assert_decodes_to(&[0x70, 0x04, 0x00, 0x04, 0x00, 0x00], &ok);
    assert_vector(
        PUBCOMP_NOT_FOUND_WITH_REASON,
        Packet::PubComp(PubAck {
            packet_id: pid(4),
            reason_code: ReasonCode::PacketIdentifierNotFound,
            properties: AckProperties { reason_string: Some(s("gon")), user_properties: vec![] },
        }),
    );
}

#[rustfmt::skip]
const PUBACK_PACKET_ID_NOT_FOUND: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x92,                         // reason code 0x92: a PUBREL/PUBCOMP code, not a PUBACK one
];

/// [MQTT-3.4.2-1]: the sender of a PUBACK must use one of the PUBACK reason codes (table 3-4).
#[test]
fn mqtt_3_4_2_1_puback_reason_code_0x92_is_refused() {
    assert_refused(
        PUBACK_PACKET_ID_NOT_FOUND,
        ErrorKind::InvalidReasonCode(0x92),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBREC_DISCONNECT_WITH_WILL: &[u8] = &[
    0x50,                         // fixed header: PUBREC
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x04,                         // reason code 0x04: a DISCONNECT code, not a PUBREC one
];

/// [MQTT-3.5.2-1]: the sender of a PUBREC must use one of the PUBREC reason codes (table 3-5).
#[test]
fn mqtt_3_5_2_1_pubrec_reason_code_0x04_is_refused() {
    assert_refused(
        PUBREC_DISCONNECT_WITH_WILL,
        ErrorKind::InvalidReasonCode(0x04),
        ReasonCode::MalformedPacket,
    );
}

/// [MQTT-2.2.1-5], [MQTT-2.2.1-6]: an acknowledgement carries the identifier of the packet it
/// answers, which is never 0.
#[test]
fn mqtt_2_2_1_5_acknowledgement_packet_id_0_is_refused() {
    #[rustfmt::skip]
    let vectors: [&[u8]; 6] = [
        &[0x40, 0x02, 0x00, 0x00],             // PUBACK, packet identifier 0
        &[0x50, 0x02, 0x00, 0x00],             // PUBREC, packet identifier 0
        &[0x62, 0x02, 0x00, 0x00],             // PUBREL, packet identifier 0
        &[0x70, 0x02, 0x00, 0x00],             // PUBCOMP, packet identifier 0
        &[0x90, 0x04, 0x00, 0x00, 0x00, 0x00], // SUBACK, packet id 0, no properties, Success
        &[0xB0, 0x04, 0x00, 0x00, 0x00, 0x00], // UNSUBACK, packet id 0, no properties, Success
    ];
    for v in vectors {
        assert_refused(v, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
    }
}

#[rustfmt::skip]
const PUBACK_SESSION_EXPIRY: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x09,                         // remaining length 9
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x05,                         // property length 5
    0x11, 0x00, 0x00, 0x00, 0x01, //   Session Expiry Interval 1: not a PUBACK property
];

/// §2.2.2.2, §3.4.2.2: PUBACK allows only Reason String and User Property.
#[test]
fn sec_2_2_2_2_session_expiry_in_puback_is_malformed() {
    assert_refused(
        PUBACK_SESSION_EXPIRY,
        ErrorKind::PropertyNotAllowed(property_id::SESSION_EXPIRY_INTERVAL),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBACK_UNKNOWN_PROPERTY: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x06,                         // remaining length 6
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x02,                         // property length 2
    0x05, 0x00,                   //   identifier 5: not assigned in table 2-4
];

#[rustfmt::skip]
const PUBACK_PROPERTY_128: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x07,                         // remaining length 7
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x03,                         // property length 3
    0x80, 0x01,                   //   identifier 128, as a two-byte VBI (§2.2.2.2): unassigned
    0x00,                         //   a value byte
];

/// §2.2.2.2: an identifier not valid for the packet type is a Malformed Packet; identifiers are
/// Variable Byte Integers, so one beyond a byte is read as such and refused.
#[test]
fn sec_2_2_2_2_unknown_property_is_malformed() {
    assert_refused(
        PUBACK_UNKNOWN_PROPERTY,
        ErrorKind::UnknownProperty(5),
        ReasonCode::MalformedPacket,
    );
    assert_refused(
        PUBACK_PROPERTY_128,
        ErrorKind::UnknownProperty(128),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBACK_TWO_REASON_STRINGS: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x0C,                         // remaining length 12
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x08,                         // property length 8
    0x1F, 0x00, 0x01, b'a',       //   Reason String "a"
    0x1F, 0x00, 0x01, b'b',       //   Reason String "b", a second time
];

/// §3.4.2.2.2: "It is a Protocol Error to include the Reason String more than once."
#[test]
fn sec_3_4_2_2_2_reason_string_twice_is_a_protocol_error() {
    assert_refused(
        PUBACK_TWO_REASON_STRINGS,
        ErrorKind::DuplicateProperty(property_id::REASON_STRING),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const PUBACK_USER_PROPERTY_INVALID_UTF8: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x0B,                         // remaining length 11
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x07,                         // property length 7
    0x26,                         //   User Property
    0x00, 0x01, 0xFF,             //     name: 0xFF, not UTF-8
    0x00, 0x01, b'v',             //     value "v"
];

/// [MQTT-1.5.7-1]: both strings of a pair must be valid UTF-8 strings, else it is a Malformed
/// Packet.
#[test]
fn mqtt_1_5_7_1_user_property_with_invalid_utf8_is_malformed() {
    assert_refused(
        PUBACK_USER_PROPERTY_INVALID_UTF8,
        ErrorKind::InvalidString(StrError::InvalidUtf8),
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBACK_PROPERTIES_PAST_END: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x04,                         // remaining length 4
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x05,                         // property length 5, but the packet ends here
];

#[rustfmt::skip]
const PUBACK_PROPERTY_PAST_PROPERTY_LENGTH: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x08,                         // remaining length 8
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x02,                         // property length 2: covers only the next two bytes
    0x1F, 0x00,                   //   Reason String whose length prefix is cut by the property
    0x01, b'a',                   //   length; these bytes lie outside the properties
];

/// §2.1.4, §2.2.2.1: a field that runs past the remaining length, or a property that runs past
/// the property length, is malformed even though the frame is complete.
#[test]
fn sec_2_2_2_1_field_running_past_its_length_is_malformed() {
    assert_refused(PUBACK_PROPERTIES_PAST_END, ErrorKind::Truncated, ReasonCode::MalformedPacket);
    assert_refused(
        PUBACK_PROPERTY_PAST_PROPERTY_LENGTH,
        ErrorKind::Truncated,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PUBACK_TRAILING_BYTE: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x05,                         // remaining length 5
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x00,                         // property length 0
    0xFF,                         // a byte after the last field (§3.4.3: no payload)
];

/// §2.1.4, §3.4.3: PUBACK has no payload; bytes after its properties are malformed.
#[test]
fn sec_3_4_3_puback_with_trailing_byte_is_malformed() {
    assert_refused(PUBACK_TRAILING_BYTE, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK (sections 3.8, 3.9)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const SUBSCRIBE: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE (8), reserved flags 0010 (§3.8.1)
    0x1F,                         // remaining length 31
    0x00, 0x0A,                   // packet identifier 10 (§3.8.2)
    0x09,                         // property length 9 (§3.8.2.1)
    0x0B, 0x05,                   //   Subscription Identifier 5 (§3.8.2.1.2)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.8.2.1.3)
    0x00, 0x03, b'a', b'/', b'+', // topic filter "a/+" (§3.8.3)
    0x2D,                         // subscription options (§3.8.3.1): retain handling 2 (0x20),
                                  //   retain as published (0x08), no local (0x04), QoS 1
    0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', // "$share/g/x"
    0x12,                         // subscription options: retain handling 1 (0x10), QoS 2
];

/// §3.8: SUBSCRIBE with properties, every subscription option, and a shared subscription.
#[test]
fn sec_3_8_subscribe_with_every_option() {
    assert_vector(
        SUBSCRIBE,
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            subscriptions: vec![
                Subscription {
                    filter: filter("a/+"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                },
                Subscription {
                    filter: filter("$share/g/x"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendOnNewSubscribe,
                    },
                },
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(nz32(5)),
                user_properties: vec![user("k", "v")],
            },
        }),
    );
}

#[rustfmt::skip]
const SUBSCRIBE_LARGEST_SUBSCRIPTION_ID: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x0C,                         // remaining length 12
    0x00, 0x01,                   // packet identifier 1
    0x05,                         // property length 5
    0x0B, 0xFF, 0xFF, 0xFF, 0x7F, //   Subscription Identifier 268,435,455: four-byte VBI (§1.5.5)
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // subscription options: QoS 0
];

/// §3.8.2.1.2: the Subscription Identifier goes up to 268,435,455.
#[test]
fn sec_3_8_2_1_2_largest_subscription_identifier() {
    assert_vector(
        SUBSCRIBE_LARGEST_SUBSCRIPTION_ID,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            subscriptions: vec![Subscription::new(filter("#"), QoS::AtMostOnce)],
            properties: SubscribeProperties {
                subscription_identifier: Some(nz32(MAX_SUBSCRIPTION_ID)),
                user_properties: vec![],
            },
        }),
    );
    assert_eq!(MAX_SUBSCRIPTION_ID, 268_435_455);
}

#[rustfmt::skip]
const SUBSCRIBE_NO_FILTERS: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0; no payload
];

/// [MQTT-3.8.3-2]: "A SUBSCRIBE packet with no Payload is a Protocol Error."
#[test]
fn mqtt_3_8_3_2_subscribe_without_filters_is_a_protocol_error() {
    assert_refused(SUBSCRIBE_NO_FILTERS, ErrorKind::NoTopicFilters, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const SUBSCRIBE_PACKET_ID_0: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x07,                         // remaining length 7
    0x00, 0x00,                   // packet identifier 0
    0x00,                         // property length 0
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // subscription options: QoS 0
];

/// [MQTT-2.2.1-3]: SUBSCRIBE carries a non-zero packet identifier.
#[test]
fn mqtt_2_2_1_3_subscribe_packet_id_0_is_refused() {
    assert_refused(SUBSCRIBE_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

/// [MQTT-3.8.3-5]: bits 6 and 7 of the subscription options are reserved; set, they make the
/// SUBSCRIBE malformed.
#[test]
fn mqtt_3_8_3_5_subscribe_reserved_option_bits_are_malformed() {
    for reserved in [0x40u8, 0x80, 0xC0] {
        #[rustfmt::skip]
        let vector = [
            0x82,                 // fixed header: SUBSCRIBE
            0x07,                 // remaining length 7
            0x00, 0x01,           // packet identifier 1
            0x00,                 // property length 0
            0x00, 0x01, b'#',     // topic filter "#"
            reserved,             // subscription options with reserved bits 6/7 set
        ];
        assert_refused(
            &vector,
            ErrorKind::SubscriptionOptionsReserved,
            ReasonCode::MalformedPacket,
        );
    }
}

#[rustfmt::skip]
const SUBSCRIBE_RETAIN_HANDLING_3: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x07,                         // remaining length 7
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0
    0x00, 0x01, b'#',             // topic filter "#"
    0x30,                         // subscription options: retain handling 3
];

/// §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
#[test]
fn sec_3_8_3_1_retain_handling_3_is_a_protocol_error() {
    assert_refused(
        SUBSCRIBE_RETAIN_HANDLING_3,
        ErrorKind::InvalidRetainHandling,
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const SUBSCRIBE_QOS_3: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x07,                         // remaining length 7
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0
    0x00, 0x01, b'#',             // topic filter "#"
    0x03,                         // subscription options: maximum QoS 3
];

/// §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3." (In 3.1.1 the
/// same byte is malformed, [MQTT-3.8.3-4] of that version; in MQTT 5 bits 0-1 are not reserved
/// bits, so [MQTT-3.8.3-5] does not apply.)
#[test]
fn sec_3_8_3_1_subscription_maximum_qos_3_is_a_protocol_error() {
    let e = refused(SUBSCRIBE_QOS_3);
    assert_eq!(*e.kind(), ErrorKind::SubscriptionQoS3);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError, "kind: {:?}", e.kind());
    assert_eq!(e.packet_type(), Some(PacketType::Subscribe));
}

#[rustfmt::skip]
const SUBSCRIBE_NO_LOCAL_SHARED: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x10,                         // remaining length 16
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0
    0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/', b'x', // "$share/g/x"
    0x04,                         // subscription options: no local, QoS 0
];

/// [MQTT-3.8.3-4]: "It is a Protocol Error to set the No Local bit to 1 on a Shared
/// Subscription."
#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription_is_a_protocol_error() {
    assert_refused(
        SUBSCRIBE_NO_LOCAL_SHARED,
        ErrorKind::NoLocalOnSharedSubscription,
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const SUBSCRIBE_HASH_NOT_LAST: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x0B,                         // remaining length 11
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0
    0x00, 0x05, b'a', b'/', b'#', b'/', b'b', // topic filter "a/#/b": '#' is not last
    0x00,                         // subscription options: QoS 0
];

/// [MQTT-4.7.1-1]: the multi-level wildcard must be the last character of the filter.
#[test]
fn mqtt_4_7_1_1_multi_level_wildcard_not_last_is_refused() {
    let e = refused(SUBSCRIBE_HASH_NOT_LAST);
    assert!(matches!(e.kind(), ErrorKind::InvalidTopicFilter(_)), "{:?}", e.kind());
    assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
    assert_eq!(e.packet_type(), Some(PacketType::Subscribe));
}

#[rustfmt::skip]
const SUBSCRIBE_TWO_SUBSCRIPTION_IDS: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x0B,                         // remaining length 11
    0x00, 0x01,                   // packet identifier 1
    0x04,                         // property length 4
    0x0B, 0x01,                   //   Subscription Identifier 1
    0x0B, 0x02,                   //   Subscription Identifier 2, a second time
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // subscription options: QoS 0
];

/// §3.8.2.1.2: "It is a Protocol Error to include the Subscription Identifier more than once."
#[test]
fn sec_3_8_2_1_2_two_subscription_identifiers_in_subscribe_is_a_protocol_error() {
    assert_refused(
        SUBSCRIBE_TWO_SUBSCRIPTION_IDS,
        ErrorKind::DuplicateProperty(property_id::SUBSCRIPTION_IDENTIFIER),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const SUBSCRIBE_SUBSCRIPTION_ID_0: &[u8] = &[
    0x82,                         // fixed header: SUBSCRIBE
    0x09,                         // remaining length 9
    0x00, 0x01,                   // packet identifier 1
    0x02,                         // property length 2
    0x0B, 0x00,                   //   Subscription Identifier 0
    0x00, 0x01, b'#',             // topic filter "#"
    0x00,                         // subscription options: QoS 0
];

/// §3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value of 0."
#[test]
fn sec_3_8_2_1_2_subscription_identifier_0_is_a_protocol_error() {
    assert_refused(
        SUBSCRIBE_SUBSCRIPTION_ID_0,
        ErrorKind::InvalidPropertyValue(property_id::SUBSCRIPTION_IDENTIFIER),
        ReasonCode::ProtocolError,
    );
}

#[rustfmt::skip]
const SUBACK: &[u8] = &[
    0x90,                         // fixed header: SUBACK (9), reserved flags 0000 (§3.9.1)
    0x0F,                         // remaining length 15
    0x00, 0x0A,                   // packet identifier 10 (§3.9.2)
    0x00,                         // property length 0 (§3.9.2.1)
    0x00,                         // reason code 0x00 Granted QoS 0 (§3.9.3)
    0x01,                         // 0x01 Granted QoS 1
    0x02,                         // 0x02 Granted QoS 2
    0x80,                         // 0x80 Unspecified error
    0x83,                         // 0x83 Implementation specific error
    0x87,                         // 0x87 Not authorized
    0x8F,                         // 0x8F Topic Filter invalid
    0x91,                         // 0x91 Packet Identifier in use
    0x97,                         // 0x97 Quota exceeded
    0x9E,                         // 0x9E Shared Subscriptions not supported
    0xA1,                         // 0xA1 Subscription Identifiers not supported
    0xA2,                         // 0xA2 Wildcard Subscriptions not supported
];

/// [MQTT-3.9.3-2]: SUBACK with every subscribe reason code of table 3-8.
#[test]
fn mqtt_3_9_3_2_suback_with_every_reason_code() {
    use ReasonCode::*;
    assert_vector(
        SUBACK,
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_0,
                GrantedQoS1,
                GrantedQoS2,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicFilterInvalid,
                PacketIdentifierInUse,
                QuotaExceeded,
                SharedSubscriptionsNotSupported,
                SubscriptionIdentifiersNotSupported,
                WildcardSubscriptionsNotSupported,
            ],
            properties: AckProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const SUBACK_WITH_REASON_STRING: &[u8] = &[
    0x90,                         // fixed header: SUBACK
    0x09,                         // remaining length 9
    0x00, 0x0A,                   // packet identifier 10
    0x05,                         // property length 5
    0x1F, 0x00, 0x02, b'n', b'o', //   Reason String "no" (§3.9.2.1.2)
    0x87,                         // reason code 0x87 Not authorized
];

/// §3.9.2.1: SUBACK properties come before the reason codes.
#[test]
fn sec_3_9_2_1_suback_with_reason_string() {
    assert_vector(
        SUBACK_WITH_REASON_STRING,
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            reason_codes: vec![ReasonCode::NotAuthorized],
            properties: AckProperties { reason_string: Some(s("no")), user_properties: vec![] },
        }),
    );
}

#[rustfmt::skip]
const SUBACK_NO_REASON_CODES: &[u8] = &[
    0x90,                         // fixed header: SUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0; no reason codes
];

/// [MQTT-3.8.4-6]: the SUBACK has a reason code for each topic filter, of which a SUBSCRIBE has
/// at least one.
#[test]
fn mqtt_3_8_4_6_suback_without_reason_codes_is_refused() {
    assert_refused(SUBACK_NO_REASON_CODES, ErrorKind::NoReasonCodes, ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------------------------------------
// UNSUBSCRIBE, UNSUBACK (sections 3.10, 3.11)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const UNSUBSCRIBE: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE (10), reserved flags 0010 (§3.10.1)
    0x12,                         // remaining length 18
    0x00, 0x0B,                   // packet identifier 11 (§3.10.2)
    0x07,                         // property length 7 (§3.10.2.1)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.10.2.1.2)
    0x00, 0x03, b'a', b'/', b'+', // topic filter "a/+" (§3.10.3)
    0x00, 0x01, b'#',             // topic filter "#"
];

/// §3.10: UNSUBSCRIBE with a User Property and two topic filters.
#[test]
fn sec_3_10_unsubscribe() {
    assert_vector(
        UNSUBSCRIBE,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(11),
            filters: vec![filter("a/+"), filter("#")],
            properties: UnsubscribeProperties { user_properties: vec![user("k", "v")] },
        }),
    );
}

#[rustfmt::skip]
const UNSUBSCRIBE_NO_FILTERS: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0; no payload
];

/// [MQTT-3.10.3-2]: "An UNSUBSCRIBE packet with no Payload is a Protocol Error."
#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_is_a_protocol_error() {
    assert_refused(UNSUBSCRIBE_NO_FILTERS, ErrorKind::NoTopicFilters, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const UNSUBSCRIBE_PACKET_ID_0: &[u8] = &[
    0xA2,                         // fixed header: UNSUBSCRIBE
    0x06,                         // remaining length 6
    0x00, 0x00,                   // packet identifier 0
    0x00,                         // property length 0
    0x00, 0x01, b'#',             // topic filter "#"
];

/// [MQTT-2.2.1-3]: UNSUBSCRIBE carries a non-zero packet identifier.
#[test]
fn mqtt_2_2_1_3_unsubscribe_packet_id_0_is_refused() {
    assert_refused(UNSUBSCRIBE_PACKET_ID_0, ErrorKind::ZeroPacketId, ReasonCode::ProtocolError);
}

#[rustfmt::skip]
const UNSUBACK: &[u8] = &[
    0xB0,                         // fixed header: UNSUBACK (11), reserved flags 0000 (§3.11.1)
    0x0A,                         // remaining length 10
    0x00, 0x0B,                   // packet identifier 11 (§3.11.2)
    0x00,                         // property length 0 (§3.11.2.1)
    0x00,                         // reason code 0x00 Success (§3.11.3)
    0x11,                         // 0x11 No subscription existed
    0x80,                         // 0x80 Unspecified error
    0x83,                         // 0x83 Implementation specific error
    0x87,                         // 0x87 Not authorized
    0x8F,                         // 0x8F Topic Filter invalid
    0x91,                         // 0x91 Packet Identifier in use
];

/// [MQTT-3.11.3-2]: UNSUBACK with every unsubscribe reason code of table 3-9.
#[test]
fn mqtt_3_11_3_2_unsuback_with_every_reason_code() {
    use ReasonCode::*;
    assert_vector(
        UNSUBACK,
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(11),
            reason_codes: vec![
                Success,
                NoSubscriptionExisted,
                UnspecifiedError,
                ImplementationSpecificError,
                NotAuthorized,
                TopicFilterInvalid,
                PacketIdentifierInUse,
            ],
            properties: AckProperties::default(),
        }),
    );
}

#[rustfmt::skip]
const UNSUBACK_NO_REASON_CODES: &[u8] = &[
    0xB0,                         // fixed header: UNSUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // property length 0; no reason codes
];

/// §3.11.3: the UNSUBACK payload has a reason code per topic filter (at least one).
#[test]
fn sec_3_11_3_unsuback_without_reason_codes_is_refused() {
    assert_refused(UNSUBACK_NO_REASON_CODES, ErrorKind::NoReasonCodes, ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------------------------------------
// PINGREQ, PINGRESP (sections 3.12, 3.13)
// ---------------------------------------------------------------------------------------------

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

/// §3.12.2, §3.12.3, §3.13: PINGREQ and PINGRESP have no variable header and no payload.
#[test]
fn sec_3_12_ping_with_a_body_is_malformed() {
    #[rustfmt::skip]
    let vectors: [&[u8]; 2] = [
        &[0xC0, 0x01, 0x00], // PINGREQ, remaining length 1, stray byte
        &[0xD0, 0x01, 0x00], // PINGRESP, remaining length 1, stray byte
    ];
    for v in vectors {
        assert_refused(v, ErrorKind::TrailingBytes, ReasonCode::MalformedPacket);
    }
}

// ---------------------------------------------------------------------------------------------
// DISCONNECT (section 3.14)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const DISCONNECT_SHORT: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT (14), reserved flags 0000 (§3.14.1)
    0x00,                         // remaining length 0: Normal disconnection, no properties
];

/// §3.14.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is 0x00
/// (Normal disconnecton) and there are no Properties. In this case the DISCONNECT has a
/// Remaining Length of 0."
#[test]
fn sec_3_14_2_1_disconnect_normal_in_every_form() {
    let expected = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
    assert_vector(DISCONNECT_SHORT, expected.clone());
    // DISCONNECT, remaining length 1, reason code 0x00 (property length omitted, §3.14.2.2.1).
    assert_decodes_to(&[0xE0, 0x01, 0x00], &expected);
    // DISCONNECT, remaining length 2, reason code 0x00, property length 0.
    assert_decodes_to(&[0xE0, 0x02, 0x00, 0x00], &expected);
}

#[rustfmt::skip]
const DISCONNECT_REASON_ONLY: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT
    0x01,                         // remaining length 1
    0x04,                         // reason code 0x04 Disconnect with Will Message (§3.14.2.1);
                                  //   "If the Remaining Length is less than 2, a value of 0 is
                                  //   used" for the property length (§3.14.2.2.1)
];

/// §3.14.2.2.1: a DISCONNECT with only a reason code.
#[test]
fn sec_3_14_2_2_1_disconnect_with_only_a_reason_code() {
    let expected = Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_vector(DISCONNECT_REASON_ONLY, expected.clone());
    // DISCONNECT, remaining length 2, reason code 0x04, property length 0.
    assert_decodes_to(&[0xE0, 0x02, 0x04, 0x00], &expected);
}

#[rustfmt::skip]
const DISCONNECT_CLIENT_WITH_PROPERTIES: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT
    0x13,                         // remaining length 19
    0x04,                         // reason code 0x04 Disconnect with Will Message (client)
    0x11,                         // property length 17 (§3.14.2.2)
    0x11, 0x00, 0x00, 0x00, 0x3C, //   Session Expiry Interval 60 (§3.14.2.2.2)
    0x1F, 0x00, 0x02, b'b', b'y', //   Reason String "by" (§3.14.2.2.3)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.14.2.2.4)
];

#[rustfmt::skip]
const DISCONNECT_SERVER_WITH_PROPERTIES: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT
    0x0F,                         // remaining length 15
    0x9C,                         // reason code 0x9C Use another server (server)
    0x0D,                         // property length 13
    0x1F, 0x00, 0x02, b'g', b'o', //   Reason String "go"
    0x1C, 0x00, 0x05, b'h', b'o', b's', b't', b'2', // Server Reference "host2" (§3.14.2.2.5)
];

/// §3.14.2: DISCONNECT with a reason code and properties, as a client and as a server send it.
#[test]
fn sec_3_14_2_disconnect_with_reason_code_and_properties() {
    assert_vector(
        DISCONNECT_CLIENT_WITH_PROPERTIES,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DisconnectWithWillMessage,
            properties: DisconnectProperties {
                session_expiry_interval: Some(60),
                reason_string: Some(s("by")),
                user_properties: vec![user("k", "v")],
                server_reference: None,
            },
        }),
    );
    assert_vector(
        DISCONNECT_SERVER_WITH_PROPERTIES,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::UseAnotherServer,
            properties: DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(s("go")),
                user_properties: vec![],
                server_reference: Some(s("host2")),
            },
        }),
    );
}

#[rustfmt::skip]
const DISCONNECT_TOPIC_ALIAS: &[u8] = &[
    0xE0,                         // fixed header: DISCONNECT
    0x05,                         // remaining length 5
    0x00,                         // reason code 0x00
    0x03,                         // property length 3
    0x23, 0x00, 0x01,             //   Topic Alias 1: not a DISCONNECT property
];

/// §2.2.2.2, §3.14.2.2: a property not valid for DISCONNECT is a Malformed Packet.
#[test]
fn sec_2_2_2_2_topic_alias_in_disconnect_is_malformed() {
    assert_refused(
        DISCONNECT_TOPIC_ALIAS,
        ErrorKind::PropertyNotAllowed(property_id::TOPIC_ALIAS),
        ReasonCode::MalformedPacket,
    );
}

// ---------------------------------------------------------------------------------------------
// AUTH (section 3.15)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const AUTH_SHORT: &[u8] = &[
    0xF0,                         // fixed header: AUTH (15), reserved flags 0000 (§3.15.1)
    0x00,                         // remaining length 0: Success, no properties (§3.15.2.1)
];

/// §3.15.2.1: "The Reason Code and Property Length can be omitted if the Reason Code is 0x00
/// (Success) and there are no Properties. In this case the AUTH has a Remaining Length of 0."
#[test]
fn sec_3_15_2_1_auth_success_in_every_form() {
    let expected = Packet::Auth(Auth::default());
    assert_vector(AUTH_SHORT, expected.clone());
    // AUTH, remaining length 1, reason code 0x00.
    assert_decodes_to(&[0xF0, 0x01, 0x00], &expected);
    // AUTH, remaining length 2, reason code 0x00, property length 0.
    assert_decodes_to(&[0xF0, 0x02, 0x00, 0x00], &expected);
}

#[rustfmt::skip]
const AUTH_CONTINUE: &[u8] = &[
    0xF0,                         // fixed header: AUTH
    0x10,                         // remaining length 16
    0x18,                         // reason code 0x18 Continue authentication (§3.15.2.1)
    0x0E,                         // property length 14 (§3.15.2.2)
    0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // Authentication Method "SCRAM" (§3.15.2.2.2)
    0x16, 0x00, 0x03, 0x01, 0x02, 0x03, // Authentication Data 01 02 03 (§3.15.2.2.3)
];

/// [MQTT-4.12.0-2], [MQTT-4.12.0-3]: AUTH with Continue authentication, method and data.
#[test]
fn mqtt_4_12_0_3_auth_continue_with_method_and_data() {
    assert_vector(
        AUTH_CONTINUE,
        Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[0x01, 0x02, 0x03])),
                reason_string: None,
                user_properties: vec![],
            },
        }),
    );
}

#[rustfmt::skip]
const AUTH_REAUTHENTICATE: &[u8] = &[
    0xF0,                         // fixed header: AUTH
    0x12,                         // remaining length 18
    0x19,                         // reason code 0x19 Re-authenticate
    0x10,                         // property length 16
    0x15, 0x00, 0x01, b'm',       //   Authentication Method "m"
    0x1F, 0x00, 0x02, b'r', b'e', //   Reason String "re" (§3.15.2.2.4)
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v") (§3.15.2.2.5)
];

/// [MQTT-4.12.1-1]: a re-authentication AUTH, with a Reason String and a User Property.
#[test]
fn mqtt_4_12_1_1_auth_reauthenticate() {
    assert_vector(
        AUTH_REAUTHENTICATE,
        Packet::Auth(Auth {
            reason_code: ReasonCode::ReAuthenticate,
            properties: AuthProperties {
                authentication_method: Some(s("m")),
                authentication_data: None,
                reason_string: Some(s("re")),
                user_properties: vec![user("k", "v")],
            },
        }),
    );
}

#[rustfmt::skip]
const AUTH_DATA_WITHOUT_METHOD: &[u8] = &[
    0xF0,                         // fixed header: AUTH
    0x07,                         // remaining length 7
    0x18,                         // reason code 0x18 Continue authentication
    0x05,                         // property length 5
    0x16, 0x00, 0x02, 0x01, 0x02, //   Authentication Data 01 02, without a method
];

/// §3.1.2.11.10, §4.12: Authentication Data is only meaningful with its Authentication Method.
#[test]
fn sec_4_12_auth_data_without_method_is_a_protocol_error() {
    assert_refused(
        AUTH_DATA_WITHOUT_METHOD,
        ErrorKind::AuthDataWithoutMethod,
        ReasonCode::ProtocolError,
    );
}

// ---------------------------------------------------------------------------------------------
// Reason codes allowed in each packet (section 2.4, tables 3-1 to 3-10)
// ---------------------------------------------------------------------------------------------

/// Checks every byte value as the reason code of `vector(code)`: the codes in `allowed` decode to
/// that reason code (and, for a code the encoder writes in this form, encode back to the same
/// bytes); every other value is refused as not allowed in the packet.
fn check_reason_codes(allowed: &[u8], vector: impl Fn(u8) -> Vec<u8>, shortest_for_success: bool) {
    for code in 0..=255u8 {
        let bytes = vector(code);
        if allowed.contains(&code) {
            let packet = decode_whole(&mut decoder(), &bytes);
            let got = match &packet {
                Packet::ConnAck(p) => p.reason_code,
                Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                    p.reason_code
                }
                Packet::SubAck(p) => p.reason_codes[0],
                Packet::UnsubAck(p) => p.reason_codes[0],
                Packet::Disconnect(p) => p.reason_code,
                Packet::Auth(p) => p.reason_code,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got.value(), code);
            if code != 0 || shortest_for_success {
                assert_encodes_to(&packet, &bytes);
            }
        } else {
            assert_refused(&bytes, ErrorKind::InvalidReasonCode(code), ReasonCode::MalformedPacket);
        }
    }
}

/// [MQTT-3.2.2-8]: the CONNACK reason codes of table 3-1.
#[test]
fn mqtt_3_2_2_8_connack_reason_codes() {
    #[rustfmt::skip]
    let allowed = [
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    // CONNACK, remaining length 3, flags 0, reason code, property length 0.
    check_reason_codes(&allowed, |c| vec![0x20, 0x03, 0x00, c, 0x00], true);
}

/// [MQTT-3.4.2-1]: the PUBACK reason codes of table 3-4.
#[test]
fn mqtt_3_4_2_1_puback_reason_codes() {
    let allowed = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    // PUBACK, remaining length 3, packet identifier 1, reason code.
    check_reason_codes(&allowed, |c| vec![0x40, 0x03, 0x00, 0x01, c], false);
}

/// [MQTT-3.5.2-1]: the PUBREC reason codes of table 3-5.
#[test]
fn mqtt_3_5_2_1_pubrec_reason_codes() {
    let allowed = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    // PUBREC, remaining length 3, packet identifier 1, reason code.
    check_reason_codes(&allowed, |c| vec![0x50, 0x03, 0x00, 0x01, c], false);
}

/// [MQTT-3.6.2-1]: the PUBREL reason codes of table 3-6.
#[test]
fn mqtt_3_6_2_1_pubrel_reason_codes() {
    // PUBREL, remaining length 3, packet identifier 1, reason code.
    check_reason_codes(&[0x00, 0x92], |c| vec![0x62, 0x03, 0x00, 0x01, c], false);
}

/// [MQTT-3.7.2-1]: the PUBCOMP reason codes of table 3-7.
#[test]
fn mqtt_3_7_2_1_pubcomp_reason_codes() {
    // PUBCOMP, remaining length 3, packet identifier 1, reason code.
    check_reason_codes(&[0x00, 0x92], |c| vec![0x70, 0x03, 0x00, 0x01, c], false);
}

/// [MQTT-3.9.3-2]: the SUBACK reason codes of table 3-8.
#[test]
fn mqtt_3_9_3_2_suback_reason_codes() {
    let allowed = [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
    // SUBACK, remaining length 4, packet identifier 1, property length 0, reason code.
    check_reason_codes(&allowed, |c| vec![0x90, 0x04, 0x00, 0x01, 0x00, c], true);
}

/// [MQTT-3.11.3-2]: the UNSUBACK reason codes of table 3-9.
#[test]
fn mqtt_3_11_3_2_unsuback_reason_codes() {
    let allowed = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
    // UNSUBACK, remaining length 4, packet identifier 1, property length 0, reason code.
    check_reason_codes(&allowed, |c| vec![0xB0, 0x04, 0x00, 0x01, 0x00, c], true);
}

/// [MQTT-3.14.2-1]: the DISCONNECT reason codes of table 3-10.
#[test]
fn mqtt_3_14_2_1_disconnect_reason_codes() {
    #[rustfmt::skip]
    let allowed = [
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    // DISCONNECT, remaining length 1, reason code.
    check_reason_codes(&allowed, |c| vec![0xE0, 0x01, c], false);
}

/// [MQTT-3.15.2-1]: the AUTH reason codes of table 3-11.
#[test]
fn mqtt_3_15_2_1_auth_reason_codes() {
    // AUTH, remaining length 1, reason code.
    check_reason_codes(&[0x00, 0x18, 0x19], |c| vec![0xF0, 0x01, c], false);
}

// ---------------------------------------------------------------------------------------------
// Fixed header and framing (section 2.1)
// ---------------------------------------------------------------------------------------------

/// Valid vectors of every packet type whose fixed-header flags are fixed, with those flags.
const FIXED_FLAG_VECTORS: &[(&[u8], u8)] = &[
    (CONNECT_MINIMAL, 0b0000),
    (CONNACK_MINIMAL, 0b0000),
    (PUBACK_SHORT, 0b0000),
    (PUBREC_SHORT, 0b0000),
    (PUBREL_SHORT, 0b0010),
    (PUBCOMP_SHORT, 0b0000),
    (SUBSCRIBE, 0b0010),
    (SUBACK, 0b0000),
    (UNSUBSCRIBE, 0b0010),
    (UNSUBACK, 0b0000),
    (PINGREQ, 0b0000),
    (PINGRESP, 0b0000),
    (DISCONNECT_SHORT, 0b0000),
    (AUTH_SHORT, 0b0000),
];

/// [MQTT-2.1.3-1]: reserved flag bits must have the value of table 2-2; "If invalid flags are
/// received it is a Malformed Packet." Every wrong value of every fixed-flag type is tried.
#[test]
fn mqtt_2_1_3_1_reserved_flags_are_malformed_for_every_packet_type() {
    for &(vector, flags) in FIXED_FLAG_VECTORS {
        assert_eq!(vector[0] & 0x0F, flags);
        for wrong in (0..16u8).filter(|&f| f != flags) {
            let mut bad = vector.to_vec();
            bad[0] = (vector[0] & 0xF0) | wrong;
            assert_refused(&bad, ErrorKind::InvalidFlags(wrong), ReasonCode::MalformedPacket);
        }
    }
}

/// [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]: PUBREL, SUBSCRIBE and UNSUBSCRIBE must have
/// flags 0010; [MQTT-3.14.1-1], [MQTT-3.15.1-1]: DISCONNECT and AUTH 0000.
#[test]
fn mqtt_3_6_1_1_flags_of_pubrel_subscribe_unsubscribe_disconnect_auth() {
    #[rustfmt::skip]
    let vectors: [(&[u8], u8); 5] = [
        (&[0x60, 0x02, 0x00, 0x01], 0x0),       // PUBREL with flags 0000
        (&[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x00], 0x0), // SUBSCRIBE, flags 0000
        (&[0xA0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'#'], 0x0), // UNSUBSCRIBE, flags 0000
        (&[0xE2, 0x00], 0x2),                   // DISCONNECT with flags 0010
        (&[0xF1, 0x00], 0x1),                   // AUTH with flags 0001
    ];
    for (v, flags) in vectors {
        assert_refused(v, ErrorKind::InvalidFlags(flags), ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const TYPE_0: &[u8] = &[
    0x00,                         // fixed header: packet type 0, "Reserved, Forbidden" (§2.1.2)
    0x00,                         // remaining length 0
];

/// §2.1.2, table 2-1: packet type 0 is forbidden.
#[test]
fn sec_2_1_2_packet_type_0_is_malformed() {
    assert_refused(TYPE_0, ErrorKind::ReservedPacketType(0), ReasonCode::MalformedPacket);
}

#[rustfmt::skip]
const REMAINING_LENGTH_FIVE_BYTES: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x80, 0x80, 0x80, 0x80,       // remaining length: four bytes with the continuation bit,
    0x01,                         //   then a fifth: "The maximum number of bytes ... is four"
];

/// §1.5.5, §2.1.4: a Variable Byte Integer has at most four bytes.
#[test]
fn sec_1_5_5_remaining_length_with_a_fifth_byte_is_malformed() {
    assert_refused(
        REMAINING_LENGTH_FIVE_BYTES,
        ErrorKind::VarintTooLong,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const PINGREQ_NON_MINIMAL_LENGTH: &[u8] = &[
    0xC0,                         // fixed header: PINGREQ
    0x80, 0x00,                   // remaining length 0 in two bytes: 0x00 alone is the encoding
];

#[rustfmt::skip]
const PUBACK_NON_MINIMAL_PROPERTY_LENGTH: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x05,                         // remaining length 5
    0x00, 0x01,                   // packet identifier 1
    0x00,                         // reason code Success
    0x80, 0x00,                   // property length 0 in two bytes
];

#[rustfmt::skip]
const PUBLISH_NON_MINIMAL_SUBSCRIPTION_ID: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x07,                         // remaining length 7
    0x00, 0x01, b't',             // topic name "t"
    0x03,                         // property length 3
    0x0B, 0x81, 0x00,             //   Subscription Identifier 1 in two bytes
];

/// [MQTT-1.5.5-1]: "The encoded value MUST use the minimum number of bytes necessary to represent
/// the value." A Variable Byte Integer with a superfluous trailing 0x00 byte (remaining length,
/// property length, or a property value) does not conform and is malformed.
#[test]
fn mqtt_1_5_5_1_non_minimal_variable_byte_integer_is_malformed() {
    for v in [
        PINGREQ_NON_MINIMAL_LENGTH,
        PUBACK_NON_MINIMAL_PROPERTY_LENGTH,
        PUBLISH_NON_MINIMAL_SUBSCRIPTION_ID,
    ] {
        assert_refused(v, ErrorKind::NonMinimalVarint, ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const PUBLISH_FOUR_BYTE_LENGTH_HEAD: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x80, 0x80, 0x80, 0x01,       // remaining length 2,097,152 = 1 * 128^3: the smallest value
                                  //   that needs four bytes (§1.5.5, table 1-1)
];

/// §1.5.5, table 1-1: the boundary values of each Variable Byte Integer length decode to the
/// right value. The decoder's Maximum Packet Size is set to 1 so that each is reported back in a
/// PacketTooLarge error (size = 1 + length bytes + value) from the fixed header alone.
#[test]
fn sec_1_5_5_boundary_remaining_lengths_decode_exactly() {
    #[rustfmt::skip]
    let table: [(&[u8], u64); 8] = [
        (&[0x30, 0x00], 0),                            // 0: smallest one-byte value
        (&[0x30, 0x7F], 127),                          // 127: largest one-byte value
        (&[0x30, 0x80, 0x01], 128),                    // 128: smallest two-byte value
        (&[0x30, 0xFF, 0x7F], 16_383),                 // 16,383: largest two-byte value
        (&[0x30, 0x80, 0x80, 0x01], 16_384),           // 16,384: smallest three-byte value
        (&[0x30, 0xFF, 0xFF, 0x7F], 2_097_151),        // 2,097,151: largest three-byte value
        (PUBLISH_FOUR_BYTE_LENGTH_HEAD, 2_097_152),    // 2,097,152: smallest four-byte value
        (&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 268_435_455), // 268,435,455: the largest value
    ];
    for (head, value) in table {
        let mut d = Decoder::new(Some(V5), 1);
        let e = decode_error(&mut d, head);
        let size = head.len() as u64 + value;
        assert_eq!(e.kind(), &ErrorKind::PacketTooLarge { size, max: 1 }, "{head:02x?}");
    }
    assert_eq!(u64::from(MAX_PACKET_SIZE), 1 + 4 + 268_435_455);
}

/// Makes the decoder a vector is read with.
type MakeDecoder = fn() -> Decoder;

/// §2.1.4: until the remaining length's worth of bytes has arrived the decoder waits (`Ok(None)`)
/// and consumes nothing, whatever the cut; then it decodes.
#[test]
fn sec_2_1_4_every_truncated_vector_waits_for_more() {
    let vectors: &[(&[u8], MakeDecoder)] = &[
        (CONNECT_MINIMAL, server),
        (CONNECT_FULL, server),
        (CONNACK_FULL, decoder),
        (PUBLISH_FULL, decoder),
        (PUBLISH_ALIAS_EMPTY_TOPIC, decoder),
        (PUBACK_SHORT, decoder),
        (PUBACK_WITH_PROPERTIES, decoder),
        (PUBREC_IN_USE, decoder),
        (PUBREL_NOT_FOUND, decoder),
        (PUBCOMP_NOT_FOUND_WITH_REASON, decoder),
        (SUBSCRIBE, decoder),
        (SUBACK, decoder),
        (UNSUBSCRIBE, decoder),
        (UNSUBACK, decoder),
        (PINGREQ, decoder),
        (PINGRESP, decoder),
        (DISCONNECT_SHORT, decoder),
        (DISCONNECT_CLIENT_WITH_PROPERTIES, decoder),
        (AUTH_SHORT, decoder),
        (AUTH_CONTINUE, decoder),
    ];
    for &(vector, make) in vectors {
        let mut d = make();
        for cut in 0..vector.len() {
            let mut buf = BytesMut::from(&vector[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "{:02x?}", &vector[..cut]);
            assert_eq!(&buf[..], &vector[..cut], "nothing may be consumed");
        }
        let mut buf = BytesMut::from(&vector[..vector.len() - 1]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&vector[vector.len() - 1..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
    }
}

/// [MQTT-3.1.0-1]: the first packet from a client must be CONNECT.
#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let e = decode_error(&mut server(), AUTH_SHORT);
    assert_eq!(e.kind(), &ErrorKind::NotConnect);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert_eq!(e.packet_type(), Some(PacketType::Auth));
}

/// §4.2: a CONNECT fixes the version for the packets that follow it on the same stream.
#[test]
fn sec_4_2_connect_then_v5_packets_decode_in_order() {
    let stream =
        [CONNECT_MINIMAL, PUBLISH_FULL, SUBSCRIBE, AUTH_CONTINUE, DISCONNECT_SHORT].concat();
    let mut d = server();
    let mut buf = BytesMut::from(&stream[..]);
    let mut types = vec![];
    while let Some(p) = d.decode(&mut buf).unwrap() {
        types.push(p.packet_type());
    }
    assert!(buf.is_empty());
    assert_eq!(d.version(), Some(V5));
    use PacketType::*;
    assert_eq!(types, [Connect, Publish, Subscribe, Auth, Disconnect]);
}

// ---------------------------------------------------------------------------------------------
// Maximum Packet Size (sections 3.1.2.11.4, 3.2.2.3.6)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const PUBLISH_HEADER_129: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x7F,                         // remaining length 127: the packet is 129 bytes in all
];

/// §3.1.2.11.4, §3.2.2.3.6: a packet larger than the receiver's Maximum Packet Size is answered
/// with 0x95 (Packet too large); the decoder says so from the fixed header alone, before the body
/// is buffered.
#[test]
fn sec_3_1_2_11_4_packet_over_maximum_packet_size_is_refused_from_its_fixed_header() {
    let mut d = Decoder::new(Some(V5), 100);
    let mut buf = BytesMut::from(PUBLISH_HEADER_129);
    let e = d.decode(&mut buf).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PacketTooLarge { size: 129, max: 100 });
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(e.packet_type(), Some(PacketType::Publish));

    // With a two-byte remaining length: 0x80 0x01 is 128, 131 bytes in all.
    let mut d = Decoder::new(Some(V5), 130);
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x01][..]);
    let e = d.decode(&mut buf).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PacketTooLarge { size: 131, max: 130 });
}

/// §3.1.2.11.4: the size counts the whole packet, fixed header included: a packet of exactly the
/// maximum size is accepted, one byte over is not.
#[test]
fn sec_3_1_2_11_4_packet_of_exactly_maximum_packet_size_is_accepted() {
    let mut d = Decoder::new(Some(V5), 4);
    assert_eq!(decode_whole(&mut d, PUBACK_SHORT), Packet::PubAck(PubAck::new(pid(1))));
    let mut d = Decoder::new(Some(V5), 3);
    let e = decode_error(&mut d, PUBACK_SHORT);
    assert_eq!(e.kind(), &ErrorKind::PacketTooLarge { size: 4, max: 3 });
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
}

// ---------------------------------------------------------------------------------------------
// Encoder: Maximum Packet Size of the peer, zero-copy payloads
// ---------------------------------------------------------------------------------------------

const REASON_40: &str = "0123456789012345678901234567890123456789";

fn big_puback() -> Packet {
    Packet::PubAck(PubAck {
        packet_id: pid(1),
        reason_code: ReasonCode::NoMatchingSubscribers,
        properties: AckProperties {
            reason_string: Some(s(REASON_40)),
            user_properties: vec![user("k", "v")],
        },
    })
}

#[rustfmt::skip]
const BIG_PUBACK_HEAD: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x36,                         // remaining length 54
    0x00, 0x01,                   // packet identifier 1
    0x10,                         // reason code 0x10 No matching subscribers
    0x32,                         // property length 50
    0x1F, 0x00, 0x28,             //   Reason String of 40 bytes (REASON_40 follows)
];

#[rustfmt::skip]
const BIG_PUBACK_TAIL: &[u8] = &[
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v")
];

#[rustfmt::skip]
const PUBACK_WITHOUT_REASON_STRING: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x0B,                         // remaining length 11
    0x00, 0x01,                   // packet identifier 1
    0x10,                         // reason code 0x10 No matching subscribers
    0x07,                         // property length 7
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v"); Reason String dropped
];

#[rustfmt::skip]
const PUBACK_WITHOUT_PROPERTIES: &[u8] = &[
    0x40,                         // fixed header: PUBACK
    0x03,                         // remaining length 3
    0x00, 0x01,                   // packet identifier 1
    0x10,                         // reason code 0x10; Reason String and User Property dropped
];

fn encode_with_max(packet: &Packet, max: u32) -> Result<Vec<u8>, EncodeError> {
    let mut enc = Encoder::new(V5);
    enc.set_max_packet_size(max);
    let mut buf = BytesMut::from(&[0xAA][..]); // something already queued
    let result = enc.encode(packet, &mut buf);
    match result {
        Ok(n) => {
            assert_eq!(buf[0], 0xAA);
            assert_eq!(n, buf.len() - 1);
            Ok(buf[1..].to_vec())
        }
        Err(e) => {
            assert_eq!(&buf[..], &[0xAA], "nothing may be written on error");
            Err(e)
        }
    }
}

/// [MQTT-3.4.2-2], [MQTT-3.4.2-3]: the sender must not send the Reason String, then the User
/// Properties, if they would make the PUBACK larger than the receiver's Maximum Packet Size; the
/// packet itself is still sent.
#[test]
fn mqtt_3_4_2_2_reason_string_and_user_properties_are_dropped_to_fit() {
    let full = [BIG_PUBACK_HEAD, REASON_40.as_bytes(), BIG_PUBACK_TAIL].concat();
    assert_eq!(full.len(), 56);
    assert_encodes_to(&big_puback(), &full);
    assert_eq!(encode_with_max(&big_puback(), 56).unwrap(), full);
    // One byte short: the Reason String goes, the User Property stays.
    assert_eq!(encode_with_max(&big_puback(), 55).unwrap(), PUBACK_WITHOUT_REASON_STRING);
    assert_eq!(encode_with_max(&big_puback(), 13).unwrap(), PUBACK_WITHOUT_REASON_STRING);
    // Still too large without the Reason String: the User Property goes too.
    assert_eq!(encode_with_max(&big_puback(), 12).unwrap(), PUBACK_WITHOUT_PROPERTIES);
    assert_eq!(encode_with_max(&big_puback(), 5).unwrap(), PUBACK_WITHOUT_PROPERTIES);
    // Nothing more may be dropped.
    assert_eq!(
        encode_with_max(&big_puback(), 4),
        Err(EncodeError::PacketTooLarge { size: 56, max: 4 })
    );
}

fn big_publish(payload: Bytes) -> Publish {
    Publish {
        properties: PublishProperties {
            user_properties: vec![user("k", "v")],
            ..PublishProperties::default()
        },
        ..Publish::new(topic("t"), payload)
    }
}

/// [MQTT-3.1.2-24], [MQTT-3.2.2-15]: a PUBLISH larger than the peer's Maximum Packet Size is not
/// sent at all (its properties belong to the application and are not dropped); nothing is
/// written.
#[test]
fn mqtt_3_1_2_24_publish_over_maximum_packet_size_is_not_sent() {
    // 1 (type) + 1 (remaining length 111) + 3 (topic "t") + 1 + 7 (properties) + 100 (payload)
    let publish = Packet::Publish(big_publish(Bytes::from(vec![b'x'; 100])));
    assert_eq!(publish.encoded_len(V5).unwrap(), 113);
    assert_eq!(encode_with_max(&publish, 113).unwrap().len(), 113);
    assert_eq!(
        encode_with_max(&publish, 112),
        Err(EncodeError::PacketTooLarge { size: 113, max: 112 })
    );

    let Packet::Publish(p) = &publish else { unreachable!() };
    let mut enc = Encoder::new(V5);
    enc.set_max_packet_size(112);
    let mut head = BytesMut::from(&[0xAA][..]);
    assert_eq!(
        enc.encode_publish(p.view(), &mut head),
        Err(EncodeError::PacketTooLarge { size: 113, max: 112 })
    );
    assert_eq!(&head[..], &[0xAA], "nothing may be written on error");
}

#[rustfmt::skip]
const PUBLISH_HEAD: &[u8] = &[
    0x32,                         // fixed header: PUBLISH, QoS 1
    0x4D,                         // remaining length 77 (13 bytes of header, 64 of payload)
    0x00, 0x03, b'a', b'/', b'b', // topic name "a/b"
    0x00, 0x09,                   // packet identifier 9
    0x05,                         // property length 5
    0x02, 0x00, 0x00, 0x00, 0x1E, //   Message Expiry Interval 30
                                  // the 64 payload bytes are not part of the head
];

/// `Encoder::encode_publish` writes everything but the payload, which the caller writes (or
/// shares) after it, and returns the whole packet's size; head and payload together are what
/// `encode` writes.
#[test]
fn encode_publish_writes_the_head_without_the_payload() {
    let payload = Bytes::from(vec![7u8; 64]);
    let publish = Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid(9)),
        properties: PublishProperties {
            message_expiry_interval: Some(30),
            ..PublishProperties::default()
        },
        ..Publish::new(topic("a/b"), payload.clone())
    };
    let enc = Encoder::new(V5);
    let mut head = BytesMut::new();
    let total = enc.encode_publish(publish.view(), &mut head).unwrap();
    assert_eq!(&head[..], PUBLISH_HEAD);
    assert_eq!(total, head.len() + 64);

    let mut whole = BytesMut::new();
    let n = enc.encode(&Packet::Publish(publish.clone()), &mut whole).unwrap();
    assert_eq!(n, total);
    assert_eq!(&whole[..], &[&head[..], &payload[..]].concat()[..]);

    // The same in 3.1.1, which has no properties: same payload, shorter head.
    let enc = Encoder::new(ProtocolVersion::V3_1_1);
    let mut head = BytesMut::new();
    let total = enc.encode_publish(publish.view(), &mut head).unwrap();
    #[rustfmt::skip]
    let v311_head: &[u8] = &[
        0x32,                     // fixed header: PUBLISH, QoS 1
        0x47,                     // remaining length 71 (7 + 64)
        0x00, 0x03, b'a', b'/', b'b', // topic name "a/b"
        0x00, 0x09,               // packet identifier 9; no properties in 3.1.1
    ];
    assert_eq!(&head[..], v311_head);
    assert_eq!(total, 9 + 64);
}

// ---------------------------------------------------------------------------------------------
// Encoder: what the specification forbids a sender to write
// ---------------------------------------------------------------------------------------------

fn encode_error(packet: Packet) -> EncodeError {
    let mut buf = BytesMut::new();
    let e = packet.encode(V5, &mut buf).expect_err("the encoder must refuse");
    assert!(buf.is_empty(), "nothing may be written on error");
    assert_eq!(packet.encoded_len(V5), Err(e.clone()));
    e
}

/// [MQTT-2.2.1-2]: a QoS 0 PUBLISH must not contain a packet identifier; QoS 1 and 2 need one.
#[test]
fn mqtt_2_2_1_2_encoder_enforces_packet_id_presence() {
    let qos0_with_id =
        Publish { packet_id: Some(pid(1)), ..Publish::new(topic("t"), Bytes::new()) };
    assert_eq!(encode_error(Packet::Publish(qos0_with_id)), EncodeError::UnexpectedPacketId);
    let qos1_without_id =
        Publish { qos: QoS::AtLeastOnce, ..Publish::new(topic("t"), Bytes::new()) };
    assert_eq!(encode_error(Packet::Publish(qos1_without_id)), EncodeError::MissingPacketId);
}

/// §3.3.2.1: a zero-length topic name is only written together with a Topic Alias.
#[test]
fn sec_3_3_2_1_encoder_refuses_empty_topic_without_alias() {
    let Packet::Publish(mut p) = decode_whole(&mut decoder(), PUBLISH_ALIAS_EMPTY_TOPIC) else {
        panic!("not a PUBLISH")
    };
    p.properties.topic_alias = None;
    assert_eq!(encode_error(Packet::Publish(p)), EncodeError::NotInVersion(V5));
}

/// [MQTT-3.8.3-2], [MQTT-3.10.3-2]: SUBSCRIBE and UNSUBSCRIBE carry at least one topic filter.
#[test]
fn mqtt_3_8_3_2_encoder_refuses_empty_subscribe_and_unsubscribe() {
    let subscribe = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![],
        properties: SubscribeProperties::default(),
    };
    assert_eq!(encode_error(Packet::Subscribe(subscribe)), EncodeError::Empty);
    let unsubscribe = Unsubscribe {
        packet_id: pid(1),
        filters: vec![],
        properties: UnsubscribeProperties::default(),
    };
    assert_eq!(encode_error(Packet::Unsubscribe(unsubscribe)), EncodeError::Empty);
}

/// [MQTT-3.8.3-4]: No Local must not be set on a shared subscription.
#[test]
fn mqtt_3_8_3_4_encoder_refuses_no_local_on_shared_subscription() {
    let subscribe = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription {
            filter: filter("$share/g/x"),
            options: SubscriptionOptions { no_local: true, ..SubscriptionOptions::default() },
        }],
        properties: SubscribeProperties::default(),
    };
    assert_eq!(
        encode_error(Packet::Subscribe(subscribe)),
        EncodeError::NoLocalOnSharedSubscription
    );
}

/// [MQTT-3.4.2-1], [MQTT-3.6.2-1], [MQTT-3.15.2-1]: a sender uses only the reason codes of the
/// packet's table.
#[test]
fn mqtt_3_4_2_1_encoder_refuses_reason_codes_not_allowed_in_the_packet() {
    let puback =
        PubAck { reason_code: ReasonCode::PacketIdentifierNotFound, ..PubAck::new(pid(1)) };
    assert_eq!(
        encode_error(Packet::PubAck(puback)),
        EncodeError::InvalidReasonCode(ReasonCode::PacketIdentifierNotFound)
    );
    let pubrel = PubAck { reason_code: ReasonCode::NoMatchingSubscribers, ..PubAck::new(pid(1)) };
    assert_eq!(
        encode_error(Packet::PubRel(pubrel)),
        EncodeError::InvalidReasonCode(ReasonCode::NoMatchingSubscribers)
    );
    let auth = Auth { reason_code: ReasonCode::UnspecifiedError, ..Auth::default() };
    assert_eq!(
        encode_error(Packet::Auth(auth)),
        EncodeError::InvalidReasonCode(ReasonCode::UnspecifiedError)
    );
}

/// §3.8.2.1.2: a Subscription Identifier is at most 268,435,455.
#[test]
fn sec_3_8_2_1_2_encoder_refuses_subscription_identifier_over_the_maximum() {
    let subscribe = Subscribe {
        packet_id: pid(1),
        subscriptions: vec![Subscription::new(filter("#"), QoS::AtMostOnce)],
        properties: SubscribeProperties {
            subscription_identifier: Some(nz32(MAX_SUBSCRIPTION_ID + 1)),
            user_properties: vec![],
        },
    };
    assert!(matches!(
        encode_error(Packet::Subscribe(subscribe)),
        EncodeError::InvalidPropertyValue(_)
    ));
}

#[rustfmt::skip]
const PUBLISH_TWO_TOPIC_ALIASES: &[u8] = &[
    0x30,                         // fixed header: PUBLISH, QoS 0
    0x0A,                         // remaining length 10
    0x00, 0x01, b't',             // topic name "t"
    0x06,                         // property length 6
    0x23, 0x00, 0x01,             //   Topic Alias 1
    0x23, 0x00, 0x02,             //   Topic Alias 2, a second time
];

/// §3.3.2.3.4: "It is a Protocol Error to include the Topic Alias value more than once."
#[test]
fn sec_3_3_2_3_4_topic_alias_twice_is_a_protocol_error() {
    assert_refused(
        PUBLISH_TWO_TOPIC_ALIASES,
        ErrorKind::DuplicateProperty(property_id::TOPIC_ALIAS),
        ReasonCode::ProtocolError,
    );
}

// ---------------------------------------------------------------------------------------------
// CONNECT: the protocol version, and the payload fields the flags announce (sections 3.1.2,
// 3.1.3, 3.1.4)
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const CONNECT_VERSION_6: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x06,                         // protocol version 6: not one this server speaks (§3.1.2.2)
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

#[rustfmt::skip]
const CONNECT_MQTT_NAME_VERSION_3: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0E,                         // remaining length 14
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x03,                         // protocol version 3: MQTT 3.1 named itself "MQIsdp"
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
];

/// [MQTT-3.1.2-2]: a protocol version the server refuses is answered with Unsupported Protocol
/// Version (0x84) before the connection is closed. The decoder learns no version from it, and
/// offers the 3.1.1 return code 0x01 for a CONNACK the client can read whatever it speaks.
#[test]
fn mqtt_3_1_2_2_unsupported_protocol_version_is_answered_with_0x84() {
    for (vector, level) in [(CONNECT_VERSION_6, 6), (CONNECT_MQTT_NAME_VERSION_3, 3)] {
        let mut d = server();
        let e = decode_error(&mut d, vector);
        assert_eq!(e.kind(), &ErrorKind::UnsupportedProtocolLevel(level));
        assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
        assert_eq!(ReasonCode::UnsupportedProtocolVersion as u8, 0x84);
        assert_eq!(e.packet_type(), Some(PacketType::Connect));
        assert_eq!(e.connect_return_code(), Some(ConnectReturnCode::UnacceptableProtocolVersion));
        assert_eq!(d.version(), None);
    }
}

#[rustfmt::skip]
const CONNECT_WILL_QOS1: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x17,                         // remaining length 23
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x0E,                         // connect flags: will QoS 1 (0x08), will flag (0x04), clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // will property length 0 (§3.1.3.2)
    0x00, 0x01, b'w',             // will topic "w" (§3.1.3.3)
    0x00, 0x02, b'h', b'i',       // will payload "hi" (§3.1.3.4)
];

#[rustfmt::skip]
const CONNECT_WILL_PROPERTIES_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"; no will fields at all
];

#[rustfmt::skip]
const CONNECT_WILL_TOPIC_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x10,                         // remaining length 16
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // will property length 0; no will topic, no will payload
];

#[rustfmt::skip]
const CONNECT_WILL_PAYLOAD_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x13,                         // remaining length 19
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // will property length 0
    0x00, 0x01, b'w',             // will topic "w"; no will payload
];

/// [MQTT-3.1.2-9]: with the will flag set, the Will Properties, Will Topic and Will Payload
/// follow the client identifier; a CONNECT missing any of them is malformed.
#[test]
fn mqtt_3_1_2_9_will_flag_means_will_properties_topic_and_payload() {
    assert_connect_vector(
        CONNECT_WILL_QOS1,
        Connect {
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            ..Connect::new(V5, s("ab"))
        },
    );
    for v in
        [CONNECT_WILL_PROPERTIES_MISSING, CONNECT_WILL_TOPIC_MISSING, CONNECT_WILL_PAYLOAD_MISSING]
    {
        assert_connect_refused(v, ErrorKind::Truncated, ReasonCode::MalformedPacket);
    }
}

#[rustfmt::skip]
const CONNECT_USER_NAME_WITHOUT_FLAG: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x12,                         // remaining length 18
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start; user name flag 0
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // a user name the flags do not announce
];

/// [MQTT-3.1.2-16]: with the user name flag 0 there is no user name in the payload; a string
/// where one would be is refused as left-over bytes, and the encoder writes neither flag nor
/// field.
#[test]
fn mqtt_3_1_2_16_user_name_flag_0_means_no_user_name() {
    assert_connect_refused(
        CONNECT_USER_NAME_WITHOUT_FLAG,
        ErrorKind::TrailingBytes,
        ReasonCode::MalformedPacket,
    );
    let mut buf = BytesMut::new();
    Packet::from(Connect::new(V5, s("ab"))).encode(V5, &mut buf).unwrap();
    assert_eq!(buf[9] & 0x80, 0, "user name flag of a CONNECT without a user name");
    assert_eq!(&buf[13..], b"\x00\x02ab", "the payload ends after the client identifier");
}

#[rustfmt::skip]
const CONNECT_USER_NAME_MISSING: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0F,                         // remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x82,                         // connect flags: user name (0x80), clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"; the user name is missing
];

#[rustfmt::skip]
const CONNECT_USER_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x12,                         // remaining length 18
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x82,                         // connect flags: user name, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00, 0x01, b'u',             // user name "u" (§3.1.3.5)
];

/// [MQTT-3.1.2-17]: with the user name flag 1 a user name follows; without it the CONNECT is
/// malformed.
#[test]
fn mqtt_3_1_2_17_user_name_flag_1_means_a_user_name() {
    assert_connect_vector(
        CONNECT_USER_NAME,
        Connect { username: Some(s("u")), ..Connect::new(V5, s("ab")) },
    );
    assert_connect_refused(
        CONNECT_USER_NAME_MISSING,
        ErrorKind::Truncated,
        ReasonCode::MalformedPacket,
    );
}

#[rustfmt::skip]
const CONNECT_NO_PAYLOAD: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x0B,                         // remaining length 11
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0; no payload, so no client identifier
];

#[rustfmt::skip]
const CONNECT_EMPTY_CLIENT_ID_AND_USER_NAME: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x10,                         // remaining length 16
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x82,                         // connect flags: user name, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x00,                   // client identifier: present, zero bytes long (§3.1.3.1)
    0x00, 0x01, b'u',             // user name "u", after it
];

/// [MQTT-3.1.3-3]: the client identifier is always present, as the first field of the payload,
/// even when it is empty; a CONNECT without it is malformed.
#[test]
fn mqtt_3_1_3_3_client_id_is_present_and_first() {
    assert_connect_refused(CONNECT_NO_PAYLOAD, ErrorKind::Truncated, ReasonCode::MalformedPacket);
    assert_connect_vector(
        CONNECT_EMPTY_CLIENT_ID_AND_USER_NAME,
        Connect { username: Some(s("u")), ..Connect::new(V5, MqttStr::default()) },
    );
}

#[rustfmt::skip]
const CONNECT_WILL_USER_PROPERTIES: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x2A,                         // remaining length 42
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x06,                         // connect flags: will flag, clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x15,                         // will property length 21
    0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'1', // User Property ("b", "1") (§3.1.3.2.8)
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // User Property ("a", "2"): not in key order
    0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'3', // User Property ("b", "3"): a key again
    0x00, 0x01, b'w',             // will topic "w"
    0x00, 0x00,                   // will payload, empty
];

/// [MQTT-3.1.3-10]: Will User Properties keep their order, repeated keys included, from the
/// CONNECT to the will the server publishes; the codec reads and writes them in wire order.
#[test]
fn mqtt_3_1_3_10_will_user_properties_keep_their_order() {
    assert_connect_vector(
        CONNECT_WILL_USER_PROPERTIES,
        Connect {
            will: Some(Will {
                topic: topic("w"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: WillProperties {
                    user_properties: vec![user("b", "1"), user("a", "2"), user("b", "3")],
                    ..WillProperties::default()
                },
            }),
            ..Connect::new(V5, s("ab"))
        },
    );
}

#[rustfmt::skip]
const CONNECT_TRAILING_BYTE: &[u8] = &[
    0x10,                         // fixed header: CONNECT
    0x10,                         // remaining length 16
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name "MQTT"
    0x05,                         // protocol version 5
    0x02,                         // connect flags: clean start
    0x00, 0x3C,                   // keep alive 60 s
    0x00,                         // property length 0
    0x00, 0x02, b'a', b'b',       // client identifier "ab"
    0x00,                         // stray byte: no flag announces a field here
];

/// [MQTT-3.1.4-1]: a CONNECT that does not match the format of section 3.1 is refused; the
/// error carries the reason code (0x80 or above) of the CONNACK the server may send before
/// closing.
#[test]
fn mqtt_3_1_4_1_connect_not_matching_the_format_is_refused() {
    assert_connect_refused(
        CONNECT_TRAILING_BYTE,
        ErrorKind::TrailingBytes,
        ReasonCode::MalformedPacket,
    );
    assert!(ReasonCode::MalformedPacket as u8 >= 0x80);
}
