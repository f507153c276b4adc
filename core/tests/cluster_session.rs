//! A session as one cluster node hands it to another: every field survives the encoding, and
//! bad bytes are refused rather than misread.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ternmq_core::broker::persist::{
    LogEntry, LogReplay, PersistOp, SnapshotDelivery, SnapshotSession, StoredDelivery,
    StoredMessage,
};
use ternmq_core::codec::{
    MqttStr, PacketId, ProtocolVersion, PublishProperties, QoS, RetainHandling, SubscriptionOptions,
};
use ternmq_core::time::Duration;
use ternmq_core::topic::{TopicFilter, TopicName};

fn message(topic: &str, payload: &'static [u8], qos: QoS) -> StoredMessage {
    StoredMessage {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: PublishProperties::default(),
        expires_in: Some(Duration::from_secs(90)),
    }
}

fn session() -> SnapshotSession {
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    SnapshotSession {
        client_id: MqttStr::new("dev-ü").unwrap(),
        protocol: ProtocolVersion::V5,
        expiry: 300,
        expires_in: Some(Duration::from_millis(299_500)),
        subscriptions: vec![
            (TopicFilter::new("cmd/#").unwrap(), options, std::num::NonZeroU32::new(7)),
            (
                TopicFilter::new("$share/g/a/+").unwrap(),
                SubscriptionOptions::qos(QoS::AtMostOnce),
                None,
            ),
        ],
        deliveries: vec![
            SnapshotDelivery {
                key: 1,
                delivery: StoredDelivery {
                    message: message("cmd/a", b"one", QoS::ExactlyOnce),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: vec![std::num::NonZeroU32::new(7).unwrap()],
                },
                packet_id: PacketId::new(3),
                received: true,
            },
            SnapshotDelivery {
                key: 2,
                delivery: StoredDelivery {
                    message: message("cmd/b", b"", QoS::AtLeastOnce),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    subscription_ids: Vec::new(),
                },
                packet_id: None,
                received: false,
            },
        ],
        incoming_qos2: vec![PacketId::new(9).unwrap(), PacketId::new(65535).unwrap()],
        will: Some((message("dev/gone", b"bye", QoS::AtLeastOnce), Duration::from_secs(5))),
    }
}

#[test]
fn a_session_survives_its_encoding() {
    let s = session();
    let mut bytes = Vec::new();
    s.encode(&mut bytes);
    assert_eq!(SnapshotSession::decode(&bytes), Some(s));
}

#[test]
fn an_empty_session_survives_its_encoding() {
    let s = SnapshotSession {
        client_id: MqttStr::new("x").unwrap(),
        protocol: ProtocolVersion::V3_1_1,
        expiry: u32::MAX,
        expires_in: None,
        subscriptions: Vec::new(),
        deliveries: Vec::new(),
        incoming_qos2: Vec::new(),
        will: None,
    };
    let mut bytes = Vec::new();
    s.encode(&mut bytes);
    assert_eq!(SnapshotSession::decode(&bytes), Some(s));
}

#[test]
fn bad_bytes_are_no_session() {
    let mut bytes = Vec::new();
    session().encode(&mut bytes);
    for cut in 0..bytes.len() {
        assert_eq!(SnapshotSession::decode(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(SnapshotSession::decode(&longer), None);
    let mut version = bytes;
    version[0] = 2;
    assert_eq!(SnapshotSession::decode(&version), None);
}

fn every_op() -> Vec<PersistOp> {
    let s = session();
    let client_id = s.client_id.clone();
    let c = || client_id.clone();
    let (filter, options, subscription_id) = s.subscriptions[0].clone();
    let delivery = s.deliveries[0].delivery.clone();
    vec![
        PersistOp::Session { client_id: c(), protocol: ProtocolVersion::V3_1_1, expiry: 30 },
        PersistOp::Subscribed { client_id: c(), filter: filter.clone(), options, subscription_id },
        PersistOp::Queued { client_id: c(), key: 7, delivery },
        PersistOp::Sent { client_id: c(), key: 7, packet_id: PacketId::new(5).unwrap() },
        PersistOp::Received { client_id: c(), key: 7 },
        PersistOp::Released { client_id: c(), key: 7 },
        PersistOp::IncomingQos2 { client_id: c(), packet_id: PacketId::new(9).unwrap() },
        PersistOp::IncomingQos2Released { client_id: c(), packet_id: PacketId::new(9).unwrap() },
        PersistOp::Will {
            client_id: c(),
            message: message("dev/gone", b"bye", QoS::AtMostOnce),
            delay: 12,
        },
        PersistOp::WillCleared { client_id: c() },
        PersistOp::Unsubscribed { client_id: c(), filter },
        PersistOp::Disconnected { client_id: c() },
        PersistOp::SessionDeleted { client_id: c() },
        PersistOp::Retained { message: message("r/t", b"kept", QoS::AtLeastOnce) },
        PersistOp::RetainedCleared { topic: TopicName::new("r/t").unwrap() },
    ]
}

#[test]
fn every_log_entry_survives_its_encoding_and_a_cut_one_is_refused() {
    let entries = [
        LogEntry::Ops { ops: every_op(), consumed: Some(0) },
        LogEntry::Ops { ops: every_op(), consumed: None },
        LogEntry::Ops { ops: Vec::new(), consumed: Some(u64::MAX - 1) },
        LogEntry::SnapshotStart { consumed: 77 },
        LogEntry::SnapshotEnd,
    ];
    for e in entries {
        let mut bytes = Vec::new();
        e.encode(&mut bytes);
        assert_eq!(LogEntry::decode(&bytes).as_ref(), Some(&e));
        for n in 0..bytes.len() {
            assert_eq!(LogEntry::decode(&bytes[..n]), None, "cut at {n} of {e:?}");
        }
        bytes.push(0);
        assert_eq!(LogEntry::decode(&bytes), None, "a byte too many");
    }
}

#[test]
fn a_log_read_back_keeps_only_complete_snapshots() {
    let s = session();
    let c = || s.client_id.clone();
    let op = |o: PersistOp| LogEntry::Ops { ops: vec![o], consumed: None };
    let mut log = LogReplay::new();
    log.apply(
        op(PersistOp::Session { client_id: c(), protocol: ProtocolVersion::V5, expiry: 60 }),
        0,
    );
    log.apply(LogEntry::Ops { ops: Vec::new(), consumed: Some(5) }, 0);
    assert!(log.session(s.client_id.as_str(), 1_000).is_some());
    assert_eq!(log.consumed(), 5);
    // A snapshot cut short (its node died while mirroring it) changes nothing.
    log.apply(LogEntry::SnapshotStart { consumed: 9 }, 10);
    assert!(log.session(s.client_id.as_str(), 1_000).is_some());
    assert_eq!(log.consumed(), 5);
    // A complete one replaces everything: here, with no session.
    log.apply(LogEntry::SnapshotStart { consumed: 9 }, 20);
    log.apply(LogEntry::SnapshotEnd, 20);
    assert!(log.session(s.client_id.as_str(), 1_000).is_none());
    assert_eq!(log.consumed(), 9);
    // A session with a will: taken without it; and gone once taken.
    log.apply(
        op(PersistOp::Session { client_id: c(), protocol: ProtocolVersion::V5, expiry: 60 }),
        30,
    );
    let will = message("dev/gone", b"bye", QoS::AtMostOnce);
    log.apply(op(PersistOp::Will { client_id: c(), message: will, delay: 0 }), 30);
    log.apply(op(PersistOp::Disconnected { client_id: c() }), 30);
    let taken = log.session(s.client_id.as_str(), 40_000).expect("the session");
    assert!(taken.will.is_none());
    assert_eq!(taken.expires_in, Some(Duration::from_millis(60_030 - 40_000)));
    assert!(log.session(s.client_id.as_str(), 91_000).is_none(), "expired");
    log.apply(op(PersistOp::SessionDeleted { client_id: c() }), 50);
    assert!(log.session(s.client_id.as_str(), 40_000).is_none());
}
