use std::fmt;
use std::time::Duration;

use crate::ServiceError;

/// Whether a lifecycle task is a service or a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskKind {
    /// Runs for the program's lifetime.
    Service,
    /// A connection, a request: one of many short-lived units of work.
    Session,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Service => "service",
            TaskKind::Session => "session",
        })
    }
}

/// How a lifecycle service or session ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// It returned `Ok`, or (a session guard) was dropped.
    Clean,
    /// It returned this error.
    Failed(ServiceError),
    /// It panicked with this message.
    Panicked(String),
}

/// A service or session that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// Its name.
    pub name: String,
    /// Service or session.
    pub kind: TaskKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Whether it ended before shutdown began (a service that gave up early).
    pub before_shutdown: bool,
}

/// A service or session that was still running when the grace period ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// Its name.
    pub name: String,
    /// Service or session.
    pub kind: TaskKind,
}

/// What [`Lifecycle::shutdown`](crate::Lifecycle::shutdown) reports: what stopped and what was
/// abandoned.
///
/// `stopped` lists every service, and every session that was still open when shutdown began
/// and closed within the grace period, in the order they ended. Sessions that closed before
/// shutdown are not listed.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleReport {
    /// The services and sessions that ended.
    pub stopped: Vec<Stopped>,
    /// The services and sessions still running when the grace period ran out.
    pub abandoned: Vec<Abandoned>,
    /// The grace period that was given.
    pub grace: Duration,
    /// How long shutdown took.
    pub elapsed: Duration,
}

impl LifecycleReport {
    /// Whether everything ended cleanly within the grace period.
    pub fn is_clean(&self) -> bool {
        self.abandoned.is_empty() && self.stopped.iter().all(|s| s.outcome == Outcome::Clean)
    }

    /// The names of the abandoned tasks of `kind`.
    pub fn abandoned_names(&self, kind: TaskKind) -> Vec<&str> {
        self.abandoned
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| a.name.as_str())
            .collect()
    }

    /// The names of the tasks of `kind` that ended.
    pub fn stopped_names(&self, kind: TaskKind) -> Vec<&str> {
        self.stopped
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.name.as_str())
            .collect()
    }
}
