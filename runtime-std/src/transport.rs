//! The seam where transports plug into [`SyncClient`](crate::SyncClient): plain TCP here; TLS
//! and WebSocket implement the same two halves.
//!
//! The client reads on its I/O thread and writes from whichever thread made a call, so a
//! connected transport comes as two halves: a [`TransportReader`] that the I/O thread owns and
//! a [`TransportWriter`] kept under the client's lock. A transport whose halves share state (a
//! TLS session, say) shares it between them behind a lock of its own.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The reading half of a connected transport, owned by the client's I/O thread.
pub trait TransportReader: Send + 'static {
    /// Reads into `buf`, waiting at most `timeout`: `Ok(0)` at the end of the stream, an error
    /// of kind `WouldBlock` or `TimedOut` when nothing came in time.
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
}

/// The writing half of a connected transport.
pub trait TransportWriter: Send + 'static {
    /// Writes all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Closes the transport both ways (a pending read on the other half then ends).
    fn shutdown(&mut self);
}

/// A connected transport, as its two halves.
pub struct Transport {
    /// What the I/O thread reads from.
    pub reader: Box<dyn TransportReader>,
    /// What calls write to.
    pub writer: Box<dyn TransportWriter>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// A TCP stream as a transport (Nagle's algorithm off).
    pub fn tcp(stream: TcpStream) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(Transport { reader: Box::new(stream), writer: Box::new(writer) })
    }
}

impl TransportReader for TcpStream {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        // A zero timeout means "none" to the socket: wait at least a millisecond.
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        self.read(buf)
    }
}

impl TransportWriter for TcpStream {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn shutdown(&mut self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }
}

/// Opens a transport to the server, for the first connection and for every reconnection
/// ([`SyncClient::connect_via`](crate::SyncClient::connect_via)).
pub type Dialer = Arc<dyn Fn() -> io::Result<Transport> + Send + Sync>;

/// The default [`Dialer`]: TCP to `host:port`, with an error that names the address.
pub fn tcp_dialer(host: impl Into<String>, port: u16) -> Dialer {
    let host: String = host.into();
    Arc::new(move || {
        TcpStream::connect((host.as_str(), port))
            .map_err(|e| ternmq_core::client::driver::dial_error(e, &host, port))
            .and_then(Transport::tcp)
    })
}
