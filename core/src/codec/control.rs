//! DISCONNECT and AUTH (sections 3.14 and 3.15).

use super::error::{DecodeError, EncodeError};
use super::properties::{self, AuthProperties, DisconnectProperties, PropertySet};
use super::reason::ReasonCode;
use super::wire::{Reader, Sink};
use super::{PacketType, ProtocolVersion, end};

/// Reads an optional reason code and then optional properties, the tail shared by DISCONNECT and
/// AUTH: an empty body means Success with no properties (sections 3.14.2.1, 3.15.2.1).
fn reason_tail<P: Default>(
    r: &mut Reader,
    kind: PacketType,
    props: impl FnOnce(&mut Reader) -> Result<P, DecodeError>,
) -> Result<(ReasonCode, P), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::Success, P::default()));
    }
    let b = r.u8()?;
    let code = ReasonCode::decode_for(b, kind)?;
    let p = if r.is_empty() { P::default() } else { props(r)? };
    end(r)?;
    Ok((code, p))
}

fn write_tail<S: Sink, P: PropertySet>(s: &mut S, code: ReasonCode, p: &P, empty: bool) {
    if code == ReasonCode::Success && empty {
        return;
    }
    s.put_u8(code.value());
    if !empty {
        properties::put(s, p);
    }
}

/// DISCONNECT (section 3.14). In 3.1.1 it has no body: the reason code and properties are not
/// sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason Code; 0x00 is Normal disconnection.
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5 only).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with this reason code and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self { reason_code, properties: DisconnectProperties::default() }
    }

    pub(crate) fn decode(r: &mut Reader, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if !version.is_v5() {
            end(r)?;
            return Ok(Self::default());
        }
        let (reason_code, properties) =
            reason_tail(r, PacketType::Disconnect, DisconnectProperties::decode)?;
        Ok(Self { reason_code, properties })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if version.is_v5() && !self.reason_code.is_valid_for(PacketType::Disconnect) {
            return Err(EncodeError::InvalidReasonCode(self.reason_code));
        }
        Ok(())
    }

    pub(crate) fn write<S: Sink>(&self, version: ProtocolVersion, s: &mut S) {
        if version.is_v5() {
            write_tail(s, self.reason_code, &self.properties, self.properties.is_empty());
        }
    }
}

/// AUTH (section 3.15), MQTT 5 only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// Reason Code: Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let (reason_code, properties) = reason_tail(r, PacketType::Auth, AuthProperties::decode)?;
        Ok(Self { reason_code, properties })
    }

    pub(crate) fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion(version));
        }
        if !self.reason_code.is_valid_for(PacketType::Auth) {
            return Err(EncodeError::InvalidReasonCode(self.reason_code));
        }
        self.properties.check()
    }

    pub(crate) fn write<S: Sink>(&self, s: &mut S) {
        write_tail(s, self.reason_code, &self.properties, self.properties.is_empty());
    }
}
