//! The emulated state store, following Consul's `agent/consul/state` package: a Raft index
//! taken by every applied write, table indexes (`kvs`, `tombstones`, `sessions`) that move
//! only when a table really changes, KV entries, tombstones, sessions and lock-delays.
//!
//! The rules that matter most to clients, each from Consul's source:
//!
//! - A write whose entry equals the stored one (`LockIndex`, `Flags`, `Value`, `Session`;
//!   `DirEntry.Equal`) is skipped: `ModifyIndex` and the table index stay, and no blocking
//!   query sees a change (`kvsSetTxn`, since Consul 1.6). Plain `set` and `cas` carry
//!   `LockIndex` 0 and keep the stored session, so they reset a lock entry's `LockIndex`.
//! - Acquiring a lock the session already holds keeps `LockIndex`; a new holder increments it
//!   (`kvsLockTxn`). Releasing clears the session and keeps `LockIndex` (`kvsUnlockTxn`).
//! - Deleting a key leaves a tombstone at the delete's index; deleting a tree leaves one
//!   tombstone for the prefix (`kvsDeleteTxn`, `kvsDeleteTreeTxn`). Listings report the
//!   highest index among their entries and the tombstones under their prefix, else the table
//!   index (`kvsListTxn`); a single key reports its `ModifyIndex`, a missing one the table
//!   index (`KVS.Get`). Reaping tombstones can make a listing's index go backwards.
//! - Invalidating a session (destroy, TTL) releases or deletes its locks in one Raft entry and
//!   puts lock-delay on each of those keys (`deleteSessionTxn`, capped at 60 s).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Consul's `structs.MaxLockDelay`: longer lock-delays are cut to this when applied.
pub(crate) const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Consul's `structs.SessionTTLMultiplier`: the leader invalidates a session this many TTLs
/// after its last renew.
pub(crate) const SESSION_TTL_MULTIPLIER: u32 = 2;

/// One stored KV entry (Consul's `structs.DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) lock_index: u64,
    pub(crate) flags: u64,
    pub(crate) value: Vec<u8>,
    pub(crate) session: Option<String>,
}

impl Entry {
    /// `DirEntry.Equal`: the fields a write must change to count as a write.
    fn same_content(&self, other: &Entry) -> bool {
        self.lock_index == other.lock_index
            && self.flags == other.flags
            && self.value == other.value
            && self.session == other.session
    }
}

/// The KV and tombstone tables: everything a KV read sees. Cloned for stale reads.
#[derive(Debug, Default)]
pub(crate) struct Kv {
    entries: BTreeMap<String, Entry>,
    tombstones: BTreeMap<String, u64>,
    kvs_index: u64,
    tombstones_index: u64,
    /// Highest tombstone index per prefix asked about, so that a listing of a prefix with
    /// many deleted keys does not rescan them on every write.
    tomb_max: Mutex<HashMap<String, u64>>,
}

impl Clone for Kv {
    fn clone(&self) -> Kv {
        Kv {
            entries: self.entries.clone(),
            tombstones: self.tombstones.clone(),
            kvs_index: self.kvs_index,
            tombstones_index: self.tombstones_index,
            tomb_max: Mutex::new(self.tomb_max.lock().unwrap().clone()),
        }
    }
}

/// What a blocking query on a key or prefix watches: it re-runs only when this changes, as
/// Consul's memdb watch channels fire only for changes under what the query read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watched {
    count: usize,
    live_max: u64,
    tomb_max: u64,
}

impl Kv {
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub(crate) fn list(&self, prefix: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// `kvsMaxIndex`: the higher of the `kvs` and `tombstones` table indexes.
    pub(crate) fn table_index(&self) -> u64 {
        self.kvs_index.max(self.tombstones_index)
    }

    fn tombstone_max(&self, prefix: &str) -> u64 {
        if let Some(max) = self.tomb_max.lock().unwrap().get(prefix) {
            return *max;
        }
        let max = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        self.tomb_max
            .lock()
            .unwrap()
            .insert(prefix.to_string(), max);
        max
    }

    /// The index `KVS.Get` reports for `key`: its `ModifyIndex`, or the table index if it is
    /// missing.
    pub(crate) fn key_index(&self, key: &str) -> u64 {
        match self.entries.get(key) {
            Some(e) => e.modify_index,
            None => self.table_index(),
        }
    }

    /// The index `KVS.List` / `KVS.ListKeys` report for `prefix` (`kvsListTxn`): the highest
    /// `ModifyIndex` of its entries or of the tombstones under it, else the table index. An
    /// empty prefix lists everything and reports the table index.
    pub(crate) fn prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.table_index();
        }
        let live = self.list(prefix).map(|(_, e)| e.modify_index).max();
        let lindex = live.unwrap_or(0).max(self.tombstone_max(prefix));
        if lindex != 0 {
            lindex
        } else {
            self.table_index()
        }
    }

    /// What a blocking query on `key` (or on the prefix `key`, with `prefix`) watches.
    pub(crate) fn watched(&self, key: &str, prefix: bool) -> Watched {
        if prefix {
            let (count, live_max) = self
                .list(key)
                .fold((0, 0), |(n, m), (_, e)| (n + 1, m.max(e.modify_index)));
            Watched {
                count,
                live_max,
                tomb_max: self.tombstone_max(key),
            }
        } else {
            Watched {
                count: usize::from(self.entries.contains_key(key)),
                live_max: self.entries.get(key).map_or(0, |e| e.modify_index),
                tomb_max: self.tombstones.get(key).copied().unwrap_or(0),
            }
        }
    }

    fn note_tombstone(&mut self, key: &str, idx: u64) {
        for (prefix, max) in self.tomb_max.get_mut().unwrap().iter_mut() {
            if key.starts_with(prefix.as_str()) {
                *max = (*max).max(idx);
            }
        }
    }
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
    /// The TTL as the client wrote it (Consul stores and reports the string).
    pub(crate) ttl_text: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    pub(crate) create_index: u64,
    /// When the leader's timer invalidates it: `TTL × 2` after the last renew, or after the
    /// leader took office (`createSessionTimer`, `initializeSessionTimers`).
    pub(crate) expires_at: Option<Instant>,
}

impl Session {
    fn reset_timer(&mut self, now: Instant) {
        self.expires_at = self.ttl.map(|ttl| now + ttl * SESSION_TTL_MULTIPLIER);
    }
}

/// One KV operation of a transaction, as decoded from the request.
#[derive(Debug, Clone)]
pub(crate) struct KvOp {
    pub(crate) verb: String,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) flags: u64,
    pub(crate) index: u64,
    pub(crate) session: String,
}

impl KvOp {
    /// `isWrite` in `agent/txn_endpoint.go`: a transaction with none of these is served by
    /// the read-only path, outside Raft, with the request's consistency mode.
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
        )
    }
}

/// One result entry of a transaction: the key, the entry, and whether its value is shown
/// (only `get`, `get-or-empty` and `get-tree` show values).
pub(crate) type TxnResult = (String, Entry, bool);

/// A transaction's outcome: results, or the failed operations (`OpIndex`, `What`).
pub(crate) type TxnOutcome = Result<Vec<TxnResult>, Vec<(usize, String)>>;

enum Undo {
    Entry(String, Option<Entry>),
    Tombstone(String, Option<u64>),
}

/// The whole emulated cluster state.
pub(crate) struct Store {
    raft_index: u64,
    kv: Kv,
    sessions: HashMap<String, Session>,
    sessions_index: u64,
    lock_delays: HashMap<String, Instant>,
    journal: Option<Vec<Undo>>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            raft_index: 1,
            kv: Kv::default(),
            sessions: HashMap::new(),
            sessions_index: 0,
            lock_delays: HashMap::new(),
            journal: None,
        }
    }

    /// The last Raft index applied.
    pub(crate) fn raft_index(&self) -> u64 {
        self.raft_index
    }

    /// The KV tables as reads see them now.
    pub(crate) fn kv(&self) -> &Kv {
        &self.kv
    }

    /// A copy of the KV tables, for a follower that lags behind from now on.
    pub(crate) fn kv_snapshot(&self) -> Arc<Kv> {
        Arc::new(self.kv.clone())
    }

    /// Appends a Raft log entry: every applied write takes the next index, whether or not it
    /// changes anything.
    fn apply(&mut self) -> u64 {
        self.raft_index += 1;
        self.raft_index
    }

    // ----- KV primitives (journaled inside transactions) -----

    fn put_entry(&mut self, key: &str, entry: Entry) {
        self.kv.kvs_index = self.kv.kvs_index.max(entry.modify_index);
        let old = self.kv.entries.insert(key.to_string(), entry);
        if let Some(journal) = &mut self.journal {
            journal.push(Undo::Entry(key.to_string(), old));
        }
    }

    fn remove_entry(&mut self, key: &str, idx: u64) {
        let old = self.kv.entries.remove(key);
        self.kv.kvs_index = self.kv.kvs_index.max(idx);
        if let Some(journal) = &mut self.journal {
            journal.push(Undo::Entry(key.to_string(), old));
        }
    }

    fn add_tombstone(&mut self, key: &str, idx: u64) {
        let old = self.kv.tombstones.insert(key.to_string(), idx);
        self.kv.tombstones_index = self.kv.tombstones_index.max(idx);
        self.kv.note_tombstone(key, idx);
        if let Some(journal) = &mut self.journal {
            journal.push(Undo::Tombstone(key.to_string(), old));
        }
    }

    /// `kvsSetTxn`: stores `entry` unless it equals what is stored. With `update_session`
    /// false the stored session is kept. Returns the entry as stored (on a skipped write,
    /// with the stored `ModifyIndex`).
    fn kvs_set(&mut self, idx: u64, key: &str, mut entry: Entry, update_session: bool) -> Entry {
        let existing = self.kv.entries.get(key);
        entry.create_index = existing.map_or(idx, |e| e.create_index);
        if !update_session {
            entry.session = existing.and_then(|e| e.session.clone());
        }
        if let Some(existing) = existing {
            if existing.same_content(&entry) {
                entry.modify_index = existing.modify_index;
                return entry;
            }
        }
        entry.modify_index = idx;
        self.put_entry(key, entry.clone());
        entry
    }

    fn plain(value: Vec<u8>, flags: u64) -> Entry {
        Entry {
            create_index: 0,
            modify_index: 0,
            lock_index: 0,
            flags,
            value,
            session: None,
        }
    }

    /// `KVSet`.
    fn kv_set(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64) -> Entry {
        self.kvs_set(idx, key, Self::plain(value, flags), false)
    }

    /// `kvsSetCASTxn`: `cas == 0` writes only if absent, otherwise only at that `ModifyIndex`.
    fn kv_cas(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: u64,
    ) -> Option<Entry> {
        let ok = match self.kv.entries.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        ok.then(|| self.kv_set(idx, key, value, flags))
    }

    /// `kvsLockTxn`: `Err` for a missing or unknown session, `Ok(None)` if another session
    /// holds the lock. Lock-delay is not checked here: Consul checks it before Raft.
    fn kv_lock(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".into());
        }
        if !self.sessions.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        let lock_index = match self.kv.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            Some(e) if e.session.is_some() => return Ok(None),
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        let entry = Entry {
            lock_index,
            session: Some(session.to_string()),
            ..Self::plain(value, flags)
        };
        Ok(Some(self.kvs_set(idx, key, entry, true)))
    }

    /// `kvsUnlockTxn`: `Err` only for a missing session; `Ok(None)` if the key is missing or
    /// not held by `session` (which need not exist).
    fn kv_unlock(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".into());
        }
        let lock_index = match self.kv.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            _ => return Ok(None),
        };
        let entry = Entry {
            lock_index,
            ..Self::plain(value, flags)
        };
        Ok(Some(self.kvs_set(idx, key, entry, true)))
    }

    /// `kvsDeleteTxn`: a tombstone at `idx`, if the key existed.
    fn kv_delete(&mut self, idx: u64, key: &str) {
        if self.kv.entries.contains_key(key) {
            self.add_tombstone(key, idx);
            self.remove_entry(key, idx);
        }
    }

    /// `kvsDeleteCASTxn`: succeeds if the key is already gone.
    fn kv_delete_cas(&mut self, idx: u64, key: &str, cas: u64) -> bool {
        match self.kv.entries.get(key) {
            None => true,
            Some(e) if e.modify_index == cas => {
                self.kv_delete(idx, key);
                true
            }
            Some(_) => false,
        }
    }

    /// `kvsDeleteTreeTxn`: one tombstone for the prefix (none for the whole store).
    fn kv_delete_tree(&mut self, idx: u64, prefix: &str) {
        let keys: Vec<String> = self.kv.list(prefix).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return;
        }
        for k in keys {
            self.remove_entry(&k, idx);
        }
        if !prefix.is_empty() {
            self.add_tombstone(prefix, idx);
        }
    }

    // ----- KV endpoint writes (one Raft entry each) -----

    /// `PUT /v1/kv/<key>`.
    pub(crate) fn put(&mut self, key: &str, value: Vec<u8>, flags: u64) {
        let idx = self.apply();
        self.kv_set(idx, key, value, flags);
    }

    /// `PUT /v1/kv/<key>?cas=`.
    pub(crate) fn put_cas(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let idx = self.apply();
        self.kv_cas(idx, key, value, flags, cas).is_some()
    }

    /// Whether lock-delay forbids acquiring `key` now (`kvsPreApply`, before Raft).
    pub(crate) fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delays.get(key).is_some_and(|until| *until > now)
    }

    /// `PUT /v1/kv/<key>?acquire=` after the lock-delay check.
    pub(crate) fn put_acquire(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<bool, String> {
        let idx = self.apply();
        Ok(self.kv_lock(idx, key, value, flags, session)?.is_some())
    }

    /// `PUT /v1/kv/<key>?release=`.
    pub(crate) fn put_release(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<bool, String> {
        let idx = self.apply();
        Ok(self.kv_unlock(idx, key, value, flags, session)?.is_some())
    }

    /// `DELETE /v1/kv/<key>`.
    pub(crate) fn delete(&mut self, key: &str) {
        let idx = self.apply();
        self.kv_delete(idx, key);
    }

    /// `DELETE /v1/kv/<key>?cas=`.
    pub(crate) fn delete_cas(&mut self, key: &str, cas: u64) -> bool {
        let idx = self.apply();
        self.kv_delete_cas(idx, key, cas)
    }

    /// `DELETE /v1/kv/<prefix>?recurse`.
    pub(crate) fn delete_tree(&mut self, prefix: &str) {
        let idx = self.apply();
        self.kv_delete_tree(idx, prefix);
    }

    /// The leader's tombstone GC (`ReapTombstones`): drops every tombstone. Table indexes
    /// stay, but a listing whose highest index was a tombstone now reports a lower one.
    pub(crate) fn reap_tombstones(&mut self) -> usize {
        let n = self.kv.tombstones.len();
        self.kv.tombstones.clear();
        self.kv.tomb_max.get_mut().unwrap().clear();
        n
    }

    // ----- transactions -----

    /// `Txn.preCheck` / `kvsPreApply`, run before Raft: empty keys, and lock-delay on `lock`.
    fn pre_check(&self, ops: &[KvOp], now: Instant) -> Vec<(usize, String)> {
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.key.is_empty() && op.verb != "delete-tree" {
                errors.push((i, "Must provide key".to_string()));
            } else if op.verb == "lock" && self.lock_delayed(&op.key, now) {
                errors.push((
                    i,
                    format!("failed to lock key {:?} due to lock delay", op.key),
                ));
            }
        }
        errors
    }

    /// `Txn.Apply`: pre-checks, then one Raft entry in which every operation runs (errors are
    /// collected, not short-circuited) and which is rolled back if any failed.
    pub(crate) fn txn_apply(&mut self, ops: &[KvOp], now: Instant) -> TxnOutcome {
        let errors = self.pre_check(ops, now);
        if !errors.is_empty() {
            return Err(errors);
        }
        let idx = self.apply();
        let saved = (self.kv.kvs_index, self.kv.tombstones_index);
        self.journal = Some(Vec::new());
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match self.txn_op(idx, op) {
                Ok(r) => results.extend(r),
                Err(what) => errors.push((i, what)),
            }
        }
        let journal = self.journal.take().unwrap_or_default();
        if errors.is_empty() {
            return Ok(results);
        }
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Entry(k, Some(e)) => {
                    self.kv.entries.insert(k, e);
                }
                Undo::Entry(k, None) => {
                    self.kv.entries.remove(&k);
                }
                Undo::Tombstone(k, Some(i)) => {
                    self.kv.tombstones.insert(k, i);
                }
                Undo::Tombstone(k, None) => {
                    self.kv.tombstones.remove(&k);
                }
            }
        }
        (self.kv.kvs_index, self.kv.tombstones_index) = saved;
        self.kv.tomb_max.get_mut().unwrap().clear();
        Err(errors)
    }

    /// `Txn.Read` (`TxnRO`): pre-checks, then the reads against `kv` (the current tables, or
    /// a lagging follower's).
    pub(crate) fn txn_read(&self, kv: &Kv, ops: &[KvOp], now: Instant) -> TxnOutcome {
        let errors = self.pre_check(ops, now);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match read_op(kv, op) {
                Ok(r) => results.extend(r),
                Err(what) => errors.push((i, what)),
            }
        }
        if errors.is_empty() {
            Ok(results)
        } else {
            Err(errors)
        }
    }

    /// `txnKVS`: one operation; write results carry no value.
    fn txn_op(&mut self, idx: u64, op: &KvOp) -> Result<Vec<TxnResult>, String> {
        let key = op.key.as_str();
        let written = |e: Entry| Ok(vec![(key.to_string(), e, false)]);
        match op.verb.as_str() {
            "set" => written(self.kv_set(idx, key, op.value.clone(), op.flags)),
            "cas" => match self.kv_cas(idx, key, op.value.clone(), op.flags, op.index) {
                Some(e) => written(e),
                None => Err(format!("failed to set key {key:?}, index is stale")),
            },
            "lock" => match self.kv_lock(idx, key, op.value.clone(), op.flags, &op.session)? {
                Some(e) => written(e),
                None => Err(format!("failed to lock key {key:?}, lock is already held")),
            },
            "unlock" => match self.kv_unlock(idx, key, op.value.clone(), op.flags, &op.session)? {
                Some(e) => written(e),
                None => Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
            },
            "delete" => {
                self.kv_delete(idx, key);
                Ok(vec![])
            }
            "delete-cas" => {
                if self.kv_delete_cas(idx, key, op.index) {
                    Ok(vec![])
                } else {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
            }
            "delete-tree" => {
                self.kv_delete_tree(idx, key);
                Ok(vec![])
            }
            _ => read_op(&self.kv, op),
        }
    }

    // ----- sessions -----

    /// `Session.Apply` create: one Raft entry; the leader starts its timer.
    pub(crate) fn create_session(
        &mut self,
        name: String,
        ttl_text: String,
        ttl: Option<Duration>,
        lock_delay: Duration,
        behavior: Behavior,
        now: Instant,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let create_index = self.apply();
        self.sessions_index = create_index;
        let mut session = Session {
            id: id.clone(),
            name,
            ttl_text,
            ttl,
            lock_delay,
            behavior,
            create_index,
            expires_at: None,
        };
        session.reset_timer(now);
        self.sessions.insert(id.clone(), session);
        id
    }

    pub(crate) fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// The `sessions` table index.
    pub(crate) fn sessions_index(&self) -> u64 {
        self.sessions_index
    }

    pub(crate) fn sessions(&self) -> Vec<Session> {
        let mut all: Vec<Session> = self.sessions.values().cloned().collect();
        all.sort_by_key(|s| s.create_index);
        all
    }

    /// `Session.Renew`: resets the leader's timer (no Raft entry); `None` if the session no
    /// longer exists (the HTTP API answers 404).
    pub(crate) fn renew(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get_mut(id)?;
        session.reset_timer(now);
        Some(session.clone())
    }

    /// A new leader took office: every session timer restarts at `TTL × 2` from now
    /// (`initializeSessionTimers`).
    pub(crate) fn restart_session_timers(&mut self, now: Instant) {
        for s in self.sessions.values_mut() {
            s.reset_timer(now);
        }
    }

    /// `Session.Apply` destroy (explicit, or the leader's TTL timer): one Raft entry that
    /// removes the session, releases or deletes its locks per its behavior, and puts its
    /// lock-delay on each of those keys. Returns whether it existed.
    pub(crate) fn destroy_session(&mut self, id: &str, now: Instant) -> bool {
        let idx = self.apply();
        let Some(session) = self.sessions.remove(id) else {
            return false;
        };
        self.sessions_index = idx;
        let delay = session.lock_delay.min(MAX_LOCK_DELAY);
        let held: Vec<String> = self
            .kv
            .entries
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Release => {
                    let mut e = self.kv.entries[&key].clone();
                    e.session = None;
                    self.kvs_set(idx, &key, e, true);
                }
                Behavior::Delete => self.kv_delete(idx, &key),
            }
            if !delay.is_zero() {
                self.lock_delays.insert(key, now + delay);
            }
        }
        true
    }

    /// Invalidates every session whose timer ran out; returns how many.
    pub(crate) fn expire_sessions(&mut self, now: Instant) -> usize {
        let due: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires_at.is_some_and(|t| t <= now))
            .map(|s| s.id.clone())
            .collect();
        self.lock_delays.retain(|_, until| *until > now);
        for id in &due {
            self.destroy_session(id, now);
        }
        due.len()
    }
}

/// The read verbs of `txnKVS`, against `kv`.
fn read_op(kv: &Kv, op: &KvOp) -> Result<Vec<TxnResult>, String> {
    let key = op.key.as_str();
    let shown = |e: &Entry| Ok(vec![(key.to_string(), e.clone(), true)]);
    let checked = |e: &Entry| Ok(vec![(key.to_string(), e.clone(), false)]);
    match op.verb.as_str() {
        "get" => match kv.get(key) {
            Some(e) => shown(e),
            None => Err(format!("key {key:?} doesn't exist")),
        },
        // Consul answers with the request's own entry, value blanked.
        "get-or-empty" => match kv.get(key) {
            Some(e) => shown(e),
            None => shown(&Entry {
                create_index: 0,
                modify_index: op.index,
                lock_index: 0,
                flags: op.flags,
                value: Vec::new(),
                session: Some(op.session.clone()).filter(|s| !s.is_empty()),
            }),
        },
        "get-tree" => Ok(kv
            .list(key)
            .map(|(k, e)| (k.clone(), e.clone(), true))
            .collect()),
        "check-session" => match kv.get(key) {
            None => Err(format!(
                "failed to check session, key {key:?} doesn't exist"
            )),
            Some(e) if e.session.as_deref().unwrap_or("") == op.session => checked(e),
            Some(e) => Err(format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                e.session.as_deref().unwrap_or(""),
                op.session
            )),
        },
        "check-index" => match kv.get(key) {
            None => Err(format!("failed to check index, key {key:?} doesn't exist")),
            Some(e) if e.modify_index == op.index => checked(e),
            Some(e) => Err(format!(
                "failed index check for key {key:?}, current modify index {} != {}",
                e.modify_index, op.index
            )),
        },
        "check-not-exists" => match kv.get(key) {
            Some(_) => Err(format!("key {key:?} exists")),
            None => Ok(vec![]),
        },
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(verb: &str, key: &str, value: &[u8]) -> KvOp {
        KvOp {
            verb: verb.into(),
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
            index: 0,
            session: String::new(),
        }
    }

    fn session(s: &mut Store, lock_delay: Duration, now: Instant) -> String {
        s.create_session(
            "n".into(),
            String::new(),
            None,
            lock_delay,
            Behavior::Release,
            now,
        )
    }

    #[test]
    fn identical_writes_keep_the_modify_index_and_the_table_index() {
        let mut s = Store::new();
        s.put("k", b"v".to_vec(), 0);
        let first = s.kv().get("k").unwrap().modify_index;
        let table = s.kv().table_index();
        s.put("k", b"v".to_vec(), 0);
        assert!(s.put_cas("k", b"v".to_vec(), 0, first));
        let r = s
            .txn_apply(&[op("set", "k", b"v")], Instant::now())
            .unwrap();
        assert_eq!(
            r[0].1.modify_index, first,
            "the txn result reports the kept index"
        );
        assert_eq!(s.kv().get("k").unwrap().modify_index, first);
        assert_eq!(s.kv().table_index(), table);
        assert!(s.raft_index() > table, "each write still took a Raft index");
        s.put("k", b"w".to_vec(), 0);
        assert!(s.kv().get("k").unwrap().modify_index > first);
        s.put("k", b"w".to_vec(), 7);
        assert_eq!(s.kv().get("k").unwrap().flags, 7, "flags count as content");
    }

    #[test]
    fn acquire_by_the_holder_is_a_no_op_and_plain_set_resets_lock_index() {
        let mut s = Store::new();
        let now = Instant::now();
        let a = session(&mut s, Duration::ZERO, now);
        assert!(s.put_acquire("k", b"1".to_vec(), 0, &a).unwrap());
        let e1 = s.kv().get("k").unwrap().clone();
        assert_eq!(e1.lock_index, 1);
        assert!(s.put_acquire("k", b"1".to_vec(), 0, &a).unwrap());
        assert_eq!(
            s.kv().get("k").unwrap(),
            &e1,
            "same holder, same value: nothing"
        );
        assert!(s.put_acquire("k", b"2".to_vec(), 0, &a).unwrap());
        let e2 = s.kv().get("k").unwrap().clone();
        assert_eq!(e2.lock_index, 1);
        assert!(e2.modify_index > e1.modify_index);
        s.put("k", b"2".to_vec(), 0);
        let e3 = s.kv().get("k").unwrap().clone();
        assert_eq!(e3.lock_index, 0, "set carries LockIndex 0");
        assert_eq!(
            e3.session.as_deref(),
            Some(a.as_str()),
            "and keeps the session"
        );
        assert!(e3.modify_index > e2.modify_index);
        assert!(s.put_release("k", Vec::new(), 0, &a).unwrap());
        let r = s.kv().get("k").unwrap();
        assert_eq!((r.session.as_deref(), r.value.as_slice()), (None, &b""[..]));
        assert!(
            !s.put_release("k", Vec::new(), 0, "no-such-session")
                .unwrap()
        );
        assert_eq!(
            s.put_acquire("k", vec![], 0, "no-such-session"),
            Err("invalid session \"no-such-session\"".into())
        );
    }

    #[test]
    fn lock_delay_after_invalidation_not_after_release() {
        let mut s = Store::new();
        let now = Instant::now();
        let a = session(&mut s, Duration::from_secs(15), now);
        s.put_acquire("released", vec![], 0, &a).unwrap();
        s.put_acquire("held", vec![], 0, &a).unwrap();
        s.put_release("released", vec![], 0, &a).unwrap();
        assert!(s.destroy_session(&a, now));
        assert!(!s.lock_delayed("released", now));
        assert!(s.lock_delayed("held", now));
        assert!(!s.lock_delayed("held", now + Duration::from_secs(16)));
    }

    #[test]
    fn lock_delay_is_capped_at_sixty_seconds() {
        let mut s = Store::new();
        let now = Instant::now();
        let a = session(&mut s, Duration::from_secs(600), now);
        s.put_acquire("k", vec![], 0, &a).unwrap();
        s.destroy_session(&a, now);
        assert!(s.lock_delayed("k", now + Duration::from_secs(59)));
        assert!(!s.lock_delayed("k", now + Duration::from_secs(61)));
    }

    #[test]
    fn prefix_index_follows_tombstones_until_they_are_reaped() {
        let mut s = Store::new();
        s.put("p/a", vec![], 0);
        s.put("p/b", vec![], 0);
        let before = s.kv().prefix_index("p/");
        s.delete("p/b");
        let after = s.kv().prefix_index("p/");
        assert!(after > before);
        s.reap_tombstones();
        assert!(
            s.kv().prefix_index("p/") < after,
            "reaping moves it backwards"
        );
        s.delete_tree("p/");
        assert_eq!(
            s.kv().prefix_index("p/"),
            s.raft_index(),
            "one tombstone for the tree"
        );
        assert_eq!(s.kv().prefix_index("q/"), s.kv().table_index());
    }

    #[test]
    fn failed_transactions_change_nothing() {
        let mut s = Store::new();
        s.put("a", b"1".to_vec(), 0);
        let before = (s.kv().table_index(), s.kv().get("a").cloned());
        let ops = [
            op("set", "a", b"2"),
            op("delete", "a", b""),
            op("set", "b", b"3"),
            op("get", "missing", b""),
        ];
        let errors = s.txn_apply(&ops, Instant::now()).unwrap_err();
        assert_eq!(
            errors,
            vec![(3, "key \"missing\" doesn't exist".to_string())]
        );
        assert_eq!((s.kv().table_index(), s.kv().get("a").cloned()), before);
        assert!(s.kv().get("b").is_none());
        assert_eq!(s.kv().prefix_index("a"), before.1.unwrap().modify_index);
    }

    #[test]
    fn sessions_expire_at_twice_the_ttl_and_timers_restart_with_a_new_leader() {
        let mut s = Store::new();
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let id = s.create_session(
            "n".into(),
            "10s".into(),
            Some(ttl),
            Duration::ZERO,
            Behavior::Delete,
            now,
        );
        s.put_acquire("k", vec![], 0, &id).unwrap();
        assert_eq!(
            s.expire_sessions(now + 2 * ttl - Duration::from_millis(1)),
            0
        );
        s.restart_session_timers(now + ttl);
        assert_eq!(
            s.expire_sessions(now + 2 * ttl + Duration::from_millis(1)),
            0
        );
        assert_eq!(s.expire_sessions(now + 3 * ttl), 1);
        assert!(
            s.kv().get("k").is_none(),
            "delete behavior removes held keys"
        );
        assert!(s.renew(&id, now).is_none());
    }
}
