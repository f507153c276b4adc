//! TLS for the server's listeners, written once for every server: rustls is sans-IO, so a
//! [`TlsSession`] is a byte transform between the socket and the broker (ciphertext in,
//! plaintext out, and back) that the async servers and the std readiness loop use alike.
//!
//! The protocol stays the core's: TLS only decides who may talk (the handshake, client
//! certificates) and, with `use_identity_as_username`, tells the broker who the client is.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig as RustlsConfig, ServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, SupportedProtocolVersion};
use ternmq_core::codec::MqttStr;

use crate::transport::{Received, Refused, Transform};

/// The lowest TLS version a listener accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// What a TLS listener is configured with (Mosquitto's names).
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM.
    pub certfile: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// CAs whose client certificates are accepted, PEM. Without it no client certificate is
    /// asked for.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `cafile`.
    pub require_certificate: bool,
    /// The client certificate's common name becomes the client's user name.
    pub use_identity_as_username: bool,
    /// The lowest version accepted.
    pub min_version: TlsVersion,
}

/// A TLS listener's configuration, loaded; cheap to clone. [`reload`](Self::reload) re-reads
/// the files (on SIGHUP, say): new connections get the new certificate, live ones keep theirs.
#[derive(Clone)]
pub struct TlsAcceptor {
    settings: Arc<TlsSettings>,
    config: Arc<RwLock<Arc<RustlsConfig>>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads the certificate, key and CA files; an error names the file and what is wrong.
    pub fn new(settings: TlsSettings) -> io::Result<TlsAcceptor> {
        let config = load(&settings)?;
        Ok(TlsAcceptor { settings: Arc::new(settings), config: Arc::new(RwLock::new(config)) })
    }

    /// What it was configured with.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Re-reads the files. On an error the old configuration stays, and the error says why.
    pub fn reload(&self) -> io::Result<()> {
        let config = load(&self.settings)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// A session for a new connection.
    pub fn session(&self) -> io::Result<TlsSession> {
        let config = Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner));
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        // The driver's write window bounds what is handed over; rustls need not bound it too.
        conn.set_buffer_limit(None);
        Ok(TlsSession {
            conn,
            identity_as_username: self.settings.use_identity_as_username,
            identity_told: false,
        })
    }
}

fn invalid(path: &Path, what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {what}", path.display()))
}

fn certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, e))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in it"));
    }
    Ok(certs)
}

/// The crypto provider: ring, which builds with a C compiler alone (aws-lc-rs, rustls's other
/// provider, wants cmake too). ring has no post-quantum key exchange, hence rustls's notice.
#[expect(deprecated, reason = "ring's provider lacks post-quantum key exchange, nothing else")]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn load(s: &TlsSettings) -> io::Result<Arc<RustlsConfig>> {
    let provider = Arc::new(provider());
    let versions: &[&SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = RustlsConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(io::Error::other)?;
    let builder = match &s.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(cafile)? {
                roots.add(cert).map_err(|e| invalid(cafile, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if s.require_certificate { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(cafile, e))?)
        }
        None if s.require_certificate => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "require_certificate needs a cafile to check client certificates against",
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certs(&s.certfile)?;
    let key = PrivateKeyDer::from_pem_file(&s.keyfile).map_err(|e| invalid(&s.keyfile, e))?;
    let mut config = builder.with_single_cert(chain, key).map_err(|e| invalid(&s.certfile, e))?;
    // ALPN "mqtt" offered; a client that asks for none is served all the same.
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(Arc::new(config))
}

/// One connection's TLS: ciphertext from the socket in, plaintext for the broker out, and the
/// broker's plaintext back into ciphertext for the socket.
pub struct TlsSession {
    conn: ServerConnection,
    identity_as_username: bool,
    identity_told: bool,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl Transform for TlsSession {
    /// Ciphertext read from the socket: the plaintext it carried is appended to `plain`. A
    /// peer that breaks TLS gets the alert that says why, in [`poll_transmit`](Self::poll_transmit).
    fn handle_input(
        &mut self,
        mut cipher: &[u8],
        plain: &mut BytesMut,
    ) -> Result<Received, Refused> {
        let mut received = Received::default();
        while !cipher.is_empty() {
            match self.conn.read_tls(&mut cipher) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(Refused(format!("TLS: {e}"))),
            }
            let state =
                self.conn.process_new_packets().map_err(|e| Refused(format!("TLS: {e}")))?;
            let mut want = state.plaintext_bytes_to_read();
            while want > 0 {
                let at = plain.len();
                plain.resize(at + want, 0);
                match self.conn.reader().read(&mut plain[at..]) {
                    Ok(n) => {
                        plain.truncate(at + n);
                        want = want.saturating_sub(n);
                        if n == 0 {
                            break;
                        }
                    }
                    Err(_) => {
                        plain.truncate(at);
                        break;
                    }
                }
            }
            if state.peer_has_closed() {
                received.closed = true;
            }
        }
        Ok(received)
    }

    /// Plaintext to send (after the handshake; before it, it waits in the session).
    fn write_plaintext(&mut self, plain: &[u8]) {
        // Unbounded (see `set_buffer_limit`): the whole slice is taken.
        let _ = self.conn.writer().write_all(plain);
    }

    /// Ends the session cleanly (close_notify), before the socket is shut.
    fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// Ciphertext to write to the socket now, if any: handshake messages, records, alerts.
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if !self.conn.wants_write() {
            return None;
        }
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Once the handshake is done, and only once: the client certificate's common name, if the
    /// listener takes it as the user name and the client sent a certificate that has one.
    fn poll_identity(&mut self) -> Option<MqttStr> {
        if self.identity_told || self.conn.is_handshaking() || !self.identity_as_username {
            return None;
        }
        self.identity_told = true;
        let cert = self.conn.peer_certificates()?.first()?;
        common_name(cert.as_ref())
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<MqttStr> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    MqttStr::new(cn).ok()
}
