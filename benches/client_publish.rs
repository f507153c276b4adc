//! Client publish throughput against one Mosquitto: ternmq-tokio against rumqttc, same broker,
//! same run, MQTT 3.1.1, 64-byte payloads, 100 messages in flight for both (rumqttc's default
//! window; ternmq gets 100 concurrent publishing tasks).
//!
//! Run: `cargo bench --bench client_publish` (needs `mosquitto`; scripts/test.sh installs it).
//! Each figure is the median of five rounds of 50,000 messages (the range is printed too), timed until every message is
//! acknowledged (QoS 1) or written (QoS 0). The machine is shared: compare the ratio, not the
//! absolute numbers.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use ternmq::codec::{MqttStr, ProtocolVersion, QoS};
use ternmq::tokio::{Client, ConnectOptions};

const MESSAGES: usize = 50_000;
const INFLIGHT: usize = 100;
const ROUNDS: usize = 5;

async fn ternmq_round(port: u16, qos: QoS, round: usize) -> Duration {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = ProtocolVersion::V3_1_1;
    o.connect.client_id = MqttStr::try_from(format!("bench-ternmq-{round}-{}", qos as u8)).unwrap();
    o.config.max_queued_messages = MESSAGES;
    let client = Client::connect(o).await.unwrap();
    let payload = bytes::Bytes::from(vec![0x5a; 64]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..INFLIGHT {
        let (c, p) = (client.clone(), payload.clone());
        tasks.spawn(async move {
            for _ in 0..MESSAGES / INFLIGHT {
                c.publish("bench/t", p.clone(), qos).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let elapsed = start.elapsed();
    client.disconnect().await.unwrap();
    elapsed
}

async fn rumqttc_round(port: u16, qos: QoS, round: usize) -> Duration {
    let id = format!("bench-rumqttc-{round}-{}", qos as u8);
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_inflight(INFLIGHT as u16);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1000);
    // Wait for CONNACK before timing.
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
            eventloop.poll().await.unwrap()
        {
            break;
        }
    }
    let rqos = match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    };
    let payload = bytes::Bytes::from(vec![0x5a; 64]);
    let start = Instant::now();
    let driver = tokio::spawn(async move {
        let mut done = 0;
        while done < MESSAGES {
            match eventloop.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) if qos != QoS::AtMostOnce => {
                    done += 1
                }
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_))
                    if qos == QoS::AtMostOnce =>
                {
                    done += 1
                }
                _ => {}
            }
        }
        eventloop
    });
    for _ in 0..MESSAGES {
        client.publish_bytes("bench/t", rqos, false, payload.clone()).await.unwrap();
    }
    let mut eventloop = driver.await.unwrap();
    let elapsed = start.elapsed();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run only for benches.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(mosquitto) = support::Broker::start() else { return };
    let port = mosquitto.port;
    println!(
        "client publish throughput, {MESSAGES} x 64 B, {INFLIGHT} in flight, MQTT 3.1.1, median of {ROUNDS}"
    );
    println!("{:<6} {:>14} {:>14} {:>8}", "qos", "ternmq msg/s", "rumqttc msg/s", "ratio");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate who goes first, so that neither always meets a warm or cold broker.
            if round % 2 == 0 {
                ours.push(ternmq_round(port, qos, round).await);
                theirs.push(rumqttc_round(port, qos, round).await);
            } else {
                theirs.push(rumqttc_round(port, qos, round).await);
                ours.push(ternmq_round(port, qos, round).await);
            }
        }
        let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
        let range = |v: &[Duration]| {
            let r: Vec<f64> = v.iter().map(|d| rate(*d)).collect();
            let min = r.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.iter().copied().fold(0.0, f64::max);
            format!("{min:.0}-{max:.0}")
        };
        let (ours_range, theirs_range) = (range(&ours), range(&theirs));
        let (a, b) = (rate(median(ours)), rate(median(theirs)));
        println!(
            "{:<6} {:>14.0} {:>14.0} {:>7.2}x   (ranges: ternmq {ours_range}, rumqttc {theirs_range})",
            qos as u8,
            a,
            b,
            a / b
        );
    }
}
