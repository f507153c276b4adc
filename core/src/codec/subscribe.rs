//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11).

use alloc::vec::Vec;

use super::error::{DecodeError, EncodeError, ErrorKind};
use super::properties::{
    self, AckProperties, PropertySet, SubscribeProperties, UnsubscribeProperties,
};
use super::reason::ReasonCode;
use super::wire::{Reader, Sink};
use super::{PacketId, PacketType, ProtocolVersion, QoS, end, packet_id};
use crate::topic::TopicFilter;

/// Retain Handling, a subscription option (MQTT 5.0 section 3.8.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// 0: send retained messages when the subscription is made.
    #[default]
    SendOnSubscribe,
    /// 1: send them only if the subscription did not exist before.
    SendOnNewSubscribe,
    /// 2: do not send retained messages.
    DoNotSend,
}

/// The options of one subscription (MQTT 5.0 section 3.8.3.1; 3.1.1 has only the QoS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber wants.
    pub qos: QoS,
    /// No Local: do not send the subscriber its own publishes.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag as the publisher set it.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with this QoS and the defaults elsewhere.
    pub fn qos(qos: QoS) -> Self {
        Self { qos, ..Self::default() }
    }

    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = if version.is_v5() { 0xc0 } else { 0xfc };
        if byte & reserved != 0 {
            return Err(ErrorKind::SubscriptionOptionsReserved.into());
        }
        let qos = QoS::from_u8(byte & 0x03).ok_or(if version.is_v5() {
            ErrorKind::SubscriptionQoS3
        } else {
            ErrorKind::InvalidQoS
        })?;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendOnNewSubscribe,
            2 => RetainHandling::DoNotSend,
            _ => return Err(ErrorKind::InvalidRetainHandling.into()),
        };
        Ok(Self {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut b = self.qos as u8;
        if version.is_v5() {
            b |= u8::from(self.no_local) << 2;
            b |= u8::from(self.retain_as_published) << 3;
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The topic filter, possibly a `$share/...` shared subscription.
    pub filter: TopicFilter,
    /// The options.
    pub options: SubscriptionOptions,
}

impl Subscription {
    /// A subscription to `filter` at `qos` with default options.
    pub fn new(filter: TopicFilter, qos: QoS) -> Self {
        Self { filter, options: SubscriptionOptions::qos(qos) }
    }
}

/// SUBSCRIBE (section 3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// The subscriptions, at least one ([MQTT-3.8.3-3]).
    pub subscriptions: Vec<Subscription>,
    /// Properties (MQTT 5 only).
    pub properties: SubscribeProperties,
}

fn filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    TopicFilter::try_from(r.string()?).map_err(|e| ErrorKind::InvalidTopicFilter(e).into())
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r)?;
        let properties =
            if version.is_v5() { SubscribeProperties::decode(r)? } else { Default::default() };
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = filter(r)?;
            let options = SubscriptionOptions::decode(r.u8()?, version)?;
            if version.is_v5() && options.no_local && filter.is_shared() {
                return Err(ErrorKind::NoLocalOnSharedSubscription.into());
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(ErrorKind::NoTopicFilters.into());
        }
        Ok(Self { packet_id, subscriptions, properties })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.subscriptions.is_empty() {
            return Err(EncodeError::Empty);
        }
        if version.is_v5() {
            if self.subscriptions.iter().any(|s| s.options.no_local && s.filter.is_shared()) {
                return Err(EncodeError::NoLocalOnSharedSubscription);
            }
            self.properties.check()?;
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::put(s, &self.properties);
        }
        for sub in &self.subscriptions {
            s.put_string(sub.filter.as_mqtt_str());
            s.put_u8(sub.options.encode(version));
        }
    }
}

/// SUBACK (section 3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per subscription, in order. In 3.1.1 these travel as return codes: the granted
    /// QoS, or 0x80 for any error.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5 only).
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r)?;
        let properties =
            if version.is_v5() { AckProperties::decode(r)? } else { Default::default() };
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let b = r.u8()?;
            let code = if version.is_v5() {
                ReasonCode::decode_for(b, PacketType::SubAck)?
            } else {
                match b {
                    0x00 => ReasonCode::Success,
                    0x01 => ReasonCode::GrantedQoS1,
                    0x02 => ReasonCode::GrantedQoS2,
                    0x80 => ReasonCode::UnspecifiedError,
                    _ => return Err(ErrorKind::InvalidReasonCode(b).into()),
                }
            };
            reason_codes.push(code);
        }
        if reason_codes.is_empty() {
            return Err(ErrorKind::NoReasonCodes.into());
        }
        Ok(Self { packet_id, reason_codes, properties })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.reason_codes.is_empty() {
            return Err(EncodeError::Empty);
        }
        if version.is_v5()
            && let Some(c) = self.reason_codes.iter().find(|c| !c.is_valid_for(PacketType::SubAck))
        {
            return Err(EncodeError::InvalidReasonCode(*c));
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::put(s, &self.properties);
            for c in &self.reason_codes {
                s.put_u8(c.value());
            }
        } else {
            for c in &self.reason_codes {
                s.put_u8(c.to_v3_suback());
            }
        }
    }
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub packet_id: PacketId,
    /// The topic filters, at least one ([MQTT-3.10.3-2]).
    pub filters: Vec<TopicFilter>,
    /// Properties (MQTT 5 only).
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r)?;
        let properties =
            if version.is_v5() { UnsubscribeProperties::decode(r)? } else { Default::default() };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(filter(r)?);
        }
        if filters.is_empty() {
            return Err(ErrorKind::NoTopicFilters.into());
        }
        Ok(Self { packet_id, filters, properties })
    }

    pub(crate) fn check(&self, _version: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Empty);
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::put(s, &self.properties);
        }
        for f in &self.filters {
            s.put_string(f.as_mqtt_str());
        }
    }
}

/// UNSUBACK (section 3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One code per topic filter (MQTT 5). 3.1.1 has none: decoding gives an empty list and
    /// encoding leaves them out.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5 only).
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let packet_id = packet_id(r)?;
        let mut ack = Self { packet_id, reason_codes: Vec::new(), properties: Default::default() };
        if version.is_v5() {
            ack.properties = AckProperties::decode(r)?;
            while !r.is_empty() {
                let b = r.u8()?;
                let code = ReasonCode::decode_for(b, PacketType::UnsubAck)?;
                ack.reason_codes.push(code);
            }
            if ack.reason_codes.is_empty() {
                return Err(ErrorKind::NoReasonCodes.into());
            }
        }
        end(r)?;
        Ok(ack)
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() {
            if self.reason_codes.is_empty() {
                return Err(EncodeError::Empty);
            }
            if let Some(c) =
                self.reason_codes.iter().find(|c| !c.is_valid_for(PacketType::UnsubAck))
            {
                return Err(EncodeError::InvalidReasonCode(*c));
            }
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u16(self.packet_id.get());
        if version.is_v5() {
            properties::put(s, &self.properties);
            for c in &self.reason_codes {
                s.put_u8(c.value());
            }
        }
    }
}
