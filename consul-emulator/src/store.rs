//! The emulated state machine: one global index, KV entries, sessions and lock-delays.
//!
//! Every write takes the next global index, as a Raft log entry would in Consul; a
//! transaction is one entry, so all its writes share one index.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// One stored KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) lock_index: u64,
    pub(crate) flags: u64,
    pub(crate) value: Vec<u8>,
    pub(crate) session: Option<String>,
}

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Release,
    Delete,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    pub(crate) create_index: u64,
    /// When the reaper invalidates it: somewhere in `[ttl, 2×ttl]` after the last renew,
    /// because Consul only promises never to expire a session early.
    pub(crate) reap_at: Option<Instant>,
}

/// Why a store operation was refused (not a CAS failure, which is a plain `false`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("invalid session \"{0}\"")]
    InvalidSession(String),
}

enum Undo {
    Kv(String, Option<Entry>),
    Tombstone(String, Option<u64>),
}

/// The whole emulated cluster state.
pub(crate) struct Store {
    index: u64,
    kv_index: u64,
    kv: BTreeMap<String, Entry>,
    /// Index of the delete of each deleted key, so a prefix's index never goes backwards
    /// when its newest entry is deleted (as Consul's tombstones do until they are reaped).
    tombstones: BTreeMap<String, u64>,
    sessions: HashMap<String, Session>,
    lock_delays: HashMap<String, Instant>,
    journal: Option<Vec<Undo>>,
    /// Newest tombstone index per prefix that blocking queries asked about, so a query on
    /// a prefix with many deleted keys does not rescan them on every write.
    tomb_max: std::cell::RefCell<HashMap<String, u64>>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            index: 1,
            kv_index: 1,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: HashMap::new(),
            lock_delays: HashMap::new(),
            journal: None,
            tomb_max: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// The global index (the last one allocated).
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    // ----- KV reads -----

    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.kv.get(key)
    }

    pub(crate) fn list(&self, prefix: &str) -> Vec<(&str, &Entry)> {
        self.kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.as_str(), e))
            .collect()
    }

    /// The index a blocking query on one key reports.
    pub(crate) fn key_index(&self, key: &str) -> u64 {
        match self.kv.get(key) {
            Some(e) => e.modify_index,
            None => self.kv_index,
        }
    }

    /// The index a blocking query on a prefix reports.
    pub(crate) fn prefix_index(&self, prefix: &str) -> u64 {
        let live = self.list(prefix).iter().map(|(_, e)| e.modify_index).max();
        let dead = self.tombstone_max(prefix);
        match live.max(dead) {
            Some(i) if i > 0 => i,
            _ => self.kv_index,
        }
    }

    fn tombstone_max(&self, prefix: &str) -> Option<u64> {
        if let Some(max) = self.tomb_max.borrow().get(prefix) {
            return Some(*max).filter(|m| *m > 0);
        }
        let max = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        self.tomb_max.borrow_mut().insert(prefix.to_string(), max);
        Some(max).filter(|m| *m > 0)
    }

    // ----- KV writes (journaled inside transactions) -----

    fn write(&mut self, key: &str, entry: Option<Entry>, idx: u64) {
        let old = match &entry {
            Some(e) => self.kv.insert(key.to_string(), e.clone()),
            None => self.kv.remove(key),
        };
        let old_tomb = match entry {
            Some(_) => self.tombstones.remove(key),
            None if old.is_some() => {
                for (prefix, max) in self.tomb_max.get_mut().iter_mut() {
                    if key.starts_with(prefix.as_str()) {
                        *max = (*max).max(idx);
                    }
                }
                self.tombstones.insert(key.to_string(), idx)
            }
            None => self.tombstones.get(key).copied(),
        };
        if let Some(journal) = &mut self.journal {
            journal.push(Undo::Kv(key.to_string(), old));
            journal.push(Undo::Tombstone(key.to_string(), old_tomb));
        }
        self.kv_index = idx;
    }

    fn put_value(&mut self, key: &str, value: Vec<u8>, flags: u64, idx: u64) -> Entry {
        let entry = match self.kv.get(key) {
            Some(old) => Entry {
                modify_index: idx,
                flags,
                value,
                ..old.clone()
            },
            None => Entry {
                create_index: idx,
                modify_index: idx,
                lock_index: 0,
                flags,
                value,
                session: None,
            },
        };
        self.write(key, Some(entry.clone()), idx);
        entry
    }

    pub(crate) fn set(&mut self, key: &str, value: Vec<u8>, flags: u64, idx: Option<u64>) -> Entry {
        let idx = idx.unwrap_or_else(|| self.next_index());
        self.put_value(key, value, flags, idx)
    }

    /// Check-and-set: `cas == 0` creates only if absent; otherwise the `ModifyIndex` must match.
    pub(crate) fn cas(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: u64,
        idx: Option<u64>,
    ) -> Option<Entry> {
        let ok = match self.kv.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if !ok {
            return None;
        }
        Some(self.set(key, value, flags, idx))
    }

    pub(crate) fn acquire(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
        idx: Option<u64>,
    ) -> Result<Option<Entry>, StoreError> {
        if !self.sessions.contains_key(session) {
            return Err(StoreError::InvalidSession(session.to_string()));
        }
        if let Some(until) = self.lock_delays.get(key) {
            if *until > now {
                return Ok(None);
            }
        }
        let idx = idx.unwrap_or_else(|| self.next_index());
        let entry = match self.kv.get(key) {
            Some(old) if old.session.as_deref() == Some(session) => Entry {
                modify_index: idx,
                flags,
                value,
                ..old.clone()
            },
            Some(old) if old.session.is_some() => return Ok(None),
            Some(old) => Entry {
                modify_index: idx,
                lock_index: old.lock_index + 1,
                flags,
                value,
                session: Some(session.to_string()),
                ..old.clone()
            },
            None => Entry {
                create_index: idx,
                modify_index: idx,
                lock_index: 1,
                flags,
                value,
                session: Some(session.to_string()),
            },
        };
        self.write(key, Some(entry.clone()), idx);
        Ok(Some(entry))
    }

    pub(crate) fn release(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
        flags: u64,
        session: &str,
        idx: Option<u64>,
    ) -> Result<Option<Entry>, StoreError> {
        if !self.sessions.contains_key(session) {
            return Err(StoreError::InvalidSession(session.to_string()));
        }
        let Some(old) = self.kv.get(key) else {
            return Ok(None);
        };
        if old.session.as_deref() != Some(session) {
            return Ok(None);
        }
        let mut entry = old.clone();
        let idx = idx.unwrap_or_else(|| self.next_index());
        entry.session = None;
        entry.modify_index = idx;
        entry.flags = flags;
        if let Some(v) = value {
            entry.value = v;
        }
        self.write(key, Some(entry.clone()), idx);
        Ok(Some(entry))
    }

    pub(crate) fn delete(&mut self, key: &str, idx: Option<u64>) {
        if self.kv.contains_key(key) {
            let idx = idx.unwrap_or_else(|| self.next_index());
            self.write(key, None, idx);
        }
    }

    /// Consul deletes only if the `ModifyIndex` matches, and reports success when the key
    /// is already gone.
    pub(crate) fn delete_cas(&mut self, key: &str, cas: u64, idx: Option<u64>) -> bool {
        match self.kv.get(key) {
            None => true,
            Some(e) if e.modify_index == cas => {
                self.delete(key, idx);
                true
            }
            Some(_) => false,
        }
    }

    pub(crate) fn delete_tree(&mut self, prefix: &str, idx: Option<u64>) {
        let keys: Vec<String> = self
            .list(prefix)
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        if keys.is_empty() {
            return;
        }
        let idx = idx.unwrap_or_else(|| self.next_index());
        for k in keys {
            self.write(&k, None, idx);
        }
    }

    // ----- transactions -----

    /// Starts an all-or-nothing transaction; returns the index its writes use.
    pub(crate) fn begin(&mut self) -> u64 {
        self.journal = Some(Vec::new());
        self.index + 1
    }

    /// Keeps the transaction's writes (if any were made, the index advances).
    pub(crate) fn commit(&mut self, idx: u64) {
        let journal = self.journal.take().unwrap_or_default();
        if !journal.is_empty() {
            self.index = idx;
        }
    }

    /// Undoes every write since [`Store::begin`].
    pub(crate) fn rollback(&mut self, saved_kv_index: u64) {
        let journal = self.journal.take().unwrap_or_default();
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Kv(k, Some(e)) => {
                    self.kv.insert(k, e);
                }
                Undo::Kv(k, None) => {
                    self.kv.remove(&k);
                }
                Undo::Tombstone(k, Some(i)) => {
                    self.tombstones.insert(k, i);
                }
                Undo::Tombstone(k, None) => {
                    self.tombstones.remove(&k);
                }
            }
        }
        self.kv_index = saved_kv_index;
        self.tomb_max.get_mut().clear();
    }

    pub(crate) fn kv_index(&self) -> u64 {
        self.kv_index
    }

    // ----- sessions -----

    pub(crate) fn create_session(
        &mut self,
        name: String,
        ttl: Option<Duration>,
        lock_delay: Duration,
        behavior: Behavior,
        now: Instant,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let create_index = self.next_index();
        let mut session = Session {
            id: id.clone(),
            name,
            ttl,
            lock_delay,
            behavior,
            create_index,
            reap_at: None,
        };
        schedule_reap(&mut session, now);
        self.sessions.insert(id.clone(), session);
        id
    }

    pub(crate) fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub(crate) fn sessions(&self) -> Vec<Session> {
        let mut all: Vec<Session> = self.sessions.values().cloned().collect();
        all.sort_by_key(|s| s.create_index);
        all
    }

    /// Renews a session's TTL; `None` if it no longer exists (Consul answers 404).
    pub(crate) fn renew(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get_mut(id)?;
        schedule_reap(session, now);
        Some(session.clone())
    }

    /// Ends a session (destroy, TTL expiry or a failed check): its locks are released or
    /// deleted per its behavior, and each of those keys gets the session's lock-delay.
    pub(crate) fn invalidate(&mut self, id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        let idx = self.next_index();
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    let mut e = self.kv[&key].clone();
                    e.session = None;
                    e.modify_index = idx;
                    self.write(&key, Some(e), idx);
                }
                Behavior::Delete => self.write(&key, None, idx),
            }
            if !session.lock_delay.is_zero() {
                self.lock_delays.insert(key, now + session.lock_delay);
            }
        }
        true
    }

    /// Invalidates every session whose reap time has come; returns how many.
    pub(crate) fn reap(&mut self, now: Instant) -> usize {
        let due: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.reap_at.is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect();
        self.lock_delays.retain(|_, until| *until > now);
        for id in &due {
            self.invalidate(id, now);
        }
        due.len()
    }
}

fn schedule_reap(session: &mut Session, now: Instant) {
    session.reap_at = session.ttl.map(|ttl| {
        let extra = rand::rng().random_range(0..=ttl.as_millis() as u64);
        now + ttl + Duration::from_millis(extra)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_session(lock_delay: Duration) -> (Store, String, Instant) {
        let mut s = Store::new();
        let now = Instant::now();
        let id = s.create_session("n".into(), None, lock_delay, Behavior::Release, now);
        (s, id, now)
    }

    #[test]
    fn acquire_bumps_lock_index_only_for_new_holders() {
        let (mut s, a, now) = store_with_session(Duration::ZERO);
        let e1 = s
            .acquire("k", b"1".to_vec(), 0, &a, now, None)
            .unwrap()
            .unwrap();
        assert_eq!(e1.lock_index, 1);
        let e2 = s
            .acquire("k", b"2".to_vec(), 0, &a, now, None)
            .unwrap()
            .unwrap();
        assert_eq!(e2.lock_index, 1, "re-acquire by the holder keeps LockIndex");
        assert!(e2.modify_index > e1.modify_index);
        let r = s.release("k", None, 0, &a, None).unwrap().unwrap();
        assert_eq!(r.lock_index, 1);
        assert_eq!(r.session, None);
        assert_eq!(r.value, b"2");
        let e3 = s.acquire("k", vec![], 0, &a, now, None).unwrap().unwrap();
        assert_eq!(e3.lock_index, 2);
    }

    #[test]
    fn lock_delay_applies_after_invalidation_not_after_release() {
        let (mut s, a, now) = store_with_session(Duration::from_secs(15));
        let b = s.create_session("b".into(), None, Duration::ZERO, Behavior::Release, now);
        s.acquire("released", vec![], 0, &a, now, None)
            .unwrap()
            .unwrap();
        s.acquire("held", vec![], 0, &a, now, None)
            .unwrap()
            .unwrap();
        s.release("released", None, 0, &a, None).unwrap().unwrap();
        assert!(s.invalidate(&a, now));
        assert!(
            s.acquire("released", vec![], 0, &b, now, None)
                .unwrap()
                .is_some()
        );
        assert!(
            s.acquire("held", vec![], 0, &b, now, None)
                .unwrap()
                .is_none()
        );
        let later = now + Duration::from_secs(16);
        assert!(
            s.acquire("held", vec![], 0, &b, later, None)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn prefix_index_does_not_go_backwards_on_delete() {
        let mut s = Store::new();
        s.set("p/a", vec![], 0, None);
        s.set("p/b", vec![], 0, None);
        let before = s.prefix_index("p/");
        s.delete("p/b", None);
        assert!(s.prefix_index("p/") > before);
    }

    #[test]
    fn rollback_restores_everything() {
        let mut s = Store::new();
        s.set("a", b"1".to_vec(), 0, None);
        let index = s.index();
        let kv_index = s.kv_index();
        let idx = s.begin();
        s.set("a", b"2".to_vec(), 0, Some(idx));
        s.delete("a", Some(idx));
        s.set("b", b"3".to_vec(), 0, Some(idx));
        s.rollback(kv_index);
        assert_eq!(s.get("a").unwrap().value, b"1");
        assert!(s.get("b").is_none());
        assert_eq!(s.index(), index);
        assert_eq!(s.prefix_index("a"), s.get("a").unwrap().modify_index);
    }

    #[test]
    fn ttl_sessions_are_reaped_between_ttl_and_twice_ttl() {
        let mut s = Store::new();
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let id = s.create_session("n".into(), Some(ttl), Duration::ZERO, Behavior::Delete, now);
        s.acquire("k", vec![], 0, &id, now, None).unwrap().unwrap();
        assert_eq!(s.reap(now + ttl - Duration::from_millis(1)), 0);
        assert!(s.session(&id).is_some());
        assert_eq!(s.reap(now + 2 * ttl + Duration::from_millis(1)), 1);
        assert!(s.session(&id).is_none());
        assert!(s.get("k").is_none(), "delete behavior removes held keys");
        assert!(s.renew(&id, now).is_none());
    }
}
