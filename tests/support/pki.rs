//! Test certificates, made when the tests run: a CA, a server certificate for 127.0.0.1 signed
//! by it, and client certificates.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::TempDir;

/// A CA, a server certificate for 127.0.0.1 signed by it (`server.pem`, `server.key`), and
/// its own certificate (`ca.pem`), as PEM files in a directory of their own.
pub(crate) struct Pki {
    pub(crate) dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let (ca, ca_key) = authority("ternmq test CA");
        std::fs::write(dir.0.join("ca.pem"), ca.pem()).unwrap();
        let pki = Pki { dir, ca, ca_key };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &pki.ca, &pki.ca_key).unwrap();
        std::fs::write(pki.path("server.pem"), cert.pem()).unwrap();
        std::fs::write(pki.path("server.key"), key.serialize_pem()).unwrap();
        pki
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    /// A client certificate with common name `cn`, signed by this CA; returns (cert, key).
    pub(crate) fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        sign_client(&self.dir.0, cn, &self.ca, &self.ca_key)
    }

    /// A client certificate with common name `cn`, signed by this CA, that expired in 2021.
    pub(crate) fn expired(&self, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) =
            (self.path(&format!("{cn}-expired.pem")), self.path(&format!("{cn}-expired.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A client certificate with common name `cn`, signed by a CA the server does not know.
    pub(crate) fn stranger(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (ca, key) = authority("someone else's CA");
        sign_client(&self.dir.0, &format!("{cn}-stranger"), &ca, &key)
    }

    /// The server's TLS settings.
    pub(crate) fn settings(&self) -> ternmq::tokio::TlsSettings {
        ternmq::tokio::TlsSettings {
            certfile: self.path("server.pem"),
            keyfile: self.path("server.key"),
            ..ternmq::tokio::TlsSettings::default()
        }
    }
}

fn authority(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn sign_client(
    dir: &Path,
    cn: &str,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, ca, ca_key).unwrap();
    let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}
