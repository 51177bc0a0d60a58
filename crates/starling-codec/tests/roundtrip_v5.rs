//! Property tests of 5.0: every valid packet, with arbitrary properties and reason codes,
//! survives encode → decode alone and in a stream split at random points; the PUBLISH fast path
//! agrees with `Packet::encode`; fitting to a Maximum Packet Size only ever drops what the
//! standard allows.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use starling_codec::decode::decode_packet;
use starling_codec::encode::{encode_publish_v5, PublishV5};
use starling_codec::{Decoder, Packet, ProtocolVersion, PublishProperties};

use common::{encode_in, packet_v5, publish_properties, publish_v5, subscription_identifier};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn encode(p: &Packet) -> BytesMut {
    encode_in(p, V5)
}

fn v5_decoder() -> Decoder {
    let mut d = Decoder::new(usize::MAX);
    d.set_protocol(V5);
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_packet_roundtrips(p in packet_v5()) {
        let mut buf = encode(&p);
        prop_assert_eq!(v5_decoder().decode(&mut buf), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_connect_sets_the_decoder_to_5_0(p in common::connect_v5()) {
        let mut buf = encode(&Packet::Connect(Box::new(p.clone())));
        let mut d = Decoder::new(usize::MAX);
        prop_assert_eq!(d.decode(&mut buf), Ok(Some(Packet::Connect(Box::new(p)))));
        prop_assert_eq!(d.protocol(), Some(V5));
    }

    #[test]
    fn decode_packet_agrees_with_the_decoder(p in packet_v5()) {
        let bytes = encode(&p);
        let header_len = 1 + bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        let body = Bytes::copy_from_slice(&bytes[header_len..]);
        prop_assert_eq!(decode_packet(bytes[0], body, Some(V5)), Ok(p));
    }

    #[test]
    fn the_fast_path_agrees_with_packet_encode(
        p in publish_v5(),
        stored in publish_properties(),
        expiry in proptest::option::of(any::<u32>()),
        alias in proptest::option::of(1..=u16::MAX),
        ids in vec(subscription_identifier(), 0..4),
    ) {
        // The packet's own properties.
        let mut fast = BytesMut::new();
        encode_publish_v5(&mut fast, &PublishV5::from(&p)).expect("a valid publish encodes");
        prop_assert_eq!(&fast, &encode(&Packet::Publish(p.clone())));

        // Stored properties with per-delivery parts: the same as the packet carrying them.
        let parts = PublishV5 {
            properties: &stored,
            message_expiry_interval: expiry,
            topic_alias: alias,
            subscription_identifiers: &ids,
            ..PublishV5::from(&p)
        };
        let mut fast = BytesMut::new();
        encode_publish_v5(&mut fast, &parts).expect("a valid publish encodes");
        prop_assert_eq!(fast.len(), parts.encoded_len());
        let mut expected = p.clone();
        expected.properties = PublishProperties {
            message_expiry_interval: expiry,
            topic_alias: alias,
            subscription_identifiers: ids.clone(),
            ..stored.clone()
        };
        if expected.topic.is_empty() && alias.is_none() {
            // Not a valid packet to decode, but the bytes still agree.
            prop_assert_eq!(&fast, &encode(&Packet::Publish(expected)));
        } else {
            prop_assert_eq!(&fast, &encode(&Packet::Publish(expected.clone())));
            prop_assert_eq!(v5_decoder().decode(&mut fast), Ok(Some(Packet::Publish(expected))));
        }
    }

    #[test]
    fn fitting_drops_only_the_reason_string_and_user_properties(
        p in packet_v5(),
        max in 2usize..200,
    ) {
        let mut fitted = p.clone();
        let fits = fitted.fit_to_maximum(V5, max);
        prop_assert_eq!(fits, fitted.encoded_len(V5) <= max);
        if p.encoded_len(V5) <= max {
            prop_assert_eq!(&fitted, &p);
        }
        // What is left still encodes and decodes, with the same type and the same everything
        // but the two droppable properties.
        let mut buf = encode(&fitted);
        prop_assert_eq!(v5_decoder().decode(&mut buf), Ok(Some(fitted.clone())));
        prop_assert_eq!(fitted.packet_type(), p.packet_type());
        prop_assert_eq!(strip(&fitted), strip(&p));
    }

    #[test]
    fn stream_split_at_random_points_decodes_in_order(
        connect in common::connect_v5(),
        packets in vec(packet_v5(), 1..8),
        chunk_sizes in vec(1usize..64, 1..20),
    ) {
        // A CONNECT first, as on a real connection: it switches the decoder to 5.0.
        let mut all = vec![Packet::Connect(Box::new(connect))];
        all.extend(packets);
        let mut stream = BytesMut::new();
        for p in &all {
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
        prop_assert_eq!(decoded, all);
    }
}

/// The packet without its Reason String and User Properties (where it may drop them).
fn strip(p: &Packet) -> Packet {
    let mut p = p.clone();
    p.fit_to_maximum(V5, 0);
    p
}
