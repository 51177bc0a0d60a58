//! DISCONNECT (3.14) and AUTH (3.15); PINGREQ and PINGRESP have no body at all.
//!
//! In 5.0 both DISCONNECT and AUTH may be 0 bytes long (success, no properties), 1 byte (a
//! reason code, no properties) or longer (reason code and properties). 3.1 / 3.1.1 DISCONNECT is
//! always empty and AUTH does not exist.

use super::reader::Reader;
use super::{expect_end, Rules};
use crate::error::DecodeError;
use crate::packet::{Auth, Disconnect, Packet, PacketType};
use crate::properties::{read_block, AuthProperties, DisconnectProperties};
use crate::reason::{AuthReasonCode, DisconnectReasonCode};

/// DISCONNECT or AUTH of at most one byte, read in place.
pub(super) fn short(
    packet_type: PacketType,
    body: &[u8],
    rules: Rules,
) -> Result<Packet, DecodeError> {
    if !rules.v5() && !body.is_empty() {
        return Err(DecodeError::Malformed("remaining length must be 0"));
    }
    let reason = body.first().copied().unwrap_or(0);
    match packet_type {
        PacketType::Disconnect => Ok(Packet::Disconnect(Disconnect {
            reason: disconnect_reason(reason)?,
            properties: DisconnectProperties::default(),
        })),
        _ => Ok(Packet::Auth(Auth {
            reason: auth_reason(reason)?,
            properties: AuthProperties::default(),
        })),
    }
}

/// A 5.0 DISCONNECT or AUTH with properties.
pub(super) fn long(packet_type: PacketType, mut r: Reader) -> Result<Packet, DecodeError> {
    let reason = r.u8("missing reason code")?;
    let packet = match packet_type {
        PacketType::Disconnect => Packet::Disconnect(Disconnect {
            reason: disconnect_reason(reason)?,
            properties: read_block(&mut r)?,
        }),
        _ => {
            let reason = auth_reason(reason)?;
            let properties: AuthProperties = read_block(&mut r)?;
            if properties.authentication_data.is_some()
                && properties.authentication_method.is_none()
            {
                return Err(DecodeError::ProtocolError(
                    "authentication data without authentication method",
                ));
            }
            Packet::Auth(Auth { reason, properties })
        }
    };
    expect_end(&r, "trailing bytes after properties")?;
    Ok(packet)
}

fn disconnect_reason(code: u8) -> Result<DisconnectReasonCode, DecodeError> {
    DisconnectReasonCode::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
        packet_type: 14,
        code,
    })
}

fn auth_reason(code: u8) -> Result<AuthReasonCode, DecodeError> {
    AuthReasonCode::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
        packet_type: 15,
        code,
    })
}
