//! The [`Coordinator`] operations over the store.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keyloop_core::{
    Claim, ClusterSnapshot, Coordinator, CoordinatorError, CoordinatorEvent, Epoch, EventSink, Key,
    KeyInfo, Lease, Limits, NodeId, NodeInfo, Release, Released, TriggerOutcome, TriggerSeq,
    WakeTime,
};
use tokio::time::Instant;

use crate::SledStore;
use crate::error::corrupt;
use crate::nodes::Outbox;
use crate::schema::{self, Record};
use crate::store::Core;

/// The [`Coordinator`] of a [`SledStore`], made by [`SledStore::coordinator`].
///
/// Any number of nodes may use one coordinator or several; they all share the store.
/// Node leases live in this process only (measured with `tokio::time::Instant`): after a
/// restart every earlier node is dead and all its keys are claimable at once.
#[derive(Clone, Debug)]
pub struct SledCoordinator {
    store: SledStore,
}

impl SledCoordinator {
    pub(crate) fn new(store: SledStore) -> SledCoordinator {
        SledCoordinator { store }
    }

    /// The store this coordinator works on.
    pub fn store(&self) -> &SledStore {
        &self.store
    }

    fn core(&self) -> &Core {
        self.store.core()
    }
}

impl Core {
    fn read(&self, key: &str) -> Result<Option<Record>, CoordinatorError> {
        match self.tree.get(schema::record_key(key)) {
            Ok(None) => Ok(None),
            Ok(Some(raw)) => Record::decode(&raw)
                .map(Some)
                .map_err(|e| corrupt(&self.label, format!("record of key {key:?}: {e}"))),
            Err(e) => Err(self.err("read", e)),
        }
    }

    /// Writes a key's first record and counts it in the registry tally, in one sled
    /// transaction (the tally is how a damaged file is told from a smaller registry).
    fn create(&self, key: &str, record: &Record) -> Result<(), CoordinatorError> {
        self.change_registry(key, Some(record))
    }

    /// Removes a key's record and state and uncounts it, in one sled transaction.
    fn retire(&self, key: &str) -> Result<(), CoordinatorError> {
        self.change_registry(key, None)
    }

    fn change_registry(&self, key: &str, record: Option<&Record>) -> Result<(), CoordinatorError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let record_key = schema::record_key(key);
        let state_key = schema::state_key(key);
        let encoded = record.map(Record::encode);
        let result: Result<(), TransactionError<String>> = self.tree.transaction(|tx| {
            let (tally, generation) = match tx.get(schema::TALLY_KEY)? {
                Some(raw) => schema::decode_tally(&raw).ok_or_else(|| {
                    ConflictableTransactionError::Abort("the registry tally is damaged".to_owned())
                })?,
                None => (0, 0),
            };
            let tally = match &encoded {
                Some(encoded) => {
                    tx.insert(record_key.as_slice(), encoded.as_slice())?;
                    tally + 1
                }
                None => {
                    tx.remove(record_key.as_slice())?;
                    tx.remove(state_key.as_slice())?;
                    tally.saturating_sub(1)
                }
            };
            tx.insert(
                schema::TALLY_KEY,
                &schema::encode_tally(tally, generation + 1),
            )?;
            Ok(())
        });
        result.map_err(|e| match e {
            TransactionError::Abort(detail) => corrupt(&self.label, detail),
            TransactionError::Storage(e) => self.err("registry change", e),
        })
    }

    fn write(&self, key: &str, record: &Record) -> Result<(), CoordinatorError> {
        self.tree
            .insert(schema::record_key(key), record.encode())
            .map(drop)
            .map_err(|e| self.err("write", e))
    }

    /// The record of `key` if `node` owns it at `epoch` with a live lease. Call under the
    /// key's stripe.
    fn fenced(&self, node: &NodeId, key: &Key, epoch: Epoch) -> Result<Record, CoordinatorError> {
        match self.read(key.as_str())? {
            Some(record)
                if record.owner == Some(*node)
                    && record.epoch == epoch.0
                    && self.nodes.is_alive(node) =>
            {
                Ok(record)
            }
            _ => Err(CoordinatorError::Fenced {
                node: *node,
                key: key.clone(),
                epoch,
            }),
        }
    }

    /// Whether `record` may be claimed by `node` now (call under the key's stripe).
    fn claimable(&self, record: &Record) -> bool {
        record.parked.is_none()
            && record.wake_at.is_none_or(|at| at <= self.clock.now())
            && !record
                .owner
                .is_some_and(|owner| self.nodes.is_alive(&owner))
    }

    /// Gives `record` a new epoch owned by `node` and writes it. Call under the stripe.
    fn acquire(
        &self,
        node: &NodeId,
        key: &Key,
        mut record: Record,
    ) -> Result<Claim, CoordinatorError> {
        // The counter never goes backwards, even after a crash; the max is a second guard.
        record.epoch = self.next_id()?.max(record.epoch.saturating_add(1));
        let previous = record.owner.replace(*node);
        let wake_at = record.wake_at.take();
        self.write(key.as_str(), &record)?;
        if let Some(at) = wake_at {
            self.index.unsleep(key, at);
        }
        self.index.acquired(key, *node, previous);
        Ok(Claim {
            key: key.clone(),
            epoch: Epoch(record.epoch),
            trigger_seq: TriggerSeq(record.trigger_seq),
        })
    }

    fn require_alive(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        if self.nodes.is_alive(node) {
            Ok(())
        } else {
            Err(CoordinatorError::LeaseExpired { node: *node })
        }
    }

    fn decode_entry(&self, raw_key: &[u8], raw: &[u8]) -> Result<(Key, Record), CoordinatorError> {
        let key = Key::from_utf8(&raw_key[1..]).map_err(CoordinatorError::InvalidStoredKey)?;
        let record = Record::decode(raw)
            .map_err(|e| corrupt(&self.label, format!("record of key {key:?}: {e}")))?;
        Ok((key, record))
    }

    /// Every registered key with its record, in key order.
    fn records(&self) -> impl Iterator<Item = Result<(Key, Record), CoordinatorError>> + '_ {
        self.tree
            .scan_prefix([schema::RECORD_PREFIX])
            .map(move |item| {
                let (k, v) = item.map_err(|e| self.err("scan", e))?;
                self.decode_entry(&k, &v)
            })
    }
}

#[async_trait]
impl Coordinator for SledCoordinator {
    fn limits(&self) -> Limits {
        Limits {
            // Stored with the key's record, indexed by wake-up time in memory.
            durable_wake_ups: true,
            max_state_bytes: self.core().config.max_state_bytes,
        }
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        self.core().nodes.join(node, ttl, events);
        Ok(Lease { ttl })
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        match self.core().nodes.heartbeat(node) {
            Some(ttl) => Ok(Lease { ttl }),
            None => Err(CoordinatorError::LeaseExpired { node: *node }),
        }
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        let core = self.core();
        // Removing the node is enough to release its keys: an owner missing from the node
        // table is dead, so its records are claimable at once and its fenced writes fail.
        // This keeps `leave` O(1) whatever the registry size.
        if core.nodes.leave(node) {
            core.index.free_dead(|n| core.nodes.is_alive(n));
            let mut out = Outbox::default();
            core.nodes.to_all(CoordinatorEvent::KeysAvailable, &mut out);
            out.send();
        }
        Ok(())
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        let core = self.core();
        let (outcome, live_owner) = {
            let _stripe = core.stripe(key.as_str());
            let existing = core.read(key.as_str())?;
            let registered = existing.is_none();
            let mut record = existing.unwrap_or(Record {
                trigger_seq: 0,
                epoch: 0,
                owner: None,
                parked: None,
                wake_at: None,
            });
            // A trigger runs a sleeping key at once; its wake-up is dropped.
            if let Some(at) = record.wake_at.take() {
                core.index.unsleep(key, at);
            }
            // A global, crash-safe counter: the sequence never decreases for a key, also
            // after it was retired and registered again.
            record.trigger_seq = core.next_id()?.max(record.trigger_seq.saturating_add(1));
            record.parked = None;
            if registered {
                core.create(key.as_str(), &record)?;
            } else {
                core.write(key.as_str(), &record)?;
            }
            let live_owner = record.owner.filter(|o| core.nodes.is_alive(o));
            if live_owner.is_none() {
                core.index.set_free(key);
            }
            (
                TriggerOutcome {
                    seq: TriggerSeq(record.trigger_seq),
                    registered,
                    owner: live_owner,
                },
                live_owner,
            )
        };
        core.commit().await?;
        let mut out = Outbox::default();
        match live_owner {
            Some(owner) => core.nodes.to_node(
                &owner,
                CoordinatorEvent::Triggered {
                    key: key.clone(),
                    seq: outcome.seq,
                },
                &mut out,
            ),
            None => core.nodes.to_all(CoordinatorEvent::KeysAvailable, &mut out),
        }
        out.send();
        Ok(outcome)
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        let core = self.core();
        core.require_alive(node)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        core.index.free_dead(|n| core.nodes.is_alive(n));
        core.index.wake_due(core.clock.now());
        let avoided = core.nodes.avoided(node);
        let now = Instant::now();
        let mut claims = Vec::new();
        let mut after: Option<Key> = None;
        // Every acquired record is this node's from the moment it is written: an error
        // later in the batch (or in the flush) must not hide it from the engine, or the key
        // stays owned by a live node that runs nothing. The contract: Err only when nothing
        // was taken.
        let mut failed: Option<CoordinatorError> = None;
        'scan: loop {
            let batch = core
                .index
                .candidates(after.as_ref(), max.min(1024) + avoided.len());
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.clone());
            for key in batch {
                if avoided.get(&key).is_some_and(|until| *until > now) {
                    continue;
                }
                let _stripe = core.stripe(key.as_str());
                let read = match core.read(key.as_str()) {
                    Ok(read) => read,
                    Err(error) => {
                        failed = Some(error);
                        break 'scan;
                    }
                };
                let record = match read {
                    Some(record) if core.claimable(&record) => record,
                    // A stale hint. Owned by a live node: file it under that node again
                    // rather than dropping it, so that if the node dies right now the
                    // next `free_dead` still finds the key.
                    Some(Record {
                        owner: Some(owner),
                        parked: None,
                        ..
                    }) => {
                        core.index.acquired(&key, owner, None);
                        continue;
                    }
                    // Retired or parked: a trigger makes it free again.
                    _ => {
                        core.index.drop_free(&key);
                        continue;
                    }
                };
                if !core.nodes.is_alive(node) {
                    // Expired mid-claim: what it got so far is worthless, as its lease is gone.
                    return Err(CoordinatorError::LeaseExpired { node: *node });
                }
                match core.acquire(node, &key, record) {
                    Ok(claim) => claims.push(claim),
                    Err(error) => {
                        failed = Some(error);
                        break 'scan;
                    }
                }
                if claims.len() == max {
                    break 'scan;
                }
            }
        }
        if claims.is_empty() {
            return failed.map_or(Ok(claims), Err);
        }
        if let Some(error) = failed {
            tracing::warn!(%error, claimed = claims.len(), "claim batch failed part-way: returning the claims taken");
        }
        // Ownership does not outlive the process, so a failed flush does not undo the
        // claims; the next durable write flushes them with it.
        if let Err(error) = core.commit().await {
            tracing::warn!(%error, "flushing claims failed: returning the claims taken");
        }
        Ok(claims)
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        let core = self.core();
        core.require_alive(node)?;
        if core
            .nodes
            .avoided(node)
            .get(key)
            .is_some_and(|until| *until > Instant::now())
        {
            return Ok(None);
        }
        let claim = {
            let _stripe = core.stripe(key.as_str());
            let Some(record) = core.read(key.as_str())? else {
                return Ok(None);
            };
            if record.owner == Some(*node) && record.parked.is_none() {
                // Already ours (the lease was checked above): the existing claim.
                return Ok(Some(Claim {
                    key: key.clone(),
                    epoch: Epoch(record.epoch),
                    trigger_seq: TriggerSeq(record.trigger_seq),
                }));
            }
            if !core.claimable(&record) {
                return Ok(None);
            }
            core.acquire(node, key, record)?
        };
        core.commit().await?;
        Ok(Some(claim))
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        let core = self.core();
        let mut wake_others = false;
        let released = {
            let _stripe = core.stripe(key.as_str());
            let mut record = core.fenced(node, key, epoch)?;
            match how {
                Release::Complete { observed_seq } => {
                    if record.trigger_seq > observed_seq.0 {
                        // Nothing written: the caller keeps the key at the same epoch.
                        return Ok(Released::Retriggered {
                            seq: TriggerSeq(record.trigger_seq),
                        });
                    }
                    core.retire(key.as_str())?;
                    core.index.remove(key, Some(*node));
                    Released::Retired
                }
                Release::Continue { avoid_for } => {
                    record.owner = None;
                    core.write(key.as_str(), &record)?;
                    core.index.released(key, *node);
                    if !avoid_for.is_zero() {
                        core.nodes
                            .avoid(node, key.clone(), Instant::now() + avoid_for);
                    }
                    wake_others = true;
                    Released::Released
                }
                Release::Park {
                    error,
                    observed_seq,
                } => {
                    if record.trigger_seq > observed_seq.0 {
                        // Nothing written: the unobserved trigger resumes the key here.
                        return Ok(Released::Retriggered {
                            seq: TriggerSeq(record.trigger_seq),
                        });
                    }
                    record.owner = None;
                    record.parked = Some(error);
                    core.write(key.as_str(), &record)?;
                    core.index.remove(key, Some(*node));
                    Released::Released
                }
                Release::Sleep {
                    observed_seq,
                    until,
                } => {
                    if record.trigger_seq > observed_seq.0 {
                        return Ok(Released::Retriggered {
                            seq: TriggerSeq(record.trigger_seq),
                        });
                    }
                    let at = match until {
                        WakeTime::After(delay) => core
                            .clock
                            .now()
                            .saturating_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)),
                        WakeTime::At(at) => unix_nanos(at),
                    };
                    record.owner = None;
                    record.wake_at = Some(at);
                    core.write(key.as_str(), &record)?;
                    core.index.sleep(key, *node, at);
                    Released::Released
                }
                // `Release` is non-exhaustive for callers; this build knows every variant.
                #[allow(unreachable_patterns)]
                other => {
                    return Err(CoordinatorError::backend(
                        format!("sled at {}", core.label),
                        format!("unsupported release {other:?}"),
                        None,
                    ));
                }
            }
        };
        core.commit().await?;
        if wake_others {
            let mut out = Outbox::default();
            core.nodes.to_all(CoordinatorEvent::KeysAvailable, &mut out);
            out.send();
        }
        Ok(released)
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        let core = self.core();
        core.require_alive(node)?;
        let mut keys = core.index.owned_by(node);
        keys.sort();
        let mut claims = Vec::with_capacity(keys.len());
        for key in keys {
            // The record is the truth; the index only says where to look.
            if let Some(record) = core.read(key.as_str())? {
                if record.owner == Some(*node) {
                    claims.push(Claim {
                        key,
                        epoch: Epoch(record.epoch),
                        trigger_seq: TriggerSeq(record.trigger_seq),
                    });
                }
            }
        }
        Ok(claims)
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        let core = self.core();
        core.tree
            .get(schema::state_key(key.as_str()))
            .map(|v| v.map(|v| Bytes::copy_from_slice(&v)))
            .map_err(|e| core.err("load_state", e))
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        let core = self.core();
        let max = core.config.max_state_bytes;
        if state.len() > max {
            return Err(CoordinatorError::StateTooLarge {
                key: key.clone(),
                size: state.len(),
                max,
            });
        }
        {
            let _stripe = core.stripe(key.as_str());
            core.fenced(node, key, epoch)?;
            core.tree
                .insert(schema::state_key(key.as_str()), state.as_ref())
                .map_err(|e| core.err("save_state", e))?;
        }
        core.commit().await
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        let core = self.core();
        Ok(core
            .read(key.as_str())?
            .map(|record| info(core, key.clone(), record)))
    }

    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        let now = self.core().clock.now();
        Ok(self
            .core()
            .index
            .next_wake()
            .map(|at| Duration::from_nanos(at.saturating_sub(now))))
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        let core = self.core();
        let nodes = core.nodes.snapshot();
        let keys = core
            .records()
            .map(|entry| entry.map(|(key, record)| info(core, key, record)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterSnapshot { nodes, keys })
    }
}

fn info(core: &Core, key: Key, record: Record) -> KeyInfo {
    KeyInfo {
        key,
        owner: record.owner.filter(|o| core.nodes.is_alive(o)),
        epoch: (record.epoch > 0).then_some(Epoch(record.epoch)),
        trigger_seq: TriggerSeq(record.trigger_seq),
        parked: record.parked,
        wake_at: record
            .wake_at
            .map(|at| std::time::UNIX_EPOCH + Duration::from_nanos(at)),
    }
}

/// Nanoseconds since the Unix epoch by the wall clock (0 before it).
pub(crate) fn unix_nanos(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The store's clock for wake-ups: the wall clock read when this process first opened the
/// directory, advanced by tokio's monotonic clock since. Wall-anchored, so a stored
/// wake-up means the same instant after a process restart (as far as the machine's wall
/// clock is right); monotonic within a process, also across close and reopen, so a
/// wall-clock step does not wake keys early or late; and it follows tokio's paused clock
/// in tests.
#[derive(Clone, Copy)]
pub(crate) struct WakeClock {
    wall_at_open: u64,
    opened: Instant,
}

impl WakeClock {
    pub(crate) fn start() -> WakeClock {
        WakeClock {
            wall_at_open: unix_nanos(std::time::SystemTime::now()),
            opened: Instant::now(),
        }
    }

    /// Now, in Unix nanoseconds.
    pub(crate) fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wall_at_open.saturating_add(elapsed)
    }
}
