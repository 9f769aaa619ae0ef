//! [`ConsulCoordinator`]: the `Coordinator` on Consul sessions, KV locks and transactions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keyloop_core::{
    Claim, ClusterSnapshot, Coordinator, CoordinatorError, CoordinatorEvent, Epoch, EventSink, Key,
    KeyInfo, Lease, Limits, NodeId, NodeInfo, NodeSnapshot, Release, Released, TriggerOutcome,
    TriggerSeq, WakeTime,
};
use rand::seq::SliceRandom;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{
    Behavior, ConsulClient, KvEntry, PutOptions, ReadOptions, SessionSpec, TXN_MAX_OPS, TxnFailure,
    TxnOp, TxnOutcome,
};
use crate::config::ConsulConfig;
use crate::error::BACKEND;
use crate::layout::{Layout, Part};
use crate::wake::{self, DueKey, WakeCache};
use crate::watch;

/// Operations per claimed key: lock, read the registry entry, check it is neither parked
/// nor asleep, consume its trigger marker.
const FREE_OPS: usize = 5;
/// Operations per claimed due key: those of a free key, but instead of checking it is not
/// asleep, check its wake-up is the one found due and delete it with its index entry.
const DUE_OPS: usize = 7;
/// Where the "not asleep" check sits among a free key's operations…
const FREE_WAKE_CHECK: usize = 4;
/// …and the wake-up check among a due key's.
const DUE_WAKE_CHECK: usize = 4;
/// The candidate list is re-read at most this often while it still has keys…
const RELIST_BUSY: Duration = Duration::from_millis(250);
/// …and at most this often once it is empty.
const RELIST_EMPTY: Duration = Duration::from_millis(20);
/// Consul's longest session TTL (`structs.SessionTTLMax`).
const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// The candidate list is never older than this.
const RELIST_MAX_AGE: Duration = Duration::from_secs(2);

/// A key this node owns, as this process remembers it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owned {
    pub(crate) epoch: u64,
    /// The newest trigger sequence reported for it (claim or event).
    pub(crate) seen: u64,
}

/// What one node's calls and its watch share.
#[derive(Default)]
pub(crate) struct Local {
    pub(crate) owned: HashMap<Key, Owned>,
    pub(crate) avoid: HashMap<Key, Instant>,
    /// The trigger markers the watch saw last, by key.
    pub(crate) pend: HashMap<Key, u64>,
    /// Set by the watch when keys became available since the candidates were listed.
    pub(crate) stale: bool,
    candidates: Vec<Key>,
    listed_at: Option<Instant>,
    /// How long the last listing took: listings of large registries are spaced out in
    /// proportion, so claiming never eats most of the node's time.
    list_cost: Duration,
}

pub(crate) struct NodeState {
    pub(crate) id: NodeId,
    pub(crate) session: String,
    pub(crate) ttl: Duration,
    pub(crate) events: EventSink,
    pub(crate) local: Mutex<Local>,
    /// The coordinator's wake-up cache, which this node's watch marks stale.
    pub(crate) wake: Arc<Mutex<WakeCache>>,
    /// The watch tasks: trigger markers, and node records.
    watch: Mutex<Vec<JoinHandle<()>>>,
}

impl NodeState {
    fn stop_watch(&self) {
        for w in self.watch.lock().unwrap().drain(..) {
            w.abort();
        }
    }
}

/// The Consul coordinator. One per node is typical (each engine its own), but one
/// coordinator may serve several nodes.
///
/// ```
/// use keyloop_consul::{ConsulConfig, ConsulCoordinator};
///
/// let config = ConsulConfig::builder("127.0.0.1:8500").prefix("myapp/keyloop").build().unwrap();
/// let coordinator = ConsulCoordinator::new(config);
/// assert_eq!(coordinator.config().prefix(), "myapp/keyloop");
/// ```
pub struct ConsulCoordinator {
    config: Arc<ConsulConfig>,
    layout: Arc<Layout>,
    nodes: Mutex<HashMap<NodeId, Arc<NodeState>>>,
    /// What was last read of the wake-up index (for `next_wake` and claim rounds).
    wake: Arc<Mutex<WakeCache>>,
}

impl std::fmt::Debug for ConsulCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulCoordinator")
            .field("address", &self.config.address)
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

impl Drop for ConsulCoordinator {
    fn drop(&mut self) {
        for node in self.nodes.lock().unwrap().values() {
            node.stop_watch();
        }
    }
}

/// A value no earlier write stored: Consul skips a write that stores what is already stored
/// (`kvsSetTxn`, since 1.6), keeping the entry's `ModifyIndex` and waking no watch. The
/// registry entry's `ModifyIndex` is the trigger sequence and markers wake the watches, so
/// each of their writes must change the value, or a trigger would neither move the
/// sequence nor wake anyone.
fn fresh_value() -> Bytes {
    Bytes::from(format!("{:032x}", rand::random::<u128>()))
}

fn own_value(node: &NodeId) -> Bytes {
    Bytes::from(node.to_string())
}

/// The value an ownership entry keeps after a release: owner and epoch, for `inspect`.
fn released_value(node: &NodeId, epoch: u64) -> Bytes {
    Bytes::from(format!("{node} {epoch}"))
}

fn owner_of(own: &KvEntry) -> Option<NodeId> {
    own.session.as_ref()?;
    let text = std::str::from_utf8(&own.value).ok()?;
    NodeId::parse(text.split(' ').next()?)
}

/// The epoch of the latest acquisition: exact while held or after an explicit release; an
/// upper bound (the invalidation's index) after an owner's session ended.
fn epoch_of(own: &KvEntry) -> Option<Epoch> {
    if own.modify_index == 0 {
        return None;
    }
    if own.session.is_none() {
        if let Some(e) = std::str::from_utf8(&own.value)
            .ok()
            .and_then(|t| t.split(' ').nth(1))
            .and_then(|e| e.parse().ok())
        {
            return Some(Epoch(e));
        }
    }
    Some(Epoch(own.modify_index))
}

/// The `ModifyIndex` of a transaction's last result (the read that ends a fenced check).
fn last_index(results: &[KvEntry]) -> u64 {
    results.last().map_or(0, |e| e.modify_index)
}

/// Whether a claim transaction failed because the node's session is gone: its first
/// operation, the session check on the node record, failed. Classified by position, not by
/// Consul's message text.
fn session_gone(failures: &[TxnFailure]) -> bool {
    failures.iter().any(|f| f.op_index == 0)
}

/// One key's entries under `P/k/`.
#[derive(Default)]
struct KeyEntries {
    reg: Option<KvEntry>,
    own: Option<KvEntry>,
    park: Option<KvEntry>,
    wake: Option<KvEntry>,
}

/// A key a claim tries to take.
enum Want {
    /// Registered, unowned, not parked, not asleep (as listed).
    Free(Key),
    /// Asleep and due by the agent's clock (as the wake-up index showed).
    Due(DueKey),
}

impl Want {
    fn key(&self) -> &Key {
        match self {
            Want::Free(k) => k,
            Want::Due(d) => &d.key,
        }
    }

    fn op_count(&self) -> usize {
        match self {
            Want::Free(_) => FREE_OPS,
            Want::Due(_) => DUE_OPS,
        }
    }

    /// Results its operations produce: the lock and the registry entry (and, due, the
    /// wake-up check).
    fn result_count(&self) -> usize {
        match self {
            Want::Free(_) => 2,
            Want::Due(_) => 3,
        }
    }
}

/// The wake-up carried by a `P/k/<e>/wake` entry.
fn wake_at(entry: Option<&KvEntry>) -> Option<std::time::SystemTime> {
    entry
        .filter(|e| e.modify_index != 0)
        .and_then(wake::due_of)
        .map(wake::from_us)
}

impl ConsulCoordinator {
    /// A coordinator with `config`. Nothing is contacted until a node joins.
    pub fn new(config: ConsulConfig) -> ConsulCoordinator {
        let layout = Arc::new(Layout::new(&config.prefix));
        ConsulCoordinator {
            config: Arc::new(config),
            layout,
            nodes: Mutex::new(HashMap::new()),
            wake: Arc::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ConsulConfig {
        &self.config
    }

    /// The typed HTTP client it uses.
    pub fn client(&self) -> &ConsulClient {
        &self.config.client
    }

    /// The Consul session of a node that joined through this coordinator.
    pub fn session_of(&self, node: &NodeId) -> Option<String> {
        self.nodes
            .lock()
            .unwrap()
            .get(node)
            .map(|n| n.session.clone())
    }

    fn client_ref(&self) -> &ConsulClient {
        &self.config.client
    }

    fn node(&self, id: &NodeId) -> Result<Arc<NodeState>, CoordinatorError> {
        self.nodes
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or(CoordinatorError::LeaseExpired { node: *id })
    }

    /// Drops a node whose session is gone.
    fn forget(&self, id: &NodeId) {
        if let Some(n) = self.nodes.lock().unwrap().remove(id) {
            n.stop_watch();
        }
    }

    fn lease_lost(&self, node: &NodeState) -> CoordinatorError {
        self.forget(&node.id);
        node.events
            .send(CoordinatorEvent::OwnershipLost { key: None });
        CoordinatorError::LeaseExpired { node: node.id }
    }

    fn fence_ops(&self, node: &NodeState, key: &Key, epoch: Epoch) -> [TxnOp; 2] {
        let own = self.layout.own(key);
        [
            TxnOp::CheckSession {
                key: own.clone(),
                session: node.session.clone(),
            },
            TxnOp::CheckIndex {
                key: own,
                index: epoch.0,
            },
        ]
    }

    fn fenced(node: &NodeState, key: &Key, epoch: Epoch) -> CoordinatorError {
        CoordinatorError::Fenced {
            node: node.id,
            key: key.clone(),
            epoch,
        }
    }

    async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, CoordinatorError> {
        Ok(self.client_ref().txn(ops).await?)
    }

    /// Reads every key's entries (linearizable: it decides what to claim).
    async fn list_keys(&self) -> Result<BTreeMap<Key, KeyEntries>, CoordinatorError> {
        let listed = self
            .client_ref()
            .kv_list(
                &self.layout.keys_prefix(),
                ReadOptions {
                    consistent: true,
                    ..ReadOptions::default()
                },
            )
            .await?;
        let mut keys: BTreeMap<Key, KeyEntries> = BTreeMap::new();
        for entry in listed.value {
            let Some(parsed) = self.layout.parse_key_entry(&entry.key) else {
                continue;
            };
            let (key, part) = parsed.map_err(CoordinatorError::InvalidStoredKey)?;
            let slot = keys.entry(key).or_default();
            match part {
                Part::Reg => slot.reg = Some(entry),
                Part::Own => slot.own = Some(entry),
                Part::Park => slot.park = Some(entry),
                Part::Wake => slot.wake = Some(entry),
            }
        }
        Ok(keys)
    }

    /// Keys worth trying to claim, from a cached listing that is refreshed when it runs out,
    /// when the watch saw keys become available, or when it gets old.
    async fn candidates(&self, node: &NodeState, max: usize) -> Result<Vec<Key>, CoordinatorError> {
        let relist = {
            let local = node.local.lock().unwrap();
            let cost = local.list_cost;
            let age = local.listed_at.map(|t| t.elapsed());
            match age {
                None => true,
                Some(age) if local.candidates.is_empty() => {
                    (local.stale || age >= RELIST_MAX_AGE.max(cost * 20))
                        && age >= RELIST_EMPTY.max(cost * 4)
                }
                Some(age) => {
                    (local.stale && age >= RELIST_BUSY.max(cost * 8))
                        || age >= RELIST_MAX_AGE.max(cost * 20)
                }
            }
        };
        if relist {
            let listed_at = Instant::now();
            let keys = self.list_keys().await?;
            let cost = listed_at.elapsed();
            let mut free: Vec<Key> = keys
                .into_iter()
                .filter(|(_, e)| {
                    e.reg.is_some()
                        && e.park.is_none()
                        && e.wake.is_none()
                        && e.own.as_ref().is_none_or(|o| o.session.is_none())
                })
                .map(|(k, _)| k)
                .collect();
            // Concurrent claimers start at different places, so they rarely collide.
            free.shuffle(&mut rand::rng());
            let mut local = node.local.lock().unwrap();
            local.candidates = free;
            local.listed_at = Some(listed_at);
            local.list_cost = cost;
            local.stale = false;
        }
        let mut local = node.local.lock().unwrap();
        let now = Instant::now();
        local.avoid.retain(|_, until| *until > now);
        let mut out = Vec::with_capacity(max);
        let mut kept = Vec::new();
        while let Some(key) = local.candidates.pop() {
            if local.owned.contains_key(&key) {
                continue;
            }
            if local.avoid.contains_key(&key) {
                kept.push(key);
                continue;
            }
            out.push(key);
            if out.len() == max {
                break;
            }
        }
        local.candidates.extend(kept);
        Ok(out)
    }

    /// The first operation of every claim transaction: the node record is locked by the
    /// node's session, so this fails exactly when the session is gone (or an operator
    /// deleted the record, which is treated the same: stop and re-join). A lock with an
    /// unknown session fails too, but only Consul's message text would say why.
    fn session_check(&self, node: &NodeState) -> TxnOp {
        TxnOp::CheckSession {
            key: self.layout.node(&node.id),
            session: node.session.clone(),
        }
    }

    fn claim_ops(&self, node: &NodeState, want: &Want) -> Vec<TxnOp> {
        let key = want.key();
        let mut ops = vec![
            TxnOp::Lock {
                key: self.layout.own(key),
                value: own_value(&node.id),
                session: node.session.clone(),
            },
            TxnOp::Get {
                key: self.layout.reg(key),
            },
            TxnOp::CheckNotExists {
                key: self.layout.park(key),
            },
            // The claim reports the sequence, so the marker is consumed with it.
            TxnOp::Delete {
                key: self.layout.pend(key),
            },
        ];
        match want {
            // Not asleep: a key put to sleep since it was listed stays asleep.
            Want::Free(_) => ops.push(TxnOp::CheckNotExists {
                key: self.layout.wake(key),
            }),
            // Still the wake-up found due (written with this index entry, so the same
            // index): not one a trigger dropped, nor a later one.
            Want::Due(d) => ops.extend([
                TxnOp::CheckIndex {
                    key: self.layout.wake(key),
                    index: d.index,
                },
                TxnOp::Delete {
                    key: self.layout.wake(key),
                },
                TxnOp::Delete {
                    key: d.entry.clone(),
                },
            ]),
        }
        debug_assert_eq!(ops.len(), want.op_count());
        ops
    }

    /// Records claims and reports triggers the watch saw in the meantime.
    fn record_claims(&self, node: &NodeState, claims: &mut [Claim]) {
        let mut local = node.local.lock().unwrap();
        for c in claims.iter_mut() {
            if let Some(&seen) = local.pend.get(&c.key) {
                if seen > c.trigger_seq.0 {
                    c.trigger_seq = TriggerSeq(seen);
                }
            }
            local.owned.insert(
                c.key.clone(),
                Owned {
                    epoch: c.epoch.0,
                    seen: c.trigger_seq.0,
                },
            );
        }
    }

    /// Claims `wants` in one transaction, dropping those another node got first or that are
    /// under lock-delay (each failed attempt drops at least one key, so this ends). Due keys
    /// whose wake-up check failed carry a stale index entry: they are added to `stale`.
    async fn claim_batch(
        &self,
        node: &NodeState,
        mut wants: Vec<Want>,
        stale: &mut Vec<DueKey>,
    ) -> Result<Vec<Claim>, CoordinatorError> {
        while !wants.is_empty() {
            let mut ops = vec![self.session_check(node)];
            // Where each want's operations start.
            let mut starts = Vec::with_capacity(wants.len());
            for w in &wants {
                starts.push(ops.len());
                ops.extend(self.claim_ops(node, w));
            }
            match self.txn(&ops).await? {
                TxnOutcome::Committed(results) => {
                    // The session check, then per key: the lock, the registry entry (and
                    // the wake-up check of a due key).
                    let mut at = 1;
                    let claims = wants
                        .iter()
                        .map(|w| {
                            let r = &results[at..at + w.result_count()];
                            at += w.result_count();
                            Claim {
                                key: w.key().clone(),
                                epoch: Epoch(r[0].modify_index),
                                trigger_seq: TriggerSeq(r[1].modify_index),
                            }
                        })
                        .collect();
                    return Ok(claims);
                }
                TxnOutcome::RolledBack(failures) => {
                    if session_gone(&failures) {
                        return Err(self.lease_lost(node));
                    }
                    let which = |op: usize| starts.iter().rposition(|&s| s <= op);
                    let lost: Vec<usize> = failures
                        .iter()
                        .filter(|f| f.op_index > 0)
                        .filter_map(|f| which(f.op_index))
                        .collect();
                    if lost.is_empty() {
                        return Err(CoordinatorError::backend(
                            BACKEND,
                            "claim transaction rolled back without naming a failed operation",
                            None,
                        ));
                    }
                    let stale_at: Vec<usize> = failures
                        .iter()
                        .filter_map(|f| {
                            let i = which(f.op_index)?;
                            (matches!(wants[i], Want::Due(_))
                                && f.op_index == starts[i] + DUE_WAKE_CHECK)
                                .then_some(i)
                        })
                        .collect();
                    let mut kept = Vec::with_capacity(wants.len());
                    for (i, w) in wants.into_iter().enumerate() {
                        if !lost.contains(&i) {
                            kept.push(w);
                        } else if let (true, Want::Due(d)) = (stale_at.contains(&i), w) {
                            stale.push(d);
                        }
                    }
                    wants = kept;
                }
            }
        }
        Ok(Vec::new())
    }

    /// Claims `wants` in as few transactions as fit Consul's operation limit; then deletes
    /// the stale wake-up index entries met on the way (`delete-cas` at the index read: an
    /// entry rewritten since is a live wake-up and stays). What committed is kept if a later
    /// batch fails (pushed to `claims` as it commits).
    async fn claim_wants(
        &self,
        node: &NodeState,
        wants: Vec<Want>,
        claims: &mut Vec<Claim>,
    ) -> Result<(), CoordinatorError> {
        let mut stale = Vec::new();
        let mut batch: Vec<Want> = Vec::new();
        let mut ops = 1;
        let mut outcome = Ok(());
        for w in wants {
            if ops + w.op_count() > TXN_MAX_OPS {
                match self
                    .claim_batch(node, std::mem::take(&mut batch), &mut stale)
                    .await
                {
                    Ok(c) => claims.extend(c),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
                ops = 1;
            }
            ops += w.op_count();
            batch.push(w);
        }
        if outcome.is_ok() && !batch.is_empty() {
            match self.claim_batch(node, batch, &mut stale).await {
                Ok(c) => claims.extend(c),
                Err(e) => outcome = Err(e),
            }
        }
        let cleanup: Vec<TxnOp> = stale
            .into_iter()
            .map(|d| TxnOp::DeleteCas {
                key: d.entry,
                index: d.index,
            })
            .collect();
        for chunk in cleanup.chunks(TXN_MAX_OPS) {
            // One at a time if one was rewritten meanwhile: the rest still go.
            if let Ok(TxnOutcome::RolledBack(_)) = self.txn(chunk).await {
                for op in chunk {
                    let _ = self.txn(std::slice::from_ref(op)).await;
                }
            }
        }
        outcome
    }

    /// One entry, read linearizably.
    async fn get_consistent(&self, kv_key: &str) -> Result<Option<KvEntry>, CoordinatorError> {
        let got = self
            .client_ref()
            .kv_get(
                kv_key,
                ReadOptions {
                    consistent: true,
                    ..ReadOptions::default()
                },
            )
            .await?;
        Ok(got.value)
    }

    /// The wake-up of a sleeping `key` if it is due by the agent's clock.
    async fn due_wake_of(&self, key: &Key) -> Result<Option<DueKey>, CoordinatorError> {
        let got = self.get_consistent(&self.layout.wake(key)).await?;
        let now_us = wake::floor_us(wake::agent_clock(self.client_ref()).lower);
        Ok(got.and_then(|e| {
            let due_us = wake::due_of(&e).filter(|due| *due <= now_us)?;
            Some(DueKey {
                key: key.clone(),
                entry: self.layout.wake_entry(key, due_us),
                index: e.modify_index,
            })
        }))
    }

    /// Commits `ops` after the fence and a check that the key's trigger sequence is still
    /// `observed` (the check and the change one atomic step); `Some(Retriggered)` if a newer
    /// trigger arrived (nothing changed, the caller keeps the key at the same epoch).
    async fn unless_retriggered(
        &self,
        n: &NodeState,
        key: &Key,
        epoch: Epoch,
        observed: TriggerSeq,
        ops: &[TxnOp],
    ) -> Result<Option<Released>, CoordinatorError> {
        let fence = self.fence_ops(n, key, epoch);
        let mut observed = observed.0;
        loop {
            let mut all = fence.to_vec();
            all.push(TxnOp::CheckIndex {
                key: self.layout.reg(key),
                index: observed,
            });
            all.extend_from_slice(ops);
            match self.txn(&all).await? {
                TxnOutcome::Committed(_) => return Ok(None),
                TxnOutcome::RolledBack(f) if f.iter().any(|f| f.op_index < 2) => {
                    n.local.lock().unwrap().owned.remove(key);
                    return Err(Self::fenced(n, key, epoch));
                }
                TxnOutcome::RolledBack(_) => {}
            }
            // A trigger arrived after `observed`: read it, still fenced.
            let mut read = fence.to_vec();
            read.push(TxnOp::Get {
                key: self.layout.reg(key),
            });
            let seq = match self.txn(&read).await? {
                TxnOutcome::Committed(r) => last_index(&r),
                TxnOutcome::RolledBack(_) => return Err(Self::fenced(n, key, epoch)),
            };
            if seq <= observed {
                // The sequence is not newer (the caller passed a later one than it could
                // have seen): go ahead at the current one.
                observed = seq;
                continue;
            }
            if let Some(o) = n.local.lock().unwrap().owned.get_mut(key) {
                o.seen = o.seen.max(seq);
            }
            return Ok(Some(Released::Retriggered {
                seq: TriggerSeq(seq),
            }));
        }
    }

    /// Due sleeping keys to claim first, up to `max`, from the wake-up index — read only if
    /// the last read shows a wake-up due by now, is 2 s old, or a node announced keys
    /// available since (every `Sleep` does).
    async fn due_keys(
        &self,
        node: &NodeState,
        max: usize,
    ) -> Result<Vec<DueKey>, CoordinatorError> {
        let now_us = wake::floor_us(wake::agent_clock(self.client_ref()).lower);
        let cached = self.wake.lock().unwrap().fresh(RELIST_MAX_AGE);
        if let Some(earliest) = cached {
            if earliest.is_none_or(|e| e > now_us) {
                return Ok(Vec::new());
            }
        }
        let read_at = Instant::now();
        let (due, next) = wake::read_index(self.client_ref(), &self.layout, now_us, max).await?;
        // The claim takes these (or finds them stale); if not, a later read sees them again.
        self.wake.lock().unwrap().set(read_at, next);
        let (wanted, avoided) = {
            let local = node.local.lock().unwrap();
            let now = Instant::now();
            // An owned key's entry is stale (claims delete the wake-up); it is cleaned up by
            // a round after the key is released.
            let unowned = due
                .into_iter()
                .filter(|d| !local.owned.contains_key(&d.key));
            let (wanted, avoided): (Vec<DueKey>, Vec<DueKey>) =
                unowned.partition(|d| local.avoid.get(&d.key).is_none_or(|until| *until <= now));
            (wanted, !avoided.is_empty())
        };
        if avoided {
            // Passed over here, still due: not to be hidden from `next_wake` by this read.
            self.wake.lock().unwrap().stale = true;
        }
        Ok(wanted)
    }

    async fn mark_available(&self) -> Result<(), CoordinatorError> {
        self.txn(&[TxnOp::Set {
            key: self.layout.avail(),
            value: fresh_value(),
        }])
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Coordinator for ConsulCoordinator {
    fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.config.max_state_bytes,
            // `P/k/<key>/wake` with the registry entry, found through the `P/wake/` index,
            // due by the Consul agent's clock (its `Date` headers).
            durable_wake_ups: true,
        }
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        // Consul refuses longer TTLs (`structs.SessionTTLMax`) with a 500, which reads like
        // an outage; say what is wrong before sending anything.
        if ttl > SESSION_TTL_MAX || ttl < Duration::from_millis(1) {
            return Err(CoordinatorError::backend(
                BACKEND,
                format!(
                    "lease ttl {ttl:?} is outside consul's session TTL range (1ms..=24h; the agent's session_ttl_min applies too)"
                ),
                None,
            ));
        }
        let client = self.client_ref();
        let session = client
            .session_create(&SessionSpec {
                name: format!("keyloop {}", node.id),
                ttl,
                lock_delay: self.config.lock_delay,
                behavior: Behavior::Release,
            })
            .await?;
        let record = serde_json::json!({ "name": node.name }).to_string();
        let acquired = client
            .kv_put(
                &self.layout.node(&node.id),
                Bytes::from(record),
                &PutOptions {
                    acquire: Some(session.clone()),
                    ..PutOptions::default()
                },
            )
            .await;
        match acquired {
            Ok(true) => {}
            Ok(false) => {
                let _ = client.session_destroy(&session).await;
                return Err(CoordinatorError::backend(
                    BACKEND,
                    format!("node record of {} is locked by another session", node.id),
                    None,
                ));
            }
            Err(e) => {
                let _ = client.session_destroy(&session).await;
                return Err(e.into());
            }
        }
        let state = Arc::new(NodeState {
            id: node.id,
            session,
            ttl,
            events,
            local: Mutex::new(Local::default()),
            wake: self.wake.clone(),
            watch: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(watch::run(
                client.clone(),
                self.layout.clone(),
                self.config.clone(),
                state.clone(),
            )),
            tokio::spawn(watch::run_nodes(
                client.clone(),
                self.layout.clone(),
                self.config.clone(),
                state.clone(),
            )),
        ];
        *state.watch.lock().unwrap() = tasks;
        // Learn the earliest wake-up now rather than in the first claim round (which then
        // costs what any claim round costs); a failure leaves it to that round.
        if self.wake.lock().unwrap().fresh(RELIST_MAX_AGE).is_none() {
            let read_at = Instant::now();
            if let Ok((_, earliest)) = wake::read_index(client, &self.layout, 0, 0).await {
                self.wake.lock().unwrap().set(read_at, earliest);
            }
        }
        if let Some(old) = self.nodes.lock().unwrap().insert(node.id, state) {
            old.stop_watch();
        }
        Ok(Lease { ttl })
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        let n = self.node(node)?;
        match self.client_ref().session_renew(&n.session).await? {
            None => Err(self.lease_lost(&n)),
            Some(ttl) => Ok(Lease {
                ttl: if ttl.is_zero() { n.ttl } else { ttl },
            }),
        }
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        let Some(n) = self.nodes.lock().unwrap().get(node).cloned() else {
            return Ok(());
        };
        n.stop_watch();
        // Release first, destroy after: released keys carry no lock-delay, so peers can
        // claim them at once; destroying the session with keys still held would delay them.
        let keys = self.list_keys().await?;
        let mut ops: Vec<TxnOp> = keys
            .iter()
            .filter_map(|(key, e)| {
                let own = e.own.as_ref()?;
                (own.session.as_deref() == Some(n.session.as_str())).then(|| TxnOp::Unlock {
                    key: self.layout.own(key),
                    value: released_value(&n.id, own.modify_index),
                    session: n.session.clone(),
                })
            })
            .collect();
        let released_any = !ops.is_empty();
        ops.push(TxnOp::Delete {
            key: self.layout.node(&n.id),
        });
        if released_any {
            ops.push(TxnOp::Set {
                key: self.layout.avail(),
                value: fresh_value(),
            });
        }
        for chunk in ops.chunks(TXN_MAX_OPS) {
            if let TxnOutcome::RolledBack(failures) = self.txn(chunk).await? {
                tracing::warn!(?failures, node = %n.id, "some keys were no longer held at leave");
            }
        }
        self.client_ref().session_destroy(&n.session).await?;
        self.forget(node);
        Ok(())
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        let ops = [
            TxnOp::Set {
                key: self.layout.reg(key),
                value: fresh_value(),
            },
            TxnOp::Delete {
                key: self.layout.park(key),
            },
            // A trigger runs a sleeping key at once and drops its wake-up (as the other
            // backends do). Its index entry stays, stale: the claim that meets it deletes it.
            TxnOp::Delete {
                key: self.layout.wake(key),
            },
            TxnOp::Set {
                key: self.layout.pend(key),
                value: fresh_value(),
            },
            TxnOp::GetOrEmpty {
                key: self.layout.own(key),
            },
        ];
        let results = match self.txn(&ops).await? {
            TxnOutcome::Committed(r) if r.len() == 3 => r,
            other => {
                return Err(CoordinatorError::backend(
                    BACKEND,
                    format!("unexpected trigger transaction outcome: {other:?}"),
                    None,
                ));
            }
        };
        let reg = &results[0];
        let seq = reg.modify_index;
        let owner = owner_of(&results[2]);
        if owner.is_none() {
            // Nobody will consume the marker but a claim: drop it (unless a newer trigger
            // rewrote it) and wake every node instead.
            let ops = [
                TxnOp::DeleteCas {
                    key: self.layout.pend(key),
                    index: seq,
                },
                TxnOp::Set {
                    key: self.layout.avail(),
                    value: fresh_value(),
                },
            ];
            if let TxnOutcome::RolledBack(_) = self.txn(&ops).await? {
                self.mark_available().await?;
            }
        }
        Ok(TriggerOutcome {
            seq: TriggerSeq(seq),
            registered: reg.create_index == reg.modify_index,
            owner,
        })
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        let n = self.node(node)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        // Candidates lost to other claimers are replaced by further ones, so an empty answer
        // means no candidate is left, not that this node lost every race.
        let mut claims = Vec::new();
        let outcome: Result<(), CoordinatorError> = async {
            // Due wake-ups first (as PostgreSQL does), so a stream of new keys cannot keep
            // sleeping keys from running.
            let due = self.due_keys(&n, max).await?;
            if !due.is_empty() {
                let wanted = due.len();
                let before = claims.len();
                self.claim_wants(&n, due.into_iter().map(Want::Due).collect(), &mut claims)
                    .await?;
                if claims.len() - before < wanted {
                    // Some were not taken (another node got them, or they were stale):
                    // read the index again next time rather than trust this read.
                    self.wake.lock().unwrap().stale = true;
                }
            }
            while claims.len() < max {
                let keys = self.candidates(&n, max - claims.len()).await?;
                if keys.is_empty() {
                    return Ok(());
                }
                self.claim_wants(&n, keys.into_iter().map(Want::Free).collect(), &mut claims)
                    .await?;
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {}
            // The session is gone: what it acquired was released with it.
            Err(e @ CoordinatorError::LeaseExpired { .. }) => return Err(e),
            Err(e) if claims.is_empty() => return Err(e),
            // Keys whose transactions committed are this node's now: dropping them would
            // leave them owned by a live node that runs nothing (the contract: `Ok` with
            // what committed; the engine resyncs after a claim error anyway).
            Err(error) => {
                tracing::warn!(%error, committed = claims.len(), node = %n.id, "claim stopped early; keeping what committed");
            }
        }
        self.record_claims(&n, &mut claims);
        Ok(claims)
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        let n = self.node(node)?;
        let mine = n.local.lock().unwrap().owned.get(key).copied();
        if let Some(owned) = mine {
            let mut ops = self.fence_ops(&n, key, Epoch(owned.epoch)).to_vec();
            ops.push(TxnOp::Get {
                key: self.layout.reg(key),
            });
            match self.txn(&ops).await? {
                TxnOutcome::Committed(r) => {
                    return Ok(Some(Claim {
                        key: key.clone(),
                        epoch: Epoch(owned.epoch),
                        trigger_seq: TriggerSeq(last_index(&r).max(owned.seen)),
                    }));
                }
                TxnOutcome::RolledBack(_) => {
                    n.local.lock().unwrap().owned.remove(key);
                }
            }
        }
        {
            let local = n.local.lock().unwrap();
            if local
                .avoid
                .get(key)
                .is_some_and(|until| *until > Instant::now())
            {
                return Ok(None);
            }
        }
        let mut ops = vec![self.session_check(&n)];
        ops.extend(self.claim_ops(&n, &Want::Free(key.clone())));
        let mut claims = match self.txn(&ops).await? {
            // The session check, the lock, the registry entry.
            TxnOutcome::Committed(r) => vec![Claim {
                key: key.clone(),
                epoch: Epoch(r[1].modify_index),
                trigger_seq: TriggerSeq(r[2].modify_index),
            }],
            TxnOutcome::RolledBack(f) if session_gone(&f) => return Err(self.lease_lost(&n)),
            // Asleep (its "not asleep" check failed): claimable if its wake-up is due.
            TxnOutcome::RolledBack(f) if f.iter().any(|f| f.op_index == 1 + FREE_WAKE_CHECK) => {
                let Some(due) = self.due_wake_of(key).await? else {
                    return Ok(None);
                };
                let mut stale = Vec::new();
                self.claim_batch(&n, vec![Want::Due(due)], &mut stale)
                    .await?
            }
            TxnOutcome::RolledBack(_) => return Ok(None),
        };
        self.record_claims(&n, &mut claims);
        Ok(claims.pop())
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        let n = self.node(node).map_err(|_| CoordinatorError::Fenced {
            node: *node,
            key: key.clone(),
            epoch,
        })?;
        let fence = self.fence_ops(&n, key, epoch);
        let outcome = match how {
            Release::Complete { observed_seq } => {
                let ops = [
                    self.layout.reg(key),
                    self.layout.own(key),
                    self.layout.park(key),
                    self.layout.wake(key),
                    self.layout.pend(key),
                    self.layout.state(key),
                ]
                .map(|key| TxnOp::Delete { key });
                if let Some(retriggered) = self
                    .unless_retriggered(&n, key, epoch, observed_seq, &ops)
                    .await?
                {
                    return Ok(retriggered);
                }
                Released::Retired
            }
            Release::Continue { avoid_for } => {
                let mut ops = fence.to_vec();
                ops.push(TxnOp::Unlock {
                    key: self.layout.own(key),
                    value: released_value(&n.id, epoch.0),
                    session: n.session.clone(),
                });
                ops.push(TxnOp::Set {
                    key: self.layout.avail(),
                    value: fresh_value(),
                });
                match self.txn(&ops).await? {
                    TxnOutcome::Committed(_) => {
                        if !avoid_for.is_zero() {
                            n.local
                                .lock()
                                .unwrap()
                                .avoid
                                .insert(key.clone(), Instant::now() + avoid_for);
                        }
                        Released::Released
                    }
                    TxnOutcome::RolledBack(_) => {
                        n.local.lock().unwrap().owned.remove(key);
                        return Err(Self::fenced(&n, key, epoch));
                    }
                }
            }
            Release::Park {
                error,
                observed_seq,
            } => {
                let ops = [
                    TxnOp::Set {
                        key: self.layout.park(key),
                        value: Bytes::from(error),
                    },
                    TxnOp::Unlock {
                        key: self.layout.own(key),
                        value: released_value(&n.id, epoch.0),
                        session: n.session.clone(),
                    },
                ];
                if let Some(retriggered) = self
                    .unless_retriggered(&n, key, epoch, observed_seq, &ops)
                    .await?
                {
                    return Ok(retriggered);
                }
                Released::Released
            }
            Release::Sleep {
                observed_seq,
                until,
            } => {
                // Due by the agent's clock: `After` counts from the latest the agent's clock
                // can read now, so the wake-up is never early however the bounds are off.
                let (due_us, local) = match until {
                    WakeTime::After(delay) => (
                        wake::ceil_us(wake::agent_clock(self.client_ref()).upper + delay),
                        Some(Instant::now() + delay),
                    ),
                    WakeTime::At(at) => (wake::ceil_us(at), None),
                };
                let ops = [
                    TxnOp::Set {
                        key: self.layout.wake(key),
                        value: wake::wake_value(due_us),
                    },
                    TxnOp::Set {
                        key: self.layout.wake_entry(key, due_us),
                        value: fresh_value(),
                    },
                    TxnOp::Unlock {
                        key: self.layout.own(key),
                        value: released_value(&n.id, epoch.0),
                        session: n.session.clone(),
                    },
                    // Every node re-reads the earliest wake-up (nothing became claimable).
                    TxnOp::Set {
                        key: self.layout.wake_marker(),
                        value: fresh_value(),
                    },
                ];
                if let Some(retriggered) = self
                    .unless_retriggered(&n, key, epoch, observed_seq, &ops)
                    .await?
                {
                    return Ok(retriggered);
                }
                self.wake.lock().unwrap().slept(due_us, local);
                Released::Released
            }
            other => {
                return Err(CoordinatorError::backend(
                    BACKEND,
                    format!("unsupported release {other:?}"),
                    None,
                ));
            }
        };
        n.local.lock().unwrap().owned.remove(key);
        Ok(outcome)
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        let n = self.node(node)?;
        let keys = self.list_keys().await?;
        let claims: Vec<Claim> = keys
            .into_iter()
            .filter_map(|(key, e)| {
                let own = e.own?;
                let reg = e.reg?;
                (own.session.as_deref() == Some(n.session.as_str())).then_some(Claim {
                    key,
                    epoch: Epoch(own.modify_index),
                    trigger_seq: TriggerSeq(reg.modify_index),
                })
            })
            .collect();
        let mut local = n.local.lock().unwrap();
        let previous = std::mem::take(&mut local.owned);
        for c in &claims {
            let seen = previous
                .get(&c.key)
                .filter(|o| o.epoch == c.epoch.0)
                .map_or(c.trigger_seq.0, |o| o.seen.max(c.trigger_seq.0));
            local.owned.insert(
                c.key.clone(),
                Owned {
                    epoch: c.epoch.0,
                    seen,
                },
            );
        }
        Ok(claims)
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        let got = self.get_consistent(&self.layout.state(key)).await?;
        Ok(got.map(|e| e.value))
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        let max = self.config.max_state_bytes;
        if state.len() > max {
            return Err(CoordinatorError::StateTooLarge {
                key: key.clone(),
                size: state.len(),
                max,
            });
        }
        let n = self.node(node).map_err(|_| CoordinatorError::Fenced {
            node: *node,
            key: key.clone(),
            epoch,
        })?;
        let mut ops = self.fence_ops(&n, key, epoch).to_vec();
        ops.push(TxnOp::Set {
            key: self.layout.state(key),
            value: state,
        });
        match self.txn(&ops).await? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::RolledBack(_) => Err(Self::fenced(&n, key, epoch)),
        }
    }

    /// How long until the earliest entry of the wake-up index may be due: against the upper
    /// bound of the agent's clock while that is before it, then against the lower bound (a
    /// claim takes a key only once the lower bound has reached its due time, so a round
    /// scheduled early finds nothing and schedules the next for when it surely is). Served from the last read
    /// while it is under 2 s old and no node announced keys available since; otherwise one
    /// listing of the bucket names and one of the earliest bucket. A stale entry (a trigger
    /// dropped its wake-up) may report a time at which nothing falls due: that round
    /// deletes it.
    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        let cached = self.wake.lock().unwrap().fresh(RELIST_MAX_AGE);
        let earliest: Option<u64> = match cached {
            Some(earliest) => earliest,
            None => {
                let read_at = Instant::now();
                let (_, earliest) = wake::read_index(self.client_ref(), &self.layout, 0, 0).await?;
                self.wake.lock().unwrap().set(read_at, earliest);
                earliest
            }
        };
        let clock = wake::agent_clock(self.client_ref());
        let own = earliest.and_then(|due| self.wake.lock().unwrap().own_left(due));
        Ok(earliest.map(|due_us| {
            let due = wake::from_us(due_us);
            // Until the agent's clock may read `due` (its upper bound); once it may, until
            // it surely does (the lower bound), which is when a claim takes the key.
            let by_agent = match due.duration_since(clock.upper) {
                Ok(d) if !d.is_zero() => d,
                _ => due.duration_since(clock.lower).unwrap_or(Duration::ZERO),
            };
            // A wake-up stored here: no later than its delay from the release, locally.
            own.map_or(by_agent, |own| own.min(by_agent))
        }))
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        let ops = [
            TxnOp::GetOrEmpty {
                key: self.layout.reg(key),
            },
            TxnOp::GetOrEmpty {
                key: self.layout.own(key),
            },
            TxnOp::GetOrEmpty {
                key: self.layout.park(key),
            },
            TxnOp::GetOrEmpty {
                key: self.layout.wake(key),
            },
        ];
        let r = match self.txn(&ops).await? {
            TxnOutcome::Committed(r) if r.len() == 4 => r,
            other => {
                return Err(CoordinatorError::backend(
                    BACKEND,
                    format!("unexpected key_info transaction outcome: {other:?}"),
                    None,
                ));
            }
        };
        if r[0].modify_index == 0 {
            return Ok(None);
        }
        Ok(Some(KeyInfo {
            key: key.clone(),
            owner: owner_of(&r[1]),
            epoch: epoch_of(&r[1]),
            trigger_seq: TriggerSeq(r[0].modify_index),
            parked: (r[2].modify_index != 0)
                .then(|| String::from_utf8_lossy(&r[2].value).into_owned()),
            wake_at: wake_at(Some(&r[3])),
        }))
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        let nodes = self
            .client_ref()
            .kv_list(
                &self.layout.nodes_prefix(),
                ReadOptions {
                    consistent: true,
                    ..ReadOptions::default()
                },
            )
            .await?;
        let nodes_prefix = self.layout.nodes_prefix();
        let nodes = nodes
            .value
            .into_iter()
            .filter_map(|e| {
                let id = NodeId::parse(e.key.strip_prefix(&nodes_prefix)?)?;
                let name = serde_json::from_slice::<serde_json::Value>(&e.value)
                    .ok()
                    .and_then(|v| v["name"].as_str().map(str::to_string))
                    .unwrap_or_default();
                Some(NodeSnapshot {
                    id,
                    name,
                    alive: e.session.is_some(),
                })
            })
            .collect();
        let keys = self
            .list_keys()
            .await?
            .into_iter()
            .filter_map(|(key, e)| {
                let reg = e.reg?;
                Some(KeyInfo {
                    key,
                    owner: e.own.as_ref().and_then(owner_of),
                    epoch: e.own.as_ref().and_then(epoch_of),
                    trigger_seq: TriggerSeq(reg.modify_index),
                    parked: e
                        .park
                        .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
                    wake_at: wake_at(e.wake.as_ref()),
                })
            })
            .collect();
        Ok(ClusterSnapshot { nodes, keys })
    }
}
