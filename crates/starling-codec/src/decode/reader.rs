//! A cursor over an owned packet body: fields are split off as slices of the same allocation.

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use crate::error::{DecodeError, TopicError};
use crate::topic;

/// A cursor over an owned packet body (or a part of it, such as a property block).
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes left.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// What is left, consuming the reader.
    pub(crate) fn rest(self) -> Bytes {
        self.buf
    }

    /// A reader over the next `n` bytes, which this one skips. `n` is at most [`Reader::len`].
    pub(crate) fn split_to(&mut self, n: usize) -> Reader {
        Reader {
            buf: self.buf.split_to(n.min(self.buf.len())),
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.buf
            .try_get_u8()
            .map_err(|_| DecodeError::Malformed(what))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.buf
            .try_get_u16()
            .map_err(|_| DecodeError::Malformed(what))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.buf
            .try_get_u32()
            .map_err(|_| DecodeError::Malformed(what))
    }

    /// A Variable Byte Integer (1.5.5): at most 4 bytes, so at most 268 435 455.
    pub(crate) fn var_int(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8(what)?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVariableByteInteger)
    }

    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("missing packet identifier")? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// A 2-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(what)?);
        if self.buf.len() < len {
            return Err(DecodeError::Malformed(what));
        }
        Ok(self.buf.split_to(len))
    }

    /// A UTF-8 string without U+0000.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let s = utf8(self.binary(what)?)?;
        if s.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        Ok(s)
    }

    /// A valid topic name (non-empty, no wildcards, no U+0000).
    pub(crate) fn topic_name(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let s = utf8(self.binary(what)?)?;
        check_topic_name(&s)?;
        Ok(s)
    }

    /// A topic name that may be empty (a 5.0 PUBLISH with a Topic Alias); otherwise valid.
    pub(crate) fn topic_name_or_empty(
        &mut self,
        what: &'static str,
    ) -> Result<ByteString, DecodeError> {
        let s = utf8(self.binary(what)?)?;
        if !s.is_empty() {
            check_topic_name(&s)?;
        }
        Ok(s)
    }
}

fn check_topic_name(s: &str) -> Result<(), DecodeError> {
    topic::validate_topic_name(s).map_err(|e| match e {
        TopicError::Empty => DecodeError::EmptyTopic,
        TopicError::NullCharacter => DecodeError::NullCharacter,
        TopicError::WildcardInName | TopicError::InvalidWildcard => DecodeError::WildcardInTopic,
        TopicError::TooLong | TopicError::InvalidSharedSubscription => {
            DecodeError::Malformed("topic name too long")
        }
    })
}

fn utf8(bytes: Bytes) -> Result<ByteString, DecodeError> {
    ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var_int(bytes: &'static [u8]) -> Result<u32, DecodeError> {
        let mut r = Reader::new(Bytes::from_static(bytes));
        r.var_int("truncated")
    }

    #[test]
    fn variable_byte_integers_from_the_standard() {
        for (bytes, v) in [
            (&[0x00][..], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
        ] {
            assert_eq!(var_int(bytes), Ok(v), "{bytes:?}");
        }
    }

    #[test]
    fn variable_byte_integer_of_five_bytes_is_rejected() {
        assert_eq!(
            var_int(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
        assert_eq!(
            var_int(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::MalformedVariableByteInteger)
        );
    }

    #[test]
    fn truncated_variable_byte_integer_is_malformed() {
        assert_eq!(
            var_int(&[0x80, 0x80]),
            Err(DecodeError::Malformed("truncated"))
        );
        assert_eq!(var_int(&[]), Err(DecodeError::Malformed("truncated")));
    }
}
