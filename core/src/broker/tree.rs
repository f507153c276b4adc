//! The subscription tree: one node per topic level, with `+` and `#` children kept apart from
//! the named ones so that matching a topic is a walk down its levels.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::codec::{QoS, SubscriptionId};
use crate::topic::TopicFilter;

/// One subscription as the router needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Index of the subscribing session.
    pub(crate) session: u32,
    /// Granted QoS.
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) sub_id: Option<SubscriptionId>,
}

/// A shared subscription group at one node: `$share/{name}/{filter}`.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: Box<str>,
    /// The whole filter, `$share/{name}/{filter}`.
    pub(crate) filter: TopicFilter,
    pub(crate) members: Vec<Entry>,
    /// Round-robin cursor, or the sticky member.
    pub(crate) next: usize,
}

#[derive(Debug, Default)]
struct Node {
    parent: u32,
    key: Box<str>,
    /// By level, as bytes (the order of `str`), so that a topic is matched as bytes.
    children: BTreeMap<Box<[u8]>, u32>,
    /// The `+` child, 0 if none (the root is never a child).
    plus: u32,
    /// The `#` child, 0 if none.
    hash: u32,
    subs: Vec<Entry>,
    groups: Vec<Group>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus == 0
            && self.hash == 0
            && self.subs.is_empty()
            && self.groups.is_empty()
    }
}

/// A match that needs a choice: group `group` at node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupRef {
    pub(crate) node: u32,
    pub(crate) group: u32,
}

#[derive(Debug)]
pub(crate) struct SubTree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Scratch stack of the matching walk: (node, byte offset of the next level, all levels
    /// consumed).
    stack: Vec<(u32, usize, bool)>,
    len: usize,
    /// In a cluster: filters that gained their first plain subscriber or shared group (`true`)
    /// or lost their last (`false`), not yet taken.
    interest: Option<VecDeque<InterestChange>>,
}

const ROOT: u32 = 0;

/// A filter that gained or lost interest: the filter, the shared group's name, and whether it
/// appeared.
pub(crate) type InterestChange = (Box<str>, Option<Box<str>>, bool);

impl SubTree {
    pub(crate) fn new() -> Self {
        Self {
            nodes: alloc::vec![Node::default()],
            free: Vec::new(),
            stack: Vec::new(),
            len: 0,
            interest: None,
        }
    }

    /// Records, from now on, which filters gain their first plain subscriber or shared group
    /// or lose their last ([`take_interest`](Self::take_interest)).
    pub(crate) fn record_interest(&mut self) {
        self.interest.get_or_insert_with(VecDeque::new);
    }

    /// The next change of interest recorded: the filter, the shared group's name, and whether
    /// it appeared.
    pub(crate) fn take_interest(&mut self) -> Option<InterestChange> {
        self.interest.as_mut()?.pop_front()
    }

    fn note(&mut self, filter: &TopicFilter, on: bool) {
        if let Some(i) = self.interest.as_mut() {
            let name = filter.share_name().map(Into::into);
            i.push_back((filter.filter().into(), name, on));
        }
    }

    /// Number of subscriptions (each member of a shared group counts once).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    fn node_mut(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn child(&mut self, parent: u32, level: &str) -> u32 {
        let existing = match level {
            "+" => self.node(parent).plus,
            "#" => self.node(parent).hash,
            _ => self.node(parent).children.get(level.as_bytes()).copied().unwrap_or(0),
        };
        if existing != 0 {
            return existing;
        }
        let node = Node { parent, key: level.into(), ..Node::default() };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let p = self.node_mut(parent);
        match level {
            "+" => p.plus = i,
            "#" => p.hash = i,
            _ => {
                p.children.insert(level.as_bytes().into(), i);
            }
        }
        i
    }

    fn find(&self, filter: &str) -> Option<u32> {
        let mut n = ROOT;
        for level in filter.split('/') {
            n = match level {
                "+" => self.node(n).plus,
                "#" => self.node(n).hash,
                _ => self.node(n).children.get(level.as_bytes()).copied().unwrap_or(0),
            };
            if n == 0 {
                return None;
            }
        }
        Some(n)
    }

    /// Adds or replaces `session`'s subscription to `filter`. Returns whether one existed.
    pub(crate) fn insert(&mut self, filter: &TopicFilter, entry: Entry) -> bool {
        let mut n = ROOT;
        for level in filter.filter().split('/') {
            n = self.child(n, level);
        }
        let node = self.node_mut(n);
        let mut first = false;
        let list = match filter.share_name() {
            None => {
                first = node.subs.is_empty();
                &mut node.subs
            }
            Some(name) => {
                let g = match node.groups.iter().position(|g| &*g.name == name) {
                    Some(g) => g,
                    None => {
                        first = true;
                        node.groups.push(Group {
                            name: name.into(),
                            filter: filter.detach(),
                            members: Vec::new(),
                            next: 0,
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[g].members
            }
        };
        match list.iter_mut().find(|e| e.session == entry.session) {
            Some(e) => {
                *e = entry;
                true
            }
            None => {
                list.push(entry);
                self.len += 1;
                if first {
                    self.note(filter, true);
                }
                false
            }
        }
    }

    /// `session`'s subscription to `filter`, if it has one.
    pub(crate) fn entry(&self, filter: &TopicFilter, session: u32) -> Option<Entry> {
        let node = self.node(self.find(filter.filter())?);
        let list = match filter.share_name() {
            None => &node.subs,
            Some(name) => &node.groups.iter().find(|g| &*g.name == name)?.members,
        };
        list.iter().find(|e| e.session == session).copied()
    }

    /// Removes `session`'s subscription to `filter`. Returns whether there was one.
    pub(crate) fn remove(&mut self, filter: &TopicFilter, session: u32) -> bool {
        let Some(n) = self.find(filter.filter()) else {
            return false;
        };
        let node = self.node_mut(n);
        let mut last = false;
        let removed = match filter.share_name() {
            None => {
                let removed = remove_session(&mut node.subs, session);
                last = removed && node.subs.is_empty();
                removed
            }
            Some(name) => match node.groups.iter().position(|g| &*g.name == name) {
                Some(g) => {
                    let removed = remove_session(&mut node.groups[g].members, session);
                    if node.groups[g].members.is_empty() {
                        node.groups.swap_remove(g);
                        last = true;
                    }
                    removed
                }
                None => false,
            },
        };
        if last {
            self.note(filter, false);
        }
        if removed {
            self.len -= 1;
            self.prune(n);
        }
        removed
    }

    /// Frees empty nodes from `n` up.
    fn prune(&mut self, mut n: u32) {
        while n != ROOT && self.node(n).is_empty() {
            let Node { parent, key, .. } = core::mem::take(self.node_mut(n));
            let p = self.node_mut(parent);
            match &*key {
                "+" => p.plus = 0,
                "#" => p.hash = 0,
                _ => {
                    p.children.remove(key.as_bytes());
                }
            }
            self.free.push(n);
            n = parent;
        }
    }

    /// Collects the subscriptions matching `topic` into `out` and the shared groups into
    /// `groups`. `$` topics are not matched by a wildcard in the first level ([MQTT-4.7.2-1]).
    /// Returns how many filters contributed subscriptions.
    pub(crate) fn matches(
        &mut self,
        topic: &[u8],
        out: &mut Vec<Entry>,
        groups: &mut Vec<GroupRef>,
    ) -> usize {
        let dollar = topic.first() == Some(&b'$');
        // How many nodes added subscriptions: from one node, each session appears once.
        let mut sources = 0;
        let mut stack = core::mem::take(&mut self.stack);
        stack.clear();
        stack.push((ROOT, 0, false));
        while let Some((n, pos, done)) = stack.pop() {
            let node = self.node(n);
            if done {
                sources += usize::from(collect(n, node, out, groups));
                if node.hash != 0 {
                    sources += usize::from(collect(node.hash, self.node(node.hash), out, groups));
                }
                continue;
            }
            let rest = &topic[pos..];
            // Levels are short: a plain scan beats a call to memchr.
            let (level, next, last) = match rest.iter().position(|&b| b == b'/') {
                Some(i) => (&rest[..i], pos + i + 1, false),
                None => (rest, topic.len(), true),
            };
            if !(dollar && n == ROOT) {
                if node.hash != 0 {
                    sources += usize::from(collect(node.hash, self.node(node.hash), out, groups));
                }
                if node.plus != 0 {
                    stack.push((node.plus, next, last));
                }
            }
            if let Some(&c) = node.children.get(level) {
                stack.push((c, next, last));
            }
        }
        self.stack = stack;
        sources
    }

    /// The shared group of `filter` (a `$share/{name}/...` filter), if it has members.
    pub(crate) fn group_of(&self, filter: &TopicFilter) -> Option<GroupRef> {
        let name = filter.share_name()?;
        let n = self.find(filter.filter())?;
        let g = self.node(n).groups.iter().position(|g| &*g.name == name)?;
        Some(GroupRef { node: n, group: g as u32 })
    }

    /// A shared group found by [`matches`](Self::matches).
    pub(crate) fn group_mut(&mut self, r: GroupRef) -> Option<&mut Group> {
        self.nodes.get_mut(r.node as usize)?.groups.get_mut(r.group as usize)
    }
}

/// Adds `node`'s subscriptions and groups; returns whether it had subscriptions.
fn collect(n: u32, node: &Node, out: &mut Vec<Entry>, groups: &mut Vec<GroupRef>) -> bool {
    out.extend_from_slice(&node.subs);
    for g in 0..node.groups.len() {
        groups.push(GroupRef { node: n, group: g as u32 });
    }
    !node.subs.is_empty()
}

fn remove_session(list: &mut Vec<Entry>, session: u32) -> bool {
    match list.iter().position(|e| e.session == session) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn entry(session: u32) -> Entry {
        Entry {
            session,
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            sub_id: None,
        }
    }

    fn matching(tree: &mut SubTree, topic: &str) -> Vec<u32> {
        let (mut out, mut groups) = (Vec::new(), Vec::new());
        tree.matches(topic.as_bytes(), &mut out, &mut groups);
        let mut s: Vec<u32> = out.iter().map(|e| e.session).collect();
        for g in groups {
            s.extend(tree.group_mut(g).unwrap().members.iter().map(|e| 1000 + e.session));
        }
        s.sort_unstable();
        s
    }

    #[test]
    fn agrees_with_the_filter_matcher() {
        let filters = [
            "#",
            "+",
            "a",
            "a/#",
            "a/+",
            "a/b",
            "+/b",
            "+/+",
            "/+",
            "+/#",
            "a/+/c",
            "a/b/#",
            "$SYS/#",
            "$SYS/+",
            "+/+/+",
            "/",
            "//",
            "a//b",
            "$share/g/a/+",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "/", "/b", "a/", "//", "a//b", "$SYS", "$SYS/x", "$SYS/x/y", "b",
            "a/x/c", "x/b",
        ];
        let mut tree = SubTree::new();
        for (i, f) in filters.iter().enumerate() {
            assert!(!tree.insert(&TopicFilter::new(f).unwrap(), entry(i as u32)));
        }
        assert_eq!(tree.len(), filters.len());
        for t in topics {
            let topic = crate::topic::TopicName::new(t).unwrap();
            let mut want: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| TopicFilter::new(f).unwrap().matches(&topic))
                .map(|(i, f)| if f.starts_with("$share") { 1000 + i as u32 } else { i as u32 })
                .collect();
            want.sort_unstable();
            assert_eq!(matching(&mut tree, t), want, "topic {t}");
        }
    }

    #[test]
    fn replace_and_remove_prune_the_tree() {
        let mut tree = SubTree::new();
        let f = TopicFilter::new("a/+/c/#").unwrap();
        assert!(!tree.insert(&f, entry(1)));
        assert!(tree.insert(&f, Entry { qos: QoS::ExactlyOnce, ..entry(1) }));
        assert_eq!(tree.len(), 1);
        assert!(!tree.remove(&TopicFilter::new("a/+/c").unwrap(), 1));
        assert!(!tree.remove(&f, 2));
        assert!(tree.remove(&f, 1));
        assert_eq!(tree.len(), 0);
        assert!(tree.node(ROOT).is_empty());
        assert_eq!(tree.free.len(), 4);
        // Freed nodes are reused.
        tree.insert(&TopicFilter::new("x/y").unwrap(), entry(3));
        assert_eq!(tree.nodes.len(), 5);
        assert_eq!(matching(&mut tree, "x/y"), vec![3]);
    }

    #[test]
    fn shared_groups_are_per_name() {
        let mut tree = SubTree::new();
        tree.insert(&TopicFilter::new("$share/g1/t").unwrap(), entry(1));
        tree.insert(&TopicFilter::new("$share/g1/t").unwrap(), entry(2));
        tree.insert(&TopicFilter::new("$share/g2/t").unwrap(), entry(3));
        tree.insert(&TopicFilter::new("t").unwrap(), entry(4));
        let (mut out, mut groups) = (Vec::new(), Vec::new());
        tree.matches(b"t", &mut out, &mut groups);
        assert_eq!(out.len(), 1);
        assert_eq!(groups.len(), 2);
        assert!(tree.remove(&TopicFilter::new("$share/g1/t").unwrap(), 1));
        assert!(tree.remove(&TopicFilter::new("$share/g1/t").unwrap(), 2));
        groups.clear();
        out.clear();
        tree.matches(b"t", &mut out, &mut groups);
        assert_eq!(groups.len(), 1);
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let mut tree = SubTree::new();
        tree.insert(&TopicFilter::new("#").unwrap(), entry(1));
        let deep = "/".repeat(60_000);
        assert_eq!(matching(&mut tree, &deep), vec![1]);
        let f = TopicFilter::new(&"+/".repeat(1000)).unwrap();
        tree.insert(&f, entry(2));
        assert_eq!(matching(&mut tree, &"/".repeat(1000)), vec![1, 2]);
    }
}
