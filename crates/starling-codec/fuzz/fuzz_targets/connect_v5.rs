//! Fuzz target `connect_v5`: a 5.0 CONNECT, then a 5.0 stream.
//!
//! The input is the CONNECT body after its protocol name and level (flags, keep-alive,
//! properties, payload) followed by whatever comes next on the connection: the target writes the
//! fixed header and `MQTT`/5 in front, so that every input exercises the 5.0 CONNECT rules
//! (flags, property block, will properties, authentication) instead of first having to guess a
//! valid protocol name. The first input byte is the length of the CONNECT body (the rest of the
//! input follows it as further packets) and, in its high bit, a small maximum packet size.
//! Asserted as for `decode`: no panic, `Ok(None)` consumes nothing, whatever decodes re-encodes
//! and decodes again to the same packet.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run connect_v5 -- -max_total_time=60` in this crate's
//! parent.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let body_len = usize::from(selector & 0x7F).min(rest.len());
    let (body, after) = rest.split_at(body_len);
    let mut stream = vec![0x10];
    // Remaining length: protocol name (6), level (1), then the body; at most 134, 2 bytes.
    let remaining = 7 + body.len();
    if remaining < 128 {
        stream.push(remaining as u8);
    } else {
        stream.extend_from_slice(&[(remaining as u8) | 0x80, 1]);
    }
    stream.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5]);
    stream.extend_from_slice(body);
    stream.extend_from_slice(after);
    let max = if selector & 0x80 != 0 { 96 } else { usize::MAX };
    common::feed(&stream, None, 7, max);
});
