//! The embedded durable store behind ternmq's broker persistence, on redb.
//!
//! [`Store`] applies the broker core's ordered log of [`PersistOp`]s to a redb database, many
//! operations per transaction (group commit), and loads the [`Snapshot`] the core restores from
//! after a restart or a crash. [`Writer`] runs a store on a thread of its own with a queue, so
//! that the broker's event loop never waits on the disk: the broker learns what is on disk
//! through a callback (which the server turns into `handle_persisted`).
//!
//! Layout: one file, `ternmq.redb`, in the data directory. Tables hold the state (sessions,
//! subscriptions, deliveries, QoS 2 identifiers, retained messages), not the log, so space is
//! reclaimed as deliveries complete and sessions end. Messages are stored as MQTT 5 PUBLISH
//! packets, encoded and decoded by the same codec as the wire. Each row carries the wall-clock
//! millisecond it was written, from which [`Replay`] computes what time is left on restore.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use ternmq_core::broker::persist::{
    PersistOp, PersistSeq, Persistence, Replay, Snapshot, StoredDelivery, StoredMessage,
};
use ternmq_core::broker::{Broker, BrokerConfig};
use ternmq_core::codec::{
    MqttStr, PacketId, ProtocolVersion, QoS, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use ternmq_core::time::Instant;
use ternmq_core::topic::TopicFilter;

pub use ternmq_core as core;

mod read_only;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "ternmq.redb";
/// The layout version this build reads and writes. Version 2 stamps rows in milliseconds
/// (version 1: seconds, which let a restart extend an expiry by up to a second); a version 1
/// file is converted when it is opened.
pub const FORMAT_VERSION: u64 = 2;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("sessions");
const SUBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("subscriptions");
const DELIVERIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("deliveries");
const INCOMING: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("incoming_qos2");
const RETAINED: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("retained");

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is fsynced before the broker is told (acknowledgements wait for it).
    #[default]
    Sync,
    /// Commits are written at once and fsynced every this often; a crash may lose that window.
    Periodic(StdDuration),
    /// Commits are written but never forced to disk; the operating system decides.
    None,
}

/// Where a server keeps its durable state, and how.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data directory (the file is [`FILE_NAME`] in it).
    pub dir: PathBuf,
    /// How commits reach the disk. `Sync` also makes the broker withhold each PUBACK/PUBREC
    /// until what the publish changed is on disk.
    pub durability: Durability,
}

impl StoreConfig {
    /// Opens the store in [`dir`](Self::dir), as an I/O error for a server's `bind`.
    pub fn open(&self) -> std::io::Result<Store> {
        Store::open(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// The broker persistence mode this durability calls for.
    pub fn persistence(&self) -> ternmq_core::broker::persist::Persistence {
        match self.durability {
            Durability::Sync => ternmq_core::broker::persist::Persistence::Durable,
            _ => ternmq_core::broker::persist::Persistence::Log,
        }
    }
}

/// A store that cannot be opened, read or written. Names the file and what to do.
#[derive(Debug)]
pub struct StoreError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The message of a [`StoreError`] for a store another process holds open (a running broker):
/// the advice is to stop it, not to check or repair a store that is fine.
const HELD: &str = "another process holds the store open (a running broker?); stop it first, \
                    or give this one another --data-dir";

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message == HELD {
            return write!(f, "persistent store {}: {HELD}", self.path.display());
        }
        write!(
            f,
            "persistent store {}: {} (run `ternmq store check` or `ternmq store repair` on it, \
             `ternmq store reset --yes` to set it aside and start empty, or use another \
             --data-dir)",
            self.path.display(),
            self.message
        )
    }
}

impl std::error::Error for StoreError {}

/// Why [`Store::open_read_only`] could not open a store.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenReadOnlyError {
    /// There is no store at this path (no file, or an empty one).
    Missing(PathBuf),
    /// Another process holds the store open: a running broker.
    Held(PathBuf),
    /// The file is there but cannot be read as a store.
    Store(StoreError),
}

impl fmt::Display for OpenReadOnlyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(path) => write!(f, "no store at {}", path.display()),
            Self::Held(path) => write!(
                f,
                "{}: a running broker holds the store; stop it first (the broker must be the \
                 only one to open it)",
                path.display()
            ),
            Self::Store(e) => write!(f, "persistent store {}: {}", e.path.display(), e.message),
        }
    }
}

impl std::error::Error for OpenReadOnlyError {}

/// Milliseconds since the Unix epoch, the store's wall clock.
pub fn wall_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The durable store. See the [crate documentation](crate).
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        let path = dir.join(FILE_NAME);
        let err = |m: String| StoreError { path: path.clone(), message: m };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create the directory: {e}")))?;
        // redb asserts on some damaged files instead of returning an error: a panic while
        // opening is reported as the damage it is.
        let opened = std::panic::catch_unwind(|| Database::create(&path));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(err(HELD.into())),
            Ok(Err(e)) => return Err(err(format!("cannot open: {e}"))),
            Err(_) => return Err(err("damaged: the file is not a complete redb database".into())),
        };
        Store::prepare(db, path)
    }

    /// Opens the store in directory `dir` to read it, as `ternmq store check` does, and never
    /// writes to it or creates anything: what opening it would change (a repair after a crash,
    /// a layout conversion) is done in memory only.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store, OpenReadOnlyError> {
        let path = dir.as_ref().join(FILE_NAME);
        let err =
            |m: String| OpenReadOnlyError::Store(StoreError { path: path.clone(), message: m });
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenReadOnlyError::Missing(path));
            }
            Err(e) => return Err(err(format!("cannot open: {e}"))),
        };
        if file.metadata().map_err(|e| err(format!("cannot open: {e}")))?.len() == 0 {
            return Err(OpenReadOnlyError::Missing(path));
        }
        let backend = match read_only::ReadOnlyBackend::new(file) {
            Ok(b) => b,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenReadOnlyError::Held(path));
            }
            Err(e) => return Err(err(format!("cannot open: {e}"))),
        };
        let opened = std::panic::catch_unwind(|| Database::builder().create_with_backend(backend));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(err(format!("cannot open: {e}"))),
            Err(_) => return Err(err("damaged: the file is not a complete redb database".into())),
        };
        Store::prepare(db, path.clone()).map_err(OpenReadOnlyError::Store)
    }

    /// Checks the layout version of an opened database (converting an older one) and makes
    /// sure every table exists.
    fn prepare(db: Database, path: PathBuf) -> Result<Store, StoreError> {
        let err = |m: String| StoreError { path: path.clone(), message: m };
        let store = Store { db, path: path.clone() };
        let tx = store.db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(e.to_string()))?;
            let version = meta.get("format").map_err(|e| err(e.to_string()))?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(|e| err(e.to_string()))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(1) => {
                    // Version 1 stamped rows in seconds: convert them, in this transaction.
                    let last = meta.get("last_write").map_err(|e| err(e.to_string()))?;
                    if let Some(last) = last.map(|v| v.value()) {
                        meta.insert("last_write", last.saturating_mul(1000))
                            .map_err(|e| err(e.to_string()))?;
                    }
                    meta.insert("format", FORMAT_VERSION).map_err(|e| err(e.to_string()))?;
                    upgrade_from_1(&tx)
                        .map_err(|e| err(format!("cannot convert from version 1: {e}")))?;
                }
                Some(v) => {
                    return Err(err(format!(
                        "written in layout version {v}, this build reads version \
                         {FORMAT_VERSION}"
                    )));
                }
            }
            for t in [SESSIONS, SUBS, DELIVERIES, INCOMING, RETAINED] {
                tx.open_table(t).map_err(|e| err(e.to_string()))?;
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(store)
    }

    /// Checks the file's integrity and repairs what redb can; `Ok(false)` if it had to.
    pub fn check_integrity(&mut self) -> Result<bool, StoreError> {
        let path = self.path.clone();
        self.db.check_integrity().map_err(|e| StoreError { path, message: e.to_string() })
    }

    /// Rows per table: sessions, subscriptions, deliveries, QoS 2 ids, retained messages.
    pub fn counts(&self) -> Result<[u64; 5], StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out = [0; 5];
        for (i, t) in [SESSIONS, SUBS, DELIVERIES, INCOMING, RETAINED].into_iter().enumerate() {
            let table = tx.open_table(t).map_err(|e| self.err(e))?;
            out[i] = table.len().map_err(|e| self.err(e))?;
        }
        Ok(out)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl fmt::Display) -> StoreError {
        StoreError { path: self.path.clone(), message: e.to_string() }
    }

    /// Applies `ops`, in order, in one transaction, stamped with wall-clock millisecond `wall`;
    /// `fsync` forces it to disk before returning.
    pub fn apply(&self, ops: &[PersistOp], wall: u64, fsync: bool) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(if fsync {
            redb::Durability::Immediate
        } else {
            redb::Durability::Eventual
        });
        {
            let mut t = Tables {
                meta: tx.open_table(META).map_err(|e| self.err(e))?,
                sessions: tx.open_table(SESSIONS).map_err(|e| self.err(e))?,
                subs: tx.open_table(SUBS).map_err(|e| self.err(e))?,
                deliveries: tx.open_table(DELIVERIES).map_err(|e| self.err(e))?,
                incoming: tx.open_table(INCOMING).map_err(|e| self.err(e))?,
                retained: tx.open_table(RETAINED).map_err(|e| self.err(e))?,
            };
            for op in ops {
                t.apply(op, wall).map_err(|e| self.err(e))?;
            }
            t.meta.insert("last_write", wall).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The state to restart from at wall-clock millisecond `now`.
    pub fn load(&self, now: u64) -> Result<Snapshot, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut replay = Replay::new();
        let bad = |what: &str| self.err(format!("unreadable {what} record"));
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        if let Some(v) = meta.get("last_write").map_err(|e| self.err(e))? {
            replay.note_time(v.value());
        }
        let sessions = tx.open_table(SESSIONS).map_err(|e| self.err(e))?;
        for row in sessions.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let client_id = MqttStr::from_bytes(bytes::Bytes::copy_from_slice(k.value()))
                .map_err(|_| bad("session"))?;
            let mut r = Reader(v.value());
            let protocol =
                version(r.u8().ok_or_else(|| bad("session"))?).ok_or_else(|| bad("session"))?;
            let expiry = r.u32().ok_or_else(|| bad("session"))?;
            let disconnected = r.u64().ok_or_else(|| bad("session"))?;
            replay.apply(PersistOp::Session { client_id: client_id.clone(), protocol, expiry }, 0);
            if disconnected != u64::MAX {
                replay
                    .apply(PersistOp::Disconnected { client_id: client_id.clone() }, disconnected);
            }
            if r.u8() == Some(1) {
                let at = r.u64().ok_or_else(|| bad("will"))?;
                let delay = r.u32().ok_or_else(|| bad("will"))?;
                let message = StoredMessage::decode(r.rest()).ok_or_else(|| bad("will"))?;
                replay.apply(PersistOp::Will { client_id, message, delay }, at);
            }
        }
        let subs = tx.open_table(SUBS).map_err(|e| self.err(e))?;
        for row in subs.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (client_id, rest) = split_key(k.value()).ok_or_else(|| bad("subscription"))?;
            let filter = std::str::from_utf8(rest)
                .ok()
                .and_then(|f| TopicFilter::new(f).ok())
                .ok_or_else(|| bad("subscription"))?;
            let mut r = Reader(v.value());
            let (q, flags, rh, id) = (r.u8(), r.u8(), r.u8(), r.u32());
            let (Some(q), Some(flags), Some(rh), Some(id)) = (q, flags, rh, id) else {
                return Err(bad("subscription"));
            };
            let options = SubscriptionOptions {
                qos: qos(q).ok_or_else(|| bad("subscription"))?,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling: match rh {
                    1 => RetainHandling::SendOnNewSubscribe,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendOnSubscribe,
                },
            };
            let subscription_id = SubscriptionId::new(id);
            replay.apply(PersistOp::Subscribed { client_id, filter, options, subscription_id }, 0);
        }
        let deliveries = tx.open_table(DELIVERIES).map_err(|e| self.err(e))?;
        for row in deliveries.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (client_id, rest) = split_key(k.value()).ok_or_else(|| bad("delivery"))?;
            let key = Reader(rest).u64().ok_or_else(|| bad("delivery"))?;
            let mut r = Reader(v.value());
            let at = r.u64().ok_or_else(|| bad("delivery"))?;
            let packet_id = r.u16().ok_or_else(|| bad("delivery"))?;
            let received = r.u8().ok_or_else(|| bad("delivery"))? == 1;
            let dq = qos(r.u8().ok_or_else(|| bad("delivery"))?).ok_or_else(|| bad("delivery"))?;
            let retain = r.u8().ok_or_else(|| bad("delivery"))? == 1;
            let n = r.u8().ok_or_else(|| bad("delivery"))?;
            let mut subscription_ids = Vec::new();
            for _ in 0..n {
                let id = r.u32().ok_or_else(|| bad("delivery"))?;
                subscription_ids.extend(SubscriptionId::new(id));
            }
            let message = StoredMessage::decode(r.rest()).ok_or_else(|| bad("delivery"))?;
            let delivery = StoredDelivery { message, qos: dq, retain, subscription_ids };
            replay.apply(PersistOp::Queued { client_id: client_id.clone(), key, delivery }, at);
            if let Some(packet_id) = PacketId::new(packet_id) {
                replay.apply(PersistOp::Sent { client_id: client_id.clone(), key, packet_id }, at);
            }
            if received {
                replay.apply(PersistOp::Received { client_id, key }, at);
            }
        }
        let incoming = tx.open_table(INCOMING).map_err(|e| self.err(e))?;
        for row in incoming.iter().map_err(|e| self.err(e))? {
            let (k, _) = row.map_err(|e| self.err(e))?;
            let (client_id, rest) = split_key(k.value()).ok_or_else(|| bad("incoming"))?;
            let id = Reader(rest).u16().and_then(PacketId::new).ok_or_else(|| bad("incoming"))?;
            replay.apply(PersistOp::IncomingQos2 { client_id, packet_id: id }, 0);
        }
        let retained = tx.open_table(RETAINED).map_err(|e| self.err(e))?;
        for row in retained.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            let mut r = Reader(v.value());
            let at = r.u64().ok_or_else(|| bad("retained"))?;
            let message = StoredMessage::decode(r.rest()).ok_or_else(|| bad("retained"))?;
            replay.apply(PersistOp::Retained { message }, at);
        }
        Ok(replay.snapshot(now))
    }
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

struct Tables<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    sessions: Table<'t>,
    subs: Table<'t>,
    deliveries: Table<'t>,
    incoming: Table<'t>,
    retained: Table<'t>,
}

impl Tables<'_> {
    fn has_session(&self, client_id: &MqttStr) -> Result<bool, redb::StorageError> {
        Ok(self.sessions.get(client_id.as_bytes())?.is_some())
    }

    fn apply(&mut self, op: &PersistOp, wall: u64) -> Result<(), redb::StorageError> {
        // What belongs to a session is kept only while the session is.
        match op {
            PersistOp::Subscribed { client_id, .. }
            | PersistOp::Queued { client_id, .. }
            | PersistOp::IncomingQos2 { client_id, .. }
                if !self.has_session(client_id)? =>
            {
                return Ok(());
            }
            _ => {}
        }
        match op {
            PersistOp::Session { client_id, protocol, expiry } => {
                let old = owned(&self.sessions, client_id.as_bytes())?;
                let mut v = vec![*protocol as u8];
                v.extend_from_slice(&expiry.to_be_bytes());
                v.extend_from_slice(&u64::MAX.to_be_bytes()); // connected
                // Keep the will part of an existing row.
                match old.as_deref().and_then(|o| o.get(13..)) {
                    Some(will) if !will.is_empty() => v.extend_from_slice(will),
                    _ => v.push(0),
                }
                self.sessions.insert(client_id.as_bytes(), v.as_slice())?;
            }
            PersistOp::Disconnected { client_id } => {
                if let Some(mut v) = owned(&self.sessions, client_id.as_bytes())?
                    && v.len() >= 13
                {
                    v[5..13].copy_from_slice(&wall.to_be_bytes());
                    self.sessions.insert(client_id.as_bytes(), v.as_slice())?;
                }
            }
            PersistOp::SessionDeleted { client_id } => {
                self.sessions.remove(client_id.as_bytes())?;
                let prefix = prefix(client_id);
                for t in [&mut self.subs, &mut self.deliveries, &mut self.incoming] {
                    let keys: Vec<Vec<u8>> = t
                        .range(prefix.as_slice()..)?
                        .map_while(|r| r.ok().map(|(k, _)| k.value().to_vec()))
                        .take_while(|k| k.starts_with(&prefix))
                        .collect();
                    for k in keys {
                        t.remove(k.as_slice())?;
                    }
                }
            }
            PersistOp::Subscribed { client_id, filter, options, subscription_id } => {
                let mut k = prefix(client_id);
                k.extend_from_slice(filter.as_str().as_bytes());
                let flags =
                    u8::from(options.no_local) | (u8::from(options.retain_as_published) << 1);
                let rh = match options.retain_handling {
                    RetainHandling::SendOnNewSubscribe => 1,
                    RetainHandling::DoNotSend => 2,
                    _ => 0,
                };
                let mut v = vec![options.qos as u8, flags, rh];
                v.extend_from_slice(&subscription_id.map_or(0, SubscriptionId::get).to_be_bytes());
                self.subs.insert(k.as_slice(), v.as_slice())?;
            }
            PersistOp::Unsubscribed { client_id, filter } => {
                let mut k = prefix(client_id);
                k.extend_from_slice(filter.as_str().as_bytes());
                self.subs.remove(k.as_slice())?;
            }
            PersistOp::Queued { client_id, key, delivery } => {
                let mut v = wall.to_be_bytes().to_vec();
                v.extend_from_slice(&0u16.to_be_bytes());
                v.push(0);
                v.push(delivery.qos as u8);
                v.push(u8::from(delivery.retain));
                v.push(u8::try_from(delivery.subscription_ids.len().min(255)).unwrap_or(255));
                for id in delivery.subscription_ids.iter().take(255) {
                    v.extend_from_slice(&id.get().to_be_bytes());
                }
                delivery.message.encode(&mut v);
                self.deliveries.insert(delivery_key(client_id, *key).as_slice(), v.as_slice())?;
            }
            PersistOp::Sent { client_id, key, packet_id } => {
                let k = delivery_key(client_id, *key);
                if let Some(mut v) = owned(&self.deliveries, k.as_slice())?
                    && v.len() >= 10
                {
                    v[8..10].copy_from_slice(&packet_id.get().to_be_bytes());
                    self.deliveries.insert(k.as_slice(), v.as_slice())?;
                }
            }
            PersistOp::Received { client_id, key } => {
                let k = delivery_key(client_id, *key);
                if let Some(mut v) = owned(&self.deliveries, k.as_slice())?
                    && v.len() >= 11
                {
                    v[10] = 1;
                    self.deliveries.insert(k.as_slice(), v.as_slice())?;
                }
            }
            PersistOp::Released { client_id, key } => {
                self.deliveries.remove(delivery_key(client_id, *key).as_slice())?;
            }
            PersistOp::IncomingQos2 { client_id, packet_id } => {
                let mut k = prefix(client_id);
                k.extend_from_slice(&packet_id.get().to_be_bytes());
                self.incoming.insert(k.as_slice(), [].as_slice())?;
            }
            PersistOp::IncomingQos2Released { client_id, packet_id } => {
                let mut k = prefix(client_id);
                k.extend_from_slice(&packet_id.get().to_be_bytes());
                self.incoming.remove(k.as_slice())?;
            }
            PersistOp::Will { client_id, message, delay } => {
                if let Some(old) = owned(&self.sessions, client_id.as_bytes())?
                    && old.len() >= 13
                {
                    let mut v = old[..13].to_vec();
                    v.push(1);
                    v.extend_from_slice(&wall.to_be_bytes());
                    v.extend_from_slice(&delay.to_be_bytes());
                    message.encode(&mut v);
                    self.sessions.insert(client_id.as_bytes(), v.as_slice())?;
                }
            }
            PersistOp::WillCleared { client_id } => {
                if let Some(old) = owned(&self.sessions, client_id.as_bytes())?
                    && old.len() >= 13
                {
                    let mut v = old[..13].to_vec();
                    v.push(0);
                    self.sessions.insert(client_id.as_bytes(), v.as_slice())?;
                }
            }
            PersistOp::Retained { message } => {
                let mut v = wall.to_be_bytes().to_vec();
                message.encode(&mut v);
                self.retained.insert(message.topic.as_bytes(), v.as_slice())?;
            }
            PersistOp::RetainedCleared { topic } => {
                self.retained.remove(topic.as_bytes())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Rewrites a version 1 store's wall-clock stamps, in seconds, as milliseconds: a session's
/// disconnection time and its will's, each delivery's and each retained message's.
fn upgrade_from_1(tx: &redb::WriteTransaction) -> Result<(), String> {
    let ms = |b: &mut [u8]| {
        if let Some(stamp) = b.get_mut(..8) {
            let secs = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
            if secs != u64::MAX {
                stamp.copy_from_slice(&secs.saturating_mul(1000).to_be_bytes());
            }
        }
    };
    // Sessions: protocol (1), expiry (4), disconnected at (8), will flag (1), then with a will
    // its time (8).
    rewrite_rows(tx, SESSIONS, |v| {
        if let Some(at) = v.get_mut(5..13) {
            ms(at);
        }
        if v.get(13) == Some(&1)
            && let Some(at) = v.get_mut(14..22)
        {
            ms(at);
        }
    })?;
    // Deliveries and retained messages start with their time.
    rewrite_rows(tx, DELIVERIES, |v| ms(v))?;
    rewrite_rows(tx, RETAINED, |v| ms(v))
}

/// Applies `f` to the value of every row of `table`.
fn rewrite_rows(
    tx: &redb::WriteTransaction,
    table: TableDefinition<'_, &[u8], &[u8]>,
    f: impl Fn(&mut [u8]),
) -> Result<(), String> {
    let e = |e: redb::Error| e.to_string();
    let mut t = tx.open_table(table).map_err(|x| e(x.into()))?;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = t
        .iter()
        .map_err(|x| e(x.into()))?
        .map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|x| e(x.into()))?;
    for (k, mut v) in rows {
        f(&mut v);
        t.insert(k.as_slice(), v.as_slice()).map_err(|x| e(x.into()))?;
    }
    Ok(())
}

/// The value at `k`, copied out (so that the table can be written next).
fn owned(t: &Table<'_>, k: &[u8]) -> Result<Option<Vec<u8>>, redb::StorageError> {
    Ok(t.get(k)?.map(|v| v.value().to_vec()))
}

/// A client id as a key prefix: its length first, so that no id is a prefix of another's.
fn prefix(client_id: &MqttStr) -> Vec<u8> {
    let b = client_id.as_bytes();
    let mut k = u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes().to_vec();
    k.extend_from_slice(b);
    k
}

fn delivery_key(client_id: &MqttStr, key: u64) -> Vec<u8> {
    let mut k = prefix(client_id);
    k.extend_from_slice(&key.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(MqttStr, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*k.first()?, *k.get(1)?]));
    let id = k.get(2..2 + len)?;
    let id = MqttStr::from_bytes(bytes::Bytes::copy_from_slice(id)).ok()?;
    Some((id, &k[2 + len..]))
}

fn version(b: u8) -> Option<ProtocolVersion> {
    [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5]
        .into_iter()
        .find(|v| *v as u8 == b)
}

fn qos(b: u8) -> Option<QoS> {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().find(|q| *q as u8 == b)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    fn rest(&self) -> &'a [u8] {
        self.0
    }
}

// ---------------------------------------------------------------- starting a server's broker

/// The broker a server starts with. With a store: restored from it (sessions, queues, retained
/// messages, at the wall clock's now), logging in the mode `durability` calls for, and a
/// [`Writer`] that reports commits to `stored` and a failure to `failed`. Without: a new broker
/// with persistence off.
pub fn start_broker(
    mut config: BrokerConfig,
    store: Option<(Store, &StoreConfig)>,
    stored: impl Fn(PersistSeq) + Send + 'static,
    failed: impl FnOnce(StoreError) + Send + 'static,
) -> std::io::Result<(Broker, Option<Writer>)> {
    let invalid = |e: ternmq_core::broker::ConfigError| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    };
    let Some((store, sc)) = store else {
        config.persistence = Persistence::Off;
        return Ok((Broker::new(config, Instant::ZERO).map_err(invalid)?, None));
    };
    config.persistence = sc.persistence();
    let snapshot = store.load(wall_clock()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let broker = Broker::restore(config, snapshot, Instant::ZERO).map_err(invalid)?;
    let writer = Writer::spawn(store, sc.durability, stored, failed)?;
    Ok((broker, Some(writer)))
}

// ---------------------------------------------------------------- the writer thread

/// A batch of operations for the [`Writer`]: the last one's sequence number is reported once
/// the batch is stored.
pub type Batch = Vec<(PersistSeq, PersistOp)>;

/// What the [`Writer`] thread did, for metrics: shared with whoever reads it, updated after
/// every commit.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    commits: AtomicU64,
    fsyncs: AtomicU64,
    /// Commits by latency, counted in the bucket of the first bound not below it.
    buckets: [AtomicU64; COMMIT_BUCKETS_US.len() + 1],
    latency_us: AtomicU64,
}

/// The upper bounds (in microseconds) of [`StoreMetrics`]' latency buckets; one more bucket
/// counts the slower commits.
pub const COMMIT_BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// A copy of [`StoreMetrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// Transactions committed.
    pub commits: u64,
    /// Of which forced to disk.
    pub fsyncs: u64,
    /// Commits per latency bucket (not cumulative), one per [`COMMIT_BUCKETS_US`] and one more.
    pub buckets: Vec<u64>,
    /// The commits' summed latency, in microseconds.
    pub latency_us: u64,
}

impl StoreMetrics {
    fn record(&self, took: std::time::Duration, fsync: bool) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket =
            COMMIT_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(COMMIT_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        if fsync {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn figures(&self) -> StoreFigures {
        StoreFigures {
            commits: self.commits.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            latency_us: self.latency_us.load(Ordering::Relaxed),
        }
    }
}

/// A [`Store`] on a thread of its own. Batches queue up while a commit is in progress and go
/// into the next commit together (group commit), so throughput grows with load.
#[derive(Debug)]
pub struct Writer {
    /// Each batch with the wall clock when it was queued.
    tx: Option<mpsc::Sender<(u64, Batch)>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<StoreMetrics>,
}

impl Writer {
    /// Starts the thread. `stored(seq)` is called (on that thread) after every commit with the
    /// last sequence number in it; `failed(error)` once if the store cannot be written, after
    /// which the writer stops.
    pub fn spawn(
        store: Store,
        durability: Durability,
        stored: impl Fn(PersistSeq) + Send + 'static,
        failed: impl FnOnce(StoreError) + Send + 'static,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<(u64, Batch)>();
        let metrics = Arc::new(StoreMetrics::default());
        let counted = Arc::clone(&metrics);
        let thread = std::thread::Builder::new().name("ternmq-store".into()).spawn(move || {
            let mut last_sync = std::time::Instant::now();
            let mut ops = Vec::new();
            while let Ok(first) = rx.recv() {
                ops.clear();
                let mut last = None;
                // Durations in operations count from when the broker logged them: stamp the
                // commit with the earliest queueing time in it, so that a restart never
                // extends an expiry by the time a batch waited (it may shorten it by that).
                let mut wall = u64::MAX;
                for (queued, batch) in
                    std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()))
                {
                    wall = wall.min(queued);
                    for (seq, op) in batch {
                        last = Some(seq);
                        ops.push(op);
                    }
                }
                let fsync = match durability {
                    Durability::Sync => true,
                    Durability::Periodic(every) => last_sync.elapsed() >= every,
                    _ => false,
                };
                if fsync {
                    last_sync = std::time::Instant::now();
                }
                let started = std::time::Instant::now();
                if let Err(e) = store.apply(&ops, wall, fsync) {
                    failed(e);
                    return;
                }
                counted.record(started.elapsed(), fsync);
                if let Some(seq) = last {
                    stored(seq);
                }
            }
            // Closing: one last forced commit so that nothing written is left unsynced.
            let _ = store.apply(&[], wall_clock(), true);
        })?;
        Ok(Writer { tx: Some(tx), thread: Some(thread), metrics })
    }

    /// What the thread has done so far, updated as it commits.
    pub fn metrics(&self) -> Arc<StoreMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Queues a batch, stamped with the wall clock now: call it as soon as the broker has
    /// drained the operations.
    pub fn send(&self, batch: Batch) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((wall_clock(), batch));
        }
    }

    /// Writes what is queued and stops the thread.
    pub fn close(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
