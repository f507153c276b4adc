//! Routing a message to the sessions that match it (shared groups included) and flow control on
//! the way out: the inflight window, session queues, paused publishers, the store's gate.

use super::*;

/// What routing one message needs to know, and learns, beyond the message: passed along the
/// route, never kept in the broker.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// A client's PUBLISH: that client, which a live subscriber that is behind may pause.
    pub(super) publisher: Option<ConnId>,
    /// A QoS 1/2 PUBLISH whose acknowledgement may be withheld: a live subscriber may take it
    /// over its queue limit.
    pub(super) park_ok: bool,
    /// The first connected session that took it over its queue limit.
    pub(super) congested: Option<u32>,
    /// Sessions it was delivered (or queued) to.
    pub(super) delivered: usize,
    /// Shared groups are left alone: the cluster's backplane serves them.
    pub(super) skip_groups: bool,
    /// Where it was forwarded to the cluster (0: it was not).
    pub(super) cluster: u64,
    /// Only this session's plain subscriptions (and no shared group) take it.
    pub(super) only: Option<u32>,
    /// These sessions do not take it.
    pub(super) except: Vec<u32>,
}

impl Broker {
    /// Delivers `msg` to every matching subscription. Returns whether there was any.
    pub(super) fn route(&mut self, now: Instant, msg: &Arc<Message>, how: &mut Routing) -> bool {
        let mut entries = core::mem::take(&mut self.scratch);
        let mut groups = core::mem::take(&mut self.scratch_groups);
        entries.clear();
        groups.clear();
        let sources = self.tree.matches(msg.topic.as_bytes(), &mut entries, &mut groups);
        if let Some(only) = how.only {
            entries.retain(|e| e.session == only);
            groups.clear();
        }
        if !how.except.is_empty() {
            entries.retain(|e| !how.except.contains(&e.session));
        }
        let any = !entries.is_empty() || !groups.is_empty() || how.cluster > 0;
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
                how.delivered += 1;
                self.deliver(now, session, d, how);
            }
        }
        if !how.skip_groups {
            for &g in &groups {
                self.deliver_shared(now, g, msg, how);
            }
        }
        self.scratch = entries;
        self.scratch_groups = groups;
        any
    }

    /// Delivers `msg` to one member of shared group `g`.
    pub(super) fn deliver_shared(
        &mut self,
        now: Instant,
        g: GroupRef,
        msg: &Arc<Message>,
        how: &mut Routing,
    ) -> bool {
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
        how.delivered += 1;
        self.deliver(now, e.session, d, how);
        true
    }

    pub(super) fn pick_member(&mut self, g: GroupRef, topic: &TopicName) -> Option<Entry> {
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
    pub(super) fn deliver(&mut self, now: Instant, si: u32, d: Delivery, how: &mut Routing) {
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
                let publisher = how.publisher.filter(|&p| {
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
        let Some(s) = self.sessions.get_mut(si as usize).and_then(Option::as_deref_mut) else {
            return;
        };
        let cost = d.msg.cost();
        if s.queue_full(max_msgs, max_bytes, cost) {
            // A live subscriber that keeps up with acknowledgements takes it over the limit
            // and the publisher's ack waits (`max_ack_delay`); otherwise it is dropped.
            let live = s.conn.is_some() && !s.slow;
            if !(live && how.park_ok && d.qos != QoS::AtMostOnce) {
                self.stats.dropped_queue_full += 1;
                return;
            }
            how.congested.get_or_insert(si);
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
    pub(super) fn throttle(&mut self, now: Instant, si: u32, publisher: ConnId) {
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
                self.commands.push_back(Command::PauseInput(publisher));
            }
        }
        if first {
            self.arm_session_timer(si);
        }
    }

    /// Resumes the publishers session `si` paused.
    pub(super) fn release_throttle(&mut self, si: u32) {
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
                    self.commands.push_back(Command::ResumeInput(p));
                }
            }
        }
    }

    /// Sends the acknowledgements session `si` withheld.
    pub(super) fn release_parked(&mut self, si: u32) {
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
    pub(super) fn send_inflight(&mut self, now: Instant, index: u32, si: u32, mut d: Delivery) {
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
        // Where a gate for the store would go: only a durable broker's QoS 2 needs one.
        let before = if qos2 && self.durable() {
            self.slot_conn(index).map_or(0, |c| c.unwritten())
        } else {
            0
        };
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
    /// Everything after it waits too, so the connection's order is kept. In a cluster that
    /// mirrors its log, the same holds for the mirror: a node that takes the session from it
    /// must know the identifier, or it could give another message the same one, which the
    /// client would take for a copy.
    pub(super) fn gate_output(&mut self, index: u32, before: usize) {
        let store = self.durable() && self.persist_seq > self.persisted;
        let cluster = self.mirror_position();
        if !store && cluster == 0 {
            return;
        }
        let seq = if store { self.persist_seq } else { 0 };
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let o = c.owing();
        let new = !o.gated();
        if new {
            o.gate_bytes = before;
        }
        o.gate_seq = o.gate_seq.max(seq);
        o.gate_cluster = o.gate_cluster.max(cluster);
        if new {
            self.gated.push(id);
        }
    }

    /// Moves queued messages onto the connection while its window and output allow.
    pub(super) fn pump(&mut self, now: Instant, si: u32) {
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
    pub(super) fn write_publish(
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
                self.stats.sent_by_qos[d.qos as usize] += 1;
                self.stats.payload_bytes_sent_by_qos[d.qos as usize] += msg.payload.len() as u64;
                self.mark_ready(index);
                true
            }
            Err(_) => {
                self.stats.dropped_too_large += 1;
                false
            }
        }
    }
}
