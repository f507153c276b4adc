//! Broker configuration, limits, and the authentication and authorization hooks.

use alloc::string::String;
use alloc::sync::Arc;
use bytes::Bytes;
use core::fmt;
use core::net::SocketAddr;

use crate::codec::{MAX_PACKET_SIZE, MqttStr, ProtocolVersion, QoS, ReasonCode};
use crate::time::Duration;

/// Where a connection comes from, as the adapter saw it at accept time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The remote address, when the transport has one.
    pub addr: Option<SocketAddr>,
    /// Which of the adapter's listeners accepted it (an index the adapter chooses).
    pub listener: u16,
    /// Who the transport proved the client to be, when its listener takes that as the user
    /// name (a TLS client certificate's common name, with `use_identity_as_username`). It
    /// replaces the user name of the CONNECT, and the authenticator is not asked: the
    /// certificate authenticated the client. Authorization then sees this name.
    pub identity: Option<MqttStr>,
    /// The broker's own in-process session (a bridge's local side): neither authenticated
    /// nor authorized, and the only kind of connection that may use a client id starting with
    /// [`LOCAL_PREFIX`](crate::bridge::LOCAL_PREFIX).
    pub trusted: bool,
}

/// A request to authenticate a client, given to [`Authenticator::authenticate`] and, when the
/// answer is [`AuthDecision::Defer`], carried by [`Command::Authenticate`](super::Command) so that
/// the adapter can decide later. Every field is cheap to clone (reference-counted bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthRequest {
    /// Which step of the exchange this is.
    pub stage: AuthStage,
    /// The client identifier (after the broker assigned one, if the client sent none).
    pub client_id: MqttStr,
    /// The User Name from CONNECT.
    pub username: Option<MqttStr>,
    /// The Password from CONNECT.
    pub password: Option<Bytes>,
    /// MQTT 5 enhanced authentication: the Authentication Method.
    pub method: Option<MqttStr>,
    /// MQTT 5 enhanced authentication: the Authentication Data of this step.
    pub data: Option<Bytes>,
    /// The transport's peer.
    pub peer: PeerInfo,
    /// The protocol version of the connection.
    pub protocol: ProtocolVersion,
}

/// The step of an authentication exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthStage {
    /// The CONNECT packet.
    Connect,
    /// An AUTH packet with reason 0x18 (Continue authentication) during CONNECT.
    Continue,
    /// An AUTH packet with reason 0x19 (Re-authenticate) on an established connection, or an
    /// AUTH 0x18 continuing such a re-authentication.
    Reauthenticate,
}

/// An authenticator's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthDecision {
    /// Accept the client.
    Allow,
    /// Accept the client and send this final Authentication Data (MQTT 5 enhanced
    /// authentication) in the CONNACK or the AUTH 0x00.
    AllowWithData(Bytes),
    /// MQTT 5 enhanced authentication: send AUTH 0x18 with this data and wait for the client's
    /// next AUTH packet.
    Continue(Option<Bytes>),
    /// Refuse with this reason code (a CONNACK or DISCONNECT code >= 0x80; 3.1.1 clients get
    /// the nearest return code, see [`ConnectReturnCode::from_reason`](crate::codec::ConnectReturnCode::from_reason)).
    Deny(ReasonCode),
    /// The decision needs I/O: the broker emits [`Command::Authenticate`](super::Command) and waits
    /// for [`Broker::handle_auth`](super::Broker::handle_auth). Input from the connection is
    /// held meanwhile, in order.
    Defer,
}

/// Decides whether a client may connect. Runs inside the core, so it must not block: a
/// decision that needs I/O returns [`AuthDecision::Defer`].
pub trait Authenticator: Send + Sync {
    /// Decides on one step of authentication.
    fn authenticate(&self, request: &AuthRequest) -> AuthDecision;

    /// Whether this authenticator handles MQTT 5 enhanced authentication with `method`. A
    /// CONNECT naming a method nobody supports is refused with 0x8C (Bad authentication
    /// method).
    fn supports_method(&self, method: &str) -> bool {
        let _ = method;
        false
    }
}

/// What a client wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Publish to a topic name (including a will).
    Publish,
    /// Subscribe to a topic filter (the whole filter, `$share/{group}/` included).
    Subscribe,
    /// Receive a message published on a topic name. The broker asks it through
    /// [`Authorizer::may_receive`], never [`Authorizer::authorize`]; it is here so that an
    /// authorizer can answer all three questions with one rule table.
    Receive,
}

/// Who is asking, for an [`Authorizer`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ClientInfo<'a> {
    /// The client identifier.
    pub client_id: &'a str,
    /// The User Name it connected with.
    pub username: Option<&'a str>,
    /// The transport's peer.
    pub peer: &'a PeerInfo,
}

/// Decides per topic whether a client may publish or subscribe. Runs inside the core and must
/// not block: a decision that needs I/O answers [`AuthzDecision::Defer`] from
/// [`decide`](Self::decide).
pub trait Authorizer: Send + Sync {
    /// Whether `client` may perform `action` on `topic`.
    fn authorize(&self, client: &ClientInfo<'_>, action: Action, topic: &str) -> bool;

    /// The decision, or [`AuthzDecision::Defer`]: the broker then emits
    /// [`Command::Authorize`](super::Command) and holds the connection's input (the
    /// PUBLISH or SUBSCRIBE in question and everything after it) until
    /// [`Broker::handle_authorization`](super::Broker::handle_authorization). Wills cannot
    /// wait: for them `Defer` counts as a refusal. By default, [`authorize`](Self::authorize).
    fn decide(&self, client: &ClientInfo<'_>, action: Action, topic: &str) -> AuthzDecision {
        if self.authorize(client, action, topic) {
            AuthzDecision::Allow
        } else {
            AuthzDecision::Deny
        }
    }

    /// Whether `client` may receive a message published on the topic name `topic`, through a
    /// subscription it was granted. Asked for every message on delivery: live publishes,
    /// retained messages sent on subscribe, wills, and messages for shared subscriptions (a
    /// group's member that may not receive it is passed over). A message queued for an
    /// offline session was checked when it was queued. It cannot wait for I/O.
    ///
    /// So a wide subscription can be granted and deliver only what the client may read. By
    /// default `true`: the decision on the subscription is the only one.
    fn may_receive(&self, client: &ClientInfo<'_>, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }
}

/// An [`Authorizer`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthzDecision {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Needs I/O: answer later with [`Broker::handle_authorization`](super::Broker::handle_authorization).
    Defer,
}

/// How a message for a shared subscription group picks its member ([MQTT-4.8.2]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedPolicy {
    /// Take turns, preferring members that are connected and have room in their inflight
    /// window.
    #[default]
    RoundRobin,
    /// A member drawn from the generator seeded by [`BrokerConfig::seed`], preferring members
    /// that are connected.
    Random,
    /// The same member for as long as it stays connected.
    Sticky,
}

/// Broker configuration. Every field has a default ([`BrokerConfig::default`]) and
/// [`validate`](Self::validate) names the first field that is out of range.
#[derive(Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// Most connections at once; [`Broker::accept`](super::Broker::accept) refuses the rest.
    pub max_connections: usize,
    /// Largest packet the broker accepts, fixed header included; sent to MQTT 5 clients as
    /// Maximum Packet Size.
    pub max_packet_size: u32,
    /// Largest Session Expiry Interval granted, in seconds; it also applies to 3.1.1 clients
    /// connecting with CleanSession 0. `u32::MAX` means sessions never expire.
    pub session_expiry_interval: u32,
    /// Highest QoS supported.
    pub max_qos: QoS,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Whether subscriptions may use wildcards.
    pub wildcard_subscription_available: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are supported.
    pub shared_subscription_available: bool,
    /// Whether MQTT 5 Subscription Identifiers are supported.
    pub subscription_identifiers_available: bool,
    /// How a shared subscription group chooses a member.
    pub shared_policy: SharedPolicy,
    /// The broker's Receive Maximum: QoS 1 and 2 messages an MQTT 5 client may have in flight
    /// towards the broker (QoS 1 not yet acknowledged, QoS 2 not yet released).
    pub receive_maximum: u16,
    /// Most QoS 1 and 2 messages in flight to one client (further capped by the client's
    /// Receive Maximum).
    pub max_inflight_messages: u16,
    /// Most messages queued for one session (offline, or behind a full inflight window).
    pub max_queued_messages: usize,
    /// Most payload and topic bytes queued for one session.
    pub max_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for disconnected sessions.
    pub queue_qos0_offline: bool,
    /// Most bytes waiting to be written to one connection. Beyond it, QoS 0 messages for that
    /// connection are dropped and QoS 1 and 2 messages wait in the session queue.
    pub max_outbound_bytes: usize,
    /// Whether durable state is logged for a store, and whether acknowledgements wait for it
    /// ([`persist`](super::persist)).
    pub persistence: super::persist::Persistence,
    /// Flow control from subscribers back to publishers. When a QoS 1 or 2 message finds a
    /// connected subscriber's queue full, it is queued all the same and the publisher's
    /// PUBACK/PUBREC is withheld until that queue has room again, so a publisher that respects
    /// its Receive Maximum slows down instead of losing messages. A subscriber that holds
    /// acknowledgements back for longer than this is a slow consumer: the withheld acks are
    /// sent and, until its queue drains to half, messages beyond its limits are dropped.
    /// Zero turns the flow control off (full queues drop at once).
    pub max_ack_delay: Duration,
    /// This broker is one node of a cluster ([`cluster`](super::cluster)): it forwards what is
    /// published here and says what it subscribes to through
    /// [`Broker::poll_cluster`](super::Broker::poll_cluster), and takes the other nodes'
    /// messages, retained messages and takeovers through the `handle_cluster_*` methods.
    pub cluster: bool,
    /// The Topic Alias Maximum sent to MQTT 5 clients: aliases a client may use towards the
    /// broker.
    pub topic_alias_maximum: u16,
    /// Whether the broker assigns topic aliases to messages it sends to MQTT 5 clients that
    /// accept them (least recently used alias replaced first).
    pub outgoing_topic_aliases: bool,
    /// Largest keep-alive granted, in seconds; 0 for no limit. An MQTT 5 client asking for more
    /// (or for none) is told this value as Server Keep Alive.
    pub max_keepalive: u16,
    /// How long a connection may take to complete CONNECT (and authentication).
    pub connect_timeout: Duration,
    /// Whether a client may connect with a zero-length client identifier (and get one
    /// assigned).
    pub allow_zero_length_client_id: bool,
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: usize,
    /// Whether `$SYS/broker/...` statistics are published, and how often.
    pub sys_interval: Option<Duration>,
    /// The version string published in `$SYS/broker/version`.
    pub version: String,
    /// Sent as Response Information to MQTT 5 clients that request it.
    pub response_information: Option<String>,
    /// Seed for everything the broker draws at random (assigned client identifiers, random
    /// shared-subscription choice) and for the hash of its client identifier index: the core
    /// has no ambient randomness. A server facing the network should draw it at random (the
    /// `ternmq broker` program does), so that none of these can be predicted from outside.
    pub seed: u64,
    /// Authenticates clients; `None` accepts everyone.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Authorizes publish and subscribe per topic; `None` allows everything.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Test-only: a bug planted on purpose (feature `planted-bugs`).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: PlantedBug,
}

/// A bug planted in the broker on purpose, so that a test can prove the deterministic
/// simulation finds bugs of its kind. Only with the core's `planted-bugs` feature.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedBug {
    /// No bug: the broker as shipped.
    #[default]
    None,
    /// A QoS 2 PUBLISH resent (DUP) before its PUBREL is delivered to subscribers again
    /// instead of only being acknowledged: breaks exactly-once delivery (section 4.3.3).
    RedeliverResentQos2,
    /// A session with expiry 0 whose connection is taken over survives for the new connection
    /// instead of ending with the old one (5.0 section 3.1.2.11.2, [MQTT-3.1.2-6]).
    TakeoverRevivesSession,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_packet_size: 256 * 1024,
            session_expiry_interval: 3600,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            shared_policy: SharedPolicy::RoundRobin,
            receive_maximum: 1024,
            max_inflight_messages: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_qos0_offline: false,
            max_outbound_bytes: 4 * 1024 * 1024,
            max_ack_delay: Duration::from_secs(5),
            persistence: super::persist::Persistence::Off,
            cluster: false,
            topic_alias_maximum: 10,
            outgoing_topic_aliases: false,
            max_keepalive: 0,
            connect_timeout: Duration::from_secs(30),
            allow_zero_length_client_id: true,
            max_client_id_len: 65_535,
            sys_interval: None,
            version: String::from(concat!("ternmq ", env!("CARGO_PKG_VERSION"))),
            response_information: None,
            seed: 0x7e51_b0c5,
            authenticator: None,
            authorizer: None,
            #[cfg(feature = "planted-bugs")]
            planted_bug: PlantedBug::None,
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("max_connections", &self.max_connections)
            .field("max_packet_size", &self.max_packet_size)
            .field("session_expiry_interval", &self.session_expiry_interval)
            .field("max_qos", &self.max_qos)
            .field("retain_available", &self.retain_available)
            .field("wildcard_subscription_available", &self.wildcard_subscription_available)
            .field("shared_subscription_available", &self.shared_subscription_available)
            .field("receive_maximum", &self.receive_maximum)
            .field("max_inflight_messages", &self.max_inflight_messages)
            .field("max_queued_messages", &self.max_queued_messages)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("max_keepalive", &self.max_keepalive)
            .field("authenticator", &self.authenticator.is_some())
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

/// A configuration value out of range: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's name, as in [`BrokerConfig`].
    pub field: &'static str,
    /// What is wrong with it.
    pub message: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

/// The smallest Maximum Packet Size the broker accepts to be configured with: room for a
/// CONNECT with a short client id and a small PUBLISH.
pub const MIN_MAX_PACKET_SIZE: u32 = 64;

impl BrokerConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, message| Err(ConfigError { field, message });
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.max_packet_size < MIN_MAX_PACKET_SIZE {
            return err("max_packet_size", "must be at least 64 bytes");
        }
        if self.max_packet_size > MAX_PACKET_SIZE {
            return err("max_packet_size", "must be at most 268435460 bytes (the MQTT limit)");
        }
        if self.receive_maximum == 0 {
            return err("receive_maximum", "must be at least 1");
        }
        if self.max_inflight_messages == 0 {
            return err("max_inflight_messages", "must be at least 1");
        }
        if self.max_queued_messages == 0 {
            return err("max_queued_messages", "must be at least 1");
        }
        if self.max_queued_bytes == 0 {
            return err("max_queued_bytes", "must be at least 1");
        }
        if self.max_outbound_bytes < self.max_packet_size as usize {
            return err("max_outbound_bytes", "must be at least max_packet_size");
        }
        if self.connect_timeout.is_zero() {
            return err("connect_timeout", "must be more than zero");
        }
        if self.max_client_id_len == 0 {
            return err("max_client_id_len", "must be at least 1");
        }
        if self.max_client_id_len > 65_535 {
            return err("max_client_id_len", "must be at most 65535 bytes (the MQTT limit)");
        }
        if self.sys_interval.is_some_and(|d| d < Duration::from_millis(100)) {
            return err("sys_interval", "must be at least 100 ms");
        }
        Ok(())
    }
}
