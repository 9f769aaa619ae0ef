//! Supervision and lifecycle building blocks used by the keyloop engine and offered to users.
//!
//! ```
//! use keyloop_supervisor::Backoff;
//! use std::time::Duration;
//!
//! let backoff = Backoff::builder().initial(Duration::from_millis(10)).max(Duration::from_secs(1)).build().unwrap();
//! assert_eq!(backoff.delay_without_jitter(0), Duration::from_millis(10));
//! ```

mod backoff;
mod error;
mod intensity;
mod lifecycle;
mod lifecycle_report;
mod panic;
mod policy;
mod report;
mod service;
mod service_error;
mod session;
mod signal;
mod status;
mod supervisor;

pub use backoff::{Backoff, BackoffBuilder, BackoffError};
pub use error::{BuildError, LifecycleError};
pub use intensity::Intensity;
pub use lifecycle::Lifecycle;
pub use lifecycle_report::{Abandoned, LifecycleReport, Outcome, Stopped, TaskKind};
pub use policy::RestartPolicy;
pub use report::{StopReason, SupervisorReport};
pub use service::{Service, ServiceContext};
pub use service_error::{BoxError, ServiceError};
pub use session::Session;
pub use signal::{ShutdownSignals, Signal};
pub use status::{ServiceSnapshot, ServiceStatus, Snapshot, StatusChange};
pub use supervisor::{Supervisor, SupervisorBuilder, SupervisorHandle};
/// The stop token handed to services and sessions, re-exported so users need not depend on
/// `tokio-util` themselves.
pub use tokio_util::sync::CancellationToken;
