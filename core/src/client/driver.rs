//! The bookkeeping every client runtime needs around a [`Client`], written once for all
//! runtimes.
//!
//! A runtime's client is a handle that applications call from many tasks or threads, and one
//! run loop that owns the transport. [`Driver`] is the state they share: the core client, the
//! bytes taken from it and not yet written, and the callers waiting for an answer. `W` is the
//! runtime's way to hand an answer back to a caller (a oneshot sender, a channel sender, a
//! slot); the driver keeps it and gives it back inside [`Command::Answer`] when the answer is
//! known. Still no I/O and no clock here: the runtime passes `now` in and moves the bytes.
//!
//! # Driving it
//!
//! 1. [`connect`](Driver::connect) once the transport is up, then write what
//!    [`poll_transmit`](Driver::poll_transmit) hands out and report it with
//!    [`handle_written`](Driver::handle_written).
//! 2. Feed it: [`handle_bytes`](Driver::handle_bytes) with what was read,
//!    [`handle_closed`](Driver::handle_closed) when the transport ends (end of stream or an
//!    error), [`handle_timeout`](Driver::handle_timeout) when
//!    [`poll_timeout`](Driver::poll_timeout) has passed. Application calls
//!    ([`publish`](Driver::publish), [`subscribe`](Driver::subscribe),
//!    [`unsubscribe`](Driver::unsubscribe), [`disconnect`](Driver::disconnect)) come from any
//!    caller at any time.
//! 3. After each of those: write [`poll_transmit`](Driver::poll_transmit), report every
//!    [`Event`] from [`poll_event`](Driver::poll_event) (a connection, a refusal, a message, a
//!    lost connection), then carry out every [`Command`] from
//!    [`poll_command`](Driver::poll_command) (answer a waiter, close the transport after
//!    writing what is left, or dial again); repeat until both are empty.
//! 4. Once [`is_stopped`](Driver::is_stopped), the run loop ends: every waiter has had its
//!    answer.
//!
//! # When a call is done
//!
//! A QoS 1 or 2 publish is done when the server acknowledges it (PUBACK, PUBCOMP, or a PUBREC
//! with an error), a SUBSCRIBE or UNSUBSCRIBE when it answers. A QoS 0 publish and a
//! DISCONNECT have no answer: they are done once their bytes are written. The driver counts
//! every byte taken from the core (`queued`) and every byte the runtime reports written
//! (`written`); such a call waits for `written` to pass the offset its bytes end at. A QoS 0
//! publish made while offline (or behind a full in-flight window) waits in the core's queue
//! first, and gets its offset when the core sends it ([`Client::qos0_sent`]).
//!
//! Bytes not yet written when the transport ends are lost with it: QoS 0 publishes among them
//! fail, and so do SUBSCRIBE and UNSUBSCRIBE requests waiting for an answer, which cannot
//! come on a new connection. QoS 1 and 2 publishes stay: the core sends them again after the
//! reconnect.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::time::Duration;

use super::{
    Client, ClientConfig, ClientError, Command as CoreCommand, DisconnectReason, Event,
    ReconnectOptions,
};
use crate::codec::{
    Connect, Disconnect, MqttStr, ProtocolVersion, Publish, ReasonCode, Subscription,
};
use crate::time::Instant;
use crate::topic::TopicFilter;

/// MQTT 5 enhanced authentication, the client's side: answers the server's challenges in the
/// AUTH exchange that the Authentication Method of the CONNECT (or a re-authentication)
/// started (section 4.12).
pub trait AuthHandler: Send + Sync {
    /// The server sent AUTH, Continue authentication, for `method` with `data`. Returns the
    /// data of the answer (sent as AUTH, Continue authentication), or `None` to give up: the
    /// client then disconnects and does not reconnect.
    ///
    /// It runs on the runtime's driver while it holds the client's state: it must answer
    /// quickly and must not call the client.
    fn challenge(&self, method: &str, data: Option<&[u8]>) -> Option<Bytes>;
}

/// Where and how a runtime's client connects.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The CONNECT to send: protocol version, client id, clean start, keep-alive, credentials,
    /// will, MQTT 5 properties.
    pub connect: Connect,
    /// Timers, reconnect policy and queue limits of the client state machine.
    pub config: ClientConfig,
    /// How long calls wait for the server's answer.
    pub timeout: Duration,
    /// Most received messages held for the application (`next_message`, `recv_timeout`, and
    /// separately for handlers that run on a thread of their own); further messages are
    /// dropped with a warning rather than grow memory without bound.
    pub message_buffer: usize,
    /// Answers the server's AUTH challenges when `connect` has an Authentication Method
    /// (MQTT 5 enhanced authentication).
    pub auth: Option<Arc<dyn AuthHandler>>,
    /// TLS to the server (`mqtts://`, `wss://`); `None` for none.
    pub tls: Option<TlsOptions>,
    /// MQTT over WebSocket at this path (`ws://`, `wss://`); `None` for MQTT over the stream.
    pub ws_path: Option<String>,
}

/// How a client speaks TLS to the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM CA certificates to trust; with neither this nor `ca_path`, the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A directory of PEM CA certificates to trust (each file in it).
    pub ca_path: Option<std::path::PathBuf>,
    /// The client's PEM certificate chain, for servers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's PEM private key.
    pub key_file: Option<std::path::PathBuf>,
    /// The name the server's certificate must have; the host when `None`.
    pub server_name: Option<String>,
    /// ALPN protocols to offer (for example `mqtt`); none when empty.
    pub alpn: Vec<String>,
    /// The lowest TLS version: `"1.2"` (the default) or `"1.3"`.
    pub min_version: Option<String>,
    /// Accepts any server certificate, whoever signed it and whatever its name: anyone between
    /// the client and the server can read and change everything. For tests only.
    pub danger_accept_invalid_certs: bool,
}

/// Why a URL names no MQTT server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// What a server URL says: `mqtt://`, `mqtts://`, `ws://` or `wss://`, optional
/// `user[:password]@`, the host (an IPv6 address in brackets), an optional port (1883, 8883,
/// 80 and 443 by default) and, for WebSocket, the path (default `/mqtt`); for `mqtt(s)://`, the
/// path is a topic, as in `mosquitto_pub -L`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerUrl {
    /// The host name or address (brackets taken off an IPv6 address).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether the scheme asks for TLS.
    pub tls: bool,
    /// The WebSocket path, for `ws://` and `wss://`.
    pub ws_path: Option<String>,
    /// The user name, percent-decoded.
    pub username: Option<String>,
    /// The password, percent-decoded.
    pub password: Option<String>,
    /// For `mqtt(s)://`: the path without its leading `/`, percent-decoded (a topic).
    pub topic: Option<String>,
    /// Whatever the scheme: the path without its leading `/`, percent-decoded, when it is not
    /// empty (`mosquitto_pub -L` reads it as the topic).
    pub path: Option<String>,
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex =
                s.get(i + 1..i + 3).ok_or_else(|| UrlError(format!("bad escape in {s:?}")))?;
            let b = u8::from_str_radix(hex, 16)
                .map_err(|_| UrlError(format!("bad escape %{hex} in {s:?}")))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError(format!("{s:?} is not UTF-8 once decoded")))
}

impl ServerUrl {
    /// Parses `url`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<ServerUrl, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            UrlError(format!("{url:?}: no scheme (mqtt://, mqtts://, ws://, wss://)"))
        })?;
        let (tls, ws, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (false, false, 1883),
            "mqtts" | "ssl" | "tls" => (true, false, 8883),
            "ws" => (false, true, 80),
            "wss" => (true, true, 443),
            other => {
                return Err(UrlError(format!(
                    "{url:?}: unknown scheme {other:?}; use mqtt, mqtts, ws or wss"
                )));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decode(user)?), Some(percent_decode(pass)?)),
                None => (Some(percent_decode(u)?), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError(format!("{url:?}: an IPv6 address without its ]")))?;
            match after.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None if after.is_empty() => (addr, None),
                None => return Err(UrlError(format!("{url:?}: junk after the IPv6 address"))),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError(format!("{url:?}: no host")));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| UrlError(format!("{url:?}: bad port {p:?}")))?,
            None => default_port,
        };
        let decoded = path.map(|p| percent_decode(&p[1..]));
        let (ws_path, topic, path_text) = if ws {
            let ws_path = path.filter(|p| *p != "/").unwrap_or("/mqtt").to_string();
            // A WebSocket path is taken as it is; decoding it is only for those who want it.
            (Some(ws_path), None, decoded.and_then(Result::ok))
        } else {
            let topic = decoded.transpose()?.filter(|t| !t.is_empty());
            (None, topic.clone(), topic)
        };
        let path = path_text.filter(|p| !p.is_empty());
        Ok(ServerUrl {
            host: host.to_string(),
            port,
            tls,
            ws_path,
            username,
            password,
            topic,
            path,
        })
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("connect", &self.connect)
            .field("config", &self.config)
            .field("timeout", &self.timeout)
            .field("message_buffer", &self.message_buffer)
            .field("auth", &self.auth.is_some())
            .field("tls", &self.tls)
            .field("ws_path", &self.ws_path)
            .finish()
    }
}

impl ConnectOptions {
    /// MQTT 5 to `host:port` with an empty client id (the server assigns one), clean start, and
    /// a 60 s keep-alive.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            connect: Connect::new(ProtocolVersion::V5, MqttStr::default()),
            config: ClientConfig::default(),
            timeout: Duration::from_secs(30),
            message_buffer: 10_000,
            auth: None,
            tls: None,
            ws_path: None,
        }
    }

    /// Options for the server `url` names (see [`ServerUrl`]): its host and port, TLS with the
    /// system's roots for `mqtts://` and `wss://`, WebSocket at its path for `ws://` and
    /// `wss://`, and its user name and password in the CONNECT.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        let u = ServerUrl::parse(url)?;
        let mut o = Self::new(u.host, u.port);
        o.tls = u.tls.then(TlsOptions::default);
        o.ws_path = u.ws_path;
        if let Some(user) = u.username {
            o.connect.username =
                Some(MqttStr::new(&user).map_err(|e| UrlError(format!("user name: {e}")))?);
        }
        if let Some(pass) = u.password {
            o.connect.password = Some(Bytes::from(pass.into_bytes()));
        }
        Ok(o)
    }
}

/// What a finished call gets: the server's reason codes (a QoS 1 or 2 publish: one; SUBSCRIBE:
/// one per filter; UNSUBSCRIBE: one per filter in MQTT 5, none in 3.1.1; a QoS 0 publish or a
/// DISCONNECT: Success once written), or why the connection ended before that.
pub type Answer = Result<Vec<ReasonCode>, DisconnectReason>;

/// What a finished publish reports from its [`Answer`]'s codes: the server's reason code, or
/// Success when there is none (QoS 0; MQTT 3.1.1, whose acknowledgements carry no code).
pub fn publish_reason(codes: &[ReasonCode]) -> ReasonCode {
    codes.first().copied().unwrap_or(ReasonCode::Success)
}

/// What a one-filter subscribe reports from its [`Answer`]'s codes: the granted QoS or the
/// server's refusal, or Unspecified error for a SUBACK without a code for it.
pub fn subscription_reason(codes: &[ReasonCode]) -> ReasonCode {
    codes.first().copied().unwrap_or(ReasonCode::UnspecifiedError)
}

/// Why the driver did not take a command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The client state machine refused it.
    Client(ClientError),
    /// The driver has stopped (the application disconnected, or the connection ended and no
    /// reconnect follows); this is why the last connection ended.
    Stopped(DisconnectReason),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(e) => write!(f, "{e}"),
            Self::Stopped(r) => write!(f, "the client has stopped: {r:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CommandError {}

impl From<ClientError> for CommandError {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

/// Why a runtime client's call failed: the error type the Tokio, smol and blocking clients
/// share (with the core's `std` feature).
#[cfg(feature = "std")]
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The connection could not be made or broke.
    Io(std::io::Error),
    /// The server refused the connection.
    Refused(ReasonCode),
    /// The client state machine refused the command.
    Client(ClientError),
    /// A topic name or filter is not valid.
    Topic(crate::topic::TopicError),
    /// The server did not answer in time.
    Timeout,
    /// The connection ended before the server answered, or the client has stopped: why.
    Disconnected(DisconnectReason),
}

#[cfg(feature = "std")]
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Refused(c) => write!(f, "connection refused: {c}"),
            Self::Client(e) => write!(f, "{e}"),
            Self::Topic(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("timed out waiting for the server"),
            Self::Disconnected(r) => write!(f, "disconnected: {r:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// A failed dial to `host:port`, said so that the user can act on it: which address refused,
/// and the likely reason (`connection refused by 127.0.0.1:1883 (is a broker running?)`), in
/// place of the bare `Connection refused (os error 111)`. The error kind is kept.
#[cfg(feature = "std")]
pub fn dial_error(e: std::io::Error, host: &str, port: u16) -> std::io::Error {
    use std::io::ErrorKind;
    let what = match e.kind() {
        ErrorKind::ConnectionRefused => {
            alloc::format!("connection refused by {host}:{port} (is a broker running?)")
        }
        ErrorKind::TimedOut => {
            alloc::format!("no answer from {host}:{port} (is the host reachable, the port open?)")
        }
        _ => alloc::format!("cannot connect to {host}:{port}: {e}"),
    };
    std::io::Error::new(e.kind(), what)
}

#[cfg(feature = "std")]
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(feature = "std")]
impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

#[cfg(feature = "std")]
impl From<crate::topic::TopicError> for Error {
    fn from(e: crate::topic::TopicError) -> Self {
        Self::Topic(e)
    }
}

#[cfg(feature = "std")]
impl From<CommandError> for Error {
    /// A stopped driver refuses commands with why the last connection ended.
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Client(e) => Self::Client(e),
            CommandError::Stopped(reason) => Self::Disconnected(reason),
        }
    }
}

/// What the runtime must do next: instructions. What happened (a connection, a refusal, a
/// message, a lost connection) is an [`Event`], from [`Driver::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<W> {
    /// A call is done: give `answer` to its waiter.
    Answer(W, Answer),
    /// Write what [`Driver::poll_transmit`] still holds (a DISCONNECT, say), close the
    /// transport, and then call [`Driver::handle_closed`].
    CloseTransport,
    /// Open a new transport to the same server, then call [`Driver::handle_reconnected`]
    /// (clearing any partial input of the old transport), or [`Driver::handle_dial_failed`].
    Reconnect,
}

/// Whether a waiter by packet id waits for a publish or for a SUBSCRIBE/UNSUBSCRIBE answer.
#[derive(Debug)]
struct Waiting<W> {
    waiter: W,
    request: bool,
}

/// A core [`Client`] and what its runtime tracks around it. See the [module
/// documentation](self).
pub struct Driver<W> {
    core: Client,
    /// Bytes taken from the core and not yet handed to the runtime.
    out: BytesMut,
    /// Every byte ever taken from the core.
    queued: u64,
    /// Every byte ever written, or lost with a transport.
    written: u64,
    /// Calls waiting for the server's answer, by packet id.
    waiters: BTreeMap<u16, Waiting<W>>,
    /// Calls waiting for `written` to reach an offset; offsets never decrease along the queue.
    flushes: VecDeque<(u64, W)>,
    /// QoS 0 publishes still in the core's queue: which QoS 0 publish each one is (1, 2, ...).
    unsent: VecDeque<(u64, W)>,
    /// QoS 0 publishes the core took.
    qos0_made: u64,
    commands: VecDeque<Command<W>>,
    events: VecDeque<Event>,
    /// `connect` was called.
    started: bool,
    /// A transport is open (between `connect`/`handle_reconnected` and `handle_closed`).
    transport: bool,
    /// [`Command::Reconnect`] was handed out; `handle_reconnected` or `handle_dial_failed` has not come yet.
    redialing: bool,
    /// Why the last connection ended.
    last_reason: Option<DisconnectReason>,
    /// Set once stopped: why.
    stopped: Option<DisconnectReason>,
    /// Answers the server's AUTH challenges.
    auth: Option<Arc<dyn AuthHandler>>,
    /// A challenge could not be answered: the disconnect that follows is not the application's.
    auth_abandoned: bool,
}

impl<W> fmt::Debug for Driver<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("core", &self.core)
            .field("queued", &self.queued)
            .field("written", &self.written)
            .field("waiters", &self.waiters.len())
            .field("flushes", &self.flushes.len())
            .field("unsent", &self.unsent.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<W> Driver<W> {
    /// A driver around a new core client; nothing is sent before [`connect`](Self::connect).
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        Self {
            core: Client::new(config, now),
            out: BytesMut::new(),
            queued: 0,
            written: 0,
            waiters: BTreeMap::new(),
            flushes: VecDeque::new(),
            unsent: VecDeque::new(),
            qos0_made: 0,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            started: false,
            transport: false,
            redialing: false,
            last_reason: None,
            stopped: None,
            auth: None,
            auth_abandoned: false,
        }
    }

    /// Sets what answers the server's AUTH challenges (MQTT 5 enhanced authentication).
    /// Without one, a challenge ends the connection: nothing could answer it.
    pub fn set_auth_handler(&mut self, handler: Option<Arc<dyn AuthHandler>>) {
        self.auth = handler;
    }

    /// Starts a re-authentication of the live MQTT 5 connection with `data`; the handler
    /// answers the server's challenges, and the server's final AUTH (or DISCONNECT) ends it.
    pub fn reauthenticate(
        &mut self,
        now: Instant,
        data: Option<Bytes>,
    ) -> Result<(), CommandError> {
        self.check_running()?;
        self.core.reauthenticate(now, data)?;
        self.sync(now);
        Ok(())
    }

    /// The core client, for its getters.
    pub fn client(&self) -> &Client {
        &self.core
    }

    /// Whether the server accepted the connection and it is still up.
    pub fn is_connected(&self) -> bool {
        self.core.is_connected()
    }

    /// Whether the driver has stopped: every waiter has been answered and nothing more
    /// happens. The run loop ends.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Why the last connection ended, if one did.
    pub fn last_disconnect(&self) -> Option<&DisconnectReason> {
        self.last_reason.as_ref()
    }

    /// Replaces the reconnect policy; it applies from the next time the connection is lost.
    pub fn set_reconnect_options(&mut self, options: ReconnectOptions) {
        self.core.set_reconnect_options(options);
    }

    // ------------------------------------------------------------------ transport

    /// The transport is up: queue CONNECT with `options`.
    pub fn connect(&mut self, now: Instant, options: Connect) -> Result<(), CommandError> {
        self.check_running()?;
        self.core.connect(now, options)?;
        self.started = true;
        self.transport = true;
        self.sync(now);
        Ok(())
    }

    /// After [`Command::Reconnect`]: the new transport is up; CONNECT goes out again. When the
    /// driver stopped meanwhile, [`Command::CloseTransport`] asks for the new transport to be
    /// closed instead.
    pub fn handle_reconnected(&mut self, now: Instant) {
        self.redialing = false;
        if self.is_stopped() {
            self.commands.push_back(Command::CloseTransport);
            return;
        }
        self.transport = true;
        if self.core.reconnect(now).is_err() {
            self.transport = false;
            self.core.handle_closed(now);
        }
        self.sync(now);
    }

    /// After [`Command::Reconnect`]: no transport could be opened; the core schedules the next
    /// attempt.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        self.redialing = false;
        if self.is_stopped() {
            return;
        }
        self.core.handle_closed(now);
        self.sync(now);
    }

    /// Bytes read from the transport. Complete packets are taken from `buf`; a partial one
    /// stays for the next call.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        if self.is_stopped() || !self.transport {
            buf.clear();
            return;
        }
        self.core.handle_bytes(now, buf);
        self.sync(now);
    }

    /// The transport ended (end of stream, an error reading or writing, or closed after
    /// [`Command::CloseTransport`]). Output not yet written is dropped with it. A second call
    /// for the same transport does nothing.
    pub fn handle_closed(&mut self, now: Instant) {
        if self.is_stopped() || !self.transport {
            return;
        }
        self.transport = false;
        self.out.clear();
        self.core.handle_closed(now);
        // No AUTH can be answered without a transport.
        let _ = self.collect(now);
        // What was not written is gone; so are answers to requests sent on this transport.
        let reason = self.last_reason.clone().unwrap_or(DisconnectReason::TransportClosed);
        self.written = self.queued;
        while let Some((_, w)) = self.flushes.pop_front() {
            self.commands.push_back(Command::Answer(w, Err(reason.clone())));
        }
        let requests: Vec<u16> =
            self.waiters.iter().filter(|(_, w)| w.request).map(|(id, _)| *id).collect();
        for id in requests {
            if let Some(w) = self.waiters.remove(&id) {
                self.commands.push_back(Command::Answer(w.waiter, Err(reason.clone())));
            }
        }
        self.sync(now);
    }

    /// Runs the core's timers if [`poll_timeout`](Self::poll_timeout) has passed (calling
    /// earlier does nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_stopped() {
            return;
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
            self.sync(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if
    /// ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_stopped() { None } else { self.core.poll_timeout() }
    }

    /// How long from `now` until [`handle_timeout`](Self::handle_timeout) is
    /// due (zero when it is), if ever: what a runtime's timer sleeps.
    #[must_use]
    pub fn timeout_in(&self, now: Instant) -> Option<Duration> {
        self.poll_timeout().map(|t| t.saturating_duration_since(now))
    }

    /// Everything to write to the transport now, in order, if anything. Report what was
    /// written with [`handle_written`](Self::handle_written).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.pull();
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// `n` bytes of what [`poll_transmit`](Self::poll_transmit) handed out were written:
    /// calls whose bytes are now all on the wire are done.
    pub fn handle_written(&mut self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.written = self.written.saturating_add(n).min(self.queued);
        self.complete_flushes();
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command<W>> {
        self.commands.pop_front()
    }

    /// The next thing that happened: [`Event::Connected`], [`Event::ConnectionRefused`],
    /// [`Event::Message`] and [`Event::Disconnected`] (`Requested` when the application
    /// disconnected, anything else when the connection was lost). Acknowledgements come as
    /// [`Command::Answer`]s instead.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Stops: every waiting call fails with why the last connection ended (or `Requested`),
    /// and later commands are refused. The runtime closes its transport and ends its loop.
    pub fn stop(&mut self) {
        let reason = self.last_reason.clone().unwrap_or(DisconnectReason::Requested);
        self.stop_with(reason);
    }

    fn stop_with(&mut self, reason: DisconnectReason) {
        if self.is_stopped() {
            return;
        }
        self.stopped = Some(reason.clone());
        let waiters = core::mem::take(&mut self.waiters).into_values().map(|w| w.waiter);
        let flushes = core::mem::take(&mut self.flushes).into_iter().map(|(_, w)| w);
        let unsent = core::mem::take(&mut self.unsent).into_iter().map(|(_, w)| w);
        let all: Vec<W> = waiters.chain(flushes).chain(unsent).collect();
        for w in all {
            self.commands.push_back(Command::Answer(w, Err(reason.clone())));
        }
    }

    // ------------------------------------------------------------------ commands

    /// Publishes; `waiter` gets the answer when the publish is done (see the [module
    /// documentation](self)).
    pub fn publish(
        &mut self,
        now: Instant,
        publish: Publish,
        waiter: W,
    ) -> Result<(), CommandError> {
        self.check_running()?;
        match self.core.publish(now, publish)? {
            Some(id) => {
                self.waiters.insert(id.get(), Waiting { waiter, request: false });
            }
            None => {
                self.qos0_made += 1;
                self.unsent.push_back((self.qos0_made, waiter));
            }
        }
        self.sync(now);
        Ok(())
    }

    /// Subscribes to `subscriptions` in one SUBSCRIBE; `waiter` gets one reason code per
    /// subscription.
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscriptions: &[Subscription],
        waiter: W,
    ) -> Result<(), CommandError> {
        self.subscribe_with(
            now,
            subscriptions,
            crate::codec::SubscribeProperties::default(),
            waiter,
        )
    }

    /// [`subscribe`](Self::subscribe) with SUBSCRIBE properties (MQTT 5: a Subscription
    /// Identifier, User Properties).
    pub fn subscribe_with(
        &mut self,
        now: Instant,
        subscriptions: &[Subscription],
        properties: crate::codec::SubscribeProperties,
        waiter: W,
    ) -> Result<(), CommandError> {
        self.check_running()?;
        let id = self.core.subscribe_with(now, subscriptions, properties)?;
        self.waiters.insert(id.get(), Waiting { waiter, request: true });
        self.sync(now);
        Ok(())
    }

    /// Unsubscribes from `filters` in one UNSUBSCRIBE; `waiter` gets the server's reason codes.
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: &[TopicFilter],
        waiter: W,
    ) -> Result<(), CommandError> {
        self.unsubscribe_with(now, filters, crate::codec::UnsubscribeProperties::default(), waiter)
    }

    /// [`unsubscribe`](Self::unsubscribe) with UNSUBSCRIBE properties (MQTT 5).
    pub fn unsubscribe_with(
        &mut self,
        now: Instant,
        filters: &[TopicFilter],
        properties: crate::codec::UnsubscribeProperties,
        waiter: W,
    ) -> Result<(), CommandError> {
        self.check_running()?;
        let id = self.core.unsubscribe_with(now, filters, properties)?;
        self.waiters.insert(id.get(), Waiting { waiter, request: true });
        self.sync(now);
        Ok(())
    }

    /// Sends DISCONNECT (with `disconnect`'s reason code and properties in MQTT 5);
    /// [`Command::CloseTransport`] follows, and `waiter` is answered once the DISCONNECT is
    /// written. The driver stops when the transport is closed; calls still waiting then fail.
    pub fn disconnect(
        &mut self,
        now: Instant,
        disconnect: Disconnect,
        waiter: W,
    ) -> Result<(), CommandError> {
        self.check_running()?;
        self.core.disconnect(now, disconnect);
        self.pull();
        self.flushes.push_back((self.queued, waiter));
        if self.redialing {
            // The core has no transport to close; the one being dialled is closed when it
            // comes (see `reconnected`).
            self.last_reason = Some(DisconnectReason::Requested);
            self.complete_flushes();
            self.stop();
        }
        self.sync(now);
        Ok(())
    }

    // ------------------------------------------------------------------ internals

    fn check_running(&self) -> Result<(), CommandError> {
        match &self.stopped {
            Some(reason) => Err(CommandError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Moves what the core has to send into `out`, and gives QoS 0 publishes that left the
    /// core's queue their offset.
    fn pull(&mut self) {
        while let Some(b) = self.core.poll_transmit(usize::MAX) {
            self.queued += u64::try_from(b.len()).unwrap_or(u64::MAX);
            if self.out.is_empty() {
                self.out = BytesMut::from(b);
            } else {
                self.out.extend_from_slice(&b);
            }
        }
        let sent = self.core.qos0_sent();
        while self.unsent.front().is_some_and(|(n, _)| *n <= sent) {
            if let Some((_, w)) = self.unsent.pop_front() {
                self.flushes.push_back((self.queued, w));
            }
        }
    }

    fn complete_flushes(&mut self) {
        while self.flushes.front().is_some_and(|(target, _)| *target <= self.written) {
            if let Some((_, w)) = self.flushes.pop_front() {
                self.commands.push_back(Command::Answer(w, Ok(vec![ReasonCode::Success])));
            }
        }
    }

    /// Turns the core's events and commands into the driver's; true if it gave the core a command (an AUTH
    /// answer) whose output must be pulled.
    fn collect(&mut self, now: Instant) -> bool {
        let mut commanded = false;
        while let Some(event) = self.core.poll_event() {
            match event {
                event @ (Event::Connected { .. }
                | Event::ConnectionRefused { .. }
                | Event::Message(_)) => self.events.push_back(event),
                Event::Published { packet_id, reason_code, .. } => {
                    self.answer(packet_id.get(), Ok(vec![reason_code]));
                }
                Event::Subscribed { packet_id, reason_codes, restored: false }
                | Event::Unsubscribed { packet_id, reason_codes } => {
                    self.answer(packet_id.get(), Ok(reason_codes));
                }
                Event::Disconnected(reason) => {
                    // The client disconnected itself because nothing could answer a challenge:
                    // not what the application asked for.
                    let reason = match reason {
                        DisconnectReason::Requested if self.auth_abandoned => {
                            DisconnectReason::AuthenticationAbandoned
                        }
                        other => other,
                    };
                    self.last_reason = Some(reason.clone());
                    self.events.push_back(Event::Disconnected(reason));
                }
                Event::Auth { reason_code: ReasonCode::ContinueAuthentication, properties } => {
                    let method =
                        properties.authentication_method.as_ref().map_or("", |m| m.as_str());
                    let data = properties.authentication_data.as_deref();
                    let answer = self.auth.as_ref().and_then(|h| h.challenge(method, data));
                    // Nothing can answer: give up rather than wait for the CONNACK timeout.
                    let answered =
                        answer.is_some_and(|data| self.core.authenticate(now, Some(data)).is_ok());
                    if !answered {
                        self.auth_abandoned = true;
                        self.core.disconnect(now, Disconnect::new(ReasonCode::UnspecifiedError));
                    }
                    commanded = true;
                }
                // The client's own restoring SUBSCRIBEs have no caller; a re-authentication's
                // final AUTH (Success) needs no answer.
                _ => {}
            }
        }
        while let Some(command) = self.core.poll_command() {
            match command {
                CoreCommand::CloseTransport => self.commands.push_back(Command::CloseTransport),
                CoreCommand::Reconnect => {
                    self.redialing = true;
                    self.commands.push_back(Command::Reconnect);
                }
            }
        }
        commanded
    }

    fn answer(&mut self, id: u16, answer: Answer) {
        if let Some(w) = self.waiters.remove(&id) {
            self.commands.push_back(Command::Answer(w.waiter, answer));
        }
    }

    /// After every input: output, finished calls, events, and whether anything can still
    /// happen.
    fn sync(&mut self, now: Instant) {
        loop {
            self.pull();
            self.complete_flushes();
            // Answering an AUTH challenge gives the core more to send.
            if !self.collect(now) {
                break;
            }
        }
        // Nothing left to wait for: no transport, none being dialled, no timer (the core does
        // not reconnect: the application disconnected, reconnecting is off, or the server's
        // refusal is final).
        let idle = self.started
            && !self.transport
            && !self.redialing
            && !self.core.is_connected()
            && self.core.poll_timeout().is_none();
        if idle && !self.is_stopped() {
            let reason = self.last_reason.clone().unwrap_or(DisconnectReason::TransportClosed);
            self.stop_with(reason);
        }
    }
}
