//! Session state: what the broker keeps per client identifier across connections.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::Bytes;

use super::ConnId;
use super::config::PeerInfo;
use crate::codec::{MqttStr, PacketId, ProtocolVersion, PublishProperties, QoS, SubscriptionId};
use crate::time::{Instant, MaybeAt};
use crate::topic::{TopicFilter, TopicName};

/// An application message as the broker received it, shared by every subscriber it goes to.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) topic: TopicName,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// As received, without Topic Alias or Subscription Identifiers; the Message Expiry
    /// Interval is recomputed from `expires_at` for each send.
    pub(crate) properties: PublishProperties,
    pub(crate) expires_at: Option<Instant>,
    /// Serial of the publishing session (for No Local), 0 if none.
    pub(crate) origin: u64,
}

impl Message {
    /// Bytes counted against queue limits.
    pub(crate) fn cost(&self) -> usize {
        self.payload.len() + self.topic.as_bytes().len()
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One message on its way to one session.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub(crate) msg: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) sub_ids: Vec<SubscriptionId>,
    /// Names it in the persistence log; 0 when it is not logged.
    pub(crate) key: u64,
    /// The shared subscription it was chosen for: if this session ends before it is
    /// acknowledged, another member gets it.
    pub(crate) shared: Option<TopicFilter>,
}

/// What an outgoing QoS 1 or 2 message waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutState {
    /// QoS 1, PUBLISH sent.
    Ack,
    /// QoS 2, PUBLISH sent.
    Rec,
    /// QoS 2, PUBREL sent.
    Comp,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: PacketId,
    pub(crate) state: OutState,
    pub(crate) delivery: Delivery,
    /// Durable mode, state `Comp`: the log position of the received PUBREC, which the store
    /// must have before PUBREL goes out (0: none to wait for).
    pub(crate) rel_after: u64,
}

/// A will waiting for its connection to end, or for its delay to pass.
#[derive(Debug)]
pub(crate) struct PendingWill {
    pub(crate) msg: Arc<Message>,
    /// Will Delay Interval, seconds.
    pub(crate) delay: u32,
}

#[derive(Debug)]
pub(crate) struct Session {
    /// Unique for the broker's lifetime: tells sessions that reuse a slot apart.
    pub(crate) serial: u64,
    pub(crate) client_id: MqttStr,
    pub(crate) username: Option<MqttStr>,
    pub(crate) peer: PeerInfo,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) conn: Option<ConnId>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub(crate) expiry: u32,
    pub(crate) expires_at: MaybeAt,
    pub(crate) will: Option<PendingWill>,
    pub(crate) will_at: MaybeAt,
    /// The deadline a timer is armed for.
    pub(crate) timer_at: MaybeAt,
    pub(crate) subscriptions: BTreeSet<TopicFilter>,
    /// Outgoing QoS 1 and 2 messages in the order they were first sent.
    pub(crate) inflight: LazyDeque<Inflight>,
    pub(crate) queue: LazyDeque<Delivery>,
    pub(crate) queued_bytes: usize,
    /// Incoming QoS 2 packet identifiers between PUBREC and PUBREL.
    pub(crate) incoming_qos2: LazySet,
    pub(crate) next_id: u16,
    /// How many identifiers from `next_id` on are known to be free: found by one scan of
    /// `inflight`, so that allocating does not scan it each time. Entries only ever join
    /// `inflight` with an identifier from [`allocate_id`](Self::allocate_id) (behind `next_id`)
    /// or, on restore, into a new session, whose count starts at zero.
    pub(crate) free_ahead: u16,
    /// Publishers this session holds back, allocated the first time it holds one: an idle
    /// session pays one pointer for it.
    pub(crate) flow: Option<Box<HeldBack>>,
    /// Held acknowledgements too long: messages beyond the limits are dropped until the queue
    /// drains to half.
    pub(crate) slow: bool,
    /// Its state is in the persistence log (it outlives its connection).
    pub(crate) persistent: bool,
    /// Its client is another broker's MQTT 3.1.1 bridge (Mosquitto's bridge flag): its
    /// subscriptions are No Local and Retain As Published.
    pub(crate) bridge: bool,
}

/// How a session holds publishers back (see `BrokerConfig::max_ack_delay`).
#[derive(Debug, Default)]
pub(crate) struct HeldBack {
    /// Publishers' acknowledgements withheld until this session's queue has room, oldest
    /// first.
    pub(crate) parked: VecDeque<ParkedAck>,
    /// Publishers whose input is paused because this session's output is full, and since when.
    pub(crate) throttling: Vec<ConnId>,
    pub(crate) throttled_since: Option<Instant>,
}

impl Session {
    pub(crate) fn flow(&mut self) -> &mut HeldBack {
        self.flow.get_or_insert_with(Box::default)
    }

    pub(crate) fn has_parked(&self) -> bool {
        self.flow.as_ref().is_some_and(|f| !f.parked.is_empty())
    }
}

/// A PUBACK or PUBREC withheld from a publisher.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParkedAck {
    pub(crate) conn: ConnId,
    pub(crate) id: PacketId,
    pub(crate) qos: QoS,
    pub(crate) since: Instant,
    /// In durable mode: the persistence log position it must also wait for.
    pub(crate) seq: u64,
    /// In a cluster: the forwarded position it must also wait for.
    pub(crate) cluster: u64,
    pub(crate) code: crate::codec::ReasonCode,
    /// Its place in the connection's answer order.
    pub(crate) token: u64,
}

impl Session {
    pub(crate) fn new(serial: u64, client_id: MqttStr, protocol: ProtocolVersion) -> Self {
        Self {
            serial,
            client_id,
            username: None,
            peer: PeerInfo::default(),
            protocol,
            conn: None,
            expiry: 0,
            expires_at: MaybeAt::NONE,
            will: None,
            will_at: MaybeAt::NONE,
            timer_at: MaybeAt::NONE,
            subscriptions: BTreeSet::new(),
            inflight: LazyDeque::default(),
            queue: LazyDeque::default(),
            queued_bytes: 0,
            incoming_qos2: LazySet::default(),
            next_id: 1,
            free_ahead: 0,
            flow: None,
            slow: false,
            persistent: false,
            bridge: false,
        }
    }

    /// The earliest of the will, expiry and withheld-acknowledgement deadlines.
    pub(crate) fn deadline(&self, max_ack_delay: core::time::Duration) -> Option<Instant> {
        let flow = self.flow.as_deref();
        let parked = flow.and_then(|f| f.parked.front()).map(|p| p.since + max_ack_delay);
        let throttled = flow.and_then(|f| f.throttled_since).map(|t| t + max_ack_delay);
        [self.expires_at.get(), self.will_at.get(), parked, throttled].into_iter().flatten().min()
    }

    /// Whether the queue is over either limit.
    pub(crate) fn queue_full(&self, max_msgs: usize, max_bytes: usize, extra: usize) -> bool {
        self.queue.len() >= max_msgs || self.queued_bytes + extra > max_bytes
    }

    /// A packet identifier not used by an inflight message ([MQTT-2.2.1-4]).
    pub(crate) fn allocate_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            if self.free_ahead == 0 {
                // Identifiers run 1 to 65,535 in a ring: the distance from `next_id` to the
                // nearest one in use ahead of it (0 when `next_id` itself is in use).
                let next = i32::from(self.next_id);
                let ahead = |id: u16| (i32::from(id) - next).rem_euclid(65_535);
                let nearest = self.inflight.iter().map(|f| ahead(f.id.get())).min();
                self.free_ahead = nearest.map_or(u16::MAX, |d| u16::try_from(d).unwrap_or(0));
            }
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if self.free_ahead > 0 {
                self.free_ahead -= 1;
                return PacketId::new(id);
            }
        }
        None
    }

    pub(crate) fn inflight_index(&self, id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|f| f.id == id)
    }

    pub(crate) fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(d.msg.cost());
        Some(d)
    }
}

/// A queue that costs one pointer until it first holds something: most sessions of idle
/// devices (publishers, mostly) never have a message queued or in flight to them, and each of
/// the two queues would otherwise cost them 32 bytes. Once allocated it stays, so a busy
/// session does not allocate it again for every message.
#[derive(Debug)]
#[expect(clippy::box_collection, reason = "one pointer rather than a queue's four words")]
pub(crate) struct LazyDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for LazyDeque<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> LazyDeque<T> {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.0.iter().flat_map(|q| q.iter())
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.0.as_ref()?.get(i)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.0.as_mut()?.get_mut(i)
    }

    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.0.as_mut()?.front_mut()
    }

    pub(crate) fn push_back(&mut self, value: T) {
        self.0.get_or_insert_with(Box::default).push_back(value);
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        self.0.as_mut()?.remove(i)
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        if let Some(q) = &mut self.0 {
            q.retain(keep);
        }
    }
}

/// Packet identifiers, costing one pointer until the first: only QoS 2 publishers have any.
#[derive(Debug, Default)]
#[expect(clippy::box_collection, reason = "one pointer rather than a set's three words")]
pub(crate) struct LazySet(Option<Box<BTreeSet<u16>>>);

impl LazySet {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    pub(crate) fn contains(&self, id: &u16) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(id))
    }

    /// Whether it was not there yet.
    pub(crate) fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_with(Box::default).insert(id)
    }

    /// Whether it was there.
    pub(crate) fn remove(&mut self, id: &u16) -> bool {
        self.0.as_mut().is_some_and(|s| s.remove(id))
    }

    /// The identifiers, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|s| s.iter().copied())
    }
}

impl<T> IntoIterator for LazyDeque<T> {
    type Item = T;
    type IntoIter = core::iter::Flatten<core::option::IntoIter<VecDeque<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|q| *q).into_iter().flatten()
    }
}

/// Topic aliases the broker chose for one connection, least recently used replaced first.
#[derive(Debug, Default)]
pub(crate) struct OutAliases {
    by_topic: BTreeMap<TopicName, (u16, u64)>,
    by_use: BTreeMap<u64, TopicName>,
    clock: u64,
}

impl OutAliases {
    /// The alias for `topic` and whether the client already knows it, without recording
    /// anything: the send may still fail.
    pub(crate) fn lookup(&self, topic: &TopicName, max: u16) -> (u16, bool) {
        if let Some(&(alias, _)) = self.by_topic.get(topic) {
            return (alias, true);
        }
        if self.by_topic.len() < usize::from(max) {
            return (self.by_topic.len() as u16 + 1, false);
        }
        let oldest = self.by_use.values().next().and_then(|t| self.by_topic.get(t));
        (oldest.map_or(1, |&(a, _)| a), false)
    }

    /// Records that `alias` now stands for `topic`.
    pub(crate) fn commit(&mut self, topic: &TopicName, alias: u16) {
        self.clock += 1;
        if let Some((_, used)) = self.by_topic.remove(topic) {
            self.by_use.remove(&used);
        } else if let Some(old) =
            self.by_topic.iter().find(|(_, (a, _))| *a == alias).map(|(t, _)| t.clone())
            && let Some((_, used)) = self.by_topic.remove(&old)
        {
            self.by_use.remove(&used);
        }
        self.by_topic.insert(topic.clone(), (alias, self.clock));
        self.by_use.insert(self.clock, topic.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn inflight(id: PacketId, msg: &Arc<Message>) -> Inflight {
        let delivery = Delivery {
            msg: msg.clone(),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            key: 0,
            shared: None,
        };
        Inflight { id, state: OutState::Ack, delivery, rel_after: 0 }
    }

    /// What `allocate_id` must return: the first identifier at or after `next_id`, around the
    /// ring, that is not in flight.
    fn first_free(s: &Session) -> u16 {
        let mut id = s.next_id;
        while s.inflight.iter().any(|f| f.id.get() == id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        id
    }

    /// Identifiers are never reused while in flight, as 5.0: [MQTT-2.2.1-4] and 3.1.1:
    /// [MQTT-2.3.1-4] require: through several wraps of the ring, out-of-order acknowledgements,
    /// long-held entries and a restored session whose identifiers are scattered, `allocate_id`
    /// returns what a full scan would.
    #[test]
    fn allocated_identifiers_are_the_first_free_ones_around_the_ring() {
        let msg = Arc::new(Message {
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: None,
            origin: 0,
        });
        let mut s = Session::new(1, MqttStr::new("c").unwrap(), ProtocolVersion::V5);
        // A restored session: identifiers in flight in no particular order.
        for id in [5u16, 1, 2, 65_535, 300, 3] {
            s.inflight.push_back(inflight(PacketId::new(id).unwrap(), &msg));
        }
        let mut rng = 0x2545_f491_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..150_000u32 {
            let want = first_free(&s);
            let got = s.allocate_id().unwrap().get();
            assert_eq!(got, want, "allocation {round}");
            s.inflight.push_back(inflight(PacketId::new(got).unwrap(), &msg));
            // Acknowledge some, out of order, but keep the oldest few for a long time.
            while s.inflight.len() > 1 + (next() % 120) as usize {
                let at = 3 + (next() as usize % (s.inflight.len() - 3).max(1));
                if at < s.inflight.len() {
                    s.inflight.remove(at);
                }
            }
        }
        // Nearly every identifier in flight: the one free identifier is found.
        s.inflight = LazyDeque::default();
        for id in 1..=65_535u16 {
            if id != 40_000 {
                s.inflight.push_back(inflight(PacketId::new(id).unwrap(), &msg));
            }
        }
        s.free_ahead = 0;
        assert_eq!(s.allocate_id().unwrap().get(), 40_000);
    }
}
