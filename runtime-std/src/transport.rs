//! The seam where transports plug into [`SyncClient`](crate::SyncClient): plain TCP here; TLS
//! and WebSocket implement the same two halves.
//!
//! The client reads on its I/O thread and writes from whichever thread made a call, so a
//! connected transport comes as two halves: a [`TransportReader`] that the I/O thread owns and
//! a [`TransportWriter`] kept under the client's lock. A transport whose halves share state (a
//! TLS session, say) shares it between them behind a lock of its own.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use ternmq_async::transport::{ClientTransport, Transform};
use ternmq_core::client::driver::ConnectOptions;

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

/// A TCP stream with TLS or WebSocket over it. Both halves share the transport's state behind
/// one lock, under which every write to the socket happens too, so that records and frames
/// written by the reader (handshake messages, pongs) and by callers never interleave.
struct Layered {
    transform: Box<dyn Transform>,
    stream: TcpStream,
}

impl Layered {
    /// Writes what the transport has to send.
    fn flush(&mut self) -> io::Result<()> {
        while let Some(out) = self.transform.poll_transmit() {
            Write::write_all(&mut self.stream, &out)?;
        }
        Ok(())
    }
}

fn locked(shared: &Mutex<Layered>) -> MutexGuard<'_, Layered> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

struct LayeredReader {
    stream: TcpStream,
    shared: Arc<Mutex<Layered>>,
    /// MQTT bytes through the transport and not yet read.
    plain: BytesMut,
    raw: Vec<u8>,
}

impl TransportReader for LayeredReader {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if self.plain.is_empty() {
            self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
            self.raw.resize(16 * 1024, 0);
            let n = self.stream.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut layered = locked(&self.shared);
            let received = layered.transform.handle_input(&self.raw[..n], &mut self.plain);
            layered.flush()?;
            let received = received.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if received.closed && self.plain.is_empty() {
                return Ok(0);
            }
            if self.plain.is_empty() {
                // Only the transport's own business (a handshake, a ping): nothing to read yet.
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain.split_to(n));
        Ok(n)
    }
}

struct LayeredWriter(Arc<Mutex<Layered>>);

impl TransportWriter for LayeredWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut layered = locked(&self.0);
        layered.transform.write_plaintext(buf);
        layered.flush()
    }

    fn shutdown(&mut self) {
        let mut layered = locked(&self.0);
        layered.transform.close();
        let _ = layered.flush();
        let _ = TcpStream::shutdown(&layered.stream, Shutdown::Both);
    }
}

impl Transport {
    /// A TCP stream with `transform` (TLS, WebSocket) over it.
    /// The handshakes (TLS, the WebSocket upgrade) are done here, within `timeout`, so that a
    /// refusal is the dial's error, with its reason.
    pub fn layered(
        stream: TcpStream,
        transform: Box<dyn Transform>,
        timeout: Duration,
    ) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        let mut reader = stream.try_clone()?;
        let mut transform = transform;
        let plain = handshake(&mut reader, &mut *transform, timeout)?;
        let layered = Layered { transform, stream };
        let shared = Arc::new(Mutex::new(layered));
        let raw = vec![0u8; 16 * 1024];
        let reader = LayeredReader { stream: reader, shared: Arc::clone(&shared), plain, raw };
        Ok(Transport { reader: Box::new(reader), writer: Box::new(LayeredWriter(shared)) })
    }
}

/// A client's TLS or WebSocket handshake over `stream` (blocking), within `timeout`: the client
/// speaks first (a ClientHello, an upgrade request). Returns the MQTT bytes that came with the
/// end of the handshake, if any.
pub(crate) fn handshake(
    stream: &mut TcpStream,
    transform: &mut dyn Transform,
    timeout: Duration,
) -> io::Result<BytesMut> {
    let mut plain = BytesMut::new();
    let deadline = std::time::Instant::now() + timeout;
    let mut raw = vec![0u8; 16 * 1024];
    loop {
        if let Some(out) = transform.poll_transmit() {
            Write::write_all(stream, &out)?;
        }
        if transform.is_ready() {
            stream.set_read_timeout(None)?;
            return Ok(plain);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake timed out"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut raw)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection during the handshake",
            ));
        }
        let received = transform.handle_input(&raw[..n], &mut plain);
        if let Some(out) = transform.poll_transmit() {
            Write::write_all(stream, &out)?;
        }
        received.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// The [`Dialer`] `options` ask for: TCP to their host and port, with TLS and WebSocket over
/// it when they say so (`mqtts://`, `ws://`, `wss://`). An error names the TLS file or option
/// that is wrong.
pub fn dialer(options: &ConnectOptions) -> io::Result<Dialer> {
    let Some(transport) = ClientTransport::new(options)? else {
        return Ok(tcp_dialer(options.host.clone(), options.port));
    };
    let (host, port, timeout) = (options.host.clone(), options.port, options.timeout);
    Ok(Arc::new(move || {
        let stream = TcpStream::connect((host.as_str(), port))
            .map_err(|e| ternmq_core::client::driver::dial_error(e, &host, port))?;
        Transport::layered(stream, transport.session()?, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("{host}:{port}: {e}")))
    }))
}
