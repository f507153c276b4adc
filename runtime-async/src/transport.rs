//! What may sit between a server's socket and the broker: TLS, WebSocket, or both. Each is a
//! sans-IO byte transform ([`Transform`]): bytes from the socket in, the MQTT bytes they carry
//! out, and the broker's bytes back into what goes on the wire. So a transport is written once
//! and every server (the async ones and the std readiness loop) runs it the same way; the
//! protocol stays the core's.

use std::fmt;
use std::io;

use bytes::BytesMut;
use ternmq_core::client::driver::ConnectOptions;
use ternmq_core::codec::MqttStr;

use crate::tls::TlsConnector;
use crate::ws::WsClientSession;

/// A transport's side of one connection.
pub trait Transform: Send + 'static {
    /// Bytes read from the socket: the MQTT bytes they carry are appended to `plain`. An error
    /// ends the connection, after what [`poll_transmit`](Self::poll_transmit) then has (a TLS
    /// alert, an HTTP error, a WebSocket close frame) is written.
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused>;

    /// MQTT bytes to send.
    fn write_plaintext(&mut self, plain: &[u8]);

    /// Ends the transport cleanly (TLS close_notify, a WebSocket close frame).
    fn close(&mut self);

    /// Bytes to write to the socket now, if any.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;

    /// Once, when the transport knows it: who the client is (a TLS client certificate's
    /// common name, on a listener that takes it as the user name).
    fn poll_identity(&mut self) -> Option<MqttStr> {
        None
    }

    /// Whether its handshake (TLS, the WebSocket upgrade) is done, so that a client knows the
    /// connection is up before it reports so.
    fn is_ready(&self) -> bool {
        true
    }

    /// Once, when the transport knows it: where the client really is (the PROXY protocol of
    /// a load balancer in front).
    fn poll_peer_addr(&mut self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl Transform for Box<dyn Transform> {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        (**self).handle_input(input, plain)
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        (**self).write_plaintext(plain);
    }

    fn close(&mut self) {
        (**self).close();
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (**self).poll_transmit()
    }

    fn poll_identity(&mut self) -> Option<MqttStr> {
        (**self).poll_identity()
    }

    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }

    fn poll_peer_addr(&mut self) -> Option<std::net::SocketAddr> {
        (**self).poll_peer_addr()
    }
}

/// What [`Transform::handle_input`] found besides MQTT bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The peer ended the transport cleanly: no more bytes will come.
    pub closed: bool,
}

/// Why a transport refused a connection, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Two transforms, one inside the other: `inner` runs over `outer` (WebSocket over TLS).
#[derive(Debug)]
pub struct Stack<O, I> {
    outer: O,
    inner: I,
}

impl<O: Transform, I: Transform> Stack<O, I> {
    /// `inner` over `outer`.
    pub fn new(outer: O, inner: I) -> Self {
        Stack { outer, inner }
    }

    /// What the inner transform has to send goes into the outer one.
    fn pump(&mut self) {
        while let Some(bytes) = self.inner.poll_transmit() {
            self.outer.write_plaintext(&bytes);
        }
    }
}

impl<O: Transform, I: Transform> Transform for Stack<O, I> {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        let mut carried = BytesMut::new();
        let outer = self.outer.handle_input(input, &mut carried);
        let inner = if carried.is_empty() {
            Ok(Received::default())
        } else {
            self.inner.handle_input(&carried, plain)
        };
        self.pump();
        let (outer, inner) = (outer?, inner?);
        Ok(Received { closed: outer.closed || inner.closed })
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        self.inner.write_plaintext(plain);
        self.pump();
    }

    fn close(&mut self) {
        self.inner.close();
        self.pump();
        self.outer.close();
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.pump();
        self.outer.poll_transmit()
    }

    fn poll_identity(&mut self) -> Option<MqttStr> {
        self.outer.poll_identity().or_else(|| self.inner.poll_identity())
    }

    fn is_ready(&self) -> bool {
        self.outer.is_ready() && self.inner.is_ready()
    }

    fn poll_peer_addr(&mut self) -> Option<std::net::SocketAddr> {
        self.outer.poll_peer_addr().or_else(|| self.inner.poll_peer_addr())
    }
}

/// What a client speaks over the byte stream its dialer opens, from its [`ConnectOptions`]:
/// TLS, WebSocket, WebSocket over TLS, or nothing but MQTT. Made once per client (the TLS
/// configuration is read then), a session from it for every connection.
#[derive(Clone, Debug)]
pub struct ClientTransport {
    tls: Option<TlsConnector>,
    /// The WebSocket host, port and path.
    ws: Option<(String, u16, String)>,
}

impl ClientTransport {
    /// The transport `options` ask for, or `None` for plain MQTT; an error names the TLS file
    /// or option that is wrong.
    pub fn new(options: &ConnectOptions) -> io::Result<Option<ClientTransport>> {
        let tls = options.tls.as_ref().map(|t| TlsConnector::new(t, &options.host)).transpose()?;
        let ws = options.ws_path.clone().map(|p| (options.host.clone(), options.port, p));
        Ok((tls.is_some() || ws.is_some()).then_some(ClientTransport { tls, ws }))
    }

    /// A session for a new connection.
    pub fn session(&self) -> io::Result<Box<dyn Transform>> {
        let ws = self
            .ws
            .as_ref()
            .map(|(host, port, path)| WsClientSession::new(host, *port, path, self.tls.is_some()))
            .transpose()?;
        Ok(match (&self.tls, ws) {
            (Some(tls), None) => Box::new(tls.session()?),
            (None, Some(ws)) => Box::new(ws),
            (Some(tls), Some(ws)) => Box::new(Stack::new(tls.session()?, ws)),
            (None, None) => Box::new(Nothing(Vec::new())),
        })
    }
}

/// No transform at all (a [`ClientTransport`] always has one of TLS or WebSocket; this only
/// keeps `session` total).
#[derive(Debug)]
struct Nothing(Vec<u8>);

impl Transform for Nothing {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        plain.extend_from_slice(input);
        Ok(Received::default())
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        self.0.extend_from_slice(plain);
    }

    fn close(&mut self) {}

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.0.is_empty()).then(|| std::mem::take(&mut self.0))
    }
}
