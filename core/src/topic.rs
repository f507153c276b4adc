//! Topic names and topic filters (MQTT 5.0 section 4.7, 3.1.1 section 4.7), shared
//! subscriptions (MQTT 5.0 section 4.8.2), and matching.
//!
//! Both types are checked once when made (parse, don't validate) and hold an [`MqttStr`], so a
//! name decoded from a PUBLISH is a view of the received bytes.

use core::fmt;

use crate::codec::{MqttStr, StrError};

/// Why a string is not a valid topic name or topic filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero length ([MQTT-4.7.3-1]).
    Empty,
    /// `+` or `#` in a topic name ([MQTT-4.7.0-1], 3.1.1 [MQTT-4.7.1-1]).
    WildcardInName,
    /// A wildcard that does not occupy a whole level, or `#` that is not last
    /// ([MQTT-4.7.1-1], [MQTT-4.7.1-2], 3.1.1 [MQTT-4.7.1-2], [MQTT-4.7.1-3]).
    InvalidWildcard,
    /// A `$share/` filter whose share name is empty or holds `/`, `+` or `#`
    /// ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    InvalidShareName,
    /// A `$share/{name}/` filter with nothing after the share name.
    EmptySharedFilter,
    /// Not a valid MQTT string.
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

/// A topic name: where a PUBLISH goes. Non-empty, no wildcards.
///
/// The one exception to "non-empty" is internal: an MQTT 5 PUBLISH that carries a Topic Alias
/// may have a zero-length name on the wire; the codec represents it with an empty `TopicName`,
/// which the client and broker resolve through the alias before anything else sees it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttStr);

impl TopicName {
    /// Checks and copies `s`.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::try_from(MqttStr::new(s)?)
    }

    /// Wraps a literal.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic name: a literal like that is a bug in the calling program.
    pub fn from_static(s: &'static str) -> Self {
        match Self::try_from(MqttStr::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic name literal {s:?}: {e}"),
        }
    }

    /// The zero-length name of an alias-only MQTT 5 PUBLISH.
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

    /// The name as an MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.0
    }

    /// The MQTT string.
    pub fn into_inner(self) -> MqttStr {
        self.0
    }

    /// Whether this is the zero-length name of an alias-only PUBLISH.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with `$` (a server topic such as `$SYS/...`, [MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.as_bytes().first() == Some(&b'$')
    }

    /// The levels, split on `/`, empty levels kept.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.as_str().split('/')
    }
}

impl TryFrom<MqttStr> for TopicName {
    type Error = TopicError;

    fn try_from(s: MqttStr) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty);
        }
        if s.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;
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

const SHARE_PREFIX: &[u8] = b"$share/";

/// A topic filter: what a subscription matches. `+` matches one level, `#` any number of levels
/// at the end. A filter that starts with `$share/{ShareName}/` is a shared subscription, in both
/// protocol versions; matching then uses the filter after the share name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    full: MqttStr,
    /// For a shared subscription: where the share name ends (the `/` before the filter).
    share_end: u16,
}

impl TopicFilter {
    /// Checks and copies `s`.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        Self::try_from(MqttStr::new(s)?)
    }

    /// Wraps a literal.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic filter: a literal like that is a bug in the calling program.
    pub fn from_static(s: &'static str) -> Self {
        match Self::try_from(MqttStr::from_static(s)) {
            Ok(t) => t,
            Err(e) => panic!("invalid topic filter literal {s:?}: {e}"),
        }
    }

    /// The whole filter as sent, including any `$share/{name}/`.
    pub fn as_str(&self) -> &str {
        self.full.as_str()
    }

    /// The whole filter as an MQTT string.
    pub fn as_mqtt_str(&self) -> &MqttStr {
        &self.full
    }

    /// The MQTT string.
    pub fn into_inner(self) -> MqttStr {
        self.full
    }

    /// Whether this is a shared subscription (`$share/{name}/{filter}`).
    pub fn is_shared(&self) -> bool {
        self.share_end != 0
    }

    /// The share name of a shared subscription.
    pub fn share_name(&self) -> Option<&str> {
        let end = usize::from(self.share_end);
        self.is_shared().then(|| &self.as_str()[SHARE_PREFIX.len()..end])
    }

    /// The part that is matched against topic names: the filter after `$share/{name}/`, or the
    /// whole filter.
    pub fn filter(&self) -> &str {
        if self.is_shared() {
            &self.as_str()[usize::from(self.share_end) + 1..]
        } else {
            self.as_str()
        }
    }

    /// Whether [`filter`](Self::filter) holds `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.filter().bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether [`filter`](Self::filter) matches `topic`.
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(self.filter(), topic.as_str())
    }
}

/// Checks the wildcard rules of a (non-shared) filter.
fn check_filter(f: &[u8]) -> Result<(), TopicError> {
    if f.is_empty() {
        return Err(TopicError::Empty);
    }
    for (i, &b) in f.iter().enumerate() {
        let starts_level = i == 0 || f[i - 1] == b'/';
        let ends_level = i + 1 == f.len() || f[i + 1] == b'/';
        match b {
            b'+' if !(starts_level && ends_level) => return Err(TopicError::InvalidWildcard),
            b'#' if !(starts_level && i + 1 == f.len()) => return Err(TopicError::InvalidWildcard),
            _ => {}
        }
    }
    Ok(())
}

impl TryFrom<MqttStr> for TopicFilter {
    type Error = TopicError;

    fn try_from(s: MqttStr) -> Result<Self, TopicError> {
        let bytes = s.as_bytes();
        let Some(rest) = bytes.strip_prefix(SHARE_PREFIX) else {
            check_filter(bytes)?;
            return Ok(Self { full: s, share_end: 0 });
        };
        // $share/{ShareName}/{filter}
        let Some(slash) = rest.iter().position(|&b| b == b'/') else {
            return Err(if rest.is_empty() || rest.iter().any(|&b| b == b'+' || b == b'#') {
                TopicError::InvalidShareName
            } else {
                TopicError::EmptySharedFilter
            });
        };
        let name = &rest[..slash];
        if name.is_empty() || name.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::InvalidShareName);
        }
        let inner = &rest[slash + 1..];
        if inner.is_empty() {
            return Err(TopicError::EmptySharedFilter);
        }
        check_filter(inner)?;
        // The string is at most 65,535 bytes, so the offset fits.
        let share_end = u16::try_from(SHARE_PREFIX.len() + slash).map_err(|_| TopicError::Empty)?;
        Ok(Self { full: s, share_end })
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::new(s)
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
        self.as_str() == other
    }
}

impl PartialEq<&str> for TopicFilter {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Whether `filter` (a valid, non-shared filter) matches `topic` (a valid name).
///
/// Walks both level by level on bytes, without allocating. A filter whose first character is a
/// wildcard does not match a name that starts with `$` ([MQTT-4.7.2-1]); `#` also matches the
/// parent level (`sport/#` matches `sport`, [MQTT-4.7.1-2]).
pub fn matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    let (mut fi, mut ti) = (0, 0);
    loop {
        // Here both `fi` and `ti` are at the start of a level.
        match f.get(fi) {
            Some(b'#') => return true,
            Some(b'+') => {
                // Skip one topic level, which may be empty.
                while ti < t.len() && t[ti] != b'/' {
                    ti += 1;
                }
                fi += 1;
            }
            _ => {
                // A literal level: compare up to the next '/'.
                let f_end = f[fi..].iter().position(|&b| b == b'/').map_or(f.len(), |p| fi + p);
                let t_end = t[ti..].iter().position(|&b| b == b'/').map_or(t.len(), |p| ti + p);
                if f[fi..f_end] != t[ti..t_end] {
                    return false;
                }
                fi = f_end;
                ti = t_end;
            }
        }
        // Both levels ended: at '/' or at the end.
        match (fi == f.len(), ti == t.len()) {
            (true, true) => return true,
            (true, false) => return false,
            (false, true) => {
                // The topic has ended; only "/#" left in the filter matches (the parent level).
                return &f[fi..] == b"/#";
            }
            (false, false) => {
                fi += 1;
                ti += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn m(f: &str, t: &str) -> bool {
        let filter = TopicFilter::new(f).unwrap();
        let name = TopicName::new(t).unwrap();
        filter.matches(&name)
    }

    #[test]
    fn mqtt_4_7_1_2_hash_matches_parent_and_all_children() {
        // The examples of section 4.7.1.2.
        for t in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(m("sport/tennis/player1/#", t), "{t}");
        }
        assert!(m("sport/#", "sport"));
        assert!(m("sport/#", "sport/"));
        assert!(m("#", "a/b/c"));
        assert!(m("#", "/"));
        assert!(!m("sport/tennis/#", "sport/tennisplayer"));
    }

    #[test]
    fn mqtt_4_7_1_2_hash_must_be_last_and_alone_in_its_level() {
        for f in ["sport/tennis#", "sport/tennis/#/ranking", "a/#/b", "#/a", "a#", "##"] {
            assert_eq!(TopicFilter::new(f), Err(TopicError::InvalidWildcard), "{f}");
        }
        for f in ["#", "/#", "a/#", "+/#", "a//#"] {
            assert!(TopicFilter::new(f).is_ok(), "{f}");
        }
    }

    #[test]
    fn mqtt_4_7_1_3_plus_matches_exactly_one_level() {
        // The examples of section 4.7.1.3.
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        assert!(m("+", "a"));
        assert!(m("+/tennis/#", "sport/tennis/player1/ranking"));
        assert!(m("a/+/c", "a//c"));
    }

    #[test]
    fn mqtt_4_7_1_3_plus_must_fill_its_level() {
        for f in ["sport+", "sport/+tennis", "+a", "a+", "a/b+/c", "++"] {
            assert_eq!(TopicFilter::new(f), Err(TopicError::InvalidWildcard), "{f}");
        }
        for f in ["+", "+/tennis/#", "sport/+/player1", "/+", "+/", "+/+"] {
            assert!(TopicFilter::new(f).is_ok(), "{f}");
        }
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_first_does_not_match_dollar_topics() {
        assert!(!m("#", "$SYS/broker/uptime"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(m("a/#", "a/$b"));
        assert!(TopicName::new("$SYS/x").unwrap().is_system());
        assert!(!TopicName::new("SYS/$x").unwrap().is_system());
    }

    #[test]
    fn mqtt_4_7_3_1_topics_are_at_least_one_character() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert!(TopicName::new("/").is_ok());
    }

    #[test]
    fn mqtt_4_7_0_1_wildcards_are_not_allowed_in_names() {
        for t in ["a/+", "#", "a/#", "a+b", "sport/tennis#"] {
            assert_eq!(TopicName::new(t), Err(TopicError::WildcardInName), "{t}");
        }
    }

    #[test]
    fn mqtt_4_7_3_3_names_are_limited_by_the_string_rules() {
        let max: String = core::iter::repeat_n('a', 65_535).collect();
        assert!(TopicName::new(&max).is_ok());
        let over: String = core::iter::repeat_n('a', 65_536).collect();
        assert_eq!(TopicName::new(&over), Err(TopicError::Str(StrError::TooLong)));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Str(StrError::NullCharacter)));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::Str(StrError::NullCharacter)));
    }

    #[test]
    fn mqtt_4_7_3_4_matching_is_byte_exact() {
        assert!(!m("ACCOUNTS", "Accounts"));
        assert!(m("accounts payable/+", "accounts payable/q1"));
        assert!(!m("a/b", "a/b/"));
        assert!(!m("a/b/", "a/b"));
        assert!(m("café/+/ü", "café/x/ü"));
        assert!(!m("café", "cafe\u{301}"));
    }

    #[test]
    fn mqtt_4_8_2_1_shared_subscription_syntax() {
        let f = TopicFilter::new("$share/consumer1/sport/tennis/+").unwrap();
        assert!(f.is_shared());
        assert_eq!(f.share_name(), Some("consumer1"));
        assert_eq!(f.filter(), "sport/tennis/+");
        assert_eq!(f.as_str(), "$share/consumer1/sport/tennis/+");
        assert!(f.has_wildcards());
        assert!(f.matches(&TopicName::new("sport/tennis/p1").unwrap()));
        assert!(!f.matches(&TopicName::new("$share/consumer1/sport/tennis/p1").unwrap()));
        let g = TopicFilter::new("$share/g//finance").unwrap();
        assert_eq!(g.filter(), "/finance");
        assert!(!g.has_wildcards());
        // Not shared: `$share` must be followed by '/'.
        for f in ["$share", "$sharex/a", "$SHARE/g/a"] {
            let f = TopicFilter::new(f).unwrap();
            assert!(!f.is_shared() && f.share_name().is_none(), "{f}");
        }
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_must_not_hold_wildcards_or_slash() {
        for f in ["$share//a", "$share/+/a", "$share/#/a", "$share/g+/a", "$share/#", "$share/+"] {
            assert_eq!(TopicFilter::new(f), Err(TopicError::InvalidShareName), "{f}");
        }
        for f in ["$share/g", "$share/g/"] {
            assert_eq!(TopicFilter::new(f), Err(TopicError::EmptySharedFilter), "{f}");
        }
        assert_eq!(TopicFilter::new("$share/g/a/#/b"), Err(TopicError::InvalidWildcard));
        assert_eq!(TopicFilter::new("$share/"), Err(TopicError::InvalidShareName));
    }

    #[test]
    fn levels_keep_empty_levels() {
        let t = TopicName::new("/a//b/").unwrap();
        assert_eq!(t.levels().collect::<Vec<_>>(), ["", "a", "", "b", ""]);
    }

    fn name_strategy() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[ab$]{0,2}", 1..6)
    }

    proptest! {
        #[test]
        fn every_valid_name_matches_itself(levels in name_strategy()) {
            let name = levels.join("/");
            prop_assume!(!name.is_empty());
            let t = TopicName::new(&name).unwrap();
            prop_assert!(matches(&name, &name));
            prop_assert!(TopicFilter::new(&name).unwrap().matches(&t));
        }

        #[test]
        fn generalised_filters_match(
            levels in name_strategy(),
            plus in proptest::collection::vec(any::<bool>(), 6),
            cut in 0usize..6,
        ) {
            let name = levels.join("/");
            prop_assume!(!name.is_empty());
            // Replace some levels by '+', then maybe cut the rest off with '#'.
            let mut parts: Vec<String> = levels
                .iter()
                .zip(&plus)
                .map(|(l, p)| if *p { "+".into() } else { l.clone() })
                .collect();
            if cut < parts.len() {
                parts.truncate(cut);
                parts.push("#".into());
            }
            let filter = parts.join("/");
            let starts_wild = matches!(filter.as_bytes().first(), Some(b'+' | b'#'));
            let expected = !(name.starts_with('$') && starts_wild);
            prop_assert_eq!(matches(&filter, &name), expected, "{} vs {}", filter, name);
        }

        #[test]
        fn matching_agrees_with_a_simple_model(
            f in proptest::collection::vec(prop_oneof!["[ab]{0,1}", Just("+".to_string())], 1..5),
            hash in any::<bool>(),
            t in proptest::collection::vec("[ab]{0,1}", 1..6),
        ) {
            let mut fl = f.clone();
            if hash { fl.push("#".into()); }
            let filter = fl.join("/");
            let name = t.join("/");
            prop_assume!(!name.is_empty() && !filter.is_empty());
            // Model: level lists, '+' any one level, trailing '#' the rest (including none).
            let fv: Vec<&str> = filter.split('/').collect();
            let tv: Vec<&str> = name.split('/').collect();
            let model = if fv.last() == Some(&"#") {
                let head = &fv[..fv.len() - 1];
                tv.len() >= head.len() && head.iter().zip(&tv).all(|(a, b)| *a == "+" || a == b)
            } else {
                fv.len() == tv.len() && fv.iter().zip(&tv).all(|(a, b)| *a == "+" || a == b)
            };
            prop_assert_eq!(matches(&filter, &name), model, "{} vs {}", filter, name);
        }
    }
}
