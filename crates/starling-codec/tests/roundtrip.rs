//! Property tests of 3.1 / 3.1.1: every valid packet survives encode → decode, alone and in a
//! stream split at random points. (5.0: `roundtrip_v5.rs`.)

mod common;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use starling_codec::decode::decode_packet;
use starling_codec::encode::encode_publish;
use starling_codec::{Decoder, Packet, ProtocolVersion};

use common::{encode, packet, publish};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_roundtrips(p in packet()) {
        let mut buf = encode(&p);
        let mut decoder = Decoder::new(usize::MAX);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decode_packet_agrees_with_the_decoder(p in packet()) {
        let bytes = encode(&p);
        // The fixed header: the type/flags byte, then the remaining length.
        let header_len = 1 + remaining_length_len_of(&bytes);
        let body = Bytes::copy_from_slice(&bytes[header_len..]);
        prop_assert_eq!(decode_packet(bytes[0], body, None), Ok(p));
    }

    #[test]
    fn encode_publish_agrees_with_packet_encode(p in publish()) {
        let mut fast = BytesMut::new();
        encode_publish(&mut fast, p.dup, p.qos, p.retain, &p.topic, p.packet_id, &p.payload)
            .expect("a valid publish encodes");
        prop_assert_eq!(&fast, &encode(&Packet::Publish(p.clone())));
        // 3.1 writes the same bytes.
        prop_assert_eq!(fast, common::encode_in(&Packet::Publish(p), ProtocolVersion::V3_1));
    }

    #[test]
    fn stream_split_at_random_points_decodes_in_order(
        packets in vec(packet(), 1..10),
        chunk_sizes in vec(1usize..64, 1..20),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            stream.extend_from_slice(&encode(p));
        }
        let mut decoder = Decoder::new(usize::MAX);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        for &size in chunk_sizes.iter().cycle() {
            if pos == stream.len() {
                break;
            }
            let end = (pos + size).min(stream.len());
            buf.extend_from_slice(&stream[pos..end]);
            pos = end;
            loop {
                let before = buf.clone();
                match decoder.decode(&mut buf) {
                    Ok(Some(p)) => decoded.push(p),
                    Ok(None) => {
                        prop_assert_eq!(&buf, &before, "Ok(None) consumed bytes");
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }
}

/// Length of the remaining-length field of the encoded packet in `bytes`.
fn remaining_length_len_of(bytes: &[u8]) -> usize {
    bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1
}
