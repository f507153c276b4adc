//! Many ternmq broker nodes as one broker, over NATS JetStream.
//!
//! [`NatsCluster`] is the backplane a Tokio server runs when it is one node of a cluster
//! ([`ClusterLink`]): the broker core decides what leaves the node and what an arrival means
//! (see `ternmq_core::broker::cluster`); this crate only carries it, with `async-nats`.
//!
//! - **Messages.** A message published on a node goes to the NATS subject
//!   `tmq.<class>.<topic>` ([`subject`]): class `0` for QoS 0 (core NATS, at most once) and `1`
//!   for QoS 1 and 2, which the JetStream stream `TERNMQ` captures; the node acknowledges its
//!   publisher only once JetStream acknowledged the message (replicated, on disk).
//! - **Interest.** For each filter its clients subscribe to ([`filter_subjects`]), a node
//!   reads QoS 1/2 messages (`tmq.1.<filter>`) through its durable JetStream consumer, whose
//!   filter subjects follow its interest and which sends again what the node did not
//!   acknowledge, and subscribes to QoS 0 messages (`tmq.0.<filter>`) by core NATS, on a
//!   connection with no echo (a node already delivered its own messages to its own
//!   subscribers; its consumer skips them too). A shared group is a NATS queue group on
//!   `tmq.*.<filter>`, so NATS picks one node of those with members for each message; queue
//!   subscriptions use a second connection, so that a node's own groups are in the choice.
//! - **Retained messages** go to `tmqr.<topic>` too, kept by the stream `TERNMQ_RETAINED`
//!   one per subject; every node stores every retained message, and a starting node reads
//!   the stream's last message of every subject first.
//! - **Takeover.** A client id connected on a node is written to the key-value bucket
//!   `ternmq_clients` (key: the id in hex; value: the node's name). Every node watches the
//!   bucket: an entry for one of its clients, written by another node after its own, takes
//!   the client's connection and session here over.
//! - **Sessions of a dead node.** With persistence on, each node mirrors its log into the
//!   stream `TERNMQ_LOG`; a node a client comes to after its node died takes its session from
//!   there, and the messages it missed from `TERNMQ` (see the `adopt` module).
//! - **Faults.** `async-nats` reconnects (to any server given) and resubscribes by itself;
//!   the node is told the link is down and up again, and serves its own clients alone
//!   meanwhile.

mod adopt;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use ternmq_async::cluster::{
    ClusterIn, ClusterInbox, ClusterLink, ClusterNode, ClusterOut, ClusterSeq, ClusterTarget,
    NodeFigures, Reply, SnapshotSession, StoredMessage,
};
use ternmq_core::broker::persist::{LogEntry, PersistOp};
use ternmq_core::codec::QoS;
use tokio::sync::{mpsc, oneshot, watch};

pub use adopt::LOG_STREAM;
use adopt::{AT_HEADER, Adopted, Handed, Missed, SNAPSHOT_EVERY};

/// The JetStream stream that holds QoS 1 and 2 messages.
pub const MESSAGES_STREAM: &str = "TERNMQ";
/// The JetStream stream that holds the last retained message of each topic.
pub const RETAINED_STREAM: &str = "TERNMQ_RETAINED";
/// The key-value bucket of client ids and the node each connected on last.
pub const CLIENTS_BUCKET: &str = "ternmq_clients";
/// The key-value bucket of the nodes' heartbeats.
pub const NODES_BUCKET: &str = "ternmq_nodes";
/// The key-value bucket of pending wills (key: the client id in hex, a dot, the node).
pub const WILLS_BUCKET: &str = "ternmq_wills";
/// How often a node says it lives.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a node's silence makes it dead for the others, who then publish its wills.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// The header that names a forwarded message: its node's name and run, and its position.
pub const ID_HEADER: &str = "Tmq-Id";

/// Ids of the messages routed lately (with the group they went to), so that a copy is not:
/// NATS delivers a message once per matching subscription of a connection, and a message
/// JetStream did not acknowledge in time is sent again.
#[derive(Default)]
struct Recent {
    set: std::collections::HashSet<String>,
    order: VecDeque<String>,
}

/// Whether a message with these headers is the first copy routed for `scope` (a shared
/// subscription, or "" for plain subscribers); remembers it. One without an id is.
fn first_copy(
    recent: &Mutex<Recent>,
    headers: Option<&async_nats::HeaderMap>,
    scope: &str,
) -> bool {
    match headers.and_then(|h| h.get(ID_HEADER)) {
        Some(id) => recent.lock().is_ok_and(|mut r| r.first(format!("{id}|{scope}"))),
        None => true,
    }
}

impl Recent {
    const KEEP: usize = 1 << 16;

    /// Whether `id` is new; remembers it.
    fn first(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() == Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.clone());
        self.set.insert(id);
        true
    }
}

/// How to reach NATS, and who this node is.
#[derive(Clone, Debug, Default)]
pub struct NatsConfig {
    /// Every server of the NATS cluster (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node_name: String,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// An authentication token.
    pub token: Option<String>,
    /// Certificate authorities to trust for NATS's TLS (PEM); also requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for NATS servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS even without a CA file.
    pub tls_required: bool,
    /// Replicas of the streams and the bucket (default: as many servers as given, at most 3).
    pub replicas: Option<usize>,
}

impl NatsConfig {
    /// Checks the configuration, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("cluster.nats: no NATS server given".into());
        }
        for s in &self.servers {
            if s.trim().is_empty() || s.contains(char::is_whitespace) {
                return Err(format!("cluster.nats: {s:?} is not a server address"));
            }
        }
        if self.node_name.is_empty() {
            return Err("cluster.node_name: must not be empty".into());
        }
        if !self.node_name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(format!(
                "cluster.node_name: {:?} may hold only letters, digits, '-' and '_'",
                self.node_name
            ));
        }
        if self.replicas.is_some_and(|r| r == 0 || r > 5) {
            return Err("cluster.replicas: must be 1 to 5".into());
        }
        Ok(())
    }

    fn replicas(&self) -> usize {
        self.replicas.unwrap_or_else(|| self.servers.len().clamp(1, 3))
    }

    async fn options(&self, echo: bool) -> std::io::Result<async_nats::ConnectOptions> {
        let mut o = async_nats::ConnectOptions::new()
            .name(format!("ternmq-{}", self.node_name))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)));
        if !echo {
            o = o.no_echo();
        }
        if let Some(path) = &self.credentials {
            o = o.credentials_file(path).await?;
        }
        if let Some((user, password)) = &self.user {
            o = o.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            o = o.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_required {
            o = o.require_tls(true);
        }
        Ok(o)
    }
}

/// One MQTT topic level as a NATS subject token: `.`, `*`, `>`, `%`, white space and control
/// characters are written `%XX`, and an empty level is `%` alone, so that every topic has one
/// subject and back.
pub fn token(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        match c {
            '.' | '*' | '>' | '%' => push_escaped(c as u32, out),
            c if c.is_whitespace() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    push_escaped(u32::from(b), out);
                }
            }
            c => out.push(c),
        }
    }
}

fn push_escaped(b: u32, out: &mut String) {
    use fmt::Write;
    let _ = write!(out, "%{b:02X}");
}

/// The NATS subject of an MQTT topic, under `prefix` (`tmq.1`, `tmqr`).
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + topic.len() + 8);
    s.push_str(prefix);
    for level in topic.split('/') {
        s.push('.');
        token(level, &mut s);
    }
    s
}

/// The NATS subjects that an MQTT filter's messages arrive on, under `prefix` (`tmq.*`): `+`
/// is `*`, and a trailing `#`, which also matches its parent level, is two subjects (`a/#`:
/// `a` and `a.>`; `#` alone: `>`).
pub fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut s = String::from(prefix);
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if *level == "#" {
            if i == 0 {
                return vec![format!("{prefix}.>")];
            }
            return vec![s.clone(), format!("{s}.>")];
        }
        s.push('.');
        if *level == "+" {
            s.push('*');
        } else {
            token(level, &mut s);
        }
    }
    vec![s]
}

/// The MQTT topic a subject (under a prefix of `skip` tokens) carries; `None` if it is no
/// subject of [`subject`].
pub fn topic_of(subject: &str, skip: usize) -> Option<String> {
    let mut out = Vec::new();
    for tok in subject.split('.').skip(skip) {
        if tok == "%" {
            // An empty level.
            out.push(b'/');
            continue;
        }
        let b = tok.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = tok.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out.push(b'/');
    }
    out.pop()?;
    String::from_utf8(out).ok()
}

/// The NATS backplane of one node.
pub struct NatsCluster {
    config: NatsConfig,
    out: mpsc::UnboundedSender<ClusterOut>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<ClusterOut>>>,
}

impl fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCluster").field("config", &self.config).finish()
    }
}

impl NatsCluster {
    /// A backplane for `config`; it connects when the server starts it, on the Tokio runtime
    /// the server runs on.
    pub fn new(config: NatsConfig) -> Result<Arc<Self>, String> {
        config.validate()?;
        let (out, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Self { config, out, pending: Mutex::new(Some(rx)) }))
    }
}

impl ClusterLink for NatsCluster {
    fn start(&self, inbox: ClusterInbox) {
        let rx = self.pending.lock().ok().and_then(|mut p| p.take());
        let Some(rx) = rx else {
            log::error!("cluster: the backplane was started twice");
            return;
        };
        let config = self.config.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            log::error!("cluster: the NATS backplane runs on the Tokio runtime only");
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = run(config, inbox, rx).await {
                log::error!("cluster: {e}");
            }
        });
    }

    fn send(&self, out: ClusterOut) {
        let _ = self.out.send(out);
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Connects, makes the streams and the bucket, reads the retained messages, then carries the
/// node's output until the server drops its side.
async fn run(
    config: NatsConfig,
    inbox: ClusterInbox,
    mut rx: mpsc::UnboundedReceiver<ClusterOut>,
) -> Result<(), Error> {
    let servers: Vec<async_nats::ServerAddr> =
        config.servers.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    // Link state, from the connection that publishes (and holds the plain subscriptions).
    let (link_tx, mut link_rx) = mpsc::unbounded_channel::<bool>();
    let options = config.options(false).await?.event_callback(move |event| {
        let link = link_tx.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    let _ = link.send(true);
                }
                async_nats::Event::Disconnected => {
                    let _ = link.send(false);
                }
                other => log::info!("cluster: NATS {other}"),
            }
        }
    });
    let client = options.connect(servers.clone()).await?;
    let queue_client = config.options(true).await?.connect(servers).await?;
    let mut js = jetstream::new(client.clone());
    // A publish JetStream did not acknowledge is sent again after this (a stream leader
    // lost with its server is replaced in a few seconds).
    js.set_timeout(Duration::from_secs(2));
    // Who sent a message: this node's name and this run of it, so that copies of one message
    // (over overlapping subscriptions, or sent again) are routed once.
    let incarnation =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let origin = format!("{}.{incarnation:x}", config.node_name);
    let recent = Arc::new(Mutex::new(Recent::default()));
    let replicas = config.replicas();
    // The retained messages so far, then the live ones (subscribed first: none is missed).
    let mut live = client.subscribe("tmqr.>").await?;
    // JetStream may not be ready (a NATS cluster still electing its leader, or down): the
    // node serves its own clients meanwhile and tries again.
    let buckets = loop {
        match prepare(&js, replicas, &inbox).await {
            Ok(b) => break Arc::new(b),
            Err(e) => {
                log::warn!("cluster: JetStream not ready ({e}); trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let clients = buckets.clients.clone();
    log::info!(
        "cluster: node {} on NATS {:?} ({} replicas)",
        config.node_name,
        config.servers,
        replicas
    );
    let node = config.node_name.clone();
    {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            while let Some(m) = live.next().await {
                if let Some(message) = retained_message(&m.payload, None) {
                    inbox.put(ClusterIn::Retained(message)).await;
                }
            }
        });
    }
    // Takeovers: the registry's entries written by other nodes after this one's.
    // Per client id connected here: the registry revision of its entry (MAX until written)
    // and the core's announcement of that connection.
    let registry = Arc::new(Mutex::new(HashMap::<String, (u64, u64)>::new()));
    {
        let mut watch = clients.watch_all().await?;
        let (inbox, registry, node) = (inbox.clone(), Arc::clone(&registry), node.clone());
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                if entry.value.as_ref() == node.as_bytes() {
                    continue;
                }
                let Some(id) = unhex(&entry.key) else { continue };
                let mine = registry.lock().ok().and_then(|mut r| {
                    let (rev, _) = r.get(&entry.key).copied()?;
                    (rev < entry.revision).then(|| r.remove(&entry.key)).flatten()
                });
                if let Some((_, announce)) = mine {
                    inbox.put(ClusterIn::Takeover(id, announce)).await;
                }
            }
        });
    }
    // Other nodes asking for a session of this node's: given up through the node's core.
    {
        let mut asks = client.subscribe(format!("tmqc.{node}")).await?;
        let (inbox, client) = (inbox.clone(), client.clone());
        tokio::spawn(async move {
            while let Some(m) = asks.next().await {
                let (Some(reply), Ok(id)) = (m.reply, String::from_utf8(m.payload.to_vec())) else {
                    continue;
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                let answer = Reply::new(move |s| {
                    let _ = tx.send(s);
                });
                inbox.put(ClusterIn::Release(id, answer)).await;
                let mut body = Vec::new();
                if let Ok(Some(session)) = rx.await {
                    session.encode(&mut body);
                }
                let _ = client.publish(reply, Bytes::from(body)).await;
            }
        });
    }
    tokio::spawn(watch_nodes(Arc::clone(&buckets), node.clone(), inbox.clone()));
    // QoS 1/2 messages for this node's plain subscribers come from its durable consumer;
    // its filters follow the node's interest.
    let mut wanted: HashMap<String, usize> = HashMap::new();
    // A node started again keeps the filters its consumer had (what the stream took
    // meanwhile for its sessions is theirs) until its restored interest replaces them; and
    // what that consumer acknowledged before, the node has: a session taken from its log does
    // not get it again.
    let before = buckets.messages.consumer_info(consumer_name(&node)).await.ok();
    if let Some(info) = &before {
        inbox.put(ClusterIn::CaughtUp(info.ack_floor.stream_sequence)).await;
    }
    let mut filters = match before {
        Some(info) if !info.config.filter_subjects.is_empty() => info.config.filter_subjects,
        Some(info) if !info.config.filter_subject.is_empty() => vec![info.config.filter_subject],
        _ => consumer_filters(wanted.keys()),
    };
    let reader = loop {
        match consumer(&buckets, &node, filters.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                log::warn!("cluster: this node's consumer: {e}; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let handed = Arc::new(tokio::sync::Mutex::new(Handed::default()));
    let adopted = Arc::new(Mutex::new(Adopted::default()));
    let changes = Arc::new(Mutex::new(Changes::default()));
    let refilter = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(consume(
        reader,
        origin.clone(),
        inbox.clone(),
        Arc::clone(&recent),
        Shared {
            handed: Arc::clone(&handed),
            refilter: Arc::clone(&refilter),
            changes: Arc::clone(&changes),
            adopted: Arc::clone(&adopted),
        },
    ));
    tokio::spawn(caught_up(Arc::clone(&buckets), node.clone(), inbox.clone()));
    // Once reachable, the node mirrors its log from a snapshot on (again after each outage:
    // what changed meanwhile was not mirrored).
    inbox.put(ClusterIn::Link(true)).await;
    inbox.put(ClusterIn::Snapshot).await;
    {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            while let Some(up) = link_rx.recv().await {
                inbox.put(ClusterIn::Link(up)).await;
                if up {
                    inbox.put(ClusterIn::Snapshot).await;
                }
            }
        });
    }
    let (filters_tx, filters_rx) = watch::channel(filters.clone());
    let log_subject = adopt::log_subject(&node);
    let mut since_snapshot = 0u64;
    let mut snapshot_start: Option<oneshot::Receiver<u64>> = None;

    let (acks, ack_rx) = mpsc::channel::<Pending>(4096);
    let (acked_tx, acked_rx) = watch::channel(0u64);
    tokio::spawn(confirm(js.clone(), ack_rx, inbox.clone(), acked_tx));
    // Each filter's (and group's) subscription tasks.
    let mut interest: HashMap<Interest, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    while let Some(out) = rx.recv().await {
        match out {
            ClusterOut::Publish { seq, message } => {
                let mut payload = Vec::with_capacity(message.payload.len() + 64);
                message.encode(&mut payload);
                let payload = Bytes::from(payload);
                let topic = message.topic.as_str();
                let max_payload = client.server_info().max_payload;
                if payload.len() + 256 > max_payload || subject("tmq.1", topic).len() > MAX_SUBJECT
                {
                    // NATS would refuse it (and close the connection for a subject too long):
                    // it stays on this node.
                    log::warn!(
                        "cluster: a message on {topic} ({} bytes) is too large for NATS \
                         (max_payload {max_payload}, subjects up to {MAX_SUBJECT} bytes); \
                         delivered on this node only",
                        payload.len()
                    );
                    if acks.send(Pending::done(seq)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if message.retain {
                    let _ = client.publish(subject("tmqr", topic), payload.clone()).await;
                }
                let id = format!("{origin}:{}", seq.0);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(ID_HEADER, id.as_str());
                // JetStream keeps one copy of a message sent again.
                headers.insert("Nats-Msg-Id", id.as_str());
                let pending = if message.qos == QoS::AtMostOnce {
                    let _ = client
                        .publish_with_headers(subject("tmq.0", topic), headers, payload)
                        .await;
                    Pending::done(seq)
                } else {
                    let subject = subject("tmq.1", topic);
                    let ack = js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await
                        .ok();
                    Pending { seq, subject, headers, payload, ack, held: None }
                };
                if acks.send(pending).await.is_err() {
                    break;
                }
            }
            ClusterOut::Interest { seq, filter, group, on } => {
                let key = (filter, group);
                // Plain interest in QoS 1/2 messages: the consumer's filters.
                if key.1.is_none() {
                    for s in filter_subjects("tmq.1", &key.0) {
                        if s.len() > MAX_SUBJECT {
                            continue;
                        }
                        if on {
                            *wanted.entry(s).or_default() += 1;
                        } else if let Some(n) = wanted.get_mut(&s) {
                            *n -= 1;
                            if *n == 0 {
                                wanted.remove(&s);
                            }
                        }
                    }
                    let next = consumer_filters(wanted.keys());
                    if next != filters {
                        // What the stream holds now was published before this interest.
                        match buckets.messages.get_info().await {
                            Ok(info) => {
                                if let Ok(mut c) = changes.lock() {
                                    c.push(info.state.last_sequence, filters.clone());
                                }
                            }
                            Err(e) => log::warn!("cluster: reading the message stream: {e}"),
                        }
                        match consumer(&buckets, &node, next.clone()).await {
                            Ok(_) => {
                                filters = next;
                                filters_tx.send_replace(filters.clone());
                                refilter.notify_one();
                            }
                            Err(e) => log::error!("cluster: this node's consumer filters: {e}"),
                        }
                    }
                }
                if !on {
                    for task in interest.remove(&key).unwrap_or_default() {
                        task.abort();
                    }
                    if acks.send(Pending::done(seq)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let mut tasks = Vec::new();
                // Plain subscribers get QoS 0 messages by core NATS; a shared group gets both
                // classes through its queue group.
                let class = if key.1.is_none() { "tmq.0" } else { "tmq.*" };
                let subjects = filter_subjects(class, &key.0);
                if subjects.iter().any(|s| s.len() > MAX_SUBJECT) {
                    log::warn!(
                        "cluster: the filter {} is too long for a NATS subject; its \
                         subscribers get only what is published on this node",
                        key.0
                    );
                }
                for s in subjects.into_iter().filter(|s| s.len() <= MAX_SUBJECT) {
                    let sub = match &key.1 {
                        None => client.subscribe(s).await,
                        Some(g) => {
                            let queue = format!("{}.{}", queue_name(g), queue_name(&key.0));
                            queue_client.queue_subscribe(s, queue).await
                        }
                    };
                    let mut sub = match sub {
                        Ok(sub) => sub,
                        Err(e) => {
                            log::error!("cluster: subscribing to {}: {e}", key.0);
                            continue;
                        }
                    };
                    let target = match &key.1 {
                        None => ClusterTarget::Subscribers,
                        Some(g) => ClusterTarget::Group { group: g.clone(), filter: key.0.clone() },
                    };
                    let (inbox, recent) = (inbox.clone(), Arc::clone(&recent));
                    // Copies of a message are routed once per plain filter set, and once per
                    // shared subscription (group and filter).
                    let group = match &key.1 {
                        Some(g) => format!("{g}|{}", key.0),
                        None => String::new(),
                    };
                    tasks.push(tokio::spawn(async move {
                        while let Some(m) = sub.next().await {
                            // Only messages (`tmq.0.`, `tmq.1.`) go to subscribers.
                            let s = m.subject.as_str();
                            if !(s.starts_with("tmq.0.") || s.starts_with("tmq.1.")) {
                                continue;
                            }
                            if !first_copy(&recent, m.headers.as_ref(), &group) {
                                continue;
                            }
                            if let Some(message) = StoredMessage::decode(&m.payload) {
                                inbox.put(ClusterIn::Publish(message, target.clone(), None)).await;
                            }
                        }
                    }));
                }
                // The server has the subscription before the SUBACK it holds goes.
                let flushed = match &key.1 {
                    None => client.flush().await,
                    Some(_) => queue_client.flush().await,
                };
                if let Err(e) = flushed {
                    log::warn!("cluster: subscribing to {}: {e}", key.0);
                }
                interest.insert(key, tasks);
                if acks.send(Pending::done(seq)).await.is_err() {
                    break;
                }
            }
            ClusterOut::Will { client_id, .. } if client_id.len() > MAX_CLIENT_ID => {}
            ClusterOut::Will { client_id, will } => {
                let key = format!("{}.{node}", hex(client_id.as_str()));
                let done = match will {
                    Some((message, delay)) => buckets
                        .wills
                        .put(&key, encode_will(&message, delay))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => buckets.wills.delete(&key).await.map_err(|e| e.to_string()),
                };
                if let Err(e) = done {
                    log::warn!("cluster: keeping {client_id}'s will: {e}");
                }
            }
            ClusterOut::Claim { ticket, client_id } => {
                let here = Here {
                    client: client.clone(),
                    js: js.clone(),
                    buckets: Arc::clone(&buckets),
                    node: node.clone(),
                    origin: origin.clone(),
                    inbox: inbox.clone(),
                    handed: Arc::clone(&handed),
                    adopted: Arc::clone(&adopted),
                    filters: filters_rx.clone(),
                    acked: acked_rx.clone(),
                };
                tokio::spawn(async move { here.claim(ticket, client_id.as_str()).await });
            }
            ClusterOut::Log { seq, entry } => {
                let start = matches!(entry, LogEntry::SnapshotStart { .. });
                let end = matches!(entry, LogEntry::SnapshotEnd);
                let limit = client.server_info().max_payload.saturating_sub(1024);
                let payloads = adopt::log_payloads(entry, limit);
                if payloads.is_empty() && acks.send(Pending::done(seq)).await.is_err() {
                    break;
                }
                let chunks = payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(AT_HEADER, adopt::now_ms().to_string().as_str());
                    // JetStream keeps one copy of an entry sent again.
                    let id = format!("{origin}:L{}.{i}", seq.0);
                    headers.insert("Nats-Msg-Id", id.as_str());
                    // The entry is held once its last part is: the others report less.
                    let seq = if i + 1 < chunks { ClusterSeq(seq.0 - 1) } else { seq };
                    let subject = log_subject.clone();
                    let ack = js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await
                        .ok();
                    let mut pending = Pending { seq, subject, headers, payload, ack, held: None };
                    if start || end {
                        let (tx, rx) = oneshot::channel();
                        pending.held = Some(tx);
                        if start {
                            snapshot_start = Some(rx);
                        } else if let Some(first) = snapshot_start.take() {
                            // Once the whole snapshot is held, what came before it goes.
                            let (log, subject) = (buckets.log.clone(), log_subject.clone());
                            tokio::spawn(async move {
                                let (Ok(first), Ok(_)) = (first.await, rx.await) else { return };
                                if let Err(e) = log.purge().filter(subject).sequence(first).await {
                                    log::warn!("cluster: dropping the log before a snapshot: {e}");
                                }
                            });
                        }
                    }
                    if acks.send(pending).await.is_err() {
                        break;
                    }
                }
                since_snapshot += 1;
                if start {
                    since_snapshot = 0;
                } else if since_snapshot == SNAPSHOT_EVERY {
                    let inbox = inbox.clone();
                    tokio::spawn(async move { inbox.put(ClusterIn::Snapshot).await });
                }
            }
            ClusterOut::Connected { client_id, .. } if client_id.len() > MAX_CLIENT_ID => {
                log::warn!("cluster: a client id of {} bytes is not registered", client_id.len());
            }
            ClusterOut::Connected { client_id, announce } => {
                let key = hex(client_id.as_str());
                if let Ok(mut r) = registry.lock() {
                    r.insert(key.clone(), (u64::MAX, announce));
                }
                match clients.put(&key, Bytes::from(node.clone().into_bytes())).await {
                    Ok(rev) => {
                        if let Ok(mut r) = registry.lock()
                            && let Some(v) = r.get_mut(&key)
                            && v.1 == announce
                        {
                            v.0 = rev;
                        }
                    }
                    Err(e) => {
                        // Without its revision this node could not tell an older write from
                        // a newer one: it forgets the client rather than never taking it over.
                        if let Ok(mut r) = registry.lock() {
                            r.remove(&key);
                        }
                        log::warn!("cluster: registering client {client_id}: {e}");
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes the streams and the buckets (or finds them), and reads the retained messages into
/// the node.
async fn prepare(
    js: &jetstream::Context,
    replicas: usize,
    inbox: &ClusterInbox,
) -> Result<Buckets, Error> {
    let messages = js
        .get_or_create_stream(stream::Config {
            name: MESSAGES_STREAM.into(),
            subjects: vec!["tmq.1.>".into()],
            num_replicas: replicas,
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        })
        .await?;
    let retained = js
        .get_or_create_stream(stream::Config {
            name: RETAINED_STREAM.into(),
            subjects: vec!["tmqr.>".into()],
            num_replicas: replicas,
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await?;
    let log = js
        .get_or_create_stream(stream::Config {
            name: LOG_STREAM.into(),
            subjects: vec!["tmql.>".into()],
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let mut buckets = Vec::new();
    for name in [CLIENTS_BUCKET, NODES_BUCKET, WILLS_BUCKET] {
        buckets.push(match js.get_key_value(name).await {
            Ok(kv) => kv,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: name.into(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await?
            }
        });
    }
    load_retained(&retained, inbox).await?;
    let wills = buckets.pop().ok_or("no wills bucket")?;
    let nodes = buckets.pop().ok_or("no nodes bucket")?;
    let clients = buckets.pop().ok_or("no clients bucket")?;
    Ok(Buckets { clients, nodes, wills, messages, log })
}

/// The key-value buckets a node uses.
struct Buckets {
    clients: kv::Store,
    nodes: kv::Store,
    wills: kv::Store,
    /// The stream of QoS 1/2 messages, which the node's consumer reads.
    messages: stream::Stream,
    /// The stream of the nodes' mirrored logs.
    log: stream::Stream,
}

/// A subject no message has: a token `%` followed by anything but two hex digits is never
/// written by [`subject`]. A consumer with no interest filters on it.
const NOTHING: &str = "tmq.1.%none";

/// Whether NATS subject pattern `a` matches everything `b` matches.
fn covers(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
fn overlaps(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filter subjects of the node's consumer for these subjects of interest: JetStream takes
/// no two that overlap, so those another covers go, and if two still overlap the consumer
/// takes every message (the node's own subscription tree picks what its subscribers match).
fn consumer_filters<'a>(wanted: impl Iterator<Item = &'a String>) -> Vec<String> {
    let wanted: Vec<&String> = wanted.collect();
    let mut kept: Vec<String> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let covered = wanted
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && covers(o, w) && (!covers(w, o) || j < i));
        if !covered {
            kept.push((*w).clone());
        }
    }
    for (i, a) in kept.iter().enumerate() {
        if kept[i + 1..].iter().any(|b| overlaps(a, b)) {
            return vec!["tmq.1.>".into()];
        }
    }
    if kept.is_empty() {
        kept.push(NOTHING.into());
    }
    kept
}

/// The name of `node`'s durable consumer of QoS 1/2 messages.
fn consumer_name(node: &str) -> String {
    format!("node-{node}")
}

/// The node's durable consumer of QoS 1/2 messages, filtered on `filters`: created, or
/// changed to these filters.
async fn consumer(
    b: &Buckets,
    node: &str,
    filters: Vec<String>,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let config = pull::Config {
        durable_name: Some(consumer_name(node)),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::New,
        filter_subjects: filters,
        max_ack_pending: 20_000,
        // A node that never comes back does not keep its consumer for ever.
        inactive_threshold: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    Ok(b.messages.create_consumer(config).await?)
}

/// Reads the node's consumer: each QoS 1/2 message for this node's plain subscribers is
/// handed to the node with its stream position, then acknowledged, so that one the node did
/// not take comes again.
async fn consume(
    consumer: jetstream::consumer::PullConsumer,
    origin: String,
    inbox: ClusterInbox,
    recent: Arc<Mutex<Recent>>,
    shared: Shared,
) {
    let Shared { handed, refilter, changes, adopted } = shared;
    // This node's own messages are in the stream too; it delivered them itself.
    let own = format!("{origin}:");
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                log::warn!("cluster: reading this node's consumer: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // A consumer given new filters delivers what the stream already held for them only
        // to a new pull (a waiting one sees new messages only): one short extra pull, beside
        // the long one, whose messages stay.
        let mut extra = None;
        loop {
            let m = tokio::select! {
                m = messages.next() => match m {
                    Some(m) => m.map_err(|e| e.to_string()),
                    None => break,
                },
                m = next_extra(&mut extra) => match m {
                    Some(m) => m,
                    None => {
                        extra = None;
                        continue;
                    }
                },
                () = refilter.notified() => {
                    let fetch = consumer.fetch().max_messages(1000).expires(Duration::from_secs(1));
                    extra = fetch.messages().await.ok();
                    continue;
                }
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("cluster: reading this node's consumer: {e}");
                    break;
                }
            };
            let id = m.headers.as_ref().and_then(|h| h.get(ID_HEADER));
            let mine = id.is_some_and(|id| id.as_str().starts_with(&own));
            let position = m.info().map(|i| i.stream_sequence).ok();
            // A consumer given new filters also delivers what the stream held before that
            // matches them: not for the subscriptions that came after it.
            let stale = position
                .is_some_and(|p| changes.lock().is_ok_and(|c| c.before(p, m.subject.as_str())));
            // Handed in and recorded under one lock: a session coming in from a dead node is
            // handed in either before or after it, never in between.
            let mut h = handed.lock().await;
            if !mine
                && !stale
                && first_copy(&recent, m.headers.as_ref(), "")
                && let Some(message) = StoredMessage::decode(&m.payload)
            {
                // Not to the sessions taken from the dead node that published it.
                // Nor to those taken with it already in them.
                let except = position
                    .and_then(|p| {
                        let id = m.headers.as_ref().and_then(|h| h.get(ID_HEADER));
                        let mut a = adopted.lock().ok()?;
                        a.forget(h.seen);
                        Some(a.except(id.map(|v| v.as_str()), p))
                    })
                    .unwrap_or_default();
                let target = if except.is_empty() {
                    ClusterTarget::Subscribers
                } else {
                    ClusterTarget::SubscribersBut { except }
                };
                inbox.put(ClusterIn::Publish(message, target, position)).await;
                if let Some(p) = position {
                    h.record(p);
                }
            }
            if let Some(p) = position {
                h.saw(p);
                if let Ok(mut c) = changes.lock() {
                    c.forget(p);
                }
            }
            drop(h);
            let _ = m.ack().await;
        }
    }
}

/// Tells the node, every [`HEARTBEAT`], how far the message stream has nothing more for it
/// (its consumer has nothing pending or unacknowledged), so that its mirrored log's read
/// position keeps up while no message comes for it.
async fn caught_up(b: Arc<Buckets>, node: String, inbox: ClusterInbox) {
    let name = consumer_name(&node);
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Ok(stream) = b.messages.get_info().await else { continue };
        let Ok(info) = b.messages.consumer_info(&name).await else { continue };
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            inbox.put(ClusterIn::CaughtUp(stream.state.last_sequence)).await;
        }
    }
}

/// The next message of an extra pull, if there is one running (else never).
async fn next_extra(
    extra: &mut Option<jetstream::consumer::pull::Batch>,
) -> Option<Result<jetstream::Message, String>> {
    match extra {
        Some(b) => b.next().await.map(|m| m.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

/// What the node consumer's reader shares with the rest of the link.
struct Shared {
    /// What it handed in.
    handed: Arc<tokio::sync::Mutex<Handed>>,
    /// Told when the consumer's filters changed.
    refilter: Arc<tokio::sync::Notify>,
    changes: Arc<Mutex<Changes>>,
    adopted: Arc<Mutex<Adopted>>,
}

/// The changes of the node consumer's filters: for each, the stream's last position then and
/// the filters before it.
#[derive(Default)]
struct Changes(VecDeque<(u64, Vec<String>)>);

impl Changes {
    const KEEP: usize = 1024;

    fn push(&mut self, last: u64, before: Vec<String>) {
        self.0.push_back((last, before));
        if self.0.len() > Self::KEEP {
            self.0.pop_front();
        }
    }

    /// The consumer read past `seen`: the changes it passed matter no more.
    fn forget(&mut self, seen: u64) {
        while self.0.front().is_some_and(|(last, _)| *last < seen) {
            self.0.pop_front();
        }
    }

    /// Whether the message on `subject` at stream position `seq` was stored before the node
    /// had interest in it (the filters then did not take it).
    fn before(&self, seq: u64, subject: &str) -> bool {
        self.0
            .iter()
            .find(|(last, _)| seq <= *last)
            .is_some_and(|(_, then)| !then.iter().any(|f| covers(f, subject)))
    }
}

/// Says every [`HEARTBEAT`] that this node lives; and publishes, once among the survivors,
/// the pending wills of a node silent for [`DEAD_AFTER`].
async fn watch_nodes(b: Arc<Buckets>, node: String, inbox: ClusterInbox) {
    let mut reaped: HashMap<String, u64> = HashMap::new();
    // Each other node's last heartbeat revision, and when (by this node's own monotonic
    // clock) it last changed: no clock of another machine is compared with this one's.
    let mut beats: HashMap<String, (u64, tokio::time::Instant)> = HashMap::new();
    // Since when this node's own heartbeats reach NATS: nobody is judged dead by a node that
    // could not itself write (an outage of the bucket silences every node at once).
    let mut healthy_since: Option<tokio::time::Instant> = None;
    loop {
        // The heartbeat carries the node's figures, for the cluster-wide ones.
        let (tx, rx) = tokio::sync::oneshot::channel();
        inbox
            .put(ClusterIn::Figures(Reply::new(move |f| {
                let _ = tx.send(f);
            })))
            .await;
        let mine = rx.await.unwrap_or_default();
        match b.nodes.put(&node, Bytes::from(mine.encode().into_bytes())).await {
            Ok(_) => {
                healthy_since.get_or_insert_with(tokio::time::Instant::now);
            }
            Err(_) => healthy_since = None,
        }
        let judge = healthy_since.is_some_and(|t| t.elapsed() > DEAD_AFTER);
        let mut dead = Vec::new();
        let mut all = vec![ClusterNode { name: node.clone(), alive: true, figures: mine }];
        if let Ok(mut keys) = b.nodes.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                if key == node {
                    continue;
                }
                let Ok(Some(e)) = b.nodes.entry(key.clone()).await else { continue };
                let now = tokio::time::Instant::now();
                let beat = beats.entry(key.clone()).or_insert((e.revision, now));
                if beat.0 != e.revision {
                    *beat = (e.revision, now);
                }
                let silent = now.duration_since(beat.1);
                let figures = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(NodeFigures::decode)
                    .unwrap_or_default();
                all.push(ClusterNode { name: key.clone(), alive: silent <= DEAD_AFTER, figures });
                if judge && silent > DEAD_AFTER && reaped.get(&key) != Some(&e.revision) {
                    reaped.insert(key.clone(), e.revision);
                    dead.push(key);
                }
            }
        }
        all.sort_by(|x, y| x.name.cmp(&y.name));
        inbox.put(ClusterIn::Nodes(all)).await;
        for gone in dead {
            log::warn!("cluster: node {gone} is silent; publishing its clients' wills");
            reap(&b, &gone, &inbox).await;
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Claims (compare-and-set: one node wins each) and publishes the pending wills of `gone`.
async fn reap(b: &Arc<Buckets>, gone: &str, inbox: &ClusterInbox) {
    let suffix = format!(".{gone}");
    let Ok(mut keys) = b.wills.keys().await else { return };
    let mut mine = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if !key.ends_with(&suffix) {
            continue;
        }
        let Ok(Some(e)) = b.wills.entry(key.clone()).await else { continue };
        if e.operation != kv::Operation::Put || e.value.is_empty() {
            continue;
        }
        // Empty: claimed.
        if b.wills.update(&key, Bytes::new(), e.revision).await.is_ok() {
            mine.push((key, e.value));
        }
    }
    for (key, value) in mine {
        let (b, inbox, gone) = (Arc::clone(b), inbox.clone(), gone.to_owned());
        tokio::spawn(async move {
            let Some((delay, message)) = decode_will(&value) else { return };
            let client = key.split('.').next().and_then(unhex).unwrap_or_default();
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(delay.into())).await;
                // Resumed elsewhere within the delay: not published ([MQTT-3.1.3-9]).
                let owner = b.clients.entry(hex(&client)).await.ok().flatten();
                if owner.is_some_and(|e| e.value.as_ref() != gone.as_bytes()) {
                    let _ = b.wills.delete(&key).await;
                    return;
                }
            }
            inbox.put(ClusterIn::Will(message)).await;
            let _ = b.wills.delete(&key).await;
        });
    }
}

fn encode_will(message: &StoredMessage, delay: u32) -> Bytes {
    let mut v = delay.to_be_bytes().to_vec();
    message.encode(&mut v);
    Bytes::from(v)
}

fn decode_will(b: &[u8]) -> Option<(u32, StoredMessage)> {
    let (delay, message) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*delay), StoredMessage::decode(message)?))
}

/// The longest subject this node sends NATS (its default control line is 4 KiB).
pub const MAX_SUBJECT: usize = 2048;
/// How long a message JetStream does not acknowledge is sent again before it is given up.
pub const GIVE_UP: Duration = Duration::from_secs(60);
/// The longest client id the registry, the wills and the hand-over keep (in bytes; its key
/// is twice as long in hex).
pub const MAX_CLIENT_ID: usize = 512;

/// How long a node waits for another to give up a session before starting a new one.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// What answering a claim needs of this node.
struct Here {
    client: async_nats::Client,
    js: jetstream::Context,
    buckets: Arc<Buckets>,
    node: String,
    origin: String,
    inbox: ClusterInbox,
    handed: Arc<tokio::sync::Mutex<Handed>>,
    adopted: Arc<Mutex<Adopted>>,
    filters: watch::Receiver<Vec<String>>,
    /// The last position JetStream holds.
    acked: watch::Receiver<u64>,
}

impl Here {
    /// Answers [`ClusterOut::Claim`] `ticket`: the session of `client_id` the node the
    /// registry names gives up, or, if that node is gone, the session it mirrored (with the
    /// messages it missed, after it came in).
    async fn claim(self, ticket: ternmq_async::cluster::ClaimTicket, client_id: &str) {
        let (session, taken) = match self.ask(client_id).await {
            Asked::Given(s) => (s.map(|s| *s), None),
            Asked::Gone(owner) => match self.take(&owner, client_id).await {
                Ok(Some((s, from, last))) => {
                    if let Ok(mut a) = self.adopted.lock() {
                        a.add(&owner, from, last, client_id);
                    }
                    (Some(s), Some((owner, from)))
                }
                Ok(None) => (None, None),
                Err(e) => {
                    log::warn!("cluster: reading the log of node {owner} for {client_id}: {e}");
                    (None, None)
                }
            },
        };
        let subjects: Vec<String> = session
            .iter()
            .flat_map(|s| &s.subscriptions)
            .filter(|(f, _, _)| !f.as_str().starts_with("$share/"))
            .flat_map(|(f, _, _)| filter_subjects("tmq.1", f.as_str()))
            .filter(|s| s.len() <= MAX_SUBJECT)
            .collect();
        let (tx, rx) = oneshot::channel();
        let reply = Reply::new(move |p: ClusterSeq| {
            let _ = tx.send(p);
        });
        let mark = {
            let mut h = self.handed.lock().await;
            self.inbox.put(ClusterIn::Claimed(ticket, session, Some(reply))).await;
            if taken.is_some() {
                h.watch();
            }
            h.count
        };
        let Some((owner, from)) = taken else { return };
        self.catch_up(client_id, subjects, (owner, from), (rx, mark)).await;
        self.handed.lock().await.unwatch();
    }

    /// Replays what a session taken from `owner`'s log (its position `from`) missed, once
    /// it is in (the node's position then comes through `rx`, and its consumer had handed
    /// in `mark` messages).
    async fn catch_up(
        &self,
        client_id: &str,
        subjects: Vec<String>,
        (owner, from): (String, u64),
        (rx, mark): (oneshot::Receiver<ClusterSeq>, u64),
    ) {
        let Ok(taken_at) = rx.await else { return };
        let to = match self.caught_up(&subjects, taken_at.0).await {
            Ok(to) => to,
            Err(e) => {
                log::warn!("cluster: the messages {client_id} missed: {e}");
                return;
            }
        };
        let missed = Missed {
            client_id: client_id.to_owned(),
            subjects,
            from,
            to,
            owner,
            origin: self.origin.clone(),
            taken_at: taken_at.0,
            mark,
        };
        match adopt::catch_up(&self.buckets.messages, missed, &self.handed, &self.inbox).await {
            Ok(n) => log::info!("cluster: {client_id} got {n} messages it missed"),
            Err(e) => log::warn!("cluster: the messages {client_id} missed: {e}"),
        }
    }

    /// Once a session taken from a dead node is here (at this node's position `taken_at`):
    /// waits until what this node published up to then is in the stream, its consumer takes
    /// the session's `subjects` on, and the consumer handed in what it has up to the stream's
    /// last position then; returns that position. Whatever the stream takes after it reaches
    /// the session the usual way.
    async fn caught_up(&self, subjects: &[String], taken_at: u64) -> Result<u64, Error> {
        let deadline = Duration::from_secs(60);
        let mut acked = self.acked.clone();
        tokio::time::timeout(deadline, acked.wait_for(|&a| a >= taken_at)).await??;
        let mut filters = self.filters.clone();
        let covered = filters.wait_for(|f| {
            subjects.iter().all(|s| f.iter().any(|c| covers(c, s) || c == "tmq.1.>"))
        });
        tokio::time::timeout(deadline, covered).await??;
        let to = self.buckets.messages.get_info().await?.state.last_sequence;
        let name = consumer_name(&self.node);
        let since = tokio::time::Instant::now();
        loop {
            let info = self.buckets.messages.consumer_info(&name).await?;
            let delivered = info.delivered.stream_sequence;
            let read = info.num_pending == 0 || delivered >= to;
            let seen = self.handed.lock().await.seen;
            if read && seen >= delivered.min(to) {
                return Ok(to);
            }
            if since.elapsed() > deadline {
                return Err(format!(
                    "this node's consumer did not catch up in time (stream position {to}, \
                     delivered {delivered}, {} pending, read {seen})",
                    info.num_pending
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the node the registry names for `client_id`'s session, if another node.
    async fn ask(&self, client_id: &str) -> Asked {
        if client_id.len() > MAX_CLIENT_ID {
            return Asked::Given(None);
        }
        let entry = tokio::time::timeout(CLAIM_TIMEOUT, self.buckets.clients.entry(hex(client_id)));
        let Ok(Ok(Some(entry))) = entry.await else {
            return Asked::Given(None);
        };
        if entry.operation != kv::Operation::Put || entry.value.as_ref() == self.node.as_bytes() {
            return Asked::Given(None);
        }
        let Ok(owner) = std::str::from_utf8(&entry.value) else {
            return Asked::Given(None);
        };
        // No responder: the node is not on NATS. Asked twice more, a second apart, so that a
        // node reconnecting to NATS is not taken for dead.
        let mut absent = 0;
        let asked = loop {
            let request = Bytes::from(client_id.to_owned());
            let ask = self.client.request(format!("tmqc.{owner}"), request);
            match tokio::time::timeout(CLAIM_TIMEOUT, ask).await {
                Ok(Err(e))
                    if e.kind() == async_nats::RequestErrorKind::NoResponders && absent < 2 =>
                {
                    absent += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other,
            }
        };
        match asked {
            Ok(Ok(answer)) if !answer.payload.is_empty() => {
                let session = SnapshotSession::decode(&answer.payload);
                if session.is_none() {
                    log::warn!("cluster: node {owner} sent an unreadable session for {client_id}");
                }
                Asked::Given(session.map(Box::new))
            }
            Ok(Ok(_)) => Asked::Given(None),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                log::info!(
                    "cluster: node {owner} is gone; taking {client_id}'s session from its log"
                );
                Asked::Gone(owner.to_owned())
            }
            Ok(Err(e)) => {
                log::warn!("cluster: node {owner} did not give up {client_id}'s session: {e}");
                Asked::Given(None)
            }
            Err(_) => {
                log::warn!(
                    "cluster: node {owner} did not answer for {client_id}'s session in time"
                );
                Asked::Given(None)
            }
        }
    }

    /// `client_id`'s session as `owner` mirrored it, the stream position `owner` had handled,
    /// and the stream's last position; marked taken in `owner`'s log.
    async fn take(
        &self,
        owner: &str,
        client_id: &str,
    ) -> Result<Option<(SnapshotSession, u64, u64)>, Error> {
        // What the dead node published is in the stream up to here, and in its log.
        let last = self.buckets.messages.get_info().await?.state.last_sequence;
        // Two nodes taking the same session at once: one appends "taken" first, the other
        // reads the log again and finds it taken.
        let mut tries = 0;
        loop {
            let (replay, end) = adopt::read_log(&self.buckets.log, owner).await?;
            let Some(session) = replay.session(client_id, adopt::now_ms()) else {
                return Ok(None);
            };
            let ops = vec![PersistOp::SessionDeleted { client_id: session.client_id.clone() }];
            let entry = LogEntry::Ops { ops, consumed: None };
            match adopt::append(&self.js, owner, entry, end).await {
                Ok(()) => return Ok(Some((session, replay.consumed(), last))),
                Err(e) if tries >= 2 => return Err(e),
                Err(_) => tries += 1,
            }
        }
    }
}

/// What the node holding a session said.
enum Asked {
    /// It gave this up (or there is none elsewhere).
    Given(Option<Box<SnapshotSession>>),
    /// The node the registry names is not on NATS.
    Gone(String),
}

/// A filter this node subscribes to, and the shared group if it is one's.
type Interest = (Box<str>, Option<Box<str>>);

/// A forwarded message waiting for JetStream's acknowledgement (none for QoS 0).
struct Pending {
    seq: ClusterSeq,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    ack: Option<jetstream::context::PublishAckFuture>,
    /// Told the stream position once JetStream holds it.
    held: Option<oneshot::Sender<u64>>,
}

impl Pending {
    /// Something at position `seq` that needs no acknowledgement from JetStream.
    fn done(seq: ClusterSeq) -> Self {
        let (subject, payload) = (String::new(), Bytes::new());
        let headers = async_nats::HeaderMap::new();
        Pending { seq, subject, headers, payload, ack: None, held: None }
    }
}

/// Reports forwarded messages held, in order; a message JetStream did not take is published
/// again until it is (its publisher's acknowledgement waits meanwhile).
async fn confirm(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Pending>,
    inbox: ClusterInbox,
    acked: watch::Sender<u64>,
) {
    let mut unreported = 0;
    while let Some(p) = rx.recv().await {
        if !p.subject.is_empty() {
            let mut ack = p.ack;
            let mut tell = p.held;
            let since = tokio::time::Instant::now();
            loop {
                let held = match ack.take() {
                    Some(f) => f.await.ok(),
                    None => None,
                };
                if let Some(held) = held {
                    if let Some(tell) = tell.take() {
                        let _ = tell.send(held.sequence);
                    }
                    break;
                }
                if since.elapsed() > GIVE_UP {
                    // Not for want of trying: what JetStream refuses this long it refuses
                    // for good (a stream gone, a limit); the rest must not wait behind it.
                    log::error!(
                        "cluster: JetStream did not take a message on {} in {} s; \
                         acknowledged without it",
                        p.subject,
                        GIVE_UP.as_secs()
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                ack = js
                    .publish_with_headers(p.subject.clone(), p.headers.clone(), p.payload.clone())
                    .await
                    .ok();
            }
        }
        acked.send_replace(p.seq.0);
        unreported += 1;
        // Reported when nothing else is ready, and at least every 64, so that a steady
        // stream does not hold every acknowledgement back.
        if rx.is_empty() || unreported >= 64 {
            unreported = 0;
            inbox.put(ClusterIn::Acked(p.seq)).await;
        }
    }
}

/// Reads the last message of every subject of the retained stream into the node.
async fn load_retained(retained: &stream::Stream, inbox: &ClusterInbox) -> Result<(), Error> {
    let info = retained.get_info().await?;
    if info.state.messages == 0 {
        return Ok(());
    }
    let consumer = retained
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            filter_subject: "tmqr.>".into(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut loaded = 0;
    while let Some(Ok(m)) = messages.next().await {
        let info = m.info().ok();
        let published = info.as_ref().map(|i| SystemTime::from(i.published));
        if let Some(message) = retained_message(&m.payload, published) {
            inbox.put(ClusterIn::Retained(message)).await;
            loaded += 1;
        }
        if info.is_none_or(|i| i.pending == 0) {
            break;
        }
    }
    log::info!("cluster: {loaded} retained messages read");
    Ok(())
}

/// A retained message from its stream; with `published`, its expiry is counted from then.
fn retained_message(payload: &[u8], published: Option<SystemTime>) -> Option<StoredMessage> {
    let mut m = StoredMessage::decode(payload)?;
    if let (Some(left), Some(at)) = (m.expires_in, published) {
        let age = SystemTime::now().duration_since(at).unwrap_or_default();
        let left = left.checked_sub(age)?;
        m.expires_in = Some(left);
    }
    m.retain = true;
    Some(m)
}

/// A name NATS takes as (part of) a queue group: letters, digits, `-` and `_` as they are,
/// the rest as `%XX`.
fn queue_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            push_escaped(u32::from(b), &mut out);
        }
    }
    out
}

fn hex(s: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_subjects_and_back() {
        for topic in ["a/b", "a.b/c*d", "x/>/%", "/", "a//b", "sp ace/tab\t", "ümlaut/日本"] {
            let s = subject("tmq.1", topic);
            assert!(!s.split('.').any(str::is_empty), "{s}");
            assert!(!s.contains(char::is_whitespace), "{s}");
            let tokens: Vec<&str> = s.split('.').skip(2).collect();
            assert!(tokens.iter().all(|t| *t != "*" && *t != ">"), "{s}");
            assert_eq!(topic_of(&s, 2).as_deref(), Some(topic), "{s}");
        }
        assert_eq!(subject("tmq.1", "a.b/c"), "tmq.1.a%2Eb.c");
        assert_eq!(subject("tmq.1", "/x"), "tmq.1.%.x");
    }

    #[test]
    fn filters_map_to_the_subjects_their_topics_use() {
        assert_eq!(filter_subjects("tmq.*", "a/+/c"), ["tmq.*.a.*.c"]);
        assert_eq!(filter_subjects("tmq.*", "a/#"), ["tmq.*.a", "tmq.*.a.>"]);
        assert_eq!(filter_subjects("tmq.*", "#"), ["tmq.*.>"]);
        assert_eq!(filter_subjects("tmq.*", "+/x.y"), ["tmq.*.*.x%2Ey"]);
        assert_eq!(filter_subjects("tmq.*", "a//b"), ["tmq.*.a.%.b"]);
    }

    #[test]
    fn consumer_filters_never_overlap() {
        let f = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            consumer_filters(v.iter())
        };
        assert_eq!(f(&[]), [NOTHING]);
        assert_eq!(f(&["tmq.1.a", "tmq.1.a.>"]), ["tmq.1.a", "tmq.1.a.>"]);
        // Covered ones go.
        assert_eq!(f(&["tmq.1.a.>", "tmq.1.a.*", "tmq.1.a.b"]), ["tmq.1.a.>"]);
        assert_eq!(f(&["tmq.1.>", "tmq.1.x"]), ["tmq.1.>"]);
        // Two that overlap without either covering the other: everything.
        assert_eq!(f(&["tmq.1.*.b", "tmq.1.a.*"]), ["tmq.1.>"]);
        // Apart.
        assert_eq!(f(&["tmq.1.a.*", "tmq.1.b.*"]), ["tmq.1.a.*", "tmq.1.b.*"]);
        assert!(!overlaps(NOTHING, &subject("tmq.1", "%none")));
        assert!(covers("tmq.1.*", "tmq.1.x") && !covers("tmq.1.x", "tmq.1.*"));
        assert!(!covers("tmq.1.a.>", "tmq.1.a"));
    }

    #[test]
    fn client_ids_survive_the_registry_key() {
        for id in ["", "dev-1", "ü/.*> x"] {
            assert_eq!(unhex(&hex(id)).as_deref(), Some(id));
        }
    }

    #[test]
    fn a_bad_configuration_names_its_field() {
        let mut c = NatsConfig { node_name: "n1".into(), ..NatsConfig::default() };
        assert!(c.validate().unwrap_err().contains("cluster.nats"));
        c.servers = vec!["nats://127.0.0.1:4222".into()];
        assert!(c.validate().is_ok());
        c.node_name = "a b".into();
        assert!(c.validate().unwrap_err().contains("cluster.node_name"));
        c.node_name = "n1".into();
        c.replicas = Some(0);
        assert!(c.validate().unwrap_err().contains("cluster.replicas"));
    }
}
