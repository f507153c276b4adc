//! Tokio adapter for ternmq: [`Client`], an async MQTT client.
//!
//! A driver task owns the TCP connection and runs the sans-IO [`ternmq_core::client::Client`]:
//! it reads, writes, sleeps until the core's next deadline and acts on its events. The
//! [`Client`] handle is cheap to clone and usable from many tasks; each call locks the core
//! briefly, queues its packet, wakes the driver and awaits the answer.
//!
//! ```no_run
//! use ternmq_tokio::{Client, ConnectOptions};
//! use ternmq_core::QoS;
//!
//! # async fn run() -> Result<(), ternmq_tokio::Error> {
//! let client = Client::connect(ConnectOptions::new("127.0.0.1", 1883)).await?;
//! client.subscribe("sensor/#", QoS::AtLeastOnce).await?;
//! client.on_message(|msg| println!("Topic: {}, Payload: {:?}", msg.topic, msg.payload));
//! client.publish("sensor/temp", "22.5", QoS::ExactlyOnce).await?;
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Server`] runs the MQTT broker on Tokio; see the [`server`] module.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::client::{Client as Core, ClientConfig, ClientError, DisconnectReason, Event};
use ternmq_core::codec::{
    Connect, Disconnect, MqttStr, ProtocolVersion, Publish, QoS, ReasonCode, Subscription,
};
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicError, TopicFilter, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};

pub mod server;

pub use server::{AsyncAuthenticator, AsyncAuthorizer, Server, ServerConfig, ShutdownHandle};
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
    /// How long calls wait for the server's answer.
    pub timeout: Duration,
    /// Most messages buffered for [`Client::next_message`]; further ones are dropped with a
    /// warning rather than grow memory without bound.
    pub message_buffer: usize,
}

impl ConnectOptions {
    /// MQTT 5 to `host:port` with an empty client id (the server assigns one), clean start, and a
    /// 60 s keep-alive.
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
    /// The client was disconnected before the server answered.
    Disconnected,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Refused(c) => write!(f, "connection refused: {c}"),
            Self::Client(e) => write!(f, "{e}"),
            Self::Topic(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("timed out waiting for the server"),
            Self::Disconnected => f.write_str("disconnected"),
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

type Answer = Result<Vec<ReasonCode>, Error>;
type Handler = Box<dyn FnMut(&Publish) + Send>;
type AsyncHandler =
    Arc<dyn Fn(Publish) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
type Hook = Box<dyn FnMut() + Send>;

/// Everything the handles and the driver share, under one lock.
struct State {
    core: Core,
    /// Bytes taken from the core, not yet written; `queued` counts every byte ever taken and
    /// `written` every byte written, so a QoS 0 publish knows when it is on the wire.
    out: BytesMut,
    queued: u64,
    written: u64,
    /// Answers awaited, by packet identifier.
    waiters: BTreeMap<u16, oneshot::Sender<Answer>>,
    /// QoS 0 publishes awaiting their bytes' write, by the offset that must be reached.
    flushes: Vec<(u64, oneshot::Sender<Answer>)>,
    connect_waiter: Option<oneshot::Sender<Result<(), Error>>>,
    handlers: Vec<Handler>,
    async_handlers: Vec<AsyncHandler>,
    on_connect: Vec<Hook>,
    on_disconnect: Vec<Hook>,
    stopped: bool,
}

impl State {
    /// Moves what the core has to send into `out`.
    fn take_output(&mut self) {
        while let Some(b) = self.core.poll_transmit(usize::MAX) {
            self.queued += b.len() as u64;
            self.out.extend_from_slice(&b);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    epoch: StdInstant,
    host: String,
    port: u16,
    timeout: Duration,
    messages: tokio::sync::Mutex<mpsc::Receiver<Publish>>,
}

impl Shared {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Handlers run without the lock, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An async MQTT client handle; clone it freely.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("host", &self.shared.host).finish()
    }
}

impl Client {
    /// Connects and waits until the server accepts. The driver task is spawned on the current
    /// Tokio runtime.
    pub async fn connect(options: ConnectOptions) -> Result<Client, Error> {
        let stream = TcpStream::connect((options.host.as_str(), options.port)).await?;
        stream.set_nodelay(true)?;
        let (tx, rx) = mpsc::channel(options.message_buffer.max(1));
        let (connected_tx, connected_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core: Core::new(options.config, Instant::ZERO),
                out: BytesMut::new(),
                queued: 0,
                written: 0,
                waiters: BTreeMap::new(),
                flushes: Vec::new(),
                connect_waiter: Some(connected_tx),
                handlers: Vec::new(),
                async_handlers: Vec::new(),
                on_connect: Vec::new(),
                on_disconnect: Vec::new(),
                stopped: false,
            }),
            wake: Notify::new(),
            epoch: StdInstant::now(),
            host: options.host,
            port: options.port,
            timeout: options.timeout,
            messages: tokio::sync::Mutex::new(rx),
        });
        {
            let mut st = shared.lock();
            let now = shared.now();
            st.core.connect(now, options.connect)?;
            st.take_output();
        }
        tokio::spawn(drive(Arc::clone(&shared), stream, tx));
        let client = Client { shared };
        match tokio::time::timeout(options.timeout, connected_rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => {
                client.stop();
                Err(e)
            }
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => {
                client.stop();
                Err(Error::Timeout)
            }
        }
    }

    /// Publishes and completes when the publish is done: written for QoS 0, PUBACK for QoS 1,
    /// PUBCOMP for QoS 2. Returns the server's reason code (always Success in 3.1.1).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) -> Result<ReasonCode, Error> {
        let mut p = Publish::new(TopicName::new(topic)?, payload);
        p.qos = qos;
        self.publish_with(p).await
    }

    /// [`publish`](Self::publish) with every option: retain, MQTT 5 properties, topic alias.
    pub async fn publish_with(&self, publish: Publish) -> Result<ReasonCode, Error> {
        let rx = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.core.publish(now, publish)?;
            st.take_output();
            let (tx, rx) = oneshot::channel();
            match id {
                Some(id) => {
                    st.waiters.insert(id.get(), tx);
                }
                None => {
                    let target = st.queued;
                    st.flushes.push((target, tx));
                }
            }
            rx
        };
        self.shared.wake.notify_one();
        let codes = self.answer(rx).await?;
        Ok(codes.first().copied().unwrap_or(ReasonCode::Success))
    }

    /// Subscribes to `filter`; returns the granted QoS or the server's error code.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let sub = Subscription::new(TopicFilter::new(filter)?, qos);
        let codes = self.subscribe_many(&[sub]).await?;
        Ok(codes.first().copied().unwrap_or(ReasonCode::UnspecifiedError))
    }

    /// Subscribes to several filters with their options in one SUBSCRIBE.
    pub async fn subscribe_many(&self, subs: &[Subscription]) -> Result<Vec<ReasonCode>, Error> {
        let rx = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.core.subscribe(now, subs)?;
            st.take_output();
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id.get(), tx);
            rx
        };
        self.shared.wake.notify_one();
        self.answer(rx).await
    }

    /// Unsubscribes from `filter`; returns the server's reason codes (empty in 3.1.1).
    pub async fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        let f = TopicFilter::new(filter)?;
        let rx = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            let id = st.core.unsubscribe(now, &[f])?;
            st.take_output();
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id.get(), tx);
            rx
        };
        self.shared.wake.notify_one();
        self.answer(rx).await
    }

    /// Calls `handler` for every message, in order, on the driver task. It must not block; to
    /// publish from a handler use [`on_message_async`](Self::on_message_async).
    pub fn on_message(&self, handler: impl FnMut(&Publish) + Send + 'static) {
        self.shared.lock().handlers.push(Box::new(handler));
    }

    /// Spawns `handler(message)` as a task for every message: it may await, publish, and wait
    /// for acknowledgements while the driver goes on.
    pub fn on_message_async<F, Fut>(&self, handler: F)
    where
        F: Fn(Publish) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.lock().async_handlers.push(Arc::new(move |p| Box::pin(handler(p))));
    }

    /// Calls `hook` after every accepted connection, reconnections included.
    pub fn on_connect(&self, hook: impl FnMut() + Send + 'static) {
        self.shared.lock().on_connect.push(Box::new(hook));
    }

    /// Calls `hook` whenever the connection is lost; the client reconnects by itself if its
    /// reconnect options say so.
    pub fn on_disconnect(&self, hook: impl FnMut() + Send + 'static) {
        self.shared.lock().on_disconnect.push(Box::new(hook));
    }

    /// The next message, or `None` once the client is stopped.
    pub async fn next_message(&self) -> Option<Publish> {
        self.shared.messages.lock().await.recv().await
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().core.is_connected()
    }

    /// Replaces the automatic reconnect policy (enable, initial and maximum delay, backoff
    /// multiplier, jitter); it applies from the next time the connection is lost.
    pub fn set_reconnect_options(&self, options: ReconnectOptions) {
        self.shared.lock().core.set_reconnect_options(options);
    }

    /// Sends DISCONNECT, waits until it is written, and stops the client.
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// [`disconnect`](Self::disconnect) with a reason code and MQTT 5 properties (for example a
    /// new Session Expiry Interval).
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), Error> {
        let rx = {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            st.core.disconnect(now, disconnect);
            st.take_output();
            let (tx, rx) = oneshot::channel();
            let target = st.queued;
            st.flushes.push((target, tx));
            rx
        };
        self.shared.wake.notify_one();
        let result = self.answer(rx).await.map(|_| ());
        self.stop();
        result.or(Ok(()))
    }

    fn stop(&self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
    }

    async fn answer(&self, rx: oneshot::Receiver<Answer>) -> Result<Vec<ReasonCode>, Error> {
        match tokio::time::timeout(self.shared.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// The driver task: the run loop of the core client on one TCP connection at a time.
async fn drive(shared: Arc<Shared>, stream: TcpStream, messages: mpsc::Sender<Publish>) {
    let (mut reader, mut writer): (Option<OwnedReadHalf>, Option<OwnedWriteHalf>) = {
        let (r, w) = stream.into_split();
        (Some(r), Some(w))
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        // 1. Write what is queued.
        let (out, target) = {
            let mut st = shared.lock();
            if st.stopped {
                break;
            }
            st.take_output();
            (st.out.split().freeze(), st.queued)
        };
        let mut timeout = None;
        if !out.is_empty() {
            let ok = match writer.as_mut() {
                Some(w) => w.write_all(&out).await.is_ok(),
                None => false,
            };
            let mut st = shared.lock();
            st.written = target;
            if !ok && writer.is_some() {
                writer = None;
                reader = None;
                let now = shared.now();
                st.core.handle_closed(now);
            }
            if !st.flushes.is_empty() {
                let written = st.written;
                let (done, pending): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut st.flushes).into_iter().partition(|(t, _)| *t <= written);
                st.flushes = pending;
                for (_, tx) in done {
                    let _ = tx.send(Ok(vec![ReasonCode::Success]));
                }
            }
            timeout = Some(st.core.poll_timeout());
        }
        // 2. Wait for input, a command or the core's deadline.
        let timeout = match timeout {
            Some(t) => t,
            None => shared.lock().core.poll_timeout(),
        };
        let now = shared.now();
        let deadline = timeout.map(|t| {
            tokio::time::Instant::now()
                + Duration::from_nanos(
                    u64::try_from(t.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX),
                )
        });
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        buf.reserve(16 * 1024);
        let mut closed = false;
        let mut got_input = false;
        tokio::select! {
            // Without a connection this branch never completes; commands and timers go on.
            r = async {
                match reader.as_mut() {
                    Some(r) => r.read_buf(&mut buf).await,
                    None => std::future::pending().await,
                }
            } => {
                match r {
                    Ok(0) | Err(_) => closed = true,
                    Ok(_) => got_input = true,
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
        }
        // 3. Feed the core and act on its events.
        let mut delivered = Vec::new();
        let mut redial = false;
        {
            let mut st = shared.lock();
            let now = shared.now();
            if got_input {
                st.core.handle_bytes(now, &mut buf);
            }
            if closed {
                reader = None;
                writer = None;
                st.core.handle_closed(now);
            }
            if st.core.poll_timeout().is_some_and(|t| t <= now) {
                st.core.handle_timeout(now);
            }
            st.take_output();
            while let Some(ev) = st.core.poll_event() {
                match ev {
                    Event::Connected { .. } => {
                        if let Some(tx) = st.connect_waiter.take() {
                            let _ = tx.send(Ok(()));
                        }
                        for h in st.on_connect.iter_mut() {
                            h();
                        }
                    }
                    Event::ConnectionRefused { reason_code, .. } => {
                        if let Some(tx) = st.connect_waiter.take() {
                            let _ = tx.send(Err(Error::Refused(reason_code)));
                        }
                    }
                    Event::Message(p) => delivered.push(p),
                    Event::Published { packet_id, reason_code, .. } => {
                        if let Some(tx) = st.waiters.remove(&packet_id.get()) {
                            let _ = tx.send(Ok(vec![reason_code]));
                        }
                    }
                    Event::Subscribed { packet_id, reason_codes, restored: false }
                    | Event::Unsubscribed { packet_id, reason_codes } => {
                        if let Some(tx) = st.waiters.remove(&packet_id.get()) {
                            let _ = tx.send(Ok(reason_codes));
                        }
                    }
                    Event::Disconnected(reason) if reason != DisconnectReason::Requested => {
                        for h in st.on_disconnect.iter_mut() {
                            h();
                        }
                    }
                    Event::CloseTransport => {
                        reader = None;
                        writer = None;
                        st.core.handle_closed(now);
                    }
                    Event::Reconnect => redial = true,
                    _ => {}
                }
            }
            if !delivered.is_empty() {
                // Handlers run here, in order, on the driver, without the lock: they must not
                // block. Handlers added meanwhile are kept.
                let mut handlers = std::mem::take(&mut st.handlers);
                let async_handlers = st.async_handlers.clone();
                drop(st);
                for p in &delivered {
                    for h in handlers.iter_mut() {
                        h(p);
                    }
                    for h in &async_handlers {
                        tokio::spawn(h(p.clone()));
                    }
                }
                let mut st = shared.lock();
                handlers.append(&mut st.handlers);
                st.handlers = handlers;
            }
        }
        for p in delivered {
            if messages.try_send(p).is_err() {
                log::warn!("message buffer full or closed; a message was dropped");
            }
        }
        if redial {
            let result = TcpStream::connect((shared.host.as_str(), shared.port)).await;
            let mut st = shared.lock();
            let now = shared.now();
            match result {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let (r, w) = s.into_split();
                    reader = Some(r);
                    writer = Some(w);
                    buf.clear();
                    if st.core.reconnect(now).is_err() {
                        st.core.handle_closed(now);
                    }
                }
                Err(_) => st.core.handle_closed(now),
            }
        }
    }
    // Stopped: fail whatever still waits.
    let mut st = shared.lock();
    for (_, tx) in std::mem::take(&mut st.waiters) {
        let _ = tx.send(Err(Error::Disconnected));
    }
}
