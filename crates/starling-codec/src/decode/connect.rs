//! CONNECT (3.1) and CONNACK (3.2).
//!
//! A 5.0 CONNECT differs from 3.1.1 by its properties after the keep-alive, will properties
//! before the will topic, and by allowing a password without a user name; the flags are checked
//! alike, a violation being a protocol error in 5.0 where 3.1.1 calls the packet malformed.

use super::expect_end;
use super::reader::Reader;
use crate::error::DecodeError;
use crate::packet::{ConnAck, Connect, LastWill, Packet, ProtocolVersion, QoS};
use crate::properties::{read_block, ConnAckProperties, ConnectProperties, WillProperties};
use crate::reason::ConnectReasonCode;

/// CONNECT flag bits.
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

pub(super) fn connect(mut r: Reader, accept_v5: bool) -> Result<Connect, DecodeError> {
    // Name and level first: an unknown protocol gets CONNACK 1, whatever follows.
    let name = r.binary("truncated protocol name")?;
    let level = r.u8("missing protocol level")?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 5) if accept_v5 => ProtocolVersion::V5,
        _ => {
            // 16 characters take at most 64 bytes, even as replacement characters.
            let head = &name[..name.len().min(64)];
            return Err(DecodeError::UnacceptableProtocol {
                name: String::from_utf8_lossy(head).chars().take(16).collect(),
                level,
            });
        }
    };
    let strict = protocol != ProtocolVersion::V3_1;
    let v5 = protocol == ProtocolVersion::V5;

    let flags = r.u8("missing connect flags")?;
    // 3.1.2.3: a Malformed Packet in 5.0 as in 3.1.1.
    if strict && flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag set"));
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        const WHY: &str = "will qos or retain without will flag";
        return Err(if v5 {
            DecodeError::ProtocolError(WHY)
        } else {
            DecodeError::Malformed(WHY)
        });
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS(will_qos))?;
    let username_flag = flags & USERNAME != 0;
    let password_flag = flags & PASSWORD != 0;
    if strict && !v5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag without user name flag",
        ));
    }

    let keep_alive = r.u16("missing keep-alive")?;
    let properties: ConnectProperties = if v5 {
        read_block(&mut r)?
    } else {
        ConnectProperties::default()
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError(
            "authentication data without authentication method",
        ));
    }
    let client_id = r.string("truncated client identifier")?;
    let will = if will_flag {
        let properties: WillProperties = if v5 {
            read_block(&mut r)?
        } else {
            WillProperties::default()
        };
        let topic = r.topic_name("truncated will topic")?;
        let payload = r.binary("truncated will message")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // Old 3.1 clients set the user-name/password flags but send nothing: treat as absent.
    let username = if username_flag && (strict || !r.is_empty()) {
        Some(r.string("truncated user name")?)
    } else {
        None
    };
    let password = if password_flag && (strict || !r.is_empty()) {
        Some(r.binary("truncated password")?)
    } else {
        None
    };
    expect_end(&r, "trailing bytes after connect payload")?;
    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

/// A 3.1 / 3.1.1 CONNACK: acknowledge flags and return code.
pub(super) fn connack_v3(body: &[u8]) -> Result<Packet, DecodeError> {
    match *body {
        [flags, code] => {
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("reserved connack flags set"));
            }
            let code = ConnectReasonCode::from_v3_return_code(code)
                .ok_or(DecodeError::Malformed("invalid connack return code"))?;
            Ok(Packet::ConnAck(Box::new(ConnAck::new(
                flags & 0x01 != 0,
                code,
            ))))
        }
        _ => Err(DecodeError::Malformed("remaining length must be 2")),
    }
}

/// A 5.0 CONNACK: acknowledge flags, reason code, properties.
pub(super) fn connack_v5(mut r: Reader) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("missing connack flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved connack flags set"));
    }
    let code = r.u8("missing connack reason code")?;
    let code = ConnectReasonCode::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
        packet_type: 2,
        code,
    })?;
    let properties: ConnAckProperties = read_block(&mut r)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError(
            "authentication data without authentication method",
        ));
    }
    expect_end(&r, "trailing bytes after connack properties")?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
        properties,
    })
}
