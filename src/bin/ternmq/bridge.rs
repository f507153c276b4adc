//! `[[bridge]]` tables of the broker's configuration file: bridges to other brokers.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use ternmq::codec::{Connect, MqttStr, ProtocolVersion, QoS};
use ternmq::core::bridge::{BridgeConfig, BridgeTopic, Direction};
use ternmq::core::client::driver::{ConnectOptions, ServerUrl, TlsOptions};
use ternmq::tokio::{BridgeAddress, BridgeSpec, ClientTransport};

/// One `[[bridge]]` table, with Mosquitto's concepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BridgeTable {
    name: Option<String>,
    #[serde(default)]
    address: Addresses,
    protocol_version: Option<String>,
    client_id: Option<String>,
    clean_start: Option<bool>,
    keep_alive: Option<u16>,
    username: Option<String>,
    password: Option<String>,
    cafile: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    insecure: Option<bool>,
    try_private: Option<bool>,
    #[serde(default)]
    topic: Vec<TopicTable>,
}

/// `address = "host:port"` or a list of them, tried in order.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Addresses {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// One `[[bridge.topic]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicTable {
    pattern: Option<String>,
    direction: Option<String>,
    qos: Option<u8>,
    #[serde(default)]
    local_prefix: String,
    #[serde(default)]
    remote_prefix: String,
}

/// Where a bridge's keys are written, for error messages: `file:line: key `k` (bridge "name")`.
pub(crate) struct Locator<'a> {
    pub(crate) source: Option<(&'a Path, &'a str)>,
}

impl Locator<'_> {
    /// The line of `key` in the `bridge`th `[[bridge]]` table (its `topic`th
    /// `[[bridge.topic]]` table when `topic` is set), or of the table's header.
    fn at(&self, bridge: usize, topic: Option<usize>, key: &str) -> String {
        let Some((path, text)) = self.source else {
            return format!("bridge {}: key `{key}`", bridge + 1);
        };
        let lines: Vec<&str> = text.lines().collect();
        let header = |from: usize, name: &str, n: usize| {
            lines
                .iter()
                .enumerate()
                .skip(from)
                .filter(|(_, l)| l.trim_start().starts_with(name))
                .nth(n)
                .map(|(i, _)| i)
        };
        let start = header(0, "[[bridge]]", bridge);
        let start = match (start, topic) {
            (Some(s), Some(t)) => header(s, "[[bridge.topic]]", t).or(Some(s)),
            (s, _) => s,
        };
        let line = start.map_or(0, |s| {
            let end = lines
                .iter()
                .enumerate()
                .skip(s + 1)
                .find(|(_, l)| l.trim_start().starts_with('['))
                .map_or(lines.len(), |(i, _)| i);
            (s..end)
                .find(|&i| {
                    let l = lines[i].trim_start();
                    l.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='))
                })
                .unwrap_or(s)
                + 1
        });
        format!("{}:{line}: key `{key}`", path.display())
    }
}

/// The bridges the tables describe; an error names the file, line and key.
pub(crate) fn build(tables: Vec<BridgeTable>, at: &Locator<'_>) -> Result<Vec<BridgeSpec>, String> {
    let mut specs: Vec<BridgeSpec> = Vec::with_capacity(tables.len());
    for (i, t) in tables.into_iter().enumerate() {
        let spec = one(i, t, at)?;
        if specs.iter().any(|s| s.config.name == spec.config.name) {
            return Err(format!(
                "{}: a second bridge named {:?}",
                at.at(i, None, "name"),
                spec.config.name
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn one(i: usize, t: BridgeTable, at: &Locator<'_>) -> Result<BridgeSpec, String> {
    let key = |k: &str| at.at(i, None, k);
    let name = t.name.ok_or_else(|| format!("{}: every bridge needs a name", key("name")))?;
    if name.is_empty() || name.contains(['/', '+', '#']) {
        return Err(format!("{}: {name:?} is not a bridge name (no /, + or #)", key("name")));
    }
    let addresses = match t.address {
        Addresses::None => Vec::new(),
        Addresses::One(a) => vec![a],
        Addresses::Many(a) => a,
    };
    if addresses.is_empty() {
        return Err(format!("{}: bridge {name:?} has no address", key("address")));
    }
    let insecure = t.insecure.unwrap_or(false);
    let tls_files = t.cafile.is_some() || t.certfile.is_some() || t.keyfile.is_some();
    let mut targets = Vec::with_capacity(addresses.len());
    for a in &addresses {
        let options = address_options(a).map_err(|e| format!("{}: {e}", key("address")))?;
        let mut options = options;
        if options.tls.is_some() || tls_files || insecure {
            options.tls = Some(TlsOptions {
                ca_file: t.cafile.clone(),
                cert_file: t.certfile.clone(),
                key_file: t.keyfile.clone(),
                danger_accept_invalid_certs: insecure,
                ..TlsOptions::default()
            });
        }
        let transport = ClientTransport::new(&options).map_err(|e| {
            let which = if t.cafile.is_some() { "cafile" } else { "certfile" };
            format!("{}: {e}", key(which))
        })?;
        targets.push(BridgeAddress { host: options.host, port: options.port, transport });
    }
    let protocol = match t.protocol_version.as_deref().unwrap_or("5") {
        "5" | "5.0" | "mqttv5" => ProtocolVersion::V5,
        "3.1.1" | "4" | "mqttv311" => ProtocolVersion::V3_1_1,
        other => {
            return Err(format!(
                "{}: unknown protocol version {other:?}; use \"5\" or \"3.1.1\"",
                key("protocol_version")
            ));
        }
    };
    let client_id = t.client_id.unwrap_or_else(|| format!("{}.{name}", host_name()));
    let client_id = MqttStr::new(&client_id).map_err(|e| format!("{}: {e}", key("client_id")))?;
    let clean_start = t.clean_start.unwrap_or(false);
    let mut connect = Connect::new(protocol, client_id);
    connect.clean_start = clean_start;
    connect.keep_alive = t.keep_alive.unwrap_or(60);
    if let Some(u) = &t.username {
        connect.username = Some(MqttStr::new(u).map_err(|e| format!("{}: {e}", key("username")))?);
    }
    if t.password.is_some() && t.username.is_none() && !protocol.is_v5() {
        return Err(format!("{}: MQTT 3.1.1 needs a username with a password", key("password")));
    }
    connect.password = t.password.map(|p| Bytes::from(p.into_bytes()));
    if protocol.is_v5() && !clean_start {
        // The remote broker keeps the bridge's session (its QoS 2 state) across disconnects.
        connect.properties.session_expiry_interval = Some(u32::MAX);
    }
    if t.topic.is_empty() {
        return Err(format!("{}: bridge {name:?} has no [[bridge.topic]]", key("name")));
    }
    let mut topics = Vec::with_capacity(t.topic.len());
    for (j, topic) in t.topic.into_iter().enumerate() {
        let key = |k: &str| at.at(i, Some(j), k);
        let pattern = topic.pattern.ok_or_else(|| {
            format!("{}: every topic of a bridge needs a pattern", key("pattern"))
        })?;
        let direction = match topic.direction.as_deref().unwrap_or("out") {
            "out" => Direction::Out,
            "in" => Direction::In,
            "both" => Direction::Both,
            other => {
                return Err(format!(
                    "{}: unknown direction {other:?}; use \"out\", \"in\" or \"both\"",
                    key("direction")
                ));
            }
        };
        let qos = match topic.qos.unwrap_or(0) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => return Err(format!("{}: QoS {q}; use 0, 1 or 2", key("qos"))),
        };
        let rule =
            BridgeTopic::new(&pattern, direction, qos, &topic.local_prefix, &topic.remote_prefix)
                .map_err(|e| {
                let k = if e.starts_with("local_prefix") {
                    "local_prefix"
                } else if e.starts_with("remote_prefix") {
                    "remote_prefix"
                } else {
                    "pattern"
                };
                format!("{}: {e}", key(k))
            })?;
        topics.push(rule);
    }
    let mut config = BridgeConfig::new(&name, targets.len(), connect, topics);
    config.try_private = t.try_private.unwrap_or(true);
    // Each bridge its own jitter.
    config.client.seed = name.bytes().fold(0x5eed_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    Ok(BridgeSpec { config, addresses: targets })
}

/// `host:port`, `[v6]:port`, or a `mqtt://`, `mqtts://`, `ws://` or `wss://` URL.
fn address_options(address: &str) -> Result<ConnectOptions, String> {
    if address.contains("://") {
        let url = ServerUrl::parse(address).map_err(|e| e.0)?;
        if url.username.is_some() {
            return Err(format!("{address:?}: put the user name in `username`, not the address"));
        }
        return ConnectOptions::from_url(address).map_err(|e| e.0);
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{address:?}: {p:?} is not a port number (0 to 65535)"))?;
            (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
        }
        _ => (address.to_string(), 1883),
    };
    if host.is_empty() {
        return Err(format!("{address:?} names no host"));
    }
    Ok(ConnectOptions::new(host, port))
}

/// This machine's name, for default client ids.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ternmq".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BridgeSpec>, String> {
        #[derive(Deserialize)]
        struct File {
            bridge: Vec<BridgeTable>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        build(f.bridge, &Locator { source: Some((Path::new("b.toml"), text)) })
    }

    #[test]
    fn a_bridge_reads_every_key() {
        let text = r#"
[[bridge]]
name = "cloud"
address = ["127.0.0.1:1883", "mqtt://[::1]:1884"]
protocol_version = "3.1.1"
client_id = "edge-1"
keep_alive = 30
username = "u"
password = "p"
[[bridge.topic]]
pattern = "sensors/#"
direction = "both"
qos = 2
local_prefix = "l/"
remote_prefix = "r/"
"#;
        let specs = parse(text).expect("valid");
        let s = &specs[0];
        assert_eq!(s.addresses.len(), 2);
        assert_eq!((s.addresses[1].host.as_str(), s.addresses[1].port), ("::1", 1884));
        assert_eq!(s.config.connect.client_id.as_str(), "edge-1");
        assert_eq!(s.config.connect.protocol, ProtocolVersion::V3_1_1);
        assert!(!s.config.connect.clean_start);
        assert_eq!(s.config.topics[0].local_filter().as_str(), "l/sensors/#");
        assert_eq!(s.config.topics[0].remote_filter().as_str(), "r/sensors/#");
    }

    #[test]
    fn the_example_configuration_s_bridge_loads() {
        let text = include_str!("../../../examples/broker.toml");
        let from = text.find("# [[bridge]]").expect("the example has a bridge");
        let table: String = text[from..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        // Its TLS files do not exist here: without them it must load.
        let table: String = table
            .lines()
            .filter(|l| !["cafile", "certfile", "keyfile"].iter().any(|k| l.starts_with(k)))
            .collect::<Vec<_>>()
            .join("\n");
        let specs = parse(&table).expect("the example loads");
        assert_eq!(specs[0].addresses.len(), 2);
        assert_eq!(specs[0].config.topics.len(), 1);
    }

    #[test]
    fn bad_bridges_name_the_file_line_and_key() {
        let base =
            "[[bridge]]\nname = \"a\"\naddress = \"h:1\"\n[[bridge.topic]]\npattern = \"x\"\n";
        let e = parse("[[bridge]]\nname = \"a\"\n[[bridge.topic]]\npattern = \"x\"\n").unwrap_err();
        assert!(e.starts_with("b.toml:1: key `address`") && e.contains("no address"), "{e}");
        let e = parse(&format!("{base}direction = \"sideways\"\n")).unwrap_err();
        assert!(e.starts_with("b.toml:6: key `direction`"), "{e}");
        let e = parse(&format!("{base}local_prefix = \"a/+/\"\n")).unwrap_err();
        assert!(e.starts_with("b.toml:6: key `local_prefix`") && e.contains("wildcard"), "{e}");
        let e = parse(&base.replace("\"x\"", "\"a/#/b\"")).unwrap_err();
        assert!(e.starts_with("b.toml:5: key `pattern`"), "{e}");
        let two = format!("{base}{base}");
        let e = parse(&two).unwrap_err();
        assert!(e.starts_with("b.toml:7: key `name`") && e.contains("second bridge"), "{e}");
        let e = parse(&base.replace("h:1", "h:port")).unwrap_err();
        assert!(e.starts_with("b.toml:3: key `address`"), "{e}");
    }
}
