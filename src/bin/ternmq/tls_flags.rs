//! mosquitto_pub/_sub's TLS flags and the WebSocket path, for `ternmq pub`, `sub` and `bench`.

use std::path::PathBuf;

use ternmq::core::client::driver::{ConnectOptions, TlsOptions};

/// The usage lines of these flags.
pub(crate) const USAGE: &str = "\
tls and websocket:
      --cafile FILE        PEM CA certificates to trust (turns TLS on; default port 8883)
      --capath DIR         a directory of PEM CA certificates to trust (turns TLS on)
      --cert FILE          the client's PEM certificate, for brokers that ask for one
      --key FILE           the client certificate's PEM private key
      --insecure           do not check the broker's certificate and name: anyone in between
                           can read and change everything; for tests only
      --tls-version V      the lowest TLS version: tlsv1.2 (default) or tlsv1.3
      --tls-alpn PROTOCOL  offer ALPN PROTOCOL (for example mqtt); also --alpn
      --tls-use-os-certs   trust the system's CA certificates (the default without --cafile)
      --ws-path PATH       the WebSocket path for ws:// and wss:// URLs (default /mqtt)";

/// What the TLS flags and `--ws-path` said.
#[derive(Debug, Default)]
pub(crate) struct TlsFlags {
    tls: TlsOptions,
    /// A flag that only makes sense with TLS was given.
    any: bool,
    ws_path: Option<String>,
}

impl TlsFlags {
    /// Takes `flag` (with its value from `value`) if it is one of these.
    pub(crate) fn take(
        &mut self,
        flag: &str,
        value: &mut dyn FnMut() -> Result<String, String>,
    ) -> Result<bool, String> {
        match flag {
            "--cafile" => self.tls.ca_file = Some(PathBuf::from(value()?)),
            "--capath" => self.tls.ca_path = Some(PathBuf::from(value()?)),
            "--cert" => self.tls.cert_file = Some(PathBuf::from(value()?)),
            "--key" => self.tls.key_file = Some(PathBuf::from(value()?)),
            "--insecure" => self.tls.danger_accept_invalid_certs = true,
            "--tls-use-os-certs" => {}
            "--tls-version" => {
                let v = value()?;
                self.tls.min_version = Some(match v.as_str() {
                    "tlsv1.2" | "1.2" => "1.2".into(),
                    "tlsv1.3" | "1.3" => "1.3".into(),
                    _ => {
                        return Err(format!(
                            "{flag}: {v:?} is not a TLS version ternmq speaks; use tlsv1.2 or \
                             tlsv1.3"
                        ));
                    }
                });
            }
            "--tls-alpn" | "--alpn" => self.tls.alpn.push(value()?),
            "--ws-path" => {
                let p = value()?;
                if !p.starts_with('/') {
                    return Err(format!("{flag}: a path starts with /: {p:?}"));
                }
                self.ws_path = Some(p);
                return Ok(true);
            }
            _ => return Ok(false),
        }
        self.any = true;
        Ok(true)
    }

    /// Whether a flag asked for TLS.
    pub(crate) fn wants_tls(&self) -> bool {
        self.any
    }

    /// Puts TLS (when a flag or the URL's scheme asks for it: `url_tls`) and WebSocket (when
    /// the URL's scheme does: `websocket`) on `o`.
    pub(crate) fn apply(
        &self,
        o: &mut ConnectOptions,
        url_tls: bool,
        websocket: bool,
    ) -> Result<(), String> {
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("--cert and --key go together: give both".into());
        }
        if self.any || url_tls {
            o.tls = Some(self.tls.clone());
        }
        if websocket {
            o.ws_path = Some(self.ws_path.clone().unwrap_or_else(|| "/mqtt".into()));
        } else if self.ws_path.is_some() {
            return Err("--ws-path is for ws:// and wss:// URLs (-L)".into());
        }
        Ok(())
    }
}
