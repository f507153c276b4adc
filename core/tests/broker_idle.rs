//! An idle broker does no work per poll: counted, not timed.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::BytesMut;
use ternmq_core::broker::{Broker, BrokerConfig, PeerInfo};
use ternmq_core::codec::Encoder;
use ternmq_core::time::{Duration, Instant};

#[test]
fn hundred_thousand_idle_connections_cost_nothing_per_poll() {
    const N: usize = 100_000;
    let mut config = BrokerConfig::default();
    config.max_connections = N;
    let start = Instant::from_secs(1);
    let mut broker = Broker::new(config, start).unwrap();
    let enc = Encoder::new(V311);
    for i in 0..N {
        let id = broker.accept(start, PeerInfo::default()).unwrap();
        let mut c = connect_packet(V311, &format!("c{i}"), true);
        c.keep_alive = 60;
        let mut buf = BytesMut::new();
        enc.encode(&c.into(), &mut buf).unwrap();
        broker.handle_bytes(start, id, &mut buf);
        while broker.poll_transmit(id, usize::MAX).is_some() {}
    }
    while broker.poll_writable().is_some() {}
    while broker.poll_event().is_some() {}
    assert_eq!(broker.gauges().clients_connected, N);

    // The next deadline is the first keep-alive (1.5 x 60 s), and polling it is a peek.
    let first = broker.poll_timeout().unwrap();
    assert_eq!(first, start + Duration::from_secs(90));
    let before = broker.stats().timers_run;
    let mut now = start;
    for _ in 0..1000 {
        now += Duration::from_millis(50);
        broker.handle_timeout(now);
        assert_eq!(broker.poll_timeout(), Some(first));
        assert!(broker.poll_writable().is_none());
        assert!(broker.poll_event().is_none());
    }
    assert_eq!(broker.stats().timers_run, before, "no timer ran while none was due");
}

#[test]
fn a_deadline_at_the_end_of_time_is_disarmed_like_any_other() {
    // A connect timeout so long that the deadline saturates at the last instant: once CONNECT
    // completes (keep-alive 0: no deadline), no timer may be left behind, however many
    // connections come and go.
    let mut h = Harness::config(|c| c.connect_timeout = Duration::MAX);
    for i in 0..50 {
        let peer = h.connect(V311, &format!("c{i}"), true);
        drop(peer);
        assert_eq!(h.broker.poll_timeout(), None, "connection {i} left a timer");
    }
}
