//! The client-side `Driver`, with no runtime: the server's packets are encoded with the codec
//! and fed as bytes, the "runtime" is the test, which writes (or not) what the driver hands
//! out, and waiters are plain numbers so that each answer can be matched to its call.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use ternmq_core::client::driver::{Answer, Command, CommandError, ConnectOptions, Driver};

/// What the driver reports, events and commands in one list (the events of a call first, as
/// a runtime takes them), to compare sequences in one assertion.
#[derive(Clone, Debug, PartialEq)]
enum Outcome<W> {
    Answer(W, Answer),
    Connected { session_present: bool },
    Refused(ReasonCode),
    Message(Publish),
    ConnectionLost(DisconnectReason),
    CloseTransport,
    Redial,
}
use ternmq_core::client::{ClientConfig, ClientError, DisconnectReason, Event};
use ternmq_core::codec::{
    AckProperties, ConnAck, Connect, Decoder, Disconnect, MAX_PACKET_SIZE, MqttStr, Packet,
    PacketId, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, Subscription, UnsubAck,
};
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).unwrap()
}

fn publish(topic: &str, qos: QoS) -> Publish {
    let mut p = Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(b"payload"));
    p.qos = qos;
    p
}

fn sub(filter: &str, qos: QoS) -> Subscription {
    Subscription::new(TopicFilter::new(filter).unwrap(), qos)
}

/// A driver, its clock, and the server's view of what it sends.
struct Harness {
    d: Driver<u32>,
    version: ProtocolVersion,
    now: Instant,
    server: Decoder,
}

impl Harness {
    fn new(version: ProtocolVersion, config: ClientConfig) -> Self {
        Self {
            d: Driver::new(config, Instant::ZERO),
            version,
            now: Instant::from_secs(1),
            server: Decoder::new(None, MAX_PACKET_SIZE),
        }
    }

    fn options(&self) -> Connect {
        let mut c = Connect::new(self.version, MqttStr::from_static("driver"));
        c.keep_alive = 30;
        c
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Writes everything the driver hands out (reporting it written) and decodes it.
    fn sent(&mut self) -> Vec<Packet> {
        let out = self.d.poll_transmit().unwrap_or_default();
        self.d.handle_written(out.len());
        self.decode(out)
    }

    fn decode(&mut self, out: Bytes) -> Vec<Packet> {
        let mut buf = BytesMut::from(&out[..]);
        let mut packets = Vec::new();
        while let Some(p) = self.server.decode(&mut buf).unwrap() {
            packets.push(p);
        }
        assert!(buf.is_empty(), "a partial packet was handed out");
        packets
    }

    fn outcomes(&mut self) -> Vec<Outcome<u32>> {
        let mut out = Vec::new();
        while let Some(e) = self.d.poll_event() {
            out.push(match e {
                Event::Connected { session_present, .. } => Outcome::Connected { session_present },
                Event::ConnectionRefused { reason_code, .. } => Outcome::Refused(reason_code),
                Event::Message(p) => Outcome::Message(p),
                Event::Disconnected(reason) => Outcome::ConnectionLost(reason),
                other => panic!("the driver reported {other:?}"),
            });
        }
        while let Some(c) = self.d.poll_command() {
            out.push(match c {
                Command::Answer(w, a) => Outcome::Answer(w, a),
                Command::CloseTransport => Outcome::CloseTransport,
                Command::Reconnect => Outcome::Redial,
                other => panic!("the driver asked for {other:?}"),
            });
        }
        out
    }

    fn feed(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).unwrap();
        self.d.handle_bytes(self.now, &mut buf);
    }

    /// Connects and accepts with `connack`; returns the outcomes.
    fn connect(&mut self, connack: ConnAck) -> Vec<Outcome<u32>> {
        let opts = self.options();
        self.connect_with(opts, connack)
    }

    fn connect_with(&mut self, opts: Connect, connack: ConnAck) -> Vec<Outcome<u32>> {
        self.d.connect(self.now, opts).unwrap();
        let sent = self.sent();
        assert!(matches!(sent[..], [Packet::Connect(_)]), "{sent:?}");
        self.feed(Packet::ConnAck(connack));
        self.outcomes()
    }

    fn connected(version: ProtocolVersion) -> Self {
        let mut h = Self::new(version, ClientConfig::default());
        let out = h.connect(ConnAck::default());
        assert_eq!(out, [Outcome::Connected { session_present: false }]);
        h
    }

    /// The transport ends, and the reconnect timer fires: the driver asks for a redial.
    fn lose_and_redial(&mut self) -> Vec<Outcome<u32>> {
        self.d.handle_closed(self.now);
        let mut out = self.outcomes();
        let at = self.d.poll_timeout().expect("a reconnect is scheduled");
        self.now = at;
        self.d.handle_timeout(self.now);
        out.extend(self.outcomes());
        out
    }
}

fn ok(codes: &[ReasonCode]) -> Result<Vec<ReasonCode>, DisconnectReason> {
    Ok(codes.to_vec())
}

fn answers(outcomes: &[Outcome<u32>]) -> Vec<(u32, Result<Vec<ReasonCode>, DisconnectReason>)> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Answer(w, a) => Some((*w, a.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn connect_reports_connected_with_session_present() {
    for v in [V311, V5] {
        let mut h = Harness::new(v, ClientConfig::default());
        let mut opts = h.options();
        opts.clean_start = false;
        h.d.connect(h.now, opts).unwrap();
        assert!(matches!(h.sent()[..], [Packet::Connect(_)]));
        assert!(!h.d.is_connected());
        h.feed(Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }));
        assert_eq!(h.outcomes(), [Outcome::Connected { session_present: true }]);
        assert!(h.d.is_connected());
    }
}

#[test]
fn a_final_refusal_stops_the_driver_and_fails_what_waits() {
    let mut h = Harness::new(V5, ClientConfig::default());
    let opts = h.options();
    h.d.connect(h.now, opts).unwrap();
    // Published while connecting: it waits in the core's queue.
    h.d.publish(h.now, publish("t", QoS::AtLeastOnce), 7).unwrap();
    h.sent();
    let refusal = ConnAck { reason_code: ReasonCode::NotAuthorized, ..ConnAck::default() };
    h.feed(Packet::ConnAck(refusal));
    assert_eq!(
        h.outcomes(),
        [Outcome::Refused(ReasonCode::NotAuthorized), Outcome::CloseTransport]
    );
    assert!(!h.d.is_stopped(), "stopped before the transport is closed");
    h.d.handle_closed(h.now);
    assert!(h.d.is_stopped(), "no reconnect follows a refusal that retrying cannot fix");
    assert_eq!(h.outcomes(), [Outcome::Answer(7, Err(DisconnectReason::TransportClosed))]);
    assert_eq!(h.d.poll_timeout(), None);
    let err = h.d.publish(h.now, publish("t", QoS::AtMostOnce), 8).unwrap_err();
    assert_eq!(err, CommandError::Stopped(DisconnectReason::TransportClosed));
}

#[test]
fn a_transient_refusal_redials() {
    let mut h = Harness::new(V5, ClientConfig::default());
    let refusal = ConnAck { reason_code: ReasonCode::ServerBusy, ..ConnAck::default() };
    let out = h.connect(refusal);
    assert_eq!(out, [Outcome::Refused(ReasonCode::ServerBusy), Outcome::CloseTransport]);
    let out = h.lose_and_redial();
    assert_eq!(out, [Outcome::Redial]);
    assert!(!h.d.is_stopped());
    h.d.handle_reconnected(h.now);
    assert!(matches!(h.sent()[..], [Packet::Connect(_)]));
}

#[test]
fn qos0_publish_is_done_when_its_bytes_are_written() {
    for v in [V311, V5] {
        let mut h = Harness::connected(v);
        h.d.publish(h.now, publish("a", QoS::AtMostOnce), 1).unwrap();
        h.d.publish(h.now, publish("b", QoS::AtMostOnce), 2).unwrap();
        assert_eq!(h.outcomes(), [], "nothing is written yet");
        let out = h.d.poll_transmit().unwrap_or_default();
        let first = out.len() / 2;
        // Part of the first publish: not done.
        h.d.handle_written(first - 1);
        assert_eq!(h.outcomes(), []);
        h.d.handle_written(1);
        assert_eq!(answers(&h.outcomes()), [(1, ok(&[ReasonCode::Success]))]);
        // More than was handed out counts as all of it.
        h.d.handle_written(usize::MAX);
        assert_eq!(answers(&h.outcomes()), [(2, ok(&[ReasonCode::Success]))]);
        let sent = h.decode(out);
        assert!(
            matches!(&sent[..], [Packet::Publish(a), Packet::Publish(b)]
                if a.topic.as_str() == "a" && b.topic.as_str() == "b"),
            "{sent:?}"
        );
    }
}

#[test]
fn qos1_publish_is_answered_by_its_puback_with_the_reason_code() {
    let mut h = Harness::connected(V5);
    h.d.publish(h.now, publish("a", QoS::AtLeastOnce), 10).unwrap();
    h.d.publish(h.now, publish("b", QoS::AtLeastOnce), 11).unwrap();
    let sent = h.sent();
    let ids: Vec<PacketId> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.packet_id.unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(h.outcomes(), [], "written is not acknowledged");
    // Answered out of order: each waiter gets its own.
    let mut ack = PubAck::new(ids[1]);
    ack.reason_code = ReasonCode::NoMatchingSubscribers;
    h.feed(Packet::PubAck(ack));
    assert_eq!(answers(&h.outcomes()), [(11, ok(&[ReasonCode::NoMatchingSubscribers]))]);
    h.feed(Packet::PubAck(PubAck::new(ids[0])));
    assert_eq!(answers(&h.outcomes()), [(10, ok(&[ReasonCode::Success]))]);
    // An acknowledgement for nothing answers nobody.
    h.feed(Packet::PubAck(PubAck::new(pid(999))));
    assert_eq!(h.outcomes(), []);
}

#[test]
fn qos2_publish_is_answered_by_its_pubcomp() {
    for v in [V311, V5] {
        let mut h = Harness::connected(v);
        h.d.publish(h.now, publish("a", QoS::ExactlyOnce), 5).unwrap();
        let sent = h.sent();
        let Packet::Publish(p) = &sent[0] else { panic!("{sent:?}") };
        let id = p.packet_id.unwrap();
        h.feed(Packet::PubRec(PubAck::new(id)));
        assert_eq!(h.outcomes(), [], "PUBREC is half way");
        assert_eq!(h.sent(), [Packet::PubRel(PubAck::new(id))]);
        h.feed(Packet::PubComp(PubAck::new(id)));
        assert_eq!(answers(&h.outcomes()), [(5, ok(&[ReasonCode::Success]))]);
    }
}

#[test]
fn subscribe_and_unsubscribe_get_the_servers_reason_codes() {
    for v in [V311, V5] {
        let mut h = Harness::connected(v);
        h.d.subscribe(h.now, &[sub("a/#", QoS::ExactlyOnce), sub("b", QoS::AtMostOnce)], 1)
            .unwrap();
        let sent = h.sent();
        let Packet::Subscribe(s) = &sent[0] else { panic!("{sent:?}") };
        let codes = vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized];
        let suback = SubAck {
            packet_id: s.packet_id,
            reason_codes: codes.clone(),
            properties: AckProperties::default(),
        };
        h.feed(Packet::SubAck(suback));
        let expected = if v.is_v5() {
            codes
        } else {
            // 3.1.1 has one failure code.
            vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
        };
        assert_eq!(answers(&h.outcomes()), [(1, Ok(expected))]);

        h.d.unsubscribe(h.now, &[TopicFilter::new("a/#").unwrap()], 2).unwrap();
        let sent = h.sent();
        let Packet::Unsubscribe(u) = &sent[0] else { panic!("{sent:?}") };
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: vec![ReasonCode::Success],
            properties: AckProperties::default(),
        };
        h.feed(Packet::UnsubAck(unsuback));
        let expected: &[ReasonCode] = if v.is_v5() { &[ReasonCode::Success] } else { &[] };
        assert_eq!(answers(&h.outcomes()), [(2, ok(expected))]);
    }
}

#[test]
fn commands_the_core_refuses_are_errors_and_keep_no_waiter() {
    let mut h = Harness::new(V5, ClientConfig::default());
    let err = h.d.subscribe(h.now, &[sub("a", QoS::AtMostOnce)], 1).unwrap_err();
    assert_eq!(err, CommandError::Client(ClientError::NotConnected));
    let mut h = Harness::connected(V5);
    let err = h.d.unsubscribe(h.now, &[], 2).unwrap_err();
    assert_eq!(err, CommandError::Client(ClientError::Empty));
    h.d.stop();
    assert_eq!(h.outcomes(), [], "no waiter was kept");
}

#[test]
fn disconnect_is_answered_once_written_then_the_driver_stops() {
    for v in [V311, V5] {
        let mut h = Harness::connected(v);
        h.d.publish(h.now, publish("a", QoS::AtLeastOnce), 1).unwrap();
        h.sent();
        let mut d = Disconnect::default();
        if v.is_v5() {
            d.reason_code = ReasonCode::DisconnectWithWillMessage;
        }
        h.d.disconnect(h.now, d.clone(), 2).unwrap();
        assert_eq!(
            h.outcomes(),
            [Outcome::ConnectionLost(DisconnectReason::Requested), Outcome::CloseTransport]
        );
        // The runtime writes what is left before closing.
        assert_eq!(h.sent(), [Packet::Disconnect(d)]);
        assert_eq!(answers(&h.outcomes()), [(2, ok(&[ReasonCode::Success]))]);
        assert!(!h.d.is_stopped());
        h.d.handle_closed(h.now);
        assert!(h.d.is_stopped());
        // The unacknowledged QoS 1 publish can no longer be answered.
        assert_eq!(answers(&h.outcomes()), [(1, Err(DisconnectReason::Requested))]);
        let err = h.d.publish(h.now, publish("a", QoS::AtMostOnce), 3).unwrap_err();
        assert_eq!(err, CommandError::Stopped(DisconnectReason::Requested));
        let err = h.d.disconnect(h.now, Disconnect::default(), 4).unwrap_err();
        assert_eq!(err, CommandError::Stopped(DisconnectReason::Requested));
        // Input after the stop is ignored.
        h.feed(Packet::PingResp);
        h.d.handle_timeout(Instant::MAX);
        assert_eq!(h.outcomes(), []);
    }
}

#[test]
fn a_disconnect_whose_bytes_are_lost_fails() {
    let mut h = Harness::connected(V5);
    h.d.disconnect(h.now, Disconnect::default(), 1).unwrap();
    h.outcomes();
    // The write fails: the transport is gone with the DISCONNECT in it.
    let _ = h.d.poll_transmit().unwrap_or_default();
    h.d.handle_closed(h.now);
    assert_eq!(answers(&h.outcomes()), [(1, Err(DisconnectReason::Requested))]);
    assert!(h.d.is_stopped());
}

#[test]
fn a_lost_connection_fails_unwritten_qos0_and_open_requests_but_keeps_qos1() {
    let mut h = Harness::new(V5, ClientConfig::default());
    let mut opts = h.options();
    opts.clean_start = false;
    h.connect_with(opts, ConnAck::default());
    h.d.publish(h.now, publish("q1", QoS::AtLeastOnce), 1).unwrap();
    h.d.subscribe(h.now, &[sub("s", QoS::AtLeastOnce)], 2).unwrap();
    h.sent();
    h.d.publish(h.now, publish("q0", QoS::AtMostOnce), 3).unwrap();
    // The QoS 0 publish is taken, but the write fails.
    let _ = h.d.poll_transmit().unwrap_or_default();
    let out = h.lose_and_redial();
    let lost = DisconnectReason::TransportClosed;
    assert_eq!(out[0], Outcome::ConnectionLost(lost.clone()));
    let mut got = answers(&out);
    got.sort_by_key(|(w, _)| *w);
    assert_eq!(got, [(2, Err(lost.clone())), (3, Err(lost.clone()))]);
    assert_eq!(out.last(), Some(&Outcome::Redial));
    assert_eq!(h.d.last_disconnect(), Some(&lost));
    // Input for the closed transport is dropped.
    h.feed(Packet::PingResp);
    assert_eq!(h.outcomes(), []);
    // The new transport: the server kept the session, the publish goes out again with DUP.
    h.d.handle_reconnected(h.now);
    h.server = Decoder::new(None, MAX_PACKET_SIZE);
    assert!(matches!(h.sent()[..], [Packet::Connect(_)]));
    h.feed(Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }));
    assert_eq!(h.outcomes(), [Outcome::Connected { session_present: true }]);
    let sent = h.sent();
    let [Packet::Publish(p)] = &sent[..] else { panic!("{sent:?}") };
    assert!(p.dup);
    h.feed(Packet::PubAck(PubAck::new(p.packet_id.unwrap())));
    assert_eq!(answers(&h.outcomes()), [(1, ok(&[ReasonCode::Success]))]);
}

#[test]
fn qos0_published_offline_is_done_when_written_on_the_next_connection() {
    let mut h = Harness::connected(V311);
    let out = h.lose_and_redial();
    assert_eq!(out, [Outcome::ConnectionLost(DisconnectReason::TransportClosed), Outcome::Redial]);
    h.d.publish(h.now, publish("later", QoS::AtMostOnce), 9).unwrap();
    h.d.handle_reconnected(h.now);
    h.server = Decoder::new(None, MAX_PACKET_SIZE);
    // Writing the CONNECT does not finish it: the publish waits for CONNACK.
    assert!(matches!(h.sent()[..], [Packet::Connect(_)]));
    assert_eq!(h.outcomes(), []);
    h.feed(Packet::ConnAck(ConnAck::default()));
    assert_eq!(h.outcomes(), [Outcome::Connected { session_present: false }]);
    let out = h.d.poll_transmit().unwrap_or_default();
    assert_eq!(h.outcomes(), [], "taken is not written");
    h.d.handle_written(out.len());
    assert_eq!(answers(&h.outcomes()), [(9, ok(&[ReasonCode::Success]))]);
    let sent = h.decode(out);
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.topic.as_str() == "later"));
}

#[test]
fn qos0_behind_a_full_window_waits_for_its_turn() {
    let mut h = Harness::new(V5, ClientConfig::default());
    let mut connack = ConnAck::default();
    connack.properties.receive_maximum = Some(pid(1));
    h.connect(connack);
    h.d.publish(h.now, publish("one", QoS::AtLeastOnce), 1).unwrap();
    h.d.publish(h.now, publish("two", QoS::AtLeastOnce), 2).unwrap();
    h.d.publish(h.now, publish("zero", QoS::AtMostOnce), 3).unwrap();
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "the window holds one: {sent:?}");
    assert_eq!(h.outcomes(), [], "the QoS 0 publish is behind the window");
    let Packet::Publish(p) = &sent[0] else { panic!("{sent:?}") };
    h.feed(Packet::PubAck(PubAck::new(p.packet_id.unwrap())));
    assert_eq!(answers(&h.outcomes()), [(1, ok(&[ReasonCode::Success]))]);
    let sent = h.sent();
    assert!(matches!(&sent[..], [Packet::Publish(a), Packet::Publish(b)]
        if a.topic.as_str() == "two" && b.topic.as_str() == "zero"));
    assert_eq!(answers(&h.outcomes()), [(3, ok(&[ReasonCode::Success]))]);
}

#[test]
fn without_reconnect_a_lost_connection_stops_the_driver() {
    let mut config = ClientConfig::default();
    config.reconnect.enable = false;
    let mut h = Harness::new(V5, config);
    h.connect(ConnAck::default());
    h.d.publish(h.now, publish("a", QoS::ExactlyOnce), 1).unwrap();
    h.sent();
    // The server breaks the protocol: a PUBREL for nothing is fine, a CONNACK is not.
    h.feed(Packet::ConnAck(ConnAck::default()));
    let out = h.outcomes();
    assert!(
        matches!(
            &out[..],
            [
                Outcome::ConnectionLost(DisconnectReason::ProtocolViolation(_)),
                Outcome::CloseTransport
            ]
        ),
        "{out:?}"
    );
    // MQTT 5: the client says why before closing.
    let sent = h.sent();
    assert!(
        matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ProtocolError)
    );
    h.d.handle_closed(h.now);
    assert!(h.d.is_stopped());
    let reason = DisconnectReason::ProtocolViolation(ReasonCode::ProtocolError);
    assert_eq!(h.outcomes(), [Outcome::Answer(1, Err(reason))]);
}

#[test]
fn bytes_that_do_not_decode_close_the_connection_without_a_panic() {
    let mut h = Harness::connected(V5);
    let mut garbage = BytesMut::from(&[0x00u8, 0x00][..]);
    h.d.handle_bytes(h.now, &mut garbage);
    let out = h.outcomes();
    assert!(
        matches!(
            &out[..],
            [Outcome::ConnectionLost(DisconnectReason::Decode(_)), Outcome::CloseTransport]
        ),
        "{out:?}"
    );
}

#[test]
fn a_failed_dial_is_retried_after_the_next_delay() {
    let mut h = Harness::connected(V5);
    h.lose_and_redial();
    h.d.handle_dial_failed(h.now);
    assert_eq!(h.outcomes(), [], "a failed dial is no new disconnection");
    assert!(!h.d.is_stopped());
    let at = h.d.poll_timeout().expect("the next attempt");
    assert!(at > h.now);
    h.d.handle_timeout(h.now);
    assert_eq!(h.outcomes(), [], "not due yet");
    h.now = at;
    h.d.handle_timeout(h.now);
    assert_eq!(h.outcomes(), [Outcome::Redial]);
}

#[test]
fn disconnect_while_dialling_stops_and_closes_the_new_transport() {
    let mut h = Harness::connected(V5);
    h.d.publish(h.now, publish("a", QoS::AtLeastOnce), 1).unwrap();
    h.sent();
    h.lose_and_redial();
    h.d.disconnect(h.now, Disconnect::default(), 2).unwrap();
    assert!(h.d.is_stopped());
    let mut got = answers(&h.outcomes());
    got.sort_by_key(|(w, _)| *w);
    assert_eq!(got, [(1, Err(DisconnectReason::Requested)), (2, ok(&[ReasonCode::Success]))]);
    // The dial that was under way succeeds: that transport is closed at once.
    h.d.handle_reconnected(h.now);
    assert_eq!(h.outcomes(), [Outcome::CloseTransport]);
    assert!(h.d.poll_transmit().unwrap_or_default().is_empty(), "no CONNECT after a disconnect");
    h.d.handle_closed(h.now);
    assert_eq!(h.outcomes(), []);
}

#[test]
fn keep_alive_sends_pingreq_when_due_only() {
    let mut h = Harness::connected(V5);
    let due = h.d.poll_timeout().unwrap();
    assert_eq!(h.d.timeout_in(h.now), Some(Duration::from_secs(30)));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.d.timeout_in(h.now), Some(Duration::from_secs(29)));
    h.d.handle_timeout(h.now);
    assert_eq!(h.sent(), []);
    h.now = due + Duration::from_secs(1);
    assert_eq!(h.d.timeout_in(h.now), Some(Duration::ZERO), "overdue is due now");
    h.d.handle_timeout(h.now);
    assert_eq!(h.sent(), [Packet::PingReq]);
}

#[test]
fn stop_fails_every_waiter_once() {
    let mut h = Harness::connected(V5);
    h.d.publish(h.now, publish("a", QoS::AtLeastOnce), 1).unwrap();
    h.d.subscribe(h.now, &[sub("s", QoS::AtLeastOnce)], 2).unwrap();
    h.d.publish(h.now, publish("b", QoS::AtMostOnce), 3).unwrap();
    h.d.stop();
    h.d.stop();
    let mut got = answers(&h.outcomes());
    got.sort_by_key(|(w, _)| *w);
    let r = DisconnectReason::Requested;
    assert_eq!(got, [(1, Err(r.clone())), (2, Err(r.clone())), (3, Err(r))]);
    assert_eq!(h.d.poll_timeout(), None);
}

#[test]
fn messages_are_handed_out_in_order_and_acknowledged() {
    let mut h = Harness::connected(V5);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let mut p = publish(&format!("m/{i}"), qos);
        p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(100 + i as u16));
        h.feed(Packet::Publish(p));
    }
    let topics: Vec<String> = h
        .outcomes()
        .into_iter()
        .map(|o| match o {
            Outcome::Message(p) => p.topic.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["m/0", "m/1", "m/2"]);
    assert_eq!(
        h.sent(),
        [Packet::PubAck(PubAck::new(pid(101))), Packet::PubRec(PubAck::new(pid(102)))]
    );
}

#[test]
fn connect_options_default_to_mqtt5_with_an_assigned_id() {
    let o = ConnectOptions::new("127.0.0.1", 1883);
    assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 1883));
    assert_eq!(o.connect.protocol, V5);
    assert!(o.connect.client_id.is_empty());
    assert!(o.connect.clean_start);
    assert_eq!(o.connect.keep_alive, 60);
    assert_eq!(o.timeout, Duration::from_secs(30));
}

/// Answers "nonce" with "signed"; gives up on anything else.
struct Signer;

impl ternmq_core::client::driver::AuthHandler for Signer {
    fn challenge(&self, method: &str, data: Option<&[u8]>) -> Option<Bytes> {
        (method == "SIGN" && data == Some(b"nonce")).then(|| Bytes::from_static(b"signed"))
    }
}

fn auth(code: ReasonCode, data: &'static [u8]) -> Packet {
    let mut a = ternmq_core::codec::Auth { reason_code: code, properties: Default::default() };
    a.properties.authentication_method = Some(MqttStr::from_static("SIGN"));
    a.properties.authentication_data = Some(Bytes::from_static(data));
    Packet::Auth(a)
}

/// MQTT 5 only: enhanced authentication: the handler answers the server's challenge with AUTH 0x18
/// [MQTT-4.12.0-3], and a challenge it cannot answer ends the attempt at once.
#[test]
fn the_auth_handler_answers_challenges_and_gives_up_on_the_rest() {
    let mut h = Harness::new(V5, ClientConfig::default());
    h.d.set_auth_handler(Some(std::sync::Arc::new(Signer)));
    let mut opts = h.options();
    opts.properties.authentication_method = Some(MqttStr::from_static("SIGN"));
    h.d.connect(h.now, opts.clone()).unwrap();
    let _ = h.sent();
    h.feed(auth(ReasonCode::ContinueAuthentication, b"nonce"));
    let answer = h.sent();
    let [Packet::Auth(a)] = &answer[..] else { panic!("{answer:?}") };
    assert_eq!(a.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(a.properties.authentication_data.as_deref(), Some(&b"signed"[..]));
    let mut ack = ConnAck::default();
    ack.properties.authentication_method = Some(MqttStr::from_static("SIGN"));
    h.feed(Packet::ConnAck(ack));
    assert_eq!(h.outcomes(), [Outcome::Connected { session_present: false }]);

    // A challenge the handler cannot answer: DISCONNECT, and no waiting for a timeout.
    let mut h = Harness::new(V5, ClientConfig::default());
    h.d.set_auth_handler(Some(std::sync::Arc::new(Signer)));
    h.d.connect(h.now, opts).unwrap();
    let _ = h.sent();
    h.feed(auth(ReasonCode::ContinueAuthentication, b"riddle"));
    let sent = h.sent();
    assert!(matches!(sent[..], [Packet::Disconnect(_)]), "{sent:?}");
    let outcomes = h.outcomes();
    assert!(outcomes.contains(&Outcome::CloseTransport));
    // Not reported as the application's own disconnect.
    assert!(
        outcomes.contains(&Outcome::ConnectionLost(DisconnectReason::AuthenticationAbandoned)),
        "{outcomes:?}"
    );
}

/// What the clients' `publish` and `subscribe` report from an answer's codes.
#[test]
fn a_publish_without_a_code_succeeded_and_a_subscription_without_one_did_not() {
    use ternmq_core::client::driver::{publish_reason, subscription_reason};
    assert_eq!(publish_reason(&[]), ReasonCode::Success);
    assert_eq!(
        publish_reason(&[ReasonCode::NoMatchingSubscribers]),
        ReasonCode::NoMatchingSubscribers
    );
    assert_eq!(subscription_reason(&[]), ReasonCode::UnspecifiedError);
    assert_eq!(subscription_reason(&[ReasonCode::GrantedQoS1]), ReasonCode::GrantedQoS1);
}

mod urls {
    use ternmq_core::client::driver::{ConnectOptions, ServerUrl};

    #[test]
    fn server_urls_in_mosquittos_form() {
        let u = ServerUrl::parse("mqtts://alice:s%3Acret@broker.example:8884/sensors/%23").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("broker.example", 8884, true));
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s:cret"));
        assert_eq!(u.topic.as_deref(), Some("sensors/#"));
        assert_eq!(u.ws_path, None);
        let u = ServerUrl::parse("mqtt://[::1]/t").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 1883, false));
        let u = ServerUrl::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.ws_path.as_deref()), (8080, Some("/mqtt")));
        let u = ServerUrl::parse("wss://h/ws/mqtt").unwrap();
        assert_eq!((u.port, u.tls, u.ws_path.as_deref()), (443, true, Some("/ws/mqtt")));
        assert_eq!(ServerUrl::parse("mqtts://h").unwrap().port, 8883);
        for bad in
            ["h:1883", "http://h", "mqtt://:1883", "mqtt://h:x", "mqtt://[::1", "mqtt://h/%zz"]
        {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
        let o = ConnectOptions::from_url("wss://bob:pw@h:9001/").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("h", 9001));
        assert!(o.tls.is_some());
        assert_eq!(o.ws_path.as_deref(), Some("/mqtt"));
        assert_eq!(o.connect.username.as_ref().map(|u| u.as_str()), Some("bob"));
        assert_eq!(o.connect.password.as_deref(), Some(&b"pw"[..]));
    }
}
