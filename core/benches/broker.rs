//! Broker core benchmarks: routed QoS 0 deliveries per second with 64-byte payloads, the core
//! alone (bytes in, bytes out, no sockets).
//!
//! - `1_to_1`: one publisher, one subscriber;
//! - `10_to_1`: ten publishers, one subscriber (fan-in);
//! - `1_to_100`: one publisher, a hundred subscribers to the same topic (fan-out);
//! - `wildcards_10k`: 10,000 subscribers with wildcard filters over a device tree; each message
//!   matches a few of them.
//!
//! Throughput is counted in deliveries (messages written to a subscriber). Each iteration feeds
//! a batch of PUBLISH packets and drains every subscriber's output.
//!
//! Run: `cargo bench -p ternmq-core --bench broker`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ternmq_core::broker::{Broker, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::codec::*;
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicFilter, TopicName};

/// PUBLISH packets per iteration and publisher.
const BATCH: usize = 1000;

fn encode(version: ProtocolVersion, packets: &[Packet]) -> Bytes {
    let enc = Encoder::new(version);
    let mut buf = BytesMut::new();
    for p in packets {
        enc.encode(p, &mut buf).unwrap();
    }
    buf.freeze()
}

struct Setup {
    broker: Broker,
    now: Instant,
    subscribers: Vec<ConnId>,
}

impl Setup {
    fn new() -> Self {
        let mut config = BrokerConfig::default();
        config.max_connections = 100_000;
        // Enough room that no message is dropped while a batch is in the core.
        config.max_outbound_bytes = 1 << 30;
        let now = Instant::from_secs(1);
        Setup { broker: Broker::new(config, now).unwrap(), now, subscribers: Vec::new() }
    }

    fn connect(&mut self, id: &str) -> ConnId {
        let conn = self.broker.accept(self.now, PeerInfo::default()).unwrap();
        let c = Connect::new(ProtocolVersion::V5, MqttStr::new(id).unwrap());
        let mut buf = BytesMut::from(&encode(ProtocolVersion::V5, &[c.into()])[..]);
        self.broker.handle_bytes(self.now, conn, &mut buf);
        self.drain();
        conn
    }

    fn subscribe(&mut self, id: &str, filters: &[String]) {
        let conn = self.connect(id);
        let subscriptions = filters
            .iter()
            .map(|f| Subscription {
                filter: TopicFilter::new(f).unwrap(),
                options: SubscriptionOptions::qos(QoS::AtMostOnce),
            })
            .collect();
        let s = Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            subscriptions,
            properties: Default::default(),
        };
        let mut buf = BytesMut::from(&encode(ProtocolVersion::V5, &[s.into()])[..]);
        self.broker.handle_bytes(self.now, conn, &mut buf);
        self.drain();
        self.subscribers.push(conn);
    }

    /// Feeds each publisher its buffer as an adapter would: a publisher paused because a
    /// subscriber is behind gets the rest once the output is written. Returns the bytes
    /// written.
    fn feed(&mut self, publishers: &[ConnId], bufs: &mut [BytesMut]) -> usize {
        let mut n = 0;
        while bufs.iter().any(|b| !b.is_empty()) {
            for (conn, buf) in publishers.iter().zip(bufs.iter_mut()) {
                self.broker.handle_bytes(self.now, *conn, buf);
            }
            n += self.drain();
        }
        n
    }

    /// Writes out everything queued; returns the bytes.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(id) = self.broker.poll_writable() {
            while let Some(b) = self.broker.poll_transmit(id, usize::MAX) {
                n += b.len();
            }
        }
        while self.broker.poll_event().is_some() {}
        n
    }
}

fn publishes(topics: &[String]) -> Bytes {
    let payload = Bytes::from(vec![0x5a; 64]);
    let packets: Vec<Packet> = (0..BATCH)
        .map(|i| {
            let t = &topics[i % topics.len()];
            Publish::new(TopicName::new(t).unwrap(), payload.clone()).into()
        })
        .collect();
    encode(ProtocolVersion::V5, &packets)
}

/// Benchmarks `publishers` each sending one batch, with `deliveries` deliveries per batch in
/// all.
fn run(
    c: &mut Criterion,
    name: &str,
    mut s: Setup,
    publishers: Vec<ConnId>,
    batch: Bytes,
    deliveries: u64,
) {
    // One checked pass first: the figure is only honest if every delivery happens.
    let mut delivered = 0u64;
    let mut bufs = vec![BytesMut::from(&batch[..]); publishers.len()];
    let mut decoders = BTreeMap::new();
    while bufs.iter().any(|b| !b.is_empty()) {
        for (conn, buf) in publishers.iter().zip(bufs.iter_mut()) {
            s.broker.handle_bytes(s.now, *conn, buf);
        }
        while let Some(id) = s.broker.poll_writable() {
            let (dec, out) = decoders.entry(id).or_insert_with(|| {
                (Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE), BytesMut::new())
            });
            while let Some(b) = s.broker.poll_transmit(id, usize::MAX) {
                out.extend_from_slice(&b);
            }
            while let Some(packet) = dec.decode(out).unwrap() {
                delivered += u64::from(matches!(packet, Packet::Publish(_)));
            }
        }
        while s.broker.poll_event().is_some() {}
    }
    assert_eq!(delivered, deliveries, "{name}: deliveries");
    let mut group = c.benchmark_group("broker_route_qos0");
    group.throughput(Throughput::Elements(deliveries));
    group.bench_function(name, |b| {
        b.iter_batched(
            || vec![BytesMut::from(&batch[..]); publishers.len()],
            |mut bufs| black_box(s.feed(&publishers, &mut bufs)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn one_to_one(c: &mut Criterion) {
    let mut s = Setup::new();
    s.subscribe("sub", &["sensors/temp/001".into()]);
    let p = s.connect("pub");
    let batch = publishes(&["sensors/temp/001".into()]);
    run(c, "1_to_1", s, vec![p], batch, BATCH as u64);
}

fn ten_to_one(c: &mut Criterion) {
    let mut s = Setup::new();
    s.subscribe("sub", &["sensors/#".into()]);
    let pubs: Vec<ConnId> = (0..10).map(|i| s.connect(&format!("pub{i}"))).collect();
    let batch = publishes(&["sensors/temp/001".into()]);
    run(c, "10_to_1", s, pubs, batch, 10 * BATCH as u64);
}

fn one_to_hundred(c: &mut Criterion) {
    let mut s = Setup::new();
    for i in 0..100 {
        s.subscribe(&format!("sub{i}"), &["alerts/fire".into()]);
    }
    let p = s.connect("pub");
    let batch = publishes(&["alerts/fire".into()]);
    run(c, "1_to_100", s, vec![p], batch, 100 * BATCH as u64);
}

fn wildcards(c: &mut Criterion) {
    let mut s = Setup::new();
    // 10,000 subscribers over 1,000 sites x 10 devices: per site `site/N/+/temp`, per device
    // `site/N/dev/M/#`, and a few broad ones.
    let mut deliveries_per_message = 0;
    for site in 0..1000 {
        for dev in 0..10 {
            let f = if dev == 0 {
                format!("site/{site}/+/temp")
            } else {
                format!("site/{site}/{dev}/#")
            };
            s.subscribe(&format!("s{site}-{dev}"), &[f]);
        }
    }
    // A topic `site/N/1/temp` matches `site/N/+/temp` and `site/N/1/#`.
    deliveries_per_message += 2;
    let p = s.connect("pub");
    let topics: Vec<String> = (0..BATCH).map(|i| format!("site/{}/1/temp", i * 7 % 1000)).collect();
    let batch = publishes(&topics);
    run(c, "wildcards_10k", s, vec![p], batch, deliveries_per_message * BATCH as u64);
}

criterion_group!(benches, one_to_one, ten_to_one, one_to_hundred, wildcards);
criterion_main!(benches);
