//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.3 to 3.7).

use bytes::Bytes;

use super::error::{DecodeError, EncodeError, ErrorKind};
use super::properties::{self, AckProperties, PropertySet, PublishProperties};
use super::reason::ReasonCode;
use super::wire::{Reader, Sink};
use super::{PacketId, PacketType, ProtocolVersion, QoS, end, packet_id};
use crate::topic::TopicName;

/// PUBLISH: an application message (section 3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this may be a re-delivery. Only for QoS 1 and 2 ([MQTT-3.3.1-2]).
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name. Empty only in an MQTT 5 PUBLISH that carries a Topic Alias.
    pub topic: TopicName,
    /// Packet Identifier: present exactly when QoS is 1 or 2 ([MQTT-2.2.1-2]).
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (MQTT 5 only).
    pub properties: PublishProperties,
    /// The payload: a view of the received frame, or the sender's buffer.
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 message with no properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Self {
        Self {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
        }
    }

    /// This PUBLISH by reference, for [`Encoder::encode_publish`](super::Encoder::encode_publish).
    pub fn view(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: &self.properties,
            payload: &self.payload,
        }
    }

    #[inline(always)]
    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(ErrorKind::InvalidQoS)?;
        let dup = flags & 0x08 != 0;
        let retain = flags & 0x01 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(ErrorKind::DupOnQoS0.into());
        }
        // Most topic names are short ASCII: one pass checks them whole; others get the full
        // string checks here and the topic checks below, in the same order of errors.
        let raw = r.binary()?;
        let checked = if TopicName::plainly_valid(&raw) {
            Ok(raw)
        } else {
            Err(super::MqttStr::from_bytes(raw)
                .map_err(|e| DecodeError::new(super::error::ErrorKind::InvalidString(e)))?)
        };
        let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
        let properties = if version.is_v5() {
            PublishProperties::decode(r)?
        } else {
            PublishProperties::default()
        };
        let raw_topic = match checked {
            Ok(raw) => {
                let topic = TopicName::from_checked(super::MqttStr::from_checked(raw));
                let payload = r.rest();
                return Ok(Self { dup, qos, retain, topic, packet_id, properties, payload });
            }
            Err(raw_topic) => raw_topic,
        };
        let topic = if raw_topic.is_empty() {
            if !version.is_v5() {
                return Err(ErrorKind::InvalidTopicName(crate::topic::TopicError::Empty).into());
            }
            if properties.topic_alias.is_none() {
                return Err(ErrorKind::EmptyTopicWithoutAlias.into());
            }
            TopicName::empty()
        } else {
            TopicName::try_from(raw_topic).map_err(ErrorKind::InvalidTopicName)?
        };
        let payload = r.rest();
        Ok(Self { dup, qos, retain, topic, packet_id, properties, payload })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        self.view().check(version)
    }

    pub(crate) fn flags(&self) -> u8 {
        self.view().flags()
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        self.view().write_head(version, s);
        s.put_bytes(&self.payload);
    }
}

/// A PUBLISH whose parts are borrowed: what a broker encodes for each subscriber of a message
/// without copying or reference-counting the message's topic, properties and payload.
#[derive(Clone, Copy, Debug)]
pub struct PublishRef<'a> {
    /// DUP.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic Name (empty only with a Topic Alias, MQTT 5).
    pub topic: &'a TopicName,
    /// Packet Identifier: present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// Properties; not written in MQTT 3.1.1.
    pub properties: &'a PublishProperties,
    /// The payload.
    pub payload: &'a [u8],
}

impl PublishRef<'_> {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, Some(_)) => return Err(EncodeError::UnexpectedPacketId),
            (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
                return Err(EncodeError::MissingPacketId);
            }
            _ => {}
        }
        if self.topic.is_empty() && !(version.is_v5() && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::NotInVersion(version));
        }
        if version.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    /// The remaining length, by arithmetic: PUBLISH is the hot path, so it skips the counting
    /// pass the other packets use. `encode` checks the two agree in debug builds, and the
    /// round-trip property tests check it on arbitrary packets.
    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        let mut len = 2 + self.topic.as_bytes().len() + self.payload.len();
        if self.packet_id.is_some() {
            len += 2;
        }
        if version.is_v5() {
            len += properties::block_len(self.properties);
        }
        len
    }

    /// Writes everything but the payload.
    pub(crate) fn write_head<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_string(self.topic.as_mqtt_str());
        if let Some(id) = self.packet_id {
            s.put_u16(id.get());
        }
        if version.is_v5() {
            properties::put(s, self.properties);
        }
    }
}

/// The shape shared by PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7): which one it is
/// depends on the [`Packet`](super::Packet) variant that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubAck {
    /// Packet Identifier of the PUBLISH (or PUBREL) being answered.
    pub packet_id: PacketId,
    /// Reason Code (MQTT 5; always Success in 3.1.1).
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5 only).
    pub properties: AckProperties,
}

impl PubAck {
    /// A successful acknowledgement with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self { packet_id, reason_code: ReasonCode::Success, properties: AckProperties::default() }
    }

    pub(crate) fn decode(
        kind: PacketType,
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r)?;
        let mut ack = Self::new(packet_id);
        if version.is_v5() && !r.is_empty() {
            let code = r.u8()?;
            ack.reason_code = ReasonCode::decode_for(code, kind)?;
            if !r.is_empty() {
                ack.properties = AckProperties::decode(r)?;
            }
        }
        end(r)?;
        Ok(ack)
    }

    pub(crate) fn check(
        &self,
        kind: PacketType,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        if version.is_v5() && !self.reason_code.is_valid_for(kind) {
            return Err(EncodeError::InvalidReasonCode(self.reason_code));
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u16(self.packet_id.get());
        if !version.is_v5() {
            return;
        }
        // The shortest form the specification allows: no reason code for Success without
        // properties, no property length without properties (section 3.4.2.1).
        let props = !self.properties.is_empty();
        if self.reason_code != ReasonCode::Success || props {
            s.put_u8(self.reason_code.value());
        }
        if props {
            properties::put(s, &self.properties);
        }
    }
}
