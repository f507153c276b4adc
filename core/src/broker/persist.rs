//! The broker's durable state as a log of operations, and the snapshot it restarts from.
//!
//! The core never writes anything. With [`Persistence::Log`] or [`Persistence::Durable`] in the
//! config, every change to state that must survive a restart is appended, in order and with a
//! sequence number, to a log the adapter drains with
//! [`Broker::poll_persist`](super::Broker::poll_persist): sessions that outlive their
//! connection (Session Expiry Interval > 0, or 3.1.1 CleanSession 0), their subscriptions, the
//! QoS 1/2 messages queued or in flight for them (with packet identifiers and PUBREL state), the
//! QoS 2 packet identifiers they sent that await PUBREL, their pending wills, and retained
//! messages. Sessions that end with their connection and QoS 0 messages to connected clients
//! are not logged.
//!
//! A store applies the operations (in order; many may share one transaction) and, in durable
//! mode, reports how far it got with [`Broker::handle_persisted`](super::Broker::handle_persisted):
//! the broker sends the PUBACK or PUBREC of a QoS 1/2 publish only once every operation that
//! publish caused is on disk. At startup the store hands back a [`Snapshot`] and the broker is
//! built with [`Broker::restore`](super::Broker::restore).
//!
//! Time: the core has only the monotonic `now`, which means nothing across a restart. Durations
//! in operations (session expiry, message expiry, will delay) are relative to the moment the
//! operation was emitted; the store stamps each operation with its wall-clock time and turns
//! them into remaining durations when it builds the snapshot. [`Replay`] does exactly that in
//! memory: it is the reference model for stores, and the store used by simulations.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use bytes::Bytes;

use crate::codec::MqttStr;
use crate::codec::{
    Decoder, Encoder, MAX_PACKET_SIZE, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use crate::time::Duration;
use crate::topic::{TopicFilter, TopicName};

/// Whether and how the broker logs its durable state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Persistence {
    /// Nothing is logged: state lives as long as the process.
    #[default]
    Off,
    /// Operations are logged; acknowledgements do not wait for them (a crash may lose what the
    /// store had not yet written).
    Log,
    /// Operations are logged, and the PUBACK/PUBREC of a QoS 1/2 publish waits until
    /// [`Broker::handle_persisted`](super::Broker::handle_persisted) confirms the operations it
    /// caused: an acknowledged message survives a crash.
    Durable,
}

/// In [`Persistence::Log`] mode, operations the store may be behind before acknowledgements
/// wait for it as in durable mode: the log between the broker and a slow disk stays bounded.
pub const MAX_UNSTORED: u64 = 65_536;

/// The position of an operation in the log: increases by one per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistSeq(pub u64);

/// An application message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic.
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// Properties as published, without Message Expiry Interval, Topic Alias or Subscription
    /// Identifiers.
    pub properties: PublishProperties,
    /// Time left before it expires, counted from the operation (or, in a [`Snapshot`], from the
    /// restore); `None` never expires.
    pub expires_in: Option<Duration>,
}

impl StoredMessage {
    /// Appends the message to `out` as an MQTT 5 PUBLISH packet, with its expiry as a Message
    /// Expiry Interval in whole seconds, rounded down (a message read back may expire early,
    /// never late). The form stores and cluster links keep messages in.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Publish::new(self.topic.clone(), self.payload.clone());
        p.qos = self.qos;
        p.retain = self.retain;
        p.packet_id = (self.qos != QoS::AtMostOnce).then(|| PacketId::new(1)).flatten();
        p.properties = self.properties.clone();
        p.properties.message_expiry_interval =
            self.expires_in.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let mut buf = bytes::BytesMut::new();
        // Every stored message came off the wire or out of the broker: it encodes.
        if Encoder::new(ProtocolVersion::V5).encode(&Packet::Publish(p), &mut buf).is_ok() {
            out.extend_from_slice(&buf);
        }
    }

    /// A message written by [`encode`](Self::encode); `None` if `b` is not one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut buf = bytes::BytesMut::from(b);
        let Ok(Some(Packet::Publish(p))) =
            Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE).decode(&mut buf)
        else {
            return None;
        };
        let mut properties = p.properties;
        let expires_in =
            properties.message_expiry_interval.take().map(|s| Duration::from_secs(s.into()));
        Some(StoredMessage {
            topic: TopicName::new(p.topic.as_str()).ok()?,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_in,
        })
    }
}

/// A message on its way to one session, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The message.
    pub message: StoredMessage,
    /// QoS of this delivery (the subscription may have lowered it).
    pub qos: QoS,
    /// RETAIN flag of this delivery.
    pub retain: bool,
    /// Subscription Identifiers that go with it.
    pub subscription_ids: Vec<SubscriptionId>,
}

/// One change to durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PersistOp {
    /// A session that outlives its connection was created or resumed, or its expiry changed.
    /// It is connected from now on.
    Session {
        /// Client identifier.
        client_id: MqttStr,
        /// Protocol version of its latest connection.
        protocol: ProtocolVersion,
        /// Session Expiry Interval, seconds (`u32::MAX`: never).
        expiry: u32,
    },
    /// The session's connection ended: its expiry interval runs from now.
    Disconnected {
        /// Client identifier.
        client_id: MqttStr,
    },
    /// The session ended: forget it and everything it held.
    SessionDeleted {
        /// Client identifier.
        client_id: MqttStr,
    },
    /// A subscription was added or replaced.
    Subscribed {
        /// Client identifier.
        client_id: MqttStr,
        /// The filter as sent (including `$share/{group}/`).
        filter: TopicFilter,
        /// Granted options (QoS already capped by the broker).
        options: SubscriptionOptions,
        /// Subscription Identifier.
        subscription_id: Option<SubscriptionId>,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Client identifier.
        client_id: MqttStr,
        /// The filter.
        filter: TopicFilter,
    },
    /// A message was queued for the session (or sent at once: a `Sent` follows).
    Queued {
        /// Client identifier.
        client_id: MqttStr,
        /// Names the delivery; increasing in the order deliveries were queued.
        key: u64,
        /// What to deliver.
        delivery: StoredDelivery,
    },
    /// The delivery was sent with this packet identifier and awaits PUBACK or PUBREC.
    Sent {
        /// Client identifier.
        client_id: MqttStr,
        /// The delivery.
        key: u64,
        /// Its packet identifier.
        packet_id: PacketId,
    },
    /// PUBREC arrived for the delivery: it awaits PUBCOMP (PUBREL is resent on resume).
    Received {
        /// Client identifier.
        client_id: MqttStr,
        /// The delivery.
        key: u64,
    },
    /// The delivery is done (acknowledged, expired, or dropped): forget it.
    Released {
        /// Client identifier.
        client_id: MqttStr,
        /// The delivery.
        key: u64,
    },
    /// The client's QoS 2 PUBLISH with this packet identifier was received; it awaits PUBREL.
    IncomingQos2 {
        /// Client identifier.
        client_id: MqttStr,
        /// Packet identifier.
        packet_id: PacketId,
    },
    /// PUBREL arrived for it.
    IncomingQos2Released {
        /// Client identifier.
        client_id: MqttStr,
        /// Packet identifier.
        packet_id: PacketId,
    },
    /// The session's will, to be published `delay` seconds after its connection ends.
    Will {
        /// Client identifier.
        client_id: MqttStr,
        /// The will message.
        message: StoredMessage,
        /// Will Delay Interval, seconds.
        delay: u32,
    },
    /// The session has no will any more (published, or cleared by a normal DISCONNECT).
    WillCleared {
        /// Client identifier.
        client_id: MqttStr,
    },
    /// The retained message of its topic.
    Retained {
        /// The message.
        message: StoredMessage,
    },
    /// The topic has no retained message any more.
    RetainedCleared {
        /// The topic.
        topic: TopicName,
    },
}

/// A queued or in-flight delivery in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDelivery {
    /// Its key (see [`PersistOp::Queued`]).
    pub key: u64,
    /// What to deliver.
    pub delivery: StoredDelivery,
    /// Set once it was sent: it is resent with DUP and this packet identifier.
    pub packet_id: Option<PacketId>,
    /// PUBREC arrived: PUBREL is resent instead.
    pub received: bool,
}

/// One session in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSession {
    /// Client identifier.
    pub client_id: MqttStr,
    /// Protocol version of its latest connection.
    pub protocol: ProtocolVersion,
    /// Session Expiry Interval, seconds.
    pub expiry: u32,
    /// Time left before it expires, from the restore; `None` never expires.
    pub expires_in: Option<Duration>,
    /// Subscriptions.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// Deliveries, in key order.
    pub deliveries: Vec<SnapshotDelivery>,
    /// QoS 2 packet identifiers awaiting PUBREL.
    pub incoming_qos2: Vec<PacketId>,
    /// A will and the time left before it is published.
    pub will: Option<(StoredMessage, Duration)>,
}

/// Everything the broker restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sessions.
    pub sessions: Vec<SnapshotSession>,
    /// Retained messages.
    pub retained: Vec<StoredMessage>,
}

#[derive(Clone, Debug)]
struct Stamped<T> {
    value: T,
    /// Wall-clock seconds when it was logged.
    at: u64,
}

#[derive(Clone, Debug)]
struct ReplaySession {
    protocol: ProtocolVersion,
    expiry: u32,
    disconnected_at: Option<u64>,
    subscriptions: BTreeMap<TopicFilter, (SubscriptionOptions, Option<SubscriptionId>)>,
    deliveries: BTreeMap<u64, (Stamped<StoredDelivery>, Option<PacketId>, bool)>,
    incoming_qos2: BTreeSet<PacketId>,
    will: Option<(Stamped<StoredMessage>, u32)>,
}

/// The reference store: applies [`PersistOp`]s in memory, each stamped with a wall-clock time,
/// and builds the [`Snapshot`] a restarted broker starts from.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    sessions: BTreeMap<MqttStr, ReplaySession>,
    retained: BTreeMap<TopicName, Stamped<StoredMessage>>,
    /// The latest wall-clock time seen: a session connected at a crash counts as disconnected
    /// then.
    last: u64,
}

impl Replay {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `op`, logged at wall-clock millisecond `at` (milliseconds since an epoch the
    /// store chooses, the Unix epoch for `ternmq-store`).
    pub fn apply(&mut self, op: PersistOp, at: u64) {
        self.last = self.last.max(at);
        match op {
            PersistOp::Session { client_id, protocol, expiry } => {
                let s = self.sessions.entry(client_id).or_insert_with(|| ReplaySession {
                    protocol,
                    expiry,
                    disconnected_at: None,
                    subscriptions: BTreeMap::new(),
                    deliveries: BTreeMap::new(),
                    incoming_qos2: BTreeSet::new(),
                    will: None,
                });
                s.protocol = protocol;
                s.expiry = expiry;
                s.disconnected_at = None;
            }
            PersistOp::Disconnected { client_id } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.disconnected_at = Some(at);
                }
            }
            PersistOp::SessionDeleted { client_id } => {
                self.sessions.remove(&client_id);
            }
            PersistOp::Subscribed { client_id, filter, options, subscription_id } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.insert(filter, (options, subscription_id));
                }
            }
            PersistOp::Unsubscribed { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.remove(&filter);
                }
            }
            PersistOp::Queued { client_id, key, delivery } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.deliveries.insert(key, (Stamped { value: delivery, at }, None, false));
                }
            }
            PersistOp::Sent { client_id, key, packet_id } => {
                if let Some(d) = self.delivery(&client_id, key) {
                    d.1 = Some(packet_id);
                }
            }
            PersistOp::Received { client_id, key } => {
                if let Some(d) = self.delivery(&client_id, key) {
                    d.2 = true;
                }
            }
            PersistOp::Released { client_id, key } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.deliveries.remove(&key);
                }
            }
            PersistOp::IncomingQos2 { client_id, packet_id } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.incoming_qos2.insert(packet_id);
                }
            }
            PersistOp::IncomingQos2Released { client_id, packet_id } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.incoming_qos2.remove(&packet_id);
                }
            }
            PersistOp::Will { client_id, message, delay } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.will = Some((Stamped { value: message, at }, delay));
                }
            }
            PersistOp::WillCleared { client_id } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.will = None;
                }
            }
            PersistOp::Retained { message } => {
                self.retained.insert(message.topic.clone(), Stamped { value: message, at });
            }
            PersistOp::RetainedCleared { topic } => {
                self.retained.remove(&topic);
            }
        }
    }

    fn delivery(
        &mut self,
        client_id: &MqttStr,
        key: u64,
    ) -> Option<&mut (Stamped<StoredDelivery>, Option<PacketId>, bool)> {
        self.sessions.get_mut(client_id)?.deliveries.get_mut(&key)
    }

    /// Records that the store was still writing at wall-clock millisecond `at` (a session connected
    /// when the broker stopped counts as disconnected from the latest such time).
    pub fn note_time(&mut self, at: u64) {
        self.last = self.last.max(at);
    }

    /// Sessions stored.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Deliveries stored, over all sessions.
    pub fn deliveries(&self) -> usize {
        self.sessions.values().map(|s| s.deliveries.len()).sum()
    }

    /// The state to restart from at wall-clock millisecond `now`: expired sessions and
    /// messages are left out; wills whose delay ran out while the broker was down are due at
    /// once. Milliseconds, so that a restart extends no expiry by a rounding.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let left = |from: u64, span: Duration| -> Option<Duration> {
            let span = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
            let end = from.saturating_add(span);
            (end > now).then(|| Duration::from_millis(end - now))
        };
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let message = |m: &Stamped<StoredMessage>| -> Option<StoredMessage> {
            let mut msg = m.value.clone();
            if let Some(e) = msg.expires_in {
                msg.expires_in = Some(left(m.at, e)?);
            }
            Some(msg)
        };
        let mut snapshot = Snapshot::default();
        for (client_id, s) in &self.sessions {
            // A session still connected when the broker stopped went offline then.
            let offline_since = s.disconnected_at.unwrap_or(self.last);
            let expires_in = if s.expiry == u32::MAX {
                None
            } else {
                match left(offline_since, secs(s.expiry)) {
                    Some(d) => Some(d),
                    None => continue, // expired while the broker was down
                }
            };
            let mut deliveries = Vec::new();
            for (key, (d, packet_id, received)) in &s.deliveries {
                let Some(msg) = message(&Stamped { value: d.value.message.clone(), at: d.at })
                else {
                    // Expired; but a message already sent is still owed its acknowledgement
                    // flow ([MQTT-3.3.2-5] applies to delivery that has not started).
                    if packet_id.is_none() {
                        continue;
                    }
                    let mut delivery = d.value.clone();
                    delivery.message.expires_in = Some(Duration::ZERO);
                    deliveries.push(SnapshotDelivery {
                        key: *key,
                        delivery,
                        packet_id: *packet_id,
                        received: *received,
                    });
                    continue;
                };
                let mut delivery = d.value.clone();
                delivery.message = msg;
                deliveries.push(SnapshotDelivery {
                    key: *key,
                    delivery,
                    packet_id: *packet_id,
                    received: *received,
                });
            }
            let will = s.will.as_ref().and_then(|(m, delay)| {
                let msg = message(m)?;
                let due = left(offline_since, secs(*delay)).unwrap_or(Duration::ZERO);
                Some((msg, due))
            });
            snapshot.sessions.push(SnapshotSession {
                client_id: client_id.clone(),
                protocol: s.protocol,
                expiry: s.expiry,
                expires_in,
                subscriptions: s
                    .subscriptions
                    .iter()
                    .map(|(f, (o, id))| (f.clone(), *o, *id))
                    .collect(),
                deliveries,
                incoming_qos2: s.incoming_qos2.iter().copied().collect(),
                will,
            });
        }
        snapshot.retained = self.retained.values().filter_map(message).collect();
        snapshot
    }
}

impl SnapshotSession {
    /// Appends the session to `out` in a compact binary form (version 1): what a cluster node
    /// hands the node its client moved to.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(1);
        w.bytes16(self.client_id.as_bytes());
        w.u8(self.protocol.level());
        w.u32(self.expiry);
        w.duration(self.expires_in);
        w.u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for (filter, o, id) in &self.subscriptions {
            w.bytes16(filter.as_str().as_bytes());
            w.options(o);
            w.u32(id.map_or(0, |i| i.get()));
        }
        w.u32(u32::try_from(self.deliveries.len()).unwrap_or(u32::MAX));
        for d in &self.deliveries {
            w.u64(d.key);
            w.u16(d.packet_id.map_or(0, PacketId::get));
            w.u8(u8::from(d.received));
            w.delivery(&d.delivery);
        }
        w.u16(u16::try_from(self.incoming_qos2.len()).unwrap_or(u16::MAX));
        for id in &self.incoming_qos2 {
            w.u16(id.get());
        }
        match &self.will {
            Some((m, due)) => {
                w.u8(1);
                w.message(m);
                w.duration(Some(*due));
            }
            None => w.u8(0),
        }
    }

    /// A session written by [`encode`](Self::encode); `None` if `b` is not one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.u8()? != 1 {
            return None;
        }
        let client_id = MqttStr::new(core::str::from_utf8(r.bytes16()?).ok()?).ok()?.detach();
        let protocol = ProtocolVersion::from_level(r.u8()?)?;
        let expiry = r.u32()?;
        let expires_in = r.duration()?;
        let mut subscriptions = Vec::new();
        for _ in 0..r.u32()? {
            let filter = r.filter()?;
            let options = r.options()?;
            subscriptions.push((filter, options, SubscriptionId::new(r.u32()?)));
        }
        let mut deliveries = Vec::new();
        for _ in 0..r.u32()? {
            let key = r.u64()?;
            let packet_id = PacketId::new(r.u16()?);
            let received = r.u8()? != 0;
            let delivery = r.delivery()?;
            deliveries.push(SnapshotDelivery { key, delivery, packet_id, received });
        }
        let mut incoming_qos2 = Vec::new();
        for _ in 0..r.u16()? {
            incoming_qos2.push(PacketId::new(r.u16()?)?);
        }
        let will = match r.u8()? {
            0 => None,
            _ => {
                let m = r.message()?;
                Some((m, r.duration()??))
            }
        };
        r.0.is_empty().then_some(SnapshotSession {
            client_id,
            protocol,
            expiry,
            expires_in,
            subscriptions,
            deliveries,
            incoming_qos2,
            will,
        })
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes16(&mut self, b: &[u8]) {
        self.u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
        self.0.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
    }
    fn duration(&mut self, d: Option<Duration>) {
        match d {
            Some(d) => {
                self.u8(1);
                self.u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
            None => self.u8(0),
        }
    }
    fn options(&mut self, o: &SubscriptionOptions) {
        let rh = match o.retain_handling {
            RetainHandling::SendOnSubscribe => 0,
            RetainHandling::SendOnNewSubscribe => 1,
            RetainHandling::DoNotSend => 2,
        };
        self.u8(o.qos as u8
            | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | rh << 4);
    }
    fn delivery(&mut self, d: &StoredDelivery) {
        self.u8(d.qos as u8);
        self.u8(u8::from(d.retain));
        self.u16(u16::try_from(d.subscription_ids.len()).unwrap_or(u16::MAX));
        for id in &d.subscription_ids {
            self.u32(id.get());
        }
        self.message(&d.message);
    }
    fn message(&mut self, m: &StoredMessage) {
        let mut body = Vec::new();
        m.encode(&mut body);
        self.u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(&body);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&[u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn duration(&mut self) -> Option<Option<Duration>> {
        Some(match self.u8()? {
            0 => None,
            _ => Some(Duration::from_millis(self.u64()?)),
        })
    }
    fn filter(&mut self) -> Option<TopicFilter> {
        Some(TopicFilter::new(core::str::from_utf8(self.bytes16()?).ok()?).ok()?.detach())
    }
    fn options(&mut self) -> Option<SubscriptionOptions> {
        let o = self.u8()?;
        Some(SubscriptionOptions {
            qos: QoS::from_u8(o & 3)?,
            no_local: o & 4 != 0,
            retain_as_published: o & 8 != 0,
            retain_handling: match o >> 4 {
                0 => RetainHandling::SendOnSubscribe,
                1 => RetainHandling::SendOnNewSubscribe,
                2 => RetainHandling::DoNotSend,
                _ => return None,
            },
        })
    }
    fn delivery(&mut self) -> Option<StoredDelivery> {
        let qos = QoS::from_u8(self.u8()?)?;
        let retain = self.u8()? != 0;
        let mut subscription_ids = Vec::new();
        for _ in 0..self.u16()? {
            subscription_ids.push(SubscriptionId::new(self.u32()?)?);
        }
        let message = self.message()?;
        Some(StoredDelivery { message, qos, retain, subscription_ids })
    }
    fn message(&mut self) -> Option<StoredMessage> {
        let n = self.u32()?;
        StoredMessage::decode(self.take(usize::try_from(n).ok()?)?)
    }
}

impl PersistOp {
    /// Appends the operation to `out` in a compact binary form (version 1): how a cluster node
    /// mirrors its log where the other nodes can read it ([`LogEntry`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        let id = |w: &mut Writer<'_>, tag: u8, c: &MqttStr| {
            w.u8(tag);
            w.bytes16(c.as_bytes());
        };
        match self {
            PersistOp::Session { client_id, protocol, expiry } => {
                id(&mut w, 1, client_id);
                w.u8(protocol.level());
                w.u32(*expiry);
            }
            PersistOp::Disconnected { client_id } => id(&mut w, 2, client_id),
            PersistOp::SessionDeleted { client_id } => id(&mut w, 3, client_id),
            PersistOp::Subscribed { client_id, filter, options, subscription_id } => {
                id(&mut w, 4, client_id);
                w.bytes16(filter.as_str().as_bytes());
                w.options(options);
                w.u32(subscription_id.map_or(0, |i| i.get()));
            }
            PersistOp::Unsubscribed { client_id, filter } => {
                id(&mut w, 5, client_id);
                w.bytes16(filter.as_str().as_bytes());
            }
            PersistOp::Queued { client_id, key, delivery } => {
                id(&mut w, 6, client_id);
                w.u64(*key);
                w.delivery(delivery);
            }
            PersistOp::Sent { client_id, key, packet_id } => {
                id(&mut w, 7, client_id);
                w.u64(*key);
                w.u16(packet_id.get());
            }
            PersistOp::Received { client_id, key } => {
                id(&mut w, 8, client_id);
                w.u64(*key);
            }
            PersistOp::Released { client_id, key } => {
                id(&mut w, 9, client_id);
                w.u64(*key);
            }
            PersistOp::IncomingQos2 { client_id, packet_id } => {
                id(&mut w, 10, client_id);
                w.u16(packet_id.get());
            }
            PersistOp::IncomingQos2Released { client_id, packet_id } => {
                id(&mut w, 11, client_id);
                w.u16(packet_id.get());
            }
            PersistOp::Will { client_id, message, delay } => {
                id(&mut w, 12, client_id);
                w.message(message);
                w.u32(*delay);
            }
            PersistOp::WillCleared { client_id } => id(&mut w, 13, client_id),
            PersistOp::Retained { message } => {
                w.u8(14);
                w.message(message);
            }
            PersistOp::RetainedCleared { topic } => {
                w.u8(15);
                w.bytes16(topic.as_str().as_bytes());
            }
        }
    }

    /// The operation [`encode`](Self::encode) wrote at the start of `r`.
    fn read(r: &mut Reader<'_>) -> Option<Self> {
        let tag = r.u8()?;
        if tag == 14 {
            return Some(PersistOp::Retained { message: r.message()? });
        }
        if tag == 15 {
            let topic = TopicName::new(core::str::from_utf8(r.bytes16()?).ok()?).ok()?.detach();
            return Some(PersistOp::RetainedCleared { topic });
        }
        let client_id = MqttStr::new(core::str::from_utf8(r.bytes16()?).ok()?).ok()?.detach();
        Some(match tag {
            1 => PersistOp::Session {
                client_id,
                protocol: ProtocolVersion::from_level(r.u8()?)?,
                expiry: r.u32()?,
            },
            2 => PersistOp::Disconnected { client_id },
            3 => PersistOp::SessionDeleted { client_id },
            4 => PersistOp::Subscribed {
                client_id,
                filter: r.filter()?,
                options: r.options()?,
                subscription_id: SubscriptionId::new(r.u32()?),
            },
            5 => PersistOp::Unsubscribed { client_id, filter: r.filter()? },
            6 => PersistOp::Queued { client_id, key: r.u64()?, delivery: r.delivery()? },
            7 => PersistOp::Sent { client_id, key: r.u64()?, packet_id: PacketId::new(r.u16()?)? },
            8 => PersistOp::Received { client_id, key: r.u64()? },
            9 => PersistOp::Released { client_id, key: r.u64()? },
            10 => PersistOp::IncomingQos2 { client_id, packet_id: PacketId::new(r.u16()?)? },
            11 => {
                PersistOp::IncomingQos2Released { client_id, packet_id: PacketId::new(r.u16()?)? }
            }
            12 => PersistOp::Will { client_id, message: r.message()?, delay: r.u32()? },
            13 => PersistOp::WillCleared { client_id },
            _ => return None,
        })
    }
}

/// One entry of a cluster node's mirrored log: what another node reads to take the sessions
/// of a node that died ([`LogReplay`]). A node mirrors its whole state first (a snapshot,
/// between [`LogEntry::SnapshotStart`] and [`LogEntry::SnapshotEnd`]), then every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// The operations one input caused, all or none; and, for a message from another node's
    /// stream, its position there once handled (`consumed`).
    Ops {
        /// The operations, in order.
        ops: Vec<PersistOp>,
        /// The position in the backplane's stream of messages this node has handled up to.
        consumed: Option<u64>,
    },
    /// The node's whole state follows, up to [`LogEntry::SnapshotEnd`]; it replaces
    /// everything before it. `consumed` is the stream position it had handled up to.
    SnapshotStart {
        /// The stream position.
        consumed: u64,
    },
    /// The end of the snapshot that [`LogEntry::SnapshotStart`] began.
    SnapshotEnd,
}

impl LogEntry {
    /// Appends the entry to `out` (version 1).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LogEntry::Ops { ops, consumed } => {
                let mut w = Writer(out);
                w.u8(1);
                w.u64(consumed.map_or(0, |c| c + 1));
                w.u32(u32::try_from(ops.len()).unwrap_or(u32::MAX));
                for op in ops {
                    op.encode(out);
                }
            }
            LogEntry::SnapshotStart { consumed } => {
                let mut w = Writer(out);
                w.u8(2);
                w.u64(*consumed);
            }
            LogEntry::SnapshotEnd => out.push(3),
        }
    }

    /// An entry written by [`encode`](Self::encode); `None` if `b` is not one.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        let entry = match r.u8()? {
            1 => {
                let consumed = r.u64()?.checked_sub(1);
                let n = r.u32()?;
                let mut ops = Vec::new();
                for _ in 0..n {
                    ops.push(PersistOp::read(&mut r)?);
                }
                LogEntry::Ops { ops, consumed }
            }
            2 => LogEntry::SnapshotStart { consumed: r.u64()? },
            3 => LogEntry::SnapshotEnd,
            _ => return None,
        };
        r.0.is_empty().then_some(entry)
    }
}

/// A cluster node's mirrored log read back ([`LogEntry`]): its sessions as it last mirrored
/// them, and the stream position it had handled.
#[derive(Clone, Debug, Default)]
pub struct LogReplay {
    state: Replay,
    consumed: u64,
    /// A snapshot being read: it replaces `state` once complete.
    snapshot: Option<(Replay, u64)>,
}

impl LogReplay {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `entry`, mirrored at wall-clock millisecond `at`.
    pub fn apply(&mut self, entry: LogEntry, at: u64) {
        match entry {
            LogEntry::SnapshotStart { consumed } => self.snapshot = Some((Replay::new(), consumed)),
            LogEntry::SnapshotEnd => {
                if let Some((state, consumed)) = self.snapshot.take() {
                    self.state = state;
                    self.consumed = consumed;
                }
            }
            LogEntry::Ops { ops, consumed } => {
                let (state, position) = match self.snapshot.as_mut() {
                    Some((s, c)) => (s, c),
                    None => (&mut self.state, &mut self.consumed),
                };
                for op in ops {
                    state.apply(op, at);
                }
                if let Some(c) = consumed {
                    *position = (*position).max(c);
                }
                state.note_time(at);
            }
        }
    }

    /// The stream position the node had handled up to.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// `client_id`'s session as the node left it, at wall-clock millisecond `now` (`None` if
    /// it has none, or it expired); its will stays behind (the backplane publishes the wills
    /// of a dead node's connections on its own).
    pub fn session(&self, client_id: &str, now: u64) -> Option<SnapshotSession> {
        let key = MqttStr::new(client_id).ok()?.detach();
        let s = self.state.sessions.get(&key)?;
        let mut one = Replay { last: self.state.last, ..Replay::default() };
        one.sessions.insert(key, s.clone());
        let mut session = one.snapshot(now).sessions.pop()?;
        session.will = None;
        Some(session)
    }
}
