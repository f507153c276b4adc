//! The redb store against the reference model: the same operations applied to `Store` and to
//! `Replay` give the same snapshot, across reopening the file; a damaged file is an error,
//! never a panic.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use bytes::Bytes;
use ternmq_store::core::broker::persist::{PersistOp, Replay, StoredDelivery, StoredMessage};
use ternmq_store::core::codec::{
    MqttStr, PacketId, ProtocolVersion, PublishProperties, QoS, SubscriptionId, SubscriptionOptions,
};
use ternmq_store::core::time::Duration;
use ternmq_store::core::topic::{TopicFilter, TopicName};
use ternmq_store::{FILE_NAME, Store};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ternmq-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn message(rng: &mut Rng) -> StoredMessage {
    let mut properties = PublishProperties::default();
    if rng.below(2) == 0 {
        properties.content_type = Some(MqttStr::new("application/json").unwrap());
        properties.user_properties.push((MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap()));
    }
    StoredMessage {
        topic: TopicName::new(&format!("t/{}", rng.below(4))).unwrap(),
        payload: Bytes::from(format!("payload {}", rng.next())),
        qos: [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][rng.below(3) as usize],
        retain: rng.below(2) == 0,
        properties,
        expires_in: (rng.below(2) == 0).then(|| Duration::from_secs(rng.below(200))),
    }
}

fn random_op(rng: &mut Rng, next_key: &mut u64) -> PersistOp {
    let client_id = MqttStr::new(&format!("client-{}", rng.below(4))).unwrap();
    let key = 1 + rng.below((*next_key).max(1));
    match rng.below(14) {
        0 | 1 => PersistOp::Session {
            client_id,
            protocol: [ProtocolVersion::V3_1_1, ProtocolVersion::V5][rng.below(2) as usize],
            expiry: [60, 3600, u32::MAX][rng.below(3) as usize],
        },
        2 => PersistOp::Disconnected { client_id },
        3 => PersistOp::SessionDeleted { client_id },
        4 => PersistOp::Subscribed {
            client_id,
            filter: TopicFilter::new(["t/#", "t/+", "$share/g/t/1", "t/2"][rng.below(4) as usize])
                .unwrap(),
            options: SubscriptionOptions {
                no_local: rng.below(2) == 0,
                ..SubscriptionOptions::qos(QoS::AtLeastOnce)
            },
            subscription_id: SubscriptionId::new(rng.below(3) as u32),
        },
        5 => PersistOp::Unsubscribed { client_id, filter: TopicFilter::new("t/#").unwrap() },
        6 | 7 => {
            *next_key += 1;
            PersistOp::Queued {
                client_id,
                key: *next_key,
                delivery: StoredDelivery {
                    message: message(rng),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![SubscriptionId::new(7).unwrap()],
                },
            }
        }
        8 => PersistOp::Sent {
            client_id,
            key,
            packet_id: PacketId::new(1 + rng.below(9) as u16).unwrap(),
        },
        9 => PersistOp::Received { client_id, key },
        10 => PersistOp::Released { client_id, key },
        11 => PersistOp::IncomingQos2 {
            client_id,
            packet_id: PacketId::new(1 + rng.below(5) as u16).unwrap(),
        },
        12 => match rng.below(3) {
            0 => PersistOp::Will { client_id, message: message(rng), delay: rng.below(100) as u32 },
            1 => PersistOp::WillCleared { client_id },
            _ => PersistOp::IncomingQos2Released {
                client_id,
                packet_id: PacketId::new(1 + rng.below(5) as u16).unwrap(),
            },
        },
        _ => {
            let mut m = message(rng);
            if rng.below(3) == 0 {
                PersistOp::RetainedCleared { topic: m.topic }
            } else {
                m.retain = true;
                PersistOp::Retained { message: m }
            }
        }
    }
}

#[test]
fn store_and_reference_model_agree_on_every_snapshot_across_reopening() {
    for seed in 1..=8u64 {
        let dir = temp_dir(&format!("agree-{seed}"));
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut model = Replay::new();
        let mut next_key = 0;
        let mut wall = 1_000_000;
        let mut store = Store::open(&dir).unwrap();
        for round in 0..40 {
            wall += rng.below(30);
            let ops: Vec<PersistOp> =
                (0..1 + rng.below(20)).map(|_| random_op(&mut rng, &mut next_key)).collect();
            store.apply(&ops, wall, round % 3 == 0).unwrap();
            for op in ops {
                model.apply(op, wall);
            }
            if round % 10 == 9 {
                drop(store); // as a restart would
                store = Store::open(&dir).unwrap();
            }
            let at = wall + rng.below(120);
            assert_eq!(store.load(at).unwrap(), model.snapshot(at), "seed {seed}, round {round}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_damaged_file_is_an_error_naming_the_file_never_a_panic() {
    let dir = temp_dir("damaged");
    let store = Store::open(&dir).unwrap();
    let mut rng = Rng(42);
    let mut key = 0;
    let ops: Vec<PersistOp> = (0..300).map(|_| random_op(&mut rng, &mut key)).collect();
    store.apply(&ops, 1_000, true).unwrap();
    drop(store);
    let file = dir.join(FILE_NAME);
    let bytes = std::fs::read(&file).unwrap();
    for cut in [0, 1, 100, 4096, bytes.len() / 2, bytes.len() - 1] {
        let d = temp_dir(&format!("cut-{cut}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE_NAME), &bytes[..cut]).unwrap();
        match Store::open(&d).and_then(|s| s.load(2_000)) {
            Ok(_) => {} // recovered to a committed state
            Err(e) => assert!(e.to_string().contains(FILE_NAME), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    // Garbage where the file should be.
    let d = temp_dir("garbage");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(FILE_NAME), vec![0x5a; 10_000]).unwrap();
    let e = Store::open(&d).expect_err("garbage is not a store");
    assert!(e.to_string().contains("ternmq store repair"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_steady_workload_keeps_the_file_size_bounded() {
    let dir = temp_dir("steady");
    let store = Store::open(&dir).unwrap();
    let client_id = MqttStr::new("steady").unwrap();
    let session = PersistOp::Session {
        client_id: client_id.clone(),
        protocol: ProtocolVersion::V5,
        expiry: 3600,
    };
    store.apply(&[session], 1, true).unwrap();
    let mut rng = Rng(7);
    let mut key = 0;
    let mut sizes = Vec::new();
    for round in 0..60u64 {
        // 500 messages queued; the 500 of the round before delivered and released: a backlog
        // that stays the same size while everything in it changes.
        let mut ops = Vec::new();
        for _ in 0..500 {
            key += 1;
            let delivery = StoredDelivery {
                message: message(&mut rng),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
            };
            ops.push(PersistOp::Queued { client_id: client_id.clone(), key, delivery });
            if key > 500 {
                ops.push(PersistOp::Released { client_id: client_id.clone(), key: key - 500 });
            }
        }
        store.apply(&ops, 10 + round, round % 2 == 0).unwrap();
        sizes.push(std::fs::metadata(dir.join(FILE_NAME)).unwrap().len());
    }
    let (early, late) = (sizes[10], sizes[59]);
    assert!(late <= early * 2, "the file grew from {early} to {late} bytes under a steady load");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_of_another_layout_version_is_refused_by_name() {
    let dir = temp_dir("version");
    drop(Store::open(&dir).unwrap());
    {
        let db = redb::Database::create(dir.join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("meta");
            let mut t = tx.open_table(meta).unwrap();
            t.insert("format", 99).unwrap();
        }
        tx.commit().unwrap();
    }
    let e = Store::open(&dir).expect_err("a future layout");
    let text = e.to_string();
    assert!(text.contains("layout version 99") && text.contains(FILE_NAME), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store written by a build of layout version 1 (rows stamped in seconds) is converted on
/// opening: it restores what the model, stamped in milliseconds, restores.
#[test]
fn a_version_1_store_is_converted_to_milliseconds() {
    let dir = temp_dir("v1");
    let mut rng = Rng(99);
    let mut key = 0;
    let ops: Vec<PersistOp> = (0..300).map(|_| random_op(&mut rng, &mut key)).collect();
    let mut model = Replay::new();
    {
        // Written as version 1 would: stamps in seconds.
        let store = Store::open(&dir).unwrap();
        for (i, chunk) in ops.chunks(30).enumerate() {
            let secs = 1_000 + i as u64;
            store.apply(chunk, secs, false).unwrap();
            for op in chunk {
                model.apply(op.clone(), secs * 1000);
            }
        }
        store.apply(&[], 1_009, true).unwrap();
        model.note_time(1_009_000);
    }
    {
        let db = redb::Database::create(dir.join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("meta");
            tx.open_table(meta).unwrap().insert("format", 1).unwrap();
        }
        tx.commit().unwrap();
    }
    let store = Store::open(&dir).unwrap();
    for now in [1_020_000, 1_070_500, 1_200_000] {
        assert_eq!(store.load(now).unwrap(), model.snapshot(now), "at {now} ms");
    }
}
