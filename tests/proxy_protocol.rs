//! The PROXY protocol on a listener (`proxy_protocol = true`), on every server: the address a
//! v1 or v2 header names is the one the broker's hooks see; a connection without a header is
//! refused; and it works under TLS too.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::pki::Pki;
use support::{connect_packet, serve};
use ternmq::broker::{AuthDecision, AuthRequest, Authenticator};
use ternmq::tokio::{Listener, ServerConfig, TlsAcceptor};

/// Lets everyone in, and keeps the address each client came from.
#[derive(Default)]
struct Addresses(Mutex<Vec<Option<SocketAddr>>>);

impl Authenticator for Addresses {
    fn authenticate(&self, request: &AuthRequest) -> AuthDecision {
        self.0.lock().unwrap().push(request.peer.addr);
        AuthDecision::Allow
    }
}

fn config(seen: &Arc<Addresses>, tls: Option<TlsAcceptor>) -> ServerConfig {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig::new(addr);
    config.listeners = vec![Listener { tls, proxy_protocol: true, ..Listener::from(addr) }];
    config.broker.authenticator = Some(Arc::clone(seen) as Arc<dyn Authenticator>);
    config
}

/// Writes `parts` (with a pause between them) and returns what comes back until the peer closes
/// or 4 bytes (a CONNACK) came.
fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for p in parts {
        s.write_all(p).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 4 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// A v2 header (PROXY, TCP over IPv6) from `src` to `dst`.
fn v2_header(src: ([u16; 8], u16), dst: ([u16; 8], u16)) -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x21, 0, 36]);
    for part in src.0.iter().chain(dst.0.iter()) {
        h.extend(part.to_be_bytes());
    }
    h.extend(src.1.to_be_bytes());
    h.extend(dst.1.to_be_bytes());
    h
}

#[test]
fn the_proxy_header_names_the_client_on_every_server() {
    for runtime in ["tokio", "smol", "std", "std-io"] {
        let seen = Arc::new(Addresses::default());
        let (addrs, _running) = serve(runtime, config(&seen, None));
        let addr = addrs[0];
        // v1, in the same write as the CONNECT.
        let mut first = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 1883\r\n".to_vec();
        first.extend(connect_packet("v1"));
        assert_eq!(exchange(addr, &[&first]), b"\x20\x02\x00\x00", "{runtime}: v1");
        // v2 over IPv6, split, the CONNECT after it.
        let v2 = v2_header(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 5353), ([0; 8], 1883));
        let connect = connect_packet("v2");
        let got = exchange(addr, &[&v2[..10], &v2[10..], &connect]);
        assert_eq!(got, b"\x20\x02\x00\x00", "{runtime}: v2");
        // No header: refused, without a CONNACK.
        assert_eq!(exchange(addr, &[&connect_packet("none")]), b"", "{runtime}: no header");
        let seen = seen.0.lock().unwrap().clone();
        let expected: Vec<Option<SocketAddr>> = vec![
            Some("203.0.113.7:4242".parse().unwrap()),
            Some("[2001:db8::7]:5353".parse().unwrap()),
        ];
        assert_eq!(seen, expected, "{runtime}");
    }
}

#[test]
fn the_proxy_header_comes_before_tls() {
    let pki = Pki::new("proxy-tls");
    let seen = Arc::new(Addresses::default());
    let tls = TlsAcceptor::new(pki.settings()).unwrap();
    let (addrs, _running) = serve("tokio", config(&seen, Some(tls)));
    let port = addrs[0].port();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dial: ternmq::tokio::Dialer = Arc::new(move || {
            Box::pin(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                s.write_all(b"PROXY TCP4 198.51.100.9 192.0.2.1 6000 8883\r\n").await?;
                Ok(Box::new(s) as Box<dyn ternmq::tokio::Transport>)
            })
        });
        let mut o = ternmq::tokio::ConnectOptions::new("127.0.0.1", port);
        o.tls = Some(ternmq::tokio::TlsOptions {
            ca_file: Some(pki.path("ca.pem")),
            ..Default::default()
        });
        let c = ternmq::tokio::Client::connect_via(o, dial).await.unwrap();
        c.disconnect().await.unwrap();
    });
    assert_eq!(*seen.0.lock().unwrap(), vec![Some("198.51.100.9:6000".parse().unwrap())]);
}
