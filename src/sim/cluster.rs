//! A simulated cluster: three broker nodes (each the core's
//! [`Driver`](ternmq_core::broker::driver::Driver) with [`BrokerConfig::cluster`] set), joined
//! by a simulated backplane that does what the NATS side does for real: it keeps each node's
//! interest (plain filters, and shared groups as queue groups), carries a forwarded message to
//! every node with a matching plain filter and to one node of each matching shared group,
//! holds retained messages for all, tells a node about a newer connection of its clients, and
//! acknowledges what it holds after a random delay. Everything runs on a virtual clock from
//! one seed.
//!
//! The faults: the publishing node crashes now and then (its process state is gone, what it
//! had not handed to the backplane with it; it is down for a while, then starts again empty
//! and its clients reconnect), and a roaming client jumps between nodes, taking its session
//! over each time. The nodes log with persistence on and mirror their logs into the
//! backplane; a persistent subscriber on the crashing node (the castaway) comes back on
//! another node while its node is down, which takes its session from the mirror and replays
//! the messages it missed from the stream. Node 2 is cut off from the backplane now and then:
//! it serves its own clients alone, and gets what waited for it from its durable consumer
//! once it is back. [`run`]
//! checks what the seam promises: every message a publisher saw acknowledged reaches the plain
//! subscriber on another node, each QoS 2 message exactly once; each message of the shared
//! group reaches at most one member across the nodes; no message is forwarded twice; and a
//! roaming client is connected on one node at a time; and the castaway gets every message
//! acknowledged, QoS 2 once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::driver::{Command, Driver};
use ternmq_core::broker::persist::{
    LogEntry, LogReplay, PersistOp, Persistence, SnapshotSession, StoredMessage,
};
use ternmq_core::broker::{
    Broker, BrokerConfig, ClaimTicket, ClusterOut, ClusterSeq, ClusterTarget, ConnId, PeerInfo,
};
use ternmq_core::client::{
    Client, ClientConfig, Command as ClientCommand, DisconnectReason, Event,
};
use ternmq_core::codec::{
    Connect, Disconnect, MqttStr, ProtocolVersion, Publish, QoS, ReasonCode, Subscription,
};
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName, matches};

use super::Rng;

/// What a run found.
#[derive(Debug, Default)]
pub struct ClusterOutcome {
    /// Messages the publishers saw acknowledged.
    pub acknowledged: usize,
    /// Messages the plain subscriber received.
    pub delivered: usize,
    /// Messages the shared group's members received, all nodes together.
    pub shared: usize,
    /// Times the publishing node crashed.
    pub crashes: u32,
    /// Times the roaming client took its session over on another node.
    pub takeovers: u32,
    /// Times the sleeping client came back on the other node, its session moved there.
    pub moves: u32,
    /// Times a node took the castaway's session from its dead node's mirrored log.
    pub adoptions: u32,
    /// Times node 2 was cut off from the backplane for a while.
    pub partitions: u32,
    /// Messages the castaway received.
    pub castaway: usize,
    /// Broken promises, in words; empty when every promise held.
    pub violations: Vec<String>,
}

const NODES: usize = 3;
const CRASH_CHANCE: f64 = 0.01;
const CUT_CHANCE: f64 = 0.01;
/// The node that crashes: the publishers' node.
const CRASHING: usize = 0;
/// The node cut off from the backplane now and then.
const PARTED: usize = 2;

/// Client roles, by index.
const PUB_A: usize = 0;
const PUB_B: usize = 1;
const SUB: usize = 2;
const MEMBER_1: usize = 3;
const MEMBER_2: usize = 4;
const ROAMER: usize = 5;
const SLEEPER: usize = 6;
const LATE: usize = 7;
const CASTAWAY: usize = 8;
/// The first of the roaming client's older processes.
const GHOSTS: usize = 9;
/// How long a message may take through the backplane: a message published closer than this
/// to the sleeper's leaving or coming back may be on its way to the node it left.
const SETTLE: Duration = Duration::from_millis(12);

struct Link {
    client: usize,
    node: usize,
    conn: ConnId,
    up: VecDeque<(Instant, Bytes)>,
    down: VecDeque<(Instant, Bytes)>,
    /// The broker closed it: it ends once its last bytes arrived.
    closing: bool,
}

struct Peer {
    core: Client,
    node: usize,
    link: Option<u32>,
    received: Vec<Publish>,
    acked_ids: Vec<u16>,
    acked: Vec<(String, QoS)>,
    /// Times its connection was taken over (DISCONNECT 0x8E, or closed under it).
    taken_over: u32,
}

/// One node's side of the backplane: its interest, and what it forwarded not yet acknowledged.
#[derive(Default)]
struct Port {
    plain: BTreeSet<String>,
    groups: BTreeSet<(String, String)>,
    /// Forwarded messages and changes of interest on their way into the backplane, with when
    /// it holds them, in order.
    unacked: VecDeque<(Instant, ClusterSeq, Change)>,
}

/// What a node hands its backplane that the backplane acknowledges.
enum Change {
    Message(StoredMessage),
    /// An entry of the node's mirrored log.
    Log(LogEntry),
    /// A filter, its shared group, and whether it appeared.
    Interest(String, Option<String>, bool),
}

struct Net {
    now: Instant,
    rng: Rng,
    nodes: Vec<Driver<u32>>,
    ports: Vec<Port>,
    /// Messages on their way from the backplane to a node, with their stream positions; in
    /// order for each node, as a consumer delivers them.
    inbound: VecDeque<Inbound>,
    inbound_last: Vec<Instant>,
    /// The stream of QoS 1/2 messages: position, node and life that forwarded it, its
    /// position there, the message.
    stream: Vec<(u64, usize, u32, u64, StoredMessage)>,
    /// The lives of the nodes (node `CRASHING` starts a new one at each crash).
    lives: Vec<u32>,
    /// Until when node `CRASHING` is down.
    down_until: Option<Instant>,
    /// Until when node `PARTED` is cut off from the backplane, and every such time.
    cut_until: Option<Instant>,
    cuts: Vec<(Instant, Instant)>,
    /// When the castaway, whose node went down, connects to node 1 (before that node is back).
    castaway_dial: Option<Instant>,
    /// For each acknowledged message, the crashes of the publishers' node between its
    /// publishing and its acknowledgement.
    unsure: BTreeMap<String, u32>,
    /// Each node's mirrored log, as the backplane keeps it.
    mirrors: Vec<LogReplay>,
    /// The stream positions each node was handed, with how many it had been handed then.
    handed: Vec<BTreeMap<u64, u64>>,
    handed_count: Vec<u64>,
    /// Sessions taken from a dead node's mirror, whose missed messages are to be replayed.
    catch_ups: VecDeque<(Instant, usize, CatchUp)>,
    /// The sessions each node took from a dead node's mirror, with the life they came from.
    adopted: Vec<Vec<(u32, String)>>,
    adoptions: u32,
    /// Takeovers on their way to a node.
    /// Takeovers on their way to a node, naming that node's connection they take over.
    takeovers: VecDeque<(Instant, usize, MqttStr, u64)>,
    /// Takeovers a node's backplane passed on, on their way into its core.
    to_core: VecDeque<(Instant, usize, MqttStr, u64)>,
    /// Each node's last announcement of each client.
    announced: BTreeMap<(usize, String), u64>,
    /// Answers to claims on their way to a node: the ticket and the session given up.
    claims: VecDeque<Claimed>,
    /// When the sleeper left and came back.
    moves: Vec<Instant>,
    /// Sleeper CONNACKs after its first without Session Present.
    lost_sessions: u32,
    /// When the late subscriber's SUBACK arrived.
    late_since: Option<Instant>,
    links: BTreeMap<u32, Link>,
    next_link: u32,
    peers: Vec<Peer>,
    config: BrokerConfig,
    crashes: u32,
    /// Every message the backplane took, by `topic|payload`, with the crash count when it
    /// did: a second copy in one life of the node is a loop. (A QoS 2 message resent after a
    /// crash took its PUBREC is forwarded again by the restarted node, which kept no state:
    /// exactly once across a crash needs the node's store, which this scenario leaves out.)
    forwarded: BTreeMap<String, Vec<u32>>,
    /// When the backplane first took each message.
    carried: BTreeMap<String, Instant>,
    /// The client-id registry: where each client connected last, and in which of that
    /// node's lives.
    owners: BTreeMap<String, usize>,
    owner_lives: BTreeMap<String, u32>,
    violations: Vec<String>,
}

/// A message on its way from the backplane to a node: when it arrives, where, for whom, its
/// stream position, and the node and life that forwarded it.
type Inbound = (Instant, usize, StoredMessage, ClusterTarget, Option<u64>, (usize, u32));

/// An answer to a claim on its way to a node: when, where, the ticket, the session given up,
/// and, for one taken from a dead node's mirror, what it missed.
type Claimed = (Instant, usize, ClaimTicket, Option<SnapshotSession>, Option<CatchUp>);

/// What a session taken from a dead node's mirror missed: the stream after `from`, matching
/// `filters`, but not what the dead life forwarded (it delivered that itself), what the taking
/// node forwarded after `taken_at`, or what it was handed after its `mark`-th.
#[derive(Clone)]
struct CatchUp {
    client_id: String,
    filters: Vec<String>,
    from: u64,
    dead_life: u32,
    taken_at: u64,
    mark: u64,
}

/// Wall-clock milliseconds, for the mirrored log's stamps.
fn wall(now: Instant) -> u64 {
    1_000_000 + now.saturating_duration_since(Instant::ZERO).as_millis() as u64
}

fn connect(id: &str, persistent: bool) -> Connect {
    let mut c = Connect::new(ProtocolVersion::V5, MqttStr::new(id).unwrap_or_default());
    c.clean_start = !persistent;
    c.keep_alive = 30;
    c.properties.session_expiry_interval = Some(if persistent { 3600 } else { 0 });
    c
}

impl Net {
    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.range(50, 3_000))
    }

    fn open(&mut self, client: usize, node: usize) -> Option<u32> {
        if node == CRASHING && self.down_until.is_some() {
            return None;
        }
        let id = self.next_link;
        self.next_link += 1;
        let now = self.now;
        let conn = self.nodes[node].handle_accepted(now, PeerInfo::default(), id).ok()?;
        let (up, down) = (VecDeque::new(), VecDeque::new());
        self.links.insert(id, Link { client, node, conn, up, down, closing: false });
        Some(id)
    }

    fn reset(&mut self, id: u32) {
        let Some(link) = self.links.remove(&id) else { return };
        let now = self.now;
        self.nodes[link.node].handle_closed(now, link.conn);
        self.peers[link.client].link = None;
        self.peers[link.client].core.handle_closed(now);
    }

    fn dial(&mut self, i: usize) {
        let node = self.peers[i].node;
        if let Some(l) = self.open(i, node) {
            self.peers[i].link = Some(l);
            let _ = self.peers[i].core.reconnect(self.now);
        } else {
            let now = self.now;
            self.peers[i].core.handle_closed(now);
        }
    }

    fn pump(&mut self) {
        loop {
            let mut busy = false;
            for n in 0..NODES {
                while let Some(c) = self.nodes[n].poll_command() {
                    busy = true;
                    self.command(n, c);
                }
                while self.nodes[n].poll_event().is_some() {}
            }
            for i in 0..self.peers.len() {
                busy |= self.pump_peer(i);
            }
            if !busy {
                return;
            }
        }
    }

    fn command(&mut self, node: usize, command: Command<u32>) {
        let now = self.now;
        match command {
            Command::Write(l, chunks) => {
                let n: usize = chunks.iter().map(Bytes::len).sum();
                let at = now + self.latency();
                if let Some(link) = self.links.get_mut(&l) {
                    link.down.extend(chunks.into_iter().map(|c| (at, c)));
                    let conn = link.conn;
                    self.nodes[node].handle_written(now, conn, n);
                }
            }
            // What the broker wrote last (a DISCONNECT) arrives before the end.
            Command::Close(l) => match self.links.get_mut(&l) {
                Some(link) if !link.down.is_empty() => link.closing = true,
                _ => self.reset(l),
            },
            Command::Abort(l) => self.reset(l),
            Command::Cluster(out) => self.cluster(node, out),
            // The store writes at once.
            Command::Persist(batch) => {
                if let Some((seq, _)) = batch.last() {
                    self.nodes[node].handle_persisted(now, *seq);
                }
            }
            _ => {}
        }
    }

    /// What node `node` hands its backplane.
    fn cluster(&mut self, node: usize, out: ClusterOut) {
        let now = self.now;
        match out {
            ClusterOut::Publish { seq, message } => {
                let at = now + Duration::from_micros(self.rng.range(100, 5_000));
                self.ports[node].unacked.push_back((at, seq, Change::Message(message)));
            }
            ClusterOut::Interest { seq, filter, group, on } => {
                // The backplane has it after a while, in order with the messages before it;
                // until then it sends the node nothing for it. (A node cut off subscribes
                // again once it is back.)
                let mut at = now + self.latency();
                if node == PARTED
                    && let Some(end) = self.cut_until
                {
                    at = at.max(end + self.latency());
                }
                let at = self.ports[node].unacked.back().map_or(at, |u| u.0.max(at));
                let change = Change::Interest(filter.into(), group.map(Into::into), on);
                self.ports[node].unacked.push_back((at, seq, change));
            }
            ClusterOut::Claim { ticket, client_id } => {
                // The registry names the node that has the session; that node gives it up,
                // or, if it is down, its mirrored log does.
                let owner = self.owners.get(client_id.as_str()).copied();
                let mut catch_up = None;
                let session = match owner {
                    Some(o) if o == CRASHING && self.down_until.is_some() && o != node => {
                        let id = client_id.as_str();
                        let s = self.mirrors[o].session(id, wall(now));
                        if let Some(s) = &s {
                            let ops =
                                vec![PersistOp::SessionDeleted { client_id: client_id.clone() }];
                            self.mirrors[o].apply(LogEntry::Ops { ops, consumed: None }, wall(now));
                            let filters = s
                                .subscriptions
                                .iter()
                                .map(|(f, _, _)| f.as_str().to_owned())
                                .filter(|f| !f.starts_with("$share/"))
                                .collect();
                            catch_up = Some(CatchUp {
                                client_id: id.to_owned(),
                                filters,
                                from: self.mirrors[o].consumed(),
                                dead_life: self.owner_lives.get(id).copied().unwrap_or(0),
                                taken_at: 0,
                                mark: 0,
                            });
                            self.adoptions += 1;
                        }
                        s
                    }
                    Some(o) if o != node => {
                        self.nodes[o].handle_cluster_release(now, client_id.as_str())
                    }
                    _ => None,
                };
                let at = now + self.latency();
                self.claims.push_back((at, node, ticket, session, catch_up));
            }
            ClusterOut::Log { seq, entry } => {
                let at = now + self.latency();
                let at = self.ports[node].unacked.back().map_or(at, |u| u.0.max(at));
                self.ports[node].unacked.push_back((at, seq, Change::Log(entry)));
            }
            ClusterOut::Connected { client_id, announce } => {
                // The registry: the last node a client connected on wins.
                let id = client_id.as_str().to_owned();
                self.owners.insert(id.clone(), node);
                self.owner_lives.insert(id.clone(), self.lives[node]);
                self.announced.insert((node, id.clone()), announce);
                for other in (0..NODES).filter(|&n| n != node) {
                    let mut at = now + self.latency();
                    if other == PARTED
                        && let Some(end) = self.cut_until
                    {
                        at = at.max(end + self.latency());
                    }
                    // What the other node had announced of the client when told.
                    let theirs = self.announced.get(&(other, id.clone())).copied().unwrap_or(0);
                    self.takeovers.push_back((at, other, client_id.clone(), theirs));
                }
            }
            _ => {}
        }
    }

    /// The backplane holds `message`, forwarded by `from`: it goes to every other node with a
    /// matching plain filter, and to one node (any, `from` included) per matching group.
    fn carry(&mut self, from: usize, seq: ClusterSeq, message: StoredMessage) {
        let key = format!("{}|{}", message.topic, String::from_utf8_lossy(&message.payload));
        let lives = self.forwarded.entry(key.clone()).or_default();
        if lives.contains(&self.crashes) {
            self.violations.push(format!("{key} was forwarded twice by one node's life"));
        }
        lives.push(self.crashes);
        self.carried.entry(key.clone()).or_insert(self.now);
        let position = (message.qos != QoS::AtMostOnce).then(|| {
            let p = self.stream.len() as u64 + 1;
            self.stream.push((p, from, self.lives[from], seq.0, message.clone()));
            p
        });
        let topic = message.topic.as_str().to_owned();
        for n in (0..NODES).filter(|&n| n != from) {
            if self.ports[n].plain.iter().any(|f| matches(f, &topic)) {
                let at = self.inbound_at(n);
                let target = ClusterTarget::Subscribers;
                let origin = (from, self.lives[from]);
                self.inbound.push_back((at, n, message.clone(), target, position, origin));
            }
        }
        let mut groups: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for n in 0..NODES {
            // A node cut off has no queue subscription NATS could choose.
            if n == PARTED && self.cut_until.is_some() {
                continue;
            }
            for (f, g) in &self.ports[n].groups {
                if matches(f, &topic) {
                    groups.entry((f.clone(), g.clone())).or_default().push(n);
                }
            }
        }
        for ((filter, group), members) in groups {
            let pick = members[self.rng.range(0, members.len() as u64 - 1) as usize];
            let at = self.inbound_at(pick);
            let target = ClusterTarget::Group { group: group.into(), filter: filter.into() };
            let origin = (from, self.lives[from]);
            self.inbound.push_back((at, pick, message.clone(), target, None, origin));
        }
    }

    /// Whether node `PARTED` is connected, and got what waited for it while it was not.
    fn settled(&self) -> bool {
        self.cut_until.is_none()
            && self.cuts.last().is_none_or(|(_, end)| self.now >= *end + Duration::from_millis(100))
    }

    /// When a message the backplane sends node `n` now arrives: after the ones before it.
    fn inbound_at(&mut self, n: usize) -> Instant {
        let mut at = (self.now + self.latency()).max(self.inbound_last[n]);
        // A node cut off gets it from its durable consumer once it is back.
        if n == PARTED
            && let Some(end) = self.cut_until
        {
            at = at.max(end + self.latency());
        }
        self.inbound_last[n] = at;
        at
    }

    /// Replays what the session of `c`, taken from a dead node's mirror by node `n`, missed;
    /// `false` while what it needs is not in place yet: everything `n` forwarded up to the
    /// session's coming in held by the backplane, `n`'s interest in the session's filters, and
    /// everything the backplane sent `n` so far arrived.
    fn catch_up(&mut self, n: usize, c: &CatchUp) -> bool {
        let forwarded = self.ports[n]
            .unacked
            .iter()
            .any(|u| u.1.0 <= c.taken_at && matches!(u.2, Change::Message(_)));
        let interest = c.filters.iter().all(|f| self.ports[n].plain.contains(f));
        let arriving = self.inbound.iter().any(|m| m.1 == n && m.4.is_some());
        if forwarded || !interest || arriving {
            return false;
        }
        let mut missed = Vec::new();
        for (p, from, life, seq, message) in &self.stream {
            let topic = message.topic.as_str();
            let reached = *p <= c.from
                || (*from == CRASHING && *life == c.dead_life)
                || (*from == n && *seq > c.taken_at)
                || self.handed[n].get(p).is_some_and(|&k| k > c.mark);
            if !reached && c.filters.iter().any(|f| matches(f, topic)) {
                missed.push(message.clone());
            }
        }
        for message in missed {
            let at = self.inbound_at(n);
            let target = ClusterTarget::Session { client_id: c.client_id.clone().into() };
            self.inbound.push_back((at, n, message, target, None, (usize::MAX, 0)));
        }
        true
    }

    fn pump_peer(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut busy = false;
        while let Some(b) = self.peers[i].core.poll_transmit(usize::MAX) {
            busy = true;
            let at = now + self.latency();
            if let Some(link) = self.peers[i].link.and_then(|l| self.links.get_mut(&l)) {
                link.up.push_back((at, b));
            }
        }
        while let Some(event) = self.peers[i].core.poll_event() {
            busy = true;
            match event {
                Event::Message(p) => self.peers[i].received.push(p),
                Event::Published { packet_id, reason_code, .. } if !reason_code.is_error() => {
                    self.peers[i].acked_ids.push(packet_id.get());
                }
                Event::Subscribed { .. } if i == LATE => self.late_since = Some(now),
                Event::Connected { session_present, .. }
                    if i == SLEEPER && !self.moves.is_empty() && !session_present =>
                {
                    self.lost_sessions += 1;
                }
                Event::Disconnected(DisconnectReason::Server {
                    reason_code: ReasonCode::SessionTakenOver,
                    ..
                }) => self.peers[i].taken_over += 1,
                _ => {}
            }
        }
        while let Some(c) = self.peers[i].core.poll_command() {
            busy = true;
            match c {
                ClientCommand::CloseTransport => {
                    if let Some(l) = self.peers[i].link {
                        self.reset(l);
                    }
                }
                // An older process of the roaming client, taken over: it gives up.
                ClientCommand::Reconnect if i >= GHOSTS => {}
                ClientCommand::Reconnect => self.dial(i),
                _ => {}
            }
        }
        busy
    }

    fn next_due(&self) -> Option<Instant> {
        let wire = self.links.values().flat_map(|l| l.up.front().into_iter().chain(l.down.front()));
        let wire = wire.map(|(at, _)| *at).min();
        let clients = self.peers.iter().filter_map(|p| p.core.poll_timeout()).min();
        let backplane = self.ports.iter().filter_map(|p| p.unacked.front().map(|u| u.0)).min();
        let inbound = self.inbound.iter().map(|m| m.0).min();
        let restart =
            self.down_until.into_iter().chain(self.castaway_dial).chain(self.cut_until).min();
        let catch_ups = self.catch_ups.iter().map(|c| c.0).min();
        let takeovers = self.takeovers.iter().chain(&self.to_core).map(|t| t.0).min();
        let claims = self.claims.iter().map(|c| c.0).min();
        let nodes = self.nodes.iter().filter_map(Driver::poll_timeout).min();
        [wire, clients, backplane, inbound, takeovers, claims, nodes, restart, catch_ups]
            .into_iter()
            .flatten()
            .min()
    }

    fn run_until(&mut self, until: Instant) {
        loop {
            self.pump();
            let Some(at) = self.next_due().filter(|at| *at <= until) else {
                self.now = self.now.max(until);
                return;
            };
            self.now = self.now.max(at);
            self.step();
        }
    }

    /// Node `CRASHING` dies, is down for a while, and starts again empty: what it had not
    /// handed to the backplane is gone, and every connection to it breaks. The castaway, if
    /// it is there, goes to node 1.
    fn crash(&mut self) {
        self.crashes += 1;
        self.lives[CRASHING] += 1;
        let down = self.rng.range(20, 60);
        self.down_until = Some(self.now + Duration::from_millis(down));
        if self.peers[CASTAWAY].node == CRASHING {
            self.peers[CASTAWAY].node = 1;
            // Well before the node is back, so that its CONNECT is there in time.
            let dial = Duration::from_micros(self.rng.range(500, 5_000));
            self.castaway_dial = Some(self.now + dial);
        }
        self.catch_ups.retain(|c| c.1 != CRASHING);

        let now = self.now;
        self.ports[CRASHING].unacked.clear();
        self.ports[CRASHING].plain.clear();
        self.ports[CRASHING].groups.clear();
        self.inbound.retain(|m| m.1 != CRASHING);
        self.takeovers.retain(|t| t.1 != CRASHING);
        self.claims.retain(|c| c.1 != CRASHING);
        self.announced.retain(|(n, _), _| *n != CRASHING);
        self.to_core.retain(|t| t.1 != CRASHING);
        let gone: Vec<u32> =
            self.links.iter().filter(|(_, l)| l.node == CRASHING).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(link) = self.links.remove(&id) {
                self.peers[link.client].link = None;
                self.peers[link.client].core.handle_closed(now);
            }
        }
        let broker = Broker::new(self.config.clone(), now)
            .unwrap_or_else(|e| unreachable!("a valid configuration: {e}"));
        self.nodes[CRASHING] = Driver::new(broker);
    }

    fn step(&mut self) {
        let now = self.now;
        if self.cut_until.is_some_and(|at| at <= now) {
            // Node `PARTED` reaches the backplane again, and mirrors its log from a snapshot.
            self.cut_until = None;
            self.nodes[PARTED].handle_cluster_link(now, true);
            self.nodes[PARTED].handle_cluster_snapshot(now);
            self.pump();
        }
        if self.castaway_dial.is_some_and(|at| at <= now) {
            self.castaway_dial = None;
            if self.peers[CASTAWAY].link.is_none() && !self.peers[CASTAWAY].core.is_connected() {
                self.dial(CASTAWAY);
                self.pump();
            }
        }
        if self.down_until.is_some_and(|at| at <= now) {
            // Node `CRASHING` is back: it mirrors its (empty) state from now on.
            self.down_until = None;
            self.nodes[CRASHING].handle_cluster_link(now, true);
            self.nodes[CRASHING].handle_cluster_snapshot(now);
            self.pump();
        }
        for n in 0..NODES {
            while self.ports[n].unacked.front().is_some_and(|u| u.0 <= now) {
                let Some((_, seq, message)) = self.ports[n].unacked.pop_front() else { break };
                let message = match message {
                    Change::Message(m) => m,
                    Change::Log(entry) => {
                        self.mirrors[n].apply(entry, wall(now));
                        self.nodes[n].handle_cluster_acked(now, seq);
                        self.pump();
                        continue;
                    }
                    Change::Interest(filter, group, on) => {
                        let port = &mut self.ports[n];
                        match (group, on) {
                            (None, true) => port.plain.insert(filter),
                            (None, false) => port.plain.remove(&filter),
                            (Some(g), true) => port.groups.insert((filter, g)),
                            (Some(g), false) => port.groups.remove(&(filter, g)),
                        };
                        self.nodes[n].handle_cluster_acked(now, seq);
                        self.pump();
                        continue;
                    }
                };
                if message.retain {
                    for other in (0..NODES).filter(|&o| o != n) {
                        self.nodes[other].handle_cluster_retained(now, message.clone());
                    }
                }
                self.carry(n, seq, message);
                self.nodes[n].handle_cluster_acked(now, seq);
                self.pump();
            }
        }
        while let Some(k) = self.inbound.iter().position(|m| m.0 <= now) {
            let Some((_, n, message, target, position, origin)) = self.inbound.remove(k) else {
                break;
            };
            // What a dead life of the crashing node forwarded does not go to the sessions
            // taken from its mirror: they have what they had of it.
            let except: Vec<Box<str>> = self.adopted[n]
                .iter()
                .filter(|(life, _)| origin == (CRASHING, *life))
                .map(|(_, id)| id.as_str().into())
                .collect();
            let target = match target {
                ClusterTarget::Subscribers if !except.is_empty() => {
                    ClusterTarget::SubscribersBut { except }
                }
                t => t,
            };
            if n == CRASHING && self.down_until.is_some() {
                continue;
            }
            if let Some(p) = position {
                self.handed_count[n] += 1;
                self.handed[n].insert(p, self.handed_count[n]);
            }
            self.nodes[n].handle_cluster_publish(now, message, target, position);
            self.pump();
        }
        while let Some(k) = self.claims.iter().position(|c| c.0 <= now) {
            let Some((_, n, ticket, session, catch_up)) = self.claims.remove(k) else { break };
            let mark = self.handed_count[n];
            if let Some(c) = &catch_up {
                self.adopted[n].push((c.dead_life, c.client_id.clone()));
            }
            let taken_at = self.nodes[n].handle_cluster_claimed(now, ticket, session);
            if let Some(c) = catch_up {
                let c = CatchUp { taken_at: taken_at.0, mark, ..c };
                let at = now + self.latency();
                self.catch_ups.push_back((at, n, c));
            }
            self.pump();
        }
        while let Some(k) = self.catch_ups.iter().position(|c| c.0 <= now) {
            let Some((_, n, c)) = self.catch_ups.remove(k) else { break };
            if !self.catch_up(n, &c) {
                self.catch_ups.push_back((now + Duration::from_millis(1), n, c));
            }
        }
        while let Some(k) = self.takeovers.iter().position(|t| t.0 <= now) {
            let Some((_, n, id, announce)) = self.takeovers.remove(k) else { break };
            // A node hears of a connection elsewhere only while that is the newest one: the
            // registry's order (the NATS side compares revisions). Its core takes the news a
            // moment later, from its input queue, when the client may have connected to it
            // again meanwhile.
            if self.owners.get(id.as_str()) == Some(&n) {
                continue;
            }
            let at = now + Duration::from_micros(self.rng.range(0, 3_000));
            self.to_core.push_back((at, n, id, announce));
        }
        while let Some(k) = self.to_core.iter().position(|t| t.0 <= now) {
            let Some((_, n, id, announce)) = self.to_core.remove(k) else { break };
            self.nodes[n].handle_cluster_takeover(now, id.as_str(), announce);
            self.pump();
        }
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for id in ids {
            while let Some(link) = self.links.get_mut(&id) {
                let (node, conn, client) = (link.node, link.conn, link.client);
                if link.up.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, b)) = link.up.pop_front() else { break };
                    self.nodes[node].handle_bytes(now, conn, BytesMut::from(&b[..]));
                } else if link.down.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, b)) = link.down.pop_front() else { break };
                    let last = link.closing && link.down.is_empty();
                    self.peers[client].core.handle_bytes(now, &mut BytesMut::from(&b[..]));
                    if last {
                        self.reset(id);
                    }
                } else {
                    break;
                }
                self.pump();
            }
        }
        for i in 0..self.peers.len() {
            if self.peers[i].core.poll_timeout().is_some_and(|at| at <= now) {
                self.peers[i].core.handle_timeout(now);
            }
        }
        for n in 0..NODES {
            if self.nodes[n].poll_timeout().is_some_and(|at| at <= now) {
                self.nodes[n].handle_timeout(now);
            }
        }
        self.pump();
    }

    /// The sleeper comes back as a new process on the other of nodes 1 and 2, resuming its
    /// session (Clean Start 0).
    fn wake_sleeper(&mut self) {
        let node = 3 - self.peers[SLEEPER].node;
        self.peers[SLEEPER].node = node;
        let config = ClientConfig { seed: self.rng.next_u64(), ..ClientConfig::default() };
        let mut core = Client::new(config, self.now);
        let _ = core.connect(self.now, connect("sleeper", true));
        self.peers[SLEEPER].core = core;
        let l = self.open(SLEEPER, node);
        self.peers[SLEEPER].link = l;
        self.moves.push(self.now);
    }

    fn record_acks(&mut self, sent: &mut BTreeMap<(usize, u16), (String, QoS, u32)>) {
        for i in [PUB_A, PUB_B] {
            for id in std::mem::take(&mut self.peers[i].acked_ids) {
                if let Some((key, qos, crashes)) = sent.remove(&(i, id)) {
                    // Each crash of the publishers' node before the acknowledgement may have
                    // delivered it there, before the publisher (a clean session) sent it again.
                    self.unsure.insert(key.clone(), self.crashes - crashes);
                    self.peers[i].acked.push((key, qos));
                }
            }
        }
    }
}

/// Runs the cluster scenario with `seed`: `messages` publishes.
pub fn run(seed: u64, messages: usize) -> ClusterOutcome {
    let mut rng = Rng::new(seed);
    let now = Instant::ZERO;
    let mut config = BrokerConfig::default();
    config.cluster = true;
    config.persistence = Persistence::Log;
    config.receive_maximum = u16::try_from(rng.range(4, 64)).unwrap_or(16);
    let nodes = (0..NODES)
        .map(|_| {
            let broker = Broker::new(config.clone(), now)
                .unwrap_or_else(|e| unreachable!("a valid configuration: {e}"));
            let mut d = Driver::new(broker);
            d.handle_cluster_link(now, true);
            d.handle_cluster_snapshot(now);
            d
        })
        .collect();
    let mut net = Net {
        now,
        rng: rng.fork(),
        nodes,
        ports: (0..NODES).map(|_| Port::default()).collect(),
        inbound: VecDeque::new(),
        inbound_last: vec![now; NODES],
        stream: Vec::new(),
        lives: vec![0; NODES],
        down_until: None,
        cut_until: None,
        cuts: Vec::new(),
        castaway_dial: None,
        unsure: BTreeMap::new(),
        mirrors: (0..NODES).map(|_| LogReplay::new()).collect(),
        handed: vec![BTreeMap::new(); NODES],
        handed_count: vec![0; NODES],
        catch_ups: VecDeque::new(),
        adopted: vec![Vec::new(); NODES],
        adoptions: 0,
        takeovers: VecDeque::new(),
        announced: BTreeMap::new(),
        to_core: VecDeque::new(),
        claims: VecDeque::new(),
        moves: Vec::new(),
        lost_sessions: 0,
        late_since: None,
        links: BTreeMap::new(),
        next_link: 0,
        peers: Vec::new(),
        config,
        crashes: 0,
        forwarded: BTreeMap::new(),
        owners: BTreeMap::new(),
        owner_lives: BTreeMap::new(),
        carried: BTreeMap::new(),
        violations: Vec::new(),
    };
    // Publishers on the crashing node (clean sessions: they start again with it), the plain
    // subscriber on node 1, the shared group's members on nodes 1 and 2, and a client that
    // roams.
    let roles = [
        ("pub-a", CRASHING, false),
        ("pub-b", CRASHING, false),
        ("sub", 1, true),
        ("member-1", 1, true),
        ("member-2", 2, true),
        ("roamer", 1, true),
        ("sleeper", 1, true),
        ("late", 2, false),
        ("castaway", CRASHING, true),
    ];
    for (id, node, persistent) in roles {
        let config = ClientConfig { seed: rng.next_u64(), ..ClientConfig::default() };
        let mut core = Client::new(config, now);
        let _ = core.connect(now, connect(id, persistent));
        net.peers.push(Peer {
            core,
            node,
            link: None,
            received: Vec::new(),
            acked_ids: Vec::new(),
            acked: Vec::new(),
            taken_over: 0,
        });
        let i = net.peers.len() - 1;
        let l = net.open(i, node);
        net.peers[i].link = l;
    }
    net.run_until(now + Duration::from_secs(2));
    for (i, filter) in [
        (SUB, "t/#"),
        (MEMBER_1, "$share/g/t/+"),
        (MEMBER_2, "$share/g/t/+"),
        (SLEEPER, "t/#"),
        (CASTAWAY, "t/#"),
    ] {
        let filter = TopicFilter::new(filter).unwrap_or_else(|_| unreachable!());
        let at = net.now;
        let _ = net.peers[i].core.subscribe(at, &[Subscription::new(filter, QoS::ExactlyOnce)]);
    }
    net.run_until(net.now + Duration::from_secs(1));

    let mut sent: BTreeMap<(usize, u16), (String, QoS, u32)> = BTreeMap::new();
    let mut takeovers = 0;
    // The sleeper's session: offline since when, on which node.
    let mut asleep: Option<Instant> = None;
    for n in 0..messages {
        if n == messages / 2 {
            // A subscriber on node 2 subscribes in the middle of the load: what is published
            // anywhere after its SUBACK reaches it.
            let filter = TopicFilter::new("t/#").unwrap_or_else(|_| unreachable!());
            let at = net.now;
            let _ =
                net.peers[LATE].core.subscribe(at, &[Subscription::new(filter, QoS::AtLeastOnce)]);
        }
        let i = if n % 2 == 0 { PUB_A } else { PUB_B };
        let qos = if net.rng.chance(0.5) { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let topic = if n % 3 == 0 { "t/r" } else { "t/x" };
        let body = format!("m{n}");
        let mut p =
            Publish::new(TopicName::new(topic).unwrap_or_else(|_| unreachable!()), body.clone());
        p.qos = qos;
        p.retain = topic == "t/r";
        let at = net.now;
        if let Ok(Some(id)) = net.peers[i].core.publish(at, p) {
            sent.insert((i, id.get()), (format!("{topic}|{body}"), qos, net.crashes));
        }
        net.pump();
        let gap = Duration::from_micros(net.rng.range(100, 3_000));
        net.run_until(net.now + gap);
        if net.rng.chance(CRASH_CHANCE) && net.down_until.is_none() {
            net.crash();
        }
        // (Not just after the sleeper moved: a session that comes to a node as it loses the
        // backplane misses what is published elsewhere meanwhile, the stated degradation.)
        let moved_lately =
            net.moves.last().is_some_and(|m| net.now < *m + Duration::from_millis(100));
        if net.rng.chance(CUT_CHANCE) && net.cut_until.is_none() && !moved_lately {
            // Node `PARTED` loses the backplane for a while: it serves its own clients alone.
            let end = net.now + Duration::from_millis(net.rng.range(5, 50));
            net.cut_until = Some(end);
            net.cuts.push((net.now, end));
            let at = net.now;
            net.nodes[PARTED].handle_cluster_link(at, false);
            net.pump();
        }
        // While it is cut off, and until what waited for it arrived, clients do not move (its
        // sessions could not be asked for, or would miss what is on its way to it).
        let moving = net.settled();
        // The sleeper goes away now and then (its session stays, and queues, on its node) and
        // comes back, as a new process, on the other of nodes 1 and 2.
        match asleep {
            None if moving && net.rng.chance(0.02) && net.peers[SLEEPER].core.is_connected() => {
                let at = net.now;
                net.peers[SLEEPER].core.disconnect(at, Disconnect::default());
                net.moves.push(at);
                asleep = Some(at);
            }
            Some(since)
                if moving
                    && net.now >= since + Duration::from_millis(30)
                    && net.rng.chance(0.1) =>
            {
                net.wake_sleeper();
                asleep = None;
            }
            _ => {}
        }
        // (Once its connection is up: two processes connecting at once on two nodes are
        // ordered by the registry, and either may win.)
        if moving && net.rng.chance(0.02) && net.peers[ROAMER].core.is_connected() {
            // The roamer moves to another node, as a load balancer might send it.
            let from = net.peers[ROAMER].node;
            let mut to = (from + 1 + net.rng.range(0, (NODES - 2) as u64) as usize) % NODES;
            if to == CRASHING && net.down_until.is_some() {
                // A load balancer sends nobody to a node that is down.
                to = 3 - from;
            }
            net.peers[ROAMER].node = to;
            net.peers[ROAMER].link = None;
            let config = ClientConfig { seed: net.rng.next_u64(), ..ClientConfig::default() };
            // A second process with the same id: the first keeps its connection until the
            // cluster takes it over.
            let mut core = Client::new(config, net.now);
            let _ = core.connect(net.now, connect("roamer", true));
            let old = std::mem::replace(&mut net.peers[ROAMER].core, core);
            let before = net.links.iter().find(|(_, l)| l.client == ROAMER).map(|(id, _)| *id);
            net.peers.push(Peer {
                core: old,
                node: from,
                link: before,
                received: Vec::new(),
                acked_ids: Vec::new(),
                acked: Vec::new(),
                taken_over: 0,
            });
            let ghost = net.peers.len() - 1;
            if let Some(l) = before.and_then(|l| net.links.get_mut(&l)) {
                l.client = ghost;
            }
            let l = net.open(ROAMER, to);
            net.peers[ROAMER].link = l;
            net.peers[ROAMER].taken_over = 0;
            takeovers += 1;
        }
        net.record_acks(&mut sent);
    }
    if asleep.is_some() {
        // It comes back for the end, on the other node, to collect what waited for it (once
        // its last connection is over).
        net.run_until(net.now + Duration::from_millis(150));
        net.wake_sleeper();
    }
    for _ in 0..30 {
        net.run_until(net.now + Duration::from_secs(1));
        net.record_acks(&mut sent);
    }
    check(&mut net, takeovers)
}

fn check(net: &mut Net, takeovers: u32) -> ClusterOutcome {
    let mut out = ClusterOutcome {
        crashes: net.crashes,
        takeovers,
        violations: std::mem::take(&mut net.violations),
        ..ClusterOutcome::default()
    };
    let count = |i: usize| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for p in &net.peers[i].received {
            let key = format!("{}|{}", p.topic, String::from_utf8_lossy(&p.payload));
            *seen.entry(key).or_default() += 1;
        }
        seen
    };
    let sub = count(SUB);
    let resent = |key: &str| net.forwarded.get(key).map_or(1, Vec::len);
    let (m1, m2) = (count(MEMBER_1), count(MEMBER_2));
    for from in [PUB_A, PUB_B] {
        for (key, qos) in &net.peers[from].acked {
            out.acknowledged += 1;
            match (sub.get(key).copied().unwrap_or(0), qos) {
                (0, _) => out.violations.push(format!("{key} ({qos:?}) never reached node 1")),
                (1, _) | (_, QoS::AtLeastOnce) => out.delivered += 1,
                (n, _) if n <= resent(key) => out.delivered += 1,
                (n, _) => out.violations.push(format!("QoS 2 message {key} arrived {n} times")),
            }
        }
    }
    for (key, n) in &m1 {
        let both = n + m2.get(key).copied().unwrap_or(0);
        if both > resent(key) {
            out.violations.push(format!("{key} reached the shared group {both} times"));
        }
    }
    out.shared = m1.values().chain(m2.values()).sum();
    // The roamer's current process is connected; every earlier one was taken over.
    if net.peers[ROAMER].taken_over > 0 {
        out.violations.push("the roaming client's newest connection was taken over".into());
    }
    if !net.peers[ROAMER].core.is_connected() {
        out.violations.push("the roaming client's newest connection is not connected".into());
    }
    // The sleeper's session moved with it: every acknowledged message reached it, in one of
    // its processes, unless the backplane took it as the sleeper left or came back.
    let sleeper = count(SLEEPER);
    for from in [PUB_A, PUB_B] {
        for (key, _) in &net.peers[from].acked {
            let Some(&at) = net.carried.get(key) else { continue };
            let near = |m: &Instant| {
                let (lo, hi) = if *m > at { (at, *m) } else { (*m, at) };
                hi.saturating_duration_since(lo) < SETTLE
            };
            if !net.moves.iter().any(near) && !sleeper.contains_key(key) {
                out.violations.push(format!("{key} never reached the sleeper"));
            }
        }
    }
    // The castaway got every acknowledged message, wherever its session was then: QoS 2
    // once (its client keeps its QoS 2 state across the move).
    let castaway = count(CASTAWAY);
    for from in [PUB_A, PUB_B] {
        for (key, qos) in &net.peers[from].acked {
            match (castaway.get(key).copied().unwrap_or(0), qos) {
                (0, _) => {
                    out.violations.push(format!("{key} ({qos:?}) never reached the castaway"))
                }
                (1, _) | (_, QoS::AtLeastOnce) => {}
                (n, _)
                    if n <= resent(key)
                        .max(1 + net.unsure.get(key).copied().unwrap_or(0) as usize) => {}
                (n, _) => out
                    .violations
                    .push(format!("QoS 2 message {key} reached the castaway {n} times")),
            }
        }
    }
    out.castaway = castaway.values().sum();
    out.adoptions = net.adoptions;
    out.partitions = net.cuts.len() as u32;
    let late = count(LATE);
    // A SUBSCRIBE while its node is cut off is answered at once (the node serves alone): it
    // gets what is published elsewhere from when the node is back and subscribed again.
    let late_since = net.late_since.map(|since| {
        match net.cuts.iter().find(|(start, end)| *start <= since && since <= *end) {
            Some((_, end)) => *end + SETTLE,
            None => since,
        }
    });
    match late_since {
        Some(since) => {
            for from in [PUB_A, PUB_B] {
                for (key, _) in &net.peers[from].acked {
                    let after = net.carried.get(key).is_some_and(|at| *at >= since);
                    if after && !late.contains_key(key) {
                        out.violations
                            .push(format!("{key}, after the late SUBACK, never reached it"));
                    }
                }
            }
        }
        None => out.violations.push("the late subscriber got no SUBACK".into()),
    }
    if net.lost_sessions > 0 {
        out.violations
            .push(format!("the sleeper came back without its session {} times", net.lost_sessions));
    }
    out.moves = net.moves.len() as u32 / 2;
    for ghost in net.peers.iter().skip(GHOSTS) {
        if ghost.core.is_connected() {
            out.violations.push("an older connection of the roaming client is still up".into());
        }
    }
    if net.peers.iter().skip(GHOSTS).all(|g| g.taken_over == 0) && takeovers > 0 {
        out.violations
            .push("no older connection of the roaming client read DISCONNECT 0x8E".into());
    }
    out
}
