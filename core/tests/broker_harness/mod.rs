//! Drives a `Broker` with packets on a virtual clock, as a byte-level peer would.
//!
//! Packets sent are encoded with the codec (itself checked against hand-written vectors);
//! every byte the broker writes is decoded with a client-side decoder, so a malformed output
//! fails the test.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use bytes::{Bytes, BytesMut};
use ternmq_core::broker::{Broker, BrokerConfig, Command, ConnId, Event, PeerInfo};
use ternmq_core::codec::{
    ConnAck, Connect, Decoder, Disconnect, Encoder, MqttStr, Packet, PacketId, ProtocolVersion,
    PubAck, Publish, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions, Unsubscribe,
};
use ternmq_core::time::{Duration, Instant};
use ternmq_core::topic::{TopicFilter, TopicName};

#[allow(unused_imports)]
pub use ProtocolVersion::{V3_1_1 as V311, V5};

pub struct Harness {
    pub broker: Broker,
    pub now: Instant,
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
}

#[derive(Debug)]
pub struct Peer {
    pub id: ConnId,
    pub version: ProtocolVersion,
    pub decoder: Decoder,
    /// Bytes received and not yet decoded.
    pub input: BytesMut,
    /// Whether the broker asked for this transport to be closed.
    pub closed: bool,
    /// Packets received but not yet returned by `recv` (those after a CONNACK or SUBACK the
    /// harness consumed).
    pub backlog: Vec<Packet>,
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn publish(t: &str, payload: &'static [u8], qos: QoS, id: u16) -> Publish {
    Publish {
        qos,
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        ..Publish::new(topic(t), Bytes::from_static(payload))
    }
}

pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    let mut c = Connect::new(version, MqttStr::new(client_id).unwrap());
    c.clean_start = clean;
    c.keep_alive = 0;
    c
}

impl Harness {
    pub fn new() -> Self {
        Self::with(BrokerConfig::default())
    }

    pub fn with(config: BrokerConfig) -> Self {
        let now = Instant::from_secs(1000);
        Self {
            broker: Broker::new(config, now).unwrap(),
            now,
            events: Vec::new(),
            commands: Vec::new(),
        }
    }

    pub fn config(f: impl FnOnce(&mut BrokerConfig)) -> Self {
        let mut config = BrokerConfig::default();
        f(&mut config);
        Self::with(config)
    }

    pub fn accept(&mut self, version: ProtocolVersion) -> Peer {
        self.accept_from(version, PeerInfo::default())
    }

    /// A connection with what its transport said of it.
    pub fn accept_from(&mut self, version: ProtocolVersion, peer: PeerInfo) -> Peer {
        let id = self.broker.accept(self.now, peer).unwrap();
        Peer {
            id,
            version,
            decoder: Decoder::new(Some(version), u32::MAX),
            input: BytesMut::new(),
            closed: false,
            backlog: Vec::new(),
        }
    }

    /// Encodes and delivers `packet` from `peer`.
    pub fn send(&mut self, peer: &Peer, packet: impl Into<Packet>) {
        let mut buf = BytesMut::new();
        Encoder::new(peer.version).encode(&packet.into(), &mut buf).unwrap();
        self.send_raw(peer, &buf);
    }

    pub fn send_raw(&mut self, peer: &Peer, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.broker.handle_bytes(self.now, peer.id, &mut buf);
        self.pump();
    }

    /// Collects events (and checks poll_writable only names live connections with output).
    pub fn pump(&mut self) {
        while let Some(e) = self.broker.poll_event() {
            self.events.push(e);
        }
        while let Some(c) = self.broker.poll_command() {
            self.commands.push(c);
        }
    }

    /// Every packet the broker has written to `peer` since the last call.
    pub fn recv(&mut self, peer: &mut Peer) -> Vec<Packet> {
        while let Some(b) = self.broker.poll_transmit(peer.id, usize::MAX) {
            peer.input.extend_from_slice(&b);
        }
        self.pump();
        let mut out = std::mem::take(&mut peer.backlog);
        while let Some(p) = peer.decoder.decode(&mut peer.input).unwrap() {
            out.push(p);
        }
        assert!(peer.input.is_empty(), "a partial packet was written");
        if self.commands.iter().any(|e| matches!(e, Command::Close(c) if *c == peer.id)) {
            peer.closed = true;
        }
        out
    }

    /// The one packet the broker wrote to `peer`.
    pub fn recv_one(&mut self, peer: &mut Peer) -> Packet {
        let mut p = self.recv(peer);
        assert_eq!(p.len(), 1, "expected one packet, got {p:?}");
        p.remove(0)
    }

    pub fn recv_publishes(&mut self, peer: &mut Peer) -> Vec<Publish> {
        self.recv(peer)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    /// Whether the broker asked to close `peer`'s transport.
    pub fn is_closed(&mut self, peer: &mut Peer) -> bool {
        self.recv(peer);
        peer.closed
    }

    /// Closes `peer`'s transport from the network side.
    pub fn drop_peer(&mut self, peer: &Peer) {
        self.broker.handle_closed(self.now, peer.id);
        self.pump();
    }

    /// Advances the virtual clock and runs due timers.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.broker.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.broker.handle_timeout(self.now);
            self.pump();
        }
        self.now = end;
        self.broker.handle_timeout(self.now);
        self.pump();
    }

    pub fn secs(&mut self, s: u64) {
        self.advance(Duration::from_secs(s));
    }

    /// Connects with `connect` and returns the peer and its CONNACK.
    pub fn connect_with(&mut self, connect: Connect) -> (Peer, ConnAck) {
        let mut peer = self.accept(connect.protocol);
        self.send(&peer, connect);
        let mut got = self.recv(&mut peer);
        match got.first() {
            Some(Packet::ConnAck(ack)) => {
                let ack = ack.clone();
                got.remove(0);
                peer.backlog = got;
                (peer, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts success.
    pub fn connect(&mut self, version: ProtocolVersion, client_id: &str, clean: bool) -> Peer {
        let (peer, ack) = self.connect_with(connect_packet(version, client_id, clean));
        assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
        peer
    }

    /// An MQTT 5 connection with a Session Expiry Interval.
    pub fn connect_v5_session(
        &mut self,
        client_id: &str,
        clean: bool,
        expiry: u32,
    ) -> (Peer, ConnAck) {
        let mut c = connect_packet(V5, client_id, clean);
        c.properties.session_expiry_interval = Some(expiry);
        self.connect_with(c)
    }

    pub fn subscribe(&mut self, peer: &mut Peer, f: &str, qos: QoS) -> Vec<ReasonCode> {
        self.subscribe_opts(peer, f, SubscriptionOptions::qos(qos))
    }

    pub fn subscribe_opts(
        &mut self,
        peer: &mut Peer,
        f: &str,
        options: SubscriptionOptions,
    ) -> Vec<ReasonCode> {
        let sub = Subscribe {
            packet_id: pid(4242),
            subscriptions: vec![Subscription { filter: filter(f), options }],
            properties: Default::default(),
        };
        self.send(peer, sub);
        let mut got = self.recv(peer);
        match got.first() {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, pid(4242));
                let codes = ack.reason_codes.clone();
                got.remove(0);
                peer.backlog = got;
                codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn unsubscribe(&mut self, peer: &mut Peer, f: &str) -> Packet {
        let u = Unsubscribe {
            packet_id: pid(77),
            filters: vec![filter(f)],
            properties: Default::default(),
        };
        self.send(peer, u);
        self.recv_one(peer)
    }

    pub fn disconnect(&mut self, peer: &mut Peer, code: ReasonCode) {
        self.send(peer, Disconnect::new(code));
        assert!(self.is_closed(peer));
        self.drop_peer(peer);
    }

    pub fn puback(&mut self, peer: &Peer, id: PacketId) {
        self.send(peer, Packet::PubAck(PubAck::new(id)));
    }
}

pub fn reason_of_disconnect(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

pub fn up(k: &str, v: &str) -> ternmq_core::codec::UserProperty {
    (MqttStr::new(k).unwrap(), MqttStr::new(v).unwrap())
}

pub fn will(t: &str, payload: &'static str, qos: QoS, retain: bool) -> ternmq_core::codec::Will {
    ternmq_core::codec::Will {
        topic: topic(t),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain,
        properties: Default::default(),
    }
}
