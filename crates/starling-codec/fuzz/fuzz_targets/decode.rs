//! Fuzz target `decode`: run `Decoder::decode` over arbitrary input and re-encode whatever decodes.
//!
//! The first input byte chooses the decoder's protocol setting (none, 3.1, 3.1.1 or 5.0), the
//! chunk size the rest is fed in, and now and then a small maximum packet size; the remainder is
//! the byte stream. Asserted: no panic, `Ok(None)` consumes nothing, every decoded packet
//! re-encodes for the connection's version (with `encoded_len` bytes) and decodes again to the
//! same packet under the same rules.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=60` in this crate's parent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_codec::ProtocolVersion;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let protocol = match selector & 0b11 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        2 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    };
    // 1, 2, 4, ... 32 bytes per read: exercises the incremental path.
    let chunk = 1usize << ((selector >> 2) & 0b111).min(5);
    // Small maxima now and then, to exercise `PacketTooLarge`.
    let max = if selector & 0x80 != 0 { 64 } else { usize::MAX };
    common::feed(stream, protocol, chunk, max);
});
