use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use keyloop_core::{
    Claim, ClusterSnapshot, Coordinator, CoordinatorError, CoordinatorEvent, Epoch, EventSink, Key,
    KeyInfo, Lease, Limits, NodeId, NodeInfo, NodeSnapshot, Release, Released, TriggerOutcome,
    TriggerSeq,
};
use tokio::time::Instant;

use crate::cluster::ClusterState;
use crate::record::{KeyRecord, NodeEntry, Wake};

/// One node's handle on a [`MemoryCluster`](crate::MemoryCluster).
#[derive(Clone)]
pub struct MemoryCoordinator {
    pub(crate) state: Arc<ClusterState>,
}

impl std::fmt::Debug for MemoryCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryCoordinator")
    }
}

impl MemoryCoordinator {
    /// Checks that `node` owns `record` at `epoch` with a live lease.
    fn check_fence(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        record: Option<&KeyRecord>,
    ) -> Result<(), CoordinatorError> {
        let now = self.state.now_nanos();
        let owns = record.is_some_and(|r| {
            r.epoch == epoch.0 && r.live_owner(now).is_some_and(|o| o.id() == *node)
        });
        if owns {
            Ok(())
        } else {
            Err(CoordinatorError::Fenced {
                node: *node,
                key: key.clone(),
                epoch,
            })
        }
    }

    fn trigger_sync(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        let (seq, registered, owner, queued) = {
            let mut guard = self.state.shard(key).lock().unwrap();
            let shard = &mut *guard;
            let seq = shard.next_seq();
            let (registered, record) = match shard.keys.get_mut(key) {
                Some(record) => (false, record),
                None => (true, shard.keys.entry(key.clone()).or_default()),
            };
            record.seq = seq;
            record.set_parked(None);
            // A trigger runs a sleeping key at once; its wake-up is dropped.
            self.state.unsleep(key, record);
            // No clock here: an owner whose lease ran out but was not reaped yet gets a
            // harmless hint; the reaper queues its keys at the next claim.
            let owner = record.owner.as_ref().filter(|o| !o.is_gone());
            let owner_id = match owner {
                // Sent under the shard lock (the sink never calls back into the backend):
                // no reference count traffic on the owner per trigger.
                Some(owner) => {
                    owner.send(CoordinatorEvent::Triggered {
                        key: key.clone(),
                        seq: TriggerSeq(seq),
                    });
                    Some(owner.id())
                }
                None => None,
            };
            if owner_id.is_none() {
                self.state.enqueue(key, record);
            }
            (seq, registered, owner_id, owner_id.is_none())
        };
        if queued {
            self.state.signal_available();
        }
        Ok(TriggerOutcome {
            seq: TriggerSeq(seq),
            registered,
            owner,
        })
    }

    fn claimable(&self, record: &KeyRecord, node: NodeId, now: u64, at: Instant) -> bool {
        record.owner_gone(now)
            && record.parked().is_none()
            && record.wake().is_none_or(|w| w.due <= now)
            && !record.avoided_by(node, at)
    }

    fn grant(&self, node: &Arc<NodeEntry>, key: &Key, epoch: u64, record: &mut KeyRecord) -> Claim {
        record.owner = Some(Arc::clone(node));
        record.epoch = epoch;
        record.prune_avoid(Instant::now());
        Claim {
            key: key.clone(),
            epoch: Epoch(epoch),
            trigger_seq: TriggerSeq(record.seq),
        }
    }

    fn live_node(&self, node: &NodeId) -> Result<Arc<NodeEntry>, CoordinatorError> {
        let now = self.state.now_nanos();
        self.state
            .node(*node)
            .filter(|n| n.alive_at(now))
            .ok_or(CoordinatorError::LeaseExpired { node: *node })
    }
}

#[async_trait]
impl Coordinator for MemoryCoordinator {
    fn limits(&self) -> Limits {
        Limits {
            max_state_bytes: self.state.config.max_state_bytes,
            durable_wake_ups: true,
        }
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        let expires = self.state.nanos(Instant::now() + ttl);
        let entry = Arc::new(NodeEntry::new(node.clone(), events, ttl, expires));
        self.state.nodes.write().unwrap().insert(node.id, entry);
        let has_pending = !self.state.pending.lock().unwrap().is_empty();
        if has_pending {
            self.state.broadcast_available();
        }
        Ok(Lease { ttl })
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        let entry = self
            .state
            .node(*node)
            .ok_or(CoordinatorError::LeaseExpired { node: *node })?;
        while entry.stalled.load(Ordering::Acquire) {
            let unstalled = entry.unstall.notified();
            tokio::pin!(unstalled);
            unstalled.as_mut().enable();
            if !entry.stalled.load(Ordering::Acquire) {
                break;
            }
            unstalled.await;
        }
        let ttl = entry.ttl;
        if !entry.renew(|| self.state.now_nanos(), ttl) {
            self.state.reap_expired();
            return Err(CoordinatorError::LeaseExpired { node: *node });
        }
        Ok(Lease { ttl })
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        let entry = self.state.nodes.write().unwrap().remove(node);
        if let Some(entry) = entry {
            entry.leave();
            self.state.release_all_of(&[entry]);
            self.state.broadcast_available();
        }
        Ok(())
    }

    fn trigger_now(&self, key: &Key) -> Option<Result<TriggerOutcome, CoordinatorError>> {
        Some(self.trigger_sync(key))
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        self.trigger_sync(key)
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        self.state.reap_expired();
        self.state.wake_due();
        let entry = self.live_node(node)?;
        self.state.claim_started();
        let at = Instant::now();
        let now = self.state.nanos(at);
        let mut claims = Vec::new();
        let mut skipped = Vec::new();
        while claims.len() < max {
            let batch: Vec<Key> = {
                let mut pending = self.state.pending.lock().unwrap();
                let n = (max - claims.len()).min(pending.len());
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            for key in batch {
                let mut guard = self.state.shard(&key).lock().unwrap();
                let shard = &mut *guard;
                let Some(record) = shard.keys.get_mut(&key) else {
                    continue;
                };
                // A key not yet due stays out of the queue: `wake_due` queues it again.
                let asleep = record.wake().is_some_and(|w| w.due > now);
                if !record.owner_gone(now) || record.parked().is_some() || asleep {
                    record.queued = false;
                } else if record.avoided_by(*node, at) {
                    skipped.push(key);
                } else {
                    record.queued = false;
                    let epoch = shard.next_epoch();
                    let record = shard.keys.get_mut(&key).expect("present");
                    self.state.unsleep(&key, record);
                    claims.push(self.grant(&entry, &key, epoch, record));
                }
            }
        }
        if !skipped.is_empty() {
            self.state.pending.lock().unwrap().extend(skipped);
        }
        Ok(claims)
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        self.state.reap_expired();
        let entry = self.live_node(node)?;
        let at = Instant::now();
        let now = self.state.nanos(at);
        let mut guard = self.state.shard(key).lock().unwrap();
        let shard = &mut *guard;
        let Some(record) = shard.keys.get_mut(key) else {
            return Ok(None);
        };
        if !record.owner_gone(now) {
            let mine = record.owner.as_ref().is_some_and(|o| o.id() == *node);
            return Ok(mine.then(|| Claim {
                key: key.clone(),
                epoch: Epoch(record.epoch),
                trigger_seq: TriggerSeq(record.seq),
            }));
        }
        if !self.claimable(record, *node, now, at) {
            return Ok(None);
        }
        // The key may still sit in the pending queue; `claim` drops it there as owned.
        let epoch = shard.next_epoch();
        let record = shard.keys.get_mut(key).expect("present");
        self.state.unsleep(key, record);
        Ok(Some(self.grant(&entry, key, epoch, record)))
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        let released = {
            let mut shard = self.state.shard(key).lock().unwrap();
            self.check_fence(node, key, epoch, shard.keys.get(key))?;
            let record = shard.keys.get_mut(key).expect("checked by the fence");
            match how {
                Release::Complete { observed_seq } => {
                    if record.seq <= observed_seq.0 {
                        shard.keys.remove(key);
                        return Ok(Released::Retired);
                    }
                    return Ok(Released::Retriggered {
                        seq: TriggerSeq(record.seq),
                    });
                }
                Release::Continue { avoid_for } => {
                    record.owner = None;
                    if !avoid_for.is_zero() {
                        let now = Instant::now();
                        record.add_avoid(*node, now + avoid_for, now);
                    }
                    self.state.enqueue(key, record);
                    true
                }
                Release::Sleep {
                    observed_seq,
                    until,
                } => {
                    if record.seq > observed_seq.0 {
                        return Ok(Released::Retriggered {
                            seq: TriggerSeq(record.seq),
                        });
                    }
                    record.owner = None;
                    let now = self.state.now_nanos();
                    let (delay, wall) = until.resolve(SystemTime::now());
                    let due =
                        now.saturating_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX));
                    self.state.sleep(key, record, Wake { due, wall });
                    // `KeysAvailable` makes every live node run a claim round, which
                    // also asks for the new earliest wake-up (the contract).
                    true
                }
                Release::Park {
                    error,
                    observed_seq,
                } => {
                    if record.seq > observed_seq.0 {
                        return Ok(Released::Retriggered {
                            seq: TriggerSeq(record.seq),
                        });
                    }
                    record.owner = None;
                    record.set_parked(Some(error));
                    false
                }
                _ => false,
            }
        };
        if released {
            self.state.signal_available();
        }
        Ok(Released::Released)
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        let _ = self.live_node(node)?;
        let now = self.state.now_nanos();
        let mut out = Vec::new();
        for shard in self.state.shards.iter() {
            for (key, record) in shard.lock().unwrap().keys.iter() {
                if record.live_owner(now).is_some_and(|o| o.id() == *node) {
                    out.push(Claim {
                        key: key.clone(),
                        epoch: Epoch(record.epoch),
                        trigger_seq: TriggerSeq(record.seq),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        let shard = self.state.shard(key).lock().unwrap();
        Ok(shard.keys.get(key).and_then(|r| r.state().cloned()))
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        let max = self.state.config.max_state_bytes;
        if state.len() > max {
            return Err(CoordinatorError::StateTooLarge {
                key: key.clone(),
                size: state.len(),
                max,
            });
        }
        let mut shard = self.state.shard(key).lock().unwrap();
        self.check_fence(node, key, epoch, shard.keys.get(key))?;
        if let Some(record) = shard.keys.get_mut(key) {
            record.set_state(state);
        }
        Ok(())
    }

    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        Ok(self.state.next_wake())
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        let now = self.state.now_nanos();
        let shard = self.state.shard(key).lock().unwrap();
        Ok(shard.keys.get(key).map(|r| info(key, r, now)))
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        let now = self.state.now_nanos();
        let mut nodes: Vec<NodeSnapshot> = self
            .state
            .nodes
            .read()
            .unwrap()
            .values()
            .map(|n| NodeSnapshot {
                id: n.id(),
                name: n.info.name.clone(),
                alive: n.alive_at(now),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let mut keys = Vec::new();
        for shard in self.state.shards.iter() {
            for (key, record) in shard.lock().unwrap().keys.iter() {
                keys.push(info(key, record, now));
            }
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(ClusterSnapshot { nodes, keys })
    }
}

fn info(key: &Key, record: &KeyRecord, now: u64) -> KeyInfo {
    KeyInfo {
        key: key.clone(),
        owner: record.live_owner(now).map(|o| o.id()),
        epoch: (record.epoch > 0).then_some(Epoch(record.epoch)),
        trigger_seq: TriggerSeq(record.seq),
        parked: record.parked().cloned(),
        wake_at: record.wake().map(|w| w.wall),
    }
}
