//! Flow control from subscribers back to publishers: a QoS 1/2 message that finds a connected
//! subscriber's queue full is kept and the publisher's acknowledgement waits
//! (`BrokerConfig::max_ack_delay`), so nothing acknowledged is lost; a subscriber that holds
//! acknowledgements back too long is a slow consumer and its excess is dropped again.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use ternmq_core::codec::{Packet, QoS, ReasonCode};
use ternmq_core::time::Duration;

/// One message in flight and two queued per subscriber: small enough to fill at once.
fn tight() -> Harness {
    Harness::config(|c| {
        c.max_inflight_messages = 1;
        c.max_queued_messages = 2;
    })
}

fn acks(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn full_queue_of_a_live_subscriber_withholds_the_publishers_ack_and_loses_nothing() {
    let mut h = tight();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    for i in 1..=5 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    // 1 in flight, 2 queued: messages 4 and 5 go over the limit and their PUBACKs wait.
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3]);
    assert_eq!(h.broker.stats().acks_delayed, 2);
    assert_eq!(h.broker.stats().dropped_queue_full, 0);
    let mut received = Vec::new();
    for _ in 0..5 {
        let got = h.recv_publishes(&mut sub);
        assert_eq!(got.len(), 1, "one at a time: the window is 1");
        let id = got[0].packet_id.unwrap();
        received.push(id);
        h.puback(&sub, id);
    }
    assert_eq!(received.len(), 5, "every acknowledged message arrives");
    // The queue drained below its limit: both withheld PUBACKs went out.
    assert_eq!(acks(&h.recv(&mut publisher)), [4, 5]);
    assert!(h.recv_publishes(&mut sub).is_empty());
}

#[test]
fn withheld_pubrec_for_qos2_still_blocks_a_duplicate_delivery() {
    let mut h = tight();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::ExactlyOnce);
    let mut publisher = h.connect(V5, "pub", true);
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::ExactlyOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3]);
    // The publisher resends message 4 (as after a lost PUBREC): it is not routed again.
    let mut dup = publish("t", b"x", QoS::ExactlyOnce, 4);
    dup.dup = true;
    h.send(&publisher, dup);
    assert_eq!(h.broker.stats().messages_received, 4);
}

#[test]
fn slow_consumer_gets_its_withheld_acks_released_after_max_ack_delay_and_then_drops() {
    let mut h = Harness::config(|c| {
        c.max_inflight_messages = 1;
        c.max_queued_messages = 2;
        c.max_ack_delay = Duration::from_secs(5);
    });
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3]);
    h.secs(4);
    assert!(acks(&h.recv(&mut publisher)).is_empty(), "not yet");
    h.secs(1);
    assert_eq!(acks(&h.recv(&mut publisher)), [4], "released after max_ack_delay");
    assert_eq!(h.broker.stats().slow_consumers, 1);
    // From now on the excess for that subscriber is dropped, and acknowledged at once.
    h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 5));
    assert_eq!(acks(&h.recv(&mut publisher)), [5]);
    assert_eq!(h.broker.stats().dropped_queue_full, 1);
    // The subscriber catches up: everything queued (1 in flight + 3) arrives.
    let mut n = 0;
    while let Some(p) = h.recv_publishes(&mut sub).first().cloned() {
        n += 1;
        h.puback(&sub, p.packet_id.unwrap());
    }
    assert_eq!(n, 4);
}

#[test]
fn subscriber_leaving_releases_the_withheld_acks_at_once() {
    let mut h = tight();
    let (mut sub, _) = h.connect_v5_session("sub", false, 600);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3]);
    h.drop_peer(&sub);
    assert_eq!(acks(&h.recv(&mut publisher)), [4]);
    // Offline, the queue drops at its limit: the publisher is not held up.
    h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 5));
    assert_eq!(acks(&h.recv(&mut publisher)), [5]);
    assert_eq!(h.broker.stats().dropped_queue_full, 1);
}

/// MQTT 5 only: a client over the broker's Receive Maximum gets DISCONNECT 0x93 (section 3.3.4),
/// and PUBACKs the broker withholds count as unacknowledged.
#[test]
fn sec_3_3_4_withheld_pubacks_count_against_receive_maximum() {
    let mut h = Harness::config(|c| {
        c.max_inflight_messages = 1;
        c.max_queued_messages = 1;
        c.receive_maximum = 2;
    });
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    // 1 in flight, 1 queued, then two withheld: the client's window (2) is full.
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2]);
    h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, 5));
    let out = h.recv(&mut publisher);
    assert_eq!(reason_of_disconnect(&out), Some(ReasonCode::ReceiveMaximumExceeded));
}

#[test]
fn flow_control_off_drops_at_the_limit_as_before() {
    let mut h = Harness::config(|c| {
        c.max_inflight_messages = 1;
        c.max_queued_messages = 2;
        c.max_ack_delay = Duration::ZERO;
    });
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V5, "pub", true);
    for i in 1..=5 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3, 4, 5]);
    assert_eq!(h.broker.stats().dropped_queue_full, 2);
}

#[test]
fn v311_publisher_is_held_back_the_same_way() {
    let mut h = tight();
    let mut sub = h.connect(V311, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtLeastOnce);
    let mut publisher = h.connect(V311, "pub", true);
    for i in 1..=4 {
        h.send(&publisher, publish("t", b"x", QoS::AtLeastOnce, i));
    }
    assert_eq!(acks(&h.recv(&mut publisher)), [1, 2, 3]);
    // Two acknowledgements later the queue ([3, 4] after the first) is below its limit.
    for expect_released in [false, true] {
        let got = h.recv_publishes(&mut sub);
        h.puback(&sub, got[0].packet_id.unwrap());
        assert_eq!(acks(&h.recv(&mut publisher)).len(), usize::from(expect_released));
    }
}

// ---------------------------------------------------------------- QoS 0: pausing the publisher

use bytes::BytesMut;
use ternmq_core::broker::Command;
use ternmq_core::codec::{Encoder, ProtocolVersion};

/// `n` QoS 0 PUBLISH packets to `t`, back to back, as one read would bring them.
fn burst(t: &str, n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..n {
        let p = publish(t, b"0123456789012345678901234567890123456789", QoS::AtMostOnce, 0);
        Encoder::new(ProtocolVersion::V5).encode(&p.into(), &mut buf).unwrap();
    }
    buf
}

fn paused(h: &mut Harness, peer: &Peer) -> bool {
    h.pump();
    let mut state = false;
    for e in &h.commands {
        match e {
            Command::PauseInput(c) if *c == peer.id => state = true,
            Command::ResumeInput(c) if *c == peer.id => state = false,
            _ => {}
        }
    }
    state
}

fn small_output() -> Harness {
    Harness::config(|c| {
        c.max_packet_size = 128;
        c.max_outbound_bytes = 200;
    })
}

#[test]
fn qos0_to_a_subscriber_behind_pauses_the_publisher_and_loses_nothing() {
    let mut h = small_output();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    let mut input = burst("t", 20);
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(paused(&mut h, &publisher), "the publisher's input is paused");
    assert!(!input.is_empty(), "the rest waits in the adapter's buffer");
    let mut received = 0;
    while paused(&mut h, &publisher) || !input.is_empty() {
        received += h.recv_publishes(&mut sub).len(); // the subscriber catches up
        assert!(!paused(&mut h, &publisher), "resumed once the subscriber's output drained");
        let now = h.now;
        h.broker.handle_bytes(now, publisher.id, &mut input);
    }
    received += h.recv_publishes(&mut sub).len();
    assert_eq!(received, 20);
    assert_eq!(h.broker.stats().dropped_slow_consumer, 0);
    assert!(h.broker.stats().inputs_paused >= 1);
}

#[test]
fn a_qos0_burst_waits_in_the_publisher_not_in_the_brokers_memory() {
    // Default limits: max_outbound_bytes is 4 MiB, yet a live subscriber 16 KiB behind pauses
    // the publisher, so what the broker holds for it stays near 16 KiB.
    let mut h = Harness::config(|_| {});
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    let mut input = burst("t", 6000); // about 280 KB for one subscriber
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(paused(&mut h, &publisher), "the publisher's input is paused");
    assert!(input.len() > 240_000, "most of the burst is still unread: {} left", input.len());
    let mut received = 0;
    while !input.is_empty() {
        received += h.recv_publishes(&mut sub).len();
        assert!(!paused(&mut h, &publisher), "resumed once the subscriber's output drained");
        let now = h.now;
        h.broker.handle_bytes(now, publisher.id, &mut input);
    }
    received += h.recv_publishes(&mut sub).len();
    assert_eq!(received, 6000);
    assert_eq!(h.broker.stats().dropped_slow_consumer, 0);
}

#[test]
fn a_subscriber_that_never_reads_releases_the_publisher_after_max_ack_delay() {
    let mut h = small_output();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    let mut input = burst("t", 20);
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(paused(&mut h, &publisher));
    h.secs(4);
    assert!(paused(&mut h, &publisher));
    h.secs(1);
    assert!(!paused(&mut h, &publisher), "released after max_ack_delay (5 s)");
    assert_eq!(h.broker.stats().slow_consumers, 1);
    // The rest of the burst goes on, and the slow subscriber's share is dropped.
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(input.is_empty());
    assert!(!paused(&mut h, &publisher));
    assert!(h.broker.stats().dropped_slow_consumer > 0);
    drop(sub);
}

#[test]
fn a_paused_publisher_is_not_dropped_by_its_keep_alive() {
    let mut h = small_output();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let mut c = connect_packet(V5, "pub", true);
    c.keep_alive = 2;
    let (mut publisher, _) = h.connect_with(c);
    let mut input = burst("t", 20);
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(paused(&mut h, &publisher));
    h.secs(4); // past 1.5 x keep-alive, within max_ack_delay
    assert!(!h.is_closed(&mut publisher));
}

#[test]
fn the_subscriber_leaving_resumes_the_publisher() {
    let mut h = small_output();
    let mut sub = h.connect(V5, "sub", true);
    h.subscribe(&mut sub, "t", QoS::AtMostOnce);
    let publisher = h.connect(V5, "pub", true);
    let mut input = burst("t", 20);
    let now = h.now;
    h.broker.handle_bytes(now, publisher.id, &mut input);
    assert!(paused(&mut h, &publisher));
    h.drop_peer(&sub);
    assert!(!paused(&mut h, &publisher));
}
