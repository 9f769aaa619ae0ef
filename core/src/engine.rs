use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use keyloop_supervisor::{Service, Snapshot, Supervisor};

use crate::dispatch::Shared;
use crate::lease::LeaseClock;
use crate::slot::{LoopSlot, Session};
use crate::{
    Backoff, Client, Controller, Coordinator, EngineConfig, EngineConfigBuilder, Error, IntoKey,
    Key, KeyStatus, Limits, NodeId, NodeInfo, Release, ShutdownReason, ShutdownReport,
    TriggerOutcome, claimer, lease, runner,
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
    pub(crate) lease_clock: Mutex<LeaseClock>,
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
        Arc::new(Session {
            node: NodeInfo {
                id: NodeId::random(),
                name: self.config.node_name.clone(),
            },
            coordinator: Arc::clone(&self.coordinator),
            max_state_bytes: self.limits.max_state_bytes,
            listener: self.config.status_listener.clone(),
        })
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
    pub(crate) fn start_loop(self: &Arc<Self>, slot: Arc<LoopSlot>) {
        match self.shared.loops.insert(Arc::clone(&slot)) {
            None => {
                self.owned.fetch_add(1, Ordering::AcqRel);
            }
            Some(previous) => {
                // A loop of an earlier incarnation still draining: it cannot own the key.
                previous.signal_shutdown(ShutdownReason::OwnershipLost);
                previous.abort();
            }
        }
        let handle = tokio::spawn(runner::run(Arc::clone(self), Arc::clone(&slot)));
        slot.set_abort_handle(handle.abort_handle());
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
        let inner = Arc::new(Inner {
            shared: Arc::new(Shared::new()),
            coordinator,
            controller,
            config,
            limits,
            owned: AtomicUsize::new(0),
            phase: AtomicU8::new(RUNNING),
            session: RwLock::new(None),
            lease_clock: Mutex::new(LeaseClock {
                last_ok: Instant::now(),
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
        let sent = Instant::now();
        let lease = inner
            .coordinator
            .join(&session.node, inner.config.lease_ttl, inner.shared.sink())
            .await?;
        tracing::info!(node = %session.node.id, name = %session.node.name, "joined");
        *inner.lease_clock.lock().unwrap() = LeaseClock {
            last_ok: sent,
            ttl: lease.ttl,
        };
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
    for slot in inner.shared.loops.all() {
        tracing::error!(
            key = %slot.key,
            epoch = slot.epoch.0,
            grace = ?inner.config.shutdown_grace,
            "loop ignored its shutdown signal past the grace period: abandoned"
        );
        slot.abort();
        let released = slot
            .session
            .coordinator
            .release(
                &slot.session.node.id,
                &slot.key,
                slot.epoch,
                Release::Continue {
                    avoid_for: std::time::Duration::ZERO,
                },
            )
            .await;
        if let Err(e) = released {
            tracing::warn!(key = %slot.key, error = %e, "could not release abandoned key; it fails over after the lease");
        }
        inner.record(|r| r.abandoned.push(slot.key.clone()));
        inner.finish_slot(&slot);
    }
    inner.stop_lease.cancel();
    if let Some(session) = inner.current_session() {
        if let Err(e) = inner.coordinator.leave(&session.node.id).await {
            tracing::warn!(error = %e, "could not leave the cluster; the lease will expire");
        }
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
        &mut report.abandoned,
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
