//! The PostgreSQL [`Coordinator`](keyloop_core::Coordinator) for keyloop: the clustered
//! backend, for many processes sharing one database.
//!
//! ```no_run
//! use std::sync::Arc;
//! use keyloop_postgres::{PostgresConfig, PostgresCoordinator};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PostgresConfig::builder("postgresql://app:secret@db:5432/app")
//!     .schema("keyloop")
//!     .pool_size(8)
//!     .build()?;
//! // Creates or migrates the schema; errors name the host, the user or the versions.
//! let coordinator = Arc::new(PostgresCoordinator::connect(config).await?);
//! // Hand it to `keyloop_core::Engine::builder(coordinator, controller)`.
//! # let _ = coordinator;
//! # Ok(()) }
//! ```
//!
//! How it works (see the crate README for the full story):
//! - a `nodes` table holds one lease row per node, renewed by one `UPDATE` per heartbeat
//!   whatever the number of keys; only the database's `now()` decides expiry;
//! - a `keys` table holds each registered key's owner, epoch (from a global sequence, so
//!   epochs grow forever), trigger sequence (also global), parking and state;
//! - claims take batches with `FOR UPDATE SKIP LOCKED`; every write is fenced by owner,
//!   epoch and a live lease;
//! - a trigger bumps the sequence and `pg_notify`s the owner in the same transaction; each
//!   node has one dedicated listening connection, which after a reconnect `LISTEN`s first
//!   and then asks the engine to resync;
//! - the schema is created and migrated by [`PostgresCoordinator::connect`] in one
//!   transaction under an advisory lock; a schema newer than the code is an error.

mod config;
mod coordinator;
mod error;
mod listener;
mod schema;
mod sql;
mod tls;

pub use config::{
    DEFAULT_MAX_STATE_BYTES, DEFAULT_SCHEMA, MAX_MAX_STATE_BYTES, PostgresConfig,
    PostgresConfigBuilder,
};
pub use coordinator::PostgresCoordinator;
pub use error::{ConfigError, PostgresError};
pub use tls::TlsMode;
