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

use std::collections::VecDeque;
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
use ternmq_async::control::ControlInbox;
pub use ternmq_async::control::{Control, ListenerInfo};
use ternmq_async::server::BRIDGE_HANDSHAKE;
use ternmq_async::server::bind_error;
pub use ternmq_async::server::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer, BridgeAddress, BridgeSpec, Listener, ServerConfig,
    ShutdownHandle,
};
pub use ternmq_async::tls::{TlsAcceptor, TlsSettings, TlsVersion};
use ternmq_async::transport::Transform;
use ternmq_core::broker::driver::{Command, Driver, NO_ASYNC_AUTHENTICATOR, consume, log_event};
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
const STACK: usize = 256 * 1024;

const WAKER: Token = Token(usize::MAX);

/// The token of listener `i`: counted down from below the waker's, far from connection slots.
fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

/// What other threads tell the loop.
enum Input {
    /// A bridge's transport to its remote broker, opened (and through its handshake) on a
    /// thread of its own: the socket, its TLS or WebSocket session, and MQTT bytes that came
    /// with the handshake's end.
    Dialed(usize, io::Result<Dialed>),
    Auth(AuthTicket, AuthDecision),
    Authorized(AuthTicket, bool),
    Persisted(PersistSeq),
    StoreFailed(String),
}

type Dialed = (std::net::TcpStream, Option<Box<dyn Transform>>, BytesMut);

/// What a socket is to the driver: a client's connection, or a bridge's transport to its remote
/// broker (by the bridge's index).
#[derive(Clone, Copy, Debug)]
enum Peer {
    Client(ConnId),
    Bridge(usize),
}

impl Peer {
    fn bytes(self, driver: &mut Driver<Slot>, now: Instant, bytes: BytesMut) {
        match self {
            Peer::Client(id) => driver.handle_bytes(now, id, bytes),
            Peer::Bridge(b) => driver.handle_bridge_bytes(now, b, bytes),
        }
    }

    fn closed(self, driver: &mut Driver<Slot>, now: Instant) {
        match self {
            Peer::Client(id) => driver.handle_closed(now, id),
            Peer::Bridge(b) => driver.handle_bridge_closed(now, b),
        }
    }

    fn written(self, driver: &mut Driver<Slot>, now: Instant, n: usize) {
        match self {
            Peer::Client(id) => driver.handle_written(now, id, n),
            Peer::Bridge(b) => driver.handle_bridge_written(now, b, n),
        }
    }

    /// The transport refused the connection before any MQTT.
    fn refused(self, driver: &mut Driver<Slot>, now: Instant) {
        match self {
            Peer::Client(id) => driver.handle_refused(now, id),
            Peer::Bridge(b) => driver.handle_bridge_closed(now, b),
        }
    }
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
    control: (Control, ControlInbox),
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
        if config.cluster.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cluster: the std server does not run a cluster backplane; use the Tokio server",
            ));
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (i, listener) in config.listeners.iter().enumerate() {
            let addr = &listener.addr;
            let mut l = TcpListener::bind(*addr).map_err(|e| bind_error(addr, &e))?;
            poll.registry().register(&mut l, listener_token(i), Interest::READABLE)?;
            listeners.push(l);
        }
        let store = config.store.as_ref().map(StoreConfig::open).transpose()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let bound = listeners.iter().map(|l| l.local_addr().ok());
        let wake = Arc::clone(&waker);
        let control = Control::pair(bound, &config.listeners, move || {
            let _ = wake.wake();
        });
        Ok(Server { poll, waker, listeners, config, stopping, store, control })
    }

    /// The addresses actually bound, in the order of [`ServerConfig::listeners`].
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.control.0.local_addrs()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        let waker = Arc::clone(&self.waker);
        ShutdownHandle::new(Arc::clone(&self.stopping), move || {
            let _ = waker.wake();
        })
    }

    /// A handle that asks the broker questions and gives it orders, from any thread.
    pub fn control(&self) -> Control {
        self.control.0.clone()
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
            accept_more: false,
            accept_paused: Vec::new(),
            conns: Vec::new(),
            free: Vec::new(),
            generation: 0,
            driver: Driver::new(broker),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            epoch: StdInstant::now(),
            rx,
            mailbox,
            hooks: self.config.clone(),
            writer,
            store_failed: None,
            inbox: self.control.1,
        };
        server.inbox.started(server.writer.as_ref().map(Writer::metrics));
        for spec in &self.config.bridges {
            let now = server.now();
            server.driver.add_bridge(now, spec.config.clone());
        }
        let now = server.now();
        server.settle(now);
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

/// A connection's transport (TLS, WebSocket), and how the bytes queued in `Conn::out` map back
/// to the driver's MQTT bytes: per batch, its bytes on the wire and the MQTT bytes they carry.
struct Layered {
    session: Box<dyn Transform>,
    owed: VecDeque<(usize, usize)>,
}

impl Layered {
    /// Encrypts `plain` (or, empty, takes what TLS has to say) and queues the ciphertext on
    /// `out`, remembering which plaintext it carries.
    fn seal(&mut self, plain: &[Bytes], out: &mut Vec<Bytes>) {
        let mut carried = 0;
        for b in plain {
            self.session.write_plaintext(b);
            carried += b.len();
        }
        let cipher = self.session.poll_transmit().unwrap_or_default();
        if cipher.is_empty() && carried == 0 {
            return;
        }
        self.owed.push_back((cipher.len(), carried));
        if !cipher.is_empty() {
            out.push(Bytes::from(cipher));
        }
    }

    /// `n` bytes of ciphertext were written: how many plaintext bytes that completes.
    fn written(&mut self, mut n: usize) -> usize {
        let mut plain = 0;
        while let Some((cipher, carried)) = self.owed.front_mut() {
            if n < *cipher {
                *cipher -= n;
                break;
            }
            n -= *cipher;
            plain += *carried;
            self.owed.pop_front();
        }
        plain
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
    /// TLS, WebSocket or a PROXY header on this connection, if its listener has them.
    layer: Option<Box<Layered>>,
    generation: u32,
    /// Who it is to the driver.
    peer: Peer,
    /// Whether the broker still has it open (once closed, it lingers).
    open: bool,
    /// Buffers handed out by the broker and not yet written.
    out: Vec<Bytes>,
    /// The socket reported readable and has not been read until it would block.
    readable: bool,
    /// In [`Loop::ready`].
    queued: bool,
    /// In [`Loop::dirty`].
    dirty: bool,
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
    /// A listener's accept budget ran out: accept again next turn.
    accept_more: bool,
    /// Listeners whose accepting failed, until the driver resumes them.
    accept_paused: Vec<usize>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    driver: Driver<Slot>,
    /// Connections to read from this turn.
    ready: VecDeque<u32>,
    /// Connections with something to write this turn.
    dirty: Vec<u32>,
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
    /// Requests from [`Control`] handles.
    inbox: ControlInbox,
}

impl Loop {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn run(&mut self, stopping: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut shut_down = false;
        loop {
            if self.driver.is_finished() {
                return Ok(());
            }
            let now = self.now();
            let timeout = if self.ready.is_empty() && !self.accept_more {
                self.driver
                    .poll_timeout()
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
            if std::mem::take(&mut self.accept_more) {
                for i in 0..self.listeners.len() {
                    self.accept(i, now);
                }
            }
            while let Ok(input) = self.rx.try_recv() {
                self.input(now, input);
            }
            let driver = &mut self.driver;
            self.inbox.serve(|request| driver.handle_admin(now, request));
            if self.store_failed.is_some() {
                stopping.store(true, Ordering::SeqCst);
            }
            self.read_ready(now);
            if self.driver.poll_timeout().is_some_and(|at| at <= now) {
                self.driver.handle_timeout(now);
            }
            self.settle(now);
            if !shut_down && stopping.load(Ordering::SeqCst) {
                shut_down = true;
                self.inbox.stopping();
                self.shutdown(now);
            }
        }
    }

    fn input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Dialed(bridge, Ok(dialed)) => self.dialed(now, bridge, dialed),
            Input::Dialed(bridge, Err(e)) => {
                let name = self.hooks.bridges.get(bridge).map(|b| b.config.name.as_str());
                log::warn!("bridge {}: {e}", name.unwrap_or_default());
                self.driver.handle_bridge_closed(now, bridge);
            }
            Input::Auth(ticket, decision) => self.driver.handle_auth(now, ticket, decision),
            Input::Authorized(ticket, allowed) => {
                self.driver.handle_authorization(now, ticket, allowed);
            }
            Input::Persisted(seq) => self.driver.handle_persisted(now, seq),
            Input::StoreFailed(e) => {
                log::error!("{e}; stopping");
                self.store_failed = Some(e);
            }
        }
    }

    /// Opens bridge `bridge`'s transport to its address `address` on a thread of its own
    /// (name lookup, connect and handshake block); the loop takes it from there.
    fn dial(&mut self, bridge: usize, address: usize) {
        let target = self.hooks.bridges.get(bridge).and_then(|b| b.addresses.get(address)).cloned();
        let mailbox = self.mailbox.clone();
        let spawned =
            thread::Builder::new().name("ternmq-dial".into()).stack_size(STACK).spawn(move || {
                let dialed = match target {
                    None => Err(io::Error::new(io::ErrorKind::NotFound, "no such address")),
                    Some(t) => {
                        let name = format!("{}:{}", t.host, t.port);
                        open(&t).map_err(|e| {
                            io::Error::new(e.kind(), format!("cannot reach {name}: {e}"))
                        })
                    }
                };
                mailbox.send(Input::Dialed(bridge, dialed));
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to dial a bridge: {e}");
            let now = self.now();
            self.driver.handle_bridge_closed(now, bridge);
        }
    }

    /// Bridge `bridge`'s transport is open: it becomes a connection of the loop.
    fn dialed(&mut self, now: Instant, bridge: usize, (stream, session, plain): Dialed) {
        let slot = self.next_slot();
        let stream = stream.set_nonblocking(true).map(|()| TcpStream::from_std(stream));
        let stream = match stream.and_then(|s| self.watch(s, slot)) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot watch a bridge's connection: {e}");
                self.driver.handle_bridge_closed(now, bridge);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let layer = session.map(|session| Box::new(Layered { session, owed: VecDeque::new() }));
        self.place(slot, stream, layer, Peer::Bridge(bridge));
        self.driver.handle_bridge_dialed(now, bridge, slot);
        if !plain.is_empty() {
            self.driver.handle_bridge_bytes(now, bridge, plain);
        }
    }

    fn accept(&mut self, listener: usize, now: Instant) {
        if self.accept_paused.contains(&listener) {
            return;
        }
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
                    // Paused until the driver's ResumeAccept.
                    self.accept_paused.push(listener);
                    let index = u16::try_from(listener).unwrap_or(u16::MAX);
                    self.driver.handle_accept_failed(now, index);
                    return;
                }
            }
        }
        // More may be waiting; the readiness event will not come again for them.
        self.accept_more = true;
    }

    fn admit(&mut self, stream: TcpStream, addr: SocketAddr, listener: usize, now: Instant) {
        let _ = stream.set_nodelay(true);
        let max_packet_size = self.hooks.broker.max_packet_size;
        let transport = self.hooks.listeners.get(listener).map(|l| l.transport(max_packet_size));
        let layer = match transport {
            Some(Ok(Some(session))) => Some(Box::new(Layered { session, owed: VecDeque::new() })),
            Some(Err(e)) => {
                log::warn!("no transport for {addr}: {e}");
                return;
            }
            _ => None,
        };
        let slot = self.next_slot();
        let listener = u16::try_from(listener).unwrap_or(u16::MAX);
        let peer = PeerInfo { addr: Some(addr), listener, identity: None, trusted: false };
        let id = match self.driver.handle_accepted(now, peer, slot) {
            Ok(id) => {
                log::debug!("new connection from {addr} as {id:?}");
                id
            }
            Err(e) => {
                log::warn!("refused connection from {addr}: {e}");
                return;
            }
        };
        let stream = match self.watch(stream, slot) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot watch the connection from {addr}: {e}; closing it");
                self.driver.handle_closed(now, id);
                return;
            }
        };
        self.place(slot, stream, layer, Peer::Client(id));
    }

    /// The slot the next connection takes (a free one, or a new one at the end), with a
    /// generation of its own.
    fn next_slot(&mut self) -> Slot {
        let index = match self.free.last() {
            Some(i) => *i,
            None => u32::try_from(self.conns.len()).unwrap_or(u32::MAX),
        };
        self.generation = self.generation.wrapping_add(1);
        Slot { index, generation: self.generation }
    }

    /// Registers `stream` for readiness under `slot`'s token.
    fn watch(&self, mut stream: TcpStream, slot: Slot) -> io::Result<TcpStream> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll.registry().register(&mut stream, Token(slot.index as usize), interest)?;
        Ok(stream)
    }

    /// Puts a new connection, already watched, in `slot` (from [`next_slot`](Self::next_slot)).
    fn place(&mut self, slot: Slot, stream: TcpStream, layer: Option<Box<Layered>>, peer: Peer) {
        let conn = Conn {
            stream,
            layer,
            generation: slot.generation,
            peer,
            open: true,
            out: Vec::new(),
            readable: false,
            queued: false,
            dirty: false,
            paused: false,
            peer_done: false,
            broken: false,
            shut: false,
        };
        if self.free.pop().is_none() {
            self.conns.push(Some(conn));
        } else if let Some(s) = self.conns.get_mut(slot.index as usize) {
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
                        let bytes = self.scratch.get(..n).unwrap_or_default();
                        // Once the broker closed it, what the peer still sends is dropped.
                        if !c.open {
                        } else if let Some(layer) = c.layer.as_deref_mut() {
                            let mut plain = BytesMut::new();
                            let received = layer.session.handle_input(bytes, &mut plain);
                            // Handshake messages, or the alert that says what went wrong.
                            layer.seal(&[], &mut c.out);
                            let identity = layer.session.poll_identity();
                            let peer_addr = layer.session.poll_peer_addr();
                            if !c.out.is_empty() {
                                mark_dirty(c, &mut self.dirty, index);
                            }
                            let peer = c.peer;
                            let closed = match received {
                                Ok(r) => r.closed,
                                Err(e) => {
                                    // Refused before any MQTT: counted, and closed after what
                                    // the transport has to say (an alert, an HTTP error).
                                    log::info!("connection {peer:?} refused: {e}");
                                    c.peer_done = true;
                                    peer.refused(&mut self.driver, now);
                                    self.act(now);
                                    break;
                                }
                            };
                            if let Peer::Client(id) = peer {
                                if let Some(identity) = identity {
                                    self.driver.handle_identity(id, identity);
                                }
                                if let Some(addr) = peer_addr {
                                    log::debug!("{id:?} is from {addr} (PROXY protocol)");
                                    self.driver.handle_peer_addr(id, addr);
                                }
                            }
                            if !plain.is_empty() {
                                peer.bytes(&mut self.driver, now, plain);
                                self.act(now);
                            }
                            if closed {
                                if let Some(Some(c)) = self.conns.get_mut(index as usize) {
                                    c.peer_done = true;
                                }
                                self.peer_gone(now, index);
                                break;
                            }
                        } else {
                            let peer = c.peer;
                            peer.bytes(&mut self.driver, now, BytesMut::from(bytes));
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
        if c.open {
            // The broker decides; its Close comes now or once paused input is handled.
            let peer = c.peer;
            peer.closed(&mut self.driver, now);
            self.act(now);
        } else {
            // Already closed by the broker: nothing waits for the peer any more.
            mark_dirty(c, &mut self.dirty, index);
        }
    }

    /// Carries out the driver's commands until it has none, and logs what it reports.
    fn act(&mut self, now: Instant) {
        while let Some(command) = self.driver.poll_command() {
            match command {
                Command::Write(slot, chunks) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        if let Some(layer) = c.layer.as_deref_mut() {
                            layer.seal(&chunks, &mut c.out);
                        } else if c.out.is_empty() {
                            c.out = chunks;
                        } else {
                            c.out.extend(chunks);
                        }
                        mark_dirty(c, &mut self.dirty, slot.index);
                    }
                }
                // Written out, then shut and lingered over (or dropped) by `flush`.
                Command::Close(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        if let Some(layer) = c.layer.as_deref_mut() {
                            layer.session.close();
                            layer.seal(&[], &mut c.out);
                        }
                        c.open = false;
                        c.paused = false;
                        mark_dirty(c, &mut self.dirty, slot.index);
                        if c.readable {
                            mark_ready(c, &mut self.ready, slot.index);
                        }
                    }
                }
                Command::Abort(slot) if conn_at(&mut self.conns, slot).is_some() => {
                    self.drop_conn(now, slot.index, false);
                }
                Command::PauseRead(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        c.paused = true;
                    }
                }
                Command::ResumeRead(slot) => {
                    if let Some(c) = conn_at(&mut self.conns, slot) {
                        c.paused = false;
                        if c.readable {
                            mark_ready(c, &mut self.ready, slot.index);
                        }
                    }
                }
                Command::ResumeAccept(listener) => {
                    let listener = usize::from(listener);
                    self.accept_paused.retain(|l| *l != listener);
                    self.accept(listener, now);
                }
                Command::Authenticate(ticket, request) => self.authenticate(now, ticket, request),
                Command::Authorize(ticket, request) => self.authorize(now, ticket, request),
                Command::Persist(batch) => {
                    if let Some(w) = &self.writer {
                        w.send(batch);
                    }
                }
                Command::Dial { bridge, address } => self.dial(bridge, address),
                _ => {}
            }
        }
        while let Some(event) = self.driver.poll_event() {
            log_event(&event);
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
            self.driver.handle_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
            return;
        };
        let mailbox = self.mailbox.clone();
        let spawned =
            thread::Builder::new().name("ternmq-auth".into()).stack_size(STACK).spawn(move || {
                let decision = futures_lite::future::block_on(fut);
                mailbox.send(Input::Auth(ticket, decision));
            });
        if spawned.is_err() {
            self.driver.handle_auth(now, ticket, NO_ASYNC_AUTHENTICATOR);
        }
    }

    /// A deferred authorization, as [`authenticate`](Self::authenticate).
    fn authorize(&mut self, now: Instant, ticket: AuthTicket, request: AuthorizeRequest) {
        let inline = |job: Box<dyn FnOnce() -> bool + Send>| -> AuthzFuture {
            Box::pin(async move { job() })
        };
        let Some(fut) = self.hooks.deferred_authorization(request, inline) else {
            log::warn!("an authorizer deferred but no authorizer hook is configured");
            self.driver.handle_authorization(now, ticket, false);
            return;
        };
        let mailbox = self.mailbox.clone();
        let spawned =
            thread::Builder::new().name("ternmq-authz".into()).stack_size(STACK).spawn(move || {
                let allowed = futures_lite::future::block_on(fut);
                mailbox.send(Input::Authorized(ticket, allowed));
            });
        if spawned.is_err() {
            self.driver.handle_authorization(now, ticket, false);
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
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
        let (peer, open) = (c.peer, c.open);
        if c.broken {
            c.peer_done = true;
            if open {
                // Its Close (now, or once paused input is handled) drops it.
                peer.closed(&mut self.driver, now);
            } else {
                self.drop_conn(now, index, true);
            }
            return;
        }
        let written = match c.layer.as_deref_mut() {
            Some(layer) => layer.written(written),
            None => written,
        };
        if written > 0 {
            // The driver times stalled writers and lingering from these reports.
            peer.written(&mut self.driver, now, written);
        }
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return;
        };
        if c.open || !c.out.is_empty() {
            return;
        }
        if c.peer_done {
            // Everything written; the peer is gone too: done.
            self.drop_conn(now, index, true);
        } else if !c.shut {
            // Shut our side, then read and drop until the peer closes (see Command::Close).
            c.shut = true;
            let _ = c.stream.shutdown(Shutdown::Write);
        }
    }

    /// Drops the connection at `index`, telling the driver unless it asked for the drop.
    fn drop_conn(&mut self, now: Instant, index: u32, report: bool) {
        let Some(slot) = self.conns.get_mut(index as usize) else {
            return;
        };
        if let Some(mut c) = slot.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(index);
            if report {
                c.peer.closed(&mut self.driver, now);
            }
        }
    }

    /// Stops accepting and has the broker disconnect everyone; the loop then writes out what
    /// is left and runs until the driver says every connection is gone.
    fn shutdown(&mut self, now: Instant) {
        for l in &mut self.listeners {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        self.accept_more = false;
        log::info!("{}", self.driver.broker().stats());
        self.driver.shutdown(now);
        self.settle(now);
    }
}

/// A bridge's transport: TCP, then its TLS or WebSocket handshake, blocking.
fn open(target: &BridgeAddress) -> io::Result<Dialed> {
    let mut stream = std::net::TcpStream::connect((target.host.as_str(), target.port))?;
    stream.set_nodelay(true)?;
    let Some(transport) = &target.transport else {
        return Ok((stream, None, BytesMut::new()));
    };
    let mut session = transport.session()?;
    let plain = crate::transport::handshake(&mut stream, &mut *session, BRIDGE_HANDSHAKE)?;
    Ok((stream, Some(session), plain))
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
