//! The MQTT broker server without an async runtime: readiness loops on std threads.
//!
//! A readiness loop (epoll, kqueue or IOCP, through `mio`) serves sockets: it reads what is
//! ready, a bounded amount per connection and turn so that one busy client cannot starve the
//! others, and writes what the broker hands out with one vectored write per connection and
//! turn. A connection costs a slot in its loop's table and its socket, not a thread or a task.
//!
//! The broker's thread runs the listeners, the broker (through [`Driver`]) and a loop of its
//! own. With one thread ([`Server::io_threads`] 1, the default) that loop serves every socket
//! and gives the driver each read at once. With `n` I/O threads, each runs a loop over its share
//! of the client connections (handed out in turn as they are accepted) and, once per turn,
//! sends the broker's thread what its sockets did; the broker's orders (write, close, pause)
//! go back in a list per thread, with one wake per batch. The broker's own loop then keeps only
//! the bridges' sockets. The store's writer and the hooks that answer deferred decisions
//! (blocking or async, see [`ServerConfig`]) run on threads of their own and report back
//! through a channel that wakes the broker's loop. Protocol decisions are the core's: this
//! module moves bytes and time.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use ternmq_async::control::ControlInbox;
pub use ternmq_async::control::{Control, ListenerInfo};
use ternmq_async::server::BRIDGE_HANDSHAKE;
pub use ternmq_async::server::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer, BridgeAddress, BridgeSpec, Listener, ServerConfig,
    ShutdownHandle,
};
use ternmq_async::server::{bind_error, lock};
pub use ternmq_async::tls::{TlsAcceptor, TlsSettings, TlsVersion};
use ternmq_async::transport::Transform;
use ternmq_core::broker::driver::{Command, Driver, NO_ASYNC_AUTHENTICATOR, consume, log_event};
use ternmq_core::broker::persist::PersistSeq;
use ternmq_core::broker::{AuthDecision, AuthRequest, AuthTicket, ConnId, PeerInfo};
use ternmq_core::codec::MqttStr;
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

/// What other threads tell the core's loop.
enum Input {
    /// A bridge's transport to its remote broker, opened (and through its handshake) on a
    /// thread of its own: the socket, its TLS or WebSocket session, and MQTT bytes that came
    /// with the handshake's end.
    Dialed(usize, io::Result<Dialed>),
    Auth(AuthTicket, AuthDecision),
    Authorized(AuthTicket, bool),
    Persisted(PersistSeq),
    StoreFailed(String),
    /// What an I/O thread's sockets did, in order (by the thread's number), and how many MQTT
    /// bytes that carries.
    Io(usize, Vec<Event>, usize),
}

type Dialed = (std::net::TcpStream, Option<Box<dyn Transform>>, BytesMut);

/// What happened on a socket, for the driver.
enum Event {
    Bytes(Peer, BytesMut),
    /// The reader saw the peer close, or the socket fail, while the connection was open to
    /// it: the broker may have closed it meanwhile (see [`Driver::handle_peer_gone`]).
    PeerGone(Peer),
    /// The socket is dropped.
    Closed(Peer),
    Written(Peer, usize),
    /// The transport refused the connection before any MQTT.
    Refused(Peer),
    Identity(ConnId, MqttStr),
    PeerAddr(ConnId, SocketAddr),
    /// The socket in this slot is gone: the slot may be given again.
    Freed(Slot),
}

/// What the core asks of a socket.
enum Order {
    /// A new connection for this slot: watch it and serve it.
    Place(TcpStream, Option<Box<Layered>>, Peer),
    Write(Vec<Bytes>),
    /// Write what is queued, then shut and linger (see [`Command::Close`]).
    Close,
    /// Drop it now; the driver knows.
    Abort,
    Pause,
    Resume,
    /// (To an I/O thread, whatever the slot.) The server is done.
    Stop,
}

/// What a socket is to the driver: a client's connection, or a bridge's transport to its remote
/// broker (by the bridge's index).
#[derive(Clone, Copy, Debug)]
enum Peer {
    Client(ConnId),
    /// (A `u32`, which keeps a connection's record at 40 bytes.)
    Bridge(u32),
}

/// Sends to the core's loop and wakes it.
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

/// A bound MQTT broker server: readiness loops on std threads (see the module's text).
pub struct Server {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<TcpListener>,
    config: ServerConfig,
    stopping: Arc<AtomicBool>,
    store: Option<Store>,
    control: (Control, ControlInbox),
    io_threads: usize,
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
        Ok(Server { poll, waker, listeners, config, stopping, store, control, io_threads: 1 })
    }

    /// Serves the connections from `n` threads of their own, each a readiness loop over its
    /// share of the sockets, beside the thread that runs the broker (and any bridge's
    /// sockets). With 1 (the default) one thread does everything.
    #[must_use]
    pub fn io_threads(mut self, n: usize) -> Server {
        self.io_threads = n.clamp(1, MAX_IO_THREADS);
        self
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
        // With I/O threads, the core's own loop keeps only the bridges' sockets.
        let workers = if self.io_threads > 1 { self.io_threads } else { 0 };
        let mut core = Core {
            listeners: self.listeners.into_iter().map(Some).collect(),
            accept_more: false,
            accept_paused: Vec::new(),
            slots: (0..=workers).map(Slots::new).collect(),
            workers: Vec::with_capacity(workers),
            next_worker: 0,
            driver: Driver::new(broker),
            epoch: StdInstant::now(),
            rx,
            mailbox,
            hooks: self.config.clone(),
            writer,
            store_failed: None,
            inbox: self.control.1,
        };
        let mut io = Io::new(self.poll, 0);
        let started = (1..=workers).try_for_each(|n| {
            let worker = Worker::start(n, core.mailbox.clone())?;
            core.workers.push(worker);
            Ok::<_, io::Error>(())
        });
        let served = started.and_then(|()| {
            core.inbox.started(core.writer.as_ref().map(Writer::metrics));
            for spec in &self.config.bridges {
                let now = core.now();
                core.driver.add_bridge(now, spec.config.clone());
            }
            let now = core.now();
            core.settle(now, &mut io);
            core.run(&mut io, &self.stopping)
        });
        // (The I/O threads stop when `core` is dropped, however the loop ended.)
        // Everything logged, up to the last connection's close, is committed before the server
        // returns, however the loop ended.
        if let Some(w) = core.writer.take() {
            w.close();
        }
        served?;
        match core.store_failed.take() {
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

/// How the driver names a connection: the thread whose loop serves it and its slot there (in
/// `index`, the thread's number above [`THREAD_SHIFT`]), and the generation that tells a
/// slot's later occupants apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    index: u32,
    generation: u32,
}

/// Where a slot's thread number starts in [`Slot::index`]: 2^24 slots per thread.
const THREAD_SHIFT: u32 = 24;
const MAX_IO_THREADS: usize = 255;

impl Slot {
    /// Place `at` in loop `thread`'s table, for its `generation`-th occupant.
    fn new(thread: u32, at: u32, generation: u32) -> Slot {
        Slot { index: thread << THREAD_SHIFT | at, generation }
    }

    /// The loop that serves it: 0 is the core's own.
    fn thread(self) -> usize {
        (self.index >> THREAD_SHIFT) as usize
    }

    /// Its place in that loop's table.
    fn at(self) -> u32 {
        self.index & ((1 << THREAD_SHIFT) - 1)
    }
}

/// The slots of one loop, handed out by the core (which names a connection before its loop
/// has it) and given back once the loop has dropped the socket.
struct Slots {
    thread: u32,
    free: Vec<u32>,
    next: u32,
    generation: u32,
}

impl Slots {
    fn new(thread: usize) -> Slots {
        let thread = u32::try_from(thread).unwrap_or(0);
        Slots { thread, free: Vec::new(), next: 0, generation: 0 }
    }

    fn take(&mut self) -> Slot {
        let at = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.generation = self.generation.wrapping_add(1);
        Slot::new(self.thread, at, self.generation)
    }

    fn give(&mut self, slot: Slot) {
        self.free.push(slot.at());
    }
}

/// One socket and what its loop knows of it.
struct Conn {
    stream: TcpStream,
    /// TLS, WebSocket or a PROXY header on this connection, if its listener has them.
    layer: Option<Box<Layered>>,
    generation: u32,
    /// Who it is to the driver.
    peer: Peer,
    /// Buffers handed out by the broker and not yet written; none while idle (boxed, as an
    /// empty list in every idle connection's record would be 24 bytes).
    #[expect(clippy::box_collection, reason = "8 bytes in the record, not a Vec's 24")]
    out: Option<Box<Vec<Bytes>>>,
    /// Its state, as bits: [`OPEN`], [`READABLE`], [`QUEUED`], [`DIRTY`], [`PAUSED`],
    /// [`PEER_DONE`], [`BROKEN`], [`SHUT`] (one byte rather than eight `bool`s).
    flags: u8,
}

/// The broker still has it open (once closed, it lingers).
const OPEN: u8 = 1;
/// The socket reported readable and has not been read until it would block.
const READABLE: u8 = 1 << 1;
/// In [`Io::ready`].
const QUEUED: u8 = 1 << 2;
/// In [`Io::dirty`].
const DIRTY: u8 = 1 << 3;
/// The broker paused reading (a subscriber of what this client publishes is behind).
const PAUSED: u8 = 1 << 4;
/// The peer closed, or the socket failed: nothing more will be read.
const PEER_DONE: u8 = 1 << 5;
/// The socket failed: nothing more will be written either.
const BROKEN: u8 = 1 << 6;
/// Our side was shut after the last byte; the connection lingers until the peer closes.
const SHUT: u8 = 1 << 7;

impl Conn {
    fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Bytes wait to be written.
    fn unwritten(&self) -> bool {
        self.out.as_ref().is_some_and(|out| !out.is_empty())
    }
}

/// The sockets of one thread's readiness loop: it reads them, writes them and carries out the
/// core's orders on them, and keeps what happened as [`Event`]s for the driver. The core's own
/// loop and every I/O thread run one.
struct Io {
    poll: Poll,
    thread: u32,
    conns: Vec<Option<Conn>>,
    /// Connections to read from this turn.
    ready: VecDeque<u32>,
    /// Connections with something to write this turn.
    dirty: Vec<u32>,
    scratch: Vec<u8>,
    /// What the sockets did, not yet given to the driver.
    events: VecDeque<Event>,
    /// The MQTT bytes in `events`.
    event_bytes: usize,
}

impl Io {
    fn new(poll: Poll, thread: usize) -> Io {
        Io {
            poll,
            thread: u32::try_from(thread).unwrap_or(0),
            conns: Vec::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            events: VecDeque::new(),
            event_bytes: 0,
        }
    }

    fn emit(&mut self, event: Event) {
        if let Event::Bytes(_, b) = &event {
            self.event_bytes += b.len();
        }
        self.events.push_back(event);
    }

    /// A readiness event for a connection's token.
    fn on_ready(&mut self, event: &mio::event::Event) {
        let t = event.token().0;
        let Some(Some(c)) = self.conns.get_mut(t) else {
            return;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            c.set(READABLE, true);
            mark_ready(c, &mut self.ready, t as u32);
        }
        if event.is_writable() || event.is_write_closed() {
            mark_dirty(c, &mut self.dirty, t as u32);
        }
    }

    /// Watches `stream` for readiness under `slot`'s token and serves it there.
    fn place(
        &mut self,
        slot: Slot,
        mut stream: TcpStream,
        layer: Option<Box<Layered>>,
        peer: Peer,
    ) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let at = slot.at() as usize;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(at), interest) {
            log::warn!("cannot watch connection {peer:?}: {e}; closing it");
            self.emit(Event::Closed(peer));
            self.emit(Event::Freed(slot));
            return;
        }
        let conn =
            Conn { stream, layer, generation: slot.generation, peer, out: None, flags: OPEN };
        if self.conns.len() <= at {
            self.conns.resize_with(at + 1, || None);
        }
        if let Some(s) = self.conns.get_mut(at) {
            *s = Some(conn);
        }
    }

    /// Carries out one of the core's orders.
    fn apply(&mut self, slot: Slot, order: Order) {
        let index = slot.at();
        if let Order::Place(stream, layer, peer) = order {
            self.place(slot, stream, layer, peer);
            return;
        }
        let Some(c) = conn_at(&mut self.conns, slot) else {
            return;
        };
        match order {
            Order::Write(chunks) => {
                if let Some(layer) = c.layer.as_deref_mut() {
                    layer.seal(&chunks, c.out.get_or_insert_default());
                } else if let Some(out) = c.out.as_deref_mut() {
                    out.extend(chunks);
                } else {
                    c.out = Some(Box::new(chunks));
                }
                mark_dirty(c, &mut self.dirty, index);
            }
            // Written out, then shut and lingered over (or dropped) by `flush`.
            Order::Close => {
                if let Some(layer) = c.layer.as_deref_mut() {
                    layer.session.close();
                    layer.seal(&[], c.out.get_or_insert_default());
                }
                c.set(OPEN, false);
                c.set(PAUSED, false);
                mark_dirty(c, &mut self.dirty, index);
                if c.is(READABLE) {
                    mark_ready(c, &mut self.ready, index);
                }
            }
            Order::Abort => self.drop_conn(index, false),
            Order::Pause => c.set(PAUSED, true),
            Order::Resume => {
                c.set(PAUSED, false);
                if c.is(READABLE) {
                    mark_ready(c, &mut self.ready, index);
                }
            }
            Order::Place(..) | Order::Stop => {}
        }
    }

    /// Reads from each ready connection up to its budget; one that has more goes again next
    /// turn. After each read `then` runs (the core's loop gives the driver what was read, so
    /// that a pause takes effect before the next read); once it says no, reading stops for
    /// this turn.
    fn read_ready(&mut self, mut then: impl FnMut(&mut Io) -> bool) {
        for _ in 0..self.ready.len() {
            let Some(index) = self.ready.pop_front() else {
                break;
            };
            let mut budget = READ_BUDGET;
            if let Some(Some(c)) = self.conns.get_mut(index as usize) {
                c.set(QUEUED, false);
            }
            while let Some(Some(c)) = self.conns.get_mut(index as usize) {
                if !c.is(READABLE) || c.is(PAUSED) || c.is(PEER_DONE) {
                    break;
                }
                if budget == 0 {
                    mark_ready(c, &mut self.ready, index);
                    break;
                }
                let n = self.read_once(index);
                budget = budget.saturating_sub(n.unwrap_or(0));
                if !then(self) {
                    if let Some(Some(c)) = self.conns.get_mut(index as usize) {
                        mark_ready(c, &mut self.ready, index);
                    }
                    return;
                }
                if n.is_none() {
                    break;
                }
            }
        }
    }

    /// One read from the connection at `index`: the bytes read, or `None` when it is done for
    /// this turn.
    fn read_once(&mut self, index: u32) -> Option<usize> {
        let c = self.conns.get_mut(index as usize)?.as_mut()?;
        match c.stream.read(&mut self.scratch) {
            Ok(0) => {
                c.set(PEER_DONE, true);
                self.peer_gone(index);
                None
            }
            Ok(n) => {
                let bytes = self.scratch.get(..n).unwrap_or_default();
                let peer = c.peer;
                // Once the broker closed it, what the peer still sends is dropped.
                if !c.is(OPEN) {
                    return Some(n);
                }
                let Some(layer) = c.layer.as_deref_mut() else {
                    self.emit(Event::Bytes(peer, BytesMut::from(bytes)));
                    return Some(n);
                };
                let mut plain = BytesMut::new();
                let received = layer.session.handle_input(bytes, &mut plain);
                // Handshake messages, or the alert that says what went wrong.
                layer.seal(&[], c.out.get_or_insert_default());
                let identity = layer.session.poll_identity();
                let peer_addr = layer.session.poll_peer_addr();
                if c.unwritten() {
                    mark_dirty(c, &mut self.dirty, index);
                }
                let closed = match received {
                    Ok(r) => r.closed,
                    Err(e) => {
                        // Refused before any MQTT: counted, and closed after what the
                        // transport has to say (an alert, an HTTP error).
                        log::info!("connection {peer:?} refused: {e}");
                        c.set(PEER_DONE, true);
                        self.emit(Event::Refused(peer));
                        return None;
                    }
                };
                c.set(PEER_DONE, closed);
                if let Peer::Client(id) = peer {
                    if let Some(identity) = identity {
                        self.emit(Event::Identity(id, identity));
                    }
                    if let Some(addr) = peer_addr {
                        self.emit(Event::PeerAddr(id, addr));
                    }
                }
                if !plain.is_empty() {
                    self.emit(Event::Bytes(peer, plain));
                }
                if closed {
                    self.peer_gone(index);
                    return None;
                }
                Some(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.set(READABLE, false);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
            Err(_) => {
                c.set(PEER_DONE, true);
                c.set(BROKEN, true);
                self.peer_gone(index);
                None
            }
        }
    }

    /// The peer closed or the socket failed.
    fn peer_gone(&mut self, index: u32) {
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return;
        };
        if c.is(OPEN) {
            // The broker decides; its Close comes now or once paused input is handled.
            let peer = c.peer;
            self.emit(Event::PeerGone(peer));
        } else {
            // Already closed by the broker: nothing waits for the peer any more.
            mark_dirty(c, &mut self.dirty, index);
        }
    }

    /// Writes every connection with something to write, once.
    fn flush_dirty(&mut self) {
        for index in std::mem::take(&mut self.dirty) {
            self.flush(index);
        }
    }

    /// Writes what `index` holds until done or the socket would block; then, once a closed
    /// connection has written everything, shuts it or drops it.
    fn flush(&mut self, index: u32) {
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return;
        };
        c.set(DIRTY, false);
        let mut written = 0;
        let mut broken = c.is(BROKEN);
        if let Some(out) = c.out.as_deref_mut() {
            let mut first = 0;
            while !broken && first < out.len() {
                let mut slices = [IoSlice::new(&[]); IOVECS];
                let mut k = 0;
                for (s, b) in slices.iter_mut().zip(out.iter().skip(first)) {
                    *s = IoSlice::new(b);
                    k += 1;
                }
                match c.stream.write_vectored(slices.get(..k).unwrap_or_default()) {
                    Ok(0) => broken = true,
                    Ok(n) => {
                        first = consume(out, first, n);
                        written += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => broken = true,
                }
            }
            // Written buffers go now: behind a slow reader the list is never empty for long.
            out.drain(..first);
        }
        c.set(BROKEN, broken);
        if !c.unwritten() {
            // An idle connection keeps no buffer list.
            c.out = None;
        }
        let (peer, open) = (c.peer, c.is(OPEN));
        if broken {
            c.set(PEER_DONE, true);
            if open {
                // Its Close (now, or once paused input is handled) drops it.
                self.emit(Event::PeerGone(peer));
            } else {
                self.drop_conn(index, true);
            }
            return;
        }
        let written = match c.layer.as_deref_mut() {
            Some(layer) => layer.written(written),
            None => written,
        };
        let done = !c.is(OPEN) && !c.unwritten();
        if done && !c.is(PEER_DONE) && !c.is(SHUT) {
            // Shut our side, then read and drop until the peer closes (see Command::Close).
            c.set(SHUT, true);
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        let gone = done && c.is(PEER_DONE);
        if written > 0 {
            // The driver times stalled writers and lingering from these reports.
            self.emit(Event::Written(peer, written));
        }
        if gone {
            // Everything written; the peer is gone too: done.
            self.drop_conn(index, true);
        }
    }

    /// Drops the connection at `index`, telling the driver unless it asked for the drop.
    fn drop_conn(&mut self, index: u32, report: bool) {
        let Some(place) = self.conns.get_mut(index as usize) else {
            return;
        };
        if let Some(mut c) = place.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if report {
                self.emit(Event::Closed(c.peer));
            }
            self.emit(Event::Freed(Slot::new(self.thread, index, c.generation)));
        }
    }

    /// Every socket dropped, each reported closed (its loop can no longer serve it).
    fn drop_all(&mut self) {
        for index in 0..self.conns.len() {
            self.drop_conn(u32::try_from(index).unwrap_or(u32::MAX), true);
        }
    }
}

/// The broker's thread: the driver, the listeners, and the loop that serves its own sockets
/// (every socket, or with I/O threads only the bridges'), and hands the others' orders over.
struct Core {
    /// `None` once the server stops accepting.
    listeners: Vec<Option<TcpListener>>,
    /// A listener's accept budget ran out: accept again next turn.
    accept_more: bool,
    /// Listeners whose accepting failed, until the driver resumes them.
    accept_paused: Vec<usize>,
    /// Per loop (0 the core's own, then each I/O thread), the slots it serves.
    slots: Vec<Slots>,
    /// The I/O threads (thread `n` at `n - 1`).
    workers: Vec<Worker>,
    /// The I/O thread the next accepted connection goes to.
    next_worker: usize,
    driver: Driver<Slot>,
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

impl Core {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn run(&mut self, io: &mut Io, stopping: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        let mut shut_down = false;
        loop {
            if self.driver.is_finished() {
                return Ok(());
            }
            let now = self.now();
            let timeout = if io.ready.is_empty() && !self.accept_more {
                self.driver
                    .poll_timeout()
                    .map(|at| Duration::from_nanos(at.as_nanos().saturating_sub(now.as_nanos())))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = io.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            let now = self.now();
            for event in &events {
                match event.token() {
                    WAKER => {}
                    Token(t) if t >= usize::MAX - self.listeners.len() => {
                        self.accept(io, usize::MAX - 1 - t, now);
                    }
                    _ => io.on_ready(event),
                }
            }
            if std::mem::take(&mut self.accept_more) {
                for i in 0..self.listeners.len() {
                    self.accept(io, i, now);
                }
            }
            while let Ok(input) = self.rx.try_recv() {
                self.input(now, io, input);
            }
            let driver = &mut self.driver;
            self.inbox.serve(|request| driver.handle_admin(now, request));
            if self.store_failed.is_some() {
                stopping.store(true, Ordering::SeqCst);
            }
            io.read_ready(|io| {
                self.act(now, io);
                true
            });
            if self.driver.poll_timeout().is_some_and(|at| at <= now) {
                self.driver.handle_timeout(now);
            }
            self.settle(now, io);
            if !shut_down && stopping.load(Ordering::SeqCst) {
                shut_down = true;
                self.inbox.stopping();
                self.shutdown(now, io);
            }
            self.post();
        }
    }

    fn input(&mut self, now: Instant, io: &mut Io, input: Input) {
        match input {
            Input::Dialed(bridge, Ok(dialed)) => self.dialed(now, io, bridge, dialed),
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
            Input::Io(thread, events, bytes) => {
                for event in events {
                    self.feed(now, event);
                }
                // Given back with this turn's orders (see `post`), so that a pause those bytes
                // caused reaches the thread before it reads again.
                if let Some(w) = thread.checked_sub(1).and_then(|i| self.workers.get_mut(i)) {
                    w.taken += bytes;
                }
            }
        }
    }

    /// Gives the driver what a socket did.
    fn feed(&mut self, now: Instant, event: Event) {
        let driver = &mut self.driver;
        match event {
            Event::Bytes(Peer::Client(id), bytes) => driver.handle_bytes(now, id, bytes),
            Event::Bytes(Peer::Bridge(b), bytes) => driver.handle_bridge_bytes(now, at(b), bytes),
            Event::Closed(Peer::Client(id)) => driver.handle_closed(now, id),
            Event::PeerGone(Peer::Client(id)) => driver.handle_peer_gone(now, id),
            Event::Closed(Peer::Bridge(b))
            | Event::PeerGone(Peer::Bridge(b))
            | Event::Refused(Peer::Bridge(b)) => driver.handle_bridge_closed(now, at(b)),
            Event::Written(Peer::Client(id), n) => driver.handle_written(now, id, n),
            Event::Written(Peer::Bridge(b), n) => driver.handle_bridge_written(now, at(b), n),
            Event::Refused(Peer::Client(id)) => driver.handle_refused(now, id),
            Event::Identity(id, identity) => driver.handle_identity(id, identity),
            Event::PeerAddr(id, addr) => {
                log::debug!("{id:?} is from {addr} (PROXY protocol)");
                driver.handle_peer_addr(id, addr);
            }
            Event::Freed(slot) => {
                if let Some(s) = self.slots.get_mut(slot.thread()) {
                    s.give(slot);
                }
            }
        }
    }

    /// Hands each I/O thread the orders gathered for it, waking it if it had none waiting.
    /// A thread that has stopped (its poll failed, or it panicked) gets none: the
    /// connections placed on it are closed to the driver.
    fn post(&mut self) {
        let now = self.now();
        for i in 0..self.workers.len() {
            let Some(w) = self.workers.get_mut(i) else { continue };
            if w.shared.alive.load(Ordering::SeqCst) {
                w.post();
                continue;
            }
            for (_, order) in std::mem::take(&mut w.orders) {
                if let Order::Place(_, _, peer) = order {
                    self.feed(now, Event::Closed(peer));
                }
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

    /// Bridge `bridge`'s transport is open: it becomes a connection of the core's own loop.
    fn dialed(&mut self, now: Instant, io: &mut Io, bridge: usize, dialed: Dialed) {
        let (stream, session, plain) = dialed;
        let index = u32::try_from(bridge).map_err(io::Error::other);
        let index = match index.and_then(|i| stream.set_nonblocking(true).map(|()| i)) {
            Ok(index) => index,
            Err(e) => {
                log::warn!("cannot watch a bridge's connection: {e}");
                self.driver.handle_bridge_closed(now, bridge);
                return;
            }
        };
        let stream = TcpStream::from_std(stream);
        let _ = stream.set_nodelay(true);
        let Some(slots) = self.slots.get_mut(0) else {
            return;
        };
        let slot = slots.take();
        let layer = session.map(|session| Box::new(Layered { session, owed: VecDeque::new() }));
        io.place(slot, stream, layer, Peer::Bridge(index));
        self.driver.handle_bridge_dialed(now, bridge, slot);
        if !plain.is_empty() {
            self.driver.handle_bridge_bytes(now, bridge, plain);
        }
    }

    fn accept(&mut self, io: &mut Io, listener: usize, now: Instant) {
        if self.accept_paused.contains(&listener) {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(Some(l)) = self.listeners.get(listener) else {
                return;
            };
            match l.accept() {
                Ok((stream, addr)) => self.admit(io, stream, addr, listener, now),
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

    /// A new client connection: named to the driver, then served by the core's loop or, with
    /// I/O threads, by the next of them in turn.
    fn admit(
        &mut self,
        io: &mut Io,
        stream: TcpStream,
        addr: SocketAddr,
        listener: usize,
        now: Instant,
    ) {
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
        let thread = self.next_thread();
        let Some(slots) = self.slots.get_mut(thread) else {
            return;
        };
        let slot = slots.take();
        let listener = u16::try_from(listener).unwrap_or(u16::MAX);
        let peer = PeerInfo { addr: Some(addr), listener, identity: None, trusted: false };
        let id = match self.driver.handle_accepted(now, peer, slot) {
            Ok(id) => {
                log::debug!("new connection from {addr} as {id:?}");
                id
            }
            Err(e) => {
                log::warn!("refused connection from {addr}: {e}");
                slots.give(slot);
                return;
            }
        };
        self.order(io, slot, Order::Place(stream, layer, Peer::Client(id)));
    }

    /// The loop a new connection goes to: the next live I/O thread in turn, or the core's own
    /// (when it has none, or none is left).
    fn next_thread(&mut self) -> usize {
        let n = self.workers.len();
        for _ in 0..n {
            self.next_worker = (self.next_worker + 1) % n;
            if self
                .workers
                .get(self.next_worker)
                .is_some_and(|w| w.shared.alive.load(Ordering::SeqCst))
            {
                return self.next_worker + 1;
            }
        }
        0
    }

    /// Carries out `order` on the core's own loop, or hands it to the slot's I/O thread.
    fn order(&mut self, io: &mut Io, slot: Slot, order: Order) {
        match slot.thread().checked_sub(1) {
            None => io.apply(slot, order),
            Some(i) => {
                if let Some(w) = self.workers.get_mut(i) {
                    w.orders.push((slot, order));
                }
            }
        }
    }

    /// Gives the driver what the core's sockets did and carries out the driver's commands,
    /// until neither has more; then logs what the driver reports.
    fn act(&mut self, now: Instant, io: &mut Io) {
        loop {
            if let Some(event) = io.events.pop_front() {
                if let Event::Bytes(_, b) = &event {
                    io.event_bytes = io.event_bytes.saturating_sub(b.len());
                }
                self.feed(now, event);
                continue;
            }
            let Some(command) = self.driver.poll_command() else {
                break;
            };
            match command {
                Command::Write(slot, chunks) => self.order(io, slot, Order::Write(chunks)),
                Command::Close(slot) => self.order(io, slot, Order::Close),
                Command::Abort(slot) => self.order(io, slot, Order::Abort),
                Command::PauseRead(slot) => self.order(io, slot, Order::Pause),
                Command::ResumeRead(slot) => self.order(io, slot, Order::Resume),
                Command::ResumeAccept(listener) => {
                    let listener = usize::from(listener);
                    self.accept_paused.retain(|l| *l != listener);
                    self.accept(io, listener, now);
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

    /// Acts and writes the core's own sockets until nothing is left that can be written now.
    fn settle(&mut self, now: Instant, io: &mut Io) {
        loop {
            self.act(now, io);
            if io.dirty.is_empty() {
                return;
            }
            io.flush_dirty();
        }
    }

    /// Stops accepting and has the broker disconnect everyone; the loop then writes out what
    /// is left and runs until the driver says every connection is gone.
    fn shutdown(&mut self, now: Instant, io: &mut Io) {
        for l in &mut self.listeners {
            if let Some(mut l) = l.take() {
                let _ = io.poll.registry().deregister(&mut l);
            }
        }
        self.accept_more = false;
        log::info!("{}", self.driver.broker().stats());
        self.driver.shutdown(now);
        self.settle(now, io);
    }

    /// Tells every I/O thread to stop and waits for it.
    fn stop_workers(&mut self) {
        for w in &mut self.workers {
            w.orders.push((Slot { index: 0, generation: 0 }, Order::Stop));
            w.post();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take()
                && t.join().is_err()
            {
                log::error!("an I/O thread panicked");
            }
        }
    }
}

impl Drop for Core {
    /// However the broker's thread ends (a panic included), the I/O threads end with it.
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// MQTT bytes an I/O thread may have read and not yet seen taken by the core: past this it
/// reads no more until the core catches up (so it holds at most this and one read more).
/// Small: a saturating QoS 0 fan-in peaked at 10-12 MB with 16 KiB and 14-19 MB with 256 KiB
/// to 1 MiB, at the same rate (2 I/O threads, 2 CPUs).
const IO_BACKLOG: usize = 16 * 1024;

/// An I/O thread, from the core's side.
struct Worker {
    shared: Arc<Shared>,
    /// Orders gathered this turn, handed over by [`post`](Self::post).
    orders: Vec<(Slot, Order)>,
    /// Backlog bytes the core took this turn, given back by [`post`](Self::post).
    taken: usize,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the core and an I/O thread share.
struct Shared {
    orders: Mutex<Vec<(Slot, Order)>>,
    waker: Waker,
    /// MQTT bytes sent to the core and not yet taken.
    backlog: AtomicUsize,
    /// The thread waits for the core to take its backlog.
    blocked: AtomicBool,
    /// Cleared when the thread ends, however it ends.
    alive: AtomicBool,
}

/// Clears [`Shared::alive`] when the I/O thread ends, a panic included.
struct Alive<'a>(&'a Shared);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

impl Shared {
    /// Whether the backlog is full; if so the thread is to be woken once it is not.
    fn full(&self) -> bool {
        if self.backlog.load(Ordering::SeqCst) < IO_BACKLOG {
            return false;
        }
        self.blocked.store(true, Ordering::SeqCst);
        self.backlog.load(Ordering::SeqCst) >= IO_BACKLOG
    }

    /// The core took `bytes` of the backlog.
    fn taken(&self, bytes: usize) {
        let before = self.backlog.fetch_sub(bytes, Ordering::SeqCst);
        if before.saturating_sub(bytes) < IO_BACKLOG && self.blocked.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

impl Worker {
    /// Starts I/O thread `n` (from 1), which reports to `mailbox`.
    fn start(n: usize, mailbox: Mailbox) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            orders: Mutex::new(Vec::new()),
            waker,
            backlog: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        });
        let io = Io::new(poll, n);
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("ternmq-io-{n}"))
            .stack_size(STACK)
            .spawn(move || serve_io(io, &theirs, &mailbox, n))?;
        Ok(Worker { shared, orders: Vec::new(), taken: 0, thread: Some(thread) })
    }

    fn post(&mut self) {
        if !self.orders.is_empty() {
            let mut queue = lock(&self.shared.orders);
            let idle = queue.is_empty();
            queue.append(&mut self.orders);
            drop(queue);
            if idle {
                let _ = self.shared.waker.wake();
            }
        }
        if self.taken > 0 {
            self.shared.taken(std::mem::take(&mut self.taken));
        }
    }
}

/// An I/O thread's loop: carries out the core's orders, reads and writes its sockets, and
/// sends what happened to the core once per turn.
fn serve_io(mut io: Io, shared: &Shared, mailbox: &Mailbox, n: usize) {
    let _alive = Alive(shared);
    let mut events = Events::with_capacity(EVENTS);
    let mut orders = Vec::new();
    loop {
        let full = shared.full();
        let timeout = if io.ready.is_empty() || full { None } else { Some(Duration::ZERO) };
        if let Err(e) = io.poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            log::error!("I/O thread {n} cannot wait for its sockets: {e}; closing them");
            io.drop_all();
            ship(&mut io, shared, mailbox, n);
            return;
        }
        for event in &events {
            if event.token() != WAKER {
                io.on_ready(event);
            }
        }
        std::mem::swap(&mut orders, &mut *lock(&shared.orders));
        for (slot, order) in orders.drain(..) {
            if matches!(order, Order::Stop) {
                return;
            }
            io.apply(slot, order);
        }
        if !full {
            io.read_ready(|io| {
                shared.backlog.load(Ordering::Relaxed) + io.event_bytes < IO_BACKLOG
            });
        }
        while !io.dirty.is_empty() {
            io.flush_dirty();
        }
        ship(&mut io, shared, mailbox, n);
    }
}

/// Sends the core what I/O thread `n`'s sockets did since last time, if anything, counting its
/// MQTT bytes into the thread's backlog.
fn ship(io: &mut Io, shared: &Shared, mailbox: &Mailbox, n: usize) {
    if io.events.is_empty() {
        return;
    }
    let bytes = std::mem::take(&mut io.event_bytes);
    shared.backlog.fetch_add(bytes, Ordering::SeqCst);
    let batch = io.events.drain(..).collect();
    mailbox.send(Input::Io(n, batch, bytes));
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

/// A bridge's index, from [`Peer::Bridge`].
fn at(bridge: u32) -> usize {
    usize::try_from(bridge).unwrap_or(usize::MAX)
}

/// The connection at `slot`, unless the slot has a later occupant.
fn conn_at(conns: &mut [Option<Conn>], slot: Slot) -> Option<&mut Conn> {
    match conns.get_mut(slot.at() as usize) {
        Some(Some(c)) if c.generation == slot.generation => Some(c),
        _ => None,
    }
}

fn mark_ready(c: &mut Conn, ready: &mut VecDeque<u32>, index: u32) {
    if !c.is(QUEUED) {
        c.set(QUEUED, true);
        ready.push_back(index);
    }
}

fn mark_dirty(c: &mut Conn, dirty: &mut Vec<u32>, index: u32) {
    if !c.is(DIRTY) {
        c.set(DIRTY, true);
        dirty.push(index);
    }
}

#[cfg(test)]
mod tests {
    /// A connection's record in its loop's table, which every idle connection pays.
    #[test]
    fn a_connection_record_is_40_bytes() {
        // In debug builds mio's socket also carries the id of the poll it is registered with.
        let expected = if cfg!(debug_assertions) { 56 } else { 40 };
        assert_eq!(std::mem::size_of::<Option<super::Conn>>(), expected);
    }
}
