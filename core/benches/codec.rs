//! Codec benchmarks: decode and encode of 64-byte-payload PUBLISH packets and of a CONNECT with
//! properties, and topic matching, with the same work done by `mqttbytes` (the standalone codec
//! of the rumqtt project) on the same bytes, so the two can be compared from one run.
//!
//! Run: `cargo bench -p ternmq-core --bench codec`.

#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::num::{NonZeroU16, NonZeroU32};
use ternmq_core::codec::*;
use ternmq_core::topic::{TopicFilter, TopicName};

/// Packets per decode batch: a realistic receive buffer holds many frames back to back.
const BATCH: usize = 1000;
const TOPIC: &str = "sensors/temp/001";

fn payload() -> Bytes {
    Bytes::from(vec![0x5a; 64])
}

fn ternmq_publish(qos: QoS) -> Publish {
    let mut p = Publish::new(TopicName::from_static(TOPIC), payload());
    p.qos = qos;
    if qos != QoS::AtMostOnce {
        p.packet_id = NonZeroU16::new(7);
    }
    p
}

fn connect() -> Connect {
    let mut c = Connect::new(ProtocolVersion::V5, MqttStr::from_static("temp_sensor_001"));
    c.clean_start = false;
    c.username = Some(MqttStr::from_static("user"));
    c.password = Some(Bytes::from_static(b"pass"));
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = NonZeroU16::new(100);
    c.properties.maximum_packet_size = NonZeroU32::new(256 * 1024);
    c.properties.topic_alias_maximum = Some(16);
    c.properties.user_properties.push((MqttStr::from_static("site"), MqttStr::from_static("lab")));
    c
}

fn mqttbytes_publish(qos: mqttbytes::QoS) -> mqttbytes::v5::Publish {
    let mut p = mqttbytes::v5::Publish::new(TOPIC, qos, vec![0x5a; 64]);
    if qos != mqttbytes::QoS::AtMostOnce {
        p.pkid = 7;
    }
    p
}

fn mqttbytes_connect() -> mqttbytes::v5::Connect {
    let mut c = mqttbytes::v5::Connect::new("temp_sensor_001");
    c.keep_alive = 60;
    c.clean_session = false;
    c.login = Some(mqttbytes::v5::Login::new("user", "pass"));
    c.properties = Some(mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(100),
        max_packet_size: Some(256 * 1024),
        topic_alias_max: Some(16),
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![("site".into(), "lab".into())],
        authentication_method: None,
        authentication_data: None,
    });
    c
}

/// `BATCH` copies of one encoded packet.
fn stream(one: &[u8]) -> Bytes {
    let mut s = BytesMut::with_capacity(one.len() * BATCH);
    for _ in 0..BATCH {
        s.extend_from_slice(one);
    }
    s.freeze()
}

fn decode_group(c: &mut Criterion, name: &str, one: Bytes) {
    let input = stream(&one);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("ternmq", |b| {
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut decoder = Decoder::new(Some(ProtocolVersion::V5), MAX_PACKET_SIZE);
                let mut n = 0;
                while let Ok(Some(p)) = decoder.decode(&mut buf) {
                    black_box(&p);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("mqttbytes", |b| {
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut n = 0;
                while let Ok(p) = mqttbytes::v5::read(&mut buf, 1 << 20) {
                    black_box(&p);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn encode_group<T>(
    c: &mut Criterion,
    name: &str,
    ours: &Packet,
    theirs: &T,
    write: impl Fn(&T, &mut BytesMut),
) {
    // Both codecs must produce the same bytes, or the comparison means nothing.
    let mut a = BytesMut::new();
    ours.encode(ProtocolVersion::V5, &mut a).unwrap();
    let mut b = BytesMut::new();
    write(theirs, &mut b);
    assert_eq!(a, b, "{name}: the two encoders disagree");

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("ternmq", |bch| {
        bch.iter(|| {
            buf.clear();
            black_box(ours).encode(ProtocolVersion::V5, &mut buf).unwrap();
            black_box(&buf);
        })
    });
    g.bench_function("mqttbytes", |bch| {
        bch.iter(|| {
            buf.clear();
            write(black_box(theirs), &mut buf);
            black_box(&buf);
        })
    });
    g.finish();
}

fn encoded(p: &Packet) -> Bytes {
    let mut b = BytesMut::new();
    p.encode(ProtocolVersion::V5, &mut b).unwrap();
    b.freeze()
}

fn codec(c: &mut Criterion) {
    let p0 = Packet::Publish(ternmq_publish(QoS::AtMostOnce));
    let p1 = Packet::Publish(ternmq_publish(QoS::AtLeastOnce));
    let conn = Packet::from(connect());
    decode_group(c, "decode/publish_qos0_64B", encoded(&p0));
    decode_group(c, "decode/publish_qos1_64B", encoded(&p1));
    decode_group(c, "decode/connect_with_properties", encoded(&conn));

    let write_pub = |p: &mqttbytes::v5::Publish, b: &mut BytesMut| {
        p.write(b).unwrap();
    };
    encode_group(
        c,
        "encode/publish_qos0_64B",
        &p0,
        &mqttbytes_publish(mqttbytes::QoS::AtMostOnce),
        write_pub,
    );
    encode_group(
        c,
        "encode/publish_qos1_64B",
        &p1,
        &mqttbytes_publish(mqttbytes::QoS::AtLeastOnce),
        write_pub,
    );
    encode_group(c, "encode/connect_with_properties", &conn, &mqttbytes_connect(), |p, b| {
        p.write(b).unwrap();
    });
}

fn topics(c: &mut Criterion) {
    let cases: Vec<(&str, &str)> = vec![
        ("sensors/+/temperature", "sensors/room1/temperature"),
        ("sensors/#", "sensors/room1/humidity/raw"),
        ("a/b/c/d/e/f", "a/b/c/d/e/f"),
        ("a/b/c/d/e/g", "a/b/c/d/e/f"),
        ("+/+/+/+", "factory/line3/robot7/status"),
        ("#", "$SYS/broker/uptime"),
    ];
    let ours: Vec<(TopicFilter, TopicName)> = cases
        .iter()
        .map(|(f, t)| (TopicFilter::new(f).unwrap(), TopicName::new(t).unwrap()))
        .collect();
    let mut g = c.benchmark_group("topic_match");
    g.throughput(Throughput::Elements(cases.len() as u64));
    g.bench_function("ternmq", |b| {
        b.iter(|| {
            for (f, t) in &ours {
                black_box(black_box(f).matches(black_box(t)));
            }
        })
    });
    g.bench_function("mqttbytes", |b| {
        b.iter(|| {
            for (f, t) in &cases {
                black_box(mqttbytes::matches(black_box(t), black_box(f)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec, topics);
criterion_main!(benches);
