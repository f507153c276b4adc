//! Taking over the sessions of a node that died.
//!
//! Every node with persistence on mirrors its log ([`ClusterOut::Log`]) into the stream
//! [`LOG_STREAM`], subject `tmql.<node>`: a snapshot of its sessions first, then every change,
//! each entry recording how far the node had handled its consumer of QoS 1/2 messages. A
//! client whose node is gone connects to another: that node reads the dead node's log back
//! ([`read_log`]), takes the client's session as it was mirrored, marks it taken in the dead
//! node's log (so that no other node takes it again), and then hands the session the messages
//! it missed: those in the message stream after the dead node's position that match its
//! subscriptions, up to where this node's own consumer goes on for it ([`catch_up`]).
//!
//! [`ClusterOut::Log`]: ternmq_async::cluster::ClusterOut::Log

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use ternmq_async::cluster::{ClusterIn, ClusterInbox, ClusterTarget, StoredMessage};
use ternmq_core::broker::persist::{LogEntry, LogReplay, PersistOp};

use crate::{Error, ID_HEADER, NOTHING, consumer_filters};

/// The JetStream stream that holds every node's mirrored log (`tmql.<node>`).
pub const LOG_STREAM: &str = "TERNMQ_LOG";
/// The header with the wall-clock time (milliseconds since the Unix epoch) an entry was
/// mirrored at.
pub(crate) const AT_HEADER: &str = "Tmq-At";
/// After how many entries a node mirrors a new snapshot, and drops what came before it.
pub(crate) const SNAPSHOT_EVERY: u64 = 20_000;
/// How long reading a log, or the messages a session missed, may go without a message
/// before it is taken as complete.
const QUIET: Duration = Duration::from_secs(5);

/// The subject of `node`'s mirrored log.
pub(crate) fn log_subject(node: &str) -> String {
    format!("tmql.{node}")
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `entry` as the messages it is mirrored in, each at most `limit` bytes: one, unless a
/// long list of operations must be split (what does not fit alone is left out, with a
/// warning).
pub(crate) fn log_payloads(entry: LogEntry, limit: usize) -> Vec<Bytes> {
    let mut one = Vec::new();
    entry.encode(&mut one);
    if one.len() <= limit {
        return vec![Bytes::from(one)];
    }
    let LogEntry::Ops { ops, consumed } = entry else {
        return vec![Bytes::from(one)];
    };
    let mut out = Vec::new();
    let mut chunk: Vec<PersistOp> = Vec::new();
    let mut size = 0;
    for op in ops {
        let mut b = Vec::new();
        op.encode(&mut b);
        if b.len() + 16 > limit {
            log::warn!("cluster: a log operation of {} bytes is too large to mirror", b.len());
            continue;
        }
        if size + b.len() + 16 > limit && !chunk.is_empty() {
            let ops = std::mem::take(&mut chunk);
            let mut p = Vec::new();
            LogEntry::Ops { ops, consumed: None }.encode(&mut p);
            out.push(Bytes::from(p));
            size = 0;
        }
        size += b.len();
        chunk.push(op);
    }
    let mut p = Vec::new();
    LogEntry::Ops { ops: chunk, consumed }.encode(&mut p);
    out.push(Bytes::from(p));
    out
}

/// `node`'s mirrored log, read back to its last entry, and that entry's position.
pub(crate) async fn read_log(log: &stream::Stream, node: &str) -> Result<(LogReplay, u64), Error> {
    let subject = log_subject(node);
    let mut replay = LogReplay::new();
    let Ok(last) = log.get_last_raw_message_by_subject(&subject).await else {
        return Ok((replay, 0)); // nothing mirrored
    };
    let reader = log
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = reader.messages().await?;
    loop {
        let m = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => return Err(format!("{node}'s log ended early").into()),
        };
        let info = m.info()?;
        let seq = info.stream_sequence;
        let at = m
            .headers
            .as_ref()
            .and_then(|h| h.get(AT_HEADER))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_else(now_ms);
        match LogEntry::decode(&m.payload) {
            Some(entry) => replay.apply(entry, at),
            None => log::warn!("cluster: an unreadable entry in {node}'s log"),
        }
        if seq >= last.sequence || info.pending == 0 {
            return Ok((replay, seq));
        }
    }
}

/// Appends `entry` to `node`'s mirrored log, as written by this node, if the log's last entry
/// is still at position `last` (compare-and-set: another node that appended meanwhile wins).
pub(crate) async fn append(
    js: &jetstream::Context,
    node: &str,
    entry: LogEntry,
    last: u64,
) -> Result<(), Error> {
    let mut payload = Vec::new();
    entry.encode(&mut payload);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(AT_HEADER, now_ms().to_string().as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", last.to_string().as_str());
    js.publish_with_headers(log_subject(node), headers, Bytes::from(payload)).await?.await?;
    Ok(())
}

/// The sessions this node took from dead nodes' logs: the node, the message stream's last
/// position then, the client id. What that node published up to that position does not go
/// to them from the stream: its log gave them what they had of it.
#[derive(Default)]
pub(crate) struct Adopted(VecDeque<Taken>);

/// A session taken from a dead node's log.
struct Taken {
    owner: String,
    /// The dead node's read position: what is at or before it, its log has.
    from: u64,
    /// The stream's last position when it was taken.
    last: u64,
    client_id: Box<str>,
}

impl Adopted {
    pub(crate) fn add(&mut self, owner: &str, from: u64, last: u64, client_id: &str) {
        let owner = owner.to_owned();
        self.0.push_back(Taken { owner, from, last, client_id: client_id.into() });
    }

    /// The consumer read past `seen`: the sessions taken before need nothing more.
    pub(crate) fn forget(&mut self, seen: u64) {
        self.0.retain(|t| t.last >= seen);
    }

    /// The sessions a message at stream position `seq` with id `id` must not go to: those
    /// taken from the node that published it (up to when they were taken), and those whose
    /// log had it already.
    pub(crate) fn except(&self, id: Option<&str>, seq: u64) -> Vec<Box<str>> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let node = id.and_then(|id| id.split('.').next());
        self.0
            .iter()
            .filter(|t| seq <= t.from || (Some(t.owner.as_str()) == node && seq <= t.last))
            .map(|t| t.client_id.clone())
            .collect()
    }
}

/// What this node's consumer handed to the core lately.
#[derive(Default)]
pub(crate) struct Handed {
    /// How many it handed so far.
    pub(crate) count: u64,
    /// The last stream position it read (handed, or not: this node's own messages).
    pub(crate) seen: u64,
    /// Sessions whose missed messages are being replayed: while there are any, what is
    /// handed in is remembered.
    watching: usize,
    /// Stream position → `count` when handed.
    when: HashMap<u64, u64>,
}

impl Handed {
    pub(crate) fn saw(&mut self, seq: u64) {
        self.seen = self.seen.max(seq);
    }

    pub(crate) fn record(&mut self, seq: u64) {
        self.count += 1;
        if self.watching > 0 {
            self.when.insert(seq, self.count);
        }
    }

    pub(crate) fn watch(&mut self) {
        self.watching += 1;
    }

    pub(crate) fn unwatch(&mut self) {
        self.watching = self.watching.saturating_sub(1);
        if self.watching == 0 {
            self.when = HashMap::new();
        }
    }

    /// Whether the message at `seq` was handed after the `mark`-th.
    fn after(&self, seq: u64, mark: u64) -> bool {
        self.when.get(&seq).is_some_and(|&n| n > mark)
    }
}

/// Which messages of the stream a session taken from a dead node missed.
pub(crate) struct Missed {
    /// The session's client id.
    pub(crate) client_id: String,
    /// Subjects of its plain subscriptions.
    pub(crate) subjects: Vec<String>,
    /// After this position: what the dead node had handled is in the session.
    pub(crate) from: u64,
    /// Up to this position: after it, this node's consumer delivers them.
    pub(crate) to: u64,
    /// The dead node's name: what was published there it delivered itself.
    pub(crate) owner: String,
    /// This node's run, and its last position when the session came in: what it published
    /// up to then the session did not get here; what it published since, it did.
    pub(crate) origin: String,
    pub(crate) taken_at: u64,
    /// How many messages this node's consumer had handed in when the session came in: those
    /// handed in since reached the session.
    pub(crate) mark: u64,
}

impl Missed {
    /// Whether the message with `id` (its [`ID_HEADER`]) at stream position `seq` reached
    /// the session some other way.
    fn reached(&self, id: Option<&str>, seq: u64, handed: &Handed) -> bool {
        if let Some(id) = id {
            if id.starts_with(&format!("{}.", self.owner)) {
                return true;
            }
            if let Some(pos) = id.strip_prefix(&format!("{}:", self.origin)) {
                return pos.parse::<u64>().is_ok_and(|p| p > self.taken_at);
            }
        }
        handed.after(seq, self.mark)
    }
}

/// Hands the session the messages it missed ([`Missed`]), in order.
pub(crate) async fn catch_up(
    messages: &stream::Stream,
    missed: Missed,
    handed: &tokio::sync::Mutex<Handed>,
    inbox: &ClusterInbox,
) -> Result<usize, Error> {
    let filters = consumer_filters(missed.subjects.iter());
    if missed.to <= missed.from || filters == [NOTHING] {
        return Ok(0);
    }
    let reader = messages
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: missed.from + 1,
            },
            ..Default::default()
        })
        .await?;
    let mut stream = reader.messages().await?;
    let target = ClusterTarget::Session { client_id: missed.client_id.clone().into() };
    let mut given = 0;
    loop {
        let m = match tokio::time::timeout(QUIET, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => return Ok(given),
        };
        let info = m.info()?;
        let seq = info.stream_sequence;
        if seq > missed.to {
            return Ok(given);
        }
        let id = m.headers.as_ref().and_then(|h| h.get(ID_HEADER)).map(|v| v.as_str());
        let reached = missed.reached(id, seq, &*handed.lock().await);
        if !reached && let Some(message) = StoredMessage::decode(&m.payload) {
            inbox.put(ClusterIn::Publish(message, target.clone(), None)).await;
            given += 1;
        }
        if seq == missed.to || info.pending == 0 {
            return Ok(given);
        }
    }
}
