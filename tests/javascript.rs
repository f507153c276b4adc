//! JavaScript peers over WebSocket: MQTT.js in Node.js over ws and wss (QoS 0, 1, 2 and
//! retained), and a page in headless Chromium (driven by playwright-core) that loads MQTT.js,
//! connects to ternmq over WebSocket and shows a message that `mosquitto_pub` sent over TCP.
//! `scripts/test.sh` installs Node.js's packages (`tests/js`) and Chromium.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::pki::Pki;
use support::serve;
use ternmq::tokio::{Listener, ServerConfig, TlsAcceptor};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn have_node_packages() -> bool {
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let packages = js_dir().join("node_modules/mqtt").exists()
        && js_dir().join("node_modules/playwright-core").exists();
    support::peer_present(
        node && packages,
        "Node.js with tests/js's packages (mqtt, playwright-core)",
    )
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    support::peer_present(path.exists(), "Chromium").then_some(path)
}

/// A plain MQTT listener and a WebSocket one (over TLS with `pki`), on free loopback ports.
fn config(pki: Option<&Pki>) -> ServerConfig {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig::new(addr);
    let tls = pki.map(|p| TlsAcceptor::new(p.settings()).unwrap());
    config.listeners.push(Listener { tls, ws_path: Some("/mqtt".into()), ..Listener::from(addr) });
    config
}

fn mqttjs(url: &str, ca: Option<&str>) -> String {
    let mut c = Command::new("node");
    c.current_dir(js_dir()).args(["mqttjs.mjs", url]);
    c.args(ca);
    let out = c.output().unwrap();
    assert!(out.status.success(), "MQTT.js failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const EXPECTED: &str = "js/kept 1 retained 0\njs/q0 0 hello 0 0\njs/q1 1 hello 1 0\n\
                        js/q2 2 hello 2 0\nsecond: retained 1\n";

#[test]
fn mqttjs_over_websocket_and_websocket_over_tls() {
    if !have_node_packages() {
        return;
    }
    let (addrs, _running) = serve("tokio", config(None));
    assert_eq!(mqttjs(&format!("ws://127.0.0.1:{}/mqtt", addrs[1].port()), None), EXPECTED);
    let pki = Pki::new("mqttjs");
    let ca = pki.path("ca.pem");
    for runtime in ["tokio", "std"] {
        let (addrs, _running) = serve(runtime, config(Some(&pki)));
        let url = format!("wss://127.0.0.1:{}/mqtt", addrs[1].port());
        assert_eq!(mqttjs(&url, Some(ca.to_str().unwrap())), EXPECTED, "{runtime}");
    }
}

#[test]
fn a_page_in_chromium_shows_what_mosquitto_pub_sent() {
    if !have_node_packages() {
        return;
    }
    let Some(chromium) = chromium() else {
        return;
    };
    let (addrs, _running) = serve("tokio", config(None));
    let (tcp, ws) = (addrs[0].port(), addrs[1].port());
    let mut node = Command::new("node")
        .current_dir(js_dir())
        .args(["browser.mjs", &format!("ws://127.0.0.1:{ws}/mqtt"), "browser/news"])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let first = lines.next().map(Result::unwrap);
    if first.as_deref() != Some("subscribed") {
        let out = node.wait_with_output().unwrap();
        panic!("the page did not subscribe: {first:?} {}", String::from_utf8_lossy(&out.stderr));
    }
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tcp.to_string(), "-t", "browser/news", "-q", "1"])
        .args(["-m", "hello from mosquitto_pub"])
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let shown = lines.next().map(Result::unwrap);
    let status = node.wait().unwrap();
    assert!(status.success(), "node: {status}");
    assert_eq!(shown.as_deref(), Some("hello from mosquitto_pub"));
}

/// The dashboard in Chromium lists a client `mosquitto_sub` connected, shows its subscriptions,
/// kicks it (and `mosquitto_sub` exits), and publishes a message a second `mosquitto_sub`
/// receives; it loads nothing from elsewhere. `TERNMQ_SCREENSHOT=FILE` keeps a picture.
#[test]
fn the_dashboard_in_chromium_lists_kicks_and_publishes() {
    if !have_node_packages() {
        return;
    }
    let Some(chromium) = chromium() else {
        return;
    };
    let http = support::free_port();
    let addr = format!("127.0.0.1:{http}");
    let b = support::Ternmq::start(&["--http", &addr]);
    let port = b.port.to_string();
    let mut victim = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-i", "dash-victim", "-t", "dash/#"])
        .args(["-q", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let receiver = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-i", "dash-receiver"])
        .args(["-t", "news/today", "-C", "1", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = Command::new("node");
    node.current_dir(js_dir())
        .args(["dashboard.mjs", &format!("http://{addr}/"), "dash-victim", "news/today"])
        .arg("hello from the dashboard")
        .env("CHROMIUM", &chromium);
    if let Some(shot) = std::env::var_os("TERNMQ_SCREENSHOT") {
        node.arg(shot);
    }
    let out = node.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["listed", "subscriptions dash/#", "kicked", "delivered to 1"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exited = support::wait_exit(&mut victim, std::time::Duration::from_secs(10));
    assert!(exited.is_some(), "mosquitto_sub still runs after the kick");
    let got = receiver.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello from the dashboard");
}
