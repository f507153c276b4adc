//! Which session holds each client identifier.
//!
//! A hash table of session numbers: each entry is the 4-byte number of a session, and the
//! identifier it is found by is the session's own, so the index keeps no second copy of it.
//! The hash is seeded with [`BrokerConfig::seed`](super::BrokerConfig::seed): a server that
//! draws its seed at random makes colliding identifiers impossible to choose in advance.

use alloc::boxed::Box;
use core::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::session::Session;

pub(super) struct ClientIndex {
    table: HashTable<u32>,
    state: FixedState,
}

/// The client identifier of session `si`, if it exists.
fn client_id(sessions: &[Option<Box<Session>>], si: u32) -> Option<&[u8]> {
    Some(sessions.get(si as usize)?.as_ref()?.client_id.as_bytes())
}

impl ClientIndex {
    pub(super) fn new(seed: u64) -> Self {
        Self { table: HashTable::new(), state: FixedState::with_seed(seed) }
    }

    /// The session that holds `id`.
    pub(super) fn get(&self, id: &[u8], sessions: &[Option<Box<Session>>]) -> Option<u32> {
        let hash = self.state.hash_one(id);
        self.table.find(hash, |&si| client_id(sessions, si) == Some(id)).copied()
    }

    /// Records that session `si`, already in `sessions`, holds `id`, in place of any session
    /// recorded for it before.
    pub(super) fn insert(&mut self, id: &[u8], si: u32, sessions: &[Option<Box<Session>>]) {
        let state = &self.state;
        let hash = state.hash_one(id);
        if let Some(held) =
            self.table.find_mut(hash, |&other| client_id(sessions, other) == Some(id))
        {
            *held = si;
            return;
        }
        // Growing the table hashes every entry again, by its session's identifier.
        self.table.insert_unique(hash, si, |&other| {
            client_id(sessions, other).map_or(0, |id| state.hash_one(id))
        });
    }

    /// Forgets that session `si` holds `id` (the session itself may already be gone).
    pub(super) fn remove(&mut self, id: &[u8], si: u32) {
        let hash = self.state.hash_one(id);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == si) {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::vec::Vec;

    use super::*;
    use crate::codec::{MqttStr, ProtocolVersion};

    fn session(id: &str) -> Option<Box<Session>> {
        let id = MqttStr::new(id).ok()?;
        Some(Box::new(Session::new(0, id, ProtocolVersion::V5)))
    }

    #[test]
    fn finds_every_id_through_growth_and_removal() {
        let mut sessions: Vec<Option<Box<Session>>> = Vec::new();
        let mut index = ClientIndex::new(42);
        for i in 0..5000u32 {
            sessions.push(session(&format!("c{i}")));
            index.insert(format!("c{i}").as_bytes(), i, &sessions);
        }
        // Every other session ends: taken out first, as the broker does, then forgotten.
        for i in (0..5000u32).step_by(2) {
            let gone = sessions[i as usize].take();
            assert!(gone.is_some());
            index.remove(format!("c{i}").as_bytes(), i);
        }
        // Their slots are reused by new ids, and the table grows again.
        for i in (0..5000u32).step_by(2) {
            sessions[i as usize] = session(&format!("n{i}"));
            index.insert(format!("n{i}").as_bytes(), i, &sessions);
        }
        for i in 0..5000u32 {
            let (old, new) = (format!("c{i}"), format!("n{i}"));
            if i % 2 == 0 {
                assert_eq!(index.get(old.as_bytes(), &sessions), None, "{old}");
                assert_eq!(index.get(new.as_bytes(), &sessions), Some(i), "{new}");
            } else {
                assert_eq!(index.get(old.as_bytes(), &sessions), Some(i), "{old}");
                assert_eq!(index.get(new.as_bytes(), &sessions), None, "{new}");
            }
        }
    }

    #[test]
    fn a_second_session_for_an_id_takes_its_place() {
        // As a map would: two sessions restored under one id leave the later one found.
        let sessions = [session("same"), session("same")];
        let mut index = ClientIndex::new(7);
        index.insert(b"same", 0, &sessions);
        index.insert(b"same", 1, &sessions);
        assert_eq!(index.get(b"same", &sessions), Some(1));
        index.remove(b"same", 1);
        assert_eq!(index.get(b"same", &sessions), None);
    }
}
