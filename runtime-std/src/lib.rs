//! Blocking std-thread adapter for ternmq: [`SyncClient`], an MQTT client for programs without
//! an async runtime.
//!
//! The client drives the sans-IO [`ternmq_core::client::Client`] from one background I/O thread
//! over TCP, or over any transport a [`Dialer`] opens ([`SyncClient::connect_via`]: the seam for
//! TLS and WebSocket). Calls block until the server has answered (CONNACK, PUBACK or
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
//! [`Server`] runs the MQTT broker without an async runtime: one thread and a readiness loop
//! over every socket; see the [`server`] module.

use std::collections::VecDeque;
use std::fmt;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::client::driver::{self, Answer, Command, CommandError, Driver};
use ternmq_core::codec::{
    Decoder, Disconnect, MAX_PACKET_SIZE, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
    SubscribeProperties, Subscription, UnsubscribeProperties,
};
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicFilter, TopicName};

pub mod server;
pub mod transport;

pub use server::{
    AsyncAuthenticator, AsyncAuthorizer, BlockingAuthenticator, BlockingAuthorizer, Control,
    Listener, Server, ServerConfig, ShutdownHandle, TlsAcceptor, TlsSettings, TlsVersion,
};
pub use ternmq_async::transport::{ClientTransport, Transform};
pub use ternmq_core as core;
use ternmq_core::client::Event;
pub use ternmq_core::client::driver::{AuthHandler, ConnectOptions, Error};
pub use ternmq_core::client::driver::{ServerUrl, TlsOptions};
pub use ternmq_core::client::{DisconnectReason, ReconnectOptions};
pub use ternmq_store::{Durability, StoreConfig};
pub use transport::{Dialer, Transport, TransportReader, TransportWriter, tcp_dialer};

const READ_CHUNK: usize = 16 * 1024;
/// The longest the I/O thread blocks in a read before it looks at the clock and state again.
const POLL: Duration = Duration::from_millis(100);

type Waiter = SyncSender<Answer>;
type Handler = Box<dyn FnMut(&Publish) + Send>;
type Hook = Box<dyn FnMut() + Send>;

/// What the application asked to be called with, on the dispatcher thread.
#[derive(Default)]
struct Callbacks {
    handlers: Vec<Handler>,
    on_connect: Vec<Hook>,
    on_disconnect: Vec<Hook>,
}

/// What the dispatcher thread calls the callbacks for, in the order it happened.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is a message: boxing it would cost an allocation each"
)]
enum Dispatch {
    Message(Publish),
    Connected,
    Lost,
}

/// What the I/O thread and the callers share, under one lock.
struct State {
    /// The core client, its unwritten output and the calls waiting for an answer.
    driver: Driver<Waiter>,
    /// The write side of the current connection.
    writer: Option<Box<dyn TransportWriter>>,
    connect_waiter: Option<SyncSender<Result<(), Error>>>,
    /// Where messages go; dropped when the I/O thread ends.
    sinks: Option<Sinks>,
    /// The driver asked for a new connection: the I/O thread dials.
    redial: bool,
    /// The application stopped the client.
    stopping: bool,
    /// Connection changes not yet taken by [`SyncClient::connection_event`] (the latest
    /// [`MAX_CONNECTION_EVENTS`]).
    events: VecDeque<ConnectionEvent>,
    /// The packet tracer of [`SyncClient::connect_traced`].
    trace: Option<Trace>,
}

/// Which way a traced packet went, for [`SyncClient::connect_traced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the server.
    Sent,
    /// From the server to the client.
    Received,
}

type Tracer = Box<dyn FnMut(Direction, &Packet) + Send>;

/// Decodes both directions of the connection again, for a tracer.
struct Trace {
    handler: Tracer,
    version: ProtocolVersion,
    sent: (Decoder, BytesMut),
    received: (Decoder, BytesMut),
}

impl Trace {
    fn new(handler: Tracer, version: ProtocolVersion) -> Trace {
        Trace {
            handler,
            version,
            // What the client sends starts with CONNECT, which fixes the version.
            sent: (Decoder::new(None, MAX_PACKET_SIZE), BytesMut::new()),
            received: (Decoder::new(Some(version), MAX_PACKET_SIZE), BytesMut::new()),
        }
    }

    /// A new connection: a new stream each way.
    fn reset(&mut self) {
        let handler = std::mem::replace(&mut self.handler, Box::new(|_, _| {}));
        *self = Trace::new(handler, self.version);
    }

    fn feed(&mut self, direction: Direction, bytes: &[u8]) {
        let Trace { handler, sent, received, .. } = self;
        let (decoder, buf) = match direction {
            Direction::Sent => sent,
            Direction::Received => received,
        };
        buf.extend_from_slice(bytes);
        loop {
            match decoder.decode(buf) {
                Ok(Some(packet)) => handler(direction, &packet),
                Ok(None) => break,
                // The client reports what it cannot decode itself; the trace just stops.
                Err(_) => {
                    buf.clear();
                    break;
                }
            }
        }
    }
}

/// How many connection changes a client keeps for [`SyncClient::connection_event`].
const MAX_CONNECTION_EVENTS: usize = 64;

/// A change of a [`SyncClient`]'s connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The server accepted the connection: the first one, or a reconnection.
    Connected {
        /// Whether the server resumed the session.
        session_present: bool,
    },
    /// The connection ended. The client dials again unless it was stopped (or refused).
    Lost(DisconnectReason),
}

struct Shared {
    state: Mutex<State>,
    epoch: StdInstant,
    callbacks: Arc<Mutex<Callbacks>>,
    /// Whether a callback is set, known without the callbacks' lock (held while they run).
    has_handlers: AtomicBool,
    messages: Mutex<Receiver<Publish>>,
    /// Names the server in logs.
    host: String,
    /// Opens a transport for each reconnection.
    dial: Dialer,
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

    /// After every call into the driver, by whichever thread made it: write what it has to
    /// send and act on its outcomes.
    fn settle(&self, st: &mut State) {
        write_out(st);
        loop {
            let mut busy = false;
            while let Some(event) = st.driver.poll_event() {
                busy = true;
                self.report(st, event);
            }
            while let Some(command) = st.driver.poll_command() {
                busy = true;
                match command {
                    Command::Answer(w, answer) => {
                        let _ = w.try_send(answer);
                    }
                    Command::CloseTransport => {
                        // The last words (a DISCONNECT, say) go out before the socket closes.
                        write_out(st);
                        close(st);
                        st.driver.handle_closed(self.now());
                    }
                    Command::Reconnect => st.redial = true,
                    _ => {}
                }
            }
            if !busy {
                break;
            }
        }
        if st.driver.is_stopped()
            && let Some(tx) = st.connect_waiter.take()
        {
            let reason = st.driver.last_disconnect().cloned();
            let _ = tx.try_send(Err(Error::Disconnected(
                reason.unwrap_or(DisconnectReason::TransportClosed),
            )));
        }
    }
}

impl Shared {
    /// Tells the application what happened: connection changes, messages.
    fn report(&self, st: &mut State, event: Event) {
        match event {
            Event::Connected { session_present, .. } => {
                push_event(st, ConnectionEvent::Connected { session_present });
                // Hooks first: the caller of `connect`, once woken, may add hooks, and they
                // are for the connections after it.
                if let Some(sinks) = &st.sinks {
                    sinks.dispatch(Dispatch::Connected, self.has_handlers.load(Ordering::Acquire));
                }
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.try_send(Ok(()));
                }
            }
            Event::Disconnected(reason) => {
                if reason != DisconnectReason::Requested
                    && let Some(sinks) = &st.sinks
                {
                    sinks.dispatch(Dispatch::Lost, self.has_handlers.load(Ordering::Acquire));
                }
                push_event(st, ConnectionEvent::Lost(reason));
            }
            Event::ConnectionRefused { reason_code, .. } => {
                if let Some(tx) = st.connect_waiter.take() {
                    let _ = tx.try_send(Err(Error::Refused(reason_code)));
                }
            }
            Event::Message(p) => {
                if let Some(sinks) = &st.sinks {
                    sinks.deliver(p, self.has_handlers.load(Ordering::Acquire));
                }
            }
            _ => {}
        }
    }
}

/// Keeps a connection change for [`SyncClient::connection_event`], forgetting the oldest beyond
/// the limit.
fn push_event(st: &mut State, event: ConnectionEvent) {
    if st.events.len() == MAX_CONNECTION_EVENTS {
        st.events.pop_front();
    }
    st.events.push_back(event);
}

/// Writes what the driver has to send. A failed write shuts the socket, and the I/O thread
/// reports it closed.
fn write_out(st: &mut State) {
    let Some(out) = st.driver.poll_transmit() else {
        return;
    };
    if let Some(trace) = st.trace.as_mut() {
        trace.feed(Direction::Sent, &out);
    }
    match st.writer.as_mut().map(|w| w.write_all(&out)) {
        Some(Ok(())) => st.driver.handle_written(out.len()),
        _ => close(st),
    }
}

/// Shuts the transport both ways, which also ends the I/O thread's read.
fn close(st: &mut State) {
    if let Some(mut w) = st.writer.take() {
        w.shutdown();
    }
}

/// A blocking MQTT client; cheap to clone, usable from many threads.
#[derive(Clone)]
pub struct SyncClient {
    shared: Arc<Shared>,
    /// Shared by the clones only: when the last clone is dropped the client stops.
    owner: Arc<Owner>,
}

/// The I/O thread, stopped (the connection closed without DISCONNECT, so a will is published)
/// when the application has dropped every handle. A handler that keeps a clone of its own
/// client keeps it alive.
struct Owner {
    shared: Arc<Shared>,
    io: Mutex<Option<JoinHandle<()>>>,
}

impl Owner {
    fn stop(&self) {
        {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.driver.stop();
            self.shared.settle(&mut st);
            close(&mut st);
        }
        let handle = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncClient").field("host", &self.shared.host).finish()
    }
}

impl SyncClient {
    /// Connects and waits for the server to accept.
    pub fn connect(options: ConnectOptions) -> Result<SyncClient, Error> {
        let dial = transport::dialer(&options)?;
        Self::connect_inner(options, dial, None)
    }

    /// [`connect`](Self::connect) over the transports `dial` opens (TLS, WebSocket, or any
    /// byte stream split into its two halves), for the first connection and every
    /// reconnection; `options.host` and `options.port` only name the server in logs.
    pub fn connect_via(options: ConnectOptions, dial: Dialer) -> Result<SyncClient, Error> {
        Self::connect_inner(options, dial, None)
    }

    /// [`connect`](Self::connect), and calls `trace` with every packet sent and received, from
    /// the CONNECT on and on every reconnection (as `mosquitto_sub -d` prints them). `trace`
    /// runs on the thread that moves the bytes, while the client is locked: it must not call
    /// the client.
    pub fn connect_traced(
        options: ConnectOptions,
        trace: impl FnMut(Direction, &Packet) + Send + 'static,
    ) -> Result<SyncClient, Error> {
        let dial = transport::dialer(&options)?;
        Self::connect_inner(options, dial, Some(Box::new(trace)))
    }

    fn connect_inner(
        options: ConnectOptions,
        dial: Dialer,
        trace: Option<Tracer>,
    ) -> Result<SyncClient, Error> {
        let version = options.connect.protocol;
        let Transport { reader, writer } = dial()?;
        let (tx, rx) = sync_channel(options.message_buffer);
        let (dispatch_tx, dispatch_rx) = sync_channel::<Dispatch>(options.message_buffer);
        let (connected_tx, connected_rx) = sync_channel(1);
        let callbacks: Arc<Mutex<Callbacks>> = Arc::default();
        let mut driver = Driver::new(options.config, Instant::ZERO);
        driver.set_auth_handler(options.auth.clone());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                driver,
                writer: Some(writer),
                connect_waiter: Some(connected_tx),
                sinks: Some(Sinks { recv: tx, dispatch: dispatch_tx }),
                redial: false,
                stopping: false,
                events: VecDeque::new(),
                trace: trace.map(|t| Trace::new(t, version)),
            }),
            epoch: StdInstant::now(),
            callbacks: Arc::clone(&callbacks),
            has_handlers: AtomicBool::new(false),
            messages: Mutex::new(rx),
            host: options.host,
            dial,
            timeout: options.timeout,
        });
        {
            let mut st = shared.lock();
            st.driver.connect(shared.now(), options.connect).map_err(Error::from)?;
            shared.settle(&mut st);
        }
        std::thread::Builder::new().name("ternmq-dispatch".into()).spawn(move || {
            // Ends when the I/O thread ends and drops the sender.
            for d in dispatch_rx {
                let mut cb = callbacks.lock().unwrap_or_else(|e| e.into_inner());
                match d {
                    Dispatch::Message(p) => cb.handlers.iter_mut().for_each(|h| h(&p)),
                    Dispatch::Connected => cb.on_connect.iter_mut().for_each(|h| h()),
                    Dispatch::Lost => cb.on_disconnect.iter_mut().for_each(|h| h()),
                }
            }
        })?;
        let io_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("ternmq-io".into())
            .spawn(move || io_loop(&io_shared, Some(reader)))?;
        let owner = Arc::new(Owner { shared: Arc::clone(&shared), io: Mutex::new(Some(handle)) });
        let client = SyncClient { shared, owner };
        let result = match connected_rx.recv_timeout(options.timeout) {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout),
        };
        if result.is_err() {
            client.stop();
        }
        result.map(|()| client)
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
        let codes = self.call(|d, now, w| d.publish(now, publish, w))?;
        Ok(driver::publish_reason(&codes))
    }

    /// Subscribes to `filter` and returns the server's answer: the granted QoS, or an error code.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let sub = Subscription::new(TopicFilter::new(filter)?, qos);
        let codes = self.subscribe_many(&[sub])?;
        Ok(driver::subscription_reason(&codes))
    }

    /// Subscribes to several filters with their options in one SUBSCRIBE; returns the server's
    /// answer for each.
    pub fn subscribe_many(&self, subs: &[Subscription]) -> Result<Vec<ReasonCode>, Error> {
        self.call(|d, now, w| d.subscribe(now, subs, w))
    }

    /// [`subscribe`](Self::subscribe) with every option (No Local, Retain As Published,
    /// Retain Handling) and MQTT 5 SUBSCRIBE properties (Subscription Identifier, User
    /// Properties).
    pub fn subscribe_with(
        &self,
        subscription: Subscription,
        properties: SubscribeProperties,
    ) -> Result<ReasonCode, Error> {
        let codes = self.call(|d, now, w| d.subscribe_with(now, &[subscription], properties, w))?;
        Ok(driver::subscription_reason(&codes))
    }

    /// Unsubscribes from `filter`; returns the server's reason codes (empty in 3.1.1).
    pub fn unsubscribe(&self, filter: &str) -> Result<Vec<ReasonCode>, Error> {
        self.unsubscribe_with(filter, UnsubscribeProperties::default())
    }

    /// [`unsubscribe`](Self::unsubscribe) with MQTT 5 UNSUBSCRIBE properties (User
    /// Properties).
    pub fn unsubscribe_with(
        &self,
        filter: &str,
        properties: UnsubscribeProperties,
    ) -> Result<Vec<ReasonCode>, Error> {
        let f = TopicFilter::new(filter)?;
        self.call(|d, now, w| d.unsubscribe_with(now, &[f], properties, w))
    }

    /// Calls `handler` for every message, in order, on the dispatcher thread: the handler may
    /// publish (and wait for the acknowledgement). Messages are also available from
    /// [`recv_timeout`](Self::recv_timeout).
    pub fn on_message(&self, handler: impl FnMut(&Publish) + Send + 'static) {
        self.callbacks().handlers.push(Box::new(handler));
        self.shared.has_handlers.store(true, Ordering::Release);
    }

    /// Calls `hook` after every accepted connection, reconnections included, on the dispatcher
    /// thread, in order with the messages.
    pub fn on_connect(&self, hook: impl FnMut() + Send + 'static) {
        self.callbacks().on_connect.push(Box::new(hook));
        self.shared.has_handlers.store(true, Ordering::Release);
    }

    /// Calls `hook` whenever the connection is lost (not after [`disconnect`](Self::disconnect)),
    /// on the dispatcher thread; the client reconnects by itself if its reconnect options say so.
    pub fn on_disconnect(&self, hook: impl FnMut() + Send + 'static) {
        self.callbacks().on_disconnect.push(Box::new(hook));
        self.shared.has_handlers.store(true, Ordering::Release);
    }

    fn callbacks(&self) -> MutexGuard<'_, Callbacks> {
        self.shared.callbacks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next message, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Publish> {
        self.shared.messages.lock().unwrap_or_else(|e| e.into_inner()).recv_timeout(timeout).ok()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().driver.is_connected()
    }

    /// The oldest connection change not taken yet: connected (after a reconnection too), or
    /// lost and why. The client reconnects by itself; this says when, for a program that
    /// reports it.
    pub fn connection_event(&self) -> Option<ConnectionEvent> {
        self.shared.lock().events.pop_front()
    }

    /// Replaces the automatic reconnect policy; it applies from the next time the connection is
    /// lost.
    pub fn set_reconnect_options(&self, options: ReconnectOptions) {
        self.shared.lock().driver.set_reconnect_options(options);
    }

    /// MQTT 5: starts re-authenticating the live connection with `data`; the
    /// [`AuthHandler`](ConnectOptions::auth) answers the server's challenges.
    pub fn reauthenticate(&self, data: Option<Bytes>) -> Result<(), Error> {
        let mut st = self.shared.lock();
        let now = self.shared.now();
        st.driver.reauthenticate(now, data).map_err(Error::from)?;
        self.shared.settle(&mut st);
        Ok(())
    }

    /// Sends DISCONNECT, closes the connection and stops the I/O thread.
    pub fn disconnect(&self) -> Result<(), Error> {
        self.disconnect_with(Disconnect::default())
    }

    /// [`disconnect`](Self::disconnect) with a reason code and MQTT 5 properties (Session
    /// Expiry Interval, Reason String, User Properties).
    pub fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), Error> {
        // Already stopped, or the DISCONNECT lost with the connection: stopped all the same.
        let _ = self.call(|d, now, w| d.disconnect(now, disconnect, w));
        self.stop();
        Ok(())
    }

    fn stop(&self) {
        self.owner.stop();
    }

    /// Hands a command and its waiter to the driver, writes what it has to send, and waits for
    /// the answer.
    fn call(
        &self,
        command: impl FnOnce(&mut Driver<Waiter>, Instant, Waiter) -> Result<(), CommandError>,
    ) -> Result<Vec<ReasonCode>, Error> {
        let (tx, rx) = sync_channel(1);
        {
            let mut st = self.shared.lock();
            let now = self.shared.now();
            command(&mut st.driver, now, tx).map_err(Error::from)?;
            self.shared.settle(&mut st);
        }
        match rx.recv_timeout(self.shared.timeout) {
            Ok(Ok(codes)) => Ok(codes),
            Ok(Err(reason)) => Err(Error::Disconnected(reason)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(RecvTimeoutError::Disconnected) => {
                let reason = self.shared.lock().driver.last_disconnect().cloned();
                Err(Error::Disconnected(reason.unwrap_or(DisconnectReason::Requested)))
            }
        }
    }
}

/// Where received messages go: the `recv_timeout` queue and the callbacks' dispatcher.
struct Sinks {
    recv: SyncSender<Publish>,
    dispatch: SyncSender<Dispatch>,
}

impl Sinks {
    fn dispatch(&self, d: Dispatch, callbacks: bool) {
        if callbacks && let Err(TrySendError::Full(d)) = self.dispatch.try_send(d) {
            match d {
                Dispatch::Message(p) => {
                    log::warn!("message handlers are behind; dropped a message on {}", p.topic);
                }
                _ => log::warn!("message handlers are behind; dropped a connection hook"),
            }
        }
    }

    fn deliver(&self, p: Publish, handlers: bool) {
        if handlers {
            self.dispatch(Dispatch::Message(p.clone()), true);
        }
        if let Err(TrySendError::Full(p)) = self.recv.try_send(p) {
            log::warn!("recv_timeout queue is full; dropped a message on {}", p.topic);
        }
    }
}

/// The I/O thread: read (no longer than until the core's next deadline), feed the driver, run
/// its timers, and dial again when it asks.
fn io_loop(shared: &Shared, mut reader: Option<Box<dyn TransportReader>>) {
    let mut buf = vec![0u8; READ_CHUNK];
    // A packet split across reads waits here for its rest.
    let mut input = BytesMut::new();
    loop {
        let wait = {
            let st = shared.lock();
            if st.stopping || st.driver.is_stopped() {
                break;
            }
            let wait = st.driver.timeout_in(shared.now()).unwrap_or(POLL);
            wait.clamp(Duration::from_millis(1), POLL)
        };
        let mut read = 0;
        let mut closed = false;
        match reader.as_mut() {
            Some(r) => match r.read_within(&mut buf, wait) {
                Ok(0) => closed = true,
                Ok(n) => read = n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => closed = true,
            },
            None => std::thread::sleep(wait),
        }
        let redial = {
            let mut st = shared.lock();
            if st.stopping {
                break;
            }
            let now = shared.now();
            if read > 0 {
                if let Some(trace) = st.trace.as_mut() {
                    trace.feed(Direction::Received, &buf[..read]);
                }
                input.extend_from_slice(&buf[..read]);
                st.driver.handle_bytes(now, &mut input);
            }
            if closed {
                reader = None;
                close(&mut st);
                st.driver.handle_closed(now);
            }
            st.driver.handle_timeout(now);
            shared.settle(&mut st);
            std::mem::take(&mut st.redial)
        };
        if redial {
            // Dial without the lock: connecting may take a while.
            let result = (shared.dial)();
            let mut st = shared.lock();
            let now = shared.now();
            match result {
                Ok(Transport { reader: r, writer: w }) => {
                    st.writer = Some(w);
                    reader = Some(r);
                    input.clear();
                    if let Some(trace) = st.trace.as_mut() {
                        trace.reset();
                    }
                    st.driver.handle_reconnected(now);
                }
                Err(_) => st.driver.handle_dial_failed(now),
            }
            shared.settle(&mut st);
        }
    }
    // Ends the dispatcher thread and the recv_timeout queue.
    shared.lock().sinks = None;
}
