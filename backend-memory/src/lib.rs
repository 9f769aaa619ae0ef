//! The in-memory keyloop coordinator: the reference backend and a deterministic simulator.
//!
//! A [`MemoryCluster`] is one shared registry; every node gets its own coordinator handle
//! from it, so many engines in one process form a cluster. Leases are measured with
//! `tokio::time::Instant`, so tests under tokio's paused time control expiry exactly. Test
//! hooks stall a node's heartbeats or crash it.
//!
//! ```
//! use keyloop_core::{controller_fn, Decision, Engine};
//! use keyloop_memory::MemoryCluster;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keyloop_core::Error> {
//! let cluster = MemoryCluster::new();
//! let engine = Engine::builder(cluster.coordinator(), controller_fn(|key, _ctx| async move {
//!     println!("reconciled {key}");
//!     Ok(Decision::Complete)
//! }))
//! .start()
//! .await?;
//! engine.trigger("vm/1").await?;
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Nothing survives the process: use `keyloop-sled` or `keyloop-postgres` for durability.

mod cluster;
mod config;
mod coordinator;
mod record;

pub use cluster::MemoryCluster;
pub use config::{MemoryConfig, MemoryConfigBuilder, MemoryConfigError};
pub use coordinator::MemoryCoordinator;
