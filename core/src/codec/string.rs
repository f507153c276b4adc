//! UTF-8 strings as MQTT defines them, held as zero-copy [`Bytes`] views.

use alloc::string::String;
use bytes::Bytes;
use core::fmt;

/// The longest UTF-8 string MQTT can carry: its length prefix is two bytes.
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// A UTF-8 Encoded String as MQTT defines it (MQTT 3.1.1 section 1.5.3, MQTT 5.0 section 1.5.4).
///
/// The invariant, checked once when the value is made: the bytes are well-formed UTF-8 (so no
/// encoded surrogates), contain no U+0000, and are at most 65,535 bytes long
/// ([MQTT-1.5.3-1], [MQTT-1.5.3-2], [MQTT-1.5.4-1], [MQTT-1.5.4-2]). Control characters and
/// non-characters are allowed: the specification lets a receiver refuse them but does not
/// require it.
///
/// The value is a [`Bytes`] view: a string decoded from a packet shares the packet's buffer.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MqttStr(Bytes);

/// Why bytes are not a valid MQTT UTF-8 string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrError {
    /// The bytes are not well-formed UTF-8 (this includes encoded surrogates).
    InvalidUtf8,
    /// The string contains U+0000.
    NullCharacter,
    /// The string is longer than 65,535 bytes.
    TooLong,
}

impl fmt::Display for StrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidUtf8 => "string is not well-formed UTF-8",
            Self::NullCharacter => "string contains U+0000",
            Self::TooLong => "string is longer than 65535 bytes",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StrError {}

/// Lookups by bytes in ordered and hashed collections: ordering, equality and hashing are those
/// of the bytes.
impl core::borrow::Borrow<[u8]> for MqttStr {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl MqttStr {
    /// Wraps bytes the caller has already checked (UTF-8, no U+0000, not too long).
    pub(crate) fn from_checked(bytes: Bytes) -> Self {
        debug_assert!(check(&bytes).is_ok());
        Self(bytes)
    }

    /// Checks `bytes` and wraps them without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StrError> {
        check(&bytes)?;
        Ok(Self(bytes))
    }

    /// Copies `s` into a new string after checking it.
    pub fn new(s: &str) -> Result<Self, StrError> {
        check(s.as_bytes())?;
        Ok(Self(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` contains U+0000 or is longer than 65,535 bytes: a literal like that is a bug in
    /// the calling program, not something that can arrive from the network.
    pub fn from_static(s: &'static str) -> Self {
        match check(s.as_bytes()) {
            Ok(()) => Self(Bytes::from_static(s.as_bytes())),
            Err(e) => panic!("invalid MQTT string literal {s:?}: {e}"),
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // The bytes were checked to be UTF-8 when this value was made and `Bytes` is immutable,
        // so this cannot fail; re-checking keeps the crate free of `unsafe`.
        core::str::from_utf8(&self.0).expect("MqttStr holds UTF-8 by construction")
    }

    /// The string's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The same string in an allocation of its own, so that keeping it does not keep alive the
    /// (possibly much larger) packet buffer it was decoded from.
    pub(crate) fn detach(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// A zero-copy view of `self[range]`, which must fall on character boundaries.
    #[allow(dead_code)] // used by the topic module
    pub(crate) fn slice(&self, range: core::ops::Range<usize>) -> Self {
        debug_assert!(self.as_str().is_char_boundary(range.start));
        debug_assert!(self.as_str().is_char_boundary(range.end));
        Self(self.0.slice(range))
    }
}

/// Whether every byte is in 1..=0x7f (ASCII without U+0000). No early exit: a branch-free pass
/// the compiler turns into vector instructions, faster on short strings than stopping early.
pub(crate) fn plain_ascii(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |bad, &b| bad | u8::from(b.wrapping_sub(1) >= 0x7f)) == 0
}

fn check(bytes: &[u8]) -> Result<(), StrError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(StrError::TooLong);
    }
    // Fast path, one pass: ASCII without U+0000 (every byte in 1..=0x7f) is valid. Topics and
    // client ids almost always are.
    if plain_ascii(bytes) {
        return Ok(());
    }
    if core::str::from_utf8(bytes).is_err() {
        return Err(StrError::InvalidUtf8);
    }
    if bytes.contains(&0) {
        return Err(StrError::NullCharacter);
    }
    Ok(())
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl TryFrom<&str> for MqttStr {
    type Error = StrError;
    fn try_from(s: &str) -> Result<Self, StrError> {
        Self::new(s)
    }
}

impl TryFrom<String> for MqttStr {
    type Error = StrError;
    fn try_from(s: String) -> Result<Self, StrError> {
        check(s.as_bytes())?;
        Ok(Self(Bytes::from(s)))
    }
}

impl TryFrom<Bytes> for MqttStr {
    type Error = StrError;
    fn try_from(b: Bytes) -> Result<Self, StrError> {
        Self::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// 5.0: [MQTT-1.5.4-1]. 3.1.1: [MQTT-1.5.3-1].
    #[test]
    fn mqtt_1_5_4_1_ill_formed_utf8_is_rejected() {
        assert_eq!(MqttStr::from_bytes(Bytes::from_static(b"\xff")), Err(StrError::InvalidUtf8));
        assert_eq!(MqttStr::from_bytes(Bytes::from_static(b"a\xc3")), Err(StrError::InvalidUtf8));
    }

    /// 5.0: [MQTT-1.5.4-1]. 3.1.1: [MQTT-1.5.3-1].
    #[test]
    fn mqtt_1_5_4_1_encoded_surrogates_are_rejected() {
        // U+D800 encoded as if it were a scalar value.
        let s = Bytes::from_static(b"\xed\xa0\x80");
        assert_eq!(MqttStr::from_bytes(s), Err(StrError::InvalidUtf8));
    }

    /// 5.0: [MQTT-1.5.4-2]. 3.1.1: [MQTT-1.5.3-2].
    #[test]
    fn mqtt_1_5_4_2_null_character_is_rejected() {
        assert_eq!(MqttStr::new("a\0b"), Err(StrError::NullCharacter));
    }

    /// 5.0: [MQTT-1.5.4-3]. 3.1.1: [MQTT-1.5.3-3].
    #[test]
    fn mqtt_1_5_4_3_bom_is_kept_not_stripped() {
        let s = MqttStr::new("\u{feff}x").unwrap();
        assert_eq!(s.as_bytes(), b"\xef\xbb\xbfx");
    }

    #[test]
    fn strings_longer_than_65535_bytes_are_rejected() {
        let long = vec![b'a'; MAX_STRING_LEN + 1];
        assert_eq!(MqttStr::from_bytes(Bytes::from(long)), Err(StrError::TooLong));
        let max = vec![b'a'; MAX_STRING_LEN];
        assert_eq!(MqttStr::from_bytes(Bytes::from(max)).unwrap().len(), MAX_STRING_LEN);
    }

    #[test]
    fn control_characters_are_accepted() {
        assert!(MqttStr::new("a\u{1}\u{7f}\u{9f}").is_ok());
    }

    #[test]
    fn decoded_string_shares_the_input_buffer() {
        let buf = Bytes::from_static(b"hello");
        let s = MqttStr::from_bytes(buf.clone()).unwrap();
        assert_eq!(s.as_bytes().as_ptr(), buf.as_ptr());
    }
}
