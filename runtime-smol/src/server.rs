//! The MQTT broker server on smol (async-io's reactor, async-channel, futures-lite).
//!
//! The same shape as the Tokio server: an accept task per listener, one task per connection
//! (it waits for readability before taking a read buffer, and writes what the core task queued
//! for it with vectored writes), and one task that owns the broker through a [`Driver`] and
//! takes its input in batches. Protocol decisions are the core's.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use smol::channel::{self, Receiver, Sender};
use smol::{Async, Task, Timer, future};
use ternmq_core::broker::driver::{
    Action, Driver, LINGER, NO_ASYNC_AUTHENTICATOR, SHUTDOWN_FLUSH, WRITE_TIMEOUT, consume,
    log_event,
};
pub use ternmq_core::broker::driver::{AsyncAuthenticator, AuthFuture};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::time::Instant;
use ternmq_store::{Store, StoreConfig, Writer};

const READ_CHUNK: usize = 16 * 1024;
const BATCH: usize = 256;
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
    /// Where durable state is kept, and how; `None` keeps everything in memory.
    pub store: Option<StoreConfig>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("broker", &self.broker)
            .field("listeners", &self.listeners)
            .field("async_authenticator", &self.async_authenticator.is_some())
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
            store: None,
        }
    }
}

/// Stops a running [`Server`] gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Sender<()>);

impl ShutdownHandle {
    /// Asks the server to stop: it stops accepting, sends DISCONNECT 0x8B (Server shutting down)
    /// to MQTT 5 clients, flushes and closes every connection, and then `run` returns.
    pub fn shutdown(&self) {
        let _ = self.0.try_send(());
    }
}

/// A bound MQTT broker server on smol.
pub struct Server {
    listeners: Vec<Async<TcpListener>>,
    config: ServerConfig,
    stop: (Sender<()>, Receiver<()>),
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
            let l = Async::<TcpListener>::bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(l);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        Ok(Server { listeners, config, stop: channel::bounded(1), store })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.get_ref().local_addr().ok()).collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.0.clone())
    }

    /// [`bind`](Self::bind) on the calling thread, for programs with no executor of their own.
    pub fn bind_blocking(config: ServerConfig) -> io::Result<Server> {
        smol::block_on(Self::bind(config))
    }

    /// [`run`](Self::run) on the calling thread, for programs with no executor of their own.
    pub fn run_blocking(self) -> io::Result<()> {
        smol::block_on(self.run())
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called. Spawns its tasks on smol's global
    /// executor.
    pub async fn run(self) -> io::Result<()> {
        let (tx, rx) = channel::bounded(INPUT_QUEUE);
        let (done, fail) = (tx.clone(), tx.clone());
        let (broker, writer) = ternmq_store::start_broker(
            self.config.broker.clone(),
            self.store.zip(self.config.store.as_ref()),
            move |seq| {
                let _ = done.send_blocking(Input::Persisted(seq));
            },
            move |e| {
                let _ = fail.send_blocking(Input::StoreFailed(e.to_string()));
            },
        )?;
        let acceptors: Vec<Task<()>> = self
            .listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                smol::spawn(accept_loop(l, u16::try_from(i).unwrap_or(u16::MAX), tx.clone()))
            })
            .collect();
        let mut core = Core {
            driver: Driver::new(broker),
            epoch: StdInstant::now(),
            tx,
            auth: self.config.async_authenticator.clone(),
            tasks: Vec::new(),
            writer,
            store_failed: None,
        };
        core.run(&rx, &self.stop.1).await;
        drop(acceptors); // dropping a smol task cancels it
        let failed = core.store_failed.take();
        core.shutdown().await;
        match failed {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }
}

enum Input {
    Accepted(Async<TcpStream>, SocketAddr, u16),
    Bytes(ConnId, BytesMut),
    Closed(ConnId),
    Written(ConnId, usize),
    Auth(AuthTicket, AuthDecision),
    Persisted(PersistSeq),
    StoreFailed(String),
}

async fn accept_loop(listener: Async<TcpListener>, index: u16, tx: Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if tx.send(Input::Accepted(stream, addr, index)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What the core task shares with one connection's task: output to write, whether to close
/// once it is written, whether reading is paused, and how to wake the task.
#[derive(Debug, Default)]
struct Shared {
    out: Mutex<Vec<Bytes>>,
    closing: AtomicBool,
    paused: AtomicBool,
    /// Something changed since the connection's task last looked.
    news: AtomicBool,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Core {
    driver: Driver<Arc<Shared>>,
    epoch: StdInstant,
    tx: Sender<Input>,
    auth: Option<Arc<dyn AsyncAuthenticator>>,
    tasks: Vec<Task<()>>,
    writer: Option<Writer>,
    /// The store could not be written: the server stops.
    store_failed: Option<String>,
}

impl Core {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    async fn run(&mut self, rx: &Receiver<Input>, stop: &Receiver<()>) {
        loop {
            let deadline = self
                .driver
                .poll_timeout()
                .map(|at| self.epoch + Duration::from_nanos(at.as_nanos()));
            enum Wake {
                Stop,
                Input(Input),
                Timer,
            }
            let stopped = async {
                let _ = stop.recv().await;
                Wake::Stop
            };
            let input = async { rx.recv().await.map_or(Wake::Stop, Wake::Input) };
            let timer = async {
                match deadline {
                    Some(at) => {
                        Timer::at(at).await;
                    }
                    None => future::pending::<()>().await,
                }
                Wake::Timer
            };
            match future::or(stopped, future::or(input, timer)).await {
                Wake::Stop => return,
                Wake::Input(input) => {
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
                Wake::Timer => {}
            }
            let now = self.now();
            self.driver.timeout(now);
            self.act();
            self.tasks.retain(|t| !t.is_finished());
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Accepted(stream, addr, listener) => {
                let _ = stream.get_ref().set_nodelay(true);
                let shared = Arc::<Shared>::default();
                let peer = PeerInfo { addr: Some(addr), listener };
                match self.driver.accepted(now, peer, shared.clone()) {
                    Ok(id) => {
                        log::debug!("new connection from {addr} as {id:?}");
                        self.tasks.push(smol::spawn(conn_loop(
                            stream,
                            id,
                            shared,
                            self.tx.clone(),
                        )));
                    }
                    Err(e) => log::warn!("refused connection from {addr}: {e}"),
                }
            }
            Input::Bytes(id, chunk) => self.driver.input(now, id, chunk),
            Input::Closed(id) => self.driver.closed(now, id),
            Input::Written(id, n) => self.driver.written(id, n),
            Input::Auth(ticket, decision) => self.driver.resolve_auth(now, ticket, decision),
            Input::Persisted(seq) => self.driver.persisted(now, seq),
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
        }
    }

    fn act(&mut self) {
        while let Some(action) = self.driver.poll_action() {
            match action {
                Action::Write(h, chunks) => {
                    lock(&h.out).extend(chunks);
                    h.notify();
                }
                Action::Close(h) => {
                    h.closing.store(true, Ordering::Release);
                    h.notify();
                }
                Action::PauseRead(h) => h.paused.store(true, Ordering::Release),
                Action::ResumeRead(h) => {
                    h.paused.store(false, Ordering::Release);
                    h.notify();
                }
                Action::Authenticate(ticket, request) => self.authenticate(ticket, request),
                Action::Log(event) => log_event(&event),
                Action::Persist(batch) => {
                    if let Some(w) = &self.writer {
                        w.send(batch);
                    }
                }
                Action::Authorize(ticket, _) => {
                    // Deferred authorization is answered by the Tokio server's AsyncAuthorizer;
                    // here it is refused, as an authorizer that cannot decide must be.
                    log::warn!("an authorizer deferred, which this server cannot wait for");
                    let now = self.now();
                    self.driver.resolve_authorization(now, ticket, false);
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
                smol::spawn(async move {
                    let decision = fut.await;
                    let _ = tx.send(Input::Auth(ticket, decision)).await;
                })
                .detach();
            }
            None => {
                log::warn!("an authenticator deferred but no async authenticator is configured");
                let now = self.now();
                self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            }
        }
    }

    async fn shutdown(mut self) {
        let now = self.now();
        self.driver.shutdown(now);
        self.act();
        // Everything logged so far is committed before the server returns.
        if let Some(w) = self.writer.take() {
            smol::unblock(move || w.close()).await;
        }
        let tasks = std::mem::take(&mut self.tasks);
        let flush = async {
            for t in tasks {
                t.await;
            }
        };
        future::or(flush, async {
            Timer::after(SHUTDOWN_FLUSH).await;
        })
        .await;
    }
}

/// One connection: reads and hands the bytes to the core task; writes what the core task
/// queued; closes when asked, after writing the rest.
///
/// An idle connection waits in the `poll_fn` below, and this future's size is most of what
/// each one costs: the states of a write or a send that has to wait are boxed, so that only a
/// connection that is waiting for one holds them.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
fn conn_loop(
    stream: Async<TcpStream>,
    id: ConnId,
    shared: Arc<Shared>,
    tx: Sender<Input>,
) -> impl Future<Output = ()> + Send {
    // An `async move` block rather than an `async fn`: the latter keeps a second copy of its
    // arguments in the future.
    async move {
        loop {
            // What to tell the core task, and whether that is the last word.
            let written = {
                let out = std::mem::take(&mut *lock(&shared.out));
                let total: usize = out.iter().map(Bytes::len).sum();
                match (!out.is_empty()).then(|| write_out(&stream, out)) {
                    Some(Ok(written)) => Some((total, written)),
                    Some(Err(rest)) => Some((total, rest.await)),
                    None => None,
                }
            };
            let (input, last) = if let Some((total, written)) = written {
                (if written { Input::Written(id, total) } else { Input::Closed(id) }, !written)
            } else if shared.closing.load(Ordering::Acquire) {
                let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
                Box::pin(linger(&stream)).await;
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
                    stream.poll_readable(cx).map(|ready| Some(ready.is_ok()))
                })
                .await;
                match readable {
                    None => continue,
                    Some(false) => (Input::Closed(id), true),
                    Some(true) => {
                        // A buffer only once there is something to read: an idle connection
                        // holds none.
                        let mut buf = BytesMut::zeroed(READ_CHUNK);
                        let mut socket = stream.get_ref();
                        match socket.read(&mut buf) {
                            Ok(0) => (Input::Closed(id), true),
                            Ok(n) => {
                                buf.truncate(n);
                                (Input::Bytes(id, buf), false)
                            }
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

/// Writes `out`: `Ok(false)` if the connection failed. What the socket does not take at once
/// is returned as a boxed wait for it to take the rest (at most [`WRITE_TIMEOUT`]).
fn write_out(stream: &Async<TcpStream>, mut out: Vec<Bytes>) -> Result<bool, Wait<'_>> {
    match write_now(stream.get_ref(), &mut out) {
        Ok(true) => Ok(true),
        Ok(false) => Err(Box::pin(async move {
            let rest = future::or(async { Some(write_all(stream, &mut out).await) }, async {
                Timer::after(WRITE_TIMEOUT).await;
                None
            });
            matches!(rest.await, Some(Ok(())))
        })),
        Err(_) => Ok(false),
    }
}

/// After the last packet went out (and our side of the stream is shut): reads and drops what
/// the peer still sends until it closes too, for at most [`LINGER`] (whose documentation says
/// why).
async fn linger(stream: &Async<TcpStream>) {
    let drain = async {
        let mut buf = [0u8; 1024];
        let mut stream = stream;
        while matches!(smol::io::AsyncReadExt::read(&mut stream, &mut buf).await, Ok(n) if n > 0) {}
    };
    future::or(drain, async {
        Timer::after(LINGER).await;
    })
    .await;
}

/// A send to the core task, or a write, that has to wait.
type Wait<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Hands `input` to the core task: `Ok(false)` once the core task is gone. Most sends find
/// room at once; one that has to wait is returned boxed.
fn hand(tx: &Sender<Input>, input: Input) -> Result<bool, Wait<'_>> {
    match tx.try_send(input) {
        Ok(()) => Ok(true),
        Err(channel::TrySendError::Full(input)) => {
            Err(Box::pin(async move { tx.send(input).await.is_ok() }))
        }
        Err(channel::TrySendError::Closed(_)) => Ok(false),
    }
}

/// Writes what the socket takes of `out` now, removing what was written: `Ok(true)` when that
/// was all of it.
fn write_now(mut stream: &TcpStream, out: &mut Vec<Bytes>) -> io::Result<bool> {
    let mut first = 0;
    while first < out.len() {
        let slices: Vec<IoSlice<'_>> =
            out[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        match stream.write_vectored(&slices) {
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
async fn write_all(stream: &Async<TcpStream>, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let n = stream
            .write_with(|s| {
                let slices: Vec<IoSlice<'_>> =
                    bufs[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
                (&*s).write_vectored(&slices)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        first = consume(bufs, first, n);
    }
    bufs.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What an idle connection costs this runtime is mostly its task, whose size is the
    /// connection future's.
    #[test]
    fn an_idle_connections_future_is_small() {
        smol::block_on(async {
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
            let addr = listener.get_ref().local_addr().unwrap();
            let stream = Async::<TcpStream>::connect(addr).await.unwrap();
            let (tx, _rx) = channel::bounded(1);
            let mut broker =
                ternmq_core::broker::Broker::new(BrokerConfig::default(), Instant::ZERO).unwrap();
            let id = broker.accept(Instant::ZERO, PeerInfo::default()).unwrap();
            let fut = conn_loop(stream, id, Arc::default(), tx);
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 160, "the connection future takes {size} bytes");
        });
    }
}
