//! How long a broker takes to restore a store holding many queued messages: writes
//! `TERNMQ_RESTORE_N` (default 1,000,000) queued 64-byte QoS 1 messages for 100 persistent
//! sessions, then times `Store::load` and `Broker::restore`.
//!
//! Run: `cargo bench -p ternmq-store --bench restore`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant as StdInstant;

use bytes::Bytes;
use ternmq_store::core::broker::persist::{PersistOp, StoredDelivery, StoredMessage};
use ternmq_store::core::broker::{Broker, BrokerConfig};
use ternmq_store::core::codec::{MqttStr, ProtocolVersion, PublishProperties, QoS};
use ternmq_store::core::time::Instant;
use ternmq_store::core::topic::TopicName;
use ternmq_store::{Store, wall_clock};

fn main() {
    let n: u64 =
        std::env::var("TERNMQ_RESTORE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("ternmq-restore-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).unwrap();
    let sessions = 100u64;
    let wall = wall_clock();
    let ids: Vec<MqttStr> =
        (0..sessions).map(|i| MqttStr::new(&format!("session-{i}")).unwrap()).collect();
    let ops: Vec<PersistOp> = ids
        .iter()
        .map(|id| PersistOp::Session {
            client_id: id.clone(),
            protocol: ProtocolVersion::V5,
            expiry: 86_400,
        })
        .collect();
    store.apply(&ops, wall, false).unwrap();
    let started = StdInstant::now();
    let message = StoredMessage {
        topic: TopicName::new("bench/restore").unwrap(),
        payload: Bytes::from(vec![0x5a; 64]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        expires_in: None,
    };
    let mut key = 0;
    while key < n {
        let batch: Vec<PersistOp> = (0..10_000.min(n - key))
            .map(|_| {
                key += 1;
                PersistOp::Queued {
                    client_id: ids[(key % sessions) as usize].clone(),
                    key,
                    delivery: StoredDelivery {
                        message: message.clone(),
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: Vec::new(),
                    },
                }
            })
            .collect();
        store.apply(&batch, wall, false).unwrap();
    }
    store.apply(&[], wall, true).unwrap();
    let wrote = started.elapsed();
    let size = std::fs::metadata(dir.join(ternmq_store::FILE_NAME)).map(|m| m.len()).unwrap_or(0);
    drop(store);

    let started = StdInstant::now();
    let store = Store::open(&dir).unwrap();
    let snapshot = store.load(wall_clock()).unwrap();
    let loaded = started.elapsed();
    let queued: usize = snapshot.sessions.iter().map(|s| s.deliveries.len()).sum();
    assert_eq!(queued as u64, n);
    let started = StdInstant::now();
    let mut config = BrokerConfig::default();
    config.max_queued_messages = usize::MAX;
    config.max_queued_bytes = usize::MAX;
    let broker = Broker::restore(config, snapshot, Instant::ZERO).unwrap();
    let restored = started.elapsed();
    assert_eq!(broker.gauges().queued as u64, n);
    println!(
        "{n} queued messages in {sessions} sessions: written in {:.1} s ({} MB file), loaded in \
         {:.2} s, restored into the broker in {:.2} s",
        wrote.as_secs_f64(),
        size / 1_000_000,
        loaded.as_secs_f64(),
        restored.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
