//! MQTT over TLS on every server (Tokio, smol, std), against Mosquitto's own clients: server
//! certificates, refused handshakes, and client certificates that name the user. The
//! certificates are made here, when the tests run.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::pki::Pki;
use support::serve;
use ternmq::blocking::ConnectOptions;
use ternmq::codec::MqttStr;
use ternmq::core::client::driver::TlsOptions;
use ternmq::tokio::{Listener, ServerConfig, TlsAcceptor, TlsSettings};

/// A server config with one mqtts listener on a free loopback port.
fn tls_config(settings: TlsSettings) -> ServerConfig {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    let tls = TlsAcceptor::new(settings).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.listeners = vec![Listener { tls: Some(tls), ws_path: None, ..Listener::from(addr) }];
    config
}

/// Whether Mosquitto's clients are here; without them the test is skipped, unless
/// `TERNMQ_REQUIRE_INTEROP` says they must be.
fn have_mosquitto_clients() -> bool {
    let here = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    support::peer_present(here, "mosquitto_pub")
}

/// `mosquitto_pub` or `mosquitto_sub` with `args`, against 127.0.0.1:`port`.
fn mosquitto(tool: &str, port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    c.stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Subscribes with `sub_args`, publishes with `pub_args`, and returns what the subscriber
/// printed (one message at most, within `wait` seconds).
fn pub_sub_within(
    wait: u32,
    port: u16,
    sub_args: &[&str],
    pub_args: &[&str],
    topic: &str,
) -> (String, Output) {
    let mut sub = mosquitto("mosquitto_sub", port, sub_args);
    let wait = wait.to_string();
    sub.args(["-t", topic, "-C", "1", "-W", &wait, "-q", "1"]).stdout(Stdio::piped());
    let sub = sub.spawn().unwrap();
    // Give the subscription time to be made.
    std::thread::sleep(Duration::from_millis(500));
    let mut publish = mosquitto("mosquitto_pub", port, pub_args);
    publish.args(["-t", topic, "-m", "over tls", "-q", "1"]);
    let published = run(publish);
    let out = sub.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), published)
}

/// [`pub_sub_within`] ten seconds: for a message that must arrive.
fn pub_sub(port: u16, sub_args: &[&str], pub_args: &[&str], topic: &str) -> (String, Output) {
    pub_sub_within(10, port, sub_args, pub_args, topic)
}

#[test]
fn mosquitto_clients_talk_mqtt_over_tls_to_every_server() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = Pki::new("tls-basic");
    let ca = pki.path("ca.pem");
    for runtime in ["tokio", "smol", "std", "std-io"] {
        let (addrs, _running) = serve(runtime, tls_config(pki.settings()));
        let port = addrs[0].port();
        let tls = ["--cafile", path(&ca)];
        let (got, published) = pub_sub(port, &tls, &tls, &format!("tls/{runtime}"));
        assert!(published.status.success(), "{runtime}: {published:?}");
        assert_eq!(got.trim(), "over tls", "{runtime}");
        // The server's certificate is checked: a client that trusts another CA fails.
        let (other, _) = pki.stranger("other");
        let refused = run(mosquitto(
            "mosquitto_pub",
            port,
            &["--cafile", path(&other), "-t", "x", "-m", "y"],
        ));
        assert!(!refused.status.success(), "{runtime}: a client trusted an unknown server");
    }
}

/// Reads until the peer closes (or 10 s pass): whether it closed.
fn closes(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn plaintext_to_a_tls_port_is_closed_and_the_others_go_on() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = Pki::new("tls-plain");
    let ca = pki.path("ca.pem");
    for runtime in ["tokio", "smol", "std", "std-io"] {
        let (addrs, _running) = serve(runtime, tls_config(pki.settings()));
        let addr: SocketAddr = addrs[0];
        // A 3.1.1 CONNECT in the clear.
        let mut plain = TcpStream::connect(addr).unwrap();
        plain.write_all(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a").unwrap();
        assert!(closes(&mut plain), "{runtime}: plaintext on the TLS port was not closed");
        // Garbage that looks like nothing at all.
        let mut junk = TcpStream::connect(addr).unwrap();
        junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]).unwrap();
        assert!(closes(&mut junk), "{runtime}: a broken handshake was not closed");
        let tls = ["--cafile", path(&ca)];
        let (got, _) = pub_sub(addr.port(), &tls, &tls, &format!("plain/{runtime}"));
        assert_eq!(got.trim(), "over tls", "{runtime}: the server stopped serving");
    }
}

#[test]
fn required_client_certificates_name_the_user_for_the_acl() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = Pki::new("tls-certs");
    let ca = pki.path("ca.pem");
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "user device-7\ntopic write devices/device-7/#\n\nuser watcher\ntopic read devices/#\n",
    )
    .unwrap();
    let (device_cert, device_key) = pki.client("device-7");
    let (watcher_cert, watcher_key) = pki.client("watcher");
    let (stranger_cert, stranger_key) = pki.stranger("device-7");
    let (expired_cert, expired_key) = pki.expired("device-7");
    for runtime in ["tokio", "smol", "std", "std-io"] {
        let settings = TlsSettings {
            cafile: Some(ca.clone()),
            require_certificate: true,
            use_identity_as_username: true,
            ..pki.settings()
        };
        let mut config = tls_config(settings);
        config.broker.authorizer = Some(Arc::new(ternmq::auth::AclFile::load(&acl).unwrap()));
        let (addrs, _running) = serve(runtime, config);
        let port = addrs[0].port();
        let with = |cert: &Path, key: &Path| {
            vec![
                "--cafile".to_string(),
                path(&ca).into(),
                "--cert".into(),
                path(cert).into(),
                "--key".into(),
                path(key).into(),
            ]
        };
        let device = with(&device_cert, &device_key);
        let device: Vec<&str> = device.iter().map(String::as_str).collect();
        let watcher = with(&watcher_cert, &watcher_key);
        let watcher: Vec<&str> = watcher.iter().map(String::as_str).collect();
        // Its own topic: delivered; the user name comes from the certificate, whatever -u says.
        let mut device_as_other = device.clone();
        device_as_other.extend(["-u", "mallory"]);
        let (got, published) = pub_sub(port, &watcher, &device_as_other, "devices/device-7/t");
        assert!(published.status.success(), "{runtime}: {published:?}");
        assert_eq!(got.trim(), "over tls", "{runtime}");
        // Another device's topic: the ACL refuses it for this certificate's name.
        let (got, _) = pub_sub_within(2, port, &watcher, &device, "devices/device-8/t");
        assert_eq!(got.trim(), "", "{runtime}: the ACL did not see the certificate's name");
        // No certificate, or one from another CA: the handshake fails.
        let none =
            run(mosquitto("mosquitto_pub", port, &["--cafile", path(&ca), "-t", "x", "-m", "y"]));
        assert!(!none.status.success(), "{runtime}: a client without a certificate got in");
        let mut stranger = vec!["--cafile", path(&ca), "-t", "x", "-m", "y"];
        stranger.extend(["--cert", path(&stranger_cert), "--key", path(&stranger_key)]);
        let refused = run(mosquitto("mosquitto_pub", port, &stranger));
        assert!(!refused.status.success(), "{runtime}: an untrusted certificate got in");
        let mut expired = vec!["--cafile", path(&ca), "-t", "x", "-m", "y"];
        expired.extend(["--cert", path(&expired_cert), "--key", path(&expired_key)]);
        let refused = run(mosquitto("mosquitto_pub", port, &expired));
        assert!(!refused.status.success(), "{runtime}: an expired certificate got in");
    }
}

/// `ternmq broker -c` with a config file of one mqtts listener: the startup line says TLS,
/// SIGHUP re-reads the certificate, and a broken new file keeps the old one serving.
#[test]
fn the_broker_program_serves_mqtts_and_reloads_its_certificate_on_sighup() {
    use std::io::BufRead;
    if !have_mosquitto_clients() {
        return;
    }
    let pki = Pki::new("tls-cli");
    let port = support::free_port();
    let conf = pki.path("broker.toml");
    std::fs::write(
        &conf,
        format!(
            "[[listener]]\nport = {port}\nkind = \"mqtts\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
            path(&pki.path("server.pem")),
            path(&pki.path("server.key"))
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "-c", path(&conf), "--no-persistence"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = Killed(&mut child);
    let child = &mut *_guard.0;
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the broker exited before listening");
        if line.starts_with("listening on") {
            break;
        }
    }
    assert_eq!(line.trim(), format!("listening on 127.0.0.1:{port} (mqtt over tls)"));
    let (tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?} ({e})"),
            }
        }
    };
    let ca = pki.path("ca.pem");
    let publish =
        || run(mosquitto("mosquitto_pub", port, &["--cafile", path(&ca), "-t", "t", "-m", "m"]));
    assert!(publish().status.success());
    support::signal(child, "HUP");
    wait_for("reloaded the certificate of the listener on 127.0.0.1");
    // A broken certificate file: the old certificate goes on serving.
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    support::signal(child, "HUP");
    let line = wait_for("keeping the old certificate");
    assert!(line.contains("server.pem"), "{line}");
    assert!(publish().status.success(), "the broker stopped serving TLS after a bad reload");
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped the broker");
}

/// Kills the child on drop.
struct Killed<'a>(&'a mut std::process::Child);

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ternmq's three clients over TLS to a real Mosquitto with a TLS listener: the CA file is
/// trusted; without it (the system's roots) the server is not.
#[test]
fn ternmq_clients_speak_tls_to_mosquitto() {
    let pki = Pki::new("tls-mosquitto");
    let conf = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true\n",
        path(&pki.path("ca.pem")),
        path(&pki.path("server.pem")),
        path(&pki.path("server.key")),
    );
    let Some(mosquitto) = support::Broker::start_with(&conf) else {
        return;
    };
    let tls = TlsOptions { ca_file: Some(pki.path("ca.pem")), ..TlsOptions::default() };
    for client in ["std", "tokio", "smol"] {
        let mut o = ConnectOptions::new("127.0.0.1", mosquitto.port);
        o.tls = Some(tls.clone());
        o.connect.client_id = MqttStr::new(&format!("tls-{client}")).unwrap();
        support::round_trip(client, o, &format!("tls/{client}"));
    }
    // The same from a URL, with a client that does not trust the test CA.
    let mut o = ConnectOptions::from_url(&format!("mqtts://127.0.0.1:{}", mosquitto.port)).unwrap();
    o.timeout = Duration::from_secs(5);
    o.config.reconnect.enable = false;
    assert!(ternmq::blocking::SyncClient::connect(o).is_err(), "an unknown CA was trusted");
    // And with the check turned off, on purpose.
    let mut o = ConnectOptions::from_url(&format!("mqtts://127.0.0.1:{}", mosquitto.port)).unwrap();
    o.tls = Some(TlsOptions { danger_accept_invalid_certs: true, ..TlsOptions::default() });
    support::round_trip("std", o, "tls/insecure");
}

/// ternmq's clients with a client certificate, to a ternmq listener that requires one and
/// takes its name as the user name.
#[test]
fn ternmq_clients_present_client_certificates() {
    let pki = Pki::new("tls-client-cert");
    let (cert, key) = pki.client("device-9");
    let settings = TlsSettings {
        cafile: Some(pki.path("ca.pem")),
        require_certificate: true,
        use_identity_as_username: true,
        ..pki.settings()
    };
    let (addrs, _running) = serve("tokio", tls_config(settings));
    for client in ["std", "tokio", "smol"] {
        let mut o = ConnectOptions::new("127.0.0.1", addrs[0].port());
        o.tls = Some(TlsOptions {
            ca_file: Some(pki.path("ca.pem")),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            alpn: vec!["mqtt".into()],
            ..TlsOptions::default()
        });
        o.connect.client_id = MqttStr::new(&format!("cert-{client}")).unwrap();
        support::round_trip(client, o, &format!("certs/{client}"));
    }
}

/// `ternmq pub` and `sub` with mosquitto_pub's TLS flags and `-L` URLs, and `ternmq bench`
/// over TLS and WebSocket over TLS, against ternmq's mqtts and wss listeners.
#[test]
fn the_cli_speaks_tls_and_websocket_with_mosquittos_flags() {
    let pki = Pki::new("tls-cli-clients");
    let ca = pki.path("ca.pem");
    let mut config = tls_config(pki.settings());
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let tls = TlsAcceptor::new(pki.settings()).unwrap();
    config.listeners.push(Listener {
        tls: Some(tls),
        ws_path: Some("/mqtt".into()),
        ..Listener::from(addr)
    });
    let (addrs, _running) = serve("tokio", config);
    let (mqtts, wss) = (addrs[0].port(), addrs[1].port());
    let ternmq = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ternmq")).args(args).output();
    for (sub_url, pub_args) in [
        (
            format!("mqtts://127.0.0.1:{mqtts}/cli/a"),
            vec!["-p".to_string(), mqtts.to_string(), "-t".into(), "cli/a".into()],
        ),
        (
            format!("wss://127.0.0.1:{wss}/cli/b"),
            vec!["-L".to_string(), format!("wss://127.0.0.1:{wss}/cli/b")],
        ),
    ] {
        let sub = Command::new(env!("CARGO_BIN_EXE_ternmq"))
            .args(["sub", "-L", &sub_url, "--cafile", path(&ca), "-C", "1", "-W", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut args = vec!["pub", "--cafile", path(&ca), "-q", "1", "-m", "via the cli"];
        args.extend(pub_args.iter().map(String::as_str));
        let published = ternmq(&args).unwrap();
        assert!(published.status.success(), "{sub_url}: {published:?}");
        let out = sub.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "via the cli",
            "{sub_url}: {out:?}"
        );
    }
    // --capath: a directory that holds the CA.
    let port = mqtts.to_string();
    let capath = ternmq(&["pub", "-p", &port, "--capath", path(&pki.dir.0), "-t", "x", "-m", "y"]);
    let capath = capath.unwrap();
    assert!(capath.status.success(), "--capath: {capath:?}");
    // A CA that did not sign the broker's certificate: a clear failure, at once.
    let other = pki.stranger("cli");
    let untrusted = ternmq(&["pub", "-p", &port, "--cafile", path(&other.0), "-t", "x", "-m", "y"]);
    let untrusted = untrusted.unwrap();
    assert!(!untrusted.status.success(), "a broker with an unknown CA was trusted");
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(err.contains("certificate"), "{err}");
    // The bench over TLS and over WebSocket over TLS.
    for url in [format!("mqtts://127.0.0.1:{mqtts}"), format!("wss://127.0.0.1:{wss}")] {
        let bench = ternmq(&[
            "bench",
            "-L",
            &url,
            "--cafile",
            path(&ca),
            "-s",
            "fan-in",
            "-n",
            "200",
            "-q",
            "1",
            "--publishers",
            "2",
        ])
        .unwrap();
        assert!(bench.status.success(), "{url}: {}", String::from_utf8_lossy(&bench.stderr));
        assert!(String::from_utf8_lossy(&bench.stdout).contains("fan-in"), "{url}");
    }
}

/// TLS to a plain MQTT port: the ClientHello is no CONNECT, so the broker closes the connection,
/// and it goes on serving plain clients.
#[test]
fn tls_to_a_plain_port_is_closed_and_the_others_go_on() {
    if !have_mosquitto_clients() {
        return;
    }
    let pki = Pki::new("tls-to-plain");
    let ca = pki.path("ca.pem");
    for runtime in ["tokio", "smol", "std", "std-io"] {
        let (addrs, _running) = serve(runtime, ServerConfig::new("127.0.0.1:0".parse().unwrap()));
        let port = addrs[0].port();
        let tls =
            run(mosquitto("mosquitto_pub", port, &["--cafile", path(&ca), "-t", "x", "-m", "y"]));
        assert!(!tls.status.success(), "{runtime}: TLS on a plain port was taken");
        let plain = run(mosquitto("mosquitto_pub", port, &["-t", "x", "-m", "y"]));
        assert!(plain.status.success(), "{runtime}: the server stopped serving: {plain:?}");
    }
}

/// A client over TLS, and one over WebSocket over TLS, whose broker restarts: each dials again
/// through its transport and resumes its session (Session Present 1, the subscription kept
/// by the broker's store).
#[test]
fn clients_reconnect_and_resume_over_tls_and_websocket() {
    use ternmq::blocking::{ConnectionEvent, SyncClient};
    let pki = Pki::new("tls-resume");
    let store = support::TempDir::new("tls-resume-store");
    for ws in [false, true] {
        let listen = |port: u16| {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut config = ServerConfig::new(addr);
            let tls = TlsAcceptor::new(pki.settings()).unwrap();
            let ws_path = ws.then(|| "/mqtt".to_string());
            config.listeners = vec![Listener { tls: Some(tls), ws_path, ..Listener::from(addr) }];
            config.store = Some(ternmq::store::StoreConfig {
                dir: store.0.join(if ws { "wss" } else { "mqtts" }),
                durability: ternmq::store::Durability::Sync,
            });
            config
        };
        let (addrs, running) = serve("tokio", listen(0));
        let port = addrs[0].port();
        let scheme = if ws { "wss" } else { "mqtts" };
        let mut o = ConnectOptions::from_url(&format!("{scheme}://127.0.0.1:{port}/mqtt")).unwrap();
        o.tls = Some(TlsOptions { ca_file: Some(pki.path("ca.pem")), ..TlsOptions::default() });
        o.connect.client_id = MqttStr::new(&format!("resume-{scheme}")).unwrap();
        o.connect.clean_start = false;
        o.connect.properties.session_expiry_interval = Some(3600);
        o.config.reconnect.initial_delay = Duration::from_millis(100);
        o.config.reconnect.jitter = false;
        let c = SyncClient::connect(o).unwrap();
        let topic = format!("resume/{scheme}");
        c.subscribe(&topic, ternmq::codec::QoS::AtLeastOnce).unwrap();
        while c.connection_event().is_some() {}
        // The broker goes away and comes back on the same port, with its store.
        drop(running);
        let (_, _running) = serve("tokio", listen(port));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match c.connection_event() {
                Some(ConnectionEvent::Connected { session_present }) => {
                    assert!(session_present, "{scheme}: the session was not resumed");
                    break;
                }
                _ if std::time::Instant::now() > deadline => panic!("{scheme}: no reconnection"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        c.publish(&topic, "again", ternmq::codec::QoS::AtLeastOnce).unwrap();
        let m = c.recv_timeout(Duration::from_secs(10)).expect("the message after the resume");
        assert_eq!(&m.payload[..], b"again", "{scheme}");
        c.disconnect().unwrap();
    }
}
