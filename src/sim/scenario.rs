//! A randomised MQTT workload on a [`World`], and the protocol's promises checked against it.
//!
//! From one seed, [`run`] builds a broker and these clients, each MQTT 5 or 3.1.1 at random:
//!
//! - **publishers** with persistent sessions, sending numbered messages at QoS 0, 1 and 2 (one
//!   topic per QoS level, `sim/p{i}/q{qos}`), retained messages (`sim/p{i}/r`) and, in MQTT 5,
//!   messages that expire after a second (`sim/p{i}/x`, retained `sim/p{i}/rx`), some with
//!   automatic topic aliases;
//! - **subscribers**, most with persistent sessions, on wildcard filters of random QoS;
//! - a **shared group** of two members on `$share/g/sim/+/q1`;
//! - a **will client** that crashes, disconnects normally, or disconnects asking for its will,
//!   each time under a new client id `w-{n}` with will payload `w-{n}`; in MQTT 5 with a Will
//!   Delay Interval and a Session Expiry Interval (0, 2 s, 4 s), sometimes coming back under
//!   the same id before or after the delay; and a persistent **watcher** of `will/#`;
//! - an **expiry client** (MQTT 5, Session Expiry Interval 3 s) that goes away for random
//!   times and comes back without clean start.
//!
//! The network misbehaves as [`Faults`] say; the clock jumps. The broker mostly runs in
//! `Durable` mode and restarts from its store now and then, losing what it had not committed;
//! in some runs it runs in `Log` or `Off` mode, without restarts. Then faults stop, everything settles, a fresh client
//! reads the retained messages, and these promises are checked:
//!
//! 1. **QoS 1/2 at least once:** a QoS 1 or 2 message its publisher saw acknowledged reaches
//!    every persistent subscription (whose session was never lost) that was acknowledged before
//!    the message was sent, and at least one member of the shared group.
//! 2. **QoS 2 exactly once, QoS 0 at most once:** no subscriber gets a QoS 2 message twice
//!    (unless its publisher's session was lost while it was in flight) nor a QoS 0 message
//!    twice.
//! 3. **Order:** each subscriber gets each publisher's QoS 1 and QoS 2 messages of a topic in
//!    the order they were published (first copies; a resent copy may come again later).
//! 4. **Matching:** nobody gets a message that matches none of its filters.
//! 5. **Retained:** the retained message of each topic is the last one acknowledged, or one
//!    sent after it.
//! 6. **Wills:** a connection that ended with a normal DISCONNECT never has its will published;
//!    one that ended any other way has it published once the will delay (or the shorter
//!    session) is over, unless a connection with the same client id came back first (unless
//!    the broker restarted meanwhile).
//! 7. **Session expiry:** a session comes back after a gap shorter than its expiry, and not
//!    after a longer one.
//! 8. **Message expiry:** no message is first sent after it expired, and the interval it
//!    carries counts down (the [`World`]'s wire monitor).
//! 9. **Liveness and limits:** after settling every client is connected and has nothing in
//!    flight; client queues and the broker's queues stay within their limits; no packet breaks
//!    the receiver's announced limits (the [`World`]'s wire monitor); nothing panics.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use ternmq_core::broker::persist::Persistence;
use ternmq_core::broker::{BrokerConfig, CloseReason};
use ternmq_core::client::{ClientConfig, DisconnectReason, Event, ReconnectOptions};
use ternmq_core::codec::{
    Connect, Disconnect, MqttStr, ProtocolVersion, Publish, QoS, ReasonCode, Subscription, Will,
};
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

use super::{BrokerNote, ClientNo, Faults, Rng, World};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    /// Everything random comes from this.
    pub seed: u64,
    /// How long the workload runs, with faults.
    pub active: Duration,
    /// How long everything then settles, without faults.
    pub settle: Duration,
    /// The network's and the store's faults while the workload runs.
    pub faults: Faults,
    /// Chance per simulated second that the broker restarts.
    pub broker_restart_per_sec: f64,
    /// Chance per simulated second that the clock jumps forward by up to 8 s.
    pub clock_jump_per_sec: f64,
    /// The broker's configuration (the scenario sets persistence, limits are randomised).
    pub broker: BrokerConfig,
    /// Lines of packet trace kept for the report.
    pub trace_lines: usize,
}

impl ScenarioConfig {
    /// The defaults for `seed`: 20 s of workload with faults, 40 s to settle.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            active: Duration::from_secs(20),
            settle: Duration::from_secs(40),
            faults: Faults::default(),
            broker_restart_per_sec: 0.02,
            clock_jump_per_sec: 0.01,
            broker: BrokerConfig::default(),
            trace_lines: 400,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Broken promises, one line each; empty when the run is clean.
    pub violations: Vec<String>,
    /// The last packets exchanged before the first violation seen while running (or before
    /// the end, for promises checked at the end).
    pub trace: Vec<String>,
    /// Application messages published.
    pub published: u64,
    /// Application messages received.
    pub received: u64,
    /// Broker restarts.
    pub restarts: u32,
}

impl Outcome {
    /// Whether every promise held.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The failure report: the seed, the command that replays it, the violations and the trace.
    pub fn report(&self) -> String {
        let mut s = format!(
            "simulation seed {} broke {} promise(s)\nreplay: {}\n",
            self.seed,
            self.violations.len(),
            replay_command(self.seed)
        );
        for v in self.violations.iter().take(20) {
            s.push_str(&format!("  violation: {v}\n"));
        }
        s.push_str("last packets:\n");
        for line in &self.trace {
            s.push_str(&format!("  {line}\n"));
        }
        s
    }
}

/// The one-line command that replays `seed` exactly.
pub fn replay_command(seed: u64) -> String {
    format!(
        "TERNMQ_SIM_SEED={seed} cargo test --release --test simulation replay_one_seed -- \
         --nocapture"
    )
}

/// A stream of numbered messages: one publisher, one topic, one QoS.
type Stream = (usize, u8);

#[derive(Debug)]
struct Sent {
    seq: u64,
    at: Instant,
    acked: bool,
    /// The publisher's session was lost while this was in flight.
    session_lost: bool,
    /// The publisher sent it again after reconnecting.
    resent: bool,
}

struct Publisher {
    no: ClientNo,
    v5: bool,
    /// Messages with a one-second Message Expiry Interval published (MQTT 5 only).
    expiring: u64,
    sent: BTreeMap<u8, Vec<Sent>>,
    retained: Vec<Sent>,
    /// In-flight packet ids: what they carry.
    pending: BTreeMap<u16, (u8, usize)>,
    connected_once: bool,
}

/// A filter a subscriber holds since its SUBACK, until its session is lost.
#[derive(Debug)]
struct Coverage {
    filter: TopicFilter,
    granted: u8,
    since: Instant,
    broken: bool,
}

struct Subscriber {
    no: ClientNo,
    persistent: bool,
    filters: Vec<(TopicFilter, QoS)>,
    coverage: Vec<Coverage>,
    /// SUBSCRIBE packet id -> index of its first filter.
    asked: BTreeMap<u16, usize>,
    ever: Vec<TopicFilter>,
    /// For a subscriber whose session ends with each connection: the filters granted on the
    /// current connection, cleared at each CONNACK. (A persistent session may hold a filter
    /// whose SUBACK was lost with its connection, so for it the model cannot say.)
    held: Vec<TopicFilter>,
    /// The filters the client restores after a CONNACK without Session Present, in the order
    /// it sends them (its own order, one SUBSCRIBE each), not yet acknowledged.
    restoring: VecDeque<(TopicFilter, QoS)>,
    /// First copies in arrival order, per stream.
    order: BTreeMap<Stream, Vec<u64>>,
    /// Copies received per (stream, seq, delivered QoS).
    counts: BTreeMap<(Stream, u64, u8), u32>,
    connected_once: bool,
}

const PREFIX: &str = "sim";

/// Runs the scenario for `config.seed` and checks every promise. A panic anywhere in the
/// simulated code is reported as a violation.
pub fn run(config: &ScenarioConfig) -> Outcome {
    let config = config.clone();
    let seed = config.seed;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        Run::new(&config).map(Run::go)
    })) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome {
            seed,
            violations: vec![format!("the broker configuration was refused: {e}")],
            trace: Vec::new(),
            published: 0,
            received: 0,
            restarts: 0,
        },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Outcome {
                seed,
                violations: vec![format!("panic: {msg}")],
                trace: Vec::new(),
                published: 0,
                received: 0,
                restarts: 0,
            }
        }
    }
}

struct Run {
    cfg: ScenarioConfig,
    world: World,
    wl: Rng,
    pubs: Vec<Publisher>,
    subs: Vec<Subscriber>,
    group: Vec<usize>,
    will: ClientNo,
    will_n: u32,
    will_v5: bool,
    /// MQTT 5: the will client's Will Delay Interval and Session Expiry Interval, seconds.
    will_delay: u32,
    will_expiry: u32,
    /// The will client comes back under the same client id, without clean start.
    will_same_id: bool,
    /// The will client is offline on purpose until then.
    will_back_at: Option<Instant>,
    watcher: usize,
    expiry: ClientNo,
    expiry_back_at: Option<Instant>,
    wills_seen: BTreeMap<String, u32>,
    violations: Vec<String>,
    /// The packet trace when the first violation was seen during the run.
    failure_trace: Option<Vec<String>>,
    published: u64,
    received: u64,
    client_limit: usize,
}

fn client_config(rng: &mut Rng) -> ClientConfig {
    ClientConfig {
        connack_timeout: Duration::from_secs(5),
        pingresp_timeout: Duration::from_secs(3),
        reconnect: ReconnectOptions {
            enable: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            backoff_multiplier: 2.0,
            jitter: true,
            stable_after: Duration::from_secs(5),
        },
        seed: rng.next_u64(),
        max_queued_messages: 5_000,
        max_queued_bytes: 4 * 1024 * 1024,
        restore_subscriptions: true,
        auto_topic_alias: rng.chance(0.5),
        manual_acks: false,
    }
}

fn connect(id: &str, v5: bool, clean: bool, keep_alive: u16, rng: &mut Rng) -> Connect {
    let protocol = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
    let mut c = Connect::new(protocol, MqttStr::new(id).unwrap_or_default());
    c.clean_start = clean;
    c.keep_alive = keep_alive;
    if v5 {
        c.properties.session_expiry_interval = (!clean).then_some(600);
        c.properties.receive_maximum = std::num::NonZeroU16::new(rng.range(2, 10) as u16);
        c.properties.topic_alias_maximum = Some(rng.range(0, 3) as u16);
    }
    c
}

impl Run {
    fn new(cfg: &ScenarioConfig) -> Result<Self, ternmq_core::broker::ConfigError> {
        let mut wl = Rng::new(cfg.seed ^ 0x51u64.rotate_left(40));
        let mut broker = cfg.broker.clone();
        broker.receive_maximum = wl.range(4, 20) as u16;
        broker.max_inflight_messages = wl.range(2, 20) as u16;
        broker.topic_alias_maximum = wl.range(0, 4) as u16;
        broker.outgoing_topic_aliases = wl.chance(0.5);
        // Small packets: the output limit can then be small enough for a stalled or half-open
        // subscriber to reach it; and in some runs small session queues, so that flow control
        // (withheld acknowledgements, paused publishers, slow consumers) comes into play.
        broker.max_packet_size = 1024;
        broker.max_outbound_bytes = *wl.pick(&[1024, 4096, 4 << 20]).unwrap_or(&(4 << 20));
        broker.max_queued_messages =
            if wl.chance(0.3) { wl.range(10, 50) as usize } else { 10_000 };
        broker.seed = wl.next_u64();
        // Mostly durable, restarted now and then; sometimes without waiting for the store, or
        // without a store, and then not restarted (a restart may lose what was acknowledged).
        let r = wl.range(0, 3);
        broker.persistence = match r {
            0 => Persistence::Log,
            1 => Persistence::Off,
            _ => Persistence::Durable,
        };
        let mut world = World::new(cfg.seed, broker, cfg.faults.clone())?;
        world.set_trace_limit(cfg.trace_lines);

        let mut pubs = Vec::new();
        for i in 0..wl.range(2, 3) as usize {
            let v5 = wl.chance(0.5);
            let c = connect(&format!("p{i}"), v5, false, 5, &mut wl);
            let no = world.add_client(client_config(&mut wl), c);
            pubs.push(Publisher {
                no,
                v5,
                expiring: 0,
                sent: BTreeMap::new(),
                retained: Vec::new(),
                pending: BTreeMap::new(),
                connected_once: false,
            });
        }
        let choices = ["sim/#", "sim/+/q1", "sim/+/q2", "sim/p0/#", "sim/+/q0", "sim/p1/+"];
        let mut subs = Vec::new();
        let mut add_sub = |world: &mut World,
                           wl: &mut Rng,
                           id: String,
                           filters: Vec<(TopicFilter, QoS)>,
                           persistent: bool| {
            let v5 = wl.chance(0.5);
            let mut c = connect(&id, v5, !persistent, 5, wl);
            // The common MQTT 5 form of a session that ends with its connection: Clean Start
            // 0 and no Session Expiry Interval. Its reconnection after a half-open connection
            // takes the old one over, and must not find the old session.
            if v5 && !persistent && wl.chance(0.5) {
                c.clean_start = false;
            }
            let no = world.add_client(client_config(wl), c);
            subs.push(Subscriber {
                no,
                persistent,
                filters,
                coverage: Vec::new(),
                asked: BTreeMap::new(),
                ever: Vec::new(),
                held: Vec::new(),
                restoring: VecDeque::new(),
                order: BTreeMap::new(),
                counts: BTreeMap::new(),
                connected_once: false,
            });
            subs.len() - 1
        };
        for i in 0..wl.range(2, 3) {
            let mut filters = Vec::new();
            for _ in 0..wl.range(1, 2) {
                let f = wl.pick(&choices).copied().unwrap_or("sim/#");
                let qos = QoS::from_u8(wl.range(0, 2) as u8).unwrap_or(QoS::AtLeastOnce);
                // The same filter twice would replace itself: keep the model simple.
                if filters.iter().all(|(g, _): &(TopicFilter, QoS)| g.as_str() != f) {
                    filters.push((TopicFilter::from_static(f), qos));
                }
            }
            let persistent = wl.chance(0.8);
            add_sub(&mut world, &mut wl, format!("s{i}"), filters, persistent);
        }
        let mut group = Vec::new();
        for i in 0..2 {
            let f = vec![(TopicFilter::from_static("$share/g/sim/+/q1"), QoS::AtLeastOnce)];
            group.push(add_sub(&mut world, &mut wl, format!("g{i}"), f, true));
        }
        let f = vec![(TopicFilter::from_static("will/#"), QoS::AtLeastOnce)];
        let watcher = add_sub(&mut world, &mut wl, "watch".to_owned(), f, true);

        let will_v5 = wl.chance(0.5);
        let will_delay = if will_v5 { *wl.pick(&[0, 2]).unwrap_or(&0) } else { 0 };
        let will_expiry = if will_v5 { *wl.pick(&[0, 4]).unwrap_or(&0) } else { 0 };
        let will_conn = will_connect(0, will_v5, will_delay, will_expiry, true);
        let mut will_cfg = client_config(&mut wl);
        will_cfg.reconnect.enable = false;
        let will = world.add_client(will_cfg, will_conn);

        let mut e = connect("exp", true, false, 5, &mut wl);
        e.properties.session_expiry_interval = Some(EXPIRY_SECS);
        let expiry = world.add_client(client_config(&mut wl), e);

        Ok(Self {
            cfg: cfg.clone(),
            world,
            wl,
            pubs,
            subs,
            group,
            will,
            will_n: 0,
            will_v5,
            will_delay,
            will_expiry,
            will_same_id: false,
            will_back_at: None,
            watcher,
            expiry,
            expiry_back_at: None,
            wills_seen: BTreeMap::new(),
            violations: Vec::new(),
            failure_trace: None,
            published: 0,
            received: 0,
            client_limit: 5_000,
        })
    }

    fn go(mut self) -> Outcome {
        let tick = Duration::from_millis(50);
        let end_active = Instant::ZERO + self.cfg.active;
        let mut broker_notes = Vec::new();
        while self.world.now() < end_active {
            self.act(tick);
            self.world.run_for(tick);
            self.drain_events();
            self.drain_notes(&mut broker_notes);
            self.check_limits();
            self.keep_failure_trace();
        }
        // Settle: no faults, no new publishes; clients offline on purpose come back.
        self.world.set_faults(Faults::none());
        let end = end_active + self.cfg.settle;
        while self.world.now() < end {
            self.bring_back();
            self.world.run_for(Duration::from_millis(200));
            self.drain_events();
            self.drain_notes(&mut broker_notes);
            self.check_limits();
            self.keep_failure_trace();
        }
        self.check_end(&broker_notes);
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(self.world.violations().iter().cloned());
        Outcome {
            seed: self.cfg.seed,
            violations,
            trace: self
                .failure_trace
                .take()
                .unwrap_or_else(|| self.world.trace().cloned().collect()),
            published: self.published,
            received: self.received,
            restarts: self.world.restarts(),
        }
    }

    /// One tick of the workload and of the scheduled faults.
    fn act(&mut self, tick: Duration) {
        let secs = tick.as_secs_f64();
        let durable = self.world.broker().config().persistence == Persistence::Durable;
        if durable
            && self.wl.chance(self.cfg.broker_restart_per_sec * secs)
            && let Err(e) = self.world.restart_broker()
        {
            self.violations.push(format!("the broker could not restart: {e}"));
        }
        if self.wl.chance(self.cfg.clock_jump_per_sec * secs) {
            let by = self.wl.duration(Duration::from_millis(500), Duration::from_secs(8));
            self.world.jump(by);
        }
        for p in 0..self.pubs.len() {
            if self.wl.chance(0.3) {
                let qos = self.wl.range(0, 2) as u8;
                self.publish(p, qos, false);
            }
            if self.wl.chance(0.03) {
                self.publish(p, 1, true);
            }
            if self.pubs[p].v5 && self.wl.chance(0.05) {
                let retain = self.wl.chance(0.2);
                self.publish_expiring(p, retain);
            }
        }
        self.will_client();
        self.expiry_client();
        // Now and then a subscriber loses its connection without the broker noticing, and its
        // reconnection takes the half-open one over.
        for s in 0..self.subs.len() {
            let no = self.subs[s].no;
            // Drawn whether or not it applies, so that timing does not shift later draws.
            let abandon = self.wl.chance(0.003);
            if abandon && self.world.client(no).is_connected() {
                self.world.abandon_connection(no);
            }
        }
    }

    fn publish(&mut self, p: usize, qos: u8, retain: bool) {
        let publisher = &self.pubs[p];
        let list_len = if retain {
            publisher.retained.len()
        } else {
            publisher.sent.get(&qos).map_or(0, Vec::len)
        };
        let seq = list_len as u64;
        let (topic, payload) = if retain {
            (format!("{PREFIX}/p{p}/r"), format!("p{p}:r:{seq}"))
        } else {
            (format!("{PREFIX}/p{p}/q{qos}"), format!("p{p}:q{qos}:{seq}"))
        };
        let Ok(name) = TopicName::new(&topic) else { return };
        let mut msg = Publish::new(name, Bytes::from(payload));
        msg.qos = QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce);
        msg.retain = retain;
        let no = publisher.no;
        match self.world.command(no, |c, now| c.publish(now, msg)) {
            Ok(id) => {
                let now = self.world.now();
                let publisher = &mut self.pubs[p];
                let sent = Sent { seq, at: now, acked: false, session_lost: false, resent: false };
                let kind = if retain { u8::MAX } else { qos };
                if retain {
                    publisher.retained.push(sent);
                } else {
                    publisher.sent.entry(qos).or_default().push(sent);
                }
                if let Some(id) = id {
                    publisher.pending.insert(id.get(), (kind, seq as usize));
                }
                self.published += 1;
            }
            Err(e) => {
                // Offline with a full queue: a refused publish is not a sent one.
                let _ = e;
            }
        }
    }

    /// A QoS 1 message that expires one second after the broker has it, on `sim/p{i}/x`
    /// (retained: `sim/p{i}/rx`); the wire monitor checks that it is not delivered later and
    /// that its forwarded interval counts down.
    fn publish_expiring(&mut self, p: usize, retain: bool) {
        let seq = self.pubs[p].expiring;
        let topic = if retain { format!("{PREFIX}/p{p}/rx") } else { format!("{PREFIX}/p{p}/x") };
        let Ok(name) = TopicName::new(&topic) else { return };
        let mut msg = Publish::new(name, Bytes::from(format!("p{p}:x:{seq}")));
        msg.qos = QoS::AtLeastOnce;
        msg.retain = retain;
        msg.properties.message_expiry_interval = Some(1);
        let no = self.pubs[p].no;
        if self.world.command(no, |c, now| c.publish(now, msg)).is_ok() {
            self.pubs[p].expiring += 1;
            self.published += 1;
        }
    }

    fn will_client(&mut self) {
        let now = self.world.now();
        if let Some(at) = self.will_back_at {
            if now >= at {
                self.will_back_at = None;
                self.restart_will();
            }
            return;
        }
        if !self.world.client(self.will).is_connected() {
            return;
        }
        if self.wl.chance(0.02) {
            if self.will_delay > 0 && self.will_expiry > 0 && self.wl.chance(0.5) {
                // Crash, and come back under the same id, before or after the will delay.
                self.world.reset_connection(self.will);
                self.will_same_id = true;
                let gap = self.wl.duration(Duration::from_millis(100), Duration::from_secs(4));
                self.will_back_at = Some(now + gap);
            } else {
                // Crash: no DISCONNECT; the will is due.
                self.restart_will();
            }
        } else if self.wl.chance(0.02) {
            let mut d = Disconnect::default();
            if self.will_v5 && self.wl.chance(0.3) {
                d.reason_code = ReasonCode::DisconnectWithWillMessage;
            }
            self.world.command(self.will, |c, now| c.disconnect(now, d));
            let back = self.wl.duration(Duration::from_millis(100), Duration::from_secs(2));
            self.will_back_at = Some(now + back);
        }
    }

    fn restart_will(&mut self) {
        let same = std::mem::take(&mut self.will_same_id);
        if !same {
            self.will_n += 1;
        }
        let mut cfg = client_config(&mut self.wl);
        cfg.reconnect.enable = false;
        let c = will_connect(self.will_n, self.will_v5, self.will_delay, self.will_expiry, !same);
        self.world.restart_client(self.will, cfg, c);
    }

    fn expiry_client(&mut self) {
        let now = self.world.now();
        if let Some(at) = self.expiry_back_at {
            if now >= at {
                self.expiry_back_at = None;
                self.restart_expiry();
            }
            return;
        }
        if self.world.client(self.expiry).is_connected() && self.wl.chance(0.02) {
            self.world.command(self.expiry, |c, now| c.disconnect(now, Disconnect::default()));
            let gap = self.wl.duration(Duration::from_millis(200), Duration::from_secs(7));
            self.expiry_back_at = Some(now + gap);
        }
    }

    fn restart_expiry(&mut self) {
        let cfg = client_config(&mut self.wl);
        let mut e = connect("exp", true, false, 5, &mut self.wl);
        e.properties.session_expiry_interval = Some(EXPIRY_SECS);
        self.world.restart_client(self.expiry, cfg, e);
    }

    /// During settling: the clients that went away on purpose come back.
    fn bring_back(&mut self) {
        let now = self.world.now();
        if self.will_back_at.is_some_and(|t| t <= now) {
            self.will_back_at = None;
            self.restart_will();
        }
        if self.expiry_back_at.is_some_and(|t| t <= now) {
            self.expiry_back_at = None;
            self.restart_expiry();
        }
    }

    fn drain_events(&mut self) {
        let now = self.world.now();
        for p in 0..self.pubs.len() {
            let no = self.pubs[p].no;
            while let Some(ev) = self.world.poll_event(no) {
                let publisher = &mut self.pubs[p];
                match ev {
                    Event::Published { packet_id, reason_code, .. } => {
                        if let Some((kind, i)) = publisher.pending.remove(&packet_id.get()) {
                            let list = if kind == u8::MAX {
                                Some(&mut publisher.retained)
                            } else {
                                publisher.sent.get_mut(&kind)
                            };
                            if let Some(s) = list.and_then(|l| l.get_mut(i)) {
                                s.acked = !reason_code.is_error();
                            }
                        }
                    }
                    Event::Connected { session_present, .. } => {
                        if publisher.connected_once {
                            // Whatever was in flight is sent again: as a resend with the
                            // session, as new without it (and may then arrive twice).
                            for (kind, i) in publisher.pending.values() {
                                let list = if *kind == u8::MAX {
                                    Some(&mut publisher.retained)
                                } else {
                                    publisher.sent.get_mut(kind)
                                };
                                if let Some(s) = list.and_then(|l| l.get_mut(*i)) {
                                    s.resent = true;
                                    s.session_lost |= !session_present;
                                }
                            }
                        }
                        publisher.connected_once = true;
                    }
                    _ => {}
                }
            }
        }
        for s in 0..self.subs.len() {
            let no = self.subs[s].no;
            while let Some(ev) = self.world.poll_event(no) {
                match ev {
                    Event::Connected { session_present, .. } => {
                        let sub = &mut self.subs[s];
                        if !session_present {
                            for c in &mut sub.coverage {
                                c.broken = true;
                            }
                        }
                        if !sub.persistent && session_present {
                            // Every connection of this client asks for Session Expiry 0 (or
                            // CleanSession 1): its session ends with each connection.
                            self.violations.push(format!(
                                "{} client {:?} was told Session Present 1, but its previous \
                                 session had expiry 0 and ended with its connection",
                                super::ms(now),
                                sub.no
                            ));
                        }
                        sub.held.clear();
                        if !session_present && sub.connected_once {
                            let mut all = sub.filters.clone();
                            all.sort();
                            sub.restoring = all.into();
                        }
                        if !sub.connected_once {
                            sub.connected_once = true;
                            let subs: Vec<Subscription> = sub
                                .filters
                                .iter()
                                .map(|(f, q)| Subscription::new(f.clone(), *q))
                                .collect();
                            if let Ok(id) = self.world.command(no, |c, now| c.subscribe(now, &subs))
                            {
                                let sub = &mut self.subs[s];
                                sub.asked.insert(id.get(), 0);
                                sub.ever.extend(subs.iter().map(|x| x.filter.clone()));
                            }
                        }
                    }
                    Event::Subscribed { packet_id, reason_codes, restored } => {
                        let sub = &mut self.subs[s];
                        if !restored && sub.asked.remove(&packet_id.get()).is_none() {
                            continue;
                        }
                        // A request's codes follow its filters; restored subscriptions come
                        // one a SUBSCRIBE, in the client's order.
                        let filters: Vec<(TopicFilter, QoS)> = if restored {
                            let n = reason_codes.len().min(sub.restoring.len());
                            sub.restoring.drain(..n).collect()
                        } else {
                            sub.filters.clone()
                        };
                        for ((f, _), code) in filters.iter().zip(reason_codes) {
                            if code.is_error() {
                                continue;
                            }
                            sub.held.push(f.clone());
                            sub.coverage.push(Coverage {
                                filter: f.clone(),
                                granted: code as u8,
                                since: now,
                                broken: !sub.persistent,
                            });
                        }
                    }
                    Event::Message(m) => {
                        self.received += 1;
                        self.on_message(s, &m);
                    }
                    _ => {}
                }
            }
        }
        while let Some(ev) = self.world.poll_event(self.will) {
            // The will client does not reconnect by itself: it comes back as a new client.
            if let Event::Disconnected(reason) = ev
                && reason != DisconnectReason::Requested
                && self.will_back_at.is_none()
            {
                self.will_back_at = Some(now + Duration::from_millis(300));
            }
        }
        while self.world.poll_event(self.expiry).is_some() {}
    }

    fn on_message(&mut self, s: usize, m: &Publish) {
        let now = self.world.now();
        let sub = &mut self.subs[s];
        let topic = m.topic.as_str().to_owned();
        if !sub.ever.iter().any(|f| f.matches(&m.topic)) {
            self.violations.push(format!(
                "{} client {:?} got a message on {topic}, which none of its filters match",
                super::ms(now),
                sub.no
            ));
        } else if !sub.persistent && !sub.held.iter().any(|f| f.matches(&m.topic)) {
            self.violations.push(format!(
                "{} client {:?} got a message on {topic}, which no subscription of its current \
                 session matches (a subscription outlived its session)",
                super::ms(now),
                sub.no
            ));
        }
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        if s == self.watcher {
            *self.wills_seen.entry(payload).or_default() += 1;
            return;
        }
        if m.retain || payload.contains(":r:") || payload.contains(":x:") {
            // Retained messages are checked at the end, against the model, not as a stream.
            return;
        }
        let Some((stream, seq)) = parse(&payload) else {
            self.violations.push(format!("client {:?} got an unknown payload {payload:?}", sub.no));
            return;
        };
        let delivered = m.qos as u8;
        let first = !(0..=2u8).any(|q| sub.counts.contains_key(&(stream, seq, q)));
        let count = sub.counts.entry((stream, seq, delivered)).or_default();
        *count += 1;
        if first && stream.1 > 0 {
            sub.order.entry(stream).or_default().push(seq);
        }
        if *count > 1 {
            let lost = self
                .pubs
                .get(stream.0)
                .and_then(|p| p.sent.get(&stream.1))
                .and_then(|l| l.get(seq as usize).map(|x| x.session_lost));
            // A message delivered at QoS 1 may arrive twice (the broker may send it again), and
            // so may a QoS 1 message at any QoS (its publisher may have sent it twice). Any
            // other never may, unless its publisher's session (and with it the broker's memory
            // of it) was lost in between.
            let dup_ok = delivered == 1 || stream.1 == 1 || lost == Some(true);
            if !dup_ok {
                self.violations.push(format!(
                    "{} client {:?} got {payload} (delivered at QoS {delivered}) {} times",
                    super::ms(now),
                    sub.no,
                    count
                ));
            }
        }
    }

    /// Keeps the trace as it is when the first violation shows up, so that the report shows
    /// the packets around it rather than those at the end.
    fn keep_failure_trace(&mut self) {
        let failed = !self.violations.is_empty() || !self.world.violations().is_empty();
        if failed && self.failure_trace.is_none() {
            self.failure_trace = Some(self.world.trace().cloned().collect());
        }
    }

    fn drain_notes(&mut self, notes: &mut Vec<(Instant, BrokerNote)>) {
        while let Some(n) = self.world.poll_broker_note() {
            notes.push(n);
        }
    }

    fn check_limits(&mut self) {
        let now = self.world.now();
        let mut all: Vec<ClientNo> = self.pubs.iter().map(|p| p.no).collect();
        all.extend(self.subs.iter().map(|s| s.no));
        for no in all {
            let c = self.world.client(no);
            if c.queued_len() > self.client_limit {
                self.violations.push(format!(
                    "{} client {no:?} queues {} messages, over its limit {}",
                    super::ms(now),
                    c.queued_len(),
                    self.client_limit
                ));
            }
        }
        let b = self.world.broker();
        let g = b.gauges();
        let conns = g.connections.max(1);
        let per_session =
            b.config().max_queued_messages + conns * usize::from(b.config().receive_maximum);
        if g.queued > g.sessions.max(1) * per_session {
            self.violations.push(format!(
                "{} the broker queues {} messages in {} sessions, over its limits",
                super::ms(now),
                g.queued,
                g.sessions
            ));
        }
    }

    fn check_end(&mut self, notes: &[(Instant, BrokerNote)]) {
        let now = self.world.now();
        let dropped = self.world.dropped();
        // 8. Liveness: everyone that should be connected is, with nothing left in flight.
        let mut all: Vec<ClientNo> = self.pubs.iter().map(|p| p.no).collect();
        all.extend(self.subs.iter().map(|s| s.no));
        for no in all {
            let c = self.world.client(no);
            if !c.is_connected() {
                self.violations.push(format!("client {no:?} is not connected after settling"));
            } else if c.inflight_len() + c.queued_len() > 0 {
                self.violations.push(format!(
                    "client {no:?} still has {} in flight and {} queued after settling",
                    c.inflight_len(),
                    c.queued_len()
                ));
            }
        }
        // 1. At least once (unless the broker had to drop for a full queue).
        if dropped == 0 {
            self.check_at_least_once();
        }
        // 3. Order.
        for sub in &self.subs {
            let shared = sub.filters.iter().any(|(f, _)| f.is_shared());
            if shared {
                continue;
            }
            for (stream, seqs) in &sub.order {
                // A message that arrives after a later one of its stream breaks the order,
                // unless its publisher sent it again (the broker may have routed only the
                // second copy to this subscriber).
                let sent = self.pubs.get(stream.0).and_then(|p| p.sent.get(&stream.1));
                let resent =
                    |seq: u64| sent.and_then(|l| l.get(seq as usize)).is_some_and(|m| m.resent);
                let mut highest = None;
                for &seq in seqs {
                    match highest {
                        Some(h) if seq < h && !resent(seq) => {
                            self.violations.push(format!(
                                "client {:?} got p{}:q{}:{seq} after p{}:q{}:{h}",
                                sub.no, stream.0, stream.1, stream.0, stream.1
                            ));
                            break;
                        }
                        _ => highest = highest.max(Some(seq)),
                    }
                }
            }
        }
        // 5. Retained.
        self.check_retained();
        // 6. Wills; 7. session expiry.
        self.check_wills(notes);
        self.check_expiry(notes);
        let _ = now;
    }

    fn check_at_least_once(&mut self) {
        let mut missing = Vec::new();
        for (p, publisher) in self.pubs.iter().enumerate() {
            for (&qos, list) in &publisher.sent {
                if qos == 0 {
                    continue;
                }
                let Ok(topic) = TopicName::new(&format!("{PREFIX}/p{p}/q{qos}")) else {
                    continue;
                };
                for m in list.iter().filter(|m| m.acked) {
                    let got = |sub: &Subscriber| {
                        (0..=2u8).any(|q| sub.counts.contains_key(&((p, qos), m.seq, q)))
                    };
                    let covers = |sub: &Subscriber| {
                        sub.coverage.iter().any(|c| {
                            !c.broken && c.granted > 0 && c.since < m.at && c.filter.matches(&topic)
                        })
                    };
                    for sub in &self.subs {
                        if self.group.iter().any(|&g| self.subs[g].no == sub.no) {
                            continue;
                        }
                        if covers(sub) && !got(sub) {
                            missing.push(format!(
                                "client {:?} never got p{p}:q{qos}:{} (acknowledged)",
                                sub.no, m.seq
                            ));
                        }
                    }
                    let members: Vec<&Subscriber> =
                        self.group.iter().map(|&g| &self.subs[g]).collect();
                    if qos >= 1
                        && members.iter().all(|s| covers(s))
                        && !members.iter().any(|s| got(s))
                    {
                        missing.push(format!(
                            "no member of the shared group got p{p}:q{qos}:{} (acknowledged)",
                            m.seq
                        ));
                    }
                }
            }
        }
        let n = missing.len();
        self.violations.extend(missing.into_iter().take(5));
        if n > 5 {
            self.violations.push(format!("... and {} more messages never delivered", n - 5));
        }
    }

    fn check_retained(&mut self) {
        let checker = self.world.add_client(
            client_config(&mut self.wl),
            Connect::new(ProtocolVersion::V5, MqttStr::from_static("checker")),
        );
        self.world.run_for(Duration::from_secs(1));
        let sub = Subscription::new(TopicFilter::from_static("sim/+/r"), QoS::AtLeastOnce);
        let _ = self.world.command(checker, |c, now| c.subscribe(now, &[sub]));
        self.world.run_for(Duration::from_secs(2));
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        while let Some(ev) = self.world.poll_event(checker) {
            if let Event::Message(m) = ev {
                got.entry(m.topic.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(&m.payload).into_owned());
            }
        }
        for (p, publisher) in self.pubs.iter().enumerate() {
            let topic = format!("{PREFIX}/p{p}/r");
            let last_acked = publisher.retained.iter().rposition(|s| s.acked);
            let mut ok: BTreeSet<String> = BTreeSet::new();
            let from = last_acked.unwrap_or(0);
            for s in publisher.retained.iter().skip(from) {
                ok.insert(format!("p{p}:r:{}", s.seq));
            }
            let received = got.remove(&topic).unwrap_or_default();
            match (received.as_slice(), last_acked) {
                ([], None) => {}
                ([], Some(i)) => self
                    .violations
                    .push(format!("no retained message on {topic}; p{p}:r:{i} was acknowledged")),
                ([one], _) if ok.contains(one) => {}
                (other, _) => self
                    .violations
                    .push(format!("retained on {topic}: {other:?}; expected one of {ok:?}")),
            }
        }
    }

    /// Wills [MQTT-3.1.2-8] [MQTT-3.1.2-10], with Will Delay Interval and takeover (5.0:
    /// [MQTT-3.1.3-9]): a connection that ends without a normal DISCONNECT has its will
    /// published once the delay (or the session, if shorter) is over, unless a connection with
    /// the same client id is there by then; a normal DISCONNECT discards it.
    fn check_wills(&mut self, notes: &[(Instant, BrokerNote)]) {
        use ternmq_core::broker::Event as B;
        let margin = Duration::from_millis(100);
        let window = if !self.will_v5 || self.will_expiry == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(self.will_delay.min(self.will_expiry)))
        };
        let restarts: Vec<Instant> = notes
            .iter()
            .filter(|(_, n)| matches!(n, BrokerNote::Restarted))
            .map(|(t, _)| *t)
            .collect();
        // Per client id: when it connected, and each end with the connections left live.
        #[derive(Default)]
        struct Timeline {
            connects: Vec<Instant>,
            ends: Vec<(Instant, CloseReason, u32)>,
            live: u32,
            /// A broker restart ended one of its connections (with no event).
            cut: bool,
        }
        let mut lines: BTreeMap<String, Timeline> = BTreeMap::new();
        for (t, n) in notes {
            match n {
                BrokerNote::Restarted => lines.values_mut().for_each(|l| {
                    l.cut |= l.live > 0;
                    l.live = 0;
                }),
                BrokerNote::Event(B::Connected { client_id, .. })
                    if client_id.as_str().starts_with("w-") =>
                {
                    let l = lines.entry(client_id.as_str().to_owned()).or_default();
                    l.connects.push(*t);
                    l.live += 1;
                }
                BrokerNote::Event(B::Disconnected { client_id, reason, .. })
                    if client_id.as_str().starts_with("w-") =>
                {
                    let l = lines.entry(client_id.as_str().to_owned()).or_default();
                    l.live = l.live.saturating_sub(1);
                    let live = l.live;
                    l.ends.push((*t, *reason, live));
                }
                _ => {}
            }
        }
        let watcher = &self.subs[self.watcher];
        for (id, l) in &lines {
            let Some(&first) = l.connects.first() else { continue };
            let watched = watcher.coverage.iter().any(|c| !c.broken && c.since < first);
            let received = self.wills_seen.get(id).copied().unwrap_or(0);
            let (mut due, mut not_due, mut unsure) = (0, 0, false);
            for &(t, reason, live) in &l.ends {
                if restarts.iter().any(|&r| r >= t && r <= t + window + margin) {
                    unsure = true;
                    continue;
                }
                if matches!(reason, CloseReason::ClientDisconnect(ReasonCode::Success)) {
                    not_due += 1;
                    continue;
                }
                if window.is_zero() {
                    due += 1;
                    continue;
                }
                let back = l.connects.iter().find(|&&c| c > t).copied();
                match back {
                    _ if live > 0 => not_due += 1,
                    Some(c) if c + margin < t + window => not_due += 1,
                    Some(c) if c <= t + window + margin => unsure = true,
                    _ => due += 1,
                }
            }
            if unsure {
                continue;
            }
            if due > 0 && received == 0 && watched {
                self.violations.push(format!(
                    "the will of {id} was never published; its connections ended {:?}",
                    l.ends
                ));
            }
            // A restart while a connection was up ends it with no event; the restored session
            // may then publish the will (a crash counts as an abnormal end).
            if due == 0 && received > 0 && !l.cut {
                if not_due > 0 {
                    self.violations.push(format!(
                        "the will of {id} was published ({received}x) though each end of its \
                         connections discarded or deferred it: {:?}",
                        l.ends
                    ));
                } else {
                    self.violations.push(format!(
                        "the will of {id} was published but its connection never ended"
                    ));
                }
            }
        }
    }

    fn check_expiry(&mut self, notes: &[(Instant, BrokerNote)]) {
        let expiry = Duration::from_secs(u64::from(EXPIRY_SECS));
        let margin = Duration::from_millis(50);
        let mut live = 0u32;
        let mut gone_at: Option<Instant> = None;
        for (t, n) in notes {
            match n {
                BrokerNote::Restarted => {
                    live = 0;
                    gone_at = None;
                }
                BrokerNote::Event(ternmq_core::broker::Event::Connected {
                    client_id,
                    session_present,
                    ..
                }) if client_id.as_str() == "exp" => {
                    if live == 0
                        && let Some(g) = gone_at
                    {
                        let gap = t.saturating_duration_since(g);
                        if gap > expiry + margin && *session_present {
                            self.violations.push(format!(
                                "{} session exp came back after {} ms offline; it expires \
                                 after {} ms",
                                super::ms(*t),
                                gap.as_millis(),
                                expiry.as_millis()
                            ));
                        }
                        if gap + margin < expiry && !*session_present {
                            self.violations.push(format!(
                                "{} session exp was lost after {} ms offline; it expires \
                                 after {} ms",
                                super::ms(*t),
                                gap.as_millis(),
                                expiry.as_millis()
                            ));
                        }
                    }
                    live += 1;
                    gone_at = None;
                }
                BrokerNote::Event(ternmq_core::broker::Event::Disconnected {
                    client_id, ..
                }) if client_id.as_str() == "exp" => {
                    live = live.saturating_sub(1);
                    if live == 0 {
                        gone_at = Some(*t);
                    }
                }
                _ => {}
            }
        }
    }
}

const EXPIRY_SECS: u32 = 3;

fn will_connect(n: u32, v5: bool, delay: u32, expiry: u32, clean: bool) -> Connect {
    let protocol = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
    let id = format!("w-{n}");
    let mut c = Connect::new(protocol, MqttStr::new(&id).unwrap_or_default());
    c.keep_alive = 3;
    c.clean_start = clean;
    let mut will = Will {
        topic: TopicName::from_static("will/w"),
        payload: Bytes::from(id),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    if v5 {
        will.properties.will_delay_interval = (delay > 0).then_some(delay);
        c.properties.session_expiry_interval = (expiry > 0).then_some(expiry);
    }
    c.will = Some(will);
    c
}

/// `p{i}:q{qos}:{seq}` into its stream and number.
fn parse(payload: &str) -> Option<(Stream, u64)> {
    let mut parts = payload.split(':');
    let p = parts.next()?.strip_prefix('p')?.parse().ok()?;
    let q = parts.next()?.strip_prefix('q')?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some(((p, q), seq))
}
