//! The client state machine, driven byte by byte with a virtual clock: the server side of each
//! exchange is written as packets, encoded with the codec, and fed to the client.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use std::num::NonZeroU16;
use ternmq_core::client::{Client, ClientConfig, ClientError, Command, DisconnectReason, Event};
use ternmq_core::codec::*;
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).unwrap()
}

struct Harness {
    client: Client,
    version: ProtocolVersion,
    /// The server's decoder for what the client sends.
    server: Decoder,
}

impl Harness {
    fn new(version: ProtocolVersion, config: ClientConfig) -> Self {
        Self {
            client: Client::new(config, t(0)),
            version,
            server: Decoder::new(None, MAX_PACKET_SIZE),
        }
    }

    fn options(&self) -> Connect {
        let mut c = Connect::new(self.version, MqttStr::from_static("c1"));
        c.keep_alive = 10;
        c
    }

    /// Everything the client has to send, decoded.
    fn sent(&mut self) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        while let Some(b) = self.client.poll_transmit(usize::MAX) {
            buf.extend_from_slice(&b);
        }
        let mut out = Vec::new();
        while let Some(p) = self.server.decode(&mut buf).unwrap() {
            out.push(p);
        }
        assert!(buf.is_empty(), "client sent a partial packet");
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// The events, and then the commands.
    fn both(&mut self) -> (Vec<Event>, Vec<Command>) {
        let events = self.events();
        (events, std::iter::from_fn(|| self.client.poll_command()).collect())
    }

    fn feed(&mut self, now: Instant, packet: Packet) {
        let mut buf = BytesMut::new();
        packet.encode(self.version, &mut buf).unwrap();
        self.client.handle_bytes(now, &mut buf);
    }

    fn feed_raw(&mut self, now: Instant, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.client.handle_bytes(now, &mut buf);
    }

    /// Connects and answers with CONNACK.
    fn connect(&mut self, now: Instant, connack: ConnAck) -> Vec<Packet> {
        let opts = self.options();
        self.connect_with(now, opts, connack)
    }

    fn connect_with(&mut self, now: Instant, opts: Connect, connack: ConnAck) -> Vec<Packet> {
        if self.client.connect(now, opts.clone()).is_err() {
            self.client.reconnect(now).unwrap();
        }
        let sent = self.sent();
        assert!(matches!(sent[0], Packet::Connect(_)), "{sent:?}");
        self.feed(now, Packet::ConnAck(connack));
        self.sent()
    }
}

fn accepted() -> ConnAck {
    ConnAck::default()
}

fn publish(topic: &str, qos: QoS, payload: &'static str) -> Publish {
    let mut p =
        Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(payload.as_bytes()));
    p.qos = qos;
    p
}

fn both() -> [ProtocolVersion; 2] {
    [ProtocolVersion::V3_1_1, ProtocolVersion::V5]
}

#[test]
fn connect_sends_connect_and_reports_connack() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.client.connect(t(0), h.options()).unwrap();
        let sent = h.sent();
        let Packet::Connect(c) = &sent[0] else { panic!("{sent:?}") };
        assert_eq!(c.client_id, "c1");
        assert_eq!(c.protocol, v);
        assert!(!h.client.is_connected());
        h.feed(t(1), Packet::ConnAck(accepted()));
        assert!(h.client.is_connected());
        assert!(matches!(h.events()[..], [Event::Connected { session_present: false, .. }]));
    }
}

#[test]
fn connack_timeout_closes_and_schedules_reconnect() {
    let mut config = ClientConfig::default();
    config.reconnect.jitter = false;
    let mut h = Harness::new(ProtocolVersion::V5, config);
    h.client.connect(t(0), h.options()).unwrap();
    let _ = h.sent();
    assert_eq!(h.client.poll_timeout(), Some(t(30)));
    h.client.handle_timeout(t(29));
    assert!(h.events().is_empty());
    h.client.handle_timeout(t(30));
    assert_eq!(
        h.both(),
        (
            vec![Event::Disconnected(DisconnectReason::ConnAckTimeout)],
            vec![Command::CloseTransport]
        )
    );
    h.client.handle_closed(t(30));
    // First reconnect delay: 1 s without jitter.
    assert_eq!(h.client.poll_timeout(), Some(t(31)));
    h.client.handle_timeout(t(31));
    assert_eq!(h.both(), (vec![], vec![Command::Reconnect]));
}

#[test]
fn reconnect_backoff_doubles_up_to_the_maximum_and_resets_after_a_stable_connection() {
    let mut config = ClientConfig::default();
    config.reconnect.jitter = false;
    let mut h = Harness::new(ProtocolVersion::V5, config);
    let mut now = t(0);
    let mut delays = Vec::new();
    h.client.connect(now, h.options()).unwrap();
    for _ in 0..9 {
        let _ = h.sent();
        // The transport fails before CONNACK.
        h.client.handle_closed(now);
        let at = h.client.poll_timeout().unwrap();
        delays.push((at - now).as_secs());
        now = at;
        h.client.handle_timeout(now);
        assert_eq!(h.both().1, [Command::Reconnect]);
        h.client.reconnect(now).unwrap();
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    // A connection that stays up 10 s resets the schedule.
    let _ = h.sent();
    h.feed(now, Packet::ConnAck(accepted()));
    now += Duration::from_secs(10);
    h.client.handle_closed(now);
    assert_eq!(h.client.poll_timeout(), Some(now + Duration::from_secs(1)));
}

#[test]
fn reconnect_jitter_is_deterministic_per_seed_and_within_the_upper_half() {
    let schedule = |seed: u64| {
        let config = ClientConfig { seed, ..ClientConfig::default() };
        let mut h = Harness::new(ProtocolVersion::V5, config);
        let mut now = t(0);
        h.client.connect(now, h.options()).unwrap();
        let mut delays = Vec::new();
        for _ in 0..8 {
            h.client.handle_closed(now);
            let at = h.client.poll_timeout().unwrap();
            delays.push(at - now);
            now = at;
            h.client.handle_timeout(now);
            h.client.reconnect(now).unwrap();
        }
        delays
    };
    assert_eq!(schedule(7), schedule(7));
    assert_ne!(schedule(7), schedule(8));
    let nominal = [1u64, 2, 4, 8, 16, 32, 60, 60];
    for (d, n) in schedule(7).iter().zip(nominal) {
        let n = Duration::from_secs(n);
        assert!(*d >= n / 2 && *d <= n, "{d:?} not in [{:?}, {n:?}]", n / 2);
    }
}

#[test]
fn refused_connection_reports_the_reason_and_does_not_retry_bad_credentials() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        let refused = ConnAck { reason_code: ReasonCode::NotAuthorized, ..ConnAck::default() };
        h.connect(t(0), refused);
        let (ev, commands) = h.both();
        assert!(
            matches!(
                &ev[..],
                [Event::ConnectionRefused { reason_code: ReasonCode::NotAuthorized, .. }]
            ),
            "{ev:?}"
        );
        assert_eq!(commands, [Command::CloseTransport]);
        h.client.handle_closed(t(0));
        assert_eq!(h.client.poll_timeout(), None, "no reconnect after NotAuthorized");
    }
}

/// With a non-zero Keep Alive, an idle client sends PINGREQ in time, and closes when no PINGRESP
/// comes. 3.1.1: [MQTT-3.1.2-23]. 5.0: [MQTT-3.1.2-20].
#[test]
fn keep_alive_sends_pingreq_only_when_idle() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    assert_eq!(h.client.poll_timeout(), Some(t(10)));
    // Something sent at t=6 pushes the ping out to t=16.
    h.client.publish(t(6), publish("a", QoS::AtMostOnce, "x")).unwrap();
    let _ = h.sent();
    assert_eq!(h.client.poll_timeout(), Some(t(16)));
    h.client.handle_timeout(t(16));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    // PINGRESP due within 10 s.
    assert_eq!(h.client.poll_timeout(), Some(t(26)));
    h.feed(t(17), Packet::PingResp);
    assert_eq!(h.client.poll_timeout(), Some(t(26)));
    h.client.handle_timeout(t(26));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    h.client.handle_timeout(t(36));
    assert_eq!(
        h.both(),
        (
            vec![Event::Disconnected(DisconnectReason::KeepAliveTimeout)],
            vec![Command::CloseTransport]
        )
    );
}

/// MQTT 5 only: the Server Keep Alive from CONNACK replaces the Keep Alive the client sent,
/// shorter, longer or 0 [MQTT-3.2.2-21] [MQTT-3.1.2-21].
#[test]
fn mqtt_3_2_2_21_server_keep_alive_replaces_the_clients() {
    // The client asked for 10 s; the server says 3.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.server_keep_alive = Some(3);
    h.connect(t(0), ack);
    assert_eq!(h.client.poll_timeout(), Some(t(3)));
    h.client.handle_timeout(t(3));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    // The server says 60: no PINGREQ at the client's own 10 s.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.server_keep_alive = Some(60);
    h.connect(t(0), ack);
    h.client.handle_timeout(t(10));
    assert!(h.sent().is_empty());
    assert_eq!(h.client.poll_timeout(), Some(t(60)));
    h.client.handle_timeout(t(60));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    // The server says 0: keep-alive is off, no PINGREQ ever.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.server_keep_alive = Some(0);
    h.connect(t(0), ack);
    assert_eq!(h.client.poll_timeout(), None);
    h.client.handle_timeout(t(100));
    assert!(h.sent().is_empty());
}

/// The client as QoS 1 sender: an unused identifier, QoS 1 and DUP 0, in flight until PUBACK.
/// 3.1.1: [MQTT-4.3.2-1]. 5.0: [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.2-3].
#[test]
fn qos1_publish_completes_on_puback() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        let id = h.client.publish(t(1), publish("a/b", QoS::AtLeastOnce, "hi")).unwrap().unwrap();
        let sent = h.sent();
        let Packet::Publish(p) = &sent[0] else { panic!("{sent:?}") };
        assert_eq!((p.qos, p.packet_id, p.dup), (QoS::AtLeastOnce, Some(id), false));
        assert_eq!(h.client.inflight_len(), 1);
        h.feed(t(2), Packet::PubAck(PubAck::new(id)));
        assert_eq!(h.client.inflight_len(), 0);
        assert!(matches!(
            h.events()[..],
            [Event::Published { reason_code: ReasonCode::Success, .. }]
        ));
    }
}

/// The client as QoS 2 sender: PUBLISH with QoS 2 and DUP 0, PUBREL with the identifier on
/// PUBREC, done on PUBCOMP.
/// 3.1.1: [MQTT-4.3.3-1]. 5.0: [MQTT-4.3.3-1] [MQTT-4.3.3-2] [MQTT-4.3.3-3] [MQTT-4.3.3-4]
/// [MQTT-4.3.3-5].
#[test]
fn qos2_publish_runs_pubrec_pubrel_pubcomp() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        let id = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "x")).unwrap().unwrap();
        let _ = h.sent();
        h.feed(t(1), Packet::PubRec(PubAck::new(id)));
        assert_eq!(h.sent(), vec![Packet::PubRel(PubAck::new(id))]);
        assert!(h.events().is_empty());
        // A repeated PUBREC gets the PUBREL again.
        h.feed(t(1), Packet::PubRec(PubAck::new(id)));
        assert_eq!(h.sent(), vec![Packet::PubRel(PubAck::new(id))]);
        h.feed(t(2), Packet::PubComp(PubAck::new(id)));
        assert!(matches!(h.events()[..], [Event::Published { .. }]));
        assert_eq!(h.client.inflight_len(), 0);
    }
}

/// MQTT 5 only: a PUBREC of 0x80 or above ends the exchange, with no PUBREL and no resend
/// [MQTT-4.4.0-2].
#[test]
fn v5_pubrec_with_an_error_ends_the_exchange_without_pubrel() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    let id = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "x")).unwrap().unwrap();
    let _ = h.sent();
    let mut rec = PubAck::new(id);
    rec.reason_code = ReasonCode::NotAuthorized;
    h.feed(t(1), Packet::PubRec(rec));
    assert!(h.sent().is_empty());
    assert!(matches!(
        h.events()[..],
        [Event::Published { reason_code: ReasonCode::NotAuthorized, .. }]
    ));
}

/// The client as QoS 2 receiver: PUBREC, PUBREC again without a second delivery until PUBREL,
/// PUBCOMP, then the identifier is new.
/// 3.1.1: [MQTT-4.3.3-2] [MQTT-4.5.0-2]. 5.0: [MQTT-4.3.3-8] [MQTT-4.3.3-10] [MQTT-4.3.3-11]
/// [MQTT-4.3.3-12] [MQTT-4.5.0-2].
#[test]
fn incoming_qos2_is_delivered_once_until_pubrel() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        let mut p = publish("a", QoS::ExactlyOnce, "once");
        p.packet_id = Some(pid(9));
        h.feed(t(1), Packet::Publish(p.clone()));
        assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(9)))]);
        // The server resends (it lost our PUBREC): PUBREC again, no second delivery.
        p.dup = true;
        h.feed(t(2), Packet::Publish(p.clone()));
        assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(9)))]);
        let msgs = h.events().into_iter().filter(|e| matches!(e, Event::Message(_))).count();
        assert_eq!(msgs, 1);
        h.feed(t(3), Packet::PubRel(PubAck::new(pid(9))));
        assert_eq!(h.sent(), vec![Packet::PubComp(PubAck::new(pid(9)))]);
        // After release the id may carry a new message.
        p.dup = false;
        h.feed(t(4), Packet::Publish(p));
        assert_eq!(h.events().len(), 1);
    }
}

/// 3.1.1 only: the client as QoS 1 receiver acknowledges what it receives [MQTT-4.3.2-2]
/// [MQTT-4.5.0-2].
#[test]
fn incoming_qos1_is_delivered_and_acknowledged() {
    let mut h = Harness::new(ProtocolVersion::V3_1_1, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    let mut p = publish("s/1", QoS::AtLeastOnce, "22.5");
    p.packet_id = Some(pid(3));
    h.feed(t(1), Packet::Publish(p.clone()));
    assert_eq!(h.sent(), vec![Packet::PubAck(PubAck::new(pid(3)))]);
    assert_eq!(h.events(), vec![Event::Message(p)]);
}

/// MQTT 5 only: the send quota is the server's Receive Maximum; at zero, further publishes
/// wait, in order [MQTT-4.9.0-1] [MQTT-4.9.0-2] [MQTT-3.3.4-7].
#[test]
fn inflight_window_follows_the_servers_receive_maximum_and_keeps_order() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.receive_maximum = NonZeroU16::new(2);
    h.connect(t(0), ack);
    let ids: Vec<PacketId> = (0..4)
        .map(|i| {
            let p = publish("q", QoS::AtLeastOnce, ["0", "1", "2", "3"][i]);
            h.client.publish(t(1), p).unwrap().unwrap()
        })
        .collect();
    // A QoS 0 message behind the waiting ones waits too.
    h.client.publish(t(1), publish("q", QoS::AtMostOnce, "4")).unwrap();
    let first: Vec<_> = h.sent();
    assert_eq!(first.len(), 2);
    assert_eq!(h.client.inflight_len(), 2);
    assert_eq!(h.client.queued_len(), 3);
    h.feed(t(2), Packet::PubAck(PubAck::new(ids[0])));
    let next = h.sent();
    let Packet::Publish(p) = &next[0] else { panic!() };
    assert_eq!(&p.payload[..], b"2");
    h.feed(t(2), Packet::PubAck(PubAck::new(ids[1])));
    let payloads: Vec<Vec<u8>> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.payload.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(payloads, vec![b"3".to_vec(), b"4".to_vec()]);
}

#[test]
fn offline_queue_is_bounded_and_flushed_on_connect() {
    let config = ClientConfig { max_queued_messages: 2, ..ClientConfig::default() };
    let mut h = Harness::new(ProtocolVersion::V5, config);
    h.client.publish(t(0), publish("a", QoS::AtLeastOnce, "1")).unwrap();
    h.client.publish(t(0), publish("a", QoS::AtMostOnce, "2")).unwrap();
    assert_eq!(
        h.client.publish(t(0), publish("a", QoS::AtMostOnce, "3")),
        Err(ClientError::QueueFull)
    );
    assert!(h.sent().is_empty());
    let after = h.connect(t(1), accepted());
    assert_eq!(after.len(), 2);
    let bytes = ClientConfig { max_queued_bytes: 10, ..ClientConfig::default() };
    let mut h = Harness::new(ProtocolVersion::V5, bytes);
    assert_eq!(
        h.client.publish(t(0), publish("topic", QoS::AtMostOnce, "123456")),
        Err(ClientError::QueueFull)
    );
}

/// On resume the client resends PUBREL and unacknowledged PUBLISH packets in their original
/// order, with DUP set and their packet identifiers, and never the PUBLISH of a message it
/// released. 3.1.1: [MQTT-4.4.0-1] [MQTT-4.6.0-1] [MQTT-3.3.1-1].
/// 5.0: [MQTT-4.4.0-1] [MQTT-4.6.0-1] [MQTT-3.3.1-1] [MQTT-4.3.3-6].
#[test]
fn mqtt_4_4_0_1_session_resume_resends_publish_with_dup_and_pubrel_in_order() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        let mut opts = h.options();
        opts.clean_start = false;
        h.connect_with(t(0), opts.clone(), accepted());
        let a = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "a")).unwrap().unwrap();
        let b = h.client.publish(t(1), publish("b", QoS::AtLeastOnce, "b")).unwrap().unwrap();
        let _ = h.sent();
        h.feed(t(1), Packet::PubRec(PubAck::new(a)));
        let _ = h.sent();
        h.client.handle_closed(t(2));
        let _ = h.events();
        let resumed = ConnAck { session_present: true, ..ConnAck::default() };
        let sent = h.connect_with(t(3), opts, resumed);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0], Packet::PubRel(PubAck::new(a)));
        let Packet::Publish(p) = &sent[1] else { panic!("{sent:?}") };
        assert_eq!((p.packet_id, p.dup), (Some(b), true));
    }
}

#[test]
fn resume_after_drop_at_every_step_of_the_qos2_flow_completes_exactly_once() {
    // The connection drops after 0, 1 or 2 of the server's answers; the resumed session must
    // finish the flow with exactly one Published event and the right packets resent.
    for drop_after in 0..3 {
        let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
        let mut opts = h.options();
        opts.clean_start = false;
        h.connect_with(t(0), opts.clone(), accepted());
        let id = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "x")).unwrap().unwrap();
        let _ = h.sent();
        if drop_after >= 1 {
            h.feed(t(1), Packet::PubRec(PubAck::new(id)));
            let _ = h.sent();
        }
        h.client.handle_closed(t(2));
        let _ = h.events();
        let resumed = ConnAck { session_present: true, ..ConnAck::default() };
        let sent = h.connect_with(t(3), opts, resumed);
        let expected_first = if drop_after == 0 {
            matches!(&sent[..], [Packet::Publish(p)] if p.dup && p.packet_id == Some(id))
        } else {
            sent == vec![Packet::PubRel(PubAck::new(id))]
        };
        assert!(expected_first, "drop_after {drop_after}: {sent:?}");
        if drop_after == 0 {
            h.feed(t(3), Packet::PubRec(PubAck::new(id)));
            assert_eq!(h.sent(), vec![Packet::PubRel(PubAck::new(id))]);
        }
        h.feed(t(4), Packet::PubComp(PubAck::new(id)));
        let done = h.events().into_iter().filter(|e| matches!(e, Event::Published { .. })).count();
        assert_eq!(done, 1, "drop_after {drop_after}");
        assert_eq!(h.client.inflight_len(), 0);
    }
}

#[test]
fn without_session_present_subscriptions_are_restored_and_publishes_resent_as_new() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let sub = Subscription::new(TopicFilter::new("sensors/#").unwrap(), QoS::AtLeastOnce);
    let sid = h.client.subscribe(t(0), std::slice::from_ref(&sub)).unwrap();
    let _ = h.sent();
    h.feed(
        t(0),
        Packet::SubAck(SubAck {
            packet_id: sid,
            reason_codes: vec![ReasonCode::GrantedQoS1],
            properties: AckProperties::default(),
        }),
    );
    let id = h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "x")).unwrap().unwrap();
    let _ = h.sent();
    h.client.handle_closed(t(2));
    let _ = h.events();
    let sent = h.connect(t(3), accepted());
    assert_eq!(sent.len(), 2, "{sent:?}");
    let Packet::Subscribe(s) = &sent[0] else { panic!("{sent:?}") };
    assert_eq!(s.subscriptions, vec![sub]);
    let Packet::Publish(p) = &sent[1] else { panic!("{sent:?}") };
    assert_eq!((p.packet_id, p.dup), (Some(id), false));
}

/// MQTT 5 only: a client that asked for a new session and is told one is present closes.
#[test]
fn mqtt_3_2_2_4_session_present_after_clean_start_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.client.connect(t(0), h.options()).unwrap();
    let _ = h.sent();
    h.feed(t(0), Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }));
    let (ev, commands) = h.both();
    assert!(
        matches!(&ev[..], [Event::Disconnected(DisconnectReason::ProtocolViolation(_))]),
        "{ev:?}"
    );
    assert_eq!(commands, [Command::CloseTransport]);
}

#[test]
fn publish_beyond_the_servers_limits_fails_locally() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.maximum_qos = Some(QoS::AtLeastOnce);
    ack.properties.retain_available = Some(false);
    ack.properties.maximum_packet_size = std::num::NonZeroU32::new(64);
    ack.properties.wildcard_subscription_available = Some(false);
    ack.properties.shared_subscription_available = Some(false);
    h.connect(t(0), ack);
    assert_eq!(
        h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "x")),
        Err(ClientError::QoSNotSupported(QoS::AtLeastOnce))
    );
    let mut retained = publish("a", QoS::AtMostOnce, "x");
    retained.retain = true;
    assert_eq!(h.client.publish(t(1), retained), Err(ClientError::RetainNotSupported));
    let big = Publish::new(TopicName::new("a").unwrap(), vec![0u8; 100]);
    assert!(matches!(
        h.client.publish(t(1), big),
        Err(ClientError::Encode(EncodeError::PacketTooLarge { max: 64, .. }))
    ));
    let wild = Subscription::new(TopicFilter::new("a/+").unwrap(), QoS::AtMostOnce);
    assert_eq!(
        h.client.subscribe(t(1), &[wild]),
        Err(ClientError::WildcardSubscriptionsNotSupported)
    );
    let shared = Subscription::new(TopicFilter::new("$share/g/a").unwrap(), QoS::AtMostOnce);
    assert_eq!(
        h.client.subscribe(t(1), &[shared]),
        Err(ClientError::SharedSubscriptionsNotSupported)
    );
    assert!(h.sent().is_empty(), "nothing refused reached the wire");
}

#[test]
fn topic_aliases_explicit_then_alias_only() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.topic_alias_maximum = Some(4);
    h.connect(t(0), ack);
    let mut first = publish("very/long/topic/name", QoS::AtMostOnce, "1");
    first.properties.topic_alias = NonZeroU16::new(1);
    h.client.publish(t(1), first).unwrap();
    // The seed's form: an empty topic and the same alias.
    let mut second = Publish::new(TopicName::new("x").unwrap(), "2");
    second.topic = TopicName::new("very/long/topic/name").unwrap();
    second.properties.topic_alias = NonZeroU16::new(1);
    h.client.publish(t(1), second).unwrap();
    let sent = h.sent();
    let topics: Vec<&str> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.topic.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, vec!["very/long/topic/name", ""]);
    let mut too_big = publish("b", QoS::AtMostOnce, "x");
    too_big.properties.topic_alias = NonZeroU16::new(5);
    assert_eq!(h.client.publish(t(1), too_big), Err(ClientError::TopicAliasInvalid(5)));
}

#[test]
fn incoming_topic_alias_is_resolved_and_misuse_disconnects_with_0x94() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.topic_alias_maximum = Some(2);
    h.connect_with(t(0), opts, accepted());
    let _ = h.events();
    let mut p = publish("long/topic", QoS::AtMostOnce, "1");
    p.properties.topic_alias = NonZeroU16::new(2);
    h.feed(t(1), Packet::Publish(p));
    // PUBLISH, alias 2, empty topic: 30 len | 00 00 | props 03: 23 00 02 | payload "2"
    h.feed_raw(t(1), &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x02, b'2']);
    let topics: Vec<String> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Message(p) => p.topic.as_str().to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, vec!["long/topic", "long/topic"]);
    // Alias 3 is above our Topic Alias Maximum of 2: DISCONNECT 0x94.
    h.feed_raw(t(2), &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x03, b'3']);
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::TopicAliasInvalid))]);
}

#[test]
fn malformed_input_disconnects_with_the_decoders_reason_code() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    // PUBLISH with QoS 3.
    h.feed_raw(t(1), &[0x36, 0x03, 0x00, 0x01, b'a']);
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::MalformedPacket))]);
    let (ev, commands) = h.both();
    assert!(matches!(&ev[..], [Event::Disconnected(DisconnectReason::Decode(_))]));
    assert_eq!(commands, [Command::CloseTransport]);
}

#[test]
fn server_disconnect_is_surfaced_with_its_reason() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    let mut d = Disconnect::new(ReasonCode::SessionTakenOver);
    d.properties.reason_string = Some(MqttStr::from_static("another client took the id"));
    h.feed(t(1), Packet::Disconnect(d.clone()));
    assert_eq!(
        h.both(),
        (
            vec![Event::Disconnected(DisconnectReason::Server {
                reason_code: ReasonCode::SessionTakenOver,
                properties: d.properties,
            })],
            vec![Command::CloseTransport]
        )
    );
}

/// [MQTT-3.14.4-1] [MQTT-3.14.4-2]: after DISCONNECT the client sends nothing more and closes.
#[test]
fn disconnect_sends_disconnect_and_stops_reconnecting() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    let mut d = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
    d.properties.session_expiry_interval = Some(0);
    h.client.disconnect(t(1), d.clone());
    assert_eq!(h.sent(), vec![Packet::Disconnect(d)]);
    assert_eq!(
        h.both(),
        (vec![Event::Disconnected(DisconnectReason::Requested)], vec![Command::CloseTransport])
    );
    // Nothing more goes out: commands now only queue, and no timer fires a PINGREQ.
    h.client.publish(t(2), publish("a", QoS::AtMostOnce, "late")).unwrap();
    assert!(h.sent().is_empty());
    h.client.handle_closed(t(1));
    assert_eq!(h.client.poll_timeout(), None);
}

#[test]
fn subscribe_and_unsubscribe_report_their_acks() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        let f = TopicFilter::new("sensor/+/temperature").unwrap();
        let id =
            h.client.subscribe(t(0), &[Subscription::new(f.clone(), QoS::AtLeastOnce)]).unwrap();
        assert!(matches!(&h.sent()[..], [Packet::Subscribe(s)] if s.packet_id == id));
        h.feed(
            t(0),
            Packet::SubAck(SubAck {
                packet_id: id,
                reason_codes: vec![ReasonCode::GrantedQoS1],
                properties: AckProperties::default(),
            }),
        );
        assert_eq!(
            h.events(),
            vec![Event::Subscribed {
                packet_id: id,
                reason_codes: vec![ReasonCode::GrantedQoS1],
                restored: false
            }]
        );
        let uid = h.client.unsubscribe(t(0), &[f]).unwrap();
        let _ = h.sent();
        let codes = if v.is_v5() { vec![ReasonCode::Success] } else { vec![] };
        h.feed(
            t(0),
            Packet::UnsubAck(UnsubAck {
                packet_id: uid,
                reason_codes: codes.clone(),
                properties: AckProperties::default(),
            }),
        );
        assert_eq!(h.events(), vec![Event::Unsubscribed { packet_id: uid, reason_codes: codes }]);
    }
}

#[test]
fn packet_ids_are_never_reused_while_in_flight() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let id = h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "x")).unwrap().unwrap();
        assert!(ids.insert(id), "id {id} reused");
    }
    assert_eq!(h.client.inflight_len(), 300);
}

/// 3.1.1 only: an empty client id needs Clean Session.
#[test]
fn mqtt_3_1_3_7_empty_client_id_in_v311_needs_clean_session() {
    let mut h = Harness::new(ProtocolVersion::V3_1_1, ClientConfig::default());
    let mut opts = h.options();
    opts.client_id = MqttStr::default();
    opts.clean_start = false;
    assert_eq!(h.client.connect(t(0), opts), Err(ClientError::EmptyClientIdNeedsCleanStart));
}

#[test]
fn assigned_client_identifier_is_used_on_reconnect() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.client_id = MqttStr::default();
    let mut ack = accepted();
    ack.properties.assigned_client_identifier = Some(MqttStr::from_static("auto-17"));
    h.connect_with(t(0), opts, ack);
    assert_eq!(h.client.client_id().map(MqttStr::as_str), Some("auto-17"));
    h.client.handle_closed(t(1));
    h.client.reconnect(t(2)).unwrap();
    let sent = h.sent();
    assert!(matches!(&sent[..], [Packet::Connect(c)] if c.client_id == "auto-17"), "{sent:?}");
}

#[test]
fn same_inputs_give_the_same_outputs() {
    let run = || {
        let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
        h.connect(t(0), accepted());
        for i in 0..20u64 {
            let _ = h.client.publish(t(i), publish("a/b", QoS::AtLeastOnce, "p"));
            h.client.handle_timeout(t(i * 3));
        }
        let mut bytes = Vec::new();
        while let Some(b) = h.client.poll_transmit(7) {
            bytes.extend_from_slice(&b);
        }
        h.client.handle_closed(t(70));
        assert!(!bytes.is_empty());
        (bytes, h.events(), h.client.poll_timeout())
    };
    assert_eq!(run(), run());
}

#[test]
fn automatic_topic_aliases_reuse_the_least_recently_used() {
    let config = ClientConfig { auto_topic_alias: true, ..ClientConfig::default() };
    let mut h = Harness::new(ProtocolVersion::V5, config);
    let mut ack = accepted();
    ack.properties.topic_alias_maximum = Some(2);
    h.connect(t(0), ack);
    for topic in ["a/1", "b/2", "a/1", "c/3", "b/2", "a/1"] {
        h.client.publish(t(1), publish(topic, QoS::AtMostOnce, "x")).unwrap();
    }
    let wire: Vec<(String, u16)> = h
        .sent()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => {
                (p.topic.as_str().to_string(), p.properties.topic_alias.unwrap().get())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [
        ("a/1", 1), // bind 1
        ("b/2", 2), // bind 2
        ("", 1),    // a/1 known
        ("c/3", 2), // evicts b/2, the least recently used
        ("b/2", 1), // evicts a/1
        ("a/1", 2), // evicts c/3
    ];
    let expected: Vec<(String, u16)> = expected.iter().map(|(t, a)| (t.to_string(), *a)).collect();
    assert_eq!(wire, expected);
}

#[test]
fn automatic_topic_aliases_are_off_when_the_server_allows_none() {
    let config = ClientConfig { auto_topic_alias: true, ..ClientConfig::default() };
    let mut h = Harness::new(ProtocolVersion::V5, config);
    h.connect(t(0), accepted());
    h.client.publish(t(1), publish("a/1", QoS::AtMostOnce, "x")).unwrap();
    let sent = h.sent();
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.properties.topic_alias.is_none()));
}

#[test]
fn aliases_are_rebound_after_a_reconnect() {
    // Alias mappings last one connection ([MQTT-3.3.2-7]): a queued alias-only publish goes out
    // with its full topic on the next connection.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.topic_alias_maximum = Some(4);
    h.connect(t(0), ack.clone());
    let mut first = publish("long/topic", QoS::AtMostOnce, "1");
    first.properties.topic_alias = NonZeroU16::new(3);
    h.client.publish(t(1), first).unwrap();
    let _ = h.sent();
    h.client.handle_closed(t(2));
    let mut again = Publish::new(TopicName::new("ignored").unwrap(), "2");
    again.properties.topic_alias = NonZeroU16::new(3);
    again.topic = TopicName::new("long/topic").unwrap();
    h.client.publish(t(2), again).unwrap();
    let sent = h.connect(t(3), ack);
    assert!(
        matches!(&sent[..], [Packet::Publish(p)] if p.topic.as_str() == "long/topic"),
        "{sent:?}"
    );
}

fn auth(code: ReasonCode, method: &'static str, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(MqttStr::from_static(method)),
            authentication_data: Some(Bytes::from_static(data)),
            ..AuthProperties::default()
        },
    })
}

#[test]
fn enhanced_authentication_exchange_before_connack() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.authentication_method = Some(MqttStr::from_static("SCRAM-SHA-1"));
    opts.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    h.client.connect(t(0), opts).unwrap();
    let _ = h.sent();
    h.feed(t(0), auth(ReasonCode::ContinueAuthentication, "SCRAM-SHA-1", b"server-first"));
    let ev = h.events();
    let [Event::Auth { reason_code: ReasonCode::ContinueAuthentication, properties }] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(properties.authentication_data.as_deref(), Some(&b"server-first"[..]));
    h.client.authenticate(t(0), Some(Bytes::from_static(b"client-final"))).unwrap();
    assert_eq!(
        h.sent(),
        vec![auth(ReasonCode::ContinueAuthentication, "SCRAM-SHA-1", b"client-final")]
    );
    h.feed(t(1), Packet::ConnAck(accepted()));
    assert!(h.client.is_connected());
    // Re-authentication on the live connection.
    h.client.reauthenticate(t(2), Some(Bytes::from_static(b"again"))).unwrap();
    assert_eq!(h.sent(), vec![auth(ReasonCode::ReAuthenticate, "SCRAM-SHA-1", b"again")]);
    h.feed(t(2), auth(ReasonCode::Success, "SCRAM-SHA-1", b"ok"));
    assert!(matches!(
        h.events().last(),
        Some(Event::Auth { reason_code: ReasonCode::Success, .. })
    ));
}

/// MQTT 5 only: without an Authentication Method the client sends no AUTH [MQTT-4.12.0-7], and
/// an AUTH from the server is a protocol error [MQTT-4.12.0-6].
#[test]
fn mqtt_4_12_0_6_auth_without_a_method_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    assert_eq!(h.client.reauthenticate(t(1), None), Err(ClientError::NoAuthenticationMethod));
    h.feed(t(1), auth(ReasonCode::ContinueAuthentication, "X", b""));
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::ProtocolError))]);
}

/// MQTT 5 only: an AUTH with another method than the client's is a protocol error.
#[test]
fn mqtt_4_12_0_5_auth_with_another_method_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.authentication_method = Some(MqttStr::from_static("A"));
    h.client.connect(t(0), opts).unwrap();
    let _ = h.sent();
    h.feed(t(0), auth(ReasonCode::ContinueAuthentication, "B", b""));
    let (ev, commands) = h.both();
    assert!(
        matches!(&ev[..], [Event::Disconnected(DisconnectReason::ProtocolViolation(_))]),
        "{ev:?}"
    );
    assert_eq!(commands, [Command::CloseTransport]);
}

#[test]
fn reconnect_options_can_be_changed_on_a_live_client() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    h.client.set_reconnect_options(ternmq_core::client::ReconnectOptions {
        initial_delay: Duration::from_secs(5),
        jitter: false,
        ..Default::default()
    });
    h.client.handle_closed(t(1));
    assert_eq!(h.client.poll_timeout(), Some(t(6)));
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    h.client.set_reconnect_options(ternmq_core::client::ReconnectOptions {
        enable: false,
        ..Default::default()
    });
    h.client.handle_closed(t(1));
    assert_eq!(h.client.poll_timeout(), None, "reconnect disabled");
}

/// [MQTT-3.3.4-6]: a PUBLISH from a client carries no Subscription Identifier. MQTT 5 only.
#[test]
fn mqtt_3_3_4_6_client_refuses_subscription_identifiers_in_publish() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let mut p = publish("a", QoS::AtMostOnce, "x");
    p.properties.subscription_identifiers.push(std::num::NonZeroU32::new(3).unwrap());
    assert_eq!(h.client.publish(t(1), p), Err(ClientError::SubscriptionIdentifierInPublish));
    assert!(h.sent().is_empty());
}

#[test]
fn packet_ids_of_queued_publishes_are_never_handed_out_again() {
    // Offline, every one of the 65,535 ids ends up held by a queued publish; the next one must
    // be refused, not given an id that is still queued.
    let config = ClientConfig {
        max_queued_messages: 70_000,
        max_queued_bytes: usize::MAX,
        ..ClientConfig::default()
    };
    let mut h = Harness::new(ProtocolVersion::V5, config);
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..u16::MAX {
        let id = h.client.publish(t(0), publish("a", QoS::AtLeastOnce, "x")).unwrap().unwrap();
        assert!(ids.insert(id), "id {id} reused while queued");
    }
    assert_eq!(
        h.client.publish(t(0), publish("a", QoS::AtLeastOnce, "x")),
        Err(ClientError::PacketIdsExhausted)
    );
    // QoS 0 needs no id and still queues.
    assert_eq!(h.client.publish(t(0), publish("a", QoS::AtMostOnce, "x")), Ok(None));
}

// ---------------------------------------------------------------- packet identifiers

/// Each new SUBSCRIBE, UNSUBSCRIBE and QoS 1 or 2 PUBLISH gets an identifier no other exchange
/// holds; an identifier is free again once its acknowledgement is processed, and one still in
/// flight is skipped when the counter wraps. 3.1.1: [MQTT-2.3.1-2] [MQTT-2.3.1-3].
/// 5.0: [MQTT-2.2.1-3].
#[test]
fn packet_ids_are_unused_and_free_again_after_their_acknowledgement() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        // Four kinds of exchange in flight at once: four different identifiers.
        let held = h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "held")).unwrap().unwrap();
        let q2 = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "x")).unwrap().unwrap();
        let f = TopicFilter::new("f").unwrap();
        let sub =
            h.client.subscribe(t(1), &[Subscription::new(f.clone(), QoS::AtMostOnce)]).unwrap();
        let unsub = h.client.unsubscribe(t(1), std::slice::from_ref(&f)).unwrap();
        let ids = std::collections::BTreeSet::from([held, q2, sub, unsub]);
        assert_eq!(ids.len(), 4, "{ids:?}");
        let _ = h.sent();
        // Complete every exchange but the first, each with its own acknowledgement.
        h.feed(t(2), Packet::PubRec(PubAck::new(q2)));
        h.feed(t(2), Packet::PubComp(PubAck::new(q2)));
        let suback = SubAck {
            packet_id: sub,
            reason_codes: vec![ReasonCode::GrantedQoS1],
            properties: AckProperties::default(),
        };
        h.feed(t(2), Packet::SubAck(suback));
        let codes = if v.is_v5() { vec![ReasonCode::Success] } else { vec![] };
        let unsuback = UnsubAck {
            packet_id: unsub,
            reason_codes: codes,
            properties: AckProperties::default(),
        };
        h.feed(t(2), Packet::UnsubAck(unsuback));
        let _ = h.sent();
        // Run the counter all the way round, each publish acknowledged at once: every id but
        // the held one comes back into use.
        let mut last = unsub;
        loop {
            let id = h.client.publish(t(3), publish("a", QoS::AtLeastOnce, "y")).unwrap().unwrap();
            assert_ne!(id, held, "id {held} handed out while still in flight");
            let wrapped = id <= last;
            last = id;
            let mut ack = BytesMut::new();
            Packet::PubAck(PubAck::new(id)).encode(v, &mut ack).unwrap();
            h.client.handle_bytes(t(3), &mut ack);
            if wrapped {
                // Past 65535 the first free id is the lowest one not held.
                let lowest_free = (1..=u16::MAX).map(pid).find(|i| *i != held).unwrap();
                assert_eq!(id, lowest_free);
                break;
            }
        }
        assert_eq!(h.client.inflight_len(), 1);
        let _ = h.sent();
        // A re-send keeps its identifier.
        h.client.handle_closed(t(4));
        let mut opts = h.options();
        opts.clean_start = false;
        let resumed = ConnAck { session_present: true, ..ConnAck::default() };
        let _ = h.events();
        let sent = h.connect_with(t(5), opts, resumed);
        assert!(
            matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == Some(held) && p.dup),
            "{sent:?}"
        );
    }
}

// ---------------------------------------------------------------- sessions

/// Session state outlives the connection and the application's DISCONNECT: a client that
/// connects again under the same client id with Clean Start 0 and gets Session Present 1 goes on
/// where it stopped, resending its unacknowledged PUBLISH and still holding the identifier of a
/// QoS 2 message it received and that was not released. 3.1.1: [MQTT-3.1.2-4] [MQTT-3.1.3-2].
/// 5.0: [MQTT-3.1.2-23] [MQTT-3.1.3-2].
#[test]
fn session_state_outlives_the_connection_under_the_same_client_id() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        let mut opts = h.options();
        opts.clean_start = false;
        if v.is_v5() {
            opts.properties.session_expiry_interval = Some(300);
        }
        h.connect_with(t(0), opts.clone(), accepted());
        let out = h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "out")).unwrap().unwrap();
        let mut incoming = publish("b", QoS::ExactlyOnce, "in");
        incoming.packet_id = Some(pid(5));
        h.feed(t(1), Packet::Publish(incoming.clone()));
        let _ = h.sent();
        let _ = h.events();
        h.client.disconnect(t(2), Disconnect::default());
        let _ = h.sent();
        h.client.handle_closed(t(2));
        assert_eq!(h.client.inflight_len(), 1, "the session is kept after DISCONNECT");
        // A new connection: the CONNECT names the same session.
        h.client.connect(t(3), opts.clone()).unwrap();
        let sent = h.sent();
        let [Packet::Connect(c)] = &sent[..] else { panic!("{sent:?}") };
        assert_eq!((c.client_id.as_str(), c.clean_start), ("c1", false));
        let resumed = ConnAck { session_present: true, ..ConnAck::default() };
        h.feed(t(3), Packet::ConnAck(resumed));
        let sent = h.sent();
        assert!(
            matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == Some(out) && p.dup),
            "{sent:?}"
        );
        // The server sends the unreleased QoS 2 message again: a duplicate, not delivered.
        incoming.dup = true;
        h.feed(t(4), Packet::Publish(incoming));
        assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(5)))]);
        assert!(!h.events().iter().any(|e| matches!(e, Event::Message(_))));
    }
}

/// Builds session state on a first connection (a QoS 2 message received and not released, a
/// QoS 2 message sent and at PUBREL, a QoS 1 message unacknowledged), loses the transport, and
/// connects again with `clean_start` to a server that has no session. Returns what the client
/// sent after CONNACK and the id of the unacknowledged QoS 1 message.
fn new_session_after_state(v: ProtocolVersion, clean_start: bool) -> (Harness, Vec<Packet>, u16) {
    let mut h = Harness::new(v, ClientConfig::default());
    let mut opts = h.options();
    opts.clean_start = clean_start;
    h.connect_with(t(0), opts.clone(), accepted());
    let mut incoming = publish("b", QoS::ExactlyOnce, "first");
    incoming.packet_id = Some(pid(5));
    h.feed(t(1), Packet::Publish(incoming));
    let released = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "r")).unwrap().unwrap();
    let unacked = h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "u")).unwrap().unwrap();
    h.feed(t(1), Packet::PubRec(PubAck::new(released)));
    let _ = h.sent();
    let _ = h.events();
    h.client.handle_closed(t(2));
    let _ = h.events();
    let sent = h.connect_with(t(3), opts, accepted());
    (h, sent, unacked.get())
}

/// The old session's exchanges are over on the new one: no PUBREL and no DUP re-delivery; the
/// unacknowledged message is published again as a new one (DUP 0), and a QoS 2 message from
/// the server under an identifier the old session held is a new message.
fn assert_old_session_discarded(h: &mut Harness, sent: &[Packet], unacked: u16) {
    assert!(!sent.iter().any(|p| matches!(p, Packet::PubRel(_))), "{sent:?}");
    let [Packet::Publish(p)] = sent else { panic!("{sent:?}") };
    assert!(!p.dup, "a new session has nothing to re-deliver: {p:?}");
    assert_eq!(p.packet_id.map(PacketId::get), Some(unacked));
    let mut fresh = publish("b", QoS::ExactlyOnce, "second");
    fresh.packet_id = Some(pid(5));
    h.feed(t(4), Packet::Publish(fresh.clone()));
    assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(5)))]);
    let messages: Vec<Event> =
        h.events().into_iter().filter(|e| matches!(e, Event::Message(_))).collect();
    assert_eq!(messages, vec![Event::Message(fresh)]);
}

/// Clean Start 1 discards the client's session and starts a new one.
/// 3.1.1: [MQTT-3.1.2-6]. 5.0: [MQTT-3.1.2-4].
#[test]
fn clean_start_discards_the_clients_session() {
    for v in both() {
        let (mut h, sent, unacked) = new_session_after_state(v, true);
        assert_old_session_discarded(&mut h, &sent, unacked);
    }
}

/// MQTT 5 only: a client with session state that is told Session Present 0 discards that
/// state [MQTT-3.2.2-5].
#[test]
fn mqtt_3_2_2_5_session_present_0_discards_the_clients_state() {
    let (mut h, sent, unacked) = new_session_after_state(ProtocolVersion::V5, false);
    assert_old_session_discarded(&mut h, &sent, unacked);
}

// ---------------------------------------------------------------- receiving

/// The client answers each PUBLISH as its QoS says: nothing for QoS 0, PUBACK for QoS 1,
/// PUBREC for QoS 2, each with the PUBLISH's identifier.
#[test]
fn mqtt_3_3_4_1_the_client_answers_each_publish_by_its_qos() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        h.feed(t(1), Packet::Publish(publish("a", QoS::AtMostOnce, "0")));
        assert!(h.sent().is_empty());
        let mut p1 = publish("a", QoS::AtLeastOnce, "1");
        p1.packet_id = Some(pid(7));
        h.feed(t(1), Packet::Publish(p1));
        assert_eq!(h.sent(), vec![Packet::PubAck(PubAck::new(pid(7)))]);
        let mut p2 = publish("a", QoS::ExactlyOnce, "2");
        p2.packet_id = Some(pid(8));
        h.feed(t(1), Packet::Publish(p2));
        assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(8)))]);
        let delivered = h.events().iter().filter(|e| matches!(e, Event::Message(_))).count();
        assert_eq!(delivered, 3);
    }
}

/// MQTT 5 only: the server may use every Topic Alias from 1 to the Topic Alias Maximum the
/// client sent, to bind a topic and then in place of it [MQTT-3.3.2-10].
#[test]
fn mqtt_3_3_2_10_every_alias_up_to_the_clients_maximum_is_accepted() {
    const MAX: u16 = 10;
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.topic_alias_maximum = Some(MAX);
    h.connect_with(t(0), opts, accepted());
    let _ = h.events();
    for alias in 1..=MAX {
        let mut p = publish(&format!("t/{alias}"), QoS::AtMostOnce, "bind");
        p.properties.topic_alias = NonZeroU16::new(alias);
        h.feed(t(1), Packet::Publish(p));
    }
    for alias in (1..=MAX).rev() {
        // PUBLISH QoS 0, empty topic, Topic Alias `alias`, payload "u".
        let [hi, lo] = alias.to_be_bytes();
        h.feed_raw(t(2), &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, hi, lo, b'u']);
    }
    assert!(h.sent().is_empty(), "no DISCONNECT");
    assert!(h.client.is_connected());
    let topics: Vec<String> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Message(p) => p.topic.as_str().to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    let bound = (1..=MAX).map(|a| format!("t/{a}"));
    let used = (1..=MAX).rev().map(|a| format!("t/{a}"));
    assert_eq!(topics, bound.chain(used).collect::<Vec<_>>());
}

// ---------------------------------------------------------------- the server's limits

/// Connects a v5 client whose CONNACK carries `limits`, after `queued` were published offline;
/// returns the harness and what went out after the CONNACK.
fn connect_after_queueing(
    limits: ConnAckProperties,
    queued: Vec<Publish>,
) -> (Harness, Vec<Packet>) {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    for p in queued {
        h.client.publish(t(0), p).unwrap();
    }
    let sent = h.connect(t(1), ConnAck { properties: limits, ..ConnAck::default() });
    (h, sent)
}

fn published_codes(events: Vec<Event>) -> Vec<ReasonCode> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Published { reason_code, .. } => Some(reason_code),
            _ => None,
        })
        .collect()
}

/// MQTT 5 only: no PUBLISH above the server's Maximum QoS goes out, neither one made while
/// connected (refused at once) nor one queued before the CONNACK said so, nor one in flight on
/// a resumed session (reported as QoS not supported, never sent) [MQTT-3.2.2-11].
#[test]
fn mqtt_3_2_2_11_no_publish_above_the_servers_maximum_qos() {
    for max in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let limits = ConnAckProperties { maximum_qos: Some(max), ..ConnAckProperties::default() };
        let queued = vec![
            publish("a", QoS::ExactlyOnce, "2"),
            publish("a", QoS::AtLeastOnce, "1"),
            publish("a", QoS::AtMostOnce, "0"),
        ];
        let (mut h, sent) = connect_after_queueing(limits, queued);
        let qos: Vec<QoS> = sent
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.qos,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(qos.iter().all(|q| *q <= max), "{max:?}: {sent:?}");
        let expected_sent = if max == QoS::AtMostOnce { 1 } else { 2 };
        assert_eq!(qos.len(), expected_sent, "{sent:?}");
        let refused = published_codes(h.events());
        assert_eq!(refused.len(), 3 - expected_sent, "{refused:?}");
        assert!(refused.iter().all(|c| *c == ReasonCode::QoSNotSupported), "{refused:?}");
        assert_eq!(
            h.client.publish(t(2), publish("a", QoS::ExactlyOnce, "x")),
            Err(ClientError::QoSNotSupported(max))
        );
        assert!(h.sent().is_empty());
    }
    // A resumed session whose server now allows less: the QoS 2 message in flight is not sent
    // again.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.clean_start = false;
    h.connect_with(t(0), opts.clone(), accepted());
    let id = h.client.publish(t(1), publish("a", QoS::ExactlyOnce, "2")).unwrap().unwrap();
    let _ = h.sent();
    h.client.handle_closed(t(2));
    let _ = h.events();
    let mut resumed = ConnAck { session_present: true, ..ConnAck::default() };
    resumed.properties.maximum_qos = Some(QoS::AtLeastOnce);
    assert!(h.connect_with(t(3), opts, resumed).is_empty());
    let done: Vec<(PacketId, ReasonCode)> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Published { packet_id, reason_code, .. } => Some((packet_id, reason_code)),
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![(id, ReasonCode::QoSNotSupported)]);
    assert_eq!(h.client.inflight_len(), 0);
}

/// MQTT 5 only: with Retain Available 0 no PUBLISH goes out with RETAIN set, neither one made
/// while connected (refused at once) nor one queued before the CONNACK said so (reported as
/// Retain not supported, or for QoS 0 dropped, never sent) [MQTT-3.2.2-14].
#[test]
fn mqtt_3_2_2_14_no_retain_when_the_server_has_no_retain() {
    let limits =
        ConnAckProperties { retain_available: Some(false), ..ConnAckProperties::default() };
    let retained = |qos, payload| Publish { retain: true, ..publish("a", qos, payload) };
    let queued = vec![
        retained(QoS::AtLeastOnce, "r1"),
        retained(QoS::AtMostOnce, "r0"),
        publish("a", QoS::AtLeastOnce, "plain"),
    ];
    let (mut h, sent) = connect_after_queueing(limits, queued);
    let [Packet::Publish(p)] = &sent[..] else { panic!("{sent:?}") };
    assert_eq!((&p.payload[..], p.retain), (&b"plain"[..], false));
    assert_eq!(published_codes(h.events()), vec![ReasonCode::RetainNotSupported]);
    assert_eq!(h.client.qos0_sent(), 1, "the QoS 0 one left the queue");
    assert_eq!(
        h.client.publish(t(2), retained(QoS::AtMostOnce, "late")),
        Err(ClientError::RetainNotSupported)
    );
    assert!(h.sent().is_empty());
}

/// MQTT 5 only: no Topic Alias above the server's Topic Alias Maximum goes out: one given while
/// connected is refused, one queued before the CONNACK goes without its alias, and the maximum
/// itself is used [MQTT-3.2.2-17].
#[test]
fn mqtt_3_2_2_17_no_topic_alias_above_the_servers_maximum() {
    let limits = ConnAckProperties { topic_alias_maximum: Some(2), ..ConnAckProperties::default() };
    let aliased = |alias: u16, payload| {
        let mut p = publish("long/topic", QoS::AtMostOnce, payload);
        p.properties.topic_alias = NonZeroU16::new(alias);
        p
    };
    let (mut h, sent) = connect_after_queueing(limits, vec![aliased(3, "q3"), aliased(2, "q2")]);
    let wire: Vec<(&str, Option<u16>)> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.as_str(), p.properties.topic_alias.map(NonZeroU16::get)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(wire, vec![("long/topic", None), ("long/topic", Some(2))]);
    assert_eq!(h.client.publish(t(2), aliased(3, "x")), Err(ClientError::TopicAliasInvalid(3)));
    assert!(h.sent().is_empty());
}

/// MQTT 5 only: when the server's Topic Alias Maximum is absent or 0 the client sends no Topic
/// Alias at all [MQTT-3.2.2-18].
#[test]
fn mqtt_3_2_2_18_no_topic_alias_when_the_server_allows_none() {
    for max in [None, Some(0)] {
        let limits = ConnAckProperties { topic_alias_maximum: max, ..ConnAckProperties::default() };
        let mut queued = publish("long/topic", QoS::AtLeastOnce, "q");
        queued.properties.topic_alias = NonZeroU16::new(1);
        let (mut h, sent) = connect_after_queueing(limits, vec![queued.clone()]);
        let [Packet::Publish(p)] = &sent[..] else { panic!("{sent:?}") };
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("long/topic", None));
        assert_eq!(h.client.publish(t(2), queued), Err(ClientError::TopicAliasInvalid(1)));
        assert!(h.sent().is_empty());
        // Nor with automatic aliases.
        let config = ClientConfig { auto_topic_alias: true, ..ClientConfig::default() };
        let mut h = Harness::new(ProtocolVersion::V5, config);
        let limits = ConnAckProperties { topic_alias_maximum: max, ..ConnAckProperties::default() };
        h.connect(t(0), ConnAck { properties: limits, ..ConnAck::default() });
        for _ in 0..2 {
            h.client.publish(t(1), publish("long/topic", QoS::AtMostOnce, "x")).unwrap();
        }
        let sent = h.sent();
        assert_eq!(sent.len(), 2);
        assert!(
            sent.iter()
                .all(|p| matches!(p, Packet::Publish(p) if p.properties.topic_alias.is_none())),
            "{sent:?}"
        );
    }
}

// ---------------------------------------------------------------- flow control and AUTH

/// MQTT 5 only: with the send quota used up, only PUBLISH waits; SUBSCRIBE, UNSUBSCRIBE, the
/// answers to the server's publishes, PINGREQ and DISCONNECT go out at once [MQTT-3.3.4-8].
#[test]
fn mqtt_3_3_4_8_a_spent_quota_holds_back_only_publish() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.receive_maximum = NonZeroU16::new(1);
    h.connect(t(0), ack);
    h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "in flight")).unwrap();
    assert_eq!(h.sent().len(), 1);
    h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "waits")).unwrap();
    assert!(h.sent().is_empty(), "the quota is spent");
    let f = TopicFilter::new("f").unwrap();
    h.client.subscribe(t(2), &[Subscription::new(f.clone(), QoS::AtLeastOnce)]).unwrap();
    assert!(matches!(&h.sent()[..], [Packet::Subscribe(_)]));
    h.client.unsubscribe(t(2), &[f]).unwrap();
    assert!(matches!(&h.sent()[..], [Packet::Unsubscribe(_)]));
    let mut q1 = publish("b", QoS::AtLeastOnce, "1");
    q1.packet_id = Some(pid(40));
    h.feed(t(2), Packet::Publish(q1));
    assert_eq!(h.sent(), vec![Packet::PubAck(PubAck::new(pid(40)))]);
    let mut q2 = publish("b", QoS::ExactlyOnce, "2");
    q2.packet_id = Some(pid(41));
    h.feed(t(2), Packet::Publish(q2));
    assert_eq!(h.sent(), vec![Packet::PubRec(PubAck::new(pid(41)))]);
    h.feed(t(2), Packet::PubRel(PubAck::new(pid(41))));
    assert_eq!(h.sent(), vec![Packet::PubComp(PubAck::new(pid(41)))]);
    h.client.handle_timeout(t(12));
    assert_eq!(h.sent(), vec![Packet::PingReq]);
    assert_eq!(h.client.queued_len(), 1, "the second PUBLISH still waits");
    h.client.disconnect(t(13), Disconnect::default());
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::default())]);
}

/// MQTT 5 only: a client that set an Authentication Method sends nothing but AUTH (or
/// DISCONNECT) until the CONNACK: publishes wait, subscriptions are refused, and no PINGREQ
/// goes out [MQTT-3.1.2-30].
#[test]
fn mqtt_3_1_2_30_only_auth_or_disconnect_before_connack() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.authentication_method = Some(MqttStr::from_static("SCRAM-SHA-1"));
    h.client.connect(t(0), opts.clone()).unwrap();
    assert!(matches!(&h.sent()[..], [Packet::Connect(_)]));
    h.client.publish(t(1), publish("a", QoS::AtMostOnce, "0")).unwrap();
    h.client.publish(t(1), publish("a", QoS::AtLeastOnce, "1")).unwrap();
    let f = TopicFilter::new("f").unwrap();
    assert_eq!(
        h.client.subscribe(t(1), &[Subscription::new(f.clone(), QoS::AtMostOnce)]),
        Err(ClientError::NotConnected)
    );
    assert_eq!(h.client.unsubscribe(t(1), &[f]), Err(ClientError::NotConnected));
    assert_eq!(h.client.reauthenticate(t(1), None), Err(ClientError::NotConnected));
    // Past the Keep Alive: still no PINGREQ.
    h.client.handle_timeout(t(11));
    assert!(h.sent().is_empty());
    h.feed(t(12), auth(ReasonCode::ContinueAuthentication, "SCRAM-SHA-1", b"challenge"));
    h.client.authenticate(t(12), Some(Bytes::from_static(b"response"))).unwrap();
    assert_eq!(
        h.sent(),
        vec![auth(ReasonCode::ContinueAuthentication, "SCRAM-SHA-1", b"response")]
    );
    // The CONNACK lets the waiting publishes out.
    h.feed(t(13), Packet::ConnAck(accepted()));
    assert_eq!(h.sent().len(), 2);
    // DISCONNECT is allowed before the CONNACK too.
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.client.connect(t(0), opts).unwrap();
    let _ = h.sent();
    h.client.publish(t(1), publish("a", QoS::AtMostOnce, "0")).unwrap();
    h.client.disconnect(t(1), Disconnect::default());
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::default())]);
}

/// An acknowledgement of the wrong kind for an identifier in flight is a protocol error,
/// whichever kind it is (MQTT 5: DISCONNECT 0x82; 3.1.1: the connection is closed); one for an
/// identifier not in flight is not.
#[test]
fn the_wrong_acknowledgement_for_an_identifier_in_flight_is_a_protocol_error() {
    type Ack = fn(PubAck) -> Packet;
    let cases: [(QoS, bool, Ack, &str); 5] = [
        (QoS::AtLeastOnce, false, Packet::PubRec, "PUBREC for QoS 1"),
        (QoS::AtLeastOnce, false, Packet::PubComp, "PUBCOMP for QoS 1"),
        (QoS::ExactlyOnce, false, Packet::PubAck, "PUBACK for QoS 2"),
        (QoS::ExactlyOnce, false, Packet::PubComp, "PUBCOMP before PUBREC"),
        (QoS::ExactlyOnce, true, Packet::PubAck, "PUBACK after PUBREC"),
    ];
    for v in both() {
        for (qos, received, wrong, what) in cases {
            let mut h = Harness::new(v, ClientConfig::default());
            h.connect(t(0), accepted());
            let _ = h.events();
            let id = h.client.publish(t(1), publish("a", qos, "x")).unwrap().unwrap();
            let _ = h.sent();
            if received {
                h.feed(t(1), Packet::PubRec(PubAck::new(id)));
                let _ = h.sent();
            }
            h.feed(t(2), wrong(PubAck::new(id)));
            let sent = h.sent();
            let (ev, commands) = h.both();
            assert!(
                matches!(
                    &ev[..],
                    [Event::Disconnected(DisconnectReason::ProtocolViolation(
                        ReasonCode::ProtocolError
                    ))]
                ),
                "{v:?} {what}: {ev:?}"
            );
            assert_eq!(commands, [Command::CloseTransport]);
            let disconnect = sent.iter().find_map(|p| match p {
                Packet::Disconnect(d) => Some(d.reason_code),
                _ => None,
            });
            let expected = (v == ProtocolVersion::V5).then_some(ReasonCode::ProtocolError);
            assert_eq!(disconnect, expected, "{v:?} {what}: {sent:?}");
        }
        // Not in flight: ignored.
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        h.feed(t(1), Packet::PubAck(PubAck::new(pid(7))));
        h.feed(t(1), Packet::PubComp(PubAck::new(pid(8))));
        assert!(h.events().is_empty(), "{v:?}");
        assert!(h.sent().is_empty(), "{v:?}");
    }
}

/// MQTT 5: UNSUBSCRIBE carries the application's User Properties; 3.1.1 has no properties, so
/// the same call sends none.
#[test]
fn unsubscribe_with_sends_its_user_properties_in_v5_only() {
    for v in both() {
        let mut h = Harness::new(v, ClientConfig::default());
        h.connect(t(0), accepted());
        let _ = h.events();
        let mut props = UnsubscribeProperties::default();
        props.user_properties.push((MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap()));
        let f = TopicFilter::new("a/#").unwrap();
        h.client.unsubscribe_with(t(1), &[f], props).unwrap();
        let sent = h.sent();
        let Packet::Unsubscribe(u) = &sent[0] else { panic!("{sent:?}") };
        assert_eq!(u.properties.user_properties.len(), usize::from(v == ProtocolVersion::V5));
    }
}

fn relay_config() -> ClientConfig {
    ClientConfig { manual_acks: true, ..ClientConfig::default() }
}

fn with_id(mut p: Publish, id: u16) -> Publish {
    p.packet_id = Some(pid(id));
    p
}

#[test]
fn relay_mode_acknowledges_received_messages_only_when_told() {
    for v in both() {
        let mut h = Harness::new(v, relay_config());
        h.connect(t(0), accepted());
        h.events();
        h.feed(t(1), Packet::Publish(with_id(publish("a", QoS::AtLeastOnce, "1"), 7)));
        h.feed(t(1), Packet::Publish(with_id(publish("b", QoS::ExactlyOnce, "2"), 8)));
        assert_eq!(h.events().len(), 2);
        assert!(h.sent().is_empty(), "nothing acknowledged before the application says so");
        // The QoS 2 message sent again before its PUBREC: not delivered again, not answered.
        let mut again = with_id(publish("b", QoS::ExactlyOnce, "2"), 8);
        again.dup = true;
        h.feed(t(2), Packet::Publish(again.clone()));
        assert!(h.events().is_empty() && h.sent().is_empty());
        h.client.acknowledge(t(3), pid(7), QoS::AtLeastOnce, ReasonCode::Success);
        h.client.acknowledge(t(3), pid(8), QoS::ExactlyOnce, ReasonCode::Success);
        let sent = h.sent();
        assert!(
            matches!(&sent[..], [Packet::PubAck(a), Packet::PubRec(r)]
            if a.packet_id == pid(7) && r.packet_id == pid(8)),
            "{sent:?}"
        );
        // Now a resent copy is answered at once, still not delivered again.
        h.feed(t(4), Packet::Publish(again));
        assert!(h.events().is_empty());
        assert!(matches!(&h.sent()[..], [Packet::PubRec(r)] if r.packet_id == pid(8)));
        // PUBREL waits for `complete`, also for an identifier the client does not know.
        h.feed(t(5), Packet::PubRel(PubAck::new(pid(8))));
        h.feed(t(5), Packet::PubRel(PubAck::new(pid(99))));
        assert_eq!(
            h.events(),
            vec![Event::Released { packet_id: pid(8) }, Event::Released { packet_id: pid(99) }]
        );
        assert!(h.sent().is_empty());
        h.client.complete(t(6), pid(8));
        h.client.complete(t(6), pid(99));
        let sent = h.sent();
        assert!(
            matches!(&sent[..], [Packet::PubComp(a), Packet::PubComp(b)]
            if a.packet_id == pid(8) && a.reason_code == ReasonCode::Success
                && b.packet_id == pid(99)),
            "{sent:?}"
        );
    }
}

#[test]
fn relay_mode_keeps_packet_ids_and_waits_to_release() {
    for v in both() {
        let mut h = Harness::new(v, relay_config());
        h.connect(t(0), accepted());
        h.events();
        let mut p = with_id(publish("x", QoS::ExactlyOnce, "m"), 42);
        p.dup = true;
        h.client.publish_as(t(1), p.clone()).unwrap();
        let sent = h.sent();
        assert!(
            matches!(&sent[..], [Packet::Publish(s)] if s.packet_id == Some(pid(42)) && s.dup),
            "{sent:?}"
        );
        assert_eq!(h.client.publish_as(t(1), p), Err(ClientError::PacketIdInUse(42)));
        h.feed(t(2), Packet::PubRec(PubAck::new(pid(42))));
        assert_eq!(h.events(), vec![Event::Received { packet_id: pid(42) }]);
        assert!(h.sent().is_empty(), "no PUBREL before release");
        h.client.release(t(3), pid(42));
        assert!(matches!(&h.sent()[..], [Packet::PubRel(r)] if r.packet_id == pid(42)));
        // An identifier the client never sent (its PUBREC came before a restart) is released
        // too, and again after a reconnect that resumes the session.
        h.client.release(t(3), pid(43));
        assert!(matches!(&h.sent()[..], [Packet::PubRel(r)] if r.packet_id == pid(43)));
        h.client.handle_closed(t(4));
        h.events();
        let resumed = ConnAck { session_present: true, ..ConnAck::default() };
        let mut opts = h.options();
        opts.clean_start = false;
        let sent = h.connect_with(t(5), opts, resumed);
        assert!(
            matches!(&sent[..], [Packet::PubRel(a), Packet::PubRel(b)]
            if a.packet_id == pid(42) && b.packet_id == pid(43)),
            "{sent:?}"
        );
        h.feed(t(6), Packet::PubComp(PubAck::new(pid(42))));
        h.feed(t(6), Packet::PubComp(PubAck::new(pid(43))));
        let done: Vec<u16> = h
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Published { packet_id, .. } => Some(packet_id.get()),
                _ => None,
            })
            .collect();
        assert_eq!(done, vec![42, 43]);
    }
}

#[test]
fn a_subscribe_lost_with_its_connection_frees_its_packet_id() {
    let mut h = Harness::new(ProtocolVersion::V5, relay_config());
    h.connect(t(0), accepted());
    let sub = Subscription::new(TopicFilter::new("a/#").unwrap(), QoS::AtLeastOnce);
    let id = h.client.subscribe(t(1), &[sub]).unwrap();
    h.client.handle_closed(t(2));
    let resumed = ConnAck { session_present: true, ..ConnAck::default() };
    let mut opts = h.options();
    opts.clean_start = false;
    h.connect_with(t(3), opts, resumed);
    assert!(h.client.is_connected());
    // The SUBACK will never come: the identifier is free for a relayed publish.
    h.client.publish_as(t(4), with_id(publish("a/b", QoS::AtLeastOnce, "m"), id.get())).unwrap();
}
