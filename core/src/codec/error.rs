//! Decode and encode errors, each mapped to what the protocol says must happen next.

use core::fmt;

use super::reason::{ConnectReturnCode, ReasonCode};
use super::string::StrError;
use super::{PacketType, ProtocolVersion};
use crate::topic::TopicError;

/// Why a packet from the network was refused.
///
/// The receiver's duty is fixed by the specification: close the network connection, after
/// sending, in MQTT 5, a DISCONNECT (or, for a bad CONNECT, a CONNACK) with
/// [`reason_code`](Self::reason_code) ([MQTT-4.13.1-1]), and in MQTT 3.1.1 after a CONNACK with
/// [`connect_return_code`](Self::connect_return_code) when that is `Some`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    kind: ErrorKind,
    packet_type: Option<PacketType>,
}

/// What exactly was wrong with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A field runs past the end of the packet, or the packet ends too early.
    Truncated,
    /// Bytes left over after the last field the packet can hold.
    TrailingBytes,
    /// A Variable Byte Integer longer than four bytes (MQTT 5.0 section 1.5.5).
    VarintTooLong,
    /// A Variable Byte Integer not in its shortest form ([MQTT-1.5.5-1]).
    NonMinimalVarint,
    /// A UTF-8 string that is not valid ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
    InvalidString(StrError),
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    ReservedPacketType(u8),
    /// Fixed-header flags that the packet type reserves ([MQTT-2.1.3-1], 3.1.1 [MQTT-2.2.2-2]).
    InvalidFlags(u8),
    /// QoS 3 ([MQTT-3.3.1-4]).
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH ([MQTT-3.3.1-2]).
    DupOnQoS0,
    /// The whole packet would be larger than the Maximum Packet Size.
    PacketTooLarge {
        /// Its size in bytes, fixed header included.
        size: u64,
        /// The limit.
        max: u32,
    },
    /// A Protocol Name other than "MQTT" (or "MQIsdp" for level 3) ([MQTT-3.1.2-1]).
    InvalidProtocolName,
    /// A protocol level this codec does not speak ([MQTT-3.1.2-2]).
    UnsupportedProtocolLevel(u8),
    /// The reserved bit of the CONNECT flags is set ([MQTT-3.1.2-3]).
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3
    /// ([MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15]).
    InvalidWillFlags,
    /// A password without a user name, which MQTT 3.1.1 forbids ([MQTT-3.1.2-22]).
    PasswordWithoutUsername,
    /// Reserved CONNACK flag bits set ([MQTT-3.2.2-1]).
    ConnAckReservedFlags,
    /// Session Present set on a refused connection ([MQTT-3.2.2-4], [MQTT-3.2.2-6]).
    SessionPresentOnRefusal,
    /// A reason or return code the specification does not allow in this packet.
    InvalidReasonCode(u8),
    /// Packet Identifier 0 ([MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]).
    ZeroPacketId,
    /// A topic name that is not valid ([MQTT-3.3.2-2], [MQTT-4.7.3-1]).
    InvalidTopicName(TopicError),
    /// A zero-length topic name in a PUBLISH without a Topic Alias (MQTT 5.0 section 3.3.2.1).
    EmptyTopicWithoutAlias,
    /// A topic filter that is not valid ([MQTT-4.7.1-1] to [MQTT-4.7.1-3], [MQTT-4.8.2-1]).
    InvalidTopicFilter(TopicError),
    /// A SUBSCRIBE or UNSUBSCRIBE without any topic filter ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    NoTopicFilters,
    /// Reserved bits of the Subscription Options set ([MQTT-3.8.3-5], 3.1.1 [MQTT-3.8.3-4]).
    SubscriptionOptionsReserved,
    /// Retain Handling 3 (MQTT 5.0 section 3.8.3.1).
    InvalidRetainHandling,
    /// Maximum QoS 3 in an MQTT 5 subscription: a protocol error there (section 3.8.3.1),
    /// unlike 3.1.1 where it is malformed ([MQTT-3.8.3-4]) and reported as [`Self::InvalidQoS`].
    SubscriptionQoS3,
    /// A Topic Alias of 0 ([MQTT-3.3.2-8]): DISCONNECT with 0x94.
    TopicAliasZero,
    /// No Local on a Shared Subscription ([MQTT-3.8.3-4]).
    NoLocalOnSharedSubscription,
    /// A SUBACK or UNSUBACK without any reason code.
    NoReasonCodes,
    /// An unknown Property Identifier.
    UnknownProperty(u32),
    /// A property the specification does not allow in this packet (MQTT 5.0 section 2.2.2.2).
    PropertyNotAllowed(u8),
    /// A property that may appear once appears again.
    DuplicateProperty(u8),
    /// A property whose value is out of its range (for example Receive Maximum 0).
    InvalidPropertyValue(u8),
    /// Authentication Data without Authentication Method (MQTT 5.0 section 3.1.2.11.10).
    AuthDataWithoutMethod,
    /// A packet other than CONNECT before the protocol version is known ([MQTT-3.1.0-1]).
    NotConnect,
}

impl DecodeError {
    pub(crate) const fn new(kind: ErrorKind) -> Self {
        Self { kind, packet_type: None }
    }

    pub(crate) fn in_packet(mut self, packet_type: PacketType) -> Self {
        self.packet_type.get_or_insert(packet_type);
        self
    }

    /// What was wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The type of the refused packet, when the fixed header got that far.
    pub fn packet_type(&self) -> Option<PacketType> {
        self.packet_type
    }

    /// The MQTT 5 reason code to send in the DISCONNECT (or CONNACK) before closing.
    pub fn reason_code(&self) -> ReasonCode {
        use ErrorKind::*;
        match &self.kind {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolLevel(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            DupOnQoS0
            | SessionPresentOnRefusal
            | ZeroPacketId
            | EmptyTopicWithoutAlias
            | NoTopicFilters
            | NoReasonCodes
            | InvalidRetainHandling
            | SubscriptionQoS3
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod
            | NotConnect => ReasonCode::ProtocolError,
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            Truncated
            | TrailingBytes
            | VarintTooLong
            | NonMinimalVarint
            | InvalidString(_)
            | ReservedPacketType(_)
            | InvalidFlags(_)
            | InvalidQoS
            | ConnectReservedFlag
            | InvalidWillFlags
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | InvalidReasonCode(_)
            | SubscriptionOptionsReserved
            | UnknownProperty(_)
            | PropertyNotAllowed(_) => ReasonCode::MalformedPacket,
        }
    }

    /// For a refused MQTT 3.1.1 CONNECT: the CONNACK return code the server must send before it
    /// closes the connection, if the specification asks for one. Only an unacceptable protocol
    /// level does ([MQTT-3.1.2-2]); every other violation closes the connection without a CONNACK
    /// ([MQTT-4.8.0-1]).
    pub fn connect_return_code(&self) -> Option<ConnectReturnCode> {
        match self.kind {
            ErrorKind::UnsupportedProtocolLevel(_) => {
                Some(ConnectReturnCode::UnacceptableProtocolVersion)
            }
            _ => None,
        }
    }
}

impl From<ErrorKind> for DecodeError {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = self.packet_type {
            write!(f, "{t}: ")?;
        }
        use ErrorKind::*;
        match &self.kind {
            Truncated => f.write_str("packet ends before its last field"),
            TrailingBytes => f.write_str("bytes left over after the last field"),
            VarintTooLong => f.write_str("variable byte integer longer than 4 bytes"),
            NonMinimalVarint => f.write_str("variable byte integer not in its shortest form"),
            InvalidString(e) => write!(f, "invalid UTF-8 string: {e}"),
            ReservedPacketType(t) => write!(f, "reserved packet type {t}"),
            InvalidFlags(b) => write!(f, "reserved fixed header flags 0x{b:x}"),
            InvalidQoS => f.write_str("QoS 3"),
            DupOnQoS0 => f.write_str("DUP set on a QoS 0 PUBLISH"),
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum packet size {max}")
            }
            InvalidProtocolName => f.write_str("unknown protocol name"),
            UnsupportedProtocolLevel(l) => write!(f, "unsupported protocol level {l}"),
            ConnectReservedFlag => f.write_str("reserved CONNECT flag set"),
            InvalidWillFlags => f.write_str("will QoS or retain without a will, or will QoS 3"),
            PasswordWithoutUsername => f.write_str("password without user name"),
            ConnAckReservedFlags => f.write_str("reserved CONNACK flags set"),
            SessionPresentOnRefusal => f.write_str("session present on a refused connection"),
            InvalidReasonCode(c) => write!(f, "reason code 0x{c:02x} not allowed here"),
            ZeroPacketId => f.write_str("packet identifier 0"),
            InvalidTopicName(e) => write!(f, "invalid topic name: {e}"),
            EmptyTopicWithoutAlias => f.write_str("empty topic name without a topic alias"),
            InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
            NoTopicFilters => f.write_str("no topic filters"),
            SubscriptionOptionsReserved => f.write_str("reserved subscription option bits set"),
            InvalidRetainHandling => f.write_str("retain handling 3"),
            SubscriptionQoS3 => f.write_str("subscription maximum QoS 3"),
            TopicAliasZero => f.write_str("topic alias 0"),
            NoLocalOnSharedSubscription => f.write_str("no local on a shared subscription"),
            NoReasonCodes => f.write_str("no reason codes"),
            UnknownProperty(id) => write!(f, "unknown property 0x{id:02x}"),
            PropertyNotAllowed(id) => write!(f, "property 0x{id:02x} not allowed here"),
            DuplicateProperty(id) => write!(f, "property 0x{id:02x} appears more than once"),
            InvalidPropertyValue(id) => write!(f, "property 0x{id:02x} has an invalid value"),
            AuthDataWithoutMethod => f.write_str("authentication data without a method"),
            NotConnect => f.write_str("first packet is not CONNECT"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a packet could not be encoded. Each is a mistake of the caller, or a packet that the
/// peer's limits do not let us send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet is larger than the peer's Maximum Packet Size even without the properties the
    /// specification lets a sender drop.
    PacketTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// The packet's remaining length exceeds 268,435,455 bytes.
    RemainingLengthTooLarge,
    /// A binary field longer than 65,535 bytes; names the field.
    FieldTooLong(&'static str),
    /// A QoS 1 or 2 PUBLISH without a packet identifier.
    MissingPacketId,
    /// A QoS 0 PUBLISH with a packet identifier ([MQTT-2.2.1-2]).
    UnexpectedPacketId,
    /// A packet or field that does not exist in this protocol version (AUTH before MQTT 5, a
    /// zero-length topic in 3.1.1).
    NotInVersion(ProtocolVersion),
    /// A SUBSCRIBE, UNSUBSCRIBE, SUBACK or UNSUBACK with nothing in it.
    Empty,
    /// No Local on a shared subscription ([MQTT-3.8.3-4]).
    NoLocalOnSharedSubscription,
    /// A reason code not allowed in this packet.
    InvalidReasonCode(ReasonCode),
    /// A property whose value is out of range (a zero Topic Alias, Receive Maximum or Maximum
    /// Packet Size, a Subscription Identifier of 0 or above 268,435,455).
    InvalidPropertyValue(&'static str),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the peer's maximum packet size {max}")
            }
            Self::RemainingLengthTooLarge => f.write_str("packet exceeds 268435455 bytes"),
            Self::FieldTooLong(field) => write!(f, "{field} is longer than 65535 bytes"),
            Self::MissingPacketId => f.write_str("QoS 1 or 2 PUBLISH without a packet identifier"),
            Self::UnexpectedPacketId => f.write_str("QoS 0 PUBLISH with a packet identifier"),
            Self::NotInVersion(v) => write!(f, "not expressible in {v}"),
            Self::Empty => f.write_str("packet must carry at least one entry"),
            Self::NoLocalOnSharedSubscription => f.write_str("No Local on a shared subscription"),
            Self::InvalidReasonCode(c) => write!(f, "reason code {c} not allowed in this packet"),
            Self::InvalidPropertyValue(p) => write!(f, "{p} is out of range"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}
