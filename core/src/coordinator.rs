use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{CoordinatorError, Epoch, EventSink, Key, NodeId, NodeInfo, TriggerSeq};

/// The lease a backend granted to a node, measured on the backend's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How long the lease lasts from the moment the backend processed the request. The
    /// backend never expires it earlier; the engine self-fences before it runs out,
    /// measuring from the moment it *sent* the request on its own monotonic clock.
    pub ttl: Duration,
}

/// What [`Coordinator::trigger`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerOutcome {
    /// The key's trigger sequence after this trigger.
    pub seq: TriggerSeq,
    /// Whether this trigger registered the key (it was not in the registry).
    pub registered: bool,
    /// The node that owned the key when the trigger was recorded, if any.
    pub owner: Option<NodeId>,
}

/// One granted ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The key now owned.
    pub key: Key,
    /// Its fencing token, greater than every earlier epoch of this key.
    pub epoch: Epoch,
    /// The key's trigger sequence at the moment of the claim. Starting a loop observes every
    /// trigger up to this one.
    pub trigger_seq: TriggerSeq,
}

/// How an owner gives a key back ([`Coordinator::release`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Release {
    /// The loop finished. The key leaves the registry if its trigger sequence is still
    /// `observed_seq`; otherwise the caller keeps ownership (same epoch) and runs again.
    Complete {
        /// The newest trigger sequence the loop observed.
        observed_seq: TriggerSeq,
    },
    /// Hand the key to another node now. The key stays registered and becomes claimable at
    /// once by other nodes; the releasing node itself may claim it again only after
    /// `avoid_for` (so another node with capacity is preferred).
    Continue {
        /// How long the releasing node is passed over for this key.
        avoid_for: Duration,
    },
    /// Park the key after repeated failures: it stays registered but no node claims it until
    /// it is triggered again. Like `Complete`, conditional on the sequence: if a trigger
    /// arrived that the failing run did not observe (the key's sequence is above
    /// `observed_seq`), nothing is parked, the backend answers
    /// [`Released::Retriggered`] and the caller keeps the key at the same epoch — that
    /// trigger is the "next trigger" that would have resumed the key, so it is not lost.
    Park {
        /// The last error, shown in the key's status.
        error: String,
        /// The newest trigger sequence the failing run observed.
        observed_seq: TriggerSeq,
    },
    /// Put the key to sleep until `until`: it stays registered, unowned, with its wake-up
    /// time stored durably, and is claimable only once due (by the backend's clock) or
    /// once triggered (a trigger drops the wake-up). Conditional on the sequence like
    /// `Complete`: with a newer trigger the backend answers [`Released::Retriggered`],
    /// changes nothing and the caller keeps the key.
    Sleep {
        /// The newest trigger sequence the loop observed.
        observed_seq: TriggerSeq,
        /// When the key falls due.
        until: WakeTime,
    },
}

/// When a sleeping key falls due ([`Release::Sleep`]), on the backend's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeTime {
    /// This long after the backend processes the release.
    After(Duration),
    /// When the backend's wall clock reaches this instant.
    At(std::time::SystemTime),
}

impl WakeTime {
    /// The wake-up seen from `now`: how long until it (zero for an instant already past)
    /// and the instant itself.
    pub fn resolve(self, now: std::time::SystemTime) -> (Duration, std::time::SystemTime) {
        match self {
            WakeTime::After(delay) => (delay, now + delay),
            WakeTime::At(at) => (at.duration_since(now).unwrap_or(Duration::ZERO), at),
        }
    }
}

/// What [`Coordinator::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Released {
    /// `Complete`: the key left the registry.
    Retired,
    /// `Complete` or `Park`: a newer trigger arrived; nothing changed and the caller still
    /// owns the key at the same epoch.
    Retriggered {
        /// The key's current trigger sequence.
        seq: TriggerSeq,
    },
    /// `Continue`, `Park` or `Sleep`: the key is no longer owned by the caller.
    Released,
}

/// What a backend knows about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key.
    pub key: Key,
    /// Its live owner, if any (an owner whose lease has expired is reported as `None`).
    pub owner: Option<NodeId>,
    /// The epoch of the latest acquisition, if the key was ever owned.
    pub epoch: Option<Epoch>,
    /// Its trigger sequence.
    pub trigger_seq: TriggerSeq,
    /// The error it was parked with, if it is parked.
    pub parked: Option<String>,
    /// When it falls due, if it sleeps ([`Release::Sleep`]), as a wall-clock instant of the
    /// backend's clock.
    pub wake_at: Option<std::time::SystemTime>,
}

/// One node as seen by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node's id.
    pub id: NodeId,
    /// The node's name.
    pub name: String,
    /// Whether its lease is still valid.
    pub alive: bool,
}

/// Everything a backend knows, for status pages and tests. May be expensive on large
/// registries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSnapshot {
    /// Known nodes.
    pub nodes: Vec<NodeSnapshot>,
    /// Registered keys, sorted by key.
    pub keys: Vec<KeyInfo>,
}

/// Limits a backend imposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest state accepted by [`Coordinator::save_state`], in bytes.
    pub max_state_bytes: usize,
    /// Whether the backend stores wake-ups ([`Release::Sleep`], [`Coordinator::next_wake`]).
    ///
    /// When `false` the engine keeps a requeued loop's task and ownership and waits in the
    /// task instead (a trigger or the delay ends the wait): the wake-up is then not durable,
    /// and a handoff or failover during the wait runs the key at once (early, never lost).
    pub durable_wake_ups: bool,
}

/// The backend SPI: durable registry, node leases, key ownership with epochs, triggers and
/// fenced per-key state.
///
/// Policy (retries, heartbeat timers, backoff, when to claim) lives in the engine; a
/// backend only provides these atomic operations. Each "Contract" line below is checked by
/// the conformance case of the same name in `keyloop-conformance`, which every backend runs.
///
/// Liveness is per node: ownership of a key is valid while the owner's lease is valid and
/// the presented epoch is the key's current epoch. Only the backend's clock decides expiry.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// The backend's limits.
    fn limits(&self) -> Limits;

    /// Registers `node` with a lease of `ttl` and starts delivering its events to `events`.
    ///
    /// # Contract
    /// - `new_node_picks_pending_keys`: a joined node can claim keys registered before it joined.
    /// - `crashed_node_keys_not_claimed_before_ttl`: the lease lasts at least `ttl` from
    ///   the moment the backend processed the call.
    async fn join(
        &self,
        node: &NodeInfo,
        ttl: Duration,
        events: EventSink,
    ) -> Result<Lease, CoordinatorError>;

    /// Renews `node`'s lease for another TTL.
    ///
    /// # Contract
    /// - `zombie_save_rejected_after_expiry_without_takeover`: once the lease has expired, a
    ///   heartbeat fails with [`CoordinatorError::LeaseExpired`] and the node owns nothing.
    async fn heartbeat(&self, node: &NodeId) -> Result<Lease, CoordinatorError>;

    /// Leaves the cluster: releases every key `node` still owns (as `Continue`, so they stay
    /// registered) and ends its lease. Idempotent.
    ///
    /// # Contract
    /// - `handoff_does_not_wait_for_ttl`: keys released by `leave` are claimable at once.
    async fn leave(&self, node: &NodeId) -> Result<(), CoordinatorError>;

    /// Registers `key` if new, bumps its trigger sequence, and notifies its owner
    /// ([`CoordinatorEvent::Triggered`](crate::CoordinatorEvent::Triggered)) or, if unowned,
    /// the live nodes ([`KeysAvailable`](crate::CoordinatorEvent::KeysAvailable)).
    ///
    /// # Contract
    /// - `triggered_key_runs`: a trigger registers a new key durably before returning.
    /// - `trigger_reaches_owner_on_other_node`: the owner is notified wherever it runs.
    /// - `triggers_during_handoff_reach_next_owner`: a trigger on an unowned or released key
    ///   is kept in its sequence and seen by the next claim.
    /// - `epochs_never_reset_after_retire_and_retrigger`: sequences never decrease for a key.
    async fn trigger(&self, key: &Key) -> Result<TriggerOutcome, CoordinatorError>;

    /// [`trigger`](Coordinator::trigger) without waiting, for backends that can answer
    /// synchronously (in-process ones); `None` (the default) means "call `trigger`". Same
    /// contract as `trigger`. Spares the hot path the boxed future of an async call.
    fn trigger_now(&self, key: &Key) -> Option<Result<TriggerOutcome, CoordinatorError>> {
        let _ = key;
        None
    }

    /// Takes up to `max` registered keys that are unowned (or whose owner's lease expired)
    /// and not parked, giving each a new epoch.
    ///
    /// # Contract
    /// - `concurrent_claimers_get_disjoint_keys`: concurrent claims never return the same key.
    /// - `crashed_node_keys_fail_over_after_ttl`: keys of an expired node are claimable.
    /// - `crashed_node_keys_not_claimed_before_ttl`: keys of a live node are never returned.
    /// - `epochs_strictly_increase_across_owners`: each claim's epoch exceeds every earlier one.
    /// - `continue_hands_key_to_other_node`: keys released with `Continue { avoid_for }` are
    ///   not returned to the releasing node before `avoid_for` has passed.
    /// - `repeated_failures_park_key`: parked keys are not returned.
    /// - `committed_claims_survive_a_failing_claim`: a claim that takes keys in several steps
    ///   (statements, batches, chunks) returns `Ok` with every key whose acquisition
    ///   committed, even when a later step fails; it returns `Err` only when it took nothing.
    ///   (The engine also re-reads [`owned`](Coordinator::owned) after any claim error, so
    ///   an ambiguous failure — committed, answer lost — costs a resync, not a key.)
    async fn claim(&self, node: &NodeId, max: usize) -> Result<Vec<Claim>, CoordinatorError>;

    /// Takes one specific key if it is registered and claimable; returns the existing claim
    /// if `node` already owns it.
    ///
    /// # Contract
    /// - `racing_claims_leave_one_owner`: of nodes racing for one key, exactly one gets it.
    async fn claim_key(&self, node: &NodeId, key: &Key) -> Result<Option<Claim>, CoordinatorError>;

    /// Gives a key back. Fenced: fails with [`CoordinatorError::Fenced`] unless `node` owns
    /// `key` at `epoch` with a live lease.
    ///
    /// # Contract
    /// - `complete_retires_key`: `Complete` with the current sequence removes the key.
    /// - `trigger_during_complete_reruns_loop`: `Complete` with an older sequence returns
    ///   `Retriggered` and keeps the key owned at the same epoch.
    /// - `stale_release_rejected`: a release with a stale epoch is fenced.
    /// - `trigger_during_failing_run_is_not_parked`: `Park` with an older sequence returns
    ///   `Retriggered`, parks nothing and keeps the key owned at the same epoch; the check
    ///   and the park are one atomic step.
    /// - `sleeping_key_is_not_claimable_before_its_wake_up`: `Sleep` releases the key; it is
    ///   not claimable before its wake-up time by the backend's clock;
    ///   `requeued_key_runs_after_its_delay_and_not_before`: and claimable after.
    ///   (The releasing engine then re-reads [`next_wake`](Coordinator::next_wake) and
    ///   schedules its next claim round for it; other nodes learn at their next round.)
    /// - `trigger_wakes_a_sleeping_key_early`: a trigger makes a sleeping key claimable at
    ///   once and drops its wake-up; `Sleep` with an older sequence returns `Retriggered`.
    async fn release(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        how: Release,
    ) -> Result<Released, CoordinatorError>;

    /// The keys `node` currently owns, with their current trigger sequences (used after a
    /// [`Resync`](crate::CoordinatorEvent::Resync)).
    ///
    /// # Contract
    /// - `notification_gap_resyncs`: reports triggers whose notifications were lost.
    async fn owned(&self, node: &NodeId) -> Result<Vec<Claim>, CoordinatorError>;

    /// The key's saved state, if any.
    ///
    /// # Contract
    /// - `state_visible_to_next_owner`: state saved by one owner is loaded by the next.
    async fn load_state(&self, key: &Key) -> Result<Option<Bytes>, CoordinatorError>;

    /// Saves the key's state. Fenced like [`release`](Coordinator::release).
    ///
    /// # Contract
    /// - `state_roundtrips`: saved bytes load back unchanged.
    /// - `zombie_save_rejected_after_takeover`: a save with a superseded epoch is fenced.
    /// - `zombie_save_rejected_after_expiry_without_takeover`: a save after the node's lease
    ///   expired is fenced even if nobody took the key.
    /// - `oversized_state_is_typed_error`: state over `limits().max_state_bytes` fails with
    ///   [`CoordinatorError::StateTooLarge`] and the stored state is unchanged.
    async fn save_state(
        &self,
        node: &NodeId,
        key: &Key,
        epoch: Epoch,
        state: Bytes,
    ) -> Result<(), CoordinatorError>;

    /// How long until the earliest sleeping key falls due, by the backend's clock (`Some(0)`
    /// if one is due now; `None` if no key sleeps). The engine schedules a claim for then,
    /// so wake-ups need no per-key timers and no polling. A backend without durable
    /// wake-ups ([`Limits::durable_wake_ups`] `false`) answers `None`. No default: a
    /// wrapper that forgot to forward it would silently hide every wake-up.
    ///
    /// # Contract
    /// - `sleeping_key_is_not_claimable_before_its_wake_up`: reports the earliest wake-up.
    async fn next_wake(&self) -> Result<Option<Duration>, CoordinatorError>;

    /// What the backend knows about one key; `None` if it is not registered.
    ///
    /// # Contract
    /// - `client_trigger_registers_key`: a triggered key is reported with its sequence.
    async fn key_info(&self, key: &Key) -> Result<Option<KeyInfo>, CoordinatorError>;

    /// Every node and key. Meant for status pages and tests.
    ///
    /// # Contract
    /// - `registry_survives_restart_of_all_nodes`: registered keys outlive their nodes.
    async fn inspect(&self) -> Result<ClusterSnapshot, CoordinatorError>;
}
