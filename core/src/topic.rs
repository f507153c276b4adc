//! Topic names and topic filters (MQTT 5.0 section 4.7, 3.1.1 section 4.7), shared
//! subscriptions (MQTT 5.0 section 4.8.2), and matching.
//!
//! A [`TopicName`] is where a PUBLISH goes; a [`TopicFilter`] is what a subscription asks for and
//! may hold the wildcards `+` (exactly one level) and `#` (the parent level and every level below
//! it, last only). A filter of the form `$share/{ShareName}/{filter}` is a shared subscription.
//!
//! Both types are checked once when made (parse, don't validate) and hold an [`MqttStr`], so a
//! name or filter decoded from a packet is a view of the received bytes, not a copy. Matching
//! ([`TopicFilter::matches`], [`matches()`]) works on bytes and never allocates.
//!
//! ```
//! use ternmq_core::topic::{TopicFilter, TopicName};
//!
//! let filter = TopicFilter::new("$share/workers/sport/+/player1/#").unwrap();
//! assert_eq!(filter.share_name(), Some("workers"));
//! assert_eq!(filter.filter(), "sport/+/player1/#");
//! assert!(filter.matches(&TopicName::new("sport/tennis/player1").unwrap()));
//! assert!(!filter.matches(&TopicName::new("sport/tennis/player2").unwrap()));
//! ```

use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};

use alloc::vec::Vec;

use crate::codec::{MqttStr, StrError};

/// Why a string is not a valid topic name or topic filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero length ([MQTT-4.7.3-1]).
    Empty,
    /// `+` or `#` in a topic name ([MQTT-4.7.0-1]; in 3.1.1 [MQTT-4.7.1-1]).
    WildcardInName,
    /// A `+` that does not fill a whole level, or a `#` that is not alone in the last level
    /// ([MQTT-4.7.1-1], [MQTT-4.7.1-2]; in 3.1.1 [MQTT-4.7.1-2], [MQTT-4.7.1-3]).
    InvalidWildcard,
    /// A `$share/` filter whose share name is empty or holds `+` or `#`
    /// ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    InvalidShareName,
    /// A `$share/{ShareName}` filter with no topic filter after the share name, as in `$share/g`
    /// or `$share/g/` ([MQTT-4.8.2-2]).
    EmptySharedFilter,
    /// Not a valid MQTT UTF-8 string: ill-formed, holding U+0000 ([MQTT-4.7.3-2]) or longer
    /// than 65,535 bytes ([MQTT-4.7.3-3]).
    Str(StrError),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("topic is empty"),
            Self::WildcardInName => f.write_str("topic name contains a wildcard"),
            Self::InvalidWildcard => {
                f.write_str("a wildcard must fill a whole level, and '#' must be last")
            }
            Self::InvalidShareName => {
                f.write_str("share name must be non-empty and contain no '/', '+' or '#'")
            }
            Self::EmptySharedFilter => f.write_str("shared subscription has no topic filter"),
            Self::Str(e) => fmt::Display::fmt(e, f),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TopicError {}

impl From<StrError> for TopicError {
    fn from(e: StrError) -> Self {
        Self::Str(e)
    }
}

/// The topic level separator.
const SEPARATOR: u8 = b'/';
/// The single-level wildcard.
const PLUS: u8 = b'+';
/// The multi-level wildcard.
const HASH: u8 = b'#';
/// What a shared subscription's filter starts with ([MQTT-4.8.2-1]). Case-sensitive.
const SHARE_PREFIX: &[u8] = b"$share/";

fn is_wildcard(b: u8) -> bool {
    b == PLUS || b == HASH
}

/// A topic name: where a PUBLISH goes.
///
/// At least one character long ([MQTT-4.7.3-1]) and free of the wildcards `+` and `#`
/// ([MQTT-4.7.0-1]; in 3.1.1 [MQTT-4.7.1-1]); being an [`MqttStr`], it is also well-formed
/// UTF-8 without U+0000 ([MQTT-4.7.3-2]) and at most 65,535 bytes long ([MQTT-4.7.3-3]).
/// Levels are separated by `/`, may be empty and may hold spaces; comparison is byte for byte.
///
/// The one exception to "at least one character" is internal: an MQTT 5 PUBLISH that carries a
/// Topic Alias may have a zero-length name on the wire. The codec represents it with an empty
/// `TopicName` (see [`is_empty`](Self::is_empty)), which the client and broker replace through
/// the alias before anything else sees it. No public constructor makes one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttStr);

impl TopicName {
    /// Checks `s` and copies it into a new name.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::try_from(MqttStr::new(s)?)
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic name: a literal like that is a bug in the calling program,
    /// not something that can arrive from the network.
    pub fn from_static(s: &'static str) -> Self {
        match Self::try_from(MqttStr::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic name literal {s:?}: {e}"),
        }
    }

    /// The zero-length name of an MQTT 5 PUBLISH that carries a Topic Alias.
    pub(crate) fn empty() -> Self {
        Self(MqttStr::default())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The same topic in an allocation of its own (see [`MqttStr::detach`]).
    pub(crate) fn detach(&self) -> Self {
        Self(self.0.detach())
    }

    /// The name as an MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The MQTT string this name wraps.
    pub fn into_inner(self) -> MqttStr {
        self.0
    }

    /// Whether this is the zero-length name of an alias-only MQTT 5 PUBLISH.
    ///
    /// Always false for a name made by [`new`](Self::new) or `try_from`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with `$`, as server topics such as `$SYS/...` do.
    ///
    /// Filters starting with a wildcard do not match such names ([MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.as_bytes().first() == Some(&b'$')
    }

    /// The levels, split on `/`, with empty levels kept: `/a//b` has the levels `""`, `"a"`,
    /// `""` and `"b"`.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.as_str().split('/')
    }
}

impl TopicName {
    /// Wraps a string the caller has checked: not empty, no wildcard.
    pub(crate) fn from_checked(s: MqttStr) -> Self {
        debug_assert!(!s.is_empty() && !s.as_bytes().iter().any(|&b| is_wildcard(b)));
        Self(s)
    }

    /// Whether `bytes` are a valid topic name by the common, quick test: not empty, ASCII
    /// without U+0000, no wildcard (one branch-free pass). `false` says nothing: the full
    /// checks then decide.
    pub(crate) fn plainly_valid(bytes: &[u8]) -> bool {
        let bad = bytes.iter().fold(0u8, |bad, &b| {
            bad | u8::from(b.wrapping_sub(1) >= 0x7f) | u8::from(b == PLUS) | u8::from(b == HASH)
        });
        !bytes.is_empty() && bad == 0
    }
}

impl TryFrom<MqttStr> for TopicName {
    type Error = TopicError;

    /// Checks `s` and wraps it without copying.
    fn try_from(s: MqttStr) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.as_bytes().iter().any(|&b| is_wildcard(b)) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;

    /// Checks `s` and copies it into a new name.
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for TopicName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for TopicName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A topic filter: what a subscription matches.
///
/// At least one character long ([MQTT-4.7.3-1]); `+` fills a whole level ([MQTT-4.7.1-2]; in
/// 3.1.1 [MQTT-4.7.1-3]) and matches exactly one level, which may be empty; `#` is either the
/// whole filter or follows a `/`, and is the last character ([MQTT-4.7.1-1]; in 3.1.1
/// [MQTT-4.7.1-2]), and matches the parent level and any number of levels below it. Being an
/// [`MqttStr`], the filter is also well-formed UTF-8 without U+0000 ([MQTT-4.7.3-2]) and at most
/// 65,535 bytes long ([MQTT-4.7.3-3]).
///
/// A filter that starts with `$share/` is a shared subscription, `$share/{ShareName}/{filter}`:
/// the share name is at least one character long ([MQTT-4.8.2-1]), holds no `/`, `+` or `#`,
/// and is followed by `/` and a valid, non-empty topic filter ([MQTT-4.8.2-2]). MQTT 3.1.1 does
/// not define shared subscriptions, but brokers commonly offer them to 3.1.1 clients with the
/// same syntax, so the filter is parsed the same way in both versions. Only the exact prefix
/// `$share/` counts: `$share`, `$sharex/a` and `$SHARE/g/a` are ordinary filters.
///
/// Equality, ordering and hashing are those of the whole filter as sent
/// ([`as_str`](Self::as_str)).
#[derive(Clone)]
pub struct TopicFilter {
    /// The whole filter as on the wire.
    full: MqttStr,
    /// Where [`filter`](Self::filter) starts in `full`: 0 for an ordinary filter, else just past
    /// the `/` that ends the share name (so at least `"$share/x/".len()`).
    inner_start: usize,
}

impl TopicFilter {
    /// Checks `s` and copies it into a new filter.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::try_from(MqttStr::new(s)?)
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic filter: a literal like that is a bug in the calling program,
    /// not something that can arrive from the network.
    pub fn from_static(s: &'static str) -> Self {
        match Self::try_from(MqttStr::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic filter literal {s:?}: {e}"),
        }
    }

    /// The whole filter as sent, including any `$share/{ShareName}/`.
    pub fn as_str(&self) -> &str {
        self.full.as_str()
    }

    /// The same filter in an allocation of its own (see [`MqttStr::detach`]).
    pub(crate) fn detach(&self) -> Self {
        Self { full: self.full.detach(), inner_start: self.inner_start }
    }

    /// The whole filter as an MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.full
    }

    /// The MQTT string this filter wraps: the whole filter as sent.
    pub fn into_inner(self) -> MqttStr {
        self.full
    }

    /// Whether this is a shared subscription, `$share/{ShareName}/{filter}`.
    pub fn is_shared(&self) -> bool {
        self.inner_start != 0
    }

    /// The share name of a shared subscription: `g` for `$share/g/a/b`.
    pub fn share_name(&self) -> Option<&str> {
        // Both ends are next to an ASCII '/', so they are character boundaries.
        self.is_shared().then(|| &self.as_str()[SHARE_PREFIX.len()..self.inner_start - 1])
    }

    /// The part that is matched against topic names: `a/b` for `$share/g/a/b`, otherwise the
    /// whole filter.
    pub fn filter(&self) -> &str {
        // `inner_start` is 0 or just past an ASCII '/', so it is a character boundary.
        &self.as_str()[self.inner_start..]
    }

    /// [`filter`](Self::filter) as bytes, without the UTF-8 check `as_str` repeats.
    fn filter_bytes(&self) -> &[u8] {
        self.full.as_bytes().get(self.inner_start..).unwrap_or_default()
    }

    /// Whether [`filter`](Self::filter) holds a wildcard, `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter_bytes().iter().any(|&b| is_wildcard(b))
    }

    /// Whether [`filter`](Self::filter) matches `topic`; see [`matches()`].
    ///
    /// A shared subscription matches with the filter after its `$share/{ShareName}/`.
    pub fn matches(&self, topic: &TopicName) -> bool {
        match_bytes(self.filter_bytes(), topic.as_bytes())
    }
}

/// Checks the wildcard rules of a filter that is not a shared subscription's whole filter.
fn check_filter(filter: &[u8]) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split(|&b| b == SEPARATOR).peekable();
    while let Some(level) = levels.next() {
        let ok = match level {
            [PLUS] => true,
            [HASH] => levels.peek().is_none(),
            _ => !level.iter().any(|&b| is_wildcard(b)),
        };
        if !ok {
            return Err(TopicError::InvalidWildcard);
        }
    }
    Ok(())
}

impl TryFrom<MqttStr> for TopicFilter {
    type Error = TopicError;

    /// Checks `s` and wraps it without copying.
    fn try_from(s: MqttStr) -> Result<Self, TopicError> {
        let Some(rest) = s.as_bytes().strip_prefix(SHARE_PREFIX) else {
            check_filter(s.as_bytes())?;
            return Ok(Self { full: s, inner_start: 0 });
        };
        // `$share/{ShareName}/{filter}`: the share name runs to the next '/', so it cannot hold
        // one; without that '/', there is no filter.
        let (name, inner) = match rest.iter().position(|&b| b == SEPARATOR) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if name.is_empty() || name.iter().any(|&b| is_wildcard(b)) {
            return Err(TopicError::InvalidShareName);
        }
        match inner {
            None | Some([]) => return Err(TopicError::EmptySharedFilter),
            Some(inner) => check_filter(inner)?,
        }
        let inner_start = SHARE_PREFIX.len() + name.len() + 1;
        Ok(Self { full: s, inner_start })
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    /// Checks `s` and copies it into a new filter.
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

// `inner_start` is a function of `full`, so these agree with comparing the whole filter.

impl PartialEq for TopicFilter {
    fn eq(&self, other: &Self) -> bool {
        self.full == other.full
    }
}

impl Eq for TopicFilter {}

impl Hash for TopicFilter {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.full.hash(state);
    }
}

impl PartialOrd for TopicFilter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TopicFilter {
    fn cmp(&self, other: &Self) -> Ordering {
        self.full.cmp(&other.full)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for TopicFilter {
    fn eq(&self, other: &str) -> bool {
        self.full.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for TopicFilter {
    fn eq(&self, other: &&str) -> bool {
        self.full.as_bytes() == other.as_bytes()
    }
}

/// Whether `filter` (a valid filter, not a `$share/` one) matches `topic` (a valid name).
///
/// - `+` matches exactly one level, which may be empty: `+/+` and `/+` match `/finance`, `+`
///   does not.
/// - `#` matches the parent level and any number of levels below it: `sport/#` matches `sport`,
///   `sport/` and `sport/tennis/player1`.
/// - A filter whose first character is a wildcard does not match a name that starts with `$`
///   ([MQTT-4.7.2-1]): `#` does not match `$SYS/uptime`, but `$SYS/#` does.
/// - Anything else compares byte for byte, with no normalisation: matching is case-sensitive
///   and a level may hold spaces ([MQTT-4.7.3-4]).
///
/// Walks both strings once without allocating. For a shared subscription, match its
/// [`TopicFilter::filter`] (as [`TopicFilter::matches`] does). Given an invalid filter or name
/// the answer is unspecified, but the function does not panic.
pub fn matches(filter: &str, topic: &str) -> bool {
    match_bytes(filter.as_bytes(), topic.as_bytes())
}

/// [`matches()`] on bytes.
fn match_bytes(mut f: &[u8], mut t: &[u8]) -> bool {
    if let (Some(&(PLUS | HASH)), Some(b'$')) = (f.first(), t.first()) {
        return false;
    }
    loop {
        // Here `f` and `t` each start a level.
        match f.first() {
            Some(&HASH) => return true,
            Some(&PLUS) => {
                // Skip one topic level, which may be empty.
                f = &f[1..];
                t = t.iter().position(|&b| b == SEPARATOR).map_or(&[], |i| &t[i..]);
            }
            _ => {
                // Skip the bytes both have in common. A valid name holds no wildcards, so this
                // stops at the next wildcard of the filter; and the common part may span several
                // whole levels, as every '/' in it is at the same place in both.
                let n = common_prefix_len(f, t);
                let at_level_start = n > 0 && f[n - 1] == SEPARATOR;
                f = &f[n..];
                t = &t[n..];
                if at_level_start {
                    continue;
                }
            }
        }
        // Here both are at the end of a level, or the level differs.
        match (f, t) {
            ([], []) => return true,
            ([SEPARATOR, f_rest @ ..], [SEPARATOR, t_rest @ ..]) => {
                f = f_rest;
                t = t_rest;
            }
            // The topic ended at the parent level of a trailing '#'.
            ([SEPARATOR, HASH], []) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic name is matched by both filters `a` and `b` and by none of `excluded`
/// (all valid filters, none a `$share/` one): whether a subscription `a` can receive anything
/// that a grant `b` allows and no `excluded` filter takes away.
///
/// With no exclusions this says whether the two filters overlap at all: `sport/+` and
/// `+/tennis` do (`sport/tennis`), `sport/#` and `news/#` do not, and neither do `#` and
/// `$SYS/uptime`, since a filter starting with a wildcard matches no name starting with `$`.
/// With exclusions: `#` still reaches `open/x` past an excluded `secret/#`, `secret/+` does
/// not, and `a/#` does not reach past `a` and `a/+/#` together, which between them match every
/// name it does.
///
/// Exact for any number of exclusions: the filters' overlap is itself a filter, and a name in
/// it escapes every exclusion exactly when one built from levels no exclusion names does, at
/// a depth no deeper than the longest exclusion plus one.
pub fn intersects_except(a: &str, b: &str, excluded: &[&str]) -> bool {
    let Some((levels, hash)) = overlap(a, b) else {
        return false;
    };
    let mut name: Vec<Level<'_>> =
        levels.iter().map(|l| if *l == "+" { Level::Fresh } else { Level::Text(l) }).collect();
    let escapes = |name: &[Level<'_>]| !excluded.iter().any(|x| matches_levels(x, name));
    if !hash {
        return escapes(&name);
    }
    let deepest = excluded.iter().map(|x| x.split('/').count()).max().unwrap_or(0);
    for extra in 0..=deepest + 1 {
        // A name has at least one level: `#` alone matches from one level on.
        if !name.is_empty() && escapes(&name) {
            return true;
        }
        if extra <= deepest {
            name.push(Level::Fresh);
        }
    }
    false
}

/// One level of a name built to test filters against: given text, or text that no filter
/// names (and that does not start with `$`).
#[derive(Clone, Copy)]
enum Level<'a> {
    Text(&'a str),
    Fresh,
}

/// The names both filters match, as a filter: its levels (each a text or `+`) and whether any
/// number of levels, none included, may follow (a trailing `#`); `None` when there are none.
fn overlap<'a>(a: &'a str, b: &'a str) -> Option<(Vec<&'a str>, bool)> {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    let mut levels = Vec::new();
    loop {
        let first = levels.is_empty();
        let (p, q) = (x.next(), y.next());
        // A `#` against levels of the other filter: the rest of the other filter, whose first
        // level here may not be a `$` one if the `#` is the whole filter.
        let rest = match (p, q) {
            (Some("#"), Some("#")) => return Some((levels, true)),
            (Some("#"), Some(l)) => Some((l, &mut y)),
            (Some(l), Some("#")) => Some((l, &mut x)),
            _ => None,
        };
        if let Some((l, rest)) = rest {
            if first && l.starts_with('$') {
                return None;
            }
            levels.push(l);
            let mut hash = false;
            for l in rest {
                if l == "#" {
                    hash = true;
                } else {
                    levels.push(l);
                }
            }
            return Some((levels, hash));
        }
        match (p, q) {
            // One filter ends where the other has its last `#`, which matches the parent level.
            (None, None) | (None, Some("#")) | (Some("#"), None) => return Some((levels, false)),
            (Some(p), Some(q)) => levels.push(match (p, q) {
                ("+", "+") => "+",
                ("+", l) | (l, "+") if first && l.starts_with('$') => return None,
                ("+", l) | (l, "+") => l,
                (p, q) if p == q => p,
                _ => return None,
            }),
            _ => return None,
        }
    }
}

/// Whether `filter` matches the name `levels` (see [`Level`]).
fn matches_levels(filter: &str, levels: &[Level<'_>]) -> bool {
    let system = |l: Option<&Level<'_>>| matches!(l, Some(Level::Text(t)) if t.starts_with('$'));
    let mut f = filter.split('/');
    let mut i = 0;
    loop {
        match (f.next(), levels.get(i)) {
            (Some("#"), l) => return !(i == 0 && system(l)),
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), l) if i == 0 && system(l) => return false,
            (Some("+"), Some(_)) => {}
            (Some(p), Some(Level::Text(t))) if p == *t => {}
            _ => return false,
        }
        i += 1;
    }
}

/// The length of the longest common prefix of `a` and `b`.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // Eight bytes at a time while they are equal, then byte by byte.
    let (a8, b8) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
    let mut i = 8 * a8.iter().zip(b8).take_while(|(x, y)| x == y).count();
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {

    /// The quick topic-name test never accepts what the full checks refuse: every string of
    /// one and two bytes, and three-byte ones around the interesting bytes.
    #[test]
    fn the_quick_topic_check_accepts_only_valid_names() {
        let full = |b: &[u8]| {
            crate::codec::MqttStr::from_bytes(bytes::Bytes::copy_from_slice(b))
                .ok()
                .is_some_and(|s| TopicName::try_from(s).is_ok())
        };
        let mut quick_ok = 0;
        for a in 0..=255u8 {
            assert!(!TopicName::plainly_valid(&[a]) || full(&[a]), "{a:#x}");
            for b in 0..=255u8 {
                if TopicName::plainly_valid(&[a, b]) {
                    assert!(full(&[a, b]), "{a:#x} {b:#x}");
                    quick_ok += 1;
                }
            }
        }
        // ASCII 1..=0x7f without + and #: 125 * 125 pairs.
        assert_eq!(quick_ok, 125 * 125);
        let edge = [0u8, 1, b'#', b'+', b'/', b'a', 0x7f, 0x80, 0xc3, 0xff];
        for a in edge {
            for b in edge {
                for c in edge {
                    let s = [a, b, c];
                    assert!(!TopicName::plainly_valid(&s) || full(&s), "{s:?}");
                }
            }
        }
        assert!(!TopicName::plainly_valid(b""));
    }

    use super::*;
    use alloc::format;
    use alloc::string::{String, ToString};
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Whether filter `f` matches name `t`, both checked.
    fn m(f: &str, t: &str) -> bool {
        let filter = TopicFilter::new(f).unwrap();
        let name = TopicName::new(t).unwrap();
        assert_eq!(filter.matches(&name), matches(filter.filter(), t));
        filter.matches(&name)
    }

    fn valid_filter(f: &str) {
        assert!(TopicFilter::new(f).is_ok(), "{f:?} should be a valid filter");
    }

    fn invalid_filter(f: &str, e: TopicError) {
        assert_eq!(TopicFilter::new(f), Err(e), "{f:?}");
        assert_eq!(TopicFilter::try_from(f), Err(e), "{f:?}");
    }

    /// Every valid filter (or, with `filters` false, topic name) of up to `max` levels drawn
    /// from `levels`.
    fn build(levels: &[&str], max: usize, filters: bool) -> Vec<String> {
        let mut all = Vec::new();
        let mut frontier = alloc::vec![String::new()];
        for depth in 1..=max {
            let mut next = Vec::new();
            for prefix in &frontier {
                for l in levels {
                    let s = if depth == 1 { (*l).to_string() } else { format!("{prefix}/{l}") };
                    all.push(s.clone());
                    if !(filters && *l == "#") {
                        next.push(s);
                    }
                }
            }
            frontier = next;
        }
        all
    }

    /// `intersects_except` against its definition: every filter of up to three levels against
    /// every name of up to four (which, by its argument, is deep enough), with no exclusion, one,
    /// and two.
    #[test]
    fn intersects_except_agrees_with_matching_every_name() {
        let filters = build(&["a", "$s", "+", "#"], 3, true);
        let names = build(&["a", "$s", "z", ""], 4, false);
        let matched: Vec<Vec<bool>> =
            filters.iter().map(|f| names.iter().map(|t| matches(f, t)).collect()).collect();
        let expect = |a: usize, b: usize, ex: &[usize]| {
            (0..names.len())
                .any(|t| matched[a][t] && matched[b][t] && ex.iter().all(|&x| !matched[x][t]))
        };
        let n = filters.len();
        for a in 0..n {
            for b in 0..n {
                let (fa, fb) = (filters[a].as_str(), filters[b].as_str());
                assert_eq!(intersects_except(fa, fb, &[]), expect(a, b, &[]), "{fa} {fb}");
                for (x, fx) in filters.iter().enumerate() {
                    let got = intersects_except(fa, fb, &[fx]);
                    assert_eq!(got, expect(a, b, &[x]), "{fa} {fb} except {fx}");
                }
            }
        }
        // Two exclusions together, for the filters that may only be covered by a pair.
        let some: Vec<usize> = (0..n).step_by(3).collect();
        for &a in &some {
            for &x in &some {
                for y in 0..n {
                    let ex = [filters[x].as_str(), filters[y].as_str()];
                    let got = intersects_except(&filters[a], "#", &ex);
                    let hash = filters.iter().position(|f| f == "#").unwrap();
                    assert_eq!(got, expect(a, hash, &[x, y]), "{} except {ex:?}", filters[a]);
                }
            }
        }
    }

    #[test]
    fn intersects_except_examples() {
        assert!(intersects_except("sport/+", "+/tennis", &[]));
        assert!(!intersects_except("sport/#", "news/#", &[]));
        assert!(!intersects_except("#", "$SYS/uptime", &[]));
        assert!(intersects_except("$SYS/#", "$SYS/uptime", &[]));
        assert!(intersects_except("#", "#", &["secret/#"]), "open/x");
        assert!(!intersects_except("secret/+", "#", &["secret/#"]));
        assert!(!intersects_except("secret", "#", &["secret/#"]), "`#` matches the parent");
        assert!(!intersects_except("a/#", "#", &["a", "a/+/#"]));
        assert!(intersects_except("a/#", "#", &["a", "a/+"]), "a/x/y");
        assert!(intersects_except("+/+", "#", &["a/b", "+/c"]));
        assert!(!intersects_except("a/b", "a/+", &["+/b"]));
    }

    /// The wildcard characters are not allowed in a topic name.
    fn check_no_wildcards_in_names() {
        for t in ["+", "#", "a/+", "a/#", "+/a", "a+b", "sport/tennis#", "a/b+", "$SYS/#", "#/a"] {
            assert_eq!(TopicName::new(t), Err(TopicError::WildcardInName), "{t}");
            assert_eq!(TopicName::try_from(t), Err(TopicError::WildcardInName), "{t}");
            let s = MqttStr::new(t).unwrap();
            assert_eq!(TopicName::try_from(s), Err(TopicError::WildcardInName), "{t}");
        }
        for t in ["a", "/", "sport/tennis/player1", "a b", "$SYS/x", "*", "a?b", "%23"] {
            assert!(TopicName::new(t).is_ok(), "{t}");
        }
    }

    /// `#` is alone in its level (the whole filter, or right after '/') and last.
    fn check_hash_placement() {
        // The examples of section 4.7.1.2.
        valid_filter("sport/tennis/#");
        valid_filter("#");
        invalid_filter("sport/tennis#", TopicError::InvalidWildcard);
        invalid_filter("sport/tennis/#/ranking", TopicError::InvalidWildcard);
        for f in ["/#", "a/#", "+/#", "a//#", "//#", "$SYS/#", "a/+/#"] {
            valid_filter(f);
        }
        for f in ["a/#/b", "a/b#", "a#", "#a", "##", "#/", "#/a", "#/#", "a/#/", "a/##", "/#/"] {
            invalid_filter(f, TopicError::InvalidWildcard);
        }
    }

    /// `+` fills a whole level, which may be any level, and can appear more than once.
    fn check_plus_placement() {
        // The examples of section 4.7.1.3.
        valid_filter("+");
        valid_filter("+/tennis/#");
        invalid_filter("sport+", TopicError::InvalidWildcard);
        valid_filter("sport/+/player1");
        for f in ["/+", "+/", "+/+", "a/+/b", "+/+/+", "//+//", "$SYS/+"] {
            valid_filter(f);
        }
        let invalid =
            ["a+", "+a", "++", "a/+b/c", "a/b+/c", "+#", "#+", "a/+#", "+/a+", "a/+tennis"];
        for f in invalid {
            invalid_filter(f, TopicError::InvalidWildcard);
        }
    }

    /// MQTT 5 only: wildcards may be used in topic filters but not in topic names.
    #[test]
    fn mqtt_4_7_0_1_wildcards_are_not_allowed_in_names() {
        check_no_wildcards_in_names();
    }

    /// 3.1.1 only: wildcards may be used in topic filters but not in topic names.
    #[test]
    fn mqtt_4_7_1_1_wildcards_are_not_allowed_in_names() {
        check_no_wildcards_in_names();
    }

    /// MQTT 5 only: the multi-level wildcard is alone in its level and last.
    #[test]
    fn mqtt_4_7_1_1_hash_must_be_last() {
        check_hash_placement();
    }

    /// 3.1.1 only: the multi-level wildcard is alone in its level and last.
    #[test]
    fn mqtt_4_7_1_2_hash_must_be_last() {
        check_hash_placement();
    }

    /// MQTT 5 only: the single-level wildcard occupies an entire level of the filter.
    #[test]
    fn mqtt_4_7_1_2_plus_must_occupy_a_whole_level() {
        check_plus_placement();
    }

    /// 3.1.1 only: the single-level wildcard occupies an entire level of the filter.
    #[test]
    fn mqtt_4_7_1_3_plus_must_occupy_a_whole_level() {
        check_plus_placement();
    }

    #[test]
    fn sec_4_7_1_1_adjacent_separators_make_empty_levels() {
        for s in ["/", "//", "a//b", "/a", "a/", "///"] {
            assert!(TopicName::new(s).is_ok(), "{s}");
            valid_filter(s);
        }
        assert!(m("/", "/"));
        assert!(m("//", "//"));
        assert!(!m("/", "//"));
        assert!(!m("//", "/"));
        assert!(m("+/+", "/"));
        assert!(m("+/+/+", "//"));
        assert!(!m("+/+", "//"));
        assert!(m("a/+/b", "a//b"));
        assert!(!m("a/+/b", "a/b"));
        assert!(m("a//b", "a//b"));
        assert!(!m("a//b", "a/b"));
        assert!(!m("a/b", "a//b"));
        assert!(m("/#", "/"));
        assert!(m("/#", "//x"));
        assert!(!m("/#", "x/"));
    }

    #[test]
    fn sec_4_7_1_2_hash_matches_the_parent_and_any_number_of_children() {
        // The examples of section 4.7.1.2.
        for t in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(m("sport/tennis/player1/#", t), "{t}");
        }
        assert!(m("sport/#", "sport"));
        // More.
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/"));
        assert!(m("sport/#", "sport/"));
        assert!(m("sport/#", "sport/tennis"));
        assert!(m("sport/#", "sport//"));
        assert!(!m("sport/#", "sports"));
        assert!(!m("sport/#", "spor"));
        assert!(!m("sport/#", "Sport"));
        assert!(!m("sport/#", "/sport"));
        assert!(!m("sport/tennis/#", "sport/tennisplayer"));
        assert!(!m("sport/tennis/#", "sport"));
        assert!(!m("sport/tennis/player1/#", "sport/tennis/player2"));
        for t in ["a", "/", "//", "a/b/c", "/finance", "sport/tennis/player1", "x y/z"] {
            assert!(m("#", t), "{t}");
        }
        assert!(m("+/#", "a"));
        assert!(m("+/#", "a/b/c"));
        assert!(m("+/#", "/"));
        assert!(m("a/+/#", "a/b"));
        assert!(!m("a/+/#", "a"));
        assert!(m("/#", "/finance"));
        assert!(!m("/#", "finance"));
    }

    #[test]
    fn sec_4_7_1_3_plus_matches_exactly_one_level() {
        // The examples of section 4.7.1.3.
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        // More.
        assert!(m("+", "finance"));
        assert!(m("+", "a b"));
        assert!(!m("+", "a/b"));
        assert!(!m("+/+", "finance"));
        assert!(!m("/+", "finance"));
        assert!(m("sport/+/player1", "sport/tennis/player1"));
        assert!(m("sport/+/player1", "sport//player1"));
        assert!(!m("sport/+/player1", "sport/tennis/player2"));
        assert!(!m("sport/+/player1", "sport/tennis/x/player1"));
        assert!(m("+/tennis/#", "sport/tennis/player1/ranking"));
        assert!(m("+/tennis/#", "sport/tennis"));
        assert!(!m("+/tennis/#", "sport/golf"));
        assert!(m("+/+/+/+", "factory/line3/robot7/status"));
        assert!(!m("+/+/+/+", "factory/line3/robot7"));
        assert!(m("+/", "a/"));
        assert!(!m("+/", "a"));
        assert!(!m("+/", "a/b"));
    }

    /// [MQTT-4.7.2-1] and the examples of section 4.7.2.
    #[test]
    fn mqtt_4_7_2_1_wildcard_first_does_not_match_dollar_topics() {
        assert!(!m("#", "$SYS/broker/uptime"));
        assert!(!m("#", "$"));
        assert!(!m("+", "$SYS"));
        assert!(!m("+/#", "$SYS/x"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(m("$SYS/+/Clients", "$SYS/monitor/Clients"));
        // Only the first character counts.
        assert!(m("#", "a/$SYS"));
        assert!(m("a/#", "a/$b"));
        assert!(m("+/+", "a/$b"));
        assert!(m("/+", "/$SYS"));
        // A '$' name needs a literal first level: receiving both kinds takes '#' and '$SYS/#'.
        assert!(m("$/+", "$/x"));
        assert!(!m("$SYS/#", "SYS/x"));
        assert!(matches("#", "a") && !matches("#", "$a") && matches("$a", "$a"));
    }

    #[test]
    fn sec_4_7_2_names_starting_with_dollar_are_system_topics() {
        assert!(TopicName::new("$SYS/broker/uptime").unwrap().is_system());
        assert!(TopicName::new("$").unwrap().is_system());
        assert!(TopicName::new("$share/g/a").unwrap().is_system());
        assert!(!TopicName::new("SYS/$x").unwrap().is_system());
        assert!(!TopicName::new("/$SYS").unwrap().is_system());
        assert!(!TopicName::new(" $SYS").unwrap().is_system());
        assert!(!TopicName::empty().is_system());
    }

    #[test]
    fn mqtt_4_7_3_1_topics_are_at_least_one_character() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::try_from(MqttStr::default()), Err(TopicError::Empty));
        invalid_filter("", TopicError::Empty);
        assert_eq!(TopicFilter::try_from(MqttStr::default()), Err(TopicError::Empty));
        assert!(TopicName::new("/").is_ok());
        assert!(TopicName::new(" ").is_ok());
        valid_filter("/");
    }

    #[test]
    fn mqtt_4_7_3_2_null_character_is_refused() {
        let null = TopicError::Str(StrError::NullCharacter);
        assert_eq!(TopicName::new("a\0b"), Err(null));
        assert_eq!(TopicName::new("\0"), Err(null));
        invalid_filter("a/\0", null);
        invalid_filter("$share/g\0/a", null);
        let bytes = Bytes::from_static(b"a/\0/b");
        assert_eq!(MqttStr::from_bytes(bytes).map_err(TopicError::from), Err(null));
    }

    #[test]
    fn mqtt_4_7_3_3_at_most_65535_bytes() {
        let max = "a".repeat(65_535);
        assert_eq!(TopicName::new(&max).unwrap().as_bytes().len(), 65_535);
        assert!(TopicFilter::new(&max).is_ok());
        let over = "a".repeat(65_536);
        let too_long = TopicError::Str(StrError::TooLong);
        assert_eq!(TopicName::new(&over), Err(too_long));
        invalid_filter(&over, too_long);
        // Counted in bytes, not characters: 21,845 three-byte characters fill the limit exactly.
        let max = "€".repeat(21_845);
        assert!(TopicName::new(&max).is_ok());
        assert_eq!(TopicName::new(&format!("{max}a")), Err(too_long));
        // A shared filter of the maximum length, with a wildcard at the very end.
        let shared = format!("$share/g/{}/#", "a".repeat(65_535 - "$share/g//#".len()));
        assert_eq!(shared.len(), 65_535);
        let f = TopicFilter::new(&shared).unwrap();
        assert!(f.matches(&TopicName::new(&f.filter()[..f.filter().len() - 2]).unwrap()));
        // And a name as long as can be, matched against the same name as a filter.
        let name = TopicName::new(&"ab/".repeat(21_845)).unwrap();
        assert!(TopicFilter::new(name.as_str()).unwrap().matches(&name));
    }

    #[test]
    fn mqtt_4_7_3_4_matching_does_not_normalise() {
        // Case-sensitive; U+00E9 is not 'e' followed by U+0301; no trimming or case folding.
        assert!(!m("ACCOUNTS", "Accounts"));
        assert!(!m("accounts", "Accounts"));
        assert!(m("café/+/ü", "café/x/ü"));
        assert!(!m("café", "cafe\u{301}"));
        assert!(!m("cafe\u{301}", "café"));
        assert!(!m("a", " a"));
        assert!(!m("a ", "a"));
        assert!(!m("ß", "ss"));
        // A byte-wise common prefix may end inside a multi-byte character.
        assert!(!m("é", "è"));
        assert!(!m("日本/#", "日付/x"));
        assert!(m("日本/+/語", "日本/東京/語"));
        assert!(m("😀/#", "😀/😀"));
        // Characters other than the separator and the wildcards are plain bytes.
        assert!(m("a*b/?/%2B", "a*b/?/%2B"));
        assert!(!m("a*b", "axb"));
        assert!(m("\u{feff}x", "\u{feff}x"));
        assert!(!m("x", "\u{feff}x"));
    }

    #[test]
    fn sec_4_7_3_topic_semantics_examples() {
        // "ACCOUNTS" and "Accounts" are two different topic names.
        assert_ne!(TopicName::new("ACCOUNTS").unwrap(), TopicName::new("Accounts").unwrap());
        // "Accounts payable" is a valid topic name.
        assert!(m("Accounts payable", "Accounts payable"));
        assert!(m("Accounts payable/+", "Accounts payable/q1"));
        // "/finance" is different from "finance".
        assert!(!m("/finance", "finance"));
        assert!(!m("finance", "/finance"));
        // "/" is a valid topic name and filter.
        assert!(m("/", "/"));
        // A trailing '/' adds an (empty) level.
        assert!(!m("a/b", "a/b/"));
        assert!(!m("a/b/", "a/b"));
        assert!(m("a/b/", "a/b/"));
    }

    /// MQTT 5 only: a shared subscription's filter starts with `$share/` and a share name of at
    /// least one character.
    #[test]
    fn mqtt_4_8_2_1_shared_filter_starts_with_share_and_a_share_name() {
        let f = TopicFilter::new("$share/consumer1/sport/tennis/+").unwrap();
        assert!(f.is_shared());
        assert_eq!(f.share_name(), Some("consumer1"));
        assert_eq!(f.filter(), "sport/tennis/+");
        assert_eq!(f.as_str(), "$share/consumer1/sport/tennis/+");
        assert!(f.has_wildcards());
        let g = TopicFilter::new("$share/g/a").unwrap();
        assert_eq!((g.share_name(), g.filter()), (Some("g"), "a"));
        assert!(!g.has_wildcards());
        let h = TopicFilter::new("$share/é $x/#").unwrap();
        assert_eq!((h.share_name(), h.filter()), (Some("é $x"), "#"));
        // An empty share name.
        invalid_filter("$share//a", TopicError::InvalidShareName);
        invalid_filter("$share//", TopicError::InvalidShareName);
        invalid_filter("$share/", TopicError::InvalidShareName);
    }

    /// MQTT 5 only: the share name holds no `/`, `+` or `#` and is followed by `/` and a topic
    /// filter.
    #[test]
    fn mqtt_4_8_2_2_share_name_is_followed_by_a_slash_and_a_filter() {
        let invalid =
            ["$share/+/a", "$share/#/a", "$share/g+/a", "$share/g#/a", "$share/#", "$share/+"];
        for f in invalid {
            invalid_filter(f, TopicError::InvalidShareName);
        }
        for f in ["$share/g", "$share/g/", "$share/consumer1"] {
            invalid_filter(f, TopicError::EmptySharedFilter);
        }
        // The share name ends at the first '/': whatever follows is the filter, and is checked.
        for f in ["$share/g/a/#/b", "$share/g/a+", "$share/g/#/", "$share/g/##"] {
            invalid_filter(f, TopicError::InvalidWildcard);
        }
        let f = TopicFilter::new("$share/a/b/c").unwrap();
        assert_eq!((f.share_name(), f.filter()), (Some("a"), "b/c"));
        let f = TopicFilter::new("$share/g//").unwrap();
        assert_eq!(f.filter(), "/");
    }

    /// MQTT 5 only (3.1.1 has no shared subscriptions; ternmq parses them the same way for both).
    #[test]
    fn sec_4_8_2_shared_subscription_matches_with_its_filter() {
        // The examples of section 4.8.2.
        let c1 = TopicFilter::new("$share/consumer1/sport/tennis/+").unwrap();
        let c2 = TopicFilter::new("$share/consumer2/sport/tennis/+").unwrap();
        assert_ne!(c1, c2);
        assert_eq!(c1.filter(), c2.filter());
        let player1 = TopicName::new("sport/tennis/player1").unwrap();
        assert!(c1.matches(&player1) && c2.matches(&player1));
        let finance = TopicFilter::new("$share/consumer1//finance").unwrap();
        assert_eq!(finance.filter(), "/finance");
        assert!(finance.matches(&TopicName::new("/finance").unwrap()));
        assert!(!finance.matches(&TopicName::new("finance").unwrap()));
        // The "$share/{ShareName}/" part is not matched against the name.
        assert!(!c1.matches(&TopicName::new("$share/consumer1/sport/tennis/p1").unwrap()));
        // The inner filter's first character decides the '$' rule.
        let all = TopicFilter::new("$share/g/#").unwrap();
        assert!(all.matches(&TopicName::new("a/b").unwrap()));
        assert!(!all.matches(&TopicName::new("$SYS/x").unwrap()));
        let sys = TopicFilter::new("$share/g/$SYS/#").unwrap();
        assert!(sys.matches(&TopicName::new("$SYS/x").unwrap()));
        let plus = TopicFilter::new("$share/g/+").unwrap();
        assert!(plus.matches(&TopicName::new("x").unwrap()));
        assert!(!plus.matches(&TopicName::new("$x").unwrap()));
    }

    /// MQTT 5 only: the prefix is exactly `$share/`, case-sensitive.
    #[test]
    fn sec_4_8_2_only_the_exact_share_prefix_makes_a_shared_subscription() {
        for s in ["$share", "$sharex/a", "$SHARE/g/a", "$Share/g/a", "$shar/g/a", "share/g/a"] {
            let f = TopicFilter::new(s).unwrap();
            assert!(!f.is_shared(), "{s}");
            assert_eq!(f.share_name(), None, "{s}");
            assert_eq!(f.filter(), s);
        }
        let f = TopicFilter::new("$share").unwrap();
        assert!(f.matches(&TopicName::new("$share").unwrap()));
        assert!(!TopicFilter::new("a/$share/g/b").unwrap().is_shared());
        // A share name may itself start with '$', and a filter may look like another share.
        let f = TopicFilter::new("$share/$share/$share/x/y").unwrap();
        assert_eq!((f.share_name(), f.filter()), (Some("$share"), "$share/x/y"));
        assert!(f.matches(&TopicName::new("$share/x/y").unwrap()));
    }

    #[test]
    fn levels_keep_empty_levels() {
        let levels = |s: &str| TopicName::new(s).unwrap().levels().map(String::from).collect();
        let l: Vec<String> = levels("/a//b/");
        assert_eq!(l, ["", "a", "", "b", ""]);
        let l: Vec<String> = levels("sport/tennis/player1");
        assert_eq!(l, ["sport", "tennis", "player1"]);
        let l: Vec<String> = levels("/");
        assert_eq!(l, ["", ""]);
        let l: Vec<String> = levels("a b");
        assert_eq!(l, ["a b"]);
        let l: Vec<String> = levels("日本/語");
        assert_eq!(l, ["日本", "語"]);
    }

    #[test]
    fn empty_name_is_only_for_topic_aliases() {
        let e = TopicName::empty();
        assert!(e.is_empty());
        assert_eq!(e.as_str(), "");
        assert!(!TopicName::new("a").unwrap().is_empty());
        assert!(!TopicName::from_static("/").is_empty());
    }

    #[test]
    fn name_accessors_and_conversions() {
        let t = TopicName::from_static("sport/tennis");
        assert_eq!(t.as_str(), "sport/tennis");
        assert_eq!(t.as_bytes(), b"sport/tennis");
        assert_eq!(t.as_mqtt_str(), &MqttStr::from_static("sport/tennis"));
        assert_eq!(t, "sport/tennis");
        assert_eq!(&t, "sport/tennis");
        assert_eq!(t.as_ref(), "sport/tennis");
        assert_eq!(t.to_string(), "sport/tennis");
        assert_eq!(format!("{t:?}"), "\"sport/tennis\"");
        assert_eq!(TopicName::try_from("sport/tennis").unwrap(), t);
        assert_eq!(t.clone().into_inner(), "sport/tennis");
        assert!(TopicName::new("a").unwrap() < TopicName::new("b").unwrap());
        // Made from an MqttStr, the name shares its buffer.
        let buf = Bytes::from_static(b"sport/tennis");
        let name = TopicName::try_from(MqttStr::from_bytes(buf.clone()).unwrap()).unwrap();
        assert_eq!(name.as_bytes().as_ptr(), buf.as_ptr());
        assert_eq!(name.into_inner().into_bytes().as_ptr(), buf.as_ptr());
    }

    #[test]
    fn filter_accessors_and_conversions() {
        let f = TopicFilter::from_static("$share/g/a/+");
        assert_eq!(f.as_str(), "$share/g/a/+");
        assert_eq!(f.as_mqtt_str(), &MqttStr::from_static("$share/g/a/+"));
        assert_eq!(f, "$share/g/a/+");
        assert_eq!(&f, "$share/g/a/+");
        assert_eq!(f.as_ref(), "$share/g/a/+");
        assert_eq!(f.to_string(), "$share/g/a/+");
        assert_eq!(format!("{f:?}"), "\"$share/g/a/+\"");
        assert_eq!(TopicFilter::try_from("$share/g/a/+").unwrap(), f);
        assert_eq!(f.clone().into_inner(), "$share/g/a/+");
        let plain = TopicFilter::from_static("a/b");
        assert!(!plain.is_shared() && !plain.has_wildcards());
        assert_eq!(plain.filter(), "a/b");
        assert!(TopicFilter::from_static("#").has_wildcards());
        // Made from an MqttStr, the filter shares its buffer.
        let buf = Bytes::from_static(b"$share/g/a/#");
        let shared = TopicFilter::try_from(MqttStr::from_bytes(buf.clone()).unwrap()).unwrap();
        assert_eq!(shared.as_str().as_ptr(), buf.as_ptr());
        assert_eq!(shared.filter().as_ptr(), buf[9..].as_ptr());
    }

    #[test]
    fn filters_compare_and_hash_by_the_whole_string() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |f: &TopicFilter| {
            let mut h = DefaultHasher::new();
            f.hash(&mut h);
            h.finish()
        };
        let a = TopicFilter::new("$share/g/a").unwrap();
        let b = TopicFilter::try_from(MqttStr::from_static("$share/g/a")).unwrap();
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(a, TopicFilter::new("a").unwrap());
        assert_ne!(a, TopicFilter::new("$share/h/a").unwrap());
        let mut v: Vec<TopicFilter> = ["b", "$share/z/a", "a/#", "$share/a/z", "+"]
            .into_iter()
            .map(|s| TopicFilter::new(s).unwrap())
            .collect();
        v.sort();
        let sorted: Vec<&str> = v.iter().map(TopicFilter::as_str).collect();
        assert_eq!(sorted, ["$share/a/z", "$share/z/a", "+", "a/#", "b"]);
    }

    #[test]
    #[should_panic(expected = "invalid topic name literal")]
    fn from_static_name_panics_on_a_wildcard() {
        let _ = TopicName::from_static("a/+");
    }

    #[test]
    #[should_panic(expected = "invalid topic filter literal")]
    fn from_static_filter_panics_on_a_misplaced_wildcard() {
        let _ = TopicFilter::from_static("a/#/b");
    }

    #[test]
    fn errors_display() {
        assert_eq!(TopicError::Empty.to_string(), "topic is empty");
        assert_eq!(TopicError::WildcardInName.to_string(), "topic name contains a wildcard");
        assert!(TopicError::InvalidWildcard.to_string().contains("whole level"));
        assert!(TopicError::InvalidShareName.to_string().contains("share name"));
        assert!(TopicError::EmptySharedFilter.to_string().contains("no topic filter"));
        let e = TopicError::from(StrError::TooLong);
        assert_eq!(e.to_string(), StrError::TooLong.to_string());
    }

    #[test]
    fn common_prefix_len_crosses_chunks() {
        assert_eq!(common_prefix_len(b"", b"abc"), 0);
        assert_eq!(common_prefix_len(b"abc", b"abd"), 2);
        assert_eq!(common_prefix_len(b"0123456789abcdef", b"0123456789abcdef"), 16);
        assert_eq!(common_prefix_len(b"0123456789abcdefg", b"0123456789abcdef"), 16);
        for i in 0..20 {
            let a = "x".repeat(20);
            let mut b = a.clone().into_bytes();
            b[i] = b'y';
            assert_eq!(common_prefix_len(a.as_bytes(), &b), i);
        }
    }

    /// The obvious model of matching: split both on '/' and compare level by level.
    fn model(f: &str, t: &str) -> bool {
        if t.starts_with('$') && (f.starts_with('+') || f.starts_with('#')) {
            return false;
        }
        let (mut fl, mut tl) = (f.split('/'), t.split('/'));
        loop {
            match (fl.next(), tl.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Every string over `alphabet` of up to `max` characters.
    fn all_strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut last = alloc::vec![String::new()];
        for _ in 0..max {
            let next: Vec<String> =
                last.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    #[test]
    fn matching_agrees_with_the_model_on_every_short_filter_and_name() {
        let filters: Vec<TopicFilter> = all_strings(&['a', 'b', '/', '+', '#', '$'], 4)
            .iter()
            .filter_map(|s| TopicFilter::new(s).ok())
            .filter(|f| !f.is_shared())
            .collect();
        let names: Vec<TopicName> = all_strings(&['a', 'b', '/', '$'], 5)
            .iter()
            .map(|s| TopicName::new(s).unwrap())
            .collect();
        assert!(filters.len() > 300 && names.len() > 1000);
        for f in &filters {
            for t in &names {
                assert_eq!(f.matches(t), model(f.as_str(), t.as_str()), "{f} vs {t}");
            }
        }
    }

    #[test]
    fn matching_invalid_input_does_not_panic() {
        let junk = all_strings(&['a', '/', '+', '#', '$'], 4);
        for f in &junk {
            for t in &junk {
                let _ = matches(f, t);
            }
        }
    }

    /// Topic levels from a small alphabet, so that levels often repeat and are often empty.
    fn levels_strategy() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[ab$ é]{0,3}", 1..7)
    }

    proptest! {
        #[test]
        fn every_valid_name_matches_itself(levels in levels_strategy()) {
            let name = levels.join("/");
            prop_assume!(!name.is_empty());
            let t = TopicName::new(&name).unwrap();
            prop_assert!(matches(&name, &name));
            prop_assert!(TopicFilter::new(&name).unwrap().matches(&t));
        }

        #[test]
        fn generalised_filters_match(
            levels in levels_strategy(),
            plus in proptest::collection::vec(any::<bool>(), 7),
            cut in 0usize..8,
        ) {
            let name = levels.join("/");
            prop_assume!(!name.is_empty());
            // Replace some levels by '+', then maybe cut the rest off with '#'.
            let mut parts: Vec<String> = levels
                .iter()
                .zip(&plus)
                .map(|(l, p)| if *p { "+".into() } else { l.clone() })
                .collect();
            if cut <= parts.len() {
                parts.truncate(cut);
                parts.push("#".into());
            }
            let filter = TopicFilter::new(&parts.join("/")).unwrap();
            let t = TopicName::new(&name).unwrap();
            // Except that a wildcard first does not match a '$' name [MQTT-4.7.2-1].
            let dollar_rule = t.is_system() && filter.as_str().starts_with(['+', '#']);
            prop_assert_eq!(filter.matches(&t), !dollar_rule, "{} vs {}", filter, t);
        }

        #[test]
        fn matching_agrees_with_the_model(
            f in proptest::collection::vec(
                prop_oneof!["[ab$é]{0,2}", Just("+".to_string())], 1..6),
            hash in any::<bool>(),
            t in proptest::collection::vec("[ab$é]{0,2}", 1..7),
        ) {
            let mut f = f;
            if hash {
                f.push("#".into());
            }
            let (filter, name) = (f.join("/"), t.join("/"));
            prop_assume!(!name.is_empty());
            let expected = model(&filter, &name);
            prop_assert_eq!(matches(&filter, &name), expected, "{} vs {}", filter, name);
        }

        #[test]
        fn shared_filters_match_like_their_inner_filter(
            share in "[a-z$]{1,4}",
            f in proptest::collection::vec(prop_oneof!["[ab]{0,2}", Just("+".to_string())], 1..5),
            t in proptest::collection::vec("[ab$]{0,2}", 1..6),
        ) {
            let inner = f.join("/");
            prop_assume!(!inner.is_empty());
            let shared = TopicFilter::new(&format!("$share/{share}/{inner}")).unwrap();
            prop_assert_eq!(shared.share_name(), Some(share.as_str()));
            prop_assert_eq!(shared.filter(), inner.as_str());
            let name = TopicName::new(&t.join("/"));
            if let Ok(name) = name {
                prop_assert_eq!(shared.matches(&name), model(&inner, name.as_str()));
            }
        }

        #[test]
        fn parsing_never_panics(s in "[ab/+#$é\u{0}]{0,12}") {
            let _ = TopicName::new(&s);
            if let Ok(f) = TopicFilter::new(&s) {
                let _ = (f.share_name(), f.filter(), f.has_wildcards());
            }
            if let Ok(f) = TopicFilter::new(&format!("$share/{s}")) {
                let _ = (f.share_name(), f.filter(), f.has_wildcards());
            }
        }
    }
}
