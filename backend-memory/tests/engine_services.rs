//! The engine's own tasks run as supervised services: a panic in the claimer (here, a
//! backend whose `claim` panics once) restarts it and keys still run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyloop_core::{
    Claim, ClusterSnapshot, Coordinator, CoordinatorError, Decision, Engine, Epoch, EventSink, Key,
    KeyInfo, Lease, Limits, NodeId, NodeInfo, Release, Released, TriggerOutcome, async_trait,
    controller_fn,
};
use keyloop_memory::MemoryCluster;
use tokio::sync::Notify;

/// Delegates to the memory backend, but the first `claim` panics.
struct PanicsOnce {
    inner: Arc<dyn Coordinator>,
    panicked: AtomicBool,
}

#[async_trait]
impl Coordinator for PanicsOnce {
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn join(
        &self,
        n: &NodeInfo,
        t: Duration,
        e: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        self.inner.join(n, t, e).await
    }
    async fn heartbeat(&self, n: &NodeId) -> Result<Lease, CoordinatorError> {
        self.inner.heartbeat(n).await
    }
    async fn leave(&self, n: &NodeId) -> Result<(), CoordinatorError> {
        self.inner.leave(n).await
    }
    async fn trigger(&self, k: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        self.inner.trigger(k).await
    }
    async fn claim(&self, n: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("backend bug in claim");
        }
        self.inner.claim(n, max).await
    }
    async fn claim_key(&self, n: &NodeId, k: &Key) -> Result<Option<Claim>, CoordinatorError> {
        self.inner.claim_key(n, k).await
    }
    async fn release(
        &self,
        n: &NodeId,
        k: &Key,
        e: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        self.inner.release(n, k, e, how).await
    }
    async fn owned(&self, n: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        self.inner.owned(n).await
    }
    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        self.inner.next_wake().await
    }
    async fn load_state(&self, k: &Key) -> Result<Option<keyloop_core::Bytes>, CoordinatorError> {
        self.inner.load_state(k).await
    }
    async fn save_state(
        &self,
        n: &NodeId,
        k: &Key,
        e: Epoch,
        s: keyloop_core::Bytes,
    ) -> Result<(), CoordinatorError> {
        self.inner.save_state(n, k, e, s).await
    }
    async fn key_info(&self, k: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        self.inner.key_info(k).await
    }
    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        self.inner.inspect().await
    }
}

#[tokio::test(start_paused = true)]
async fn claimer_panic_is_restarted_and_keys_still_run() {
    let cluster = MemoryCluster::new();
    let coordinator = Arc::new(PanicsOnce {
        inner: cluster.coordinator(),
        panicked: AtomicBool::new(false),
    });
    let ran = Arc::new(Notify::new());
    let controller = {
        let ran = Arc::clone(&ran);
        controller_fn(move |_key, _ctx| {
            let ran = Arc::clone(&ran);
            async move {
                ran.notify_one();
                Ok(Decision::Complete)
            }
        })
    };
    let engine = Engine::builder(coordinator.clone(), controller)
        .start()
        .await
        .unwrap();
    engine.trigger("k").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), ran.notified())
        .await
        .expect("the key ran after the claimer was restarted");
    assert!(coordinator.panicked.load(Ordering::SeqCst));
    let services = engine.services().expect("supervised");
    assert_eq!(services.get("claims").map(|s| s.restarts), Some(1));
    assert_eq!(services.get("lease").map(|s| s.restarts), Some(0));
    engine.shutdown().await;
}
