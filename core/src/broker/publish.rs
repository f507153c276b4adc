//! PUBLISH from clients and the QoS 1/2 exchanges in both directions: acknowledgements in order,
//! withheld while a subscriber or the store is behind, and the answers to PUBACK, PUBREC,
//! PUBREL and PUBCOMP.

use super::*;

/// What a publisher's acknowledgement may have to wait for.
pub(super) struct Waits {
    /// The first connected session that took the message over its queue limit.
    pub(super) congested: Option<u32>,
    /// The persistence log's position before the publish.
    pub(super) logged_before: u64,
    /// Its position among the messages forwarded to the cluster (0: not forwarded).
    pub(super) cluster: u64,
}

impl Broker {
    pub(super) fn on_publish(&mut self, now: Instant, index: u32, mut p: Publish) {
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
        let Some(si) = c.session else {
            return;
        };
        let Some(s) = self.session(si) else {
            return;
        };
        let serial = s.serial;
        // The broker's own bridge is not held to the Receive Maximum: after a restart it cannot
        // know how many of its QoS 2 messages the restored session still holds unreleased, and
        // what it sends is bounded by its own window towards the remote broker.
        let trusted = s.peer.trusted;
        let (owed_qos1, owed) = self
            .slot_conn(index)
            .and_then(|c| c.owing.as_ref())
            .map_or((0, 0), |o| (o.qos1 as usize, o.answers.len()));
        let Some(s) = self.session(si) else {
            return;
        };
        // What the client counts against the broker's Receive Maximum: QoS 1 messages not yet
        // acknowledged and QoS 2 messages not yet released.
        let unacked = if trusted { 0 } else { owed_qos1 + s.incoming_qos2.len() };
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
                // In a cluster, not before the backplane has what was forwarded before it (the
                // first copy among it).
                let cluster = self.cluster_position();
                let conn = self.conn_id(index);
                if seq > 0 || cluster > 0 {
                    let token = self.withhold_answer(index, id, QoS::ExactlyOnce);
                    let code = ReasonCode::Success;
                    let qos = QoS::ExactlyOnce;
                    let ack = ParkedAck { conn, id, qos, since: now, seq, cluster, code, token };
                    self.release_ack(ack);
                } else {
                    self.answer(conn, None, id, QoS::ExactlyOnce, Packet::PubRec(PubAck::new(id)));
                }
                return;
            }
            // A 3.1.1 client is told no Receive Maximum, so it cannot break one: its unreleased
            // QoS 2 identifiers are bounded by the 65,535 packet identifiers alone.
            if v5 && !trusted && s.incoming_qos2.len() >= receive_maximum {
                return self.violation(now, index, ReasonCode::ReceiveMaximumExceeded);
            }
        }
        let invalid_utf8 = p.properties.payload_format_indicator == Some(PayloadFormat::Utf8)
            && core::str::from_utf8(&p.payload).is_err();
        let topic = p.topic.clone();
        let Some(allowed) =
            self.check(index, Action::Publish, topic.as_bytes(), || Packet::Publish(p.clone()))
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
            let mut how = Routing {
                publisher: Some(self.conn_id(index)),
                park_ok: id.is_some()
                    && !self.config.max_ack_delay.is_zero()
                    && unacked < receive_maximum,
                ..Routing::default()
            };
            let logged_before = self.persist_seq;
            let matched = self.publish_message(now, serial, p, &mut how);
            let waits = Waits { congested: how.congested, logged_before, cluster: how.cluster };
            return self.acknowledge(now, index, si, qos, id, v5, matched, waits);
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
    pub(super) fn acknowledge(
        &mut self,
        now: Instant,
        index: u32,
        si: u32,
        qos: QoS,
        id: Option<PacketId>,
        v5: bool,
        matched: bool,
        waits: Waits,
    ) {
        let Waits { congested, logged_before, cluster } = waits;
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
        // In a cluster mirroring its log, also for what the message caused here.
        let cluster = cluster.max(self.mirror_position());
        let cluster = if self.cluster_behind(cluster) { cluster } else { 0 };
        let conn = self.conn_id(index);
        let token = if congested.is_some() || seq > 0 || cluster > 0 {
            self.withhold_answer(index, id, qos)
        } else {
            0
        };
        let ack = ParkedAck { conn, id, qos, since: now, seq, cluster, code, token };
        if let Some(target) = congested {
            // Withheld until `target`'s queue has room (`max_ack_delay`).
            if let Some(s) = self.session_mut(target) {
                s.flow().parked.push_back(ack);
            }
            self.stats.acks_delayed += 1;
            self.arm_session_timer(target);
            return;
        }
        if seq > 0 || cluster > 0 {
            self.release_ack(ack);
            return;
        }
        let ack = PubAck { packet_id: id, reason_code: code, properties: AckProperties::default() };
        let packet =
            if qos == QoS::ExactlyOnce { Packet::PubRec(ack) } else { Packet::PubAck(ack) };
        self.answer(conn, None, id, qos, packet);
    }

    /// Holds a place for the PUBACK/PUBREC of `id` in the connection's answer order; returns
    /// the token that fills it ([`answer`](Self::answer)).
    pub(super) fn withhold_answer(&mut self, index: u32, id: PacketId, qos: QoS) -> u64 {
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
    pub(super) fn take_incoming_qos2(&mut self, si: u32, id: PacketId) {
        if let Some(s) = self.session_mut(si)
            && s.incoming_qos2.insert(id.get())
        {
            self.log_session(si, |client_id| PersistOp::IncomingQos2 { client_id, packet_id: id });
        }
    }

    /// Stores (if retained) and routes an application message. Returns whether any
    /// subscription matched.
    pub(super) fn publish_message(
        &mut self,
        now: Instant,
        origin: u64,
        p: Publish,
        how: &mut Routing,
    ) -> bool {
        self.stats.count_received(p.qos, p.payload.len());
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
        self.spread(now, &msg, how)
    }

    /// Stores (if retained), forwards to the cluster and routes a message published on this
    /// node. Returns whether any subscription matched (or it went to the cluster, where one
    /// may).
    pub(super) fn spread(&mut self, now: Instant, msg: &Arc<Message>, how: &mut Routing) -> bool {
        self.store_retained(now, msg);
        how.cluster = self.forward(now, msg);
        how.skip_groups = how.cluster > 0;
        self.route(now, msg, how)
    }

    /// RETAIN 1 replaces the topic's retained message; an empty payload clears it and is never
    /// stored ([MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7]).
    pub(super) fn store_retained(&mut self, now: Instant, msg: &Arc<Message>) {
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
                self.log(PersistOp::Retained { message: durable::stored(msg, now) });
            }
        }
    }

    /// A PUBACK (`expected` [`OutState::Ack`]) or a PUBCOMP ([`OutState::Comp`]) ends an
    /// outgoing delivery. The wrong acknowledgement for an identifier in flight (a PUBACK for
    /// a QoS 2 message, a PUBCOMP for a QoS 1 message or before PUBREC) is a protocol error,
    /// as a PUBREC for a QoS 1 message is; one for an identifier not in flight (answered
    /// already, or never sent) is ignored.
    pub(super) fn on_final_ack(
        &mut self,
        now: Instant,
        index: u32,
        ack: PubAck,
        expected: OutState,
    ) {
        let Some(si) = self.slot_conn(index).and_then(|c| c.session) else {
            return;
        };
        let Some(s) = self.session_mut(si) else {
            return;
        };
        match s.inflight_index(ack.packet_id) {
            Some(i) if s.inflight.get(i).is_some_and(|f| f.state == expected) => {
                if let Some(done) = s.inflight.remove(i) {
                    self.log_released(si, done.delivery.key);
                }
                self.pump(now, si);
            }
            Some(_) => self.violation(now, index, ReasonCode::ProtocolError),
            None => {}
        }
    }

    pub(super) fn on_pubrec(&mut self, now: Instant, index: u32, ack: PubAck) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let (Some(si), v5) = (c.session, c.v5()) else {
            return;
        };
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let id = ack.packet_id;
        match s.inflight_index(id) {
            Some(i) if s.inflight.get(i).is_some_and(|f| f.state == OutState::Ack) => {
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
                let Some(f) = s.inflight.get_mut(i) else {
                    return;
                };
                f.state = OutState::Comp;
                let key = f.delivery.key;
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
    pub(super) fn send_pubrel(&mut self, index: u32, id: PacketId, rel_after: u64) {
        self.send_after(index, Packet::PubRel(PubAck::new(id)), rel_after);
    }

    /// Sends `packet` once the store has log position `seq` (at once if it has) and, in a
    /// cluster mirroring its log, once the mirror has what was logged so far; and after the
    /// replies this connection already has waiting, so that PUBRELs keep the order of their
    /// PUBRECs ([MQTT-4.6.0-4]).
    pub(super) fn send_after(&mut self, index: u32, packet: Packet, seq: u64) {
        let conn = self.conn_id(index);
        let persisted = self.persisted;
        let mirrored = self.mirror_position();
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        // After the replies waiting already, in their order.
        let waiting = c.owing.as_deref().filter(|o| o.replies_waiting > 0).map(|o| o.reply_after);
        let seq = waiting.map_or(seq, |after| seq.max(after));
        if seq <= persisted && mirrored == 0 && waiting.is_none() {
            return self.send(index, &packet);
        }
        let o = c.owing();
        if o.replies_waiting as usize >= MAX_OWED {
            return self.violation(self.last_now(index), index, ReasonCode::ReceiveMaximumExceeded);
        }
        o.replies_waiting += 1;
        o.reply_after = seq;
        self.awaiting_reply.push_back((seq, mirrored, conn, packet));
    }

    pub(super) fn on_pubrel(&mut self, index: u32, ack: PubAck) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let (Some(si), v5) = (c.session, c.v5()) else {
            return;
        };
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
}
