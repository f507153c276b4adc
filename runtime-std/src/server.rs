//! The MQTT broker server on plain std threads, for programs without an async runtime.
//!
//! One thread owns the broker (through [`Driver`]) and takes input from a bounded channel, in
//! batches; each listener has an accept thread; each connection has a reader thread and a writer
//! thread (small stacks), so a slow socket never blocks the others. Protocol decisions are the
//! core's: this module moves bytes and time.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::driver::{
    Action, Driver, LINGER, NO_ASYNC_AUTHENTICATOR, SHUTDOWN_FLUSH, WRITE_TIMEOUT, consume,
    log_event,
};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, BrokerConfig, ConnId, PeerInfo};
use ternmq_core::time::Instant;
use ternmq_store::{Store, StoreConfig, Writer};

/// Bytes one read may bring in: on the reader thread's stack, held while it waits.
const READ_CHUNK: usize = 4 * 1024;
const BATCH: usize = 256;
const INPUT_QUEUE: usize = 1024;
const STACK: usize = 64 * 1024;

/// Authentication that may block (a database lookup, an HTTP call): runs on a thread of its own
/// when the core's authenticator answers [`AuthDecision::Defer`].
pub trait BlockingAuthenticator: Send + Sync {
    /// Decides on `request`.
    fn authenticate(&self, request: AuthRequest) -> AuthDecision;
}

/// What a [`Server`] runs: the broker's configuration and where to listen.
#[derive(Clone)]
pub struct ServerConfig {
    /// The broker core's options and limits.
    pub broker: BrokerConfig,
    /// Addresses to listen on (IPv4 or IPv6); port 0 picks a free port.
    pub listeners: Vec<SocketAddr>,
    /// Answers the authenticator's `Defer`s; without it a deferred request is refused.
    pub blocking_authenticator: Option<Arc<dyn BlockingAuthenticator>>,
    /// Where durable state is kept, and how; `None` keeps everything in memory.
    pub store: Option<StoreConfig>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("broker", &self.broker)
            .field("listeners", &self.listeners)
            .field("blocking_authenticator", &self.blocking_authenticator.is_some())
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
            blocking_authenticator: None,
            store: None,
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
    StoreFailed(String),
    Shutdown,
}

/// Stops a running [`Server`] gracefully; cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: SyncSender<Input>,
    stopping: Arc<AtomicBool>,
    addrs: Vec<SocketAddr>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle").field("addrs", &self.addrs).finish()
    }
}

impl ShutdownHandle {
    /// Asks the server to stop: it stops accepting, sends DISCONNECT 0x8B (Server shutting down)
    /// to MQTT 5 clients, flushes and closes every connection, and then `run` returns.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.tx.send(Input::Shutdown);
        // Wake the accept threads, blocked in accept(), so that they see the flag.
        for addr in &self.addrs {
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), WRITE_TIMEOUT);
        }
    }
}

/// A bound MQTT broker server on std threads.
pub struct Server {
    listeners: Vec<TcpListener>,
    config: ServerConfig,
    tx: SyncSender<Input>,
    rx: Receiver<Input>,
    stopping: Arc<AtomicBool>,
    store: Option<Store>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("local_addrs", &self.local_addrs()).finish()
    }
}

impl Server {
    /// Checks the configuration and binds every listener.
    pub fn bind(config: ServerConfig) -> io::Result<Server> {
        config
            .broker
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if config.listeners.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listener configured"));
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for addr in &config.listeners {
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listeners.push(l);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
        let stopping = Arc::new(AtomicBool::new(false));
        Ok(Server { listeners, config, tx, rx, stopping, store })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.tx.clone(),
            stopping: self.stopping.clone(),
            addrs: self.local_addrs(),
        }
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called; blocks the calling thread.
    pub fn run(self) -> io::Result<()> {
        let (done, fail) = (self.tx.clone(), self.tx.clone());
        let (broker, writer) = ternmq_store::start_broker(
            self.config.broker.clone(),
            self.store.zip(self.config.store.as_ref()),
            move |seq| {
                let _ = done.send(Input::Persisted(seq));
            },
            move |e| {
                let _ = fail.send(Input::StoreFailed(e.to_string()));
            },
        )?;
        let mut acceptors = Vec::new();
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let tx = self.tx.clone();
            let stopping = self.stopping.clone();
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            acceptors
                .push(spawn("ternmq-accept", move || accept_loop(listener, index, tx, stopping))?);
        }
        let mut core = Core {
            driver: Driver::new(broker),
            epoch: StdInstant::now(),
            tx: self.tx,
            auth: self.config.blocking_authenticator.clone(),
            writers: Vec::new(),
            writer,
            store_failed: None,
        };
        core.run(&self.rx);
        let failed = core.store_failed.take();
        core.shutdown();
        for a in acceptors {
            let _ = a.join();
        }
        match failed {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.into()).stack_size(STACK).spawn(f)
}

fn accept_loop(
    listener: TcpListener,
    index: u16,
    tx: SyncSender<Input>,
    stopping: Arc<AtomicBool>,
) {
    loop {
        match listener.accept() {
            Ok((stream, addr)) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if tx.send(Input::Accepted(stream, addr, index)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// How the core thread reaches one connection's threads.
#[derive(Clone)]
struct Handle {
    writer: Sender<Vec<Bytes>>,
    /// Reading is paused while true (a subscriber of what this client publishes is behind).
    paused: Arc<(Mutex<bool>, Condvar)>,
    /// The broker closed the connection: the reader drops what still comes.
    closing: Arc<AtomicBool>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

struct Core {
    driver: Driver<Handle>,
    epoch: StdInstant,
    tx: SyncSender<Input>,
    auth: Option<Arc<dyn BlockingAuthenticator>>,
    /// Writer threads, reaped as they finish.
    writers: Vec<JoinHandle<()>>,
    /// The store's writer thread.
    writer: Option<Writer>,
    /// The store could not be written: the server stops.
    store_failed: Option<String>,
}

impl Core {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn run(&mut self, rx: &Receiver<Input>) {
        loop {
            let wait = match self.driver.poll_timeout() {
                Some(at) => {
                    Duration::from_nanos(at.as_nanos().saturating_sub(self.now().as_nanos()))
                }
                None => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(Input::Shutdown) => return,
                Ok(input) => {
                    self.input(input);
                    if self.store_failed.is_some() {
                        return;
                    }
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok(Input::Shutdown) => return,
                            Ok(input) => self.input(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = self.now();
            self.driver.timeout(now);
            self.act();
            self.writers.retain(|w| !w.is_finished());
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Accepted(stream, addr, listener) => self.accepted(now, stream, addr, listener),
            Input::Bytes(id, chunk) => self.driver.input(now, id, chunk),
            Input::Closed(id) => self.driver.closed(now, id),
            Input::Written(id, n) => self.driver.written(id, n),
            Input::Auth(ticket, decision) => self.driver.resolve_auth(now, ticket, decision),
            Input::Persisted(seq) => self.driver.persisted(now, seq),
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
            Input::Shutdown => {}
        }
    }

    fn accepted(&mut self, now: Instant, stream: TcpStream, addr: SocketAddr, listener: u16) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let (Ok(read), Ok(write)) = (stream.try_clone(), stream.try_clone()) else {
            return;
        };
        let (wtx, wrx) = mpsc::channel();
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let closing = Arc::new(AtomicBool::new(false));
        let handle = Handle { writer: wtx, paused: paused.clone(), closing: closing.clone() };
        let id = match self.driver.accepted(now, PeerInfo { addr: Some(addr), listener }, handle) {
            Ok(id) => id,
            Err(e) => {
                log::warn!("refused connection from {addr}: {e}");
                return;
            }
        };
        // Dropped when the reader ends: the writer's signal that the peer has closed.
        let (read_done, reader_ended) = mpsc::channel::<()>();
        let tx = self.tx.clone();
        let reader = spawn("ternmq-read", move || {
            read_loop(read, id, &tx, &paused, &closing);
            drop(read_done);
        });
        let tx = self.tx.clone();
        let writer = spawn("ternmq-write", move || write_loop(write, id, &wrx, &tx, &reader_ended));
        match (reader, writer) {
            (Ok(_), Ok(w)) => self.writers.push(w),
            _ => {
                log::warn!("cannot start threads for {addr}: closing it");
                let _ = stream.shutdown(Shutdown::Both);
                self.driver.closed(now, id);
            }
        }
    }

    fn act(&mut self) {
        while let Some(action) = self.driver.poll_action() {
            match action {
                Action::Write(h, chunks) => {
                    let _ = h.writer.send(chunks);
                }
                // The reader drops what still comes; the writer closes the socket once it has
                // written what it holds (the last sender is dropped here) and the peer closed.
                Action::Close(h) => {
                    h.closing.store(true, Ordering::Release);
                    set_paused(&h.paused, false);
                }
                Action::PauseRead(h) => set_paused(&h.paused, true),
                Action::ResumeRead(h) => set_paused(&h.paused, false),
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
        let Some(auth) = self.auth.clone() else {
            log::warn!("an authenticator deferred but no blocking authenticator is configured");
            let now = self.now();
            self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            return;
        };
        let tx = self.tx.clone();
        let spawned = spawn("ternmq-auth", move || {
            let decision = auth.authenticate(request);
            let _ = tx.send(Input::Auth(ticket, decision));
        });
        if spawned.is_err() {
            let now = self.now();
            self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
        }
    }

    fn shutdown(mut self) {
        let now = self.now();
        self.driver.shutdown(now);
        self.act();
        // Everything logged so far is committed before the server returns.
        if let Some(w) = self.writer.take() {
            w.close();
        }
        let deadline = StdInstant::now() + SHUTDOWN_FLUSH;
        for w in std::mem::take(&mut self.writers) {
            while !w.is_finished() && StdInstant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

fn set_paused(flag: &(Mutex<bool>, Condvar), paused: bool) {
    *flag.0.lock().unwrap_or_else(PoisonError::into_inner) = paused;
    flag.1.notify_all();
}

fn read_loop(
    mut read: TcpStream,
    id: ConnId,
    tx: &SyncSender<Input>,
    paused: &(Mutex<bool>, Condvar),
    closing: &AtomicBool,
) {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        let mut p = paused.0.lock().unwrap_or_else(PoisonError::into_inner);
        while *p {
            p = paused.1.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        drop(p);
        match read.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::Closed(id));
                return;
            }
            // Closed by the broker: what the peer still sends is read only so that closing the
            // socket does not reset the connection (see `write_loop`).
            Ok(_) if closing.load(Ordering::Acquire) => {}
            Ok(n) => {
                if tx.send(Input::Bytes(id, BytesMut::from(&buf[..n]))).is_err() {
                    return;
                }
            }
        }
    }
}

fn write_loop(
    mut write: TcpStream,
    id: ConnId,
    rx: &Receiver<Vec<Bytes>>,
    tx: &SyncSender<Input>,
    reader_ended: &Receiver<()>,
) {
    let mut pending: Vec<Bytes> = Vec::new();
    while let Ok(chunks) = rx.recv() {
        pending.extend(chunks);
        while let Ok(more) = rx.try_recv() {
            pending.extend(more);
        }
        let total: usize = pending.iter().map(Bytes::len).sum();
        if write_all(&mut write, &mut pending).is_err() {
            let _ = tx.send(Input::Closed(id));
            break;
        }
        if tx.send(Input::Written(id, total)).is_err() {
            break;
        }
    }
    // Our side is done. Wait (at most LINGER, whose documentation says why) for the peer to
    // close too, the reader dropping what it still sends. Closing both directions then also
    // wakes the reader thread.
    let _ = write.shutdown(Shutdown::Write);
    let _ = reader_ended.recv_timeout(LINGER);
    let _ = write.shutdown(Shutdown::Both);
}

fn write_all(write: &mut TcpStream, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> =
            bufs[first..].iter().take(64).map(|b| IoSlice::new(b)).collect();
        let n = write.write_vectored(&slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        first = consume(bufs, first, n);
    }
    bufs.clear();
    Ok(())
}
