//! The client state machine, driven byte by byte with a virtual clock: the server side of each
//! exchange is written as packets, encoded with the codec, and fed to the client.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use std::num::NonZeroU16;
use ternmq_core::client::{Client, ClientConfig, ClientError, DisconnectReason, Event};
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
        h.events(),
        vec![Event::Disconnected(DisconnectReason::ConnAckTimeout), Event::CloseTransport]
    );
    h.client.handle_closed(t(30));
    // First reconnect delay: 1 s without jitter.
    assert_eq!(h.client.poll_timeout(), Some(t(31)));
    h.client.handle_timeout(t(31));
    assert_eq!(h.events(), vec![Event::Reconnect]);
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
        assert_eq!(h.events().last(), Some(&Event::Reconnect));
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
        let ev = h.events();
        assert!(
            matches!(
                &ev[..],
                [
                    Event::ConnectionRefused { reason_code: ReasonCode::NotAuthorized, .. },
                    Event::CloseTransport
                ]
            ),
            "{ev:?}"
        );
        h.client.handle_closed(t(0));
        assert_eq!(h.client.poll_timeout(), None, "no reconnect after NotAuthorized");
    }
}

#[test]
fn mqtt_3_1_2_23_keep_alive_sends_pingreq_only_when_idle() {
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
        h.events(),
        vec![Event::Disconnected(DisconnectReason::KeepAliveTimeout), Event::CloseTransport]
    );
}

#[test]
fn mqtt_3_2_2_21_server_keep_alive_replaces_the_clients() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut ack = accepted();
    ack.properties.server_keep_alive = Some(3);
    h.connect(t(0), ack);
    assert_eq!(h.client.poll_timeout(), Some(t(3)));
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
/// order [MQTT-4.4.0-1] [MQTT-4.6.0-1], and never the PUBLISH of a message it released
/// (5.0: [MQTT-4.3.3-6]).
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

#[test]
fn mqtt_3_2_2_4_session_present_after_clean_start_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.client.connect(t(0), h.options()).unwrap();
    let _ = h.sent();
    h.feed(t(0), Packet::ConnAck(ConnAck { session_present: true, ..ConnAck::default() }));
    let ev = h.events();
    assert!(
        matches!(
            &ev[..],
            [Event::Disconnected(DisconnectReason::ProtocolViolation(_)), Event::CloseTransport]
        ),
        "{ev:?}"
    );
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
    let ev = h.events();
    assert!(matches!(
        &ev[..],
        [Event::Disconnected(DisconnectReason::Decode(_)), Event::CloseTransport]
    ));
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
        h.events(),
        vec![
            Event::Disconnected(DisconnectReason::Server {
                reason_code: ReasonCode::SessionTakenOver,
                properties: d.properties,
            }),
            Event::CloseTransport
        ]
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
        h.events(),
        vec![Event::Disconnected(DisconnectReason::Requested), Event::CloseTransport]
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

/// Without an Authentication Method the client sends no AUTH [MQTT-4.12.0-7], and an AUTH
/// from the server is a protocol error [MQTT-4.12.0-6].
#[test]
fn mqtt_4_12_0_6_auth_without_a_method_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    h.connect(t(0), accepted());
    let _ = h.events();
    assert_eq!(h.client.reauthenticate(t(1), None), Err(ClientError::NoAuthenticationMethod));
    h.feed(t(1), auth(ReasonCode::ContinueAuthentication, "X", b""));
    assert_eq!(h.sent(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::ProtocolError))]);
}

#[test]
fn mqtt_4_12_0_5_auth_with_another_method_is_a_protocol_error() {
    let mut h = Harness::new(ProtocolVersion::V5, ClientConfig::default());
    let mut opts = h.options();
    opts.properties.authentication_method = Some(MqttStr::from_static("A"));
    h.client.connect(t(0), opts).unwrap();
    let _ = h.sent();
    h.feed(t(0), auth(ReasonCode::ContinueAuthentication, "B", b""));
    let ev = h.events();
    assert!(
        matches!(
            &ev[..],
            [Event::Disconnected(DisconnectReason::ProtocolViolation(_)), Event::CloseTransport]
        ),
        "{ev:?}"
    );
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
