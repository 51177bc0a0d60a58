//! What the codec's fuzz targets share: feeding a stream to a decoder and checking what decodes.

use bytes::BytesMut;
use starling_codec::{Decoder, ProtocolVersion};

/// Feeds `stream` to a decoder under `protocol` in pieces of `chunk` bytes, checking that
/// `Ok(None)` consumes nothing and that every packet re-encodes for the connection's version
/// (with `encoded_len` bytes) and decodes again to the same packet under the same rules. Stops
/// at the first error, as the connection would be closed.
pub fn feed(stream: &[u8], protocol: Option<ProtocolVersion>, chunk: usize, max: usize) {
    let mut decoder = Decoder::new(max);
    if let Some(v) = protocol {
        decoder.set_protocol(v);
    }
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk.max(1)) {
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
                    let version = rules.unwrap_or(ProtocolVersion::V3_1_1);
                    let mut out = BytesMut::new();
                    packet
                        .encode(version, &mut out)
                        .unwrap_or_else(|e| panic!("re-encode of {packet:?} failed: {e}"));
                    assert_eq!(out.len(), packet.encoded_len(version));
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
}
