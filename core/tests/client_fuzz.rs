//! A hostile or broken server cannot make the client panic, and whatever the client sends in
//! return is well-formed: arbitrary bytes (after a real CONNACK, or instead of one) interleaved
//! with application commands and timer ticks.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use ternmq_core::client::{Client, ClientConfig, Command};
use ternmq_core::codec::*;
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

#[derive(Debug, Clone)]
enum Step {
    Bytes(Vec<u8>),
    Publish(u8),
    Subscribe,
    Tick(u16),
    Closed,
    Reconnect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64).prop_map(Step::Bytes),
        // Mostly valid server packets, so the client gets past CONNACK and into its flows.
        4 => server_packet().prop_map(Step::Bytes),
        2 => (0u8..3).prop_map(Step::Publish),
        1 => Just(Step::Subscribe),
        2 => any::<u16>().prop_map(Step::Tick),
        1 => Just(Step::Closed),
        1 => Just(Step::Reconnect),
    ]
}

/// Encoded packets a server might send, with small packet ids so they hit the client's own.
fn server_packet() -> impl Strategy<Value = Vec<u8>> {
    let id = (1u16..5).prop_map(|n| PacketId::new(n).unwrap());
    prop_oneof![
        any::<bool>()
            .prop_map(|sp| Packet::ConnAck(ConnAck { session_present: sp, ..ConnAck::default() })),
        id.clone().prop_map(|i| Packet::PubAck(PubAck::new(i))),
        id.clone().prop_map(|i| Packet::PubRec(PubAck::new(i))),
        id.clone().prop_map(|i| Packet::PubRel(PubAck::new(i))),
        id.clone().prop_map(|i| Packet::PubComp(PubAck::new(i))),
        (id.clone(), 0u8..3).prop_map(|(i, q)| {
            let mut p = Publish::new(TopicName::new("a/b").unwrap(), "x");
            p.qos = QoS::from_u8(q).unwrap();
            p.packet_id = (q > 0).then_some(i);
            Packet::Publish(p)
        }),
        id.clone().prop_map(|i| Packet::SubAck(SubAck {
            packet_id: i,
            reason_codes: vec![ReasonCode::GrantedQoS1],
            properties: AckProperties::default(),
        })),
        Just(Packet::PingResp),
        Just(Packet::Disconnect(Disconnect::new(ReasonCode::ServerBusy))),
    ]
    .prop_flat_map(|p| {
        prop_oneof![Just(ProtocolVersion::V5), Just(ProtocolVersion::V3_1_1)].prop_map(move |v| {
            let mut b = BytesMut::new();
            p.encode(v, &mut b).unwrap();
            b.to_vec()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_server_cannot_panic_the_client_and_output_stays_well_formed(
        v5 in any::<bool>(),
        steps in vec(step(), 1..40),
    ) {
        let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
        let mut client = Client::new(ClientConfig::default(), Instant::ZERO);
        let mut now = Instant::ZERO;
        let mut opts = Connect::new(version, MqttStr::from_static("fuzz"));
        opts.properties.topic_alias_maximum = Some(4);
        client.connect(now, opts).unwrap();
        let mut server = Decoder::new(None, MAX_PACKET_SIZE);
        let mut sent = BytesMut::new();
        for s in steps {
            match s {
                Step::Bytes(b) => client.handle_bytes(now, &mut BytesMut::from(&b[..])),
                Step::Publish(q) => {
                    let mut p = Publish::new(TopicName::new("t").unwrap(), Bytes::from_static(b"p"));
                    p.qos = QoS::from_u8(q).unwrap();
                    let _ = client.publish(now, p);
                }
                Step::Subscribe => {
                    let sub = Subscription::new(TopicFilter::new("a/#").unwrap(), QoS::ExactlyOnce);
                    let _ = client.subscribe(now, &[sub]);
                }
                Step::Tick(ms) => {
                    now += Duration::from_millis(u64::from(ms) * 10);
                    client.handle_timeout(now);
                }
                Step::Closed => {
                    client.handle_closed(now);
                    // A new transport: the server side starts a new stream.
                    server = Decoder::new(None, MAX_PACKET_SIZE);
                    sent.clear();
                }
                Step::Reconnect => {
                    if client.reconnect(now).is_ok() {
                        server = Decoder::new(None, MAX_PACKET_SIZE);
                        sent.clear();
                    }
                }
            }
            while let Some(b) = client.poll_transmit(13) {
                sent.extend_from_slice(&b);
            }
            // Everything the client wrote decodes, in the version it connected with.
            while let Some(p) = server.decode(&mut sent).map_err(|e| TestCaseError::fail(format!("client sent a bad packet: {e}")))? {
                if let Packet::Connect(c) = &p {
                    prop_assert_eq!(c.protocol, version);
                }
            }
            let _ = client.poll_timeout();
            while client.poll_event().is_some() {}
            while let Some(c) = client.poll_command() {
                if c == Command::CloseTransport {
                    client.handle_closed(now);
                }
            }
        }
    }
}
