//! ternmq's async client and server, written once for every async runtime.
//!
//! The protocol lives in [`ternmq_core`]; what an async adapter adds around the core's
//! [`client::driver`](ternmq_core::client::driver) is the same on every runtime: a driver task
//! that writes, waits for the first of a read, a command and the core's deadline, feeds the
//! driver and acts on its outcomes; handles that queue commands and await their answers. This
//! crate holds that once, generic over a [`Runtime`]: the few things that do differ (spawning
//! a task, sleeping, reading and writing the runtime's byte streams, dialling TCP). The server
//! (feature `server`) is written the same way over [`ServerRuntime`](server::ServerRuntime),
//! which adds listeners and sockets that can be waited on. The runtime crates (`ternmq-tokio`,
//! `ternmq-smol`) implement the seam and re-export [`Client`] and the server under their own
//! names; applications use those.
//!
//! Channels and wake-ups use `async-channel`, which works on any executor.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

pub mod client;
pub mod cluster;
#[cfg(feature = "server")]
pub mod control;
pub mod proxy;
#[cfg(feature = "server")]
pub mod server;
pub mod tls;
pub mod transport;
pub mod ws;

pub use client::Client;
#[cfg(feature = "server")]
pub use control::{Control, ListenerInfo};
#[cfg(feature = "server")]
pub use server::{BlockOn, Server, ServerConfig, ServerRuntime, ShutdownHandle};

/// What a [`Dialer`] returns: a connected transport, or why it could not connect.
pub type DialFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// Opens a transport to the server, for the first connection and for every reconnection:
/// the seam where TLS or WebSocket transports plug in ([`Client::connect_via`]).
pub type Dialer<T> = Arc<dyn Fn() -> DialFuture<T> + Send + Sync>;

/// The runtime seam: what the async client needs from an executor and its I/O. Each method is
/// a thin call into the runtime; none holds protocol logic.
pub trait Runtime: Send + Sync + 'static {
    /// A connected byte stream (TCP, or TLS or a WebSocket over it), as the runtime's crate
    /// names it.
    type Transport: Send + 'static;

    /// Spawns `task` to run on its own.
    fn spawn(task: impl Future<Output = ()> + Send + 'static);

    /// Completes after `duration`.
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// Reads what is available into `buf`'s spare room (reserving some first); `Ok(0)` at the
    /// end of the stream. Dropping the future before it completes loses no data.
    fn read<'a>(
        transport: &'a mut Self::Transport,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Writes all of `data`.
    fn write_all<'a>(
        transport: &'a mut Self::Transport,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;

    /// Closes the stream, sending what is buffered (errors are of no interest any more).
    fn close(transport: &mut Self::Transport) -> impl Future<Output = ()> + Send + '_;

    /// A TCP connection to `host:port`, with Nagle's algorithm off, as a transport.
    fn tcp_connect(
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::Transport>> + Send;
}

/// The default [`Dialer`] on runtime `R`: TCP to `host:port`, with Nagle's algorithm off.
pub fn tcp_dialer<R: Runtime>(host: impl Into<String>, port: u16) -> Dialer<R::Transport> {
    let host: Arc<str> = host.into().into();
    Arc::new(move || {
        let host = Arc::clone(&host);
        Box::pin(async move {
            R::tcp_connect(&host, port)
                .await
                .map_err(|e| ternmq_core::client::driver::dial_error(e, &host, port))
        })
    })
}

/// `fut`'s output, or `None` if `timeout` passes first.
pub async fn within<R: Runtime, T>(timeout: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        R::sleep(timeout).await;
        None
    })
    .await
}
