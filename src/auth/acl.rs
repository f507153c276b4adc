//! ACL files: `topic`, `user` and `pattern` lines, and what they allow.

use std::collections::BTreeMap;
use std::path::Path;

use ternmq_core::broker::{Action, Authorizer, ClientInfo};
use ternmq_core::topic::{self, TopicFilter};

use super::*;

/// The access an ACL line gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "read" => Self::Read,
            "write" => Self::Write,
            "readwrite" => Self::ReadWrite,
            "deny" => Self::Deny,
            _ => return None,
        })
    }

    /// Whether this grants `action`.
    fn grants(self, action: Action) -> bool {
        match action {
            Action::Publish => matches!(self, Self::Write | Self::ReadWrite),
            Action::Subscribe | Action::Receive => matches!(self, Self::Read | Self::ReadWrite),
            _ => false,
        }
    }
}

/// A `topic` line.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    access: Access,
    filter: String,
}

/// A piece of a `pattern` line's filter.
#[derive(Clone, Debug)]
pub(super) enum Part {
    Text(String),
    ClientId,
    Username,
}

/// A `pattern` line.
#[derive(Clone, Debug)]
pub(super) struct Pattern {
    access: Access,
    parts: Vec<Part>,
}

impl Pattern {
    fn new(access: Access, filter: &str) -> Self {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = filter.chars().peekable();
        while let Some(c) = chars.next() {
            let part = match (c, chars.peek()) {
                ('%', Some('c')) => Part::ClientId,
                ('%', Some('u')) => Part::Username,
                _ => {
                    text.push(c);
                    continue;
                }
            };
            chars.next();
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Self { access, parts }
    }

    /// The filter for this client, or `None` if the pattern names the user name and the client
    /// has none.
    fn expand(&self, client_id: &str, username: Option<&str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::ClientId => out.push_str(client_id),
                Part::Username => out.push_str(username?),
            }
        }
        Some(out)
    }
}

/// A Mosquitto ACL file. See the [module documentation](self) for the format and the exact
/// rules; as an [`Authorizer`] it answers [`allows`](Self::allows).
#[derive(Clone, Debug, Default)]
pub struct AclFile {
    /// `topic` lines before the first `user` line.
    anonymous: Vec<Rule>,
    /// `topic` lines per user name.
    users: BTreeMap<String, Vec<Rule>>,
    /// `pattern` lines, in file order.
    patterns: Vec<Pattern>,
}

impl AclFile {
    /// Reads and parses the ACL file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        Self::parse(&read_text(path)?, path)
    }

    /// Parses the contents of an ACL file; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self, FileError> {
        let path = path.as_ref();
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if is_blank_or_comment(line) {
                continue;
            }
            let line = line.trim();
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(FileError::syntax(path, number, "`user` needs a user name"));
                    }
                    user = Some(rest.to_owned());
                    acl.users.entry(rest.to_owned()).or_default();
                }
                "topic" | "pattern" => {
                    let (access, filter) = parse_access(rest)
                        .map_err(|m| FileError::syntax(path, number, format!("{keyword}: {m}")))?;
                    if keyword == "pattern" {
                        acl.patterns.push(Pattern::new(access, filter));
                    } else {
                        let rule = Rule { access, filter: filter.to_owned() };
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(FileError::syntax(
                        path,
                        number,
                        format!("unknown keyword {other:?} (expected topic, pattern or user)"),
                    ));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the client `client_id`, connected with `username`, may perform `action` on
    /// `topic` (a topic name to publish to, or a filter to subscribe to). See the
    /// [module documentation](self) for the rules.
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        topic: &str,
    ) -> bool {
        let wild = |s: &str| s.contains(['+', '#']);
        if !self.patterns.is_empty() && (wild(client_id) || username.is_some_and(wild)) {
            return false;
        }
        let rules = match username {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        let expanded: Vec<(Access, String)> = self
            .patterns
            .iter()
            .filter_map(|p| Some((p.access, p.expand(client_id, username)?)))
            .collect();
        let entries = || {
            rules
                .iter()
                .map(|r| (r.access, r.filter.as_str()))
                .chain(expanded.iter().map(|(a, f)| (*a, f.as_str())))
        };
        match action {
            Action::Publish | Action::Receive => {
                if topic.is_empty() || wild(topic) {
                    return false;
                }
                let mut granted = false;
                for (access, filter) in entries() {
                    if topic::matches(filter, topic) {
                        if access == Access::Deny {
                            return false;
                        }
                        granted |= access.grants(action);
                    }
                }
                granted
            }
            Action::Subscribe => {
                let Ok(filter) = TopicFilter::new(topic) else {
                    return false;
                };
                let denied: Vec<&str> =
                    entries().filter(|(a, _)| *a == Access::Deny).map(|(_, f)| f).collect();
                entries().any(|(access, grant)| {
                    access.grants(action)
                        && topic::intersects_except(filter.filter(), grant, &denied)
                })
            }
            _ => false,
        }
    }
}

impl Authorizer for AclFile {
    fn authorize(&self, client: &ClientInfo<'_>, action: Action, topic: &str) -> bool {
        self.allows(client.client_id, client.username, action, topic)
    }

    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        self.allows(client.client_id, client.username, Action::Receive, topic)
    }
}

/// The first word of `s` and the rest, trimmed.
pub(super) fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// Parses `[access] filter`.
pub(super) fn parse_access(rest: &str) -> Result<(Access, &str), String> {
    let (first, filter) = split_word(rest);
    let (access, filter) = if filter.is_empty() {
        (Access::ReadWrite, first)
    } else {
        let access = Access::parse(first).ok_or_else(|| {
            format!("unknown access {first:?} (expected read, write, readwrite or deny)")
        })?;
        (access, filter)
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    match TopicFilter::new(filter) {
        Ok(f) if f.is_shared() => Err(format!(
            "{filter:?}: write the filter without $share/{{group}}/ (ACLs of shared \
             subscriptions apply to the filter inside)"
        )),
        Ok(_) => Ok((access, filter)),
        Err(e) => Err(format!("invalid topic filter {filter:?}: {e}")),
    }
}
