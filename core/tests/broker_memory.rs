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

fn live_blocks() -> isize {
    dhat::HeapStats::get().curr_blocks as isize
}

const N: usize = 20_000;
const READ_BUFFER: usize = 4096;

fn config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.max_connections = N;
    config
}

/// `N` CONNECT packets (keep-alive 60 s), each in a buffer of its own.
fn connect_packets(clean: bool) -> Vec<BytesMut> {
    let enc = Encoder::new(V311);
    (0..N)
        .map(|i| {
            let mut c = connect_packet(V311, &format!("client-{i:08}"), clean);
            c.keep_alive = 60;
            let mut buf = BytesMut::new();
            enc.encode(&c.into(), &mut buf).unwrap();
            buf
        })
        .collect()
}

/// Bytes the broker holds per client after `N` clients connected (and, with `drop`, left).
fn per_client(clean: bool, leave: bool) -> isize {
    let now = Instant::from_secs(1);
    let mut broker = Broker::new(config(), now).unwrap();
    // Connect packets are made up front so their buffers are not counted.
    let packets = connect_packets(clean);
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

/// Bytes a server's driver (the broker and each connection's I/O record) holds per idle
/// client after `N` clients connected and their CONNACKs were written.
fn per_driver_client() -> isize {
    use ternmq_core::broker::driver::{Command, Driver};
    let now = Instant::from_secs(1);
    let mut driver: Driver<u32> = Driver::new(Broker::new(config(), now).unwrap());
    let packets = connect_packets(true);
    let before = live_bytes();
    let blocks = live_blocks();
    for (i, packet) in packets.into_iter().enumerate() {
        let id = driver.handle_accepted(now, PeerInfo::default(), i as u32).unwrap();
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        buf.extend_from_slice(&packet);
        driver.handle_bytes(now, id, buf);
        while let Some(command) = driver.poll_command() {
            if let Command::Write(_, chunks) = command {
                let n = chunks.iter().map(|c| c.len()).sum();
                driver.handle_written(now, id, n);
            }
        }
        while driver.poll_event().is_some() {}
    }
    let per = (live_bytes() - before) / N as isize;
    println!(
        "heap blocks per idle connection with a server's driver: {}",
        (live_blocks() - blocks) / N as isize
    );
    std::hint::black_box(&driver);
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
    let driven = per_driver_client();
    println!("bytes per idle connection with a server's driver: {driven}");
    assert!(driven < 630, "{driven} bytes per idle connection with its driver");
    assert!(connected < 520, "{connected} bytes per idle connection");
    assert!(persistent < 520, "{persistent} bytes per idle connection");
    assert!(offline < 380, "{offline} bytes per offline session");
}
