//! Administration: what an operator asks of a running broker, and tells it to do, as values in
//! and values out ([`Broker::handle_admin`]). No I/O and no clock but the caller's `now`, like
//! the rest of the core: a server carries requests to its broker loop, an HTTP API or a test
//! makes them.

use alloc::string::String;
use core::net::SocketAddr;

use super::*;

/// A request to the broker, answered by [`Broker::handle_admin`] with a [`Response`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Request {
    /// Clients: connected ones, and disconnected ones whose session lives on. In client
    /// identifier order (by bytes), those starting with `prefix`, after `after` (exclusive),
    /// at most `limit`.
    ListClients {
        /// Only identifiers that start with this.
        prefix: String,
        /// Start after this identifier (the `next` of a previous answer).
        after: Option<String>,
        /// At most this many.
        limit: usize,
    },
    /// One client, with its subscriptions.
    GetClient {
        /// Its client identifier.
        client_id: String,
    },
    /// Disconnects a client (MQTT 5: DISCONNECT with `reason` first; its will is published),
    /// and with `discard_session` also ends its session.
    Disconnect {
        /// Its client identifier.
        client_id: String,
        /// The DISCONNECT reason code for an MQTT 5 client.
        reason: ReasonCode,
        /// End the session too: its subscriptions and queued messages are gone.
        discard_session: bool,
    },
    /// Retained messages whose topic matches `filter`, in topic order, at most `limit`.
    ListRetained {
        /// A topic filter (wildcards allowed; no shared subscription).
        filter: TopicFilter,
        /// At most this many.
        limit: usize,
    },
    /// Clears the retained message of a topic.
    ClearRetained {
        /// The topic.
        topic: TopicName,
    },
    /// Publishes a message as the broker itself: routed like a client's (retained when its
    /// RETAIN is set), with no publisher to acknowledge.
    Publish(Publish),
    /// The counters and gauges.
    Stats,
    /// A new configuration: what can change while clients are connected is applied (the
    /// authenticator and authorizer, limits on queues, sizes, timeouts and client
    /// identifiers); what cannot is named in the answer. Clients whose user name is in
    /// `disconnect_users` are disconnected (MQTT 5: DISCONNECT 0x87 Not authorized).
    Reload {
        /// The configuration read again.
        config: Box<BrokerConfig>,
        /// User names that may no longer connect (removed from the password file).
        disconnect_users: Vec<String>,
    },
}

/// The broker's answer to a [`Request`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Response {
    /// Answers [`Request::ListClients`]: the clients, and the identifier to continue after
    /// when there are more.
    Clients {
        /// At most `limit` clients.
        clients: Vec<ClientInfo>,
        /// Set when more clients follow: pass it as `after`.
        next: Option<String>,
    },
    /// Answers [`Request::GetClient`]; `None` for an unknown client.
    Client(Option<Box<ClientDetail>>),
    /// Answers [`Request::Disconnect`]: whether there was such a client.
    Disconnected {
        /// The client (connected or with a session) existed.
        found: bool,
    },
    /// Answers [`Request::ListRetained`].
    Retained {
        /// At most `limit` messages.
        messages: Vec<RetainedMessage>,
        /// Set when more matching messages follow.
        truncated: bool,
    },
    /// Answers [`Request::ClearRetained`]: whether the topic had a retained message.
    Cleared {
        /// There was one.
        found: bool,
    },
    /// Answers [`Request::Publish`]: the number of sessions it was delivered or queued to.
    Published {
        /// Matching subscribers (one per session; one per shared group).
        matched: usize,
    },
    /// Answers [`Request::Stats`].
    Stats {
        /// Counters since start.
        stats: Box<Stats>,
        /// Sizes now.
        gauges: Gauges,
        /// Time since the broker started.
        uptime: Duration,
    },
    /// Answers [`Request::Reload`].
    Reloaded {
        /// Options that differ but only take effect on a restart.
        restart_needed: Vec<&'static str>,
        /// Clients disconnected because their user was removed.
        disconnected: usize,
    },
    /// The request cannot be carried out.
    Refused(AdminError),
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminError {
    /// The request is not valid: the reason.
    Invalid(String),
    /// The message is larger than `max_packet_size`.
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: u32,
    },
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Invalid(why) => f.write_str(why),
            AdminError::TooLarge { size, max } => {
                write!(f, "the message is {size} bytes encoded, over max_packet_size {max}")
            }
        }
    }
}

/// A client as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// User name it authenticated with (or its certificate's name).
    pub username: Option<String>,
    /// Where it connects (or last connected) from.
    pub peer: Option<SocketAddr>,
    /// MQTT version of its (last) connection.
    pub protocol: ProtocolVersion,
    /// The listener of its (last) connection.
    pub listener: u16,
    /// Whether it is connected now.
    pub connected: bool,
    /// How long its connection has been open; `None` when disconnected.
    pub connected_for: Option<Duration>,
    /// Keep-alive in seconds as granted (0: none); 0 when disconnected.
    pub keep_alive: u16,
    /// Subscriptions of its session.
    pub subscriptions: usize,
    /// QoS 1 and 2 messages sent to it and not yet acknowledged.
    pub inflight: usize,
    /// Messages queued for it.
    pub queued: usize,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub session_expiry: u32,
    /// When disconnected: how long until the session expires (`None`: it never does).
    pub expires_in: Option<Duration>,
}

/// A client with its subscriptions ([`Request::GetClient`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientDetail {
    /// The client.
    pub info: ClientInfo,
    /// Its subscriptions, in filter order.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// The filter as subscribed (`$share/{group}/...` for a shared subscription).
    pub filter: String,
    /// Granted QoS.
    pub qos: QoS,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A retained message ([`Request::ListRetained`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetainedMessage {
    /// Its topic.
    pub topic: String,
    /// Its QoS.
    pub qos: QoS,
    /// Its payload.
    pub payload: Bytes,
    /// Its MQTT 5 properties (without Message Expiry Interval: see `expires_in`).
    pub properties: PublishProperties,
    /// Time left before it expires; `None` if it never does.
    pub expires_in: Option<Duration>,
}

impl Broker {
    /// Answers an operator's request at time `now`. Requests that change state (disconnect,
    /// publish, clear, reload) leave their output for the usual `poll_*` calls.
    pub fn handle_admin(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::ListClients { prefix, after, limit } => {
                self.list_clients(now, &prefix, after, limit)
            }
            Request::GetClient { client_id } => {
                let detail = self.session_for(client_id.as_bytes()).and_then(|si| {
                    let info = self.client_info(now, si)?;
                    let s = self.sessions.get(si as usize)?.as_ref()?;
                    let subscriptions = s
                        .subscriptions
                        .iter()
                        .filter_map(|f| {
                            let e = self.tree.entry(f, si)?;
                            Some(SubscriptionInfo {
                                filter: f.as_str().into(),
                                qos: e.qos,
                                no_local: e.no_local,
                                retain_as_published: e.retain_as_published,
                                subscription_id: e.sub_id.map(|id| id.get()),
                            })
                        })
                        .collect();
                    Some(Box::new(ClientDetail { info, subscriptions }))
                });
                Response::Client(detail)
            }
            Request::Disconnect { client_id, reason, discard_session } => Response::Disconnected {
                found: self.kick(now, &client_id, reason, discard_session),
            },
            Request::ListRetained { filter, limit } => {
                if filter.is_shared() {
                    return refused("a shared subscription filter matches no retained message");
                }
                let mut messages = Vec::new();
                let mut truncated = false;
                for (topic, msg) in &self.retained {
                    if msg.expired(now) || !filter.matches(topic) {
                        continue;
                    }
                    if messages.len() == limit {
                        truncated = true;
                        break;
                    }
                    messages.push(RetainedMessage {
                        topic: topic.as_str().into(),
                        qos: msg.qos,
                        payload: msg.payload.clone(),
                        properties: msg.properties.clone(),
                        expires_in: msg.expires_at.map(|at| at.saturating_duration_since(now)),
                    });
                }
                Response::Retained { messages, truncated }
            }
            Request::ClearRetained { topic } => {
                let found = self.retained.remove(&topic).is_some();
                if found {
                    self.log(PersistOp::RetainedCleared { topic });
                }
                Response::Cleared { found }
            }
            Request::Publish(publish) => self.publish_as_broker(now, publish),
            Request::Stats => Response::Stats {
                stats: Box::new(self.stats.clone()),
                gauges: self.gauges(),
                uptime: now.saturating_duration_since(self.started),
            },
            Request::Reload { config, disconnect_users } => {
                self.reload(now, *config, &disconnect_users)
            }
        }
    }

    fn list_clients(
        &self,
        now: Instant,
        prefix: &str,
        after: Option<String>,
        limit: usize,
    ) -> Response {
        // After the cursor when it is within the prefix's range, else from the prefix on.
        let after = after.filter(|a| a.as_str() >= prefix);
        let mut ids: Vec<(&[u8], u32)> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(si, s)| {
                let id = s.as_ref()?.client_id.as_bytes();
                let wanted = id.starts_with(prefix.as_bytes())
                    && after.as_ref().is_none_or(|a| id > a.as_bytes());
                wanted.then_some((id, u32::try_from(si).ok()?))
            })
            .collect();
        // In identifier order: the smallest `limit + 1` (one more tells whether there is a
        // next page), sorted.
        let wanted = limit.saturating_add(1);
        if ids.len() > wanted {
            ids.select_nth_unstable(wanted);
            ids.truncate(wanted);
        }
        ids.sort_unstable();
        let mut clients = Vec::new();
        let mut next = None;
        for (_, si) in ids {
            if clients.len() == limit {
                next = clients.last().map(|c: &ClientInfo| c.client_id.clone());
                break;
            }
            clients.extend(self.client_info(now, si));
        }
        Response::Clients { clients, next }
    }

    fn client_info(&self, now: Instant, si: u32) -> Option<ClientInfo> {
        let s = self.sessions.get(si as usize)?.as_ref()?;
        let conn = s.conn.and_then(|id| self.conn(id)).filter(|c| c.phase == Phase::Connected);
        Some(ClientInfo {
            client_id: s.client_id.as_str().into(),
            username: s.username.as_ref().map(|u| u.as_str().into()),
            peer: s.peer.addr,
            protocol: s.protocol,
            listener: s.peer.listener,
            connected: conn.is_some(),
            connected_for: conn.map(|c| now.saturating_duration_since(c.accepted_at)),
            keep_alive: conn.map_or(0, |c| c.keep_alive),
            subscriptions: s.subscriptions.len(),
            inflight: s.inflight.len(),
            queued: s.queue.len(),
            session_expiry: s.expiry,
            expires_in: match conn {
                Some(_) => None,
                None => s.expires_at.get().map(|at| at.saturating_duration_since(now)),
            },
        })
    }

    /// Disconnects `client_id` and, with `discard`, ends its session. Whether it existed.
    fn kick(&mut self, now: Instant, client_id: &str, reason: ReasonCode, discard: bool) -> bool {
        let Some(si) = self.session_for(client_id.as_bytes()) else {
            return false;
        };
        if let Some(id) = self.session(si).and_then(|s| s.conn)
            && self.conn(id).is_some()
        {
            self.close(now, id.index, CloseReason::Server(reason), Some(reason), true);
        }
        // Closing may have ended it (expiry 0).
        if discard && let Some(si) = self.session_for(client_id.as_bytes()) {
            self.end_session(now, si);
        }
        true
    }

    fn publish_as_broker(&mut self, now: Instant, mut publish: Publish) -> Response {
        if publish.topic.is_empty() {
            return refused("the topic is empty");
        }
        if publish.topic.is_system() {
            return refused("topics starting with $ are the broker's own");
        }
        if publish.retain && !self.config.retain_available {
            return refused("retained messages are not available (retain_available = false)");
        }
        publish.dup = false;
        publish.packet_id = (publish.qos != QoS::AtMostOnce).then_some(PacketId::MIN);
        publish.properties.topic_alias = None;
        publish.properties.subscription_identifiers.clear();
        // The largest it is on the wire: with MQTT 5 properties.
        let size =
            Packet::Publish(publish.clone()).encoded_len(ProtocolVersion::V5).unwrap_or(usize::MAX);
        if size > self.config.max_packet_size as usize {
            return Response::Refused(AdminError::TooLarge {
                size,
                max: self.config.max_packet_size,
            });
        }
        let mut how = Routing::default();
        self.publish_message(now, 0, publish, &mut how);
        Response::Published { matched: how.delivered }
    }

    fn reload(&mut self, now: Instant, config: BrokerConfig, users: &[String]) -> Response {
        if let Err(e) = config.validate() {
            return refused(&alloc::format!("{}: {}", e.field, e.message));
        }
        let old = &self.config;
        let mut restart_needed = Vec::new();
        let fixed = [
            ("max_qos", old.max_qos != config.max_qos),
            ("retain_available", old.retain_available != config.retain_available),
            (
                "wildcard_subscription_available",
                old.wildcard_subscription_available != config.wildcard_subscription_available,
            ),
            (
                "shared_subscription_available",
                old.shared_subscription_available != config.shared_subscription_available,
            ),
            (
                "subscription_identifiers_available",
                old.subscription_identifiers_available != config.subscription_identifiers_available,
            ),
            ("receive_maximum", old.receive_maximum != config.receive_maximum),
            ("max_inflight_messages", old.max_inflight_messages != config.max_inflight_messages),
            ("max_topic_alias", old.topic_alias_maximum != config.topic_alias_maximum),
            ("outgoing_topic_aliases", old.outgoing_topic_aliases != config.outgoing_topic_aliases),
            ("sys_interval", old.sys_interval != config.sys_interval),
        ];
        for (name, changed) in fixed {
            if changed {
                restart_needed.push(name);
            }
        }
        let c = &mut self.config;
        c.max_connections = config.max_connections;
        c.max_packet_size = config.max_packet_size;
        c.session_expiry_interval = config.session_expiry_interval;
        c.shared_policy = config.shared_policy;
        c.max_queued_messages = config.max_queued_messages;
        c.max_queued_bytes = config.max_queued_bytes;
        c.queue_qos0_offline = config.queue_qos0_offline;
        c.max_outbound_bytes = config.max_outbound_bytes;
        c.max_ack_delay = config.max_ack_delay;
        c.max_keepalive = config.max_keepalive;
        c.connect_timeout = config.connect_timeout;
        c.allow_zero_length_client_id = config.allow_zero_length_client_id;
        c.max_client_id_len = config.max_client_id_len;
        c.response_information = config.response_information;
        c.authenticator = config.authenticator;
        c.authorizer = config.authorizer;
        let mut disconnected = 0;
        if !users.is_empty() {
            let gone: Vec<ConnId> = self
                .sessions
                .iter()
                .flatten()
                .filter(|s| {
                    s.username.as_ref().is_some_and(|u| users.iter().any(|x| x == u.as_str()))
                })
                .filter_map(|s| s.conn)
                .collect();
            for id in gone {
                if self.conn(id).is_some_and(|c| c.phase == Phase::Connected) {
                    let code = ReasonCode::NotAuthorized;
                    self.close(now, id.index, CloseReason::Server(code), Some(code), true);
                    disconnected += 1;
                }
            }
        }
        Response::Reloaded { restart_needed, disconnected }
    }
}

fn refused(why: &str) -> Response {
    Response::Refused(AdminError::Invalid(why.into()))
}
