//! `ternmq pub` and `ternmq sub`, typed the way mosquitto_pub and mosquitto_sub users type:
//! the same flags, short and long, with the same meaning (TLS and the other options listed in
//! the README's table excepted).

use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ternmq::blocking::{
    ConnectOptions, ConnectionEvent, Direction, DisconnectReason, Error, SyncClient,
};
use ternmq::codec::{
    Disconnect, MqttStr, Packet, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    Subscription, SubscriptionOptions, Will,
};
use ternmq::core::client::driver::ServerUrl;
use ternmq::topic::{TopicFilter, TopicName};

use crate::format;
use crate::props::Properties;
use crate::tls_flags::{TlsFlags, USAGE as TLS_USAGE};

/// Options both programs take, as listed in both usages (with [`TLS_USAGE`]).
const COMMON_USAGE: &str = "\
connection:
  -h, --host HOST          broker host (default 127.0.0.1); help is --help
  -p, --port PORT          broker port (default 1883)
  -L, --url URL            mqtt://[USER[:PASS]@]HOST[:PORT]/TOPIC: host, port, credentials and
                           topic at once; mqtts:// for TLS, ws:// and wss:// for WebSocket
  -V, --protocol-version V 5 or mqttv5 (default), 311 or mqttv311, 31 or mqttv31
  -i, --id ID              client id (default: ternmq-pub-PID-RANDOM, ternmq-sub-PID-RANDOM)
  -I, --id-prefix PREFIX   client id PREFIX followed by the process id
  -u, --username USER      user name
  -P, --pw PASS            password
  -k, --keepalive SECONDS  keep-alive (default 60; 0 = none)
  -c, --disable-clean-session
                           keep the session when leaving (needs -i; in MQTT 5 the session
                           never expires unless -x says otherwise)
  -x, --session-expiry-interval SECONDS
                           MQTT 5 session expiry; -1 or \u{221e} for never
  -D, --property COMMAND NAME VALUE
                           an MQTT 5 property: COMMAND is connect, publish, will, subscribe
                           or disconnect;
                           e.g. -D publish user-property k v, -D connect session-expiry-interval 60
      --will-topic TOPIC   the will: published by the broker if the connection is lost
      --will-payload MSG, --will-qos QOS, --will-retain
      --nodelay            accepted for compatibility: Nagle's algorithm is always off
  -d, --debug              print every packet sent and received
      --quiet              do not print error messages (the exit status still tells)
      --help               print this help";

pub(crate) fn pub_usage() -> String {
    format!(
        "\
usage: ternmq pub {{-t TOPIC | -L URL}} (-m MSG | -f FILE | -l | -n | -s) [options]

Publishes, as mosquitto_pub does.

message:
  -t, --topic TOPIC        topic to publish to
  -m, --message MSG        the message
  -f, --file FILE          the contents of FILE as one message
  -l, --stdin-line         each line of standard input as a message
  -n, --null-message       an empty message
  -s, --stdin-file         all of standard input as one message
  -q, --qos QOS            0, 1 or 2 (default 0)
  -r, --retain             retain the message
      --repeat N           publish the message N times
      --repeat-delay SECONDS
                           wait between repeats (fractions allowed)

{COMMON_USAGE}

{TLS_USAGE}

Ctrl-C or SIGTERM leaves with a normal DISCONNECT (no will) and exit status 0."
    )
}

pub(crate) fn sub_usage() -> String {
    format!(
        "\
usage: ternmq sub {{-t FILTER | -L URL | -U FILTER}}... [options]

Subscribes and prints what arrives, as mosquitto_sub does.

subscription:
  -t, --topic FILTER       subscribe to FILTER (repeatable)
  -q, --qos QOS            maximum QoS (default 0)
  -U, --unsubscribe FILTER unsubscribe from FILTER after subscribing (repeatable)
  -T, --filter-out FILTER  do not print messages whose topic matches FILTER (repeatable)
  -R                       do not print retained messages (and do not ask for them)
      --retained-only      print only retained messages; exit at the first one that is not
      --remove-retained    clear every retained message received (publish an empty one)
      --retain-as-published
                           ask the broker to keep the publisher's retain flag (MQTT 5)
  -C COUNT                 exit after COUNT messages
  -W SECONDS               exit after SECONDS (status 27 if -C was not reached)
  -E                       exit once the subscriptions are acknowledged

output:
  -v, --verbose            print 'topic payload' instead of the payload alone
  -F FORMAT                print each message as FORMAT: %t topic, %p payload, %q QoS, %r retain,
                           %l length, %m packet id, %x/%X hex payload, %I ISO 8601 time, %U Unix
                           time, %j/%J JSON, %A %C %D %E %F %P %R %S MQTT 5 properties, %%;
                           @Y @m @d @H @M @S @N @s @z @F @T time fields (UTC); \\n \\t \\\\ escapes
  -N                       do not add a newline after each message
      --pretty             pretty-print the JSON of %j and %J
      --random-filter PERCENT
                           print only PERCENT (0.1 to 100) of the messages, at random

{COMMON_USAGE}

{TLS_USAGE}

When the connection is lost sub says so and reconnects with the same client id; a DISCONNECT
from the broker (MQTT 5, e.g. 0x8B server shutting down) ends it with status 0, as
mosquitto_sub. Ctrl-C or SIGTERM leaves with a normal DISCONNECT (no will), status 0."
    )
}

/// Options mosquitto_pub/_sub have that ternmq does not: what to say when one is given.
fn unsupported(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "--keyform" | "--tls-engine" | "--tls-engine-kpass-sha1" => {
            "keys are read from PEM files; OpenSSL engines are not supported"
        }
        "--ciphers" => "the cipher suites are rustls's safe defaults; they cannot be chosen",
        "--psk" | "--psk-identity" => "TLS with pre-shared keys is not supported (rustls has none)",
        "-A" => "binding the outgoing socket to an address is not supported",
        "-S" => "DNS SRV lookups are not supported",
        "--proxy" => "SOCKS proxies are not supported",
        "-o" => "options files are not supported; put the options on the command line",
        "-M" => "the in-flight window is the broker's Receive Maximum; it cannot be set here",
        "--unix" => "Unix sockets are not supported",
        _ => return None,
    })
}

/// Options shared by pub and sub.
struct Common {
    host: String,
    port: u16,
    client_id: Option<String>,
    id_prefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
    keep_alive: u16,
    /// The version, and the text of an explicit `-V`.
    version: ProtocolVersion,
    version_flag: Option<String>,
    persistent: bool,
    session_expiry: Option<u32>,
    qos: QoS,
    will_topic: Option<String>,
    will_payload: Option<String>,
    will_qos: Option<QoS>,
    will_retain: bool,
    debug: bool,
    quiet: bool,
    properties: Properties,
    /// The topic of `-L`.
    url_topic: Option<String>,
    /// `-L` asked for TLS (mqtts://, wss://) or WebSocket (ws://, wss://).
    url_tls: bool,
    url_websocket: bool,
    /// Whether `-p` was given (TLS otherwise defaults to port 8883).
    port_given: bool,
    tls: TlsFlags,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            id_prefix: None,
            username: None,
            password: None,
            keep_alive: 60,
            version: ProtocolVersion::V5,
            version_flag: None,
            persistent: false,
            session_expiry: None,
            qos: QoS::AtMostOnce,
            will_topic: None,
            will_payload: None,
            will_qos: None,
            will_retain: false,
            debug: false,
            quiet: false,
            properties: Properties::default(),
            url_topic: None,
            url_tls: false,
            url_websocket: false,
            port_given: false,
            tls: TlsFlags::default(),
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
    /// Takes the option `a` (with its values from `it`) if it is a common one.
    fn take(&mut self, a: &str, it: &mut impl Iterator<Item = String>) -> Result<bool, String> {
        if a == "-D" || a == "--property" {
            self.properties.take(it)?;
            return Ok(true);
        }
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        if self.tls.take(a, &mut || value(a))? {
            return Ok(true);
        }
        match a {
            "-h" | "--host" => self.host = value(a)?,
            "-p" | "--port" => {
                self.port = parse_num(a, &value(a)?)?;
                self.port_given = true;
            }
            "-i" | "--id" => self.client_id = Some(value(a)?),
            "-I" | "--id-prefix" => self.id_prefix = Some(value(a)?),
            "-u" | "--username" => self.username = Some(value(a)?),
            "-P" | "--pw" => self.password = Some(value(a)?),
            "-k" | "--keepalive" => self.keep_alive = parse_num(a, &value(a)?)?,
            "-L" | "--url" => self.url(&value(a)?)?,
            "-V" | "--protocol-version" => {
                let v = value(a)?;
                self.version = match v.as_str() {
                    "311" | "mqttv311" => ProtocolVersion::V3_1_1,
                    "5" | "mqttv5" => ProtocolVersion::V5,
                    "31" | "mqttv31" => ProtocolVersion::V3_1,
                    v => {
                        return Err(format!(
                            "{a}: unknown protocol version {v:?}; use 5, 311 or 31 (or mqttv5, \
                             mqttv311, mqttv31)"
                        ));
                    }
                };
                self.version_flag = Some(v);
            }
            "-c" | "--disable-clean-session" => self.persistent = true,
            "-x" | "--session-expiry-interval" => {
                let v = value(a)?;
                self.session_expiry = Some(match v.as_str() {
                    "-1" | "\u{221e}" => u32::MAX,
                    _ => v.parse().map_err(|_| {
                        format!("{a}: {v:?} is not a number of seconds (0 to 4294967295, or -1)")
                    })?,
                });
            }
            "-q" | "--qos" => self.qos = parse_qos(a, &value(a)?)?,
            "--will-topic" => self.will_topic = Some(value(a)?),
            "--will-payload" => self.will_payload = Some(value(a)?),
            "--will-qos" => self.will_qos = Some(parse_qos(a, &value(a)?)?),
            "--will-retain" => self.will_retain = true,
            "-d" | "--debug" => self.debug = true,
            "--quiet" => self.quiet = true,
            // ternmq's clients always turn Nagle's algorithm off.
            "--nodelay" => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `-L mqtt://[user[:pass]@]host[:port]/topic`, also `mqtts://`, `ws://` and `wss://`
    /// (whose WebSocket path is `--ws-path`, `/mqtt` by default: the URL's path is the topic).
    fn url(&mut self, url: &str) -> Result<(), String> {
        let u = ServerUrl::parse(url).map_err(|e| format!("-L {e}"))?;
        // The path is the topic whatever the scheme.
        let topic = u
            .path
            .ok_or_else(|| format!("-L {url:?}: the topic is missing (mqtt://host/topic)"))?;
        self.host = u.host;
        self.port = u.port;
        self.port_given = true;
        if u.username.is_some() {
            self.username = u.username;
            self.password = u.password;
        }
        self.url_tls = u.tls;
        self.url_websocket = u.ws_path.is_some();
        self.url_topic = Some(topic);
        Ok(())
    }

    /// Refuses options that contradict each other, naming both.
    fn check(&self) -> Result<(), String> {
        let v311 = self.version_flag.as_deref().filter(|_| !self.version.is_v5());
        if let Some(v) = v311 {
            if self.session_expiry.is_some() {
                return Err(format!(
                    "-x (session expiry) cannot be used with -V {v}: it is an MQTT 5 property; \
                     use -V 5, or -c alone to keep the session"
                ));
            }
            if self.properties.any {
                return Err(format!(
                    "-D (MQTT 5 properties) cannot be used with -V {v}; use -V 5 or drop -D"
                ));
            }
        }
        if self.client_id.is_some() && self.id_prefix.is_some() {
            return Err("-i and -I cannot be used together: give a client id or a prefix".into());
        }
        if self.will_topic.is_none() {
            for (given, flag) in [
                (self.will_payload.is_some(), "--will-payload"),
                (self.will_qos.is_some(), "--will-qos"),
                (self.will_retain, "--will-retain"),
            ] {
                if given {
                    return Err(format!("{flag} needs --will-topic"));
                }
            }
        }
        if self.persistent && self.client_id.is_none() {
            return Err(
                "-c needs a client id (-i) so that the session can be found again".to_string()
            );
        }
        Ok(())
    }

    fn client_id(&self, role: &str) -> String {
        let pid = std::process::id();
        match (&self.client_id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{pid}"),
            // Chosen here, not by the broker, so that it stays the same across reconnections;
            // random beyond the process id, which repeats across machines and containers.
            (None, None) => format!("ternmq-{role}-{pid}-{}", id_suffix()),
        }
    }

    fn options(&self, role: &str) -> Result<ConnectOptions, String> {
        // As mosquitto_pub: TLS without -p means the MQTT-over-TLS port.
        let port = if self.tls.wants_tls() && !self.port_given { 8883 } else { self.port };
        let mut o = ConnectOptions::new(self.host.clone(), port);
        self.tls.apply(&mut o, self.url_tls, self.url_websocket)?;
        let c = &mut o.connect;
        c.protocol = self.version;
        c.keep_alive = self.keep_alive;
        c.clean_start = !self.persistent;
        c.client_id = MqttStr::try_from(self.client_id(role)).map_err(|e| format!("-i: {e}"))?;
        c.username = match &self.username {
            Some(u) => Some(MqttStr::new(u).map_err(|e| format!("-u: {e}"))?),
            None => None,
        };
        c.password = self.password.clone().map(Bytes::from);
        if self.version.is_v5() {
            c.properties = self.properties.connect.clone();
            // As mosquitto_pub/_sub: `-c` alone asks for a session that never expires (in MQTT
            // 5 a session without Session Expiry ends with the connection), `-x` sets it.
            c.properties.session_expiry_interval = match (
                self.session_expiry,
                self.persistent,
                c.properties.session_expiry_interval,
            ) {
                (Some(s), _, _) => Some(s),
                (None, _, Some(s)) => Some(s),
                (None, true, None) => Some(u32::MAX),
                (None, false, None) => None,
            };
        }
        if let Some(t) = &self.will_topic {
            c.will = Some(Will {
                topic: TopicName::new(t).map_err(|e| format!("--will-topic: {e}"))?,
                payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
                qos: self.will_qos.unwrap_or(QoS::AtMostOnce),
                retain: self.will_retain,
                properties: self.properties.will.clone(),
            });
        }
        o.timeout = Duration::from_secs(30);
        Ok(o)
    }

    fn disconnect(&self) -> Disconnect {
        let mut d = Disconnect::default();
        if self.version.is_v5() {
            d.properties = self.properties.disconnect.clone();
        }
        d
    }

    /// Connects, tracing packets with `-d`.
    fn connect(&self, role: &str) -> Result<SyncClient, String> {
        let o = self.options(role)?;
        let result = if self.debug {
            let id = Arc::new(Mutex::new(self.client_id(role)));
            SyncClient::connect_traced(o, move |direction, packet| {
                let mut id = id.lock().unwrap_or_else(|e| e.into_inner());
                if let Packet::ConnAck(ack) = packet
                    && let Some(assigned) = &ack.properties.assigned_client_identifier
                {
                    *id = assigned.as_str().to_string();
                }
                say!("{}", debug_line(&id, direction, packet));
            })
        } else {
            SyncClient::connect(o)
        };
        result.map_err(|e| match e {
            Error::Refused(code) => format!("Connection refused: {}", words(code)),
            // The client says which address refused and why that may be.
            Error::Io(e) => format!("Error: {e}"),
            other => format!("Connection error: {other}"),
        })
    }
}

/// Eight random hex digits, the same for the whole process.
fn id_suffix() -> &'static str {
    static SUFFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SUFFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS generator: the clock's nanoseconds are random enough for an id.
            bytes = format::now().subsec_nanos().to_le_bytes();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// A packet as mosquitto_pub/_sub -d print it.
fn debug_line(id: &str, direction: Direction, packet: &Packet) -> String {
    let verb = match direction {
        Direction::Sent => "sending",
        Direction::Received => "received",
    };
    let what = match packet {
        Packet::Connect(_) => "CONNECT".to_string(),
        Packet::ConnAck(a) => format!("CONNACK ({})", a.reason_code.value()),
        Packet::Publish(p) => format!(
            "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos as u8,
            u8::from(p.retain),
            p.packet_id.map_or(0, |i| i.get()),
            p.topic.as_str(),
            p.payload.len()
        ),
        Packet::PubAck(a) => format!("PUBACK (Mid: {}, RC:{})", a.packet_id, a.reason_code.value()),
        Packet::PubRec(a) => format!("PUBREC (Mid: {}, RC:{})", a.packet_id, a.reason_code.value()),
        Packet::PubRel(a) => format!("PUBREL (Mid: {})", a.packet_id),
        Packet::PubComp(a) => format!("PUBCOMP (Mid: {})", a.packet_id),
        Packet::Subscribe(s) => {
            let subs: Vec<String> = s
                .subscriptions
                .iter()
                .map(|x| format!("Topic: {}, QoS: {}", x.filter.as_str(), x.options.qos as u8))
                .collect();
            format!("SUBSCRIBE (Mid: {}, {})", s.packet_id, subs.join("; "))
        }
        Packet::SubAck(a) => format!("SUBACK (Mid: {})", a.packet_id),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE (Mid: {})", u.packet_id),
        Packet::UnsubAck(a) => format!("UNSUBACK (Mid: {})", a.packet_id),
        Packet::PingReq => "PINGREQ".to_string(),
        Packet::PingResp => "PINGRESP".to_string(),
        Packet::Disconnect(d) => format!("DISCONNECT ({})", d.reason_code.value()),
        Packet::Auth(a) => format!("AUTH ({})", a.reason_code.value()),
    };
    format!("Client {id} {verb} {what}")
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

/// An error to print unless `--quiet` (the exit status tells in any case).
fn fail(common: &Common, message: String) -> String {
    if common.quiet { String::new() } else { message }
}

enum Source {
    Message(Bytes),
    File(String),
    Lines,
    Stdin,
}

/// `ternmq pub`.
pub(crate) fn publish(args: &[String]) -> Result<(), String> {
    let mut common = Common::default();
    let (mut topic, mut source, mut retain) = (None, None::<(String, Source)>, false);
    let (mut repeat, mut delay) = (1u64, 0f64);
    let mut it = args.iter().cloned();
    while let Some(a) = it.next() {
        if common.take(&a, &mut it)? {
            continue;
        }
        if let Some(why) = unsupported(&a) {
            return Err(format!("{a}: {why}"));
        }
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        let new_source = match a.as_str() {
            "-t" | "--topic" => {
                topic = Some(value(&a)?);
                None
            }
            "-m" | "--message" => Some(Source::Message(Bytes::from(value(&a)?))),
            "-f" | "--file" => Some(Source::File(value(&a)?)),
            "-n" | "--null-message" => Some(Source::Message(Bytes::new())),
            "-l" | "--stdin-line" => Some(Source::Lines),
            "-s" | "--stdin-file" => Some(Source::Stdin),
            "-r" | "--retain" => {
                retain = true;
                None
            }
            "--repeat" => {
                repeat = parse_num(&a, &value(&a)?)?;
                if repeat == 0 {
                    return Err("--repeat: must be at least 1".into());
                }
                None
            }
            "--repeat-delay" => {
                delay = parse_num(&a, &value(&a)?)?;
                None
            }
            "--help" => {
                say!("{}", pub_usage());
                return Ok(());
            }
            other => {
                return Err(format!("unknown option {other:?} (`ternmq pub --help` lists them)"));
            }
        };
        if let Some(s) = new_source {
            if let Some((first, _)) = &source {
                return Err(format!(
                    "{first} and {a} cannot be used together: give one message source"
                ));
            }
            source = Some((a.clone(), s));
        }
    }
    common.check()?;
    let topic = match (topic, common.url_topic.take()) {
        (Some(_), Some(_)) => {
            return Err("-t and -L cannot be used together: both give the topic".into());
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(format!("a topic is required (-t)\n\n{}", pub_usage())),
    };
    TopicName::new(&topic).map_err(|e| format!("-t {topic:?}: {e}"))?;
    let (_, source) = source.ok_or_else(|| {
        format!("a message is required (-m, -f, -l, -n or -s)\n\n{}", pub_usage())
    })?;
    if !(0.0..=86_400.0).contains(&delay) {
        return Err("--repeat-delay: must be between 0 and 86400 seconds".into());
    }
    let source = match source {
        Source::File(path) => {
            let data = std::fs::read(&path).map_err(|e| format!("-f {path}: {e}"))?;
            Source::Message(Bytes::from(data))
        }
        Source::Stdin => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data).map_err(|e| format!("stdin: {e}"))?;
            Source::Message(Bytes::from(data))
        }
        other => other,
    };
    // Ctrl-C or SIGTERM (say while `-l` waits for input): leave with DISCONNECT, so that the
    // broker drops the will, and exit 0; before the connection is up, exit 1 at once.
    let connected: Arc<Mutex<Option<SyncClient>>> = Arc::default();
    let on_signal = Arc::clone(&connected);
    let goodbye = common.disconnect();
    crate::signals::watch(false, move |_| {
        let client = on_signal.lock().unwrap_or_else(|e| e.into_inner()).take();
        match client {
            Some(client) => {
                let _ = client.disconnect_with(goodbye.clone());
                std::process::exit(0);
            }
            None => std::process::exit(1),
        }
    })?;
    let client = common.connect("pub").map_err(|e| fail(&common, e))?;
    *connected.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    let properties =
        if common.version.is_v5() { common.properties.publish.clone() } else { Default::default() };
    let send = |payload: Bytes| -> Result<(), String> {
        let mut p = Publish::new(TopicName::new(&topic).map_err(|e| e.to_string())?, payload);
        p.qos = common.qos;
        p.retain = retain;
        p.properties = properties.clone();
        match client.publish_with(p) {
            Ok(code) if code.is_error() => Err(format!("Publish refused: {}", words(code))),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("Publish failed: {e}")),
        }
    };
    let result = match source {
        Source::Message(payload) => (0..repeat).try_for_each(|i| {
            if i > 0 && delay > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(delay));
            }
            send(payload.clone())
        }),
        Source::Lines => std::io::stdin().lock().lines().try_for_each(|line| {
            let line = line.map_err(|e| format!("stdin: {e}"))?;
            send(Bytes::from(line))
        }),
        Source::File(_) | Source::Stdin => Ok(()),
    };
    let _ = client.disconnect_with(common.disconnect());
    result.map_err(|e| fail(&common, e))
}

/// How sub prints messages.
struct Output {
    verbose: bool,
    format: Option<String>,
    eol: bool,
    pretty: bool,
}

impl Output {
    /// The bytes to print for `m`, as mosquitto_sub prints them (an empty payload prints
    /// nothing without -v, `topic (null)` with it).
    fn render(&self, m: &Publish) -> Vec<u8> {
        let mut out = match &self.format {
            Some(f) => format::render(f, m, format::now(), self.pretty),
            None if self.verbose && m.payload.is_empty() => {
                return if self.eol {
                    format!("{} (null)\n", m.topic).into_bytes()
                } else {
                    Vec::new()
                };
            }
            None if m.payload.is_empty() => return Vec::new(),
            None if self.verbose => {
                let mut v = format!("{} ", m.topic).into_bytes();
                v.extend_from_slice(&m.payload);
                v
            }
            None => m.payload.to_vec(),
        };
        if self.eol {
            out.push(b'\n');
        }
        out
    }
}

/// A small generator for `--random-filter` (no need for more than this).
struct Random(u64);

impl Random {
    fn percent(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// `ternmq sub`. Returns the exit status.
pub(crate) fn subscribe(args: &[String]) -> Result<u8, String> {
    let mut common = Common::default();
    let mut filters = Vec::new();
    let mut unsubscribe = Vec::new();
    let mut filter_out = Vec::new();
    let mut output = Output { verbose: false, format: None, eol: true, pretty: false };
    let (mut count, mut wait) = (None::<u64>, None::<u64>);
    let (mut no_retained, mut retained_only, mut remove_retained) = (false, false, false);
    let (mut retain_as_published, mut exit_after_sub) = (false, false);
    let mut random_filter = None::<f64>;
    let mut it = args.iter().cloned();
    while let Some(a) = it.next() {
        if common.take(&a, &mut it)? {
            continue;
        }
        if let Some(why) = unsupported(&a) {
            return Err(format!("{a}: {why}"));
        }
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        let filter = |flag: &str, f: String| -> Result<String, String> {
            TopicFilter::new(&f).map_err(|e| format!("{flag} {f:?}: {e}"))?;
            Ok(f)
        };
        match a.as_str() {
            "-t" | "--topic" => filters.push(filter(&a, value(&a)?)?),
            "-U" | "--unsubscribe" => unsubscribe.push(filter(&a, value(&a)?)?),
            "-T" | "--filter-out" => {
                filter_out.push(TopicFilter::new(&value(&a)?).map_err(|e| format!("{a}: {e}"))?)
            }
            "-v" | "--verbose" => output.verbose = true,
            "-N" => output.eol = false,
            "-F" => {
                let f = value(&a)?;
                format::check(&f)?;
                output.format = Some(f);
            }
            "--pretty" => output.pretty = true,
            "-C" => {
                let c: u64 = parse_num(&a, &value(&a)?)?;
                if c == 0 {
                    return Err("-C: the count must be at least 1".into());
                }
                count = Some(c);
            }
            "-W" => {
                let w: u64 = parse_num(&a, &value(&a)?)?;
                if w == 0 {
                    return Err("-W: the timeout must be at least 1 second".into());
                }
                wait = Some(w);
            }
            "-E" => exit_after_sub = true,
            "-R" => no_retained = true,
            "--retained-only" => retained_only = true,
            "--remove-retained" => remove_retained = true,
            "--retain-as-published" => retain_as_published = true,
            "--random-filter" => {
                let p: f64 = parse_num(&a, &value(&a)?)?;
                if !(0.1..=100.0).contains(&p) {
                    return Err("--random-filter: the chance must be between 0.1 and 100".into());
                }
                random_filter = Some(p);
            }
            "--help" => {
                say!("{}", sub_usage());
                return Ok(0);
            }
            other => {
                return Err(format!("unknown option {other:?} (`ternmq sub --help` lists them)"));
            }
        }
    }
    common.check()?;
    if no_retained && retained_only {
        return Err("-R and --retained-only cannot be used together: one drops what the other \
                    keeps"
            .into());
    }
    if output.format.is_some() && output.verbose {
        return Err("-F and -v cannot be used together: the format says what to print".into());
    }
    if let Some(t) = common.url_topic.take() {
        filters.push(
            TopicFilter::new(&t).map_err(|e| format!("-L topic {t:?}: {e}"))?.as_str().to_string(),
        );
    }
    if filters.is_empty() && unsubscribe.is_empty() {
        return Err(format!(
            "at least one topic filter is required (-t), or one to unsubscribe from (-U)\n\n{}",
            sub_usage()
        ));
    }
    // Ctrl-C or SIGTERM: stop at the next turn of the loop below and leave with DISCONNECT,
    // so that the broker drops the will; the status is 0. Before the connection is up (a
    // broker that does not answer), exit 1 at once.
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    let (stopping, up) = (Arc::clone(&stop), Arc::clone(&connected));
    crate::signals::watch(false, move |_| {
        if !up.load(Ordering::Acquire) {
            std::process::exit(1);
        }
        stopping.store(true, Ordering::Release);
        false
    })?;
    let client = common.connect("sub").map_err(|e| fail(&common, e))?;
    connected.store(true, Ordering::Release);
    let leave = |client: &SyncClient| {
        let _ = client.disconnect_with(common.disconnect());
    };
    for f in &filters {
        let mut options = SubscriptionOptions::qos(common.qos);
        options.retain_as_published = retain_as_published;
        if no_retained {
            options.retain_handling = RetainHandling::DoNotSend;
        }
        // Validated above.
        let Ok(filter) = TopicFilter::new(f) else { continue };
        let properties = if common.version.is_v5() {
            common.properties.subscribe.clone()
        } else {
            Default::default()
        };
        match client.subscribe_with(Subscription { filter, options }, properties) {
            Ok(code) if code.is_error() => {
                leave(&client);
                return Err(fail(
                    &common,
                    format!("Subscription to {f:?} refused: {}", words(code)),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(fail(&common, format!("Subscribe failed: {e}"))),
        }
    }
    for f in &unsubscribe {
        if let Err(e) = client.unsubscribe_with(f, common.properties.unsubscribe.clone()) {
            return Err(fail(&common, format!("Unsubscribe from {f:?} failed: {e}")));
        }
    }
    if exit_after_sub {
        leave(&client);
        return Ok(0);
    }
    let deadline = wait.map(|s| Instant::now() + Duration::from_secs(s));
    let target = format!("{}:{}", common.host, common.port);
    let mut received = 0u64;
    let mut lost = false;
    let mut random =
        Random(u64::from(std::process::id()) | 1 | (format::now().subsec_nanos() as u64) << 32);
    // Locked per message: with -d the packet trace prints from the client's thread too.
    let out = std::io::stdout();
    let status = 'run: loop {
        if count.is_some_and(|c| received >= c) || stop.load(Ordering::Acquire) {
            break 0;
        }
        while let Some(event) = client.connection_event() {
            match event {
                ConnectionEvent::Connected { .. } if lost => {
                    lost = false;
                    if !common.quiet {
                        complain!("Reconnected to {target}");
                    }
                }
                ConnectionEvent::Lost(DisconnectReason::Server { reason_code, .. }) => {
                    // As mosquitto_sub: a DISCONNECT from the broker (MQTT 5; 0x8B when it
                    // shuts down) ends the program with status 0, where a lost connection is
                    // retried.
                    if !common.quiet {
                        complain!("Disconnected by the broker at {target}: {}", words(reason_code));
                    }
                    break 'run 0;
                }
                ConnectionEvent::Lost(DisconnectReason::Requested) => {}
                ConnectionEvent::Lost(reason) if !lost => {
                    lost = true;
                    if !common.quiet {
                        complain!(
                            "Connection to {target} lost ({}); reconnecting",
                            lost_words(&reason)
                        );
                    }
                }
                _ => {}
            }
        }
        let slice = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if !common.quiet {
                        complain!("Timed out");
                    }
                    break 27;
                }
                left.min(Duration::from_millis(200))
            }
            None => Duration::from_millis(200),
        };
        let Some(m) = client.recv_timeout(slice) else { continue };
        if retained_only && !m.retain {
            break 0;
        }
        if (m.retain && no_retained) || filter_out.iter().any(|f| f.matches(&m.topic)) {
            continue;
        }
        if remove_retained && m.retain && !m.payload.is_empty() {
            let mut clear = Publish::new(m.topic.clone(), Bytes::new());
            clear.qos = QoS::AtLeastOnce;
            clear.retain = true;
            if let Err(e) = client.publish_with(clear)
                && !common.quiet
            {
                complain!("Could not clear the retained message on {}: {e}", m.topic);
            }
        }
        if random_filter.is_some_and(|p| random.percent() >= p) {
            continue;
        }
        let bytes = output.render(&m);
        // Standard output closed (`ternmq sub ... | head -1`): leave cleanly.
        let mut out = out.lock();
        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
            break 0;
        }
        received += 1;
    };
    leave(&client);
    Ok(status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url(u: &str) -> Result<Common, String> {
        let mut c = Common::default();
        c.url(u)?;
        Ok(c)
    }

    #[test]
    fn l_urls_as_mosquitto_reads_them() {
        let c = url("mqtt://alice:pw@example.org:1884/a/b").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("example.org", 1884));
        assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("alice"), Some("pw")));
        assert_eq!(c.url_topic.as_deref(), Some("a/b"));
        let c = url("MQTT://h/t").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("h", 1883));
        let c = url("mqtt://[::1]:1885/t").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1885));
        let c = url("mqtt://[::1]/t").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1883));
        let c = url("mqtts://h/s%2Ft").unwrap();
        assert_eq!((c.port, c.url_tls, c.url_websocket), (8883, true, false));
        assert_eq!(c.url_topic.as_deref(), Some("s/t"));
        let c = url("wss://h:9001/sensors/x").unwrap();
        assert_eq!((c.port, c.url_tls, c.url_websocket), (9001, true, true));
        assert_eq!(c.url_topic.as_deref(), Some("sensors/x"));
        let o = c.options("pub").unwrap();
        assert_eq!(o.ws_path.as_deref(), Some("/mqtt"));
        assert!(o.tls.is_some());
        assert!(url("mqtt://h").err().unwrap().contains("topic is missing"));
        assert!(url("mqtt://h:x/t").err().unwrap().contains("bad port"));
        assert!(url("é").err().unwrap().contains("no scheme"));
        assert!(url("http://h/t").err().unwrap().contains("unknown scheme"));
    }
}
