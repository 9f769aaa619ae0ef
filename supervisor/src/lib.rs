//! Supervised services and the lifecycle of long-running programs.
//!
//! keyloop runs its own engine tasks (heartbeat, claims, watches) with these, and offers them
//! to users. Two independent tools:
//!
//! - [`Supervisor`] — "a more capable errgroup". It runs a fixed set of named async
//!   [`Service`]s, restarts them by their [`RestartPolicy`] after an exponential [`Backoff`]
//!   with jitter and a cap, gives up when restarts exceed an [`Intensity`] (N restarts within
//!   T, over all services), captures panics with their message, and reports every status
//!   change ([`ServiceStatus`]) with a [`Snapshot`] of all services to listener callbacks.
//! - [`Lifecycle`] — services that run for the program's lifetime, and [`Session`]s (a
//!   connection, a request) that come and go. Shutdown, requested by SIGINT/SIGTERM
//!   ([`Lifecycle::shutdown_on_signals`]) or by code, tells all of them to stop, waits up to a
//!   grace period, abandons stragglers with an error log naming each, and returns a
//!   [`LifecycleReport`].
//!
//! Nothing here is global: no signal handler is installed unless asked, and everything is
//! driven by tokio's clock, so tests can run under paused time
//! (`#[tokio::test(start_paused = true)]`).
//!
//! # Supervisor
//!
//! A service is a factory: it is called for every (re)start with a [`ServiceContext`] whose
//! token is cancelled when the service must stop.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use keyloop_supervisor::{Backoff, Service, ServiceStatus, StopReason, Supervisor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let attempts = Arc::new(AtomicU32::new(0));
//! let counter = attempts.clone();
//! let supervisor = Supervisor::builder()
//!     .backoff(Backoff::builder().initial(Duration::from_millis(1)).build()?)
//!     .intensity(5, Duration::from_secs(10))
//!     // Fails twice, then finishes; transient services are restarted only after failures.
//!     .service(Service::transient("flaky", move |_ctx| {
//!         let attempt = counter.fetch_add(1, Ordering::SeqCst);
//!         async move { if attempt < 2 { Err("not yet") } else { Ok(()) } }
//!     }))
//!     // Runs until told to stop; permanent services are always restarted.
//!     .service(Service::permanent("heartbeat", |ctx| async move {
//!         ctx.stopped().await;
//!         Ok::<(), std::io::Error>(())
//!     }))
//!     .listener(|change| println!("{} -> {:?}", change.service, change.status))
//!     .build()?;
//!
//! let handle = supervisor.spawn();
//! let mut status = handle.subscribe();
//! status
//!     .wait_for(|s| s.status("flaky") == Some(&ServiceStatus::Stopped))
//!     .await?;
//! let report = handle.shutdown_and_wait().await;
//! assert_eq!(report.reason, StopReason::ShutdownRequested);
//! assert_eq!(report.restarts("flaky"), Some(2));
//! # Ok(())
//! # }
//! ```
//!
//! Every end of a service is reported as `Stopped`, `Failed(error)` or `Panicked(message)`;
//! a restart then shows as `Backoff { delay }` followed by `Running`. A run that lasts at least
//! [`SupervisorBuilder::healthy_after`] resets the service's backoff. When a restart would
//! exceed the intensity, every service is stopped and [`SupervisorHandle::wait`] reports
//! [`StopReason::IntensityExceeded`] with the service's name. Services that ignore their stop
//! token past [`SupervisorBuilder::shutdown_grace`] are aborted and reported as abandoned.
//!
//! # Lifecycle
//!
//! ```
//! use std::time::Duration;
//!
//! use keyloop_supervisor::{CancellationToken, Lifecycle, TaskKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lifecycle = Lifecycle::new();
//! // In a program: lifecycle.shutdown_on_signals()?;
//! lifecycle.service("flusher", |stop: CancellationToken| async move {
//!     stop.cancelled().await;
//!     Ok::<(), std::io::Error>(())
//! })?;
//!
//! // A session, e.g. one connection: registered until the guard is dropped.
//! let session = lifecycle.session("conn 1")?;
//! tokio::spawn(async move {
//!     session.stopped().await; // shutdown began: finish up
//!     drop(session);
//! });
//!
//! lifecycle.request_shutdown(); // or SIGINT / SIGTERM
//! let report = lifecycle.shutdown_when_requested(Duration::from_secs(5)).await?;
//! assert!(report.is_clean());
//! assert_eq!(report.stopped_names(TaskKind::Session), vec!["conn 1"]);
//! # Ok(())
//! # }
//! ```
//!
//! A supervisor can itself be a lifecycle service: run it with [`Supervisor::run`] and hand it
//! the service's token through [`SupervisorBuilder::stop_token`].

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
