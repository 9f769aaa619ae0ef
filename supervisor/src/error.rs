use std::time::Duration;

/// Why a [`Supervisor`](crate::Supervisor) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No service was added.
    #[error("a supervisor needs at least one service")]
    NoServices,
    /// A service had an empty name.
    #[error("service names must not be empty")]
    EmptyName,
    /// Two services had the same name.
    #[error("service name {0:?} is used more than once")]
    DuplicateName(String),
    /// The restart intensity window was zero.
    #[error("restart intensity window must be greater than zero, got {0:?}")]
    ZeroIntensityWindow(Duration),
}

/// Why a [`Lifecycle`](crate::Lifecycle) refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Shutdown has begun: no new services or sessions are admitted, and shutdown runs once.
    #[error("the lifecycle is shutting down")]
    ShuttingDown,
    /// A name was empty.
    #[error("service and session names must not be empty")]
    EmptyName,
    /// The signal handlers could not be installed.
    #[error("could not listen for shutdown signals")]
    Signal(#[source] std::io::Error),
}
