//! The control handle: how code outside a server's loop (an HTTP admin plane, a test, an
//! embedding application) asks the broker something or tells it to act.
//!
//! The broker's core answers an [`admin::Request`] sans-IO
//! ([`Broker::handle_admin`](ternmq_core::broker::Broker::handle_admin)); a [`Control`] only
//! carries the request to the loop that owns the broker and the answer back. Every server, async
//! or not, makes one pair with [`Control::pair`] at bind: it keeps the [`ControlInbox`], drains
//! it on each turn of its loop, and hands out clones of the [`Control`], which is `Send + Sync`
//! and works from any thread and any executor.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_channel::{Receiver, Sender};
use ternmq_core::broker::admin::{Request, Response};
use ternmq_store::{StoreFigures, StoreMetrics};

use crate::server::Listener;

/// Requests that may wait for the loop at once; more wait for room.
const CALLS: usize = 64;

type Call = (Request, Sender<Response>);

/// A listener as the control handle describes it (for metrics labels and the admin API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The address actually bound.
    pub addr: SocketAddr,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub kind: &'static str,
}

#[derive(Debug)]
struct Shared {
    ready: AtomicBool,
    store: OnceLock<Arc<StoreMetrics>>,
    listeners: Vec<ListenerInfo>,
}

/// A thread-safe handle on a running server's broker. See the [module documentation](self).
#[derive(Clone)]
pub struct Control {
    calls: Sender<Call>,
    wake: Arc<dyn Fn() + Send + Sync>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").field("shared", &self.shared).finish_non_exhaustive()
    }
}

/// The server's side of a [`Control`]: requests waiting for the loop.
#[derive(Debug)]
pub struct ControlInbox {
    calls: Receiver<Call>,
    shared: Arc<Shared>,
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the server is not running")
}

impl Control {
    /// A handle and the inbox its requests reach, for a server whose `config` listeners are
    /// bound at `bound` (in the same order; `None` where the address cannot be read); `wake`
    /// is called after each request is queued so that an idle loop looks at the inbox.
    pub fn pair(
        bound: impl IntoIterator<Item = Option<SocketAddr>>,
        config: &[Listener],
        wake: impl Fn() + Send + Sync + 'static,
    ) -> (Control, ControlInbox) {
        let listeners = bound
            .into_iter()
            .zip(config)
            .filter_map(|(addr, l)| Some(ListenerInfo { addr: addr?, kind: l.kind() }))
            .collect();
        let (tx, rx) = async_channel::bounded(CALLS);
        let shared =
            Arc::new(Shared { ready: AtomicBool::new(false), store: OnceLock::new(), listeners });
        (
            Control { calls: tx, wake: Arc::new(wake), shared: Arc::clone(&shared) },
            ControlInbox { calls: rx, shared },
        )
    }

    /// Sends `request` to the broker and waits for its answer. Fails once the server has
    /// stopped (or before it runs: requests wait until [`run`](crate::Server::run) starts).
    pub async fn request(&self, request: Request) -> io::Result<Response> {
        let (tx, rx) = async_channel::bounded(1);
        self.calls.send((request, tx)).await.map_err(|_| stopped())?;
        (self.wake)();
        rx.recv().await.map_err(|_| stopped())
    }

    /// [`request`](Self::request), blocking the calling thread.
    pub fn request_blocking(&self, request: Request) -> io::Result<Response> {
        let (tx, rx) = async_channel::bounded(1);
        self.calls.send_blocking((request, tx)).map_err(|_| stopped())?;
        (self.wake)();
        rx.recv_blocking().map_err(|_| stopped())
    }

    /// Whether the server is serving: its listeners are bound, its store (if any) is open and
    /// loaded, and it is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// The server's listeners, in the order of its configuration.
    pub fn listeners(&self) -> &[ListenerInfo] {
        &self.shared.listeners
    }

    /// The addresses actually bound, in the order of the configuration.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listeners.iter().map(|l| l.addr).collect()
    }

    /// What the store has done, if the server has one and is running.
    pub fn store_figures(&self) -> Option<StoreFigures> {
        self.shared.store.get().map(|m| m.figures())
    }
}

impl ControlInbox {
    /// The server runs: its broker is loaded and `store` (if any) is writing.
    pub fn started(&self, store: Option<Arc<StoreMetrics>>) {
        if let Some(m) = store {
            let _ = self.shared.store.set(m);
        }
        self.shared.ready.store(true, Ordering::Release);
    }

    /// The server is shutting down: it is not ready any more, and requests are refused.
    pub fn stopping(&self) {
        self.shared.ready.store(false, Ordering::Release);
        self.calls.close();
    }

    /// Answers every waiting request with `answer`, in order.
    pub fn serve(&self, mut answer: impl FnMut(Request) -> Response) {
        while let Ok((request, reply)) = self.calls.try_recv() {
            let _ = reply.try_send(answer(request));
        }
    }
}
