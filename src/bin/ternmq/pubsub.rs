//! `ternmq pub` and `ternmq sub`, typed the way mosquitto_pub and mosquitto_sub users type.

use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ternmq::blocking::{ConnectOptions, ConnectionEvent, DisconnectReason, Error, SyncClient};
use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode, Will, WillProperties};
use ternmq::topic::TopicName;

pub(crate) const PUB_USAGE: &str = "\
usage: ternmq pub -t TOPIC (-m MSG | -f FILE | -l | -n) [options]

  -h HOST          broker host (default 127.0.0.1); help is --help
  -p PORT          broker port (default 1883)
  -t TOPIC         topic to publish to
  -m MSG           message payload
  -f FILE          send the contents of FILE as one message
  -l               send each line of standard input as a message
  -n               send an empty message
  -q QOS           0, 1 or 2 (default 0)
  -r               retain
  -i ID            client id (default: assigned by the broker in MQTT 5, generated in 3.1.1)
  -u USER, -P PASS credentials
  -k SECONDS       keep-alive (default 60)
  -V 311|5         protocol version (also mqttv311, mqttv5; default 5)
  -c               persistent session (clean start off)
  -x SECONDS       session expiry interval (MQTT 5)
  --repeat N       publish the message N times
  --repeat-delay S seconds between repeats
  --will-topic T --will-payload P --will-qos Q --will-retain";

pub(crate) const SUB_USAGE: &str = "\
usage: ternmq sub -t FILTER [-t FILTER ...] [options]

  -h HOST          broker host (default 127.0.0.1); help is --help
  -p PORT          broker port (default 1883)
  -t FILTER        topic filter to subscribe to (repeatable)
  -q QOS           maximum QoS (default 0)
  -v               print 'topic payload' instead of the payload alone
  -C COUNT         exit after COUNT messages
  -W SECONDS       exit after SECONDS (status 27 if no message limit was reached, like mosquitto_sub)
  -i ID, -u USER, -P PASS, -k SECONDS, -V 311|5, -c, -x SECONDS, and the --will-* options as for pub";

/// Options shared by pub and sub.
struct Common {
    host: String,
    port: u16,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    keep_alive: u16,
    version: ProtocolVersion,
    persistent: bool,
    session_expiry: Option<u32>,
    qos: QoS,
    will_topic: Option<String>,
    will_payload: Option<String>,
    will_qos: QoS,
    will_retain: bool,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            keep_alive: 60,
            version: ProtocolVersion::V5,
            persistent: false,
            session_expiry: None,
            qos: QoS::AtMostOnce,
            will_topic: None,
            will_payload: None,
            will_qos: QoS::AtMostOnce,
            will_retain: false,
        }
    }
}

fn parse_qos(flag: &str, v: &str) -> Result<QoS, String> {
    match v {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        "2" => Ok(QoS::ExactlyOnce),
        _ => Err(format!("{flag}: QoS must be 0, 1 or 2, not {v:?}")),
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

impl Common {
    /// Takes the option `a` (with its value from `it`) if it is a common one.
    fn take(&mut self, a: &str, it: &mut impl Iterator<Item = String>) -> Result<bool, String> {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a {
            "-h" | "--host" => self.host = value(a)?,
            "-p" | "--port" => self.port = parse_num(a, &value(a)?)?,
            "-i" | "--id" => self.client_id = Some(value(a)?),
            "-u" | "--username" => self.username = Some(value(a)?),
            "-P" | "--pw" => self.password = Some(value(a)?),
            "-k" | "--keepalive" => self.keep_alive = parse_num(a, &value(a)?)?,
            "-V" | "--protocol-version" => {
                self.version = match value(a)?.as_str() {
                    "311" | "mqttv311" => ProtocolVersion::V3_1_1,
                    "5" | "mqttv5" => ProtocolVersion::V5,
                    "31" | "mqttv31" => ProtocolVersion::V3_1,
                    v => return Err(format!("{a}: unknown protocol version {v:?}; use 311 or 5")),
                }
            }
            "-c" | "--disable-clean-session" => self.persistent = true,
            "-x" | "--session-expiry-interval" => {
                self.session_expiry = Some(parse_num(a, &value(a)?)?);
            }
            "-q" | "--qos" => self.qos = parse_qos(a, &value(a)?)?,
            "--will-topic" => self.will_topic = Some(value(a)?),
            "--will-payload" => self.will_payload = Some(value(a)?),
            "--will-qos" => self.will_qos = parse_qos(a, &value(a)?)?,
            "--will-retain" => self.will_retain = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn options(&self, role: &str) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new(self.host.clone(), self.port);
        let c = &mut o.connect;
        c.protocol = self.version;
        c.keep_alive = self.keep_alive;
        c.clean_start = !self.persistent;
        let id = match (&self.client_id, self.version) {
            (Some(id), _) => id.clone(),
            // MQTT 5 lets the broker assign one; 3.1.1 needs one for a persistent session.
            (None, ProtocolVersion::V5) => String::new(),
            (None, _) => format!("ternmq-{role}-{}", std::process::id()),
        };
        c.client_id = MqttStr::try_from(id).map_err(|e| format!("-i: {e}"))?;
        if self.persistent && self.client_id.is_none() && self.version.is_v5() {
            return Err("-c needs a client id (-i) so that the session can be found again".into());
        }
        c.username = match &self.username {
            Some(u) => Some(MqttStr::new(u).map_err(|e| format!("-u: {e}"))?),
            None => None,
        };
        c.password = self.password.clone().map(Bytes::from);
        if self.version.is_v5() {
            // As mosquitto_pub/_sub: `-c` alone asks for a session that never expires (in MQTT
            // 5 a session without Session Expiry ends with the connection), `-x` sets it.
            c.properties.session_expiry_interval = match (self.session_expiry, self.persistent) {
                (Some(s), _) => Some(s),
                (None, true) => Some(u32::MAX),
                (None, false) => None,
            };
        }
        if let Some(t) = &self.will_topic {
            c.will = Some(Will {
                topic: TopicName::new(t).map_err(|e| format!("--will-topic: {e}"))?,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
                qos: self.will_qos,
                retain: self.will_retain,
                properties: WillProperties::default(),
            });
        }
        o.timeout = Duration::from_secs(30);
        Ok(o)
    }
}

/// "NotAuthorized" -> "not authorized".
fn words(code: ReasonCode) -> String {
    let mut out = String::new();
    for (i, ch) in code.name().chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(ch.to_lowercase());
    }
    out
}

/// Why a connection was lost, in words.
fn lost_words(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::TransportClosed => "the connection closed".into(),
        DisconnectReason::KeepAliveTimeout => "no answer within the keep-alive".into(),
        DisconnectReason::ConnAckTimeout => "no CONNACK in time".into(),
        DisconnectReason::ProtocolViolation(code) => {
            format!("the broker broke the protocol: {}", words(*code))
        }
        DisconnectReason::Decode(e) => format!("undecodable bytes from the broker: {e}"),
        DisconnectReason::Server { reason_code, .. } => words(*reason_code),
        other => format!("{other:?}"),
    }
}

fn connect(o: ConnectOptions) -> Result<SyncClient, String> {
    SyncClient::connect(o).map_err(|e| match e {
        Error::Refused(code) => format!("Connection refused: {}", words(code)),
        // The client says which address refused and why that may be.
        Error::Io(e) => format!("Error: {e}"),
        other => format!("Connection error: {other}"),
    })
}

enum Source {
    Message(Bytes),
    Lines,
}

/// `ternmq pub`.
pub(crate) fn publish(args: &[String]) -> Result<(), String> {
    let mut common = Common::default();
    let (mut topic, mut source, mut retain) = (None, None, false);
    let (mut repeat, mut delay) = (1u64, 0f64);
    let mut it = args.iter().cloned();
    while let Some(a) = it.next() {
        if common.take(&a, &mut it)? {
            continue;
        }
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "-t" | "--topic" => topic = Some(value(&a)?),
            "-m" | "--message" => source = Some(Source::Message(Bytes::from(value(&a)?))),
            "-f" | "--file" => {
                let path = value(&a)?;
                let data = std::fs::read(&path).map_err(|e| format!("-f {path}: {e}"))?;
                source = Some(Source::Message(Bytes::from(data)));
            }
            "-n" | "--null-message" => source = Some(Source::Message(Bytes::new())),
            "-l" | "--stdin-line" => source = Some(Source::Lines),
            "-s" | "--stdin-file" => {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).map_err(|e| format!("stdin: {e}"))?;
                source = Some(Source::Message(Bytes::from(data)));
            }
            "-r" | "--retain" => retain = true,
            "--repeat" => repeat = parse_num(&a, &value(&a)?)?,
            "--repeat-delay" => delay = parse_num(&a, &value(&a)?)?,
            "--help" => {
                say!("{PUB_USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown option {other:?}\n\n{PUB_USAGE}")),
        }
    }
    let topic = topic.ok_or_else(|| format!("a topic is required (-t)\n\n{PUB_USAGE}"))?;
    TopicName::new(&topic).map_err(|e| format!("-t {topic:?}: {e}"))?;
    let source =
        source.ok_or_else(|| format!("a message is required (-m, -f, -l or -n)\n\n{PUB_USAGE}"))?;
    if !(0.0..=86_400.0).contains(&delay) {
        return Err("--repeat-delay: must be between 0 and 86400 seconds".into());
    }
    let client = connect(common.options("pub")?)?;
    // Ctrl-C or SIGTERM (say while `-l` waits for input): leave with DISCONNECT, so that the
    // broker drops the will, and exit 0.
    let on_signal = client.clone();
    crate::signals::watch(false, move |_| {
        let _ = on_signal.disconnect();
        std::process::exit(0);
    })?;
    let send = |payload: Bytes| -> Result<(), String> {
        let mut p = ternmq::codec::Publish::new(
            TopicName::new(&topic).map_err(|e| e.to_string())?,
            payload,
        );
        p.qos = common.qos;
        p.retain = retain;
        match client.publish_with(p) {
            Ok(code) if code.is_error() => Err(format!("Publish refused: {}", words(code))),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("Publish failed: {e}")),
        }
    };
    let result = match source {
        Source::Message(payload) => (0..repeat.max(1)).try_for_each(|i| {
            if i > 0 && delay > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(delay));
            }
            send(payload.clone())
        }),
        Source::Lines => std::io::stdin().lock().lines().try_for_each(|line| {
            let line = line.map_err(|e| format!("stdin: {e}"))?;
            send(Bytes::from(line))
        }),
    };
    let _ = client.disconnect();
    result
}

/// `ternmq sub`. Returns the exit status.
pub(crate) fn subscribe(args: &[String]) -> Result<u8, String> {
    let mut common = Common::default();
    let (mut filters, mut verbose) = (Vec::new(), false);
    let (mut count, mut wait) = (None::<u64>, None::<u64>);
    let mut it = args.iter().cloned();
    while let Some(a) = it.next() {
        if common.take(&a, &mut it)? {
            continue;
        }
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "-t" | "--topic" => filters.push(value(&a)?),
            "-v" | "--verbose" => verbose = true,
            "-C" => count = Some(parse_num(&a, &value(&a)?)?),
            "-W" => wait = Some(parse_num(&a, &value(&a)?)?),
            "--help" => {
                say!("{SUB_USAGE}");
                return Ok(0);
            }
            other => return Err(format!("unknown option {other:?}\n\n{SUB_USAGE}")),
        }
    }
    if filters.is_empty() {
        return Err(format!("at least one topic filter is required (-t)\n\n{SUB_USAGE}"));
    }
    for f in &filters {
        ternmq::topic::TopicFilter::new(f).map_err(|e| format!("-t {f:?}: {e}"))?;
    }
    // Ctrl-C or SIGTERM: stop at the next turn of the loop below and leave with DISCONNECT,
    // so that the broker drops the will; the status is 0.
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    crate::signals::watch(false, move |_| {
        stopping.store(true, Ordering::Release);
        false
    })?;
    let client = connect(common.options("sub")?)?;
    for f in &filters {
        match client.subscribe(f, common.qos) {
            Ok(code) if code.is_error() => {
                let _ = client.disconnect();
                return Err(format!("Subscription to {f:?} refused: {}", words(code)));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("Subscribe failed: {e}")),
        }
    }
    let deadline = wait.map(|s| Instant::now() + Duration::from_secs(s));
    let target = format!("{}:{}", common.host, common.port);
    let mut received = 0u64;
    let mut lost = false;
    let mut out = std::io::stdout().lock();
    let status = 'run: loop {
        if count.is_some_and(|c| received >= c) || stop.load(Ordering::Acquire) {
            break 0;
        }
        while let Some(event) = client.connection_event() {
            match event {
                ConnectionEvent::Connected { .. } if lost => {
                    lost = false;
                    complain!("Reconnected to {target}");
                }
                ConnectionEvent::Lost(DisconnectReason::Server { reason_code, .. }) => {
                    // As mosquitto_sub: a DISCONNECT from the broker (MQTT 5; 0x8B when it
                    // shuts down) ends the program with status 0, where a lost connection is
                    // retried.
                    complain!("Disconnected by the broker at {target}: {}", words(reason_code));
                    break 'run 0;
                }
                ConnectionEvent::Lost(DisconnectReason::Requested) => {}
                ConnectionEvent::Lost(reason) if !lost => {
                    lost = true;
                    complain!(
                        "Connection to {target} lost ({}); reconnecting",
                        lost_words(&reason)
                    );
                }
                _ => {}
            }
        }
        let slice = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    complain!("Timed out");
                    break 27;
                }
                left.min(Duration::from_millis(200))
            }
            None => Duration::from_millis(200),
        };
        if let Some(m) = client.recv_timeout(slice) {
            let payload = String::from_utf8_lossy(&m.payload);
            let written = if verbose {
                writeln!(out, "{} {payload}", m.topic)
            } else {
                writeln!(out, "{payload}")
            };
            // Standard output closed (`ternmq sub ... | head -1`): leave cleanly.
            if written.and_then(|()| out.flush()).is_err() {
                break 0;
            }
            received += 1;
        }
    };
    let _ = client.disconnect();
    Ok(status)
}
