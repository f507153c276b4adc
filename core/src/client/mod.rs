//! The MQTT client state machine: sans-IO, for MQTT 3.1.1 and 5.0.
//!
//! A [`Client`] is driven by its runtime: [`connect`](Client::connect) when a transport is up,
//! [`handle_bytes`](Client::handle_bytes) with what arrives, [`handle_closed`](Client::handle_closed)
//! when the transport goes away, [`handle_timeout`](Client::handle_timeout) when the deadline from
//! [`poll_timeout`](Client::poll_timeout) passes, and application commands
//! ([`publish`](Client::publish), [`subscribe`](Client::subscribe),
//! [`unsubscribe`](Client::unsubscribe), [`disconnect`](Client::disconnect)) at any time. After
//! each call the runtime drains output in this order:
//!
//! 1. [`poll_transmit`](Client::poll_transmit) until `None`, writing the bytes to the transport;
//! 2. [`poll_timeout`](Client::poll_timeout), re-arming its one timer;
//! 3. [`poll_event`](Client::poll_event) until `None`: what happened, for the application;
//! 4. [`poll_command`](Client::poll_command) until `None`: what the runtime must do
//!    ([`Command::CloseTransport`]: the bytes above are flushed, now close the socket;
//!    [`Command::Reconnect`]: open a new transport and call [`reconnect`](Client::reconnect)).
//!
//! Session state (QoS 1 and 2 messages in flight, QoS 2 messages received and not yet released,
//! subscriptions, queued publishes) outlives a transport: after a reconnect with Session Present
//! the unacknowledged PUBLISH packets are sent again with DUP set and pending PUBRELs again, in
//! their original order ([MQTT-4.4.0-1]); without Session Present the application's
//! subscriptions are made again and unacknowledged publishes are sent as new ones.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::num::NonZeroU16;

use crate::codec::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Disconnect, DisconnectProperties, EncodeError, Encoder, MAX_PACKET_SIZE, MqttStr, Packet,
    PacketId, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, Subscription, UnsubAck, Unsubscribe, UnsubscribeProperties,
};
use crate::time::{Duration, Instant};
use crate::topic::{TopicFilter, TopicName};

mod config;
pub mod driver;

use config::Backoff;
pub use config::{ClientConfig, ReconnectOptions};

/// What happened, for the application: notifications, never instructions (those are
/// [`Command`]s).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The server accepted the connection.
    Connected {
        /// Whether the server resumed an existing session.
        session_present: bool,
        /// The CONNACK properties: the server's limits, an assigned client id, and so on.
        properties: ConnAckProperties,
    },
    /// The server refused the connection (CONNACK with an error code).
    ConnectionRefused {
        /// Why.
        reason_code: ReasonCode,
        /// The CONNACK properties (reason string, server reference).
        properties: ConnAckProperties,
    },
    /// An application message arrived. QoS 2 messages are delivered once, even if the server
    /// sends them again before releasing them.
    Message(Publish),
    /// A QoS 1 or 2 publish is done: PUBACK, PUBCOMP, or a PUBREC with an error code.
    Published {
        /// The packet identifier [`Client::publish`] returned.
        packet_id: PacketId,
        /// The server's reason code (always Success in 3.1.1).
        reason_code: ReasonCode,
        /// Properties of the acknowledgement.
        properties: AckProperties,
    },
    /// The server answered a SUBSCRIBE.
    Subscribed {
        /// The packet identifier [`Client::subscribe`] returned.
        packet_id: PacketId,
        /// One code per subscription: the granted QoS or an error.
        reason_codes: Vec<ReasonCode>,
        /// Whether this SUBSCRIBE was the client's own, restoring subscriptions after the
        /// server lost the session.
        restored: bool,
    },
    /// The server answered an UNSUBSCRIBE.
    Unsubscribed {
        /// The packet identifier [`Client::unsubscribe`] returned.
        packet_id: PacketId,
        /// One code per filter (empty in 3.1.1).
        reason_codes: Vec<ReasonCode>,
    },
    /// Relay mode ([`ClientConfig::manual_acks`]): the server received this QoS 2 publish
    /// (PUBREC with success); its PUBREL waits for [`Client::release`].
    Received {
        /// The publish's packet identifier.
        packet_id: PacketId,
    },
    /// Relay mode: the server released this received QoS 2 message (PUBREL); its PUBCOMP
    /// waits for [`Client::complete`].
    Released {
        /// The message's packet identifier.
        packet_id: PacketId,
    },
    /// The connection is gone (or going: see [`Command::CloseTransport`]).
    Disconnected(DisconnectReason),
    /// MQTT 5 enhanced authentication: the server sent AUTH (Continue authentication). Answer
    /// with [`Client::authenticate`]; the CONNACK (or, when re-authenticating, the server's
    /// final AUTH with Success) ends the exchange.
    Auth {
        /// The server's reason code: Continue authentication, or Success at the end of a
        /// re-authentication.
        reason_code: ReasonCode,
        /// Authentication Method and Data, and the server's reason string.
        properties: AuthProperties,
    },
}

/// What the client asks of its runtime: instructions, where an [`Event`] only informs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Close the transport now; everything to send has been handed out by `poll_transmit`.
    /// Then call [`Client::handle_closed`].
    CloseTransport,
    /// The reconnect delay has passed: open a transport and call [`Client::reconnect`].
    Reconnect,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application called [`Client::disconnect`].
    Requested,
    /// The transport closed (EOF, reset, or the runtime could not connect).
    TransportClosed,
    /// The server sent DISCONNECT (MQTT 5).
    Server {
        /// Its reason code.
        reason_code: ReasonCode,
        /// Its properties (reason string, server reference).
        properties: DisconnectProperties,
    },
    /// No CONNACK within [`ClientConfig::connack_timeout`].
    ConnAckTimeout,
    /// No PINGRESP within [`ClientConfig::pingresp_timeout`] of a PINGREQ.
    KeepAliveTimeout,
    /// The server broke the protocol; in MQTT 5 the client sent DISCONNECT with this code.
    ProtocolViolation(ReasonCode),
    /// The server sent bytes that do not decode.
    Decode(DecodeError),
    /// MQTT 5 enhanced authentication: the server sent a challenge nothing could answer (the
    /// runtime's `AuthHandler` gave up, or there was none), and the client disconnected.
    AuthenticationAbandoned,
}

/// A mistake in a command from the application, or a command the server's limits forbid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The command needs a connection.
    NotConnected,
    /// `connect` while a connection is being made or is up.
    AlreadyConnected,
    /// `reconnect` before any `connect`.
    NeverConnected,
    /// The queue of publishes waiting to be sent is full (messages or bytes).
    QueueFull,
    /// Every packet identifier is in use.
    PacketIdsExhausted,
    /// [`Client::publish_as`]: this packet identifier is in use (or missing for QoS 1 or 2).
    PacketIdInUse(u16),
    /// The server's Maximum QoS is lower.
    QoSNotSupported(QoS),
    /// The server said Retain Available = 0.
    RetainNotSupported,
    /// A topic alias of 0 or above the server's Topic Alias Maximum.
    TopicAliasInvalid(u16),
    /// An empty topic with an alias the client has not mapped to a topic yet.
    UnknownTopicAlias(u16),
    /// An empty topic without a topic alias, or a topic alias in MQTT 3.1.1.
    TopicRequired,
    /// A client may not send Subscription Identifiers in PUBLISH ([MQTT-3.3.4-6]).
    SubscriptionIdentifierInPublish,
    /// The server said Wildcard Subscription Available = 0.
    WildcardSubscriptionsNotSupported,
    /// The server said Shared Subscription Available = 0.
    SharedSubscriptionsNotSupported,
    /// The server said Subscription Identifiers Available = 0.
    SubscriptionIdentifiersNotSupported,
    /// AUTH needs an MQTT 5 connection that started with an Authentication Method.
    NoAuthenticationMethod,
    /// 3.1.1 requires Clean Session for an empty client id ([MQTT-3.1.3-7]).
    EmptyClientIdNeedsCleanStart,
    /// A SUBSCRIBE or UNSUBSCRIBE with nothing in it.
    Empty,
    /// The packet cannot be encoded (too large for the server, a field too long, ...).
    Encode(EncodeError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::AlreadyConnected => f.write_str("already connected or connecting"),
            Self::NeverConnected => f.write_str("reconnect before connect"),
            Self::QueueFull => f.write_str("the outgoing queue is full"),
            Self::PacketIdsExhausted => f.write_str("all 65535 packet identifiers are in use"),
            Self::PacketIdInUse(id) => write!(f, "packet identifier {id} is in use or missing"),
            Self::QoSNotSupported(q) => write!(f, "the server supports QoS up to {}", *q as u8),
            Self::RetainNotSupported => f.write_str("the server does not support retain"),
            Self::TopicAliasInvalid(a) => write!(f, "topic alias {a} is out of the server's range"),
            Self::UnknownTopicAlias(a) => write!(f, "topic alias {a} is not mapped to a topic"),
            Self::TopicRequired => f.write_str("a topic is required"),
            Self::SubscriptionIdentifierInPublish => {
                f.write_str("a client may not send subscription identifiers")
            }
            Self::WildcardSubscriptionsNotSupported => {
                f.write_str("the server does not support wildcard subscriptions")
            }
            Self::SharedSubscriptionsNotSupported => {
                f.write_str("the server does not support shared subscriptions")
            }
            Self::SubscriptionIdentifiersNotSupported => {
                f.write_str("the server does not support subscription identifiers")
            }
            Self::NoAuthenticationMethod => {
                f.write_str("enhanced authentication needs an MQTT 5 authentication method")
            }
            Self::EmptyClientIdNeedsCleanStart => {
                f.write_str("MQTT 3.1.1 needs clean session for an empty client id")
            }
            Self::Empty => f.write_str("nothing to subscribe or unsubscribe"),
            Self::Encode(e) => write!(f, "cannot encode: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ClientError {}

impl From<EncodeError> for ClientError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No transport; waiting for `connect` or `reconnect`.
    Idle,
    /// CONNECT sent, waiting for CONNACK until the deadline.
    Connecting { deadline: Instant },
    /// CONNACK received; `since` is when.
    Connected { since: Instant },
    /// Transport being closed; nothing more is sent or processed.
    Closing,
    /// Waiting to reconnect until `at`.
    Backoff { at: Instant },
}

/// A QoS 1 or 2 publish the client sent and the server has not finished acknowledging.
#[derive(Clone, Debug)]
enum Outgoing {
    /// Sent (or to be sent again); waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Box<Publish>),
    /// Relay mode: PUBREC received; PUBREL waits for [`Client::release`].
    Received,
    /// PUBREC received, PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for its answer.
#[derive(Clone, Debug)]
enum Request {
    Subscribe { restored: bool, filters: Vec<Subscription> },
    Unsubscribe,
}

/// The sans-IO MQTT client. See the [module documentation](self) for how to drive it.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    state: State,
    /// The options of the last `connect`, reused by `reconnect`.
    options: Option<Connect>,
    /// Whether the application asked to disconnect: no automatic reconnect.
    stopped: bool,
    backoff: Backoff,
    out: BytesMut,
    events: VecDeque<Event>,
    commands: VecDeque<Command>,

    // The connection.
    decoder: Decoder,
    encoder: Encoder,
    server: ServerLimits,
    keep_alive: Duration,
    last_sent: Instant,
    ping_deadline: Option<Instant>,
    /// Topic aliases the server set for this connection.
    incoming_aliases: BTreeMap<u16, TopicName>,
    /// Topic aliases the client set for this connection.
    outgoing_aliases: BTreeMap<u16, TopicName>,
    /// With automatic aliases: topic to (alias, last use), and last use to topic (LRU order).
    auto_aliases: BTreeMap<TopicName, (u16, u64)>,
    auto_lru: BTreeMap<u64, TopicName>,
    alias_clock: u64,

    // The session.
    /// Topics the application bound to aliases; used to resolve alias-only publishes.
    alias_topics: BTreeMap<u16, TopicName>,
    /// Publishes waiting to be sent, in order; QoS 1/2 ones already hold a packet id.
    queue: VecDeque<Publish>,
    /// The packet ids the queue holds, so that allocating an id does not scan the queue.
    queued_ids: BTreeSet<u16>,
    queued_bytes: usize,
    /// In-flight QoS 1/2 publishes by packet id, and their send order.
    inflight: BTreeMap<u16, (u64, Outgoing)>,
    inflight_order: BTreeMap<u64, u16>,
    next_seq: u64,
    /// QoS 2 messages received and delivered, waiting for PUBREL ([MQTT-4.3.3-9]).
    incoming_qos2: BTreeSet<u16>,
    /// Relay mode: QoS 2 messages delivered whose PUBREC the application has not yet allowed.
    unacknowledged_qos2: BTreeSet<u16>,
    /// SUBSCRIBE and UNSUBSCRIBE requests waiting for their answer.
    requests: BTreeMap<u16, Request>,
    /// The application's subscriptions, restored when a session is lost.
    subscriptions: BTreeMap<TopicFilter, (Subscription, SubscribeProperties)>,
    next_packet_id: u16,
    /// QoS 0 publishes taken off the queue so far (see [`Client::qos0_sent`]).
    qos0_sent: u64,
}

/// What the server's CONNACK allows.
#[derive(Clone, Debug)]
struct ServerLimits {
    receive_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
    topic_alias_maximum: u16,
    wildcard_available: bool,
    subscription_ids_available: bool,
    shared_available: bool,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            topic_alias_maximum: 0,
            wildcard_available: true,
            subscription_ids_available: true,
            shared_available: true,
        }
    }
}

fn publish_cost(p: &Publish) -> usize {
    p.payload.len() + p.topic.as_bytes().len()
}

impl Client {
    /// A client with no connection yet.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let backoff = Backoff::new(config.seed);
        Self {
            config,
            state: State::Idle,
            options: None,
            stopped: false,
            backoff,
            out: BytesMut::new(),
            events: VecDeque::new(),
            commands: VecDeque::new(),
            decoder: Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE),
            encoder: Encoder::new(ProtocolVersion::V5),
            server: ServerLimits::default(),
            keep_alive: Duration::ZERO,
            last_sent: now,
            ping_deadline: None,
            incoming_aliases: BTreeMap::new(),
            outgoing_aliases: BTreeMap::new(),
            auto_aliases: BTreeMap::new(),
            auto_lru: BTreeMap::new(),
            alias_clock: 0,
            alias_topics: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_ids: BTreeSet::new(),
            queued_bytes: 0,
            inflight: BTreeMap::new(),
            inflight_order: BTreeMap::new(),
            next_seq: 0,
            incoming_qos2: BTreeSet::new(),
            unacknowledged_qos2: BTreeSet::new(),
            requests: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            next_packet_id: 1,
            qos0_sent: 0,
        }
    }

    // ---------------------------------------------------------------- getters

    /// Whether CONNACK accepted the connection and it is still up.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Whether the client stopped reconnecting: the application disconnected, or the server
    /// refused it for a reason retrying cannot fix (bad credentials, not authorized, banned, a
    /// bad client id or protocol version).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The protocol version of the last `connect`.
    pub fn protocol(&self) -> Option<ProtocolVersion> {
        self.options.as_ref().map(|o| o.protocol)
    }

    /// The client id in use (the server-assigned one after an empty id in MQTT 5).
    pub fn client_id(&self) -> Option<&MqttStr> {
        self.options.as_ref().map(|o| &o.client_id)
    }

    /// QoS 1 and 2 publishes sent and not yet fully acknowledged.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Publishes waiting to be sent.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// How many QoS 0 publishes have left the queue since the client was made: their bytes
    /// are in the output that [`poll_transmit`](Self::poll_transmit) hands out (or, for one
    /// too large for the server's Maximum Packet Size or retained where the server has no
    /// retain, dropped). QoS 0 publishes leave in the order they were made, so a runtime that
    /// counts its own calls knows when the `n`th one is on its way: once this reaches `n`. A
    /// QoS 1 or 2 publish has its [`Event::Published`] instead.
    pub fn qos0_sent(&self) -> u64 {
        self.qos0_sent
    }

    // ---------------------------------------------------------------- commands

    /// The transport is up: queue CONNECT with `options` and wait for CONNACK.
    pub fn connect(&mut self, now: Instant, options: Connect) -> Result<(), ClientError> {
        if matches!(self.state, State::Connecting { .. } | State::Connected { .. }) {
            return Err(ClientError::AlreadyConnected);
        }
        if !options.protocol.is_v5() && options.client_id.is_empty() && !options.clean_start {
            return Err(ClientError::EmptyClientIdNeedsCleanStart);
        }
        // Check it encodes before touching any state.
        Packet::from(options.clone()).encoded_len(options.protocol)?;
        self.options = Some(options);
        self.stopped = false;
        self.start_connection(now)
    }

    /// Connect again with the options of the last [`connect`](Self::connect), after
    /// [`Command::Reconnect`] or whenever the runtime has a new transport.
    pub fn reconnect(&mut self, now: Instant) -> Result<(), ClientError> {
        if matches!(self.state, State::Connecting { .. } | State::Connected { .. }) {
            return Err(ClientError::AlreadyConnected);
        }
        if self.options.is_none() {
            return Err(ClientError::NeverConnected);
        }
        self.stopped = false;
        self.start_connection(now)
    }

    fn start_connection(&mut self, now: Instant) -> Result<(), ClientError> {
        let Some(options) = &self.options else { return Err(ClientError::NeverConnected) };
        let version = options.protocol;
        let max_in = options.properties.maximum_packet_size.map_or(MAX_PACKET_SIZE, |m| m.get());
        self.decoder = Decoder::new(Some(version), max_in);
        self.encoder = Encoder::new(version);
        self.server = ServerLimits::default();
        self.keep_alive = Duration::from_secs(u64::from(options.keep_alive));
        self.ping_deadline = None;
        self.incoming_aliases.clear();
        self.outgoing_aliases.clear();
        self.auto_aliases.clear();
        self.auto_lru.clear();
        self.out.clear();
        let packet = Packet::from(options.clone());
        packet.encode(version, &mut self.out)?;
        self.last_sent = now;
        self.state = State::Connecting { deadline: now + self.config.connack_timeout };
        Ok(())
    }

    /// Publishes a message. `publish.packet_id` is ignored: the client assigns one for QoS 1
    /// and 2 and returns it; [`Event::Published`] reports the outcome under it.
    ///
    /// While the client is offline, or the server's Receive Maximum is reached, the message
    /// waits in a bounded queue ([`ClientError::QueueFull`] when that is full). For MQTT 5, a
    /// Topic Alias with a topic binds the alias; a later publish with an empty topic and the
    /// same alias uses it.
    pub fn publish(
        &mut self,
        now: Instant,
        mut publish: Publish,
    ) -> Result<Option<PacketId>, ClientError> {
        publish.dup = false;
        publish.packet_id = None;
        self.enqueue(now, publish, None)
    }

    /// Relay mode: publishes `publish` under its own packet identifier and DUP flag, as
    /// another connection gave it. A bridge relays each message with the identifier the other
    /// side used, so that a message sent again after a restart is the same message to this
    /// server's session (a QoS 2 message is then still delivered once). Fails with
    /// [`ClientError::PacketIdInUse`] while the client uses that identifier itself (a
    /// SUBSCRIBE waiting for its answer): try again after it.
    pub fn publish_as(&mut self, now: Instant, publish: Publish) -> Result<(), ClientError> {
        let id = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) if !self.id_in_use(id.get()) => Some(id),
            (_, id) => return Err(ClientError::PacketIdInUse(id.map_or(0, NonZeroU16::get))),
        };
        self.enqueue(now, publish, id).map(|_| ())
    }

    fn enqueue(
        &mut self,
        now: Instant,
        mut publish: Publish,
        relayed: Option<PacketId>,
    ) -> Result<Option<PacketId>, ClientError> {
        let v5 = self.protocol().is_none_or(ProtocolVersion::is_v5);
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(ClientError::SubscriptionIdentifierInPublish);
        }
        if let Some(alias) = publish.properties.topic_alias {
            if !v5 {
                return Err(ClientError::TopicRequired);
            }
            if self.is_connected() && alias.get() > self.server.topic_alias_maximum {
                return Err(ClientError::TopicAliasInvalid(alias.get()));
            }
            if publish.topic.is_empty() {
                let topic = self.alias_topics.get(&alias.get());
                publish.topic =
                    topic.cloned().ok_or(ClientError::UnknownTopicAlias(alias.get()))?;
            }
        } else if publish.topic.is_empty() {
            return Err(ClientError::TopicRequired);
        }
        if self.is_connected() {
            if publish.qos > self.server.maximum_qos {
                return Err(ClientError::QoSNotSupported(self.server.maximum_qos));
            }
            if publish.retain && !self.server.retain_available {
                return Err(ClientError::RetainNotSupported);
            }
            let mut probe = publish.clone();
            probe.packet_id = (probe.qos != QoS::AtMostOnce).then_some(PacketId::MIN);
            let size = Packet::Publish(probe).encoded_len(self.encoder.version())?;
            if size > self.encoder.max_packet_size() as usize {
                let max = self.encoder.max_packet_size();
                return Err(EncodeError::PacketTooLarge { size, max }.into());
            }
        }
        let cost = publish_cost(&publish);
        if self.queue.len() >= self.config.max_queued_messages
            || self.queued_bytes + cost > self.config.max_queued_bytes
        {
            return Err(ClientError::QueueFull);
        }
        let id = match relayed {
            Some(id) => Some(id),
            None if publish.qos == QoS::AtMostOnce => None,
            None => Some(self.allocate_id()?),
        };
        if id.is_none() {
            publish.dup = false;
        }
        publish.packet_id = id;
        if let Some(alias) = publish.properties.topic_alias {
            self.alias_topics.insert(alias.get(), publish.topic.clone());
        }
        self.queued_bytes += cost;
        self.queued_ids.extend(publish.packet_id.map(NonZeroU16::get));
        self.queue.push_back(publish);
        self.pump(now);
        Ok(id)
    }

    /// Relay mode: acknowledges the received message `packet_id` of `qos`: PUBACK for QoS 1,
    /// PUBREC for QoS 2 (MQTT 5: with `reason_code`; an error code ends a QoS 2 exchange
    /// there). Offline, a QoS 1 acknowledgement is dropped (the server sends the message again,
    /// and it is delivered again), and a QoS 2 one is remembered (a PUBLISH sent again is
    /// answered at once).
    pub fn acknowledge(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        qos: QoS,
        reason_code: ReasonCode,
    ) {
        let id = packet_id.get();
        let mut ack = PubAck::new(packet_id);
        if self.version().is_v5() {
            ack.reason_code = reason_code;
        }
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(ack),
            QoS::ExactlyOnce => {
                if !self.unacknowledged_qos2.remove(&id) {
                    return;
                }
                if reason_code.is_error() {
                    self.incoming_qos2.remove(&id);
                }
                Packet::PubRec(ack)
            }
        };
        if self.is_connected() {
            let _ = self.send(now, &packet);
        }
    }

    /// Relay mode: finishes the received QoS 2 message `packet_id` after
    /// [`Event::Released`]: PUBCOMP.
    pub fn complete(&mut self, now: Instant, packet_id: PacketId) {
        self.incoming_qos2.remove(&packet_id.get());
        if self.is_connected() {
            let _ = self.send(now, &Packet::PubComp(PubAck::new(packet_id)));
        }
    }

    /// Relay mode: sends PUBREL for the QoS 2 publish `packet_id` after [`Event::Received`].
    /// An identifier the client does not know (its PUBREC came before a restart) is taken in
    /// as released: its PUBREL goes out, and again after a reconnect, until the PUBCOMP.
    pub fn release(&mut self, now: Instant, packet_id: PacketId) {
        let id = packet_id.get();
        match self.inflight.get_mut(&id) {
            Some((_, state @ Outgoing::Received)) => *state = Outgoing::Released,
            Some(_) => return,
            None => {
                if self.requests.contains_key(&id) || self.queued_ids.contains(&id) {
                    return;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.inflight_order.insert(seq, id);
                self.inflight.insert(id, (seq, Outgoing::Released));
            }
        }
        if self.is_connected() {
            let _ = self.send(now, &Packet::PubRel(PubAck::new(packet_id)));
        }
    }

    /// Subscribes to `subscriptions` in one SUBSCRIBE. [`Event::Subscribed`] reports the answer.
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriptions: &[Subscription],
    ) -> Result<PacketId, ClientError> {
        self.subscribe_with(now, subscriptions, SubscribeProperties::default())
    }

    /// [`subscribe`](Self::subscribe) with SUBSCRIBE properties (MQTT 5: a Subscription
    /// Identifier, User Properties).
    pub fn subscribe_with(
        &mut self,
        now: Instant,
        subscriptions: &[Subscription],
        properties: SubscribeProperties,
    ) -> Result<PacketId, ClientError> {
        if !self.is_connected() {
            return Err(ClientError::NotConnected);
        }
        if subscriptions.is_empty() {
            return Err(ClientError::Empty);
        }
        let s = &self.server;
        if !s.wildcard_available && subscriptions.iter().any(|x| x.filter.has_wildcards()) {
            return Err(ClientError::WildcardSubscriptionsNotSupported);
        }
        if !s.shared_available && subscriptions.iter().any(|x| x.filter.is_shared()) {
            return Err(ClientError::SharedSubscriptionsNotSupported);
        }
        if !s.subscription_ids_available && properties.subscription_identifier.is_some() {
            return Err(ClientError::SubscriptionIdentifiersNotSupported);
        }
        for sub in subscriptions {
            self.subscriptions.insert(sub.filter.clone(), (sub.clone(), properties.clone()));
        }
        self.send_subscribe(now, subscriptions.to_vec(), properties, false)
    }

    fn send_subscribe(
        &mut self,
        now: Instant,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
        restored: bool,
    ) -> Result<PacketId, ClientError> {
        let packet_id = self.allocate_id()?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id,
            subscriptions: subscriptions.clone(),
            properties,
        });
        if let Err(e) = self.send(now, &packet) {
            return Err(e.into());
        }
        self.requests
            .insert(packet_id.get(), Request::Subscribe { restored, filters: subscriptions });
        Ok(packet_id)
    }

    /// Unsubscribes from `filters` in one UNSUBSCRIBE. [`Event::Unsubscribed`] reports the
    /// answer.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: &[TopicFilter],
    ) -> Result<PacketId, ClientError> {
        self.unsubscribe_with(now, filters, UnsubscribeProperties::default())
    }

    /// [`unsubscribe`](Self::unsubscribe) with UNSUBSCRIBE properties (MQTT 5: User
    /// Properties; not sent in 3.1.1).
    pub fn unsubscribe_with(
        &mut self,
        now: Instant,
        filters: &[TopicFilter],
        properties: UnsubscribeProperties,
    ) -> Result<PacketId, ClientError> {
        if !self.is_connected() {
            return Err(ClientError::NotConnected);
        }
        if filters.is_empty() {
            return Err(ClientError::Empty);
        }
        let packet_id = self.allocate_id()?;
        let packet =
            Packet::Unsubscribe(Unsubscribe { packet_id, filters: filters.to_vec(), properties });
        self.send(now, &packet)?;
        for f in filters {
            self.subscriptions.remove(f);
        }
        self.requests.insert(packet_id.get(), Request::Unsubscribe);
        Ok(packet_id)
    }

    /// Disconnects: sends DISCONNECT (in MQTT 5 with `disconnect`'s reason code and
    /// properties, such as a new Session Expiry Interval), then asks for the transport to be
    /// closed. No automatic reconnect follows. Session state is kept for a later `connect`.
    pub fn disconnect(&mut self, now: Instant, disconnect: Disconnect) {
        self.stopped = true;
        match self.state {
            State::Connected { .. } | State::Connecting { .. } => {
                // The encoder only refuses a reason code DISCONNECT may not carry; fall back to
                // a plain one rather than leave without a word.
                let packet = Packet::Disconnect(disconnect);
                if self.send(now, &packet).is_err() {
                    let _ = self.send(now, &Packet::Disconnect(Disconnect::default()));
                }
                self.close(DisconnectReason::Requested);
            }
            State::Backoff { .. } => {
                self.state = State::Idle;
                self.events.push_back(Event::Disconnected(DisconnectReason::Requested));
            }
            State::Idle | State::Closing => {}
        }
    }

    /// Replaces the reconnect policy. It applies from the next time the connection is lost; a
    /// reconnect already scheduled keeps its time.
    pub fn set_reconnect_options(&mut self, options: ReconnectOptions) {
        self.config.reconnect = options;
        self.backoff.reset();
    }

    /// Answers the server's [`Event::Auth`] with more authentication data (AUTH, Continue
    /// authentication). The Authentication Method is the connection's own.
    pub fn authenticate(&mut self, now: Instant, data: Option<Bytes>) -> Result<(), ClientError> {
        self.send_auth(now, ReasonCode::ContinueAuthentication, data)
    }

    /// Starts re-authentication on a connected MQTT 5 session (AUTH, Re-authenticate, with
    /// the connection's Authentication Method, [MQTT-4.12.1-1]).
    pub fn reauthenticate(&mut self, now: Instant, data: Option<Bytes>) -> Result<(), ClientError> {
        if !self.is_connected() {
            return Err(ClientError::NotConnected);
        }
        self.send_auth(now, ReasonCode::ReAuthenticate, data)
    }

    fn send_auth(
        &mut self,
        now: Instant,
        reason_code: ReasonCode,
        data: Option<Bytes>,
    ) -> Result<(), ClientError> {
        if !matches!(self.state, State::Connecting { .. } | State::Connected { .. }) {
            return Err(ClientError::NotConnected);
        }
        let method = self.auth_method().cloned().ok_or(ClientError::NoAuthenticationMethod)?;
        let properties = AuthProperties {
            authentication_method: Some(method),
            authentication_data: data,
            ..AuthProperties::default()
        };
        self.send(now, &Packet::Auth(Auth { reason_code, properties }))?;
        Ok(())
    }

    fn auth_method(&self) -> Option<&MqttStr> {
        let o = self.options.as_ref().filter(|o| o.protocol.is_v5())?;
        o.properties.authentication_method.as_ref()
    }

    // ---------------------------------------------------------------- input

    /// Bytes arrived from the transport. Complete packets are taken from `buf`; a partial one
    /// stays for the next call.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        loop {
            if !matches!(self.state, State::Connecting { .. } | State::Connected { .. }) {
                buf.clear();
                return;
            }
            match self.decoder.decode(buf) {
                Ok(Some(packet)) => self.handle_packet(now, packet),
                Ok(None) => return,
                Err(e) => {
                    let code = e.reason_code();
                    self.violation(now, code, DisconnectReason::Decode(e));
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// The transport closed (EOF or error), or the runtime failed to open one.
    pub fn handle_closed(&mut self, now: Instant) {
        match self.state {
            State::Connecting { .. } | State::Connected { .. } => {
                self.events.push_back(Event::Disconnected(DisconnectReason::TransportClosed));
                self.after_close(now);
            }
            State::Closing => self.after_close(now),
            State::Idle if self.options.is_some() && !self.stopped => self.after_close(now),
            State::Idle | State::Backoff { .. } => {}
        }
    }

    /// The deadline from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Connecting { deadline } if now >= deadline => {
                self.close(DisconnectReason::ConnAckTimeout);
            }
            State::Connected { .. } if !self.keep_alive.is_zero() => {
                if let Some(deadline) = self.ping_deadline
                    && now >= deadline
                {
                    self.close(DisconnectReason::KeepAliveTimeout);
                    return;
                }
                if self.ping_deadline.is_none() && now >= self.last_sent + self.keep_alive {
                    // [MQTT-3.1.2-23]: something must be sent within each keep-alive interval.
                    if self.send(now, &Packet::PingReq).is_ok() {
                        self.ping_deadline = Some(now + self.config.pingresp_timeout);
                    }
                }
            }
            State::Backoff { at } if now >= at => {
                self.state = State::Idle;
                self.commands.push_back(Command::Reconnect);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- output

    /// Up to `limit` bytes to write to the transport. Call until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self, limit: usize) -> Option<Bytes> {
        if self.out.is_empty() || limit == 0 {
            return None;
        }
        let n = limit.min(self.out.len());
        Some(self.out.split_to(n).freeze())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever. Call after
    /// draining [`poll_transmit`](Self::poll_transmit).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline } => Some(deadline),
            State::Connected { .. } if !self.keep_alive.is_zero() => {
                Some(self.ping_deadline.unwrap_or(self.last_sent + self.keep_alive))
            }
            State::Backoff { at } => Some(at),
            _ => None,
        }
    }

    /// The next event. Call until `None` after draining transmit and timeout.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next thing the runtime must do. Call until `None` after the events.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    // ---------------------------------------------------------------- internals

    fn version(&self) -> ProtocolVersion {
        self.encoder.version()
    }

    /// Encodes `packet` within the server's limits and queues it.
    fn send(&mut self, now: Instant, packet: &Packet) -> Result<(), EncodeError> {
        self.encoder.encode(packet, &mut self.out)?;
        self.last_sent = now;
        Ok(())
    }

    fn id_in_use(&self, id: u16) -> bool {
        self.inflight.contains_key(&id)
            || self.requests.contains_key(&id)
            || self.queued_ids.contains(&id)
    }

    fn allocate_id(&mut self) -> Result<PacketId, ClientError> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.id_in_use(id) {
                // `id` starts at 1 and wraps to 1, never 0.
                return NonZeroU16::new(id).ok_or(ClientError::PacketIdsExhausted);
            }
        }
        Err(ClientError::PacketIdsExhausted)
    }

    /// Moves queued publishes onto the wire while connected and the inflight window allows,
    /// preserving order: a QoS 0 message behind a waiting QoS 1 message waits too.
    fn pump(&mut self, now: Instant) {
        if !self.is_connected() {
            return;
        }
        while let Some(front) = self.queue.front() {
            let window_full = front.qos != QoS::AtMostOnce
                && self.inflight.len() >= usize::from(self.server.receive_maximum);
            if window_full {
                return;
            }
            let Some(publish) = self.queue.pop_front() else { return };
            match publish.packet_id {
                Some(id) => {
                    self.queued_ids.remove(&id.get());
                }
                None => self.qos0_sent += 1,
            }
            self.queued_bytes = self.queued_bytes.saturating_sub(publish_cost(&publish));
            let sent = match self.refused_by_server(&publish) {
                Some(code) => Err(code),
                None => self.transmit_publish(now, &publish).map_err(|e| encode_failure_code(&e)),
            };
            match (publish.packet_id, sent) {
                (Some(id), Ok(())) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.inflight_order.insert(seq, id.get());
                    self.inflight.insert(id.get(), (seq, Outgoing::Publish(Box::new(publish))));
                }
                (Some(id), Err(reason_code)) => {
                    // Too large for this server, for example: report it rather than retry.
                    self.events.push_back(Event::Published {
                        packet_id: id,
                        reason_code,
                        properties: AckProperties::default(),
                    });
                }
                (None, _) => {}
            }
        }
    }

    /// Why this connection's CONNACK forbids sending `publish`, if it does: a publish made
    /// before the server's limits were known may exceed its Maximum QoS ([MQTT-3.2.2-11]) or
    /// ask for RETAIN where it has none ([MQTT-3.2.2-14]). Such a publish is never sent.
    fn refused_by_server(&self, publish: &Publish) -> Option<ReasonCode> {
        if publish.qos > self.server.maximum_qos {
            Some(ReasonCode::QoSNotSupported)
        } else if publish.retain && !self.server.retain_available {
            Some(ReasonCode::RetainNotSupported)
        } else {
            None
        }
    }

    /// Writes a PUBLISH, using a topic alias where the connection already maps it.
    fn transmit_publish(&mut self, now: Instant, publish: &Publish) -> Result<(), EncodeError> {
        let mut wire = publish.clone();
        if self.config.auto_topic_alias {
            wire.properties.topic_alias = None;
            if let Some((alias, known)) = self.auto_alias(&publish.topic) {
                wire.properties.topic_alias = Some(alias);
                if known {
                    wire.topic = TopicName::empty();
                }
            }
        } else if let Some(alias) = publish.properties.topic_alias {
            if alias.get() > self.server.topic_alias_maximum {
                // The server allows fewer aliases on this connection than when the publish was
                // made: send the full topic without an alias.
                wire.properties.topic_alias = None;
            } else if self.outgoing_aliases.get(&alias.get()) == Some(&publish.topic) {
                wire.topic = TopicName::empty();
            } else {
                self.outgoing_aliases.insert(alias.get(), publish.topic.clone());
            }
        }
        self.send(now, &Packet::Publish(wire))
    }

    /// The automatic alias for `topic`: `(alias, true)` if the server already knows it,
    /// `(alias, false)` if this publish must carry the topic to bind it; `None` when the server
    /// takes no aliases. Least recently used aliases are rebound first.
    fn auto_alias(&mut self, topic: &TopicName) -> Option<(NonZeroU16, bool)> {
        let max = self.server.topic_alias_maximum;
        if max == 0 {
            return None;
        }
        self.alias_clock += 1;
        let tick = self.alias_clock;
        if let Some((alias, last)) = self.auto_aliases.get_mut(topic) {
            self.auto_lru.remove(last);
            *last = tick;
            let alias = *alias;
            self.auto_lru.insert(tick, topic.clone());
            return NonZeroU16::new(alias).map(|a| (a, true));
        }
        let alias = if self.auto_aliases.len() < usize::from(max) {
            // Aliases 1..=len are in use: the next one is free.
            u16::try_from(self.auto_aliases.len() + 1).ok()?
        } else {
            let (_, oldest) = self.auto_lru.pop_first()?;
            self.auto_aliases.remove(&oldest)?.0
        };
        self.auto_aliases.insert(topic.clone(), (alias, tick));
        self.auto_lru.insert(tick, topic.clone());
        NonZeroU16::new(alias).map(|a| (a, false))
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) {
        if let State::Connecting { .. } = self.state {
            match packet {
                Packet::ConnAck(ack) => self.handle_connack(now, ack),
                Packet::Auth(auth) if auth.reason_code == ReasonCode::ContinueAuthentication => {
                    self.handle_auth(now, auth)
                }
                _ => self.violation(now, ReasonCode::ProtocolError, protocol_error()),
            }
            return;
        }
        match packet {
            Packet::Publish(p) => self.handle_publish(now, p),
            Packet::PubAck(ack) => self.handle_puback(now, ack),
            Packet::PubRec(ack) => self.handle_pubrec(now, ack),
            Packet::PubRel(ack) => self.handle_pubrel(now, ack),
            Packet::PubComp(ack) => self.handle_pubcomp(now, ack),
            Packet::SubAck(ack) => self.handle_suback(ack),
            Packet::UnsubAck(ack) => self.handle_unsuback(ack),
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) if self.version().is_v5() => {
                let reason = DisconnectReason::Server {
                    reason_code: d.reason_code,
                    properties: d.properties,
                };
                self.close(reason);
            }
            Packet::Auth(auth) if auth.reason_code != ReasonCode::ReAuthenticate => {
                self.handle_auth(now, auth)
            }
            _ => self.violation(now, ReasonCode::ProtocolError, protocol_error()),
        }
    }

    /// AUTH from the server: only on a connection that authenticates with a method, and with
    /// that same method ([MQTT-4.12.0-5]); anything else is a protocol error ([MQTT-4.12.0-6]).
    fn handle_auth(&mut self, now: Instant, auth: Auth) {
        let ours = self.auth_method();
        if ours.is_none() || auth.properties.authentication_method.as_ref() != ours {
            self.violation(now, ReasonCode::ProtocolError, protocol_error());
            return;
        }
        let Auth { reason_code, properties } = auth;
        self.events.push_back(Event::Auth { reason_code, properties });
    }

    fn handle_connack(&mut self, now: Instant, ack: ConnAck) {
        let ConnAck { session_present, reason_code, properties } = ack;
        if reason_code.is_error() {
            self.events.push_back(Event::ConnectionRefused { reason_code, properties });
            let permanent = matches!(
                reason_code,
                ReasonCode::UnsupportedProtocolVersion
                    | ReasonCode::ClientIdentifierNotValid
                    | ReasonCode::BadUserNameOrPassword
                    | ReasonCode::NotAuthorized
                    | ReasonCode::Banned
                    | ReasonCode::BadAuthenticationMethod
            );
            if permanent {
                self.stopped = true;
            }
            self.state = State::Closing;
            self.commands.push_back(Command::CloseTransport);
            return;
        }
        let clean = self.options.as_ref().is_some_and(|o| o.clean_start);
        if session_present && clean {
            // [MQTT-3.2.2-4]: the client asked for a new session; a server that claims to have
            // one is broken.
            self.violation(now, ReasonCode::ProtocolError, protocol_error());
            return;
        }
        self.apply_connack(&properties);
        self.state = State::Connected { since: now };
        // SUBSCRIBE and UNSUBSCRIBE requests of the old connection are not answered on this
        // one (only PUBLISH and PUBREL are sent again): their identifiers are free again.
        self.requests.clear();
        self.events.push_back(Event::Connected { session_present, properties });
        if session_present {
            self.resend_inflight(now);
        } else {
            self.restart_session(now);
        }
        self.pump(now);
    }

    fn apply_connack(&mut self, p: &ConnAckProperties) {
        self.server = ServerLimits {
            receive_maximum: p.receive_maximum.map_or(u16::MAX, NonZeroU16::get),
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            wildcard_available: p.wildcard_subscription_available.unwrap_or(true),
            subscription_ids_available: p.subscription_identifiers_available.unwrap_or(true),
            shared_available: p.shared_subscription_available.unwrap_or(true),
        };
        if let Some(max) = p.maximum_packet_size {
            self.encoder.set_max_packet_size(max.get());
        }
        if let Some(ka) = p.server_keep_alive {
            // [MQTT-3.2.2-21]: the server's keep-alive replaces the client's.
            self.keep_alive = Duration::from_secs(u64::from(ka));
        }
        if let (Some(id), Some(opts)) = (&p.assigned_client_identifier, self.options.as_mut()) {
            // Reconnects use the assigned id so that the session can resume.
            opts.client_id = id.clone();
        }
    }

    /// Session Present: send unacknowledged PUBLISH again with DUP, and PUBREL again, in their
    /// original order ([MQTT-4.4.0-1], [MQTT-4.4.0-2]).
    fn resend_inflight(&mut self, now: Instant) {
        let order: Vec<u16> = self.inflight_order.values().copied().collect();
        for id in order {
            let Some((_, state)) = self.inflight.get(&id) else { continue };
            let result = match state {
                Outgoing::Publish(p) => {
                    if let Some(code) = self.refused_by_server(p) {
                        self.finish_outgoing(id, code, AckProperties::default());
                        continue;
                    }
                    let mut p = p.clone();
                    p.dup = true;
                    self.transmit_publish(now, &p)
                }
                // The application has not released it yet: its PUBREL goes out when it does.
                Outgoing::Received => continue,
                Outgoing::Released => {
                    let Some(pid) = NonZeroU16::new(id) else { continue };
                    self.send(now, &Packet::PubRel(PubAck::new(pid)))
                }
            };
            if let Err(e) = result {
                self.fail_inflight(id, &e);
            }
        }
    }

    /// No Session Present: the server has no state for this client. Unacknowledged publishes
    /// go out again as new messages ahead of the queue; a QoS 2 message whose PUBREC arrived
    /// was received by the server and is complete; received-but-unreleased QoS 2 ids are
    /// forgotten; the application's subscriptions are made again.
    fn restart_session(&mut self, now: Instant) {
        self.incoming_qos2.clear();
        self.unacknowledged_qos2.clear();
        let order: Vec<u16> = self.inflight_order.values().rev().copied().collect();
        for id in order {
            let Some((_, state)) = self.inflight.remove(&id) else { continue };
            match state {
                Outgoing::Publish(mut p) => {
                    p.dup = false;
                    self.queued_bytes += publish_cost(&p);
                    self.queued_ids.extend(p.packet_id.map(NonZeroU16::get));
                    self.queue.push_front(*p);
                }
                Outgoing::Received | Outgoing::Released => {
                    if let Some(packet_id) = NonZeroU16::new(id) {
                        self.events.push_back(Event::Published {
                            packet_id,
                            reason_code: ReasonCode::Success,
                            properties: AckProperties::default(),
                        });
                    }
                }
            }
        }
        self.inflight_order.clear();
        if self.config.restore_subscriptions && !self.subscriptions.is_empty() {
            let subs: Vec<(Subscription, SubscribeProperties)> =
                self.subscriptions.values().cloned().collect();
            for (sub, props) in subs {
                let _ = self.send_subscribe(now, alloc::vec![sub], props, true);
            }
        }
    }

    fn handle_publish(&mut self, now: Instant, mut p: Publish) {
        // Resolve or record the topic alias ([MQTT-3.3.2-10] .. [MQTT-3.3.2-12]).
        if let Some(alias) = p.properties.topic_alias {
            let max = self.options.as_ref().and_then(|o| o.properties.topic_alias_maximum);
            if alias.get() > max.unwrap_or(0) {
                self.violation(now, ReasonCode::TopicAliasInvalid, protocol_error());
                return;
            }
            if p.topic.is_empty() {
                match self.incoming_aliases.get(&alias.get()) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        self.violation(now, ReasonCode::ProtocolError, protocol_error());
                        return;
                    }
                }
            } else {
                self.incoming_aliases.insert(alias.get(), p.topic.clone());
            }
        }
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => self.events.push_back(Event::Message(p)),
            (QoS::AtLeastOnce, Some(id)) => {
                self.events.push_back(Event::Message(p));
                if !self.config.manual_acks {
                    let _ = self.send(now, &Packet::PubAck(PubAck::new(id)));
                }
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if self.incoming_qos2.contains(&id.get()) {
                    // Already delivered; the server did not get our PUBREC ([MQTT-4.3.3-10]).
                    if self.unacknowledged_qos2.contains(&id.get()) {
                        // Relay mode: the PUBREC waits for the application.
                        return;
                    }
                } else {
                    let limit = self
                        .options
                        .as_ref()
                        .and_then(|o| o.properties.receive_maximum)
                        .map_or(u16::MAX, NonZeroU16::get);
                    if self.incoming_qos2.len() >= usize::from(limit) {
                        // [MQTT-3.3.4-9]: the server sent more than our Receive Maximum.
                        self.violation(now, ReasonCode::ReceiveMaximumExceeded, protocol_error());
                        return;
                    }
                    self.incoming_qos2.insert(id.get());
                    self.events.push_back(Event::Message(p));
                    if self.config.manual_acks {
                        self.unacknowledged_qos2.insert(id.get());
                        return;
                    }
                }
                let _ = self.send(now, &Packet::PubRec(PubAck::new(id)));
            }
            // The decoder guarantees a packet id for QoS 1 and 2.
            _ => {}
        }
    }

    fn handle_puback(&mut self, now: Instant, ack: PubAck) {
        let id = ack.packet_id.get();
        match self.inflight.get(&id) {
            Some((_, Outgoing::Publish(p))) if p.qos == QoS::AtLeastOnce => {
                self.finish_outgoing(id, ack.reason_code, ack.properties);
                self.pump(now);
            }
            // A PUBACK for a QoS 2 message in flight: the wrong acknowledgement for an
            // identifier in flight is a protocol error, whichever kind it is.
            Some(_) => self.violation(now, ReasonCode::ProtocolError, protocol_error()),
            // A PUBACK for nothing we sent: nothing to do ([MQTT-4.3.2]: ids are ours to track).
            None => {}
        }
    }

    fn handle_pubrec(&mut self, now: Instant, ack: PubAck) {
        let id = ack.packet_id.get();
        match self.inflight.get_mut(&id) {
            Some((_, state @ Outgoing::Publish(_))) => {
                if let Outgoing::Publish(p) = state
                    && p.qos != QoS::ExactlyOnce
                {
                    // A PUBREC for a QoS 1 message.
                    return self.violation(now, ReasonCode::ProtocolError, protocol_error());
                }
                if ack.reason_code.is_error() {
                    // [MQTT-4.3.3-?]: a PUBREC with an error ends the exchange.
                    self.finish_outgoing(id, ack.reason_code, ack.properties);
                    self.pump(now);
                    return;
                }
                if self.config.manual_acks {
                    *state = Outgoing::Received;
                    self.events.push_back(Event::Received { packet_id: ack.packet_id });
                    return;
                }
                *state = Outgoing::Released;
                let _ = self.send(now, &Packet::PubRel(PubAck::new(ack.packet_id)));
            }
            // Relay mode: the PUBREL still waits for the application.
            Some((_, Outgoing::Received)) => {}
            Some((_, Outgoing::Released)) => {
                let _ = self.send(now, &Packet::PubRel(PubAck::new(ack.packet_id)));
            }
            None => {
                // v5: PUBREL 0x92 for an unknown id; 3.1.1 has no way to say it, so answer with
                // a plain PUBREL so that the server can finish its side.
                let mut rel = PubAck::new(ack.packet_id);
                if self.version().is_v5() {
                    rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                let _ = self.send(now, &Packet::PubRel(rel));
            }
        }
    }

    fn handle_pubrel(&mut self, now: Instant, ack: PubAck) {
        if self.config.manual_acks {
            // The PUBCOMP waits for the application ([`Client::complete`]), also for an
            // identifier it does not know: a relay that restarted learns of it only now.
            self.unacknowledged_qos2.remove(&ack.packet_id.get());
            self.events.push_back(Event::Released { packet_id: ack.packet_id });
            return;
        }
        let found = self.incoming_qos2.remove(&ack.packet_id.get());
        let mut comp = PubAck::new(ack.packet_id);
        if !found && self.version().is_v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        let _ = self.send(now, &Packet::PubComp(comp));
    }

    fn handle_pubcomp(&mut self, now: Instant, ack: PubAck) {
        let id = ack.packet_id.get();
        match self.inflight.get(&id) {
            Some((_, Outgoing::Released)) => {
                self.finish_outgoing(id, ack.reason_code, ack.properties);
                self.pump(now);
            }
            // A PUBCOMP for a QoS 1 message, or for a QoS 2 message before its PUBREC.
            Some(_) => self.violation(now, ReasonCode::ProtocolError, protocol_error()),
            None => {}
        }
    }

    fn finish_outgoing(&mut self, id: u16, reason_code: ReasonCode, properties: AckProperties) {
        if let Some((seq, _)) = self.inflight.remove(&id) {
            self.inflight_order.remove(&seq);
        }
        if let Some(packet_id) = NonZeroU16::new(id) {
            self.events.push_back(Event::Published { packet_id, reason_code, properties });
        }
    }

    fn fail_inflight(&mut self, id: u16, e: &EncodeError) {
        self.finish_outgoing(id, encode_failure_code(e), AckProperties::default());
    }

    fn handle_suback(&mut self, ack: SubAck) {
        let SubAck { packet_id, reason_codes, .. } = ack;
        let Some(Request::Subscribe { restored, filters }) = self.requests.remove(&packet_id.get())
        else {
            return;
        };
        // A refused subscription is not one to restore later.
        for (sub, code) in filters.iter().zip(&reason_codes) {
            if code.is_error() {
                self.subscriptions.remove(&sub.filter);
            }
        }
        self.events.push_back(Event::Subscribed { packet_id, reason_codes, restored });
    }

    fn handle_unsuback(&mut self, ack: UnsubAck) {
        if let Some(Request::Unsubscribe) = self.requests.remove(&ack.packet_id.get()) {
            self.events.push_back(Event::Unsubscribed {
                packet_id: ack.packet_id,
                reason_codes: ack.reason_codes,
            });
        }
    }

    /// The server broke the protocol: tell it why (MQTT 5) and close ([MQTT-4.13.1-1]).
    fn violation(&mut self, now: Instant, code: ReasonCode, reason: DisconnectReason) {
        if self.version().is_v5() && matches!(self.state, State::Connected { .. }) {
            let _ = self.send(now, &Packet::Disconnect(Disconnect::new(code)));
        }
        let reason = match reason {
            DisconnectReason::ProtocolViolation(_) => DisconnectReason::ProtocolViolation(code),
            other => other,
        };
        self.close(reason);
    }

    /// Ends the connection: report why and ask the runtime to close the transport. The
    /// reconnect schedule starts when the runtime confirms with `handle_closed`.
    fn close(&mut self, reason: DisconnectReason) {
        self.events.push_back(Event::Disconnected(reason));
        self.commands.push_back(Command::CloseTransport);
        self.ping_deadline = None;
        self.state = State::Closing;
    }

    /// The transport is gone: schedule a reconnect unless the application stopped.
    fn after_close(&mut self, now: Instant) {
        if let State::Connected { since } = self.state
            && now - since >= self.config.reconnect.stable_after
        {
            self.backoff.reset();
        }
        self.out.clear();
        self.ping_deadline = None;
        if self.stopped || !self.config.reconnect.enable {
            self.state = State::Idle;
        } else {
            let at = self.backoff.next(&self.config.reconnect, now);
            self.state = State::Backoff { at };
        }
    }
}

fn protocol_error() -> DisconnectReason {
    DisconnectReason::ProtocolViolation(ReasonCode::ProtocolError)
}

fn encode_failure_code(e: &EncodeError) -> ReasonCode {
    match e {
        EncodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
        _ => ReasonCode::ImplementationSpecificError,
    }
}
