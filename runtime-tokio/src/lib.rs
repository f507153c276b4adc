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

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::client::DisconnectReason;
use ternmq_core::client::driver::{self, Answer, CommandError, Driver, Outcome};
use ternmq_core::codec::{Disconnect, Publish, QoS, ReasonCode, Subscription};
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicFilter, TopicName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};

pub mod server;

pub use server::{AsyncAuthenticator, AsyncAuthorizer, Server, ServerConfig, ShutdownHandle};
pub use ternmq_core as core;
pub use ternmq_core::client::ReconnectOptions;
pub use ternmq_core::client::driver::{AuthHandler, ConnectOptions, Error};
pub use ternmq_store::{Durability, StoreConfig};

/// A byte stream the client runs MQTT over: TCP by default, or TLS or a WebSocket over it,
/// supplied by a [`Dialer`]. Protocol code never sees which.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// What a [`Dialer`] returns: a connected transport, or why it could not connect.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn Transport>>> + Send>>;

/// Opens a transport to the server, for the first connection and for every reconnection:
/// the seam where TLS or WebSocket transports plug in ([`Client::connect_via`]).
pub type Dialer = Arc<dyn Fn() -> DialFuture + Send + Sync>;

/// The default [`Dialer`]: TCP to `host:port`, with Nagle's algorithm off.
pub fn tcp_dialer(host: impl Into<String>, port: u16) -> Dialer {
    let host: Arc<str> = host.into().into();
    Arc::new(move || {
        let host = Arc::clone(&host);
        Box::pin(async move {
            let stream = TcpStream::connect((&*host, port))
                .await
                .map_err(|e| ternmq_core::client::driver::dial_error(e, &host, port))?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Transport>)
        })
    })
}

const READ_CHUNK: usize = 16 * 1024;

type Waiter = oneshot::Sender<Answer>;
type Handler = Box<dyn FnMut(&Publish) + Send>;
type AsyncHandler = Arc<dyn Fn(Publish) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
type Hook = Box<dyn FnMut() + Send>;

/// Everything the handles and the driver task share, under one lock.
struct State {
    /// The core client, its unwritten output and the calls waiting for an answer.
    driver: Driver<Waiter>,
    connect_waiter: Option<oneshot::Sender<Result<(), Error>>>,
    callbacks: Callbacks,
}

/// What the application asked to be called with.
#[derive(Default)]
struct Callbacks {
    handlers: Vec<Handler>,
    async_handlers: Vec<AsyncHandler>,
    on_connect: Vec<Hook>,
    on_disconnect: Vec<Hook>,
}

impl Callbacks {
    /// Puts back callbacks taken to run without the lock, before those added meanwhile.
    fn restore(&mut self, mut taken: Callbacks) {
        taken.handlers.append(&mut self.handlers);
        taken.async_handlers.append(&mut self.async_handlers);
        taken.on_connect.append(&mut self.on_connect);
        taken.on_disconnect.append(&mut self.on_disconnect);
        *self = taken;
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    epoch: StdInstant,
    host: String,
    /// Opens each connection.
    dial: Dialer,
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
    /// Shared by the clones only: when the last clone is dropped the driver stops.
    _owner: Arc<Owner>,
}

/// Stops the driver (closing the connection without DISCONNECT, so a will is published) once
/// the application has dropped every handle. A handler that keeps a clone of its own client
/// keeps it alive.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().driver.stop();
        self.0.wake.notify_one();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("host", &self.shared.host).finish()
    }
}

impl Client {
    /// Connects over TCP and waits until the server accepts. The driver task is spawned on
    /// the current Tokio runtime.
    pub async fn connect(options: ConnectOptions) -> Result<Client, Error> {
        let dial = tcp_dialer(options.host.clone(), options.port);
        Self::connect_via(options, dial).await
    }

    /// [`connect`](Self::connect) over the transports `dial` opens (TLS, WebSocket, or any
    /// byte stream), for the first connection and every reconnection; `options.host` and
    /// `options.port` only name the server in logs.
    pub async fn connect_via(options: ConnectOptions, dial: Dialer) -> Result<Client, Error> {
        let stream = match tokio::time::timeout(options.timeout, dial()).await {
            Ok(stream) => stream?,
            Err(_) => return Err(Error::Timeout),
        };
        let (tx, rx) = mpsc::channel(options.message_buffer.max(1));
        let (connected_tx, connected_rx) = oneshot::channel();
        let mut driver = Driver::new(options.config, Instant::ZERO);
        driver.set_auth_handler(options.auth.clone());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                driver,
                connect_waiter: Some(connected_tx),
                callbacks: Callbacks::default(),
            }),
            wake: Notify::new(),
            epoch: StdInstant::now(),
            host: options.host,
            dial,
            timeout: options.timeout,
            messages: tokio::sync::Mutex::new(rx),
        });
        {
            let mut st = shared.lock();
            let now = shared.now();
            st.driver.connect(now, options.connect).map_err(Error::from)?;
        }
        tokio::spawn(drive(Arc::clone(&shared), stream, tx));
        let owner = Arc::new(Owner(Arc::clone(&shared)));
        let client = Client { shared, _owner: owner };
        match tokio::time::timeout(options.timeout, connected_rx).await {
            Ok(Ok(Ok(()))) => Ok(client),
            Ok(Ok(Err(e))) => {
                client.stop();
                Err(e)
            }
            Ok(Err(_)) => Err(Error::Disconnected(DisconnectReason::TransportClosed)),
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
        let codes = self.call(|d, now, w| d.publish(now, publish, w)).await?;
        Ok(driver::publish_reason(&codes))
    }

    /// Subscribes to `filter`; returns the granted QoS or the server's error code.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let sub = Subscription::new(TopicFilter::new(filter)?, qos);
        let codes = self.subscribe_many(&[sub]).await?;
        Ok(driver::subscription_reason(&codes))
    }

    /// Subscribes to several filters with their options in one SUBSCRIBE.
    pub async fn subscribe_many(&self, subs: &[Subscription]) -> Result<Vec<ReasonCode>, Error> {
        self.call(|d, now, w| d.subscribe(now, subs, w)).await
    }

    /// Unsubscribes from `filter`; returns the server's reason codes (empty in 3.1.1).
    pub async fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        let f = TopicFilter::new(filter)?;
        self.call(|d, now, w| d.unsubscribe(now, &[f], w)).await
    }

    /// Calls `handler` for every message, in order, on the driver task. It must not block; to
    /// publish from a handler use [`on_message_async`](Self::on_message_async).
    pub fn on_message(&self, handler: impl FnMut(&Publish) + Send + 'static) {
        self.shared.lock().callbacks.handlers.push(Box::new(handler));
    }

    /// Spawns `handler(message)` as a task for every message: it may await, publish, and wait
    /// for acknowledgements while the driver goes on.
    pub fn on_message_async<F, Fut>(&self, handler: F)
    where
        F: Fn(Publish) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared.lock().callbacks.async_handlers.push(Arc::new(move |p| Box::pin(handler(p))));
    }

    /// Calls `hook` after every accepted connection, reconnections included.
    pub fn on_connect(&self, hook: impl FnMut() + Send + 'static) {
        self.shared.lock().callbacks.on_connect.push(Box::new(hook));
    }

    /// Calls `hook` whenever the connection is lost; the client reconnects by itself if its
    /// reconnect options say so.
    pub fn on_disconnect(&self, hook: impl FnMut() + Send + 'static) {
        self.shared.lock().callbacks.on_disconnect.push(Box::new(hook));
    }

    /// The next message, or `None` once the client is stopped.
    pub async fn next_message(&self) -> Option<Publish> {
        self.shared.messages.lock().await.recv().await
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().driver.is_connected()
    }

    /// Replaces the automatic reconnect policy (enable, initial and maximum delay, backoff
    /// multiplier, jitter); it applies from the next time the connection is lost.
    pub fn set_reconnect_options(&self, options: ReconnectOptions) {
        self.shared.lock().driver.set_reconnect_options(options);
    }

    /// MQTT 5: starts re-authenticating the live connection with `data`; the
    /// [`AuthHandler`](ConnectOptions::auth) answers the server's challenges.
    pub fn reauthenticate(&self, data: Option<Bytes>) -> Result<(), Error> {
        {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            st.driver.reauthenticate(now, data).map_err(Error::from)?;
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Sends DISCONNECT, waits until it is written, and stops the client.
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// [`disconnect`](Self::disconnect) with a reason code and MQTT 5 properties (for example a
    /// new Session Expiry Interval).
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), Error> {
        // Already stopped, or the DISCONNECT lost with the connection: stopped all the same.
        let _ = self.call(|d, now, w| d.disconnect(now, disconnect, w)).await;
        self.stop();
        Ok(())
    }

    fn stop(&self) {
        self.shared.lock().driver.stop();
        self.shared.wake.notify_one();
    }

    /// Hands a command and its waiter to the driver, wakes the driver task and awaits the
    /// answer.
    async fn call(
        &self,
        command: impl FnOnce(&mut Driver<Waiter>, Instant, Waiter) -> Result<(), CommandError>,
    ) -> Result<Vec<ReasonCode>, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            command(&mut st.driver, now, tx).map_err(Error::from)?;
        }
        self.shared.wake.notify_one();
        match tokio::time::timeout(self.shared.timeout, rx).await {
            Ok(Ok(Ok(codes))) => Ok(codes),
            Ok(Ok(Err(reason))) => Err(Error::Disconnected(reason)),
            Ok(Err(_)) => Err(Error::Disconnected(DisconnectReason::TransportClosed)),
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// The connection's halves; `None` between a lost connection and the next dial.
type Conn = Option<(ReadHalf<Box<dyn Transport>>, WriteHalf<Box<dyn Transport>>)>;

/// What the driver task must do after acting on the driver's outcomes.
#[derive(Default)]
struct Next {
    close: bool,
    redial: bool,
    stopped: bool,
}

/// The driver task: the run loop of the core client on one connection at a time.
async fn drive(shared: Arc<Shared>, stream: Box<dyn Transport>, messages: mpsc::Sender<Publish>) {
    let mut conn: Conn = Some(tokio::io::split(stream));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // 1. Write what is queued, then act on what happened.
        write_out(&shared, &mut conn).await;
        let next = act(&shared, &messages);
        if next.close {
            // The last words (a DISCONNECT, say) go out before the socket closes.
            write_out(&shared, &mut conn).await;
            conn = None;
            shared.lock().driver.handle_closed(shared.now());
            continue;
        }
        if next.stopped {
            break;
        }
        if next.redial {
            let result = (shared.dial)().await;
            let mut st = shared.lock();
            match result {
                Ok(s) => {
                    conn = Some(tokio::io::split(s));
                    buf.clear();
                    st.driver.reconnected(shared.now());
                }
                Err(_) => st.driver.dial_failed(shared.now()),
            }
            continue;
        }
        // 2. Wait for input, a command or the core's deadline.
        let wait = shared.lock().driver.timeout_in(shared.now());
        let deadline = tokio::time::Instant::now() + wait.unwrap_or(Duration::from_secs(3600));
        buf.reserve(READ_CHUNK);
        let mut closed = false;
        let mut got_input = false;
        tokio::select! {
            // Without a connection this branch never completes; commands and timers go on.
            r = async {
                match conn.as_mut() {
                    Some((r, _)) => r.read_buf(&mut buf).await,
                    None => std::future::pending().await,
                }
            } => {
                match r {
                    Ok(0) | Err(_) => closed = true,
                    Ok(_) => got_input = true,
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // 3. Feed the core.
        if closed {
            conn = None;
        }
        let mut st = shared.lock();
        let now = shared.now();
        if got_input {
            st.driver.handle_bytes(now, &mut buf);
        }
        if closed {
            st.driver.handle_closed(now);
        }
        st.driver.handle_timeout_if_due(now);
    }
}

/// Writes what the driver has to send; a failed write ends the connection.
async fn write_out(shared: &Shared, conn: &mut Conn) {
    let out = shared.lock().driver.take_output();
    if out.is_empty() {
        return;
    }
    // A server that stops reading must not hold the driver for ever: the write gives up
    // after the call timeout (the connection is then lost, and redialled), or at once when the
    // application stops the client.
    let ok = match conn.as_mut() {
        Some((_, w)) => tokio::select! {
            r = tokio::time::timeout(shared.timeout, w.write_all(&out)) => matches!(r, Ok(Ok(()))),
            () = stopped(shared) => false,
        },
        None => false,
    };
    let mut st = shared.lock();
    if ok {
        st.driver.wrote(out.len());
    } else {
        *conn = None;
        st.driver.handle_closed(shared.now());
    }
}

/// Completes once the client is stopped (woken by the command that stops it).
async fn stopped(shared: &Shared) {
    loop {
        let notified = shared.wake.notified();
        if shared.lock().driver.is_stopped() {
            return;
        }
        notified.await;
    }
}

/// Carries out the driver's outcomes: answers, the connect waiter, hooks and handlers (these
/// without the lock), messages.
fn act(shared: &Shared, messages: &mpsc::Sender<Publish>) -> Next {
    let mut next = Next::default();
    let mut delivered = Vec::new();
    let (mut ups, mut downs) = (0, 0);
    let mut st = shared.lock();
    while let Some(outcome) = st.driver.poll() {
        match outcome {
            Outcome::Answer(w, answer) => {
                let _ = w.send(answer);
            }
            Outcome::Connected { .. } => {
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.send(Ok(()));
                }
                ups += 1;
            }
            Outcome::Refused(code) => {
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.send(Err(Error::Refused(code)));
                }
            }
            Outcome::Message(p) => delivered.push(p),
            Outcome::ConnectionLost(reason) if reason != DisconnectReason::Requested => downs += 1,
            Outcome::CloseTransport => next.close = true,
            Outcome::Redial => next.redial = true,
            _ => {}
        }
    }
    next.stopped = st.driver.is_stopped();
    if next.stopped
        && let Some(tx) = st.connect_waiter.take()
    {
        let reason = st.driver.last_disconnect().cloned();
        let _ =
            tx.send(Err(Error::Disconnected(reason.unwrap_or(DisconnectReason::TransportClosed))));
    }
    if ups + downs == 0 && delivered.is_empty() {
        return next;
    }
    // Hooks and handlers run here, in order, on the driver task, without the lock: they must
    // not block, and may call the client.
    let mut cb = std::mem::take(&mut st.callbacks);
    drop(st);
    for _ in 0..downs {
        cb.on_disconnect.iter_mut().for_each(|h| h());
    }
    for _ in 0..ups {
        cb.on_connect.iter_mut().for_each(|h| h());
    }
    for p in &delivered {
        cb.handlers.iter_mut().for_each(|h| h(p));
        for h in &cb.async_handlers {
            tokio::spawn(h(p.clone()));
        }
    }
    shared.lock().callbacks.restore(cb);
    for p in delivered {
        if messages.try_send(p).is_err() {
            log::warn!("message buffer full or closed; a message was dropped");
        }
    }
    next
}
