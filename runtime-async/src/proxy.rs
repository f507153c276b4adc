//! The PROXY protocol (HAProxy's, v1 text and v2 binary): a load balancer in front of the
//! broker puts a header before a connection's bytes that says where the client really is. A
//! [`ProxyHeader`] is a transform like TLS: it takes the header off, tells the real address,
//! and passes everything after it through. Parsing is the `ppp` crate's.

use std::net::SocketAddr;

use bytes::BytesMut;
use ppp::{HeaderResult, PartialResult, v1, v2};

use crate::transport::{Received, Refused, Transform};

/// The longest header accepted: a v2 header with its TLVs (v1 is at most 107 bytes).
const MAX_HEADER: usize = 4096;

/// A connection's PROXY protocol header, then its bytes.
#[derive(Debug, Default)]
pub struct ProxyHeader {
    /// The header so far (until it is complete).
    head: Vec<u8>,
    done: bool,
    /// The client's address, until it is told.
    addr: Option<SocketAddr>,
    /// What the broker writes: passed through.
    out: Vec<u8>,
}

impl ProxyHeader {
    /// Waits for the header of a new connection.
    pub fn new() -> ProxyHeader {
        ProxyHeader::default()
    }
}

/// The header's length and the client's address, if it is complete: `Ok(None)` while more
/// bytes may complete it.
fn parse(input: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, String> {
    match HeaderResult::parse(input) {
        HeaderResult::V2(Ok(h)) => {
            let addr = match h.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                _ => None,
            };
            // A LOCAL header (the balancer's own health check) keeps the socket's address.
            let addr = addr.filter(|_| h.command == v2::Command::Proxy);
            Ok(Some((h.len(), addr)))
        }
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), addr)))
        }
        r if r.is_incomplete() => Ok(None),
        HeaderResult::V1(Err(e)) => Err(format!("not a PROXY protocol header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("not a PROXY protocol header: {e}")),
    }
}

impl Transform for ProxyHeader {
    fn handle_input(&mut self, input: &[u8], plain: &mut BytesMut) -> Result<Received, Refused> {
        if self.done {
            plain.extend_from_slice(input);
            return Ok(Received::default());
        }
        self.head.extend_from_slice(input);
        match parse(&self.head) {
            Ok(Some((len, addr))) => {
                self.done = true;
                self.addr = addr;
                plain.extend_from_slice(self.head.get(len..).unwrap_or_default());
                self.head = Vec::new();
                Ok(Received::default())
            }
            Ok(None) if self.head.len() <= MAX_HEADER => Ok(Received::default()),
            Ok(None) => Err(Refused("PROXY protocol: the header is too long".into())),
            Err(e) => Err(Refused(format!("PROXY protocol: {e}"))),
        }
    }

    fn write_plaintext(&mut self, plain: &[u8]) {
        self.out.extend_from_slice(plain);
    }

    fn close(&mut self) {}

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    fn poll_peer_addr(&mut self) -> Option<SocketAddr> {
        self.addr.take()
    }
}
