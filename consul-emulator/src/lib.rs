//! An in-process emulator of the Consul HTTP API endpoints `keyloop-consul` uses, for tests.
//!
//! It follows Consul's documented behaviour: one global index reported as
//! `X-Consul-Index` on every read (404s included, never 0), blocking queries with `index`
//! and `wait` (plus up to `wait/16` jitter), KV `cas`/`acquire`/`release` with `LockIndex`
//! and `ModifyIndex`, sessions with a TTL (invalidated between TTL and 2×TTL after the last
//! renew), lock-delay after invalidation but not after release, renew answering 404 once a
//! session is gone, all-or-nothing `/v1/txn` answering 409, and the 512 KiB value and
//! transaction limits. Faults can be injected through [`Control`]: 500 answers, dropped
//! connections, slow answers, and an index that goes backwards, resets or reads 0.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use keyloop_consul_emulator::{Emulator, EmulatorConfig, FaultKind, Target};
//!
//! let config = EmulatorConfig::builder()
//!     .min_session_ttl(Duration::from_millis(100))
//!     .build()
//!     .unwrap();
//! let emulator = Emulator::start_with(config).await.unwrap();
//! // The next request to /v1/txn is answered 500.
//! emulator.control().inject(FaultKind::Error500, 1, Target::PathPrefix("/v1/txn".into()));
//! assert_eq!(emulator.control().pending_faults(), 1);
//! # });
//! ```

mod config;
mod duration;
mod fault;
mod server;
mod store;

pub use config::{
    ConfigError, DEFAULT_MAX_BYTES, DEFAULT_TXN_MAX_OPS, EmulatorConfig, EmulatorConfigBuilder,
};
pub use fault::{Control, FaultKind, SessionInfo, Target};
pub use server::{Emulator, StartError};
