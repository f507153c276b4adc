//! The broker's side of persistence: logging state changes, waiting for the store in durable
//! mode, and starting again from a snapshot.

use alloc::sync::Arc;

use super::session::{Delivery, Inflight, Message, OutState, ParkedAck, PendingWill};
use super::tree::Entry;
use alloc::vec::Vec;
use bytes::Bytes;

use super::persist::*;
use super::{Broker, BrokerConfig, ConfigError};
use crate::codec::{MqttStr, QoS};
use crate::codec::{Packet, PubAck};
use crate::time::Instant;

impl Broker {
    /// The next operation of the persistence log, in order; call after every input, with the
    /// other `poll_*`. Always `None` with [`Persistence::Off`].
    ///
    /// The operations drained after one input belong together (a QoS 2 publish records its
    /// packet identifier and queues its deliveries): the store must commit them in one
    /// transaction, all or none. A crash between them could otherwise deliver a resent
    /// message twice, or acknowledge it without delivering it.
    #[must_use]
    pub fn poll_persist(&mut self) -> Option<(PersistSeq, PersistOp)> {
        self.persist_log.pop_front()
    }

    /// The store has every operation up to and including `seq` on disk. In durable mode this
    /// sends the acknowledgements that waited for them.
    pub fn handle_persisted(&mut self, now: Instant, seq: PersistSeq) {
        self.persisted = self.persisted.max(seq.0);
        let persisted = self.persisted;
        let mut waiting = core::mem::take(&mut self.awaiting_store);
        waiting.retain(|p| {
            if p.seq > persisted {
                return true;
            }
            // Stored: sent, or on to wait for the cluster (never back to `awaiting_store`,
            // which is taken meanwhile).
            self.release_ack(*p);
            false
        });
        self.awaiting_store = waiting;
        self.open_gates(now);
    }

    /// Output held for the store (and a mirror of the log) goes once they have what it
    /// waited for; the sessions behind it take up their queues again.
    pub(super) fn open_gates(&mut self, now: Instant) {
        let persisted = self.persisted;
        let acked = self.cluster_acked();
        let mut gated = core::mem::take(&mut self.gated);
        let mut opened = Vec::new();
        gated.retain(|&id| {
            let Some(c) = self.conn_mut(id) else {
                return false;
            };
            let session = c.session;
            let Some(o) = c.owing.as_deref_mut() else {
                return false;
            };
            if o.gate_seq > persisted || o.gate_cluster > acked {
                return true;
            }
            o.gate_seq = 0;
            o.gate_cluster = 0;
            o.gate_bytes = 0;
            opened.push((id, session));
            false
        });
        self.gated = gated;
        for (id, session) in opened {
            self.mark_ready(id.index);
            if let Some(session) = session {
                self.pump(now, session);
            }
        }
        self.release_replies();
    }

    /// Sends the replies (PUBREL, PUBCOMP) whose operations the store, and a mirror of the
    /// log, now hold; in order.
    pub(super) fn release_replies(&mut self) {
        let persisted = self.persisted;
        while self
            .awaiting_reply
            .front()
            .is_some_and(|r| r.0 <= persisted && !self.cluster_behind(r.1))
        {
            let Some((_, _, conn, packet)) = self.awaiting_reply.pop_front() else {
                break;
            };
            // A connection that ended meanwhile gets its PUBREL when the session resumes, and
            // its PUBCOMP when the client sends PUBREL again.
            if let Some(c) = self.conn_mut(conn) {
                if let Some(o) = c.owing.as_deref_mut() {
                    o.replies_waiting = o.replies_waiting.saturating_sub(1);
                }
                if c.phase == super::Phase::Connected {
                    self.send(conn.index, &packet);
                }
            }
        }
    }

    /// A broker that starts from `snapshot` (what a store kept, see [`Replay::snapshot`]): its
    /// sessions offline, their subscriptions, queued and in-flight messages (resent with DUP on
    /// resume), QoS 2 identifiers awaiting PUBREL, pending wills, and retained messages.
    pub fn restore(
        config: BrokerConfig,
        snapshot: Snapshot,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let mut b = Broker::new(config, now)?;
        for s in snapshot.sessions {
            b.import_session(now, s);
        }
        for m in snapshot.retained {
            let msg = Arc::new(message(m, now));
            b.retained.insert(msg.topic.clone(), msg);
        }
        Ok(b)
    }

    /// Makes `s` a session of this broker, offline, as a restore does; returns its number.
    pub(super) fn import_session(&mut self, now: Instant, s: SnapshotSession) -> u32 {
        let max_qos = self.config.max_qos;
        let si = self.new_session(s.client_id.detach(), s.protocol);
        for (filter, options, sub_id) in &s.subscriptions {
            let entry = Entry {
                session: si,
                qos: options.qos.min(max_qos),
                no_local: options.no_local,
                retain_as_published: options.retain_as_published,
                sub_id: *sub_id,
            };
            self.tree.insert(filter, entry);
        }
        let mut max_key = 0;
        let Some(sess) = self.session_mut(si) else {
            return si;
        };
        sess.persistent = true;
        sess.expiry = s.expiry;
        sess.expires_at = s.expires_in.map(|d| now + d).into();
        sess.subscriptions = s.subscriptions.into_iter().map(|(f, _, _)| f.detach()).collect();
        for id in s.incoming_qos2 {
            sess.incoming_qos2.insert(id.get());
        }
        for d in s.deliveries {
            max_key = max_key.max(d.key);
            let delivery = Delivery {
                msg: Arc::new(message(d.delivery.message, now)),
                qos: d.delivery.qos,
                retain: d.delivery.retain,
                sub_ids: d.delivery.subscription_ids,
                key: d.key,
                shared: None,
            };
            match d.packet_id {
                Some(id) => {
                    let state = if d.received {
                        OutState::Comp
                    } else if delivery.qos == QoS::ExactlyOnce {
                        OutState::Rec
                    } else {
                        OutState::Ack
                    };
                    sess.inflight.push_back(Inflight { id, state, delivery, rel_after: 0 });
                }
                None => {
                    sess.queued_bytes += delivery.msg.cost();
                    sess.queue.push_back(delivery);
                }
            }
        }
        if let Some((will, due)) = s.will {
            let delay = u32::try_from(due.as_secs()).unwrap_or(u32::MAX);
            sess.will = Some(PendingWill { msg: Arc::new(message(will, now)), delay });
            sess.will_at = Some(now + due).into();
        }
        self.next_key = self.next_key.max(max_key + 1);
        self.arm_session_timer(si);
        si
    }

    /// Session `si` as a snapshot, without its will (a moved session's client brings its
    /// own), for another node to [`import_session`](Self::import_session).
    pub(super) fn export_session(&self, now: Instant, si: u32) -> Option<SnapshotSession> {
        let s = self.session(si)?;
        let mut subscriptions = Vec::with_capacity(s.subscriptions.len());
        for f in &s.subscriptions {
            let Some(e) = self.tree.entry(f, si) else {
                continue;
            };
            let options = crate::codec::SubscriptionOptions {
                qos: e.qos,
                no_local: e.no_local,
                retain_as_published: e.retain_as_published,
                ..Default::default()
            };
            subscriptions.push((f.clone(), options, e.sub_id));
        }
        let delivery = |d: &Delivery| StoredDelivery {
            message: stored(&d.msg, now),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.sub_ids.clone(),
        };
        let mut deliveries = Vec::new();
        for (n, f) in s.inflight.iter().enumerate() {
            deliveries.push(SnapshotDelivery {
                key: n as u64 + 1,
                delivery: delivery(&f.delivery),
                packet_id: Some(f.id),
                received: f.state == OutState::Comp,
            });
        }
        let base = deliveries.len() as u64;
        for (n, d) in s.queue.iter().enumerate() {
            deliveries.push(SnapshotDelivery {
                key: base + n as u64 + 1,
                delivery: delivery(d),
                packet_id: None,
                received: false,
            });
        }
        Some(SnapshotSession {
            client_id: s.client_id.clone(),
            protocol: s.protocol,
            expiry: s.expiry,
            // A session taken from its connection just now expires from now, unless its
            // client resumes it at once.
            expires_in: match s.expires_at.get() {
                Some(at) => Some(at.saturating_duration_since(now)),
                None if s.expiry == u32::MAX => None,
                None => Some(crate::time::Duration::from_secs(s.expiry.into())),
            },
            subscriptions,
            deliveries,
            incoming_qos2: s.incoming_qos2.iter().filter_map(crate::codec::PacketId::new).collect(),
            will: None,
        })
    }

    /// Logs all of session `si`, just taken in from another node, for this node's store: it
    /// is this node's to keep from now on. Its deliveries get keys of this node's.
    pub(super) fn log_imported(&mut self, now: Instant, si: u32, connected: bool) {
        if !self.logging() {
            return;
        }
        let mut next = self.next_key;
        if let Some(s) = self.session_mut(si) {
            for i in 0..s.inflight.len() {
                if let Some(f) = s.inflight.get_mut(i) {
                    f.delivery.key = next;
                    next += 1;
                }
            }
            for i in 0..s.queue.len() {
                if let Some(d) = s.queue.get_mut(i) {
                    d.key = next;
                    next += 1;
                }
            }
        }
        self.next_key = next;
        for op in self.session_ops(now, si, connected) {
            self.log(op);
        }
    }

    /// The operations that make session `si` as it is now, with its deliveries' keys (a
    /// connected one, unless `connected`, is recorded offline): for a store that starts
    /// from them.
    pub(super) fn session_ops(&self, now: Instant, si: u32, connected: bool) -> Vec<PersistOp> {
        let (Some(snap), Some(s)) = (self.export_session(now, si), self.session(si)) else {
            return Vec::new();
        };
        let keys = s.inflight.iter().map(|f| f.delivery.key).chain(s.queue.iter().map(|d| d.key));
        let client_id = snap.client_id;
        let (protocol, expiry) = (snap.protocol, snap.expiry);
        let mut ops =
            alloc::vec![PersistOp::Session { client_id: client_id.clone(), protocol, expiry }];
        for (filter, options, subscription_id) in snap.subscriptions {
            let client_id = client_id.clone();
            ops.push(PersistOp::Subscribed { client_id, filter, options, subscription_id });
        }
        for (d, key) in snap.deliveries.into_iter().zip(keys) {
            let delivery = d.delivery;
            ops.push(PersistOp::Queued { client_id: client_id.clone(), key, delivery });
            if let Some(packet_id) = d.packet_id {
                ops.push(PersistOp::Sent { client_id: client_id.clone(), key, packet_id });
            }
            if d.received {
                ops.push(PersistOp::Received { client_id: client_id.clone(), key });
            }
        }
        for packet_id in snap.incoming_qos2 {
            ops.push(PersistOp::IncomingQos2 { client_id: client_id.clone(), packet_id });
        }
        if !connected {
            ops.push(PersistOp::Disconnected { client_id });
        }
        ops
    }

    pub(super) fn logging(&self) -> bool {
        self.config.persistence != Persistence::Off
    }

    pub(super) fn durable(&self) -> bool {
        self.config.persistence == Persistence::Durable
    }

    pub(super) fn log(&mut self, op: PersistOp) {
        if self.logging() {
            self.persist_seq += 1;
            self.mirror(&op);
            self.persist_log.push_back((PersistSeq(self.persist_seq), op));
        }
    }

    /// Logs `op(client_id)` if session `si` is logged.
    pub(super) fn log_session(&mut self, si: u32, op: impl FnOnce(MqttStr) -> PersistOp) {
        if let Some(s) = self.session(si)
            && s.persistent
            && self.logging()
        {
            let id = s.client_id.clone();
            self.log(op(id));
        }
    }

    /// Logs a delivery queued for `si`, giving it a key.
    pub(super) fn log_queued(&mut self, now: Instant, si: u32, d: &mut Delivery) {
        if !self.logging() || !self.session(si).is_some_and(|s| s.persistent) {
            return;
        }
        d.key = self.next_key;
        self.next_key += 1;
        let delivery = StoredDelivery {
            message: stored(&d.msg, now),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.sub_ids.clone(),
        };
        let key = d.key;
        self.log_session(si, |client_id| PersistOp::Queued { client_id, key, delivery });
    }

    /// Logs that a delivery of `si` is done.
    pub(super) fn log_released(&mut self, si: u32, key: u64) {
        if key != 0 {
            self.log_session(si, |client_id| PersistOp::Released { client_id, key });
        }
    }

    /// Sends a withheld PUBACK/PUBREC now, or, in durable mode, once its operations are stored.
    pub(super) fn release_ack(&mut self, p: ParkedAck) {
        if p.seq > self.persisted {
            self.awaiting_store.push_back(p);
        } else if self.cluster_behind(p.cluster) {
            self.await_cluster(p);
        } else {
            self.send_ack(&p);
        }
    }

    fn send_ack(&mut self, p: &ParkedAck) {
        let Some(c) = self.conn_mut(p.conn) else {
            return;
        };
        if c.phase != super::Phase::Connected {
            return;
        }
        let ack = PubAck { reason_code: p.code, ..PubAck::new(p.id) };
        let packet =
            if p.qos == QoS::ExactlyOnce { Packet::PubRec(ack) } else { Packet::PubAck(ack) };
        self.answer(p.conn, Some(p.token), p.id, p.qos, packet);
    }
}

/// `msg` as stored at `now`.
pub(super) fn stored(msg: &Message, now: Instant) -> StoredMessage {
    StoredMessage {
        topic: msg.topic.clone(),
        payload: msg.payload.clone(),
        qos: msg.qos,
        retain: msg.retain,
        properties: msg.properties.clone(),
        expires_in: msg.expires_at.map(|at| at.saturating_duration_since(now)),
    }
}

pub(super) fn message(m: StoredMessage, now: Instant) -> Message {
    Message {
        topic: m.topic.detach(),
        payload: Bytes::copy_from_slice(&m.payload),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties,
        expires_at: m.expires_in.map(|d| now + d),
        origin: 0,
    }
}
