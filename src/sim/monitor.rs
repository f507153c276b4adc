//! The wire monitor: decodes both directions of one connection, checks every packet against
//! the limits the receiving side announced, and writes the trace lines.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use ternmq_core::codec::{Decoder, Packet, ProtocolVersion, QoS, ReasonCode};
use ternmq_core::time::Instant;

use super::ms;

/// What one connection's monitor knows.
#[derive(Debug)]
pub(super) struct Monitor {
    client: usize,
    name: String,
    /// Client to broker, and broker to client.
    up: Flow,
    down: Flow,
    v5: bool,
    /// A direction that failed to decode is not decoded further.
    broken: bool,
}

/// One direction of a connection, as its sender uses it.
#[derive(Debug)]
struct Flow {
    /// `None` until the protocol version is known (the broker's side, before CONNECT).
    decoder: Option<Decoder>,
    buf: BytesMut,
    /// The limits the receiver announced (CONNECT or CONNACK).
    max_packet: u32,
    receive_max: u16,
    alias_max: u16,
    /// The sender's QoS 1 and 2 packet identifiers in use.
    inflight: BTreeSet<u16>,
    /// The sender's QoS 1/2 PUBLISH packets not yet answered with PUBACK/PUBREC, in order, and
    /// its PUBRECs not yet answered with PUBREL: each is answered in order ([MQTT-4.6.0-2..4]).
    unanswered: VecDeque<u16>,
    recs: VecDeque<u16>,
}

impl Flow {
    fn new(decoder: Option<Decoder>) -> Self {
        Self {
            decoder,
            buf: BytesMut::new(),
            max_packet: u32::MAX,
            receive_max: u16::MAX,
            alias_max: 0,
            inflight: BTreeSet::new(),
            unanswered: VecDeque::new(),
            recs: VecDeque::new(),
        }
    }

    /// The next whole packet and its size; `Err` when the bytes do not decode.
    fn next(&mut self) -> Result<Option<(Packet, usize)>, String> {
        let Some(decoder) = self.decoder.as_mut() else {
            // Nothing is due before CONNECT; the bytes wait until it is seen.
            return Ok(None);
        };
        let before = self.buf.len();
        match decoder.decode(&mut self.buf) {
            Ok(Some(p)) => Ok(Some((p, before - self.buf.len()))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Checks a packet `from` sent against what the receiver announced, and the identifiers and
/// answers `from` and `to` owe each other; `bad` records a broken rule.
fn check_flow(
    from: &mut Flow,
    to: &mut Flow,
    v5: bool,
    packet: &Packet,
    size: usize,
    mut bad: impl FnMut(String),
) {
    if size > from.max_packet as usize {
        bad(format!("sent a {size}-byte packet over the Maximum Packet Size {}", from.max_packet));
    }
    match packet {
        Packet::Publish(p) => {
            if let Some(alias) = p.properties.topic_alias
                && alias.get() > from.alias_max
            {
                bad(format!(
                    "used topic alias {alias} over the Topic Alias Maximum {}",
                    from.alias_max
                ));
            }
            if let (true, Some(id)) = (p.qos != QoS::AtMostOnce, p.packet_id) {
                from.unanswered.push_back(id.get());
                if !from.inflight.insert(id.get()) && !p.dup {
                    bad(format!("reused packet id {id} while it was in flight"));
                }
                if v5 && from.inflight.len() > usize::from(from.receive_max) {
                    bad(format!(
                        "had {} QoS 1/2 publishes in flight, over the Receive Maximum {}",
                        from.inflight.len(),
                        from.receive_max
                    ));
                }
            }
        }
        Packet::PubAck(a) | Packet::PubRec(a) => {
            let id = a.packet_id.get();
            if let Err(first) = answer_in_order(&mut to.unanswered, id) {
                bad(format!("answered PUBLISH {id} before PUBLISH {first}"));
            }
            if matches!(packet, Packet::PubAck(_)) || a.reason_code.is_error() {
                to.inflight.remove(&id);
            } else {
                from.recs.push_back(id);
            }
        }
        Packet::PubComp(a) => {
            to.inflight.remove(&a.packet_id.get());
        }
        Packet::PubRel(a) => {
            let id = a.packet_id.get();
            if let Err(first) = answer_in_order(&mut to.recs, id) {
                bad(format!("sent PUBREL {id} before PUBREL {first}"));
            }
        }
        _ => {}
    }
}

/// Messages with a Message Expiry Interval the broker received, by payload: when it last
/// received one, and the interval. Shared by every connection's monitor.
#[derive(Debug, Default)]
pub(super) struct Expiries(BTreeMap<Bytes, (Instant, u32)>);

impl Expiries {
    fn received(&mut self, p: &ternmq_core::codec::Publish, now: Instant) {
        if let Some(e) = p.properties.message_expiry_interval {
            self.0.insert(p.payload.clone(), (now, e));
        }
    }

    /// A PUBLISH the broker starts delivering: not after its message expired
    /// [MQTT-3.3.2-5], and with the interval less the time it waited [MQTT-3.3.2-6].
    fn check_sent(
        &self,
        p: &ternmq_core::codec::Publish,
        now: Instant,
        v5: bool,
    ) -> Option<String> {
        let &(at, interval) = self.0.get(&p.payload)?;
        if p.dup {
            return None; // delivery started before: it goes on ([MQTT-4.3.3-7])
        }
        let waited = now.saturating_duration_since(at);
        if waited.as_secs_f64() >= f64::from(interval) {
            return Some(format!(
                "started delivering a message {} ms after it was received; it expired after {interval} s",
                waited.as_millis()
            ));
        }
        let left = interval - u32::try_from(waited.as_secs()).unwrap_or(u32::MAX).min(interval);
        match p.properties.message_expiry_interval {
            _ if !v5 => None,
            Some(e) if e <= left => None,
            other => Some(format!(
                "forwarded Message Expiry Interval {other:?} after {} ms; at most {left} s were left",
                waited.as_millis()
            )),
        }
    }
}

/// Removes `id` from `queue`; `Err(first)` if an earlier entry, `first`, is still there.
fn answer_in_order(queue: &mut VecDeque<u16>, id: u16) -> Result<(), u16> {
    match queue.iter().position(|&x| x == id) {
        Some(0) => {
            queue.pop_front();
            Ok(())
        }
        Some(i) => {
            let first = queue[0];
            queue.remove(i);
            Err(first)
        }
        // Not seen on this connection (an answer to a resend after a reconnect).
        None => Ok(()),
    }
}

impl Monitor {
    pub(super) fn new(client: usize, name: &str) -> Self {
        Self {
            client,
            name: name.to_owned(),
            up: Flow::new(Some(Decoder::new(None, u32::MAX))),
            down: Flow::new(None),
            v5: false,
            broken: false,
        }
    }

    /// Bytes the broker received from the client.
    pub(super) fn client_sent(
        &mut self,
        bytes: &Bytes,
        now: Instant,
        link: usize,
        expiries: &mut Expiries,
        violations: &mut Vec<String>,
    ) -> Vec<String> {
        self.observe(true, bytes, now, link, violations, |m, packet| match packet {
            Packet::Connect(c) => {
                m.v5 = c.protocol == ProtocolVersion::V5;
                let p = &c.properties;
                m.down.max_packet = p.maximum_packet_size.map_or(u32::MAX, |m| m.get());
                m.down.receive_max = p.receive_maximum.map_or(u16::MAX, |m| m.get());
                m.down.alias_max = p.topic_alias_maximum.unwrap_or(0);
                m.down.decoder = Some(Decoder::new(Some(c.protocol), u32::MAX));
                None
            }
            Packet::Publish(p) => {
                expiries.received(p, now);
                None
            }
            _ => None,
        })
    }

    /// Bytes the broker sent to the client.
    pub(super) fn broker_sent(
        &mut self,
        bytes: &Bytes,
        now: Instant,
        link: usize,
        expiries: &Expiries,
        violations: &mut Vec<String>,
    ) -> Vec<String> {
        self.observe(false, bytes, now, link, violations, |m, packet| match packet {
            Packet::ConnAck(c) => {
                let p = &c.properties;
                m.up.max_packet = p.maximum_packet_size.map_or(u32::MAX, |m| m.get());
                m.up.receive_max = p.receive_maximum.map_or(u16::MAX, |m| m.get());
                m.up.alias_max = p.topic_alias_maximum.unwrap_or(0);
                None
            }
            Packet::Publish(p) => expiries.check_sent(p, now, m.v5),
            Packet::Disconnect(d)
                if d.reason_code == ReasonCode::ReceiveMaximumExceeded
                    && m.up.inflight.len() <= usize::from(m.up.receive_max) =>
            {
                Some(format!(
                    "claimed Receive Maximum {} was exceeded with {} in flight",
                    m.up.receive_max,
                    m.up.inflight.len()
                ))
            }
            _ => None,
        })
    }

    /// Decodes what one side sent, checks each packet (`special` adds what only that side's
    /// packets carry) and returns the trace lines.
    fn observe(
        &mut self,
        from_client: bool,
        bytes: &Bytes,
        now: Instant,
        link: usize,
        violations: &mut Vec<String>,
        mut special: impl FnMut(&mut Self, &Packet) -> Option<String>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if self.broken {
            return lines;
        }
        let who = if from_client {
            format!("client {} ({})", self.client, self.name)
        } else {
            format!("the broker, to client {} ({}),", self.client, self.name)
        };
        let arrow = if from_client { "->" } else { "<-" };
        if from_client { &mut self.up } else { &mut self.down }.buf.extend_from_slice(bytes);
        loop {
            let flow = if from_client { &mut self.up } else { &mut self.down };
            let (packet, size) = match flow.next() {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    violations
                        .push(format!("{} {who} sent bytes that do not decode: {e}", ms(now)));
                    self.broken = true;
                    break;
                }
            };
            lines.push(format!(
                "{} L{link} c{}({}) {arrow} broker: {}",
                ms(now),
                self.client,
                self.name,
                summary(&packet)
            ));
            let mut bad = |what: String| violations.push(format!("{} {who} {what}", ms(now)));
            let (from, to) = if from_client {
                (&mut self.up, &mut self.down)
            } else {
                (&mut self.down, &mut self.up)
            };
            check_flow(from, to, self.v5, &packet, size, &mut bad);
            if let Some(problem) = special(self, &packet) {
                bad(problem);
            }
        }
        lines
    }
}

/// One packet in a few words.
fn summary(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!(
            "CONNECT {:?} clean={} keepalive={} will={}",
            c.protocol,
            c.clean_start,
            c.keep_alive,
            c.will.as_ref().map_or("-".to_owned(), |w| String::from_utf8_lossy(&w.payload).into())
        ),
        Packet::ConnAck(c) => {
            format!("CONNACK {:?} session_present={}", c.reason_code, c.session_present)
        }
        Packet::Publish(p) => format!(
            "PUBLISH {} q{} id={} dup={} retain={} alias={} '{}'",
            p.topic.as_str(),
            p.qos as u8,
            p.packet_id.map_or(0, |i| i.get()),
            p.dup,
            p.retain,
            p.properties.topic_alias.map_or(0, |a| a.get()),
            String::from_utf8_lossy(&p.payload)
        ),
        Packet::PubAck(a) => format!("PUBACK id={} {:?}", a.packet_id, a.reason_code),
        Packet::PubRec(a) => format!("PUBREC id={} {:?}", a.packet_id, a.reason_code),
        Packet::PubRel(a) => format!("PUBREL id={} {:?}", a.packet_id, a.reason_code),
        Packet::PubComp(a) => format!("PUBCOMP id={} {:?}", a.packet_id, a.reason_code),
        Packet::Disconnect(d) => format!("DISCONNECT {:?}", d.reason_code),
        Packet::Subscribe(s) => {
            let subs: Vec<String> = s
                .subscriptions
                .iter()
                .map(|x| format!("{} q{}", x.filter.as_str(), x.options.qos as u8))
                .collect();
            format!("SUBSCRIBE id={} {}", s.packet_id, subs.join(", "))
        }
        Packet::SubAck(a) => format!("SUBACK id={} {:?}", a.packet_id, a.reason_codes),
        other => other.packet_type().to_string(),
    }
}
