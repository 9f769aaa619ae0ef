//! The keyloop conformance suite on sled: every case gets a fresh temporary directory, and
//! `restart_backend` closes the database and opens the directory again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_conformance::{Harness, Namespace, async_trait};
use keyloop_core::{
    Bytes, Claim, ClusterSnapshot, Coordinator, CoordinatorError, Epoch, EventSink, Key, KeyInfo,
    Lease, Limits, NodeId, NodeInfo, Release, Released, TriggerOutcome,
};
use keyloop_sled::{SledCoordinator, SledStore};

struct SledHarness;

#[async_trait]
impl Harness for SledHarness {
    fn name(&self) -> &str {
        "sled"
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SledStore::open(dir.path().join("db")).expect("open a fresh sled store");
        Box::new(SledNamespace {
            current: Arc::new(Mutex::new(Some(store.coordinator()))),
            dir,
        })
    }
}

struct SledNamespace {
    dir: tempfile::TempDir,
    /// The only long-lived handle on the open store, so that a restart really closes it.
    current: Arc<Mutex<Option<Arc<SledCoordinator>>>>,
}

#[async_trait]
impl Namespace for SledNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        Arc::new(Reopenable {
            current: Arc::clone(&self.current),
        })
    }

    async fn restart_backend(&self) -> bool {
        let old = self.current.lock().unwrap().take();
        drop(old);
        let store = SledStore::open(self.dir.path().join("db"))
            .expect("reopen the sled store after closing it");
        assert!(store.was_recovered());
        *self.current.lock().unwrap() = Some(store.coordinator());
        true
    }
}

/// A coordinator of the namespace that always uses the currently open store, as a process
/// restarted on the same directory would.
struct Reopenable {
    current: Arc<Mutex<Option<Arc<SledCoordinator>>>>,
}

impl Reopenable {
    fn get(&self) -> Result<Arc<SledCoordinator>, CoordinatorError> {
        self.current
            .lock()
            .unwrap()
            .clone()
            .ok_or(CoordinatorError::Closed)
    }
}

#[async_trait]
impl Coordinator for Reopenable {
    fn limits(&self) -> Limits {
        self.get().expect("store open").limits()
    }
    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        self.get()?.join(node, ttl, events).await
    }
    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        self.get()?.heartbeat(node).await
    }
    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        self.get()?.leave(node).await
    }
    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        self.get()?.trigger(key).await
    }
    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        self.get()?.claim(node, max).await
    }
    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        self.get()?.claim_key(node, key).await
    }
    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        self.get()?.release(node, key, epoch, how).await
    }
    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        self.get()?.owned(node).await
    }
    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        self.get()?.load_state(key).await
    }
    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        self.get()?.save_state(node, key, epoch, state).await
    }
    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        self.get()?.key_info(key).await
    }
    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        self.get()?.next_wake().await
    }
    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        self.get()?.inspect().await
    }
}

keyloop_conformance::conformance_tests!(SledHarness, paused = true);
