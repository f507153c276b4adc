//! The MQTT broker server, written once for every async runtime: TCP listeners around one
//! sans-IO [`Broker`](ternmq_core::broker::Broker).
//!
//! Tasks and their jobs:
//! - one accept task per listener hands new sockets to the core task;
//! - one task per connection reads (taking a buffer only once the socket is readable, so an idle
//!   connection holds none), hands the bytes to the core task, and writes what the core task
//!   queued for it with vectored writes, reporting how much it wrote;
//! - the core task owns the broker through a [`Driver`]. It takes its input in batches
//!   (everything waiting, up to a bound), then carries out the driver's actions and sleeps
//!   until the next deadline.
//!
//! Flow control: each connection has a window of bytes handed to it but not yet written
//! ([`WRITE_WINDOW`](ternmq_core::broker::driver::WRITE_WINDOW)). When the window is full the
//! rest stays in the core, whose limits for slow consumers then apply (QoS 0 dropped, QoS 1 and
//! 2 queued in the session), so a stalled reader grows no memory here. Protocol decisions are
//! the core's; this module only moves bytes and time, through a [`ServerRuntime`].

use crate::cluster::{ClusterIn, ClusterInbox};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use async_channel::{self as channel, Receiver, Sender};
use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use futures_lite::future;
use ternmq_core::bridge::BridgeConfig;
pub use ternmq_core::broker::driver::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer,
};
use ternmq_core::broker::driver::{Command, Driver, NO_ASYNC_AUTHENTICATOR, consume, log_event};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::codec::MqttStr;
use ternmq_core::time::Instant;
use ternmq_store::{Store, StoreConfig, Writer};

use crate::control::{Control, ControlInbox};
use crate::proxy::ProxyHeader;
use crate::tls::TlsAcceptor;
use crate::transport::{ClientTransport, Stack, Transform};
use crate::ws::WsSession;
use crate::{Runtime, within};

/// Bytes one read may bring in.
pub const READ_CHUNK: usize = 16 * 1024;
/// Inputs the core task takes before it drains output again.
const BATCH: usize = 256;
/// Inputs waiting for the core task, at most: readers wait beyond it. With reads of up to
/// `READ_CHUNK` bytes this bounds what is read ahead of the core to 1 MiB: deeper, a flood of
/// publishers raised the peak memory by megabytes and the throughput not at all (measured with
/// `scripts/bench-vs-peers.sh`).
const INPUT_QUEUE: usize = 64;

/// What the server needs from a runtime beyond what the client does: listeners, and sockets
/// it can wait on for readability and then read or write without waiting. Each method is a
/// thin call into the runtime.
pub trait ServerRuntime: Runtime {
    /// A bound TCP listener.
    type Listener: Send + Sync + 'static;
    /// An accepted TCP connection.
    type Stream: Send + Sync + 'static;

    /// A TCP connection to `host:port` (a bridge's remote broker).
    fn connect(host: &str, port: u16) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Binds a listener on `addr`.
    fn bind(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// The address `listener` is bound to.
    fn local_addr(listener: &Self::Listener) -> io::Result<SocketAddr>;

    /// The next connection and its peer's address.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send + '_;

    /// Turns Nagle's algorithm off.
    fn set_nodelay(stream: &Self::Stream) -> io::Result<()>;

    /// Ready once `stream` may be read without waiting (or has failed).
    fn poll_read_ready(stream: &Self::Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what is there now into `buf`'s spare room, without waiting (`WouldBlock` when
    /// nothing is).
    fn try_read_buf(stream: &Self::Stream, buf: &mut BytesMut) -> io::Result<usize>;

    /// Writes what the socket takes now of `bufs`, without waiting.
    fn try_write_vectored(stream: &Self::Stream, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Writes some of `bufs`, waiting until the socket takes something.
    fn write_vectored<'a>(
        stream: &'a mut Self::Stream,
        bufs: &'a [IoSlice<'a>],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Reads into `buf`, waiting for something to read; `Ok(0)` at the end of the stream.
    fn read_into<'a>(
        stream: &'a mut Self::Stream,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Shuts the writing side down (sends FIN).
    fn shutdown(stream: &mut Self::Stream) -> impl Future<Output = ()> + Send + '_;

    /// The sending side of the core task's input queue: a bounded queue with many senders
    /// and one receiver, the runtime's own (its busiest path: every read and every write
    /// report goes through it).
    type Sender<T: Send + 'static>: Clone + Send + Sync + 'static;
    /// The receiving side of the input queue.
    type Receiver<T: Send + 'static>: Send + 'static;

    /// A bounded input queue.
    fn channel<T: Send + 'static>(capacity: usize) -> (Self::Sender<T>, Self::Receiver<T>);

    /// Queues `value` if there is room now.
    fn try_send<T: Send + 'static>(tx: &Self::Sender<T>, value: T) -> Result<(), TrySend<T>>;

    /// Queues `value`, waiting for room; `false` once the receiver is gone.
    fn send<T: Send + 'static>(
        tx: &Self::Sender<T>,
        value: T,
    ) -> impl Future<Output = bool> + Send + '_;

    /// Queues `value` from a thread that may block (the store's writer); `false` once the
    /// receiver is gone.
    fn send_blocking<T: Send + 'static>(tx: &Self::Sender<T>, value: T) -> bool;

    /// The next value if one is waiting; `Err(true)` once every sender is gone.
    fn try_recv<T: Send + 'static>(rx: &mut Self::Receiver<T>) -> Result<T, bool>;

    /// The next value, waiting for one; `None` once every sender is gone.
    fn recv<T: Send + 'static>(
        rx: &mut Self::Receiver<T>,
    ) -> impl Future<Output = Option<T>> + Send + '_;

    /// Runs `job` where it may block, and completes with its result (`None` if it panicked).
    fn spawn_blocking<T: Send + 'static>(
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Option<T>> + Send;
}

/// Why [`ServerRuntime::try_send`] did not queue a value.
#[derive(Debug)]
pub enum TrySend<T> {
    /// The queue is full: the value is given back.
    Full(T),
    /// The receiver is gone.
    Closed,
}

/// A runtime that can run a future to completion on the calling thread: its [`Server`] then
/// also has [`bind_blocking`](Server::bind_blocking) and [`run_blocking`](Server::run_blocking),
/// for programs with no executor of their own.
pub trait BlockOn: ServerRuntime {
    /// Runs `fut` on the calling thread until it completes.
    fn block_on<F: Future>(fut: F) -> F::Output;
}

/// What a server runs: the broker's configuration and where to listen. The same for every
/// server, async or not.
///
/// A deferred decision (the core's authenticator or authorizer answered `Defer`) goes to the
/// async hook if there is one, else to the blocking one, on any server: an async server runs a
/// blocking hook on its runtime's blocking pool, the std server runs either kind on a thread
/// of its own. Without either, a deferred request is refused.
#[derive(Clone)]
pub struct ServerConfig {
    /// The broker core's options and limits.
    pub broker: BrokerConfig,
    /// Where to listen and what each listener speaks.
    pub listeners: Vec<Listener>,
    /// Answers the authenticator's `Defer`s.
    pub async_authenticator: Option<Arc<dyn AsyncAuthenticator>>,
    /// Answers the authorizer's `Defer`s.
    pub async_authorizer: Option<Arc<dyn AsyncAuthorizer>>,
    /// Answers the authenticator's `Defer`s, blocking (when there is no async one).
    pub blocking_authenticator: Option<Arc<dyn BlockingAuthenticator>>,
    /// Answers the authorizer's `Defer`s, blocking (when there is no async one).
    pub blocking_authorizer: Option<Arc<dyn BlockingAuthorizer>>,
    /// Where durable state is kept, and how; `None` keeps everything in memory.
    pub store: Option<StoreConfig>,
    /// Bridges to other brokers.
    pub bridges: Vec<BridgeSpec>,
    /// The cluster's backplane, if this broker is one node of a cluster; `None` runs alone,
    /// with no backplane at all. (The std server has none.)
    pub cluster: Option<Arc<dyn crate::cluster::ClusterLink>>,
}

/// A bridge to run: what the core's [`BridgeConfig`] says, and how to reach each of its
/// addresses.
#[derive(Clone, Debug)]
pub struct BridgeSpec {
    /// The bridge.
    pub config: BridgeConfig,
    /// Its addresses, in the order they are tried.
    pub addresses: Vec<BridgeAddress>,
}

/// One address of a bridge's remote broker.
#[derive(Clone, Debug)]
pub struct BridgeAddress {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS or WebSocket over the TCP connection, if any.
    pub transport: Option<ClientTransport>,
}

/// How long a bridge's TLS or WebSocket handshake may take, on every server.
pub const BRIDGE_HANDSHAKE: Duration = Duration::from_secs(10);

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("broker", &self.broker)
            .field("listeners", &self.listeners)
            .field("async_authenticator", &self.async_authenticator.is_some())
            .field("async_authorizer", &self.async_authorizer.is_some())
            .field("blocking_authenticator", &self.blocking_authenticator.is_some())
            .field("blocking_authorizer", &self.blocking_authorizer.is_some())
            .field("store", &self.store)
            .field("bridges", &self.bridges)
            .field("cluster", &self.cluster.is_some())
            .finish()
    }
}

impl ServerConfig {
    /// The broker's defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            broker: BrokerConfig::default(),
            listeners: vec![addr.into()],
            async_authenticator: None,
            async_authorizer: None,
            blocking_authenticator: None,
            blocking_authorizer: None,
            store: None,
            bridges: Vec::new(),
            cluster: None,
        }
    }

    /// The hook that answers a deferred authentication: the async one, or the blocking one
    /// made a future by `run_blocking`; `None` without either.
    pub fn deferred_authentication(
        &self,
        request: AuthRequest,
        run_blocking: impl FnOnce(Box<dyn FnOnce() -> AuthDecision + Send>) -> AuthFuture,
    ) -> Option<AuthFuture> {
        if let Some(a) = &self.async_authenticator {
            return Some(a.authenticate(request));
        }
        let b = Arc::clone(self.blocking_authenticator.as_ref()?);
        Some(run_blocking(Box::new(move || b.authenticate(request))))
    }

    /// The hook that answers a deferred authorization, as
    /// [`deferred_authentication`](Self::deferred_authentication) does.
    pub fn deferred_authorization(
        &self,
        request: AuthorizeRequest,
        run_blocking: impl FnOnce(Box<dyn FnOnce() -> bool + Send>) -> AuthzFuture,
    ) -> Option<AuthzFuture> {
        if let Some(a) = &self.async_authorizer {
            return Some(a.authorize(request));
        }
        let b = Arc::clone(self.blocking_authorizer.as_ref()?);
        Some(run_blocking(Box::new(move || b.authorize(request))))
    }

    /// Checks the broker's options and that there is a listener, with an error that names
    /// what is wrong. Every server calls it before binding.
    pub fn validate(&self) -> io::Result<()> {
        self.broker
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if self.listeners.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listener configured"));
        }
        Ok(())
    }
}

/// One listener: where, and what it speaks: MQTT over TCP, over TLS ("mqtts"), over
/// WebSocket ("ws"), or over WebSocket over TLS ("wss").
#[derive(Clone, Debug)]
pub struct Listener {
    /// The address (IPv4 or IPv6); port 0 picks a free port.
    pub addr: SocketAddr,
    /// TLS on this listener; none when `None`.
    pub tls: Option<TlsAcceptor>,
    /// WebSocket on this listener, at this path (`/` is accepted too); none when `None`.
    pub ws_path: Option<String>,
    /// Each connection starts with a PROXY protocol header (v1 or v2) from a load balancer,
    /// whose client address replaces the socket's in the log and the hooks.
    pub proxy_protocol: bool,
}

impl From<SocketAddr> for Listener {
    fn from(addr: SocketAddr) -> Self {
        Listener { addr, tls: None, ws_path: None, proxy_protocol: false }
    }
}

impl Listener {
    /// What it speaks, for a startup line: "mqtt over tcp", "mqtt over tls", "mqtt over
    /// websocket" or "mqtt over websocket over tls".
    pub fn kind(&self) -> &'static str {
        match (&self.tls, &self.ws_path) {
            (None, None) => "mqtt over tcp",
            (Some(_), None) => "mqtt over tls",
            (None, Some(_)) => "mqtt over websocket",
            (Some(_), Some(_)) => "mqtt over websocket over tls",
        }
    }

    /// The transport for a new connection on this listener, or `None` for plain TCP.
    /// WebSocket frames may be up to `max_packet_size` and their framing.
    pub fn transport(&self, max_packet_size: u32) -> io::Result<Option<Box<dyn Transform>>> {
        let max_frame = usize::try_from(max_packet_size).unwrap_or(usize::MAX).saturating_add(16);
        let ws = self.ws_path.as_deref().map(|path| WsSession::new(path, max_frame));
        let layers: Option<Box<dyn Transform>> = match (&self.tls, ws) {
            (None, None) => None,
            (Some(tls), None) => Some(Box::new(tls.session()?)),
            (None, Some(ws)) => Some(Box::new(ws)),
            (Some(tls), Some(ws)) => Some(Box::new(Stack::new(tls.session()?, ws))),
        };
        Ok(match (self.proxy_protocol, layers) {
            (false, layers) => layers,
            (true, None) => Some(Box::new(ProxyHeader::new())),
            (true, Some(layers)) => Some(Box::new(Stack::new(ProxyHeader::new(), layers))),
        })
    }
}

/// The error for a listener that could not be bound, naming its address.
pub fn bind_error(addr: &SocketAddr, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
}

/// Stops a running [`Server`] gracefully; cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    stopping: Arc<AtomicBool>,
    /// Wakes an idle core task (a busy one sees `stopping` on its next turn).
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("stopping", &self.stopping.load(Ordering::Relaxed))
            .finish()
    }
}

impl ShutdownHandle {
    /// A handle that sets `stopping` and calls `wake` (once) so that the server's loop looks
    /// at it: for every server, async or not.
    pub fn new(stopping: Arc<AtomicBool>, wake: impl Fn() + Send + Sync + 'static) -> Self {
        Self { stopping, wake: Arc::new(wake) }
    }

    /// Asks the server to stop: it stops accepting, sends DISCONNECT 0x8B (Server shutting down)
    /// to MQTT 5 clients, flushes and closes every connection, and then `run` returns.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }
}

/// A bound MQTT broker server. See the [module documentation](self).
pub struct Server<R: ServerRuntime> {
    listeners: Vec<R::Listener>,
    config: ServerConfig,
    /// The core task's input queue, made at bind so that a shutdown handle can wake it.
    input: (R::Sender<Input<R>>, R::Receiver<Input<R>>),
    stopping: Arc<AtomicBool>,
    store: Option<Store>,
    control: (Control, ControlInbox),
}

impl<R: ServerRuntime> fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addrs", &self.local_addrs()).finish()
    }
}

impl<R: ServerRuntime> Server<R> {
    /// Checks the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> io::Result<Self> {
        config.validate()?;
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            listeners.push(R::bind(l.addr).await.map_err(|e| bind_error(&l.addr, &e))?);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        let input: (R::Sender<Input<R>>, _) = R::channel(INPUT_QUEUE);
        let bound = listeners.iter().map(|l| R::local_addr(l).ok());
        let tx = input.0.clone();
        let control = Control::pair(bound, &config.listeners, move || {
            let _ = R::try_send(&tx, Input::Wake);
        });
        Ok(Server { listeners, config, input, stopping: Arc::default(), store, control })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.control.0.local_addrs()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        let tx = self.input.0.clone();
        ShutdownHandle::new(Arc::clone(&self.stopping), move || {
            let _ = R::try_send(&tx, Input::Wake);
        })
    }

    /// A handle that asks the broker questions and gives it orders, from any thread.
    pub fn control(&self) -> Control {
        self.control.0.clone()
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called. Spawns its tasks with
    /// [`Runtime::spawn`].
    pub async fn run(self) -> io::Result<()> {
        let epoch = StdInstant::now();
        let (tx, rx) = self.input;
        let (done, fail) = (tx.clone(), tx.clone());
        let mut broker_config = self.config.broker.clone();
        broker_config.cluster = self.config.cluster.is_some();
        let (broker, writer) = ternmq_store::start_broker(
            broker_config,
            self.store.zip(self.config.store.as_ref()),
            move |seq| {
                let _ = R::send_blocking(&done, Input::Persisted(seq));
            },
            move |e| {
                let _ = R::send_blocking(&fail, Input::StoreFailed(e.to_string()));
            },
        )?;
        if let Some(sc) = &self.config.store {
            let g = broker.gauges();
            log::info!(
                "restored {} sessions and {} retained messages from {}",
                g.sessions,
                g.retained,
                sc.dir.join(ternmq_store::FILE_NAME).display()
            );
        }
        // Each accept loop ends when its sender is dropped, as the shutdown begins.
        let mut accepting = Vec::with_capacity(self.listeners.len());
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            let (resume, resumed) = channel::bounded::<()>(1);
            accepting.push(resume);
            R::spawn(accept_loop::<R>(listener, index, tx.clone(), resumed));
        }
        let (alive, tasks) = channel::bounded(1);
        let mut core = Core::<R> {
            driver: Driver::new(broker),
            epoch,
            tx,
            hooks: self.config.clone(),
            writer,
            store_failed: None,
            alive: Some(alive),
            tasks,
            accepting,
            inbox: self.control.1,
            runtime: PhantomData,
        };
        core.inbox.started(core.writer.as_ref().map(Writer::metrics));
        if let Some(link) = &self.config.cluster {
            let tx = core.tx.clone();
            link.start(ClusterInbox::new(move |input| {
                let tx = tx.clone();
                Box::pin(async move {
                    let _ = R::send(&tx, Input::Cluster(Box::new(input))).await;
                })
            }));
        }
        for spec in &self.config.bridges {
            let now = core.now();
            core.driver.add_bridge(now, spec.config.clone());
        }
        core.act();
        core.run(rx, &self.stopping).await;
        let failed = core.store_failed.take();
        core.finish().await;
        match failed {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }
}

impl<R: BlockOn> Server<R> {
    /// [`bind`](Self::bind) on the calling thread, for programs with no executor of their own.
    pub fn bind_blocking(config: ServerConfig) -> io::Result<Self> {
        R::block_on(Self::bind(config))
    }

    /// [`run`](Self::run) on the calling thread, for programs with no executor of their own.
    pub fn run_blocking(self) -> io::Result<()> {
        R::block_on(self.run())
    }
}

enum Input<R: ServerRuntime> {
    /// A shutdown or control handle was used (only wakes the core task: `stopping` or the
    /// control inbox says what for).
    Wake,
    Accepted(R::Stream, SocketAddr, u16),
    /// Accepting on this listener failed; it waits for a word to try again.
    AcceptFailed(u16),
    Bytes(ConnId, BytesMut),
    /// Bytes from a bridge's remote broker (the bridge's index).
    BridgeBytes(u32, BytesMut),
    /// A bridge's transport to its remote broker is open (its handle), or could not be.
    Dialed(usize, Option<Handle>),
    /// The TLS handshake told who the client is (before its first bytes).
    Identity(ConnId, MqttStr),
    /// The PROXY protocol told where the client is (before its first bytes).
    PeerAddr(ConnId, SocketAddr),
    /// The transport refused the connection (before any MQTT).
    Refused(ConnId),
    Closed(ConnId),
    Written(ConnId, usize),
    BridgeClosed(u32),
    BridgeWritten(u32, usize),
    Auth(AuthTicket, AuthDecision),
    Persisted(PersistSeq),
    /// What the cluster's backplane reports (boxed: a message is large, and every input of
    /// the queue is as large as the largest).
    Cluster(Box<ClusterIn>),
    Authorized(AuthTicket, bool),
    StoreFailed(String),
}

/// What a connection's task keeps to name itself when it reports: a client's `ConnId`, or a
/// bridge's number ([`BridgeLink`]). Generic rather than an enum so that a client connection's
/// future, most of what an idle connection costs, holds no more than its `ConnId`.
trait Link: Copy + Send + Sync + 'static + fmt::Debug {
    fn bytes<R: ServerRuntime>(self, bytes: BytesMut) -> Input<R>;
    fn closed<R: ServerRuntime>(self) -> Input<R>;
    fn written<R: ServerRuntime>(self, n: usize) -> Input<R>;
    /// The transport refused the connection before any MQTT.
    fn refused<R: ServerRuntime>(self) -> Input<R>;
    /// A client's connection, which the transport may say more about (who, from where).
    fn conn(self) -> Option<ConnId>;
}

impl Link for ConnId {
    fn bytes<R: ServerRuntime>(self, bytes: BytesMut) -> Input<R> {
        Input::Bytes(self, bytes)
    }
    fn closed<R: ServerRuntime>(self) -> Input<R> {
        Input::Closed(self)
    }
    fn written<R: ServerRuntime>(self, n: usize) -> Input<R> {
        Input::Written(self, n)
    }
    fn refused<R: ServerRuntime>(self) -> Input<R> {
        Input::Refused(self)
    }
    fn conn(self) -> Option<ConnId> {
        Some(self)
    }
}

/// A bridge's transport to its remote broker, by the bridge's index.
#[derive(Clone, Copy, Debug)]
struct BridgeLink(u32);

impl Link for BridgeLink {
    fn bytes<R: ServerRuntime>(self, bytes: BytesMut) -> Input<R> {
        Input::BridgeBytes(self.0, bytes)
    }
    fn closed<R: ServerRuntime>(self) -> Input<R> {
        Input::BridgeClosed(self.0)
    }
    fn written<R: ServerRuntime>(self, n: usize) -> Input<R> {
        Input::BridgeWritten(self.0, n)
    }
    fn refused<R: ServerRuntime>(self) -> Input<R> {
        Input::BridgeClosed(self.0)
    }
    fn conn(self) -> Option<ConnId> {
        None
    }
}

async fn accept_loop<R: ServerRuntime>(
    listener: R::Listener,
    index: u16,
    tx: R::Sender<Input<R>>,
    resumed: Receiver<()>,
) {
    loop {
        let next = future::or(async { Some(R::accept(&listener).await) }, async {
            // Nothing is sent while accepting: this ends when the core task lets go of the
            // sender, and the listener closes with us.
            while resumed.recv().await.is_ok() {}
            None
        })
        .await;
        match next {
            None => return,
            Some(Ok((stream, addr))) => {
                if !R::send(&tx, Input::Accepted(stream, addr, index)).await {
                    return;
                }
            }
            Some(Err(e)) => {
                log::warn!("accept failed: {e}");
                // The driver says when to try again.
                if !R::send(&tx, Input::AcceptFailed(index)).await || resumed.recv().await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// What the core task shares with one connection's task: output to write, and whether to
/// close once it is written. Small on purpose: an idle connection costs this, its task and the
/// core's state, no buffers.
#[derive(Debug, Default)]
struct Shared {
    out: Mutex<Vec<Bytes>>,
    closing: AtomicBool,
    /// Drop the connection now, whatever it holds.
    aborted: AtomicBool,
    /// Reading is paused: a subscriber of what this client publishes is behind.
    paused: AtomicBool,
    /// Something changed since the connection's task last looked.
    news: AtomicBool,
    /// Wakes the connection's task. (A notification future would do, but waiting on one makes
    /// every connection's future larger.)
    waker: AtomicWaker,
}

impl Shared {
    /// Tells the connection's task to look again.
    fn notify(&self) {
        self.news.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once the connection is to be dropped.
    fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.aborted.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Ready once [`notify`](Self::notify) was called since the last time it was.
    fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.news.swap(false, Ordering::AcqRel) { Poll::Ready(()) } else { Poll::Pending }
    }
}

type Handle = Arc<Shared>;

struct Core<R: ServerRuntime> {
    driver: Driver<Handle>,
    epoch: StdInstant,
    tx: R::Sender<Input<R>>,
    /// The server's configuration, for its hooks that answer deferred decisions.
    hooks: ServerConfig,
    writer: Option<Writer>,
    /// The store could not be written: the server stops.
    store_failed: Option<String>,
    /// Each connection's task holds a clone; `tasks` reports when the last is gone.
    alive: Option<Sender<()>>,
    tasks: Receiver<()>,
    /// One per listener: a word resumes its accepting; dropped, it stops.
    accepting: Vec<Sender<()>>,
    /// Requests from [`Control`] handles.
    inbox: ControlInbox,
    runtime: PhantomData<R>,
}

/// What ended the core task's wait.
enum Woke<R: ServerRuntime> {
    Input(Option<Input<R>>),
    Timer,
}

impl<R: ServerRuntime> Core<R> {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// How long until the driver's next deadline.
    fn deadline_in(&self) -> Option<Duration> {
        let at = self.driver.poll_timeout()?;
        let at = self.epoch + Duration::from_nanos(at.as_nanos());
        Some(at.saturating_duration_since(StdInstant::now()))
    }

    /// Serves until a shutdown handle is used, and then until the driver has closed every
    /// connection.
    async fn run(&mut self, mut rx: R::Receiver<Input<R>>, stopping: &AtomicBool) {
        loop {
            if self.alive.is_some()
                && (stopping.load(Ordering::Acquire) || self.store_failed.is_some())
            {
                self.begin_shutdown();
            }
            if self.driver.is_finished() {
                return;
            }
            // Under load there is input waiting: it is taken without waiting. Only an idle
            // core task waits, for input (a shutdown handle's wake-up included) or its timer.
            let woke = match R::try_recv(&mut rx) {
                Ok(input) => Some(input),
                Err(true) => return,
                Err(false) => {
                    let wait = self.deadline_in();
                    let input = async { Woke::Input(R::recv(&mut rx).await) };
                    let timer = async {
                        match wait {
                            Some(d) => R::sleep(d).await,
                            None => future::pending().await,
                        }
                        Woke::Timer
                    };
                    match future::or(input, timer).await {
                        Woke::Input(Some(input)) => Some(input),
                        Woke::Input(None) => return,
                        Woke::Timer => None,
                    }
                }
            };
            if let Some(input) = woke {
                self.input(input);
                for _ in 1..BATCH {
                    match R::try_recv(&mut rx) {
                        Ok(input) => self.input(input),
                        Err(_) => break,
                    }
                }
            }
            let now = self.now();
            let driver = &mut self.driver;
            self.inbox.serve(|request| driver.handle_admin(now, request));
            self.driver.handle_timeout(now);
            self.act();
        }
    }

    fn input(&mut self, input: Input<R>) {
        let now = self.now();
        match input {
            Input::Wake => {}
            // Accepted before the shutdown began, seen after: dropped.
            Input::Accepted(..) if self.alive.is_none() => {}
            Input::Accepted(stream, addr, listener) => {
                let _ = R::set_nodelay(&stream);
                let max_packet_size = self.hooks.broker.max_packet_size;
                let layer = match self.hooks.listeners.get(usize::from(listener)) {
                    Some(l) => match l.transport(max_packet_size) {
                        Ok(t) => t,
                        Err(e) => {
                            log::warn!("no transport for {addr}: {e}");
                            return;
                        }
                    },
                    None => None,
                };
                let shared = Handle::default();
                let peer = PeerInfo { addr: Some(addr), listener, identity: None, trusted: false };
                match self.driver.handle_accepted(now, peer, shared.clone()) {
                    Ok(id) => {
                        log::debug!("new connection from {addr} as {id:?}");
                        if let Some(alive) = &self.alive {
                            let tx = self.tx.clone();
                            let alive = alive.clone();
                            match layer {
                                Some(layer) => {
                                    R::spawn(conn_loop::<R, _, _>(
                                        stream, id, shared, tx, alive, layer,
                                    ));
                                }
                                None => {
                                    R::spawn(conn_loop::<R, _, _>(
                                        stream, id, shared, tx, alive, Plain,
                                    ));
                                }
                            }
                        }
                    }
                    Err(e) => log::warn!("refused connection from {addr}: {e}"),
                }
            }
            Input::Identity(id, identity) => self.driver.handle_identity(id, identity),
            Input::PeerAddr(id, addr) => {
                log::debug!("{id:?} is from {addr} (PROXY protocol)");
                self.driver.handle_peer_addr(id, addr);
            }
            Input::Refused(id) => self.driver.handle_refused(now, id),
            Input::AcceptFailed(listener) => self.driver.handle_accept_failed(now, listener),
            Input::Bytes(id, chunk) => self.driver.handle_bytes(now, id, chunk),
            Input::Closed(id) => self.driver.handle_closed(now, id),
            Input::Written(id, n) => self.driver.handle_written(now, id, n),
            Input::BridgeBytes(b, chunk) => {
                self.driver.handle_bridge_bytes(now, b as usize, chunk);
            }
            Input::BridgeClosed(b) => self.driver.handle_bridge_closed(now, b as usize),
            Input::BridgeWritten(b, n) => {
                self.driver.handle_bridge_written(now, b as usize, n);
            }
            Input::Dialed(b, Some(handle)) => self.driver.handle_bridge_dialed(now, b, handle),
            Input::Dialed(b, None) => self.driver.handle_bridge_closed(now, b),
            Input::Auth(ticket, decision) => self.driver.handle_auth(now, ticket, decision),
            Input::Persisted(seq) => self.driver.handle_persisted(now, seq),
            Input::Authorized(ticket, allowed) => {
                self.driver.handle_authorization(now, ticket, allowed);
            }
            Input::Cluster(input) => match *input {
                ClusterIn::Link(up) => {
                    if up {
                        log::info!("cluster backplane connected");
                    } else {
                        log::warn!("cluster backplane lost: serving local clients alone");
                    }
                    self.driver.handle_cluster_link(now, up);
                }
                ClusterIn::Acked(seq) => self.driver.handle_cluster_acked(now, seq),
                ClusterIn::Publish(message, target, position) => {
                    self.driver.handle_cluster_publish(now, message, target, position);
                }
                ClusterIn::Snapshot => self.driver.handle_cluster_snapshot(now),
                ClusterIn::CaughtUp(position) => self.driver.handle_cluster_caught_up(position),
                ClusterIn::Retained(message) => self.driver.handle_cluster_retained(now, message),
                ClusterIn::Takeover(client_id, announce) => {
                    self.driver.handle_cluster_takeover(now, &client_id, announce);
                }
                ClusterIn::Will(message) => {
                    log::info!(
                        "publishing the will on {} of a connection whose node died",
                        message.topic
                    );
                    self.driver.handle_cluster_will(now, message);
                }
                ClusterIn::Figures(reply) => reply.send(self.driver.broker().node_figures()),
                ClusterIn::Nodes(nodes) => self.driver.handle_cluster_nodes(nodes),
                ClusterIn::Claimed(ticket, session, reply) => {
                    let position = self.driver.handle_cluster_claimed(now, ticket, session);
                    if let Some(reply) = reply {
                        reply.send(position);
                    }
                }
                ClusterIn::Release(client_id, reply) => {
                    let session = self.driver.handle_cluster_release(now, &client_id);
                    if session.is_some() {
                        log::info!("client {client_id}: session handed to another node");
                    }
                    reply.send(session);
                }
            },
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
        }
    }

    /// Carries out what the driver asks, and logs what it reports.
    fn act(&mut self) {
        while let Some(command) = self.driver.poll_command() {
            match command {
                Command::Write(h, chunks) => {
                    lock(&h.out).extend(chunks);
                    h.notify();
                }
                // The connection's task writes what it holds, then closes.
                Command::Close(h) => {
                    h.closing.store(true, Ordering::Release);
                    h.notify();
                }
                Command::Abort(h) => {
                    h.aborted.store(true, Ordering::Release);
                    h.notify();
                }
                Command::PauseRead(h) => {
                    log::trace!("pause read");
                    h.paused.store(true, Ordering::Release);
                }
                Command::ResumeRead(h) => {
                    log::trace!("resume read");
                    h.paused.store(false, Ordering::Release);
                    h.notify();
                }
                Command::ResumeAccept(listener) => {
                    if let Some(resume) = self.accepting.get(usize::from(listener)) {
                        let _ = resume.try_send(());
                    }
                }
                Command::Authenticate(ticket, request) => self.authenticate(ticket, request),
                Command::Authorize(ticket, request) => self.authorize(ticket, request),
                Command::Persist(batch) => {
                    if let Some(w) = &self.writer {
                        w.send(batch);
                    }
                }
                Command::Dial { bridge, address } => self.dial(bridge, address),
                Command::Cluster(out) => {
                    if let Some(link) = &self.hooks.cluster {
                        link.send(out);
                    }
                }
                _ => {}
            }
        }
        while let Some(event) = self.driver.poll_event() {
            log_event(&event);
        }
    }

    /// Opens bridge `bridge`'s transport to its address `address`, on a task of its own: TCP,
    /// then the TLS or WebSocket handshake; the connection then runs as any other.
    fn dial(&mut self, bridge: usize, address: usize) {
        let spec = self.hooks.bridges.get(bridge);
        let target = spec.and_then(|b| b.addresses.get(address)).cloned();
        let label = spec.map(|b| b.config.name.clone()).unwrap_or_default();
        let (tx, alive) = (self.tx.clone(), self.alive.clone());
        R::spawn(async move {
            let Some(target) = target else {
                let _ = R::send(&tx, Input::Dialed(bridge, None)).await;
                return;
            };
            let Some(alive) = alive else { return };
            let name = format!("{}:{}", target.host, target.port);
            let open = async {
                let mut stream = R::connect(&target.host, target.port).await?;
                let layer = match &target.transport {
                    Some(t) => {
                        let mut layer = t.session()?;
                        match within::<R, _>(
                            BRIDGE_HANDSHAKE,
                            handshake::<R>(&mut stream, &mut *layer),
                        )
                        .await
                        {
                            Some(result) => result?,
                            None => {
                                return Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "the handshake timed out",
                                ));
                            }
                        }
                        Some(layer)
                    }
                    None => None,
                };
                io::Result::Ok((stream, layer))
            };
            match open.await {
                Ok((stream, layer)) => {
                    let shared = Handle::default();
                    if !R::send(&tx, Input::Dialed(bridge, Some(shared.clone()))).await {
                        return;
                    }
                    let key = BridgeLink(u32::try_from(bridge).unwrap_or(u32::MAX));
                    match layer {
                        Some(layer) => {
                            conn_loop::<R, _, _>(stream, key, shared, tx, alive, layer).await
                        }
                        None => conn_loop::<R, _, _>(stream, key, shared, tx, alive, Plain).await,
                    }
                }
                Err(e) => {
                    log::warn!("bridge {label}: cannot reach {name}: {e}");
                    let _ = R::send(&tx, Input::Dialed(bridge, None)).await;
                }
            }
        });
    }

    fn authenticate(&mut self, ticket: AuthTicket, request: AuthRequest) {
        let blocking = |job: Box<dyn FnOnce() -> AuthDecision + Send>| -> AuthFuture {
            Box::pin(async move { R::spawn_blocking(job).await.unwrap_or(NO_ASYNC_AUTHENTICATOR) })
        };
        match self.hooks.deferred_authentication(request, blocking) {
            Some(fut) => {
                let tx = self.tx.clone();
                R::spawn(async move {
                    let decision = fut.await;
                    let _ = R::send(&tx, Input::Auth(ticket, decision)).await;
                });
            }
            None => {
                log::warn!("an authenticator deferred but no authenticator hook is configured");
                let now = self.now();
                self.driver.handle_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            }
        }
    }

    fn authorize(&mut self, ticket: AuthTicket, request: AuthorizeRequest) {
        let blocking = |job: Box<dyn FnOnce() -> bool + Send>| -> AuthzFuture {
            Box::pin(async move { R::spawn_blocking(job).await.unwrap_or(false) })
        };
        match self.hooks.deferred_authorization(request, blocking) {
            Some(fut) => {
                let tx = self.tx.clone();
                R::spawn(async move {
                    let allowed = fut.await;
                    let _ = R::send(&tx, Input::Authorized(ticket, allowed)).await;
                });
            }
            None => {
                log::warn!("an authorizer deferred but no authorizer hook is configured");
                let now = self.now();
                self.driver.handle_authorization(now, ticket, false);
            }
        }
    }

    /// Stops accepting and has the driver disconnect everyone; the loop goes on until the
    /// driver says every connection is gone.
    fn begin_shutdown(&mut self) {
        self.inbox.stopping();
        self.accepting.clear();
        drop(self.alive.take());
        log::info!("{}", self.driver.broker().stats());
        let now = self.now();
        self.driver.shutdown(now);
        self.act();
    }

    /// After the loop: waits for the connections' tasks to end and commits what was logged.
    async fn finish(mut self) {
        drop(self.alive.take());
        // Every connection's task was told to close or to stop: the channel closes when the
        // last clone of `alive` is gone.
        let _ = self.tasks.recv().await;
        // Everything logged so far is committed before the server returns.
        if let Some(w) = self.writer.take() {
            R::spawn_blocking(move || w.close()).await;
        }
    }
}

/// A mutex's guard, poisoned or not: what the servers keep under a lock (buffers, queues of
/// orders) stays consistent if a holder panicked, and a panic elsewhere must not stop the rest.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: reads and hands the bytes to the core task; writes what the core task
/// queued; closes when asked, after writing the rest; stops at once when aborted.
///
/// An idle connection waits in the `poll_fn` below, and this future's size is most of what
/// each one costs: the states of a write or a send that has to wait are boxed, so that only a
/// connection that is waiting for one holds them.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
fn conn_loop<R: ServerRuntime, L: Layer, K: Link>(
    mut stream: R::Stream,
    link: K,
    shared: Arc<Shared>,
    tx: R::Sender<Input<R>>,
    alive: Sender<()>,
    mut layer: L,
) -> impl Future<Output = ()> + Send {
    // An `async move` block rather than an `async fn`: the latter keeps a second copy of its
    // arguments in the future.
    async move {
        // Held until the task ends: the server's shutdown waits for every connection's.
        let _alive = alive;
        loop {
            if shared.aborted.load(Ordering::Acquire) {
                return;
            }
            // What to tell the core task, and whether that is the last word.
            let written = {
                let mut out = std::mem::take(&mut *lock(&shared.out));
                let total: usize = out.iter().map(Bytes::len).sum();
                if let Some(layer) = layer.session()
                    && total > 0
                {
                    // The broker's plaintext goes out as TLS records; the window counts the
                    // plaintext.
                    out = seal(layer, &out);
                }
                match (total > 0).then(|| write_out::<R>(&mut stream, out, &shared)) {
                    Some(Ok(written)) => Some((total, written)),
                    Some(Err(rest)) => Some((total, rest.await)),
                    None => None,
                }
            };
            let (input, last) = if let Some((total, written)) = written {
                if shared.aborted.load(Ordering::Acquire) {
                    return;
                }
                (if written { link.written(total) } else { link.closed() }, !written)
            } else if shared.closing.load(Ordering::Acquire) {
                if let Some(layer) = layer.session() {
                    layer.close();
                    if let Some(bye) = layer.poll_transmit() {
                        let _ = write_now::<R>(&stream, &mut vec![Bytes::from(bye)]);
                    }
                }
                R::shutdown(&mut stream).await;
                if !Box::pin(linger::<R>(&mut stream, &shared)).await {
                    return;
                }
                // The peer closed too: the driver forgets the connection.
                (link.closed(), true)
            } else {
                let paused = shared.paused.load(Ordering::Acquire);
                // Both waits by polling, with no futures of their own to keep while idle.
                let readable = std::future::poll_fn(|cx| {
                    if shared.poll_news(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if paused {
                        return Poll::Pending;
                    }
                    R::poll_read_ready(&stream, cx).map(|ready| Some(ready.is_ok()))
                })
                .await;
                match readable {
                    None => continue,
                    Some(false) => (link.closed(), true),
                    Some(true) => {
                        // A buffer only once there is something to read: an idle connection
                        // holds none.
                        let mut buf = BytesMut::with_capacity(READ_CHUNK);
                        match R::try_read_buf(&stream, &mut buf) {
                            Ok(0) => (link.closed(), true),
                            Ok(_) if layer.session().is_some() => {
                                let layer = layer.session();
                                let wait = layer_input::<R, K>(
                                    &mut stream,
                                    layer,
                                    link,
                                    &buf,
                                    &tx,
                                    &shared,
                                );
                                match Box::pin(wait).await {
                                    Some(input) => input,
                                    None => continue,
                                }
                            }
                            Ok(_) => (link.bytes(buf), false),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(_) => (link.closed(), true),
                        }
                    }
                }
            };
            let sent = match hand::<R>(&tx, input) {
                Ok(sent) => sent,
                Err(wait) => wait.await,
            };
            if !sent || last {
                return;
            }
        }
    }
}

/// What sits between a connection's socket and the core task: nothing ([`Plain`], which takes
/// no room in a plain connection's future) or a TLS session.
trait Layer: Send + 'static {
    /// The transport, if there is one.
    fn session(&mut self) -> Option<&mut dyn Transform>;
}

/// No layer: plain MQTT over TCP.
struct Plain;

impl Layer for Plain {
    fn session(&mut self) -> Option<&mut dyn Transform> {
        None
    }
}

impl Layer for Box<dyn Transform> {
    fn session(&mut self) -> Option<&mut dyn Transform> {
        Some(&mut **self)
    }
}

/// The broker's MQTT bytes `out`, as what the transport puts on the wire (TLS records,
/// WebSocket frames).
fn seal(layer: &mut dyn Transform, out: &[Bytes]) -> Vec<Bytes> {
    for b in out {
        layer.write_plaintext(b);
    }
    layer.poll_transmit().map(Bytes::from).into_iter().collect()
}

/// Bytes read from a connection with a transport: writes what the transport answers (a TLS
/// handshake or alert, an HTTP answer, a pong), tells the core task who and where the client
/// is once the transport says so, and returns the input for the core task (the MQTT bytes, or
/// the end of the connection), or `None` when there is none yet. Boxed by its caller: plain
/// connections never hold its state.
async fn layer_input<R: ServerRuntime, K: Link>(
    stream: &mut R::Stream,
    layer: Option<&mut dyn Transform>,
    id: K,
    input: &[u8],
    tx: &R::Sender<Input<R>>,
    shared: &Shared,
) -> Option<(Input<R>, bool)> {
    let layer = layer?;
    let mut plain = BytesMut::new();
    let received = layer.handle_input(input, &mut plain);
    // Handshake messages, or the alert that says why the handshake failed.
    if let Some(answer) = layer.poll_transmit() {
        let mut answer = vec![Bytes::from(answer)];
        let written = match write_out::<R>(stream, std::mem::take(&mut answer), shared) {
            Ok(written) => written,
            Err(rest) => rest.await,
        };
        if !written {
            return Some((id.closed(), true));
        }
    }
    let received = match received {
        Ok(received) => received,
        Err(e) => {
            log::info!("connection {id:?} refused: {e}");
            return Some((id.refused(), true));
        }
    };
    if let Some(conn) = id.conn() {
        if let Some(addr) = layer.poll_peer_addr()
            && !R::send(tx, Input::PeerAddr(conn, addr)).await
        {
            return Some((id.closed(), true));
        }
        if let Some(identity) = layer.poll_identity()
            && !R::send(tx, Input::Identity(conn, identity)).await
        {
            return Some((id.closed(), true));
        }
    }
    match (plain.is_empty(), received.closed) {
        (false, false) => Some((id.bytes(plain), false)),
        (true, false) => None,
        // The peer's last bytes, then its close.
        (false, true) if !R::send(tx, id.bytes(plain)).await => Some((id.closed(), true)),
        (_, true) => Some((id.closed(), true)),
    }
}

/// A bridge transport's TLS or WebSocket handshake, before any MQTT.
async fn handshake<R: ServerRuntime>(
    stream: &mut R::Stream,
    layer: &mut dyn Transform,
) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut plain = BytesMut::new();
    loop {
        if let Some(out) = layer.poll_transmit() {
            write_all::<R>(stream, &mut vec![Bytes::from(out)]).await?;
        }
        if layer.is_ready() {
            return Ok(());
        }
        let n = R::read_into(stream, &mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection during the handshake",
            ));
        }
        layer
            .handle_input(&buf[..n], &mut plain)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// After the last packet went out (and our side of the stream is shut): reads and drops what
/// the peer still sends until it closes too (`true`), or until the driver aborts the
/// connection (`false`; see [`Command::Close`]).
async fn linger<R: ServerRuntime>(stream: &mut R::Stream, shared: &Shared) -> bool {
    let mut buf = [0u8; 1024];
    let drain = async {
        while matches!(R::read_into(stream, &mut buf).await, Ok(n) if n > 0) {}
        true
    };
    future::or(drain, async {
        std::future::poll_fn(|cx| shared.poll_aborted(cx)).await;
        false
    })
    .await
}

/// A send to the core task, or a write, that has to wait.
type Wait<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Hands `input` to the core task: `Ok(false)` once the core task is gone. Most sends find
/// room at once; one that has to wait is returned boxed, so that only a connection waiting
/// for room carries the state of the wait.
fn hand<R: ServerRuntime>(tx: &R::Sender<Input<R>>, input: Input<R>) -> Result<bool, Wait<'_>> {
    match R::try_send(tx, input) {
        Ok(()) => Ok(true),
        Err(TrySend::Full(input)) => Err(Box::pin(R::send(tx, input))),
        Err(TrySend::Closed) => Ok(false),
    }
}

/// Writes `out`: `Ok(false)` if the connection failed. What the socket does not take at once
/// is returned as a boxed wait for it to take the rest, which ends early if the driver aborts
/// the connection (its peer read nothing for too long).
fn write_out<'a, R: ServerRuntime>(
    stream: &'a mut R::Stream,
    mut out: Vec<Bytes>,
    shared: &'a Shared,
) -> Result<bool, Wait<'a>> {
    match write_now::<R>(stream, &mut out) {
        Ok(true) => Ok(true),
        Ok(false) => Err(Box::pin(async move {
            let rest = async { write_all::<R>(stream, &mut out).await.is_ok() };
            future::or(rest, async {
                std::future::poll_fn(|cx| shared.poll_aborted(cx)).await;
                false
            })
            .await
        })),
        Err(_) => Ok(false),
    }
}

/// Writes what the socket takes of `out` now, removing what was written: `Ok(true)` when that
/// was all of it.
fn write_now<R: ServerRuntime>(stream: &R::Stream, out: &mut Vec<Bytes>) -> io::Result<bool> {
    let mut first = 0;
    while first < out.len() {
        let slices: Vec<IoSlice<'_>> =
            out[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        match R::try_write_vectored(stream, &slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => first = consume(out, first, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    out.drain(..first);
    Ok(out.is_empty())
}

/// Writes every buffer in `bufs` with vectored writes, emptying it.
async fn write_all<R: ServerRuntime>(
    stream: &mut R::Stream,
    bufs: &mut Vec<Bytes>,
) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> =
            bufs[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        let n = R::write_vectored(stream, &slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        first = consume(bufs, first, n);
    }
    bufs.clear();
    Ok(())
}

/// The size of an idle connection's future on runtime `R`, with `stream` (a test's socket):
/// what each connection costs besides the core's state. For the runtimes' tests.
#[doc(hidden)]
pub fn idle_connection_future_size<R: ServerRuntime>(stream: R::Stream) -> usize {
    let (tx, _rx) = R::channel(1);
    let (alive, _tasks) = channel::bounded(1);
    let mut broker = ternmq_core::broker::Broker::new(BrokerConfig::default(), Instant::ZERO)
        .unwrap_or_else(|e| unreachable!("the default configuration is valid: {e}"));
    let id = broker
        .accept(Instant::ZERO, PeerInfo::default())
        .unwrap_or_else(|e| unreachable!("a new broker accepts a connection: {e}"));
    let fut = conn_loop::<R, _, _>(stream, id, Arc::default(), tx, alive, Plain);
    std::mem::size_of_val(&fut)
}
