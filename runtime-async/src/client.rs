//! The async MQTT [`Client`], generic over a [`Runtime`].
//!
//! A driver task owns the connection and the core's [`Driver`]; it writes what is queued, then
//! waits for the first of a read, a wake-up from a command and the core's next deadline, feeds
//! the driver, and acts on its outcomes. [`Client`] handles are cheap to clone and usable from
//! any task, executor or thread: each call locks the driver briefly, queues its packet and a
//! waiter (a one-slot channel), wakes the driver task and awaits the answer.
//!
//! The driver task and the tasks of [`Client::on_message_async`] are spawned with
//! [`Runtime::spawn`]. Nothing blocks them except a synchronous [`Client::on_message`] handler
//! that blocks, which it must not.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use async_channel::{self as channel, Receiver, Sender};
use bytes::{Bytes, BytesMut};
use futures_lite::future;
use ternmq_core::client::driver::{
    self, Answer, Command, CommandError, ConnectOptions, Driver, Error,
};
use ternmq_core::client::{DisconnectReason, Event, ReconnectOptions};
use ternmq_core::codec::{
    Disconnect, Publish, QoS, ReasonCode, Subscription, UnsubscribeProperties,
};
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicFilter, TopicName};

use crate::transport::{ClientTransport, Transform};
use crate::{Dialer, Runtime, within};

type Waiter = Sender<Answer>;
type Handler = Box<dyn FnMut(&Publish) + Send>;
type AsyncHandler = Arc<dyn Fn(Publish) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
type Hook = Box<dyn FnMut() + Send>;

/// Everything the handles and the driver task share, under one lock.
struct State {
    /// The core client, its unwritten output and the calls waiting for an answer.
    driver: Driver<Waiter>,
    connect_waiter: Option<Sender<Result<(), Error>>>,
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

struct Shared<R: Runtime> {
    state: Mutex<State>,
    /// Commands wake the driver task through this one-slot channel; a full slot means a
    /// wake-up is already pending.
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    epoch: StdInstant,
    host: String,
    /// Opens each connection.
    dial: Dialer<R::Transport>,
    /// TLS or WebSocket over each connection, if the options ask for them.
    transport: Option<ClientTransport>,
    timeout: Duration,
    messages: Receiver<Publish>,
}

impl<R: Runtime> Shared<R> {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Handlers run without the lock, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }
}

/// An async MQTT client handle; clone it freely.
pub struct Client<R: Runtime> {
    shared: Arc<Shared<R>>,
    /// Shared by the clones only: when the last clone is dropped the driver stops.
    _owner: Arc<Owner<R>>,
}

impl<R: Runtime> Clone for Client<R> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), _owner: Arc::clone(&self._owner) }
    }
}

/// Stops the driver (closing the connection without DISCONNECT, so a will is published) once
/// the application has dropped every handle. A handler that keeps a clone of its own client
/// keeps it alive.
struct Owner<R: Runtime>(Arc<Shared<R>>);

impl<R: Runtime> Drop for Owner<R> {
    fn drop(&mut self) {
        self.0.lock().driver.stop();
        self.0.wake();
    }
}

impl<R: Runtime> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("host", &self.shared.host).finish()
    }
}

impl<R: Runtime> Client<R> {
    /// Connects and waits until the server accepts. The driver task is spawned on smol's
    /// global executor.
    pub async fn connect(options: ConnectOptions) -> Result<Self, Error> {
        let dial = crate::tcp_dialer::<R>(options.host.clone(), options.port);
        Self::connect_via(options, dial).await
    }

    /// [`connect`](Self::connect) over the transports `dial` opens (TLS, WebSocket, or any
    /// byte stream), for the first connection and every reconnection; `options.host` and
    /// `options.port` only name the server in logs.
    pub async fn connect_via(
        options: ConnectOptions,
        dial: Dialer<R::Transport>,
    ) -> Result<Self, Error> {
        let transport = ClientTransport::new(&options)?;
        let stream = match within::<R, _>(options.timeout, dial()).await {
            Some(stream) => stream?,
            None => return Err(Error::Timeout),
        };
        let link = Link::<R>::establish(transport.as_ref(), stream, options.timeout, &options.host)
            .await?;
        let (tx, rx) = channel::bounded(options.message_buffer.max(1));
        let (connected_tx, connected_rx) = channel::bounded(1);
        let (wake_tx, wake_rx) = channel::bounded(1);
        let mut driver = Driver::new(options.config, Instant::ZERO);
        driver.set_auth_handler(options.auth.clone());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                driver,
                connect_waiter: Some(connected_tx),
                callbacks: Callbacks::default(),
            }),
            wake_tx,
            wake_rx,
            epoch: StdInstant::now(),
            host: options.host,
            dial,
            transport,
            timeout: options.timeout,
            messages: rx,
        });
        {
            let mut st = shared.lock();
            let now = shared.now();
            st.driver.connect(now, options.connect).map_err(Error::from)?;
        }
        R::spawn(drive(Arc::clone(&shared), link, tx));
        let owner = Arc::new(Owner(Arc::clone(&shared)));
        let client = Client { shared, _owner: owner };
        let answer =
            within::<R, _>(options.timeout, async { connected_rx.recv().await.ok() }).await;
        let result = match answer {
            Some(Some(result)) => result,
            Some(None) => Err(Error::Disconnected(DisconnectReason::TransportClosed)),
            None => Err(Error::Timeout),
        };
        if result.is_err() {
            client.stop();
        }
        result.map(|()| client)
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
        self.unsubscribe_with(filter, UnsubscribeProperties::default()).await
    }

    /// [`unsubscribe`](Self::unsubscribe) with MQTT 5 UNSUBSCRIBE properties (User
    /// Properties).
    pub async fn unsubscribe_with(
        &self,
        filter: &str,
        properties: UnsubscribeProperties,
    ) -> Result<Vec<ReasonCode>, Error> {
        let f = TopicFilter::new(filter)?;
        self.call(|d, now, w| d.unsubscribe_with(now, &[f], properties, w)).await
    }

    /// Calls `handler` for every message, in order, on the driver task. It must not block; to
    /// publish from a handler use [`on_message_async`](Self::on_message_async).
    pub fn on_message(&self, handler: impl FnMut(&Publish) + Send + 'static) {
        self.shared.lock().callbacks.handlers.push(Box::new(handler));
    }

    /// Spawns `handler(message)` as a task on smol's global executor for every message: it may
    /// await, publish, and wait for acknowledgements while the driver goes on.
    pub fn on_message_async<F, Fut>(&self, handler: F)
    where
        F: Fn(Publish) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: AsyncHandler = Arc::new(move |p| Box::pin(handler(p)));
        self.shared.lock().callbacks.async_handlers.push(handler);
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
        self.shared.messages.recv().await.ok()
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
        self.shared.wake();
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
        self.shared.wake();
    }

    /// Hands a command and its waiter to the driver, wakes the driver task and awaits the
    /// answer.
    async fn call(
        &self,
        command: impl FnOnce(&mut Driver<Waiter>, Instant, Waiter) -> Result<(), CommandError>,
    ) -> Result<Vec<ReasonCode>, Error> {
        let (tx, rx) = channel::bounded(1);
        {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            command(&mut st.driver, now, tx).map_err(Error::from)?;
        }
        self.shared.wake();
        match within::<R, _>(self.shared.timeout, rx.recv()).await {
            Some(Ok(Ok(codes))) => Ok(codes),
            Some(Ok(Err(reason))) => Err(Error::Disconnected(reason)),
            Some(Err(_)) => Err(Error::Disconnected(DisconnectReason::TransportClosed)),
            None => Err(Error::Timeout),
        }
    }
}

/// What the driver task must do after acting on the driver's outcomes.
#[derive(Default)]
struct Next {
    close: bool,
    redial: bool,
    stopped: bool,
}

/// What ended the driver task's wait.
enum Woke {
    Read(io::Result<usize>),
    Other,
}

/// The driver task: the run loop of the core client on one TCP connection at a time.
async fn drive<R: Runtime>(shared: Arc<Shared<R>>, link: Link<R>, messages: Sender<Publish>) {
    let mut conn = Some(link);
    // A packet split across reads waits here for its rest.
    let mut input = BytesMut::new();
    loop {
        // 1. Write what is queued, then act on what happened.
        write_out(&shared, &mut conn).await;
        let next = act(&shared, &messages);
        if next.close {
            // The last words (a DISCONNECT, say) go out before the socket closes.
            if let Some(layer) = conn.as_mut().and_then(|l| l.layer.as_mut()) {
                layer.close();
            }
            write_out(&shared, &mut conn).await;
            if let Some(mut l) = conn.take() {
                R::close(&mut l.stream).await;
            }
            shared.lock().driver.handle_closed(shared.now());
            continue;
        }
        if next.stopped {
            break;
        }
        if next.redial {
            let result = match (shared.dial)().await {
                Ok(s) => {
                    let transport = shared.transport.as_ref();
                    Link::<R>::establish(transport, s, shared.timeout, &shared.host).await
                }
                Err(e) => Err(e),
            };
            let mut st = shared.lock();
            match result {
                Ok(link) => {
                    conn = Some(link);
                    input.clear();
                    st.driver.handle_reconnected(shared.now());
                }
                Err(e) => {
                    log::debug!("reconnecting to {}: {e}", shared.host);
                    st.driver.handle_dial_failed(shared.now());
                }
            }
            continue;
        }
        // 2. Wait for input, a command or the core's deadline. Input goes first: the other two
        // only say "look again", and every turn of the loop looks at everything.
        let wait = shared.lock().driver.timeout_in(shared.now());
        let read = async {
            match conn.as_mut() {
                // Through a transport, the bytes wait in `raw` for it.
                Some(Link { stream, layer: Some(_), raw }) => {
                    Woke::Read(R::read(stream, raw).await)
                }
                Some(Link { stream, layer: None, .. }) => {
                    Woke::Read(R::read(stream, &mut input).await)
                }
                // Without a connection, commands and timers go on.
                None => future::pending().await,
            }
        };
        let wake = async {
            let _ = shared.wake_rx.recv().await;
            Woke::Other
        };
        let timer = async {
            match wait {
                Some(d) => R::sleep(d).await,
                None => future::pending().await,
            };
            Woke::Other
        };
        let woke = future::or(read, future::or(wake, timer)).await;
        // 3. Feed the core.
        let mut st = shared.lock();
        let now = shared.now();
        let woke = match (woke, conn.as_mut()) {
            (Woke::Read(Ok(n)), Some(Link { layer: Some(layer), raw, .. })) if n > 0 => {
                let through = layer.handle_input(raw, &mut input);
                raw.clear();
                match through {
                    Ok(r) if r.closed => Woke::Read(Ok(0)),
                    Ok(_) => Woke::Read(Ok(n)),
                    Err(e) => {
                        log::warn!("connection to {} failed: {e}", shared.host);
                        Woke::Read(Ok(0))
                    }
                }
            }
            (woke, _) => woke,
        };
        match woke {
            Woke::Read(Ok(n)) if n > 0 => {
                st.driver.handle_bytes(now, &mut input);
            }
            Woke::Read(_) => {
                conn = None;
                st.driver.handle_closed(now);
            }
            Woke::Other => {}
        }
        st.driver.handle_timeout(now);
    }
}

/// One connection: the stream its dialer opened, and the transport over it (TLS, WebSocket),
/// if any.
struct Link<R: Runtime> {
    stream: R::Transport,
    layer: Option<Box<dyn Transform>>,
    /// Bytes read and not yet through the layer.
    raw: BytesMut,
}

impl<R: Runtime> Link<R> {
    /// A connection over `stream`, with a new `transport` session when there is one, its
    /// handshakes (TLS, the WebSocket upgrade) done within `timeout`: a refusal is an error
    /// that says why, naming `host`.
    async fn establish(
        transport: Option<&ClientTransport>,
        mut stream: R::Transport,
        timeout: Duration,
        host: &str,
    ) -> io::Result<Link<R>> {
        let Some(transport) = transport else {
            return Ok(Link { stream, layer: None, raw: BytesMut::new() });
        };
        let mut layer = transport.session()?;
        let mut raw = BytesMut::new();
        let mut plain = BytesMut::new();
        let handshake = async {
            loop {
                if let Some(out) = layer.poll_transmit() {
                    R::write_all(&mut stream, &out).await?;
                }
                if layer.is_ready() {
                    return Ok(());
                }
                if R::read(&mut stream, &mut raw).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the server closed the connection during the handshake",
                    ));
                }
                let through = layer.handle_input(&raw, &mut plain);
                raw.clear();
                through.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        };
        match within::<R, _>(timeout, handshake).await {
            Some(Ok(())) => Ok(Link { stream, layer: Some(layer), raw: BytesMut::new() }),
            Some(Err(e)) => Err(io::Error::new(e.kind(), format!("{host}: {e}"))),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{host}: the handshake timed out"),
            )),
        }
    }
}

/// Writes what the driver has to send (through the transport, with what the transport has
/// to say itself); a failed write ends the connection.
async fn write_out<R: Runtime>(shared: &Shared<R>, conn: &mut Option<Link<R>>) {
    let plain = shared.lock().driver.poll_transmit();
    let written = plain.as_ref().map_or(0, Bytes::len);
    let out = match conn.as_mut().and_then(|l| l.layer.as_mut()) {
        Some(layer) => {
            if let Some(p) = &plain {
                layer.write_plaintext(p);
            }
            layer.poll_transmit().map(Bytes::from)
        }
        None => plain,
    };
    let Some(out) = out else {
        if written > 0 {
            // Taken by the transport, to go out once its handshake is done.
            shared.lock().driver.handle_written(written);
        }
        return;
    };
    // A server that stops reading must not hold the driver for ever: the write gives up
    // after the call timeout (the connection is then lost, and redialled), or at once when the
    // application stops the client.
    let ok = match conn.as_mut() {
        Some(l) => {
            future::or(
                async {
                    within::<R, _>(shared.timeout, R::write_all(&mut l.stream, &out))
                        .await
                        .is_some_and(|r| r.is_ok())
                },
                async {
                    stopped(shared).await;
                    false
                },
            )
            .await
        }
        None => false,
    };
    let mut st = shared.lock();
    if ok {
        st.driver.handle_written(written);
    } else {
        *conn = None;
        st.driver.handle_closed(shared.now());
    }
}

/// Completes once the client is stopped (woken by the command that stops it).
async fn stopped<R: Runtime>(shared: &Shared<R>) {
    loop {
        if shared.lock().driver.is_stopped() {
            return;
        }
        if shared.wake_rx.recv().await.is_err() {
            return;
        }
    }
}

/// Takes the driver's events (the connect waiter, hooks and handlers, these without the lock,
/// messages) and carries out its commands (answers, closing, redialling).
fn act<R: Runtime>(shared: &Shared<R>, messages: &Sender<Publish>) -> Next {
    let mut next = Next::default();
    let mut delivered = Vec::new();
    let (mut ups, mut downs) = (0, 0);
    let mut st = shared.lock();
    while let Some(event) = st.driver.poll_event() {
        match event {
            Event::Connected { .. } => {
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.try_send(Ok(()));
                }
                ups += 1;
            }
            Event::ConnectionRefused { reason_code, .. } => {
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.try_send(Err(Error::Refused(reason_code)));
                }
            }
            Event::Message(p) => delivered.push(p),
            Event::Disconnected(reason) if reason != DisconnectReason::Requested => downs += 1,
            _ => {}
        }
    }
    while let Some(command) = st.driver.poll_command() {
        match command {
            Command::Answer(w, answer) => {
                let _ = w.try_send(answer);
            }
            Command::CloseTransport => next.close = true,
            Command::Reconnect => next.redial = true,
            _ => {}
        }
    }
    next.stopped = st.driver.is_stopped();
    if next.stopped
        && let Some(tx) = st.connect_waiter.take()
    {
        let reason = st.driver.last_disconnect().cloned();
        let _ = tx.try_send(Err(Error::Disconnected(
            reason.unwrap_or(DisconnectReason::TransportClosed),
        )));
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
            R::spawn(h(p.clone()));
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
