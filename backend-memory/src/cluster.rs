use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;
use keyloop_core::{CoordinatorEvent, Key, NodeId};
use tokio::time::Instant;

use crate::record::{KeyRecord, NodeEntry, Wake};
use crate::{MemoryConfig, MemoryCoordinator};

const SHARDS: usize = 64;

/// One in-memory cluster: a registry shared by every node built from it.
///
/// Cheap to clone; clones share the same registry.
#[derive(Clone)]
pub struct MemoryCluster {
    pub(crate) state: Arc<ClusterState>,
}

impl Default for MemoryCluster {
    fn default() -> Self {
        MemoryCluster::new()
    }
}

impl std::fmt::Debug for MemoryCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCluster")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl MemoryCluster {
    /// A new, empty cluster with the default configuration.
    pub fn new() -> MemoryCluster {
        MemoryCluster::with_config(MemoryConfig::default())
    }

    /// A new, empty cluster.
    pub fn with_config(config: MemoryConfig) -> MemoryCluster {
        MemoryCluster {
            state: Arc::new(ClusterState {
                config,
                base: Instant::now(),
                hasher: RandomState::default(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                nodes: RwLock::new(HashMap::new()),
                pending: Mutex::new(VecDeque::new()),
                sleeping: Mutex::new(BTreeSet::new()),
                signalled: AtomicBool::new(false),
            }),
        }
    }

    /// A coordinator handle for one more node of this cluster.
    pub fn coordinator(&self) -> Arc<dyn keyloop_core::Coordinator> {
        Arc::new(self.memory_coordinator())
    }

    /// Like [`coordinator`](Self::coordinator), with the concrete type.
    pub fn memory_coordinator(&self) -> MemoryCoordinator {
        MemoryCoordinator {
            state: Arc::clone(&self.state),
        }
    }

    /// Test hook: `node`'s heartbeats hang (a stalled process or a partition) until
    /// [`resume`](Self::resume). Its lease runs out after its TTL.
    pub fn stall(&self, node: NodeId) {
        if let Some(entry) = self.state.node(node) {
            entry.stalled.store(true, Ordering::Release);
        }
    }

    /// Test hook: lets a stalled node's heartbeats through again.
    pub fn resume(&self, node: NodeId) {
        if let Some(entry) = self.state.node(node) {
            entry.stalled.store(false, Ordering::Release);
            entry.unstall.notify_waiters();
        }
    }

    /// Test hook: lets every stalled node's heartbeats through again.
    pub fn resume_everyone(&self) {
        let nodes: Vec<NodeId> = self.state.nodes.read().unwrap().keys().copied().collect();
        for node in nodes {
            self.resume(node);
        }
    }

    /// Whether `key` is in the registry.
    pub fn is_registered(&self, key: &Key) -> bool {
        self.state.shard(key).lock().unwrap().keys.contains_key(key)
    }

    /// Test hook: `node` crashes as far as the backend can tell: its heartbeats hang forever
    /// and it gets no more events; its keys fail over once its lease expires. Combine with
    /// `Engine::kill` to make its loops vanish too.
    pub fn crash(&self, node: NodeId) {
        if let Some(entry) = self.state.node(node) {
            entry.crashed.store(true, Ordering::Release);
            entry.stalled.store(true, Ordering::Release);
        }
    }

    /// Test hook: sends `Resync` to every live node (as a backend does after a gap).
    pub fn resync_all(&self) {
        let now = self.state.now_nanos();
        for node in self.state.live_nodes(now) {
            node.send(CoordinatorEvent::Resync);
        }
    }

    /// Number of registered keys.
    pub fn registered(&self) -> usize {
        self.state
            .shards
            .iter()
            .map(|s| s.lock().unwrap().keys.len())
            .sum()
    }
}

/// One slice of the registry. Epochs and trigger sequences come from per-shard counters:
/// a key always lives in the same shard, so both strictly increase per key forever (also
/// across retirement and re-registration) without a global contended counter.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) keys: HashMap<Key, KeyRecord, RandomState>,
    last_epoch: u64,
    last_seq: u64,
}

impl Shard {
    pub(crate) fn next_epoch(&mut self) -> u64 {
        self.last_epoch += 1;
        self.last_epoch
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }
}

pub(crate) struct ClusterState {
    pub(crate) config: MemoryConfig,
    base: Instant,
    hasher: RandomState,
    pub(crate) shards: Box<[Mutex<Shard>]>,
    pub(crate) nodes: RwLock<HashMap<NodeId, Arc<NodeEntry>>>,
    /// Keys that may be claimable. May hold stale entries; `KeyRecord::queued` prevents
    /// duplicates. Lock order: a shard, then `pending`; never the reverse.
    pub(crate) pending: Mutex<VecDeque<Key>>,
    /// Sleeping keys by due time (cluster-clock nanoseconds). May hold stale entries (a key
    /// triggered, retired or put to sleep again); the record's own wake-up is the truth.
    /// Lock order: a shard, then `sleeping`; never the reverse.
    pub(crate) sleeping: Mutex<BTreeSet<(u64, Key)>>,
    /// Whether `KeysAvailable` went out since the last claim started: one broadcast per
    /// drain of the queue instead of one per queued key.
    signalled: AtomicBool,
}

impl ClusterState {
    pub(crate) fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos(Instant::now())
    }

    pub(crate) fn node(&self, id: NodeId) -> Option<Arc<NodeEntry>> {
        self.nodes.read().unwrap().get(&id).cloned()
    }

    pub(crate) fn live_nodes(&self, now: u64) -> Vec<Arc<NodeEntry>> {
        self.nodes
            .read()
            .unwrap()
            .values()
            .filter(|n| n.alive_at(now))
            .cloned()
            .collect()
    }

    /// Called by a claim before it looks at the queue: the next queued key signals again.
    pub(crate) fn claim_started(&self) {
        self.signalled.store(false, Ordering::Release);
    }

    /// Broadcasts `KeysAvailable` unless it already went out since the last claim started.
    pub(crate) fn signal_available(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.broadcast_available();
        }
    }

    pub(crate) fn broadcast_available(&self) {
        let now = self.now_nanos();
        for node in self.live_nodes(now) {
            node.send(CoordinatorEvent::KeysAvailable);
        }
    }

    /// Puts a key to sleep until `wake` (caller holds the key's shard lock).
    pub(crate) fn sleep(&self, key: &Key, record: &mut KeyRecord, wake: Wake) {
        self.unsleep(key, record);
        record.set_wake(Some(wake));
        self.sleeping
            .lock()
            .unwrap()
            .insert((wake.due, key.clone()));
    }

    /// Drops a key's wake-up, if it has one (caller holds the key's shard lock).
    pub(crate) fn unsleep(&self, key: &Key, record: &mut KeyRecord) {
        if let Some(wake) = record.wake() {
            self.sleeping
                .lock()
                .unwrap()
                .remove(&(wake.due, key.clone()));
            record.set_wake(None);
        }
    }

    /// Queues every sleeping key that is due.
    pub(crate) fn wake_due(&self) {
        let now = self.now_nanos();
        let due: Vec<(u64, Key)> = {
            let mut sleeping = self.sleeping.lock().unwrap();
            let mut due = Vec::new();
            while let Some(first) = sleeping.first() {
                if first.0 > now {
                    break;
                }
                due.extend(sleeping.pop_first());
            }
            due
        };
        for (at, key) in due {
            let mut shard = self.shard(&key).lock().unwrap();
            if let Some(record) = shard.keys.get_mut(&key) {
                if record.wake().is_some_and(|w| w.due == at) {
                    record.set_wake(None);
                    if record.owner.is_none() && record.parked().is_none() {
                        self.enqueue(&key, record);
                    }
                }
            }
        }
    }

    /// How long until the earliest sleeping key is due.
    pub(crate) fn next_wake(&self) -> Option<std::time::Duration> {
        let now = self.now_nanos();
        let first = self.sleeping.lock().unwrap().first().map(|(at, _)| *at)?;
        Some(std::time::Duration::from_nanos(first.saturating_sub(now)))
    }

    /// Puts a claimable key in the pending queue (caller holds the key's shard lock).
    pub(crate) fn enqueue(&self, key: &Key, record: &mut KeyRecord) {
        if !record.queued {
            record.queued = true;
            self.pending.lock().unwrap().push_back(key.clone());
        }
    }

    /// Marks expired nodes gone (a heartbeat can no longer renew them) and queues the keys
    /// they owned.
    pub(crate) fn reap_expired(&self) {
        let now = self.now_nanos();
        let any_expired = self
            .nodes
            .read()
            .unwrap()
            .values()
            .any(|n| !n.alive_at(now));
        if !any_expired {
            return;
        }
        let expired: Vec<Arc<NodeEntry>> = {
            let mut nodes = self.nodes.write().unwrap();
            let expired: Vec<_> = nodes
                .values()
                .filter(|n| n.reap_if_expired(now))
                .cloned()
                .collect();
            for node in &expired {
                nodes.remove(&node.id());
            }
            expired
        };
        if expired.is_empty() {
            return;
        }
        self.release_all_of(&expired);
        self.broadcast_available();
    }

    /// Unowns every key owned by one of `nodes` and queues it.
    pub(crate) fn release_all_of(&self, nodes: &[Arc<NodeEntry>]) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap();
            for (key, record) in shard.keys.iter_mut() {
                let owned_by_them = record
                    .owner
                    .as_ref()
                    .is_some_and(|o| nodes.iter().any(|n| Arc::ptr_eq(o, n)));
                if owned_by_them {
                    record.owner = None;
                    if record.parked().is_none() {
                        self.enqueue(key, record);
                    }
                }
            }
        }
    }
}
