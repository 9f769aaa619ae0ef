//! The Consul backend of keyloop: a [`ConsulCoordinator`] on Consul's HTTP API.
//!
//! One TTL session per node (`Checks: []`, behaviour `release`) renewed by the engine's
//! heartbeat; key ownership as KV locks (`acquire`/`release`) whose `ModifyIndex` is the
//! epoch; every fenced write in a `/v1/txn` that checks the session and the epoch first;
//! triggers as durable per-key entries plus markers consumed with CAS, every write of them a
//! fresh value (Consul skips writes that store what is stored); `?consistent` on every read
//! that decides ownership or a sequence; two blocking queries per node for notifications
//! (trigger markers, and node records whose session ended). Durable wake-ups
//! (`Release::Sleep`) are stored with the key's registry entries and in a wake-up index
//! whose names sort by due time, so claim rounds find due keys without listing the
//! registry; a key is due once the Consul agent's clock — the only server time Consul's
//! API exposes, the `Date` header of its answers — has surely reached its due time. See
//! the crate README for the KV layout, the clock, the failover bound, request counts, and
//! how to validate a Consul version.
//!
//! ```
//! use std::time::Duration;
//! use keyloop_consul::{ConsulConfig, ConsulCoordinator};
//! use keyloop_core::Coordinator;
//!
//! let config = ConsulConfig::builder("http://127.0.0.1:8500")
//!     .prefix("myapp/keyloop")
//!     .token("acl-token")
//!     .lock_delay(Duration::from_secs(1))
//!     .build()
//!     .unwrap();
//! let coordinator = ConsulCoordinator::new(config);
//! assert!(coordinator.limits().max_state_bytes < 512 * 1024);
//! // Engine::builder(Arc::new(coordinator), controller).start().await …
//! ```

mod client;
mod clock;
mod config;
mod coordinator;
mod error;
mod layout;
mod wake;
mod watch;

pub use client::{
    Behavior, CONSUL_MAX_VALUE_BYTES, ConsulClient, Indexed, KvEntry, PutOptions, ReadOptions,
    SessionEntry, SessionSpec, TXN_MAX_OPS, TxnFailure, TxnOp, TxnOutcome,
};
pub use config::{ConsulConfig, ConsulConfigBuilder};
pub use coordinator::ConsulCoordinator;
pub use error::{ClientError, ConfigError};
