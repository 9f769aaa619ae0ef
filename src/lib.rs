//! keyloop: one control loop per key, reliably, on one machine or across a cluster.
//!
//! This facade re-exports [`keyloop_core`] (the engine, controllers, the `Coordinator`
//! trait), [`supervisor`] and [`flow`], and the backends enabled by features: `memory` and
//! `sled` by default, `postgres` and `consul` on request.
//!
//! ```
//! use keyloop::{controller_fn, Decision, Engine};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = keyloop::memory::MemoryCluster::new();
//! let engine = Engine::builder(
//!     cluster.coordinator(),
//!     controller_fn(|key, ctx| async move {
//!         // Reconcile `key`; the saved state is fenced by this loop's epoch.
//!         ctx.state().save_json(&format!("reconciled {key}")).await?;
//!         Ok(Decision::Complete)
//!     }),
//! )
//! .node_name("a")
//! .start()
//! .await?;
//! engine.trigger("vm/1").await?;
//! let report = engine.shutdown().await;
//! assert!(report.abandoned.is_empty());
//! # Ok(()) }
//! ```
//!
//! See the README for the guarantees and `ARCHITECTURE.md` for how a trigger reaches a loop.

#[cfg(feature = "consul")]
pub use keyloop_consul as consul;
pub use keyloop_core::*;
pub use keyloop_flow as flow;
#[cfg(feature = "memory")]
pub use keyloop_memory as memory;
#[cfg(feature = "postgres")]
pub use keyloop_postgres as postgres;
#[cfg(feature = "sled")]
pub use keyloop_sled as sled;
pub use keyloop_supervisor as supervisor;
