//! The MQTT broker server on Tokio: TCP listeners around one sans-IO
//! [`Broker`](ternmq_core::broker::Broker).
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
//! the core's; this module only moves bytes and time.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::driver::{
    Action, Driver, LINGER, NO_ASYNC_AUTHENTICATOR, SHUTDOWN_FLUSH, WRITE_TIMEOUT, consume,
    log_event,
};
pub use ternmq_core::broker::driver::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::time::Instant;
use ternmq_store::{Store, StoreConfig, Writer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Bytes one read may bring in.
const READ_CHUNK: usize = 16 * 1024;
/// Inputs the core task takes before it drains output again.
const BATCH: usize = 256;
/// Inputs waiting for the core task, at most: readers wait beyond it. With reads of up to
/// `READ_CHUNK` bytes this bounds what is read ahead of the core to 4 MiB.
const INPUT_QUEUE: usize = 256;

/// What a [`Server`] runs: the broker's configuration and where to listen.
#[derive(Clone)]
pub struct ServerConfig {
    /// The broker core's options and limits.
    pub broker: BrokerConfig,
    /// Addresses to listen on (IPv4 or IPv6); port 0 picks a free port.
    pub listeners: Vec<SocketAddr>,
    /// Answers the authenticator's `Defer`s; without it a deferred request is refused.
    pub async_authenticator: Option<Arc<dyn AsyncAuthenticator>>,
    /// Answers the authorizer's `Defer`s; without it a deferred request is refused.
    pub async_authorizer: Option<Arc<dyn AsyncAuthorizer>>,
    /// Where durable state is kept, and how; `None` keeps everything in memory.
    pub store: Option<StoreConfig>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("broker", &self.broker)
            .field("listeners", &self.listeners)
            .field("async_authenticator", &self.async_authenticator.is_some())
            .field("async_authorizer", &self.async_authorizer.is_some())
            .field("store", &self.store)
            .finish()
    }
}

impl ServerConfig {
    /// The broker's defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            broker: BrokerConfig::default(),
            listeners: vec![addr],
            async_authenticator: None,
            async_authorizer: None,
            store: None,
        }
    }
}

/// Stops a running [`Server`] gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the server to stop: it stops accepting, sends DISCONNECT 0x8B (Server shutting down)
    /// to MQTT 5 clients, flushes and closes every connection, and then `run` returns.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A bound MQTT broker server. See the [module documentation](self).
pub struct Server {
    listeners: Vec<TcpListener>,
    config: ServerConfig,
    shutdown: Arc<watch::Sender<bool>>,
    store: Option<Store>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addrs", &self.local_addrs()).finish()
    }
}

impl Server {
    /// Checks the configuration and binds every listener.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        config
            .broker
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if config.listeners.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listener configured"));
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for addr in &config.listeners {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(listener);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        let (tx, _) = watch::channel(false);
        Ok(Server { listeners, config, shutdown: Arc::new(tx), store })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called.
    pub async fn run(self) -> io::Result<()> {
        let epoch = StdInstant::now();
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (done, fail) = (tx.clone(), tx.clone());
        let (broker, writer) = ternmq_store::start_broker(
            self.config.broker.clone(),
            self.store.zip(self.config.store.as_ref()),
            move |seq| {
                let _ = done.blocking_send(Input::Persisted(seq));
            },
            move |e| {
                let _ = fail.blocking_send(Input::StoreFailed(e.to_string()));
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
        let mut acceptors = Vec::new();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let tx = tx.clone();
            let listener_index = u16::try_from(index).unwrap_or(u16::MAX);
            acceptors.push(tokio::spawn(accept_loop(listener, listener_index, tx)));
        }
        let mut core = CoreTask {
            driver: Driver::new(broker),
            epoch,
            tx,
            auth: self.config.async_authenticator.clone(),
            tasks: JoinSet::new(),
            writer,
            authz: self.config.async_authorizer.clone(),
            store_failed: None,
        };
        let mut stop = self.shutdown.subscribe();
        core.run(rx, &mut stop).await;
        for a in &acceptors {
            a.abort();
        }
        let failed = core.store_failed.take();
        core.shutdown().await;
        match failed {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }
}

enum Input {
    Accepted(TcpStream, SocketAddr, u16),
    Bytes(ConnId, BytesMut),
    Closed(ConnId),
    Written(ConnId, usize),
    Auth(AuthTicket, AuthDecision),
    Persisted(PersistSeq),
    Authorized(AuthTicket, bool),
    StoreFailed(String),
}

async fn accept_loop(listener: TcpListener, index: u16, tx: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if tx.send(Input::Accepted(stream, addr, index)).await.is_err() {
                    return;
                }
            }
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(e) => {
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
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
    /// Reading is paused: a subscriber of what this client publishes is behind.
    paused: AtomicBool,
    /// Something changed since the connection's task last looked.
    news: AtomicBool,
    /// Wakes the connection's task. (A `Notify` would do, but waiting on one makes every
    /// connection's future larger.)
    waker: AtomicWaker,
}

impl Shared {
    /// Tells the connection's task to look again.
    fn notify(&self) {
        self.news.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once [`notify`](Self::notify) was called since the last time it was.
    fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.news.swap(false, Ordering::AcqRel) { Poll::Ready(()) } else { Poll::Pending }
    }
}

type Handle = Arc<Shared>;

struct CoreTask {
    driver: Driver<Handle>,
    epoch: StdInstant,
    tx: mpsc::Sender<Input>,
    auth: Option<Arc<dyn AsyncAuthenticator>>,
    tasks: JoinSet<()>,
    writer: Option<Writer>,
    authz: Option<Arc<dyn AsyncAuthorizer>>,
    /// The store could not be written: the server stops.
    store_failed: Option<String>,
}

impl CoreTask {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        let at = self.driver.poll_timeout()?;
        let at = self.epoch + Duration::from_nanos(at.as_nanos());
        Some(tokio::time::Instant::from_std(at))
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Input>, stop: &mut watch::Receiver<bool>) {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(input);
                    if self.store_failed.is_some() {
                        return;
                    }
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(input) => self.input(input),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until(deadline) => {}
            }
            let now = self.now();
            self.driver.timeout(now);
            self.act();
            // Reap finished tasks so the set does not grow with every connection ever made.
            while self.tasks.try_join_next().is_some() {}
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Accepted(stream, addr, listener) => {
                let _ = stream.set_nodelay(true);
                let shared = Handle::default();
                let peer = PeerInfo { addr: Some(addr), listener };
                match self.driver.accepted(now, peer, shared.clone()) {
                    Ok(id) => {
                        log::debug!("new connection from {addr} as {id:?}");
                        self.tasks.spawn(conn_loop(stream, id, shared, self.tx.clone()));
                    }
                    Err(e) => log::warn!("refused connection from {addr}: {e}"),
                }
            }
            Input::Bytes(id, chunk) => self.driver.input(now, id, chunk),
            Input::Closed(id) => self.driver.closed(now, id),
            Input::Written(id, n) => self.driver.written(id, n),
            Input::Auth(ticket, decision) => self.driver.resolve_auth(now, ticket, decision),
            Input::Persisted(seq) => self.driver.persisted(now, seq),
            Input::Authorized(ticket, allowed) => {
                self.driver.resolve_authorization(now, ticket, allowed);
            }
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
        }
    }

    /// Carries out what the driver asks.
    fn act(&mut self) {
        while let Some(action) = self.driver.poll_action() {
            match action {
                Action::Write(h, chunks) => {
                    lock(&h.out).extend(chunks);
                    h.notify();
                }
                // The connection's task writes what it holds, then closes.
                Action::Close(h) => {
                    h.closing.store(true, Ordering::Release);
                    h.notify();
                }
                Action::PauseRead(h) => {
                    log::trace!("pause read");
                    h.paused.store(true, Ordering::Release);
                }
                Action::ResumeRead(h) => {
                    log::trace!("resume read");
                    h.paused.store(false, Ordering::Release);
                    h.notify();
                }
                Action::Authenticate(ticket, request) => self.authenticate(ticket, request),
                Action::Log(event) => log_event(&event),
                Action::Authorize(ticket, request) => match &self.authz {
                    Some(a) => {
                        let fut = a.authorize(request);
                        let tx = self.tx.clone();
                        tokio::spawn(async move {
                            let allowed = fut.await;
                            let _ = tx.send(Input::Authorized(ticket, allowed)).await;
                        });
                    }
                    None => {
                        log::warn!("an authorizer deferred but no async authorizer is configured");
                        let now = self.now();
                        self.driver.resolve_authorization(now, ticket, false);
                    }
                },
                Action::Persist(batch) => {
                    if let Some(w) = &self.writer {
                        w.send(batch);
                    }
                }
                _ => {}
            }
        }
    }

    fn authenticate(&mut self, ticket: AuthTicket, request: AuthRequest) {
        match &self.auth {
            Some(auth) => {
                let fut = auth.authenticate(request);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let decision = fut.await;
                    let _ = tx.send(Input::Auth(ticket, decision)).await;
                });
            }
            None => {
                log::warn!("an authenticator deferred but no async authenticator is configured");
                let now = self.now();
                self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            }
        }
    }

    async fn shutdown(mut self) {
        log::info!("{}", stats_summary(self.driver.broker().stats()));
        let now = self.now();
        self.driver.shutdown(now);
        self.act();
        let mut tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        // Everything logged so far is committed before the server returns.
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.close()).await;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: reads and hands the bytes to the core task; writes what the core task
/// queued; closes when asked, after writing the rest.
///
/// An idle connection waits in the `poll_fn` below, and this future's size is most of what
/// each one costs: the states of a write or a send that has to wait are boxed, so that only a
/// connection that is waiting for one holds them.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
fn conn_loop(
    mut stream: TcpStream,
    id: ConnId,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Input>,
) -> impl Future<Output = ()> + Send {
    // An `async move` block rather than an `async fn`: the latter keeps a second copy of its
    // arguments in the future.
    async move {
        loop {
            // What to tell the core task, and whether that is the last word.
            let written = {
                let out = std::mem::take(&mut *lock(&shared.out));
                let total: usize = out.iter().map(Bytes::len).sum();
                match (!out.is_empty()).then(|| write_out(&mut stream, out)) {
                    Some(Ok(written)) => Some((total, written)),
                    Some(Err(rest)) => Some((total, rest.await)),
                    None => None,
                }
            };
            let (input, last) = if let Some((total, written)) = written {
                (if written { Input::Written(id, total) } else { Input::Closed(id) }, !written)
            } else if shared.closing.load(Ordering::Acquire) {
                let _ = stream.shutdown().await;
                Box::pin(linger(&mut stream)).await;
                return;
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
                    stream.poll_read_ready(cx).map(|ready| Some(ready.is_ok()))
                })
                .await;
                match readable {
                    None => continue,
                    Some(false) => (Input::Closed(id), true),
                    Some(true) => {
                        // A buffer only once there is something to read: an idle connection
                        // holds none.
                        let mut buf = BytesMut::with_capacity(READ_CHUNK);
                        match stream.try_read_buf(&mut buf) {
                            Ok(0) => (Input::Closed(id), true),
                            Ok(_) => (Input::Bytes(id, buf), false),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(_) => (Input::Closed(id), true),
                        }
                    }
                }
            };
            let sent = match hand(&tx, input) {
                Ok(sent) => sent,
                Err(wait) => wait.await,
            };
            if !sent || last {
                return;
            }
        }
    }
}

/// After the last packet went out (and our side of the stream is shut): reads and drops what
/// the peer still sends until it closes too, for at most [`LINGER`] (whose documentation says
/// why).
async fn linger(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A send to the core task, or a write, that has to wait.
type Wait<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Hands `input` to the core task: `Ok(false)` once the core task is gone. Most sends find
/// room at once; one that has to wait is returned boxed, so that only a connection waiting
/// for room carries the state of the wait.
fn hand(tx: &mpsc::Sender<Input>, input: Input) -> Result<bool, Wait<'_>> {
    match tx.try_send(input) {
        Ok(()) => Ok(true),
        Err(mpsc::error::TrySendError::Full(input)) => {
            Err(Box::pin(async move { tx.send(input).await.is_ok() }))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
    }
}

/// Writes `out`: `Ok(false)` if the connection failed. What the socket does not take at once
/// is returned as a boxed wait for it to take the rest (at most [`WRITE_TIMEOUT`]).
fn write_out(stream: &mut TcpStream, mut out: Vec<Bytes>) -> Result<bool, Wait<'_>> {
    match write_now(stream, &mut out) {
        Ok(true) => Ok(true),
        Ok(false) => Err(Box::pin(async move {
            let rest = tokio::time::timeout(WRITE_TIMEOUT, write_all(stream, &mut out));
            matches!(rest.await, Ok(Ok(())))
        })),
        Err(_) => Ok(false),
    }
}

/// Writes what the socket takes of `out` now, removing what was written: `Ok(true)` when that
/// was all of it.
fn write_now(stream: &TcpStream, out: &mut Vec<Bytes>) -> io::Result<bool> {
    let mut first = 0;
    while first < out.len() {
        let slices: Vec<IoSlice<'_>> =
            out[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        match stream.try_write_vectored(&slices) {
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
async fn write_all(write: &mut TcpStream, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> =
            bufs[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        let n = write.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        first = consume(bufs, first, n);
    }
    bufs.clear();
    Ok(())
}

/// The broker's counters as a sentence for the log at shutdown; the counters of rare events
/// (drops, flow control) only when they are not zero.
fn stats_summary(s: &ternmq_core::broker::Stats) -> String {
    let mut out = format!(
        "statistics since start: connections {} accepted, {} refused; clients connected {}; \
         messages {} received, {} sent; bytes {} received, {} sent",
        s.connections_accepted,
        s.connections_refused,
        s.clients_connected_total,
        s.messages_received,
        s.messages_sent,
        s.bytes_received,
        s.bytes_sent
    );
    let rare = [
        (s.dropped_queue_full, "dropped (queue full)"),
        (s.dropped_slow_consumer, "dropped (slow consumer)"),
        (s.dropped_expired, "dropped (expired)"),
        (s.dropped_too_large, "dropped (too large for the receiver)"),
        (s.dropped_no_member, "dropped (no shared-subscription member left)"),
        (s.publish_denied, "publishes denied"),
        (s.sessions_expired, "sessions expired"),
        (s.acks_delayed, "acknowledgements withheld"),
        (s.slow_consumers, "slow consumers"),
        (s.inputs_paused, "publishers paused"),
        (s.shared_redelivered, "shared-subscription messages redelivered"),
    ];
    for (n, what) in rare.into_iter().filter(|(n, _)| *n > 0) {
        out.push_str(&format!("; {what} {n}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What an idle connection costs this runtime is mostly its task, whose size is the
    /// connection future's.
    #[tokio::test]
    async fn an_idle_connections_future_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let mut broker =
            ternmq_core::broker::Broker::new(BrokerConfig::default(), Instant::ZERO).unwrap();
        let id = broker.accept(Instant::ZERO, PeerInfo::default()).unwrap();
        let fut = conn_loop(stream, id, Arc::default(), tx);
        let size = std::mem::size_of_val(&fut);
        // At this size Tokio's task cell (128-byte aligned) is 256 bytes.
        assert!(size <= 160, "the connection future takes {size} bytes");
    }
}
