//! MQTT over WebSocket (RFC 6455, MQTT section 6) for the server's listeners: the HTTP upgrade
//! and the framing, by tungstenite driven over in-memory buffers, so that a [`WsSession`] is a
//! byte transform like TLS and every server runs it the same way.
//!
//! MQTT bytes travel in binary frames; a packet may be split across frames and a frame may
//! carry several packets (the core's decoder sees one byte stream). Pings are answered, a close
//! frame is answered and ends the connection, and a text frame or a frame larger than the
//! limit closes it with the matching close code.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::server::{ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use crate::transport::{Received, Refused, Transform};

/// The WebSocket subprotocols of MQTT, in order of preference: "mqtt" (MQTT 3.1.1 and 5.0)
/// and "mqttv3.1", which older clients ask for.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The in-memory socket tungstenite reads from and writes to: what the real socket brought,
/// and what is to be written to it.
#[derive(Debug, Default)]
struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks the upgrade request: the path, and an MQTT subprotocol, which the answer names.
struct Check {
    path: String,
}

impl tungstenite::handshake::server::Callback for Check {
    fn on_request(
        self,
        request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        if path != self.path && path != "/" {
            return Err(refusal(StatusCode::NOT_FOUND, format!("no MQTT endpoint at {path}")));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // [MQTT-6.0.0-3]: the client offers "mqtt"; the server answers with it.
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "the WebSocket subprotocol must be \"mqtt\" (or \"mqttv3.1\")".into(),
            ));
        };
        response.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        Ok(response)
    }
}

fn refusal(status: StatusCode, why: String) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("{why}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert("Connection", HeaderValue::from_static("close"));
    r
}

enum State {
    Upgrading(Option<Box<MidHandshake<ServerHandshake<Pipe, Check>>>>),
    Open(Box<WebSocket<Pipe>>),
    /// Refused or closed: only `output` is left to write.
    Done,
}

/// One connection's WebSocket: the HTTP upgrade, then frames in and out.
pub struct WsSession {
    state: State,
    /// What is to be written once the session is done (an HTTP error answer).
    output: Vec<u8>,
}

impl fmt::Debug for WsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Upgrading(_) => "upgrading",
            State::Open(_) => "open",
            State::Done => "done",
        };
        f.debug_struct("WsSession").field("state", &state).finish_non_exhaustive()
    }
}

impl WsSession {
    /// A session for a new connection: it accepts an upgrade at `path` (or at `/`), and
    /// frames and messages up to `max_frame` bytes (a connection's maximum packet size, and
    /// a little for the framing).
    pub fn new(path: &str, max_frame: usize) -> WsSession {
        let mut config = WebSocketConfig::default();
        config.max_frame_size = Some(max_frame);
        config.max_message_size = Some(max_frame);
        // Read what the socket brought in small steps, and write frames out at once.
        config.read_buffer_size = 4096;
        config.write_buffer_size = 0;
        let check = Check { path: path.to_owned() };
        let mid = ServerHandshake::start(Pipe::default(), check, Some(config));
        WsSession { state: State::Upgrading(Some(Box::new(mid))), output: Vec::new() }
    }
}

/// Ends the session with a close frame that says why, and refuses the connection.
fn fail(ws: &mut WebSocket<Pipe>, code: CloseCode, why: &str) -> Refused {
    let frame = CloseFrame { code, reason: why.into() };
    let _ = ws.close(Some(frame));
    let _ = ws.flush();
    Refused(format!("WebSocket: {why}"))
}

/// Bytes from the socket into an open WebSocket, either side's: the MQTT bytes its binary
/// frames carry are appended to `plain`.
fn read_frames(
    ws: &mut WebSocket<Pipe>,
    input: &[u8],
    plain: &mut BytesMut,
) -> Result<Received, Refused> {
    ws.get_mut().input.extend(input);
    let mut received = Received::default();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => plain.extend_from_slice(&b),
            Ok(Message::Text(_)) => {
                return Err(fail(ws, CloseCode::Unsupported, "text frames carry no MQTT"));
            }
            Ok(Message::Close(_)) => received.closed = true,
            // Pings are answered by tungstenite, on the next flush.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                received.closed = true;
                break;
            }
            Err(WsError::Capacity(e)) => return Err(fail(ws, CloseCode::Size, &e.to_string())),
            Err(e) => return Err(fail(ws, CloseCode::Protocol, &e.to_string())),
        }
    }
    // Pongs and the answer to a close frame.
    let _ = ws.flush();
    Ok(received)
}

/// An HTTP answer to a request that cannot be upgraded.
fn http_answer(status: StatusCode, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl Transform for WsSession {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        if let State::Upgrading(mid) = &mut self.state {
            let Some(mut mid) = mid.take().map(|m| *m) else {
                return Err(Refused("WebSocket: the upgrade failed".into()));
            };
            mid.get_mut().get_mut().input.extend(input);
            match mid.handshake() {
                Ok(ws) => self.state = State::Open(Box::new(ws)),
                Err(HandshakeError::Interrupted(mid)) => {
                    self.state = State::Upgrading(Some(Box::new(mid)));
                    return Ok(Received::default());
                }
                Err(HandshakeError::Failure(e)) => {
                    self.state = State::Done;
                    return Err(match e {
                        // The check refused it: answer with its status and reason.
                        WsError::Http(response) => {
                            let body = response
                                .body()
                                .as_deref()
                                .map(String::from_utf8_lossy)
                                .unwrap_or_default();
                            self.output = http_answer(response.status(), "", &body);
                            Refused(format!(
                                "WebSocket: HTTP {}: {}",
                                response.status(),
                                body.trim()
                            ))
                        }
                        // Not an upgrade at all: say what is needed.
                        WsError::Protocol(p) => {
                            let body = format!("{p}\n");
                            self.output = http_answer(
                                StatusCode::UPGRADE_REQUIRED,
                                "Upgrade: websocket\r\nSec-WebSocket-Protocol: mqtt\r\n",
                                &body,
                            );
                            Refused(format!("WebSocket: no upgrade: {p}"))
                        }
                        other => {
                            self.output =
                                http_answer(StatusCode::BAD_REQUEST, "", &format!("{other}\n"));
                            Refused(format!("WebSocket: bad request: {other}"))
                        }
                    });
                }
            }
            // Frames that came with the request were refused by the handshake (junk after
            // it); what comes later is read below.
            return Ok(Received::default());
        }
        let State::Open(ws) = &mut self.state else {
            return Ok(Received { closed: true });
        };
        read_frames(ws, input, plain)
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        if let State::Open(ws) = &mut self.state {
            let _ = ws.send(Message::Binary(Bytes::copy_from_slice(plain)));
        }
    }

    fn close(&mut self) {
        if let State::Open(ws) = &mut self.state {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = match &mut self.state {
            State::Upgrading(Some(mid)) => std::mem::take(&mut mid.get_mut().get_mut().output),
            State::Open(ws) => std::mem::take(&mut ws.get_mut().output),
            _ => Vec::new(),
        };
        let out = if out.is_empty() { std::mem::take(&mut self.output) } else { out };
        (!out.is_empty()).then_some(out)
    }
}

// ------------------------------------------------------------------ the client's side

/// One client connection's WebSocket: the upgrade request (offering the "mqtt" subprotocol),
/// then MQTT bytes in masked binary frames. What the client writes before the server has
/// accepted the upgrade waits, and goes out once it has.
pub struct WsClientSession {
    upgrading: Option<Box<MidHandshake<ClientHandshake<Pipe>>>>,
    open: Option<Box<WebSocket<Pipe>>>,
    /// Written before the upgrade was accepted.
    waiting: Vec<Bytes>,
}

impl fmt::Debug for WsClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClientSession").field("open", &self.open.is_some()).finish()
    }
}

impl WsClientSession {
    /// A session that asks `host:port` for an upgrade at `path` (`tls`: the URL says wss).
    pub fn new(host: &str, port: u16, path: &str, tls: bool) -> io::Result<WsClientSession> {
        let scheme = if tls { "wss" } else { "ws" };
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let mut request = format!("{scheme}://{host}:{port}{path}")
            .into_client_request()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 4096;
        config.write_buffer_size = 0;
        let mid = ClientHandshake::start(Pipe::default(), request, Some(config))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut session =
            WsClientSession { upgrading: Some(Box::new(mid)), open: None, waiting: Vec::new() };
        // Writes the request.
        session.step(&[]).map_err(|e| io::Error::other(e.0))?;
        Ok(session)
    }

    /// Feeds the upgrade what came; opens the session once it is accepted.
    fn step(&mut self, input: &[u8]) -> Result<(), Refused> {
        let Some(mut mid) = self.upgrading.take() else {
            return Ok(());
        };
        mid.get_mut().get_mut().input.extend(input);
        match mid.handshake() {
            Ok((mut ws, _response)) => {
                for b in self.waiting.drain(..) {
                    let _ = ws.send(Message::Binary(b));
                }
                self.open = Some(Box::new(ws));
                Ok(())
            }
            Err(HandshakeError::Interrupted(mid)) => {
                self.upgrading = Some(Box::new(mid));
                Ok(())
            }
            Err(HandshakeError::Failure(e)) => Err(Refused(format!("WebSocket upgrade: {e}"))),
        }
    }
}

impl Transform for WsClientSession {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        if self.upgrading.is_some() {
            // The upgrade keeps what came after the server's answer for the frames.
            return self.step(input).map(|()| Received::default()).and_then(|r| {
                match &mut self.open {
                    Some(ws) => read_frames(ws, &[], plain),
                    None => Ok(r),
                }
            });
        }
        match &mut self.open {
            Some(ws) => read_frames(ws, input, plain),
            None => Ok(Received { closed: true }),
        }
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        let b = Bytes::copy_from_slice(plain);
        match &mut self.open {
            Some(ws) => {
                let _ = ws.send(Message::Binary(b));
            }
            None => self.waiting.push(b),
        }
    }

    fn close(&mut self) {
        if let Some(ws) = &mut self.open {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }

    fn is_ready(&self) -> bool {
        self.open.is_some()
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = match (&mut self.upgrading, &mut self.open) {
            (Some(mid), _) => std::mem::take(&mut mid.get_mut().get_mut().output),
            (None, Some(ws)) => std::mem::take(&mut ws.get_mut().output),
            (None, None) => Vec::new(),
        };
        (!out.is_empty()).then_some(out)
    }
}
