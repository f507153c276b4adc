//! Wire primitives: a zero-copy reader over a frozen frame and a sink that either writes or counts.

use bytes::{Buf, Bytes, BytesMut};

use super::error::{DecodeError, ErrorKind};
use super::string::MqttStr;

/// The largest value a Variable Byte Integer can hold (four bytes of seven bits).
pub const MAX_VARINT: u32 = 268_435_455;

/// Reads fields from one frame. Every read checks the length first: a short frame is a
/// Malformed Packet, never a panic.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes `n` bytes as a view of the frame.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::new(ErrorKind::Truncated));
        }
        Ok(self.buf.split_to(n))
    }

    /// Moves past an empty property block (a length of 0), if that is what comes next: the
    /// common case, without the property reader.
    pub(crate) fn skip_empty_properties(&mut self) -> bool {
        if self.buf.first() == Some(&0) {
            self.buf.advance(1);
            return true;
        }
        false
    }

    /// Takes everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        core::mem::take(&mut self.buf)
    }

    /// Splits off the next `n` bytes as a reader of their own (for a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?))
    }

    /// Copies out `N` bytes and moves past them: fixed-size fields need no view of their own,
    /// and advancing a `Bytes` costs no reference-count traffic.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some(bytes) = self.buf.get(..N) else {
            return Err(DecodeError::new(ErrorKind::Truncated));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.buf.advance(N);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A Variable Byte Integer of at most four bytes ([MQTT-1.5.5-1]).
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match decode_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::new(ErrorKind::Truncated)),
        }
    }

    /// Binary Data: a two-byte length and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String.
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        MqttStr::from_bytes(bytes).map_err(|e| DecodeError::new(ErrorKind::InvalidString(e)))
    }
}

/// Decodes a Variable Byte Integer at the start of `buf`: `Ok(None)` if `buf` ends before it
/// does, `Ok(Some((value, bytes used)))` otherwise. A fifth byte, or a longer encoding than the
/// value needs, is a Malformed Packet ([MQTT-1.5.5-1]).
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::new(ErrorKind::VarintTooLong));
        }
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after a continuation adds nothing: the value had a shorter form,
            // and [MQTT-1.5.5-1] requires the shortest.
            if i > 0 && byte == 0 {
                return Err(DecodeError::new(ErrorKind::NonMinimalVarint));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::new(ErrorKind::VarintTooLong));
    }
    Ok(None)
}

/// How many bytes `value` takes as a Variable Byte Integer.
pub(crate) const fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where encoded bytes go: a buffer, or a counter that only adds up lengths. Every encoder is
/// written once against this trait, so `encoded_len` and `encode` cannot disagree.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    /// Whether this sink only counts: then a caller that already knows a length may
    /// [`skip`](Self::skip) instead of writing.
    fn counts_only(&self) -> bool {
        false
    }

    /// Counts `n` bytes without writing them; only meaningful when [`counts_only`].
    fn skip(&mut self, _n: usize) {}

    /// Appends an owned chunk; the counter only counts it, a buffer copies it.
    fn put_bytes(&mut self, bytes: &Bytes) {
        self.put(bytes);
    }

    fn put_u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    /// A Variable Byte Integer. The caller keeps `v` within [`MAX_VARINT`].
    fn put_varint(&mut self, mut v: u32) {
        debug_assert!(v <= MAX_VARINT);
        let mut out = [0u8; 4];
        let mut n = 0;
        loop {
            let mut byte = (v & 0x7f) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            out[n] = byte;
            n += 1;
            if v == 0 || n == 4 {
                break;
            }
        }
        self.put(&out[..n]);
    }

    /// Binary Data: the caller has checked that `b` is at most 65,535 bytes.
    fn put_binary(&mut self, b: &[u8]) {
        debug_assert!(b.len() <= usize::from(u16::MAX));
        self.put_u16(b.len() as u16);
        self.put(b);
    }

    fn put_string(&mut self, s: &MqttStr) {
        self.put_binary(s.as_bytes());
    }
}

/// A sink that counts bytes.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn counts_only(&self) -> bool {
        true
    }

    fn skip(&mut self, n: usize) {
        self.0 += n;
    }
}

impl Sink for BytesMut {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for alloc::vec::Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The number of bytes `f` writes.
pub(crate) fn measure(f: impl FnOnce(&mut Counter)) -> usize {
    let mut c = Counter(0);
    f(&mut c);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// The boundary values of MQTT 5.0 table 1-1 (3.1.1 table 2.4).
    const TABLE: &[(u32, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xff, 0xff, 0x7f]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
    ];

    #[test]
    fn mqtt_1_5_5_varint_boundaries_encode_and_decode() {
        for &(value, bytes) in TABLE {
            let mut out = Vec::new();
            out.put_varint(value);
            assert_eq!(out, bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(decode_varint(bytes).unwrap(), Some((value, bytes.len())));
        }
    }

    #[test]
    fn mqtt_1_5_5_varint_fifth_byte_is_malformed() {
        let err = decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::VarintTooLong);
        // Refused as soon as the fourth byte says another follows.
        let err = decode_varint(&[0x80, 0x80, 0x80, 0x80]).unwrap_err();
        assert_eq!(*err.kind(), ErrorKind::VarintTooLong);
    }

    /// 5.0 only: 3.1.1 does not number this rule [MQTT-1.5.5-1].
    #[test]
    fn mqtt_1_5_5_1_varint_must_use_the_fewest_bytes() {
        for bytes in [&[0x80, 0x00][..], &[0xff, 0x80, 0x00], &[0x80, 0x80, 0x80, 0x00]] {
            let err = decode_varint(bytes).unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::NonMinimalVarint, "{bytes:x?}");
        }
    }

    #[test]
    fn varint_incomplete_waits_for_more() {
        assert_eq!(decode_varint(&[]).unwrap(), None);
        assert_eq!(decode_varint(&[0x80]).unwrap(), None);
        assert_eq!(decode_varint(&[0xff, 0xff, 0xff]).unwrap(), None);
    }

    #[test]
    fn reader_never_reads_past_the_frame() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert_eq!(*r.string().unwrap_err().kind(), ErrorKind::Truncated);
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(*r.u16().unwrap_err().kind(), ErrorKind::Truncated);
        let mut r = Reader::new(Bytes::new());
        assert_eq!(*r.u8().unwrap_err().kind(), ErrorKind::Truncated);
    }
}
