//! The broker state machine: every connection, session, subscription, retained message and
//! will, driven by bytes in, bytes out and the caller's clock.
//!
//! # The run loop
//!
//! An adapter owns the sockets and one [`Broker`]:
//!
//! 1. a new transport: [`Broker::accept`] gives it a [`ConnId`];
//! 2. bytes read: [`Broker::handle_bytes`]; end of stream or error: [`Broker::handle_closed`];
//! 3. the deadline from [`Broker::poll_timeout`] passed: [`Broker::handle_timeout`];
//! 4. after any input, drain the output: [`Broker::poll_writable`] names connections with
//!    bytes waiting, [`Broker::poll_transmit`] hands them out, then [`Broker::poll_timeout`]
//!    and [`Broker::poll_event`]. [`Event::CloseTransport`] asks the adapter to write what is
//!    left for that connection, close it, and then call [`Broker::handle_closed`].
//!
//! ```
//! use bytes::BytesMut;
//! use ternmq_core::broker::{Broker, BrokerConfig, PeerInfo};
//! use ternmq_core::time::Instant;
//!
//! let now = Instant::ZERO;
//! let mut broker = Broker::new(BrokerConfig::default(), now).unwrap();
//! let conn = broker.accept(now, PeerInfo::default()).unwrap();
//! // CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id "a".
//! let mut input = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a"[..]);
//! broker.handle_bytes(now, conn, &mut input);
//! assert_eq!(broker.poll_writable(), Some(conn));
//! assert_eq!(&broker.poll_transmit(conn, 1024).unwrap()[..], b"\x20\x02\x00\x00"); // CONNACK
//! ```
//!
//! # Choices the specification leaves open
//!
//! - **Overlapping subscriptions** of one session deliver one copy, at the highest QoS granted
//!   among them, carrying every matching Subscription Identifier ([MQTT-3.3.4-2],
//!   [MQTT-3.3.4-4]). Its RETAIN flag is kept if any of them has Retain As Published.
//! - **Full queues.** A message for a session whose queue holds `max_queued_messages` messages
//!   or `max_queued_bytes` bytes is dropped, whatever its QoS, and counted in
//!   [`Stats::dropped_queue_full`]. A connection with more than `max_outbound_bytes` unwritten
//!   loses new QoS 0 messages ([`Stats::dropped_slow_consumer`]); its QoS 1 and 2 messages wait
//!   in the session queue. Control packets are never dropped. A live subscriber with more than
//!   64 KiB unwritten pauses the QoS 0 publisher feeding it ([`Event::PauseInput`]) until its
//!   output is written, so it loses nothing while it keeps reading.
//! - **QoS 2 inbound** is delivered onward when the PUBLISH arrives; the packet identifier is
//!   then held until PUBREL so that a resent PUBLISH is not delivered twice.
//! - **Shared subscriptions** pick a member per [`SharedPolicy`], preferring members that are
//!   connected with room in their window. When every member is offline the message is queued
//!   for the member whose turn it is, so it is not lost while sessions last.

mod config;
pub mod driver;
pub mod persist;
mod session;
mod tree;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::num::NonZeroU16;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{
    Action, AuthDecision, AuthRequest, AuthStage, Authenticator, Authorizer, AuthzDecision,
    BrokerConfig, ClientInfo, ConfigError, MIN_MAX_PACKET_SIZE, PeerInfo, SharedPolicy,
};
use persist::{PersistOp, PersistSeq};
use session::{Delivery, Inflight, Message, OutAliases, OutState, ParkedAck, PendingWill, Session};
use tree::{Entry, GroupRef, SubTree};

use crate::codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Disconnect, Encoder, MAX_PACKET_SIZE, MqttStr, Packet, PacketId, PayloadFormat,
    ProtocolVersion, PubAck, Publish, PublishProperties, PublishRef, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::time::{Duration, Instant};
use crate::topic::{TopicFilter, TopicName};

/// A connection, as the broker names it: a slot index and a generation, so that an id kept
/// after its connection closed is recognised as stale.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// The slot index: small and dense, usable to index an adapter's own table.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

/// Names a deferred authentication, answered with [`Broker::resolve_auth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthTicket(u64);

/// Why [`Broker::accept`] refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcceptError {
    /// `max_connections` are open.
    TooManyConnections,
}

impl fmt::Display for AcceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyConnections => f.write_str("too many connections"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for AcceptError {}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason code.
    ClientDisconnect(ReasonCode),
    /// The transport closed without a DISCONNECT.
    TransportClosed,
    /// The broker closed the connection: a protocol violation, a refused CONNECT, a timeout, a
    /// takeover or a shutdown, with the reason code that says which.
    Server(ReasonCode),
}

/// Something the adapter or the application may want to know.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A client connected (CONNACK 0x00 sent).
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier (assigned by the broker if the client sent none).
        client_id: MqttStr,
        /// Its protocol version.
        protocol: ProtocolVersion,
        /// Whether an existing session was resumed.
        session_present: bool,
    },
    /// A connection was refused before it was accepted (a CONNACK >= 0x80, or a close without
    /// one).
    Refused {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: ReasonCode,
    },
    /// A connected client's connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier.
        client_id: MqttStr,
        /// Why.
        reason: CloseReason,
    },
    /// Write what [`Broker::poll_transmit`] still has for this connection, close the transport,
    /// then call [`Broker::handle_closed`].
    CloseTransport(ConnId),
    /// An authenticator answered [`AuthDecision::Defer`]: decide, then call
    /// [`Broker::resolve_auth`] with the ticket.
    AuthRequired {
        /// Names this request.
        ticket: AuthTicket,
        /// The connection waiting.
        conn: ConnId,
        /// What to decide on.
        request: AuthRequest,
    },
    /// A disconnected session reached its expiry and was discarded.
    SessionExpired {
        /// Its client identifier.
        client_id: MqttStr,
    },
    /// Stop reading from this connection: what it publishes is more than a live subscriber can
    /// take. Bytes already read may still be passed to [`Broker::handle_bytes`]; the broker
    /// leaves them in the buffer until [`Event::ResumeInput`].
    PauseInput(ConnId),
    /// Read from this connection again, and first pass the bytes left in its buffer to
    /// [`Broker::handle_bytes`] (even if nothing new arrived).
    ResumeInput(ConnId),
    /// The authorizer deferred ([`AuthzDecision::Defer`]): decide, then call
    /// [`Broker::resolve_authorization`] with the ticket. The connection's input waits.
    AuthorizeRequired {
        /// Names this request.
        ticket: AuthTicket,
        /// The connection waiting.
        conn: ConnId,
        /// Its client identifier.
        client_id: MqttStr,
        /// Its user name.
        username: Option<MqttStr>,
        /// What it wants to do.
        action: Action,
        /// The topic name (publish) or the whole filter (subscribe).
        topic: alloc::string::String,
    },
}

/// Counters, all since the broker started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted by [`Broker::accept`].
    pub connections_accepted: u64,
    /// Connections refused by [`Broker::accept`] (`max_connections`).
    pub connections_refused: u64,
    /// CONNECTs accepted.
    pub clients_connected_total: u64,
    /// PUBLISH packets received from clients (including wills published).
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Bytes passed to [`Broker::handle_bytes`].
    pub bytes_received: u64,
    /// Bytes handed out by [`Broker::poll_transmit`].
    pub bytes_sent: u64,
    /// Messages dropped because a session queue was full.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped because the connection had too much unwritten output.
    pub dropped_slow_consumer: u64,
    /// Messages whose Message Expiry Interval passed before delivery started.
    pub dropped_expired: u64,
    /// Messages larger than the receiving client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub dropped_too_large: u64,
    /// PUBLISH packets (and wills) the authorizer refused.
    pub publish_denied: u64,
    /// Sessions discarded because their expiry interval passed.
    pub sessions_expired: u64,
    /// Timer entries taken off the timer heap by [`Broker::handle_timeout`]: the broker's only
    /// work that is not a reaction to input. An idle broker adds nothing here until a deadline
    /// (keep-alive, expiry, `$SYS`) is actually due.
    pub timers_run: u64,
    /// PUBACKs and PUBRECs withheld because a subscriber's queue was full
    /// ([`BrokerConfig::max_ack_delay`]).
    pub acks_delayed: u64,
    /// Times a subscriber held acknowledgements back longer than `max_ack_delay` and was
    /// treated as a slow consumer.
    pub slow_consumers: u64,
    /// Times a publisher's input was paused because a live subscriber's output was full.
    pub inputs_paused: u64,
    /// Shared-subscription messages given to another member because the session they were
    /// sent to ended before acknowledging them.
    pub shared_redelivered: u64,
    /// Shared-subscription messages lost because their session ended and no member was left.
    pub dropped_no_member: u64,
    /// Messages not delivered to a subscriber because it may not receive their topic
    /// ([`Authorizer::may_receive`]).
    pub dropped_not_authorized: u64,
}

/// A point-in-time view of the broker's size, for `$SYS` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gauges {
    /// Open connections (accepted, not yet closed).
    pub connections: usize,
    /// Connections with an accepted CONNECT.
    pub clients_connected: usize,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Messages queued in sessions.
    pub queued: usize,
    /// Messages in flight (QoS 1 and 2, unacknowledged).
    pub inflight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted, no CONNECT yet.
    AwaitConnect,
    /// CONNECT received, authentication under way.
    Authenticating,
    /// CONNACK 0x00 sent.
    Connected,
    /// The broker is done with it; waiting for `handle_closed`.
    Closing,
}

#[derive(Debug)]
struct PendingConnect {
    connect: Box<Connect>,
    client_id: MqttStr,
    assigned: bool,
}

const NO_SESSION: u32 = u32::MAX;

/// What a connection owes its client and must send in order.
#[derive(Debug, Default)]
struct Owing {
    /// PUBACKs and PUBRECs owed, in the order their PUBLISH packets arrived. They go out in
    /// that order ([MQTT-4.6.0-2], [MQTT-4.6.0-3]), so an answer that is ready waits behind a
    /// withheld one.
    answers: VecDeque<Owed>,
    /// Names the next answer in `answers`.
    next_answer: u64,
    /// QoS 1 PUBACKs in `answers`: with the session's unreleased QoS 2 identifiers, what the
    /// client counts against the broker's Receive Maximum.
    qos1: u32,
    /// PUBRELs and PUBCOMPs waiting for the store, and the log position the last waits for.
    replies_waiting: u32,
    reply_after: u64,
    /// Durable mode, while non-zero: output past the first `gate_bytes` bytes waits until the
    /// store has log position `gate_seq` (see `Broker::gate_output`).
    gate_seq: u64,
    gate_bytes: usize,
}

impl Conn {
    fn owing(&mut self) -> &mut Owing {
        self.owing.get_or_insert_with(Box::default)
    }
}

impl Owing {
    /// Adds an answer to the back of the line (`None`: a place held for it); returns its
    /// token.
    fn push(&mut self, id: PacketId, qos: QoS, packet: Option<Packet>) -> u64 {
        let token = self.next_answer;
        self.next_answer += 1;
        let qos1 = qos == QoS::AtLeastOnce;
        self.qos1 += u32::from(qos1);
        self.answers.push_back(Owed { token, id, qos1, packet });
        token
    }
}

/// A PUBACK or PUBREC a connection owes: `packet` is `None` while it is withheld.
#[derive(Debug)]
struct Owed {
    token: u64,
    id: PacketId,
    qos1: bool,
    packet: Option<Packet>,
}

/// Most answers (or PUBRELs and PUBCOMPs waiting for the store) one connection may be owed: a
/// client with more in flight than there are packet identifiers is closed.
const MAX_OWED: usize = u16::MAX as usize;

/// Unwritten bytes of a live subscriber beyond which the QoS 0 publisher feeding it is paused
/// (`max_outbound_bytes`, when lower, applies instead). Small, so that a fast publisher's burst
/// fanned out to many subscribers waits in the publisher's socket, not in the broker's memory.
const PAUSE_PUBLISHERS_AT: usize = 64 * 1024;

/// Output a connection's tail buffer collects before it joins the output queue.
const TAIL_CHUNK: usize = 32 * 1024;
/// Spare room below which a drained tail is handed out whole instead of split.
const TAIL_KEEP: usize = 16;

/// Payloads up to this size are copied next to their header instead of being queued as a
/// separate buffer: below it, one write of one buffer is cheaper than a reference count.
const COPY_PAYLOAD_BELOW: usize = 256;

#[derive(Debug)]
struct Conn {
    /// Where the client connects from, until CONNECT completes; then its session's.
    peer: Option<Box<PeerInfo>>,
    phase: Phase,
    decoder: Decoder,
    encoder: Encoder,
    session: u32,
    accepted_at: Instant,
    /// 1.5 times the keep-alive, zero for none.
    keep_alive: Duration,
    last_recv: Instant,
    timer_at: Option<Instant>,
    /// The client's Receive Maximum.
    receive_max: u16,
    /// The client's Topic Alias Maximum.
    alias_max: u16,
    /// MQTT 5 Request Problem Information.
    problem_info: bool,
    out_aliases: Option<Box<OutAliases>>,
    pending: Option<Box<PendingConnect>>,
    /// What only some connections use, allocated when one first does.
    extra: Option<Box<ConnExtra>>,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    tail: BytesMut,
    in_ready: bool,
    /// Subscribers' sessions whose full output paused this connection's input.
    paused: u16,
    /// Answers owed to this client: allocated the first time one has to wait, so that an
    /// idle connection pays one pointer for it.
    owing: Option<Box<Owing>>,
}

/// The part of a connection's state that only some connections use: enhanced
/// authentication, deferred decisions, topic aliases from the client. Boxed, so that an idle
/// connection pays one pointer for it.
#[derive(Debug, Default)]
struct ConnExtra {
    auth_method: Option<MqttStr>,
    /// A deferred authentication or authorization: input is held until it is resolved.
    ticket: Option<u64>,
    /// Answers to deferred authorizations, for the packet being handled again.
    authz: Vec<(Action, alloc::string::String, bool)>,
    /// Input that arrived while a decision was deferred.
    held: BytesMut,
    /// Topic aliases the client set.
    in_aliases: BTreeMap<u16, TopicName>,
}

impl Conn {
    fn extra(&mut self) -> &mut ConnExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn ticket(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|x| x.ticket)
    }

    fn has_held(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| !x.held.is_empty())
    }

    fn auth_method(&self) -> Option<&MqttStr> {
        self.extra.as_ref().and_then(|x| x.auth_method.as_ref())
    }

    fn version(&self) -> ProtocolVersion {
        self.encoder.version()
    }

    fn v5(&self) -> bool {
        self.encoder.version().is_v5()
    }

    fn unwritten(&self) -> usize {
        self.out_bytes + self.tail.len()
    }

    /// Whether output waits at a gate for the store (`Broker::gate_output`): queued messages
    /// then stay queued, to be checked for expiry when they can actually go.
    fn is_gated(&self) -> bool {
        self.owing.as_ref().is_some_and(|o| o.gate_seq > 0)
    }

    fn deadline(&self, connect_timeout: Duration) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect | Phase::Authenticating => Some(self.accepted_at + connect_timeout),
            Phase::Connected if !self.keep_alive.is_zero() => {
                Some(self.last_recv + self.keep_alive)
            }
            _ => None,
        }
    }

    /// Moves a tail that reached [`TAIL_CHUNK`] to the output queue, and starts a new one: output
    /// goes out in buffers of moderate size, which the allocator reuses, rather than in one
    /// ever larger buffer, reallocated (copied) as it grows and fresh from the OS each time.
    fn seal_full_tail(&mut self) {
        if self.tail.len() >= TAIL_CHUNK {
            let head = core::mem::take(&mut self.tail).freeze();
            self.out_bytes += head.len();
            self.out.push_back(head);
        }
    }

    fn push_payload(&mut self, payload: &Bytes) {
        if payload.len() < COPY_PAYLOAD_BELOW {
            self.tail.extend_from_slice(payload);
        } else {
            if !self.tail.is_empty() {
                let head = self.tail.split().freeze();
                self.out_bytes += head.len();
                self.out.push_back(head);
            }
            self.out_bytes += payload.len();
            self.out.push_back(payload.clone());
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Box<Conn>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn { index: u32, generation: u32 },
    Session { index: u32, serial: u64 },
    Sys,
}

/// The broker. See the [module documentation](self) for the run loop.
pub struct Broker {
    config: BrokerConfig,
    started: Instant,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    connections: usize,
    clients_connected: usize,
    sessions: Vec<Option<Box<Session>>>,
    free_sessions: Vec<u32>,
    session_count: usize,
    by_client_id: BTreeMap<MqttStr, u32>,
    tree: SubTree,
    retained: BTreeMap<TopicName, Arc<Message>>,
    /// Every armed deadline, in order: the first is what `poll_timeout` reports.
    timers: BTreeSet<(Instant, Timer)>,
    ready: VecDeque<ConnId>,
    events: VecDeque<Event>,
    pending_auth: BTreeMap<u64, ConnId>,
    /// Deferred authorizations: the connection and the packet to handle again.
    pending_authz: BTreeMap<u64, (ConnId, Packet, Action, alloc::string::String)>,
    next_ticket: u64,
    next_serial: u64,
    rng: u64,
    stats: Stats,
    scratch: Vec<Entry>,
    scratch_groups: Vec<GroupRef>,
    /// While a QoS 1/2 publish is routed: whether its ack may be withheld, and the first
    /// connected session that took it over its queue limit.
    park_ok: bool,
    congested: Option<u32>,
    /// While a client's PUBLISH is routed: that client, which a full subscriber may pause.
    publisher: Option<ConnId>,
    /// The persistence log not yet drained, the last sequence number given, the last one the
    /// store confirmed, and the next delivery key.
    persist_log: VecDeque<(PersistSeq, PersistOp)>,
    persist_seq: u64,
    persisted: u64,
    next_key: u64,
    /// Durable mode: acknowledgements waiting for the store.
    awaiting_store: VecDeque<ParkedAck>,
    /// Durable mode: PUBRELs and PUBCOMPs waiting for the store to have the state change that
    /// caused them, by log position. A PUBREL sent earlier could, after a crash, make the
    /// restarted broker send the message again to a client that already completed it; a
    /// PUBCOMP sent earlier could make it take a reused packet identifier for a resend and
    /// drop a new message.
    awaiting_reply: VecDeque<(u64, ConnId, Packet)>,
    /// Durable mode: connections whose output waits at a gate for the store (see
    /// `gate_output`).
    gated: Vec<ConnId>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker").field("gauges", &self.gauges()).finish_non_exhaustive()
    }
}

impl Broker {
    // ---------------------------------------------------------------- construction

    /// A broker with no connections, sessions or retained messages.
    pub fn new(config: BrokerConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let rng = config.seed | 1;
        let mut broker = Self {
            config,
            started: now,
            slots: Vec::new(),
            free_slots: Vec::new(),
            connections: 0,
            clients_connected: 0,
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            session_count: 0,
            by_client_id: BTreeMap::new(),
            tree: SubTree::new(),
            retained: BTreeMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            pending_auth: BTreeMap::new(),
            pending_authz: BTreeMap::new(),
            next_ticket: 1,
            next_serial: 1,
            rng,
            stats: Stats::default(),
            scratch: Vec::new(),
            scratch_groups: Vec::new(),
            park_ok: false,
            congested: None,
            publisher: None,
            persist_log: VecDeque::new(),
            persist_seq: 0,
            persisted: 0,
            next_key: 1,
            awaiting_store: VecDeque::new(),
            awaiting_reply: VecDeque::new(),
            gated: Vec::new(),
        };
        if let Some(interval) = broker.config.sys_interval {
            broker.timers.insert((now + interval, Timer::Sys));
        }
        Ok(broker)
    }

    // ---------------------------------------------------------------- getters

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current sizes.
    pub fn gauges(&self) -> Gauges {
        let (mut queued, mut inflight) = (0, 0);
        for s in self.sessions.iter().flatten() {
            queued += s.queue.len();
            inflight += s.inflight.len();
        }
        Gauges {
            connections: self.connections,
            clients_connected: self.clients_connected,
            sessions: self.session_count,
            subscriptions: self.tree.len(),
            retained: self.retained.len(),
            queued,
            inflight,
        }
    }

    /// The client identifier of a connected connection.
    pub fn client_id(&self, conn: ConnId) -> Option<&MqttStr> {
        let c = self.conn(conn)?;
        match c.phase {
            Phase::Connected => self.session(c.session).map(|s| &s.client_id),
            _ => None,
        }
    }

    /// Whether a session exists for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.by_client_id.contains_key(client_id.as_bytes())
    }

    // ---------------------------------------------------------------- input

    /// A new transport. Refused when `max_connections` are open: close it at once.
    pub fn accept(&mut self, now: Instant, peer: PeerInfo) -> Result<ConnId, AcceptError> {
        if self.connections >= self.config.max_connections {
            self.stats.connections_refused += 1;
            return Err(AcceptError::TooManyConnections);
        }
        let conn = Conn {
            peer: Some(Box::new(peer)),
            phase: Phase::AwaitConnect,
            decoder: Decoder::new(None, self.config.max_packet_size),
            encoder: Encoder::new(ProtocolVersion::V3_1_1),
            session: NO_SESSION,
            accepted_at: now,
            keep_alive: Duration::ZERO,
            last_recv: now,
            timer_at: None,
            receive_max: u16::MAX,
            alias_max: 0,
            problem_info: true,
            out_aliases: None,
            pending: None,
            extra: None,
            out: VecDeque::new(),
            out_bytes: 0,
            tail: BytesMut::new(),
            in_ready: false,
            owing: None,
            paused: 0,
        };
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(Box::new(conn));
        let id = ConnId { index, generation: slot.generation };
        self.connections += 1;
        self.stats.connections_accepted += 1;
        self.arm_conn_timer(index);
        Ok(id)
    }

    /// Bytes read from `conn`'s transport. Whole packets are taken from `buf`; a partial packet
    /// stays in it for the next call. Input for a closing or unknown connection is discarded.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        let before = buf.len();
        self.input(now, conn, buf);
        // Counted as consumed: bytes left for later (a partial packet, a paused input) are
        // counted when they are.
        self.stats.bytes_received += before.saturating_sub(buf.len()) as u64;
    }

    fn input(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        let Some(c) = self.conn_mut(conn) else {
            buf.clear();
            return;
        };
        if c.phase == Phase::Closing {
            buf.clear();
            return;
        }
        c.last_recv = now;
        if c.ticket().is_some() || c.has_held() {
            let x = c.extra();
            x.held.extend_from_slice(buf);
            buf.clear();
            if x.ticket.is_none() {
                let mut held = core::mem::take(&mut x.held);
                self.process(now, conn.index, &mut held);
                if let Some(c) = self.slot_conn(conn.index) {
                    c.extra().held = held;
                }
            }
            return;
        }
        self.process(now, conn.index, buf);
    }

    /// `conn`'s transport is gone (end of stream, an error, or the close the broker asked
    /// for). An unexpected close publishes the will as the specification says and starts the
    /// session's expiry clock. The `ConnId` is stale afterwards.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        if self.conn(conn).is_none() {
            return;
        }
        self.close(now, conn.index, CloseReason::TransportClosed, None, true);
        let slot = &mut self.slots[conn.index as usize];
        slot.conn = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(conn.index);
        self.connections -= 1;
    }

    /// Runs the timers that are due: CONNECT and keep-alive timeouts, will delays, session
    /// expiry and `$SYS` publication.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.stats.timers_run += 1;
            match timer {
                Timer::Conn { index, generation } => self.conn_timer(now, index, generation, at),
                Timer::Session { index, serial } => self.session_timer(now, index, serial, at),
                Timer::Sys => {
                    self.publish_sys(now);
                    if let Some(interval) = self.config.sys_interval {
                        self.timers.insert((now + interval, Timer::Sys));
                    }
                }
            }
        }
    }

    /// Answers an [`Event::AuthRequired`]. A ticket whose connection has gone is ignored; a
    /// `Defer` answer counts as a refusal.
    pub fn resolve_auth(&mut self, now: Instant, ticket: AuthTicket, decision: AuthDecision) {
        let Some(conn) = self.pending_auth.remove(&ticket.0) else {
            return;
        };
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        if c.ticket() != Some(ticket.0) {
            return;
        }
        c.extra().ticket = None;
        let decision = match decision {
            AuthDecision::Defer => AuthDecision::Deny(ReasonCode::UnspecifiedError),
            d => d,
        };
        self.apply_auth(now, conn.index, decision);
        self.resume_held(now, conn);
    }

    /// Answers an [`Event::AuthorizeRequired`]: the PUBLISH or SUBSCRIBE is handled with this
    /// answer, then the input that waited. A ticket whose connection has gone is ignored.
    pub fn resolve_authorization(&mut self, now: Instant, ticket: AuthTicket, allowed: bool) {
        let Some((conn, packet, action, topic)) = self.pending_authz.remove(&ticket.0) else {
            return;
        };
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        if c.ticket() != Some(ticket.0) {
            return;
        }
        let x = c.extra();
        x.ticket = None;
        x.authz.push((action, topic, allowed));
        self.handle_packet(now, conn.index, packet);
        if let Some(x) = self.conn_mut(conn).and_then(|c| c.extra.as_mut())
            && x.ticket.is_none()
        {
            x.authz.clear();
        }
        self.resume_held(now, conn);
    }

    /// Handles the input held while a decision was pending, in order.
    fn resume_held(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn)
            && c.has_held()
            && c.ticket().is_none()
        {
            let mut held = core::mem::take(&mut c.extra().held);
            self.process(now, conn.index, &mut held);
            if let Some(c) = self.slot_conn(conn.index) {
                c.extra().held = held;
            }
        }
    }

    /// Disconnects every client: MQTT 5 clients get DISCONNECT 0x8B (Server shutting down).
    /// Each connection is then closed as by [`Event::CloseTransport`]; wills are published as
    /// for any connection the server closes.
    pub fn shutdown(&mut self, now: Instant) {
        for index in 0..self.slots.len() as u32 {
            if self.slot_conn(index).is_some_and(|c| c.phase != Phase::Closing) {
                let code = ReasonCode::ServerShuttingDown;
                self.close(now, index, CloseReason::Server(code), Some(code), true);
            }
        }
    }

    // ---------------------------------------------------------------- output

    /// A connection with output waiting, if any. Call after every input, then drain it with
    /// [`poll_transmit`](Self::poll_transmit). A connection is named again only after more
    /// output is queued, so keep draining one that could not be written in full.
    #[must_use]
    pub fn poll_writable(&mut self) -> Option<ConnId> {
        while let Some(id) = self.ready.pop_front() {
            if let Some(c) = self.conn_mut(id) {
                c.in_ready = false;
                if c.unwritten() > 0 {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Up to `limit` bytes to write to `conn`, in order; `None` once nothing is waiting. The
    /// buffers are views: a payload shared by many subscribers is not copied.
    #[must_use]
    pub fn poll_transmit(&mut self, conn: ConnId, limit: usize) -> Option<Bytes> {
        let c = self.conn_mut(conn)?;
        let limit = match c.owing.as_deref() {
            Some(o) if o.gate_seq > 0 => limit.min(o.gate_bytes),
            _ => limit,
        };
        if limit == 0 {
            return None;
        }
        if c.out.is_empty() {
            if c.tail.is_empty() {
                return None;
            }
            // A tail with little room left goes out whole: keeping it would keep its buffer
            // alive (an idle connection's last answer) for room too small to be worth it.
            let head = if c.tail.capacity() - c.tail.len() < TAIL_KEEP {
                core::mem::take(&mut c.tail).freeze()
            } else {
                c.tail.split().freeze()
            };
            c.out_bytes += head.len();
            c.out.push_back(head);
        }
        let front = c.out.front_mut()?;
        let chunk = if front.len() > limit { front.split_to(limit) } else { c.out.pop_front()? };
        c.out_bytes -= chunk.len();
        if let Some(o) = c.owing.as_deref_mut()
            && o.gate_seq > 0
        {
            o.gate_bytes -= chunk.len();
        }
        let session = c.session;
        let drained = c.unwritten() == 0;
        if drained {
            // An idle connection keeps no queue of output buffers. (The tail is kept: its
            // spare capacity is small, and reallocating it per burst costs more.)
            c.out = VecDeque::new();
        }
        self.stats.bytes_sent += chunk.len() as u64;
        if drained && session != NO_SESSION {
            self.pump(Instant::ZERO.max(self.last_now(conn.index)), session);
            let half = self.config.max_queued_messages / 2;
            if let Some(s) = self.session_mut(session)
                && s.queue.len() <= half
            {
                s.slow = false;
            }
            self.release_throttle(session);
        }
        Some(chunk)
    }

    /// Whether `conn`'s input is paused ([`Event::PauseInput`]): bytes passed to
    /// [`handle_bytes`](Self::handle_bytes) stay in the buffer for now.
    #[must_use]
    pub fn is_input_paused(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some_and(|c| c.paused > 0)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called. A peek: it costs the
    /// same with one connection or a hundred thousand.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------- internals: plumbing

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_deref()
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_deref_mut()
    }

    fn slot_conn(&mut self, index: u32) -> Option<&mut Conn> {
        self.slots.get_mut(index as usize)?.conn.as_deref_mut()
    }

    fn conn_id(&self, index: u32) -> ConnId {
        ConnId { index, generation: self.slots[index as usize].generation }
    }

    /// The time of the last input on a connection: output-side pumping has no `now` of its own.
    fn last_now(&self, index: u32) -> Instant {
        self.slots
            .get(index as usize)
            .and_then(|s| s.conn.as_ref())
            .map_or(Instant::ZERO, |c| c.last_recv)
    }

    /// The client identifier, user name and address of the client connected at `index`, from
    /// its session (empty before CONNECT completes).
    fn identity(&self, index: u32) -> (MqttStr, Option<MqttStr>, PeerInfo) {
        let si = self.slots.get(index as usize).and_then(|s| s.conn.as_ref()).map(|c| c.session);
        match si.and_then(|si| self.session(si)) {
            Some(s) => (s.client_id.clone(), s.username.clone(), s.peer.clone()),
            None => (MqttStr::default(), None, PeerInfo::default()),
        }
    }

    fn session(&self, index: u32) -> Option<&Session> {
        self.sessions.get(index as usize)?.as_deref()
    }

    fn session_mut(&mut self, index: u32) -> Option<&mut Session> {
        self.sessions.get_mut(index as usize)?.as_deref_mut()
    }

    fn mark_ready(&mut self, index: u32) {
        let generation = self.slots[index as usize].generation;
        if let Some(c) = self.slot_conn(index)
            && !c.in_ready
        {
            c.in_ready = true;
            self.ready.push_back(ConnId { index, generation });
        }
    }

    /// Encodes a control packet for a connection. With Request Problem Information 0, the
    /// Reason String and User Properties are left out of everything but PUBLISH, CONNACK and
    /// DISCONNECT ([MQTT-3.1.2-29]).
    fn send(&mut self, index: u32, packet: &Packet) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let stripped;
        let packet = if !c.problem_info
            && !matches!(packet, Packet::Publish(_) | Packet::ConnAck(_) | Packet::Disconnect(_))
        {
            let mut p = packet.clone();
            p.strip(2);
            stripped = p;
            &stripped
        } else {
            packet
        };
        // A control packet is small, or trimmed to fit by the encoder; one that still cannot be
        // encoded is not sent (the encoder never writes half a packet).
        let _ = c.encoder.encode(packet, &mut c.tail);
        c.seal_full_tail();
        self.mark_ready(index);
    }

    fn arm_conn_timer(&mut self, index: u32) {
        let timeout = self.config.connect_timeout;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let generation = slot.generation;
        let Some(c) = slot.conn.as_mut() else {
            return;
        };
        let Some(deadline) = c.deadline(timeout) else {
            return;
        };
        // A later deadline (keep-alive pushed back by traffic) leaves the armed one in place:
        // it is checked again when it fires. An earlier one replaces it.
        if let Some(old) = c.timer_at {
            if old <= deadline {
                return;
            }
            self.timers.remove(&(old, Timer::Conn { index, generation }));
        }
        c.timer_at = Some(deadline);
        self.timers.insert((deadline, Timer::Conn { index, generation }));
    }

    /// Disarms a connection's timer (its phase changed).
    fn clear_conn_timer(&mut self, index: u32) {
        let generation = self.slots[index as usize].generation;
        if let Some(at) = self.slot_conn(index).and_then(|c| c.timer_at.take()) {
            self.timers.remove(&(at, Timer::Conn { index, generation }));
        }
    }

    fn arm_session_timer(&mut self, index: u32) {
        let max_ack_delay = self.config.max_ack_delay;
        let Some(s) = self.sessions.get_mut(index as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(deadline) = s.deadline(max_ack_delay) else {
            return;
        };
        let serial = s.serial;
        if let Some(old) = s.timer_at {
            if old <= deadline {
                return;
            }
            self.timers.remove(&(old, Timer::Session { index, serial }));
        }
        s.timer_at = Some(deadline);
        self.timers.insert((deadline, Timer::Session { index, serial }));
    }

    /// Disarms a session's timer (it reconnected or ended).
    fn clear_session_timer(&mut self, index: u32) {
        if let Some(s) = self.session_mut(index)
            && let Some(at) = s.timer_at.take()
        {
            let serial = s.serial;
            self.timers.remove(&(at, Timer::Session { index, serial }));
        }
    }

    fn conn_timer(&mut self, now: Instant, index: u32, generation: u32, at: Instant) {
        let timeout = self.config.connect_timeout;
        if self.slots.get(index as usize).is_none_or(|s| s.generation != generation) {
            return;
        }
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if c.timer_at != Some(at) {
            return; // superseded by an earlier deadline
        }
        c.timer_at = None;
        if c.paused > 0 {
            // Its input waits because of the broker, not the client: it is not idle.
            c.last_recv = now;
        }
        let Some(deadline) = c.deadline(timeout) else {
            return;
        };
        if deadline > now {
            self.arm_conn_timer(index);
            return;
        }
        match c.phase {
            Phase::AwaitConnect | Phase::Authenticating => {
                let code = ReasonCode::MaximumConnectTime;
                self.close(now, index, CloseReason::Server(code), None, false);
            }
            _ => {
                // [MQTT-3.1.2-22] (3.1.1: [MQTT-3.1.2-24]).
                let code = ReasonCode::KeepAliveTimeout;
                self.close(now, index, CloseReason::Server(code), Some(code), true);
            }
        }
    }

    fn session_timer(&mut self, now: Instant, index: u32, serial: u64, at: Instant) {
        let delay = self.config.max_ack_delay;
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.serial != serial || s.timer_at != Some(at) {
            return;
        }
        s.timer_at = None;
        let flow = s.flow.as_deref();
        let held_acks = flow.and_then(|f| f.parked.front()).is_some_and(|p| p.since + delay <= now);
        let held_publishers =
            flow.and_then(|f| f.throttled_since).is_some_and(|t| t + delay <= now);
        if held_acks || held_publishers {
            // Held publishers back too long: a slow consumer.
            s.slow = true;
            self.stats.slow_consumers += 1;
            self.release_parked(index);
            self.release_throttle(index);
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.will_at.is_some_and(|t| t <= now) {
            s.will_at = None;
            if let Some(will) = s.will.take() {
                self.log_session(index, |client_id| PersistOp::WillCleared { client_id });
                self.publish_will(now, index, will);
            }
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.conn.is_none() && s.expires_at.is_some_and(|t| t <= now) {
            let client_id = s.client_id.clone();
            self.stats.sessions_expired += 1;
            self.end_session(now, index);
            self.events.push_back(Event::SessionExpired { client_id });
        } else {
            self.arm_session_timer(index);
        }
    }

    /// Decodes and handles packets from `buf` until it holds no whole packet, the connection
    /// closes, or an authentication is deferred (the rest is then held).
    fn process(&mut self, now: Instant, index: u32, buf: &mut BytesMut) {
        loop {
            let Some(c) = self.slot_conn(index) else {
                buf.clear();
                return;
            };
            if c.phase == Phase::Closing {
                buf.clear();
                return;
            }
            if c.ticket().is_some() {
                if !buf.is_empty() {
                    c.extra().held.extend_from_slice(buf);
                    buf.clear();
                }
                return;
            }
            if c.paused > 0 {
                return; // the rest waits in `buf` until ResumeInput
            }
            match c.decoder.decode(buf) {
                Ok(None) => return,
                Ok(Some(packet)) => self.handle_packet(now, index, packet),
                Err(e) => {
                    buf.clear();
                    self.decode_error(now, index, &e);
                    return;
                }
            }
        }
    }

    fn decode_error(&mut self, now: Instant, index: u32, e: &DecodeError) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        match c.phase {
            Phase::AwaitConnect | Phase::Authenticating => {
                let version = c.decoder.version();
                if let Some(v) = version {
                    c.encoder = Encoder::new(v);
                }
                let code = e.reason_code();
                let v5 = version.is_some_and(ProtocolVersion::is_v5);
                if v5 {
                    self.send(index, &ConnAck::refusal(code).into());
                } else if let Some(rc) = e.connect_return_code() {
                    // An unacceptable protocol level is answered in 3.1.1 form ([MQTT-3.1.2-2]).
                    if let Some(c) = self.slot_conn(index) {
                        c.encoder = Encoder::new(ProtocolVersion::V3_1_1);
                    }
                    self.send(index, &ConnAck::refusal(rc.to_reason()).into());
                }
                self.close(now, index, CloseReason::Server(code), None, false);
            }
            _ => {
                let code = e.reason_code();
                self.close(now, index, CloseReason::Server(code), Some(code), true);
            }
        }
    }

    /// A protocol violation on an established connection: DISCONNECT with `code` (MQTT 5),
    /// close, publish the will.
    fn violation(&mut self, now: Instant, index: u32, code: ReasonCode) {
        self.close(now, index, CloseReason::Server(code), Some(code), true);
    }

    /// Ends a connection from the broker's side of things: optionally sends DISCONNECT, detaches
    /// the session (will and expiry), and asks the adapter to close the transport.
    fn close(
        &mut self,
        now: Instant,
        index: u32,
        reason: CloseReason,
        disconnect: Option<ReasonCode>,
        publish_will: bool,
    ) {
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if c.phase == Phase::Closing {
            return;
        }
        let was = c.phase;
        // DISCONNECT only after a successful CONNACK ([MQTT-3.14.0-1]), and only in MQTT 5.
        if let Some(code) = disconnect
            && was == Phase::Connected
            && c.v5()
        {
            self.send(index, &Disconnect::new(code).into());
        }
        self.clear_conn_timer(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        c.phase = Phase::Closing;
        c.pending = None;
        let ticket = c.extra.as_mut().and_then(|x| {
            x.held = BytesMut::new();
            x.ticket.take()
        });
        let session = core::mem::replace(&mut c.session, NO_SESSION);
        let client_id = self.session(session).map(|s| s.client_id.clone());
        if let Some(t) = ticket {
            self.pending_auth.remove(&t);
            self.pending_authz.remove(&t);
        }
        if was == Phase::Connected {
            self.clients_connected -= 1;
            if session != NO_SESSION {
                self.detach(now, session, publish_will, false);
            }
            if let Some(client_id) = client_id {
                self.events.push_back(Event::Disconnected { conn: id, client_id, reason });
            }
        } else {
            let code = match reason {
                CloseReason::Server(code) | CloseReason::ClientDisconnect(code) => code,
                CloseReason::TransportClosed => ReasonCode::UnspecifiedError,
            };
            self.events.push_back(Event::Refused { conn: id, reason: code });
        }
        if !matches!(reason, CloseReason::TransportClosed) {
            self.events.push_back(Event::CloseTransport(id));
        }
        self.mark_ready(index);
    }

    /// The session's connection is gone. A session with expiry 0 ends with it, even on a
    /// takeover ([MQTT-3.1.2-6]; 5.0 section 3.1.2.11.2): the new connection then starts a new
    /// session. On a `takeover` a session that outlives its connection is not logged as
    /// disconnected and gets no expiry timer, since the new connection resumes it at once.
    fn detach(&mut self, now: Instant, index: u32, publish_will: bool, takeover: bool) {
        // An offline session's queue drops at its limit: nobody waits for it.
        self.release_parked(index);
        self.release_throttle(index);
        let Some(s) = self.session_mut(index) else {
            return;
        };
        s.conn = None;
        s.slow = false;
        let had_will = s.will.is_some();
        if publish_will {
            if let Some(will) = s.will.take() {
                let delay = if s.protocol.is_v5() { will.delay.min(s.expiry) } else { 0 };
                if delay == 0 {
                    self.publish_will(now, index, will);
                } else if let Some(s) = self.session_mut(index) {
                    s.will = Some(will);
                    s.will_at = Some(now + Duration::from_secs(delay.into()));
                }
            }
        } else {
            s.will = None;
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if had_will && s.will.is_none() {
            self.log_session(index, |client_id| PersistOp::WillCleared { client_id });
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        #[cfg(feature = "planted-bugs")]
        let ends = s.expiry == 0
            && !(takeover && self.config.planted_bug == PlantedBug::TakeoverRevivesSession);
        #[cfg(not(feature = "planted-bugs"))]
        let ends = s.expiry == 0;
        if ends {
            self.end_session(now, index);
            return;
        }
        if takeover {
            return;
        }
        self.log_session(index, |client_id| PersistOp::Disconnected { client_id });
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.expiry != u32::MAX {
            s.expires_at = Some(now + Duration::from_secs(s.expiry.into()));
        }
        self.arm_session_timer(index);
    }

    /// Discards a session: its will (published now if still pending, [MQTT-3.1.2-8]), its
    /// subscriptions and its messages.
    fn end_session(&mut self, now: Instant, index: u32) {
        self.release_parked(index);
        self.release_throttle(index);
        self.clear_session_timer(index);
        self.log_session(index, |client_id| PersistOp::SessionDeleted { client_id });
        let Some(s) = self.session_mut(index) else {
            return;
        };
        s.persistent = false;
        s.will_at = None;
        if let Some(will) = s.will.take() {
            self.publish_will(now, index, will);
        }
        let Some(s) = self.sessions.get_mut(index as usize).and_then(Option::take) else {
            return;
        };
        for f in &s.subscriptions {
            self.tree.remove(f, index);
        }
        self.by_client_id.remove(&s.client_id);
        self.free_sessions.push(index);
        self.session_count -= 1;
        // Messages of shared subscriptions it had not acknowledged go to another member of the
        // same group (section 4.8.2: SHOULD for QoS 1). A QoS 2 message whose delivery had
        // started must not go to anyone else ([MQTT-4.8.2-5]); queued ones had not started.
        let unfinished = s
            .inflight
            .into_iter()
            .filter(|f| f.delivery.qos != QoS::ExactlyOnce)
            .map(|f| f.delivery)
            .chain(s.queue);
        for d in unfinished {
            let Some(filter) = d.shared else {
                continue;
            };
            if d.msg.expired(now) {
                continue;
            }
            match self.tree.group_of(&filter) {
                Some(g) if self.deliver_shared(now, g, &d.msg) => {
                    self.stats.shared_redelivered += 1;
                }
                _ => self.stats.dropped_no_member += 1,
            }
        }
    }

    fn publish_will(&mut self, now: Instant, index: u32, will: PendingWill) {
        if let Some(s) = self.session(index)
            && !self.allowed(&s.client_id, s.username.as_ref(), &s.peer, will.msg.topic.as_str())
        {
            self.stats.publish_denied += 1;
            return;
        }
        self.stats.messages_received += 1;
        self.store_retained(now, &will.msg);
        self.route(now, &will.msg);
    }

    /// Whether a will may be published: it cannot wait, so `Defer` refuses.
    fn allowed(
        &self,
        client_id: &MqttStr,
        username: Option<&MqttStr>,
        peer: &PeerInfo,
        topic: &str,
    ) -> bool {
        self.authorize(client_id, username, peer, Action::Publish, topic) == AuthzDecision::Allow
    }

    fn authorize(
        &self,
        client_id: &MqttStr,
        username: Option<&MqttStr>,
        peer: &PeerInfo,
        action: Action,
        topic: &str,
    ) -> AuthzDecision {
        // Clients do not write the broker's own statistics.
        if action == Action::Publish && (topic.starts_with("$SYS/") || topic == "$SYS") {
            return AuthzDecision::Deny;
        }
        match &self.config.authorizer {
            None => AuthzDecision::Allow,
            Some(a) => {
                let info = ClientInfo {
                    client_id: client_id.as_str(),
                    username: username.map(MqttStr::as_str),
                    peer,
                };
                a.decide(&info, action, topic)
            }
        }
    }

    /// The decision for connection `index`: an answer to a deferred request if there is one,
    /// else the authorizer's. `None`: deferred, and `packet` waits for the answer.
    fn check(
        &mut self,
        index: u32,
        action: Action,
        topic: &str,
        packet: impl FnOnce() -> Packet,
    ) -> Option<bool> {
        let c = self.slot_conn(index)?;
        let answer = c.extra.as_ref().and_then(|x| {
            x.authz.iter().find(|(a, t, _)| *a == action && t == topic).map(|&(_, _, yes)| yes)
        });
        if answer.is_some() {
            return answer;
        }
        let (client_id, username, peer) = self.identity(index);
        match self.authorize(&client_id, username.as_ref(), &peer, action, topic) {
            AuthzDecision::Allow => Some(true),
            AuthzDecision::Deny => Some(false),
            _ => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let conn = self.conn_id(index);
                if let Some(c) = self.slot_conn(index) {
                    c.extra().ticket = Some(ticket);
                }
                self.pending_authz.insert(ticket, (conn, packet(), action, topic.into()));
                self.events.push_back(Event::AuthorizeRequired {
                    ticket: AuthTicket(ticket),
                    conn,
                    client_id,
                    username,
                    action,
                    topic: topic.into(),
                });
                None
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic from the configured seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // ---------------------------------------------------------------- packets

    fn handle_packet(&mut self, now: Instant, index: u32, packet: Packet) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        match (c.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(connect)) => self.on_connect(now, index, connect),
            (Phase::Authenticating, Packet::Auth(auth)) => self.on_auth(now, index, auth),
            (Phase::Authenticating, Packet::Disconnect(_)) => {
                let code = ReasonCode::UnspecifiedError;
                self.close(now, index, CloseReason::ClientDisconnect(code), None, false);
            }
            (Phase::AwaitConnect | Phase::Authenticating, _) => {
                // Only AUTH may come before CONNACK ([MQTT-3.1.0-1], [MQTT-4.12.0-?]).
                let code = ReasonCode::ProtocolError;
                self.refuse(now, index, code);
            }
            (Phase::Connected, packet) => match packet {
                Packet::Publish(p) => self.on_publish(now, index, p),
                Packet::PubAck(a) => self.on_puback(now, index, a),
                Packet::PubRec(a) => self.on_pubrec(now, index, a),
                Packet::PubRel(a) => self.on_pubrel(index, a),
                Packet::PubComp(a) => self.on_pubcomp(now, index, a),
                Packet::Subscribe(s) => self.on_subscribe(now, index, s),
                Packet::Unsubscribe(u) => self.on_unsubscribe(index, u),
                Packet::PingReq => self.send(index, &Packet::PingResp),
                Packet::Disconnect(d) => self.on_disconnect(now, index, d),
                Packet::Auth(a) => self.on_auth(now, index, a),
                // A second CONNECT ([MQTT-3.1.0-2]), or a packet only a server sends.
                _ => self.violation(now, index, ReasonCode::ProtocolError),
            },
            (Phase::Closing, _) => {}
        }
    }

    /// Refuses a connection before CONNACK 0x00: CONNACK with `code`, then close
    /// ([MQTT-3.2.2-7]; 3.1.1: [MQTT-3.2.2-5]).
    fn refuse(&mut self, now: Instant, index: u32, code: ReasonCode) {
        let code = if code.is_error() { code } else { ReasonCode::UnspecifiedError };
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let mut ack = ConnAck::refusal(code);
        if c.v5() && !code.is_valid_for(crate::codec::PacketType::ConnAck) {
            ack.reason_code = ReasonCode::UnspecifiedError;
        }
        self.send(index, &ack.into());
        self.close(now, index, CloseReason::Server(code), None, false);
    }

    fn on_connect(&mut self, now: Instant, index: u32, connect: Box<Connect>) {
        let max_qos = self.config.max_qos;
        let retain_available = self.config.retain_available;
        let allow_empty = self.config.allow_zero_length_client_id;
        let max_id_len = self.config.max_client_id_len;
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let version = connect.protocol;
        let v5 = version.is_v5();
        c.encoder = Encoder::new(version);
        if v5 {
            let p = &connect.properties;
            if let Some(max) = p.maximum_packet_size {
                c.encoder.set_max_packet_size(max.get());
            }
            c.receive_max = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
            c.alias_max = p.topic_alias_maximum.unwrap_or(0);
            c.problem_info = p.request_problem_information.unwrap_or(true);
        }
        if let Some(w) = &connect.will {
            // [MQTT-3.2.2-12], [MQTT-3.2.2-13]: MQTT 5 clients are told; a 3.1.1 client's will
            // is published at the QoS the broker supports, and without retain if unsupported.
            if v5 && w.qos > max_qos {
                return self.refuse(now, index, ReasonCode::QoSNotSupported);
            }
            if v5 && w.retain && !retain_available {
                return self.refuse(now, index, ReasonCode::RetainNotSupported);
            }
        }
        let mut client_id = connect.client_id.clone();
        let mut assigned = false;
        if client_id.is_empty() {
            // 3.1.1 allows an empty id only with CleanSession 1 ([MQTT-3.1.3-8]); 3.1 never.
            let ok =
                allow_empty && (v5 || (version == ProtocolVersion::V3_1_1 && connect.clean_start));
            if !ok {
                return self.refuse(now, index, ReasonCode::ClientIdentifierNotValid);
            }
            client_id = self.assign_client_id();
            assigned = true;
        } else if client_id.len() > max_id_len
            || (version == ProtocolVersion::V3_1 && client_id.len() > 23)
        {
            return self.refuse(now, index, ReasonCode::ClientIdentifierNotValid);
        }
        let method = if v5 { connect.properties.authentication_method.clone() } else { None };
        if let Some(m) = &method
            && !self.config.authenticator.as_ref().is_some_and(|a| a.supports_method(m.as_str()))
        {
            return self.refuse(now, index, ReasonCode::BadAuthenticationMethod);
        }
        let request = AuthRequest {
            stage: AuthStage::Connect,
            client_id: client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.clone(),
            method: method.clone(),
            data: if v5 { connect.properties.authentication_data.clone() } else { None },
            peer: PeerInfo::default(),
            protocol: version,
        };
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let request =
            AuthRequest { peer: c.peer.as_deref().cloned().unwrap_or_default(), ..request };
        match method {
            Some(m) => c.extra().auth_method = Some(m.detach()),
            None => {
                if let Some(x) = c.extra.as_mut() {
                    x.auth_method = None;
                }
            }
        }
        c.pending = Some(Box::new(PendingConnect { connect, client_id, assigned }));
        c.phase = Phase::Authenticating;
        self.ask_authenticator(now, index, request);
    }

    fn ask_authenticator(&mut self, now: Instant, index: u32, request: AuthRequest) {
        let decision = match &self.config.authenticator {
            None => AuthDecision::Allow,
            Some(a) => a.authenticate(&request),
        };
        if decision == AuthDecision::Defer {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let conn = self.conn_id(index);
            if let Some(c) = self.slot_conn(index) {
                c.extra().ticket = Some(ticket);
            }
            self.pending_auth.insert(ticket, conn);
            self.events.push_back(Event::AuthRequired {
                ticket: AuthTicket(ticket),
                conn,
                request,
            });
            return;
        }
        self.apply_auth(now, index, decision);
    }

    fn apply_auth(&mut self, now: Instant, index: u32, decision: AuthDecision) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let connecting = c.phase == Phase::Authenticating;
        let method = c.auth_method().cloned();
        match decision {
            AuthDecision::Allow | AuthDecision::AllowWithData(_) if connecting => {
                let data = match decision {
                    AuthDecision::AllowWithData(d) => Some(d),
                    _ => None,
                };
                self.complete_connect(now, index, data);
            }
            AuthDecision::Allow | AuthDecision::AllowWithData(_) => {
                let data = match decision {
                    AuthDecision::AllowWithData(d) => Some(d),
                    _ => None,
                };
                let auth = auth_packet(ReasonCode::Success, method, data);
                self.send(index, &auth.into());
            }
            AuthDecision::Continue(data) => {
                if method.is_none() {
                    // Nothing to continue with: the authenticator asked for an exchange the
                    // client did not start.
                    return self.auth_failed(now, index, connecting, ReasonCode::NotAuthorized);
                }
                let auth = auth_packet(ReasonCode::ContinueAuthentication, method, data);
                self.send(index, &auth.into());
            }
            AuthDecision::Deny(code) => self.auth_failed(now, index, connecting, code),
            AuthDecision::Defer => {
                self.auth_failed(now, index, connecting, ReasonCode::UnspecifiedError);
            }
        }
    }

    fn auth_failed(&mut self, now: Instant, index: u32, connecting: bool, code: ReasonCode) {
        let code = if code.is_error() { code } else { ReasonCode::NotAuthorized };
        if connecting {
            self.refuse(now, index, code);
        } else {
            self.violation(now, index, code);
        }
    }

    fn on_auth(&mut self, now: Instant, index: u32, auth: Auth) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let connecting = c.phase == Phase::Authenticating;
        let stage = match (connecting, auth.reason_code) {
            (true, ReasonCode::ContinueAuthentication) => AuthStage::Continue,
            (false, ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication) => {
                AuthStage::Reauthenticate
            }
            _ => return self.auth_failed(now, index, connecting, ReasonCode::ProtocolError),
        };
        // The method may not change, and re-authentication needs one from CONNECT
        // ([MQTT-4.12.0-5], [MQTT-4.12.1-1]).
        if c.auth_method().is_none()
            || auth.properties.authentication_method.as_ref() != c.auth_method()
        {
            return self.auth_failed(now, index, connecting, ReasonCode::ProtocolError);
        }
        let (method, data, protocol) =
            (c.auth_method().cloned(), auth.properties.authentication_data, c.version());
        let (client_id, username, password, peer) = match &c.pending {
            Some(p) => (
                p.client_id.clone(),
                p.connect.username.clone(),
                p.connect.password.clone(),
                c.peer.as_deref().cloned().unwrap_or_default(),
            ),
            None => {
                let (client_id, username, peer) = self.identity(index);
                (client_id, username, None, peer)
            }
        };
        let request =
            AuthRequest { stage, client_id, username, password, method, data, peer, protocol };
        self.ask_authenticator(now, index, request);
    }

    fn assign_client_id(&mut self) -> MqttStr {
        loop {
            let r = self.next_random();
            let id = format!("ternmq-{r:016x}");
            if !self.by_client_id.contains_key(id.as_bytes()) {
                // Hex digits and '-' only: a valid MQTT string.
                return MqttStr::new(&id).unwrap_or_default();
            }
        }
    }

    /// Authentication passed: take over or create the session, send CONNACK 0x00, resume.
    fn complete_connect(&mut self, now: Instant, index: u32, auth_data: Option<Bytes>) {
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let Some(pending) = c.pending.take() else {
            return;
        };
        let PendingConnect { connect, client_id, assigned } = *pending;
        // Kept for the connection's and session's life: copies, so that they do not pin the
        // read buffer the CONNECT arrived in.
        let client_id = client_id.detach();
        let username = connect.username.as_ref().map(MqttStr::detach);
        let version = connect.protocol;
        let v5 = version.is_v5();
        let peer = c.peer.take().map(|p| *p).unwrap_or_default();

        // A session deadline that passed before this CONNECT was handled (a late
        // `handle_timeout`, a clock that jumped) has passed: its will goes out and an expired
        // session is gone before the client can resume it.
        if let Some(&si) = self.by_client_id.get(&client_id)
            && let Some(s) = self.session(si)
            && let Some(at) = s.timer_at
            && at <= now
        {
            let serial = s.serial;
            self.session_timer(now, si, serial, at);
        }

        // Takeover ([MQTT-3.1.4-3]; 3.1.1: [MQTT-3.1.4-2]).
        if let Some(&si) = self.by_client_id.get(&client_id)
            && let Some(old) = self.session(si).and_then(|s| s.conn)
            && old != id
        {
            self.close_for_takeover(now, old.index, si, ReasonCode::SessionTakenOver);
        }

        // Clean Start ([MQTT-3.1.2-4..6]; 3.1.1: [MQTT-3.1.2-6], [MQTT-3.1.2-4]).
        let existing = self.by_client_id.get(&client_id).copied();
        let (si, session_present) = match existing {
            Some(si) if !connect.clean_start => (si, true),
            other => {
                if let Some(si) = other {
                    self.end_session(now, si);
                }
                (self.new_session(client_id.clone(), version), false)
            }
        };

        let requested = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let granted = requested.min(self.config.session_expiry_interval);
        let max_qos = self.config.max_qos;
        let retain_available = self.config.retain_available;
        let will = connect.will.map(|w| {
            let mut properties = PublishProperties {
                payload_format_indicator: w.properties.payload_format_indicator,
                message_expiry_interval: w.properties.message_expiry_interval,
                content_type: w.properties.content_type,
                response_topic: w.properties.response_topic,
                correlation_data: w.properties.correlation_data,
                user_properties: w.properties.user_properties,
                ..PublishProperties::default()
            };
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|s| Instant::MAX.min(now + Duration::from_secs(s.into())));
            properties.message_expiry_interval = None;
            PendingWill {
                msg: Arc::new(Message {
                    topic: w.topic.detach(),
                    payload: Bytes::copy_from_slice(&w.payload),
                    qos: w.qos.min(max_qos),
                    retain: w.retain && retain_available,
                    properties,
                    expires_at,
                    origin: 0,
                }),
                delay: w.properties.will_delay_interval.unwrap_or(0),
            }
        });
        self.clear_session_timer(si);
        let Some(s) = self.session_mut(si) else {
            return;
        };
        s.conn = Some(id);
        s.protocol = version;
        s.expiry = granted;
        s.expires_at = None;
        // A pending will of the resumed session is not sent ([MQTT-3.1.3-9]).
        s.will_at = None;
        s.will = will;
        s.username = username.clone();
        s.peer = peer;
        let serial = s.serial;
        if let Some(m) = s.will.as_mut().and_then(|w| Arc::get_mut(&mut w.msg)) {
            m.origin = serial;
        }
        // Durable state: a session that outlives its connection is logged, with its will.
        let was_logged = s.persistent;
        s.persistent = granted > 0;
        let will = s.will.as_ref().map(|w| (persist::stored(&w.msg, now), w.delay));
        if granted > 0 {
            let expiry = granted;
            self.log_session(si, |client_id| PersistOp::Session {
                client_id,
                protocol: version,
                expiry,
            });
            match will {
                Some((message, delay)) => {
                    self.log_session(si, |client_id| PersistOp::Will { client_id, message, delay });
                }
                None if was_logged => {
                    self.log_session(si, |client_id| PersistOp::WillCleared { client_id });
                }
                None => {}
            }
        } else if was_logged && self.logging() {
            // Resumed with expiry 0: it ends with this connection; its record goes now.
            if let Some(s) = self.session(si) {
                let client_id = s.client_id.clone();
                self.log(PersistOp::SessionDeleted { client_id });
            }
        }

        let mut props = ConnAckProperties::default();
        let mut keep_alive = connect.keep_alive;
        if v5 {
            let cfg = &self.config;
            if granted != requested {
                props.session_expiry_interval = Some(granted);
            }
            if cfg.receive_maximum != u16::MAX {
                props.receive_maximum = NonZeroU16::new(cfg.receive_maximum);
            }
            if cfg.max_qos < QoS::ExactlyOnce {
                props.maximum_qos = Some(cfg.max_qos);
            }
            if !cfg.retain_available {
                props.retain_available = Some(false);
            }
            if cfg.max_packet_size < MAX_PACKET_SIZE {
                props.maximum_packet_size = core::num::NonZeroU32::new(cfg.max_packet_size);
            }
            if assigned {
                props.assigned_client_identifier = Some(client_id.clone());
            }
            if cfg.topic_alias_maximum > 0 {
                props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            }
            if !cfg.wildcard_subscription_available {
                props.wildcard_subscription_available = Some(false);
            }
            if !cfg.subscription_identifiers_available {
                props.subscription_identifiers_available = Some(false);
            }
            if !cfg.shared_subscription_available {
                props.shared_subscription_available = Some(false);
            }
            if cfg.max_keepalive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keepalive) {
                keep_alive = cfg.max_keepalive;
                props.server_keep_alive = Some(keep_alive);
            }
            if connect.properties.request_response_information == Some(true)
                && let Some(info) = &cfg.response_information
            {
                props.response_information = MqttStr::new(info).ok();
            }
        }
        let outgoing_aliases = self.config.outgoing_topic_aliases;
        self.clear_conn_timer(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if v5 {
            props.authentication_method = c.auth_method().cloned();
            props.authentication_data = auth_data;
        }
        c.session = si;
        c.keep_alive = Duration::from_millis(u64::from(keep_alive) * 1500);
        c.phase = Phase::Connected;
        if v5 && outgoing_aliases && c.alias_max > 0 {
            c.out_aliases = Some(Box::default());
        }
        let ack = ConnAck { session_present, reason_code: ReasonCode::Success, properties: props };
        self.send(index, &ack.into());
        self.clients_connected += 1;
        self.stats.clients_connected_total += 1;
        self.arm_conn_timer(index);
        self.events.push_back(Event::Connected {
            conn: id,
            client_id,
            protocol: version,
            session_present,
        });
        if session_present {
            self.resend_inflight(now, index, si);
        }
        self.pump(now, si);
    }

    /// Closes the connection that held session `si`, keeping the session for the new one.
    fn close_for_takeover(&mut self, now: Instant, index: u32, si: u32, code: ReasonCode) {
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if c.phase != Phase::Connected {
            return;
        }
        if c.v5() {
            self.send(index, &Disconnect::new(code).into());
        }
        self.clear_conn_timer(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        c.phase = Phase::Closing;
        c.session = NO_SESSION;
        let client_id = self.session(si).map(|s| s.client_id.clone());
        self.clients_connected -= 1;
        self.detach(now, si, true, true);
        if let Some(client_id) = client_id {
            let reason = CloseReason::Server(code);
            self.events.push_back(Event::Disconnected { conn: id, client_id, reason });
        }
        self.events.push_back(Event::CloseTransport(id));
        self.mark_ready(index);
    }

    fn new_session(&mut self, client_id: MqttStr, version: ProtocolVersion) -> u32 {
        let serial = self.next_serial;
        self.next_serial += 1;
        let s = Box::new(Session::new(serial, client_id.clone(), version));
        let index = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize] = Some(s);
                i
            }
            None => {
                self.sessions.push(Some(s));
                (self.sessions.len() - 1) as u32
            }
        };
        self.by_client_id.insert(client_id, index);
        self.session_count += 1;
        index
    }

    /// On resume: every unacknowledged PUBLISH again with DUP set, and PUBREL for those
    /// already received ([MQTT-4.4.0-1]), in their original order.
    fn resend_inflight(&mut self, now: Instant, index: u32, si: u32) {
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let inflight: Vec<(PacketId, OutState, u64, Delivery)> =
            s.inflight.iter().map(|f| (f.id, f.state, f.rel_after, f.delivery.clone())).collect();
        let mut dropped = Vec::new();
        for (id, state, rel_after, d) in inflight {
            match state {
                OutState::Comp => self.send_pubrel(index, id, rel_after),
                _ => {
                    if state == OutState::Rec {
                        let before = self.slot_conn(index).map_or(0, |c| c.unwritten());
                        self.gate_output(index, before);
                    }
                    if !self.write_publish(now, index, &d, Some(id), true) {
                        dropped.push(id);
                        self.log_released(si, d.key);
                    }
                }
            }
        }
        if let Some(s) = self.session_mut(si) {
            s.inflight.retain(|f| !dropped.contains(&f.id));
        }
    }

    // ---------------------------------------------------------------- publish

    fn on_publish(&mut self, now: Instant, index: u32, mut p: Publish) {
        let cfg_alias_max = self.config.topic_alias_maximum;
        let max_qos = self.config.max_qos;
        let retain_available = self.config.retain_available;
        let receive_maximum = usize::from(self.config.receive_maximum);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let v5 = c.v5();
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias.get() > cfg_alias_max {
                // [MQTT-3.3.2-9]
                return self.violation(now, index, ReasonCode::TopicAliasInvalid);
            }
            if p.topic.is_empty() {
                match c.extra.as_ref().and_then(|x| x.in_aliases.get(&alias.get())) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.violation(now, index, ReasonCode::ProtocolError),
                }
            } else {
                c.extra().in_aliases.insert(alias.get(), p.topic.clone());
            }
        }
        if p.qos > max_qos {
            // [MQTT-3.2.2-11]
            return self.violation(now, index, ReasonCode::QoSNotSupported);
        }
        if p.retain && !retain_available {
            // [MQTT-3.2.2-14]
            return self.violation(now, index, ReasonCode::RetainNotSupported);
        }
        let si = c.session;
        let (client_id, username, peer) = self.identity(index);
        let Some(s) = self.session(si) else {
            return;
        };
        let serial = s.serial;
        let (owed_qos1, owed) = self
            .slot_conn(index)
            .and_then(|c| c.owing.as_ref())
            .map_or((0, 0), |o| (o.qos1 as usize, o.answers.len()));
        let Some(s) = self.session(si) else {
            return;
        };
        // What the client counts against the broker's Receive Maximum: QoS 1 messages not yet
        // acknowledged and QoS 2 messages not yet released.
        let unacked = owed_qos1 + s.incoming_qos2.len();
        if owed >= MAX_OWED {
            // More unanswered than there are packet identifiers (a 3.1.1 client, told no limit,
            // while the store or a subscriber holds the answers back).
            return self.violation(now, index, ReasonCode::ReceiveMaximumExceeded);
        }
        if v5 && p.qos == QoS::AtLeastOnce && unacked >= receive_maximum {
            // Withheld PUBACKs count against the broker's Receive Maximum (section 3.3.4).
            return self.violation(now, index, ReasonCode::ReceiveMaximumExceeded);
        }
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            #[cfg(feature = "planted-bugs")]
            let resent = s.incoming_qos2.contains(&id.get())
                && self.config.planted_bug != PlantedBug::RedeliverResentQos2;
            #[cfg(not(feature = "planted-bugs"))]
            let resent = s.incoming_qos2.contains(&id.get());
            if resent {
                // A resent PUBLISH of a message already received: acknowledge, do not deliver
                // again (method A of section 4.3.3). If the first copy's PUBREC is still owed,
                // that one answers both; in durable mode not before the store has what the
                // first copy logged.
                let pending = self
                    .slot_conn(index)
                    .and_then(|c| c.owing.as_ref())
                    .is_some_and(|o| o.answers.iter().any(|a| a.id == id && a.packet.is_none()));
                if pending {
                    return;
                }
                let wait = self.durable() && self.persist_seq > self.persisted;
                let seq = if wait { self.persist_seq } else { 0 };
                let conn = self.conn_id(index);
                if seq > 0 {
                    let token = self.withhold_answer(index, id, QoS::ExactlyOnce);
                    let code = ReasonCode::Success;
                    let qos = QoS::ExactlyOnce;
                    let ack = ParkedAck { conn, id, qos, since: now, seq, code, token };
                    self.awaiting_store.push_back(ack);
                } else {
                    self.answer(conn, None, id, QoS::ExactlyOnce, Packet::PubRec(PubAck::new(id)));
                }
                return;
            }
            // A 3.1.1 client is told no Receive Maximum, so it cannot break one: its unreleased
            // QoS 2 identifiers are bounded by the 65,535 packet identifiers alone.
            if v5 && s.incoming_qos2.len() >= receive_maximum {
                return self.violation(now, index, ReasonCode::ReceiveMaximumExceeded);
            }
        }
        let invalid_utf8 = p.properties.payload_format_indicator == Some(PayloadFormat::Utf8)
            && core::str::from_utf8(&p.payload).is_err();
        let _ = (&client_id, &username, &peer);
        let topic = p.topic.clone();
        let Some(allowed) =
            self.check(index, Action::Publish, topic.as_str(), || Packet::Publish(p.clone()))
        else {
            return; // deferred: handled again with the answer
        };
        let code = if !allowed {
            self.stats.publish_denied += 1;
            ReasonCode::NotAuthorized
        } else if v5 && invalid_utf8 {
            ReasonCode::PayloadFormatInvalid
        } else {
            let (qos, id) = (p.qos, p.packet_id);
            self.park_ok =
                id.is_some() && !self.config.max_ack_delay.is_zero() && unacked < receive_maximum;
            self.congested = None;
            self.publisher = Some(self.conn_id(index));
            let logged_before = self.persist_seq;
            let matched = self.publish_message(now, serial, p);
            self.publisher = None;
            self.park_ok = false;
            let congested = self.congested.take();
            return self.acknowledge(
                now,
                index,
                si,
                qos,
                id,
                v5,
                matched,
                congested,
                logged_before,
            );
        };
        match (p.qos, p.packet_id) {
            // 3.1.1 has no way to say no: acknowledge as usual and drop ([MQTT-3.3.5-2]).
            (_, Some(id)) if !v5 => {
                let packet = if p.qos == QoS::ExactlyOnce {
                    self.take_incoming_qos2(si, id);
                    Packet::PubRec(PubAck::new(id))
                } else {
                    Packet::PubAck(PubAck::new(id))
                };
                let conn = self.conn_id(index);
                self.answer(conn, None, id, p.qos, packet);
            }
            (QoS::AtLeastOnce, Some(id)) => {
                let ack = PubAck { packet_id: id, reason_code: code, ..PubAck::new(id) };
                let conn = self.conn_id(index);
                self.answer(conn, None, id, QoS::AtLeastOnce, Packet::PubAck(ack));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let ack = PubAck { packet_id: id, reason_code: code, ..PubAck::new(id) };
                let conn = self.conn_id(index);
                self.answer(conn, None, id, QoS::ExactlyOnce, Packet::PubRec(ack));
            }
            _ if code == ReasonCode::PayloadFormatInvalid => {
                self.violation(now, index, code);
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn acknowledge(
        &mut self,
        now: Instant,
        index: u32,
        si: u32,
        qos: QoS,
        id: Option<PacketId>,
        v5: bool,
        matched: bool,
        congested: Option<u32>,
        logged_before: u64,
    ) {
        let Some(id) = id else {
            return;
        };
        if qos == QoS::ExactlyOnce {
            // Taken now, even if the PUBREC waits, so that a resent PUBLISH is not delivered
            // twice.
            self.take_incoming_qos2(si, id);
        }
        let code =
            if v5 && !matched { ReasonCode::NoMatchingSubscribers } else { ReasonCode::Success };
        // Durable mode: wait for what this publish logged. In log mode too once the store is
        // far behind: publishers slow down rather than the log grow without bound.
        let behind = self.persist_seq - self.persisted > persist::MAX_UNSTORED;
        let wait = self.durable() || (self.logging() && behind);
        let seq = if wait && self.persist_seq > logged_before { self.persist_seq } else { 0 };
        let conn = self.conn_id(index);
        let token =
            if congested.is_some() || seq > 0 { self.withhold_answer(index, id, qos) } else { 0 };
        let ack = ParkedAck { conn, id, qos, since: now, seq, code, token };
        if let Some(target) = congested {
            // Withheld until `target`'s queue has room (`max_ack_delay`).
            if let Some(s) = self.session_mut(target) {
                s.flow().parked.push_back(ack);
            }
            self.stats.acks_delayed += 1;
            self.arm_session_timer(target);
            return;
        }
        if seq > 0 {
            self.awaiting_store.push_back(ack);
            return;
        }
        let ack = PubAck { packet_id: id, reason_code: code, properties: AckProperties::default() };
        let packet =
            if qos == QoS::ExactlyOnce { Packet::PubRec(ack) } else { Packet::PubAck(ack) };
        self.answer(conn, None, id, qos, packet);
    }

    /// Holds a place for the PUBACK/PUBREC of `id` in the connection's answer order; returns
    /// the token that fills it ([`answer`](Self::answer)).
    fn withhold_answer(&mut self, index: u32, id: PacketId, qos: QoS) -> u64 {
        self.slot_conn(index).map_or(0, |c| c.owing().push(id, qos, None))
    }

    /// Sends a PUBACK/PUBREC on `conn` once those owed before it are sent: fills the place
    /// `token` holds (from [`withhold_answer`](Self::withhold_answer)), or, without one, goes
    /// to the back of the line (at once if nothing is owed); then sends whatever is ready at
    /// the front.
    pub(crate) fn answer(
        &mut self,
        conn: ConnId,
        token: Option<u64>,
        id: PacketId,
        qos: QoS,
        packet: Packet,
    ) {
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        let Some(o) = c.owing.as_deref_mut().filter(|o| !o.answers.is_empty()) else {
            // Nothing owed before it (and no place held: a token means one is).
            if token.is_none() {
                self.send(conn.index, &packet);
            }
            return;
        };
        match token {
            Some(t) => match o.answers.iter_mut().find(|a| a.token == t) {
                Some(slot) => slot.packet = Some(packet),
                None => return,
            },
            None => {
                o.push(id, qos, Some(packet));
            }
        }
        let mut ready = Vec::new();
        while o.answers.front().is_some_and(|a| a.packet.is_some()) {
            if let Some(a) = o.answers.pop_front() {
                o.qos1 -= u32::from(a.qos1);
                ready.extend(a.packet);
            }
        }
        for p in ready {
            self.send(conn.index, &p);
        }
    }

    /// Records an incoming QoS 2 packet identifier as awaiting PUBREL.
    fn take_incoming_qos2(&mut self, si: u32, id: PacketId) {
        if let Some(s) = self.session_mut(si)
            && s.incoming_qos2.insert(id.get())
        {
            self.log_session(si, |client_id| PersistOp::IncomingQos2 { client_id, packet_id: id });
        }
    }

    /// Stores (if retained) and routes an application message. Returns whether any
    /// subscription matched.
    fn publish_message(&mut self, now: Instant, origin: u64, p: Publish) -> bool {
        self.stats.messages_received += 1;
        let mut properties = p.properties;
        let expires_at =
            properties.message_expiry_interval.take().map(|s| now + Duration::from_secs(s.into()));
        properties.subscription_identifiers.clear();
        properties.topic_alias = None;
        // Copied out of the packet buffer, which may be a much larger read buffer: a message
        // kept in a queue or as retained must cost what `Message::cost` says, no more.
        let msg = Arc::new(Message {
            topic: p.topic.detach(),
            payload: Bytes::copy_from_slice(&p.payload),
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin,
        });
        self.store_retained(now, &msg);
        self.route(now, &msg)
    }

    /// RETAIN 1 replaces the topic's retained message; an empty payload clears it and is never
    /// stored ([MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7]).
    fn store_retained(&mut self, now: Instant, msg: &Arc<Message>) {
        if !msg.retain {
            return;
        }
        if msg.payload.is_empty() {
            if self.retained.remove(&msg.topic).is_some() {
                self.log(PersistOp::RetainedCleared { topic: msg.topic.clone() });
            }
        } else {
            self.retained.insert(msg.topic.clone(), msg.clone());
            if !msg.topic.is_system() && self.logging() {
                self.log(PersistOp::Retained { message: persist::stored(msg, now) });
            }
        }
    }

    /// Delivers `msg` to every matching subscription. Returns whether there was any.
    fn route(&mut self, now: Instant, msg: &Arc<Message>) -> bool {
        let mut entries = core::mem::take(&mut self.scratch);
        let mut groups = core::mem::take(&mut self.scratch_groups);
        entries.clear();
        groups.clear();
        let sources = self.tree.matches(msg.topic.as_str(), &mut entries, &mut groups);
        let any = !entries.is_empty() || !groups.is_empty();
        // A session subscribed through several matching filters gets one copy: bring its
        // entries together. Entries of one filter are one per session already.
        if sources > 1 && entries.len() > 1 {
            entries.sort_unstable_by_key(|e| e.session);
        }
        let mut i = 0;
        while i < entries.len() {
            let session = entries[i].session;
            let serial = self.session(session).map_or(0, |s| s.serial);
            let mut qos = None::<QoS>;
            let mut rap = false;
            let mut sub_ids = Vec::new();
            while i < entries.len() && entries[i].session == session {
                let e = entries[i];
                i += 1;
                if e.no_local && msg.origin == serial {
                    continue; // [MQTT-3.8.3-3]
                }
                qos = Some(qos.map_or(e.qos, |q| q.max(e.qos)));
                rap |= e.retain_as_published;
                sub_ids.extend(e.sub_id);
            }
            if let Some(q) = qos {
                let d = Delivery {
                    msg: msg.clone(),
                    qos: q.min(msg.qos),
                    retain: msg.retain && rap,
                    sub_ids,
                    key: 0,
                    shared: None,
                };
                self.deliver(now, session, d);
            }
        }
        for &g in &groups {
            self.deliver_shared(now, g, msg);
        }
        self.scratch = entries;
        self.scratch_groups = groups;
        any
    }

    /// Delivers `msg` to one member of shared group `g`.
    fn deliver_shared(&mut self, now: Instant, g: GroupRef, msg: &Arc<Message>) -> bool {
        let Some(e) = self.pick_member(g, &msg.topic) else {
            return false;
        };
        let shared = self.tree.group_mut(g).map(|g| g.filter.clone());
        let d = Delivery {
            msg: msg.clone(),
            qos: e.qos.min(msg.qos),
            retain: msg.retain && e.retain_as_published,
            sub_ids: e.sub_id.into_iter().collect(),
            key: 0,
            shared,
        };
        self.deliver(now, e.session, d);
        true
    }

    fn pick_member(&mut self, g: GroupRef, topic: &TopicName) -> Option<Entry> {
        let policy = self.config.shared_policy;
        let random = match policy {
            SharedPolicy::Random => self.next_random(),
            _ => 0,
        };
        let max_inflight = usize::from(self.config.max_inflight_messages);
        let authorizer = self.config.authorizer.as_deref();
        let sessions = &self.sessions;
        let slots = &self.slots;
        let group = self.tree.group_mut(g)?;
        let n = group.members.len();
        if n == 0 {
            return None;
        }
        let session = |e: &Entry| sessions.get(e.session as usize).and_then(Option::as_deref);
        // Members that may not receive the topic are passed over.
        let readable = |e: &Entry| session(e).is_some_and(|s| may_receive(authorizer, s, topic));
        let available = |e: &Entry| {
            let Some(s) = session(e) else {
                return false;
            };
            let Some(id) = s.conn else {
                return false;
            };
            let window = slots
                .get(id.index as usize)
                .and_then(|sl| sl.conn.as_ref())
                .map_or(0, |c| usize::from(c.receive_max).min(max_inflight));
            s.inflight.len() < window
        };
        let start = match policy {
            SharedPolicy::Random => (random % n as u64) as usize,
            _ => group.next % n,
        };
        let members = &group.members;
        let ready = |i: usize| available(&members[i]) && readable(&members[i]);
        if policy == SharedPolicy::Sticky && ready(start) {
            return Some(members[start]);
        }
        let mut order = (0..n).map(|k| (start + k) % n);
        let pick = match order.clone().find(|&i| ready(i)) {
            Some(i) => i,
            None => order.find(|&i| readable(&members[i]))?,
        };
        group.next = if policy == SharedPolicy::Sticky { pick } else { pick + 1 };
        Some(group.members[pick])
    }

    /// Sends `d` now if the session's connection and window allow, else queues it; drops it if
    /// the session may not receive its topic.
    fn deliver(&mut self, now: Instant, si: u32, d: Delivery) {
        let max_out = self.config.max_outbound_bytes;
        let max_inflight = usize::from(self.config.max_inflight_messages);
        let max_msgs = self.config.max_queued_messages;
        let max_bytes = self.config.max_queued_bytes;
        let queue_qos0 = self.config.queue_qos0_offline;
        let Some(s) = self.sessions.get(si as usize).and_then(Option::as_ref) else {
            return;
        };
        if !may_receive(self.config.authorizer.as_deref(), s, &d.msg.topic) {
            self.stats.dropped_not_authorized += 1;
            return;
        }
        let conn = s.conn.and_then(|id| {
            let c = self.conn(id)?;
            (c.phase == Phase::Connected).then_some((
                id.index,
                c.unwritten(),
                c.receive_max,
                c.is_gated(),
            ))
        });
        if let Some((index, unwritten, receive_max, gated)) = conn {
            if d.qos == QoS::AtMostOnce {
                let publisher = self.publisher.filter(|&p| {
                    !s.slow && s.conn != Some(p) && !self.config.max_ack_delay.is_zero()
                });
                if let Some(publisher) = publisher
                    && unwritten > max_out.min(PAUSE_PUBLISHERS_AT)
                {
                    // A live subscriber behind: it gets the message and the publisher waits,
                    // so a burst waits in the publisher's socket rather than in memory here.
                    self.write_publish(now, index, &d, None, false);
                    self.throttle(now, si, publisher);
                } else if unwritten <= max_out {
                    self.write_publish(now, index, &d, None, false);
                } else {
                    self.stats.dropped_slow_consumer += 1;
                }
                return;
            }
            let window = usize::from(receive_max).min(max_inflight);
            if s.queue.is_empty() && s.inflight.len() < window && unwritten <= max_out && !gated {
                self.send_inflight(now, index, si, d);
                return;
            }
        } else if d.qos == QoS::AtMostOnce && !queue_qos0 {
            return;
        }
        let park_ok = self.park_ok;
        let Some(s) = self.sessions.get_mut(si as usize).and_then(Option::as_deref_mut) else {
            return;
        };
        let cost = d.msg.cost();
        if s.queue_full(max_msgs, max_bytes, cost) {
            // A live subscriber that keeps up with acknowledgements takes it over the limit
            // and the publisher's ack waits (`max_ack_delay`); otherwise it is dropped.
            let live = s.conn.is_some() && !s.slow;
            if !(live && park_ok && d.qos != QoS::AtMostOnce) {
                self.stats.dropped_queue_full += 1;
                return;
            }
            self.congested.get_or_insert(si);
        }
        let mut d = d;
        self.log_queued(now, si, &mut d);
        if let Some(s) = self.session_mut(si) {
            s.queued_bytes += cost;
            s.queue.push_back(d);
        }
    }

    /// Pauses `publisher`'s input until session `si` has written its output (or turns out to
    /// be a slow consumer).
    fn throttle(&mut self, now: Instant, si: u32, publisher: ConnId) {
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let flow = s.flow();
        if flow.throttling.contains(&publisher) {
            return;
        }
        flow.throttling.push(publisher);
        let first = flow.throttled_since.is_none();
        flow.throttled_since.get_or_insert(now);
        if let Some(c) = self.conn_mut(publisher) {
            c.paused += 1;
            if c.paused == 1 {
                self.stats.inputs_paused += 1;
                self.events.push_back(Event::PauseInput(publisher));
            }
        }
        if first {
            self.arm_session_timer(si);
        }
    }

    /// Resumes the publishers session `si` paused.
    fn release_throttle(&mut self, si: u32) {
        let Some(flow) = self.session_mut(si).and_then(|s| s.flow.as_deref_mut()) else {
            return;
        };
        flow.throttled_since = None;
        if flow.throttling.is_empty() {
            return;
        }
        for p in core::mem::take(&mut flow.throttling) {
            if let Some(c) = self.conn_mut(p) {
                c.paused = c.paused.saturating_sub(1);
                if c.paused == 0 && c.phase != Phase::Closing {
                    self.events.push_back(Event::ResumeInput(p));
                }
            }
        }
    }

    /// Sends the acknowledgements session `si` withheld.
    fn release_parked(&mut self, si: u32) {
        let Some(flow) = self.session_mut(si).and_then(|s| s.flow.as_deref_mut()) else {
            return;
        };
        if flow.parked.is_empty() {
            return;
        }
        let parked = core::mem::take(&mut flow.parked);
        for p in parked {
            self.release_ack(p);
        }
    }

    /// Gives a QoS 1 or 2 delivery a packet identifier and sends it.
    fn send_inflight(&mut self, now: Instant, index: u32, si: u32, mut d: Delivery) {
        if d.msg.expired(now) {
            self.stats.dropped_expired += 1; // [MQTT-3.3.2-5]
            self.log_released(si, d.key);
            return;
        }
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let Some(id) = s.allocate_id() else {
            return; // 65,535 in flight: cannot happen with a window of at most 65,535
        };
        if d.key == 0 {
            self.log_queued(now, si, &mut d);
        }
        let key = d.key;
        let qos2 = d.qos == QoS::ExactlyOnce;
        let before = self.slot_conn(index).map_or(0, |c| c.unwritten());
        if self.write_publish(now, index, &d, Some(id), false) {
            let state = if qos2 { OutState::Rec } else { OutState::Ack };
            if let Some(s) = self.session_mut(si) {
                s.inflight.push_back(Inflight { id, state, delivery: d, rel_after: 0 });
            }
            if key != 0 {
                self.log_session(si, |client_id| PersistOp::Sent { client_id, key, packet_id: id });
            }
            if qos2 {
                self.gate_output(index, before);
            }
        } else {
            self.log_released(si, key);
        }
    }

    /// Durable mode: holds connection `index`'s output past its first `before` bytes until the
    /// store has everything logged so far. Called as a QoS 2 PUBLISH is written: the client
    /// must not have it before the store knows it was sent, with which packet identifier, and
    /// that its publisher's copy was received. Otherwise a crash in between makes the restarted
    /// broker take the publisher's resend as a new message, or send its stored copy under a
    /// new identifier, and the client receives it twice ([MQTT-4.3.3-10], exactly once).
    /// Everything after it waits too, so the connection's order is kept.
    fn gate_output(&mut self, index: u32, before: usize) {
        if !self.durable() || self.persist_seq <= self.persisted {
            return;
        }
        let seq = self.persist_seq;
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let o = c.owing();
        let new = o.gate_seq == 0;
        if new {
            o.gate_bytes = before;
        }
        o.gate_seq = o.gate_seq.max(seq);
        if new {
            self.gated.push(id);
        }
    }

    /// Moves queued messages onto the connection while its window and output allow.
    fn pump(&mut self, now: Instant, si: u32) {
        let max_out = self.config.max_outbound_bytes;
        let max_inflight = usize::from(self.config.max_inflight_messages);
        loop {
            let Some(s) = self.session(si) else {
                return;
            };
            let Some(id) = s.conn else {
                return;
            };
            let Some(c) = self.conn(id) else {
                return;
            };
            if c.phase != Phase::Connected
                || c.unwritten() > max_out
                || s.queue.is_empty()
                || c.is_gated()
            {
                return;
            }
            let window = usize::from(c.receive_max).min(max_inflight);
            let front_qos = s.queue.front().map_or(QoS::AtMostOnce, |d| d.qos);
            if front_qos != QoS::AtMostOnce && s.inflight.len() >= window {
                return;
            }
            let max_msgs = self.config.max_queued_messages;
            let max_bytes = self.config.max_queued_bytes;
            let Some(s) = self.session_mut(si) else {
                return;
            };
            let Some(d) = s.pop_queued() else {
                return;
            };
            if s.slow && s.queue.len() <= max_msgs / 2 {
                s.slow = false;
            }
            if s.has_parked() && !s.queue_full(max_msgs, max_bytes, 0) {
                self.release_parked(si);
            }
            if d.qos == QoS::AtMostOnce {
                if d.msg.expired(now) {
                    self.stats.dropped_expired += 1;
                } else {
                    self.write_publish(now, id.index, &d, None, false);
                }
                self.log_released(si, d.key);
            } else {
                self.send_inflight(now, id.index, si, d);
            }
        }
    }

    /// Encodes a PUBLISH for one connection. Returns false if it is too large for the client
    /// and was dropped, which counts as sent ([MQTT-3.1.2-25]).
    fn write_publish(
        &mut self,
        now: Instant,
        index: u32,
        d: &Delivery,
        id: Option<PacketId>,
        dup: bool,
    ) -> bool {
        let Some(c) = self.slot_conn(index) else {
            return false;
        };
        let msg = &*d.msg;
        let empty = TopicName::empty();
        let mut topic = &msg.topic;
        let mut own = None::<PublishProperties>;
        let mut alias = None;
        // MQTT 5 properties that differ per subscriber; without them the message's own
        // properties are written as they are, uncopied.
        if c.v5() && (!d.sub_ids.is_empty() || msg.expires_at.is_some() || c.out_aliases.is_some())
        {
            let props = own.insert(msg.properties.clone());
            props.subscription_identifiers.clone_from(&d.sub_ids);
            if let Some(at) = msg.expires_at {
                // [MQTT-3.3.2-6]: the interval left, rounded up.
                let left = at.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                props.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
            }
            if let Some(aliases) = &c.out_aliases {
                let (a, known) = aliases.lookup(&msg.topic, c.alias_max);
                props.topic_alias = NonZeroU16::new(a);
                if known {
                    topic = &empty;
                }
                alias = Some(a);
            }
        }
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id: id,
            properties: own.as_ref().unwrap_or(&msg.properties),
            payload: &msg.payload,
        };
        match c.encoder.encode_publish(publish, &mut c.tail) {
            Ok(_) => {
                c.push_payload(&msg.payload);
                c.seal_full_tail();
                if let (Some(a), Some(aliases)) = (alias, c.out_aliases.as_mut()) {
                    aliases.commit(&msg.topic, a);
                }
                self.stats.messages_sent += 1;
                self.mark_ready(index);
                true
            }
            Err(_) => {
                self.stats.dropped_too_large += 1;
                false
            }
        }
    }

    fn on_puback(&mut self, now: Instant, index: u32, ack: PubAck) {
        let Some(si) = self.slot_conn(index).map(|c| c.session) else {
            return;
        };
        let Some(s) = self.session_mut(si) else {
            return;
        };
        match s.inflight_index(ack.packet_id) {
            Some(i) if s.inflight[i].state == OutState::Ack => {
                if let Some(done) = s.inflight.remove(i) {
                    self.log_released(si, done.delivery.key);
                }
                self.pump(now, si);
            }
            // A PUBACK for a QoS 2 message: the wrong acknowledgement for an identifier in
            // flight is a protocol error, as a PUBREC for a QoS 1 message is.
            Some(_) => self.violation(now, index, ReasonCode::ProtocolError),
            // Not in flight (answered already, or never sent): nothing to do.
            None => {}
        }
    }

    fn on_pubrec(&mut self, now: Instant, index: u32, ack: PubAck) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let (si, v5) = (c.session, c.v5());
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let id = ack.packet_id;
        match s.inflight_index(id) {
            Some(i) if s.inflight[i].state == OutState::Ack => {
                // A PUBREC for a QoS 1 message: a protocol error.
                self.violation(now, index, ReasonCode::ProtocolError);
            }
            Some(i) if ack.reason_code.is_error() => {
                // The client refused it: done, no PUBREL ([MQTT-4.3.3-?]).
                if let Some(done) = s.inflight.remove(i) {
                    self.log_released(si, done.delivery.key);
                }
                self.pump(now, si);
            }
            Some(i) => {
                s.inflight[i].state = OutState::Comp;
                let key = s.inflight[i].delivery.key;
                let before = self.persist_seq;
                if key != 0 {
                    self.log_session(si, |client_id| PersistOp::Received { client_id, key });
                }
                let rel_after =
                    if self.durable() && self.persist_seq > before { self.persist_seq } else { 0 };
                if let Some(s) = self.session_mut(si)
                    && let Some(f) = s.inflight.get_mut(i)
                {
                    f.rel_after = rel_after;
                }
                self.send_pubrel(index, id, rel_after);
            }
            None => {
                let code =
                    if v5 { ReasonCode::PacketIdentifierNotFound } else { ReasonCode::Success };
                let rel = PubAck { packet_id: id, reason_code: code, ..PubAck::new(id) };
                self.send(index, &Packet::PubRel(rel));
            }
        }
    }

    /// Sends PUBREL `id`, or, in durable mode, parks it until the store has log position
    /// `rel_after` (the PUBREC it answers).
    fn send_pubrel(&mut self, index: u32, id: PacketId, rel_after: u64) {
        self.send_after(index, Packet::PubRel(PubAck::new(id)), rel_after);
    }

    /// Sends `packet` once the store has log position `seq` (at once if it has), and after
    /// the replies this connection already has waiting, so that PUBRELs keep the order of
    /// their PUBRECs ([MQTT-4.6.0-4]).
    fn send_after(&mut self, index: u32, packet: Packet, seq: u64) {
        let conn = self.conn_id(index);
        let persisted = self.persisted;
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let seq = match c.owing.as_deref() {
            Some(o) if o.replies_waiting > 0 => seq.max(o.reply_after),
            _ => seq,
        };
        if seq <= persisted {
            return self.send(index, &packet);
        }
        let o = c.owing();
        if o.replies_waiting as usize >= MAX_OWED {
            return self.violation(self.last_now(index), index, ReasonCode::ReceiveMaximumExceeded);
        }
        o.replies_waiting += 1;
        o.reply_after = seq;
        self.awaiting_reply.push_back((seq, conn, packet));
    }

    fn on_pubrel(&mut self, index: u32, ack: PubAck) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let (si, v5) = (c.session, c.v5());
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let id = ack.packet_id;
        let known = s.incoming_qos2.remove(&id.get());
        if known {
            self.log_session(si, |client_id| PersistOp::IncomingQos2Released {
                client_id,
                packet_id: id,
            });
        }
        let code =
            if known || !v5 { ReasonCode::Success } else { ReasonCode::PacketIdentifierNotFound };
        let comp = PubAck { packet_id: id, reason_code: code, ..PubAck::new(id) };
        // Durable mode: not before the store has forgotten the identifier (or, for an unknown
        // one, whatever release of it may still be on the way to the store).
        let seq = if self.durable() { self.persist_seq } else { 0 };
        self.send_after(index, Packet::PubComp(comp), seq);
    }

    fn on_pubcomp(&mut self, now: Instant, index: u32, ack: PubAck) {
        let Some(si) = self.slot_conn(index).map(|c| c.session) else {
            return;
        };
        let Some(s) = self.session_mut(si) else {
            return;
        };
        match s.inflight_index(ack.packet_id) {
            Some(i) if s.inflight[i].state == OutState::Comp => {
                if let Some(done) = s.inflight.remove(i) {
                    self.log_released(si, done.delivery.key);
                }
                self.pump(now, si);
            }
            // A PUBCOMP for a QoS 1 message, or for a QoS 2 message before its PUBREC: a
            // protocol error.
            Some(_) => self.violation(now, index, ReasonCode::ProtocolError),
            None => {}
        }
    }

    // ---------------------------------------------------------------- subscriptions

    fn on_subscribe(&mut self, now: Instant, index: u32, sub: Subscribe) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let v5 = c.v5();
        let si = c.session;
        let (client_id, username, peer) = self.identity(index);
        let sub_id = sub.properties.subscription_identifier;
        if sub_id.is_some() && !self.config.subscription_identifiers_available {
            return self.violation(now, index, ReasonCode::SubscriptionIdentifiersNotSupported);
        }
        // Every decision first, so that a deferred one leaves nothing half done.
        let mut allowed = Vec::with_capacity(sub.subscriptions.len());
        for s in &sub.subscriptions {
            let f = &s.filter;
            if (f.is_shared() && !self.config.shared_subscription_available)
                || (f.has_wildcards() && !self.config.wildcard_subscription_available)
            {
                allowed.push(false); // refused below for that reason, not asked
                continue;
            }
            match self
                .check(index, Action::Subscribe, f.as_str(), || Packet::Subscribe(sub.clone()))
            {
                Some(a) => allowed.push(a),
                None => return, // deferred: handled again with the answer
            }
        }
        let _ = (&client_id, &username, &peer);
        let mut codes = Vec::with_capacity(sub.subscriptions.len());
        let mut retained = Vec::new();
        for (s, &allowed) in sub.subscriptions.iter().zip(&allowed) {
            let f = &s.filter;
            let code = if f.is_shared() && !self.config.shared_subscription_available {
                ReasonCode::SharedSubscriptionsNotSupported
            } else if f.has_wildcards() && !self.config.wildcard_subscription_available {
                // [MQTT-3.8.3-2] in 3.1.1 (0x80 there).
                ReasonCode::WildcardSubscriptionsNotSupported
            } else if !allowed {
                ReasonCode::NotAuthorized
            } else {
                let qos = s.options.qos.min(self.config.max_qos);
                let entry = Entry {
                    session: si,
                    qos,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    sub_id,
                };
                let existed = self.tree.insert(f, entry);
                if let Some(sess) = self.session_mut(si) {
                    sess.subscriptions.insert(f.detach());
                }
                let (filter, options) =
                    (f.detach(), crate::codec::SubscriptionOptions { qos, ..s.options });
                self.log_session(si, |client_id| PersistOp::Subscribed {
                    client_id,
                    filter,
                    options,
                    subscription_id: sub_id,
                });
                use crate::codec::RetainHandling::*;
                let send = match s.options.retain_handling {
                    SendOnSubscribe => true,
                    SendOnNewSubscribe => !existed,
                    DoNotSend => false,
                };
                // Shared subscriptions get no retained messages on subscribe.
                if send && !f.is_shared() {
                    retained.push((f.clone(), qos));
                }
                match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            codes.push(code);
        }
        let _ = v5;
        let ack = SubAck {
            packet_id: sub.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        self.send(index, &ack.into());
        for (filter, qos) in retained {
            self.send_retained(now, si, &filter, qos, sub_id);
        }
    }

    /// The retained messages matching a new subscription, sent with RETAIN 1 (3.1.1:
    /// [MQTT-3.3.1-8]).
    fn send_retained(
        &mut self,
        now: Instant,
        si: u32,
        filter: &TopicFilter,
        qos: QoS,
        sub_id: Option<crate::codec::SubscriptionId>,
    ) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        let mut expired = Vec::new();
        if filter.has_wildcards() {
            for (topic, msg) in &self.retained {
                if filter.matches(topic) {
                    if msg.expired(now) {
                        expired.push(topic.clone());
                    } else {
                        found.push(msg.clone());
                    }
                }
            }
        } else if let Ok(topic) = TopicName::new(filter.filter())
            && let Some(msg) = self.retained.get(&topic)
        {
            if msg.expired(now) {
                expired.push(topic);
            } else {
                found.push(msg.clone());
            }
        }
        for t in expired {
            self.retained.remove(&t);
            self.log(PersistOp::RetainedCleared { topic: t });
        }
        for msg in found {
            let d = Delivery {
                qos: msg.qos.min(qos),
                retain: true,
                sub_ids: sub_id.into_iter().collect(),
                msg,
                key: 0,
                shared: None,
            };
            self.deliver(now, si, d);
        }
    }

    fn on_unsubscribe(&mut self, index: u32, unsub: Unsubscribe) {
        let Some(si) = self.slot_conn(index).map(|c| c.session) else {
            return;
        };
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for f in &unsub.filters {
            let removed = self.tree.remove(f, si);
            if let Some(s) = self.session_mut(si) {
                s.subscriptions.remove(f);
            }
            if removed {
                let filter = f.clone();
                self.log_session(si, |client_id| PersistOp::Unsubscribed { client_id, filter });
            }
            codes.push(if removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        let ack = UnsubAck {
            packet_id: unsub.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        self.send(index, &ack.into());
    }

    fn on_disconnect(&mut self, now: Instant, index: u32, d: Disconnect) {
        let max_expiry = self.config.session_expiry_interval;
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let si = c.session;
        if let Some(expiry) = d.properties.session_expiry_interval
            && let Some(s) = self.session_mut(si)
        {
            if s.expiry == 0 && expiry != 0 {
                // [MQTT-3.14.2-?]: a session that was to end may not be prolonged here.
                return self.violation(now, index, ReasonCode::ProtocolError);
            }
            s.expiry = expiry.min(max_expiry);
            if s.expiry > 0 {
                let (protocol, expiry) = (s.protocol, s.expiry);
                self.log_session(si, |client_id| PersistOp::Session {
                    client_id,
                    protocol,
                    expiry,
                });
            }
        }
        let with_will = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        let reason = CloseReason::ClientDisconnect(d.reason_code);
        self.close(now, index, reason, None, with_will);
    }

    // ---------------------------------------------------------------- $SYS

    fn publish_sys(&mut self, now: Instant) {
        let g = self.gauges();
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let st = self.stats.clone();
        let entries = [
            ("$SYS/broker/version", self.config.version.clone()),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            ("$SYS/broker/clients/connected", g.clients_connected.to_string()),
            ("$SYS/broker/clients/total", g.sessions.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                (g.sessions - g.clients_connected.min(g.sessions)).to_string(),
            ),
            ("$SYS/broker/messages/received", st.messages_received.to_string()),
            ("$SYS/broker/messages/sent", st.messages_sent.to_string()),
            ("$SYS/broker/messages/stored", g.queued.to_string()),
            ("$SYS/broker/subscriptions/count", g.subscriptions.to_string()),
            ("$SYS/broker/retained messages/count", g.retained.to_string()),
            ("$SYS/broker/bytes/received", st.bytes_received.to_string()),
            ("$SYS/broker/bytes/sent", st.bytes_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                (st.dropped_queue_full + st.dropped_slow_consumer).to_string(),
            ),
        ];
        for (topic, value) in entries {
            let Ok(topic) = TopicName::new(topic) else {
                continue;
            };
            let msg = Arc::new(Message {
                topic,
                payload: Bytes::from(value.into_bytes()),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at: None,
                origin: 0,
            });
            self.store_retained(now, &msg);
            self.route(now, &msg);
        }
    }
}

/// Whether session `s` may receive a message on `topic` ([`Authorizer::may_receive`]).
fn may_receive(authorizer: Option<&dyn Authorizer>, s: &Session, topic: &TopicName) -> bool {
    let Some(a) = authorizer else {
        return true;
    };
    let info = ClientInfo {
        client_id: s.client_id.as_str(),
        username: s.username.as_ref().map(MqttStr::as_str),
        peer: &s.peer,
    };
    a.may_receive(&info, topic.as_str())
}

fn auth_packet(code: ReasonCode, method: Option<MqttStr>, data: Option<Bytes>) -> Auth {
    Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: method,
            authentication_data: data,
            ..AuthProperties::default()
        },
    }
}

impl ConnAck {
    /// A refusal with `code` and no properties.
    fn refusal(code: ReasonCode) -> Self {
        ConnAck {
            session_present: false,
            reason_code: code,
            properties: ConnAckProperties::default(),
        }
    }
}
