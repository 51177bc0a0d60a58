//! Fuzz target `decode`: run `Decoder::decode` over arbitrary input and re-encode whatever decodes.
//!
//! The first input byte chooses the decoder's protocol setting (none, 3.1 or 3.1.1) and the chunk
//! size the rest is fed in; the remainder is the byte stream. Asserted: no panic, `Ok(None)`
//! consumes nothing, every decoded packet re-encodes (with `encoded_len` bytes) and decodes again
//! to the same packet under the same rules.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60` in this crate's parent.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starling_codec::{Decoder, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let protocol = match selector % 3 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        _ => Some(ProtocolVersion::V3_1_1),
    };
    // 1, 2, 4, ... 128 bytes per read: exercises the incremental path.
    let chunk = 1usize << ((selector >> 2) & 7);
    // Small maxima now and then, to exercise `PacketTooLarge`.
    let max = if selector & 0x80 != 0 { 64 } else { usize::MAX };

    let mut decoder = Decoder::new(max);
    if let Some(v) = protocol {
        decoder.set_protocol(v);
    }
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            let rules = decoder.protocol();
            match decoder.decode(&mut buf) {
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(packet)) => {
                    assert!(buf.len() < before.len(), "a packet consumes bytes");
                    let mut out = BytesMut::new();
                    packet
                        .encode(&mut out)
                        .unwrap_or_else(|e| panic!("re-encode of {packet:?} failed: {e}"));
                    assert_eq!(out.len(), packet.encoded_len());
                    let mut again = Decoder::new(usize::MAX);
                    if let Some(v) = rules {
                        again.set_protocol(v);
                    }
                    assert_eq!(again.decode(&mut out), Ok(Some(packet)));
                    assert!(out.is_empty());
                }
                Err(_) => return,
            }
        }
    }
});
