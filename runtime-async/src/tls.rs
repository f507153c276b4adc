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
use ternmq_core::client::driver::TlsOptions;
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

    /// The rustls configuration a new connection gets now, offering the ALPN protocols
    /// `alpn` instead of `mqtt`: for another protocol on the same certificate (HTTPS).
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Arc<RustlsConfig> {
        let current = Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner));
        let mut config = RustlsConfig::clone(&current);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A session for a new connection.
    pub fn session(&self) -> io::Result<TlsSession> {
        let config = Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner));
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        // The driver's write window bounds what is handed over; rustls need not bound it too.
        conn.set_buffer_limit(None);
        Ok(TlsLink {
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

/// One connection's TLS, on either side (`C` is rustls's `ServerConnection` or
/// `ClientConnection`): ciphertext from the socket in, plaintext out, and plaintext back into
/// ciphertext for the socket.
pub struct TlsLink<C> {
    conn: C,
    /// A server's: the client certificate's common name is the user name.
    identity_as_username: bool,
    identity_told: bool,
}

/// A listener's side of one connection.
pub type TlsSession = TlsLink<ServerConnection>;

/// A client's side of one connection.
pub type TlsClientSession = TlsLink<rustls::ClientConnection>;

impl<C, D> fmt::Debug for TlsLink<C>
where
    C: std::ops::Deref<Target = rustls::ConnectionCommon<D>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLink")
            .field("handshaking", &self.conn.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl<C, D> Transform for TlsLink<C>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>> + Send + 'static,
{
    /// Ciphertext read from the socket: the plaintext it carried is appended to `plain`. A
    /// peer that breaks TLS gets the alert that says why, in [`poll_transmit`](Self::poll_transmit).
    fn handle_input(
        &mut self,
        mut cipher: &[u8],
        plain: &mut BytesMut,
    ) -> Result<Received, Refused> {
        let conn = &mut *self.conn;
        let mut received = Received::default();
        while !cipher.is_empty() {
            match conn.read_tls(&mut cipher) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(Refused(format!("TLS: {e}"))),
            }
            let state = conn.process_new_packets().map_err(|e| Refused(format!("TLS: {e}")))?;
            let mut want = state.plaintext_bytes_to_read();
            while want > 0 {
                let at = plain.len();
                plain.resize(at + want, 0);
                let n = conn.reader().read(&mut plain[at..]).unwrap_or(0);
                plain.truncate(at + n);
                if n == 0 {
                    break;
                }
                want -= n.min(want);
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

    fn is_ready(&self) -> bool {
        !self.conn.is_handshaking()
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<MqttStr> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    MqttStr::new(cn).ok()
}

// ------------------------------------------------------------------ the client's side

/// A client's TLS configuration, made from [`TlsOptions`]; cheap to clone, one per client,
/// a new [`TlsClientSession`] from it for every connection.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").field("server_name", &self.server_name).finish()
    }
}

impl TlsConnector {
    /// The configuration for `options`, to reach `host`; an error names the file or option
    /// that is wrong.
    pub fn new(options: &TlsOptions, host: &str) -> io::Result<TlsConnector> {
        let provider = Arc::new(provider());
        let versions: &[&SupportedProtocolVersion] = match options.min_version.as_deref() {
            None | Some("1.2") => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Some("1.3") => &[&rustls::version::TLS13],
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown TLS version {other:?}; use \"1.2\" or \"1.3\""),
                ));
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?;
        let builder = if options.danger_accept_invalid_certs {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        } else {
            builder.with_root_certificates(roots(options)?)
        };
        let mut config = match (&options.cert_file, &options.key_file) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, e))?;
                builder.with_client_auth_cert(certs(cert)?, key).map_err(|e| invalid(cert, e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a client certificate needs both its certificate and its key file",
                ));
            }
        };
        config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = options.server_name.as_deref().unwrap_or(host);
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is no server name"))
            })?;
        Ok(TlsConnector { config: Arc::new(config), server_name })
    }

    /// A session for a new connection.
    pub fn session(&self) -> io::Result<TlsClientSession> {
        let mut conn =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
                .map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        Ok(TlsLink { conn, identity_as_username: false, identity_told: false })
    }
}

/// The CAs a client trusts: its files, or the system's.
fn roots(options: &TlsOptions) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some(file) = &options.ca_file {
        for cert in certs(file)? {
            roots.add(cert).map_err(|e| invalid(file, e))?;
        }
    }
    if let Some(dir) = &options.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| invalid(dir, e))?;
        for entry in entries.flatten() {
            // Files that hold no certificate (hash links' targets aside) are passed over.
            if let Ok(certs) = certs(&entry.path()) {
                for cert in certs {
                    let _ = roots.add(cert);
                }
            }
        }
    }
    if options.ca_file.is_none() && options.ca_path.is_none() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no CA certificate to trust: give a CA file or directory (the system has none)",
        ));
    }
    Ok(roots)
}

/// Accepts every server certificate: `danger_accept_invalid_certs`. Signatures are still
/// checked, so the handshake itself is sound; who the server is, is not.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
