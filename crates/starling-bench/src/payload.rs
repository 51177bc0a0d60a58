//! The header at the front of every benchmark payload.
//!
//! ```text
//!  0        8          12       16       24                32            --payload
//!  | run id | publisher | magic  |  seq   | scheduled ns    | padding ... |
//!  |  u64   |   u32     | "STLB" |  u64   |  u64            |  0xA5 bytes |
//! ```
//!
//! All integers are little-endian. The scheduled time is in nanoseconds since the run's clock
//! origin (publishers and subscribers live in the same process and share it). A message whose
//! run id differs, or that is too short or lacks the magic, is *foreign* and is not counted.

/// Bytes of the header; `--payload` must be at least this.
pub const HEADER_LEN: usize = 32;

/// Marks a benchmark payload (`"STLB"` little-endian).
pub const MAGIC: u32 = u32::from_le_bytes(*b"STLB");

/// Byte used for the padding after the header.
pub const PADDING: u8 = 0xA5;

/// What a subscriber needs to count and time one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Identifies the run, so that leftovers from another run are not counted.
    pub run_id: u64,
    /// Index of the publisher within the run.
    pub publisher: u32,
    /// Sequence number within the publisher, from 0.
    pub seq: u64,
    /// When the message was scheduled to be sent, in ns since the run's clock origin.
    pub sched_ns: u64,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`] (the options are validated before any payload is
    /// built, so this is a bug).
    pub fn write(&self, buf: &mut [u8]) {
        let h = &mut buf[..HEADER_LEN];
        h[0..8].copy_from_slice(&self.run_id.to_le_bytes());
        h[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        h[12..16].copy_from_slice(&MAGIC.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.sched_ns.to_le_bytes());
    }

    /// Reads a header, or `None` if `buf` is too short or does not carry the magic.
    pub fn read(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[i..i + 4]);
            u32::from_le_bytes(b)
        };
        if u32_at(12) != MAGIC {
            return None;
        }
        Some(Header {
            run_id: u64_at(0),
            publisher: u32_at(8),
            seq: u64_at(16),
            sched_ns: u64_at(24),
        })
    }
}

/// A payload of `len` bytes (at least [`HEADER_LEN`]) with a zero header and padding.
pub fn new_payload(len: usize) -> Vec<u8> {
    let mut p = vec![PADDING; len.max(HEADER_LEN)];
    p[..HEADER_LEN].fill(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_foreign_bytes() {
        let h = Header {
            run_id: 0x0102_0304_0506_0708,
            publisher: 42,
            seq: 1 << 40,
            sched_ns: 123_456_789,
        };
        let mut p = new_payload(64);
        h.write(&mut p);
        assert_eq!(p.len(), 64);
        assert_eq!(p[63], PADDING);
        assert_eq!(Header::read(&p), Some(h));
        assert_eq!(Header::read(&p[..31]), None);
        p[12] ^= 1;
        assert_eq!(Header::read(&p), None);
    }
}
