use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::intensity::RestartWindow;
use crate::panic::panic_message;
use crate::service::Factory;
use crate::{
    Backoff, BoxError, BuildError, Intensity, RestartPolicy, Service, ServiceContext, ServiceError,
    ServiceSnapshot, ServiceStatus, Snapshot, StatusChange, StopReason, SupervisorReport,
};

type Listener = Arc<dyn Fn(&StatusChange) + Send + Sync>;

/// Runs a set of named services, restarts them by their [`RestartPolicy`] with backoff, and
/// reports every status change to its listeners.
///
/// Build one with [`Supervisor::builder`], then [`spawn`](Supervisor::spawn) it (and control it
/// through the returned [`SupervisorHandle`]) or [`run`](Supervisor::run) it in the current
/// task. All timing uses tokio's clock, so supervisors can be tested under paused time.
pub struct Supervisor {
    services: Vec<Service>,
    backoff: Backoff,
    intensity: Option<Intensity>,
    healthy_after: Duration,
    shutdown_grace: Duration,
    listeners: Vec<Listener>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.services)
            .field("backoff", &self.backoff)
            .field("intensity", &self.intensity)
            .field("healthy_after", &self.healthy_after)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Supervisor`]; settings are validated at [`SupervisorBuilder::build`].
pub struct SupervisorBuilder {
    services: Vec<Service>,
    backoff: Backoff,
    intensity: Option<Intensity>,
    healthy_after: Duration,
    shutdown_grace: Duration,
    listeners: Vec<Listener>,
    stop: Option<CancellationToken>,
}

impl std::fmt::Debug for SupervisorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("services", &self.services)
            .field("backoff", &self.backoff)
            .field("intensity", &self.intensity)
            .field("healthy_after", &self.healthy_after)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A builder with the defaults: [`Backoff::default`], [`Intensity::default`] (10 restarts
    /// in 10 s), backoff reset after 10 s of healthy running, 10 s shutdown grace.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder {
            services: Vec::new(),
            backoff: Backoff::default(),
            intensity: Some(Intensity::default()),
            healthy_after: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            listeners: Vec::new(),
            stop: None,
        }
    }

    /// Starts the supervisor on a new task of the current tokio runtime.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn spawn(self) -> SupervisorHandle {
        let (runner, status) = Runner::new(self);
        let stop = runner.stop.clone();
        let join = tokio::spawn(runner.run());
        SupervisorHandle { stop, status, join }
    }

    /// Runs the supervisor in the current task until it stops. It stops by itself when all
    /// services are done or the intensity is exceeded, or when the stop token given to
    /// [`SupervisorBuilder::stop_token`] is cancelled. Dropping the returned future aborts every
    /// service at its next await, without a report.
    pub async fn run(self) -> SupervisorReport {
        let (runner, _status) = Runner::new(self);
        runner.run().await
    }
}

impl SupervisorBuilder {
    /// Adds a service. Names must be unique and non-empty.
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// The backoff for services that do not set their own.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Escalate when more than `max_restarts` restarts happen within `within` (over all
    /// services together).
    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.intensity = Some(Intensity::new(max_restarts, within));
        self
    }

    /// Never escalate, however often services restart.
    pub fn unlimited_restarts(mut self) -> Self {
        self.intensity = None;
        self
    }

    /// A run at least this long counts as healthy: the service's next restart starts the
    /// backoff from its initial delay again.
    pub fn healthy_after(mut self, healthy_after: Duration) -> Self {
        self.healthy_after = healthy_after;
        self
    }

    /// How long services get to end after being told to stop; those still running afterwards
    /// are aborted, logged at error level and reported as abandoned.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Calls `listener` on every status change, in order, from the supervisor's task. It should
    /// return quickly; a panic in it is logged and otherwise ignored.
    pub fn listener(mut self, listener: impl Fn(&StatusChange) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Stops the supervisor when `token` is cancelled. The supervisor uses a child of it, so
    /// stopping the supervisor never cancels `token` itself.
    pub fn stop_token(mut self, token: CancellationToken) -> Self {
        self.stop = Some(token);
        self
    }

    /// Validates the settings and returns the supervisor.
    pub fn build(self) -> Result<Supervisor, BuildError> {
        if self.services.is_empty() {
            return Err(BuildError::NoServices);
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.services {
            if s.name.is_empty() {
                return Err(BuildError::EmptyName);
            }
            if !seen.insert(s.name.as_str()) {
                return Err(BuildError::DuplicateName(s.name.clone()));
            }
        }
        if let Some(i) = self.intensity {
            if i.within().is_zero() {
                return Err(BuildError::ZeroIntensityWindow(i.within()));
            }
        }
        let stop = match self.stop {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        Ok(Supervisor {
            services: self.services,
            backoff: self.backoff,
            intensity: self.intensity,
            healthy_after: self.healthy_after,
            shutdown_grace: self.shutdown_grace,
            listeners: self.listeners,
            stop,
        })
    }
}

/// Controls a supervisor started with [`Supervisor::spawn`].
///
/// Dropping the handle does not stop the supervisor (like dropping a `JoinHandle`); call
/// [`shutdown`](SupervisorHandle::shutdown) for that.
#[derive(Debug)]
pub struct SupervisorHandle {
    stop: CancellationToken,
    status: watch::Receiver<Snapshot>,
    join: JoinHandle<SupervisorReport>,
}

impl SupervisorHandle {
    /// Asks the supervisor to stop: every service is told to stop and gets the shutdown grace
    /// period to end. Returns at once; [`wait`](SupervisorHandle::wait) for the report.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// The current status of every service.
    pub fn status(&self) -> Snapshot {
        self.status.borrow().clone()
    }

    /// A receiver that sees every new snapshot (intermediate ones may be skipped; use a
    /// listener to see each change).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.status.clone()
    }

    /// Whether the supervisor has stopped.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits until the supervisor has stopped and returns its report.
    pub async fn wait(self) -> SupervisorReport {
        match self.join.await {
            Ok(report) => report,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => SupervisorReport {
                reason: StopReason::Aborted,
                snapshot: self.status.borrow().clone(),
                abandoned: Vec::new(),
            },
        }
    }

    /// [`shutdown`](SupervisorHandle::shutdown), then [`wait`](SupervisorHandle::wait).
    pub async fn shutdown_and_wait(self) -> SupervisorReport {
        self.shutdown();
        self.wait().await
    }
}

struct Slot {
    name: Arc<str>,
    policy: RestartPolicy,
    backoff: Backoff,
    factory: Factory,
    status: ServiceStatus,
    restarts: u32,
    /// Consecutive unhealthy runs: the backoff attempt number.
    attempt: u32,
    started_at: Instant,
    restart_at: Option<Instant>,
}

enum Exit {
    Clean,
    Failed(ServiceError),
    Panicked(String),
}

impl Exit {
    fn from_join(result: Result<Result<(), BoxError>, JoinError>) -> Exit {
        match result {
            Ok(Ok(())) => Exit::Clean,
            Ok(Err(e)) => Exit::Failed(ServiceError::new(e)),
            Err(e) if e.is_panic() => Exit::Panicked(panic_message(&*e.into_panic())),
            // Only aborts cancel service tasks, and the supervisor aborts only after it has
            // stopped listening to them; treat any other cancellation as a failure.
            Err(e) => Exit::Failed(ServiceError::new(e)),
        }
    }

    fn status(&self) -> ServiceStatus {
        match self {
            Exit::Clean => ServiceStatus::Stopped,
            Exit::Failed(e) => ServiceStatus::Failed(e.clone()),
            Exit::Panicked(m) => ServiceStatus::Panicked(m.clone()),
        }
    }
}

enum Event {
    Stop,
    Exited(Id, Result<Result<(), BoxError>, JoinError>),
    RestartDue,
}

struct Runner {
    slots: Vec<Slot>,
    tasks: JoinSet<Result<(), BoxError>>,
    task_slot: HashMap<Id, usize>,
    stop: CancellationToken,
    window: RestartWindow,
    intensity: Option<Intensity>,
    healthy_after: Duration,
    shutdown_grace: Duration,
    listeners: Vec<Listener>,
    status: watch::Sender<Snapshot>,
}

impl Runner {
    fn new(sup: Supervisor) -> (Runner, watch::Receiver<Snapshot>) {
        let now = Instant::now();
        let slots: Vec<Slot> = sup
            .services
            .into_iter()
            .map(|s| Slot {
                name: Arc::from(s.name),
                policy: s.policy,
                backoff: s.backoff.unwrap_or(sup.backoff),
                factory: s.factory,
                status: ServiceStatus::Idle,
                restarts: 0,
                attempt: 0,
                started_at: now,
                restart_at: None,
            })
            .collect();
        let (status, rx) = watch::channel(snapshot_of(&slots));
        let runner = Runner {
            slots,
            tasks: JoinSet::new(),
            task_slot: HashMap::new(),
            stop: sup.stop,
            window: RestartWindow::new(sup.intensity),
            intensity: sup.intensity,
            healthy_after: sup.healthy_after,
            shutdown_grace: sup.shutdown_grace,
            listeners: sup.listeners,
            status,
        };
        (runner, rx)
    }

    async fn run(mut self) -> SupervisorReport {
        for i in 0..self.slots.len() {
            if self.stop.is_cancelled() {
                break;
            }
            self.start(i);
        }
        let stop = self.stop.clone();
        let reason = loop {
            if stop.is_cancelled() {
                break StopReason::ShutdownRequested;
            }
            if !self.slots.iter().any(|s| s.status.is_active()) {
                break StopReason::AllDone;
            }
            let next_restart = self.slots.iter().filter_map(|s| s.restart_at).min();
            let event = tokio::select! {
                biased;
                _ = stop.cancelled() => Event::Stop,
                Some(joined) = self.tasks.join_next_with_id() => match joined {
                    Ok((id, result)) => Event::Exited(id, Ok(result)),
                    Err(e) => Event::Exited(e.id(), Err(e)),
                },
                _ = sleep_until_opt(next_restart), if next_restart.is_some() => Event::RestartDue,
            };
            match event {
                Event::Stop => break StopReason::ShutdownRequested,
                Event::Exited(id, result) => {
                    if let Some(reason) = self.on_exit(id, result) {
                        break reason;
                    }
                }
                Event::RestartDue => self.restart_due(),
            }
        };
        match &reason {
            StopReason::IntensityExceeded { service, .. } => {
                tracing::error!(service = %service, "restart intensity exceeded, stopping all services")
            }
            StopReason::ShutdownRequested => tracing::info!("supervisor shutting down"),
            _ => tracing::debug!("all supervised services are done"),
        }
        let abandoned = self.stop_all().await;
        SupervisorReport {
            reason,
            snapshot: snapshot_of(&self.slots),
            abandoned,
        }
    }

    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let ctx = ServiceContext {
            name: slot.name.clone(),
            restarts: slot.restarts,
            token: self.stop.child_token(),
        };
        let factory = slot.factory.clone();
        // The factory runs inside the task so that a panic in it is captured like any other.
        let handle = self.tasks.spawn(async move { factory(ctx).await });
        self.task_slot.insert(handle.id(), i);
        slot.started_at = Instant::now();
        slot.restart_at = None;
        tracing::debug!(service = %slot.name, restarts = slot.restarts, "service started");
        self.set_status(i, ServiceStatus::Running);
    }

    /// Handles the end of a service task; returns a reason to stop when it escalates.
    fn on_exit(
        &mut self,
        id: Id,
        result: Result<Result<(), BoxError>, JoinError>,
    ) -> Option<StopReason> {
        let i = self.task_slot.remove(&id)?;
        let exit = Exit::from_join(result);
        let now = Instant::now();
        let slot = &mut self.slots[i];
        if now.duration_since(slot.started_at) >= self.healthy_after {
            slot.attempt = 0;
        }
        let clean = matches!(exit, Exit::Clean);
        match &exit {
            Exit::Clean => tracing::info!(service = %slot.name, "service ended"),
            Exit::Failed(e) => tracing::warn!(service = %slot.name, error = %e, "service failed"),
            Exit::Panicked(m) => {
                tracing::error!(service = %slot.name, panic = %m, "service panicked")
            }
        }
        let restart = slot.policy.restarts_after(clean);
        self.set_status(i, exit.status());
        if !restart {
            return None;
        }
        if !self.window.admit(now) {
            let limit = self.intensity.unwrap_or_default();
            return Some(StopReason::IntensityExceeded {
                service: self.slots[i].name.to_string(),
                max_restarts: limit.max_restarts(),
                within: limit.within(),
            });
        }
        let slot = &mut self.slots[i];
        let delay = slot.backoff.delay(slot.attempt);
        slot.attempt = slot.attempt.saturating_add(1);
        slot.restart_at = Some(now + delay);
        self.set_status(i, ServiceStatus::Backoff { delay });
        None
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.is_some_and(|at| at <= now) {
                self.slots[i].restarts += 1;
                self.start(i);
            }
        }
    }

    /// Tells every service to stop and waits for them up to the grace period; returns the
    /// names of those that had to be abandoned.
    async fn stop_all(&mut self) -> Vec<String> {
        self.stop.cancel();
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.take().is_some() {
                self.set_status(i, ServiceStatus::Stopped);
            }
        }
        let deadline = Instant::now() + self.shutdown_grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    let (id, result) = match joined {
                        Ok((id, result)) => (id, Ok(result)),
                        Err(e) => (e.id(), Err(e)),
                    };
                    if let Some(i) = self.task_slot.remove(&id) {
                        let exit = Exit::from_join(result);
                        if let Exit::Panicked(m) = &exit {
                            tracing::error!(service = %self.slots[i].name, panic = %m, "service panicked while stopping");
                        }
                        self.set_status(i, exit.status());
                    }
                }
                Ok(None) => return Vec::new(),
                Err(_elapsed) => break,
            }
        }
        let mut stragglers: Vec<usize> = self.task_slot.drain().map(|(_, i)| i).collect();
        stragglers.sort_unstable();
        self.tasks.abort_all();
        // Aborted tasks end at their next await; nothing is left to learn from them, so they
        // are detached rather than awaited (a task stuck in blocking code would never end).
        self.tasks.detach_all();
        let mut names = Vec::with_capacity(stragglers.len());
        for i in stragglers {
            tracing::error!(
                service = %self.slots[i].name,
                grace = ?self.shutdown_grace,
                "service did not stop within the shutdown grace period; abandoned"
            );
            names.push(self.slots[i].name.to_string());
            self.set_status(i, ServiceStatus::Abandoned);
        }
        names
    }

    fn set_status(&mut self, i: usize, status: ServiceStatus) {
        self.slots[i].status = status.clone();
        let snapshot = snapshot_of(&self.slots);
        self.status.send_replace(snapshot.clone());
        if self.listeners.is_empty() {
            return;
        }
        let change = StatusChange {
            service: self.slots[i].name.to_string(),
            status,
            snapshot,
        };
        for listener in &self.listeners {
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| listener(&change))) {
                tracing::error!(panic = %panic_message(&*payload), "supervisor status listener panicked");
            }
        }
    }
}

fn snapshot_of(slots: &[Slot]) -> Snapshot {
    Snapshot::new(
        slots
            .iter()
            .map(|s| ServiceSnapshot {
                name: s.name.to_string(),
                status: s.status.clone(),
                restarts: s.restarts,
            })
            .collect(),
    )
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
