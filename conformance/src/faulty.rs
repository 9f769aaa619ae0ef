//! A coordinator wrapper that injects faults: stalled heartbeats, lost notifications,
//! `Resync`, held calls and answers, claims whose answer is lost after they committed, shortened
//! leases, events from an earlier incarnation, delays around every call, calls that fail
//! before they reach the backend, and events delivered twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// The sink of every join, in order (the engine gives one per incarnation).
    sinks: Mutex<Vec<EventSink>>,
    /// Send time of the last join or heartbeat that succeeded, with the TTL granted.
    last_renewal: Mutex<Option<(Instant, Duration)>>,
    heartbeats: AtomicUsize,
    owned_hold: Mutex<Option<Hold>>,
    claim_hold: Mutex<Option<Hold>>,
    lost_claim_answers: AtomicUsize,
    granted_ttl: Mutex<Option<Duration>>,
    hide_wake_ups: AtomicBool,
    delay: Mutex<Option<Duration>>,
    /// Per-call maxima (by call name), taking precedence over `delay`.
    call_delays: Mutex<HashMap<&'static str, Duration>>,
    delay_seed: AtomicU64,
    /// Calls failing before they reach the backend, per thousand.
    fail_per_mille: AtomicU64,
    failed_calls: AtomicUsize,
    duplicate_events: AtomicBool,
}

/// A held call: it waits at the point of the hold (before it reaches the backend, or after,
/// with its answer) until the case [`release`](Hold::release)s it.
#[derive(Clone, Debug)]
pub struct Hold {
    reached: Arc<watch::Sender<bool>>,
    released: Arc<watch::Sender<bool>>,
    answered: Arc<watch::Sender<bool>>,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            reached: Arc::new(watch::channel(false).0),
            released: Arc::new(watch::channel(false).0),
            answered: Arc::new(watch::channel(false).0),
        }
    }

    /// Waits until the held call is at the point of the hold.
    pub async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Lets the held answer through.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Waits until the held call has returned its answer to the engine.
    pub async fn answered(&self) {
        let mut rx = self.answered.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    async fn hold(&self) {
        self.reached.send_replace(true);
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn answer(&self) {
        self.answered.send_replace(true);
    }
}

impl Faults {
    fn new() -> Faults {
        Faults {
            inner: Arc::new(FaultState {
                stalled: watch::channel(false).0,
                drop_triggers: AtomicBool::new(false),
                dropped: AtomicUsize::new(0),
                sinks: Mutex::new(Vec::new()),
                last_renewal: Mutex::new(None),
                heartbeats: AtomicUsize::new(0),
                owned_hold: Mutex::new(None),
                claim_hold: Mutex::new(None),
                lost_claim_answers: AtomicUsize::new(0),
                granted_ttl: Mutex::new(None),
                hide_wake_ups: AtomicBool::new(false),
                delay: Mutex::new(None),
                call_delays: Mutex::new(HashMap::new()),
                delay_seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
                fail_per_mille: AtomicU64::new(0),
                failed_calls: AtomicUsize::new(0),
                duplicate_events: AtomicBool::new(false),
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
        let sink = self.inner.sinks.lock().unwrap().last().cloned();
        sink.expect("no node joined through this coordinator yet")
            .send(event);
    }

    /// Delivers an event into the sink given at join number `join` (0 for the first): a
    /// late event addressed to an earlier incarnation of the node.
    pub fn inject_into(&self, join: usize, event: CoordinatorEvent) {
        let sink = self.inner.sinks.lock().unwrap().get(join).cloned();
        sink.unwrap_or_else(|| panic!("no join number {join} through this coordinator"))
            .send(event);
    }

    /// How many times a node joined through this coordinator.
    pub fn joins(&self) -> usize {
        self.inner.sinks.lock().unwrap().len()
    }

    /// Holds the answer of the next `owned` call: the backend computes it, then it waits
    /// until the returned [`Hold`] is released.
    pub fn hold_next_owned(&self) -> Hold {
        let hold = Hold::new();
        *self.inner.owned_hold.lock().unwrap() = Some(hold.clone());
        hold
    }

    /// Holds the next `claim` call before it reaches the backend, until the returned
    /// [`Hold`] is released: a claim the engine sent just before something else happened.
    pub fn hold_next_claim(&self) -> Hold {
        let hold = Hold::new();
        *self.inner.claim_hold.lock().unwrap() = Some(hold.clone());
        hold
    }

    /// The next `n` claims that take keys run on the backend (and commit), then fail as if
    /// the answer was lost on the way back.
    pub fn lose_claim_answers(&self, n: usize) {
        self.inner.lost_claim_answers.store(n, Ordering::SeqCst);
    }

    /// Reports `ttl` as the granted lease of every join and heartbeat from now on, whatever
    /// the backend granted (a backend that shortens leases).
    pub fn grant_ttl(&self, ttl: Duration) {
        *self.inner.granted_ttl.lock().unwrap() = Some(ttl);
    }

    /// Reports the backend as one without durable wake-ups from now on
    /// ([`Limits::durable_wake_ups`] `false`), so the engine waits in the loop's task.
    pub fn hide_durable_wake_ups(&self) {
        self.inner.hide_wake_ups.store(true, Ordering::SeqCst);
    }

    /// Delays every call by a pseudo-random time below `max` before it reaches the backend
    /// and again before its answer returns (`None`: no delays). Calls given their own
    /// maximum with [`delay_call`](Self::delay_call) keep it.
    pub fn delay_calls(&self, max: Option<Duration>) {
        *self.inner.delay.lock().unwrap() = max;
    }

    /// Delays the calls named `call` (`"owned"`, `"release"`, `"claim"`, `"claim_key"`,
    /// `"trigger"`, `"heartbeat"`, `"join"`, `"leave"`, `"load_state"`, `"save_state"`) by a
    /// pseudo-random time below `max` before they reach the backend and again before their
    /// answer returns, whatever [`delay_calls`](Self::delay_calls) says (`None`: back to
    /// the delay of every call). Skewed delays make answers go stale on the way back: a
    /// slow `owned` lists keys the node released meanwhile.
    pub fn delay_call(&self, call: &'static str, max: Option<Duration>) {
        let mut delays = self.inner.call_delays.lock().unwrap();
        match max {
            Some(max) => {
                delays.insert(call, max);
            }
            None => {
                delays.remove(call);
            }
        }
    }

    /// Ends every delay: of every call, and of each call named in
    /// [`delay_call`](Self::delay_call).
    pub fn clear_delays(&self) {
        *self.inner.delay.lock().unwrap() = None;
        self.inner.call_delays.lock().unwrap().clear();
    }

    /// Makes about `per_mille` of every thousand calls (join, heartbeat, leave, trigger,
    /// claim, claim_key, release, owned, load_state, save_state) fail with
    /// [`CoordinatorError::Unavailable`] before they reach the backend (0: none). Such a
    /// failure is never ambiguous: the backend did nothing.
    pub fn fail_calls(&self, per_mille: u32) {
        self.inner
            .fail_per_mille
            .store(u64::from(per_mille.min(1000)), Ordering::SeqCst);
    }

    /// How many calls [`fail_calls`](Self::fail_calls) failed so far.
    pub fn failed_calls(&self) -> usize {
        self.inner.failed_calls.load(Ordering::SeqCst)
    }

    /// Delivers every event twice (`true`) or once (`false`) from now on.
    pub fn duplicate_events(&self, duplicate: bool) {
        self.inner
            .duplicate_events
            .store(duplicate, Ordering::SeqCst);
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

    fn renewed(&self, sent: Instant, lease: &mut Lease) {
        if let Some(ttl) = *self.faults.inner.granted_ttl.lock().unwrap() {
            lease.ttl = ttl;
        }
        *self.faults.inner.last_renewal.lock().unwrap() = Some((sent, lease.ttl));
    }

    /// The next pseudo-random number of this wrapper.
    fn random(&self) -> u64 {
        // SplitMix64: cheap, deterministic per wrapper, no dependency.
        let mut z = self
            .faults
            .inner
            .delay_seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Delays the call (see [`Faults::delay_calls`]), then fails it if
    /// [`Faults::fail_calls`] says so, before it reaches the backend.
    async fn before(&self, call: &str) -> Result<(), CoordinatorError> {
        self.delay(call).await;
        let per_mille = self.faults.inner.fail_per_mille.load(Ordering::SeqCst);
        if per_mille > 0 && self.random() % 1000 < per_mille {
            self.faults
                .inner
                .failed_calls
                .fetch_add(1, Ordering::SeqCst);
            return Err(CoordinatorError::unavailable(
                "faulty",
                format!("injected failure of {call}"),
                None,
            ));
        }
        Ok(())
    }

    /// Sleeps a pseudo-random time below the configured maximum of `call`, if any.
    async fn delay(&self, call: &str) {
        let own = self
            .faults
            .inner
            .call_delays
            .lock()
            .unwrap()
            .get(call)
            .copied();
        let max = own.or(*self.faults.inner.delay.lock().unwrap());
        let Some(max) = max else { return };
        let z = self.random();
        let nanos = max.as_nanos().max(1) as u64;
        let wait = Duration::from_nanos(z % nanos);
        if wait.is_zero() || z % 4 == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

#[async_trait]
impl Coordinator for FaultyCoordinator {
    fn limits(&self) -> Limits {
        let mut limits = self.inner.limits();
        if self.faults.inner.hide_wake_ups.load(Ordering::SeqCst) {
            limits.durable_wake_ups = false;
        }
        limits
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        self.faults.inner.sinks.lock().unwrap().push(events.clone());
        let faults = self.faults.clone();
        let filtered = EventSink::new(move |event| {
            if matches!(event, CoordinatorEvent::Triggered { .. })
                && faults.inner.drop_triggers.load(Ordering::SeqCst)
            {
                faults.inner.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if faults.inner.duplicate_events.load(Ordering::SeqCst) {
                events.send(event.clone());
            }
            events.send(event);
        });
        self.before("join").await?;
        let sent = Instant::now();
        let mut lease = self.inner.join(node, ttl, filtered).await?;
        self.renewed(sent, &mut lease);
        self.delay("join").await;
        Ok(lease)
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        self.faults.inner.heartbeats.fetch_add(1, Ordering::SeqCst);
        let mut stalled = self.faults.inner.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        self.before("heartbeat").await?;
        let sent = Instant::now();
        let mut lease = self.inner.heartbeat(node).await?;
        self.renewed(sent, &mut lease);
        self.delay("heartbeat").await;
        Ok(lease)
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        self.before("leave").await?;
        let result = self.inner.leave(node).await;
        self.delay("leave").await;
        result
    }

    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
        self.before("trigger").await?;
        let result = self.inner.trigger(key).await;
        self.delay("trigger").await;
        result
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        let hold = self.faults.inner.claim_hold.lock().unwrap().take();
        if let Some(hold) = &hold {
            hold.hold().await;
        }
        if let Err(e) = self.before("claim").await {
            if let Some(hold) = &hold {
                hold.answer();
            }
            return Err(e);
        }
        let result = self.inner.claim(node, max).await;
        self.delay("claim").await;
        if let Some(hold) = &hold {
            hold.answer();
        }
        let took_some = result.as_ref().is_ok_and(|claims| !claims.is_empty());
        let lost = took_some
            && self
                .faults
                .inner
                .lost_claim_answers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lost {
            return Err(CoordinatorError::unavailable(
                "faulty",
                "the claim committed but its answer was lost",
                None,
            ));
        }
        result
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        self.before("claim_key").await?;
        let result = self.inner.claim_key(node, key).await;
        self.delay("claim_key").await;
        result
    }

    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError> {
        self.before("release").await?;
        let result = self.inner.release(node, key, epoch, how).await;
        self.delay("release").await;
        result
    }

    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError> {
        self.before("owned").await?;
        let result = self.inner.owned(node).await;
        let hold = self.faults.inner.owned_hold.lock().unwrap().take();
        if let Some(hold) = &hold {
            hold.hold().await;
        }
        self.delay("owned").await;
        if let Some(hold) = &hold {
            hold.answer();
        }
        result
    }

    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError> {
        self.before("load_state").await?;
        let result = self.inner.load_state(key).await;
        self.delay("load_state").await;
        result
    }

    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError> {
        self.before("save_state").await?;
        let result = self.inner.save_state(node, key, epoch, state).await;
        self.delay("save_state").await;
        result
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        self.inner.key_info(key).await
    }

    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        self.inner.next_wake().await
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        self.inner.inspect().await
    }
}
