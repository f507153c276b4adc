//! The blocking client against the std broker server, in one process on loopback: input split
//! across reads, and handlers that wait for their acknowledgements while more messages come.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ternmq_core::codec::{MqttStr, QoS, ReasonCode};
use ternmq_std::{ConnectOptions, Error, Server, ServerConfig, ShutdownHandle, SyncClient};

/// A std server on its own thread; shut down and joined on drop.
struct Running(SocketAddr, ShutdownHandle, Option<JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.1.shutdown();
        if let Some(t) = self.2.take() {
            t.join().unwrap();
        }
    }
}

fn server() -> Running {
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.shutdown_handle();
    Running(addr, handle, Some(std::thread::spawn(move || server.run().unwrap())))
}

fn connect(addr: SocketAddr, id: &str) -> SyncClient {
    let mut o = ConnectOptions::new("127.0.0.1", addr.port());
    o.connect.client_id = MqttStr::new(id).unwrap();
    o.timeout = Duration::from_secs(5);
    SyncClient::connect(o).unwrap()
}

#[test]
fn a_message_larger_than_one_read_arrives_whole() {
    let s = server();
    let c = connect(s.0, "big");
    c.subscribe("big", QoS::AtLeastOnce).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.publish("big", payload.clone(), QoS::AtLeastOnce).unwrap(), ReasonCode::Success);
    let m = c.recv_timeout(Duration::from_secs(10)).expect("the message");
    assert_eq!(&m.payload[..], &payload[..]);
    // And the connection is still in step after it.
    c.publish("big", "small", QoS::AtLeastOnce).unwrap();
    let m = c.recv_timeout(Duration::from_secs(10)).expect("the next message");
    assert_eq!(&m.payload[..], b"small");
    c.disconnect().unwrap();
}

#[test]
fn handlers_waiting_for_acks_do_not_stall_later_messages() {
    const N: usize = 10;
    let s = server();
    let controller = connect(s.0, "controller");
    controller.subscribe("cmd", QoS::AtLeastOnce).unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (c, a) = (controller.clone(), Arc::clone(&answers));
    controller.on_message(move |msg| {
        // Slow enough that the next command arrives, in a read of its own, while this handler
        // runs: the I/O thread must deliver it and still read this publish's PUBACK.
        std::thread::sleep(Duration::from_millis(10));
        a.lock().unwrap().push(c.publish("status", msg.payload.clone(), QoS::AtLeastOnce));
    });
    let watcher = connect(s.0, "watcher");
    watcher.subscribe("status", QoS::AtLeastOnce).unwrap();
    let device = connect(s.0, "device");
    for i in 0..N {
        device.publish("cmd", format!("{i}"), QoS::AtLeastOnce).unwrap();
    }
    for i in 0..N {
        let m = watcher.recv_timeout(Duration::from_secs(5)).expect("a status");
        assert_eq!(&m.payload[..], format!("{i}").as_bytes());
    }
    for _ in 0..100 {
        if answers.lock().unwrap().len() == N {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), N);
    assert!(answers.iter().all(|r| matches!(r, Ok(ReasonCode::Success))), "{answers:?}");
}

#[test]
fn a_stopped_client_refuses_at_once() {
    let s = server();
    let c = connect(s.0, "stopped");
    c.disconnect().unwrap();
    assert!(!c.is_connected());
    // Refused by the stopped client, with why it stopped (a timeout would say Timeout).
    let err = c.publish("t", "x", QoS::AtLeastOnce).unwrap_err();
    assert!(
        matches!(err, Error::Disconnected(ternmq_core::client::DisconnectReason::Requested)),
        "{err}"
    );
    assert!(c.recv_timeout(Duration::from_millis(10)).is_none());
}

#[test]
fn dropping_every_handle_closes_the_connection_and_the_will_goes_out() {
    use ternmq_core::codec::{Will, WillProperties};
    use ternmq_core::topic::TopicName;
    let s = server();
    let watcher = connect(s.0, "drop-watch");
    watcher.subscribe("drop/will", QoS::AtLeastOnce).unwrap();
    let mut o = ConnectOptions::new("127.0.0.1", s.0.port());
    o.connect.client_id = MqttStr::new("dropped").unwrap();
    o.connect.will = Some(Will {
        topic: TopicName::new("drop/will").unwrap(),
        payload: "gone".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let client = SyncClient::connect(o).unwrap();
    let clone = client.clone();
    drop(client);
    assert!(clone.is_connected(), "a clone still holds it");
    drop(clone);
    let will = watcher.recv_timeout(Duration::from_secs(10)).expect("the will");
    assert_eq!(&will.payload[..], b"gone");
}

/// A TCP transport that counts what passes through its halves, and keeps a clone of each
/// socket so that the test can cut the connection.
#[derive(Default)]
struct Counted {
    dials: Mutex<Vec<std::net::TcpStream>>,
    read: std::sync::atomic::AtomicUsize,
    written: std::sync::atomic::AtomicUsize,
}

struct CountedReader(std::net::TcpStream, Arc<Counted>);
struct CountedWriter(std::net::TcpStream, Arc<Counted>);

impl ternmq_std::TransportReader for CountedReader {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        let n = ternmq_std::TransportReader::read_within(&mut self.0, buf, timeout)?;
        self.1.read.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}

impl ternmq_std::TransportWriter for CountedWriter {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        ternmq_std::TransportWriter::write_all(&mut self.0, buf)?;
        self.1.written.fetch_add(buf.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn shutdown(&mut self) {
        ternmq_std::TransportWriter::shutdown(&mut self.0);
    }
}

#[test]
fn connect_via_uses_the_dialer_for_the_first_connection_and_every_reconnection() {
    use std::sync::atomic::Ordering::SeqCst;
    let s = server();
    let counted = Arc::new(Counted::default());
    let port = s.0.port();
    let c2 = Arc::clone(&counted);
    let dial: ternmq_std::Dialer = Arc::new(move || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c2.dials.lock().unwrap().push(stream.try_clone()?);
        let reader = CountedReader(stream.try_clone()?, Arc::clone(&c2));
        let writer = CountedWriter(stream, Arc::clone(&c2));
        Ok(ternmq_std::Transport { reader: Box::new(reader), writer: Box::new(writer) })
    });
    let mut o = ConnectOptions::new("127.0.0.1", port);
    o.connect.client_id = MqttStr::new("via").unwrap();
    o.connect.clean_start = false;
    o.timeout = Duration::from_secs(5);
    o.config.reconnect.initial_delay = Duration::from_millis(50);
    let c = SyncClient::connect_via(o, dial).unwrap();
    c.subscribe("via", QoS::AtLeastOnce).unwrap();
    c.publish("via", "one", QoS::AtLeastOnce).unwrap();
    assert_eq!(
        &c.recv_timeout(Duration::from_secs(5)).expect("the first message").payload[..],
        b"one"
    );
    assert_eq!(counted.dials.lock().unwrap().len(), 1);
    let (read, written) = (counted.read.load(SeqCst), counted.written.load(SeqCst));
    assert!(read > 0 && written > 0, "the bytes did not pass through the transport");
    // Cut the connection under the client: it dials again through the same dialer.
    let first = counted.dials.lock().unwrap()[0].try_clone().unwrap();
    first.shutdown(std::net::Shutdown::Both).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counted.dials.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no reconnection through the dialer");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The session resumed over the new transport: the subscription still holds.
    let result = loop {
        match c.publish("via", "two", QoS::AtLeastOnce) {
            Ok(code) => break code,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no publish after the reconnection: {e}"),
        }
    };
    assert_eq!(result, ReasonCode::Success);
    let m = c.recv_timeout(Duration::from_secs(5)).expect("the second message");
    assert_eq!(&m.payload[..], b"two");
    assert!(counted.written.load(SeqCst) > written);
    c.disconnect().unwrap();
}
