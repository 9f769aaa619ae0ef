//! keyloop runs **one control loop per key**, reliably, on one machine or across a cluster.
//!
//! You implement a [`Controller`]; anyone calls [`Engine::trigger`] (or [`Client::trigger`]);
//! keyloop makes sure exactly one loop for that key runs somewhere, wakes it on triggers
//! (coalesced, never lost), hands it to another node when its node shuts down, takes it over
//! when its node dies, and fences its state with a per-key [`Epoch`] so a stale owner can
//! never overwrite it. Ownership goes through a pluggable [`Coordinator`] backend.
//!
//! ```
//! use std::sync::Arc;
//! use keyloop_core::{async_trait, BoxError, Controller, Decision, Engine, Key, LoopContext};
//!
//! struct Hello;
//!
//! #[async_trait]
//! impl Controller for Hello {
//!     async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
//!         println!("reconciling {key} at epoch {}", ctx.epoch());
//!         ctx.state().save_json(&"done").await?;
//!         Ok(Decision::Complete)
//!     }
//! }
//!
//! # async fn demo(coordinator: Arc<dyn keyloop_core::Coordinator>) -> Result<(), keyloop_core::Error> {
//! // `coordinator` comes from a backend crate, e.g. keyloop-memory or keyloop-sled.
//! let engine = Engine::builder(coordinator, Hello).node_name("a").start().await?;
//! engine.trigger("vm/1").await?;
//! let report = engine.shutdown().await;
//! println!("handed off: {:?}", report.handed_off);
//! # Ok(()) }
//! ```
//!
//! The guarantees (single owner, fencing, no lost trigger, coalescing, durable registry,
//! liveness, handoff, bounded concurrency, supervision, typed bad input) are checked for
//! every backend by the `keyloop-conformance` suite.

mod claimer;
mod client;
mod clock;
mod config;
mod context;
mod controller;
mod coordinator;
mod defect;
mod dispatch;
mod engine;
mod error;
mod event;
mod ids;
mod key;
mod lease;
mod report;
mod runner;
mod slot;
mod state;
mod status;
mod sync_every;

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use client::Client;
pub use config::{EngineConfig, EngineConfigBuilder};
pub use context::{LoopContext, ShutdownReason, Wake};
pub use controller::{Controller, ControllerFn, Decision, controller_fn};
pub use coordinator::{
    Claim, ClusterSnapshot, Coordinator, KeyInfo, Lease, Limits, NodeSnapshot, Release, Released,
    TriggerOutcome, WakeTime,
};
#[doc(hidden)]
pub use defect::Defect;
pub use engine::{Engine, EngineBuilder};
pub use error::{BoxError, ConfigError, CoordinatorError, Error, StateError};
pub use event::{CoordinatorEvent, EventSink};
pub use ids::{Epoch, NodeId, NodeInfo, TriggerSeq};
pub use key::{IntoKey, InvalidKey, Key, MAX_KEY_BYTES};
pub use keyloop_supervisor::Backoff;
pub use report::ShutdownReport;
pub use state::StateHandle;
pub use status::{KeyStatus, StatusListener};
pub use sync_every::SyncEvery;
pub use tokio_util::sync::CancellationToken;
