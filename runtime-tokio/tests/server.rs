//! The Tokio broker server with the Tokio client, in one process on loopback.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ternmq_core::broker::{AuthDecision, AuthRequest, Authenticator};
use ternmq_core::codec::{MqttStr, QoS, ReasonCode};
use ternmq_tokio::server::AuthFuture;
use ternmq_tokio::{AsyncAuthenticator, Client, ConnectOptions, Error, Server, ServerConfig};

async fn start(config: ServerConfig) -> (SocketAddr, ternmq_tokio::ShutdownHandle) {
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.shutdown_handle();
    tokio::spawn(server.run());
    (addr, handle)
}

fn loopback() -> ServerConfig {
    ServerConfig::new("127.0.0.1:0".parse().unwrap())
}

fn options(addr: SocketAddr, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.client_id = MqttStr::new(id).unwrap();
    o.timeout = Duration::from_secs(10);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_at_every_qos() {
    let (addr, stop) = start(loopback()).await;
    let sub = Client::connect(options(addr, "sub")).await.unwrap();
    assert_eq!(sub.subscribe("a/#", QoS::ExactlyOnce).await.unwrap(), ReasonCode::GrantedQoS2);
    let publisher = Client::connect(options(addr, "pub")).await.unwrap();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        let code = publisher.publish(&format!("a/{i}"), format!("m{i}"), qos).await.unwrap();
        assert_eq!(code, ReasonCode::Success);
    }
    for i in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.topic.as_str(), format!("a/{i}"));
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
    }
    stop.shutdown();
}

/// Defers every decision to the async side.
struct DeferAll;

impl Authenticator for DeferAll {
    fn authenticate(&self, _: &AuthRequest) -> AuthDecision {
        AuthDecision::Defer
    }
}

/// Looks the password up "remotely" (after a sleep).
struct SlowLookup;

impl AsyncAuthenticator for SlowLookup {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let user = request.username.as_ref().map(MqttStr::as_str);
            match (user, request.password.as_deref()) {
                (Some("alice"), Some(b"secret")) => AuthDecision::Allow,
                _ => AuthDecision::Deny(ReasonCode::BadUserNameOrPassword),
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_authentication_is_answered_by_the_async_authenticator() {
    let mut config = loopback();
    config.broker.authenticator = Some(Arc::new(DeferAll));
    config.async_authenticator = Some(Arc::new(SlowLookup));
    let (addr, stop) = start(config).await;
    let mut good = options(addr, "alice-1");
    good.connect.username = Some(MqttStr::new("alice").unwrap());
    good.connect.password = Some("secret".into());
    let client = Client::connect(good).await.unwrap();
    // Connected and usable: nobody subscribes to `x`, which MQTT 5 reports as 0x10.
    let code = client.publish("x", "y", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(code, ReasonCode::NoMatchingSubscribers);
    let mut bad = options(addr, "mallory");
    bad.connect.username = Some(MqttStr::new("alice").unwrap());
    bad.connect.password = Some("guess".into());
    match Client::connect(bad).await {
        Err(Error::Refused(code)) => assert_eq!(code, ReasonCode::BadUserNameOrPassword),
        other => panic!("expected a refusal, got {other:?}"),
    }
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_hold_up_other_subscribers() {
    let mut config = loopback();
    config.broker.max_outbound_bytes = 256 * 1024;
    let (addr, stop) = start(config).await;
    // A raw subscriber that subscribes and then never reads.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    let mut connect = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b's'];
    connect.extend_from_slice(&[0x82, 8, 0, 1, 0, 3, b'b', b'/', b'#', 0]);
    stalled.write_all(&connect).unwrap();

    let healthy = Client::connect(options(addr, "healthy")).await.unwrap();
    healthy.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = Client::connect(options(addr, "pub")).await.unwrap();
    let payload = vec![7u8; 16 * 1024];
    const N: usize = 1000; // 16 MB in all, far beyond what the stalled socket can absorb
    let send = tokio::spawn(async move {
        for i in 0..N {
            publisher.publish(&format!("b/{i}"), payload.clone(), QoS::AtLeastOnce).await.unwrap();
        }
    });
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(30), healthy.next_message())
            .await
            .expect("the healthy subscriber was held up")
            .unwrap();
        assert_eq!(m.topic.as_str(), format!("b/{i}"));
    }
    send.await.unwrap();
    drop(stalled);
    stop.shutdown();
}

// ---------------------------------------------------------------- bad input

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close the connection within {within:?}"),
        }
    }
}

/// A healthy client still gets through.
async fn healthy(addr: SocketAddr, id: &str) {
    let c = Client::connect(options(addr, id)).await.unwrap();
    c.subscribe("ok", QoS::AtLeastOnce).await.unwrap();
    c.publish("ok", "fine", QoS::AtLeastOnce).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), c.next_message()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"fine");
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_are_refused_and_others_keep_being_served() {
    let (addr, stop) = start(loopback()).await;
    // A deterministic pseudo-random stream (xorshift).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for start_byte in [0x10u8, 0x30, 0xff] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut bytes = junk.clone();
        bytes[0] = start_byte;
        let _ = s.write_all(&bytes).await;
        until_closed(&mut s, Duration::from_secs(10)).await;
    }
    healthy(addr, "after-junk").await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_claiming_256_mb_is_refused_from_its_header() {
    let (addr, stop) = start(loopback()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // CONNECT with the largest remaining length there is (268,435,455 bytes), and nothing else:
    // the server must refuse from the fixed header, not wait for the body.
    s.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await.unwrap();
    until_closed(&mut s, Duration::from_secs(10)).await;
    healthy(addr, "after-huge").await;
    stop.shutdown();
}

/// The process's soft limit on open files.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_connect_are_closed_at_the_connect_timeout() {
    let mut config = loopback();
    config.broker.connect_timeout = Duration::from_secs(1);
    let (addr, stop) = start(config).await;
    // 10,000 where the file limit allows (each costs a descriptor on both ends).
    let n = 10_000.min(open_files_limit().saturating_sub(200) / 2).max(100);
    let mut silent = Vec::with_capacity(n);
    for _ in 0..n {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    healthy(addr, "among-silent").await;
    let mut closed = 0;
    for s in &mut silent {
        until_closed(s, Duration::from_secs(30)).await;
        closed += 1;
    }
    assert_eq!(closed, n);
    healthy(addr, "after-silent").await;
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_client_is_dropped_after_one_and_a_half_keep_alives() {
    let (addr, stop) = start(loopback()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // MQTT 3.1.1 CONNECT, keep-alive 1 s, then silence (as a peer that vanished would be).
    s.write_all(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 1, 0, 1, b'h']).await.unwrap();
    let started = std::time::Instant::now();
    let got = until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(got, [0x20, 2, 0, 0], "only the CONNACK");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "closed too early: {waited:?}");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_and_ipv6_listeners_side_by_side() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let mut config = loopback();
    config.listeners.push("[::1]:0".parse::<std::net::SocketAddr>().unwrap().into());
    let server = Server::bind(config).await.unwrap();
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    let stop = server.shutdown_handle();
    tokio::spawn(server.run());
    let mut v6 = ConnectOptions::new("::1", addrs[1].port());
    v6.connect.client_id = MqttStr::new("six").unwrap();
    let six = Client::connect(v6).await.unwrap();
    six.subscribe("ip/#", QoS::AtLeastOnce).await.unwrap();
    let four = Client::connect(options(addrs[0], "four")).await.unwrap();
    four.publish("ip/4", "from v4", QoS::AtLeastOnce).await.unwrap();
    let m =
        tokio::time::timeout(Duration::from_secs(10), six.next_message()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"from v4", "one broker behind both listeners");
    stop.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_client_handle_closes_the_connection_and_the_will_goes_out() {
    use ternmq_core::codec::{Will, WillProperties};
    use ternmq_core::topic::TopicName;
    let (addr, _shutdown) = start(loopback()).await;
    let watcher = Client::connect(options(addr, "drop-watch")).await.unwrap();
    watcher.subscribe("drop/will", QoS::AtLeastOnce).await.unwrap();
    let mut o = options(addr, "dropped");
    o.connect.will = Some(Will {
        topic: TopicName::new("drop/will").unwrap(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let client = Client::connect(o).await.unwrap();
    let clone = client.clone();
    drop(client);
    assert!(clone.is_connected(), "a clone still holds it");
    drop(clone);
    let will = tokio::time::timeout(Duration::from_secs(10), watcher.next_message())
        .await
        .expect("the will, once the last handle is gone")
        .unwrap();
    assert_eq!(&will.payload[..], b"gone");
}

/// Challenges "SIGN" clients with a nonce and accepts the signed answer, on connect and on
/// re-authentication.
struct Challenger;

impl Authenticator for Challenger {
    fn supports_method(&self, method: &str) -> bool {
        method == "SIGN"
    }
    fn authenticate(&self, r: &AuthRequest) -> AuthDecision {
        use ternmq_core::broker::AuthStage;
        match (r.stage, r.data.as_deref()) {
            (AuthStage::Connect | AuthStage::Reauthenticate, _) => {
                AuthDecision::Continue(Some(bytes::Bytes::from_static(b"nonce")))
            }
            (AuthStage::Continue, Some(b"signed")) => AuthDecision::Allow,
            _ => AuthDecision::Deny(ReasonCode::NotAuthorized),
        }
    }
}

/// Signs the nonce.
struct Signer;

impl ternmq_tokio::AuthHandler for Signer {
    fn challenge(&self, _method: &str, data: Option<&[u8]>) -> Option<bytes::Bytes> {
        (data == Some(b"nonce")).then(|| bytes::Bytes::from_static(b"signed"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_authentication_through_the_clients_auth_handler() {
    let mut config = loopback();
    config.broker.authenticator = Some(Arc::new(Challenger));
    let (addr, stop) = start(config).await;
    let mut o = options(addr, "signer");
    o.connect.properties.authentication_method = Some(MqttStr::new("SIGN").unwrap());
    o.auth = Some(Arc::new(Signer));
    let client = Client::connect(o).await.unwrap();
    client.reauthenticate(None).unwrap();
    let code = client.publish("x", "y", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(code, ReasonCode::NoMatchingSubscribers);
    assert!(client.is_connected(), "re-authenticated, still connected");
    // Without a handler nothing can answer the challenge: refused at once, not timed out.
    let mut o = options(addr, "mute");
    o.connect.properties.authentication_method = Some(MqttStr::new("SIGN").unwrap());
    o.timeout = Duration::from_secs(20);
    match Client::connect(o).await {
        Err(Error::Timeout) => panic!("waited for the timeout instead of giving up"),
        Err(_) => {}
        Ok(_) => panic!("connected without answering the challenge"),
    }
    stop.shutdown();
}

/// A transport of the test's own: TCP underneath, counting the bytes that pass through it.
struct Counting {
    inner: tokio::net::TcpStream,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_dialer_carries_the_connection_and_every_reconnection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (addr, stop) = start(loopback()).await;
    let dials = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let dialer: ternmq_tokio::Dialer = {
        let (dials, bytes) = (Arc::clone(&dials), Arc::clone(&bytes));
        Arc::new(move || {
            dials.fetch_add(1, Ordering::SeqCst);
            let bytes = Arc::clone(&bytes);
            Box::pin(async move {
                let inner = tokio::net::TcpStream::connect(addr).await?;
                Ok(Box::new(Counting { inner, bytes }) as Box<dyn ternmq_tokio::Transport>)
            })
        })
    };
    let mut o = options(addr, "dialed");
    o.config.reconnect.initial_delay = ternmq_core::time::Duration::from_millis(50);
    let client = Client::connect_via(o, dialer).await.unwrap();
    assert_eq!(
        client.publish("x", "y", QoS::AtLeastOnce).await.unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    assert!(bytes.load(Ordering::SeqCst) > 0, "the bytes went through the custom transport");
    // Another connection with the same client id takes the session over: the client is
    // disconnected and dials again through the dialer.
    let thief = Client::connect(options(addr, "dialed")).await.unwrap();
    thief.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(dials.load(Ordering::SeqCst) >= 2 && client.is_connected()) {
        assert!(tokio::time::Instant::now() < deadline, "no reconnection through the dialer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client.publish("x", "z", QoS::AtLeastOnce).await.unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    stop.shutdown();
}

/// A client whose server stops reading is blocked in a write; dropping it still ends its
/// driver task (and with it the connection). Found in review: the write was awaited alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_stops_even_while_a_write_is_blocked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(&[0x20, 3, 0, 0, 0]).await.unwrap(); // CONNACK, MQTT 5, no properties
        s // and never read again
    });
    let client = Client::connect(options(addr, "blocked")).await.unwrap();
    let _socket = server.await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let with_client = metrics.num_alive_tasks();
    // Fill the socket buffers until a QoS 0 publish no longer completes.
    let payload = bytes::Bytes::from(vec![0u8; 64 * 1024]);
    for _ in 0..1000 {
        let publish = client.publish("t", payload.clone(), QoS::AtMostOnce);
        if tokio::time::timeout(Duration::from_millis(200), publish).await.is_err() {
            break;
        }
    }
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() >= with_client {
        assert!(tokio::time::Instant::now() < deadline, "the driver task is still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client still sending when the broker ends its connection (here: it went over the
/// broker's Receive Maximum with QoS 2, as the Paho interoperability suite does) reads the
/// DISCONNECT and its reason: the broker shuts its side, then drains the client's input until
/// the client closes, instead of closing on unread input (which resets the connection, so the
/// client's next writes fail and the reason can be lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_reads_the_disconnect_and_its_reason() {
    use ternmq_core::codec::{Connect, Decoder, Encoder, Packet, ProtocolVersion, PubAck, Publish};
    let mut config = loopback();
    config.broker.receive_maximum = 2;
    let (addr, stop) = start(config).await;
    let v5 = ProtocolVersion::V5;
    let enc = Encoder::new(v5);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    let connect = Connect::new(v5, MqttStr::new("over-quota").unwrap());
    enc.encode(&connect.into(), &mut out).unwrap();
    // Three QoS 2 messages, none released: one more than the broker allows.
    for id in 1..=3u16 {
        let mut p = Publish::new(ternmq_core::topic::TopicName::new("t").unwrap(), "x");
        p.qos = QoS::ExactlyOnce;
        p.packet_id = std::num::NonZeroU16::new(id);
        enc.encode(&p.into(), &mut out).unwrap();
    }
    s.write_all(&out).await.unwrap();
    // Like a pipelining client: it goes on answering and sending for a while before it
    // reads. Every write must go through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for id in 1..=50u16 {
        let mut rel = bytes::BytesMut::new();
        let ack = PubAck::new(std::num::NonZeroU16::new(id).unwrap());
        enc.encode(&Packet::PubRel(ack), &mut rel).unwrap();
        s.write_all(&rel).await.unwrap_or_else(|e| panic!("write {id} failed: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut got = bytes::BytesMut::from(&until_closed(&mut s, Duration::from_secs(10)).await[..]);
    let mut dec = Decoder::new(Some(v5), u32::MAX);
    let mut reason = None;
    while let Some(p) = dec.decode(&mut got).unwrap() {
        if let Packet::Disconnect(d) = p {
            reason = Some(d.reason_code);
        }
    }
    assert_eq!(reason, Some(ReasonCode::ReceiveMaximumExceeded));
    stop.shutdown();
}
