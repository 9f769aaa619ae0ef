use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::panic::panic_message;
use crate::{
    Abandoned, BoxError, LifecycleError, LifecycleReport, Outcome, ServiceError, Session,
    ShutdownSignals, Stopped, TaskKind,
};

/// The lifecycle of a long-running program: its services and sessions, and their shutdown.
///
/// - A **service** runs for the program's lifetime (an accept loop, a flusher). It is spawned
///   by [`Lifecycle::service`] and gets a token that is cancelled at shutdown.
/// - A **session** (a connection, a request) is registered with [`Lifecycle::session`] or
///   spawned with [`Lifecycle::spawn_session`]; there may be many, coming and going.
///
/// [`Lifecycle::shutdown`] refuses new services and sessions, tells every service and session
/// to stop at once, and waits up to the grace period for them to end. Stragglers are abandoned:
/// their tasks are aborted (plain [`Session`] guards cannot be), each is logged at error level
/// by name, and the [`LifecycleReport`] lists them.
///
/// Shutdown is requested from anywhere with [`Lifecycle::request_shutdown`], or by SIGINT or
/// SIGTERM after [`Lifecycle::shutdown_on_signals`]; the program's main task usually waits for
/// the request with [`Lifecycle::shutdown_when_requested`]. `Lifecycle` is a cheap handle:
/// clones share the same state. Dropping every handle without shutting down leaves spawned
/// services and sessions running on the runtime.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    requested: CancellationToken,
    stop: CancellationToken,
    state: Mutex<State>,
    /// The number of registered services and sessions; shutdown waits for it to reach zero.
    open: watch::Sender<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Running,
    ShuttingDown,
    Done,
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Tasks that ended during shutdown, and services that ended before it, in end order.
    ended: Vec<Stopped>,
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    kind: TaskKind,
    abort: Option<AbortHandle>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across user code, so a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The registration behind a service or session; dropping it deregisters.
#[derive(Debug)]
pub(crate) struct Ticket {
    inner: Arc<Inner>,
    id: u64,
    name: Arc<str>,
    kind: TaskKind,
    outcome: Option<Outcome>,
}

impl Ticket {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(Outcome::Clean);
        let mut state = self.inner.lock();
        if state.open.remove(&self.id).is_none() {
            tracing::warn!(name = %self.name, kind = %self.kind, "ended after it was abandoned");
            return;
        }
        self.inner.open.send_modify(|n| *n -= 1);
        match state.phase {
            Phase::Running if self.kind == TaskKind::Service => state.ended.push(Stopped {
                name: self.name.to_string(),
                kind: self.kind,
                outcome,
                before_shutdown: true,
            }),
            Phase::ShuttingDown => state.ended.push(Stopped {
                name: self.name.to_string(),
                kind: self.kind,
                outcome,
                before_shutdown: false,
            }),
            _ => {}
        }
    }
}

impl Lifecycle {
    /// A lifecycle with no services or sessions.
    pub fn new() -> Self {
        Lifecycle::default()
    }

    fn register(
        &self,
        state: &mut State,
        name: Arc<str>,
        kind: TaskKind,
    ) -> Result<Ticket, LifecycleError> {
        if name.is_empty() {
            return Err(LifecycleError::EmptyName);
        }
        if state.phase != Phase::Running {
            return Err(LifecycleError::ShuttingDown);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.open.insert(
            id,
            Entry {
                name: name.clone(),
                kind,
                abort: None,
            },
        );
        self.inner.open.send_modify(|n| *n += 1);
        Ok(Ticket {
            inner: self.inner.clone(),
            id,
            name,
            kind,
            outcome: None,
        })
    }

    /// Registers and spawns a task holding its ticket; the ticket records the task's outcome.
    fn spawn_task<F, Fut, E>(
        &self,
        name: Arc<str>,
        kind: TaskKind,
        task: F,
    ) -> Result<(), LifecycleError>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let token = self.inner.stop.child_token();
        let mut ticket = {
            let mut state = self.inner.lock();
            self.register(&mut state, name, kind)?
        };
        let id = ticket.id;
        // Spawned without the lock held: a runtime that is shutting down drops the future (and
        // with it the ticket, which takes the lock) inside `spawn`.
        let handle = tokio::spawn(async move {
            let result = AssertUnwindSafe(async move { task(token).await })
                .catch_unwind()
                .await;
            let stopping = ticket.inner.stop.is_cancelled();
            ticket.outcome = Some(match result {
                Ok(Ok(())) => {
                    if kind == TaskKind::Service && !stopping {
                        tracing::warn!(service = %ticket.name, "service ended before shutdown");
                    }
                    Outcome::Clean
                }
                Ok(Err(e)) => {
                    let e = ServiceError::new(e);
                    match kind {
                        TaskKind::Service => {
                            tracing::error!(service = %ticket.name, error = %e, "service failed")
                        }
                        _ => tracing::warn!(session = %ticket.name, error = %e, "session failed"),
                    }
                    Outcome::Failed(e)
                }
                Err(payload) => {
                    let message = panic_message(&*payload);
                    tracing::error!(name = %ticket.name, kind = %kind, panic = %message, "panicked");
                    Outcome::Panicked(message)
                }
            });
            // Deregisters, recording the outcome.
            drop(ticket);
        });
        let registered = match self.inner.lock().open.get_mut(&id) {
            Some(entry) => {
                entry.abort = Some(handle.abort_handle());
                true
            }
            None => false,
        };
        if !registered {
            // Already ended, or abandoned by a shutdown that ran out of grace in between; in
            // the second case it is this call's job to abort it.
            handle.abort();
        }
        Ok(())
    }

    /// Spawns a service: `service` is called once with a token that is cancelled at shutdown,
    /// and should return soon after. A service that ends before shutdown is logged (at error
    /// level if it failed or panicked) and reported; it is not restarted (run a
    /// [`Supervisor`](crate::Supervisor) as the service for that).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn service<F, Fut, E>(
        &self,
        name: impl Into<String>,
        service: F,
    ) -> Result<(), LifecycleError>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.spawn_task(Arc::from(name.into()), TaskKind::Service, service)
    }

    /// Registers a session; it stays registered until the returned guard is dropped.
    pub fn session(&self, name: impl Into<String>) -> Result<Session, LifecycleError> {
        let token = self.inner.stop.child_token();
        let mut state = self.inner.lock();
        let ticket = self.register(&mut state, Arc::from(name.into()), TaskKind::Session)?;
        Ok(Session { ticket, token })
    }

    /// Spawns a session as its own task: `session` gets a token cancelled at shutdown, and the
    /// session is deregistered when the future ends. Unlike a plain [`Session`] guard, a spawned
    /// session that outlives the grace period is aborted.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn spawn_session<F, Fut, E>(
        &self,
        name: impl Into<String>,
        session: F,
    ) -> Result<(), LifecycleError>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.spawn_task(Arc::from(name.into()), TaskKind::Session, session)
    }

    /// The number of sessions registered right now.
    pub fn active_sessions(&self) -> usize {
        let state = self.inner.lock();
        state
            .open
            .values()
            .filter(|e| e.kind == TaskKind::Session)
            .count()
    }

    /// Asks for shutdown: wakes [`Lifecycle::shutdown_requested`]. Whoever waits there then
    /// calls [`Lifecycle::shutdown`].
    pub fn request_shutdown(&self) {
        self.inner.requested.cancel();
    }

    /// Resolves once shutdown has been requested (or has begun).
    pub fn shutdown_requested(&self) -> WaitForCancellationFuture<'_> {
        self.inner.requested.cancelled()
    }

    /// Whether shutdown has been requested (or has begun).
    pub fn is_shutdown_requested(&self) -> bool {
        self.inner.requested.is_cancelled()
    }

    /// Requests shutdown on the first SIGINT or SIGTERM (Ctrl-C only on non-Unix platforms).
    /// The handlers are installed before this returns.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn shutdown_on_signals(&self) -> Result<(), LifecycleError> {
        let mut signals = ShutdownSignals::new().map_err(LifecycleError::Signal)?;
        let requested = self.inner.requested.clone();
        tokio::spawn(async move {
            tokio::select! {
                signal = signals.recv() => {
                    tracing::info!(%signal, "shutdown requested by signal");
                    requested.cancel();
                }
                // Ends with the lifecycle rather than living on as a stray task.
                _ = requested.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Waits until shutdown is requested, then [`shutdown`](Lifecycle::shutdown)s with `grace`.
    pub async fn shutdown_when_requested(
        &self,
        grace: Duration,
    ) -> Result<LifecycleReport, LifecycleError> {
        self.shutdown_requested().await;
        self.shutdown(grace).await
    }

    /// Shuts down: refuses new services and sessions, tells all of them to stop, waits up to
    /// `grace` for them to end, abandons the rest, and reports. Runs once; later calls fail
    /// with [`LifecycleError::ShuttingDown`].
    pub async fn shutdown(&self, grace: Duration) -> Result<LifecycleReport, LifecycleError> {
        let started = Instant::now();
        let open = {
            let mut state = self.inner.lock();
            if state.phase != Phase::Running {
                return Err(LifecycleError::ShuttingDown);
            }
            state.phase = Phase::ShuttingDown;
            state.open.len()
        };
        tracing::info!(open, ?grace, "shutting down");
        self.inner.requested.cancel();
        self.inner.stop.cancel();
        let mut count = self.inner.open.subscribe();
        // Either everything ended or the grace period is over; the state below tells which.
        let _ = tokio::time::timeout_at(started + grace, count.wait_for(|n| *n == 0)).await;
        let (stopped, stragglers) = {
            let mut state = self.inner.lock();
            state.phase = Phase::Done;
            let mut stragglers: Vec<(u64, Entry)> = state.open.drain().collect();
            self.inner.open.send_replace(0);
            stragglers.sort_unstable_by_key(|(id, _)| *id);
            (std::mem::take(&mut state.ended), stragglers)
        };
        let mut abandoned = Vec::with_capacity(stragglers.len());
        for (_, entry) in stragglers {
            tracing::error!(
                name = %entry.name,
                kind = %entry.kind,
                ?grace,
                "did not stop within the shutdown grace period; abandoned"
            );
            if let Some(abort) = entry.abort {
                abort.abort();
            }
            abandoned.push(Abandoned {
                name: entry.name.to_string(),
                kind: entry.kind,
            });
        }
        Ok(LifecycleReport {
            stopped,
            abandoned,
            grace,
            elapsed: started.elapsed(),
        })
    }
}
