//! An in-process emulator of the Consul HTTP API endpoints `keyloop-consul` uses, for tests,
//! derived from Consul's own source (`agent/consul/state`, `agent/consul/*_endpoint.go`,
//! `agent/*_endpoint.go`, `agent/blockingquery`); the crate README maps every behaviour to
//! the Consul function that has it and to the test that checks it here.
//!
//! In short: a Raft index taken by every write, and table indexes that move only when a
//! table really changes: a write that stores what is already stored (a PUT, CAS, txn `set`
//! or a lock acquired again by its holder) keeps the entry's `ModifyIndex` and wakes no
//! blocking query. Blocking queries re-run only when what they read changes and answer once
//! the index passes the one asked for, or after `wait` plus up to `wait/16`; a missing key
//! keeps blocking. Sessions are invalidated by the leader's timer `TTL × 2` after the last
//! renew (restarted by a new leader, see [`Control::change_leader`]), releasing or deleting
//! their locks and putting lock-delay on them; renew answers 404 once a session is gone.
//! `/v1/txn` is all-or-nothing, limited to 64 operations and the body size, answered 409
//! with every failed operation; a transaction without writes is a read outside Raft, which
//! may be stale unless `?consistent`. Faults are injected through [`Control`]: 500 answers,
//! dropped connections, slow answers, stale reads, and an index that goes backwards, resets
//! or reads 0. [`TestConsul`] runs the same tests against a real agent when there is one.
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
mod target;

pub use config::{
    ConfigError, DEFAULT_MAX_BYTES, DEFAULT_TXN_MAX_OPS, EmulatorConfig, EmulatorConfigBuilder,
};
pub use fault::{Control, FaultKind, SessionInfo, Target};
pub use server::{Emulator, StartError};
pub use target::{REAL_SESSION_TTL_MIN, TestConsul};
