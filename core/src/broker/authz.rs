//! Authorization: the configured authorizer, answers deferred to the adapter, and the broker's
//! own rule that clients do not publish to `$SYS`.

use super::*;

impl Broker {
    /// Whether a will may be published: it cannot wait, so `Defer` refuses.
    pub(super) fn allowed(
        &self,
        client_id: &MqttStr,
        username: Option<&MqttStr>,
        peer: &PeerInfo,
        topic: &str,
    ) -> bool {
        self.authorize(client_id, username, peer, Action::Publish, topic) == AuthzDecision::Allow
    }

    pub(super) fn authorize(
        &self,
        client_id: &MqttStr,
        username: Option<&MqttStr>,
        peer: &PeerInfo,
        action: Action,
        topic: &str,
    ) -> AuthzDecision {
        if reserved(action, topic.as_bytes()) {
            return AuthzDecision::Deny;
        }
        if peer.trusted {
            return AuthzDecision::Allow;
        }
        match &self.config.authorizer {
            None => AuthzDecision::Allow,
            Some(a) => {
                let info = ClientInfo {
                    client_id: client_id.as_str(),
                    username: username.map(MqttStr::as_str),
                    peer,
                };
                a.decide(&info, action, topic)
            }
        }
    }

    /// The decision for connection `index`: an answer to a deferred request if there is one,
    /// else the authorizer's. `None`: deferred, and `packet` waits for the answer.
    pub(super) fn check(
        &mut self,
        index: u32,
        action: Action,
        name: &[u8],
        packet: impl FnOnce() -> Packet,
    ) -> Option<bool> {
        if self.config.authorizer.is_none() {
            // Only the broker's own rule applies: no identity to gather, no string to make.
            self.slot_conn(index)?;
            return Some(!reserved(action, name));
        }
        // A topic name or filter's bytes: UTF-8 by construction.
        let topic = core::str::from_utf8(name).unwrap_or_default();
        let c = self.slot_conn(index)?;
        let answer = c.extra.as_ref().and_then(|x| {
            x.authz.iter().find(|(a, t, _)| *a == action && t == topic).map(|&(_, _, yes)| yes)
        });
        if answer.is_some() {
            return answer;
        }
        let (client_id, username, peer) = self.identity(index);
        match self.authorize(&client_id, username.as_ref(), &peer, action, topic) {
            AuthzDecision::Allow => Some(true),
            AuthzDecision::Deny => Some(false),
            _ => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                let conn = self.conn_id(index);
                if let Some(c) = self.slot_conn(index) {
                    c.extra().ticket = Some(ticket);
                }
                self.pending_authz.insert(ticket, (conn, packet(), action, topic.into()));
                self.commands.push_back(Command::Authorize {
                    ticket: AuthTicket(ticket),
                    conn,
                    client_id,
                    username,
                    action,
                    topic: topic.into(),
                });
                None
            }
        }
    }
}

/// The broker's own rule, whatever the authorizer: clients do not write its statistics.
fn reserved(action: Action, topic: &[u8]) -> bool {
    action == Action::Publish && (topic.starts_with(b"$SYS/") || topic == b"$SYS")
}
