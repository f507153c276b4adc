//! A bridge: this broker as a client of another one, relaying messages both ways. Sans-IO.
//!
//! A [`Bridge`] holds two MQTT client state machines ([`Client`]), both in relay mode
//! ([`ClientConfig::manual_acks`]):
//!
//! - the *local* one is a session of the broker that hosts the bridge, over an in-memory
//!   connection: it subscribes to what goes out, and publishes what comes in. Its session is
//!   persistent (it never expires), so what waits to go out waits in the broker's session, in
//!   the store when persistence is on, like any subscriber's queue;
//! - the *remote* one is a client of the other broker, over a transport the runtime dials
//!   ([`BridgeCommand::Dial`]).
//!
//! A message is acknowledged on the side it came from only once the other side has
//! acknowledged it: the broker keeps an outgoing message until the remote broker took it, and
//! the remote broker keeps an incoming one until this broker took it (durably, when the broker
//! acknowledges only what is stored). Each message crosses under the packet identifier it came
//! with, so that a message sent again after a restart is the same message on the other side: a
//! QoS 2 message is delivered once even if the bridge died halfway through its exchange.
//!
//! Loops: the local subscriptions use No Local (the bridge is not sent what it published
//! itself), and with MQTT 5 so do the remote ones; both keep the RETAIN flag as published.
//!
//! The bridge's host (the broker's [`Driver`](crate::broker::driver::Driver)) moves bytes: it
//! feeds [`handle_local_bytes`](Bridge::handle_local_bytes) with what the broker sent the
//! local session and gives the broker what [`poll_local_transmit`](Bridge::poll_local_transmit)
//! returns; it dials, feeds and writes the remote side likewise; it calls
//! [`handle_timeout`](Bridge::handle_timeout) at [`poll_timeout`](Bridge::poll_timeout) and
//! carries out [`poll_command`](Bridge::poll_command).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::num::{NonZeroU16, NonZeroU32};

use crate::client::{Client, ClientConfig, ClientError, Command, DisconnectReason, Event};
use crate::codec::{
    Connect, ConnectProperties, Disconnect, MqttStr, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Subscription, SubscriptionOptions,
};
use crate::time::{Duration, Instant};
use crate::topic::{TopicFilter, TopicName};

/// Which way a topic rule carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From this broker to the remote one.
    Out,
    /// From the remote broker to this one.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    fn out(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }

    fn into_local(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }
}

/// One topic rule of a bridge, with Mosquitto's meaning: the local topic is `local_prefix` +
/// what `pattern` matches, the remote topic `remote_prefix` + the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeTopic {
    /// Which way.
    pub direction: Direction,
    /// The QoS of the subscriptions that carry it.
    pub qos: QoS,
    local_prefix: String,
    remote_prefix: String,
    local_filter: TopicFilter,
    remote_filter: TopicFilter,
}

impl BridgeTopic {
    /// A rule; the error names what is wrong: a pattern that is no topic filter (or a shared
    /// one), or a prefix with a wildcard.
    pub fn new(
        pattern: &str,
        direction: Direction,
        qos: QoS,
        local_prefix: &str,
        remote_prefix: &str,
    ) -> Result<Self, String> {
        let filter = TopicFilter::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        if filter.is_shared() {
            return Err(format!("pattern {pattern:?}: a shared subscription cannot be bridged"));
        }
        for (key, prefix) in [("local_prefix", local_prefix), ("remote_prefix", remote_prefix)] {
            if prefix.contains(['+', '#']) {
                return Err(format!("{key} {prefix:?} has a wildcard"));
            }
        }
        let local_filter = TopicFilter::new(&format!("{local_prefix}{pattern}"))
            .map_err(|e| format!("local_prefix {local_prefix:?} + pattern {pattern:?}: {e}"))?;
        let remote_filter = TopicFilter::new(&format!("{remote_prefix}{pattern}"))
            .map_err(|e| format!("remote_prefix {remote_prefix:?} + pattern {pattern:?}: {e}"))?;
        Ok(Self {
            direction,
            qos,
            local_prefix: local_prefix.to_string(),
            remote_prefix: remote_prefix.to_string(),
            local_filter,
            remote_filter,
        })
    }

    /// The filter the local session subscribes to.
    pub fn local_filter(&self) -> &TopicFilter {
        &self.local_filter
    }

    /// The filter subscribed to on the remote broker.
    pub fn remote_filter(&self) -> &TopicFilter {
        &self.remote_filter
    }

    /// The remote topic for local `topic`, if this rule carries it out.
    fn to_remote(&self, topic: &TopicName) -> Option<TopicName> {
        if !self.direction.out() || !self.local_filter.matches(topic) {
            return None;
        }
        let rest = topic.as_str().strip_prefix(self.local_prefix.as_str())?;
        TopicName::new(&format!("{}{rest}", self.remote_prefix)).ok()
    }

    /// The local topic for remote `topic`, if this rule carries it in.
    fn to_local(&self, topic: &TopicName) -> Option<TopicName> {
        if !self.direction.into_local() || !self.remote_filter.matches(topic) {
            return None;
        }
        let rest = topic.as_str().strip_prefix(self.remote_prefix.as_str())?;
        TopicName::new(&format!("{}{rest}", self.local_prefix)).ok()
    }
}

/// How a bridge connects and what it carries.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The bridge's name: its local session is `$bridge/<name>`.
    pub name: String,
    /// How many addresses the runtime can dial, tried in order ([`BridgeCommand::Dial`]).
    pub addresses: usize,
    /// The CONNECT sent to the remote broker: protocol version, client id, clean start, keep
    /// alive, credentials.
    pub connect: Connect,
    /// The topic rules.
    pub topics: Vec<BridgeTopic>,
    /// The remote client's timers, reconnect backoff (with jitter from its seed) and queue.
    pub client: ClientConfig,
    /// How many QoS 1 and 2 messages the broker may hand the bridge before the remote broker
    /// acknowledged them (the local session's Receive Maximum).
    pub window: u16,
    /// MQTT 3.1.1: send Mosquitto's bridge flag (the protocol level's top bit), so that the
    /// remote broker sends none of the bridge's own messages back; without it when the remote
    /// broker refuses it. Mosquitto's `try_private`.
    pub try_private: bool,
}

impl BridgeConfig {
    /// A bridge named `name` to `addresses` addresses, sending `connect`, carrying `topics`.
    pub fn new(name: &str, addresses: usize, connect: Connect, topics: Vec<BridgeTopic>) -> Self {
        Self {
            name: name.to_string(),
            addresses,
            connect,
            topics,
            client: ClientConfig { manual_acks: true, ..ClientConfig::default() },
            window: 256,
            try_private: true,
        }
    }

    /// The local session's client id.
    pub fn local_client_id(&self) -> String {
        format!("{LOCAL_PREFIX}{}", self.name)
    }
}

/// What local client ids of bridges start with.
pub const LOCAL_PREFIX: &str = "$bridge/";

/// What the host must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BridgeCommand {
    /// Open a transport to address `address` (an index into the host's list), then call
    /// [`Bridge::handle_remote_connected`], or [`Bridge::handle_remote_closed`] if it cannot.
    Dial {
        /// Which address.
        address: usize,
    },
    /// Close the remote transport (after writing what was polled), then call
    /// [`Bridge::handle_remote_closed`].
    CloseRemote,
    /// Connect the local session (again): open an in-memory connection to the broker, then call
    /// [`Bridge::handle_local_connected`].
    AttachLocal,
    /// Close the local connection (after giving the broker what was polled).
    CloseLocal,
}

/// What happened, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeEvent {
    /// Connected to the remote broker at address `address`.
    Connected {
        /// Which address.
        address: usize,
        /// Whether the remote broker resumed the bridge's session.
        session_present: bool,
    },
    /// The remote broker refused the bridge; it tries again after the longest backoff.
    Refused {
        /// Which address.
        address: usize,
        /// Its reason code.
        reason_code: ReasonCode,
    },
    /// The connection to the remote broker ended, or could not be made.
    Disconnected {
        /// Which address.
        address: usize,
        /// Why, in words.
        reason: String,
    },
    /// A message was dropped: no rule maps its topic, or the other side refused it.
    Dropped {
        /// Its topic, as it came.
        topic: String,
        /// Why, in words.
        reason: String,
    },
}

/// A bridge's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Whether the remote connection is up.
    pub connected: bool,
    /// Messages waiting to go to the remote broker, in the bridge (the rest wait in the
    /// broker's session).
    pub queued: usize,
    /// Messages sent to the remote broker and not yet acknowledged.
    pub inflight: usize,
    /// Messages sent to the remote broker.
    pub sent: u64,
    /// Messages received from the remote broker.
    pub received: u64,
    /// Messages dropped.
    pub dropped: u64,
}

/// Where an outgoing QoS 2 message stands on the remote side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// QoS 1, waiting for PUBACK.
    AtLeastOnce,
    /// QoS 2, waiting for PUBREC.
    Sent,
    /// QoS 2, the remote received it (PUBREC relayed to the broker).
    Received,
    /// QoS 2, the remote refused it: acknowledged to the broker, finished at its PUBREL.
    Refused,
}

/// A bridge. See the [module documentation](self).
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    local: Client,
    remote: Client,
    /// The address dialled last, or being dialled.
    address: usize,
    /// Whether a transport to the remote broker is open (dialled and not yet closed).
    remote_open: bool,
    /// Whether the remote connection was accepted since it was last dialled.
    remote_was_up: bool,
    /// After a refusal that the client gives up on, or a failed first connection: when to try
    /// again.
    retry_at: Option<Instant>,
    /// Failed attempts before the first connection.
    failures: u32,
    /// Whether to send the 3.1.1 bridge flag (until a broker refuses it).
    private: bool,
    /// The next CONNECT is made again from the configuration (the bridge flag changed).
    fresh_connect: bool,
    /// The retry goes to the same address.
    retry_same: bool,
    /// Outgoing QoS 1/2 messages by the broker's packet id.
    out: BTreeMap<u16, Out>,
    /// Incoming QoS 1/2 messages by the remote's packet id, with their QoS.
    incoming: BTreeMap<u16, QoS>,
    /// Messages whose packet id the receiving client uses for a SUBSCRIBE right now.
    parked_out: VecDeque<Publish>,
    parked_in: VecDeque<Publish>,
    commands: VecDeque<BridgeCommand>,
    events: VecDeque<BridgeEvent>,
    stats: BridgeStats,
}

impl Bridge {
    /// A bridge that has not started: call [`start`](Self::start).
    pub fn new(config: BridgeConfig, now: Instant) -> Self {
        let local_config = ClientConfig {
            manual_acks: true,
            reconnect: crate::client::ReconnectOptions {
                jitter: false,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(5),
                ..crate::client::ReconnectOptions::default()
            },
            restore_subscriptions: false,
            ..ClientConfig::default()
        };
        let private = config.try_private;
        let remote_config = ClientConfig {
            manual_acks: true,
            restore_subscriptions: false,
            ..config.client.clone()
        };
        Self {
            local: Client::new(local_config, now),
            remote: Client::new(remote_config, now),
            config,
            address: 0,
            remote_open: false,
            remote_was_up: false,
            retry_at: None,
            failures: 0,
            private,
            fresh_connect: false,
            retry_same: false,
            out: BTreeMap::new(),
            incoming: BTreeMap::new(),
            parked_out: VecDeque::new(),
            parked_in: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: BridgeStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The figures now.
    pub fn stats(&self) -> BridgeStats {
        BridgeStats {
            connected: self.remote.is_connected(),
            queued: self.remote.queued_len() + self.parked_out.len(),
            inflight: self.remote.inflight_len(),
            ..self.stats
        }
    }

    /// Starts: attach the local session, dial the first address.
    pub fn start(&mut self) {
        self.commands.push_back(BridgeCommand::AttachLocal);
        self.dial(0);
    }

    /// Stops: disconnects from the remote broker (its session stays, as configured).
    pub fn stop(&mut self, now: Instant) {
        self.retry_at = None;
        self.remote.disconnect(now, Disconnect::default());
        self.local.disconnect(now, Disconnect::default());
        self.drain(now);
    }

    fn dial(&mut self, address: usize) {
        self.address = address % self.config.addresses.max(1);
        self.remote_open = true;
        self.remote_was_up = false;
        self.commands.push_back(BridgeCommand::Dial { address: self.address });
    }

    // ------------------------------------------------------------ the local side

    /// The in-memory connection to the broker is open: the local session connects.
    pub fn handle_local_connected(&mut self, now: Instant) {
        let result = if self.local.protocol().is_some() {
            self.local.reconnect(now)
        } else {
            let connect = Connect {
                protocol: ProtocolVersion::V5,
                clean_start: false,
                keep_alive: 0,
                client_id: MqttStr::new(&self.config.local_client_id())
                    .unwrap_or_else(|_| MqttStr::from_static("$bridge/")),
                will: None,
                username: None,
                password: None,
                properties: ConnectProperties {
                    session_expiry_interval: Some(u32::MAX),
                    receive_maximum: NonZeroU16::new(self.config.window.max(1)),
                    maximum_packet_size: NonZeroU32::new(crate::codec::MAX_PACKET_SIZE),
                    ..ConnectProperties::default()
                },
                bridge: false,
            };
            self.local.connect(now, connect)
        };
        if result.is_err() {
            self.commands.push_back(BridgeCommand::CloseLocal);
        }
        self.drain(now);
    }

    /// What the broker sent the local session.
    pub fn handle_local_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        self.local.handle_bytes(now, buf);
        self.drain(now);
    }

    /// The broker closed the local connection (an operator's kick, say): it is attached
    /// again shortly.
    pub fn handle_local_closed(&mut self, now: Instant) {
        self.local.handle_closed(now);
        self.drain(now);
    }

    /// Bytes for the broker, from the local session.
    pub fn poll_local_transmit(&mut self) -> Option<Bytes> {
        self.local.poll_transmit(usize::MAX)
    }

    // ------------------------------------------------------------ the remote side

    /// The transport to the remote broker is up: CONNECT goes out.
    pub fn handle_remote_connected(&mut self, now: Instant) {
        let result = if self.remote.protocol().is_some() && !self.fresh_connect {
            self.remote.reconnect(now)
        } else {
            self.fresh_connect = false;
            let mut connect = self.config.connect.clone();
            // MQTT 3.1.1: Mosquitto's bridge flag, while the remote broker takes it.
            connect.bridge = self.private && !connect.protocol.is_v5();
            if connect.protocol.is_v5() && connect.properties.receive_maximum.is_none() {
                // The remote broker sends at most a window of messages the broker here has
                // not yet taken.
                connect.properties.receive_maximum = NonZeroU16::new(self.config.window.max(1));
            }
            self.remote.connect(now, connect)
        };
        if let Err(e) = result {
            self.events.push_back(BridgeEvent::Disconnected {
                address: self.address,
                reason: format!("cannot connect: {e}"),
            });
            self.commands.push_back(BridgeCommand::CloseRemote);
        }
        self.drain(now);
    }

    /// Bytes from the remote broker.
    pub fn handle_remote_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        self.remote.handle_bytes(now, buf);
        self.drain(now);
    }

    /// The remote transport closed, or could not be opened.
    pub fn handle_remote_closed(&mut self, now: Instant) {
        if !self.remote_open {
            return;
        }
        self.remote_open = false;
        if self.remote.protocol().is_none() {
            // Never connected, so the client has no schedule yet: the bridge keeps one until
            // the first connection, trying the next address each time.
            let r = &self.config.client.reconnect;
            let factor = 1u32 << self.failures.min(16);
            let delay = r.initial_delay.saturating_mul(factor).min(r.max_delay);
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now + delay);
        }
        self.remote.handle_closed(now);
        self.drain(now);
    }

    /// Bytes for the remote broker.
    pub fn poll_remote_transmit(&mut self) -> Option<Bytes> {
        self.remote.poll_transmit(usize::MAX)
    }

    // ------------------------------------------------------------ time and output

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.local.poll_timeout(), self.remote.poll_timeout(), self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Keep-alive, reconnect and retry timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.local.handle_timeout(now);
        self.remote.handle_timeout(now);
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            if !self.remote_open {
                let next = if self.retry_same { self.address } else { self.address + 1 };
                self.retry_same = false;
                self.dial(next);
            }
        }
        self.drain(now);
    }

    /// The next thing to do.
    pub fn poll_command(&mut self) -> Option<BridgeCommand> {
        self.commands.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    /// Handles what both clients reported until neither has more.
    fn drain(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(event) = self.local.poll_event() {
                progress = true;
                self.on_local(now, event);
            }
            while let Some(event) = self.remote.poll_event() {
                progress = true;
                self.on_remote(now, event);
            }
            while let Some(command) = self.local.poll_command() {
                progress = true;
                self.commands.push_back(match command {
                    Command::Reconnect => BridgeCommand::AttachLocal,
                    _ => BridgeCommand::CloseLocal,
                });
            }
            while let Some(command) = self.remote.poll_command() {
                progress = true;
                match command {
                    Command::Reconnect => {
                        // After a connection that worked, the first address again; after a
                        // failure, the next one.
                        let next = if self.remote_was_up { 0 } else { self.address + 1 };
                        self.dial(next);
                    }
                    _ => self.commands.push_back(BridgeCommand::CloseRemote),
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// The subscriptions that carry the rules `carries` selects, each filter (`filter` picks
    /// the side's) once, with No Local and Retain As Published where the protocol has them
    /// (`v5`), and Retain Handling 1: subscribing again after a restart does not send the
    /// retained messages again.
    fn subscriptions(
        &self,
        carries: fn(Direction) -> bool,
        filter: fn(&BridgeTopic) -> &TopicFilter,
        v5: bool,
    ) -> Vec<Subscription> {
        let mut subs: Vec<Subscription> = Vec::new();
        for rule in self.config.topics.iter().filter(|r| carries(r.direction)) {
            if subs.iter().any(|s| &s.filter == filter(rule)) {
                continue;
            }
            let options = if v5 {
                SubscriptionOptions {
                    qos: rule.qos,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendOnNewSubscribe,
                }
            } else {
                SubscriptionOptions::qos(rule.qos)
            };
            subs.push(Subscription { filter: filter(rule).clone(), options });
        }
        subs
    }

    /// The local session's subscriptions: what goes out (always MQTT 5).
    fn local_subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions(Direction::out, BridgeTopic::local_filter, true)
    }

    /// The subscriptions on the remote broker: what comes in.
    fn remote_subscriptions(&self) -> Vec<Subscription> {
        let v5 = self.config.connect.protocol.is_v5();
        self.subscriptions(Direction::into_local, BridgeTopic::remote_filter, v5)
    }

    fn on_local(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected { .. } => {
                let subs = self.local_subscriptions();
                if !subs.is_empty() {
                    let _ = self.local.subscribe(now, &subs);
                }
                self.unpark_in(now);
            }
            Event::Message(p) => self.relay_out(now, p),
            // The broker took a message from the remote broker.
            Event::Published { packet_id, reason_code, .. } => {
                match self.incoming.remove(&packet_id.get()) {
                    Some(QoS::ExactlyOnce) if !reason_code.is_error() => {
                        self.remote.complete(now, packet_id);
                    }
                    Some(qos) => {
                        if reason_code.is_error() {
                            self.stats.dropped += 1;
                        }
                        self.remote.acknowledge(now, packet_id, qos, reason_code);
                    }
                    None => self.remote.complete(now, packet_id),
                }
            }
            Event::Received { packet_id } => {
                self.remote.acknowledge(now, packet_id, QoS::ExactlyOnce, ReasonCode::Success);
            }
            Event::Released { packet_id } => match self.out.get(&packet_id.get()) {
                Some(Out::Refused) => {
                    self.out.remove(&packet_id.get());
                    self.local.complete(now, packet_id);
                }
                _ => {
                    self.out.insert(packet_id.get(), Out::Received);
                    self.remote.release(now, packet_id);
                }
            },
            Event::Subscribed { .. } | Event::Unsubscribed { .. } => self.unpark_in(now),
            _ => {}
        }
    }

    fn on_remote(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected { session_present, .. } => {
                self.remote_was_up = true;
                self.failures = 0;
                self.events
                    .push_back(BridgeEvent::Connected { address: self.address, session_present });
                let subs = self.remote_subscriptions();
                if !subs.is_empty() && (self.config.connect.protocol.is_v5() || !session_present) {
                    let _ = self.remote.subscribe(now, &subs);
                }
                self.unpark_out(now);
                self.unpark_in(now);
            }
            Event::ConnectionRefused { reason_code, .. } => {
                if self.private && reason_code == ReasonCode::UnsupportedProtocolVersion {
                    // A 3.1.1 broker that does not take the bridge flag: at once without it.
                    self.private = false;
                    self.fresh_connect = true;
                    self.retry_same = true;
                    self.retry_at = Some(now);
                    return;
                }
                self.events.push_back(BridgeEvent::Refused { address: self.address, reason_code });
                if self.remote.is_stopped() {
                    // The client gives up on a refusal it cannot fix by retrying (bad
                    // credentials): the bridge still tries, after the longest backoff.
                    self.retry_at = Some(now + self.config.client.reconnect.max_delay);
                }
            }
            Event::Disconnected(reason) if self.remote_was_up => {
                self.events.push_back(BridgeEvent::Disconnected {
                    address: self.address,
                    reason: reason_words(&reason),
                });
            }
            Event::Message(p) => {
                self.stats.received += 1;
                self.relay_in(now, p);
            }
            Event::Published { packet_id, reason_code, .. } => {
                let id = packet_id.get();
                match self.out.remove(&id) {
                    Some(Out::AtLeastOnce) => {
                        if reason_code.is_error() {
                            self.stats.dropped += 1;
                        }
                        self.local.acknowledge(
                            now,
                            packet_id,
                            QoS::AtLeastOnce,
                            ReasonCode::Success,
                        );
                    }
                    Some(Out::Sent) => {
                        // A PUBREC with an error: the remote broker refused it.
                        self.stats.dropped += 1;
                        self.out.insert(id, Out::Refused);
                        self.local.acknowledge(
                            now,
                            packet_id,
                            QoS::ExactlyOnce,
                            ReasonCode::Success,
                        );
                    }
                    Some(Out::Refused) => {
                        self.out.insert(id, Out::Refused);
                    }
                    Some(Out::Received) | None => self.local.complete(now, packet_id),
                }
            }
            Event::Received { packet_id } => {
                self.out.insert(packet_id.get(), Out::Received);
                self.local.acknowledge(now, packet_id, QoS::ExactlyOnce, ReasonCode::Success);
            }
            Event::Released { packet_id } => self.local.release(now, packet_id),
            Event::Subscribed { .. } | Event::Unsubscribed { .. } => self.unpark_out(now),
            _ => {}
        }
    }

    /// A message from the broker, for the remote broker.
    fn relay_out(&mut self, now: Instant, mut p: Publish) {
        let Some(topic) = self.config.topics.iter().find_map(|r| r.to_remote(&p.topic)) else {
            self.drop_message(now, p, "no out rule maps its topic", true);
            return;
        };
        p.topic = topic;
        clean(&mut p);
        self.send_out(now, p);
    }

    fn send_out(&mut self, now: Instant, p: Publish) {
        let ack = p.packet_id.map(|id| (id, p.qos));
        match self.remote.publish_as(now, p.clone()) {
            Ok(()) => {
                self.stats.sent += 1;
                if let Some((id, qos)) = ack {
                    let state = if qos == QoS::ExactlyOnce { Out::Sent } else { Out::AtLeastOnce };
                    self.out.insert(id.get(), state);
                }
            }
            Err(ClientError::PacketIdInUse(_)) => self.parked_out.push_back(p),
            Err(e) => self.drop_message(now, p, &e.to_string(), true),
        }
    }

    /// A message from the remote broker, for the broker.
    fn relay_in(&mut self, now: Instant, mut p: Publish) {
        let Some(topic) = self.config.topics.iter().find_map(|r| r.to_local(&p.topic)) else {
            self.drop_message(now, p, "no in rule maps its topic", false);
            return;
        };
        p.topic = topic;
        clean(&mut p);
        self.send_in(now, p);
    }

    fn send_in(&mut self, now: Instant, p: Publish) {
        let ack = p.packet_id.map(|id| (id, p.qos));
        match self.local.publish_as(now, p.clone()) {
            Ok(()) => {
                if let Some((id, qos)) = ack {
                    self.incoming.insert(id.get(), qos);
                }
            }
            Err(ClientError::PacketIdInUse(_)) => self.parked_in.push_back(p),
            Err(e) => self.drop_message(now, p, &e.to_string(), false),
        }
    }

    fn unpark_out(&mut self, now: Instant) {
        for p in core::mem::take(&mut self.parked_out) {
            self.send_out(now, p);
        }
    }

    fn unpark_in(&mut self, now: Instant) {
        for p in core::mem::take(&mut self.parked_in) {
            self.send_in(now, p);
        }
    }

    /// Drops `p`, acknowledging it where it came from (`outgoing`: the broker) so that it is
    /// not sent again.
    fn drop_message(&mut self, now: Instant, p: Publish, why: &str, outgoing: bool) {
        self.stats.dropped += 1;
        self.events.push_back(BridgeEvent::Dropped {
            topic: p.topic.as_str().to_string(),
            reason: why.to_string(),
        });
        let Some(id) = p.packet_id else { return };
        let (from, qos) =
            if outgoing { (&mut self.local, p.qos) } else { (&mut self.remote, p.qos) };
        if outgoing && qos == QoS::ExactlyOnce {
            self.out.insert(id.get(), Out::Refused);
        }
        from.acknowledge(now, id, qos, ReasonCode::Success);
    }
}

/// What a relayed message must not carry: the receiving connection's subscription ids and
/// topic alias belong to the connection it came on.
fn clean(p: &mut Publish) {
    p.properties.subscription_identifiers.clear();
    p.properties.topic_alias = None;
    if p.qos == QoS::AtMostOnce {
        p.packet_id = None;
    }
}

fn reason_words(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::Requested => "stopped".to_string(),
        DisconnectReason::TransportClosed => "the connection closed".to_string(),
        DisconnectReason::Server { reason_code, .. } => {
            format!("the remote broker disconnected: {reason_code:?}")
        }
        DisconnectReason::ConnAckTimeout => "no CONNACK in time".to_string(),
        DisconnectReason::KeepAliveTimeout => "no PINGRESP in time".to_string(),
        DisconnectReason::ProtocolViolation(code) => format!("protocol violation: {code:?}"),
        DisconnectReason::Decode(e) => format!("undecodable input: {e}"),
        DisconnectReason::AuthenticationAbandoned => "authentication abandoned".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_map_topics_like_mosquitto() {
        let r = BridgeTopic::new("sensors/#", Direction::Both, QoS::AtLeastOnce, "l/", "r/")
            .expect("rule");
        let t = |s: &str| TopicName::new(s).expect("topic");
        assert_eq!(r.local_filter().as_str(), "l/sensors/#");
        assert_eq!(r.remote_filter().as_str(), "r/sensors/#");
        assert_eq!(r.to_remote(&t("l/sensors/a")), Some(t("r/sensors/a")));
        assert_eq!(r.to_local(&t("r/sensors/a/b")), Some(t("l/sensors/a/b")));
        assert_eq!(r.to_remote(&t("sensors/a")), None);
        let out = BridgeTopic::new("x", Direction::Out, QoS::AtMostOnce, "", "").expect("rule");
        assert_eq!(out.to_local(&t("x")), None);
        assert!(BridgeTopic::new("a/#", Direction::Out, QoS::AtMostOnce, "+/", "").is_err());
        assert!(BridgeTopic::new("a/#/b", Direction::Out, QoS::AtMostOnce, "", "").is_err());
        assert!(BridgeTopic::new("$share/g/a", Direction::In, QoS::AtMostOnce, "", "").is_err());
    }
}
