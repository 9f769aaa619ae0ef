use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use keyloop_supervisor::{Service, Snapshot, Supervisor};

use crate::clock::LeaseClock;
use crate::dispatch::Shared;
use crate::lease::Renewal;
use crate::slot::{LoopSlot, Session};
use crate::{
    Backoff, Client, Controller, Coordinator, Defect, EngineConfig, EngineConfigBuilder, Error,
    IntoKey, Key, KeyStatus, Lease, Limits, NodeId, NodeInfo, Release, ShutdownReason,
    ShutdownReport, TriggerOutcome, claimer, lease, runner,
};

pub(crate) const RUNNING: u8 = 0;
pub(crate) const SHUTTING_DOWN: u8 = 1;
pub(crate) const STOPPED: u8 = 2;

/// One node: claims keys from its coordinator and runs one loop per owned key.
///
/// Cheap to clone (a handle). See the crate documentation for a complete example.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// State shared by the engine handle and its tasks.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) coordinator: Arc<dyn Coordinator>,
    pub(crate) controller: Arc<dyn Controller>,
    pub(crate) config: EngineConfig,
    pub(crate) limits: Limits,
    /// Loops this node owns (running or in backoff); bounded by `max_loops`.
    pub(crate) owned: AtomicUsize,
    pub(crate) phase: AtomicU8,
    pub(crate) session: RwLock<Option<Arc<Session>>>,
    /// The clock leases are measured on (see `clock.rs`).
    pub(crate) clock: LeaseClock,
    /// The current incarnation's last successful renewal. Kept here, not in the keeper task,
    /// so that a keeper restarted by the supervisor after a panic fences on the same
    /// deadline.
    pub(crate) renewal: Mutex<Renewal>,
    /// Status of the engine's own supervised services (`lease`, `claims`).
    services: Mutex<Option<tokio::sync::watch::Receiver<Snapshot>>>,
    pub(crate) background: Mutex<Vec<AbortHandle>>,
    pub(crate) stop_claims: CancellationToken,
    pub(crate) stop_lease: CancellationToken,
    pub(crate) report: Mutex<ShutdownReport>,
    shutdown_result: tokio::sync::OnceCell<ShutdownReport>,
}

impl Inner {
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    pub(crate) fn current_session(&self) -> Option<Arc<Session>> {
        self.session.read().unwrap().clone()
    }

    pub(crate) fn new_session(&self) -> Arc<Session> {
        Arc::new(Session::new(
            NodeInfo {
                id: NodeId::random(),
                name: self.config.node_name.clone(),
            },
            Arc::clone(&self.coordinator),
            self.limits.max_state_bytes,
            self.config.status_listener.clone(),
            self.clock,
            !self.config.defects.has(Defect::LoopsIgnoreLeaseClock),
        ))
    }

    /// Joins the cluster as `session` and checks the lease granted; on success the caller
    /// makes the session current.
    pub(crate) async fn join(&self, session: &Session) -> Result<Renewal, Error> {
        let sent = self.clock.now();
        let lease = self
            .coordinator
            .join(
                &session.node,
                self.config.lease_ttl,
                self.shared.sink(session.node.id),
            )
            .await?;
        if let Err(e) = self.check_lease(&lease) {
            // Do not keep a lease the engine cannot hold safely.
            let _ = self.coordinator.leave(&session.node.id).await;
            return Err(e);
        }
        let renewal = Renewal {
            sent,
            ttl: lease.ttl,
        };
        session.renewed(renewal.fence_at(self.config.fence_margin));
        self.shared.lost.keep_only(session.node.id);
        Ok(renewal)
    }

    /// A lease shorter than requested, or too short to renew and self-fence in time, would
    /// mean endless fence-and-rejoin churn: refuse it.
    pub(crate) fn check_lease(&self, lease: &Lease) -> Result<(), Error> {
        let needed = self.config.heartbeat_interval + self.config.fence_margin;
        if self.config.defects.has(Defect::AcceptsShortLeases) {
            return Ok(());
        }
        if lease.ttl < self.config.lease_ttl || lease.ttl <= needed {
            return Err(Error::LeaseTooShort {
                requested: self.config.lease_ttl,
                granted: lease.ttl,
                needed: needed.max(self.config.lease_ttl),
            });
        }
        Ok(())
    }

    /// Called by a loop's task as it ends (returned, or dropped after an abort): removes
    /// the loop from the table if it is still there and frees its capacity.
    pub(crate) fn task_ended(&self, slot: &Arc<LoopSlot>) {
        slot.mark_ended();
        self.finish_slot(slot);
        // A loop told it lost its key while its incarnation's lease is still good (a
        // notice that was late, duplicated or wrong, e.g. from an earlier ownership of the
        // same key) may leave the key owned here with no loop, and nothing would look again
        // before the periodic resync. So re-read what this node owns — now that the slot
        // is out of the table, so that the resync starts a loop if the key is still ours.
        if slot.shutdown_reason() == Some(ShutdownReason::OwnershipLost)
            && self.phase() == RUNNING
            && slot.session.lease_valid()
            && self
                .current_session()
                .is_some_and(|s| Arc::ptr_eq(&s, &slot.session))
        {
            self.shared.resync_wake.notify_one();
        }
        if self.shared.draining.load(Ordering::Acquire) {
            self.shared.loop_ended.notify_waiters();
        }
    }

    /// Removes a loop from the table (if it is still there) and frees its capacity.
    pub(crate) fn finish_slot(&self, slot: &Arc<LoopSlot>) {
        if self.shared.loops.remove(slot) {
            let before = self.owned.fetch_sub(1, Ordering::AcqRel);
            if self.shared.draining.load(Ordering::Acquire) {
                self.shared.loop_ended.notify_waiters();
            }
            if before >= self.config.max_loops {
                // Capacity freed: keys left pending for lack of it can be claimed now.
                self.shared.claim_wake.notify_one();
            }
        }
    }

    /// Waits until every slot in `slots` has ended, or until `deadline`; returns those that
    /// have not ended. Only while `draining` is set do ending tasks wake this.
    pub(crate) async fn wait_for_ended(
        &self,
        slots: Vec<Arc<LoopSlot>>,
        deadline: Instant,
    ) -> Vec<Arc<LoopSlot>> {
        loop {
            let ended = self.shared.loop_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if slots.iter().all(|s| s.has_ended()) {
                return Vec::new();
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return slots.into_iter().filter(|s| !s.has_ended()).collect();
                }
            }
        }
    }

    /// Waits until every loop has ended, or until `deadline`. Only while `draining` is set
    /// do ending loops wake this.
    pub(crate) async fn wait_for_loops(&self, deadline: Instant) {
        loop {
            let ended = self.shared.loop_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.owned.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Starts the loop for a fresh claim.
    ///
    /// Worst interleaving this guards against: the claimer checks that the engine runs and
    /// that the claim's session is current, then shutdown (or fencing) changes the phase
    /// (the session), takes its snapshot of the loop table and signals every loop in it,
    /// and only then the claimer inserts the new loop — which would run unsignalled. So the
    /// slot is inserted first and the phase and session are checked after: shutdown and
    /// fencing change them before their snapshot, and both the insert and the snapshot
    /// take the shard's lock, so either the snapshot sees the slot or this check sees the
    /// change. A loop signalled here before it ran gives its key back without running.
    pub(crate) fn start_loop(self: &Arc<Self>, slot: Arc<LoopSlot>) {
        let check_first = self.config.defects.has(Defect::ChecksBeforeInsert);
        if check_first {
            self.stop_unless_current(&slot);
            // The old order's window, as wide as a preemption of the claimer's thread
            // right here makes it in production.
            std::thread::sleep(Duration::from_micros(200));
        }
        // Counted before it is visible, so `owned` never undercounts the table.
        self.owned.fetch_add(1, Ordering::AcqRel);
        if let Some(previous) = self.shared.loops.insert(Arc::clone(&slot)) {
            // A loop left in the table by an earlier incarnation: it cannot own the key any
            // more. The new slot takes over its count (its task will find itself gone from
            // the table and not decrement).
            self.owned.fetch_sub(1, Ordering::AcqRel);
            previous.signal_shutdown(ShutdownReason::OwnershipLost);
            previous.abort();
        }
        if !check_first {
            self.stop_unless_current(&slot);
        }
        let handle = tokio::spawn(runner::run(Arc::clone(self), Arc::clone(&slot)));
        slot.set_abort_handle(handle.abort_handle());
    }

    /// Signals `slot` unless the engine runs and its session is the current one.
    fn stop_unless_current(&self, slot: &LoopSlot) {
        let current = self
            .current_session()
            .is_some_and(|s| Arc::ptr_eq(&s, &slot.session));
        if !current {
            slot.signal_shutdown(ShutdownReason::OwnershipLost);
        } else if self.phase() != RUNNING {
            slot.signal_shutdown(ShutdownReason::NodeShutdown);
        }
    }

    pub(crate) fn record(&self, f: impl FnOnce(&mut ShutdownReport)) {
        if self.phase() != RUNNING {
            f(&mut self.report.lock().unwrap());
        }
    }
}

impl Engine {
    /// A builder for an engine on `coordinator` running `controller`.
    pub fn builder(
        coordinator: Arc<dyn Coordinator>,
        controller: impl Controller,
    ) -> EngineBuilder {
        EngineBuilder {
            coordinator,
            controller: Arc::new(controller),
            config: EngineConfig::builder(),
        }
    }

    /// Joins the cluster and starts claiming keys.
    ///
    /// Fails if the coordinator cannot be reached or refuses the node.
    pub async fn start(
        config: EngineConfig,
        coordinator: Arc<dyn Coordinator>,
        controller: Arc<dyn Controller>,
    ) -> Result<Engine, Error> {
        let limits = coordinator.limits();
        let clock = LeaseClock::new();
        let inner = Arc::new(Inner {
            shared: Arc::new(Shared::new(config.defects)),
            coordinator,
            controller,
            config,
            limits,
            owned: AtomicUsize::new(0),
            phase: AtomicU8::new(RUNNING),
            session: RwLock::new(None),
            clock,
            renewal: Mutex::new(Renewal {
                sent: 0,
                ttl: Duration::ZERO,
            }),
            services: Mutex::new(None),
            background: Mutex::new(Vec::new()),
            stop_claims: CancellationToken::new(),
            stop_lease: CancellationToken::new(),
            report: Mutex::new(ShutdownReport::default()),
            shutdown_result: tokio::sync::OnceCell::new(),
        });
        let session = inner.new_session();
        let renewal = inner.join(&session).await?;
        tracing::info!(node = %session.node.id, name = %session.node.name, "joined");
        *inner.renewal.lock().unwrap() = renewal;
        *inner.session.write().unwrap() = Some(session);
        supervise(&inner);
        inner.shared.claim_wake.notify_one();
        Ok(Engine { inner })
    }

    /// Status of the engine's own supervised services: `lease` (heartbeats, self-fencing,
    /// re-joining) and `claims` (claiming, resync).
    pub fn services(&self) -> Option<Snapshot> {
        self.inner
            .services
            .lock()
            .unwrap()
            .as_ref()
            .map(|rx| rx.borrow().clone())
    }

    /// The id of the node's current incarnation (it changes after a lost lease).
    pub fn node_id(&self) -> Option<NodeId> {
        self.inner.current_session().map(|s| s.node.id)
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    /// Triggers `key`: registers it if new and wakes its loop wherever it runs.
    ///
    /// When this returns `Ok`, some loop for the key will start or observe a trigger after
    /// this call.
    pub async fn trigger(&self, key: impl IntoKey) -> Result<TriggerOutcome, Error> {
        let key = key.into_key()?;
        if self.inner.phase() != RUNNING {
            return Err(Error::ShutDown);
        }
        if let Some(outcome) = self.inner.coordinator.trigger_now(&key) {
            return Ok(outcome?);
        }
        Ok(self.inner.coordinator.trigger(&key).await?)
    }

    /// Restarts a parked (`Failed`) key; same as a trigger.
    pub async fn resume(&self, key: impl IntoKey) -> Result<(), Error> {
        self.trigger(key).await.map(|_| ())
    }

    /// The key's status: detailed for keys this node owns, the backend's view otherwise.
    pub async fn status(&self, key: impl IntoKey) -> Result<KeyStatus, Error> {
        let key = key.into_key()?;
        if let Some(status) = self.inner.shared.loops.with(&key, |slot| slot.status()) {
            return Ok(status);
        }
        Ok(crate::client::status_from_backend(&*self.inner.coordinator, &key).await?)
    }

    /// Keys this node owns right now (running or in backoff).
    pub fn owned_keys(&self) -> Vec<Key> {
        self.inner.shared.loops.keys()
    }

    /// Number of keys this node owns right now.
    pub fn owned_count(&self) -> usize {
        self.inner.owned.load(Ordering::Acquire)
    }

    /// A client on the same coordinator (trigger and inspect without running loops).
    pub fn client(&self) -> Client {
        Client::new(Arc::clone(&self.inner.coordinator))
    }

    /// Whether the engine still takes work.
    pub fn is_running(&self) -> bool {
        self.inner.phase() == RUNNING
    }

    /// Shuts down gracefully: every loop gets the shutdown signal; loops that return within
    /// the grace period have their keys released at once (or retired on `Complete`); loops
    /// still running after it are abandoned and their keys released, which fences them.
    /// Then the node leaves the cluster. Calling it again returns the same report.
    pub async fn shutdown(&self) -> ShutdownReport {
        let inner = Arc::clone(&self.inner);
        self.inner
            .shutdown_result
            .get_or_init(|| shutdown(inner))
            .await
            .clone()
    }

    /// Simulates the death of the process (for tests): every task of the engine and every
    /// loop is aborted without releasing keys or leaving, and heartbeats stop. Other nodes
    /// take the keys over once the lease expires.
    pub fn kill(&self) {
        self.inner.phase.store(STOPPED, Ordering::Release);
        self.inner.stop_claims.cancel();
        self.inner.stop_lease.cancel();
        for handle in self.inner.background.lock().unwrap().drain(..) {
            handle.abort();
        }
        for slot in self.inner.shared.loops.all() {
            slot.abort();
            self.inner.finish_slot(&slot);
        }
    }
}

/// Runs the lease keeper and the claimer as supervised services: a panic in either (a bug,
/// or a backend that panics) restarts it with backoff. They end cleanly when the engine
/// stops, so they are transient. If they keep failing, the engine cannot vouch for its
/// ownership any more: it stops every loop and takes no more work.
fn supervise(inner: &Arc<Inner>) {
    let lease = {
        let inner = Arc::clone(inner);
        Service::transient("lease", move |_ctx| {
            let inner = Arc::clone(&inner);
            async move {
                lease::keep(inner).await;
                Ok::<(), std::convert::Infallible>(())
            }
        })
    };
    let claims = {
        let inner = Arc::clone(inner);
        Service::transient("claims", move |_ctx| {
            let inner = Arc::clone(&inner);
            async move {
                claimer::run(inner).await;
                Ok::<(), std::convert::Infallible>(())
            }
        })
    };
    let backoff = Backoff::builder()
        .initial(Duration::from_millis(10))
        .max(
            inner
                .config
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        )
        .build()
        .expect("initial and cap are both at least 10 ms");
    let supervisor = Supervisor::builder()
        .service(lease)
        .service(claims)
        .backoff(backoff)
        .intensity(10, Duration::from_secs(60))
        .listener(|change| tracing::debug!(service = %change.service, status = ?change.status, "engine service"))
        .build()
        .expect("engine supervisor settings are valid");
    let handle = supervisor.spawn();
    *inner.services.lock().unwrap() = Some(handle.subscribe());
    let watcher = {
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            let report = handle.wait().await;
            if inner.phase() == RUNNING {
                tracing::error!(?report, "engine services gave up: stopping every loop");
                inner.phase.store(STOPPED, Ordering::Release);
                inner.stop_claims.cancel();
                inner.stop_lease.cancel();
                for slot in inner.shared.loops.all() {
                    slot.signal_shutdown(ShutdownReason::OwnershipLost);
                    slot.abort();
                    inner.finish_slot(&slot);
                }
            }
        })
    };
    inner
        .background
        .lock()
        .unwrap()
        .push(watcher.abort_handle());
}

async fn shutdown(inner: Arc<Inner>) -> ShutdownReport {
    let started = Instant::now();
    if inner
        .phase
        .compare_exchange(RUNNING, SHUTTING_DOWN, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Killed before: nothing to hand off.
        return ShutdownReport {
            node: inner.current_session().map(|s| s.node.id),
            elapsed: started.elapsed(),
            ..ShutdownReport::default()
        };
    }
    inner.stop_claims.cancel();
    let node = inner.current_session().map(|s| s.node.id);
    tracing::info!(
        ?node,
        loops = inner.owned.load(Ordering::Acquire),
        "shutting down"
    );
    // Set before the loops are signalled, so that every loop ending from now on wakes us.
    inner.shared.draining.store(true, Ordering::Release);
    for slot in inner.shared.loops.all() {
        slot.signal_shutdown(ShutdownReason::NodeShutdown);
    }
    inner
        .wait_for_loops(started + inner.config.shutdown_grace)
        .await;
    // Loops past the grace are abandoned: aborted, and their keys released only once their
    // task has ended. Releasing earlier would let another node start the key while this
    // loop still runs (an abort takes effect at the task's next `.await`; code blocking its
    // thread never reaches one).
    let abandoned = inner.shared.loops.all();
    for slot in &abandoned {
        tracing::error!(
            key = %slot.key,
            epoch = slot.epoch.0,
            grace = ?inner.config.shutdown_grace,
            "loop ignored its shutdown signal past the grace period: abandoned"
        );
        slot.abort();
        inner.record(|r| r.abandoned.push(slot.key.clone()));
    }
    let at_once = inner.config.defects.has(Defect::ReleasesAbandonedAtOnce);
    let stuck = if at_once {
        Vec::new()
    } else {
        inner
            .wait_for_ended(
                abandoned.clone(),
                Instant::now() + inner.config.abandon_timeout,
            )
            .await
    };
    for slot in abandoned.iter().filter(|s| at_once || s.has_ended()) {
        // The task may have released the key itself on its way out (an abort lands only at
        // an `.await`); then this release is fenced, which is fine.
        let released = slot
            .session
            .coordinator
            .release(
                &slot.session.node.id,
                &slot.key,
                slot.epoch,
                Release::Continue {
                    avoid_for: Duration::ZERO,
                },
            )
            .await;
        if let Err(e) = released {
            tracing::debug!(key = %slot.key, error = %e, "abandoned key not released (already released, or no longer ours)");
        }
    }
    for slot in &stuck {
        tracing::error!(
            key = %slot.key,
            epoch = slot.epoch.0,
            waited = ?inner.config.abandon_timeout,
            "abandoned loop did not end after it was aborted: its key is left to lease expiry"
        );
        inner.record(|r| r.left_to_expire.push(slot.key.clone()));
    }
    inner.stop_lease.cancel();
    if let Some(session) = inner.current_session() {
        if stuck.is_empty() {
            if let Err(e) = inner.coordinator.leave(&session.node.id).await {
                tracing::warn!(error = %e, "could not leave the cluster; the lease will expire");
            }
        } else {
            // Leaving would release the stuck loops' keys: let the lease run out instead.
            tracing::warn!(
                stuck = stuck.len(),
                "not leaving the cluster: keys of loops still running fail over when the lease expires"
            );
        }
        session.expire();
    }
    for handle in inner.background.lock().unwrap().drain(..) {
        handle.abort();
    }
    inner.phase.store(STOPPED, Ordering::Release);
    let mut report = std::mem::take(&mut *inner.report.lock().unwrap());
    report.node = node;
    report.elapsed = started.elapsed();
    for list in [
        &mut report.handed_off,
        &mut report.completed,
        &mut report.sleeping,
        &mut report.abandoned,
        &mut report.left_to_expire,
    ] {
        list.sort();
    }
    tracing::info!(
        handed_off = report.handed_off.len(),
        completed = report.completed.len(),
        abandoned = report.abandoned.len(),
        "shut down"
    );
    report
}

/// Builds and starts an [`Engine`]; settings are those of [`EngineConfigBuilder`].
pub struct EngineBuilder {
    coordinator: Arc<dyn Coordinator>,
    controller: Arc<dyn Controller>,
    config: EngineConfigBuilder,
}

impl EngineBuilder {
    /// Adjusts the configuration.
    pub fn config(mut self, f: impl FnOnce(EngineConfigBuilder) -> EngineConfigBuilder) -> Self {
        self.config = f(self.config);
        self
    }

    /// A human-readable node name.
    pub fn node_name(self, name: impl Into<String>) -> Self {
        self.config(|c| c.node_name(name))
    }

    /// The most loops this node runs at once.
    pub fn max_loops(self, max: usize) -> Self {
        self.config(|c| c.max_loops(max))
    }

    /// The lease TTL.
    pub fn lease_ttl(self, ttl: std::time::Duration) -> Self {
        self.config(|c| c.lease_ttl(ttl))
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(self, grace: std::time::Duration) -> Self {
        self.config(|c| c.shutdown_grace(grace))
    }

    /// Validates the configuration and starts the engine.
    pub async fn start(self) -> Result<Engine, Error> {
        let config = self.config.build()?;
        Engine::start(config, self.coordinator, self.controller).await
    }
}
