//! Memory per idle connection and per disconnected session, counted by a global allocator.
//! Prints the figures (run with `--nocapture`) and holds the core to its budget.
#![allow(clippy::unwrap_used)]

mod broker_harness;

use broker_harness::*;
use bytes::BytesMut;
use ternmq_core::broker::{Broker, BrokerConfig, PeerInfo};
use ternmq_core::codec::Encoder;
use ternmq_core::time::Instant;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn live_bytes() -> isize {
    dhat::HeapStats::get().curr_bytes as isize
}

const N: usize = 20_000;
const READ_BUFFER: usize = 4096;

/// Bytes the broker holds per client after `N` clients connected (and, with `drop`, left).
fn per_client(clean: bool, leave: bool) -> isize {
    let mut config = BrokerConfig::default();
    config.max_connections = N;
    let now = Instant::from_secs(1);
    let mut broker = Broker::new(config, now).unwrap();
    let enc = Encoder::new(V311);
    // Connect packets are made up front so their buffers are not counted.
    let packets: Vec<BytesMut> = (0..N)
        .map(|i| {
            let mut c = connect_packet(V311, &format!("client-{i:08}"), clean);
            c.keep_alive = 60;
            let mut buf = BytesMut::new();
            enc.encode(&c.into(), &mut buf).unwrap();
            buf
        })
        .collect();
    let before = live_bytes();
    let mut ids = Vec::with_capacity(N);
    for packet in packets {
        let id = broker.accept(now, PeerInfo::default()).unwrap();
        // As an adapter would: the bytes arrive in a read buffer that is dropped (or reused)
        // afterwards, so anything the broker keeps that still points into it shows up here.
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        buf.extend_from_slice(&packet);
        broker.handle_bytes(now, id, &mut buf);
        std::mem::drop(buf);
        // Drained as an adapter's loop would, so queues do not grow across connections.
        while broker.poll_writable().is_some() {}
        while broker.poll_transmit(id, usize::MAX).is_some() {}
        while broker.poll_event().is_some() {}
        ids.push(id);
    }
    if leave {
        for id in ids.drain(..) {
            broker.handle_closed(now, id);
            while broker.poll_event().is_some() {}
        }
    }
    let after = live_bytes();
    let per = (after - before - (ids.capacity() * 8) as isize) / N as isize;
    std::hint::black_box(&broker);
    per
}

#[test]
fn idle_connection_and_session_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let connected = per_client(true, false);
    let persistent = per_client(false, false);
    let offline = per_client(false, true);
    println!("bytes per idle connection (clean session): {connected}");
    println!("bytes per idle connection with a persistent session: {persistent}");
    println!("bytes per disconnected persistent session: {offline}");
    assert!(connected < 600, "{connected} bytes per idle connection");
    assert!(persistent < 600, "{persistent} bytes per idle connection");
    assert!(offline < 420, "{offline} bytes per offline session");
}
