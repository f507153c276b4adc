//! The MQTT broker server on smol: the server written once in [`ternmq_async::server`], on
//! async-io's reactor, smol's executor and timers ([`Smol`]).
//!
//! Tasks and their jobs: one accept task per listener; one task per connection, which waits
//! for readability before taking a read buffer and writes what the core task queued for it
//! with vectored writes; and the core task, which owns the broker through its driver and takes
//! its input in batches. Tasks are spawned on smol's global executor.

use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::task::{Context, Poll};

use bytes::BytesMut;
use smol::io::AsyncReadExt;
use smol::{Async, channel};
use ternmq_async::ServerRuntime;
pub use ternmq_async::control::{Control, ListenerInfo};
pub use ternmq_async::server::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer, BridgeAddress, BridgeSpec, Listener, ServerConfig,
    ShutdownHandle,
};
use ternmq_async::server::{BlockOn, READ_CHUNK, TrySend};
pub use ternmq_async::tls::{TlsAcceptor, TlsSettings, TlsVersion};

use crate::Smol;

/// A bound MQTT broker server on smol. See [`ternmq_async::Server`]; with smol it also has
/// [`bind_blocking`](ternmq_async::Server::bind_blocking) and
/// [`run_blocking`](ternmq_async::Server::run_blocking).
pub type Server = ternmq_async::Server<Smol>;

impl ServerRuntime for Smol {
    type Listener = Async<TcpListener>;
    type Stream = Async<TcpStream>;

    async fn connect(host: &str, port: u16) -> io::Result<Async<TcpStream>> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
        for addr in smol::net::resolve((host, port)).await? {
            match Async::<TcpStream>::connect(addr).await {
                Ok(stream) => {
                    stream.get_ref().set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn bind(addr: SocketAddr) -> io::Result<Async<TcpListener>> {
        Async::<TcpListener>::bind(addr)
    }

    fn local_addr(listener: &Async<TcpListener>) -> io::Result<SocketAddr> {
        listener.get_ref().local_addr()
    }

    async fn accept(listener: &Async<TcpListener>) -> io::Result<(Async<TcpStream>, SocketAddr)> {
        listener.accept().await
    }

    fn set_nodelay(stream: &Async<TcpStream>) -> io::Result<()> {
        stream.get_ref().set_nodelay(true)
    }

    fn poll_read_ready(stream: &Async<TcpStream>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        stream.poll_readable(cx)
    }

    fn try_read_buf(stream: &Async<TcpStream>, buf: &mut BytesMut) -> io::Result<usize> {
        // std reads into initialised bytes: lend the buffer zeroed room, keep what came.
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        let mut socket = stream.get_ref();
        let result = socket.read(&mut buf[len..]);
        buf.truncate(len + result.as_ref().map_or(0, |n| *n));
        result
    }

    fn try_write_vectored(stream: &Async<TcpStream>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut socket = stream.get_ref();
        socket.write_vectored(bufs)
    }

    fn write_vectored<'a>(
        stream: &'a mut Async<TcpStream>,
        bufs: &'a [IoSlice<'a>],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        stream.write_with(move |mut s| s.write_vectored(bufs))
    }

    fn read_into<'a>(
        stream: &'a mut Async<TcpStream>,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        stream.read(buf)
    }

    async fn shutdown(stream: &mut Async<TcpStream>) {
        let _ = stream.get_ref().shutdown(Shutdown::Write);
    }

    type Sender<T: Send + 'static> = channel::Sender<T>;
    type Receiver<T: Send + 'static> = channel::Receiver<T>;

    fn channel<T: Send + 'static>(capacity: usize) -> (channel::Sender<T>, channel::Receiver<T>) {
        channel::bounded(capacity)
    }

    fn try_send<T: Send + 'static>(tx: &channel::Sender<T>, value: T) -> Result<(), TrySend<T>> {
        tx.try_send(value).map_err(|e| match e {
            channel::TrySendError::Full(value) => TrySend::Full(value),
            channel::TrySendError::Closed(_) => TrySend::Closed,
        })
    }

    async fn send<T: Send + 'static>(tx: &channel::Sender<T>, value: T) -> bool {
        tx.send(value).await.is_ok()
    }

    fn send_blocking<T: Send + 'static>(tx: &channel::Sender<T>, value: T) -> bool {
        tx.send_blocking(value).is_ok()
    }

    fn try_recv<T: Send + 'static>(rx: &mut channel::Receiver<T>) -> Result<T, bool> {
        rx.try_recv().map_err(|e| e.is_closed())
    }

    async fn recv<T: Send + 'static>(rx: &mut channel::Receiver<T>) -> Option<T> {
        rx.recv().await.ok()
    }

    async fn spawn_blocking<T: Send + 'static>(
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // A panicking job panics the blocking thread's task, which unblock propagates; catch
        // it there so that the server carries on.
        let job = std::panic::AssertUnwindSafe(job);
        smol::unblock(move || std::panic::catch_unwind(job).ok()).await
    }
}

impl BlockOn for Smol {
    fn block_on<F: Future>(fut: F) -> F::Output {
        smol::block_on(fut)
    }
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
            let size = ternmq_async::server::idle_connection_future_size::<Smol>(stream);
            assert!(size <= 160, "the connection future takes {size} bytes");
        });
    }
}
