//! MQTT over WebSocket, plain ("ws") and over TLS ("wss"), on every server (Tokio, smol, std),
//! against real clients: the Python paho-mqtt client with `transport="websockets"`, and frames
//! sent by hand (a packet split across frames, two packets in one frame, pings, text and
//! oversized frames, requests that are no upgrade).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::pki::Pki;
use support::{connect_packet, serve};
use ternmq::tokio::{Listener, ServerConfig, TlsAcceptor};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

const RUNTIMES: [&str; 4] = ["tokio", "smol", "std", "std-io"];

/// A server config with one WebSocket listener at /mqtt, over TLS when `pki` is given.
fn ws_config(pki: Option<&Pki>) -> ServerConfig {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig::new(addr);
    let tls = pki.map(|p| TlsAcceptor::new(p.settings()).unwrap());
    config.listeners =
        vec![Listener { tls, ws_path: Some("/mqtt".into()), ..Listener::from(addr) }];
    config
}

fn have_paho() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    support::peer_present(found, "python3 with paho-mqtt")
}

/// paho-mqtt over WebSocket: subscribes, publishes QoS 0, 1 and 2 and a retained message,
/// receives them, and prints what it got.
const PAHO: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
port, path, ca, version = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
root = "ws" + version
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
got, done = [], threading.Event()
def on_message(c, u, m):
    got.append("%s %d %s %d" % (m.topic, m.qos, m.payload.decode(), m.retain))
    if len(got) == 4:
        done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws-" + version,
                transport="websockets", protocol=proto)
c.ws_set_options(path=path)
if ca != "-":
    c.tls_set(ca_certs=ca)
c.on_message = on_message
c.connect("127.0.0.1", port, 30)
c.loop_start()
c.subscribe(root + "/#", qos=2)
time.sleep(0.5)
for q in (0, 1, 2):
    c.publish(root + "/q%d" % q, "hello %d" % q, qos=q).wait_for_publish(10)
c.publish(root + "/kept", "retained", qos=1, retain=True).wait_for_publish(10)
done.wait(10)
c.unsubscribe(root + "/#")
# A second session sees the retained message.
got2, seen = [], threading.Event()
d = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws2-" + version,
                transport="websockets", protocol=proto)
d.ws_set_options(path=path)
if ca != "-":
    d.tls_set(ca_certs=ca)
d.on_message = lambda c, u, m: (got2.append("%s %d" % (m.payload.decode(), m.retain)), seen.set())
d.connect("127.0.0.1", port, 30)
d.loop_start()
d.subscribe(root + "/kept", qos=1)
seen.wait(10)
d.disconnect(); d.loop_stop()
c.disconnect(); c.loop_stop()
print("\n".join(sorted(got)))
print("second: " + ",".join(got2))
"#;

fn paho(port: u16, ca: &str, version: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", PAHO, &port.to_string(), "/mqtt", ca, version])
        .output()
        .unwrap();
    assert!(out.status.success(), "paho failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// What the paho script prints for MQTT `version`.
fn paho_expected(version: &str) -> String {
    let r = format!("ws{version}");
    format!(
        "{r}/kept 1 retained 0\n{r}/q0 0 hello 0 0\n{r}/q1 1 hello 1 0\n{r}/q2 2 hello 2 0\n\
         second: retained 1\n"
    )
}

#[test]
fn paho_over_websocket_on_every_server() {
    if !have_paho() {
        return;
    }
    for runtime in RUNTIMES {
        let (addrs, _running) = serve(runtime, ws_config(None));
        for version in ["3", "5"] {
            let got = paho(addrs[0].port(), "-", version);
            assert_eq!(got, paho_expected(version), "{runtime}, MQTT {version}");
        }
    }
}

#[test]
fn paho_over_websocket_over_tls_on_every_server() {
    if !have_paho() {
        return;
    }
    let pki = Pki::new("wss-paho");
    let ca = pki.path("ca.pem");
    for runtime in RUNTIMES {
        let (addrs, _running) = serve(runtime, ws_config(Some(&pki)));
        let got = paho(addrs[0].port(), ca.to_str().unwrap(), "5");
        assert_eq!(got, paho_expected("5"), "{runtime}");
    }
}

/// A WebSocket client on `addr` asking for `protocol` at `path`.
fn ws_client(addr: SocketAddr, path: &str, protocol: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = tungstenite::http::Request::builder()
        .uri(format!("ws://{addr}{path}"))
        .header("Host", addr.to_string())
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", tungstenite::handshake::client::generate_key())
        .header("Sec-WebSocket-Protocol", protocol)
        .body(())
        .unwrap();
    let (ws, response) = tungstenite::client(request, stream).unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap()),
        Some(protocol.split(',').next().unwrap().trim()),
    );
    ws
}

/// Reads binary frames until `n` bytes came; returns them.
fn read_bytes(ws: &mut WebSocket<TcpStream>, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match ws.read().unwrap() {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// [MQTT-6.0.0-2]: packets split across frames and several in one frame; [MQTT-6.0.0-4]: the
/// server selects "mqtt" when it is offered (checked by `ws_client`).
#[test]
fn packets_split_across_frames_and_packed_in_one_frame() {
    for runtime in RUNTIMES {
        let (addrs, _running) = serve(runtime, ws_config(None));
        let mut ws = ws_client(addrs[0], "/mqtt", "mqtt");
        // CONNECT in three frames.
        let connect = connect_packet("frames");
        for part in [&connect[..3], &connect[3..9], &connect[9..]] {
            ws.send(Message::Binary(part.to_vec().into())).unwrap();
        }
        assert_eq!(read_bytes(&mut ws, 4), b"\x20\x02\x00\x00", "{runtime}: CONNACK");
        // SUBSCRIBE t (QoS 0) and PINGREQ in one frame.
        let mut both = b"\x82\x06\x00\x01\x00\x01t\x00".to_vec();
        both.extend_from_slice(b"\xc0\x00");
        ws.send(Message::Binary(both.into())).unwrap();
        assert_eq!(read_bytes(&mut ws, 7), b"\x90\x03\x00\x01\x00\xd0\x00", "{runtime}");
        // A WebSocket ping is answered with a pong.
        ws.send(Message::Ping(b"are you there".to_vec().into())).unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("{runtime}: {other:?} before the pong"),
        }
        // The "/" path and the older subprotocol name are accepted too.
        let mut old = ws_client(addrs[0], "/", "mqttv3.1");
        old.send(Message::Binary(connect_packet("old").into())).unwrap();
        assert_eq!(read_bytes(&mut old, 4), b"\x20\x02\x00\x00", "{runtime}: mqttv3.1");
        // A clean close is answered with a close frame.
        ws.close(None).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
                Ok(_) => {}
                Err(e) => panic!("{runtime}: {e}"),
            }
        }
    }
}

/// Reads frames until a close frame: its code.
fn close_code(ws: &mut WebSocket<TcpStream>) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// [MQTT-6.0.0-1]: a data frame that is not binary closes the connection.
#[test]
fn text_and_oversized_frames_are_closed_with_their_codes() {
    for runtime in RUNTIMES {
        let mut config = ws_config(None);
        config.broker.max_packet_size = 1024;
        let (addrs, _running) = serve(runtime, config);
        let mut ws = ws_client(addrs[0], "/mqtt", "mqtt");
        ws.send(Message::Text("CONNECT".into())).unwrap();
        assert_eq!(close_code(&mut ws), Some(CloseCode::Unsupported), "{runtime}: text frame");
        let mut ws = ws_client(addrs[0], "/mqtt", "mqtt");
        ws.send(Message::Binary(vec![0u8; 4096].into())).unwrap();
        assert_eq!(close_code(&mut ws), Some(CloseCode::Size), "{runtime}: oversized frame");
    }
}

/// Sends `request` on a new connection and returns the HTTP status line of the answer.
fn http_status(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn requests_that_are_no_mqtt_upgrade_get_an_http_error() {
    for runtime in RUNTIMES {
        let (addrs, _running) = serve(runtime, ws_config(None));
        let addr = addrs[0];
        let plain_get = "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n";
        let status = http_status(addr, plain_get);
        assert!(status.starts_with("HTTP/1.1 426"), "{runtime}: {status}");
        let upgrade = |protocol: &str, path: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 {protocol}\r\n"
            )
        };
        let status = http_status(addr, &upgrade("Sec-WebSocket-Protocol: chat\r\n", "/mqtt"));
        assert!(status.starts_with("HTTP/1.1 400"), "{runtime}: wrong subprotocol: {status}");
        let status = http_status(addr, &upgrade("", "/mqtt"));
        assert!(status.starts_with("HTTP/1.1 400"), "{runtime}: no subprotocol: {status}");
        let status = http_status(addr, &upgrade("Sec-WebSocket-Protocol: mqtt\r\n", "/other"));
        assert!(status.starts_with("HTTP/1.1 404"), "{runtime}: wrong path: {status}");
        // Raw MQTT on the WebSocket port is not HTTP either: closed.
        let status = http_status(addr, "\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a");
        assert!(!status.starts_with("HTTP/1.1 101"), "{runtime}: {status}");
        // The listener still serves.
        let mut ws = ws_client(addr, "/mqtt", "mqtt");
        ws.send(Message::Binary(connect_packet("after").into())).unwrap();
        assert_eq!(read_bytes(&mut ws, 4), b"\x20\x02\x00\x00", "{runtime}");
    }
}

/// ternmq's three clients over ws:// and wss:// URLs to a ternmq WebSocket listener.
#[test]
fn ternmq_clients_over_websocket_and_websocket_over_tls() {
    let pki = Pki::new("ws-clients");
    for secure in [false, true] {
        let (addrs, _running) = serve("tokio", ws_config(secure.then_some(&pki)));
        let scheme = if secure { "wss" } else { "ws" };
        for client in ["std", "tokio", "smol"] {
            let url = format!("{scheme}://127.0.0.1:{}/mqtt", addrs[0].port());
            let mut o = ternmq::blocking::ConnectOptions::from_url(&url).unwrap();
            if let Some(tls) = o.tls.as_mut() {
                tls.ca_file = Some(pki.path("ca.pem"));
            }
            o.connect.client_id =
                ternmq::codec::MqttStr::new(&format!("{scheme}-{client}")).unwrap();
            support::round_trip(client, o, &format!("{scheme}/{client}"));
        }
    }
}
