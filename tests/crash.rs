//! Crash safety of the real program: `ternmq broker` with a data directory is killed with
//! SIGKILL in the middle of a load and restarted. Every message the broker acknowledged reaches
//! the persistent subscribers (an MQTT 5 one and a 3.1.1 one) afterwards, no QoS 2 message
//! arrives twice, and retained messages are still there.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ternmq::codec::{MqttStr, ProtocolVersion, QoS};
use ternmq::tokio::{Client, ConnectOptions};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(port: u16, dir: &Path, runtime: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "-p", &port.to_string(), "--data-dir", dir.to_str().unwrap()])
        .args(["--runtime", runtime])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "broker exited");
        if line.starts_with("persistence:") {
            break;
        }
    }
    // Keep draining stdout so the broker never blocks on it.
    std::thread::spawn(move || for _ in out.lines() {});
    child
}

fn options(port: u16, id: &str, version: ProtocolVersion) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = version;
    o.connect.client_id = MqttStr::new(id).unwrap();
    o.connect.clean_start = false;
    if version == ProtocolVersion::V5 {
        o.connect.properties.session_expiry_interval = Some(3600);
    }
    o.config.reconnect.enable = false;
    o.timeout = Duration::from_secs(10);
    o
}

async fn subscribe_and_leave(port: u16) {
    for (id, v) in [("sub5", ProtocolVersion::V5), ("sub311", ProtocolVersion::V3_1_1)] {
        let c = Client::connect(options(port, id, v)).await.unwrap();
        c.subscribe("load/q1", QoS::AtLeastOnce).await.unwrap();
        c.subscribe("load/q2", QoS::ExactlyOnce).await.unwrap();
        c.disconnect().await.unwrap();
    }
}

/// Publishes numbered messages until the broker dies; returns those acknowledged.
async fn publish_until_killed(port: u16, kill_after: usize, broker: &mut Child) -> Vec<String> {
    let mut o = options(port, "loader", ProtocolVersion::V5);
    o.connect.clean_start = true;
    let c = Client::connect(o).await.unwrap();
    let mut p = ternmq::codec::Publish::new(
        ternmq::topic::TopicName::new("status/retained").unwrap(),
        "kept",
    );
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    c.publish_with(p).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..10_000usize {
        if i == kill_after {
            broker.kill().unwrap(); // SIGKILL
            broker.wait().unwrap();
        }
        let (topic, qos) =
            if i % 2 == 0 { ("load/q1", QoS::AtLeastOnce) } else { ("load/q2", QoS::ExactlyOnce) };
        let body = format!("m{i}");
        match c.publish(topic, body.clone(), qos).await {
            Ok(_) => acked.push(body),
            Err(_) => break,
        }
    }
    acked
}

async fn collect(port: u16, id: &str, v: ProtocolVersion) -> BTreeMap<String, usize> {
    let c = Client::connect(options(port, id, v)).await.unwrap();
    let mut seen = BTreeMap::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), c.next_message()).await {
        let body = String::from_utf8_lossy(&m.payload).into_owned();
        if m.qos == QoS::ExactlyOnce {
            *seen.entry(body).or_insert(0) += 1;
        } else {
            seen.entry(body).or_insert(1);
        }
    }
    c.disconnect().await.unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_at_several_points() {
    crash_and_check("tokio", &[37, 400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_std_and_smol_servers_survive_sigkill_too() {
    crash_and_check("std", &[150]).await;
    crash_and_check("smol", &[150]).await;
}

async fn crash_and_check(runtime: &str, kill_points: &[usize]) {
    for &kill_after in kill_points {
        let dir = std::env::temp_dir()
            .join(format!("ternmq-crash-{}-{runtime}-{kill_after}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let mut broker = start(port, &dir, runtime);
        subscribe_and_leave(port).await;
        let acked = publish_until_killed(port, kill_after, &mut broker).await;
        assert!(acked.len() >= kill_after, "the load ran until the kill");
        let mut broker = start(port, &dir, runtime);
        for (id, v) in [("sub5", ProtocolVersion::V5), ("sub311", ProtocolVersion::V3_1_1)] {
            let seen = collect(port, id, v).await;
            for body in &acked {
                assert!(
                    seen.contains_key(body),
                    "{runtime} {id}: acknowledged {body} lost (kill after {kill_after})"
                );
            }
            for (body, n) in &seen {
                assert_eq!(*n, 1, "{id}: QoS 2 message {body} arrived {n} times");
            }
        }
        // The retained message is there for a new subscriber.
        let c = Client::connect(ConnectOptions::new("127.0.0.1", port)).await.unwrap();
        c.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
        let m =
            tokio::time::timeout(Duration::from_secs(5), c.next_message()).await.unwrap().unwrap();
        assert_eq!(&m.payload[..], b"kept");
        broker.kill().unwrap();
        broker.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
