//! SUBSCRIBE and UNSUBSCRIBE, and retained messages sent on a new subscription.

use super::*;

impl Broker {
    pub(super) fn on_subscribe(&mut self, now: Instant, index: u32, sub: Subscribe) {
        let Some(c) = self.slot_conn(index) else {
            return;
        };
        let v5 = c.v5();
        let Some(si) = c.session else {
            return;
        };
        let (client_id, username, peer) = self.identity(index);
        let sub_id = sub.properties.subscription_identifier;
        if sub_id.is_some() && !self.config.subscription_identifiers_available {
            return self.violation(now, index, ReasonCode::SubscriptionIdentifiersNotSupported);
        }
        // Every decision first, so that a deferred one leaves nothing half done.
        let mut allowed = Vec::with_capacity(sub.subscriptions.len());
        for s in &sub.subscriptions {
            let f = &s.filter;
            if (f.is_shared() && !self.config.shared_subscription_available)
                || (f.has_wildcards() && !self.config.wildcard_subscription_available)
            {
                allowed.push(false); // refused below for that reason, not asked
                continue;
            }
            match self.check(index, Action::Subscribe, f.as_str().as_bytes(), || {
                Packet::Subscribe(sub.clone())
            }) {
                Some(a) => allowed.push(a),
                None => return, // deferred: handled again with the answer
            }
        }
        let _ = (&client_id, &username, &peer);
        let mut codes = Vec::with_capacity(sub.subscriptions.len());
        let mut retained = Vec::new();
        for (s, &allowed) in sub.subscriptions.iter().zip(&allowed) {
            let f = &s.filter;
            let code = if f.is_shared() && !self.config.shared_subscription_available {
                ReasonCode::SharedSubscriptionsNotSupported
            } else if f.has_wildcards() && !self.config.wildcard_subscription_available {
                // [MQTT-3.8.3-2] in 3.1.1 (0x80 there).
                ReasonCode::WildcardSubscriptionsNotSupported
            } else if !allowed {
                ReasonCode::NotAuthorized
            } else {
                let qos = s.options.qos.min(self.config.max_qos);
                // A bridge's subscriptions (Mosquitto's 3.1.1 bridge flag) get what MQTT 5
                // asks for with No Local and Retain As Published.
                let bridge = self.session(si).is_some_and(|x| x.bridge);
                let entry = Entry {
                    session: si,
                    qos,
                    no_local: s.options.no_local || bridge,
                    retain_as_published: s.options.retain_as_published || bridge,
                    sub_id,
                };
                let existed = self.tree.insert(f, entry);
                if let Some(sess) = self.session_mut(si) {
                    sess.subscriptions.insert(f.detach());
                }
                let options = crate::codec::SubscriptionOptions {
                    qos,
                    no_local: s.options.no_local || bridge,
                    retain_as_published: s.options.retain_as_published || bridge,
                    ..s.options
                };
                let filter = f.detach();
                self.log_session(si, |client_id| PersistOp::Subscribed {
                    client_id,
                    filter,
                    options,
                    subscription_id: sub_id,
                });
                use crate::codec::RetainHandling::*;
                let send = match s.options.retain_handling {
                    SendOnSubscribe => true,
                    SendOnNewSubscribe => !existed,
                    DoNotSend => false,
                };
                // Shared subscriptions get no retained messages on subscribe.
                if send && !f.is_shared() {
                    retained.push((f.clone(), qos));
                }
                match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            codes.push(code);
        }
        let _ = v5;
        let ack = SubAck {
            packet_id: sub.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        // In a cluster, not before the other nodes send this one what it now subscribes to.
        match self.interest_position() {
            Some(seq) => {
                let conn = self.conn_id(index);
                self.send_when_interest_held(conn, seq, ack.into());
            }
            None => self.send(index, &ack.into()),
        }
        for (filter, qos) in retained {
            self.send_retained(now, si, &filter, qos, sub_id);
        }
    }

    /// The retained messages matching a new subscription, sent with RETAIN 1 (3.1.1:
    /// [MQTT-3.3.1-8]).
    pub(super) fn send_retained(
        &mut self,
        now: Instant,
        si: u32,
        filter: &TopicFilter,
        qos: QoS,
        sub_id: Option<crate::codec::SubscriptionId>,
    ) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        let mut expired = Vec::new();
        if filter.has_wildcards() {
            for (topic, msg) in &self.retained {
                if filter.matches(topic) {
                    if msg.expired(now) {
                        expired.push(topic.clone());
                    } else {
                        found.push(msg.clone());
                    }
                }
            }
        } else if let Ok(topic) = TopicName::new(filter.filter())
            && let Some(msg) = self.retained.get(&topic)
        {
            if msg.expired(now) {
                expired.push(topic);
            } else {
                found.push(msg.clone());
            }
        }
        for t in expired {
            self.retained.remove(&t);
            self.log(PersistOp::RetainedCleared { topic: t });
        }
        for msg in found {
            let d = Delivery {
                qos: msg.qos.min(qos),
                retain: true,
                sub_ids: sub_id.into_iter().collect(),
                msg,
                key: 0,
                shared: None,
            };
            self.deliver(now, si, d, &mut Routing::default());
        }
    }

    pub(super) fn on_unsubscribe(&mut self, index: u32, unsub: Unsubscribe) {
        let Some(si) = self.slot_conn(index).and_then(|c| c.session) else {
            return;
        };
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for f in &unsub.filters {
            let removed = self.tree.remove(f, si);
            if let Some(s) = self.session_mut(si) {
                s.subscriptions.remove(f);
            }
            if removed {
                let filter = f.clone();
                self.log_session(si, |client_id| PersistOp::Unsubscribed { client_id, filter });
            }
            codes.push(if removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        let ack = UnsubAck {
            packet_id: unsub.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        self.send(index, &ack.into());
    }
}
