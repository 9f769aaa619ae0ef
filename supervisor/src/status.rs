use std::time::Duration;

use crate::ServiceError;

/// Where a supervised service is in its life.
///
/// A service starts `Idle`, becomes `Running`, and each time it ends passes through the state
/// that says how it ended (`Stopped`, `Failed`, `Panicked`). If it is to be restarted, it then
/// waits in `Backoff` and becomes `Running` again. Listeners see every one of these steps.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServiceStatus {
    /// Not started yet.
    Idle,
    /// Running.
    Running,
    /// Waiting `delay` before it is started again.
    Backoff {
        /// How long the supervisor waits before the restart (jitter included).
        delay: Duration,
    },
    /// Ended by returning `Ok`, or was waiting for a restart when the supervisor stopped.
    Stopped,
    /// Ended by returning this error.
    Failed(ServiceError),
    /// Ended by panicking with this message.
    Panicked(String),
    /// Did not end within the supervisor's shutdown grace period; its task was aborted.
    Abandoned,
}

impl ServiceStatus {
    /// Whether the service is running or will run again (`Running` or `Backoff`).
    pub fn is_active(&self) -> bool {
        matches!(self, ServiceStatus::Running | ServiceStatus::Backoff { .. })
    }
}

/// One service's entry in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    /// The service's name.
    pub name: String,
    /// Its status.
    pub status: ServiceStatus,
    /// How many times it has been restarted so far.
    pub restarts: u32,
}

/// The status of every service of a supervisor at one instant, in the order they were added.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    services: Vec<ServiceSnapshot>,
}

impl Snapshot {
    pub(crate) fn new(services: Vec<ServiceSnapshot>) -> Self {
        Snapshot { services }
    }

    /// The entry of the service called `name`.
    pub fn get(&self, name: &str) -> Option<&ServiceSnapshot> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The status of the service called `name`.
    pub fn status(&self, name: &str) -> Option<&ServiceStatus> {
        self.get(name).map(|s| &s.status)
    }

    /// All entries.
    pub fn services(&self) -> &[ServiceSnapshot] {
        &self.services
    }

    /// Whether any service is running or will run again.
    pub fn any_active(&self) -> bool {
        self.services.iter().any(|s| s.status.is_active())
    }
}

/// What a listener is told on every status change: which service changed, to what, and the
/// status of all services right after the change.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The service whose status changed.
    pub service: String,
    /// Its new status.
    pub status: ServiceStatus,
    /// All services after the change.
    pub snapshot: Snapshot,
}
