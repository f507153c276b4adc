//! Deterministic simulation of MQTT clients and a broker (feature `sim`).
//!
//! A [`World`] holds one broker and any number of clients, all the real sans-IO state machines
//! of [`ternmq_core`], joined by a simulated network and driven by a virtual clock. Nothing in
//! it reads the real clock or the OS's randomness: every choice (where a write is split, how
//! long a chunk takes, when a connection breaks) comes from one `u64` seed, so the same seed
//! replays the same run, packet for packet.
//!
//! The network keeps each connection a byte stream, as TCP does: bytes of one direction arrive
//! in order, split and coalesced at arbitrary points, while different connections are delayed
//! independently of each other; what the broker sends waits in its own output once a window of
//! unread bytes is full, as behind a reader that does not keep up. [`Faults`] adds resets, half-open connections (only keep-alive
//! finds them), stalled readers and a store that commits late; [`World::restart_broker`]
//! restarts the broker from what its store had committed, through the same
//! [`PersistOp`]/[`Broker::restore`] path the durable store uses, losing what was not yet
//! committed. A wire monitor decodes every packet on every connection, checks it against the
//! limits the receiving side announced (Maximum Packet Size, Receive Maximum, Topic Alias
//! Maximum, packet identifiers in use) and keeps a trace of the last packets for failure
//! reports.
//!
//! [`scenario`] builds a randomised workload on a world and checks MQTT's delivery promises; the
//! `simulation` test runs it over many seeds. Applications can drive a [`World`] directly to
//! simulate their own use of MQTT:
//!
//! ```
//! use ternmq::sim::{Faults, World};
//! use ternmq::broker::BrokerConfig;
//! use ternmq::core::client::{ClientConfig, Event};
//! use ternmq::codec::{Connect, MqttStr, ProtocolVersion, QoS, Subscription};
//! use ternmq::topic::{TopicFilter, TopicName};
//! use ternmq::core::time::Duration;
//!
//! let mut world = World::new(7, BrokerConfig::default(), Faults::default()).unwrap();
//! let connect = Connect::new(ProtocolVersion::V5, MqttStr::from_static("app"));
//! let app = world.add_client(ClientConfig::default(), connect);
//! world.run_for(Duration::from_millis(500));
//! let sub = Subscription::new(TopicFilter::new("greeting/#").unwrap(), QoS::ExactlyOnce);
//! world.command(app, |c, now| c.subscribe(now, &[sub])).unwrap();
//! world.run_for(Duration::from_millis(500));
//! let mut p = ternmq::codec::Publish::new(TopicName::new("greeting/en").unwrap(), "hello");
//! p.qos = QoS::ExactlyOnce;
//! world.command(app, |c, now| c.publish(now, p)).unwrap();
//! world.run_for(Duration::from_secs(2));
//! let mut got = 0;
//! while let Some(ev) = world.poll_event(app) {
//!     if let Event::Message(m) = ev {
//!         assert_eq!(&m.payload[..], b"hello");
//!         got += 1;
//!     }
//! }
//! assert_eq!(got, 1);
//! assert!(world.violations().is_empty());
//! ```

pub mod bridge;
pub mod cluster;
mod monitor;
pub mod scenario;

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::persist::{PersistOp, PersistSeq, Replay};
use ternmq_core::broker::{
    Broker, BrokerConfig, Command as BrokerCommand, ConfigError, ConnId, Event as BrokerEvent,
    PeerInfo,
};
use ternmq_core::client::{Client, ClientConfig, Command as ClientCommand, Event as ClientEvent};
use ternmq_core::codec::Connect;
use ternmq_core::time::{Duration, Instant};

use monitor::{Expiries, Monitor};

/// A small, fast, seedable generator (SplitMix64): all of a simulation's randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a fraction in [0, 1).
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// One of `items`, or `None` if it is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = self.range(0, items.len() as u64 - 1) as usize;
        items.get(i)
    }

    /// A duration in `lo..=hi`, to the microsecond.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_us = u64::try_from(lo.as_micros()).unwrap_or(u64::MAX);
        let hi_us = u64::try_from(hi.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.range(lo_us, hi_us))
    }

    /// A new generator drawn from this one, for an independent stream of choices.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// What the simulated network and store do wrong, and how often.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Each write is cut into 1 to this many chunks at random points.
    pub max_chunks: usize,
    /// Each chunk's delay is drawn from `min_latency..=max_latency`; a stream keeps its order,
    /// different connections do not keep theirs relative to each other.
    pub min_latency: Duration,
    /// See `min_latency`.
    pub max_latency: Duration,
    /// Chance per connection per simulated second that it is reset (both ends see it closed).
    pub reset_per_sec: f64,
    /// Chance per connection per simulated second that it goes half-open: everything sent is
    /// lost and neither end is told; only keep-alive finds out.
    pub half_open_per_sec: f64,
    /// Chance per connection per simulated second that the client stops reading for up to
    /// `max_stall`.
    pub stall_per_sec: f64,
    /// See `stall_per_sec`.
    pub max_stall: Duration,
    /// Longest time the store takes to commit an operation (commits stay in order).
    pub max_store_latency: Duration,
    /// Whether a broker restart loses the operations the store had not committed yet.
    pub lose_uncommitted: bool,
}

impl Default for Faults {
    /// Split writes, jitter up to 20 ms, and the occasional reset, half-open connection and
    /// stalled reader.
    fn default() -> Self {
        Self {
            max_chunks: 4,
            min_latency: Duration::from_micros(100),
            max_latency: Duration::from_millis(20),
            reset_per_sec: 0.02,
            half_open_per_sec: 0.01,
            stall_per_sec: 0.02,
            max_stall: Duration::from_secs(2),
            max_store_latency: Duration::from_millis(10),
            lose_uncommitted: true,
        }
    }
}

impl Faults {
    /// A perfect network: whole writes, 1 ms latency, no resets, an instant store.
    pub fn none() -> Self {
        Self {
            max_chunks: 1,
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(1),
            reset_per_sec: 0.0,
            half_open_per_sec: 0.0,
            stall_per_sec: 0.0,
            max_stall: Duration::ZERO,
            max_store_latency: Duration::ZERO,
            lose_uncommitted: false,
        }
    }
}

/// Names a client of a [`World`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientNo(pub usize);

/// What happened at the broker, as the world saw it.
// Notes are few (one per connection event), so the size of an event inline does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerNote {
    /// An event the broker emitted.
    Event(BrokerEvent),
    /// The broker was restarted from its store.
    Restarted,
}

/// One direction of a connection: chunks in flight, in order, `None` marking the end.
#[derive(Debug, Default)]
struct Pipe {
    chunks: VecDeque<(Instant, Option<Bytes>)>,
    last: Instant,
}

impl Pipe {
    fn due(&self, from: Instant) -> Option<Instant> {
        self.chunks.front().map(|(t, _)| (*t).max(from))
    }
}

/// One connection between a client and the broker.
#[derive(Debug)]
struct Link {
    client: usize,
    /// The broker's side, while open.
    conn: Option<ConnId>,
    /// Whether the client's side is open.
    client_open: bool,
    /// Client to broker.
    up: Pipe,
    /// Broker to client.
    down: Pipe,
    /// Everything sent is lost, nobody is told.
    half_open: bool,
    /// The client reads nothing before this.
    stalled_until: Instant,
    /// Most bytes from the broker in flight to the client (the socket buffers): the broker's
    /// output backs up behind a reader that stalls or a connection gone half-open.
    window: usize,
    /// Bytes from the broker the client has not read yet.
    down_unread: usize,
    /// Bytes the broker has not consumed yet (kept while its input is paused).
    broker_buf: BytesMut,
    client_buf: BytesMut,
    paused: bool,
    monitor: Monitor,
}

impl Link {
    fn is_done(&self) -> bool {
        self.conn.is_none() && !self.client_open && self.up.chunks.is_empty()
    }
}

struct Node {
    core: Client,
    link: Option<usize>,
    events: VecDeque<ClientEvent>,
    name: String,
}

/// What the broker logged after one input.
type Batch = Vec<(PersistSeq, PersistOp)>;

/// The operations the store has been given and not yet committed: one batch per input the
/// broker handled, each committed whole (one transaction), in order.
#[derive(Default)]
struct Store {
    committed: Replay,
    /// Commit time, the wall clock when the broker logged the batch, the batch.
    pending: VecDeque<(Instant, u64, Batch)>,
    last_commit: Instant,
}

/// A broker, its store, clients and the network between them, on a virtual clock.
pub struct World {
    now: Instant,
    rng: Rng,
    faults: Faults,
    config: BrokerConfig,
    broker: Broker,
    store: Store,
    clients: Vec<Node>,
    links: BTreeMap<usize, Link>,
    next_link: usize,
    by_conn: BTreeMap<ConnId, usize>,
    notes: VecDeque<(Instant, BrokerNote)>,
    trace: VecDeque<String>,
    trace_limit: usize,
    violations: Vec<String>,
    expiries: Expiries,
    restarts: u32,
    /// Messages earlier incarnations of the broker dropped (full queues, slow consumers).
    dropped_before: u64,
}

/// Most lines the packet trace keeps by default.
const TRACE_LINES: usize = 400;
/// Wall-clock seconds at the simulation's time zero, as the store sees it.
const WALL_BASE: u64 = 1_700_000_000;

impl World {
    /// A world whose choices all come from `seed`. The broker runs with `config.persistence`:
    /// `Durable` (what a restart keeps is what the store committed), `Log`
    /// (acknowledgements do not wait for the store), or `Off` (a restart starts empty).
    pub fn new(seed: u64, config: BrokerConfig, faults: Faults) -> Result<Self, ConfigError> {
        let broker = Broker::new(config.clone(), Instant::ZERO)?;
        Ok(Self {
            now: Instant::ZERO,
            rng: Rng::new(seed),
            faults,
            config,
            broker,
            store: Store::default(),
            clients: Vec::new(),
            links: BTreeMap::new(),
            next_link: 0,
            by_conn: BTreeMap::new(),
            notes: VecDeque::new(),
            trace: VecDeque::new(),
            trace_limit: TRACE_LINES,
            violations: Vec::new(),
            expiries: Expiries::default(),
            dropped_before: 0,
            restarts: 0,
        })
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The broker, to read its counters and gauges.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// QoS 1 and 2 messages the broker dropped by its limits (full session queues, slow
    /// consumers), over every restart.
    pub fn dropped(&self) -> u64 {
        self.dropped_before + drops(self.broker.stats())
    }

    /// How many times the broker was restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The faults in force.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Changes the faults from now on (for example [`Faults::none`] to let a run settle).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The world's generator, for workloads that want their choices replayed with it.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Limits broken on the wire so far: packets one side sent that the other side's announced
    /// limits forbid, or bytes that do not decode.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// How many trace lines to keep (400 by default).
    pub fn set_trace_limit(&mut self, lines: usize) {
        self.trace_limit = lines.max(1);
    }

    /// The last packets exchanged, oldest first, one line each.
    pub fn trace(&self) -> impl Iterator<Item = &String> {
        self.trace.iter()
    }

    /// Adds a client and starts connecting it with `connect`.
    pub fn add_client(&mut self, config: ClientConfig, connect: Connect) -> ClientNo {
        let name = connect.client_id.as_str().to_owned();
        let core = Client::new(config, self.now);
        self.clients.push(Node { core, link: None, events: VecDeque::new(), name });
        let i = self.clients.len() - 1;
        self.dial(i, Some(connect));
        ClientNo(i)
    }

    /// Gives the application a client's state machine and the time, for a command
    /// (`publish`, `subscribe`, `disconnect`, ...); what the command queues is sent.
    pub fn command<R>(&mut self, client: ClientNo, f: impl FnOnce(&mut Client, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.clients[client.0].core, now);
        self.pump_client(client.0);
        r
    }

    /// A client's state machine, to read.
    pub fn client(&self, client: ClientNo) -> &Client {
        &self.clients[client.0].core
    }

    /// The next event a client's state machine gave its application. (The world carries out
    /// its commands, closing and reconnecting, itself.)
    pub fn poll_event(&mut self, client: ClientNo) -> Option<ClientEvent> {
        self.clients.get_mut(client.0)?.events.pop_front()
    }

    /// The next thing that happened at the broker, with its time.
    pub fn poll_broker_note(&mut self) -> Option<(Instant, BrokerNote)> {
        self.notes.pop_front()
    }

    /// The client process restarts: its connection is dropped without DISCONNECT, its state
    /// machine is replaced by a new one with `config`, which connects with `connect`.
    pub fn restart_client(&mut self, client: ClientNo, config: ClientConfig, connect: Connect) {
        if let Some(l) = self.clients[client.0].link {
            self.reset_link(l);
        }
        let node = &mut self.clients[client.0];
        node.core = Client::new(config, self.now);
        node.events.clear();
        node.name = connect.client_id.as_str().to_owned();
        self.dial(client.0, Some(connect));
    }

    /// Resets a client's connection, if it has one: both ends see it closed.
    pub fn reset_connection(&mut self, client: ClientNo) {
        if let Some(l) = self.clients[client.0].link {
            self.reset_link(l);
        }
    }

    /// The client's end of its connection breaks and the broker is not told: the client sees
    /// it closed at once and reconnects as it would, while the broker's end stays open and
    /// receives nothing (half-open) until keep-alive finds out or the client's next connection
    /// takes its client id over.
    pub fn abandon_connection(&mut self, client: ClientNo) {
        let Some(l) = self.clients[client.0].link.take() else { return };
        self.trace_line(format!("{} L{l} abandoned by the client", ms(self.now)));
        if let Some(link) = self.links.get_mut(&l) {
            link.half_open = true;
            link.client_open = false;
            link.up.chunks.clear();
            link.down.chunks.clear();
        }
        self.clients[client.0].core.handle_closed(self.now);
        self.pump_client(client.0);
    }

    /// The broker process restarts from what its store committed; every connection breaks.
    pub fn restart_broker(&mut self) -> Result<(), ConfigError> {
        let ids: Vec<usize> = self.links.keys().copied().collect();
        for l in ids {
            if let Some(link) = self.links.get_mut(&l) {
                // The broker's process is gone: it is told nothing, its clients see a reset.
                link.conn = None;
            }
            self.reset_link(l);
        }
        self.by_conn.clear();
        if self.faults.lose_uncommitted {
            self.store.pending.clear();
        } else {
            while let Some((_, logged, batch)) = self.store.pending.pop_front() {
                for (_, op) in batch {
                    self.store.committed.apply(op, logged);
                }
            }
        }
        self.dropped_before += drops(self.broker.stats());
        let snapshot = self.store.committed.snapshot(self.wall());
        self.broker = Broker::restore(self.config.clone(), snapshot, self.now)?;
        self.restarts += 1;
        self.notes.push_back((self.now, BrokerNote::Restarted));
        self.trace_line(format!("{} broker restarted", ms(self.now)));
        self.pump_broker();
        Ok(())
    }

    /// The clock jumps forward by `by` at once (a suspended machine): every timer that falls
    /// due in between fires late, together.
    pub fn jump(&mut self, by: Duration) {
        self.now += by;
        self.trace_line(format!("{} clock jumped {} ms", ms(self.now), by.as_millis()));
        self.run_until(self.now);
    }

    /// Runs for `by` of virtual time, drawing this stretch's faults first.
    pub fn run_for(&mut self, by: Duration) {
        let secs = by.as_secs_f64();
        let ids: Vec<usize> = self.links.keys().copied().collect();
        for l in ids {
            let Some(link) = self.links.get(&l) else { continue };
            if !link.client_open || link.conn.is_none() || link.half_open {
                continue;
            }
            if self.rng.chance(self.faults.reset_per_sec * secs) {
                self.trace_line(format!("{} L{l} reset", ms(self.now)));
                self.reset_link(l);
            } else if self.rng.chance(self.faults.half_open_per_sec * secs) {
                self.trace_line(format!("{} L{l} half-open", ms(self.now)));
                if let Some(link) = self.links.get_mut(&l) {
                    link.half_open = true;
                    link.up.chunks.clear();
                    link.down.chunks.clear();
                }
            } else if self.rng.chance(self.faults.stall_per_sec * secs) {
                let d = self.rng.duration(Duration::ZERO, self.faults.max_stall);
                if let Some(link) = self.links.get_mut(&l) {
                    link.stalled_until = self.now + d;
                }
            }
        }
        self.run_until(self.now + by);
    }

    /// Processes everything that falls due up to `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(next) = self.next_due() {
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// The store's wall clock, in milliseconds.
    fn wall(&self) -> u64 {
        WALL_BASE * 1000 + self.now.as_nanos() / 1_000_000
    }

    /// The earliest time anything is due.
    fn next_due(&self) -> Option<Instant> {
        let mut next = self.broker.poll_timeout();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(self.store.pending.front().map(|p| p.0));
        for n in &self.clients {
            consider(n.core.poll_timeout());
        }
        for link in self.links.values() {
            if !link.paused {
                consider(link.up.due(Instant::ZERO));
            }
            consider(link.down.due(link.stalled_until));
        }
        next
    }

    /// Does everything due now.
    fn step(&mut self) {
        let now = self.now;
        // The store commits.
        let mut last = None;
        while self.store.pending.front().is_some_and(|p| p.0 <= now) {
            if let Some((_, logged, batch)) = self.store.pending.pop_front() {
                // Stamped with when the broker logged it, as the store's writer does.
                for (seq, op) in batch {
                    self.store.committed.apply(op, logged);
                    last = Some(seq);
                }
            }
        }
        if let Some(seq) = last {
            self.broker.handle_persisted(now, seq);
            self.pump_broker();
        }
        // Bytes arrive.
        let ids: Vec<usize> = self.links.keys().copied().collect();
        for l in ids {
            self.deliver_up(l);
            self.deliver_down(l);
        }
        // Timers fire.
        if self.broker.poll_timeout().is_some_and(|t| t <= now) {
            self.broker.handle_timeout(now);
            self.pump_broker();
        }
        for i in 0..self.clients.len() {
            if self.clients[i].core.poll_timeout().is_some_and(|t| t <= now) {
                self.clients[i].core.handle_timeout(now);
                self.pump_client(i);
            }
        }
        self.links.retain(|_, link| !link.is_done());
    }

    fn deliver_up(&mut self, l: usize) {
        let now = self.now;
        loop {
            let Some(link) = self.links.get_mut(&l) else { return };
            if link.paused || link.up.chunks.front().is_none_or(|c| c.0 > now) {
                return;
            }
            let Some((_, chunk)) = link.up.chunks.pop_front() else { return };
            let Some(conn) = link.conn else {
                continue;
            };
            match chunk {
                Some(bytes) => {
                    for line in link.monitor.client_sent(
                        &bytes,
                        now,
                        l,
                        &mut self.expiries,
                        &mut self.violations,
                    ) {
                        push_trace(&mut self.trace, self.trace_limit, line);
                    }
                    link.broker_buf.extend_from_slice(&bytes);
                    let mut buf = std::mem::take(&mut link.broker_buf);
                    self.broker.handle_bytes(now, conn, &mut buf);
                    if let Some(link) = self.links.get_mut(&l) {
                        link.broker_buf = buf;
                    }
                }
                None => {
                    link.conn = None;
                    self.by_conn.remove(&conn);
                    self.broker.handle_closed(now, conn);
                }
            }
            self.pump_broker();
        }
    }

    fn deliver_down(&mut self, l: usize) {
        let now = self.now;
        loop {
            let Some(link) = self.links.get_mut(&l) else { return };
            if link.stalled_until > now || link.down.chunks.front().is_none_or(|c| c.0 > now) {
                return;
            }
            let Some((_, chunk)) = link.down.chunks.pop_front() else { return };
            if let Some(bytes) = &chunk {
                link.down_unread = link.down_unread.saturating_sub(bytes.len());
            }
            if !link.client_open {
                continue;
            }
            let i = link.client;
            let conn = link.conn;
            match chunk {
                Some(bytes) => {
                    link.client_buf.extend_from_slice(&bytes);
                    let mut buf = std::mem::take(&mut link.client_buf);
                    self.clients[i].core.handle_bytes(now, &mut buf);
                    if let Some(link) = self.links.get_mut(&l) {
                        link.client_buf = buf;
                    }
                }
                None => {
                    link.client_open = false;
                    self.clients[i].link = None;
                    self.clients[i].core.handle_closed(now);
                }
            }
            self.pump_client(i);
            // The window has room again: the broker's output goes on.
            if let Some(conn) = conn
                && self.transmit(conn)
            {
                self.pump_broker();
            }
        }
    }

    /// Opens a new connection for client `i`; with `connect`, sends it, otherwise tells the
    /// state machine to reconnect.
    fn dial(&mut self, i: usize, connect: Option<Connect>) {
        let now = self.now;
        let peer = PeerInfo { addr: None, listener: 0, identity: None, trusted: false };
        match self.broker.accept(now, peer) {
            Ok(conn) => {
                let window = self.rng.range(512, 16 * 1024) as usize;
                let l = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    l,
                    Link {
                        client: i,
                        conn: Some(conn),
                        client_open: true,
                        up: Pipe::default(),
                        down: Pipe::default(),
                        half_open: false,
                        stalled_until: Instant::ZERO,
                        window,
                        down_unread: 0,
                        broker_buf: BytesMut::new(),
                        client_buf: BytesMut::new(),
                        paused: false,
                        monitor: Monitor::new(i, &self.clients[i].name),
                    },
                );
                self.by_conn.insert(conn, l);
                self.clients[i].link = Some(l);
                let core = &mut self.clients[i].core;
                let started = match connect {
                    Some(c) => core.connect(now, c),
                    None => core.reconnect(now),
                };
                if started.is_err() {
                    self.reset_link(l);
                }
            }
            Err(_) => {
                // Refused at once, as a listener at its connection limit does.
                let core = &mut self.clients[i].core;
                if let Some(c) = connect {
                    let _ = core.connect(now, c);
                }
                core.handle_closed(now);
            }
        }
        self.pump_client(i);
    }

    /// Breaks link `l`: pending bytes are lost and both ends, if open, see it closed.
    fn reset_link(&mut self, l: usize) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&l) else { return };
        link.up.chunks.clear();
        link.down.chunks.clear();
        let conn = link.conn.take();
        let client = link.client_open.then_some(link.client);
        link.client_open = false;
        if let Some(conn) = conn {
            self.by_conn.remove(&conn);
            self.broker.handle_closed(now, conn);
            self.pump_broker();
        }
        if let Some(i) = client {
            self.clients[i].link = None;
            self.clients[i].core.handle_closed(now);
            self.pump_client(i);
        }
    }

    /// Sends `bytes` on a pipe in chunks with random delays, keeping the stream's order.
    fn send(&mut self, l: usize, down: bool, bytes: Bytes) {
        let now = self.now;
        let Some(link) = self.links.get(&l) else { return };
        if link.half_open {
            return;
        }
        let chunks = self.rng.range(1, self.faults.max_chunks.max(1) as u64) as usize;
        let mut cuts: Vec<usize> =
            (1..chunks).map(|_| self.rng.range(1, bytes.len() as u64) as usize).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        let mut timed = Vec::new();
        for cut in cuts {
            if cut <= start || cut > bytes.len() {
                continue;
            }
            let delay = self.rng.duration(self.faults.min_latency, self.faults.max_latency);
            timed.push((delay, bytes.slice(start..cut)));
            start = cut;
        }
        let Some(link) = self.links.get_mut(&l) else { return };
        let pipe = if down { &mut link.down } else { &mut link.up };
        for (delay, chunk) in timed {
            let at = (now + delay).max(pipe.last);
            pipe.last = at;
            pipe.chunks.push_back((at, Some(chunk)));
        }
    }

    /// Queues the end of a stream after the bytes already in it.
    fn send_end(&mut self, l: usize, down: bool) {
        let now = self.now;
        let delay = self.rng.duration(self.faults.min_latency, self.faults.max_latency);
        let Some(link) = self.links.get_mut(&l) else { return };
        if link.half_open {
            return;
        }
        let pipe = if down { &mut link.down } else { &mut link.up };
        let at = (now + delay).max(pipe.last);
        pipe.last = at;
        pipe.chunks.push_back((at, None));
    }

    /// Hands the broker's output for `conn` to its link, as much as the link's window allows
    /// (all of it once the link is gone); returns whether there was any.
    fn transmit(&mut self, conn: ConnId) -> bool {
        let now = self.now;
        let mut any = false;
        loop {
            let link = self.by_conn.get(&conn).and_then(|l| self.links.get(l));
            let room = link.map_or(64 * 1024, |link| link.window.saturating_sub(link.down_unread));
            if room == 0 {
                break;
            }
            let Some(bytes) = self.broker.poll_transmit(conn, room) else { break };
            any = true;
            let Some(&l) = self.by_conn.get(&conn) else { continue };
            if let Some(link) = self.links.get_mut(&l) {
                link.down_unread += bytes.len();
                for line in
                    link.monitor.broker_sent(&bytes, now, l, &self.expiries, &mut self.violations)
                {
                    push_trace(&mut self.trace, self.trace_limit, line);
                }
            }
            self.send(l, true, bytes);
        }
        any
    }

    /// Takes everything the broker has to say and acts on it.
    fn pump_broker(&mut self) {
        let now = self.now;
        let mut batch = Vec::new();
        loop {
            let mut busy = false;
            while let Some(conn) = self.broker.poll_writable() {
                busy |= self.transmit(conn);
            }
            while let Some(entry) = self.broker.poll_persist() {
                busy = true;
                batch.push(entry);
            }
            while let Some(ev) = self.broker.poll_event() {
                busy = true;
                self.notes.push_back((now, BrokerNote::Event(ev)));
            }
            while let Some(command) = self.broker.poll_command() {
                busy = true;
                match command {
                    BrokerCommand::Close(conn) => {
                        if let Some(l) = self.by_conn.remove(&conn) {
                            self.send_end(l, true);
                            if let Some(link) = self.links.get_mut(&l) {
                                link.conn = None;
                                link.up.chunks.clear();
                            }
                        }
                        self.broker.handle_closed(now, conn);
                    }
                    BrokerCommand::PauseInput(conn) => {
                        if let Some(link) =
                            self.by_conn.get(&conn).and_then(|l| self.links.get_mut(l))
                        {
                            link.paused = true;
                        }
                    }
                    BrokerCommand::ResumeInput(conn) => {
                        if let Some(&l) = self.by_conn.get(&conn)
                            && let Some(link) = self.links.get_mut(&l)
                        {
                            link.paused = false;
                            let mut buf = std::mem::take(&mut link.broker_buf);
                            self.broker.handle_bytes(now, conn, &mut buf);
                            if let Some(link) = self.links.get_mut(&l) {
                                link.broker_buf = buf;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !busy {
                break;
            }
        }
        if !batch.is_empty() {
            let latency = self.rng.duration(Duration::ZERO, self.faults.max_store_latency);
            let at = (now + latency).max(self.store.last_commit);
            self.store.last_commit = at;
            let logged = self.wall();
            self.store.pending.push_back((at, logged, batch));
        }
    }

    /// Takes everything client `i` has to say and acts on it.
    fn pump_client(&mut self, i: usize) {
        let now = self.now;
        loop {
            let mut busy = false;
            while let Some(bytes) = self.clients[i].core.poll_transmit(64 * 1024) {
                busy = true;
                if let Some(l) = self.clients[i].link {
                    self.send(l, false, bytes);
                }
            }
            while let Some(ev) = self.clients[i].core.poll_event() {
                busy = true;
                self.clients[i].events.push_back(ev);
            }
            while let Some(command) = self.clients[i].core.poll_command() {
                busy = true;
                match command {
                    ClientCommand::CloseTransport => {
                        if let Some(l) = self.clients[i].link.take() {
                            self.send_end(l, false);
                            if let Some(link) = self.links.get_mut(&l) {
                                link.client_open = false;
                                link.down.chunks.clear();
                            }
                        }
                        self.clients[i].core.handle_closed(now);
                    }
                    ClientCommand::Reconnect => self.dial(i, None),
                    _ => {}
                }
            }
            if !busy {
                break;
            }
        }
    }

    fn trace_line(&mut self, line: String) {
        push_trace(&mut self.trace, self.trace_limit, line);
    }
}

/// What a broker's counters say it dropped of QoS 1 and 2 messages by its limits.
fn drops(stats: &ternmq_core::broker::Stats) -> u64 {
    stats.dropped_queue_full + stats.slow_consumers
}

fn push_trace(trace: &mut VecDeque<String>, limit: usize, line: String) {
    while trace.len() >= limit {
        trace.pop_front();
    }
    trace.push_back(line);
}

/// A time as milliseconds, for traces.
fn ms(t: Instant) -> String {
    let n = t.as_nanos();
    format!("{}.{:03}s", n / 1_000_000_000, (n / 1_000_000) % 1000)
}
