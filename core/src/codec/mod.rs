//! The MQTT codec: every control packet of MQTT 3.1.1 and 5.0 in one model.
//!
//! - [`Decoder`] splits complete frames off the caller's `BytesMut` and decodes them; topics,
//!   strings, binary properties and payloads stay views into the received bytes.
//! - [`Encoder`] writes packets, sized exactly before a byte is written, within the peer's
//!   Maximum Packet Size.
//! - [`Packet`] and the packet structs are shared by both versions: fields that exist only in
//!   MQTT 5 (properties, most reason codes) are left out when encoding 3.1.1.
//!
//! The decoder is strict: everything the specifications call malformed or a protocol error is a
//! [`DecodeError`] naming the reason code to answer with.

use alloc::boxed::Box;
use bytes::{Buf, Bytes, BytesMut};
use core::fmt;
use core::num::NonZeroU16;

mod connect;
mod control;
mod error;
mod properties;
mod publish;
mod reason;
mod string;
mod subscribe;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError, ErrorKind};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    MAX_SUBSCRIPTION_ID, PayloadFormat, PublishProperties, SubscribeProperties, SubscriptionId,
    UnsubscribeProperties, UserProperty, WillProperties, id as property_id,
};
pub use publish::{PubAck, Publish, PublishRef};
pub use reason::{ConnectReturnCode, ReasonCode, Words};
pub use string::{MAX_STRING_LEN, MqttStr, StrError};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use wire::MAX_VARINT;

use wire::{Reader, Sink, decode_varint, measure, varint_len};

/// The largest packet MQTT can frame: one type byte, four length bytes and 268,435,455 more.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VARINT;

/// A Packet Identifier: never 0 ([MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]).
pub type PacketId = NonZeroU16;

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol level 3 ("MQIsdp"). Encoded and decoded like 3.1.1 except CONNECT.
    V3_1,
    /// MQTT 3.1.1, protocol level 4.
    V3_1_1,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The Protocol Level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The version with this Protocol Level.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            3 => Some(Self::V3_1),
            4 => Some(Self::V3_1_1),
            5 => Some(Self::V5),
            _ => None,
        }
    }

    /// Whether this is MQTT 5.
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V3_1 => "MQTT 3.1",
            Self::V3_1_1 => "MQTT 3.1.1",
            Self::V5 => "MQTT 5.0",
        })
    }
}

/// Quality of Service (section 4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum QoS {
    /// 0: at most once.
    #[default]
    AtMostOnce = 0,
    /// 1: at least once.
    AtLeastOnce = 1,
    /// 2: exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with this value; 3 is not one ([MQTT-3.3.1-4]).
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet types (section 2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type in the high nibble of a fixed header's first byte.
    pub const fn from_u8(v: u8) -> Option<Self> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this type requires; PUBLISH, whose flags carry DUP, QoS and
    /// RETAIN, has none fixed (MQTT 5.0 table 2-2, 3.1.1 table 2.2).
    const fn fixed_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    /// The name the specification uses, such as "PUBACK".
    pub const fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Packet {
    /// Boxed: CONNECT is large and rare, and every `Packet` is as large as its largest variant.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

macro_rules! from_packet {
    ($($t:ident),*) => {$(
        impl From<$t> for Packet {
            fn from(p: $t) -> Self {
                Packet::$t(p)
            }
        }
    )*};
}
impl From<Connect> for Packet {
    fn from(p: Connect) -> Self {
        Packet::Connect(Box::new(p))
    }
}

from_packet!(ConnAck, Publish, Subscribe, SubAck, Unsubscribe, UnsubAck, Disconnect, Auth);

/// Reads a Packet Identifier, refusing 0.
pub(crate) fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16()?).ok_or_else(|| ErrorKind::ZeroPacketId.into())
}

/// Fails unless every byte of the frame was used.
pub(crate) fn end(r: &Reader) -> Result<(), DecodeError> {
    if r.is_empty() { Ok(()) } else { Err(ErrorKind::TrailingBytes.into()) }
}

pub(crate) fn check_binary(b: Option<&Bytes>, field: &'static str) -> Result<(), EncodeError> {
    match b {
        Some(b) if b.len() > usize::from(u16::MAX) => Err(EncodeError::FieldTooLong(field)),
        _ => Ok(()),
    }
}

impl Packet {
    /// This packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// Decodes the body of a packet whose fixed header has been read.
    #[inline]
    fn decode_body(
        kind: PacketType,
        flags: u8,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let r = &mut r;
        Ok(match kind {
            PacketType::Connect => Self::Connect(Box::new(Connect::decode(r)?)),
            PacketType::ConnAck => Self::ConnAck(ConnAck::decode(r, version)?),
            PacketType::Publish => Self::Publish(Publish::decode(flags, r, version)?),
            PacketType::PubAck => Self::PubAck(PubAck::decode(kind, r, version)?),
            PacketType::PubRec => Self::PubRec(PubAck::decode(kind, r, version)?),
            PacketType::PubRel => Self::PubRel(PubAck::decode(kind, r, version)?),
            PacketType::PubComp => Self::PubComp(PubAck::decode(kind, r, version)?),
            PacketType::Subscribe => Self::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Self::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Self::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Self::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => {
                end(r)?;
                Self::PingReq
            }
            PacketType::PingResp => {
                end(r)?;
                Self::PingResp
            }
            PacketType::Disconnect => Self::Disconnect(Disconnect::decode(r, version)?),
            PacketType::Auth => Self::Auth(Auth::decode(r)?),
        })
    }

    /// The version this packet is written in: a CONNECT always speaks its own.
    fn effective_version(&self, version: ProtocolVersion) -> ProtocolVersion {
        match self {
            Self::Connect(c) => c.protocol,
            _ => version,
        }
    }

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        match self {
            Self::Connect(p) => p.check(),
            Self::ConnAck(p) => p.check(version),
            Self::Publish(p) => p.check(version),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => {
                p.check(self.packet_type(), version)
            }
            Self::Subscribe(p) => p.check(version),
            Self::SubAck(p) => p.check(version),
            Self::Unsubscribe(p) => p.check(version),
            Self::UnsubAck(p) => p.check(version),
            Self::PingReq | Self::PingResp => Ok(()),
            Self::Disconnect(p) => p.check(version),
            Self::Auth(p) => p.check(version),
        }
    }

    fn first_byte(&self) -> u8 {
        let kind = self.packet_type();
        let flags = match self {
            Self::Publish(p) => p.flags(),
            _ => kind.fixed_flags().unwrap_or(0),
        };
        ((kind as u8) << 4) | flags
    }

    fn write_body<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        match self {
            Self::Connect(p) => p.write(s),
            Self::ConnAck(p) => p.write(version, s),
            Self::Publish(p) => p.write(version, s),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => {
                p.write(version, s)
            }
            Self::Subscribe(p) => p.write(version, s),
            Self::SubAck(p) => p.write(version, s),
            Self::Unsubscribe(p) => p.write(version, s),
            Self::UnsubAck(p) => p.write(version, s),
            Self::PingReq | Self::PingResp => {}
            Self::Disconnect(p) => p.write(version, s),
            Self::Auth(p) => p.write(s),
        }
    }

    /// Checks the packet and returns its remaining length.
    fn remaining_len(&self, version: ProtocolVersion) -> Result<u32, EncodeError> {
        let version = self.effective_version(version);
        self.check(version)?;
        let len = match self {
            Self::Publish(p) => p.view().body_len(version),
            _ => measure(|c| self.write_body(version, c)),
        };
        u32::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_VARINT)
            .ok_or(EncodeError::RemainingLengthTooLarge)
    }

    /// The exact number of bytes [`encode`](Self::encode) writes, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let rl = self.remaining_len(version)?;
        Ok(1 + varint_len(rl) + rl as usize)
    }

    /// Appends the packet to `buf` as `version` (a CONNECT uses its own) and returns how many
    /// bytes were written. Nothing is written on error.
    pub fn encode(
        &self,
        version: ProtocolVersion,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        let rl = self.remaining_len(version)?;
        Ok(self.write_checked(version, rl, buf))
    }

    /// Writes a packet whose checks passed and whose remaining length is `rl`.
    fn write_checked(&self, version: ProtocolVersion, rl: u32, buf: &mut BytesMut) -> usize {
        let total = 1 + varint_len(rl) + rl as usize;
        let start = buf.len();
        buf.reserve(total);
        buf.put_u8(self.first_byte());
        buf.put_varint(rl);
        self.write_body(self.effective_version(version), buf);
        debug_assert_eq!(buf.len() - start, total, "encoded_len disagrees with encode");
        total
    }

    /// Drops what a sender may leave out to fit the peer's Maximum Packet Size: the Reason String
    /// at `level` 1, User Properties too at level 2 ([MQTT-3.1.2-25] and the per-packet rules on
    /// Reason String and User Property). Returns false for packets where nothing may be dropped.
    pub(crate) fn strip(&mut self, level: u8) -> bool {
        use properties::PropertySet;
        match self {
            Self::ConnAck(p) => p.properties.strip(level),
            Self::PubAck(p) | Self::PubRec(p) | Self::PubRel(p) | Self::PubComp(p) => {
                p.properties.strip(level)
            }
            Self::SubAck(p) => p.properties.strip(level),
            Self::UnsubAck(p) => p.properties.strip(level),
            Self::Disconnect(p) => p.properties.strip(level),
            Self::Auth(p) => p.properties.strip(level),
            _ => return false,
        }
        true
    }
}

/// Streaming, version-aware decoder for one connection.
///
/// A server-side decoder starts without a version: the first packet must be CONNECT, whose
/// Protocol Level then fixes the version for the rest of the connection. A client-side decoder
/// starts with the version it sent in its CONNECT.
#[derive(Clone, Debug)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for `version` (`None` until CONNECT says) that refuses packets larger than
    /// `max_packet_size` bytes, fixed header included.
    pub fn new(version: Option<ProtocolVersion>, max_packet_size: u32) -> Self {
        Self { version, max_packet_size }
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the protocol version (a client, after choosing one).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// The largest packet accepted.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Changes the largest packet accepted.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Decodes the next packet at the front of `buf`.
    ///
    /// - `Ok(Some(packet))`: a whole packet was split off `buf`; its strings and payload are
    ///   views of those bytes.
    /// - `Ok(None)`: `buf` holds only part of a packet. Nothing is consumed; `buf` has been given
    ///   the capacity for the rest of the frame.
    /// - `Err(e)`: the connection must be closed as [`DecodeError`] describes. A fixed header
    ///   that is invalid or announces a packet over the maximum size is refused as soon as it
    ///   has arrived, before the body is buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let type_bits = first >> 4;
        let flags = first & 0x0f;
        let kind = match PacketType::from_u8(type_bits) {
            Some(PacketType::Auth) if self.version.is_some_and(|v| !v.is_v5()) => None,
            k => k,
        };
        let Some(kind) = kind else {
            return Err(ErrorKind::ReservedPacketType(type_bits).into());
        };
        if kind.fixed_flags().is_some_and(|f| f != flags) {
            return Err(DecodeError::new(ErrorKind::InvalidFlags(flags)).in_packet(kind));
        }
        if kind == PacketType::Publish && (flags >> 1) & 0x03 == 3 {
            // QoS 3 ([MQTT-3.3.1-4]): refused before the body is buffered.
            return Err(DecodeError::new(ErrorKind::InvalidQoS).in_packet(kind));
        }
        let version = match (self.version, kind) {
            (_, PacketType::Connect) => None,
            (Some(v), _) => Some(v),
            (None, _) => return Err(DecodeError::new(ErrorKind::NotConnect).in_packet(kind)),
        };
        let Some((remaining, len_bytes)) =
            decode_varint(&buf[1..]).map_err(|e| e.in_packet(kind))?
        else {
            return Ok(None);
        };
        let total = 1 + len_bytes + remaining as usize;
        if total as u64 > u64::from(self.max_packet_size) {
            let err = ErrorKind::PacketTooLarge { size: total as u64, max: self.max_packet_size };
            return Err(DecodeError::new(err).in_packet(kind));
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if let (Some(_), 2, Some(&[hi, lo])) = (version, remaining, buf.get(1 + len_bytes..total)) {
            // The short acknowledgements (a packet identifier only, Success in MQTT 5) are
            // most of what a busy broker reads back: read in place, without a buffer of their
            // own.
            let ack = |k: PacketType| -> Result<PubAck, DecodeError> {
                let id = PacketId::new(u16::from_be_bytes([hi, lo]))
                    .ok_or_else(|| DecodeError::new(ErrorKind::ZeroPacketId).in_packet(k))?;
                Ok(PubAck::new(id))
            };
            let packet = match kind {
                PacketType::PubAck => Some(Packet::PubAck(ack(kind)?)),
                PacketType::PubRec => Some(Packet::PubRec(ack(kind)?)),
                PacketType::PubRel => Some(Packet::PubRel(ack(kind)?)),
                PacketType::PubComp => Some(Packet::PubComp(ack(kind)?)),
                _ => None,
            };
            if let Some(packet) = packet {
                buf.advance(total);
                return Ok(Some(packet));
            }
        }
        let mut body = buf.split_to(total).freeze();
        body.advance(1 + len_bytes);
        if let (PacketType::Publish, Some(v)) = (kind, version) {
            // Most of what a broker reads: decoded here, straight into the packet, rather
            // than through the general match (which costs PUBLISH a fifth of its time in
            // copies of the packet between frames).
            return match Publish::decode(flags, &mut Reader::new(body), v) {
                Ok(p) => Ok(Some(Packet::Publish(p))),
                Err(e) => Err(e.in_packet(kind)),
            };
        }
        let version = match version {
            Some(v) => v,
            None => {
                // CONNECT: the version comes from the packet. Learn it before the rest is
                // checked, so that an error later in the CONNECT is answered in its version.
                let v = Connect::decode_protocol(&mut Reader::new(body.clone()))
                    .map_err(|e| e.in_packet(kind))?;
                self.version.get_or_insert(v);
                v
            }
        };
        Packet::decode_body(kind, flags, body, version).map(Some).map_err(|e| e.in_packet(kind))
    }
}

/// Encoder for one connection: the protocol version and the peer's Maximum Packet Size.
#[derive(Clone, Debug)]
pub struct Encoder {
    version: ProtocolVersion,
    max_packet_size: u32,
}

impl Encoder {
    /// An encoder for `version` with no limit beyond the protocol's own.
    pub fn new(version: ProtocolVersion) -> Self {
        Self { version, max_packet_size: MAX_PACKET_SIZE }
    }

    /// The protocol version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The peer's Maximum Packet Size.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Sets the peer's Maximum Packet Size (from its CONNECT or CONNACK).
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Appends `packet` to `buf` and returns the number of bytes written.
    ///
    /// If the packet is larger than the peer's Maximum Packet Size, the Reason String and then
    /// the User Properties are left out where the specification allows a sender to do so
    /// (acknowledgements, CONNACK, DISCONNECT, AUTH). If it still does not fit, or it is a packet
    /// that may not be shortened (PUBLISH, whose properties belong to the application), the
    /// result is [`EncodeError::PacketTooLarge`] and nothing is written: the caller must not send
    /// it ([MQTT-3.1.2-24], [MQTT-3.2.2-15]).
    pub fn encode(&self, packet: &Packet, buf: &mut BytesMut) -> Result<usize, EncodeError> {
        let rl = packet.remaining_len(self.version)?;
        let size = 1 + varint_len(rl) + rl as usize;
        if size <= self.max_packet_size as usize {
            return Ok(packet.write_checked(self.version, rl, buf));
        }
        let mut trimmed = packet.clone();
        for level in 1..=2 {
            if !trimmed.strip(level) {
                break;
            }
            if trimmed.encoded_len(self.version)? <= self.max_packet_size as usize {
                return trimmed.encode(self.version, buf);
            }
        }
        Err(EncodeError::PacketTooLarge { size, max: self.max_packet_size })
    }

    /// Writes a PUBLISH's fixed header, variable header and properties into `head`: everything
    /// but the payload, which the caller writes after them, copied or as a buffer of its own
    /// that many subscribers share. Returns the whole packet's size. Same limits as
    /// [`encode`](Self::encode).
    pub fn encode_publish(
        &self,
        publish: PublishRef<'_>,
        head: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        publish.check(self.version)?;
        let rl = publish.body_len(self.version);
        let rl = u32::try_from(rl)
            .ok()
            .filter(|&l| l <= MAX_VARINT)
            .ok_or(EncodeError::RemainingLengthTooLarge)?;
        let total = 1 + varint_len(rl) + rl as usize;
        if total > self.max_packet_size as usize {
            return Err(EncodeError::PacketTooLarge { size: total, max: self.max_packet_size });
        }
        head.reserve(total - publish.payload.len());
        head.put_u8((3 << 4) | publish.flags());
        head.put_varint(rl);
        publish.write_head(self.version, head);
        Ok(total)
    }
}
