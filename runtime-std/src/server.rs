//! The MQTT broker server without an async runtime: one std thread and a readiness loop.
//!
//! One thread serves every connection: a readiness loop (epoll, kqueue or IOCP, through `mio`)
//! over the listeners and the sockets. It reads what is ready, a bounded amount per connection
//! and turn so that one busy client cannot starve the others, feeds it to the broker (through
//! [`Driver`]), and writes what the broker hands out with one vectored write per connection and
//! turn. A connection costs a slot in a table and its socket, not a thread. The store's writer
//! and the hooks that answer deferred decisions (blocking or async, see [`ServerConfig`]) run
//! on threads of their own and report back through a channel that wakes the loop. Protocol decisions are the core's: this module moves bytes and
//! time.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use ternmq_async::server::bind_error;
pub use ternmq_async::server::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer, ServerConfig, ShutdownHandle,
};
use ternmq_core::broker::driver::{
    Action, Driver, LINGER, NO_ASYNC_AUTHENTICATOR, SHUTDOWN_FLUSH, WRITE_TIMEOUT, consume,
    log_event,
};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, ConnId, PeerInfo};
use ternmq_core::time::Instant;
use ternmq_store::{Store, StoreConfig, Writer};

/// The loop's read buffer: one read brings in at most this much.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per turn before the others get theirs.
const READ_BUDGET: usize = 64 * 1024;
/// Connections accepted from one listener per turn.
const ACCEPT_BUDGET: usize = 256;
/// Readiness events taken per turn.
const EVENTS: usize = 1024;
/// Buffers one vectored write takes (the common `IOV_MAX` is 1024).
const IOVECS: usize = 64;
/// How long accepting pauses after an error such as too many open files.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const STACK: usize = 256 * 1024;

const WAKER: Token = Token(usize::MAX);

/// The token of listener `i`: counted down from below the waker's, far from connection slots.
fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

/// What other threads tell the loop.
enum Input {
    Auth(AuthTicket, AuthDecision),
    Authorized(AuthTicket, bool),
    Persisted(PersistSeq),
    StoreFailed(String),
}

/// Sends to the loop and wakes it.
#[derive(Clone)]
struct Mailbox {
    tx: Sender<Input>,
    waker: Arc<Waker>,
}

impl Mailbox {
    fn send(&self, input: Input) {
        if self.tx.send(input).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A bound MQTT broker server: one std thread serving every socket.
pub struct Server {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<TcpListener>,
    config: ServerConfig,
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
        config.validate()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (i, addr) in config.listeners.iter().enumerate() {
            let mut l = TcpListener::bind(*addr).map_err(|e| bind_error(addr, &e))?;
            poll.registry().register(&mut l, listener_token(i), Interest::READABLE)?;
            listeners.push(l);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        let stopping = Arc::new(AtomicBool::new(false));
        Ok(Server { poll, waker, listeners, config, stopping, store })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        let waker = Arc::clone(&self.waker);
        ShutdownHandle::new(Arc::clone(&self.stopping), move || {
            let _ = waker.wake();
        })
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called; blocks the calling thread.
    pub fn run(self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let mailbox = Mailbox { tx, waker: self.waker };
        let (done, fail) = (mailbox.clone(), mailbox.clone());
        let (broker, writer) = ternmq_store::start_broker(
            self.config.broker.clone(),
            self.store.zip(self.config.store.as_ref()),
            move |seq| done.send(Input::Persisted(seq)),
            move |e| fail.send(Input::StoreFailed(e.to_string())),
        )?;
        let mut server = Loop {
            poll: self.poll,
            listeners: self.listeners.into_iter().map(Some).collect(),
            accept_at: None,
            conns: Vec::new(),
            free: Vec::new(),
            generation: 0,
            driver: Driver::new(broker),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            lingering: VecDeque::new(),
            stalls: BTreeSet::new(),
            scratch: vec![0; READ_CHUNK],
            epoch: StdInstant::now(),
            rx,
            mailbox,
            hooks: self.config.clone(),
            writer,
            store_failed: None,
        };
        let served = server.run(&self.stopping);
        // Everything logged, up to the last connection's close, is committed before the server
        // returns, however the loop ended.
        if let Some(w) = server.writer.take() {
            w.close();
        }
        served?;
        match server.store_failed.take() {
            Some(e) => Err(io::Error::other(e)),
            None => Ok(()),
        }
    }
}

/// How the driver names a connection to the loop: its slot, and the generation that tells a
/// slot's later occupants apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    index: u32,
    generation: u32,
}

/// One socket and what the loop knows of it.
struct Conn {
    stream: TcpStream,
    generation: u32,
    /// The broker's id; `None` once the broker closed the connection (it lingers).
    id: Option<ConnId>,
    /// Buffers handed out by the broker and not yet written.
    out: Vec<Bytes>,
    /// Since when a write has been waiting for the peer to read.
    blocked_since: Option<Instant>,
    /// The socket reported readable and has not been read until it would block.
    readable: bool,
    /// In [`Loop::ready`].
    queued: bool,
    /// In [`Loop::dirty`].
    dirty: bool,
    /// In [`Loop::stalls`].
    stall_queued: bool,
    /// The broker paused reading (a subscriber of what this client publishes is behind).
    paused: bool,
    /// The peer closed, or the socket failed: nothing more will be read.
    peer_done: bool,
    /// The socket failed: nothing more will be written either.
    broken: bool,
    /// Our side was shut after the last byte; the connection lingers until the peer closes.
    shut: bool,
}

struct Loop {
    poll: Poll,
    /// `None` once the server stops accepting.
    listeners: Vec<Option<TcpListener>>,
    /// When to try accepting again after an error or a full budget.
    accept_at: Option<Instant>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    driver: Driver<Slot>,
    /// Connections to read from this turn.
    ready: VecDeque<u32>,
    /// Connections with something to write this turn.
    dirty: Vec<u32>,
    /// When each connection whose side is shut stops waiting for its peer, in order.
    lingering: VecDeque<(Instant, Slot)>,
    /// When each blocked writer is next looked at, with its slot's index and generation; at
    /// most one entry per connection.
    stalls: BTreeSet<(Instant, u32, u32)>,
    scratch: Vec<u8>,
    epoch: StdInstant,
    rx: Receiver<Input>,
    mailbox: Mailbox,
    /// The server's configuration, for its hooks that answer deferred decisions.
    hooks: ServerConfig,
    /// The store's writer thread.
    writer: Option<Writer>,
    /// The store could not be written: the server stops.
    store_failed: Option<String>,
}

impl Loop {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn run(&mut self, stopping: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut stop_by: Option<Instant> = None;
        loop {
            let now = self.now();
            if let Some(by) = stop_by
                && (self.conns.iter().all(Option::is_none) || now >= by)
            {
                return Ok(());
            }
            let timeout = if self.ready.is_empty() {
                self.next_deadline(stop_by)
                    .map(|at| Duration::from_nanos(at.as_nanos().saturating_sub(now.as_nanos())))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            let now = self.now();
            for event in &events {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= usize::MAX - self.listeners.len() => {
                        self.accept(usize::MAX - 1 - t, now);
                    }
                    Token(t) => {
                        let Some(Some(c)) = self.conns.get_mut(t) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            c.readable = true;
                            mark_ready(c, &mut self.ready, t as u32);
                        }
                        if event.is_writable() || event.is_write_closed() {
                            mark_dirty(c, &mut self.dirty, t as u32);
                        }
                    }
                }
            }
            while let Ok(input) = self.rx.try_recv() {
                self.input(now, input);
            }
            if self.store_failed.is_some() {
                stopping.store(true, Ordering::SeqCst);
            }
            self.read_ready(now);
            if self.driver.poll_timeout().is_some_and(|at| at <= now) {
                self.driver.timeout(now);
            }
            self.expire(now);
            self.settle(now);
            if stop_by.is_none() && stopping.load(Ordering::SeqCst) {
                stop_by = Some(now + SHUTDOWN_FLUSH);
                self.shutdown(now);
            }
        }
    }

    /// The earliest moment something is due.
    fn next_deadline(&self, stop_by: Option<Instant>) -> Option<Instant> {
        [
            self.driver.poll_timeout(),
            self.lingering.front().map(|(at, _)| *at),
            self.stalls.first().map(|(at, _, _)| *at),
            self.accept_at,
            stop_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Auth(ticket, decision) => self.driver.resolve_auth(now, ticket, decision),
            Input::Authorized(ticket, allowed) => {
                self.driver.resolve_authorization(now, ticket, allowed);
            }
            Input::Persisted(seq) => self.driver.persisted(now, seq),
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
        }
    }

    fn accept(&mut self, listener: usize, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(Some(l)) = self.listeners.get(listener) else {
                return;
            };
            match l.accept() {
                Ok((stream, addr)) => self.admit(stream, addr, listener, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    self.accept_at = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        // More may be waiting; the readiness event will not come again for them.
        self.accept_at = Some(now);
    }

    fn admit(&mut self, mut stream: TcpStream, addr: SocketAddr, listener: usize, now: Instant) {
        let _ = stream.set_nodelay(true);
        let index = match self.free.last() {
            Some(i) => *i,
            None => u32::try_from(self.conns.len()).unwrap_or(u32::MAX),
        };
        self.generation = self.generation.wrapping_add(1);
        let slot = Slot { index, generation: self.generation };
        let listener = u16::try_from(listener).unwrap_or(u16::MAX);
        let id = match self.driver.accepted(now, PeerInfo { addr: Some(addr), listener }, slot) {
            Ok(id) => {
                log::debug!("new connection from {addr} as {id:?}");
                id
            }
            Err(e) => {
                log::warn!("refused connection from {addr}: {e}");
                return;
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(index as usize), interest)
        {
            log::warn!("cannot watch the connection from {addr}: {e}; closing it");
            self.driver.closed(now, id);
            return;
        }
        let conn = Conn {
            stream,
            generation: slot.generation,
            id: Some(id),
            out: Vec::new(),
            blocked_since: None,
            readable: false,
            queued: false,
            dirty: false,
            stall_queued: false,
            paused: false,
            peer_done: false,
            broken: false,
            shut: false,
        };
        if self.free.pop().is_none() {
            self.conns.push(Some(conn));
        } else if let Some(s) = self.conns.get_mut(index as usize) {
            *s = Some(conn);
        }
    }

    /// Reads from each ready connection up to its budget; one that has more goes again next
    /// turn.
    fn read_ready(&mut self, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some(index) = self.ready.pop_front() else {
                break;
            };
            let mut budget = READ_BUDGET;
            if let Some(Some(c)) = self.conns.get_mut(index as usize) {
                c.queued = false;
            }
            while let Some(Some(c)) = self.conns.get_mut(index as usize) {
                if !c.readable || c.paused || c.peer_done {
                    break;
                }
                if budget == 0 {
                    mark_ready(c, &mut self.ready, index);
                    break;
                }
                match c.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        c.peer_done = true;
                        self.peer_gone(now, index);
                        break;
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        // Once the broker closed it, what the peer still sends is dropped.
                        if let Some(id) = c.id {
                            let chunk = BytesMut::from(self.scratch.get(..n).unwrap_or_default());
                            self.driver.input(now, id, chunk);
                            self.act(now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.peer_done = true;
                        c.broken = true;
                        self.peer_gone(now, index);
                        break;
                    }
                }
            }
        }
    }

    /// The peer closed or the socket failed.
    fn peer_gone(&mut self, now: Instant, index: u32) {
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return;
        };
        match c.id {
            // The broker decides; its Close comes now or once paused input is handled.
            Some(id) => {
                self.driver.closed(now, id);
                self.act(now);
            }
            // Already closed by the broker: nothing waits for the peer any more.
            None => {
                mark_dirty(c, &mut self.dirty, index);
            }
        }
    }

    /// Carries out the driver's actions until it has none.
    fn act(&mut self, now: Instant) {
        while let Some(action) = self.driver.poll_action() {
            match action {
                Action::Write(slot, chunks) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        if c.out.is_empty() {
                            c.out = chunks;
                        } else {
                            c.out.extend(chunks);
                        }
                        mark_dirty(c, &mut self.dirty, slot.index);
                    }
                }
                // Written out, then shut and lingered over (or dropped) by `flush`.
                Action::Close(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        c.id = None;
                        c.paused = false;
                        mark_dirty(c, &mut self.dirty, slot.index);
                        if c.readable {
                            mark_ready(c, &mut self.ready, slot.index);
                        }
                    }
                }
                Action::PauseRead(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        c.paused = true;
                    }
                }
                Action::ResumeRead(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        c.paused = false;
                        if c.readable {
                            mark_ready(c, &mut self.ready, slot.index);
                        }
                    }
                }
                Action::Authenticate(ticket, request) => self.authenticate(now, ticket, request),
                Action::Log(event) => log_event(&event),
                Action::Persist(batch) => {
                    if let Some(w) = &self.writer {
                        w.send(batch);
                    }
                }
                Action::Authorize(ticket, request) => self.authorize(now, ticket, request),
                _ => {}
            }
        }
    }

    /// A deferred authentication goes to the configured hook on a thread of its own: a
    /// blocking hook runs there, an async one is driven there to completion.
    fn authenticate(&mut self, now: Instant, ticket: AuthTicket, request: AuthRequest) {
        let inline = |job: Box<dyn FnOnce() -> AuthDecision + Send>| -> AuthFuture {
            Box::pin(async move { job() })
        };
        let Some(fut) = self.hooks.deferred_authentication(request, inline) else {
            log::warn!("an authenticator deferred but no authenticator hook is configured");
            self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            return;
        };
        let mailbox = self.mailbox.clone();
        let spawned =
            thread::Builder::new().name("ternmq-auth".into()).stack_size(STACK).spawn(move || {
                let decision = futures_lite::future::block_on(fut);
                mailbox.send(Input::Auth(ticket, decision));
            });
        if spawned.is_err() {
            self.driver.resolve_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
        }
    }

    /// A deferred authorization, as [`authenticate`](Self::authenticate).
    fn authorize(&mut self, now: Instant, ticket: AuthTicket, request: AuthorizeRequest) {
        let inline = |job: Box<dyn FnOnce() -> bool + Send>| -> AuthzFuture {
            Box::pin(async move { job() })
        };
        let Some(fut) = self.hooks.deferred_authorization(request, inline) else {
            log::warn!("an authorizer deferred but no authorizer hook is configured");
            self.driver.resolve_authorization(now, ticket, false);
            return;
        };
        let mailbox = self.mailbox.clone();
        let spawned =
            thread::Builder::new().name("ternmq-authz".into()).stack_size(STACK).spawn(move || {
                let allowed = futures_lite::future::block_on(fut);
                mailbox.send(Input::Authorized(ticket, allowed));
            });
        if spawned.is_err() {
            self.driver.resolve_authorization(now, ticket, false);
        }
    }

    /// Acts and writes until nothing is left that can be written now.
    fn settle(&mut self, now: Instant) {
        loop {
            self.act(now);
            if self.dirty.is_empty() {
                return;
            }
            for index in std::mem::take(&mut self.dirty) {
                self.flush(now, index);
            }
        }
    }

    /// Writes what `index` holds until done or the socket would block; then, once a closed
    /// connection has written everything, shuts it or drops it.
    fn flush(&mut self, now: Instant, index: u32) {
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return;
        };
        c.dirty = false;
        let mut written = 0;
        let mut blocked = false;
        let mut first = 0;
        while !c.broken && first < c.out.len() {
            let mut slices = [IoSlice::new(&[]); IOVECS];
            let mut k = 0;
            for (s, b) in slices.iter_mut().zip(c.out.iter().skip(first)) {
                *s = IoSlice::new(b);
                k += 1;
            }
            match c.stream.write_vectored(slices.get(..k).unwrap_or_default()) {
                Ok(0) => c.broken = true,
                Ok(n) => {
                    first = consume(&mut c.out, first, n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => c.broken = true,
            }
        }
        if first == c.out.len() {
            // An idle connection keeps no buffer list.
            c.out = Vec::new();
        } else {
            // Written buffers go now: behind a slow reader the list is never empty for long.
            c.out.drain(..first);
        }
        let slot = Slot { index, generation: c.generation };
        if blocked {
            if !c.stall_queued {
                c.stall_queued = true;
                self.stalls.insert((now + WRITE_TIMEOUT, index, c.generation));
            }
            if c.blocked_since.is_none() || written > 0 {
                c.blocked_since = Some(now);
            }
        } else {
            c.blocked_since = None;
        }
        if c.broken {
            c.peer_done = true;
            match c.id {
                Some(id) => {
                    self.driver.closed(now, id);
                    // Its Close (now, or once paused input is handled) drops it.
                }
                None => self.drop_conn(index),
            }
            return;
        }
        match c.id {
            Some(id) if written > 0 => self.driver.written(id, written),
            Some(_) => {}
            None if !c.out.is_empty() => {}
            // Everything written; the peer is gone too: done.
            None if c.peer_done => self.drop_conn(index),
            // Shut our side, then read and drop until the peer closes (see LINGER).
            None if !c.shut => {
                c.shut = true;
                let _ = c.stream.shutdown(Shutdown::Write);
                self.lingering.push_back((now + LINGER, slot));
            }
            None => {}
        }
    }

    /// Closes lingering connections whose time is up and writers stuck on a peer that does not
    /// read; accepts again after a pause.
    fn expire(&mut self, now: Instant) {
        while let Some((at, slot)) = self.lingering.front().copied() {
            if at > now {
                break;
            }
            self.lingering.pop_front();
            if conn_at(&mut self.conns, slot).is_some_and(|c| c.shut) {
                self.drop_conn(slot.index);
            }
        }
        while let Some((at, index, generation)) = self.stalls.first().copied() {
            if at > now {
                break;
            }
            self.stalls.pop_first();
            let slot = Slot { index, generation };
            let Some(c) = conn_at(&mut self.conns, slot) else {
                continue;
            };
            c.stall_queued = false;
            match c.blocked_since {
                Some(since) if since + WRITE_TIMEOUT <= now => {
                    log::debug!("a peer read nothing for {WRITE_TIMEOUT:?}: closing it");
                    c.broken = true;
                    self.flush(now, slot.index);
                }
                Some(since) => {
                    c.stall_queued = true;
                    self.stalls.insert((since + WRITE_TIMEOUT, index, generation));
                }
                None => {}
            }
        }
        if self.accept_at.is_some_and(|at| at <= now) {
            self.accept_at = None;
            for i in 0..self.listeners.len() {
                self.accept(i, now);
            }
        }
    }

    fn drop_conn(&mut self, index: u32) {
        let Some(slot) = self.conns.get_mut(index as usize) else {
            return;
        };
        if let Some(mut c) = slot.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(index);
        }
    }

    /// Stops accepting and has the broker disconnect everyone; the loop then writes out what
    /// is left and waits for the connections to close, for at most [`SHUTDOWN_FLUSH`].
    fn shutdown(&mut self, now: Instant) {
        for l in &mut self.listeners {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        self.accept_at = None;
        log::info!("{}", self.driver.broker().stats());
        self.driver.shutdown(now);
        self.settle(now);
    }
}

/// The connection at `slot`, unless the slot has a later occupant.
fn conn_at(conns: &mut [Option<Conn>], slot: Slot) -> Option<&mut Conn> {
    match conns.get_mut(slot.index as usize) {
        Some(Some(c)) if c.generation == slot.generation => Some(c),
        _ => None,
    }
}

fn mark_ready(c: &mut Conn, ready: &mut VecDeque<u32>, index: u32) {
    if !c.queued {
        c.queued = true;
        ready.push_back(index);
    }
}

fn mark_dirty(c: &mut Conn, dirty: &mut Vec<u32>, index: u32) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(index);
    }
}
