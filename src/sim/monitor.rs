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
    up: Decoder,
    up_buf: BytesMut,
    down: Option<Decoder>,
    down_buf: BytesMut,
    v5: bool,
    /// Limits the client announced in CONNECT.
    client_max_packet: u32,
    client_receive_max: u16,
    client_alias_max: u16,
    /// Limits the broker announced in CONNACK.
    broker_max_packet: u32,
    broker_receive_max: u16,
    broker_alias_max: u16,
    /// QoS 1 and 2 packet identifiers in use, each direction.
    down_inflight: BTreeSet<u16>,
    up_inflight: BTreeSet<u16>,
    /// QoS 1/2 PUBLISH identifiers not yet answered with PUBACK/PUBREC, in arrival order,
    /// and PUBRECs not yet answered with PUBREL: each side must answer in order
    /// ([MQTT-4.6.0-2..4]).
    up_unanswered: VecDeque<u16>,
    down_unanswered: VecDeque<u16>,
    up_recs: VecDeque<u16>,
    down_recs: VecDeque<u16>,
    /// A direction that failed to decode is not decoded further.
    broken: bool,
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
            up: Decoder::new(None, u32::MAX),
            up_buf: BytesMut::new(),
            down: None,
            down_buf: BytesMut::new(),
            v5: false,
            client_max_packet: u32::MAX,
            client_receive_max: u16::MAX,
            client_alias_max: 0,
            broker_max_packet: u32::MAX,
            broker_receive_max: u16::MAX,
            broker_alias_max: 0,
            down_inflight: BTreeSet::new(),
            up_inflight: BTreeSet::new(),
            up_unanswered: VecDeque::new(),
            down_unanswered: VecDeque::new(),
            up_recs: VecDeque::new(),
            down_recs: VecDeque::new(),
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
        let mut lines = Vec::new();
        if self.broken {
            return lines;
        }
        self.up_buf.extend_from_slice(bytes);
        loop {
            let before = self.up_buf.len();
            let packet = match self.up.decode(&mut self.up_buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    violations.push(format!(
                        "{} client {} ({}) sent bytes that do not decode: {e}",
                        ms(now),
                        self.client,
                        self.name
                    ));
                    self.broken = true;
                    break;
                }
            };
            let size = before - self.up_buf.len();
            lines.push(format!(
                "{} L{link} c{}({}) -> broker: {}",
                ms(now),
                self.client,
                self.name,
                summary(&packet)
            ));
            let mut bad = |what: String| {
                violations.push(format!(
                    "{} client {} ({}) {what}",
                    ms(now),
                    self.client,
                    self.name
                ))
            };
            if size > self.broker_max_packet as usize {
                bad(format!(
                    "sent a {size}-byte packet; the broker's Maximum Packet Size is {}",
                    self.broker_max_packet
                ));
            }
            match &packet {
                Packet::Connect(c) => {
                    self.v5 = c.protocol == ProtocolVersion::V5;
                    let p = &c.properties;
                    self.client_max_packet = p.maximum_packet_size.map_or(u32::MAX, |m| m.get());
                    self.client_receive_max = p.receive_maximum.map_or(u16::MAX, |m| m.get());
                    self.client_alias_max = p.topic_alias_maximum.unwrap_or(0);
                    let mut d = Decoder::new(Some(c.protocol), u32::MAX);
                    d.set_version(c.protocol);
                    self.down = Some(d);
                }
                Packet::Publish(p) => {
                    expiries.received(p, now);
                    if let Some(alias) = p.properties.topic_alias
                        && alias.get() > self.broker_alias_max
                    {
                        bad(format!(
                            "used topic alias {alias}; the broker's Topic Alias Maximum is {}",
                            self.broker_alias_max
                        ));
                    }
                    if let (true, Some(id)) = (p.qos != QoS::AtMostOnce, p.packet_id) {
                        self.up_unanswered.push_back(id.get());
                        if !self.up_inflight.insert(id.get()) && !p.dup {
                            bad(format!("reused packet id {id} while it was in flight"));
                        }
                        if self.v5 && self.up_inflight.len() > usize::from(self.broker_receive_max)
                        {
                            bad(format!(
                                "had {} QoS 1/2 publishes in flight; the broker's Receive \
                                 Maximum is {}",
                                self.up_inflight.len(),
                                self.broker_receive_max
                            ));
                        }
                    }
                }
                Packet::PubAck(a) | Packet::PubRec(a) => {
                    let id = a.packet_id.get();
                    if let Err(first) = answer_in_order(&mut self.down_unanswered, id) {
                        bad(format!("answered PUBLISH {id} before PUBLISH {first}"));
                    }
                    let done = matches!(packet, Packet::PubAck(_)) || a.reason_code.is_error();
                    if done {
                        self.down_inflight.remove(&id);
                    } else {
                        self.up_recs.push_back(id);
                    }
                }
                Packet::PubComp(a) => {
                    self.down_inflight.remove(&a.packet_id.get());
                }
                Packet::PubRel(a) => {
                    let id = a.packet_id.get();
                    if let Err(first) = answer_in_order(&mut self.down_recs, id) {
                        bad(format!("sent PUBREL {id} before PUBREL {first}"));
                    }
                }
                _ => {}
            }
        }
        lines
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
        let mut lines = Vec::new();
        if self.broken {
            return lines;
        }
        self.down_buf.extend_from_slice(bytes);
        let Some(decoder) = self.down.as_mut() else {
            // Nothing is due before CONNECT; keep the bytes until it is seen.
            return lines;
        };
        loop {
            let before = self.down_buf.len();
            let packet = match decoder.decode(&mut self.down_buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    violations.push(format!(
                        "{} the broker sent client {} ({}) bytes that do not decode: {e}",
                        ms(now),
                        self.client,
                        self.name
                    ));
                    self.broken = true;
                    break;
                }
            };
            let size = before - self.down_buf.len();
            lines.push(format!(
                "{} L{link} broker -> c{}({}): {}",
                ms(now),
                self.client,
                self.name,
                summary(&packet)
            ));
            let (client, name) = (self.client, self.name.clone());
            let mut bad = |what: String| {
                violations
                    .push(format!("{} the broker {what} to client {client} ({name})", ms(now)))
            };
            if size > self.client_max_packet as usize {
                bad(format!(
                    "sent a {size}-byte packet over the Maximum Packet Size {}",
                    self.client_max_packet
                ));
            }
            match &packet {
                Packet::ConnAck(c) => {
                    let p = &c.properties;
                    self.broker_max_packet = p.maximum_packet_size.map_or(u32::MAX, |m| m.get());
                    self.broker_receive_max = p.receive_maximum.map_or(u16::MAX, |m| m.get());
                    self.broker_alias_max = p.topic_alias_maximum.unwrap_or(0);
                }
                Packet::Publish(p) => {
                    if let Some(problem) = expiries.check_sent(p, now, self.v5) {
                        bad(problem);
                    }
                    if let Some(alias) = p.properties.topic_alias
                        && alias.get() > self.client_alias_max
                    {
                        bad(format!(
                            "used topic alias {alias} over the Topic Alias Maximum {}",
                            self.client_alias_max
                        ));
                    }
                    if let (true, Some(id)) = (p.qos != QoS::AtMostOnce, p.packet_id) {
                        self.down_unanswered.push_back(id.get());
                        if !self.down_inflight.insert(id.get()) && !p.dup {
                            bad(format!("reused packet id {id} while in flight"));
                        }
                        if self.v5
                            && self.down_inflight.len() > usize::from(self.client_receive_max)
                        {
                            bad(format!(
                                "had {} QoS 1/2 publishes in flight, over the Receive Maximum {}",
                                self.down_inflight.len(),
                                self.client_receive_max
                            ));
                        }
                    }
                }
                Packet::PubAck(a) | Packet::PubRec(a) => {
                    let id = a.packet_id.get();
                    if let Err(first) = answer_in_order(&mut self.up_unanswered, id) {
                        bad(format!("answered PUBLISH {id} before PUBLISH {first}"));
                    }
                    let done = matches!(packet, Packet::PubAck(_)) || a.reason_code.is_error();
                    if done {
                        self.up_inflight.remove(&id);
                    } else {
                        self.down_recs.push_back(id);
                    }
                }
                Packet::PubComp(a) => {
                    self.up_inflight.remove(&a.packet_id.get());
                }
                Packet::PubRel(a) => {
                    let id = a.packet_id.get();
                    if let Err(first) = answer_in_order(&mut self.up_recs, id) {
                        bad(format!("sent PUBREL {id} before PUBREL {first}"));
                    }
                }
                Packet::Disconnect(d)
                    if d.reason_code == ReasonCode::ReceiveMaximumExceeded
                        && self.up_inflight.len() <= usize::from(self.broker_receive_max) =>
                {
                    bad(format!(
                        "claimed Receive Maximum {} was exceeded with {} in flight",
                        self.broker_receive_max,
                        self.up_inflight.len()
                    ));
                }
                _ => {}
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
