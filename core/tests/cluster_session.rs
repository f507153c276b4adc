//! A session as one cluster node hands it to another: every field survives the encoding, and
//! bad bytes are refused rather than misread.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ternmq_core::broker::persist::{
    SnapshotDelivery, SnapshotSession, StoredDelivery, StoredMessage,
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
