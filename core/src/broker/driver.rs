//! The bookkeeping every broker server needs around a [`Broker`], written once for all
//! runtimes.
//!
//! A server runs reader and writer tasks (or threads) per connection and one owner of the
//! broker. [`Driver`] is that owner's state: the broker, each connection's partial input, the
//! bytes handed to its writer but not yet written, and every deadline a server keeps. The
//! runtime feeds it what happened, with `handle_*` calls
//! ([`handle_accepted`](Driver::handle_accepted), [`handle_bytes`](Driver::handle_bytes),
//! [`handle_written`](Driver::handle_written), [`handle_closed`](Driver::handle_closed),
//! [`handle_timeout`](Driver::handle_timeout), ...), then carries out the [`Command`]s from
//! [`poll_command`](Driver::poll_command) (write these buffers to that connection, close it,
//! drop it, authenticate asynchronously), logs the [`Event`]s from
//! [`poll_event`](Driver::poll_event), and sleeps until [`poll_timeout`](Driver::poll_timeout).
//! Still no I/O and no clock here.
//!
//! Deadlines: a writer that holds bytes and writes none of them for [`WRITE_TIMEOUT`], a closed
//! connection that lingers past [`LINGER`] after its last bytes, everything still open
//! [`SHUTDOWN_FLUSH`] after [`shutdown`](Driver::shutdown), and a listener paused for
//! [`ACCEPT_BACKOFF`] after a failed accept. They are policy, so they are here, once: a runtime
//! only sleeps until the one instant [`poll_timeout`](Driver::poll_timeout) gives.
//!
//! Flow control: at most [`WRITE_WINDOW`] bytes per connection are out with its writer. The rest
//! stays in the broker, whose slow-consumer limits then apply, so a stalled reader grows no
//! memory in the server.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::cmp::Reverse;
use core::future::Future;
use core::pin::Pin;

use super::cluster::{ClaimTicket, ClusterOut, ClusterSeq, ClusterTarget};
use super::persist::{PersistOp, PersistSeq, SnapshotSession, StoredMessage};
use super::{
    AcceptError, AuthDecision, AuthRequest, AuthTicket, Broker, Command as BrokerCommand, ConnId,
    Event, PeerInfo,
};
#[cfg(feature = "log")]
use crate::bridge::BridgeEvent;
use crate::bridge::{Bridge, BridgeCommand, BridgeConfig, BridgeStats};
use crate::codec::ReasonCode;
use crate::time::{Duration, Instant, MaybeAt};

/// Bytes handed to one connection's writer and not yet reported written, at most.
pub const WRITE_WINDOW: usize = 16 * 1024;

/// How long a writer waits for a peer that does not read before it gives up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection the broker closed stays open for reading after its last packet: the
/// server shuts its side, then reads and drops what the peer still sends until the peer
/// closes too, for at most this long. A socket closed with unread input is reset, and a reset
/// can destroy the last packets (a refused CONNACK, a DISCONNECT and its reason) before the
/// peer has read them.
pub const LINGER: Duration = Duration::from_secs(2);

/// How long a server's shutdown waits for the last bytes to be written.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// How long accepting on a listener pauses after an accept failed (out of file descriptors and
/// the like), rather than spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the runtime must do next: instructions. What happened is an [`Event`], from
/// [`Driver::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Command<H> {
    /// Write these buffers, in order, to the connection whose writer is `H`; report what was
    /// written with [`Driver::handle_written`].
    Write(H, Vec<Bytes>),
    /// Everything for this connection has been handed out: let its writer finish what it
    /// holds (still reporting it), then shut the socket's sending side and read and drop what
    /// the peer still sends until it closes too; then report [`Driver::handle_closed`]. (A
    /// socket closed with unread input is reset, and a reset can destroy the last packets, a
    /// refused CONNACK or a DISCONNECT and its reason, before the peer has read them.)
    Close(H),
    /// Drop this connection's socket now, whatever it holds: its peer stopped reading (for
    /// [`WRITE_TIMEOUT`]), its lingering after a [`Close`](Self::Close) is over
    /// ([`LINGER`]), or the server's shutdown is ([`SHUTDOWN_FLUSH`]). Nothing more is
    /// reported for it.
    Abort(H),
    /// Stop reading from this connection (a subscriber of what it publishes is behind).
    PauseRead(H),
    /// Read from this connection again.
    ResumeRead(H),
    /// Accept again on this listener, after [`Driver::handle_accept_failed`].
    ResumeAccept(u16),
    /// The authenticator deferred: decide `request` (asynchronously) and answer with
    /// [`Driver::handle_auth`].
    Authenticate(AuthTicket, AuthRequest),
    /// The authorizer deferred: decide whether `request`'s client may do it, and answer with
    /// [`Driver::handle_authorization`].
    Authorize(AuthTicket, AuthorizeRequest),
    /// Durable state to store, in order (see [`persist`](super::persist)); report what is on
    /// disk with [`Driver::handle_persisted`].
    Persist(Vec<(PersistSeq, PersistOp)>),
    /// What must leave this node for the rest of its cluster ([`ClusterOut`]); report what the
    /// backplane holds with [`Driver::handle_cluster_acked`].
    Cluster(ClusterOut),
    /// Open a transport to the remote broker of bridge `bridge` (its index in the order of
    /// [`Driver::add_bridge`]) at its address `address`; report it with
    /// [`Driver::handle_bridge_dialed`] or [`Driver::handle_bridge_closed`]. Its bytes then go
    /// through [`Driver::handle_bridge_bytes`], and `Write`, `Close` and `Abort` commands name
    /// its handle like any connection's.
    Dial {
        /// Which bridge.
        bridge: usize,
        /// Which of its addresses.
        address: usize,
    },
}

/// A future an [`AsyncAuthenticator`] returns.
pub type AuthFuture = Pin<Box<dyn Future<Output = AuthDecision> + Send>>;

/// A future an [`AsyncAuthorizer`] returns: whether the client may.
pub type AuthzFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Authentication that needs I/O (a database, an HTTP call). The core's synchronous
/// [`Authenticator`](super::Authenticator) answers [`AuthDecision::Defer`]; a server then runs
/// this on a task of its own and gives the answer back with [`Driver::handle_auth`]. The
/// connection's later packets wait, in order, until then. The future is the runtime's to run:
/// the trait is the same for every async runtime.
pub trait AsyncAuthenticator: Send + Sync {
    /// Decides on `request`.
    fn authenticate(&self, request: AuthRequest) -> AuthFuture;
}

/// Authorization that needs I/O: run when the core's authorizer answers
/// [`AuthzDecision::Defer`](super::AuthzDecision); the answer goes back with
/// [`Driver::handle_authorization`].
pub trait AsyncAuthorizer: Send + Sync {
    /// Whether the client may do what `request` says.
    fn authorize(&self, request: AuthorizeRequest) -> AuthzFuture;
}

/// Authentication that may block (a lookup through a blocking database driver): the same job as
/// an [`AsyncAuthenticator`], for code that is not async. A server runs it where blocking is
/// allowed (a thread of its own, or the async runtime's blocking pool).
pub trait BlockingAuthenticator: Send + Sync {
    /// Decides on `request`.
    fn authenticate(&self, request: AuthRequest) -> AuthDecision;
}

/// Authorization that may block: the same job as an [`AsyncAuthorizer`], for code that is not
/// async.
pub trait BlockingAuthorizer: Send + Sync {
    /// Whether the client may do what `request` says.
    fn authorize(&self, request: AuthorizeRequest) -> bool;
}

/// What a deferred authorization is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizeRequest {
    /// The client identifier.
    pub client_id: crate::codec::MqttStr,
    /// Its user name.
    pub username: Option<crate::codec::MqttStr>,
    /// Publish to a topic name, or subscribe to a filter.
    pub action: super::Action,
    /// The topic name or the whole filter.
    pub topic: alloc::string::String,
}

struct Io<H> {
    handle: H,
    /// Input read but not yet handled: the start of a packet, or what arrived while the
    /// broker paused this connection. Boxed, and only while there is some: most connections
    /// at any moment have none, and a `BytesMut` in every record is 32 bytes.
    input: Option<Box<BytesMut>>,
    in_writer: usize,
    /// When the writer last made progress: got bytes while it held none, or reported some
    /// written. For a closed connection whose writer is done, when it was done.
    since: Instant,
    /// The deadline queue's entry for this connection, if any (stale entries are skipped).
    queued: MaybeAt,
    /// The peer closed while input waited (paused): close once it has been handled.
    eof: bool,
}

impl<H> Io<H> {
    /// When this connection is due, if ever: its writer stalled, or (closed) its lingering is
    /// over.
    fn deadline(&self, closing: bool) -> Option<Instant> {
        if self.in_writer > 0 {
            Some(self.since + WRITE_TIMEOUT)
        } else if closing {
            Some(self.since + LINGER)
        } else {
            None
        }
    }
}

/// Each open connection's [`Io`], at its slot index: the broker reuses the slots of closed
/// connections, so this stays as long as the most connections open at once, and a lookup is
/// an index.
struct Conns<H> {
    slots: Vec<Option<(ConnId, Io<H>)>>,
    len: usize,
}

impl<H> Conns<H> {
    fn insert(&mut self, id: ConnId, io: Io<H>) {
        let i = id.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            self.len += usize::from(slot.is_none());
            *slot = Some((id, io));
        }
    }

    fn get(&self, id: &ConnId) -> Option<&Io<H>> {
        match self.slots.get(id.index()) {
            Some(Some((at, io))) if at == id => Some(io),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: &ConnId) -> Option<&mut Io<H>> {
        match self.slots.get_mut(id.index()) {
            Some(Some((at, io))) if at == id => Some(io),
            _ => None,
        }
    }

    fn remove(&mut self, id: &ConnId) -> Option<Io<H>> {
        let slot = self.slots.get_mut(id.index())?;
        if slot.as_ref().is_some_and(|(at, _)| at == id) {
            self.len -= 1;
            return slot.take().map(|(_, io)| io);
        }
        None
    }

    /// The open connections, in slot order.
    fn ids(&self) -> Vec<ConnId> {
        self.slots.iter().flatten().map(|(id, _)| *id).collect()
    }
}

/// A bridge the driver hosts: the bridge, its local session's connection to the broker, and
/// the transport to its remote broker.
struct Hosted<H> {
    bridge: Bridge,
    /// The broker's connection for the local session, while attached.
    local: Option<ConnId>,
    /// What the local session sent that the broker has not taken yet (it paused the input).
    local_input: BytesMut,
    /// What the broker sent the local session that does not make a whole packet yet.
    local_output: BytesMut,
    /// The remote transport's writer, once dialled; whether it was asked to close; its input.
    remote: Option<H>,
    remote_closing: bool,
    remote_input: BytesMut,
    /// What the remote transport's writer holds.
    remote_in_writer: usize,
}

/// A broker and its connections' I/O state. See the [module documentation](self).
pub struct Driver<H> {
    /// Bridges, in the order they were added.
    bridges: Vec<Hosted<H>>,
    broker: Broker,
    conns: Conns<H>,
    /// Connections the broker closed, until their writer is done and their peer closed too,
    /// or their deadline.
    closing: BTreeMap<ConnId, Io<H>>,
    /// Connections' deadlines (stalled writers, lingering), at most one entry per connection,
    /// checked when due: the entry may be early, never late.
    deadlines: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Listeners whose accepting is paused, with when it resumes.
    accept_paused: Vec<(Instant, u16)>,
    /// Once shut down: when the lingering connections are dropped.
    shutdown_by: Option<Instant>,
    commands: VecDeque<Command<H>>,
    /// The latest `now` given: closes the broker decides happen then.
    now: Instant,
}

impl<H: core::fmt::Debug> core::fmt::Debug for Driver<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("broker", &self.broker)
            .field("connections", &self.conns.len)
            .field("closing", &self.closing.len())
            .finish_non_exhaustive()
    }
}

impl<H: Clone> Driver<H> {
    /// Wraps `broker`.
    pub fn new(broker: Broker) -> Self {
        Self {
            bridges: Vec::new(),
            broker,
            conns: Conns { slots: Vec::new(), len: 0 },
            closing: BTreeMap::new(),
            deadlines: BinaryHeap::new(),
            accept_paused: Vec::new(),
            shutdown_by: None,
            commands: VecDeque::new(),
            now: Instant::ZERO,
        }
    }

    /// The broker, for getters such as [`Broker::stats`].
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Connections open.
    pub fn connections(&self) -> usize {
        self.conns.len
    }

    /// After [`shutdown`](Self::shutdown): whether every connection is gone (closed by its
    /// peer or dropped), so the runtime may stop.
    pub fn is_finished(&self) -> bool {
        self.shutdown_by.is_some()
            && self.conns.len == 0
            && self.closing.is_empty()
            && self.bridges.iter().all(|h| h.remote.is_none())
    }

    /// A socket was accepted; `handle` reaches its writer. Refused at once (drop the socket)
    /// when `max_connections` are open.
    pub fn handle_accepted(
        &mut self,
        now: Instant,
        peer: PeerInfo,
        handle: H,
    ) -> Result<ConnId, AcceptError> {
        self.now = self.now.max(now);
        let id = self.broker.accept(now, peer)?;
        let io =
            Io { handle, input: None, in_writer: 0, since: now, queued: MaybeAt::NONE, eof: false };
        self.conns.insert(id, io);
        Ok(id)
    }

    /// Accepting on `listener` failed: the runtime stops accepting there until
    /// [`Command::ResumeAccept`], [`ACCEPT_BACKOFF`] later.
    pub fn handle_accept_failed(&mut self, now: Instant, listener: u16) {
        self.now = self.now.max(now);
        if self.shutdown_by.is_none() && !self.accept_paused.iter().any(|(_, l)| *l == listener) {
            self.accept_paused.push((now + ACCEPT_BACKOFF, listener));
        }
    }

    /// Bytes read from `id`.
    pub fn handle_bytes(&mut self, now: Instant, id: ConnId, chunk: BytesMut) {
        self.now = self.now.max(now);
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        let mut input = match io.input.take() {
            Some(mut held) => {
                held.extend_from_slice(&chunk);
                *held
            }
            None => chunk,
        };
        self.broker.handle_bytes(now, id, &mut input);
        // What is left waits for the rest (an idle connection keeps no read buffer).
        if !input.is_empty() {
            io.input = Some(Box::new(input));
        }
        self.collect();
    }

    /// The transport proved who `id`'s client is ([`Broker::handle_identity`]); before its
    /// first bytes.
    pub fn handle_identity(&mut self, id: ConnId, identity: crate::codec::MqttStr) {
        self.broker.handle_identity(id, identity);
    }

    /// `id`'s transport refused it before any MQTT (a failed TLS handshake, a bad WebSocket
    /// upgrade or PROXY header): counted, and closed as by [`handle_closed`](Self::handle_closed).
    pub fn handle_refused(&mut self, now: Instant, id: ConnId) {
        self.now = self.now.max(now);
        if self.forget(now, id, Gone::Refused) {
            self.collect();
        }
    }

    /// The transport learnt where `id` really comes from ([`Broker::handle_peer_addr`]).
    pub fn handle_peer_addr(&mut self, id: ConnId, addr: core::net::SocketAddr) {
        self.broker.handle_peer_addr(id, addr);
    }

    /// `id`'s writer wrote `n` bytes.
    pub fn handle_written(&mut self, now: Instant, id: ConnId, n: usize) {
        self.now = self.now.max(now);
        if let Some(io) = self.closing.get_mut(&id) {
            io.in_writer = io.in_writer.saturating_sub(n);
            io.since = now;
            watch(&mut self.deadlines, id, io, true);
            return;
        }
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        io.in_writer = io.in_writer.saturating_sub(n);
        io.since = now;
        self.transmit(id, false);
        // Draining a subscriber's output can resume the publishers it paused: those events
        // must not wait for the next input, which a paused publisher will not send.
        self.collect();
    }

    /// `id`'s socket closed (end of stream or an error, reading or writing), or, after a
    /// [`Command::Close`], its peer closed too. Input that waits because the broker paused it
    /// is still handled first: a client that published and left loses nothing it sent.
    pub fn handle_closed(&mut self, now: Instant, id: ConnId) {
        self.now = self.now.max(now);
        if self.closing.remove(&id).is_some() {
            return;
        }
        if let Some(io) = self.conns.get_mut(&id)
            && io.input.is_some()
            && self.broker.is_input_paused(id)
        {
            io.eof = true;
            return;
        }
        if self.forget(now, id, Gone::Closed) {
            self.collect();
        }
    }

    /// `id`'s reader saw its peer close (end of stream) or its socket fail, while the server
    /// still counted it open. A server whose reader runs apart from the driver (an I/O
    /// thread, a batch of events) can report this after the broker has already issued
    /// [`Command::Close`]: then it is not the end of the close, whose writer and linger
    /// deadline go on until [`handle_closed`](Self::handle_closed) or an
    /// [`Command::Abort`]. Otherwise it is [`handle_closed`](Self::handle_closed).
    pub fn handle_peer_gone(&mut self, now: Instant, id: ConnId) {
        if self.closing.contains_key(&id) {
            self.now = self.now.max(now);
            return;
        }
        self.handle_closed(now, id);
    }

    /// The answer to a [`Command::Authenticate`].
    pub fn handle_auth(&mut self, now: Instant, ticket: AuthTicket, decision: AuthDecision) {
        self.now = self.now.max(now);
        self.broker.handle_auth(now, ticket, decision);
        self.collect();
    }

    /// The answer to a [`Command::Authorize`].
    pub fn handle_authorization(&mut self, now: Instant, ticket: AuthTicket, allowed: bool) {
        self.now = self.now.max(now);
        self.broker.handle_authorization(now, ticket, allowed);
        self.collect();
    }

    /// The store has everything up to `seq` on disk.
    pub fn handle_persisted(&mut self, now: Instant, seq: PersistSeq) {
        self.now = self.now.max(now);
        self.broker.handle_persisted(now, seq);
        self.collect();
    }

    /// The cluster's backplane is reachable, or not ([`Broker::handle_cluster_link`]).
    pub fn handle_cluster_link(&mut self, now: Instant, up: bool) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_link(now, up);
        self.collect();
    }

    /// The backplane holds what was forwarded up to `seq` ([`Broker::handle_cluster_acked`]).
    pub fn handle_cluster_acked(&mut self, now: Instant, seq: ClusterSeq) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_acked(now, seq);
        self.collect();
    }

    /// A message from another node ([`Broker::handle_cluster_publish`]), at `position` in
    /// the backplane's stream if it came from there ([`Broker::handle_cluster_consumed`]).
    pub fn handle_cluster_publish(
        &mut self,
        now: Instant,
        message: StoredMessage,
        target: ClusterTarget,
        position: Option<u64>,
    ) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_publish(now, message, target);
        if let Some(p) = position {
            self.broker.handle_cluster_consumed(p);
        }
        self.collect();
    }

    /// A message retained on another node ([`Broker::handle_cluster_retained`]).
    pub fn handle_cluster_retained(&mut self, now: Instant, message: StoredMessage) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_retained(now, message);
        self.collect();
    }

    /// The answer to a [`ClusterOut::Claim`] ([`Broker::handle_cluster_claimed`]).
    pub fn handle_cluster_claimed(
        &mut self,
        now: Instant,
        ticket: ClaimTicket,
        session: Option<SnapshotSession>,
    ) -> ClusterSeq {
        self.now = self.now.max(now);
        let position = self.broker.handle_cluster_claimed(now, ticket, session);
        self.collect();
        position
    }

    /// The backplane's stream has nothing more for this node up to `position`
    /// ([`Broker::handle_cluster_caught_up`]).
    pub fn handle_cluster_caught_up(&mut self, position: u64) {
        self.broker.handle_cluster_caught_up(position);
        self.collect();
    }

    /// The backplane asks for the log to be mirrored, from a snapshot on
    /// ([`Broker::handle_cluster_snapshot`]).
    pub fn handle_cluster_snapshot(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_snapshot(now);
        self.collect();
    }

    /// Another node asks for a client's session ([`Broker::handle_cluster_release`]).
    pub fn handle_cluster_release(
        &mut self,
        now: Instant,
        client_id: &str,
    ) -> Option<SnapshotSession> {
        self.now = self.now.max(now);
        let session = self.broker.handle_cluster_release(now, client_id);
        self.collect();
        session
    }

    /// Every node of the cluster ([`Broker::handle_cluster_nodes`]).
    pub fn handle_cluster_nodes(&mut self, nodes: Vec<super::ClusterNode>) {
        self.broker.handle_cluster_nodes(nodes);
    }

    /// A will of a dead node's connection ([`Broker::handle_cluster_will`]).
    pub fn handle_cluster_will(&mut self, now: Instant, message: StoredMessage) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_will(now, message);
        self.collect();
    }

    /// A client connected on another node since ([`Broker::handle_cluster_takeover`]).
    pub fn handle_cluster_takeover(&mut self, now: Instant, client_id: &str, announce: u64) {
        self.now = self.now.max(now);
        self.broker.handle_cluster_takeover(now, client_id, announce);
        self.collect();
    }

    /// An operator's request (see [`admin`](super::admin)); the connections it closes or
    /// writes to come out as commands like any other.
    pub fn handle_admin(
        &mut self,
        now: Instant,
        request: super::admin::Request,
    ) -> super::admin::Response {
        self.now = self.now.max(now);
        self.report_bridges();
        let response = self.broker.handle_admin(now, request);
        self.collect();
        response
    }

    /// Does what is due at `now`: the broker's timers, stalled writers, lingering that is
    /// over, paused listeners. Call when [`poll_timeout`](Self::poll_timeout) passes (calling
    /// earlier does nothing).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.broker.poll_timeout().is_some_and(|at| at <= now) {
            self.report_bridges();
            self.broker.handle_timeout(now);
        }
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            self.expire(now, at, id);
        }
        if self.shutdown_by.is_some_and(|at| at <= now) {
            for (_, io) in core::mem::take(&mut self.closing) {
                self.commands.push_back(Command::Abort(io.handle));
            }
        }
        for hosted in &mut self.bridges {
            if hosted.bridge.poll_timeout().is_some_and(|at| at <= now) {
                hosted.bridge.handle_timeout(now);
            }
        }
        let commands = &mut self.commands;
        self.accept_paused.retain(|&(at, listener)| {
            let due = at <= now;
            if due {
                commands.push_back(Command::ResumeAccept(listener));
            }
            !due
        });
        self.collect();
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let shutdown = self.shutdown_by.filter(|_| !self.closing.is_empty());
        [
            self.broker.poll_timeout(),
            self.deadlines.peek().map(|Reverse((at, _))| *at),
            self.accept_paused.iter().map(|(at, _)| *at).min(),
            shutdown,
            self.bridges.iter().filter_map(|h| h.bridge.poll_timeout()).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Disconnects every client (MQTT 5: DISCONNECT 0x8B) and closes every connection. What
    /// is still lingering [`SHUTDOWN_FLUSH`] later is dropped; [`is_finished`](Self::is_finished)
    /// says when the runtime may stop.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.shutdown_by = Some(now + SHUTDOWN_FLUSH);
        self.accept_paused.clear();
        for hosted in &mut self.bridges {
            hosted.bridge.stop(now);
        }
        self.pump_bridges();
        self.broker.shutdown(now);
        self.collect();
        let ids = self.conns.ids();
        for id in ids {
            self.close(now, id);
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command<H>> {
        self.commands.pop_front()
    }

    /// The next thing that happened (to log, say).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.broker.poll_event()
    }

    /// The deadline entry `at` of `id` came due.
    fn expire(&mut self, now: Instant, at: Instant, id: ConnId) {
        if let Some(io) = self.closing.get_mut(&id) {
            if io.queued.get() != Some(at) {
                return;
            }
            io.queued = MaybeAt::NONE;
            match io.deadline(true) {
                Some(at) if at <= now => {
                    if let Some(io) = self.closing.remove(&id) {
                        self.commands.push_back(Command::Abort(io.handle));
                    }
                }
                _ => watch(&mut self.deadlines, id, io, true),
            }
            return;
        }
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        if io.queued.get() != Some(at) {
            return;
        }
        io.queued = MaybeAt::NONE;
        match io.deadline(false) {
            Some(at) if at <= now => {
                #[cfg(feature = "log")]
                log::debug!("{id:?} read nothing for {WRITE_TIMEOUT:?}: dropping it");
                self.forget(now, id, Gone::Stalled);
                self.collect();
            }
            _ => watch(&mut self.deadlines, id, io, false),
        }
    }

    /// Turns the broker's output and commands into the runtime's commands, and moves what
    /// the bridges and the broker have for each other until neither has more.
    fn collect(&mut self) {
        loop {
            self.collect_output();
            if !self.pump_bridges() {
                break;
            }
        }
        let mut batch = Vec::new();
        while let Some(entry) = self.broker.poll_persist() {
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.commands.push_back(Command::Persist(batch));
        }
        while let Some(out) = self.broker.poll_cluster() {
            self.commands.push_back(Command::Cluster(out));
        }
    }

    fn collect_output(&mut self) {
        while let Some(id) = self.broker.poll_writable() {
            self.transmit(id, false);
        }
        while let Some(command) = self.broker.poll_command() {
            match command {
                BrokerCommand::Close(id) => {
                    if let Some(i) = self.bridge_of(id) {
                        self.detach_local(i);
                    } else {
                        self.close(self.now, id);
                    }
                }
                BrokerCommand::Authenticate { ticket, request, .. } => {
                    self.commands.push_back(Command::Authenticate(ticket, request));
                }
                BrokerCommand::Authorize { ticket, client_id, username, action, topic, .. } => {
                    let request = AuthorizeRequest { client_id, username, action, topic };
                    self.commands.push_back(Command::Authorize(ticket, request));
                }
                BrokerCommand::PauseInput(id) => {
                    if let Some(io) = self.conns.get(&id) {
                        self.commands.push_back(Command::PauseRead(io.handle.clone()));
                    }
                }
                BrokerCommand::ResumeInput(id) => {
                    let Some(io) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    self.commands.push_back(Command::ResumeRead(io.handle.clone()));
                    // What was read before the pause took effect goes first.
                    if let Some(mut input) = io.input.take() {
                        self.broker.handle_bytes(self.now, id, &mut input);
                        if !input.is_empty() {
                            io.input = Some(input);
                        }
                    }
                    let finished = io.eof && !self.broker.is_input_paused(id);
                    while let Some(w) = self.broker.poll_writable() {
                        self.transmit(w, false);
                    }
                    if finished {
                        // The peer had closed: now that its input is handled, so do we.
                        self.forget(self.now, id, Gone::Closed);
                    }
                }
            }
        }
    }

    /// Hosts a bridge: it attaches its local session and asks for its first dial at once.
    /// Returns its index, which [`Command::Dial`] and the `handle_bridge_*` calls use.
    pub fn add_bridge(&mut self, now: Instant, config: BridgeConfig) -> usize {
        self.now = self.now.max(now);
        let mut bridge = Bridge::new(config, now);
        bridge.start();
        self.bridges.push(Hosted {
            bridge,
            local: None,
            local_input: BytesMut::new(),
            local_output: BytesMut::new(),
            remote: None,
            remote_closing: false,
            remote_input: BytesMut::new(),
            remote_in_writer: 0,
        });
        self.collect();
        self.bridges.len() - 1
    }

    /// Each bridge's name and figures, in the order they were added.
    pub fn bridge_stats(&self) -> Vec<(&str, BridgeStats)> {
        self.bridges.iter().map(|h| (h.bridge.config().name.as_str(), h.bridge.stats())).collect()
    }

    /// The transport of bridge `bridge` to its remote broker is open; `handle` reaches its
    /// writer.
    pub fn handle_bridge_dialed(&mut self, now: Instant, bridge: usize, handle: H) {
        self.now = self.now.max(now);
        if self.shutdown_by.is_some() {
            // Dialled while the server stopped: not wanted any more.
            self.commands.push_back(Command::Abort(handle));
            return;
        }
        let Some(h) = self.bridges.get_mut(bridge) else { return };
        h.remote = Some(handle);
        h.remote_closing = false;
        h.remote_in_writer = 0;
        h.remote_input = BytesMut::new();
        h.bridge.handle_remote_connected(now);
        self.collect();
    }

    /// Bytes from bridge `bridge`'s remote broker.
    pub fn handle_bridge_bytes(&mut self, now: Instant, bridge: usize, chunk: BytesMut) {
        self.now = self.now.max(now);
        let Some(h) = self.bridges.get_mut(bridge) else { return };
        if h.remote_input.is_empty() {
            h.remote_input = chunk;
        } else {
            h.remote_input.extend_from_slice(&chunk);
        }
        h.bridge.handle_remote_bytes(now, &mut h.remote_input);
        if h.remote_input.is_empty() {
            h.remote_input = BytesMut::new();
        }
        self.collect();
    }

    /// Bridge `bridge`'s remote writer wrote `n` bytes.
    pub fn handle_bridge_written(&mut self, now: Instant, bridge: usize, n: usize) {
        self.now = self.now.max(now);
        if let Some(h) = self.bridges.get_mut(bridge) {
            h.remote_in_writer = h.remote_in_writer.saturating_sub(n);
        }
    }

    /// Bridge `bridge`'s remote transport closed, or could not be opened.
    pub fn handle_bridge_closed(&mut self, now: Instant, bridge: usize) {
        self.now = self.now.max(now);
        let Some(h) = self.bridges.get_mut(bridge) else { return };
        h.remote = None;
        h.remote_closing = false;
        h.remote_in_writer = 0;
        h.remote_input = BytesMut::new();
        h.bridge.handle_remote_closed(now);
        self.collect();
    }

    /// Gives the broker the bridges' figures (for `$SYS` and the admin API).
    fn report_bridges(&mut self) {
        if !self.bridges.is_empty() {
            let stats = self.bridge_stats().into_iter().map(|(n, s)| (n.into(), s)).collect();
            self.broker.set_bridge_stats(stats);
        }
    }

    fn bridge_of(&self, id: ConnId) -> Option<usize> {
        self.bridges.iter().position(|h| h.local == Some(id))
    }

    /// The broker closed bridge `i`'s local connection: the bridge hears of it.
    fn detach_local(&mut self, i: usize) {
        let now = self.now;
        let Some(h) = self.bridges.get_mut(i) else { return };
        let Some(id) = h.local.take() else { return };
        deliver_local(&mut self.broker, h, id, now);
        h.local_input = BytesMut::new();
        h.local_output = BytesMut::new();
        self.broker.handle_closed(now, id);
        h.bridge.handle_local_closed(now);
    }

    /// Moves bytes between each bridge and the broker, and carries out the bridges' commands.
    /// Returns whether anything moved (the broker may then have output for others).
    fn pump_bridges(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        for i in 0..self.bridges.len() {
            loop {
                let mut progress = false;
                let Some(h) = self.bridges.get_mut(i) else { break };
                // The broker's output for the local session.
                if let Some(id) = h.local {
                    progress |= deliver_local(&mut self.broker, h, id, now);
                }
                // The local session's output for the broker, unless the broker paused it.
                while let Some(b) = h.bridge.poll_local_transmit() {
                    h.local_input.extend_from_slice(&b);
                }
                if let Some(id) = h.local
                    && !h.local_input.is_empty()
                    && !self.broker.is_input_paused(id)
                {
                    let before = h.local_input.len();
                    self.broker.handle_bytes(now, id, &mut h.local_input);
                    progress |= h.local_input.len() != before;
                }
                // The remote side's output.
                let mut chunks = Vec::new();
                while let Some(b) = h.bridge.poll_remote_transmit() {
                    chunks.push(b);
                }
                if let Some(remote) = &h.remote
                    && !h.remote_closing
                    && !chunks.is_empty()
                {
                    h.remote_in_writer += chunks.iter().map(Bytes::len).sum::<usize>();
                    self.commands.push_back(Command::Write(remote.clone(), chunks));
                }
                while let Some(command) = h.bridge.poll_command() {
                    progress = true;
                    match command {
                        BridgeCommand::Dial { address } => {
                            self.commands.push_back(Command::Dial { bridge: i, address });
                        }
                        BridgeCommand::CloseRemote => {
                            if let Some(remote) = &h.remote
                                && !h.remote_closing
                            {
                                h.remote_closing = true;
                                self.commands.push_back(Command::Close(remote.clone()));
                            } else if h.remote.is_none() {
                                h.bridge.handle_remote_closed(now);
                            }
                        }
                        BridgeCommand::AttachLocal => {
                            if h.local.is_some() || self.shutdown_by.is_some() {
                                continue;
                            }
                            let peer = PeerInfo { trusted: true, ..PeerInfo::default() };
                            match self.broker.accept(now, peer) {
                                Ok(id) => {
                                    h.local = Some(id);
                                    h.bridge.handle_local_connected(now);
                                }
                                // Full: the local session tries again after its backoff.
                                Err(_) => h.bridge.handle_local_closed(now),
                            }
                        }
                        BridgeCommand::CloseLocal => {
                            if let Some(id) = h.local.take() {
                                let mut rest = core::mem::take(&mut h.local_input);
                                self.broker.handle_bytes(now, id, &mut rest);
                                self.broker.handle_closed(now, id);
                            }
                            h.bridge.handle_local_closed(now);
                        }
                    }
                }
                #[cfg(feature = "log")]
                while let Some(event) = h.bridge.poll_event() {
                    log_bridge_event(&h.bridge.config().name, &event);
                }
                #[cfg(not(feature = "log"))]
                while h.bridge.poll_event().is_some() {}
                if !progress {
                    break;
                }
                moved = true;
            }
        }
        moved
    }

    /// Hands what the broker queued for `id` to its writer, within the window unless `all`.
    fn transmit(&mut self, id: ConnId, all: bool) {
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunks = Vec::new();
        let idle = io.in_writer == 0;
        loop {
            let room = if all { usize::MAX } else { WRITE_WINDOW.saturating_sub(io.in_writer) };
            if room == 0 {
                break;
            }
            match self.broker.poll_transmit(id, room) {
                Some(b) => {
                    io.in_writer += b.len();
                    chunks.push(b);
                }
                None => break,
            }
        }
        if !chunks.is_empty() {
            if idle {
                io.since = self.now;
                watch(&mut self.deadlines, id, io, false);
            }
            self.commands.push_back(Command::Write(io.handle.clone(), chunks));
        }
    }

    /// Tells the broker `id` is gone, and the runtime to close it: to drop it at once if its
    /// writer stalled, else to let its writer finish and linger (see [`Command::Close`]) until
    /// it reports the close or its deadline. Returns whether it was open.
    fn forget(&mut self, now: Instant, id: ConnId, gone: Gone) -> bool {
        let Some(mut io) = self.conns.remove(&id) else {
            return false;
        };
        match gone {
            Gone::Refused => self.broker.handle_refused(now, id),
            Gone::Closed | Gone::Stalled => self.broker.handle_closed(now, id),
        }
        if gone == Gone::Stalled {
            self.commands.push_back(Command::Abort(io.handle));
            return true;
        }
        self.commands.push_back(Command::Close(io.handle.clone()));
        if io.in_writer == 0 {
            io.since = now;
        }
        io.input = None;
        watch(&mut self.deadlines, id, &mut io, true);
        self.closing.insert(id, io);
        true
    }

    /// Writes out what the broker queued for `id` (its last words), then closes it.
    fn close(&mut self, now: Instant, id: ConnId) {
        self.transmit(id, true);
        self.forget(now, id, Gone::Closed);
        // handle_closed may have published a will or freed queues.
        while let Some(w) = self.broker.poll_writable() {
            self.transmit(w, false);
        }
    }
}

/// Gives a hosted bridge's local session what the broker has for it on `id`, as a byte stream
/// (a packet cut between two chunks waits for its rest); returns whether there was anything.
fn deliver_local<H>(broker: &mut Broker, h: &mut Hosted<H>, id: ConnId, now: Instant) -> bool {
    let mut any = false;
    while let Some(b) = broker.poll_transmit(id, usize::MAX) {
        any = true;
        if h.local_output.is_empty() {
            // Without a copy when the broker holds no other reference to the buffer.
            h.local_output = BytesMut::from(b);
        } else {
            h.local_output.extend_from_slice(&b);
        }
        h.bridge.handle_local_bytes(now, &mut h.local_output);
    }
    if h.local_output.is_empty() {
        h.local_output = BytesMut::new();
    }
    any
}

/// Why a connection is gone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// Its socket closed, or the broker closed it.
    Closed,
    /// Its transport refused it.
    Refused,
    /// Its writer wrote nothing for the write timeout: dropped at once.
    Stalled,
}

/// Queues `io`'s deadline unless an entry for it at that time or earlier is queued already (an
/// early entry is re-queued when it comes due; a later one goes stale).
fn watch<H>(
    deadlines: &mut BinaryHeap<Reverse<(Instant, ConnId)>>,
    id: ConnId,
    io: &mut Io<H>,
    closing: bool,
) {
    if let Some(at) = io.deadline(closing)
        && io.queued.get().is_none_or(|queued| at < queued)
    {
        let at = io.queued.set(at);
        deadlines.push(Reverse((at, id)));
    }
}

/// Logs what the broker reports with the `log` crate: connections at info level, the rest at
/// debug (with the core's `log` feature).
#[cfg(feature = "log")]
pub fn log_event(event: &Event) {
    // Every line is at info or below: nothing to format when info is off.
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let from = |peer: &Option<core::net::SocketAddr>| {
        peer.map(|p| alloc::string::ToString::to_string(&p)).unwrap_or_default()
    };
    match event {
        Event::Connected { conn, client_id, protocol, session_present, peer, listener } => {
            let from = from(peer);
            log::info!(
                client_id = client_id.as_str(), peer = from.as_str(), listener = *listener;
                "client {client_id} connected ({protocol}, session present: {session_present}) \
                 from {from} as {conn:?}"
            );
        }
        Event::Refused { conn, reason } => {
            log::info!("connection {conn:?} refused: {}", reason.words());
        }
        Event::Disconnected { conn, client_id, reason, peer, listener } => {
            let from = from(peer);
            log::info!(
                client_id = client_id.as_str(), peer = from.as_str(), listener = *listener;
                "client {client_id} on {conn:?} disconnected: {reason}"
            );
        }
        other => log::debug!("{other:?}"),
    }
}

/// Logs what a bridge reports: its connections at info level, dropped messages at warn.
#[cfg(feature = "log")]
fn log_bridge_event(name: &str, event: &BridgeEvent) {
    match event {
        BridgeEvent::Connected { address, session_present } => log::info!(
            bridge = name;
            "bridge {name} connected to address {} (session present: {session_present})",
            address + 1
        ),
        BridgeEvent::Refused { address, reason_code } => log::warn!(
            bridge = name;
            "bridge {name}: address {} refused the connection: {reason_code:?}; \
             trying again after the longest backoff",
            address + 1
        ),
        BridgeEvent::Disconnected { address, reason } => {
            log::warn!(bridge = name; "bridge {name}: address {}: {reason}", address + 1);
        }
        BridgeEvent::Dropped { topic, reason } => {
            log::warn!(bridge = name; "bridge {name} dropped a message on {topic}: {reason}");
        }
    }
}

/// What a deferred authentication answers when the server has no asynchronous authenticator.
pub const NO_ASYNC_AUTHENTICATOR: AuthDecision = AuthDecision::Deny(ReasonCode::NotAuthorized);

/// After a vectored write of `n` bytes from `bufs[first..]`: drops what was written (splitting a
/// partly written buffer) and returns the index of the first buffer still to write.
pub fn consume(bufs: &mut [Bytes], mut first: usize, mut n: usize) -> usize {
    while n > 0 && first < bufs.len() {
        let b = &mut bufs[first];
        if n >= b.len() {
            n -= b.len();
            first += 1;
        } else {
            let _ = b.split_to(n);
            n = 0;
        }
    }
    first
}
