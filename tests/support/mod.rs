//! Test support: a private Mosquitto broker on a free loopback port.
//!
//! Without a `mosquitto` binary, [`Broker::start`] returns `None` (the test prints that it was
//! skipped) unless `TERNMQ_REQUIRE_INTEROP` is set, as `scripts/test.sh` does; then a missing
//! peer fails the test.

#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod pki;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant as StdInstant};

fn mosquitto_binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// An HTTP answer: status, headers (lower-cased names) and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(StdDuration::from_secs(20))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Answer { status, headers: head.to_lowercase(), body: body.to_string() }
}

/// A private Mosquitto, killed on drop.
pub(crate) struct Broker {
    child: Child,
    /// The loopback port it listens on.
    pub(crate) port: u16,
    _dir: TempDir,
}

/// A directory of this test process, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// A new, empty directory named after `tag` and this process.
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ternmq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Broker {
    /// Starts a broker on a free port.
    pub(crate) fn start() -> Option<Broker> {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts a broker on a free port with `config` appended to its listener line.
    pub(crate) fn start_with(config: &str) -> Option<Broker> {
        let Some(bin) = mosquitto_binary() else {
            assert!(
                std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_none(),
                "mosquitto is required (TERNMQ_REQUIRE_INTEROP is set) but not installed"
            );
            eprintln!("skipped: mosquitto not installed (scripts/test.sh installs it)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(&bin, port, config)
    }

    fn start_on(bin: &std::path::Path, port: u16, config: &str) -> Option<Broker> {
        let dir = std::env::temp_dir().join(format!("ternmq-mosq-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\npersistence false\n{config}"))
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Broker { child, port, _dir: TempDir(dir) };
        let deadline = StdInstant::now() + StdDuration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(StdInstant::now() < deadline, "mosquitto did not start on port {port}");
            std::thread::sleep(StdDuration::from_millis(20));
        }
        Some(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// The directory of its configuration file, where a `persistence_location` may point.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self._dir.0
    }

    /// Stops the broker as an operator would (SIGTERM: Mosquitto saves its persistence file)
    /// and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        signal(&self.child, "TERM");
        let _ = self.child.wait();
    }

    /// Starts the broker again, on the same port with the same configuration file.
    pub(crate) fn start_again(&mut self) {
        let bin = mosquitto_binary().unwrap();
        self.child = Command::new(bin)
            .arg("-c")
            .arg(self._dir.0.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = StdInstant::now() + StdDuration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(StdInstant::now() < deadline, "mosquitto did not start again");
            std::thread::sleep(StdDuration::from_millis(20));
        }
    }

    /// Sends signal `name` (`STOP`, `CONT`, ...) to the broker.
    pub(crate) fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Kills the broker (as a crash would) and starts a new one on the same port.
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = mosquitto_binary().unwrap();
        let mut fresh = Broker::start_on(&bin, self.port, "allow_anonymous true\n").unwrap();
        std::mem::swap(self, &mut fresh);
    }
}

/// The path of example `name`, built if `cargo test` did not build it (as with `--test X`).
pub(crate) fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let bin = examples.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", name]);
        if examples.parent().is_some_and(|p| p.ends_with("release")) {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "could not build the {name} example");
    }
    bin
}

/// A free loopback port (free when asked; a test binds it soon after).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `ternmq broker` process (the real program, built with the tests), killed on drop.
pub(crate) struct Ternmq {
    pub(crate) child: Child,
    /// The loopback port it listens on.
    pub(crate) port: u16,
    /// Its standard output after the `listening on` line.
    pub(crate) stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Ternmq {
    /// Starts `ternmq broker --no-persistence` with `extra` flags on a free port.
    pub(crate) fn start(extra: &[&str]) -> Ternmq {
        let mut args = vec!["--no-persistence"];
        args.extend_from_slice(extra);
        Self::start_on(free_port(), &args, Stdio::null())
    }

    /// Starts `ternmq broker -p port` with `args`, its standard error going to `stderr`, and
    /// waits until it listens.
    pub(crate) fn start_on(port: u16, args: &[&str], stderr: Stdio) -> Ternmq {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ternmq"))
            .args(["broker", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // The listener line is printed once the port is bound.
        loop {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "broker exited before listening");
            if line.starts_with("listening on") {
                assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
                break;
            }
        }
        Ternmq { child, port, stdout }
    }

    /// Sends SIGTERM and returns the rest of standard output and the exit status.
    pub(crate) fn terminate(mut self) -> (String, std::process::ExitStatus) {
        use std::io::Read;
        signal(&self.child, "TERM");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (rest, status)
    }
}

impl Drop for Ternmq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `name` (`TERM`, `INT`, `HUP`) to `child`.
pub(crate) fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits up to `limit` for `child` to exit; kills it and returns `None` if it does not.
pub(crate) fn wait_exit(child: &mut Child, limit: StdDuration) -> Option<std::process::ExitStatus> {
    let deadline = StdInstant::now() + limit;
    while StdInstant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(StdDuration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A running broker server of one runtime (from [`serve`]); stops on drop.
pub(crate) struct Running {
    pub(crate) control: ternmq::tokio::Control,
    server: Server,
}

enum Server {
    /// The runtime is kept so that the server task lives as long as this value.
    Tokio(
        tokio::runtime::Runtime,
        ternmq::tokio::ShutdownHandle,
        Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    ),
    Std(ternmq::blocking::ShutdownHandle, Option<std::thread::JoinHandle<()>>),
    Smol(ternmq::smol::ShutdownHandle, Option<std::thread::JoinHandle<()>>),
}

impl Drop for Running {
    fn drop(&mut self) {
        match &mut self.server {
            // Waits for the server to finish, so that its store is closed when this returns.
            Server::Tokio(rt, h, task) => {
                h.shutdown();
                if let Some(task) = task.take() {
                    let _ = rt.block_on(task);
                }
            }
            Server::Std(h, t) | Server::Smol(h, t) => {
                h.shutdown();
                if let Some(t) = t.take() {
                    t.join().unwrap();
                }
            }
        }
    }
}

/// Serves `config` on the server of `runtime` ("tokio", "std", "std-io": the std server with
/// two I/O threads beside the broker's, or "smol"), in this process; returns the addresses
/// bound, in the order of its listeners.
pub(crate) fn serve(
    runtime: &str,
    config: ternmq::tokio::ServerConfig,
) -> (Vec<std::net::SocketAddr>, Running) {
    match runtime {
        "tokio" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = rt.block_on(ternmq::tokio::Server::bind(config)).unwrap();
            let addrs = server.local_addrs();
            let handle = server.shutdown_handle();
            let control = server.control();
            let task = rt.spawn(server.run());
            (addrs, Running { control, server: Server::Tokio(rt, handle, Some(task)) })
        }
        "std" | "std-io" => {
            let threads = if runtime == "std" { 1 } else { 2 };
            let server = ternmq::blocking::Server::bind(config).unwrap().io_threads(threads);
            let addrs = server.local_addrs();
            let handle = server.shutdown_handle();
            let control = server.control();
            let t = std::thread::spawn(move || server.run().unwrap());
            (addrs, Running { control, server: Server::Std(handle, Some(t)) })
        }
        "smol" => {
            let server = ternmq::smol::Server::bind_blocking(config).unwrap();
            let addrs = server.local_addrs();
            let handle = server.shutdown_handle();
            let control = server.control();
            let t = std::thread::spawn(move || server.run_blocking().unwrap());
            (addrs, Running { control, server: Server::Smol(handle, Some(t)) })
        }
        other => panic!("no runtime {other}"),
    }
}

/// Waits for `fut` at most `timeout` (on smol's timer, so on any executor).
pub(crate) async fn within<T>(
    timeout: std::time::Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    smol::future::or(async { Some(fut.await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await
}

/// With the client of runtime `client` ("std", "tokio" or "smol") connected with `options`:
/// subscribes to `topic`, publishes at QoS 2 and receives the message exactly once.
pub(crate) fn round_trip(client: &str, options: ternmq::blocking::ConnectOptions, topic: &str) {
    use ternmq::codec::{QoS, ReasonCode};
    let second = std::time::Duration::from_millis(200);
    let ten = std::time::Duration::from_secs(10);
    match client {
        "std" => {
            let c = ternmq::blocking::SyncClient::connect(options).unwrap();
            assert_eq!(c.subscribe(topic, QoS::ExactlyOnce).unwrap(), ReasonCode::GrantedQoS2);
            c.publish(topic, "payload", QoS::ExactlyOnce).unwrap();
            let m = c.recv_timeout(ten).expect("the message");
            assert_eq!((&m.payload[..], m.qos), (&b"payload"[..], QoS::ExactlyOnce));
            assert!(c.recv_timeout(second).is_none(), "exactly once");
            c.disconnect().unwrap();
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let c = ternmq::tokio::Client::connect(options).await.unwrap();
                let granted = c.subscribe(topic, QoS::ExactlyOnce).await.unwrap();
                assert_eq!(granted, ReasonCode::GrantedQoS2);
                c.publish(topic, "payload", QoS::ExactlyOnce).await.unwrap();
                let m = within(ten, c.next_message()).await.flatten().expect("the message");
                assert_eq!((&m.payload[..], m.qos), (&b"payload"[..], QoS::ExactlyOnce));
                assert!(within(second, c.next_message()).await.is_none(), "exactly once");
                c.disconnect().await.unwrap();
            });
        }
        "smol" => smol::block_on(async {
            let c = ternmq::smol::Client::connect(options).await.unwrap();
            let granted = c.subscribe(topic, QoS::ExactlyOnce).await.unwrap();
            assert_eq!(granted, ReasonCode::GrantedQoS2);
            c.publish(topic, "payload", QoS::ExactlyOnce).await.unwrap();
            let m = within(ten, c.next_message()).await.flatten().expect("the message");
            assert_eq!((&m.payload[..], m.qos), (&b"payload"[..], QoS::ExactlyOnce));
            assert!(within(second, c.next_message()).await.is_none(), "exactly once");
            c.disconnect().await.unwrap();
        }),
        other => panic!("no client {other}"),
    }
}

/// Whether a real peer (`what`) is here: without it a test is skipped, unless
/// `TERNMQ_REQUIRE_INTEROP` says it must be (as `scripts/test.sh` does).
pub(crate) fn peer_present(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_none(),
            "{what} is required (TERNMQ_REQUIRE_INTEROP is set) but missing"
        );
        eprintln!("skipped: {what} missing (scripts/test.sh installs it)");
    }
    found
}

/// An MQTT 3.1.1 CONNECT with client id `id` (clean session, keep-alive 60 s), as bytes.
pub(crate) fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04\x02\x00\x3c".to_vec();
    body.extend_from_slice(&u16::try_from(id.len()).unwrap().to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut p = vec![0x10, u8::try_from(body.len()).unwrap()];
    p.extend(body);
    p
}

/// Options for a Tokio client of the broker on loopback `port`: client id `id`, protocol `v`,
/// no reconnecting, 10 s to connect.
pub(crate) fn client_options(
    port: u16,
    id: &str,
    v: ternmq::codec::ProtocolVersion,
) -> ternmq::tokio::ConnectOptions {
    let mut o = ternmq::tokio::ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = v;
    o.connect.client_id = ternmq::codec::MqttStr::new(id).unwrap();
    o.config.reconnect.enable = false;
    o.timeout = StdDuration::from_secs(10);
    o
}

/// Messages a subscriber saw: (topic, payload) to the QoS of each delivery.
pub(crate) type Seen = std::collections::BTreeMap<(String, String), Vec<u8>>;

/// Takes messages from `c` until `expected` deliveries have arrived (or `wait`), then for
/// 300 ms more, to catch duplicates.
pub(crate) async fn gather(c: &ternmq::tokio::Client, expected: usize, wait: StdDuration) -> Seen {
    let mut seen = Seen::new();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = if count >= expected {
            StdDuration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(left, c.next_message()).await {
            Ok(Some(m)) => {
                let key = (m.topic.to_string(), String::from_utf8_lossy(&m.payload).into_owned());
                seen.entry(key).or_default().push(m.qos as u8);
                count += 1;
            }
            _ => return seen,
        }
    }
}
