//! Reason codes (MQTT 5.0 section 2.4) and the MQTT 3.1.1 CONNACK return codes.

use core::fmt;

use super::PacketType;
use super::error::{DecodeError, ErrorKind};

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// An MQTT 5.0 Reason Code (section 2.4), one enum for every packet that carries one.
        ///
        /// Values shared by several names (0x00 is Success, Normal disconnection and Granted
        /// QoS 0) have one variant and associated constants for the other names. MQTT 3.1.1 return
        /// codes are mapped onto these (see [`ConnectReturnCode`] and [`ReasonCode::to_v3_suback`]).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The reason code with this value, if the specification defines one.
            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The name the specification gives this code (for 0x00: "Success").
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00: Success; also Normal disconnection and Granted QoS 0.
    #[default]
    Success = 0x00,
    /// 0x01: Granted QoS 1.
    GrantedQoS1 = 0x01,
    /// 0x02: Granted QoS 2.
    GrantedQoS2 = 0x02,
    /// 0x04: Disconnect with Will Message.
    DisconnectWithWillMessage = 0x04,
    /// 0x10: No matching subscribers.
    NoMatchingSubscribers = 0x10,
    /// 0x11: No subscription existed.
    NoSubscriptionExisted = 0x11,
    /// 0x18: Continue authentication.
    ContinueAuthentication = 0x18,
    /// 0x19: Re-authenticate.
    ReAuthenticate = 0x19,
    /// 0x80: Unspecified error.
    UnspecifiedError = 0x80,
    /// 0x81: Malformed Packet.
    MalformedPacket = 0x81,
    /// 0x82: Protocol Error.
    ProtocolError = 0x82,
    /// 0x83: Implementation specific error.
    ImplementationSpecificError = 0x83,
    /// 0x84: Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84,
    /// 0x85: Client Identifier not valid.
    ClientIdentifierNotValid = 0x85,
    /// 0x86: Bad User Name or Password.
    BadUserNameOrPassword = 0x86,
    /// 0x87: Not authorized.
    NotAuthorized = 0x87,
    /// 0x88: Server unavailable.
    ServerUnavailable = 0x88,
    /// 0x89: Server busy.
    ServerBusy = 0x89,
    /// 0x8A: Banned.
    Banned = 0x8A,
    /// 0x8B: Server shutting down.
    ServerShuttingDown = 0x8B,
    /// 0x8C: Bad authentication method.
    BadAuthenticationMethod = 0x8C,
    /// 0x8D: Keep Alive timeout.
    KeepAliveTimeout = 0x8D,
    /// 0x8E: Session taken over.
    SessionTakenOver = 0x8E,
    /// 0x8F: Topic Filter invalid.
    TopicFilterInvalid = 0x8F,
    /// 0x90: Topic Name invalid.
    TopicNameInvalid = 0x90,
    /// 0x91: Packet Identifier in use.
    PacketIdentifierInUse = 0x91,
    /// 0x92: Packet Identifier not found.
    PacketIdentifierNotFound = 0x92,
    /// 0x93: Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93,
    /// 0x94: Topic Alias invalid.
    TopicAliasInvalid = 0x94,
    /// 0x95: Packet too large.
    PacketTooLarge = 0x95,
    /// 0x96: Message rate too high.
    MessageRateTooHigh = 0x96,
    /// 0x97: Quota exceeded.
    QuotaExceeded = 0x97,
    /// 0x98: Administrative action.
    AdministrativeAction = 0x98,
    /// 0x99: Payload format invalid.
    PayloadFormatInvalid = 0x99,
    /// 0x9A: Retain not supported.
    RetainNotSupported = 0x9A,
    /// 0x9B: QoS not supported.
    QoSNotSupported = 0x9B,
    /// 0x9C: Use another server.
    UseAnotherServer = 0x9C,
    /// 0x9D: Server moved.
    ServerMoved = 0x9D,
    /// 0x9E: Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// 0x9F: Connection rate exceeded.
    ConnectionRateExceeded = 0x9F,
    /// 0xA0: Maximum connect time.
    MaximumConnectTime = 0xA0,
    /// 0xA1: Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
    /// 0xA2: Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: Self = Self::Success;
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: Self = Self::Success;

    /// The code's value on the wire.
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// Whether this code reports a failure (0x80 and above, [MQTT-2.4] ).
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether the specification allows this code in a packet of type `packet` (MQTT 5.0
    /// section 2.4, table 2-6, and the reason code lists of sections 3.2.2.2 to 3.15.2.1).
    pub fn is_valid_for(self, packet: PacketType) -> bool {
        use ReasonCode::*;
        match packet {
            PacketType::ConnAck => matches!(
                self,
                Success
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | UnsupportedProtocolVersion
                    | ClientIdentifierNotValid
                    | BadUserNameOrPassword
                    | NotAuthorized
                    | ServerUnavailable
                    | ServerBusy
                    | Banned
                    | BadAuthenticationMethod
                    | TopicNameInvalid
                    | PacketTooLarge
                    | QuotaExceeded
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | ConnectionRateExceeded
            ),
            PacketType::PubAck | PacketType::PubRec => matches!(
                self,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            PacketType::PubRel | PacketType::PubComp => {
                matches!(self, Success | PacketIdentifierNotFound)
            }
            PacketType::SubAck => matches!(
                self,
                Success
                    | GrantedQoS1
                    | GrantedQoS2
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | SharedSubscriptionsNotSupported
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketType::UnsubAck => matches!(
                self,
                Success
                    | NoSubscriptionExisted
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicFilterInvalid
                    | PacketIdentifierInUse
            ),
            PacketType::Disconnect => matches!(
                self,
                Success
                    | DisconnectWithWillMessage
                    | UnspecifiedError
                    | MalformedPacket
                    | ProtocolError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | ServerBusy
                    | ServerShuttingDown
                    | KeepAliveTimeout
                    | SessionTakenOver
                    | TopicFilterInvalid
                    | TopicNameInvalid
                    | ReceiveMaximumExceeded
                    | TopicAliasInvalid
                    | PacketTooLarge
                    | MessageRateTooHigh
                    | QuotaExceeded
                    | AdministrativeAction
                    | PayloadFormatInvalid
                    | RetainNotSupported
                    | QoSNotSupported
                    | UseAnotherServer
                    | ServerMoved
                    | SharedSubscriptionsNotSupported
                    | ConnectionRateExceeded
                    | MaximumConnectTime
                    | SubscriptionIdentifiersNotSupported
                    | WildcardSubscriptionsNotSupported
            ),
            PacketType::Auth => matches!(self, Success | ContinueAuthentication | ReAuthenticate),
            _ => false,
        }
    }

    /// Reads the reason code byte `b` of a packet of type `packet`: a value the specification
    /// does not define, or does not allow in that packet, is a Malformed Packet.
    pub(crate) fn decode_for(b: u8, packet: PacketType) -> Result<Self, DecodeError> {
        Self::from_u8(b)
            .filter(|c| c.is_valid_for(packet))
            .ok_or_else(|| ErrorKind::InvalidReasonCode(b).into())
    }

    /// The MQTT 3.1.1 SUBACK return code for this code: the granted QoS for 0x00 to 0x02, and
    /// 0x80 (Failure) for every error, the only failure 3.1.1 can express.
    pub const fn to_v3_suback(self) -> u8 {
        match self {
            Self::Success => 0x00,
            Self::GrantedQoS1 => 0x01,
            Self::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), self.value())
    }
}

impl ReasonCode {
    /// The code's name in lower-case words with its value, for logs and people:
    /// `packet too large (0x95)`.
    pub fn words(self) -> Words {
        Words(self)
    }
}

/// A [`ReasonCode`] in words; see [`ReasonCode::words`].
#[derive(Clone, Copy, Debug)]
pub struct Words(ReasonCode);

impl fmt::Display for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.name();
        let mut prev_lower = false;
        let mut chars = name.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            // "QoS" is one word.
            if name[i..].starts_with("QoS") {
                if i > 0 {
                    f.write_str(" ")?;
                }
                f.write_str("qos")?;
                chars.next();
                chars.next();
                prev_lower = true;
                continue;
            }
            // A word starts at a capital after a small letter, and a number after a letter.
            if i > 0 && prev_lower && (c.is_ascii_uppercase() || c.is_ascii_digit()) {
                f.write_str(" ")?;
            }
            write!(f, "{}", c.to_ascii_lowercase())?;
            prev_lower = c.is_ascii_lowercase();
        }
        write!(f, " (0x{:02X})", self.0.value())
    }
}

impl TryFrom<u8> for ReasonCode {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        Self::from_u8(value).ok_or(value)
    }
}

/// An MQTT 3.1.1 CONNACK return code (section 3.2.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0x00: Connection accepted.
    Accepted = 0,
    /// 0x01: Connection refused, unacceptable protocol version.
    UnacceptableProtocolVersion = 1,
    /// 0x02: Connection refused, identifier rejected.
    IdentifierRejected = 2,
    /// 0x03: Connection refused, server unavailable.
    ServerUnavailable = 3,
    /// 0x04: Connection refused, bad user name or password.
    BadUserNameOrPassword = 4,
    /// 0x05: Connection refused, not authorized.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The return code with this value; 6 to 255 are reserved.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }

    /// The nearest 3.1.1 return code for an MQTT 5 CONNACK reason code. 3.1.1 has six codes, so
    /// several v5 codes share one: authentication and authorization refusals become 0x05, the
    /// rest of the server's refusals 0x03.
    pub const fn from_reason(code: ReasonCode) -> Self {
        match code {
            ReasonCode::Success => Self::Accepted,
            ReasonCode::UnsupportedProtocolVersion => Self::UnacceptableProtocolVersion,
            ReasonCode::ClientIdentifierNotValid => Self::IdentifierRejected,
            ReasonCode::BadUserNameOrPassword => Self::BadUserNameOrPassword,
            ReasonCode::NotAuthorized
            | ReasonCode::Banned
            | ReasonCode::BadAuthenticationMethod => Self::NotAuthorized,
            _ => Self::ServerUnavailable,
        }
    }

    /// The MQTT 5 reason code with the same meaning.
    pub const fn to_reason(self) -> ReasonCode {
        match self {
            Self::Accepted => ReasonCode::Success,
            Self::UnacceptableProtocolVersion => ReasonCode::UnsupportedProtocolVersion,
            Self::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            Self::ServerUnavailable => ReasonCode::ServerUnavailable,
            Self::BadUserNameOrPassword => ReasonCode::BadUserNameOrPassword,
            Self::NotAuthorized => ReasonCode::NotAuthorized,
        }
    }
}

#[cfg(test)]
mod words_tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn reason_codes_read_as_words() {
        assert_eq!(ReasonCode::PacketTooLarge.words().to_string(), "packet too large (0x95)");
        assert_eq!(ReasonCode::SessionTakenOver.words().to_string(), "session taken over (0x8E)");
        assert_eq!(ReasonCode::QoSNotSupported.words().to_string(), "qos not supported (0x9B)");
        assert_eq!(ReasonCode::GrantedQoS1.words().to_string(), "granted qos 1 (0x01)");
    }
}
