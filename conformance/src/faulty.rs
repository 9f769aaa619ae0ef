//! A coordinator wrapper that injects faults: stalled heartbeats, lost notifications and
//! `Resync`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyloop_core::{
    Bytes, Claim, ClusterSnapshot, Coordinator, CoordinatorError, CoordinatorEvent, Epoch,
    EventSink, Key, KeyInfo, Lease, Limits, NodeId, NodeInfo, Release, Released, TriggerOutcome,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// Controls the faults of one [`FaultyCoordinator`]; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultState>,
}

struct FaultState {
    stalled: watch::Sender<bool>,
    drop_triggers: AtomicBool,
    dropped: AtomicUsize,
    sink: Mutex<Option<EventSink>>,
    /// Send time of the last join or heartbeat that succeeded, with the TTL granted.
    last_renewal: Mutex<Option<(Instant, Duration)>>,
    heartbeats: AtomicUsize,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            inner: Arc::new(FaultState {
                stalled: watch::channel(false).0,
                drop_triggers: AtomicBool::new(false),
                dropped: AtomicUsize::new(0),
                sink: Mutex::new(None),
                last_renewal: Mutex::new(None),
                heartbeats: AtomicUsize::new(0),
            }),
        }
    }

    /// Makes every heartbeat hang (the node looks stalled to the backend) until
    /// [`resume_heartbeats`](Self::resume_heartbeats).
    pub fn stall_heartbeats(&self) {
        self.inner.stalled.send_replace(true);
    }

    /// Lets heartbeats through again.
    pub fn resume_heartbeats(&self) {
        self.inner.stalled.send_replace(false);
    }

    /// Drops (`true`) or delivers (`false`) `Triggered` events from now on.
    pub fn drop_triggers(&self, drop: bool) {
        self.inner.drop_triggers.store(drop, Ordering::SeqCst);
    }

    /// How many `Triggered` events were dropped.
    pub fn dropped_triggers(&self) -> usize {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    /// Delivers an event straight into the sink the engine gave at its latest `join`.
    pub fn inject(&self, event: CoordinatorEvent) {
        let sink = self.inner.sink.lock().unwrap().clone();
        sink.expect("no node joined through this coordinator yet")
            .send(event);
    }

    /// Delivers `Resync` to the engine.
    pub fn inject_resync(&self) {
        self.inject(CoordinatorEvent::Resync);
    }

    /// When the last successful join or heartbeat was *sent*, and the TTL it granted: the
    /// backend cannot expire the lease before `sent + ttl`.
    pub fn last_renewal(&self) -> Option<(Instant, Duration)> {
        *self.inner.last_renewal.lock().unwrap()
    }

    /// Heartbeats attempted so far.
    pub fn heartbeats(&self) -> usize {
        self.inner.heartbeats.load(Ordering::SeqCst)
    }
}

/// Wraps any coordinator and injects faults controlled through [`Faults`].
pub struct FaultyCoordinator {
    inner: Arc<dyn Coordinator>,
    faults: Faults,
}

impl FaultyCoordinator {
    /// Wraps `inner`; returns the wrapper and its fault controls.
    pub fn wrap(inner: Arc<dyn Coordinator>) -> (Arc<FaultyCoordinator>, Faults) {
        let faults = Faults::new();
        (
            Arc::new(FaultyCoordinator {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }

    fn renewed(&self, sent: Instant, lease: &Lease) {
        *self.faults.inner.last_renewal.lock().unwrap() = Some((sent, lease.ttl));
    }
}

#[async_trait]
impl Coordinator for FaultyCoordinator {
    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        *self.faults.inner.sink.lock().unwrap() = Some(events.clone());
        let faults = self.faults.clone();
        let filtered = EventSink::new(move |event| {
            if matches!(event, CoordinatorEvent::Triggered { .. })
                && faults.inner.drop_triggers.load(Ordering::SeqCst)
            {
                faults.inner.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            events.send(event);
        });
        let sent = Instant::now();
        let lease = self.inner.join(node, ttl, filtered).await?;
        self.renewed(sent, &lease);
        Ok(lease)
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        self.faults.inner.heartbeats.fetch_add(1, Ordering::SeqCst);
        let mut stalled = self.faults.inner.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        let sent = Instant::now();
        let lease = self.inner.heartbeat(node).await?;
        self.renewed(sent, &lease);
        Ok(lease)
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        self.inner.leave(node).await
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        self.inner.trigger(key).await
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        self.inner.claim(node, max).await
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        self.inner.claim_key(node, key).await
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        self.inner.release(node, key, epoch, how).await
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        self.inner.owned(node).await
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        self.inner.load_state(key).await
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        self.inner.save_state(node, key, epoch, state).await
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        self.inner.key_info(key).await
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        self.inner.inspect().await
    }
}
