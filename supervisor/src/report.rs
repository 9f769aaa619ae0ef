use std::time::Duration;

use crate::Snapshot;

/// Why a supervisor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Every service ended and none is to be restarted.
    AllDone,
    /// [`SupervisorHandle::shutdown`](crate::SupervisorHandle::shutdown) was called, or the
    /// supervisor's stop token was cancelled.
    ShutdownRequested,
    /// Restarting `service` would have exceeded the restart intensity, so every service was
    /// stopped instead.
    IntensityExceeded {
        /// The service whose restart was refused.
        service: String,
        /// The configured number of restarts tolerated within `within`.
        max_restarts: u32,
        /// The configured window.
        within: Duration,
    },
    /// The runtime dropped the supervisor task before it finished (the runtime shut down).
    Aborted,
}

/// What a supervisor reports when it has stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorReport {
    /// Why it stopped.
    pub reason: StopReason,
    /// The final status and restart count of every service.
    pub snapshot: Snapshot,
    /// The services that did not end within the shutdown grace period and were aborted.
    pub abandoned: Vec<String>,
}

impl SupervisorReport {
    /// The number of restarts of the service called `name`.
    pub fn restarts(&self, name: &str) -> Option<u32> {
        self.snapshot.get(name).map(|s| s.restarts)
    }
}
