//! Connection plumbing: looking connections and sessions up, queueing output, the packet
//! dispatch, and closing a connection on a protocol violation.

use super::*;

impl Broker {
    pub(super) fn conn(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_deref()
    }

    pub(super) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_deref_mut()
    }

    pub(super) fn slot_conn(&mut self, index: u32) -> Option<&mut Conn> {
        self.slots.get_mut(index as usize)?.conn.as_deref_mut()
    }

    pub(super) fn conn_id(&self, index: u32) -> ConnId {
        ConnId { index, generation: self.slots[index as usize].generation }
    }

    /// The time of the last input on a connection: output-side pumping has no `now` of its own.
    pub(super) fn last_now(&self, index: u32) -> Instant {
        self.slots
            .get(index as usize)
            .and_then(|s| s.conn.as_ref())
            .map_or(Instant::ZERO, |c| c.last_recv)
    }

    /// The client identifier, user name and address of the client connected at `index`, from
    /// its session (empty before CONNECT completes).
    pub(super) fn identity(&self, index: u32) -> (MqttStr, Option<MqttStr>, PeerInfo) {
        let si =
            self.slots.get(index as usize).and_then(|s| s.conn.as_ref()).and_then(|c| c.session);
        match si.and_then(|si| self.session(si)) {
            Some(s) => (s.client_id.clone(), s.username.clone(), s.peer.clone()),
            None => (MqttStr::default(), None, PeerInfo::default()),
        }
    }

    /// Who session `si` is, for the events: client id, peer address, listener.
    pub(super) fn who(&self, si: u32) -> Option<(MqttStr, Option<core::net::SocketAddr>, u16)> {
        self.session(si).map(|s| (s.client_id.clone(), s.peer.addr, s.peer.listener))
    }

    /// Reports that the client `who` on `conn` is gone, and why.
    pub(super) fn report_gone(
        &mut self,
        conn: ConnId,
        who: Option<(MqttStr, Option<core::net::SocketAddr>, u16)>,
        reason: CloseReason,
    ) {
        if let Some((client_id, peer, listener)) = who {
            self.events.push_back(Event::Disconnected { conn, client_id, reason, peer, listener });
        }
    }

    pub(super) fn session(&self, index: u32) -> Option<&Session> {
        self.sessions.get(index as usize)?.as_deref()
    }

    pub(super) fn session_mut(&mut self, index: u32) -> Option<&mut Session> {
        self.sessions.get_mut(index as usize)?.as_deref_mut()
    }

    pub(super) fn mark_ready(&mut self, index: u32) {
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
    pub(super) fn send(&mut self, index: u32, packet: &Packet) {
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

    /// Decodes and handles packets from `buf` until it holds no whole packet, the connection
    /// closes, or an authentication is deferred (the rest is then held).
    pub(super) fn process(&mut self, now: Instant, index: u32, buf: &mut BytesMut) {
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

    pub(super) fn decode_error(&mut self, now: Instant, index: u32, e: &DecodeError) {
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
    pub(super) fn violation(&mut self, now: Instant, index: u32, code: ReasonCode) {
        self.close(now, index, CloseReason::Server(code), Some(code), true);
    }

    /// Ends a connection from the broker's side of things: optionally sends DISCONNECT, detaches
    /// the session (will and expiry), and asks the adapter to close the transport.
    pub(super) fn close(
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
        let version = c.version();
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
        let session = c.session.take();
        let who = session.and_then(|si| self.who(si));
        if let Some(t) = ticket {
            self.pending_auth.remove(&t);
            self.pending_authz.remove(&t);
        }
        if was == Phase::Connected {
            self.client_gone(version);
            if let Some(session) = session {
                self.detach(now, session, publish_will, false);
            }
            self.report_gone(id, who, reason);
        } else {
            let code = match reason {
                CloseReason::Server(code) | CloseReason::ClientDisconnect(code) => code,
                CloseReason::TransportClosed => ReasonCode::UnspecifiedError,
            };
            self.events.push_back(Event::Refused { conn: id, reason: code });
        }
        if !matches!(reason, CloseReason::TransportClosed) {
            self.commands.push_back(Command::Close(id));
        }
        self.mark_ready(index);
    }

    /// A connected client's connection ended (closed or taken over).
    pub(super) fn client_gone(&mut self, version: ProtocolVersion) {
        let counts = &mut self.stats.versions[version_index(version)];
        counts.connected -= 1;
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // Deterministic from the configured seed.
        crate::rng::xorshift64_star(&mut self.rng)
    }

    pub(super) fn handle_packet(&mut self, now: Instant, index: u32, packet: Packet) {
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
                Packet::PubAck(a) => self.on_final_ack(now, index, a, OutState::Ack),
                Packet::PubRec(a) => self.on_pubrec(now, index, a),
                Packet::PubRel(a) => self.on_pubrel(index, a),
                Packet::PubComp(a) => self.on_final_ack(now, index, a, OutState::Comp),
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
}
