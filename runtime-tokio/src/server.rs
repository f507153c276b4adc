//! The MQTT broker server on Tokio: the server written once in [`ternmq_async::server`], on
//! Tokio's tasks, timers and sockets ([`Tokio`]).
//!
//! Tasks and their jobs: one accept task per listener; one task per connection, which reads
//! (taking a buffer only once the socket is readable, so an idle connection holds none) and
//! writes what the core task queued for it with vectored writes; and the core task, which owns
//! the broker through its driver and takes its input in batches. Tasks are spawned on the
//! current Tokio runtime, so a multi-threaded runtime spreads socket work over its threads.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ternmq_async::ServerRuntime;
pub use ternmq_async::control::{Control, ListenerInfo};
use ternmq_async::server::TrySend;
pub use ternmq_async::server::{
    AsyncAuthenticator, AsyncAuthorizer, AuthFuture, AuthorizeRequest, AuthzFuture,
    BlockingAuthenticator, BlockingAuthorizer, BridgeAddress, BridgeSpec, Listener, ServerConfig,
    ShutdownHandle,
};
pub use ternmq_async::tls::{TlsAcceptor, TlsSettings, TlsVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::Tokio;

/// A bound MQTT broker server on Tokio. See [`ternmq_async::Server`].
pub type Server = ternmq_async::Server<Tokio>;

impl ServerRuntime for Tokio {
    type Listener = TcpListener;
    type Stream = TcpStream;

    async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    fn local_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        listener.accept().await
    }

    fn set_nodelay(stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)
    }

    fn poll_read_ready(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        stream.poll_read_ready(cx)
    }

    fn try_read_buf(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
        stream.try_read_buf(buf)
    }

    fn try_write_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        stream.try_write_vectored(bufs)
    }

    fn write_vectored<'a>(
        stream: &'a mut TcpStream,
        bufs: &'a [IoSlice<'a>],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        stream.write_vectored(bufs)
    }

    fn read_into<'a>(
        stream: &'a mut TcpStream,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        stream.read(buf)
    }

    async fn shutdown(stream: &mut TcpStream) {
        let _ = AsyncWriteExt::shutdown(stream).await;
    }

    type Sender<T: Send + 'static> = mpsc::Sender<T>;
    type Receiver<T: Send + 'static> = mpsc::Receiver<T>;

    fn channel<T: Send + 'static>(capacity: usize) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
        mpsc::channel(capacity)
    }

    fn try_send<T: Send + 'static>(tx: &mpsc::Sender<T>, value: T) -> Result<(), TrySend<T>> {
        tx.try_send(value).map_err(|e| match e {
            TrySendError::Full(value) => TrySend::Full(value),
            TrySendError::Closed(_) => TrySend::Closed,
        })
    }

    async fn send<T: Send + 'static>(tx: &mpsc::Sender<T>, value: T) -> bool {
        tx.send(value).await.is_ok()
    }

    fn send_blocking<T: Send + 'static>(tx: &mpsc::Sender<T>, value: T) -> bool {
        tx.blocking_send(value).is_ok()
    }

    fn try_recv<T: Send + 'static>(rx: &mut mpsc::Receiver<T>) -> Result<T, bool> {
        rx.try_recv().map_err(|e| matches!(e, TryRecvError::Disconnected))
    }

    async fn recv<T: Send + 'static>(rx: &mut mpsc::Receiver<T>) -> Option<T> {
        rx.recv().await
    }

    async fn spawn_blocking<T: Send + 'static>(
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        tokio::task::spawn_blocking(job).await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What an idle connection costs this runtime is mostly its task, whose size is the
    /// connection future's.
    #[tokio::test]
    async fn an_idle_connections_future_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let size = ternmq_async::server::idle_connection_future_size::<Tokio>(stream);
        // At this size Tokio's task cell (128-byte aligned) is 256 bytes.
        assert!(size <= 160, "the connection future takes {size} bytes");
    }
}
