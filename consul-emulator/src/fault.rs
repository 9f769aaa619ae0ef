//! Fault injection: rules that make the next matching requests misbehave.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Kv, Store};

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer `500 Internal Server Error` without doing anything.
    Error500,
    /// Close the connection without answering (the request is not processed).
    DropConnection,
    /// Process the request normally, but answer only after this long.
    Delay(Duration),
    /// Report an `X-Consul-Index` lower than the one last reported (as after a tombstone
    /// reap or a snapshot restore). Only KV reads carry an index, so only they consume it.
    IndexBackwards,
    /// Report `X-Consul-Index: 1`, as a freshly restored cluster would. Only KV reads
    /// consume it.
    IndexReset,
    /// Report `X-Consul-Index: 0`, which a careless client would busy-loop on. Only KV
    /// reads consume it.
    IndexZero,
    /// Answer from a follower that stopped applying the Raft log when the fault was
    /// injected: reads see the KV store as it was then. Consul serves reads without
    /// `?consistent` (default and `?stale` mode, and read-only transactions, which never
    /// go through Raft) from state that may lag; only those consume it: `?consistent` reads,
    /// blocking queries and transactions with a write never do.
    StaleRead,
}

impl FaultKind {
    pub(crate) fn is_stale_read(self) -> bool {
        self == FaultKind::StaleRead
    }

    pub(crate) fn is_index_fault(self) -> bool {
        matches!(
            self,
            FaultKind::IndexBackwards | FaultKind::IndexReset | FaultKind::IndexZero
        )
    }
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every request.
    Any,
    /// Requests whose decoded path starts with this (e.g. `/v1/txn`, `/v1/kv/app/`).
    PathPrefix(String),
    /// Blocking queries only (requests carrying a non-zero `index`).
    Blocking,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) kind: FaultKind,
    pub(crate) target: Target,
    /// Matching requests let through before the fault applies.
    pub(crate) skip: usize,
    pub(crate) remaining: usize,
    /// For [`FaultKind::StaleRead`]: the KV store as the lagging follower has it.
    pub(crate) view: Option<Arc<Kv>>,
}

/// What a request may consume.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestKind {
    /// It carries a non-zero `index` (a blocking query).
    pub(crate) blocking: bool,
    /// It reports an `X-Consul-Index` (KV reads).
    pub(crate) reports_index: bool,
    /// It may be served from stale state (a non-blocking read without `?consistent`, or a
    /// read-only transaction without `?consistent`).
    pub(crate) may_be_stale: bool,
}

#[derive(Default)]
pub(crate) struct FaultState {
    pub(crate) rules: Vec<Rule>,
    pub(crate) counts: BTreeMap<String, u64>,
}

impl FaultState {
    /// Takes the first rule matching this request, if any (counting down the requests it
    /// lets through first). Index faults are only taken by requests that report an index,
    /// stale reads only by requests that may be stale.
    pub(crate) fn take(
        &mut self,
        path: &str,
        request: RequestKind,
    ) -> Option<(FaultKind, Option<Arc<Kv>>)> {
        let pos = self.rules.iter().position(|r| {
            r.remaining > 0
                && (request.reports_index || !r.kind.is_index_fault())
                && (request.may_be_stale || !r.kind.is_stale_read())
                && match &r.target {
                    Target::Any => true,
                    Target::PathPrefix(p) => path.starts_with(p.as_str()),
                    Target::Blocking => request.blocking,
                }
        })?;
        let rule = &mut self.rules[pos];
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.remaining -= 1;
        let taken = (rule.kind, rule.view.clone());
        if rule.remaining == 0 {
            self.rules.remove(pos);
        }
        Some(taken)
    }
}

pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) faults: Mutex<FaultState>,
    /// Blocking KV queries waiting for a change right now.
    pub(crate) blocked: watch::Sender<usize>,
}

/// Controls a running [`Emulator`](crate::Emulator): fault injection, operator actions
/// (destroying or invalidating sessions) and request counts.
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// A session as the emulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its TTL, if it has one.
    pub ttl: Option<Duration>,
    /// Its lock-delay.
    pub lock_delay: Duration,
}

impl Control {
    /// Blocking KV queries waiting for a change right now.
    pub fn blocked_queries(&self) -> usize {
        *self.shared.blocked.borrow()
    }

    /// Waits until at least `n` blocking KV queries are waiting for a change (for tests
    /// that must act while a watch is parked); `false` if that did not happen within
    /// `timeout`.
    pub async fn wait_for_blocked_queries(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.blocked.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&b| b >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Makes the next `count` requests matching `target` misbehave as `kind`. Rules are
    /// tried in the order they were added.
    pub fn inject(&self, kind: FaultKind, count: usize, target: Target) {
        self.inject_after(0, kind, count, target);
    }

    /// Like [`inject`](Self::inject), but the first `skip` matching requests are served
    /// normally (for example: the second transaction of a claim fails, the first commits).
    pub fn inject_after(&self, skip: usize, kind: FaultKind, count: usize, target: Target) {
        if count == 0 {
            return;
        }
        let view = kind
            .is_stale_read()
            .then(|| self.shared.store.lock().unwrap().kv_snapshot());
        self.shared.faults.lock().unwrap().rules.push(Rule {
            kind,
            target,
            skip,
            remaining: count,
            view,
        });
    }

    /// Removes every pending fault rule.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().rules.clear();
    }

    /// How many injected faults are still waiting for a matching request.
    pub fn pending_faults(&self) -> usize {
        self.shared
            .faults
            .lock()
            .unwrap()
            .rules
            .iter()
            .map(|r| r.remaining)
            .sum()
    }

    /// Destroys a session as an operator would (`consul session destroy`): its locks are
    /// released and lock-delay applies to them. Returns whether it existed.
    pub fn destroy_session(&self, id: &str) -> bool {
        self.invalidate(id)
    }

    /// Invalidates a session as if its TTL had run out or a check had failed.
    pub fn expire_session(&self, id: &str) -> bool {
        self.invalidate(id)
    }

    fn invalidate(&self, id: &str) -> bool {
        let mut store = self.shared.store.lock().unwrap();
        let done = store.destroy_session(id, tokio::time::Instant::now());
        let index = store.raft_index();
        drop(store);
        self.shared.changed.send_replace(index);
        done
    }

    /// Models a leader election: the new leader restarts every session's timer at `TTL × 2`
    /// from now (`initializeSessionTimers`), so sessions live longer than their last renew
    /// alone would give them. Combine with [`FaultKind::Error500`] to model the requests
    /// that fail while there is no leader.
    pub fn change_leader(&self) {
        self.shared
            .store
            .lock()
            .unwrap()
            .restart_session_timers(tokio::time::Instant::now());
    }

    /// Runs the leader's tombstone GC now (Consul's runs after `tombstone_ttl`): every
    /// tombstone goes, so a listing whose highest index was a deleted key now reports a
    /// lower index. Returns how many were reaped.
    pub fn reap_tombstones(&self) -> usize {
        self.shared.store.lock().unwrap().reap_tombstones()
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared
            .store
            .lock()
            .unwrap()
            .sessions()
            .into_iter()
            .map(|s| SessionInfo {
                id: s.id,
                name: s.name,
                ttl: s.ttl,
                lock_delay: s.lock_delay,
            })
            .collect()
    }

    /// The last Raft index applied (every write takes one, even one that changes nothing).
    pub fn index(&self) -> u64 {
        self.shared.store.lock().unwrap().raft_index()
    }

    /// Requests received so far, by `METHOD endpoint` (for example `PUT /v1/txn`,
    /// `GET /v1/kv`, `PUT /v1/session/renew`), counting faulted ones too.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared.faults.lock().unwrap().counts.clone()
    }

    /// Total requests received so far.
    pub fn request_total(&self) -> u64 {
        self.shared.faults.lock().unwrap().counts.values().sum()
    }

    /// The raw value stored at `key`, bypassing HTTP (for assertions in tests).
    pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
        self.shared
            .store
            .lock()
            .unwrap()
            .kv()
            .get(key)
            .map(|e| e.value.clone())
    }

    /// The `ModifyIndex` of the entry at `key`, bypassing HTTP.
    pub fn kv_modify_index(&self, key: &str) -> Option<u64> {
        self.shared
            .store
            .lock()
            .unwrap()
            .kv()
            .get(key)
            .map(|e| e.modify_index)
    }

    /// Every stored key under `prefix`, bypassing HTTP.
    pub fn kv_keys(&self, prefix: &str) -> Vec<String> {
        self.shared
            .store
            .lock()
            .unwrap()
            .kv()
            .list(prefix)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
