//! Blocking std-thread adapter for ternmq: [`SyncClient`], an MQTT client for programs without
//! an async runtime.
//!
//! The client drives the sans-IO [`ternmq_core::client::Client`] from one background I/O thread
//! on a plain `std::net::TcpStream`. Calls block until the server has answered (CONNACK, PUBACK or
//! PUBCOMP, SUBACK, UNSUBACK), with a timeout. Message handlers run on a dispatcher thread of
//! their own, so a handler may publish and wait for the acknowledgement while the I/O thread
//! goes on reading.
//!
//! ```no_run
//! use ternmq_std::{ConnectOptions, SyncClient};
//! use ternmq_core::QoS;
//! use std::time::Duration;
//!
//! let client = SyncClient::connect(ConnectOptions::new("127.0.0.1", 1883))?;
//! client.subscribe("topic/#", QoS::AtLeastOnce)?;
//! client.on_message(|msg| println!("Received: {:?}", msg.payload));
//! client.publish("topic", "data", QoS::AtLeastOnce)?;
//! std::thread::sleep(Duration::from_secs(1));
//! client.disconnect()?;
//! # Ok::<(), ternmq_std::Error>(())
//! ```
//!
//! [`Server`] runs the MQTT broker on std threads; see the [`server`] module.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::client::{Client, ClientConfig, ClientError, DisconnectReason, Event};
use ternmq_core::codec::{
    Connect, Disconnect, MqttStr, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscription,
};
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicError, TopicFilter, TopicName};

pub mod server;

pub use server::{BlockingAuthenticator, Server, ServerConfig, ShutdownHandle};
pub use ternmq_core as core;
pub use ternmq_core::client::ReconnectOptions;
pub use ternmq_store::{Durability, StoreConfig};

/// Where and how to connect.
#[derive(Clone, Debug)]
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
    /// How long blocking calls wait for the server's answer.
    pub timeout: Duration,
    /// Most messages held for [`SyncClient::recv_timeout`] (and, separately, for the handlers);
    /// further messages are dropped with a warning rather than grow memory without bound.
    pub message_buffer: usize,
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
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be made or broke.
    Io(io::Error),
    /// The server refused the connection.
    Refused(ReasonCode),
    /// The client state machine refused the command.
    Client(ClientError),
    /// A topic name or filter is not valid.
    Topic(TopicError),
    /// The server did not answer in time.
    Timeout,
    /// The connection ended before the server answered.
    Disconnected(DisconnectReason),
}

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

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}
impl From<TopicError> for Error {
    fn from(e: TopicError) -> Self {
        Self::Topic(e)
    }
}

type Handler = Box<dyn FnMut(&Publish) + Send>;

/// What the I/O thread and the callers share, under one lock.
struct State {
    client: Client,
    /// The write side of the current connection.
    writer: Option<TcpStream>,
    /// Answers to blocking calls, by packet identifier.
    done: BTreeMap<u16, Result<Vec<ReasonCode>, Error>>,
    connected: Option<Result<bool, Error>>,
    /// The last reason the connection ended.
    disconnected: Option<DisconnectReason>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    epoch: StdInstant,
    handlers: Arc<Mutex<Vec<Handler>>>,
    messages: Mutex<Receiver<Publish>>,
    host: String,
    port: u16,
    timeout: Duration,
}

impl Shared {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a handler panicked while the state was consistent (handlers run
        // without the lock); carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes everything the state machine has to send.
fn flush(state: &mut State) {
    while let Some(bytes) = state.client.poll_transmit(64 * 1024) {
        if let Some(w) = state.writer.as_mut()
            && w.write_all(&bytes).is_err()
        {
            state.writer = None;
        }
    }
}

/// A blocking MQTT client; cheap to clone, usable from many threads.
#[derive(Clone)]
pub struct SyncClient {
    shared: Arc<Shared>,
    io: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncClient").field("host", &self.shared.host).finish()
    }
}

impl SyncClient {
    /// Connects and waits for the server to accept.
    pub fn connect(options: ConnectOptions) -> Result<SyncClient, Error> {
        let stream = TcpStream::connect((options.host.as_str(), options.port))?;
        stream.set_nodelay(true)?;
        let (tx, rx) = sync_channel(options.message_buffer);
        let (dispatch_tx, dispatch_rx) = sync_channel::<Publish>(options.message_buffer);
        let handlers: Arc<Mutex<Vec<Handler>>> = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                client: Client::new(options.config.clone(), Instant::ZERO),
                writer: Some(stream.try_clone()?),
                done: BTreeMap::new(),
                connected: None,
                disconnected: None,
                stopping: false,
            }),
            changed: Condvar::new(),
            epoch: StdInstant::now(),
            handlers: Arc::clone(&handlers),
            messages: Mutex::new(rx),
            host: options.host.clone(),
            port: options.port,
            timeout: options.timeout,
        });
        {
            let mut st = shared.lock();
            let now = shared.now();
            st.client.connect(now, options.connect)?;
            flush(&mut st);
        }
        std::thread::Builder::new().name("ternmq-dispatch".into()).spawn(move || {
            // Ends when the I/O thread ends and drops its sender.
            for p in dispatch_rx {
                for h in handlers.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
                    h(&p);
                }
            }
        })?;
        let io_shared = Arc::clone(&shared);
        let sinks = Sinks { recv: tx, dispatch: dispatch_tx };
        let handle = std::thread::Builder::new()
            .name("ternmq-io".into())
            .spawn(move || io_loop(&io_shared, Some(stream), &sinks))?;
        let client = SyncClient { shared, io: Arc::new(Mutex::new(Some(handle))) };
        let deadline = StdInstant::now() + options.timeout;
        let mut st = client.shared.lock();
        loop {
            if let Some(result) = st.connected.take() {
                drop(st);
                return match result {
                    Ok(_) => Ok(client),
                    Err(e) => {
                        client.stop();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                drop(st);
                client.stop();
                return Err(Error::Timeout);
            }
            st = client.shared.changed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Publishes and waits until it is done: written for QoS 0, PUBACK for QoS 1, PUBCOMP for
    /// QoS 2. Returns the server's reason code (always Success in 3.1.1).
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<ReasonCode, Error> {
        let mut p = Publish::new(TopicName::new(topic)?, payload);
        p.qos = qos;
        self.publish_with(p)
    }

    /// [`publish`](Self::publish) with every option: retain, MQTT 5 properties, topic alias.
    pub fn publish_with(&self, publish: Publish) -> Result<ReasonCode, Error> {
        let id = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.client.publish(now, publish)?;
            flush(&mut st);
            id
        };
        match id {
            None => Ok(ReasonCode::Success),
            Some(id) => Ok(self.wait(id)?.first().copied().unwrap_or(ReasonCode::Success)),
        }
    }

    /// Subscribes to `filter` and returns the server's answer: the granted QoS, or an error code.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let sub = Subscription::new(TopicFilter::new(filter)?, qos);
        let id = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.client.subscribe(now, &[sub])?;
            flush(&mut st);
            id
        };
        Ok(self.wait(id)?.first().copied().unwrap_or(ReasonCode::UnspecifiedError))
    }

    /// Unsubscribes from `filter`; returns the server's reason codes (empty in 3.1.1).
    pub fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        let f = TopicFilter::new(filter)?;
        let id = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.client.unsubscribe(now, &[f])?;
            flush(&mut st);
            id
        };
        self.wait(id)
    }

    /// Calls `handler` for every message, in order, on the dispatcher thread: the handler may
    /// publish (and wait for the acknowledgement). Messages are also available from
    /// [`recv_timeout`](Self::recv_timeout).
    pub fn on_message(&self, handler: impl FnMut(&Publish) + Send + 'static) {
        self.shared.handlers.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(handler));
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Publish> {
        self.shared.messages.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(timeout).ok()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().client.is_connected()
    }

    /// Replaces the automatic reconnect policy; it applies from the next time the connection is
    /// lost.
    pub fn set_reconnect_options(&self, options: ReconnectOptions) {
        self.shared.lock().client.set_reconnect_options(options);
    }

    /// Sends DISCONNECT, closes the connection and stops the I/O thread.
    pub fn disconnect(&self) -> Result<(), Error> {
        {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            st.client.disconnect(now, Disconnect::default());
            flush(&mut st);
        }
        self.stop();
        Ok(())
    }

    fn stop(&self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            if let Some(w) = st.writer.take() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        }
        self.shared.changed.notify_all();
        let handle = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Waits for the answer to the request with packet id `id`.
    fn wait(&self, id: PacketId) -> Result<Vec<ReasonCode>, Error> {
        let deadline = StdInstant::now() + self.shared.timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(result) = st.done.remove(&id.get()) {
                return result;
            }
            if st.stopping {
                let reason = st.disconnected.clone().unwrap_or(DisconnectReason::Requested);
                return Err(Error::Disconnected(reason));
            }
            let left = deadline.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            st = self.shared.changed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Where received messages go: the `recv_timeout` queue and the handlers' dispatcher.
struct Sinks {
    recv: SyncSender<Publish>,
    dispatch: SyncSender<Publish>,
}

impl Sinks {
    fn deliver(&self, p: Publish, handlers: bool) {
        if handlers && let Err(TrySendError::Full(p)) = self.dispatch.try_send(p.clone()) {
            log::warn!("message handlers are behind; dropped a message on {}", p.topic);
        }
        if let Err(TrySendError::Full(p)) = self.recv.try_send(p) {
            log::warn!("recv_timeout queue is full; dropped a message on {}", p.topic);
        }
    }
}

/// The I/O thread: read, feed the state machine, run its timers, act on its events.
fn io_loop(shared: &Shared, mut reader: Option<TcpStream>, sinks: &Sinks) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let wait = {
            let st = shared.lock();
            if st.stopping {
                return;
            }
            let now = shared.now();
            match st.client.poll_timeout() {
                Some(t) => Duration::from_nanos(
                    u64::try_from(t.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX),
                ),
                None => Duration::from_millis(100),
            }
            .clamp(Duration::from_millis(1), Duration::from_millis(100))
        };
        let mut input = None;
        let mut closed = false;
        match reader.as_mut() {
            Some(r) => {
                let _ = r.set_read_timeout(Some(wait));
                match r.read(&mut buf) {
                    Ok(0) => closed = true,
                    Ok(n) => input = Some(BytesMut::from(&buf[..n])),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => closed = true,
                }
            }
            None => std::thread::sleep(wait),
        }
        let mut delivered = Vec::new();
        let mut redial = false;
        {
            let mut st = shared.lock();
            if st.stopping {
                return;
            }
            let now = shared.now();
            if let Some(mut bytes) = input {
                st.client.handle_bytes(now, &mut bytes);
            }
            if closed {
                reader = None;
                st.writer = None;
                st.client.handle_closed(now);
            }
            if st.client.poll_timeout().is_some_and(|t| t <= now) {
                st.client.handle_timeout(now);
            }
            flush(&mut st);
            while let Some(ev) = st.client.poll_event() {
                match ev {
                    Event::Connected { session_present, .. } => {
                        st.connected = Some(Ok(session_present));
                    }
                    Event::ConnectionRefused { reason_code, .. } => {
                        st.connected = Some(Err(Error::Refused(reason_code)));
                    }
                    Event::Message(p) => delivered.push(p),
                    Event::Published { packet_id, reason_code, .. } => {
                        st.done.insert(packet_id.get(), Ok(vec![reason_code]));
                    }
                    Event::Subscribed { packet_id, reason_codes, restored: false } => {
                        st.done.insert(packet_id.get(), Ok(reason_codes));
                    }
                    Event::Unsubscribed { packet_id, reason_codes } => {
                        st.done.insert(packet_id.get(), Ok(reason_codes));
                    }
                    Event::Disconnected(reason) => st.disconnected = Some(reason),
                    Event::CloseTransport => {
                        if let Some(w) = st.writer.take() {
                            let _ = w.shutdown(std::net::Shutdown::Both);
                        }
                        reader = None;
                        st.client.handle_closed(now);
                    }
                    Event::Reconnect => redial = true,
                    _ => {}
                }
            }
        }
        shared.changed.notify_all();
        if redial {
            // Dial without the lock: connecting may take a while.
            let result = TcpStream::connect((shared.host.as_str(), shared.port));
            let mut st = shared.lock();
            let now = shared.now();
            match result.and_then(|s| s.try_clone().map(|w| (s, w))) {
                Ok((r, w)) => {
                    let _ = r.set_nodelay(true);
                    st.writer = Some(w);
                    reader = Some(r);
                    if st.client.reconnect(now).is_err() {
                        st.client.handle_closed(now);
                    }
                    flush(&mut st);
                }
                Err(_) => st.client.handle_closed(now),
            }
        }
        if !delivered.is_empty() {
            let handlers = !shared.handlers.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            for p in delivered {
                sinks.deliver(p, handlers);
            }
        }
    }
}
