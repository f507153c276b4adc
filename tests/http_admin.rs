//! The HTTP admin plane against a live `ternmq broker`: the JSON API (clients, kick, retained
//! messages, publish, stats), Prometheus metrics, health probes, bearer tokens, the refusal of
//! an open non-loopback bind, hot reload by SIGHUP and by the API, JSON logs, and schemathesis
//! checking every response against the OpenAPI document.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TempDir, Ternmq, free_port, http};
use ternmq::blocking::{ConnectOptions, ConnectionEvent, DisconnectReason, SyncClient};
use ternmq::codec::{MqttStr, ProtocolVersion, QoS, ReasonCode};

/// A broker (packets up to 4 KiB) with the admin API on a free port; returns it, the HTTP
/// port and the directory of its config file.
fn broker(args: &[&str]) -> (Ternmq, u16, TempDir) {
    let dir = TempDir::new("http-admin");
    let cfg = config(&dir.0, "max_packet_size = 4096\n");
    let http_port = free_port();
    let addr = format!("127.0.0.1:{http_port}");
    let mut all = vec!["--no-persistence", "-c", cfg.to_str().unwrap(), "--http", addr.as_str()];
    all.extend_from_slice(args);
    let mut b = Ternmq::start_on(free_port(), &all, Stdio::null());
    wait_for_http_line(&mut b);
    (b, http_port, dir)
}

/// Reads the broker's output up to the line that says the admin API is served.
fn wait_for_http_line(b: &mut Ternmq) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(b.stdout.read_line(&mut line).unwrap() > 0, "no HTTP admin API line");
        if line.starts_with("HTTP admin API") {
            return;
        }
    }
}

fn client(port: u16, id: &str, user: Option<(&str, &str)>) -> SyncClient {
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.protocol = ProtocolVersion::V5;
    o.connect.client_id = MqttStr::new(id).unwrap();
    if let Some((u, p)) = user {
        o.connect.username = Some(MqttStr::new(u).unwrap());
        o.connect.password = Some(bytes::Bytes::copy_from_slice(p.as_bytes()));
    }
    SyncClient::connect(o).unwrap()
}

/// Waits for `c` to lose its connection and returns the server's reason code.
fn lost_reason(c: &SyncClient) -> Option<ReasonCode> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match c.connection_event() {
            Some(ConnectionEvent::Lost(DisconnectReason::Server { reason_code, .. })) => {
                return Some(reason_code);
            }
            Some(ConnectionEvent::Lost(other)) => panic!("lost for another reason: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

fn stays_connected(c: &SyncClient) {
    std::thread::sleep(Duration::from_millis(300));
    while let Some(event) = c.connection_event() {
        assert!(!matches!(event, ConnectionEvent::Lost(_)), "lost: {event:?}");
    }
    assert!(c.is_connected());
}

/// The whole API on the server of `runtime`.
fn the_api_serves_and_steers(runtime: &str) {
    let args = match runtime {
        "std" => vec!["--runtime", "std", "--io-threads", "1"],
        "std-io" => vec!["--runtime", "std", "--io-threads", "2"],
        other => vec!["--runtime", other],
    };
    let (b, hp, _dir) = broker(&args);
    assert_eq!(http(hp, "GET", "/healthz", None, None).status, 200);
    // The HTTP line is printed once the listeners are bound; the server's loop marks it ready
    // once it runs (503 "not ready" until then is the documented answer while starting).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = http(hp, "GET", "/readyz", None, None);
    while ready.status == 503 && Instant::now() < deadline {
        assert_eq!(ready.json()["status"].as_str(), Some("not ready"), "{runtime}");
        std::thread::sleep(Duration::from_millis(20));
        ready = http(hp, "GET", "/readyz", None, None);
    }
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")), "{runtime}");

    let watcher = client(b.port, "watcher", None);
    watcher.subscribe("t/#", QoS::AtLeastOnce).unwrap();

    let list = http(hp, "GET", "/api/v1/clients?prefix=wat&limit=10", None, None);
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    let c = &list["clients"][0];
    assert_eq!(c["client_id"], "watcher");
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["connected"], true);
    assert_eq!(c["subscriptions"], 1);
    assert_eq!(c["listener"], format!("127.0.0.1:{}", b.port));
    assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(list["next_cursor"], Value::Null);
    let none = http(hp, "GET", "/api/v1/clients?prefix=zzz", None, None).json();
    assert_eq!(none["clients"].as_array().unwrap().len(), 0);
    assert_eq!(http(hp, "GET", "/api/v1/clients?limit=0", None, None).status, 400);

    let one = http(hp, "GET", "/api/v1/clients/watcher", None, None);
    assert_eq!(one.status, 200);
    let subs = &one.json()["subscription_list"];
    assert_eq!(subs[0]["filter"], "t/#");
    assert_eq!(subs[0]["qos"], 1);
    let missing = http(hp, "GET", "/api/v1/clients/nobody", None, None);
    assert_eq!((missing.status, missing.json()["error"].as_str()), (404, Some("not_found")));

    // Publishing as the broker reaches the subscriber, and is retained.
    let body = r#"{"topic":"t/1","payload":"hello","qos":1,"retain":true,
        "properties":{"content_type":"text/plain","user_properties":[{"key":"k","value":"v"}]}}"#;
    let published = http(hp, "POST", "/api/v1/publish", None, Some(body));
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(published.json()["matched"], 1);
    let got = watcher.recv_timeout(Duration::from_secs(10)).expect("the published message");
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(got.properties.content_type.as_ref().map(MqttStr::as_str), Some("text/plain"));
    let binary = r#"{"topic":"t/2","payload_base64":"AP8=","retain":true}"#;
    assert_eq!(http(hp, "POST", "/api/v1/publish", None, Some(binary)).status, 200);

    for (bad, status) in [
        (r#"{"topic":"t/+","payload":"x"}"#, 400),
        (r#"{"topic":"t","qos":3}"#, 400),
        (r#"{"topic":"","payload":"x"}"#, 400),
        (r#"{"topic":"t","payload":"x","payload_base64":"eA=="}"#, 400),
        (r#"{"topic":"$SYS/x","payload":"x"}"#, 400),
        (r#"{"topic":"t","payload_base64":"not base64!"}"#, 400),
        ("not json", 400),
    ] {
        let a = http(hp, "POST", "/api/v1/publish", None, Some(bad));
        assert_eq!(a.status, status, "{bad}: {}", a.body);
        let e = a.json();
        assert!(e["error"].is_string() && e["detail"].is_string(), "{}", a.body);
    }
    let huge = format!(r#"{{"topic":"t/big","payload":"{}"}}"#, "x".repeat(5000));
    let too_large = http(hp, "POST", "/api/v1/publish", None, Some(&huge));
    assert_eq!(too_large.status, 413, "{}", too_large.body);

    let retained = http(hp, "GET", "/api/v1/retained?filter=t/%23", None, None).json();
    let messages = retained["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{retained}");
    assert_eq!(messages[0]["topic"], "t/1");
    assert_eq!(
        (&messages[0]["payload"], &messages[0]["encoding"]),
        (&"hello".into(), &"utf-8".into())
    );
    assert_eq!(messages[0]["properties"]["content_type"], "text/plain");
    assert_eq!(
        (&messages[1]["payload"], &messages[1]["encoding"]),
        (&"AP8=".into(), &"base64".into())
    );
    assert_eq!(http(hp, "GET", "/api/v1/retained?filter=t/%2B/%23/x", None, None).status, 400);
    assert_eq!(http(hp, "DELETE", "/api/v1/retained/t%2F1", None, None).status, 200);
    assert_eq!(http(hp, "DELETE", "/api/v1/retained/t%2F1", None, None).status, 404);
    assert_eq!(http(hp, "DELETE", "/api/v1/retained/t%2F%2B", None, None).status, 400);
    let left = http(hp, "GET", "/api/v1/retained", None, None).json();
    assert_eq!(left["messages"].as_array().unwrap().len(), 1);

    let stats = http(hp, "GET", "/api/v1/stats", None, None);
    assert_eq!(stats.status, 200);
    let stats = stats.json();
    assert_eq!(stats["gauges"]["clients_connected"], 1);
    assert_eq!(stats["gauges"]["retained"], 1);
    assert_eq!(stats["protocols"]["5.0"]["connected"], 1);

    let metrics = http(hp, "GET", "/metrics", None, None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers.contains("content-type: application/openmetrics-text"));
    for line in [
        "ternmq_clients_connected{protocol=\"5.0\"} 1",
        "ternmq_messages_sent_total{qos=\"1\"} 1",
        "ternmq_retained_messages 1",
        &format!(
            "ternmq_connections{{listener=\"127.0.0.1:{}\",kind=\"mqtt over tcp\"}} 1",
            b.port
        ),
        "ternmq_auth_failures_total 0",
        "# EOF",
    ] {
        assert!(metrics.body.lines().any(|l| l == line), "no {line:?} in\n{}", metrics.body);
    }
    assert!(
        metrics.body.contains("ternmq_payload_sent_bytes_total{qos=\"1\"} 5"),
        "{}",
        metrics.body
    );

    let page = http(hp, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>ternmq</title>") && !page.body.contains("https://"));
    let doc = http(hp, "GET", "/api/v1/openapi.json", None, None).json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v1/publish"]["post"].is_object());
    let unknown = http(hp, "GET", "/api/v2/nothing", None, None);
    assert_eq!((unknown.status, unknown.json()["error"].as_str()), (404, Some("not_found")));
    assert_eq!(http(hp, "PUT", "/api/v1/stats", None, None).status, 405);

    // A kick: the MQTT 5 client reads Administrative action.
    let kicked = http(hp, "DELETE", "/api/v1/clients/watcher", None, None);
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert_eq!(lost_reason(&watcher), Some(ReasonCode::AdministrativeAction), "{runtime}");
    assert_eq!(http(hp, "DELETE", "/api/v1/clients/nobody", None, None).status, 404);
    drop(b);
}

#[test]
fn the_api_serves_and_steers_the_tokio_server() {
    the_api_serves_and_steers("tokio");
}

#[test]
fn the_api_serves_and_steers_the_std_and_smol_servers() {
    the_api_serves_and_steers("std");
    the_api_serves_and_steers("std-io");
    the_api_serves_and_steers("smol");
}

/// A config file `broker.toml` in `dir` with `text`.
fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("broker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_kick_with_session_discards_it() {
    let (b, hp, _dir) = broker(&[]);
    let mut o = ConnectOptions::new("127.0.0.1", b.port);
    o.connect.protocol = ProtocolVersion::V5;
    o.connect.client_id = MqttStr::new("keeper").unwrap();
    o.connect.clean_start = false;
    o.connect.properties.session_expiry_interval = Some(3600);
    let c = SyncClient::connect(o).unwrap();
    c.subscribe("k/#", QoS::AtLeastOnce).unwrap();
    c.disconnect().unwrap();
    // Disconnected, its session kept: listed, not connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let one = http(hp, "GET", "/api/v1/clients/keeper", None, None).json();
        if one["connected"] == false {
            assert_eq!(one["subscriptions"], 1);
            assert!(one["session_expires_in"].as_u64().unwrap() > 3500);
            break;
        }
        assert!(Instant::now() < deadline, "still connected: {one}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = http(hp, "DELETE", "/api/v1/clients/keeper?session=true", None, None);
    assert_eq!((gone.status, gone.json()["session_discarded"].as_bool()), (200, Some(true)));
    assert_eq!(http(hp, "GET", "/api/v1/clients/keeper", None, None).status, 404);
}

/// A broker whose admin API takes the tokens in `tokens` (a token file's text); returns it,
/// the HTTP port and its directory.
fn broker_with_tokens(tag: &str, tokens: &str) -> (Ternmq, u16, TempDir) {
    let dir = TempDir::new(tag);
    std::fs::write(dir.0.join("tokens"), tokens).unwrap();
    let hp = free_port();
    let cfg = config(
        &dir.0,
        &format!(
            "[http]\nbind = \"127.0.0.1:{hp}\"\ntoken_file = \"{}\"\n",
            dir.0.join("tokens").display()
        ),
    );
    let mut b = Ternmq::start_on(
        free_port(),
        &["--no-persistence", "-c", cfg.to_str().unwrap()],
        Stdio::null(),
    );
    wait_for_http_line(&mut b);
    (b, hp, dir)
}

#[test]
fn tokens_guard_everything_but_the_probes() {
    let (_b, hp, dir) =
        broker_with_tokens("http-tokens", "# operators\nfirst-token\n\nsecond-token\n");
    for path in ["/api/v1/stats", "/metrics", "/api/v1/clients", "/", "/api/v1/openapi.json"] {
        let a = http(hp, "GET", path, None, None);
        assert_eq!(a.status, 401, "{path}");
        assert!(a.headers.contains("www-authenticate: bearer"), "{path}: {}", a.headers);
        assert_eq!(a.json()["error"], "unauthorized");
        assert_eq!(http(hp, "GET", path, Some("wrong"), None).status, 401, "{path}");
        assert_eq!(http(hp, "GET", path, Some("first-token"), None).status, 200, "{path}");
        assert_eq!(http(hp, "GET", path, Some("second-token"), None).status, 200, "{path}");
    }
    let publish = http(hp, "POST", "/api/v1/publish", None, Some(r#"{"topic":"a"}"#));
    assert_eq!(publish.status, 401);
    assert_eq!(http(hp, "GET", "/healthz", None, None).status, 200);
    assert_eq!(http(hp, "GET", "/readyz", None, None).status, 200);
    // New tokens (as many as before) take a restart, and the reload says so; the old ones
    // stay in force until then.
    std::fs::write(dir.0.join("tokens"), "third-token\nfourth-token\n").unwrap();
    let reloaded = http(hp, "POST", "/api/v1/reload", Some("first-token"), None);
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let names: Vec<String> =
        serde_json::from_value(reloaded.json()["restart_needed"].clone()).unwrap();
    assert!(names.contains(&"http".to_string()), "{names:?}");
    assert_eq!(http(hp, "GET", "/api/v1/stats", Some("first-token"), None).status, 200);
}

#[test]
fn an_open_non_loopback_bind_is_refused_with_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "--no-persistence", "-p", &free_port().to_string(), "--http"])
        .arg(format!("0.0.0.0:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http") && err.contains("token_file"), "{err}");

    let dir = TempDir::new("http-open");
    let cfg = config(&dir.0, &format!("[http]\nbind = \"[::]:{}\"\n", free_port()));
    let out = Command::new(env!("CARGO_BIN_EXE_ternmq"))
        .args(["broker", "--no-persistence", "-p", &free_port().to_string(), "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.toml:2") && err.contains("bind") && err.contains("token_file"),
        "{err}"
    );
}

#[test]
fn reload_applies_the_password_file_and_keeps_the_old_one_when_broken() {
    let dir = TempDir::new("http-reload");
    let passwords = dir.0.join("passwords");
    ternmq::auth::create_password_file(&passwords, "alice", "alice-pw").unwrap();
    ternmq::auth::set_password(&passwords, "bob", "bob-pw").unwrap();
    let hp = free_port();
    let cfg = config(
        &dir.0,
        &format!(
            "password_file = \"{}\"\nmax_packet_size = 4096\n[http]\nbind = \"127.0.0.1:{hp}\"\n",
            passwords.display()
        ),
    );
    let mut b = Ternmq::start_on(
        free_port(),
        &["--no-persistence", "-c", cfg.to_str().unwrap()],
        Stdio::null(),
    );
    wait_for_http_line(&mut b);
    let alice = client(b.port, "alice-1", Some(("alice", "alice-pw")));
    let bob = client(b.port, "bob-1", Some(("bob", "bob-pw")));

    // Bob is removed from the file, and the live limit changes: SIGHUP applies both.
    ternmq::auth::delete_user(&passwords, "bob").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "password_file = \"{}\"\nmax_packet_size = 2048\n[http]\nbind = \"127.0.0.1:{hp}\"\n",
            passwords.display()
        ),
    )
    .unwrap();
    support::signal(&b.child, "HUP");
    assert_eq!(lost_reason(&bob), Some(ReasonCode::NotAuthorized));
    stays_connected(&alice);
    let big = format!(r#"{{"topic":"x","payload":"{}"}}"#, "y".repeat(3000));
    assert_eq!(http(hp, "POST", "/api/v1/publish", None, Some(&big)).status, 413);

    // A broken password file: the API says why, and the old file stays in force.
    std::fs::write(&passwords, "this is not a password file line\n").unwrap();
    let refused = http(hp, "POST", "/api/v1/reload", None, None);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.json()["detail"].as_str().unwrap().contains("password_file"),
        "{}",
        refused.body
    );
    stays_connected(&alice);
    let again = client(b.port, "alice-2", Some(("alice", "alice-pw")));
    assert!(again.is_connected());

    // Fixed again, with a change that needs a restart: named, not applied.
    ternmq::auth::create_password_file(&passwords, "alice", "alice-pw").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "password_file = \"{}\"\nmax_qos = 1\n[http]\nbind = \"127.0.0.1:{hp}\"\n",
            passwords.display()
        ),
    )
    .unwrap();
    let ok = http(hp, "POST", "/api/v1/reload", None, None);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let names: Vec<String> = serde_json::from_value(ok.json()["restart_needed"].clone()).unwrap();
    assert!(names.contains(&"max_qos".to_string()), "{names:?}");
    stays_connected(&alice);
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut b = Ternmq::start_on(
        free_port(),
        &["--no-persistence", "--log-format", "json", "--log-level", "info"],
        Stdio::piped(),
    );
    let c = client(b.port, "logged", None);
    c.disconnect().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    support::signal(&b.child, "TERM");
    let mut err = String::new();
    b.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let connected = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("logged connected"))
        .unwrap_or_else(|| panic!("no connect line in {err}"));
    assert_eq!(connected["client_id"], "logged");
    assert_eq!(connected["listener"], 0);
    assert!(connected["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{connected}");
    assert!(
        lines.iter().any(|l| l["client_id"] == "logged"
            && l["message"].as_str().unwrap().contains("disconnected")),
        "{err}"
    );
    for l in &lines {
        assert!(l["time"].is_string() && l["level"].is_string() && l["target"].is_string(), "{l}");
    }
}

/// The schemathesis program: `TERNMQ_SCHEMATHESIS`, on the PATH, or in the user's Python
/// scripts directory.
fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERNMQ_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home)
        .map(|d| d.join("schemathesis"))
        .find(|p| p.exists())
}

#[test]
fn schemathesis_finds_every_answer_in_the_document_and_no_server_error() {
    let Some(st) = schemathesis() else {
        assert!(
            std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_none(),
            "schemathesis is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipped: no schemathesis");
        return;
    };
    let (b, hp, dir) = broker_with_tokens("http-schemathesis", "schema-token\n");
    // Something to find: a connected client with a subscription, and a retained message.
    let c = client(b.port, "schema-client", None);
    c.subscribe("s/#", QoS::AtLeastOnce).unwrap();
    let retained = r#"{"topic":"s/1","payload":"x","retain":true}"#;
    assert_eq!(
        http(hp, "POST", "/api/v1/publish", Some("schema-token"), Some(retained)).status,
        200
    );
    let out = Command::new(st)
        .arg("run")
        .arg(format!("http://127.0.0.1:{hp}/api/v1/openapi.json"))
        .args(["-H", "Authorization: Bearer schema-token"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "40", "--seed", "1"])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    // The broker is still up.
    assert_eq!(http(hp, "GET", "/healthz", None, None).status, 200);
}

/// HTTPS on the admin port (the `[http]` certfile and keyfile), and the store's metrics when
/// persistence is on: commits, fsyncs and the commit latency histogram.
#[test]
fn https_and_store_metrics() {
    use std::sync::Arc;
    let pki = support::pki::Pki::new("http-tls");
    let hp = free_port();
    let data = pki.path("data");
    let cfg = config(
        &pki.dir.0,
        &format!(
            "persistence_path = \"{}\"\n[http]\nbind = \"127.0.0.1:{hp}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
            data.display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    );
    let mut b = Ternmq::start_on(free_port(), &["-c", cfg.to_str().unwrap()], Stdio::null());
    wait_for_http_line(&mut b);
    // A persistent session's subscription is written to the store.
    let mut o = ConnectOptions::new("127.0.0.1", b.port);
    o.connect.client_id = MqttStr::new("stored").unwrap();
    o.connect.clean_start = false;
    o.connect.properties.session_expiry_interval = Some(600);
    let c = SyncClient::connect(o).unwrap();
    c.subscribe("st/#", QoS::AtLeastOnce).unwrap();

    // Plain HTTP to the HTTPS port gets nowhere; TLS with the test CA gets the metrics.
    let plain = std::panic::catch_unwind(|| http(hp, "GET", "/healthz", None, None).status);
    assert!(plain.map_or(true, |s| s == 0), "plain HTTP answered on the HTTPS port");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls_pemfile_certs(&ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(ring_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = tokio_rustls::rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", hp)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = tokio_rustls::rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{hp}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for name in [
        "ternmq_store_commits_total ",
        "ternmq_store_fsyncs_total ",
        "ternmq_store_commit_duration_seconds_bucket{le=\"+Inf\"} ",
        "ternmq_store_commit_duration_seconds_count ",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// ring, the provider the broker uses too (it lacks post-quantum key exchange, hence the
/// deprecation notice, which is all that is wrong with it).
#[expect(deprecated, reason = "ring's provider lacks post-quantum key exchange, nothing else")]
fn ring_provider() -> tokio_rustls::rustls::crypto::CryptoProvider {
    tokio_rustls::rustls::crypto::ring::default_provider()
}
