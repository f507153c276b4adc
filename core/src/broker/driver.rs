//! The bookkeeping every broker server needs around a [`Broker`], written once for all
//! runtimes.
//!
//! A server runs reader and writer tasks (or threads) per connection and one owner of the
//! broker. [`Driver`] is that owner's state: the broker, each connection's partial input and
//! the bytes handed to its writer but not yet written. The runtime feeds it what happened
//! ([`accepted`](Driver::accepted), [`input`](Driver::input), [`written`](Driver::written),
//! [`closed`](Driver::closed), [`timeout`](Driver::timeout)) and then carries out the
//! [`Action`]s from [`poll_action`](Driver::poll_action): write these buffers to that
//! connection, close it, authenticate asynchronously. Still no I/O and no clock here.
//!
//! Flow control: at most [`WRITE_WINDOW`] bytes per connection are out with its writer. The rest
//! stays in the broker, whose slow-consumer limits then apply, so a stalled reader grows no
//! memory in the server.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::future::Future;
use core::pin::Pin;

use super::persist::{PersistOp, PersistSeq};
use super::{AcceptError, AuthDecision, AuthRequest, AuthTicket, Broker, ConnId, Event, PeerInfo};
use crate::codec::ReasonCode;
use crate::time::{Duration, Instant};

/// Bytes handed to one connection's writer and not yet reported written, at most.
pub const WRITE_WINDOW: usize = 64 * 1024;

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

/// What the runtime must do next.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action<H> {
    /// Write these buffers, in order, to the connection whose writer is `H`; report the total
    /// with [`Driver::written`] once done.
    Write(H, Vec<Bytes>),
    /// Everything for this connection has been handed out: let its writer finish what it
    /// holds, then close the socket and stop its reader.
    Close(H),
    /// Stop reading from this connection (a subscriber of what it publishes is behind).
    PauseRead(H),
    /// Read from this connection again.
    ResumeRead(H),
    /// The authenticator deferred: decide `request` (asynchronously) and answer with
    /// [`Driver::resolve_auth`].
    Authenticate(AuthTicket, AuthRequest),
    /// Something worth logging.
    Log(Event),
    /// The authorizer deferred: decide whether `request`'s client may do it, and answer with
    /// [`Driver::resolve_authorization`].
    Authorize(AuthTicket, AuthorizeRequest),
    /// Durable state to store, in order (see [`persist`](super::persist)); report what is on
    /// disk with [`Driver::persisted`].
    Persist(Vec<(PersistSeq, PersistOp)>),
}

/// A future an [`AsyncAuthenticator`] returns.
pub type AuthFuture = Pin<Box<dyn Future<Output = AuthDecision> + Send>>;

/// A future an [`AsyncAuthorizer`] returns: whether the client may.
pub type AuthzFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Authentication that needs I/O (a database, an HTTP call). The core's synchronous
/// [`Authenticator`](super::Authenticator) answers [`AuthDecision::Defer`]; a server then runs
/// this on a task of its own and gives the answer back with [`Driver::resolve_auth`]. The
/// connection's later packets wait, in order, until then. The future is the runtime's to run:
/// the trait is the same for every async runtime.
pub trait AsyncAuthenticator: Send + Sync {
    /// Decides on `request`.
    fn authenticate(&self, request: AuthRequest) -> AuthFuture;
}

/// Authorization that needs I/O: run when the core's authorizer answers
/// [`AuthzDecision::Defer`](super::AuthzDecision); the answer goes back with
/// [`Driver::resolve_authorization`].
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
    input: BytesMut,
    in_writer: usize,
    /// The peer closed while input waited (paused): close once it has been handled.
    eof: bool,
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

/// A broker and its connections' I/O state. See the [module documentation](self).
pub struct Driver<H> {
    broker: Broker,
    conns: Conns<H>,
    actions: VecDeque<Action<H>>,
    /// The latest `now` given: closes the broker decides happen then.
    now: Instant,
}

impl<H: core::fmt::Debug> core::fmt::Debug for Driver<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("broker", &self.broker)
            .field("connections", &self.conns.len)
            .finish_non_exhaustive()
    }
}

impl<H: Clone> Driver<H> {
    /// Wraps `broker`.
    pub fn new(broker: Broker) -> Self {
        let conns = Conns { slots: Vec::new(), len: 0 };
        Self { broker, conns, actions: VecDeque::new(), now: Instant::ZERO }
    }

    /// The broker, for getters such as [`Broker::stats`].
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Connections open.
    pub fn connections(&self) -> usize {
        self.conns.len
    }

    /// A socket was accepted; `handle` reaches its writer. Refused at once (drop the socket)
    /// when `max_connections` are open.
    pub fn accepted(
        &mut self,
        now: Instant,
        peer: PeerInfo,
        handle: H,
    ) -> Result<ConnId, AcceptError> {
        self.now = self.now.max(now);
        let id = self.broker.accept(now, peer)?;
        self.conns.insert(id, Io { handle, input: BytesMut::new(), in_writer: 0, eof: false });
        Ok(id)
    }

    /// Bytes read from `id`.
    pub fn input(&mut self, now: Instant, id: ConnId, chunk: BytesMut) {
        self.now = self.now.max(now);
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        if io.input.is_empty() {
            io.input = chunk;
        } else {
            io.input.extend_from_slice(&chunk);
        }
        self.broker.handle_bytes(now, id, &mut io.input);
        if io.input.is_empty() {
            // Do not keep the spare capacity of the read buffer while the connection idles.
            io.input = BytesMut::new();
        }
        self.collect();
    }

    /// `id`'s writer wrote `n` bytes.
    pub fn written(&mut self, id: ConnId, n: usize) {
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        io.in_writer = io.in_writer.saturating_sub(n);
        self.transmit(id, false);
        // Draining a subscriber's output can resume the publishers it paused: those events
        // must not wait for the next input, which a paused publisher will not send.
        self.collect();
    }

    /// `id`'s socket closed (end of stream or an error, reading or writing). Input that waits
    /// because the broker paused it is still handled first: a client that published and left
    /// loses nothing it sent.
    pub fn closed(&mut self, now: Instant, id: ConnId) {
        self.now = self.now.max(now);
        if let Some(io) = self.conns.get_mut(&id)
            && !io.input.is_empty()
            && self.broker.is_input_paused(id)
        {
            io.eof = true;
            return;
        }
        if self.forget(now, id) {
            self.collect();
        }
    }

    /// The answer to an [`Action::Authenticate`].
    pub fn resolve_auth(&mut self, now: Instant, ticket: AuthTicket, decision: AuthDecision) {
        self.now = self.now.max(now);
        self.broker.resolve_auth(now, ticket, decision);
        self.collect();
    }

    /// The answer to an [`Action::Authorize`].
    pub fn resolve_authorization(&mut self, now: Instant, ticket: AuthTicket, allowed: bool) {
        self.now = self.now.max(now);
        self.broker.resolve_authorization(now, ticket, allowed);
        self.collect();
    }

    /// The store has everything up to `seq` on disk.
    pub fn persisted(&mut self, now: Instant, seq: PersistSeq) {
        self.now = self.now.max(now);
        self.broker.handle_persisted(now, seq);
        self.collect();
    }

    /// Runs the broker's due timers. Call when [`poll_timeout`](Self::poll_timeout) passes.
    pub fn timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.broker.handle_timeout(now);
        self.collect();
    }

    /// When [`timeout`](Self::timeout) must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.broker.poll_timeout()
    }

    /// Disconnects every client (MQTT 5: DISCONNECT 0x8B) and closes every connection.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.broker.shutdown(now);
        self.collect();
        let ids = self.conns.ids();
        for id in ids {
            self.close(now, id);
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<H>> {
        self.actions.pop_front()
    }

    /// Turns the broker's output and events into actions.
    fn collect(&mut self) {
        while let Some(id) = self.broker.poll_writable() {
            self.transmit(id, false);
        }
        while let Some(event) = self.broker.poll_event() {
            match event {
                Event::CloseTransport(id) => {
                    self.close(self.now, id);
                }
                Event::AuthRequired { ticket, request, .. } => {
                    self.actions.push_back(Action::Authenticate(ticket, request));
                }
                Event::AuthorizeRequired { ticket, client_id, username, action, topic, .. } => {
                    let request = AuthorizeRequest { client_id, username, action, topic };
                    self.actions.push_back(Action::Authorize(ticket, request));
                }
                Event::PauseInput(id) => {
                    if let Some(io) = self.conns.get(&id) {
                        self.actions.push_back(Action::PauseRead(io.handle.clone()));
                    }
                }
                Event::ResumeInput(id) => {
                    let Some(io) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    self.actions.push_back(Action::ResumeRead(io.handle.clone()));
                    // What was read before the pause took effect goes first.
                    if !io.input.is_empty() {
                        self.broker.handle_bytes(self.now, id, &mut io.input);
                        if io.input.is_empty() {
                            io.input = BytesMut::new();
                        }
                    }
                    let finished = io.eof && !self.broker.is_input_paused(id);
                    while let Some(w) = self.broker.poll_writable() {
                        self.transmit(w, false);
                    }
                    if finished {
                        // The peer had closed: now that its input is handled, so do we.
                        self.forget(self.now, id);
                    }
                }
                other => self.actions.push_back(Action::Log(other)),
            }
        }
        let mut batch = Vec::new();
        while let Some(entry) = self.broker.poll_persist() {
            batch.push(entry);
        }
        if !batch.is_empty() {
            self.actions.push_back(Action::Persist(batch));
        }
    }

    /// Hands what the broker queued for `id` to its writer, within the window unless `all`.
    fn transmit(&mut self, id: ConnId, all: bool) {
        let Some(io) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunks = Vec::new();
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
            self.actions.push_back(Action::Write(io.handle.clone(), chunks));
        }
    }

    /// Tells the broker `id` is gone and the runtime to close it. Returns whether it was open.
    fn forget(&mut self, now: Instant, id: ConnId) -> bool {
        let Some(io) = self.conns.remove(&id) else {
            return false;
        };
        self.broker.handle_closed(now, id);
        self.actions.push_back(Action::Close(io.handle));
        true
    }

    /// Writes out what the broker queued for `id` (its last words), then closes it.
    fn close(&mut self, now: Instant, id: ConnId) {
        self.transmit(id, true);
        self.forget(now, id);
        // handle_closed may have published a will or freed queues.
        while let Some(w) = self.broker.poll_writable() {
            self.transmit(w, false);
        }
    }
}

/// Logs what the broker reports with the `log` crate: connections at info level, the rest at
/// debug (with the core's `log` feature).
#[cfg(feature = "log")]
pub fn log_event(event: &Event) {
    match event {
        Event::Connected { conn, client_id, protocol, session_present } => log::info!(
            "client {client_id} connected ({protocol:?}, session present: {session_present}) as \
             {conn:?}"
        ),
        Event::Refused { conn, reason } => {
            log::info!("connection {conn:?} refused: {}", reason.words());
        }
        Event::Disconnected { conn, client_id, reason } => {
            log::info!("client {client_id} on {conn:?} disconnected: {reason}");
        }
        other => log::debug!("{other:?}"),
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
