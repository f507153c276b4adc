//! The client state machine against a real Mosquitto broker on loopback.
//!
//! Each test starts its own `mosquitto` on a free 127.0.0.1 port and drives
//! `ternmq_core::client::Client` over a blocking `TcpStream` with the real clock: a miniature of
//! the runtime adapters to come. Without a `mosquitto` binary the tests print that they were
//! skipped, unless `TERNMQ_REQUIRE_INTEROP` is set (as `scripts/test.sh` does), where a missing
//! peer is a failure.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU16;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use ternmq_core::client::{Client, ClientConfig, Command as ClientCommand, Event};
use ternmq_core::codec::*;
use ternmq_core::time::Instant;
use ternmq_core::topic::{TopicFilter, TopicName};

/// A blocking driver: the client state machine on a TCP socket with the real clock.
struct Conn {
    client: Client,
    stream: Option<TcpStream>,
    epoch: StdInstant,
    events: Vec<Event>,
    port: u16,
    /// Session Present of the first CONNACK.
    session_present: bool,
}

impl Conn {
    fn open(port: u16, config: ClientConfig, options: Connect) -> Conn {
        let epoch = StdInstant::now();
        let mut conn = Conn {
            client: Client::new(config, Instant::ZERO),
            stream: None,
            epoch,
            events: Vec::new(),
            port,
            session_present: false,
        };
        conn.stream = Some(conn.dial());
        let now = conn.now();
        conn.client.connect(now, options).unwrap();
        let ev = conn.wait_for(|e| matches!(e, Event::Connected { .. }), 5);
        conn.session_present = matches!(ev, Event::Connected { session_present: true, .. });
        conn
    }

    fn dial(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.epoch.elapsed().as_nanos() as u64)
    }

    /// One turn of the run loop: write, read for up to `max`, handle timers and events.
    fn turn(&mut self, max: StdDuration) {
        while let Some(out) = self.client.poll_transmit(64 * 1024) {
            if let Some(s) = self.stream.as_mut() {
                s.write_all(&out).unwrap();
            }
        }
        let wait = match self.client.poll_timeout() {
            Some(t) => {
                let d = t.saturating_duration_since(self.now());
                StdDuration::from_nanos(d.as_nanos() as u64).min(max)
            }
            None => max,
        }
        .max(StdDuration::from_millis(1));
        if let Some(s) = self.stream.as_mut() {
            s.set_read_timeout(Some(wait)).unwrap();
            let mut buf = [0u8; 16 * 1024];
            match s.read(&mut buf) {
                Ok(0) => {
                    self.stream = None;
                    let now = self.now();
                    self.client.handle_closed(now);
                }
                Ok(n) => {
                    let now = self.now();
                    self.client.handle_bytes(now, &mut BytesMut::from(&buf[..n]));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    self.stream = None;
                    let now = self.now();
                    self.client.handle_closed(now);
                }
            }
        } else {
            std::thread::sleep(wait);
        }
        let now = self.now();
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        while let Some(out) = self.client.poll_transmit(64 * 1024) {
            if let Some(s) = self.stream.as_mut() {
                s.write_all(&out).unwrap();
            }
        }
        while let Some(ev) = self.client.poll_event() {
            self.events.push(ev);
        }
        while let Some(command) = self.client.poll_command() {
            match command {
                ClientCommand::CloseTransport => {
                    self.stream = None;
                    let now = self.now();
                    self.client.handle_closed(now);
                }
                ClientCommand::Reconnect => {
                    self.stream = Some(self.dial());
                    let now = self.now();
                    self.client.reconnect(now).unwrap();
                }
                _ => {}
            }
        }
    }

    /// Runs until an event matches `f` (and returns it), failing after `secs` seconds.
    fn wait_for(&mut self, f: impl Fn(&Event) -> bool, secs: u64) -> Event {
        let deadline = StdInstant::now() + StdDuration::from_secs(secs);
        loop {
            if let Some(i) = self.events.iter().position(&f) {
                return self.events.remove(i);
            }
            assert!(StdInstant::now() < deadline, "timed out; events so far: {:?}", self.events);
            self.turn(StdDuration::from_millis(50));
        }
    }

    /// Runs the loop for `d`, keeping the events.
    fn run_for(&mut self, d: StdDuration) {
        let end = StdInstant::now() + d;
        while StdInstant::now() < end {
            self.turn(StdDuration::from_millis(20));
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        let now = self.now();
        let sub = Subscription::new(TopicFilter::new(filter).unwrap(), qos);
        let id = self.client.subscribe(now, &[sub]).unwrap();
        let ev = self
            .wait_for(|e| matches!(e, Event::Subscribed { packet_id, .. } if *packet_id == id), 5);
        let Event::Subscribed { reason_codes, .. } = ev else { unreachable!() };
        assert!(!reason_codes[0].is_error(), "{reason_codes:?}");
    }

    fn publish(&mut self, p: Publish) -> Option<PacketId> {
        let now = self.now();
        self.client.publish(now, p).unwrap()
    }

    fn message(&mut self) -> Publish {
        match self.wait_for(|e| matches!(e, Event::Message(_)), 5) {
            Event::Message(p) => p,
            _ => unreachable!(),
        }
    }

    /// Drops the socket without DISCONNECT, as a crashed client would.
    fn kill(mut self) {
        self.stream.take();
    }
}

fn options(v: ProtocolVersion, id: &'static str) -> Connect {
    let mut c = Connect::new(v, MqttStr::from_static(id));
    c.keep_alive = 30;
    c
}

fn msg(topic: &str, qos: QoS, payload: &'static str) -> Publish {
    let mut p =
        Publish::new(TopicName::new(topic).unwrap(), Bytes::from_static(payload.as_bytes()));
    p.qos = qos;
    p
}

fn versions() -> [ProtocolVersion; 2] {
    [ProtocolVersion::V3_1_1, ProtocolVersion::V5]
}

#[test]
fn qos_0_1_2_round_trip_through_mosquitto() {
    let Some(broker) = support::Broker::start() else { return };
    for v in versions() {
        let mut sub = Conn::open(broker.port, ClientConfig::default(), options(v, "rt-sub"));
        sub.subscribe("rt/#", QoS::ExactlyOnce);
        let mut publ = Conn::open(broker.port, ClientConfig::default(), options(v, "rt-pub"));
        let mut ids = Vec::new();
        for (qos, payload) in
            [(QoS::AtMostOnce, "zero"), (QoS::AtLeastOnce, "one"), (QoS::ExactlyOnce, "two")]
        {
            ids.extend(publ.publish(msg("rt/x", qos, payload)));
        }
        for id in ids {
            let ev = publ.wait_for(
                |e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id),
                5,
            );
            assert!(
                matches!(ev, Event::Published { reason_code: ReasonCode::Success, .. }),
                "{ev:?}"
            );
        }
        let mut got: Vec<(QoS, Bytes)> =
            (0..3).map(|_| sub.message()).map(|p| (p.qos, p.payload)).collect();
        got.sort_by_key(|(q, _)| *q as u8);
        assert_eq!(
            got,
            vec![
                (QoS::AtMostOnce, Bytes::from_static(b"zero")),
                (QoS::AtLeastOnce, Bytes::from_static(b"one")),
                (QoS::ExactlyOnce, Bytes::from_static(b"two")),
            ],
            "{v}"
        );
    }
}

#[test]
fn retained_message_reaches_a_later_subscriber() {
    let Some(broker) = support::Broker::start() else { return };
    for v in versions() {
        let mut publ = Conn::open(broker.port, ClientConfig::default(), options(v, "ret-pub"));
        let mut p = msg("status/online", QoS::AtLeastOnce, "true");
        p.retain = true;
        let id = publ.publish(p).unwrap();
        publ.wait_for(|e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id), 5);
        let mut sub = Conn::open(broker.port, ClientConfig::default(), options(v, "ret-sub"));
        sub.subscribe("status/#", QoS::AtLeastOnce);
        let m = sub.message();
        assert!(m.retain && &m.payload[..] == b"true", "{v}: {m:?}");
    }
}

#[test]
fn will_is_published_when_the_client_vanishes() {
    let Some(broker) = support::Broker::start() else { return };
    for v in versions() {
        let mut watcher =
            Conn::open(broker.port, ClientConfig::default(), options(v, "will-watch"));
        watcher.subscribe("status/offline", QoS::AtLeastOnce);
        let mut opts = options(v, "will-client");
        opts.will = Some(Will {
            topic: TopicName::new("status/offline").unwrap(),
            payload: Bytes::from_static(b"client_disconnected"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let doomed = Conn::open(broker.port, ClientConfig::default(), opts);
        doomed.kill();
        let m = watcher.message();
        assert_eq!(&m.payload[..], b"client_disconnected", "{v}");
    }
}

#[test]
fn keep_alive_pings_keep_an_idle_connection_up() {
    let Some(broker) = support::Broker::start() else { return };
    for v in versions() {
        let mut opts = options(v, "ka");
        opts.keep_alive = 1;
        let mut c = Conn::open(broker.port, ClientConfig::default(), opts);
        // Mosquitto drops a client silent for 1.5 x keep-alive; PINGREQs must keep it alive.
        c.run_for(StdDuration::from_millis(3500));
        assert!(c.client.is_connected(), "{v}: {:?}", c.events);
        assert!(!c.events.iter().any(|e| matches!(e, Event::Disconnected(_))), "{:?}", c.events);
    }
}

#[test]
fn persistent_session_receives_what_was_published_while_offline() {
    let Some(broker) = support::Broker::start() else { return };
    for v in versions() {
        let mut opts = options(v, "persist");
        opts.clean_start = false;
        if v.is_v5() {
            opts.properties.session_expiry_interval = Some(60);
        }
        let mut c = Conn::open(broker.port, ClientConfig::default(), opts.clone());
        c.subscribe("offline/#", QoS::AtLeastOnce);
        let now = c.now();
        c.client.disconnect(now, Disconnect::default());
        c.run_for(StdDuration::from_millis(100));
        let mut publ = Conn::open(broker.port, ClientConfig::default(), options(v, "persist-pub"));
        let id = publ.publish(msg("offline/a", QoS::AtLeastOnce, "while you were out")).unwrap();
        publ.wait_for(|e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id), 5);
        let mut back = Conn::open(broker.port, ClientConfig::default(), opts);
        assert!(back.session_present, "{v}: the broker should have kept the session");
        let m = back.message();
        assert_eq!(&m.payload[..], b"while you were out", "{v}");
    }
}

#[test]
fn v5_topic_aliases_are_understood_by_mosquitto() {
    let Some(broker) = support::Broker::start() else { return };
    let v = ProtocolVersion::V5;
    let mut sub = Conn::open(broker.port, ClientConfig::default(), options(v, "alias-sub"));
    sub.subscribe("very/long/topic/name", QoS::AtLeastOnce);
    let config = ClientConfig { auto_topic_alias: true, ..ClientConfig::default() };
    let mut publ = Conn::open(broker.port, config, options(v, "alias-pub"));
    for payload in ["1", "2", "3"] {
        let id = publ.publish(msg("very/long/topic/name", QoS::AtLeastOnce, payload)).unwrap();
        publ.wait_for(|e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id), 5);
    }
    // Explicit alias, the seed's way: bind, then publish with an empty topic.
    let mut explicit = Conn::open(broker.port, ClientConfig::default(), options(v, "alias-pub2"));
    let mut bind = msg("very/long/topic/name", QoS::AtLeastOnce, "4");
    bind.properties.topic_alias = NonZeroU16::new(1);
    explicit.publish(bind);
    let mut by_alias = Publish::new(TopicName::new("unused").unwrap(), "5");
    by_alias.qos = QoS::AtLeastOnce;
    by_alias.topic = TopicName::new("very/long/topic/name").unwrap();
    by_alias.properties.topic_alias = NonZeroU16::new(1);
    let id = explicit.publish(by_alias).unwrap();
    explicit.wait_for(|e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id), 5);
    let payloads: Vec<Bytes> = (0..5).map(|_| sub.message().payload).collect();
    assert_eq!(payloads, ["1", "2", "3", "4", "5"].map(|s| Bytes::from_static(s.as_bytes())));
}

#[test]
fn mosquitto_sub_receives_what_the_client_publishes() {
    let Some(broker) = support::Broker::start() else { return };
    let Ok(mut sub) = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "cli/#",
            "-C",
            "1",
            "-W",
            "10",
            "-q",
            "1",
            "-V",
            "mqttv5",
        ])
        .stdout(Stdio::piped())
        .spawn()
    else {
        assert!(std::env::var_os("TERNMQ_REQUIRE_INTEROP").is_none(), "mosquitto_sub missing");
        return;
    };
    // Retained, so that mosquitto_sub gets it however late its subscription lands.
    let mut publ =
        Conn::open(broker.port, ClientConfig::default(), options(ProtocolVersion::V5, "cli-pub"));
    let mut p = msg("cli/x", QoS::AtLeastOnce, "hello mosquitto_sub");
    p.retain = true;
    let id = publ.publish(p).unwrap();
    publ.wait_for(|e| matches!(e, Event::Published { packet_id, .. } if *packet_id == id), 5);
    let mut out = String::new();
    sub.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(sub.wait().unwrap().success());
    assert_eq!(out.trim(), "hello mosquitto_sub");
}
