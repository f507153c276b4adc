//! The async MQTT [`Client`] on smol: the client written once in [`ternmq_async`], on smol's
//! executor, timers and byte streams ([`Smol`]).
//!
//! A driver task owns the connection and the core's driver; it writes what is queued, then
//! waits for the first of a read, a wake-up from a command and the core's next deadline, feeds
//! the driver, and acts on its outcomes. [`Client`] handles are cheap to clone and usable from
//! any task, executor or thread.
//!
//! # Where tasks run
//!
//! The driver task and the tasks of [`Client::on_message_async`] are spawned on smol's global
//! executor ([`smol::spawn`]), which runs on threads of its own (one unless `SMOL_THREADS` says
//! otherwise). The application's futures can run anywhere, `smol::block_on` included; nothing
//! blocks that executor except a synchronous [`Client::on_message`] handler that blocks, which
//! it must not.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use smol::Timer;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;

/// A byte stream the client runs MQTT over: TCP by default, or TLS or a WebSocket over it,
/// supplied by a [`Dialer`]. Protocol code never sees which.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// What a [`Dialer`] returns: a connected transport, or why it could not connect.
pub type DialFuture = ternmq_async::DialFuture<Box<dyn Transport>>;

/// Opens a transport to the server, for the first connection and for every reconnection:
/// the seam where TLS or WebSocket transports plug in ([`Client::connect_via`]).
pub type Dialer = ternmq_async::Dialer<Box<dyn Transport>>;

/// An async MQTT client handle on smol; clone it freely. The client is written once for every
/// runtime ([`ternmq_async::Client`]); this crate supplies [`Smol`].
pub type Client = ternmq_async::Client<Smol>;

/// The default [`Dialer`]: TCP to `host:port`, with Nagle's algorithm off.
pub fn tcp_dialer(host: impl Into<String>, port: u16) -> Dialer {
    ternmq_async::tcp_dialer::<Smol>(host, port)
}

const READ_CHUNK: usize = 16 * 1024;

/// smol's side of the runtime seam ([`ternmq_async::Runtime`]): its executor, timers and byte
/// streams.
#[derive(Debug)]
pub struct Smol;

impl ternmq_async::Runtime for Smol {
    type Transport = Box<dyn Transport>;

    fn spawn(task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    async fn sleep(duration: Duration) {
        Timer::after(duration).await;
    }

    async fn read(transport: &mut Self::Transport, buf: &mut BytesMut) -> io::Result<usize> {
        // futures-io reads into initialised bytes: lend it zeroed room, and keep only what came,
        // also when the read is dropped before it completes.
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        let mut room = Room { buf, keep: len };
        let result = transport.read(&mut room.buf[len..]).await;
        room.keep += result.as_ref().map_or(0, |n| *n);
        result
    }

    fn write_all<'a>(
        transport: &'a mut Self::Transport,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        transport.write_all(data)
    }

    async fn close(transport: &mut Self::Transport) {
        let _ = transport.close().await;
    }

    async fn tcp_connect(host: &str, port: u16) -> io::Result<Self::Transport> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// Room lent to a read: on drop, the buffer is cut back to the bytes worth keeping.
struct Room<'a> {
    buf: &'a mut BytesMut,
    keep: usize,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.keep);
    }
}
