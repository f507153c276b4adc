//! `ternmq bench`: a load generator for any MQTT broker.
//!
//! Each connection is one task driving the sans-IO client state machine over TCP directly (no
//! per-message channel or future), so the generator costs little next to the broker it
//! measures. Payloads carry the publisher's number, a sequence number and the send time, so the
//! subscribers count losses, duplicates and reorders and measure latency end to end.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq::codec::{Connect, MqttStr, ProtocolVersion, Publish, QoS, Subscription};
use ternmq::core::client::{Client, ClientConfig, Event};
use ternmq::core::time::Instant;
use ternmq::topic::{TopicFilter, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ternmq::tokio::{ClientTransport, ConnectOptions, ServerUrl, Transform};

use crate::tls_flags::{TlsFlags, USAGE as TLS};

/// The usage text, with the TLS flags.
fn usage() -> String {
    format!(
        "\
usage: ternmq bench [SCENARIOS] [options]

Measures an MQTT broker (any: ternmq, Mosquitto, rumqttd, ...) with one or more scenarios and
prints a summary table: messages/s, latency p50/p99/max, losses, duplicates and reorders.

scenarios (-s, default all but idle):
  fan-in     P publishers -> 1 subscriber (default P = 10)
  fan-out    1 publisher -> S subscribers (default S = 100)
  pairs      P publishers, each with its own subscriber
  latency    1 publisher at a fixed rate (--rate) -> 1 subscriber
  idle       open --connections connections and hold them for --hold seconds
  conns      idle, by the name it also goes by: ternmq bench conns --connections 100000

options:
  -h, --host HOST       broker address (default 127.0.0.1)
  -p, --port N          broker port (default 1883; 8883 with TLS)
  -L, --url URL         the broker as mqtt://, mqtts://, ws:// or wss://HOST[:PORT][/PATH]
  -s, --scenario LIST   comma-separated scenarios, or `all` (also the first argument)
  -q, --qos N           QoS of the messages, 0, 1 or 2 (default 0)
  -V, --protocol-version 5|311   (default 5)
      --size N          payload bytes, at least 20 (default 64)
  -n, --messages N      messages per publisher (default 20000; fan-out 5000)
      --publishers N    publishers for fan-in and pairs (default 10)
      --subscribers N   subscribers for fan-out (default 100)
      --rate N          messages/s for the latency scenario (default 10000)
      --seconds N       duration of the latency scenario (default 5)
      --connections N   connections for idle (default 1000)
      --hold N          seconds idle connections are held (default 2)
      --broker-pid PID  idle: also report the broker's resident memory per connection
                        (Linux). Idle connections to a 127.x address come from 127.0.0.1,
                        127.0.0.2, ... (25,000 each), so 100,000 fit in the port range;
                        the open-file limit is raised as far as it may be
      --window N        QoS 1/2 messages in flight per publisher (default 100)
      --timeout N       seconds a scenario may take at most (default 60)
      --persistent      subscribers keep sessions (clean start 0, expiry 1 h): with a
                        durable broker their messages are stored before they are acknowledged
      --sub-host HOST, --sub-port N
                        subscribers connect there instead (another broker, bridged to the
                        publishers' one: measures the bridge)
      --help            print this help

{TLS}"
    )
}

#[derive(Clone, Debug)]
struct Options {
    host: String,
    port: u16,
    scenarios: Vec<String>,
    qos: QoS,
    version: ProtocolVersion,
    size: usize,
    messages: Option<u64>,
    publishers: usize,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    connections: usize,
    hold: u64,
    window: usize,
    timeout: Duration,
    persistent: bool,
    /// Where subscribers connect, when not to the publishers' broker.
    sub_host: Option<String>,
    sub_port: Option<u16>,
    /// The broker's process, whose resident memory `idle` reports per connection.
    broker_pid: Option<u32>,
    /// TLS or WebSocket over each connection.
    transport: Option<ClientTransport>,
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        host: "127.0.0.1".into(),
        port: 1883,
        scenarios: ["fan-in", "fan-out", "pairs", "latency"].map(String::from).to_vec(),
        qos: QoS::AtMostOnce,
        version: ProtocolVersion::V5,
        size: 64,
        messages: None,
        publishers: 10,
        subscribers: 100,
        rate: 10_000,
        seconds: 5,
        connections: 1000,
        hold: 2,
        window: 100,
        timeout: Duration::from_secs(60),
        persistent: false,
        sub_host: None,
        sub_port: None,
        broker_pid: None,
        transport: None,
    };
    let mut tls = TlsFlags::default();
    let (mut port_given, mut url_tls, mut url_ws) = (false, false, None::<String>);
    let mut it = args.iter().peekable();
    // `ternmq bench conns ...`: the scenarios may come first, without -s.
    if let Some(first) = it.next_if(|a| !a.starts_with('-')) {
        o.scenarios = scenarios(first)?;
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: {v:?} is not a valid number"))
        }
        if tls.take(flag, &mut value)? {
            continue;
        }
        match flag.as_str() {
            "--help" => return Ok(None),
            "-h" | "--host" => o.host = value()?,
            "--sub-host" => o.sub_host = Some(value()?),
            "--sub-port" => o.sub_port = Some(num(flag, value()?)?),
            "-p" | "--port" => {
                o.port = num(flag, value()?)?;
                port_given = true;
            }
            "-L" | "--url" => {
                let u = ServerUrl::parse(&value()?).map_err(|e| format!("{flag} {e}"))?;
                (o.host, o.port, url_tls, url_ws) = (u.host, u.port, u.tls, u.ws_path);
                port_given = true;
            }
            "-s" | "--scenario" => o.scenarios = scenarios(&value()?)?,
            "-q" | "--qos" => {
                o.qos = match value()?.as_str() {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    v => return Err(format!("-q: {v:?} is not a QoS (0, 1 or 2)")),
                }
            }
            "-V" | "--protocol-version" => {
                o.version = match value()?.as_str() {
                    "5" | "mqttv5" => ProtocolVersion::V5,
                    "311" | "mqttv311" => ProtocolVersion::V3_1_1,
                    v => return Err(format!("-V: {v:?} is not 5 or 311")),
                }
            }
            "--size" => o.size = num(flag, value()?)?,
            "-n" | "--messages" => o.messages = Some(num(flag, value()?)?),
            "--publishers" => o.publishers = num(flag, value()?)?,
            "--subscribers" => o.subscribers = num(flag, value()?)?,
            "--rate" => o.rate = num(flag, value()?)?,
            "--seconds" => o.seconds = num(flag, value()?)?,
            "--connections" => o.connections = num(flag, value()?)?,
            "--broker-pid" => o.broker_pid = Some(num(flag, value()?)?),
            "--hold" => o.hold = num(flag, value()?)?,
            "--window" => o.window = num(flag, value()?)?,
            "--persistent" => o.persistent = true,
            "--timeout" => o.timeout = Duration::from_secs(num(flag, value()?)?),
            other => return Err(format!("unknown option {other:?}\n\n{}", usage())),
        }
    }
    if tls.wants_tls() && !port_given {
        o.port = 8883;
    }
    let mut server = ConnectOptions::new(o.host.clone(), o.port);
    tls.apply(&mut server, url_tls, url_ws.is_some())?;
    if let Some(path) = url_ws {
        server.ws_path = Some(path);
    }
    o.transport = ClientTransport::new(&server).map_err(|e| e.to_string())?;
    if o.size < HEADER {
        return Err(format!("--size: at least {HEADER} bytes (the payload carries a header)"));
    }
    if o.publishers == 0 || o.subscribers == 0 || o.rate == 0 || o.window == 0 {
        return Err("--publishers, --subscribers, --rate and --window must be at least 1".into());
    }
    Ok(Some(o))
}

/// The scenarios `list` names (comma-separated, or `all`).
fn scenarios(list: &str) -> Result<Vec<String>, String> {
    const ALL: [&str; 5] = ["fan-in", "fan-out", "pairs", "latency", "idle"];
    if list == "all" {
        return Ok(ALL.map(String::from).to_vec());
    }
    list.split(',')
        .map(|s| match s {
            s if ALL.contains(&s) || s == CONNS => Ok(s.to_string()),
            s => Err(format!(
                "unknown scenario {s:?}: use fan-in, fan-out, pairs, latency, idle, conns or all"
            )),
        })
        .collect()
}

/// The idle scenario's other name.
const CONNS: &str = "conns";

/// Runs `ternmq bench`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some(o) = parse(args).map_err(|e| format!("ternmq bench: {e}"))? else {
        println!("{}", usage());
        return Ok(());
    };
    let rt = crate::tokio_runtime()
        .map_err(|e| format!("ternmq bench: cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let mut rows = Vec::new();
        for s in o.scenarios.clone() {
            let row = match s.as_str() {
                "idle" | CONNS => idle(&o, &s).await,
                _ => flow(&o, &s).await,
            };
            eprintln!();
            match row {
                Ok(row) => rows.push(row),
                Err(e) => {
                    print!("{}", table(&o, &rows));
                    return Err(format!("ternmq bench: {s}: {e}"));
                }
            }
        }
        print!("{}", table(&o, &rows));
        Ok(())
    })
}

/// Payload header: publisher (4), sequence (8), send time in ns since the bench started (8).
const HEADER: usize = 20;

static EPOCH: std::sync::OnceLock<StdInstant> = std::sync::OnceLock::new();

fn nanos() -> u64 {
    let epoch = *EPOCH.get_or_init(StdInstant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn core_now() -> Instant {
    Instant::from_nanos(nanos())
}

/// One connection: the client state machine over a TCP stream (with TLS or WebSocket over
/// it, when asked).
struct Conn {
    client: Client,
    stream: TcpStream,
    layer: Option<Box<dyn Transform>>,
    /// Bytes read and not yet through the layer.
    raw: BytesMut,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    async fn open(o: &Options, id: String) -> Result<Conn, String> {
        Self::open_with(o, id, false).await
    }

    /// `persistent`: a session that outlives the connection (clean start 0, MQTT 5 Session
    /// Expiry Interval 1 hour), whose messages a durable broker must store.
    async fn open_with(o: &Options, id: String, persistent: bool) -> Result<Conn, String> {
        Self::open_from(o, id, persistent, None).await
    }

    /// Opens from the local address `source` when given (any port).
    async fn open_from(
        o: &Options,
        id: String,
        persistent: bool,
        source: Option<std::net::IpAddr>,
    ) -> Result<Conn, String> {
        let cannot = |e: std::io::Error| format!("cannot connect to {}:{}: {e}", o.host, o.port);
        let stream = match source {
            None => TcpStream::connect((o.host.as_str(), o.port)).await.map_err(cannot)?,
            Some(source) => {
                let to = tokio::net::lookup_host((o.host.as_str(), o.port))
                    .await
                    .map_err(cannot)?
                    .find(|a| a.is_ipv4() == source.is_ipv4())
                    .ok_or_else(|| format!("{} has no address like {source}", o.host))?;
                let socket = if source.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(cannot)?;
                socket.bind(std::net::SocketAddr::new(source, 0)).map_err(cannot)?;
                socket.connect(to).await.map_err(cannot)?
            }
        };
        let _ = stream.set_nodelay(true);
        // The publishers pace themselves; a lost connection ends the scenario.
        let mut config = ClientConfig {
            max_queued_messages: usize::MAX,
            max_queued_bytes: usize::MAX,
            ..ClientConfig::default()
        };
        config.reconnect.enable = false;
        let mut client = Client::new(config, core_now());
        let mut c = Connect::new(o.version, MqttStr::new(&id).map_err(|e| e.to_string())?);
        c.keep_alive = 300;
        if persistent {
            c.clean_start = false;
            if o.version.is_v5() {
                c.properties.session_expiry_interval = Some(3600);
            }
        }
        client.connect(core_now(), c).map_err(|e| e.to_string())?;
        let layer = o.transport.as_ref().map(ClientTransport::session).transpose();
        let mut conn = Conn {
            client,
            stream,
            layer: layer.map_err(|e| e.to_string())?,
            raw: BytesMut::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
        };
        conn.flush().await?;
        loop {
            for e in conn.read().await? {
                match e {
                    Event::Connected { .. } => return Ok(conn),
                    Event::ConnectionRefused { reason_code, .. } => {
                        return Err(format!("connection refused: {reason_code:?}"));
                    }
                    _ => {}
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        while let Some(b) = self.client.poll_transmit(usize::MAX) {
            match &mut self.layer {
                Some(layer) => layer.write_plaintext(&b),
                None => self.wbuf.extend_from_slice(&b),
            }
        }
        if let Some(out) = self.layer.as_mut().and_then(|l| l.poll_transmit()) {
            self.wbuf.extend_from_slice(&out);
        }
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.map_err(|e| format!("write: {e}"))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Waits for input, feeds it to the client, answers (acks) and returns the events.
    async fn read(&mut self) -> Result<Vec<Event>, String> {
        let n = match &mut self.layer {
            Some(layer) => {
                self.raw.reserve(64 * 1024);
                let n = self.stream.read_buf(&mut self.raw).await;
                let n = n.map_err(|e| format!("read: {e}"))?;
                let r = layer.handle_input(&self.raw, &mut self.rbuf).map_err(|e| e.to_string())?;
                self.raw.clear();
                if r.closed { 0 } else { n }
            }
            None => {
                self.rbuf.reserve(64 * 1024);
                self.stream.read_buf(&mut self.rbuf).await.map_err(|e| format!("read: {e}"))?
            }
        };
        if n == 0 {
            return Err("the broker closed the connection".into());
        }
        self.client.handle_bytes(core_now(), &mut self.rbuf);
        let mut events = Vec::new();
        while let Some(e) = self.client.poll_event() {
            if let Event::Disconnected(reason) = &e {
                return Err(format!("disconnected: {reason:?}"));
            }
            events.push(e);
        }
        self.flush().await?;
        Ok(events)
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        let f = TopicFilter::new(filter).map_err(|e| e.to_string())?;
        self.client
            .subscribe(core_now(), &[Subscription::new(f, qos)])
            .map_err(|e| e.to_string())?;
        self.flush().await?;
        loop {
            for e in self.read().await? {
                if let Event::Subscribed { reason_codes, .. } = e {
                    return match reason_codes.first() {
                        Some(c) if c.is_error() => Err(format!("subscription refused: {c:?}")),
                        _ => Ok(()),
                    };
                }
            }
        }
    }
}

/// Counters shared with the progress line.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    received: AtomicU64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    received: u64,
    unique: u64,
    duplicates: u64,
    reorders: u64,
    latencies: Vec<u64>,
    last_at: u64,
}

struct Row {
    scenario: String,
    publishers: usize,
    subscribers: usize,
    sent: u64,
    expected: u64,
    seen: Seen,
    /// From the first publish to the last delivery, ns.
    span: u64,
    note: String,
}

async fn publisher(
    o: Options,
    name: String,
    index: u32,
    topic: String,
    count: u64,
    rate: Option<u64>,
    progress: Arc<Progress>,
) -> Result<u64, String> {
    let mut conn = Conn::open(&o, name).await?;
    let topic = TopicName::new(&topic).map_err(|e| e.to_string())?;
    let start = StdInstant::now();
    let mut acked = 0u64;
    let mut sent = 0u64;
    let mut padding = vec![0x5a; o.size];
    let qos0 = o.qos == QoS::AtMostOnce;
    while sent < count || (!qos0 && acked < count) {
        let mut batch = 0;
        while sent < count && batch < 64 {
            if !qos0 && (sent - acked) as usize >= o.window {
                break;
            }
            if let Some(rate) = rate {
                let due = start + Duration::from_nanos(sent * 1_000_000_000 / rate);
                if due > StdInstant::now() {
                    if batch > 0 {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            padding[..4].copy_from_slice(&index.to_be_bytes());
            padding[4..12].copy_from_slice(&sent.to_be_bytes());
            padding[12..20].copy_from_slice(&nanos().to_be_bytes());
            let mut p = Publish::new(topic.clone(), Bytes::copy_from_slice(&padding));
            p.qos = o.qos;
            conn.client.publish(core_now(), p).map_err(|e| e.to_string())?;
            sent += 1;
            batch += 1;
        }
        progress.sent.fetch_add(batch as u64, Ordering::Relaxed);
        conn.flush().await?;
        if !qos0 && (sent == count || (sent - acked) as usize >= o.window) {
            for e in conn.read().await? {
                if let Event::Published { .. } = e {
                    acked += 1;
                }
            }
        } else if qos0 {
            // Nothing comes back at QoS 0; keep the socket's input drained all the same.
            let _ = conn.stream.try_read_buf(&mut conn.rbuf);
            conn.rbuf.clear();
        }
    }
    Ok(sent)
}

/// What one subscriber of a scenario expects.
struct SubPlan {
    id: String,
    filter: String,
    /// Messages to wait for.
    expected: u64,
    /// Publishers feeding it, and messages from each.
    publishers: usize,
    per_publisher: u64,
}

async fn subscriber(
    o: Options,
    plan: SubPlan,
    ready: tokio::sync::mpsc::Sender<()>,
    progress: Arc<Progress>,
) -> Result<Seen, String> {
    let SubPlan { id, filter, expected, publishers, per_publisher } = plan;
    let mut o = o;
    if let Some(host) = o.sub_host.take() {
        o.host = host;
    }
    o.port = o.sub_port.unwrap_or(o.port);
    let mut conn = Conn::open_with(&o, id, o.persistent).await?;
    conn.subscribe(&filter, o.qos).await?;
    let _ = ready.send(()).await;
    let mut seen = Seen::default();
    let words = usize::try_from(per_publisher.div_ceil(64)).unwrap_or(0);
    let mut bits = vec![vec![0u64; words]; publishers];
    let mut next = vec![0u64; publishers];
    while seen.received < expected {
        // Stop waiting once nothing has arrived for a while: the rest was lost.
        let events = match tokio::time::timeout(Duration::from_secs(3), conn.read()).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        let now = nanos();
        for e in events {
            let Event::Message(m) = e else { continue };
            let p = &m.payload;
            if p.len() < HEADER {
                continue;
            }
            let mut b4 = [0u8; 4];
            let mut b8 = [0u8; 8];
            b4.copy_from_slice(&p[..4]);
            let from = u32::from_be_bytes(b4) as usize;
            b8.copy_from_slice(&p[4..12]);
            let seq = u64::from_be_bytes(b8);
            b8.copy_from_slice(&p[12..20]);
            let at = u64::from_be_bytes(b8);
            seen.received += 1;
            progress.received.fetch_add(1, Ordering::Relaxed);
            seen.last_at = now;
            if seen.latencies.len() < 4_000_000 {
                seen.latencies.push(now.saturating_sub(at));
            }
            let (Some(set), Ok(i)) = (bits.get_mut(from), usize::try_from(seq / 64)) else {
                continue;
            };
            let Some(word) = set.get_mut(i) else { continue };
            let bit = 1u64 << (seq % 64);
            if *word & bit != 0 {
                seen.duplicates += 1;
            } else {
                *word |= bit;
                seen.unique += 1;
            }
            if seq < next[from] {
                seen.reorders += 1;
            } else {
                next[from] = seq + 1;
            }
        }
    }
    Ok(seen)
}

async fn flow(o: &Options, scenario: &str) -> Result<Row, String> {
    let progress = Arc::new(Progress::default());
    let (pubs, subs, per_pub, rate) = match scenario {
        "fan-in" => (o.publishers, 1, o.messages.unwrap_or(20_000), None),
        "fan-out" => (1, o.subscribers, o.messages.unwrap_or(5_000), None),
        "pairs" => (o.publishers, o.publishers, o.messages.unwrap_or(20_000), None),
        _ => (1, 1, o.rate * o.seconds, Some(o.rate)),
    };
    let run_id = nanos() % 1_000_000;
    let topic = |p: usize| format!("bench/{run_id}/{scenario}/{p}");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subs.max(1));
    let mut sub_tasks = Vec::new();
    for s in 0..subs {
        let (filter, expected, publishers) = match scenario {
            "fan-in" => (format!("bench/{run_id}/{scenario}/+"), per_pub * pubs as u64, pubs),
            "pairs" => (topic(s), per_pub, pubs),
            _ => (topic(0), per_pub, 1),
        };
        let plan = SubPlan {
            id: format!("bench-sub-{run_id}-{s}"),
            filter,
            expected,
            publishers,
            per_publisher: per_pub,
        };
        sub_tasks.push(tokio::spawn(subscriber(
            o.clone(),
            plan,
            ready_tx.clone(),
            progress.clone(),
        )));
    }
    // Only the subscribers hold senders now: one that fails before it is ready (its broker
    // refused the connection) ends the wait rather than leave it hanging.
    drop(ready_tx);
    for _ in 0..subs {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    // A subscriber that failed to subscribe shows up when it is joined below.
    let started = nanos();
    let mut pub_tasks = Vec::new();
    for p in 0..pubs {
        // In pairs, publisher p feeds subscriber p; elsewhere each publisher has its own topic.
        let index = if scenario == "pairs" { 0 } else { p as u32 };
        pub_tasks.push(tokio::spawn(publisher(
            o.clone(),
            format!("bench-pub-{run_id}-{p}"),
            index,
            topic(p),
            per_pub,
            rate,
            progress.clone(),
        )));
    }
    let ticker = tokio::spawn(report(scenario.to_string(), progress.clone()));
    let all = async {
        let mut sent = 0;
        for t in pub_tasks {
            sent += t.await.map_err(|e| e.to_string())??;
        }
        let mut seen = Seen::default();
        for t in sub_tasks {
            let s = t.await.map_err(|e| e.to_string())??;
            seen.received += s.received;
            seen.unique += s.unique;
            seen.duplicates += s.duplicates;
            seen.reorders += s.reorders;
            seen.latencies.extend(s.latencies);
            seen.last_at = seen.last_at.max(s.last_at);
        }
        Ok::<_, String>((sent, seen))
    };
    let result = tokio::time::timeout(o.timeout, all).await;
    ticker.abort();
    let (sent, seen) = result.map_err(|_| format!("did not finish within {:?}", o.timeout))??;
    let expected = match scenario {
        "fan-out" => per_pub * subs as u64,
        _ => per_pub * pubs as u64,
    };
    let span = seen.last_at.saturating_sub(started);
    let note = match rate {
        Some(r) => {
            let mut lat = seen.latencies.clone();
            lat.sort_unstable();
            format!("at {r}/s, p99.9 {} ms", ms(percentile(&lat, 0.999)))
        }
        None => String::new(),
    };
    Ok(Row {
        scenario: scenario.into(),
        publishers: pubs,
        subscribers: subs,
        sent,
        expected,
        seen,
        span,
        note,
    })
}

async fn report(scenario: String, progress: Arc<Progress>) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = progress.received.load(Ordering::Relaxed);
        eprint!(
            "\r{scenario}: sent {:>10}  received {:>10}  ({:>9} msg/s)   ",
            progress.sent.load(Ordering::Relaxed),
            r,
            r - last
        );
        last = r;
    }
}

/// Where idle connection `i` comes from: for a loopback IPv4 broker, 127.0.0.1 for the first
/// 25,000, 127.0.0.2 for the next, ... (each source address has its own ephemeral ports).
fn idle_source(o: &Options, i: usize) -> Option<std::net::IpAddr> {
    let ip: std::net::Ipv4Addr = o.host.parse().ok()?;
    if !ip.is_loopback() {
        return None;
    }
    let n = u8::try_from(1 + i / 25_000).ok()?;
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n)))
}

/// A connection held open and idle: its socket and transport state, nothing more.
struct Held {
    _stream: TcpStream,
    _layer: Option<Box<dyn Transform>>,
}

/// The resident memory of process `pid`, in bytes (Linux).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|k| k * 1024)
}

async fn idle(o: &Options, name: &str) -> Result<Row, String> {
    let limit = crate::limits::raise_open_files(o.connections as u64 + 1024);
    if limit < o.connections as u64 + 64 {
        eprintln!("idle: the open-file limit is {limit}; connections beyond it will fail");
    }
    let before = o.broker_pid.and_then(rss_of);
    let started = nanos();
    let mut held = Vec::with_capacity(o.connections);
    let mut failed = 0u64;
    let shared = Arc::new(o.clone());
    // 64 handshakes in flight at a time (256 connected three times slower on 2 cores).
    for chunk in (0..o.connections).collect::<Vec<_>>().chunks(64) {
        let mut tasks = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let o = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let c = Conn::open_from(&o, format!("bench-idle-{i}"), false, idle_source(&o, i));
                c.await.map(|c| Held { _stream: c.stream, _layer: c.layer })
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(h)) => held.push(h),
                _ => failed += 1,
            }
        }
        if held.len() % 5000 < 64 {
            eprint!("\ridle: {} connections open   ", held.len());
        }
    }
    let span = nanos() - started;
    let open = held.len() as u64;
    eprint!("\ridle: {open} connections open, holding {} s   ", o.hold);
    let held_since = StdInstant::now();
    // Memory first: the probe's traffic below is not the idle connections' cost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = o.broker_pid.and_then(rss_of);
    // With them open: is a QoS pair served as quickly as ever, at the latency scenario's rate
    // (at most --hold seconds of it)?
    let mut probe_o = o.clone();
    probe_o.seconds = o.seconds.clamp(1, o.hold.max(1));
    let probe = flow(&probe_o, "latency").await;
    let left = Duration::from_secs(o.hold).saturating_sub(held_since.elapsed());
    tokio::time::sleep(left).await;
    drop(held);
    let mut note = format!(
        "{open} open, {failed} failed, connected in {:.1} s ({:.0}/s)",
        span as f64 / 1e9,
        open as f64 / (span as f64 / 1e9).max(1e-9)
    );
    if let (Some(b), Some(a)) = (before, after)
        && open > 0
    {
        let _ = write!(note, ", broker +{} B/connection", a.saturating_sub(b) / open);
    }
    match probe {
        Ok(mut p) => {
            p.seen.latencies.sort_unstable();
            let _ = write!(
                note,
                "; QoS {} pair meanwhile at {}/s: p50 {} ms, p99 {} ms, p99.9 {} ms, {} of {} \
                 delivered",
                o.qos as u8,
                probe_o.rate,
                ms(percentile(&p.seen.latencies, 0.50)),
                ms(percentile(&p.seen.latencies, 0.99)),
                ms(percentile(&p.seen.latencies, 0.999)),
                p.seen.unique,
                p.expected
            );
        }
        Err(e) => {
            let _ = write!(note, "; QoS pair meanwhile failed: {e}");
        }
    }
    let seen = Seen { received: open, unique: open, ..Seen::default() };
    Ok(Row {
        scenario: name.into(),
        publishers: 0,
        subscribers: o.connections,
        sent: o.connections as u64,
        expected: o.connections as u64,
        seen,
        span,
        note,
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e6)
}

fn table(o: &Options, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nbroker {}:{}  qos {}  payload {} B  MQTT {}",
        o.host,
        o.port,
        o.qos as u8,
        o.size,
        if o.version.is_v5() { "5" } else { "3.1.1" }
    );
    let _ = writeln!(
        out,
        "{:<9} {:>4} {:>4} {:>10} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  note",
        "scenario",
        "pubs",
        "subs",
        "sent",
        "received",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup",
        "reord"
    );
    for r in rows {
        let mut lat = r.seen.latencies.clone();
        lat.sort_unstable();
        let rate = if r.span == 0 { 0.0 } else { r.seen.received as f64 * 1e9 / r.span as f64 };
        let lost = r.expected.saturating_sub(r.seen.unique);
        let _ = writeln!(
            out,
            "{:<9} {:>4} {:>4} {:>10} {:>10} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  {}",
            r.scenario,
            r.publishers,
            r.subscribers,
            r.sent,
            r.seen.received,
            if matches!(r.scenario.as_str(), "idle" | CONNS) {
                r.seen.received as f64 * 1e9 / r.span.max(1) as f64
            } else {
                rate
            },
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or(0)),
            lost,
            r.seen.duplicates,
            r.seen.reorders,
            r.note
        );
    }
    out
}
