//! Embedded, durable keyloop coordinator on [sled](https://docs.rs/sled/0.34): the backend
//! you get with no setup. Single process only (sled locks its directory); every engine in
//! the process shares one [`SledStore`].
//!
//! ```
//! use keyloop_core::{async_trait, BoxError, Controller, Decision, Engine, Key, LoopContext};
//! use keyloop_sled::SledStore;
//!
//! struct Hello;
//!
//! #[async_trait]
//! impl Controller for Hello {
//!     async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
//!         ctx.state().save(format!("reconciled {key}")).await?;
//!         Ok(Decision::Complete)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // Open once per process; clone the store (or call `coordinator()` again) for more nodes.
//! let store = SledStore::open(dir.path().join("keyloop"))?;
//! let engine = Engine::builder(store.coordinator(), Hello).node_name("a").start().await?;
//! engine.trigger("vm/1").await?;
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Durability
//!
//! With the default [`Durability::FlushEach`], a `trigger`, claim, release or state save
//! is on disk before it returns. [`Durability::Batched`] acknowledges from memory and
//! flushes in the background; its docs list what a crash can lose then. Either way the
//! registry, trigger sequences, epochs and state live in sled, and epochs and sequences
//! come from one counter that is only issued below a ceiling already flushed to disk, so
//! they never go backwards, even after a crash.
//!
//! # What is not durable
//!
//! Node leases and the event bus live in this process. After a restart every node from
//! before is dead, so every registered key is claimable at once by the new nodes.
//!
//! # Opening a directory twice
//!
//! [`SledStore::open`] on a directory this process already has open fails with
//! [`SledError::AlreadyOpen`] naming it (share the first store instead); a directory that
//! another process holds fails with [`SledError::Locked`]. A database written by a newer
//! keyloop format fails with [`SledError::IncompatibleVersion`] and is left untouched.

mod config;
mod coordinator;
mod error;
mod flush;
mod ids;
mod index;
mod nodes;
mod schema;
mod store;

pub use config::{
    DEFAULT_MAX_STATE_BYTES, Durability, MAX_STATE_BYTES_LIMIT, SledConfig, SledConfigBuilder,
};
pub use coordinator::SledCoordinator;
pub use error::{SledConfigError, SledError};
pub use schema::FORMAT_VERSION;
pub use store::SledStore;
