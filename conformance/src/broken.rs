//! Deliberately broken coordinators, to show that the suite catches them.
//!
//! [`BrokenHarness`] wraps a backend's harness so that every coordinator it hands out has
//! one [`Breakage`]; [`assert_suite_catches`] runs the cases meant to catch that breakage
//! and panics unless each passes on the intact backend and fails on the broken one.
//!
//! ```no_run
//! # async fn demo(harness: std::sync::Arc<dyn keyloop_conformance::Harness>) {
//! use keyloop_conformance::{Breakage, assert_suite_catches};
//!
//! assert_suite_catches(harness, Breakage::TwoOwners).await;
//! # }
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyloop_core::{
    Bytes, Claim, ClusterSnapshot, Coordinator, CoordinatorError, CoordinatorEvent, Defect, Epoch,
    EventSink, Key, KeyInfo, Lease, Limits, NodeId, NodeInfo, Release, Released, TriggerOutcome,
};

use crate::{Harness, Namespace, run_case_to_completion};

/// A way to break a coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Breakage {
    /// Claims also hand out keys that another live node owns (with a made-up epoch one
    /// above the real one), so two nodes run the same key.
    TwoOwners,
    /// `Triggered` events are dropped, and every `Complete` retires the key even when a
    /// trigger the loop did not observe is pending.
    DropsTriggers,
    /// Fenced state saves and releases report success (and change nothing).
    UnfencedWrites,
    /// Leases last half the TTL the node asked for, though the full TTL is reported.
    ShortLeases,
    /// `Continue { avoid_for }` is released without the avoidance.
    IgnoresAvoid,
    /// The coordinator is intact; the engine has a bug it once had.
    Engine(Defect),
}

impl Breakage {
    /// The cases that must fail against a coordinator broken this way.
    pub fn cases_that_must_fail(self) -> &'static [&'static str] {
        match self {
            Breakage::TwoOwners => &[
                "concurrent_claimers_get_disjoint_keys",
                "racing_claims_leave_one_owner",
                "crashed_node_keys_not_claimed_before_ttl",
                "trigger_reaches_owner_on_other_node",
                "graceful_shutdown_hands_off_all_keys",
                "trigger_storm_loses_nothing",
            ],
            Breakage::DropsTriggers => &[
                "trigger_wakes_running_loop",
                "trigger_reaches_owner_on_other_node",
                "burst_of_triggers_coalesces",
                "trigger_during_complete_reruns_loop",
                "lost_notification_does_not_lose_trigger",
                "trigger_storm_loses_nothing",
            ],
            Breakage::UnfencedWrites => &[
                "zombie_save_rejected_after_takeover",
                "zombie_save_rejected_after_expiry_without_takeover",
                "stale_release_rejected",
            ],
            Breakage::ShortLeases => &["crashed_node_keys_not_claimed_before_ttl"],
            Breakage::IgnoresAvoid => &[
                "continue_hands_key_to_other_node",
                "continue_on_single_node_runs_again",
            ],
            Breakage::Engine(defect) => match defect {
                Defect::ResyncTrustsListing => &["resync_never_starts_a_released_key"],
                Defect::ParkIgnoresTriggers => &["trigger_during_failing_run_is_not_parked"],
                Defect::ReleasesAbandonedAtOnce => {
                    &["abandoned_loop_is_released_only_after_its_task_ends"]
                }
                Defect::ChecksBeforeInsert => &["loop_started_during_shutdown_gets_its_signal"],
                Defect::AcceptsStaleEvents => &["stale_incarnation_events_are_ignored"],
                Defect::ForgetsFailedClaims => &["claims_whose_answer_was_lost_still_run"],
                Defect::NoPeriodicResync => &["lost_hint_is_recovered_by_periodic_resync"],
                Defect::AcceptsShortLeases => &["short_granted_lease_is_refused"],
                // Needs a frozen process; the memory backend's freeze test covers it.
                _ => &[],
            },
        }
    }

    /// The engine defect this breakage injects, if it is one.
    pub fn engine_defect(self) -> Option<Defect> {
        match self {
            Breakage::Engine(defect) => Some(defect),
            _ => None,
        }
    }

    /// Every breakage.
    pub const ALL: &'static [Breakage] = &[
        Breakage::TwoOwners,
        Breakage::DropsTriggers,
        Breakage::UnfencedWrites,
        Breakage::ShortLeases,
        Breakage::IgnoresAvoid,
    ];

    /// Wraps `inner` so that it is broken this way.
    pub fn wrap(self, inner: Arc<dyn Coordinator>) -> Arc<dyn Coordinator> {
        match self {
            Breakage::Engine(_) => inner,
            Breakage::TwoOwners => Arc::new(TwoOwners::new(inner)),
            Breakage::DropsTriggers => Arc::new(DropsTriggers::new(inner)),
            other => Arc::new(Lax {
                inner,
                breakage: other,
                ttl: Mutex::new(Duration::ZERO),
            }),
        }
    }
}

/// A harness whose coordinators are all broken with one [`Breakage`].
pub struct BrokenHarness {
    inner: Arc<dyn Harness>,
    breakage: Breakage,
    name: String,
}

impl BrokenHarness {
    /// Breaks every coordinator of `inner`.
    pub fn new(inner: Arc<dyn Harness>, breakage: Breakage) -> BrokenHarness {
        let name = format!("{} broken with {breakage:?}", inner.name());
        BrokenHarness {
            inner,
            breakage,
            name,
        }
    }
}

struct BrokenNamespace {
    inner: Box<dyn Namespace>,
    breakage: Breakage,
}

#[async_trait]
impl Harness for BrokenHarness {
    fn name(&self) -> &str {
        &self.name
    }

    fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl()
    }

    fn expiry_slack(&self) -> Duration {
        self.inner.expiry_slack()
    }

    fn engine_defects(&self) -> Vec<Defect> {
        let mut defects = self.inner.engine_defects();
        defects.extend(self.breakage.engine_defect());
        defects
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(BrokenNamespace {
            inner: self.inner.namespace().await,
            breakage: self.breakage,
        })
    }
}

#[async_trait]
impl Namespace for BrokenNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        self.breakage.wrap(self.inner.coordinator().await)
    }

    async fn restart_backend(&self) -> bool {
        self.inner.restart_backend().await
    }
}

/// Runs every case of [`Breakage::cases_that_must_fail`] twice: against `harness` (it must
/// pass) and against `harness` broken with `breakage` (it must fail). Panics otherwise.
pub async fn assert_suite_catches(harness: Arc<dyn Harness>, breakage: Breakage) {
    let broken: Arc<dyn Harness> = Arc::new(BrokenHarness::new(Arc::clone(&harness), breakage));
    for case in breakage.cases_that_must_fail() {
        if let Err(message) = run_case_to_completion(Arc::clone(&harness), case).await {
            panic!(
                "case {case} fails on the intact backend {}, so its failure on the broken one \
                 proves nothing: {message}",
                harness.name()
            );
        }
        if run_case_to_completion(Arc::clone(&broken), case)
            .await
            .is_ok()
        {
            panic!(
                "case {case} passed against {}; the suite must catch this breakage",
                broken.name()
            );
        }
    }
}

/// Lets a second node claim keys another node owns.
pub struct TwoOwners {
    inner: Arc<dyn Coordinator>,
    /// (claimer, key) pairs already handed out wrongly, so each is handed out once.
    given: Mutex<HashSet<(NodeId, Key)>>,
}

impl TwoOwners {
    /// Breaks `inner`.
    pub fn new(inner: Arc<dyn Coordinator>) -> TwoOwners {
        TwoOwners {
            inner,
            given: Mutex::new(HashSet::new()),
        }
    }

    fn fake(&self, node: &NodeId, info: &KeyInfo) -> Option<Claim> {
        let owner = info.owner?;
        if owner == *node || info.parked.is_some() {
            return None;
        }
        if !self.given.lock().unwrap().insert((*node, info.key.clone())) {
            return None;
        }
        Some(Claim {
            key: info.key.clone(),
            epoch: Epoch(info.epoch.map_or(0, |e| e.0) + 1),
            trigger_seq: info.trigger_seq,
        })
    }
}

/// Drops trigger notifications and retires keys on every `Complete`.
pub struct DropsTriggers {
    inner: Arc<dyn Coordinator>,
}

impl DropsTriggers {
    /// Breaks `inner`.
    pub fn new(inner: Arc<dyn Coordinator>) -> DropsTriggers {
        DropsTriggers { inner }
    }
}

/// Implements `Coordinator` for a breaking wrapper: the methods given, plus forwarding of
/// the ones neither breakage changes.
macro_rules! broken_coordinator {
    ($ty:ty { $($methods:tt)* }) => {
        #[async_trait]
        impl Coordinator for $ty {
        $($methods)*

        fn limits(&self) -> Limits {
            self.inner.limits()
        }

        async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
            self.inner.heartbeat(node).await
        }

        async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
            self.inner.leave(node).await
        }

        async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError> {
            self.inner.trigger(key).await
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

        async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
            self.inner.next_wake().await
        }

        async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
            self.inner.key_info(key).await
        }

        async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
            self.inner.inspect().await
        }
        }
    };
}

broken_coordinator! { TwoOwners {
    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        self.inner.join(node, ttl, events).await
    }

    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError> {
        let mut claims = self.inner.claim(node, max).await?;
        if claims.len() < max {
            let snapshot = self.inner.inspect().await?;
            for info in &snapshot.keys {
                if claims.len() >= max {
                    break;
                }
                if let Some(claim) = self.fake(node, info) {
                    claims.push(claim);
                }
            }
        }
        Ok(claims)
    }

    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError> {
        if let Some(claim) = self.inner.claim_key(node, key).await? {
            return Ok(Some(claim));
        }
        Ok(self
            .inner
            .key_info(key)
            .await?
            .and_then(|info| self.fake(node, &info)))
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
}}

broken_coordinator! { DropsTriggers {
    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        let filtered = EventSink::new(move |event| {
            if !matches!(event, CoordinatorEvent::Triggered { .. }) {
                events.send(event);
            }
        });
        self.inner.join(node, ttl, filtered).await
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
        let how = match how {
            // Pretend the loop saw everything, whatever it saw.
            Release::Complete { .. } => Release::Complete {
                observed_seq: match self.inner.key_info(key).await? {
                    Some(info) => info.trigger_seq,
                    None => keyloop_core::TriggerSeq(u64::MAX),
                },
            },
            other => other,
        };
        self.inner.release(node, key, epoch, how).await
    }
}}

/// The smaller breakages: unfenced writes, short leases, ignored avoidance.
struct Lax {
    inner: Arc<dyn Coordinator>,
    breakage: Breakage,
    /// The TTL the node asked for, reported back in place of the real one.
    ttl: Mutex<Duration>,
}

impl Lax {
    fn lease(&self, real: Lease) -> Lease {
        if self.breakage == Breakage::ShortLeases {
            Lease {
                ttl: *self.ttl.lock().unwrap(),
            }
        } else {
            real
        }
    }

    fn swallow_fence<T>(
        &self,
        result: Result<T, CoordinatorError>,
        pretend: T,
    ) -> Result<T, CoordinatorError> {
        match result {
            Err(CoordinatorError::Fenced { .. } | CoordinatorError::LeaseExpired { .. })
                if self.breakage == Breakage::UnfencedWrites =>
            {
                Ok(pretend)
            }
            other => other,
        }
    }
}

#[async_trait]
impl Coordinator for Lax {
    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError> {
        *self.ttl.lock().unwrap() = ttl;
        let asked = if self.breakage == Breakage::ShortLeases {
            ttl / 2
        } else {
            ttl
        };
        let lease = self.inner.join(node, asked, events).await?;
        Ok(self.lease(lease))
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError> {
        let lease = self.inner.heartbeat(node).await?;
        Ok(self.lease(lease))
    }

    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError> {
        self.inner.leave(node).await
    }

    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError> {
        self.inner.next_wake().await
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
        let how = match how {
            Release::Continue { .. } if self.breakage == Breakage::IgnoresAvoid => {
                Release::Continue {
                    avoid_for: Duration::ZERO,
                }
            }
            other => other,
        };
        let result = self.inner.release(node, key, epoch, how).await;
        self.swallow_fence(result, Released::Released)
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
        let result = self.inner.save_state(node, key, epoch, state).await;
        self.swallow_fence(result, ())
    }

    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError> {
        self.inner.key_info(key).await
    }

    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError> {
        self.inner.inspect().await
    }
}
