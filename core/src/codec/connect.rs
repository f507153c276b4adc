//! CONNECT and CONNACK (sections 3.1 and 3.2 of both specifications).

use bytes::Bytes;

use super::error::{DecodeError, EncodeError, ErrorKind};
use super::properties::{self, ConnAckProperties, ConnectProperties, PropertySet, WillProperties};
use super::reason::{ConnectReturnCode, ReasonCode};
use super::string::MqttStr;
use super::wire::{Reader, Sink};
use super::{PacketType, ProtocolVersion, QoS, check_binary, end};
use crate::topic::TopicName;

/// CONNECT: the first packet a client sends (section 3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version, which also fixes the Protocol Name ("MQIsdp" for level 3, else "MQTT").
    pub protocol: ProtocolVersion,
    /// Clean Start (MQTT 5) or Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty (the server assigns one, or refuses).
    pub client_id: MqttStr,
    /// The Will Message, if any.
    pub will: Option<Will>,
    /// User Name.
    pub username: Option<MqttStr>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5 only; not sent in 3.1.1).
    pub properties: ConnectProperties,
    /// Mosquitto's bridge flag (MQTT 3.1 and 3.1.1 only): the top bit of the protocol level
    /// (0x83, 0x84) says the client is another broker's bridge, which a broker that knows it
    /// does not send its own messages back and sends retained flags as published (what MQTT 5
    /// says with No Local and Retain As Published).
    pub bridge: bool,
}

/// A Will Message (sections 3.1.2.5 to 3.1.2.7 and 3.1.3.2 to 3.1.3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Will Topic.
    pub topic: TopicName,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (MQTT 5 only).
    pub properties: WillProperties,
}

impl Connect {
    /// A CONNECT with the given client id and defaults elsewhere: clean start, 60 s keep-alive.
    pub fn new(protocol: ProtocolVersion, client_id: MqttStr) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        }
    }

    /// Reads the protocol name and level at the start of a CONNECT body.
    pub(crate) fn decode_protocol(r: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
        Self::decode_level(r).map(|(v, _)| v)
    }

    /// The protocol version and the bridge flag.
    fn decode_level(r: &mut Reader) -> Result<(ProtocolVersion, bool), DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        match (&name[..], level) {
            (b"MQTT", 0x84) => Ok((ProtocolVersion::V3_1_1, true)),
            (b"MQIsdp", 0x83) => Ok((ProtocolVersion::V3_1, true)),
            (name, level) => Self::plain_level(name, level).map(|v| (v, false)),
        }
    }

    fn plain_level(name: &[u8], level: u8) -> Result<ProtocolVersion, DecodeError> {
        match (name, level) {
            (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
            (b"MQTT", 5) => Ok(ProtocolVersion::V5),
            (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
            (b"MQTT" | b"MQIsdp", l) => Err(ErrorKind::UnsupportedProtocolLevel(l).into()),
            _ => Err(ErrorKind::InvalidProtocolName.into()),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let (protocol, bridge) = Self::decode_level(r)?;
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(ErrorKind::ConnectReservedFlag.into());
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if (!will_flag && (will_qos != 0 || will_retain)) || will_qos == 3 {
            return Err(ErrorKind::InvalidWillFlags.into());
        }
        if !protocol.is_v5() && password_flag && !username_flag {
            return Err(ErrorKind::PasswordWithoutUsername.into());
        }
        let keep_alive = r.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(r)?
        } else {
            ConnectProperties::default()
        };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                WillProperties::decode(r)?
            } else {
                WillProperties::default()
            };
            let topic = TopicName::try_from(r.string()?)
                .map_err(|e| DecodeError::new(ErrorKind::InvalidTopicName(e)))?;
            let payload = r.binary()?;
            let qos = QoS::from_u8(will_qos).ok_or(ErrorKind::InvalidWillFlags)?;
            Some(Will { topic, payload, qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if username_flag { Some(r.string()?) } else { None };
        let password = if password_flag { Some(r.binary()?) } else { None };
        end(r)?;
        Ok(Self {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
            bridge,
        })
    }

    pub(crate) fn check(&self) -> Result<(), EncodeError> {
        check_binary(self.password.as_ref(), "Password")?;
        if !self.protocol.is_v5() && self.password.is_some() && self.username.is_none() {
            // [MQTT-3.1.2-22]
            return Err(EncodeError::NotInVersion(self.protocol));
        }
        if let Some(will) = &self.will {
            check_binary(Some(&will.payload), "Will Payload")?;
            will.properties.check()?;
        }
        self.properties.check()
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S) {
        let v5 = self.protocol.is_v5();
        match self.protocol {
            ProtocolVersion::V3_1 => s.put_binary(b"MQIsdp"),
            _ => s.put_binary(b"MQTT"),
        }
        let bridge = if self.bridge && !v5 { 0x80 } else { 0 };
        s.put_u8(self.protocol.level() | bridge);
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | ((will.qos as u8) << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        s.put_u8(flags);
        s.put_u16(self.keep_alive);
        if v5 {
            properties::put(s, &self.properties);
        }
        s.put_string(&self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                properties::put(s, &will.properties);
            }
            s.put_string(will.topic.as_mqtt_str());
            s.put_binary(&will.payload);
        }
        if let Some(u) = &self.username {
            s.put_string(u);
        }
        if let Some(p) = &self.password {
            s.put_binary(p);
        }
    }
}

/// CONNACK: the server's answer to CONNECT (section 3.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present. Only sent when the connection is accepted ([MQTT-3.2.2-4],
    /// [MQTT-3.2.2-6]): the encoder writes 0 for a refusal whatever this says.
    pub session_present: bool,
    /// The reason code. In 3.1.1 it travels as the nearest [`ConnectReturnCode`].
    pub reason_code: ReasonCode,
    /// CONNACK properties (MQTT 5 only).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xfe != 0 {
            return Err(ErrorKind::ConnAckReservedFlags.into());
        }
        let session_present = flags & 0x01 != 0;
        let code = r.u8()?;
        let reason_code = if version.is_v5() {
            ReasonCode::decode_for(code, PacketType::ConnAck)?
        } else {
            ConnectReturnCode::from_u8(code).ok_or(ErrorKind::InvalidReasonCode(code))?.to_reason()
        };
        if session_present && reason_code.is_error() {
            return Err(ErrorKind::SessionPresentOnRefusal.into());
        }
        let properties = if version.is_v5() {
            ConnAckProperties::decode(r)?
        } else {
            ConnAckProperties::default()
        };
        end(r)?;
        Ok(Self { session_present, reason_code, properties })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() {
            if !self.reason_code.is_valid_for(PacketType::ConnAck) {
                return Err(EncodeError::InvalidReasonCode(self.reason_code));
            }
            self.properties.check()?;
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        s.put_u8(u8::from(self.session_present && !self.reason_code.is_error()));
        if version.is_v5() {
            s.put_u8(self.reason_code.value());
            properties::put(s, &self.properties);
        } else {
            s.put_u8(ConnectReturnCode::from_reason(self.reason_code) as u8);
        }
    }
}
