//! Per-loop shared state and the table of loops a node owns.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{LeaseClock, LeaseNanos};
use crate::{Coordinator, Epoch, Key, KeyStatus, NodeInfo, ShutdownReason, StatusListener};

/// One node incarnation: what every loop of that incarnation needs to talk to the backend,
/// and until when it may act.
pub(crate) struct Session {
    pub(crate) node: NodeInfo,
    pub(crate) coordinator: Arc<dyn Coordinator>,
    pub(crate) max_state_bytes: usize,
    pub(crate) listener: Option<StatusListener>,
    clock: LeaseClock,
    /// Whether loops judge the lease clock (always, but for a deliberate defect).
    judge_lease: bool,
    /// The lease-clock time after which this incarnation must not act: the send time of
    /// its last successful renewal + TTL − fence margin. Loops judge it synchronously, so a
    /// process resumed after a freeze stops acting before its lease keeper has even run.
    fence_at: AtomicU64,
}

impl Session {
    pub(crate) fn new(
        node: NodeInfo,
        coordinator: Arc<dyn Coordinator>,
        max_state_bytes: usize,
        listener: Option<StatusListener>,
        clock: LeaseClock,
        judge_lease: bool,
    ) -> Session {
        Session {
            node,
            coordinator,
            max_state_bytes,
            listener,
            clock,
            judge_lease,
            fence_at: AtomicU64::new(0),
        }
    }

    /// Whether this incarnation's lease is certainly still valid on the backend.
    pub(crate) fn lease_valid(&self) -> bool {
        !self.judge_lease || self.clock.now() < self.fence_at.load(Ordering::Acquire)
    }

    /// Moves the fence point after a renewal (never backwards; the lease keeper renews one
    /// request at a time, so a later call always carries a later send time).
    pub(crate) fn renewed(&self, fence_at: LeaseNanos) {
        self.fence_at.fetch_max(fence_at, Ordering::AcqRel);
    }

    /// Ends the incarnation's right to act at once.
    pub(crate) fn expire(&self) {
        self.fence_at.store(0, Ordering::Release);
    }
}

const PHASE_RUNNING: u8 = 0;
const PHASE_BACKOFF: u8 = 1;

const NO_SHUTDOWN: u8 = 0;

/// Shared between a loop's task, its [`LoopContext`](crate::LoopContext) and the dispatcher.
///
/// One `Notify` serves both triggers and shutdown: wakers call `notify_waiters` and waiters
/// enable their `Notified` before checking the atomics, so no wake-up is lost and a loop
/// waiting on both costs one waiter.
// `repr(C)` keeps what every trigger touches (the sequences) in the first cache line.
#[repr(C)]
pub(crate) struct LoopSlot {
    latest_seq: AtomicU64,
    observed_seq: AtomicU64,
    shutdown: AtomicU8,
    pub(crate) key: Key,
    pub(crate) epoch: Epoch,
    pub(crate) session: Arc<Session>,
    phase: AtomicU8,
    failures: AtomicU32,
    notify: Notify,
    token: OnceLock<CancellationToken>,
    last_error: Mutex<Option<Box<str>>>,
    abort: OnceLock<AbortHandle>,
    /// Set when the loop's task has ended (returned, or dropped after an abort): only then
    /// may an abandoned loop's key be released.
    ended: AtomicBool,
}

impl LoopSlot {
    pub(crate) fn new(key: Key, epoch: Epoch, seq: u64, session: Arc<Session>) -> LoopSlot {
        LoopSlot {
            key,
            epoch,
            session,
            latest_seq: AtomicU64::new(seq),
            observed_seq: AtomicU64::new(seq),
            shutdown: AtomicU8::new(NO_SHUTDOWN),
            phase: AtomicU8::new(PHASE_RUNNING),
            failures: AtomicU32::new(0),
            notify: Notify::new(),
            token: OnceLock::new(),
            last_error: Mutex::new(None),
            abort: OnceLock::new(),
            ended: AtomicBool::new(false),
        }
    }

    /// Records a trigger sequence and wakes the loop, unless it already had an unobserved
    /// trigger (then it was woken for that one and will see this one too): a burst costs
    /// one wake-up.
    ///
    /// Why no wake-up is lost: the loop enables its waiter, loads `latest`, then raises
    /// `observed`. The first trigger to raise `latest` past what a sleeping loop observed
    /// finds `previous <= observed` whatever the interleaving, and wakes it.
    pub(crate) fn note_trigger(&self, seq: u64) {
        let previous = self.latest_seq.fetch_max(seq, Ordering::SeqCst);
        if seq > previous && previous <= self.observed_seq.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn observed_seq(&self) -> u64 {
        self.observed_seq.load(Ordering::Acquire)
    }

    /// Marks everything up to the latest sequence as observed (a run starting observes all
    /// triggers so far); returns it.
    pub(crate) fn observe_all(&self) -> u64 {
        let latest = self.latest_seq.load(Ordering::SeqCst);
        self.observed_seq.fetch_max(latest, Ordering::SeqCst);
        latest
    }

    /// Takes a pending trigger if there is one.
    pub(crate) fn take_trigger(&self) -> bool {
        let latest = self.latest_seq.load(Ordering::SeqCst);
        let observed = self.observed_seq.fetch_max(latest, Ordering::SeqCst);
        latest > observed
    }

    /// Signals shutdown (the first reason wins); idempotent.
    pub(crate) fn signal_shutdown(&self, reason: ShutdownReason) {
        if self
            .shutdown
            .compare_exchange(
                NO_SHUTDOWN,
                reason.code(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            if let Some(token) = self.token.get() {
                token.cancel();
            }
            self.notify.notify_waiters();
            self.emit(&KeyStatus::ShuttingDown { reason });
        } else if reason == ShutdownReason::OwnershipLost {
            // Losing ownership overrides a graceful shutdown: the loop must not release.
            self.shutdown.store(reason.code(), Ordering::Release);
        }
    }

    /// The signalled reason; no lease check (see [`reason_now`](Self::reason_now)).
    pub(crate) fn shutdown_reason(&self) -> Option<ShutdownReason> {
        ShutdownReason::from_code(self.shutdown.load(Ordering::Acquire))
    }

    /// The reason the loop must stop, judged now: the signalled one, or `OwnershipLost` once
    /// the lease can no longer be vouched for, even before the lease keeper has signalled.
    pub(crate) fn reason_now(&self) -> Option<ShutdownReason> {
        match self.shutdown_reason() {
            Some(ShutdownReason::OwnershipLost) => Some(ShutdownReason::OwnershipLost),
            _ if !self.session.lease_valid() => Some(ShutdownReason::OwnershipLost),
            other => other,
        }
    }

    /// Whether the loop may still act as the key's owner right now.
    pub(crate) fn is_owner(&self) -> bool {
        self.shutdown_reason() != Some(ShutdownReason::OwnershipLost) && self.session.lease_valid()
    }

    pub(crate) fn mark_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(crate) fn cancellation_token(&self) -> CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new).clone();
        // A token created after the signal (or after the lease ran out) must be cancelled.
        if self.reason_now().is_some() {
            token.cancel();
        }
        token
    }

    /// Waits until `check` returns a value, re-checking after every wake-up.
    pub(crate) async fn wait_for<T>(&self, check: impl Fn() -> Option<T>) -> T {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = check() {
                return value;
            }
            notified.await;
        }
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    pub(crate) fn set_failures(&self, n: u32) {
        self.failures.store(n, Ordering::Release);
    }

    pub(crate) fn set_running(&self) {
        self.phase.store(PHASE_RUNNING, Ordering::Release);
        self.emit_with(|| KeyStatus::Running {
            node: self.session.node.id,
            epoch: self.epoch,
        });
    }

    pub(crate) fn set_backoff(&self, error: String) {
        *self.last_error.lock().unwrap() = Some(error.clone().into_boxed_str());
        self.phase.store(PHASE_BACKOFF, Ordering::Release);
        self.emit(&KeyStatus::Backoff {
            failures: self.failures(),
            last_error: error,
        });
    }

    /// The status of this loop as the engine sees it.
    pub(crate) fn status(&self) -> KeyStatus {
        if let Some(reason) = self.shutdown_reason() {
            return KeyStatus::ShuttingDown { reason };
        }
        if self.phase.load(Ordering::Acquire) == PHASE_BACKOFF {
            return KeyStatus::Backoff {
                failures: self.failures(),
                last_error: self
                    .last_error
                    .lock()
                    .unwrap()
                    .as_deref()
                    .unwrap_or_default()
                    .to_string(),
            };
        }
        KeyStatus::Running {
            node: self.session.node.id,
            epoch: self.epoch,
        }
    }

    pub(crate) fn emit(&self, status: &KeyStatus) {
        if let Some(listener) = &self.session.listener {
            listener(&self.key, status);
        }
    }

    fn emit_with(&self, status: impl FnOnce() -> KeyStatus) {
        if let Some(listener) = &self.session.listener {
            listener(&self.key, &status());
        }
    }

    pub(crate) fn set_abort_handle(&self, handle: AbortHandle) {
        let _ = self.abort.set(handle);
    }

    pub(crate) fn abort(&self) {
        if let Some(handle) = self.abort.get() {
            handle.abort();
        }
    }
}

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Key, Arc<LoopSlot>, RandomState>>;

/// The loops a node owns, sharded so that triggers for different keys rarely contend.
pub(crate) struct LoopTable {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl LoopTable {
    pub(crate) fn new() -> LoopTable {
        LoopTable {
            hasher: RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }

    fn shard(&self, key: &Key) -> &Shard {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Calls `f` with the slot of `key`, without cloning the `Arc`.
    pub(crate) fn with<R>(&self, key: &Key, f: impl FnOnce(&LoopSlot) -> R) -> Option<R> {
        self.shard(key).lock().unwrap().get(key).map(|slot| f(slot))
    }

    pub(crate) fn insert(&self, slot: Arc<LoopSlot>) -> Option<Arc<LoopSlot>> {
        self.shard(&slot.key)
            .lock()
            .unwrap()
            .insert(slot.key.clone(), slot)
    }

    /// Removes `slot` if it is still the one registered for its key.
    pub(crate) fn remove(&self, slot: &Arc<LoopSlot>) -> bool {
        let mut shard = self.shard(&slot.key).lock().unwrap();
        match shard.get(&slot.key) {
            Some(current) if Arc::ptr_eq(current, slot) => {
                shard.remove(&slot.key);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<LoopSlot>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().unwrap().values().cloned());
        }
        out
    }

    pub(crate) fn keys(&self) -> Vec<Key> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().unwrap().keys().cloned());
        }
        out
    }
}
