//! Bridges against real brokers: the `ternmq broker` program bridged to a Mosquitto started by
//! the test (out, in and both, with prefixes, at QoS 0, 1 and 2, in both protocol versions;
//! retained messages both ways; failover; a SIGKILL of the bridging broker under load), and two
//! ternmq brokers bridged both ways with no loop.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Broker, Seen, TempDir, client_options, free_port, gather, http};
use ternmq::codec::{MqttStr, ProtocolVersion, Publish, QoS};
use ternmq::tokio::Client;
use ternmq::topic::TopicName;

/// A `ternmq broker` with a bridge, its log in a file; killed on drop.
struct Edge {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// Starts `ternmq broker` on `port` with the configuration `toml` (written to `dir`) and
    /// waits until it listens and its bridge is connected (unless `wait_bridge` is false).
    fn start(dir: &Path, port: u16, toml: &str, data: Option<&Path>, wait_bridge: bool) -> Edge {
        Self::start_with(dir, port, toml, data, wait_bridge, &[])
    }

    /// [`start`](Self::start) with `extra` flags (`--runtime std`).
    fn start_with(
        dir: &Path,
        port: u16,
        toml: &str,
        data: Option<&Path>,
        wait_bridge: bool,
        extra: &[&str],
    ) -> Edge {
        let conf = dir.join(format!("edge-{port}.toml"));
        std::fs::write(&conf, toml).unwrap();
        let log = dir.join(format!("edge-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ternmq"));
        cmd.args(["broker", "-p", &port.to_string(), "-c", conf.to_str().unwrap()]);
        match data {
            Some(d) => cmd.args(["--data-dir", d.to_str().unwrap()]),
            None => cmd.arg("--no-persistence"),
        };
        cmd.args(extra);
        let child =
            cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let edge = Edge { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ternmq did not listen: {}", edge.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        if wait_bridge {
            edge.wait_log("connected to address", 1);
        }
        edge
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `text` appears `n` times in the log.
    fn wait_log(&self, text: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_text().matches(text).count() < n {
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn version_key(v: ProtocolVersion) -> &'static str {
    if v.is_v5() { "5" } else { "3.1.1" }
}

/// A bridge table named `cloud` to `addresses`, with `rules` (`[[bridge.topic]]` tables).
fn bridge_toml(addresses: &[u16], v: ProtocolVersion, rules: &str) -> String {
    let list: Vec<String> = addresses.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[[bridge]]\nname = \"cloud\"\naddress = [{}]\nprotocol_version = \"{}\"\n\
         client_id = \"edge-{}\"\nkeep_alive = 30\n{rules}",
        list.join(", "),
        version_key(v),
        addresses.last().copied().unwrap_or(0),
    )
}

fn rule(pattern: &str, direction: &str, qos: u8, local: &str, remote: &str) -> String {
    format!(
        "[[bridge.topic]]\npattern = \"{pattern}\"\ndirection = \"{direction}\"\nqos = {qos}\n\
         local_prefix = \"{local}\"\nremote_prefix = \"{remote}\"\n"
    )
}

fn once(seen: &Seen, topic: &str, payload: &str, qos: u8) {
    let got = seen.get(&(topic.to_string(), payload.to_string()));
    assert_eq!(got, Some(&vec![qos]), "{topic} {payload}: {seen:#?}");
}

async fn crossing(v: ProtocolVersion) {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new(&format!("bridge-cross-{}", version_key(v)));
    let mut rules = rule("o/#", "out", 2, "l/", "r/") + &rule("i/#", "in", 2, "li/", "ri/");
    // Both ways: MQTT 5 with No Local, 3.1.1 with Mosquitto's bridge flag.
    rules += &rule("b/#", "both", 2, "", "");
    let port = free_port();
    let edge = Edge::start(&dir.0, port, &bridge_toml(&[remote.port], v, &rules), None, true);
    let local_sub = Client::connect(client_options(edge.port, "local-sub", v)).await.unwrap();
    local_sub.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let remote_sub = Client::connect(client_options(remote.port, "remote-sub", v)).await.unwrap();
    remote_sub.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let local_pub = Client::connect(client_options(edge.port, "local-pub", v)).await.unwrap();
    let remote_pub = Client::connect(client_options(remote.port, "remote-pub", v)).await.unwrap();
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for q in qos {
        let n = q as u8;
        local_pub.publish("l/o/x", format!("out{n}"), q).await.unwrap();
        remote_pub.publish("ri/i/x", format!("in{n}"), q).await.unwrap();
        local_pub.publish("b/local", format!("bl{n}"), q).await.unwrap();
        remote_pub.publish("b/remote", format!("br{n}"), q).await.unwrap();
    }
    let per_side = 12;
    let (local, remote_seen) = tokio::join!(
        gather(&local_sub, per_side, Duration::from_secs(15)),
        gather(&remote_sub, per_side, Duration::from_secs(15))
    );
    for q in 0..3u8 {
        // Each side's subscriber: its own side's publishes, and the other side's carried over.
        once(&local, "l/o/x", &format!("out{q}"), q);
        once(&local, "li/i/x", &format!("in{q}"), q);
        once(&remote_seen, "r/o/x", &format!("out{q}"), q);
        once(&remote_seen, "ri/i/x", &format!("in{q}"), q);
        for seen in [&local, &remote_seen] {
            once(seen, "b/local", &format!("bl{q}"), q);
            once(seen, "b/remote", &format!("br{q}"), q);
        }
    }
    assert_eq!(local.len(), per_side, "only these, locally: {local:#?}");
    assert_eq!(remote_seen.len(), per_side, "only these, remotely: {remote_seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_in_and_both_cross_with_prefixes_at_every_qos_mqtt5() {
    crossing(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_in_and_both_cross_with_prefixes_at_every_qos_mqtt311() {
    crossing(ProtocolVersion::V3_1_1).await;
}

/// Subscribes to `topic` on `port` until a retained message arrives (or 10 s).
async fn retained(port: u16, topic: &str, v: ProtocolVersion) -> Option<Publish> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let c = Client::connect(client_options(port, &format!("probe{n}"), v)).await.unwrap();
        c.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), c.next_message()).await;
        c.disconnect().await.unwrap();
        if let Ok(Some(m)) = got {
            return Some(m);
        }
    }
    None
}

async fn retained_both_ways(v: ProtocolVersion) {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new(&format!("bridge-retained-{}", version_key(v)));
    // Retained on the remote broker before the bridge comes up.
    let rp = Client::connect(client_options(remote.port, "rp", v)).await.unwrap();
    let mut p = Publish::new(TopicName::new("ri/i/state").unwrap(), "remote-state");
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    rp.publish_with(p).await.unwrap();
    let rules = rule("o/#", "out", 1, "l/", "r/") + &rule("i/#", "in", 1, "li/", "ri/");
    let edge =
        Edge::start(&dir.0, free_port(), &bridge_toml(&[remote.port], v, &rules), None, true);
    let lp = Client::connect(client_options(edge.port, "lp", v)).await.unwrap();
    let mut p = Publish::new(TopicName::new("l/o/state").unwrap(), "local-state");
    p.qos = QoS::AtLeastOnce;
    p.retain = true;
    lp.publish_with(p).await.unwrap();
    let at_remote = retained(remote.port, "r/o/state", v).await.expect("retained at the remote");
    assert!(at_remote.retain && &at_remote.payload[..] == b"local-state", "{at_remote:?}");
    let at_edge = retained(edge.port, "li/i/state", v).await.expect("retained at the edge");
    assert!(at_edge.retain && &at_edge.payload[..] == b"remote-state", "{at_edge:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_cross_both_ways_mqtt5() {
    retained_both_ways(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_cross_both_ways_mqtt311() {
    retained_both_ways(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_address_serves_when_the_first_is_down() {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new("bridge-failover");
    let v = ProtocolVersion::V5;
    let down = free_port();
    let toml = bridge_toml(&[down, remote.port], v, &rule("o/#", "out", 1, "", ""));
    let edge = Edge::start(&dir.0, free_port(), &toml, None, true);
    assert!(edge.log_text().contains("connected to address 2"), "{}", edge.log_text());
    let sub = Client::connect(client_options(remote.port, "sub", v)).await.unwrap();
    sub.subscribe("o/#", QoS::AtLeastOnce).await.unwrap();
    let p = Client::connect(client_options(edge.port, "p", v)).await.unwrap();
    p.publish("o/1", "via-second", QoS::AtLeastOnce).await.unwrap();
    once(&gather(&sub, 1, Duration::from_secs(15)).await, "o/1", "via-second", 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ternmq_brokers_bridged_both_ways_carry_each_message_once() {
    for v in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        two_ternmq_brokers(v).await;
    }
}

async fn two_ternmq_brokers(v: ProtocolVersion) {
    let dir = TempDir::new(&format!("bridge-two-{}", version_key(v)));
    let b = Edge::start(&dir.0, free_port(), "", None, false);
    let a = Edge::start(
        &dir.0,
        free_port(),
        &bridge_toml(&[b.port], v, &rule("#", "both", 2, "", "")),
        None,
        true,
    );
    let sub_a = Client::connect(client_options(a.port, "sub-a", v)).await.unwrap();
    sub_a.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let sub_b = Client::connect(client_options(b.port, "sub-b", v)).await.unwrap();
    sub_b.subscribe("#", QoS::ExactlyOnce).await.unwrap();
    let pub_a = Client::connect(client_options(a.port, "pub-a", v)).await.unwrap();
    let pub_b = Client::connect(client_options(b.port, "pub-b", v)).await.unwrap();
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        pub_a.publish("t/a", format!("a{}", q as u8), q).await.unwrap();
        pub_b.publish("t/b", format!("b{}", q as u8), q).await.unwrap();
    }
    let (seen_a, seen_b) = tokio::join!(
        gather(&sub_a, 6, Duration::from_secs(15)),
        gather(&sub_b, 6, Duration::from_secs(15))
    );
    for seen in [&seen_a, &seen_b] {
        for q in 0..3u8 {
            once(seen, "t/a", &format!("a{q}"), q);
            once(seen, "t/b", &format!("b{q}"), q);
        }
        assert_eq!(seen.len(), 6, "{seen:#?}");
    }
}

/// Which of the `acked` load messages (`load/q1` at QoS 1, `load/q2` at QoS 2) the remote
/// subscriber did not get under `r/`; fails if a QoS 2 one arrived more than once.
fn missing_from(acked: &[(String, QoS)], seen: &Seen) -> Vec<String> {
    let mut missing = Vec::new();
    for (body, qos) in acked {
        let topic = if *qos == QoS::AtLeastOnce { "r/load/q1" } else { "r/load/q2" };
        match seen.get(&(topic.to_string(), body.clone())) {
            None => missing.push(body.clone()),
            Some(d) if *qos == QoS::ExactlyOnce => {
                assert_eq!(d.len(), 1, "QoS 2 message {body} arrived {} times", d.len());
            }
            Some(_) => {}
        }
    }
    missing
}

/// QoS 1 and 2 load through the bridge while the bridging broker is killed with SIGKILL and
/// started again on its data directory: every message the publisher saw acknowledged reaches
/// the remote subscriber, and each QoS 2 message once. The remote broker is frozen (SIGSTOP)
/// for the second half of the load, so that the bridging broker holds a backlog (sent and not
/// acknowledged, and queued) when it dies; it thaws once the bridging broker is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_cross_a_sigkill_of_the_bridging_broker() {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new("bridge-kill");
    let data = dir.0.join("data");
    let v = ProtocolVersion::V5;
    let sub = Client::connect(client_options(remote.port, "collector", v)).await.unwrap();
    sub.subscribe("r/load/#", QoS::ExactlyOnce).await.unwrap();
    let toml = bridge_toml(&[remote.port], v, &rule("load/#", "out", 2, "", "r/"));
    let port = free_port();
    let mut edge = Edge::start(&dir.0, port, &toml, Some(&data), true);
    let publisher = Client::connect(client_options(port, "loader", v)).await.unwrap();
    let mut acked = Vec::new();
    let (freeze_at, kill_at) = (200, 700);
    for i in 0..10_000 {
        if i == freeze_at {
            remote.signal("STOP");
        }
        if i == kill_at {
            edge.child.kill().unwrap(); // SIGKILL
            edge.child.wait().unwrap();
            remote.signal("CONT");
        }
        let (topic, qos) =
            if i % 2 == 0 { ("load/q1", QoS::AtLeastOnce) } else { ("load/q2", QoS::ExactlyOnce) };
        match publisher.publish(topic, format!("m{i}"), qos).await {
            Ok(_) => acked.push((format!("m{i}"), qos)),
            Err(_) => break,
        }
    }
    drop(publisher);
    let _again = Edge::start(&dir.0, port, &toml, Some(&data), true);
    let seen = gather(&sub, acked.len(), Duration::from_secs(15)).await;
    let missing = missing_from(&acked, &seen);
    assert!(missing.is_empty(), "{} acknowledged messages lost: {missing:?}", missing.len());
    drop(edge);
}

/// MQTT 5 to MQTT 5: user properties, content type, response topic and correlation data pass
/// through both ways, and the message expiry interval is carried (and counts down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_and_expiry_cross_both_ways() {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new("bridge-props");
    let v = ProtocolVersion::V5;
    let rules = rule("o/#", "out", 1, "", "") + &rule("i/#", "in", 1, "", "");
    let edge =
        Edge::start(&dir.0, free_port(), &bridge_toml(&[remote.port], v, &rules), None, true);
    let remote_sub = Client::connect(client_options(remote.port, "rs", v)).await.unwrap();
    remote_sub.subscribe("o/#", QoS::AtLeastOnce).await.unwrap();
    let edge_sub = Client::connect(client_options(edge.port, "es", v)).await.unwrap();
    edge_sub.subscribe("i/#", QoS::AtLeastOnce).await.unwrap();
    let with_properties = |topic: &str| {
        let mut p = Publish::new(TopicName::new(topic).unwrap(), "body");
        p.qos = QoS::AtLeastOnce;
        let props = &mut p.properties;
        props.message_expiry_interval = Some(120);
        props.user_properties =
            vec![(MqttStr::new("site").unwrap(), MqttStr::new("north").unwrap())];
        props.content_type = Some(MqttStr::new("text/plain").unwrap());
        props.response_topic = Some(TopicName::new("replies/1").unwrap());
        props.correlation_data = Some(bytes::Bytes::from_static(b"c-7"));
        p
    };
    let edge_pub = Client::connect(client_options(edge.port, "ep", v)).await.unwrap();
    edge_pub.publish_with(with_properties("o/x")).await.unwrap();
    let remote_pub = Client::connect(client_options(remote.port, "rp", v)).await.unwrap();
    remote_pub.publish_with(with_properties("i/x")).await.unwrap();
    for sub in [&remote_sub, &edge_sub] {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next_message())
            .await
            .unwrap()
            .unwrap();
        let p = &m.properties;
        assert_eq!(p.user_properties.len(), 1, "{m:?}");
        assert_eq!(p.user_properties[0].1.as_str(), "north");
        assert_eq!(p.content_type.as_ref().map(MqttStr::as_str), Some("text/plain"));
        assert_eq!(p.response_topic.as_ref().map(TopicName::as_str), Some("replies/1"));
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c-7"[..]));
        let left = p.message_expiry_interval.expect("the expiry crossed");
        assert!(left > 0 && left <= 120, "{left}");
    }
}

/// A remote broker that refuses the bridge: the log says why, and the bridge does not retry
/// in a tight loop (it waits the longest backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bridge_says_why_and_backs_off() {
    let Some(remote) = Broker::start_with("allow_anonymous false\n") else { return };
    let dir = TempDir::new("bridge-refused");
    let v = ProtocolVersion::V5;
    let toml = bridge_toml(&[remote.port], v, &rule("o/#", "out", 1, "", "")).replace(
        "keep_alive = 30\n",
        "keep_alive = 30\nusername = \"edge\"\npassword = \"wrong\"\n",
    );
    let edge = Edge::start(&dir.0, free_port(), &toml, None, false);
    edge.wait_log("refused the connection", 1);
    let log = edge.log_text();
    assert!(log.contains("NotAuthorized") || log.contains("BadUserNameOrPassword"), "{log}");
    std::thread::sleep(Duration::from_secs(3));
    let log = edge.log_text();
    assert_eq!(log.matches("refused the connection").count(), 1, "a tight loop: {log}");
}

/// QoS 1 and 2 load through the bridge while the remote Mosquitto (with its persistence) is
/// stopped and started again: every message the publisher saw acknowledged reaches the remote
/// subscriber (a persistent session), each QoS 2 message once. What the publisher sends while
/// the remote broker is down waits in the bridge's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_cross_a_restart_of_the_remote_broker() {
    let Some(mut remote) = Broker::start_with("allow_anonymous true\n") else { return };
    // Mosquitto keeps sessions and queued messages across the restart.
    let conf = remote.dir().join("mosquitto.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace("persistence false\n", "");
    let persistence = format!(
        "persistence true\npersistence_location {}/\nautosave_interval 0\n",
        remote.dir().display()
    );
    std::fs::write(&conf, format!("{text}{persistence}")).unwrap();
    // Started as root, Mosquitto writes as its own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(remote.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    remote.stop();
    remote.start_again();
    let dir = TempDir::new("bridge-remote-restart");
    let v = ProtocolVersion::V5;
    let collector = |port| {
        let mut o = client_options(port, "collector", v);
        o.connect.clean_start = false;
        o.connect.properties.session_expiry_interval = Some(3600);
        o
    };
    let sub = Client::connect(collector(remote.port)).await.unwrap();
    sub.subscribe("r/load/#", QoS::ExactlyOnce).await.unwrap();
    let toml = bridge_toml(&[remote.port], v, &rule("load/#", "out", 2, "", "r/"));
    let edge = Edge::start(&dir.0, free_port(), &toml, Some(&dir.0.join("data")), true);
    let publisher = Client::connect(client_options(edge.port, "loader", v)).await.unwrap();
    let mut acked = Vec::new();
    let mut seen = Seen::new();
    for i in 0..600 {
        if i == 200 {
            // The collector's last messages before the stop, then the stop.
            seen = gather(&sub, 100, Duration::from_secs(15)).await;
            drop(sub.disconnect().await);
            remote.stop();
        }
        if i == 400 {
            remote.start_again();
        }
        let (topic, qos) =
            if i % 2 == 0 { ("load/q1", QoS::AtLeastOnce) } else { ("load/q2", QoS::ExactlyOnce) };
        publisher.publish(topic, format!("m{i}"), qos).await.unwrap();
        acked.push((format!("m{i}"), qos));
    }
    let sub = Client::connect(collector(remote.port)).await.unwrap();
    for (key, qos) in
        gather(&sub, acked.len().saturating_sub(seen.len()), Duration::from_secs(15)).await
    {
        seen.entry(key).or_default().extend(qos);
    }
    let missing = missing_from(&acked, &seen);
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost: {:?}...\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        edge.log_text()
    );
    assert!(edge.log_text().matches("connected to address").count() >= 2, "{}", edge.log_text());
}

/// A bridge's figures: Mosquitto's `$SYS/broker/connection/<name>/state`, ours under
/// `$SYS/broker/bridges/<name>/`, `bridges` in `/api/v1/stats`, `ternmq_bridge_*` in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_figures_are_in_sys_the_api_and_metrics() {
    let Some(remote) = Broker::start() else { return };
    let dir = TempDir::new("bridge-figures");
    let v = ProtocolVersion::V5;
    let http_port = free_port();
    let toml = format!(
        "sys_interval = 1\n[http]\nbind = \"127.0.0.1:{http_port}\"\n{}",
        bridge_toml(&[remote.port], v, &rule("o/#", "out", 1, "", ""))
    );
    let edge = Edge::start(&dir.0, free_port(), &toml, None, true);
    let p = Client::connect(client_options(edge.port, "p", v)).await.unwrap();
    for i in 0..3 {
        p.publish("o/x", format!("m{i}"), QoS::AtLeastOnce).await.unwrap();
    }
    // $SYS is published every second: the state once the bridge is up.
    let sys = Client::connect(client_options(edge.port, "sys", v)).await.unwrap();
    sys.subscribe("$SYS/broker/connection/cloud/state", QoS::AtMostOnce).await.unwrap();
    sys.subscribe("$SYS/broker/bridges/cloud/sent", QoS::AtMostOnce).await.unwrap();
    let mut state = None;
    let mut sent = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (state.as_deref() != Some("1") || sent.as_deref() != Some("3"))
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sys.next_message()).await
        {
            let value = Some(String::from_utf8_lossy(&m.payload).into_owned());
            if m.topic.as_str().ends_with("/state") { state = value } else { sent = value }
        }
    }
    assert_eq!((state.as_deref(), sent.as_deref()), (Some("1"), Some("3")));
    let port = http_port;
    let stats = tokio::task::spawn_blocking(move || http(port, "GET", "/api/v1/stats", None, None))
        .await
        .unwrap();
    assert_eq!(stats.status, 200, "{}", stats.body);
    let bridge = &stats.json()["bridges"][0];
    assert_eq!(bridge["name"], "cloud", "{bridge}");
    assert_eq!(bridge["connected"], true, "{bridge}");
    assert_eq!(bridge["sent"], 3, "{bridge}");
    let metrics = tokio::task::spawn_blocking(move || http(port, "GET", "/metrics", None, None))
        .await
        .unwrap();
    assert!(
        metrics.body.contains("ternmq_bridge_connected{bridge=\"cloud\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("ternmq_bridge_sent_messages_total{bridge=\"cloud\"} 3"),
        "{}",
        metrics.body
    );
    // A changed bridge takes a restart, and a reload says so; the running bridge goes on.
    let conf = dir.0.join(format!("edge-{}.toml", edge.port));
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("pattern = \"o/#\"", "pattern = \"other/#\"")).unwrap();
    let reloaded =
        tokio::task::spawn_blocking(move || http(port, "POST", "/api/v1/reload", None, None))
            .await
            .unwrap();
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let names = reloaded.json()["restart_needed"].clone();
    assert!(names.as_array().is_some_and(|n| n.iter().any(|x| x == "bridge")), "{names}");
    p.publish("o/x", "after-reload", QoS::AtLeastOnce).await.unwrap();
    let stats = tokio::task::spawn_blocking(move || http(port, "GET", "/api/v1/stats", None, None))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sent = stats.json()["bridges"][0]["sent"].clone();
    while sent != 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = tokio::task::spawn_blocking(move || http(port, "GET", "/api/v1/stats", None, None))
            .await
            .unwrap();
        sent = s.json()["bridges"][0]["sent"].clone();
    }
    assert_eq!(sent, 4, "the bridge goes on after the reload");
}

/// The same bridge on the std and smol servers: out and in at QoS 1 and 2, over TLS-less TCP,
/// and a stop that disconnects it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_run_on_the_std_and_smol_servers() {
    let Some(remote) = Broker::start() else { return };
    for runtime in ["std", "smol"] {
        let dir = TempDir::new(&format!("bridge-{runtime}"));
        let v = ProtocolVersion::V5;
        let rules = rule("o/#", "out", 2, "", "") + &rule("i/#", "in", 2, "", "");
        let toml = bridge_toml(&[remote.port], v, &rules);
        let extra = ["--runtime", runtime];
        let edge = Edge::start_with(&dir.0, free_port(), &toml, None, true, &extra);
        let remote_sub = Client::connect(client_options(remote.port, "rs", v)).await.unwrap();
        remote_sub.subscribe("o/#", QoS::ExactlyOnce).await.unwrap();
        let edge_sub = Client::connect(client_options(edge.port, "es", v)).await.unwrap();
        edge_sub.subscribe("i/#", QoS::ExactlyOnce).await.unwrap();
        let edge_pub = Client::connect(client_options(edge.port, "ep", v)).await.unwrap();
        let remote_pub = Client::connect(client_options(remote.port, "rp", v)).await.unwrap();
        for q in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            edge_pub.publish("o/x", format!("{runtime}{}", q as u8), q).await.unwrap();
            remote_pub.publish("i/x", format!("{runtime}{}", q as u8), q).await.unwrap();
        }
        let (at_remote, at_edge) = tokio::join!(
            gather(&remote_sub, 2, Duration::from_secs(15)),
            gather(&edge_sub, 2, Duration::from_secs(15))
        );
        for q in 1..3u8 {
            once(&at_remote, "o/x", &format!("{runtime}{q}"), q);
            once(&at_edge, "i/x", &format!("{runtime}{q}"), q);
        }
        remote_sub.disconnect().await.unwrap();
        let mut edge = edge;
        support::signal(&edge.child, "TERM");
        let status = support::wait_exit(&mut edge.child, Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{runtime}: {status:?}\n{}", edge.log_text());
    }
}

/// Bridges over TLS (with a client certificate the remote broker requires) and over WebSocket
/// over TLS, to a ternmq broker with such listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_cross_tls_with_a_client_certificate_and_secure_websocket() {
    use std::net::SocketAddr;
    use ternmq::tokio::{Listener, ServerConfig, TlsAcceptor, TlsSettings};
    let pki = support::pki::Pki::new("bridge-tls");
    let (cert, key) = pki.client("edge");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig::new(any);
    let mutual = TlsSettings {
        cafile: Some(pki.path("ca.pem")),
        require_certificate: true,
        ..pki.settings()
    };
    config.listeners = vec![
        Listener::from(any),
        Listener { tls: Some(TlsAcceptor::new(mutual).unwrap()), ..Listener::from(any) },
        Listener {
            tls: Some(TlsAcceptor::new(pki.settings()).unwrap()),
            ws_path: Some("/mqtt".into()),
            ..Listener::from(any)
        },
    ];
    // On a thread of its own: this test already runs in a Tokio runtime.
    let (addrs, _remote) = support::serve("smol", config);
    let (plain, tls, wss) = (addrs[0].port(), addrs[1].port(), addrs[2].port());
    let v = ProtocolVersion::V5;
    let table = |name: &str, address: String, topic: &str, client_cert: bool| {
        let mut t = format!(
            "[[bridge]]\nname = \"{name}\"\naddress = \"{address}\"\ncafile = \"{}\"\n",
            pki.path("ca.pem").display()
        );
        if client_cert {
            t += &format!("certfile = \"{}\"\nkeyfile = \"{}\"\n", cert.display(), key.display());
        }
        t + &rule(topic, "out", 1, "", "")
    };
    let toml = table("tls", format!("mqtts://127.0.0.1:{tls}"), "t/#", true)
        + &table("wss", format!("wss://127.0.0.1:{wss}/mqtt"), "w/#", false);
    let dir = TempDir::new("bridge-tls-edge");
    let edge = Edge::start(&dir.0, free_port(), &toml, None, false);
    edge.wait_log("connected to address", 2);
    let sub = Client::connect(client_options(plain, "sub", v)).await.unwrap();
    sub.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let p = Client::connect(client_options(edge.port, "p", v)).await.unwrap();
    p.publish("t/1", "over-tls", QoS::AtLeastOnce).await.unwrap();
    p.publish("w/1", "over-wss", QoS::AtLeastOnce).await.unwrap();
    let seen = gather(&sub, 2, Duration::from_secs(15)).await;
    once(&seen, "t/1", "over-tls", 1);
    once(&seen, "w/1", "over-wss", 1);
}
