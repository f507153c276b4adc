//! CONNECT and authentication, session take-over and resumption, and the end of a connection
//! or a session: wills, expiry 0, DISCONNECT.

use super::*;

impl Broker {
    /// The session's connection is gone. A session with expiry 0 ends with it, even on a
    /// takeover ([MQTT-3.1.2-6]; 5.0 section 3.1.2.11.2): the new connection then starts a new
    /// session. On a `takeover` a session that outlives its connection is not logged as
    /// disconnected and gets no expiry timer, since the new connection resumes it at once.
    pub(super) fn detach(&mut self, now: Instant, index: u32, publish_will: bool, takeover: bool) {
        // An offline session's queue drops at its limit: nobody waits for it.
        self.release_parked(index);
        self.release_throttle(index);
        let Some(s) = self.session_mut(index) else {
            return;
        };
        s.conn = None;
        s.slow = false;
        let had_will = s.will.is_some();
        if publish_will {
            if let Some(will) = s.will.take() {
                let delay = if s.protocol.is_v5() { will.delay.min(s.expiry) } else { 0 };
                if delay == 0 {
                    self.publish_will(now, index, will);
                } else if let Some(s) = self.session_mut(index) {
                    s.will = Some(will);
                    s.will_at = Some(now + Duration::from_secs(delay.into())).into();
                }
            }
        } else if s.will.take().is_some() {
            self.will_changed(now, index);
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if had_will && s.will.is_none() {
            self.log_session(index, |client_id| PersistOp::WillCleared { client_id });
        }
        let Some(s) = self.session_mut(index) else {
            return;
        };
        #[cfg(feature = "planted-bugs")]
        let ends = s.expiry == 0
            && !(takeover && self.config.planted_bug == PlantedBug::TakeoverRevivesSession);
        #[cfg(not(feature = "planted-bugs"))]
        let ends = s.expiry == 0;
        if ends {
            self.end_session(now, index);
            return;
        }
        if takeover {
            return;
        }
        self.log_session(index, |client_id| PersistOp::Disconnected { client_id });
        let Some(s) = self.session_mut(index) else {
            return;
        };
        if s.expiry != u32::MAX {
            s.expires_at = Some(now + Duration::from_secs(s.expiry.into())).into();
        }
        self.arm_session_timer(index);
    }

    /// Discards a session: its will (published now if still pending, [MQTT-3.1.2-8]), its
    /// subscriptions and its messages.
    pub(super) fn end_session(&mut self, now: Instant, index: u32) {
        self.release_parked(index);
        self.release_throttle(index);
        self.clear_session_timer(index);
        self.log_session(index, |client_id| PersistOp::SessionDeleted { client_id });
        let Some(s) = self.session_mut(index) else {
            return;
        };
        s.persistent = false;
        s.will_at = MaybeAt::NONE;
        if let Some(will) = s.will.take() {
            self.publish_will(now, index, will);
        }
        let Some(s) = self.sessions.get_mut(index as usize).and_then(Option::take) else {
            return;
        };
        for f in &s.subscriptions {
            self.tree.remove(f, index);
        }
        self.by_client_id.remove(s.client_id.as_bytes(), index);
        self.free_sessions.push(index);
        self.session_count -= 1;
        // Messages of shared subscriptions it had not acknowledged go to another member of the
        // same group (section 4.8.2: SHOULD for QoS 1). A QoS 2 message whose delivery had
        // started must not go to anyone else ([MQTT-4.8.2-5]); queued ones had not started.
        let unfinished = s
            .inflight
            .into_iter()
            .filter(|f| f.delivery.qos != QoS::ExactlyOnce)
            .map(|f| f.delivery)
            .chain(s.queue);
        for d in unfinished {
            let Some(filter) = d.shared else {
                continue;
            };
            if d.msg.expired(now) {
                continue;
            }
            match self.tree.group_of(&filter) {
                Some(g) if self.deliver_shared(now, g, &d.msg, &mut Routing::default()) => {
                    self.stats.shared_redelivered += 1;
                }
                _ => self.stats.dropped_no_member += 1,
            }
        }
    }

    pub(super) fn publish_will(&mut self, now: Instant, index: u32, will: PendingWill) {
        // Out: no other node publishes it now.
        self.will_changed(now, index);
        if let Some(s) = self.session(index)
            && !self.allowed(&s.client_id, s.username.as_ref(), &s.peer, will.msg.topic.as_str())
        {
            self.stats.publish_denied += 1;
            return;
        }
        self.stats.count_received(will.msg.qos, will.msg.payload.len());
        self.spread(now, &will.msg, &mut Routing::default());
    }

    /// Refuses a connection before CONNACK 0x00: CONNACK with `code`, then close
    /// ([MQTT-3.2.2-7]; 3.1.1: [MQTT-3.2.2-5]).
    pub(super) fn refuse(&mut self, now: Instant, index: u32, code: ReasonCode) {
        let code = if code.is_error() { code } else { ReasonCode::UnspecifiedError };
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let mut ack = ConnAck::refusal(code);
        if c.v5() && !code.is_valid_for(crate::codec::PacketType::ConnAck) {
            ack.reason_code = ReasonCode::UnspecifiedError;
        }
        self.send(index, &ack.into());
        self.close(now, index, CloseReason::Server(code), None, false);
    }

    pub(super) fn on_connect(&mut self, now: Instant, index: u32, connect: Box<Connect>) {
        let max_qos = self.config.max_qos;
        let retain_available = self.config.retain_available;
        let allow_empty = self.config.allow_zero_length_client_id;
        let max_id_len = self.config.max_client_id_len;
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let version = connect.protocol;
        let v5 = version.is_v5();
        c.encoder = Encoder::new(version);
        if v5 {
            let p = &connect.properties;
            if let Some(max) = p.maximum_packet_size {
                c.encoder.set_max_packet_size(max.get());
            }
            c.receive_max = p.receive_maximum.map_or(u16::MAX, NonZeroU16::get);
            c.alias_max = p.topic_alias_maximum.unwrap_or(0);
            c.problem_info = p.request_problem_information.unwrap_or(true);
        }
        if let Some(w) = &connect.will {
            // [MQTT-3.2.2-12], [MQTT-3.2.2-13]: MQTT 5 clients are told; a 3.1.1 client's will
            // is published at the QoS the broker supports, and without retain if unsupported.
            if v5 && w.qos > max_qos {
                return self.refuse(now, index, ReasonCode::QoSNotSupported);
            }
            if v5 && w.retain && !retain_available {
                return self.refuse(now, index, ReasonCode::RetainNotSupported);
            }
        }
        let mut client_id = connect.client_id.clone();
        let mut assigned = false;
        if client_id.is_empty() {
            // 3.1.1 allows an empty id only with CleanSession 1 ([MQTT-3.1.3-8]); 3.1 never.
            let ok =
                allow_empty && (v5 || (version == ProtocolVersion::V3_1_1 && connect.clean_start));
            if !ok {
                return self.refuse(now, index, ReasonCode::ClientIdentifierNotValid);
            }
            client_id = self.assign_client_id();
            assigned = true;
        } else if client_id.len() > max_id_len
            || (version == ProtocolVersion::V3_1 && client_id.len() > 23)
        {
            return self.refuse(now, index, ReasonCode::ClientIdentifierNotValid);
        }
        let trusted =
            self.slot_conn(index).and_then(|c| c.peer.as_ref()).is_some_and(|p| p.trusted);
        if !trusted && client_id.as_str().starts_with(crate::bridge::LOCAL_PREFIX) {
            // A bridge's local session: no client may take it over.
            return self.refuse(now, index, ReasonCode::ClientIdentifierNotValid);
        }
        let method = if v5 { connect.properties.authentication_method.clone() } else { None };
        if let Some(m) = &method
            && !self.config.authenticator.as_ref().is_some_and(|a| a.supports_method(m.as_str()))
        {
            return self.refuse(now, index, ReasonCode::BadAuthenticationMethod);
        }
        let request = AuthRequest {
            stage: AuthStage::Connect,
            client_id: client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.clone(),
            method: method.clone(),
            data: if v5 { connect.properties.authentication_data.clone() } else { None },
            peer: PeerInfo::default(),
            protocol: version,
        };
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let peer = c.peer.as_deref().cloned().unwrap_or_default();
        let request = match &peer.identity {
            // The transport's identity is the user name; no password goes with it.
            Some(identity) => {
                AuthRequest { username: Some(identity.clone()), password: None, peer, ..request }
            }
            None => AuthRequest { peer, ..request },
        };
        match method {
            Some(m) => c.extra().auth_method = Some(m.detach()),
            None => {
                if let Some(x) = c.extra.as_mut() {
                    x.auth_method = None;
                }
            }
        }
        c.pending = Some(Box::new(PendingConnect { connect, client_id, assigned, claimed: false }));
        c.phase = Phase::Authenticating;
        self.ask_authenticator(now, index, request);
    }

    pub(super) fn ask_authenticator(&mut self, now: Instant, index: u32, request: AuthRequest) {
        let decision = match &self.config.authenticator {
            // A client the transport authenticated (a TLS client certificate) is not asked
            // for more.
            _ if request.peer.identity.is_some() || request.peer.trusted => AuthDecision::Allow,
            None => AuthDecision::Allow,
            Some(a) => a.authenticate(&request),
        };
        if decision == AuthDecision::Defer {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let conn = self.conn_id(index);
            if let Some(c) = self.slot_conn(index) {
                c.extra().ticket = Some(ticket);
            }
            self.pending_auth.insert(ticket, conn);
            self.commands.push_back(Command::Authenticate {
                ticket: AuthTicket(ticket),
                conn,
                request,
            });
            return;
        }
        self.apply_auth(now, index, decision);
    }

    pub(super) fn apply_auth(&mut self, now: Instant, index: u32, decision: AuthDecision) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let connecting = c.phase == Phase::Authenticating;
        let method = c.auth_method().cloned();
        match decision {
            AuthDecision::Allow | AuthDecision::AllowWithData(_) if connecting => {
                let data = match decision {
                    AuthDecision::AllowWithData(d) => Some(d),
                    _ => None,
                };
                self.complete_connect(now, index, data);
            }
            AuthDecision::Allow | AuthDecision::AllowWithData(_) => {
                let data = match decision {
                    AuthDecision::AllowWithData(d) => Some(d),
                    _ => None,
                };
                let auth = auth_packet(ReasonCode::Success, method, data);
                self.send(index, &auth.into());
            }
            AuthDecision::Continue(data) => {
                if method.is_none() {
                    // Nothing to continue with: the authenticator asked for an exchange the
                    // client did not start.
                    return self.auth_failed(now, index, connecting, ReasonCode::NotAuthorized);
                }
                let auth = auth_packet(ReasonCode::ContinueAuthentication, method, data);
                self.send(index, &auth.into());
            }
            AuthDecision::Deny(code) => self.auth_failed(now, index, connecting, code),
            AuthDecision::Defer => {
                self.auth_failed(now, index, connecting, ReasonCode::UnspecifiedError);
            }
        }
    }

    pub(super) fn auth_failed(
        &mut self,
        now: Instant,
        index: u32,
        connecting: bool,
        code: ReasonCode,
    ) {
        let code = if code.is_error() { code } else { ReasonCode::NotAuthorized };
        self.stats.auth_failures += 1;
        if connecting {
            self.refuse(now, index, code);
        } else {
            self.violation(now, index, code);
        }
    }

    pub(super) fn on_auth(&mut self, now: Instant, index: u32, auth: Auth) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let connecting = c.phase == Phase::Authenticating;
        let stage = match (connecting, auth.reason_code) {
            (true, ReasonCode::ContinueAuthentication) => AuthStage::Continue,
            (false, ReasonCode::ReAuthenticate | ReasonCode::ContinueAuthentication) => {
                AuthStage::Reauthenticate
            }
            _ => return self.auth_failed(now, index, connecting, ReasonCode::ProtocolError),
        };
        // The method may not change, and re-authentication needs one from CONNECT
        // ([MQTT-4.12.0-5], [MQTT-4.12.1-1]).
        if c.auth_method().is_none()
            || auth.properties.authentication_method.as_ref() != c.auth_method()
        {
            return self.auth_failed(now, index, connecting, ReasonCode::ProtocolError);
        }
        let (method, data, protocol) =
            (c.auth_method().cloned(), auth.properties.authentication_data, c.version());
        let (client_id, username, password, peer) = match &c.pending {
            Some(p) => (
                p.client_id.clone(),
                p.connect.username.clone(),
                p.connect.password.clone(),
                c.peer.as_deref().cloned().unwrap_or_default(),
            ),
            None => {
                let (client_id, username, peer) = self.identity(index);
                (client_id, username, None, peer)
            }
        };
        let request =
            AuthRequest { stage, client_id, username, password, method, data, peer, protocol };
        self.ask_authenticator(now, index, request);
    }

    pub(super) fn assign_client_id(&mut self) -> MqttStr {
        loop {
            let r = self.next_random();
            let id = format!("ternmq-{r:016x}");
            if self.session_for(id.as_bytes()).is_none() {
                // Hex digits and '-' only: a valid MQTT string.
                return MqttStr::new(&id).unwrap_or_default();
            }
        }
    }

    /// Authentication passed: take over or create the session, send CONNACK 0x00, resume.
    pub(super) fn complete_connect(&mut self, now: Instant, index: u32, auth_data: Option<Bytes>) {
        // In a cluster, a session may be on another node: it is asked for first.
        let Some(auth_data) = self.claim_first(index, auth_data) else {
            return;
        };
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let Some(pending) = c.pending.take() else {
            return;
        };
        let PendingConnect { connect, client_id, assigned, .. } = *pending;
        // Kept for the connection's and session's life: copies, so that they do not pin the
        // read buffer the CONNECT arrived in.
        let client_id = client_id.detach();
        let version = connect.protocol;
        let v5 = version.is_v5();
        let peer = c.peer.take().map(|p| *p).unwrap_or_default();
        let username = peer.identity.as_ref().or(connect.username.as_ref()).map(MqttStr::detach);

        // A session deadline that passed before this CONNECT was handled (a late
        // `handle_timeout`, a clock that jumped) has passed: its will goes out and an expired
        // session is gone before the client can resume it.
        if let Some(si) = self.session_for(client_id.as_bytes())
            && let Some(s) = self.session(si)
            && let Some(at) = s.timer_at.get()
            && at <= now
        {
            let serial = s.serial;
            self.session_timer(now, si, serial, at);
        }

        // Takeover ([MQTT-3.1.4-3]; 3.1.1: [MQTT-3.1.4-2]).
        if let Some(si) = self.session_for(client_id.as_bytes())
            && let Some(old) = self.session(si).and_then(|s| s.conn)
            && old != id
        {
            self.close_for_takeover(now, old.index, si, ReasonCode::SessionTakenOver);
        }

        // Clean Start ([MQTT-3.1.2-4..6]; 3.1.1: [MQTT-3.1.2-6], [MQTT-3.1.2-4]).
        let existing = self.session_for(client_id.as_bytes());
        let (si, session_present) = match existing {
            Some(si) if !connect.clean_start => (si, true),
            other => {
                if let Some(si) = other {
                    self.end_session(now, si);
                }
                (self.new_session(client_id.clone(), version), false)
            }
        };

        let requested = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let granted = requested.min(self.config.session_expiry_interval);
        let max_qos = self.config.max_qos;
        let retain_available = self.config.retain_available;
        let will = connect.will.map(|w| {
            let mut properties = PublishProperties {
                payload_format_indicator: w.properties.payload_format_indicator,
                message_expiry_interval: w.properties.message_expiry_interval,
                content_type: w.properties.content_type,
                response_topic: w.properties.response_topic,
                correlation_data: w.properties.correlation_data,
                user_properties: w.properties.user_properties,
                ..PublishProperties::default()
            };
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|s| Instant::MAX.min(now + Duration::from_secs(s.into())));
            properties.message_expiry_interval = None;
            PendingWill {
                msg: Arc::new(Message {
                    topic: w.topic.detach(),
                    payload: Bytes::copy_from_slice(&w.payload),
                    qos: w.qos.min(max_qos),
                    retain: w.retain && retain_available,
                    properties,
                    expires_at,
                    origin: 0,
                }),
                delay: w.properties.will_delay_interval.unwrap_or(0),
            }
        });
        self.clear_session_timer(si);
        self.announce(si, &client_id);
        let Some(s) = self.session_mut(si) else {
            return;
        };
        s.conn = Some(id);
        s.protocol = version;
        s.bridge = connect.bridge && !version.is_v5();
        s.expiry = granted;
        s.expires_at = MaybeAt::NONE;
        // A pending will of the resumed session is not sent ([MQTT-3.1.3-9]).
        s.will_at = MaybeAt::NONE;
        let had_will = s.will.is_some();
        s.will = will;
        if had_will || s.will.is_some() {
            self.will_changed(now, si);
        }
        let Some(s) = self.session_mut(si) else {
            return;
        };
        s.username = username.clone();
        s.peer = peer;
        let serial = s.serial;
        if let Some(m) = s.will.as_mut().and_then(|w| Arc::get_mut(&mut w.msg)) {
            m.origin = serial;
        }
        // Durable state: a session that outlives its connection is logged, with its will.
        let was_logged = s.persistent;
        s.persistent = granted > 0;
        let will = s.will.as_ref().map(|w| (durable::stored(&w.msg, now), w.delay));
        if granted > 0 {
            let expiry = granted;
            self.log_session(si, |client_id| PersistOp::Session {
                client_id,
                protocol: version,
                expiry,
            });
            match will {
                Some((message, delay)) => {
                    self.log_session(si, |client_id| PersistOp::Will { client_id, message, delay });
                }
                None if was_logged => {
                    self.log_session(si, |client_id| PersistOp::WillCleared { client_id });
                }
                None => {}
            }
        } else if was_logged && self.logging() {
            // Resumed with expiry 0: it ends with this connection; its record goes now.
            if let Some(s) = self.session(si) {
                let client_id = s.client_id.clone();
                self.log(PersistOp::SessionDeleted { client_id });
            }
        }

        let mut props = ConnAckProperties::default();
        let mut keep_alive = connect.keep_alive;
        if v5 {
            let cfg = &self.config;
            if granted != requested {
                props.session_expiry_interval = Some(granted);
            }
            if cfg.receive_maximum != u16::MAX {
                props.receive_maximum = NonZeroU16::new(cfg.receive_maximum);
            }
            if cfg.max_qos < QoS::ExactlyOnce {
                props.maximum_qos = Some(cfg.max_qos);
            }
            if !cfg.retain_available {
                props.retain_available = Some(false);
            }
            if cfg.max_packet_size < MAX_PACKET_SIZE {
                props.maximum_packet_size = core::num::NonZeroU32::new(cfg.max_packet_size);
            }
            if assigned {
                props.assigned_client_identifier = Some(client_id.clone());
            }
            if cfg.topic_alias_maximum > 0 {
                props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            }
            if !cfg.wildcard_subscription_available {
                props.wildcard_subscription_available = Some(false);
            }
            if !cfg.subscription_identifiers_available {
                props.subscription_identifiers_available = Some(false);
            }
            if !cfg.shared_subscription_available {
                props.shared_subscription_available = Some(false);
            }
            if cfg.max_keepalive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keepalive) {
                keep_alive = cfg.max_keepalive;
                props.server_keep_alive = Some(keep_alive);
            }
            if connect.properties.request_response_information == Some(true)
                && let Some(info) = &cfg.response_information
            {
                props.response_information = MqttStr::new(info).ok();
            }
        }
        let outgoing_aliases = self.config.outgoing_topic_aliases;
        self.clear_conn_timer(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if v5 {
            props.authentication_method = c.auth_method().cloned();
            props.authentication_data = auth_data;
        }
        c.session = Some(si);
        c.keep_alive = keep_alive;
        c.phase = Phase::Connected;
        if v5 && outgoing_aliases && c.alias_max > 0 {
            c.out_aliases = Some(Box::default());
        }
        let ack = ConnAck { session_present, reason_code: ReasonCode::Success, properties: props };
        self.send(index, &ack.into());
        self.stats.clients_connected_total += 1;
        let counts = &mut self.stats.versions[version_index(version)];
        counts.connects += 1;
        counts.connected += 1;
        self.arm_conn_timer(index);
        let (peer, listener) =
            self.session(si).map_or((None, 0), |s| (s.peer.addr, s.peer.listener));
        self.events.push_back(Event::Connected {
            conn: id,
            client_id,
            protocol: version,
            session_present,
            peer,
            listener,
        });
        if session_present {
            self.resend_inflight(now, index, si);
        }
        self.pump(now, si);
    }

    /// Closes the connection that held session `si`, keeping the session for the new one.
    pub(super) fn close_for_takeover(
        &mut self,
        now: Instant,
        index: u32,
        si: u32,
        code: ReasonCode,
    ) {
        let id = self.conn_id(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        if c.phase != Phase::Connected {
            return;
        }
        if c.v5() {
            self.send(index, &Disconnect::new(code).into());
        }
        self.clear_conn_timer(index);
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        c.phase = Phase::Closing;
        c.session = None;
        let version = c.version();
        let who = self.who(si);
        self.client_gone(version);
        self.detach(now, si, true, true);
        self.report_gone(id, who, CloseReason::Server(code));
        self.commands.push_back(Command::Close(id));
        self.mark_ready(index);
    }

    pub(super) fn new_session(&mut self, client_id: MqttStr, version: ProtocolVersion) -> u32 {
        let serial = self.next_serial;
        self.next_serial += 1;
        let s = Box::new(Session::new(serial, client_id.clone(), version));
        let index = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize] = Some(s);
                i
            }
            None => {
                self.sessions.push(Some(s));
                (self.sessions.len() - 1) as u32
            }
        };
        self.by_client_id.insert(client_id.as_bytes(), index, &self.sessions);
        self.session_count += 1;
        index
    }

    /// On resume: every unacknowledged PUBLISH again with DUP set, and PUBREL for those
    /// already received ([MQTT-4.4.0-1]), in their original order.
    pub(super) fn resend_inflight(&mut self, now: Instant, index: u32, si: u32) {
        let Some(s) = self.session_mut(si) else {
            return;
        };
        let inflight: Vec<(PacketId, OutState, u64, Delivery)> =
            s.inflight.iter().map(|f| (f.id, f.state, f.rel_after, f.delivery.clone())).collect();
        let mut dropped = Vec::new();
        for (id, state, rel_after, d) in inflight {
            match state {
                OutState::Comp => self.send_pubrel(index, id, rel_after),
                _ => {
                    if state == OutState::Rec {
                        let before = self.slot_conn(index).map_or(0, |c| c.unwritten());
                        self.gate_output(index, before);
                    }
                    if !self.write_publish(now, index, &d, Some(id), true) {
                        dropped.push(id);
                        self.log_released(si, d.key);
                    }
                }
            }
        }
        if let Some(s) = self.session_mut(si) {
            s.inflight.retain(|f| !dropped.contains(&f.id));
        }
    }

    pub(super) fn on_disconnect(&mut self, now: Instant, index: u32, d: Disconnect) {
        let max_expiry = self.config.session_expiry_interval;
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let si = c.session;
        if let Some(expiry) = d.properties.session_expiry_interval
            && let Some(si) = si
            && let Some(s) = self.session_mut(si)
        {
            if s.expiry == 0 && expiry != 0 {
                // [MQTT-3.14.2-?]: a session that was to end may not be prolonged here.
                return self.violation(now, index, ReasonCode::ProtocolError);
            }
            s.expiry = expiry.min(max_expiry);
            if s.expiry > 0 {
                let (protocol, expiry) = (s.protocol, s.expiry);
                self.log_session(si, |client_id| PersistOp::Session {
                    client_id,
                    protocol,
                    expiry,
                });
            }
        }
        let with_will = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        let reason = CloseReason::ClientDisconnect(d.reason_code);
        self.close(now, index, reason, None, with_will);
    }
}
