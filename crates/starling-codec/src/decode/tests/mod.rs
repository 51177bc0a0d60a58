//! Decoder tests: framing and the 3.1 / 3.1.1 rules in `v3`, the 5.0 rules in `v5`. Each
//! builds the bytes by hand and checks the packet or the error (and, for 5.0, its reason code).

mod v3;
mod v5;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::encode::write_remaining_length;
use crate::packet::*;
use crate::properties::*;
use crate::reason::*;

pub(super) const V31: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1);
pub(super) const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);

/// A whole frame: first byte, remaining length, body.
pub(super) fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[first]);
    write_remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A length-prefixed field.
pub(super) fn field(bytes: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

pub(super) fn decoder(protocol: Option<ProtocolVersion>) -> Decoder {
    let mut d = Decoder::new(1 << 20);
    if let Some(p) = protocol {
        d.set_protocol(p);
    }
    d
}

/// Decodes one whole frame with a decoder under `protocol`, checking it is consumed on success.
pub(super) fn decode_frame(
    first: u8,
    body: &[u8],
    protocol: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let mut buf = frame(first, body);
    let packet = decoder(protocol).decode(&mut buf)?;
    let packet = packet.expect("a whole frame decodes");
    assert!(buf.is_empty(), "frame fully consumed");
    // The free function agrees with the decoder.
    assert_eq!(
        decode_packet(first, Bytes::copy_from_slice(body), protocol).as_ref(),
        Ok(&packet)
    );
    Ok(packet)
}

pub(super) fn publish_body(topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut v = field(topic);
    if let Some(id) = packet_id {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A CONNECT body: name, level, flags, keep-alive 60, then the payload fields as given.
pub(super) fn connect_body(name: &[u8], level: u8, flags: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut v = field(name);
    v.push(level);
    v.push(flags);
    v.extend_from_slice(&60u16.to_be_bytes());
    for f in fields {
        v.extend_from_slice(&field(f));
    }
    v
}

pub(super) fn connect_311(flags: u8, fields: &[&[u8]]) -> Result<Packet, DecodeError> {
    decode_frame(0x10, &connect_body(b"MQTT", 4, flags, fields), None)
}

pub(super) fn connect_31(flags: u8, fields: &[&[u8]]) -> Result<Packet, DecodeError> {
    decode_frame(0x10, &connect_body(b"MQIsdp", 3, flags, fields), None)
}

pub(super) fn unwrap_connect(p: Packet) -> Connect {
    match p {
        Packet::Connect(c) => *c,
        other => panic!("not a CONNECT: {other:?}"),
    }
}

pub(super) const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
