//! A simulated bridge: two brokers (an edge and a cloud), each the core's
//! [`Driver`](ternmq_core::broker::driver::Driver) with its sans-IO broker, the edge hosting a
//! [`Bridge`](ternmq_core::bridge::Bridge) to the cloud, and clients on both, joined by a
//! simulated network driven by a virtual clock and one seed.
//!
//! The bridge's link is the one that fails: it is reset at random moments (what was on the
//! wire is lost), its dials fail at random, and every chunk on every link takes a random time.
//! The edge broker keeps its state durably (its store commits after a random delay) and
//! crashes now and then: it restarts from what its store had committed, with the bridge, and
//! every connection to it breaks.
//! A publisher on each side sends QoS 1 and QoS 2 messages on topics the bridge carries (out
//! with prefixes, in with prefixes, and both ways), while subscribers on both sides, whose own
//! links never fail, count what arrives. [`run`] then checks what MQTT and the bridge promise:
//! every message a publisher saw acknowledged reaches the other side, each QoS 2 message
//! exactly once, and nothing arrives that was not published on the other side (no loop).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use ternmq_core::bridge::{BridgeConfig, BridgeTopic, Direction};
use ternmq_core::broker::driver::{Command, Driver};
use ternmq_core::broker::persist::{PersistOp, PersistSeq, Persistence, Replay};
use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::client::{Client, ClientConfig, Command as ClientCommand, Event};
use ternmq_core::codec::{Connect, MqttStr, ProtocolVersion, Publish, QoS, Subscription};
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

use super::Rng;

/// What a run found.
#[derive(Debug, Default)]
pub struct BridgeOutcome {
    /// Messages the publishers saw acknowledged, each way.
    pub acknowledged: usize,
    /// Messages that arrived where they were due.
    pub delivered: usize,
    /// Times the bridge's link was reset.
    pub resets: u32,
    /// Times the edge broker crashed.
    pub crashes: u32,
    /// Broken promises, in words; empty when every promise held.
    pub violations: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Edge,
    Cloud,
}

/// One end of a link: a client, or the edge's bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Near {
    Client(usize),
    Bridge,
}

/// A connection: `near` dialled `side`'s broker, where it is `conn`.
struct Link {
    near: Near,
    side: Side,
    conn: ConnId,
    /// Chunks on their way to the broker, and from it, with when they arrive.
    up: VecDeque<(Instant, Bytes)>,
    down: VecDeque<(Instant, Bytes)>,
}

struct Peer {
    core: Client,
    side: Side,
    link: Option<u32>,
    received: Vec<Publish>,
    /// Packet ids of publishes acknowledged, not yet recorded.
    acked_ids: Vec<u16>,
    /// What was acknowledged: `topic|payload` and QoS.
    acked: Vec<(String, QoS)>,
}

struct Net {
    now: Instant,
    rng: Rng,
    edge: Driver<u32>,
    cloud: Driver<u32>,
    links: BTreeMap<u32, Link>,
    next_link: u32,
    peers: Vec<Peer>,
    resets: u32,
    crashes: u32,
    /// The bridge's link, while open.
    bridge_link: Option<u32>,
    /// The edge's store: what it committed, and batches waiting to be, with when.
    committed: Replay,
    pending: VecDeque<(Instant, Vec<(PersistSeq, PersistOp)>)>,
    edge_config: BrokerConfig,
    bridge_config: BridgeConfig,
}

const EDGE_PUB: usize = 0;
const CLOUD_PUB: usize = 1;
const EDGE_SUB: usize = 2;
const CLOUD_SUB: usize = 3;

fn connect(id: &str) -> Connect {
    let mut c = Connect::new(ProtocolVersion::V5, MqttStr::new(id).unwrap_or_default());
    c.clean_start = false;
    c.keep_alive = 30;
    c.properties.session_expiry_interval = Some(3600);
    c
}

fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> BridgeTopic {
    BridgeTopic::new(pattern, direction, QoS::ExactlyOnce, local, remote)
        .unwrap_or_else(|e| unreachable!("a valid rule: {e}"))
}

impl Net {
    fn driver(&mut self, side: Side) -> &mut Driver<u32> {
        match side {
            Side::Edge => &mut self.edge,
            Side::Cloud => &mut self.cloud,
        }
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.range(50, 5_000))
    }

    /// Opens a link from `near` to `side`'s broker.
    fn open(&mut self, near: Near, side: Side) -> Option<u32> {
        let id = self.next_link;
        self.next_link += 1;
        let now = self.now;
        let conn = self.driver(side).handle_accepted(now, PeerInfo::default(), id).ok()?;
        self.links
            .insert(id, Link { near, side, conn, up: VecDeque::new(), down: VecDeque::new() });
        Some(id)
    }

    /// Client `i`'s link is gone.
    fn client_gone(&mut self, i: usize) {
        self.peers[i].link = None;
        let now = self.now;
        self.peers[i].core.handle_closed(now);
    }

    /// Ends link `id` on both sides at once, losing what was on the wire.
    fn reset(&mut self, id: u32) {
        let Some(link) = self.links.remove(&id) else { return };
        let now = self.now;
        self.driver(link.side).handle_closed(now, link.conn);
        match link.near {
            Near::Client(i) => self.client_gone(i),
            Near::Bridge => {
                self.bridge_link = None;
                self.edge.handle_bridge_closed(now, 0);
            }
        }
    }

    fn dial(&mut self, i: usize) {
        let side = self.peers[i].side;
        if let Some(l) = self.open(Near::Client(i), side) {
            self.peers[i].link = Some(l);
            let _ = self.peers[i].core.reconnect(self.now);
        } else {
            let now = self.now;
            self.peers[i].core.handle_closed(now);
        }
    }

    /// Carries out what both brokers and every client have to do, until nobody has more.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            for side in [Side::Edge, Side::Cloud] {
                while let Some(c) = self.driver(side).poll_command() {
                    busy = true;
                    self.command(side, c);
                }
                while self.driver(side).poll_event().is_some() {}
            }
            for i in 0..self.peers.len() {
                busy |= self.pump_peer(i);
            }
            if !busy {
                return;
            }
        }
    }

    fn command(&mut self, side: Side, command: Command<u32>) {
        let now = self.now;
        match command {
            Command::Write(l, chunks) => {
                let n: usize = chunks.iter().map(Bytes::len).sum();
                let at = now + self.latency();
                if let Some(link) = self.links.get_mut(&l) {
                    let to_broker = link.side != side;
                    for c in chunks {
                        if to_broker {
                            link.up.push_back((at, c))
                        } else {
                            link.down.push_back((at, c))
                        }
                    }
                    let conn = link.conn;
                    if link.side == side {
                        self.driver(side).handle_written(now, conn, n);
                    } else {
                        self.edge.handle_bridge_written(now, 0, n);
                    }
                }
            }
            Command::Close(l) | Command::Abort(l) => self.reset(l),
            Command::Dial { .. } => {
                if self.rng.chance(0.2) {
                    self.edge.handle_bridge_closed(now, 0);
                } else if let Some(l) = self.open(Near::Bridge, Side::Cloud) {
                    self.bridge_link = Some(l);
                    self.edge.handle_bridge_dialed(now, 0, l);
                }
            }
            Command::Persist(batch) => {
                let at = now + Duration::from_micros(self.rng.range(10, 2_000));
                self.pending.push_back((at, batch));
            }
            _ => {}
        }
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
        let store = self.pending.front().map(|(at, _)| *at);
        [wire, clients, store, self.edge.poll_timeout(), self.cloud.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves the clock to `until`, delivering and timing out everything due on the way.
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

    /// The store's wall clock, in milliseconds.
    fn wall(&self) -> u64 {
        1_700_000_000_000 + self.now.as_nanos() / 1_000_000
    }

    /// The edge broker's process dies and starts again from what its store committed; every
    /// connection to it breaks.
    fn crash(&mut self) {
        self.crashes += 1;
        self.pending.clear();
        let now = self.now;
        let gone: Vec<u32> = self
            .links
            .iter()
            .filter(|(_, l)| l.side == Side::Edge || l.near == Near::Bridge)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(link) = self.links.remove(&id) else { continue };
            match link.near {
                Near::Client(i) => self.client_gone(i),
                // The cloud sees the bridge's connection end.
                Near::Bridge => {
                    self.bridge_link = None;
                    self.cloud.handle_closed(now, link.conn);
                }
            }
        }
        let snapshot = self.committed.snapshot(self.wall());
        let broker = Broker::restore(self.edge_config.clone(), snapshot, now)
            .unwrap_or_else(|e| unreachable!("the configuration was valid: {e}"));
        self.edge = Driver::new(broker);
        self.edge.add_bridge(now, self.bridge_config.clone());
    }

    fn step(&mut self) {
        let now = self.now;
        while self.pending.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, batch)) = self.pending.pop_front() else { break };
            let wall = self.wall();
            let last = batch.last().map(|(seq, _)| *seq);
            for (_, op) in batch {
                self.committed.apply(op, wall);
            }
            if let Some(seq) = last {
                self.edge.handle_persisted(now, seq);
            }
            self.pump();
        }
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for id in ids {
            while let Some(link) = self.links.get_mut(&id) {
                let (side, conn, near) = (link.side, link.conn, link.near);
                if link.up.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, b)) = link.up.pop_front() else { break };
                    self.driver(side).handle_bytes(now, conn, BytesMut::from(&b[..]));
                } else if link.down.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, b)) = link.down.pop_front() else { break };
                    match near {
                        Near::Client(i) => {
                            self.peers[i].core.handle_bytes(now, &mut BytesMut::from(&b[..]));
                        }
                        Near::Bridge => {
                            self.edge.handle_bridge_bytes(now, 0, BytesMut::from(&b[..]))
                        }
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
        for side in [Side::Edge, Side::Cloud] {
            if self.driver(side).poll_timeout().is_some_and(|at| at <= now) {
                self.driver(side).handle_timeout(now);
            }
        }
    }
}

/// Runs the bridge scenario with `seed`: `messages` publishes on each side.
pub fn run(seed: u64, messages: usize) -> BridgeOutcome {
    let mut rng = Rng::new(seed);
    let now = Instant::ZERO;
    let config = |rng: &mut Rng| {
        let mut config = BrokerConfig::default();
        config.receive_maximum = u16::try_from(rng.range(4, 64)).unwrap_or(16);
        config
    };
    let mut edge_config = config(&mut rng);
    edge_config.persistence = Persistence::Durable;
    let cloud_config = config(&mut rng);
    let broker = |config: &BrokerConfig| {
        Broker::new(config.clone(), now)
            .unwrap_or_else(|e| unreachable!("a valid configuration: {e}"))
    };
    let (edge_broker, cloud_broker) = (broker(&edge_config), broker(&cloud_config));
    let topics = vec![
        rule("up/#", Direction::Out, "edge/", "cloud/"),
        rule("down/#", Direction::In, "edge/", "cloud/"),
        rule("both/#", Direction::Both, "", ""),
    ];
    let mut bridge_connect = Connect::new(ProtocolVersion::V5, MqttStr::from_static("edge-bridge"));
    bridge_connect.clean_start = false;
    bridge_connect.keep_alive = 10;
    bridge_connect.properties.session_expiry_interval = Some(u32::MAX);
    let mut bridge = BridgeConfig::new("cloud", 1, bridge_connect, topics);
    bridge.client.seed = rng.next_u64();
    bridge.client.reconnect.initial_delay = Duration::from_millis(100);
    bridge.client.reconnect.max_delay = Duration::from_secs(2);
    bridge.window = u16::try_from(rng.range(2, 32)).unwrap_or(8);
    let mut net = Net {
        now,
        rng: rng.fork(),
        edge: Driver::new(edge_broker),
        cloud: Driver::new(cloud_broker),
        links: BTreeMap::new(),
        next_link: 0,
        peers: Vec::new(),
        resets: 0,
        crashes: 0,
        bridge_link: None,
        committed: Replay::default(),
        pending: VecDeque::new(),
        edge_config,
        bridge_config: bridge,
    };
    for (id, side) in [
        ("edge-pub", Side::Edge),
        ("cloud-pub", Side::Cloud),
        ("edge-sub", Side::Edge),
        ("cloud-sub", Side::Cloud),
    ] {
        let config = ClientConfig { seed: rng.next_u64(), ..ClientConfig::default() };
        let mut core = Client::new(config, now);
        let _ = core.connect(now, connect(id));
        net.peers.push(Peer {
            core,
            side,
            link: None,
            received: Vec::new(),
            acked_ids: Vec::new(),
            acked: Vec::new(),
        });
        let i = net.peers.len() - 1;
        let l = net.open(Near::Client(i), side);
        net.peers[i].link = l;
    }
    net.edge.add_bridge(now, net.bridge_config.clone());
    net.run_until(now + Duration::from_secs(2));
    for (i, filter) in [(EDGE_SUB, "#"), (CLOUD_SUB, "#")] {
        let sub = Subscription::new(
            TopicFilter::new(filter).unwrap_or_else(|_| unreachable!()),
            QoS::ExactlyOnce,
        );
        let at = net.now;
        let _ = net.peers[i].core.subscribe(at, &[sub]);
    }
    net.run_until(net.now + Duration::from_secs(1));

    // The load, with the bridge's link reset now and then.
    let mut sent: BTreeMap<(usize, u16), (String, QoS)> = BTreeMap::new();
    let plan: Vec<(usize, &str)> = (0..messages)
        .flat_map(|n| {
            let edge = if n % 2 == 0 { "edge/up/t" } else { "both/e" };
            let cloud = if n % 2 == 0 { "cloud/down/t" } else { "both/c" };
            [(EDGE_PUB, edge), (CLOUD_PUB, cloud)]
        })
        .collect();
    for (n, (i, topic)) in plan.into_iter().enumerate() {
        let qos = if net.rng.chance(0.5) { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let body = format!("m{n}");
        let mut p =
            Publish::new(TopicName::new(topic).unwrap_or_else(|_| unreachable!()), body.clone());
        p.qos = qos;
        let at = net.now;
        if let Ok(Some(id)) = net.peers[i].core.publish(at, p) {
            sent.insert((i, id.get()), (format!("{topic}|{body}"), qos));
        }
        net.pump();
        let gap = Duration::from_micros(net.rng.range(100, 3_000));
        net.run_until(net.now + gap);
        if net.rng.chance(0.03)
            && let Some(l) = net.bridge_link
        {
            net.resets += 1;
            net.reset(l);
        }
        if net.rng.chance(0.005) {
            net.crash();
        }
        record_acks(&mut net, &mut sent);
    }
    // Calm: let everything settle.
    for _ in 0..30 {
        net.run_until(net.now + Duration::from_secs(1));
        record_acks(&mut net, &mut sent);
    }
    check(&net)
}

/// Moves what the publishers saw acknowledged from `sent` to their `acked` lists.
fn record_acks(net: &mut Net, sent: &mut BTreeMap<(usize, u16), (String, QoS)>) {
    for i in [EDGE_PUB, CLOUD_PUB] {
        for id in std::mem::take(&mut net.peers[i].acked_ids) {
            if let Some(entry) = sent.remove(&(i, id)) {
                net.peers[i].acked.push(entry);
            }
        }
    }
}

/// Where a message published on `topic` by `from` must arrive: the subscriber and its topic
/// there.
fn destination(from: usize, topic: &str) -> (usize, String) {
    match (from, topic) {
        (EDGE_PUB, "edge/up/t") => (CLOUD_SUB, "cloud/up/t".into()),
        (CLOUD_PUB, "cloud/down/t") => (EDGE_SUB, "edge/down/t".into()),
        (EDGE_PUB, t) => (CLOUD_SUB, t.into()),
        (_, t) => (EDGE_SUB, t.into()),
    }
}

fn check(net: &Net) -> BridgeOutcome {
    let mut out =
        BridgeOutcome { resets: net.resets, crashes: net.crashes, ..BridgeOutcome::default() };
    let count = |i: usize| {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for p in &net.peers[i].received {
            let key = format!("{}|{}", p.topic, String::from_utf8_lossy(&p.payload));
            *seen.entry(key).or_default() += 1;
        }
        seen
    };
    let seen = [count(EDGE_SUB), count(CLOUD_SUB)];
    let at = |i: usize| if i == EDGE_SUB { &seen[0] } else { &seen[1] };
    for from in [EDGE_PUB, CLOUD_PUB] {
        for (key, qos) in &net.peers[from].acked {
            out.acknowledged += 1;
            let (topic, body) = key.split_once('|').unwrap_or_default();
            let (to, there) = destination(from, topic);
            let n = at(to).get(&format!("{there}|{body}")).copied().unwrap_or(0);
            match (n, qos) {
                (0, _) => {
                    out.violations.push(format!("{key} ({qos:?}) never reached the other side"))
                }
                (1, _) | (_, QoS::AtLeastOnce) => out.delivered += 1,
                (n, _) => out.violations.push(format!("QoS 2 message {key} arrived {n} times")),
            }
            // Its own side sees it once: no loop brings it back. (A QoS 1 message may arrive
            // twice at the edge's subscriber for another reason: the edge crashed before its
            // PUBACK.)
            let home = if from == EDGE_PUB { EDGE_SUB } else { CLOUD_SUB };
            let back = at(home).get(key.as_str()).copied().unwrap_or(0);
            let may_repeat = home == EDGE_SUB && *qos == QoS::AtLeastOnce && net.crashes > 0;
            if back > 1 && !may_repeat {
                out.violations.push(format!("{key} came back to its own side ({back} times)"));
            }
        }
    }
    for (i, wrong) in [(EDGE_SUB, "cloud/"), (CLOUD_SUB, "edge/")] {
        if let Some(k) = at(i).keys().find(|k| k.starts_with(wrong)) {
            out.violations.push(format!("{k} arrived on the wrong side"));
        }
    }
    out
}
