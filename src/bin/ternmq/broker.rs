//! `ternmq broker`: the MQTT broker program.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::{Arc, mpsc};

use serde::Deserialize;
use ternmq::auth::{AclFile, PasswordFile};
use ternmq::broker::{BrokerConfig, SharedPolicy};
use ternmq::codec::QoS;
use ternmq::tokio::{
    Durability, Listener, Server, ServerConfig, StoreConfig, TlsAcceptor, TlsSettings, TlsVersion,
};

use crate::signals::Signal;

const USAGE: &str = "\
usage: ternmq broker [options]

Runs an MQTT 3.1.1 and 5.0 broker. Without options it listens on 127.0.0.1:1883.

options:
  -c, --config FILE      read options from a TOML file (see examples/broker.toml)
      --bind ADDR        address to listen on (default 127.0.0.1; IPv6 as ::1)
  -p, --port N           port to listen on (default 1883)
      --data-dir DIR     where persistent state is kept (default ./mqtt_data)
      --no-persistence   keep everything in memory
      --runtime NAME     std (the default: readiness loops, least memory), tokio or smol;
                         a cluster node runs on tokio
      --io-threads N     the std server's threads for connections, beside the broker's
                         (default: one per CPU; 1 serves everything on one thread)
      --allow-anonymous  accept clients without credentials (on a non-loopback address, or
                         beside a password_file)
  -v, --verbose          also log each TCP connection with the peer's address, and the
                         broker's other events (same as --log-level debug)
      --log-level LEVEL  error, warn, info (default), debug or trace
      --log-timestamp F  rfc3339 (default, UTC), epoch (seconds, as Mosquitto) or none
      --log-format F     text (default) or json (one JSON object a line)
      --http ADDR        serve the HTTP admin API, metrics and dashboard on ADDR
                         (e.g. 127.0.0.1:8080; off by default; see [http] in the config)
      --cluster URLS     run as one node of a cluster over NATS JetStream at URLS
                         (nats://host:port, repeated or comma-separated: every server of
                         the NATS cluster; see [cluster] in the config)
      --node-name NAME   this node's name in the cluster (default: the host name)
      --help             print this help

Flags override the file. Ctrl-C or SIGTERM stops the broker gracefully. SIGHUP (or POST
/api/v1/reload) re-reads the configuration: certificates, password and ACL files, limits
and timeouts apply at once, users removed from the password file are disconnected, and
what needs a restart (listeners, persistence) is logged.";

/// Seconds between `$SYS` updates when the configuration file does not say (Mosquitto's
/// default too).
const DEFAULT_SYS_INTERVAL: u64 = 10;

/// The options of a broker configuration file. Names follow Mosquitto's where it has the option.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    listener: Vec<ListenerConfig>,
    max_connections: Option<usize>,
    max_packet_size: Option<u32>,
    enable_persistence: Option<bool>,
    persistence_path: Option<PathBuf>,
    durability: Option<String>,
    sync_interval_ms: Option<u64>,
    session_expiry_interval: Option<u32>,
    max_qos: Option<u8>,
    retain_available: Option<bool>,
    wildcard_subscription_available: Option<bool>,
    shared_subscription_available: Option<bool>,
    subscription_identifiers_available: Option<bool>,
    receive_maximum: Option<u16>,
    max_inflight_messages: Option<u16>,
    max_queued_messages: Option<usize>,
    max_queued_bytes: Option<usize>,
    queue_qos0_messages: Option<bool>,
    max_outbound_bytes: Option<usize>,
    max_topic_alias: Option<u16>,
    outgoing_topic_aliases: Option<bool>,
    shared_subscription_policy: Option<String>,
    max_ack_delay_ms: Option<u64>,
    max_keepalive: Option<u16>,
    connect_timeout: Option<u64>,
    allow_zero_length_clientid: Option<bool>,
    max_client_id_len: Option<usize>,
    sys_interval: Option<u64>,
    allow_anonymous: Option<bool>,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    log_level: Option<String>,
    log_timestamp: Option<String>,
    log_format: Option<String>,
    http: Option<HttpTable>,
    #[serde(default)]
    bridge: Vec<crate::bridge::BridgeTable>,
    cluster: Option<ClusterTable>,
}

/// The `[cluster]` table: this broker as one node of a cluster over NATS JetStream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    /// Every server of the NATS cluster.
    #[serde(default)]
    nats: Vec<String>,
    node_name: Option<String>,
    /// A NATS credentials file.
    credentials: Option<PathBuf>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    /// Certificate authorities for NATS's TLS (turns TLS on).
    cafile: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    tls: Option<bool>,
    replicas: Option<usize>,
}

/// The cluster's backplane from the `[cluster]` table and the `--cluster` and `--node-name`
/// flags (which win); `None` when neither names a NATS server.
fn cluster_link(
    table: Option<ClusterTable>,
    urls: Vec<String>,
    node_name: Option<String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<Arc<ternmq::cluster::NatsCluster>>, String> {
    if table.is_none() && urls.is_empty() {
        return Ok(None);
    }
    let table = table.unwrap_or_default();
    let here = |key: &str| format!("{} (in [cluster])", at(key));
    let servers = if urls.is_empty() { table.nats } else { urls };
    let user = match (table.user, table.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => return Err(format!("{}: user needs a password", here("user"))),
        (None, Some(_)) => return Err(format!("{}: password needs a user", here("password"))),
    };
    let tls_client = match (table.certfile, table.keyfile) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(format!("{}: certfile and keyfile go together", here("certfile"))),
    };
    let config = ternmq::cluster::NatsConfig {
        servers,
        node_name: node_name.or(table.node_name).unwrap_or_else(host_name),
        credentials: table.credentials,
        user,
        token: table.token,
        tls_ca: table.cafile,
        tls_client,
        tls_required: table.tls.unwrap_or(false),
        replicas: table.replicas,
    };
    ternmq::cluster::NatsCluster::new(config).map(Some).map_err(|e| format!("ternmq broker: {e}"))
}

/// The host's name, as a node name (letters, digits, '-' and '_').
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    if name.is_empty() { "ternmq".into() } else { name }
}

/// The `[http]` table: the admin API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTable {
    bind: Option<String>,
    token_file: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerConfig {
    port: u16,
    bind: Option<String>,
    /// "mqtt" (the default), "mqtts", "ws" or "wss".
    kind: Option<String>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cafile: Option<PathBuf>,
    require_certificate: Option<bool>,
    use_identity_as_username: Option<bool>,
    /// The lowest TLS version: "1.2" or "1.3".
    tls_version: Option<String>,
    ws_path: Option<String>,
    proxy_protocol: Option<bool>,
}

impl ListenerConfig {
    /// The listener on `addr`: its TLS files loaded when it is an mqtts listener. Errors name
    /// the listener and the key.
    fn build(&self, addr: SocketAddr, at: &dyn Fn(&str) -> String) -> Result<Listener, String> {
        let kind = self.kind.as_deref().unwrap_or("mqtt");
        let here = |key: &str| format!("{} (the listener on port {})", at(key), self.port);
        let tls_keys = [
            ("certfile", self.certfile.is_some()),
            ("keyfile", self.keyfile.is_some()),
            ("cafile", self.cafile.is_some()),
            ("require_certificate", self.require_certificate.is_some()),
            ("use_identity_as_username", self.use_identity_as_username.is_some()),
            ("tls_version", self.tls_version.is_some()),
        ];
        match kind {
            "mqtt" => {
                if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "{}: a TLS option on a plain listener; set kind = \"mqtts\" to serve \
                         MQTT over TLS",
                        here(key)
                    ));
                }
            }
            "mqtts" | "wss" => {}
            "ws" => {
                if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "{}: a TLS option on a plain WebSocket listener; set kind = \"wss\" \
                         to serve MQTT over WebSocket over TLS",
                        here(key)
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{}: unknown kind {other:?}; use \"mqtt\", \"mqtts\", \"ws\" or \"wss\"",
                    here("kind")
                ));
            }
        }
        let proxy_protocol = self.proxy_protocol.unwrap_or(false);
        let websocket = matches!(kind, "ws" | "wss");
        if self.ws_path.is_some() && !websocket {
            return Err(format!("{}: ws_path is for kind = \"ws\" or \"wss\"", here("ws_path")));
        }
        let ws_path = match &self.ws_path {
            Some(p) if !p.starts_with('/') => {
                return Err(format!("{}: a path starts with /: {p:?}", here("ws_path")));
            }
            Some(p) => Some(p.clone()),
            None => websocket.then(|| "/mqtt".to_string()),
        };
        if matches!(kind, "mqtt" | "ws") {
            return Ok(Listener { addr, tls: None, ws_path, proxy_protocol });
        }
        let (Some(certfile), Some(keyfile)) = (&self.certfile, &self.keyfile) else {
            let key = if self.certfile.is_none() { "certfile" } else { "keyfile" };
            return Err(format!("{}: kind = {kind:?} needs certfile and keyfile", here(key)));
        };
        let min_version = match self.tls_version.as_deref() {
            None | Some("1.2") => TlsVersion::V1_2,
            Some("1.3") => TlsVersion::V1_3,
            Some(other) => {
                return Err(format!(
                    "{}: unknown TLS version {other:?}; use \"1.2\" or \"1.3\"",
                    here("tls_version")
                ));
            }
        };
        let settings = TlsSettings {
            certfile: certfile.clone(),
            keyfile: keyfile.clone(),
            cafile: self.cafile.clone(),
            require_certificate: self.require_certificate.unwrap_or(false),
            use_identity_as_username: self.use_identity_as_username.unwrap_or(false),
            min_version,
        };
        if settings.use_identity_as_username && !settings.require_certificate {
            return Err(format!(
                "{}: use_identity_as_username needs require_certificate = true (a client \
                 without a certificate would have no user name)",
                here("use_identity_as_username")
            ));
        }
        let acceptor = TlsAcceptor::new(settings).map_err(|e| format!("{}: {e}", here("kind")))?;
        Ok(Listener { addr, tls: Some(acceptor), ws_path, proxy_protocol })
    }

    /// Whether clients on it prove who they are (a required client certificate), which
    /// counts as authentication.
    fn authenticates(&self) -> bool {
        matches!(self.kind.as_deref(), Some("mqtts" | "wss"))
            && self.require_certificate == Some(true)
    }
}

/// Everything the broker runs with, from defaults, the file and the flags.
pub(crate) struct Settings {
    pub(crate) config: ServerConfig,
    pub(crate) persistence: Option<PathBuf>,
    pub(crate) log_level: log::LevelFilter,
    log_timestamp: Timestamp,
    log_format: LogFormat,
    pub(crate) runtime: Runtime,
    /// The std server's threads for connections (1: the broker's thread serves them).
    pub(crate) io_threads: usize,
    pub(crate) durability: Durability,
    /// The HTTP admin API, when configured.
    pub(crate) http: Option<HttpSettings>,
    /// The users of the password file, when there is one.
    pub(crate) users: Option<Vec<String>>,
}

/// Where and how the HTTP admin API is served.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    pub(crate) bind: SocketAddr,
    pub(crate) options: ternmq::http::HttpOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    Tokio,
    Smol,
    Std,
}

impl Runtime {
    /// The server for this process: the std server, with one I/O thread per CPU the process
    /// may use (affinity or a container's quota) beside the broker's thread, or on one CPU
    /// everything on one thread. It was as fast as the Tokio server in every shape of
    /// `ternmq bench` and holds half the memory per idle connection (no task and no I/O
    /// registration of Tokio's each); a cluster node runs on Tokio, which its backplane needs.
    pub(crate) fn default_here() -> Runtime {
        Runtime::Std
    }

    /// The std server's I/O threads by default: one per CPU, or none of its own on one CPU.
    pub(crate) fn default_io_threads() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    }
}

/// Runs the broker until Ctrl-C or SIGTERM. Errors are messages for the user.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some(settings) = settings(args)? else {
        say!("{USAGE}");
        return Ok(());
    };
    Logger::install(settings.log_level, settings.log_timestamp, settings.log_format);
    // A descriptor per connection, and some for listeners, the store and the admin API.
    let wanted = settings.config.broker.max_connections as u64 + 256;
    let limit = crate::limits::raise_open_files(wanted);
    if limit < wanted {
        log::warn!(
            "the open-file limit is {limit}, below max_connections ({}): connections beyond \
             it will be refused; raise it (ulimit -n) or lower max_connections",
            settings.config.broker.max_connections
        );
    }
    let ops = crate::operate::Operations::new(args.to_vec());
    let signals = stop_signals(ops.clone())?;
    match settings.runtime {
        Runtime::Std => return serve_std(settings, signals, &ops),
        Runtime::Smol => return serve_smol(settings, signals, &ops),
        Runtime::Tokio => {}
    }
    let runtime = crate::tokio_runtime().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(settings, signals, &ops))
}

impl Settings {
    fn store(&self) -> Option<StoreConfig> {
        let dir = self.persistence.clone()?;
        Some(StoreConfig { dir, durability: self.durability })
    }

    /// The startup lines: version, one per listener, and where state is kept.
    fn announce(&self, addrs: &[std::net::SocketAddr], http: Option<&str>) {
        let runtime = match (self.runtime, self.io_threads) {
            (Runtime::Std, 1) => "std (one thread)".to_string(),
            (Runtime::Std, n) => format!("std, {n} I/O threads"),
            (Runtime::Smol, _) => "smol".to_string(),
            (Runtime::Tokio, _) => "tokio".to_string(),
        };
        say!("ternmq {} (MQTT 3.1.1 and 5.0 broker, {runtime} runtime)", env!("CARGO_PKG_VERSION"));
        for (addr, l) in addrs.iter().zip(&self.config.listeners) {
            say!("listening on {addr} ({})", l.kind());
        }
        if let Some(line) = http {
            say!("{line}");
        }
        let Some(dir) = &self.persistence else {
            say!("running in memory (persistence off)");
            return;
        };
        let durability = match self.durability {
            Durability::Sync => "sync: acknowledged messages survive a crash".to_string(),
            Durability::Periodic(every) => format!(
                "periodic: fsync every {} ms; a crash may lose that window",
                every.as_millis()
            ),
            _ => "none: the operating system decides when data reaches the disk".to_string(),
        };
        say!("persistence: {} ({durability})", dir.join(ternmq::store::FILE_NAME).display());
    }
}

/// Installs the handlers for Ctrl-C, SIGTERM and SIGHUP, before the broker binds (so that no signal
/// finds the default action, which ends the process without its shutdown), and returns a
/// receiver that is told when to stop.
/// SIGHUP reloads the configuration as `ops` says (once the broker serves).
fn stop_signals(ops: crate::operate::Operations) -> Result<mpsc::Receiver<()>, String> {
    let (tx, rx) = mpsc::channel();
    crate::signals::watch(true, move |signal| {
        match signal {
            Signal::Stop(name) => {
                log::info!("{name}: shutting down");
                say!("shutting down");
                let _ = tx.send(());
            }
            // As Mosquitto, SIGHUP reloads the configuration (and must not kill the broker,
            // its default action).
            Signal::Hangup => {
                let _ = ops.reload("SIGHUP");
            }
        }
        true
    })?;
    Ok(rx)
}

/// Calls `stop` when `signals` says, from a thread of its own.
fn stop_on(signals: mpsc::Receiver<()>, stop: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        if signals.recv().is_ok() {
            stop();
        }
    });
}

/// The broker on smol, on this thread.
fn serve_smol(
    settings: Settings,
    signals: mpsc::Receiver<()>,
    ops: &crate::operate::Operations,
) -> Result<(), String> {
    let mut config = settings.config.clone();
    config.store = settings.store();
    let server = ternmq::smol::Server::bind_blocking(config)
        .map_err(|e| bind_error(&e, &settings.config.listeners))?;
    let http = ops.start(&settings, server.control())?;
    settings.announce(&server.local_addrs(), http.as_deref());
    let handle = server.shutdown_handle();
    stop_on(signals, move || handle.shutdown());
    server.run_blocking().map_err(|e| e.to_string())?;
    say!("stopped");
    Ok(())
}

/// The broker on the std server: one thread, a readiness loop.
fn serve_std(
    settings: Settings,
    signals: mpsc::Receiver<()>,
    ops: &crate::operate::Operations,
) -> Result<(), String> {
    let mut config = settings.config.clone();
    config.store = settings.store();
    let server = ternmq::blocking::Server::bind(config)
        .map_err(|e| bind_error(&e, &settings.config.listeners))?
        .io_threads(settings.io_threads);
    let http = ops.start(&settings, server.control())?;
    settings.announce(&server.local_addrs(), http.as_deref());
    let handle = server.shutdown_handle();
    stop_on(signals, move || handle.shutdown());
    server.run().map_err(|e| e.to_string())?;
    say!("stopped");
    Ok(())
}

async fn serve(
    mut settings: Settings,
    signals: mpsc::Receiver<()>,
    ops: &crate::operate::Operations,
) -> Result<(), String> {
    settings.config.store = settings.store();
    let server = Server::bind(settings.config.clone())
        .await
        .map_err(|e| bind_error(&e, &settings.config.listeners))?;
    let http = ops.start(&settings, server.control())?;
    settings.announce(&server.local_addrs(), http.as_deref());
    let handle = server.shutdown_handle();
    stop_on(signals, move || handle.shutdown());
    server.run().await.map_err(|e| e.to_string())?;
    say!("stopped");
    Ok(())
}

/// The settings from `args`, or `None` for `--help`.
pub(crate) fn settings(args: &[String]) -> Result<Option<Settings>, String> {
    let mut file: Option<PathBuf> = None;
    let mut bind: Option<String> = None;
    let mut port: Option<u16> = None;
    let mut data_dir: Option<PathBuf> = None;
    let mut no_persistence = false;
    let mut allow_anonymous = false;
    let mut log_level: Option<String> = None;
    let mut log_timestamp: Option<String> = None;
    let mut log_format: Option<String> = None;
    let mut http: Option<String> = None;
    let mut runtime = None;
    let mut io_threads = None;
    let mut cluster_urls: Vec<String> = Vec::new();
    let mut node_name: Option<String> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next().cloned().ok_or_else(|| format!("ternmq broker: {name} needs a value"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "-c" | "--config" => file = Some(PathBuf::from(value(flag)?)),
            "--bind" => bind = Some(value(flag)?),
            "-p" | "--port" => {
                let v = value(flag)?;
                port = Some(v.parse().map_err(|_| {
                    format!("ternmq broker: {flag}: {v:?} is not a port number (0 to 65535)")
                })?);
            }
            "--data-dir" => data_dir = Some(PathBuf::from(value(flag)?)),
            "--no-persistence" => no_persistence = true,
            "--allow-anonymous" => allow_anonymous = true,
            "--cluster" => {
                cluster_urls.extend(value(flag)?.split(',').map(|u| u.trim().to_string()));
            }
            "--node-name" => node_name = Some(value(flag)?),
            "--runtime" => {
                runtime = Some(match value(flag)?.as_str() {
                    "tokio" => Runtime::Tokio,
                    "std" => Runtime::Std,
                    "smol" => Runtime::Smol,
                    v => {
                        return Err(format!(
                            "ternmq broker: --runtime {v:?}: use tokio, smol or std"
                        ));
                    }
                });
            }
            "--io-threads" => {
                let v = value(flag)?;
                io_threads =
                    Some(v.parse().ok().filter(|n| (1..=255).contains(n)).ok_or_else(|| {
                        format!("ternmq broker: {flag} {v:?}: give a number of threads, 1 to 255")
                    })?);
            }
            "-v" | "--verbose" => log_level = Some("debug".into()),
            "--log-level" => log_level = Some(value(flag)?),
            "--log-timestamp" => log_timestamp = Some(value(flag)?),
            "--log-format" => log_format = Some(value(flag)?),
            "--http" => http = Some(value(flag)?),
            other => return Err(format!("ternmq broker: unknown option {other:?}\n\n{USAGE}")),
        }
    }
    let (mut fc, source) = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("ternmq broker: cannot read {}: {e}", path.display()))?;
            (parse_file(path, &text)?, Some((path.as_path(), text)))
        }
        None => (FileConfig::default(), None),
    };
    let at = |key: &str| match &source {
        Some((path, text)) => locate(path, text, key),
        None => format!("ternmq broker: {key}"),
    };
    let timestamp = flag_or_file(
        ("--log-timestamp", &log_timestamp),
        &fc.log_timestamp,
        &at,
        Timestamp::parse,
    )?
    .unwrap_or(Timestamp::Rfc3339);
    let format =
        flag_or_file(("--log-format", &log_format), &fc.log_format, &at, LogFormat::parse)?
            .unwrap_or(LogFormat::Text);
    let http_table = fc.http.take();
    let bridges = std::mem::take(&mut fc.bridge);
    let cluster_table = fc.cluster.take();
    let mut s = build(fc, bind, port, data_dir, no_persistence, allow_anonymous, log_level, &at)?;
    let cluster = cluster_link(cluster_table, cluster_urls, node_name, &at)?;
    // The NATS backplane runs on Tokio.
    s.runtime = match (runtime, &cluster) {
        (Some(r @ (Runtime::Std | Runtime::Smol)), Some(_)) => {
            let name = if r == Runtime::Std { "std" } else { "smol" };
            return Err(format!(
                "ternmq broker: --runtime {name}: a cluster node runs on the tokio runtime"
            ));
        }
        (Some(r), _) => r,
        (None, Some(_)) => Runtime::Tokio,
        (None, None) => Runtime::default_here(),
    };
    if let Some(n) = io_threads {
        if s.runtime != Runtime::Std {
            return Err(format!(
                "ternmq broker: --io-threads {n}: only the std server has I/O threads"
            ));
        }
        s.io_threads = n;
    }
    s.config.cluster = cluster.map(|c| c as Arc<dyn ternmq::tokio::ClusterLink>);
    s.log_timestamp = timestamp;
    s.log_format = format;
    s.http = http_settings(http_table, http, &at)?;
    let locator = crate::bridge::Locator { source: source.as_ref().map(|(p, t)| (*p, t.as_str())) };
    s.config.bridges = crate::bridge::build(bridges, &locator)?;
    Ok(Some(s))
}

/// The value of a flag, else of the file's key of the same name (`log_format` for
/// `--log-format`), parsed; an error names the flag, or the file, line and key.
fn flag_or_file<T>(
    (flag, given): (&str, &Option<String>),
    in_file: &Option<String>,
    at: &dyn Fn(&str) -> String,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match (given, in_file) {
        (Some(v), _) => parse(v).map(Some).map_err(|e| format!("ternmq broker: {flag}: {e}")),
        (None, Some(v)) => {
            let key = flag.trim_start_matches("--").replace('-', "_");
            parse(v).map(Some).map_err(|e| format!("{}: {e}", at(&key)))
        }
        (None, None) => Ok(None),
    }
}

/// The HTTP admin API's settings from the `[http]` table and the `--http` flag (which wins for
/// the address), its token file and certificate loaded.
fn http_settings(
    table: Option<HttpTable>,
    flag: Option<String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<HttpSettings>, String> {
    if table.is_none() && flag.is_none() {
        return Ok(None);
    }
    let table = table.unwrap_or_default();
    let (text, key) = match (&flag, &table.bind) {
        (Some(v), _) => (v.clone(), None),
        (None, Some(v)) => (v.clone(), Some("bind")),
        (None, None) => ("127.0.0.1:8080".to_string(), None),
    };
    let here = |key: &str| format!("{} (in [http])", at(key));
    // Where the address came from, for its errors.
    let origin = match key {
        Some(k) => here(k),
        None => format!("ternmq broker: --http {text}"),
    };
    let bind = parse_socket_addr(&text).map_err(|e| format!("{origin}: {e}"))?;
    let mut options = ternmq::http::HttpOptions::default();
    if let Some(path) = &table.token_file {
        options.tokens =
            ternmq::http::load_tokens(path).map_err(|e| format!("{}: {e}", here("token_file")))?;
    }
    match (&table.certfile, &table.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let settings = TlsSettings {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
                ..TlsSettings::default()
            };
            let tls =
                TlsAcceptor::new(settings).map_err(|e| format!("{}: {e}", here("certfile")))?;
            options.tls = Some(tls);
        }
        (None, None) => {}
        (Some(_), None) => return Err(format!("{}: certfile needs keyfile too", here("keyfile"))),
        (None, Some(_)) => {
            return Err(format!("{}: keyfile needs certfile too", here("certfile")));
        }
    }
    ternmq::http::check_bind(bind, &options).map_err(|e| format!("{origin}: {e}"))?;
    Ok(Some(HttpSettings { bind, options }))
}

/// `host:port`, the host an IP address (IPv6 in brackets) or `localhost`.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let bad = || format!("{text:?} is not an address and port (e.g. 127.0.0.1:8080 or [::1]:8080)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip = parse_ip(host).map_err(|_| bad())?;
    Ok(SocketAddr::new(ip, port))
}

/// A failed bind, with what to do about it.
fn bind_error(e: &std::io::Error, listeners: &[Listener]) -> String {
    let addrs: Vec<String> = listeners.iter().map(|l| l.addr.to_string()).collect();
    let addrs = addrs.join(", ");
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "ternmq broker: cannot listen on {addrs}: the address is in use (is another broker \
             running? choose another port with --port N)"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "ternmq broker: cannot listen on {addrs}: permission denied (ports below 1024 need \
             privileges; choose another port with --port N)"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "ternmq broker: cannot listen on {addrs}: no such address on this machine (check \
             --bind)"
        ),
        _ => format!("ternmq broker: cannot listen on {addrs}: {e}"),
    }
}

/// Mosquitto's names for options that ternmq calls differently.
const MOSQUITTO_NAMES: [(&str, &str); 5] = [
    ("persistence", "enable_persistence"),
    ("persistence_location", "persistence_path"),
    ("message_size_limit", "max_packet_size"),
    ("log_type", "log_level"),
    ("bind_address", "bind"),
];

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, String> {
    if let Some(e) = mosquitto_syntax(path, text) {
        return Err(e);
    }
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
        let key = text
            .lines()
            .nth(line.saturating_sub(1))
            .and_then(|l| l.split('=').next())
            .map(|k| k.trim().trim_matches(['[', ']']))
            .filter(|k| !k.is_empty())
            .unwrap_or("?");
        let message = e.message();
        if message.starts_with("unknown field") {
            let valid = expected_fields(message);
            let hint = MOSQUITTO_NAMES
                .iter()
                .find(|(m, _)| *m == key)
                .map(|(_, ours)| (*ours).to_string())
                .filter(|ours| valid.iter().any(|v| v == ours))
                .or_else(|| nearest(key, &valid))
                .map_or_else(
                    || format!(" (valid keys: {}; see examples/broker.toml)", valid.join(", ")),
                    |k| format!("; did you mean `{k}`?"),
                );
            return format!("{}:{line}: key `{key}`: unknown{hint}", path.display());
        }
        format!("{}:{line}: key `{key}`: {message}", path.display())
    })
}

/// The field names serde lists in "unknown field `x`, expected one of `a`, `b`".
fn expected_fields(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else { return Vec::new() };
    list.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// The key of `valid` nearest to `key`, if near enough to be a typo.
fn nearest(key: &str, valid: &[String]) -> Option<String> {
    valid
        .iter()
        .map(|v| (edit_distance(key, v), v))
        .filter(|(d, v)| *d <= 3.max(v.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v.clone())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A line in Mosquitto's `key value` syntax (`listener 1883`), which is not TOML: says so and
/// shows the TOML form.
fn mosquitto_syntax(path: &Path, text: &str) -> Option<String> {
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('[') || l.contains('=') {
            continue;
        }
        let mut words = l.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else { continue };
        if !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            continue;
        }
        let toml = match (key, words.next()) {
            ("listener", Some(addr)) => {
                format!("[[listener]]\n    port = {value}\n    bind = \"{addr}\"")
            }
            ("listener", None) => format!("port = {value}"),
            _ => {
                let key = MOSQUITTO_NAMES.iter().find(|(m, _)| *m == key).map_or(key, |(_, o)| o);
                let plain = value.parse::<f64>().is_ok() || value == "true" || value == "false";
                if plain { format!("{key} = {value}") } else { format!("{key} = \"{value}\"") }
            }
        };
        return Some(format!(
            "{}:{}: `{l}` is Mosquitto's configuration syntax, but this file is TOML; write:\n\n    \
             {toml}\n\n(examples/broker.toml lists every option)",
            path.display(),
            i + 1
        ));
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// `file:line: key `key`` for a key of the file (line 0 if the key is not written there).
fn locate(path: &Path, text: &str, key: &str) -> String {
    let line = text
        .lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1);
    format!("{}:{line}: key `{key}`", path.display())
}

#[allow(clippy::too_many_arguments)]
fn build(
    fc: FileConfig,
    bind: Option<String>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    no_persistence: bool,
    allow_anonymous_flag: bool,
    log_level: Option<String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Settings, String> {
    let mut b = BrokerConfig::default();
    let mut listeners: Vec<Listener> = Vec::new();
    // Listeners whose clients prove who they are (required client certificates).
    let mut authenticated = Vec::new();
    if fc.listener.is_empty() || bind.is_some() || port.is_some() {
        let host = bind.or(fc.bind.clone()).unwrap_or_else(|| "127.0.0.1".into());
        let ip = parse_ip(&host).map_err(|e| format!("{}: {e}", at("bind")))?;
        listeners.push(SocketAddr::new(ip, port.or(fc.port).unwrap_or(1883)).into());
        authenticated.push(false);
    } else {
        for l in &fc.listener {
            let host = l.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
            let ip = parse_ip(&host).map_err(|e| format!("{}: {e}", at("bind")))?;
            listeners.push(l.build(SocketAddr::new(ip, l.port), at)?);
            authenticated.push(l.authenticates());
        }
    }
    if let Some(v) = fc.max_connections {
        b.max_connections = v;
    }
    if let Some(v) = fc.max_packet_size {
        b.max_packet_size = v;
    }
    if let Some(v) = fc.session_expiry_interval {
        b.session_expiry_interval = v;
    }
    if let Some(v) = fc.max_qos {
        b.max_qos = match v {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err(format!("{}: {v} is not a QoS; use 0, 1 or 2", at("max_qos"))),
        };
    }
    if let Some(v) = fc.retain_available {
        b.retain_available = v;
    }
    if let Some(v) = fc.wildcard_subscription_available {
        b.wildcard_subscription_available = v;
    }
    if let Some(v) = fc.shared_subscription_available {
        b.shared_subscription_available = v;
    }
    if let Some(v) = fc.subscription_identifiers_available {
        b.subscription_identifiers_available = v;
    }
    if let Some(v) = fc.receive_maximum {
        b.receive_maximum = v;
    }
    if let Some(v) = fc.max_inflight_messages {
        b.max_inflight_messages = v;
    }
    if let Some(v) = fc.max_queued_messages {
        b.max_queued_messages = v;
    }
    if let Some(v) = fc.max_queued_bytes {
        b.max_queued_bytes = v;
    }
    if let Some(v) = fc.queue_qos0_messages {
        b.queue_qos0_offline = v;
    }
    if let Some(v) = fc.max_outbound_bytes {
        b.max_outbound_bytes = v;
    }
    if let Some(v) = fc.max_topic_alias {
        b.topic_alias_maximum = v;
    }
    if let Some(v) = fc.outgoing_topic_aliases {
        b.outgoing_topic_aliases = v;
    }
    if let Some(v) = &fc.shared_subscription_policy {
        b.shared_policy = match v.as_str() {
            "round_robin" => SharedPolicy::RoundRobin,
            "random" => SharedPolicy::Random,
            "sticky" => SharedPolicy::Sticky,
            other => {
                return Err(format!(
                    "{}: unknown policy {other:?}; use round_robin, random or sticky",
                    at("shared_subscription_policy")
                ));
            }
        };
    }
    if let Some(v) = fc.max_ack_delay_ms {
        b.max_ack_delay = Duration::from_millis(v);
    }
    if let Some(v) = fc.max_keepalive {
        b.max_keepalive = v;
    }
    if let Some(v) = fc.connect_timeout {
        b.connect_timeout = Duration::from_secs(v);
    }
    if let Some(v) = fc.allow_zero_length_clientid {
        b.allow_zero_length_client_id = v;
    }
    if let Some(v) = fc.max_client_id_len {
        b.max_client_id_len = v;
    }
    // As Mosquitto: `$SYS` statistics every 10 s unless the file says otherwise (0 = off).
    b.sys_interval = match fc.sys_interval.unwrap_or(DEFAULT_SYS_INTERVAL) {
        0 => None,
        v => Some(Duration::from_secs(v)),
    };
    b.version = format!("ternmq {}", env!("CARGO_PKG_VERSION"));
    b.validate().map_err(|e| format!("{}: {}", at(config_key(e.field)), e.message))?;

    let allow_anonymous = allow_anonymous_flag || fc.allow_anonymous.unwrap_or(false);
    let mut users = None;
    if let Some(path) = &fc.password_file {
        let passwords = PasswordFile::load(path)
            .map_err(|e| format!("{}: {e}", at("password_file")))?
            .with_allow_anonymous(allow_anonymous);
        users = Some(passwords.users().map(String::from).collect());
        b.authenticator = Some(Arc::new(passwords));
    } else if fc.allow_anonymous == Some(false) {
        return Err(format!(
            "{}: without a password_file, refusing anonymous clients would refuse everyone; \
             set password_file or remove the key",
            at("allow_anonymous")
        ));
    }
    if let Some(path) = &fc.acl_file {
        let acl = AclFile::load(path).map_err(|e| format!("{}: {e}", at("acl_file")))?;
        b.authorizer = Some(Arc::new(acl));
    }
    if let Some(open) = listeners
        .iter()
        .zip(&authenticated)
        .find(|(l, certified)| !l.addr.ip().is_loopback() && !**certified)
        .map(|(l, _)| l.addr)
        && fc.password_file.is_none()
        && !allow_anonymous
    {
        return Err(format!(
            "ternmq broker: refusing to listen on {open} without authentication: anyone who can \
             reach it could connect. Set password_file in a config file (create it with \
             `ternmq passwd -c FILE USER`), listen on a loopback address (--bind 127.0.0.1), \
             or accept anonymous clients on purpose with --allow-anonymous (allow_anonymous = \
             true in the config file)"
        ));
    }

    let persistence = if no_persistence || fc.enable_persistence == Some(false) {
        None
    } else {
        Some(data_dir.or(fc.persistence_path).unwrap_or_else(|| PathBuf::from("./mqtt_data")))
    };
    let level = log_level.or(fc.log_level).unwrap_or_else(|| "info".into());
    let log_level = match level.as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            return Err(format!(
                "{}: unknown log level {other:?}; use error, warn, info, debug or trace",
                at("log_level")
            ));
        }
    };
    let mut config = ServerConfig::new(listeners[0].addr);
    config.listeners = listeners;
    config.broker = b;
    // Drawn for each run: the client identifier index's hash and the assigned identifiers
    // cannot be predicted (and so not made to collide) from outside.
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_ok() {
        config.broker.seed = u64::from_le_bytes(seed);
    }
    let durability = match fc.durability.as_deref().unwrap_or("sync") {
        "sync" => Durability::Sync,
        "periodic" => Durability::Periodic(std::time::Duration::from_millis(
            fc.sync_interval_ms.unwrap_or(100),
        )),
        "none" => Durability::None,
        other => {
            return Err(format!(
                "{}: unknown durability {other:?}; use sync, periodic or none",
                at("durability")
            ));
        }
    };
    Ok(Settings {
        config,
        persistence,
        log_level,
        log_timestamp: Timestamp::Rfc3339,
        log_format: LogFormat::Text,
        runtime: Runtime::default_here(),
        io_threads: Runtime::default_io_threads(),
        durability,
        http: None,
        users,
    })
}

/// The file key for a field of `BrokerConfig`.
fn config_key(field: &str) -> &str {
    match field {
        "topic_alias_maximum" => "max_topic_alias",
        "queue_qos0_offline" => "queue_qos0_messages",
        "allow_zero_length_client_id" => "allow_zero_length_clientid",
        other => other,
    }
}

fn parse_ip(host: &str) -> Result<IpAddr, String> {
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_matches(['[', ']'])
        .parse()
        .map_err(|_| format!("{host:?} is not an IP address (e.g. 127.0.0.1, ::1 or 0.0.0.0)"))
}

/// How log lines are stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timestamp {
    /// `2026-01-02T03:04:05.678Z` (UTC).
    Rfc3339,
    /// Seconds since the Unix epoch, as Mosquitto writes them (`1767323045: ...`).
    Epoch,
    /// None (for a journal that stamps lines itself).
    Off,
}

impl Timestamp {
    fn parse(v: &str) -> Result<Timestamp, String> {
        match v {
            "rfc3339" => Ok(Timestamp::Rfc3339),
            "epoch" => Ok(Timestamp::Epoch),
            "none" => Ok(Timestamp::Off),
            other => {
                Err(format!("{other:?} is not a timestamp format; use rfc3339, epoch or none"))
            }
        }
    }

    /// The stamp for `now` (time since the Unix epoch), with its separator.
    fn stamp(self, now: Duration) -> String {
        let secs = now.as_secs();
        match self {
            Timestamp::Rfc3339 => {
                let (y, m, d, h, min, sec) = crate::format::civil(now);
                format!(
                    "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}.{:03}Z ",
                    now.subsec_millis()
                )
            }
            Timestamp::Epoch => format!("{secs}: "),
            Timestamp::Off => String::new(),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// `timestamp LEVEL message`.
    Text,
    /// One JSON object a line: `{"time": ..., "level": ..., "target": ..., "message": ...}`.
    Json,
}

impl LogFormat {
    fn parse(v: &str) -> Result<LogFormat, String> {
        match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format; use text or json")),
        }
    }
}

/// A log record as one JSON object: time, level, target, message, and the record's key-values
/// (client id, peer, listener on connection events).
fn json_line(record: &log::Record<'_>, now: Duration) -> String {
    struct Fields(serde_json::Map<String, serde_json::Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            let v = match value.to_u64() {
                Some(n) => serde_json::Value::from(n),
                None => serde_json::Value::from(value.to_string()),
            };
            self.0.insert(key.to_string(), v);
            Ok(())
        }
    }
    let mut fields = Fields(serde_json::Map::new());
    fields.0.insert("time".into(), Timestamp::Rfc3339.stamp(now).trim_end().into());
    fields.0.insert("level".into(), record.level().as_str().into());
    fields.0.insert("target".into(), record.target().into());
    fields.0.insert("message".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut fields);
    serde_json::Value::Object(fields.0).to_string()
}

/// Log lines to standard error: `timestamp LEVEL message`, or JSON.
struct Logger;

/// Whether the installed logger writes JSON.
static JSON_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The [`Timestamp`] of the installed logger (an index: 0 RFC 3339, 1 epoch, 2 none).
static TIMESTAMP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl Logger {
    fn install(level: log::LevelFilter, timestamp: Timestamp, format: LogFormat) {
        static LOGGER: Logger = Logger;
        JSON_LOG.store(format == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
        let index = match timestamp {
            Timestamp::Rfc3339 => 0,
            Timestamp::Epoch => 1,
            Timestamp::Off => 2,
        };
        TIMESTAMP.store(index, std::sync::atomic::Ordering::Relaxed);
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let timestamp = match TIMESTAMP.load(std::sync::atomic::Ordering::Relaxed) {
                0 => Timestamp::Rfc3339,
                1 => Timestamp::Epoch,
                _ => Timestamp::Off,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if JSON_LOG.load(std::sync::atomic::Ordering::Relaxed) {
                complain!("{}", json_line(record, now));
            } else {
                complain!("{}{:<5} {}", timestamp.stamp(now), record.level(), record.args());
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn addrs(s: &Settings) -> Vec<SocketAddr> {
        s.config.listeners.iter().map(|l| l.addr).collect()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let s = settings(&[]).unwrap().unwrap();
        assert_eq!(addrs(&s), ["127.0.0.1:1883".parse().unwrap()]);
        assert_eq!(s.config.broker.max_connections, 10_000);
        assert_eq!(s.config.broker.max_packet_size, 256 * 1024);
        assert_eq!(s.persistence, Some(PathBuf::from("./mqtt_data")));
        assert_eq!(s.config.broker.sys_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn timestamps_are_rfc3339_or_mosquittos_epoch_seconds() {
        let t = Duration::from_millis(1_767_323_045_678); // 2026-01-02T03:04:05.678Z
        assert_eq!(Timestamp::Rfc3339.stamp(t), "2026-01-02T03:04:05.678Z ");
        assert_eq!(Timestamp::Epoch.stamp(t), "1767323045: ");
        assert_eq!(Timestamp::Rfc3339.stamp(Duration::ZERO), "1970-01-01T00:00:00.000Z ");
        // A leap day.
        assert_eq!(
            Timestamp::Rfc3339.stamp(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z "
        );
        assert!(Timestamp::parse("iso").unwrap_err().contains("rfc3339, epoch or none"));
    }

    #[test]
    fn unknown_key_suggests_the_nearest_valid_one() {
        let e = parse_file(Path::new("b.toml"), "port = 1883\nmax_conections = 5\n").unwrap_err();
        assert!(e.contains("did you mean `max_connections`?"), "{e}");
        let e = parse_file(Path::new("b.toml"), "persistence_location = \"/x\"\n").unwrap_err();
        assert!(e.contains("did you mean `persistence_path`?"), "{e}");
        let e = parse_file(Path::new("b.toml"), "zzzzzzzzzzzz = 1\n").unwrap_err();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn mosquitto_syntax_is_named_with_the_toml_form() {
        let text = "# converted\nlistener 1883\nallow_anonymous true\n";
        let e = parse_file(Path::new("b.toml"), text).unwrap_err();
        assert!(e.starts_with("b.toml:2: `listener 1883` is Mosquitto's"), "{e}");
        assert!(e.contains("TOML") && e.contains("port = 1883"), "{e}");
        let e = parse_file(Path::new("b.toml"), "listener 1884 0.0.0.0\n").unwrap_err();
        assert!(e.contains("[[listener]]") && e.contains("bind = \"0.0.0.0\""), "{e}");
        let e = parse_file(Path::new("b.toml"), "persistence_location /var/lib\n").unwrap_err();
        assert!(e.contains("persistence_path = \"/var/lib\""), "{e}");
    }

    #[test]
    fn address_in_use_suggests_another_port() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let m = bind_error(&e, &[addr.into()]);
        assert!(m.contains(&addr.to_string()) && m.contains("--port"), "{m}");
    }

    #[test]
    fn sys_interval_zero_turns_sys_off() {
        let text = "sys_interval = 0\n";
        let fc = parse_file(Path::new("b.toml"), text).unwrap();
        let at = |k: &str| locate(Path::new("b.toml"), text, k);
        let s = build(fc, None, None, None, false, false, None, &at).unwrap();
        assert_eq!(s.config.broker.sys_interval, None);
    }

    #[test]
    fn flags_override() {
        let s = settings(&args("--bind ::1 -p 0 --no-persistence")).unwrap().unwrap();
        assert_eq!(addrs(&s), ["[::1]:0".parse().unwrap()]);
        assert_eq!(s.persistence, None);
    }

    /// The settings from a config file's `text`, or the error.
    fn from_file(text: &str) -> Result<Settings, String> {
        let fc = parse_file(Path::new("b.toml"), text)?;
        let at = |k: &str| locate(Path::new("b.toml"), text, k);
        build(fc, None, None, None, true, false, None, &at)
    }

    #[test]
    fn listener_keys_are_checked_and_name_the_listener() {
        let e = from_file("[[listener]]\nport = 8883\nkind = \"wss\"\n").err().unwrap();
        assert!(e.contains("port 8883") && e.contains("\"wss\" needs certfile"), "{e}");
        let e =
            from_file("[[listener]]\nport = 1\nkind = \"ws\"\nws_path = \"mqtt\"\n").err().unwrap();
        assert!(e.contains("starts with /"), "{e}");
        let e = from_file("[[listener]]\nport = 1\nws_path = \"/mqtt\"\n").err().unwrap();
        assert!(e.contains("ws_path is for"), "{e}");
        let s = from_file("[[listener]]\nport = 1\nkind = \"ws\"\n").unwrap();
        assert_eq!(s.config.listeners[0].ws_path.as_deref(), Some("/mqtt"));
        assert_eq!(s.config.listeners[0].kind(), "mqtt over websocket");
        let e = from_file("[[listener]]\nport = 1\nkind = \"quic\"\n").err().unwrap();
        assert!(e.contains("unknown kind \"quic\""), "{e}");
        let e = from_file("[[listener]]\nport = 1\ncertfile = \"c.pem\"\n").err().unwrap();
        assert!(e.contains("certfile") && e.contains("kind = \"mqtts\""), "{e}");
        let e = from_file("[[listener]]\nport = 1\nkind = \"mqtts\"\n").err().unwrap();
        assert!(e.contains("kind = \"mqtts\" needs certfile and keyfile"), "{e}");
        let text = "[[listener]]\nport = 1\nkind = \"mqtts\"\ncertfile = \"/nonexistent/c.pem\"\n\
                    keyfile = \"/nonexistent/k.pem\"\n";
        let e = from_file(text).err().unwrap();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
        let text = "[[listener]]\nport = 1\nkind = \"mqtts\"\ncertfile = \"c\"\nkeyfile = \"k\"\n\
                    tls_version = \"1.0\"\n";
        let e = from_file(text).err().unwrap();
        assert!(e.contains("unknown TLS version \"1.0\""), "{e}");
        let text = "[[listener]]\nport = 1\nkind = \"mqtts\"\ncertfile = \"c\"\nkeyfile = \"k\"\n\
                    use_identity_as_username = true\n";
        let e = from_file(text).err().unwrap();
        assert!(e.contains("needs require_certificate"), "{e}");
        let s = from_file("[[listener]]\nport = 1\nproxy_protocol = true\n").unwrap();
        assert!(s.config.listeners[0].proxy_protocol);
        // Plain listeners as before, IPv4 and IPv6.
        let s = from_file("[[listener]]\nport = 1884\n[[listener]]\nport = 1885\nbind = \"::1\"\n")
            .unwrap();
        assert_eq!(addrs(&s), ["127.0.0.1:1884".parse().unwrap(), "[::1]:1885".parse().unwrap()]);
    }

    #[test]
    fn non_loopback_without_auth_is_refused() {
        let e = settings(&args("--bind 0.0.0.0")).err().unwrap();
        assert!(e.contains("--allow-anonymous"), "{e}");
        assert!(settings(&args("--bind 0.0.0.0 --allow-anonymous")).is_ok());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse_file(Path::new("b.toml"), "port = 1883\nmax_conections = 5\n").unwrap_err();
        assert!(e.starts_with("b.toml:2: key `max_conections`"), "{e}");
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let e = parse_file(Path::new("b.toml"), "port = 1883\n\nmax_qos = \"two\"\n").unwrap_err();
        assert!(e.starts_with("b.toml:3: key `max_qos`"), "{e}");
        let text = "max_qos = 3\n";
        let fc = parse_file(Path::new("b.toml"), text).unwrap();
        let at = |k: &str| locate(Path::new("b.toml"), text, k);
        let e = build(fc, None, None, None, false, false, None, &at).err().unwrap();
        assert!(e.starts_with("b.toml:1: key `max_qos`: 3 is not a QoS"), "{e}");
    }

    #[test]
    fn shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
        let s = settings(&["-c".into(), path.display().to_string()]).unwrap().unwrap();
        assert_eq!(s.config.broker.max_connections, 10_000);
        assert_eq!(s.config.broker.session_expiry_interval, 3600);
    }

    #[test]
    fn outgoing_aliases_shared_policy_and_ack_delay_are_read() {
        let text = "outgoing_topic_aliases = true\nshared_subscription_policy = \"sticky\"\n\
                    max_ack_delay_ms = 250\n";
        let fc = parse_file(Path::new("b.toml"), text).unwrap();
        let at = |k: &str| locate(Path::new("b.toml"), text, k);
        let s = build(fc, None, None, None, false, false, None, &at).unwrap();
        assert!(s.config.broker.outgoing_topic_aliases);
        assert_eq!(s.config.broker.shared_policy, SharedPolicy::Sticky);
        assert_eq!(s.config.broker.max_ack_delay, Duration::from_millis(250));
        let text = "shared_subscription_policy = \"fair\"\n";
        let fc = parse_file(Path::new("b.toml"), text).unwrap();
        let at = |k: &str| locate(Path::new("b.toml"), text, k);
        let e = build(fc, None, None, None, false, false, None, &at).err().unwrap();
        assert!(e.starts_with("b.toml:1: key `shared_subscription_policy`: unknown"), "{e}");
    }
}
