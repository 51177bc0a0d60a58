//! Bounded fuzzing of [`Decoder::decode`] that runs with the ordinary test suite.
//!
//! Inputs are random byte strings and mutations (bit flips, byte changes, truncation, insertion,
//! removal, length-field tampering) of streams of valid encoded packets of 3.1.1 and of 5.0 (a
//! 5.0 stream starts with its CONNECT). Each input is fed to a decoder with a random protocol
//! setting (none, 3.1, 3.1.1, 5.0) and maximum packet size, in random chunk sizes.
//! Asserted: no panic; `Ok(None)` leaves the buffer untouched; `Ok(Some(_))` consumes bytes; and
//! whatever decodes re-encodes and decodes again to the same packet.
//!
//! `STARLING_FUZZ_CASES` sets the number of cases (default 200 000, about 18 s of CPU in a debug
//! build, most of it generating the 5.0 packets).

mod common;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use starling_codec::encode::write_remaining_length;
use starling_codec::{Decoder, Packet, ProtocolVersion};

const DEFAULT_CASES: u32 = 200_000;

fn cases() -> u32 {
    std::env::var("STARLING_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// One change to an encoded stream.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrite two bytes with a big-endian u16 (hits string and packet-id lengths).
    SetU16(Index, u16),
    Truncate(Index),
    Insert(Index, u8),
    Remove(Index),
    /// Re-encode the first packet's remaining length as this value.
    SetRemainingLength(u32),
    /// Replace the first packet's remaining-length field with these raw bytes.
    RawRemainingLength(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), prop_oneof![0u16..8, any::<u16>()])
            .prop_map(|(i, v)| Mutation::SetU16(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => prop_oneof![0u32..300, 0u32..=268_435_455].prop_map(Mutation::SetRemainingLength),
        1 => vec(any::<u8>(), 0..6).prop_map(Mutation::RawRemainingLength),
    ]
}

/// Length of the remaining-length field at `bytes[1..]` (at most 4, clamped to what is there).
fn length_field_len(bytes: &[u8]) -> usize {
    let field = bytes.get(1..).unwrap_or(&[]);
    let n = field.iter().take(4).take_while(|b| *b & 0x80 != 0).count() + 1;
    n.min(field.len())
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match m {
        Mutation::FlipBit(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) => bytes[i.index(len)] = *b,
        Mutation::SetU16(i, v) => {
            let at = i.index(bytes.len());
            for (k, b) in v.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::SetRemainingLength(n) => {
            let mut field = BytesMut::new();
            write_remaining_length(&mut field, *n as usize);
            let len = length_field_len(bytes);
            bytes.splice(1..1 + len, field.iter().copied());
        }
        Mutation::RawRemainingLength(raw) => {
            let len = length_field_len(bytes);
            bytes.splice(1..1 + len, raw.iter().copied());
        }
    }
}

/// Inputs: pure noise, noise behind a plausible first byte, or mutated valid streams.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..128),
        1 => (1u8..16, vec(any::<u8>(), 0..64)).prop_map(|(t, rest)| {
            let mut v = vec![t << 4 | if matches!(t, 6 | 8 | 10) { 2 } else { 0 }];
            v.extend(rest);
            v
        }),
        3 => (vec(common::packet(), 1..4), vec(mutation(), 0..4)).prop_map(|(packets, ms)| {
            let mut bytes = Vec::new();
            for p in &packets {
                bytes.extend_from_slice(&common::encode(p));
            }
            for m in &ms {
                apply(&mut bytes, m);
            }
            bytes
        }),
        4 => (
            proptest::option::of(common::connect_v5()),
            vec(common::packet_v5(), 1..3),
            vec(mutation(), 0..4),
        )
            .prop_map(|(connect, packets, ms)| {
                let mut bytes = Vec::new();
                let connect = connect.map(|c| Packet::Connect(Box::new(c)));
                for p in connect.iter().chain(&packets) {
                    bytes.extend_from_slice(&common::encode_in(p, ProtocolVersion::V5));
                }
                for m in &ms {
                    apply(&mut bytes, m);
                }
                bytes
            }),
    ]
}

fn protocol_setting() -> impl Strategy<Value = Option<ProtocolVersion>> {
    prop_oneof![
        Just(None),
        Just(Some(ProtocolVersion::V3_1)),
        Just(Some(ProtocolVersion::V3_1_1)),
        Just(Some(ProtocolVersion::V5))
    ]
}

/// Whatever decoded must encode and decode again to the same packet (under the same rules).
fn check_reencodes(p: &Packet, protocol: Option<ProtocolVersion>) -> Result<(), TestCaseError> {
    let version = protocol.unwrap_or(ProtocolVersion::V3_1_1);
    let mut out = BytesMut::new();
    if let Err(e) = p.encode(version, &mut out) {
        return Err(TestCaseError::fail(format!(
            "re-encode of {p:?} failed: {e}"
        )));
    }
    prop_assert_eq!(out.len(), p.encoded_len(version));
    let mut d = Decoder::new(usize::MAX);
    if let Some(v) = protocol {
        d.set_protocol(v);
    }
    prop_assert_eq!(d.decode(&mut out), Ok(Some(p.clone())));
    prop_assert!(out.is_empty());
    Ok(())
}

fn feed(
    input: &[u8],
    chunk_sizes: &[usize],
    protocol: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<(), TestCaseError> {
    let mut decoder = Decoder::new(max_packet_size);
    if let Some(v) = protocol {
        decoder.set_protocol(v);
    }
    let mut buf = BytesMut::new();
    let mut pos = 0;
    for &size in chunk_sizes.iter().cycle() {
        if pos == input.len() {
            return Ok(());
        }
        let end = (pos + size).min(input.len());
        buf.extend_from_slice(&input[pos..end]);
        pos = end;
        loop {
            let before = buf.clone();
            let protocol = decoder.protocol();
            match decoder.decode(&mut buf) {
                Ok(None) => {
                    prop_assert_eq!(&buf, &before, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(p)) => {
                    prop_assert!(buf.len() < before.len(), "a packet consumes bytes");
                    check_reencodes(&p, protocol)?;
                }
                // The connection would be closed: stop feeding.
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn decoder_survives_random_and_mutated_input(
        input in input(),
        chunk_sizes in vec(prop_oneof![1usize..4, 1usize..64, 1usize..1024], 1..8),
        protocol in protocol_setting(),
        max_packet_size in prop_oneof![3 => Just(usize::MAX), 1 => 0usize..300],
    ) {
        feed(&input, &chunk_sizes, protocol, max_packet_size)?;
    }
}
