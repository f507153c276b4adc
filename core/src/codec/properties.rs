//! MQTT 5.0 properties (section 2.2.2): typed per packet, checked against the specification's
//! table of which property may appear where.
//!
//! Every property set keeps absent and present-with-default apart (`Option`), so a decoded packet
//! encodes back to the same bytes. User Properties keep their order and may repeat.

use alloc::vec::Vec;
use bytes::Bytes;
use core::num::{NonZeroU16, NonZeroU32};

use super::error::{DecodeError, EncodeError, ErrorKind};
use super::string::MqttStr;
use super::wire::{MAX_VARINT, Reader, Sink, measure, varint_len};
use super::{QoS, check_binary};
use crate::topic::TopicName;

/// A User Property: a name and a value, both UTF-8 strings. Order and repeats are kept.
pub type UserProperty = (MqttStr, MqttStr);

/// A Subscription Identifier: 1 to 268,435,455 (MQTT 5.0 section 3.8.2.1.2).
pub type SubscriptionId = NonZeroU32;

/// The largest Subscription Identifier.
pub const MAX_SUBSCRIPTION_ID: u32 = MAX_VARINT;

/// Property identifiers (MQTT 5.0 table 2-4).
#[allow(missing_docs)]
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}
use id::*;

/// The data type of each property (MQTT 5.0 table 2-4).
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    U16,
    U32,
    Varint,
    Str,
    Bin,
    Pair,
}

const fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::U16,
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Kind::U32,
        SUBSCRIPTION_IDENTIFIER => Kind::Varint,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Kind::Str,
        CORRELATION_DATA | AUTHENTICATION_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => return None,
    })
}

/// Where a property block sits: each has its own set of allowed properties.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: Reason String and User Property.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

impl Context {
    /// The properties allowed here (MQTT 5.0 table 2-4).
    const fn allowed(self) -> u64 {
        match self {
            Self::Connect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            Self::Will => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ]),
            Self::ConnAck => mask(&[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ]),
            Self::Publish => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            Self::Ack => mask(&[REASON_STRING, USER_PROPERTY]),
            Self::Subscribe => mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            Self::Unsubscribe => mask(&[USER_PROPERTY]),
            Self::Disconnect => {
                mask(&[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY])
            }
            Self::Auth => {
                mask(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY])
            }
        }
    }

    /// Whether `id` may appear more than once here: User Property always, Subscription
    /// Identifier in a PUBLISH (one per matching subscription, [MQTT-3.3.4-4]).
    fn repeatable(self, id: u8) -> bool {
        id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && self == Self::Publish)
    }
}

/// One decoded property value.
enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Str(MqttStr),
    Bin(Bytes),
    Pair(MqttStr, MqttStr),
}

fn invalid(id: u8) -> DecodeError {
    DecodeError::new(ErrorKind::InvalidPropertyValue(id))
}

/// Reads a property block (length and properties) and hands each property to `f`, after
/// checking it is known ([MQTT-2.2.2-?]: unknown is malformed), allowed here, and not a repeat.
fn read(
    r: &mut Reader,
    ctx: Context,
    mut f: impl FnMut(u8, Value) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut p = r.sub(len as usize)?;
    let allowed = ctx.allowed();
    let mut seen = 0u64;
    while !p.is_empty() {
        let raw = p.varint()?;
        let Some(id) = u8::try_from(raw).ok().filter(|&i| i < 64 && kind(i).is_some()) else {
            return Err(ErrorKind::UnknownProperty(raw).into());
        };
        let bit = 1u64 << id;
        if allowed & bit == 0 {
            return Err(ErrorKind::PropertyNotAllowed(id).into());
        }
        if !ctx.repeatable(id) {
            if seen & bit != 0 {
                return Err(ErrorKind::DuplicateProperty(id).into());
            }
            seen |= bit;
        }
        // `kind` is Some: checked above.
        let value = match kind(id) {
            Some(Kind::Byte) => Value::Byte(p.u8()?),
            Some(Kind::U16) => Value::U16(p.u16()?),
            Some(Kind::U32) => Value::U32(p.u32()?),
            Some(Kind::Varint) => Value::U32(p.varint()?),
            Some(Kind::Str) => Value::Str(p.string()?),
            Some(Kind::Bin) => Value::Bin(p.binary()?),
            Some(Kind::Pair) => Value::Pair(p.string()?, p.string()?),
            None => return Err(ErrorKind::UnknownProperty(raw).into()),
        };
        f(id, value)?;
    }
    Ok(())
}

fn flag(id: u8, v: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(invalid(id)),
    }
}

fn topic(id: u8, s: MqttStr) -> Result<TopicName, DecodeError> {
    TopicName::try_from(s).map_err(|_| invalid(id))
}

fn sub_id(v: u32) -> Result<SubscriptionId, DecodeError> {
    NonZeroU32::new(v).ok_or_else(|| invalid(SUBSCRIPTION_IDENTIFIER))
}

/// A property set that can be written and measured.
pub(crate) trait PropertySet {
    /// Writes the properties, without the length prefix.
    fn write<S: Sink>(&self, s: &mut S);

    /// Checks the values the types cannot: lengths of binary data, ranges.
    fn check(&self) -> Result<(), EncodeError>;

    /// Whether no property is set.
    fn is_empty(&self) -> bool;

    /// Drops Reason String (`level` 1) and then also User Properties (`level` 2), which a sender
    /// may leave out to fit the peer's Maximum Packet Size. Sets that hold neither ignore it.
    fn strip(&mut self, _level: u8) {}
}

/// The size of a property block, its length prefix included.
pub(crate) fn block_len<P: PropertySet>(p: &P) -> usize {
    if p.is_empty() {
        return 1;
    }
    let len = measure(|c| p.write(c));
    varint_len(len as u32) + len
}

/// Writes a property block: the length, then the properties. An empty block is one zero byte,
/// written without walking the set; a counting sink measures the set once.
pub(crate) fn put<S: Sink, P: PropertySet>(s: &mut S, p: &P) {
    if p.is_empty() {
        s.put_u8(0);
        return;
    }
    let len = measure(|c| p.write(c));
    if s.counts_only() {
        s.skip(varint_len(len as u32) + len);
        return;
    }
    s.put_varint(len as u32);
    p.write(s);
}

fn put_byte<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u8(v);
    }
}
fn put_flag<S: Sink>(s: &mut S, id: u8, v: Option<bool>) {
    put_byte(s, id, v.map(u8::from));
}
fn put_u16<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u16(v);
    }
}
fn put_u32<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u32(v);
    }
}
fn put_str<S: Sink>(s: &mut S, id: u8, v: Option<&MqttStr>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_string(v);
    }
}
fn put_bin<S: Sink>(s: &mut S, id: u8, v: Option<&Bytes>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_binary(v);
    }
}
fn put_users<S: Sink>(s: &mut S, users: &[UserProperty]) {
    for (k, v) in users {
        s.put_u8(USER_PROPERTY);
        s.put_string(k);
        s.put_string(v);
    }
}
fn check_sub_id(v: SubscriptionId) -> Result<(), EncodeError> {
    if v.get() > MAX_SUBSCRIPTION_ID {
        return Err(EncodeError::InvalidPropertyValue("Subscription Identifier"));
    }
    Ok(())
}

/// Payload Format Indicator (MQTT 5.0 section 3.3.2.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified,
    /// 1: UTF-8 encoded character data.
    Utf8,
}

impl PayloadFormat {
    fn decode(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::Unspecified),
            1 => Ok(Self::Utf8),
            _ => Err(invalid(PAYLOAD_FORMAT_INDICATOR)),
        }
    }

    fn value(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::Utf8 => 1,
        }
    }
}

/// Properties of CONNECT (MQTT 5.0 section 3.1.2.11).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds; absent means 0.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum: QoS 1 and 2 publishes the client will process at once.
    pub receive_maximum: Option<NonZeroU16>,
    /// Maximum Packet Size the client accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Topic Alias Maximum the client accepts; absent means 0.
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information.
    pub request_response_information: Option<bool>,
    /// Request Problem Information.
    pub request_problem_information: Option<bool>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method, for enhanced authentication.
    pub authentication_method: Option<MqttStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Connect, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
                (RECEIVE_MAXIMUM, Value::U16(v)) => {
                    p.receive_maximum = Some(NonZeroU16::new(v).ok_or_else(|| invalid(id))?);
                }
                (MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                    p.maximum_packet_size = Some(NonZeroU32::new(v).ok_or_else(|| invalid(id))?);
                }
                (TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => p.topic_alias_maximum = Some(v),
                (REQUEST_RESPONSE_INFORMATION, Value::Byte(v)) => {
                    p.request_response_information = Some(flag(id, v)?);
                }
                (REQUEST_PROBLEM_INFORMATION, Value::Byte(v)) => {
                    p.request_problem_information = Some(flag(id, v)?);
                }
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
                (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(ErrorKind::AuthDataWithoutMethod.into());
        }
        Ok(p)
    }
}

impl PropertySet for ConnectProperties {
    fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.receive_maximum.is_none()
            && self.maximum_packet_size.is_none()
            && self.topic_alias_maximum.is_none()
            && self.request_response_information.is_none()
            && self.request_problem_information.is_none()
            && self.user_properties.is_empty()
            && self.authentication_method.is_none()
            && self.authentication_data.is_none()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum.map(NonZeroU16::get));
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size.map(NonZeroU32::get));
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_flag(s, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        put_flag(s, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        check_binary(self.authentication_data.as_ref(), "Authentication Data")
    }
}

/// Will Properties of CONNECT (MQTT 5.0 section 3.1.3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// Will Delay Interval in seconds.
    pub will_delay_interval: Option<u32>,
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content Type.
    pub content_type: Option<MqttStr>,
    /// Response Topic.
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
}

impl WillProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Will, |id, v| {
            match (id, v) {
                (WILL_DELAY_INTERVAL, Value::U32(v)) => p.will_delay_interval = Some(v),
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => {
                    p.payload_format_indicator = Some(PayloadFormat::decode(v)?);
                }
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => p.message_expiry_interval = Some(v),
                (CONTENT_TYPE, Value::Str(v)) => p.content_type = Some(v),
                (RESPONSE_TOPIC, Value::Str(v)) => p.response_topic = Some(topic(id, v)?),
                (CORRELATION_DATA, Value::Bin(v)) => p.correlation_data = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl PropertySet for WillProperties {
    fn is_empty(&self) -> bool {
        self.will_delay_interval.is_none()
            && self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_byte(
            s,
            PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(PayloadFormat::value),
        );
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(s, CONTENT_TYPE, self.content_type.as_ref());
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_ref().map(TopicName::as_mqtt_str));
        put_bin(s, CORRELATION_DATA, self.correlation_data.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        check_binary(self.correlation_data.as_ref(), "Correlation Data")
    }
}

/// Properties of CONNACK (MQTT 5.0 section 3.2.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// Session Expiry Interval the server uses, when it differs from the client's.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum of the server.
    pub receive_maximum: Option<NonZeroU16>,
    /// Maximum QoS the server supports: only 0 or 1 may be sent; absent means 2.
    pub maximum_qos: Option<QoS>,
    /// Retain Available; absent means available.
    pub retain_available: Option<bool>,
    /// Maximum Packet Size the server accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Assigned Client Identifier, when the client sent an empty one.
    pub assigned_client_identifier: Option<MqttStr>,
    /// Topic Alias Maximum the server accepts; absent means 0.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String.
    pub reason_string: Option<MqttStr>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
    /// Wildcard Subscription Available; absent means available.
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available; absent means available.
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available; absent means available.
    pub shared_subscription_available: Option<bool>,
    /// Server Keep Alive, which replaces the client's keep-alive.
    pub server_keep_alive: Option<u16>,
    /// Response Information.
    pub response_information: Option<MqttStr>,
    /// Server Reference.
    pub server_reference: Option<MqttStr>,
    /// Authentication Method.
    pub authentication_method: Option<MqttStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::ConnAck, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
                (RECEIVE_MAXIMUM, Value::U16(v)) => {
                    p.receive_maximum = Some(NonZeroU16::new(v).ok_or_else(|| invalid(id))?);
                }
                (MAXIMUM_QOS, Value::Byte(v)) => {
                    p.maximum_qos = Some(match v {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => return Err(invalid(id)),
                    });
                }
                (RETAIN_AVAILABLE, Value::Byte(v)) => p.retain_available = Some(flag(id, v)?),
                (MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                    p.maximum_packet_size = Some(NonZeroU32::new(v).ok_or_else(|| invalid(id))?);
                }
                (ASSIGNED_CLIENT_IDENTIFIER, Value::Str(v)) => {
                    p.assigned_client_identifier = Some(v);
                }
                (TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => p.topic_alias_maximum = Some(v),
                (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                    p.wildcard_subscription_available = Some(flag(id, v)?);
                }
                (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(v)) => {
                    p.subscription_identifiers_available = Some(flag(id, v)?);
                }
                (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                    p.shared_subscription_available = Some(flag(id, v)?);
                }
                (SERVER_KEEP_ALIVE, Value::U16(v)) => p.server_keep_alive = Some(v),
                (RESPONSE_INFORMATION, Value::Str(v)) => p.response_information = Some(v),
                (SERVER_REFERENCE, Value::Str(v)) => p.server_reference = Some(v),
                (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
                (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl PropertySet for ConnAckProperties {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, RECEIVE_MAXIMUM, self.receive_maximum.map(NonZeroU16::get));
        put_byte(s, MAXIMUM_QOS, self.maximum_qos.map(|q| q as u8));
        put_flag(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size.map(NonZeroU32::get));
        put_str(s, ASSIGNED_CLIENT_IDENTIFIER, self.assigned_client_identifier.as_ref());
        put_u16(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_flag(s, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_flag(s, SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifiers_available);
        put_flag(s, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        put_u16(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(s, RESPONSE_INFORMATION, self.response_information.as_ref());
        put_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            // [MQTT-3.2.2-9]: a server that supports QoS 2 leaves Maximum QoS out.
            return Err(EncodeError::InvalidPropertyValue("Maximum QoS"));
        }
        check_binary(self.authentication_data.as_ref(), "Authentication Data")
    }

    fn strip(&mut self, level: u8) {
        self.reason_string = None;
        if level >= 2 {
            self.user_properties.clear();
        }
    }
}

/// Properties of PUBLISH (MQTT 5.0 section 3.3.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Message Expiry Interval in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias.
    pub topic_alias: Option<NonZeroU16>,
    /// Response Topic.
    pub response_topic: Option<TopicName>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
    /// Subscription Identifiers of the subscriptions that matched (server to client only).
    pub subscription_identifiers: Vec<SubscriptionId>,
    /// Content Type.
    pub content_type: Option<MqttStr>,
}

impl PublishProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        if r.skip_empty_properties() {
            return Ok(p);
        }
        read(r, Context::Publish, |id, v| {
            match (id, v) {
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => {
                    p.payload_format_indicator = Some(PayloadFormat::decode(v)?);
                }
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => p.message_expiry_interval = Some(v),
                (TOPIC_ALIAS, Value::U16(v)) => {
                    // [MQTT-3.3.2-8]: a Topic Alias of 0 is answered with 0x94.
                    let alias = NonZeroU16::new(v).ok_or(ErrorKind::TopicAliasZero)?;
                    p.topic_alias = Some(alias);
                }
                (RESPONSE_TOPIC, Value::Str(v)) => p.response_topic = Some(topic(id, v)?),
                (CORRELATION_DATA, Value::Bin(v)) => p.correlation_data = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (SUBSCRIPTION_IDENTIFIER, Value::U32(v)) => {
                    p.subscription_identifiers.push(sub_id(v)?);
                }
                (CONTENT_TYPE, Value::Str(v)) => p.content_type = Some(v),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl PropertySet for PublishProperties {
    fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_byte(
            s,
            PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(PayloadFormat::value),
        );
        put_u32(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, TOPIC_ALIAS, self.topic_alias.map(NonZeroU16::get));
        put_str(s, RESPONSE_TOPIC, self.response_topic.as_ref().map(TopicName::as_mqtt_str));
        put_bin(s, CORRELATION_DATA, self.correlation_data.as_ref());
        for id in &self.subscription_identifiers {
            s.put_u8(SUBSCRIPTION_IDENTIFIER);
            s.put_varint(id.get());
        }
        put_str(s, CONTENT_TYPE, self.content_type.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        for id in &self.subscription_identifiers {
            check_sub_id(*id)?;
        }
        check_binary(self.correlation_data.as_ref(), "Correlation Data")
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a Reason String and User
/// Properties (MQTT 5.0 sections 3.4.2.2, 3.5.2.2, 3.6.2.2, 3.7.2.2, 3.9.2.1, 3.11.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// Reason String.
    pub reason_string: Option<MqttStr>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Ack, |id, v| {
            match (id, v) {
                (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl PropertySet for AckProperties {
    fn is_empty(&self) -> bool {
        AckProperties::is_empty(self)
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        Ok(())
    }

    fn strip(&mut self, level: u8) {
        self.reason_string = None;
        if level >= 2 {
            self.user_properties.clear();
        }
    }
}

/// Properties of SUBSCRIBE (MQTT 5.0 section 3.8.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// Subscription Identifier.
    pub subscription_identifier: Option<SubscriptionId>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
}

impl SubscribeProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Subscribe, |id, v| {
            match (id, v) {
                (SUBSCRIPTION_IDENTIFIER, Value::U32(v)) => {
                    p.subscription_identifier = Some(sub_id(v)?);
                }
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl PropertySet for SubscribeProperties {
    fn is_empty(&self) -> bool {
        self.subscription_identifier.is_none() && self.user_properties.is_empty()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            s.put_u8(SUBSCRIPTION_IDENTIFIER);
            s.put_varint(id.get());
        }
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        self.subscription_identifier.map_or(Ok(()), check_sub_id)
    }
}

/// Properties of UNSUBSCRIBE (MQTT 5.0 section 3.10.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
}

impl UnsubscribeProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Unsubscribe, |id, v| {
            match (id, v) {
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }
}

impl PropertySet for UnsubscribeProperties {
    fn is_empty(&self) -> bool {
        self.user_properties.is_empty()
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// Properties of DISCONNECT (MQTT 5.0 section 3.14.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// Session Expiry Interval (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// Reason String.
    pub reason_string: Option<MqttStr>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
    /// Server Reference.
    pub server_reference: Option<MqttStr>,
}

impl DisconnectProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Disconnect, |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
                (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (SERVER_REFERENCE, Value::Str(v)) => p.server_reference = Some(v),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }
}

impl PropertySet for DisconnectProperties {
    fn is_empty(&self) -> bool {
        DisconnectProperties::is_empty(self)
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_str(s, SERVER_REFERENCE, self.server_reference.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        Ok(())
    }

    fn strip(&mut self, level: u8) {
        self.reason_string = None;
        if level >= 2 {
            self.user_properties.clear();
        }
    }
}

/// Properties of AUTH (MQTT 5.0 section 3.15.2.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// Authentication Method.
    pub authentication_method: Option<MqttStr>,
    /// Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// Reason String.
    pub reason_string: Option<MqttStr>,
    /// User Properties.
    pub user_properties: Vec<UserProperty>,
}

impl AuthProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = Self::default();
        read(r, Context::Auth, |id, v| {
            match (id, v) {
                (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
                (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
                (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Err(ErrorKind::PropertyNotAllowed(id).into()),
            }
            Ok(())
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(ErrorKind::AuthDataWithoutMethod.into());
        }
        Ok(p)
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }
}

impl PropertySet for AuthProperties {
    fn is_empty(&self) -> bool {
        AuthProperties::is_empty(self)
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_str(s, AUTHENTICATION_METHOD, self.authentication_method.as_ref());
        put_bin(s, AUTHENTICATION_DATA, self.authentication_data.as_ref());
        put_str(s, REASON_STRING, self.reason_string.as_ref());
        put_users(s, &self.user_properties);
    }

    fn check(&self) -> Result<(), EncodeError> {
        check_binary(self.authentication_data.as_ref(), "Authentication Data")
    }

    fn strip(&mut self, level: u8) {
        self.reason_string = None;
        if level >= 2 {
            self.user_properties.clear();
        }
    }
}
