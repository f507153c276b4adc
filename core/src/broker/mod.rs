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
//!    and [`Broker::poll_event`]. [`Command::Close`] asks the adapter to write what is
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
//!   16 KiB unwritten pauses the QoS 0 publisher feeding it ([`Command::PauseInput`]) until its
//!   output is written, so it loses nothing while it keeps reading.
//! - **QoS 2 inbound** is delivered onward when the PUBLISH arrives; the packet identifier is
//!   then held until PUBREL so that a resent PUBLISH is not delivered twice.
//! - **Shared subscriptions** pick a member per [`SharedPolicy`], preferring members that are
//!   connected with room in their window. When every member is offline the message is queued
//!   for the member whose turn it is, so it is not lost while sessions last.

pub mod admin;
mod authz;
mod clients;
pub mod cluster;
mod config;
mod conn;
mod connect;
pub mod driver;
mod durable;
pub mod persist;
mod publish;
mod route;
mod session;
mod subscribe;
mod sys;
mod timers;
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

pub use cluster::{ClaimTicket, ClusterNode, ClusterOut, ClusterSeq, ClusterTarget, NodeFigures};
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{
    Action, AuthDecision, AuthRequest, AuthStage, Authenticator, Authorizer, AuthzDecision,
    BrokerConfig, ClientInfo, ConfigError, MIN_MAX_PACKET_SIZE, PeerInfo, SharedPolicy,
};
use persist::{PersistOp, PersistSeq};
use route::Routing;
use session::{
    Delivery, Inflight, LazyDeque, Message, OutAliases, OutState, ParkedAck, PendingWill, Session,
};
use tree::{Entry, GroupRef, SubTree};

use crate::codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Disconnect, Encoder, MAX_PACKET_SIZE, MqttStr, Packet, PacketId, PayloadFormat,
    ProtocolVersion, PubAck, Publish, PublishProperties, PublishRef, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::time::{Duration, Instant, MaybeAt};
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

/// Names a deferred authentication, answered with [`Broker::handle_auth`].
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

/// In words, for logs: `the client disconnected`, `packet too large (0x95)`.
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientDisconnect(ReasonCode::Success) => f.write_str("the client disconnected"),
            Self::ClientDisconnect(code) => write!(f, "the client disconnected: {}", code.words()),
            Self::TransportClosed => f.write_str("the connection was lost (no DISCONNECT)"),
            Self::Server(code) => write!(f, "{}", code.words()),
        }
    }
}

/// What happened, for the application and the log: notifications, never instructions (those
/// are [`Command`]s).
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
        /// Where it connects from, when the transport says.
        peer: Option<core::net::SocketAddr>,
        /// The listener that accepted it ([`PeerInfo::listener`]).
        listener: u16,
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
        /// Where it connected from, when the transport said.
        peer: Option<core::net::SocketAddr>,
        /// The listener that accepted it.
        listener: u16,
    },
    /// A disconnected session reached its expiry and was discarded.
    SessionExpired {
        /// Its client identifier.
        client_id: MqttStr,
    },
}

/// What the broker asks of its adapter: instructions, where an [`Event`] only informs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// Write what [`Broker::poll_transmit`] still has for this connection, close the transport,
    /// then call [`Broker::handle_closed`].
    Close(ConnId),
    /// An authenticator answered [`AuthDecision::Defer`]: decide, then call
    /// [`Broker::handle_auth`] with the ticket.
    Authenticate {
        /// Names this request.
        ticket: AuthTicket,
        /// The connection waiting.
        conn: ConnId,
        /// What to decide on.
        request: AuthRequest,
    },
    /// Stop reading from this connection: what it publishes is more than a live subscriber can
    /// take. Bytes already read may still be passed to [`Broker::handle_bytes`]; the broker
    /// leaves them in the buffer until [`Command::ResumeInput`].
    PauseInput(ConnId),
    /// Read from this connection again, and first pass the bytes left in its buffer to
    /// [`Broker::handle_bytes`] (even if nothing new arrived).
    ResumeInput(ConnId),
    /// The authorizer deferred ([`AuthzDecision::Defer`]): decide, then call
    /// [`Broker::handle_authorization`] with the ticket. The connection's input waits.
    Authorize {
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
    /// Messages published here and forwarded to the other nodes of a cluster.
    pub cluster_forwarded: u64,
    /// Messages from other nodes of a cluster routed here.
    pub cluster_received: u64,
    /// Sessions dropped here because their client connected on another node since.
    pub cluster_takeovers: u64,
    /// Wills of connections of a node that died, published here.
    pub cluster_wills: u64,
    /// Sessions another node gave up to a client connecting here.
    pub cluster_sessions_moved_in: u64,
    /// In a cluster ([`BrokerConfig::cluster`]): whether its backplane is reachable now;
    /// `None` for a broker on its own.
    pub cluster_connected: Option<bool>,
    /// Messages not delivered to a subscriber because it may not receive their topic
    /// ([`Authorizer::may_receive`]).
    pub dropped_not_authorized: u64,
    /// Connections their transport refused before any MQTT: a failed TLS handshake, a request
    /// that was no WebSocket upgrade, a bad PROXY protocol header ([`Broker::handle_refused`]).
    pub transport_refused: u64,
    /// Connections closed because they did not complete CONNECT within `connect_timeout`:
    /// silent clients, and TLS handshakes or WebSocket upgrades that never finished.
    pub connect_timeouts: u64,
    /// CONNECTs refused, or re-authentications failed, because the client's credentials
    /// were wrong or not allowed (the authenticator's refusals).
    pub auth_failures: u64,
    /// PUBLISH packets received from clients, by QoS (0, 1, 2).
    pub received_by_qos: [u64; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub sent_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_bytes_received_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub payload_bytes_sent_by_qos: [u64; 3],
    /// Per listener (the adapter's index of [`PeerInfo::listener`]): connections accepted,
    /// and open now.
    pub listeners: Vec<ListenerStats>,
    /// Per protocol version, MQTT 3.1, 3.1.1 and 5.0 in that order: CONNECTs accepted, and
    /// clients connected now.
    pub versions: [VersionStats; 3],
    /// Each bridge's name and figures, as its host last reported them
    /// ([`Broker::set_bridge_stats`]).
    pub bridges: Vec<(alloc::string::String, crate::bridge::BridgeStats)>,
    /// In a cluster: every node's name, whether it is alive, and its figures as it last said
    /// them, this node included ([`Broker::handle_cluster_nodes`]).
    pub cluster_nodes: Vec<ClusterNode>,
}

/// One listener's connections ([`Stats::listeners`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
}

/// One protocol version's clients ([`Stats::versions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionStats {
    /// CONNECTs accepted since start.
    pub connects: u64,
    /// Clients connected now.
    pub connected: u64,
}

/// The index of `version` in [`Stats::versions`].
pub fn version_index(version: ProtocolVersion) -> usize {
    match version {
        ProtocolVersion::V3_1 => 0,
        ProtocolVersion::V3_1_1 => 1,
        ProtocolVersion::V5 => 2,
    }
}

impl Broker {
    /// The bridges' figures now, for `$SYS` and [`Stats::bridges`]: the
    /// [`Driver`](driver::Driver) that hosts them reports them before it asks for either.
    pub fn set_bridge_stats(
        &mut self,
        bridges: Vec<(alloc::string::String, crate::bridge::BridgeStats)>,
    ) {
        self.stats.bridges = bridges;
    }
}

impl Stats {
    fn listener(&mut self, listener: u16) -> &mut ListenerStats {
        let i = usize::from(listener);
        if self.listeners.len() <= i {
            self.listeners.resize(i + 1, ListenerStats::default());
        }
        &mut self.listeners[i]
    }

    /// A PUBLISH received (a will included), counted by its QoS.
    pub(crate) fn count_received(&mut self, qos: QoS, payload: usize) {
        self.messages_received += 1;
        self.received_by_qos[qos as usize] += 1;
        self.payload_bytes_received_by_qos[qos as usize] += payload as u64;
    }
}

/// The counters as a sentence, for a log: the counters of rare events (drops, flow control)
/// only when they are not zero.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "statistics since start: connections {} accepted, {} refused; clients connected {}; \
             messages {} received, {} sent; bytes {} received, {} sent",
            self.connections_accepted,
            self.connections_refused,
            self.clients_connected_total,
            self.messages_received,
            self.messages_sent,
            self.bytes_received,
            self.bytes_sent
        )?;
        let rare = [
            (self.dropped_queue_full, "dropped (queue full)"),
            (self.dropped_slow_consumer, "dropped (slow consumer)"),
            (self.dropped_expired, "dropped (expired)"),
            (self.dropped_too_large, "dropped (too large for the receiver)"),
            (self.dropped_no_member, "dropped (no shared-subscription member left)"),
            (self.dropped_not_authorized, "not delivered (not authorized to receive)"),
            (self.publish_denied, "publishes denied"),
            (self.sessions_expired, "sessions expired"),
            (self.acks_delayed, "acknowledgements withheld"),
            (self.slow_consumers, "slow consumers"),
            (self.inputs_paused, "publishers paused"),
            (self.shared_redelivered, "shared-subscription messages redelivered"),
            (self.cluster_forwarded, "messages forwarded to the cluster"),
            (self.cluster_received, "messages received from the cluster"),
            (self.cluster_takeovers, "sessions taken over by another node"),
            (self.transport_refused, "connections refused by their transport (TLS, WebSocket)"),
            (self.connect_timeouts, "connections that did not connect in time"),
            (self.auth_failures, "authentication failures"),
        ];
        for (n, what) in rare.into_iter().filter(|(n, _)| *n > 0) {
            write!(f, "; {what} {n}")?;
        }
        Ok(())
    }
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
    /// In a cluster: the nodes were asked for the client's session already.
    claimed: bool,
}

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
    /// store has log position `gate_seq` (see `Broker::gate_output`); and, in a cluster that
    /// mirrors its log, until the backplane has position `gate_cluster`.
    gate_seq: u64,
    gate_cluster: u64,
    gate_bytes: usize,
}

impl Owing {
    fn gated(&self) -> bool {
        self.gate_seq > 0 || self.gate_cluster > 0
    }
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
const PAUSE_PUBLISHERS_AT: usize = 16 * 1024;

/// Output a connection's tail buffer collects before it joins the output queue.
const TAIL_CHUNK: usize = 8 * 1024;
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
    /// Its session, once CONNECT completed.
    session: Option<u32>,
    accepted_at: Instant,
    /// The keep-alive in force, seconds (zero for none): the client is dropped after 1.5 times
    /// it without a packet.
    keep_alive: u16,
    last_recv: Instant,
    timer_at: MaybeAt,
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
    out: LazyDeque<Bytes>,
    out_bytes: usize,
    tail: BytesMut,
    in_ready: bool,
    /// Subscribers' sessions whose full output paused this connection's input.
    paused: u16,
    /// The listener that accepted it ([`PeerInfo::listener`]).
    listener: u16,
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
        self.owing.as_ref().is_some_and(|o| o.gated())
    }

    fn deadline(&self, connect_timeout: Duration) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect | Phase::Authenticating => Some(self.accepted_at + connect_timeout),
            Phase::Connected if self.keep_alive > 0 => {
                Some(self.last_recv + Duration::from_millis(u64::from(self.keep_alive) * 1500))
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
    sessions: Vec<Option<Box<Session>>>,
    free_sessions: Vec<u32>,
    session_count: usize,
    by_client_id: clients::ClientIndex,
    tree: SubTree,
    retained: BTreeMap<TopicName, Arc<Message>>,
    /// Every armed deadline, in order: the first is what `poll_timeout` reports.
    timers: BTreeSet<(Instant, Timer)>,
    ready: VecDeque<ConnId>,
    events: VecDeque<Event>,
    commands: VecDeque<Command>,
    pending_auth: BTreeMap<u64, ConnId>,
    /// Deferred authorizations: the connection and the packet to handle again.
    pending_authz: BTreeMap<u64, (ConnId, Packet, Action, alloc::string::String)>,
    next_ticket: u64,
    next_serial: u64,
    rng: u64,
    stats: Stats,
    scratch: Vec<Entry>,
    scratch_groups: Vec<GroupRef>,
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
    awaiting_reply: VecDeque<(u64, u64, ConnId, Packet)>,
    /// Durable mode: connections whose output waits at a gate for the store (see
    /// `gate_output`).
    gated: Vec<ConnId>,
    /// A cluster node's side of the seam ([`BrokerConfig::cluster`]).
    cluster: Option<Box<cluster::ClusterState>>,
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
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            session_count: 0,
            by_client_id: clients::ClientIndex::new(rng),
            tree: SubTree::new(),
            retained: BTreeMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            commands: VecDeque::new(),
            pending_auth: BTreeMap::new(),
            pending_authz: BTreeMap::new(),
            next_ticket: 1,
            next_serial: 1,
            rng,
            stats: Stats::default(),
            scratch: Vec::new(),
            scratch_groups: Vec::new(),
            persist_log: VecDeque::new(),
            persist_seq: 0,
            persisted: 0,
            next_key: 1,
            awaiting_store: VecDeque::new(),
            awaiting_reply: VecDeque::new(),
            gated: Vec::new(),
            cluster: None,
        };
        if broker.config.cluster {
            broker.cluster = Some(Box::default());
            broker.stats.cluster_connected = Some(false);
            broker.tree.record_interest();
        }
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
            clients_connected: self.stats.versions.iter().map(|v| v.connected as usize).sum(),
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
            Phase::Connected => c.session.and_then(|si| self.session(si)).map(|s| &s.client_id),
            _ => None,
        }
    }

    /// Whether a session exists for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.session_for(client_id.as_bytes()).is_some()
    }

    /// The session that holds `client_id`.
    fn session_for(&self, client_id: &[u8]) -> Option<u32> {
        self.by_client_id.get(client_id, &self.sessions)
    }

    // ---------------------------------------------------------------- input

    /// A new transport. Refused when `max_connections` are open: close it at once.
    pub fn accept(&mut self, now: Instant, peer: PeerInfo) -> Result<ConnId, AcceptError> {
        if self.connections >= self.config.max_connections {
            self.stats.connections_refused += 1;
            return Err(AcceptError::TooManyConnections);
        }
        let listener = peer.listener;
        let conn = Conn {
            peer: Some(Box::new(peer)),
            phase: Phase::AwaitConnect,
            decoder: Decoder::new(None, self.config.max_packet_size),
            encoder: Encoder::new(ProtocolVersion::V3_1_1),
            session: None,
            accepted_at: now,
            keep_alive: 0,
            last_recv: now,
            timer_at: MaybeAt::NONE,
            receive_max: u16::MAX,
            alias_max: 0,
            problem_info: true,
            out_aliases: None,
            pending: None,
            extra: None,
            out: LazyDeque::default(),
            out_bytes: 0,
            tail: BytesMut::new(),
            in_ready: false,
            owing: None,
            paused: 0,
            listener,
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
        let counts = self.stats.listener(listener);
        counts.accepted += 1;
        counts.open += 1;
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
        let Some(listener) = self.conn(conn).map(|c| c.listener) else {
            return;
        };
        self.close(now, conn.index, CloseReason::TransportClosed, None, true);
        let counts = self.stats.listener(listener);
        counts.open = counts.open.saturating_sub(1);
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

    /// Answers an [`Command::Authenticate`]. A ticket whose connection has gone is ignored; a
    /// `Defer` answer counts as a refusal.
    pub fn handle_auth(&mut self, now: Instant, ticket: AuthTicket, decision: AuthDecision) {
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

    /// Answers an [`Command::Authorize`]: the PUBLISH or SUBSCRIBE is handled with this
    /// answer, then the input that waited. A ticket whose connection has gone is ignored.
    pub fn handle_authorization(&mut self, now: Instant, ticket: AuthTicket, allowed: bool) {
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
    /// Each connection is then closed as by [`Command::Close`]; wills are published as
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
            Some(o) if o.gated() => limit.min(o.gate_bytes),
            _ => limit,
        };
        if limit == 0 {
            return None;
        }
        let chunk = if c.out.is_empty() {
            if c.tail.is_empty() {
                return None;
            }
            // A tail with little room left goes out whole: keeping it would keep its buffer
            // alive (an idle connection's last answer) for room too small to be worth it.
            let mut head = if c.tail.capacity() - c.tail.len() < TAIL_KEEP {
                core::mem::take(&mut c.tail).freeze()
            } else {
                c.tail.split().freeze()
            };
            if head.len() > limit {
                // What the writer cannot take yet waits in the queue.
                let chunk = head.split_to(limit);
                c.out_bytes += head.len();
                c.out.push_back(head);
                chunk
            } else {
                head
            }
        } else {
            let front = c.out.front_mut()?;
            let chunk =
                if front.len() > limit { front.split_to(limit) } else { c.out.pop_front()? };
            c.out_bytes -= chunk.len();
            chunk
        };
        if let Some(o) = c.owing.as_deref_mut()
            && o.gated()
        {
            o.gate_bytes -= chunk.len();
        }
        let session = c.session;
        let drained = c.unwritten() == 0;
        if drained {
            // An idle connection keeps no queue of output buffers. (The tail is kept: its
            // spare capacity is small, and reallocating it per burst costs more.)
            c.out = LazyDeque::default();
        }
        self.stats.bytes_sent += chunk.len() as u64;
        if drained && let Some(session) = session {
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

    /// Whether `conn`'s input is paused ([`Command::PauseInput`]): bytes passed to
    /// [`handle_bytes`](Self::handle_bytes) stay in the buffer for now.
    #[must_use]
    pub fn is_input_paused(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some_and(|c| c.paused > 0)
    }

    /// The transport of `conn` refused it (a failed TLS handshake, a request that was no
    /// WebSocket upgrade): counted, then closed as by [`handle_closed`](Self::handle_closed).
    pub fn handle_refused(&mut self, now: Instant, conn: ConnId) {
        self.stats.transport_refused += 1;
        self.handle_closed(now, conn);
    }

    /// The transport learnt where `conn` really comes from (the PROXY protocol of a load
    /// balancer in front): that address replaces the socket's, for the log and the hooks.
    /// Before the connection's first bytes, as [`handle_identity`](Self::handle_identity).
    pub fn handle_peer_addr(&mut self, conn: ConnId, addr: core::net::SocketAddr) {
        if let Some(c) = self.conn_mut(conn)
            && c.phase == Phase::AwaitConnect
        {
            let peer = c.peer.get_or_insert_with(Box::default);
            peer.addr = Some(addr);
        }
    }

    /// The transport proved who the client of `conn` is (a TLS client certificate, on a
    /// listener that takes it as the user name): see [`PeerInfo::identity`]. Call before the
    /// connection's first bytes; once its CONNECT is handled it is too late and ignored.
    pub fn handle_identity(&mut self, conn: ConnId, identity: MqttStr) {
        if let Some(c) = self.conn_mut(conn)
            && c.phase == Phase::AwaitConnect
        {
            let peer = c.peer.get_or_insert_with(Box::default);
            peer.identity = Some(identity.detach());
        }
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

    /// The next thing the adapter must do.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
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
