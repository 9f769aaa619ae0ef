//! Two ways to write a keyloop loop's body: step flows and plan executors.
//!
//! - A [`StepFlow`] describes a long-running external process as a versioned list of steps
//!   (`step`, `wait_for`, `case`, `retry`, `loop_until`). Its running state is a small
//!   serializable [`FlowState`] saved after every step, so one flow drives many processes
//!   and a process interrupted on one node resumes on another at the step after the last
//!   one saved. [`FlowController`] runs a flow per key inside a keyloop engine, saving
//!   through the key's fenced state; [`MemoryStateStore`] runs flows without an engine.
//! - A [`PlanExecutor`] runs a [`Plan`] round after round: each round the plan returns the
//!   [`Task`]s still needed to reach the final state (none means done); each task runs
//!   `pre` / `perform` / `post` and may return sub-tasks. [`PlanController`] runs one per key.
//!
//! ```
//! use keyloop_flow::{MemoryStateStore, Poll, RetryPolicy, StepFlow, Steps};
//! use serde::{Deserialize, Serialize};
//! use std::time::Duration;
//!
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Deploy { change: Option<u32>, accepted: bool }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keyloop_flow::FlowError> {
//! let flow = StepFlow::builder("deploy", 1)
//!     .retry("open", RetryPolicy::attempts(3), Steps::new()
//!         .step("open change", |mut d: Deploy, _cx| async move {
//!             d.change = Some(42);
//!             Ok(d)
//!         }))
//!     .wait_for_with("accepted", Poll::every(Duration::from_millis(1)), |d, cx| async move {
//!         Ok(d.change.is_some() && cx.poll() >= 1)
//!     })
//!     .step("record", |mut d, _cx| async move { d.accepted = true; Ok(d) })
//!     .build()
//!     .unwrap();
//!
//! let store = MemoryStateStore::new();
//! let state = flow.run(&store.acquire(), Deploy::default()).await?;
//! assert!(flow.is_completed(&state));
//! assert!(state.data().accepted);
//! # Ok(()) }
//! ```

mod builder;
mod context;
mod controller;
mod data;
mod error;
mod executor;
mod id;
mod memory_store;
mod node;
mod plan_controller;
mod policy;
mod state;
mod step_context;
mod step_flow;
mod task;

pub use builder::{StepFlowBuilder, Steps};
pub use context::FlowContext;
pub use controller::FlowController;
pub use data::FlowData;
pub use error::{BuildError, ExecError, ExecutorConfigError, FlowError, TaskError, TaskPhase};
pub use executor::{ExecReport, PlanExecutor, PlanExecutorBuilder};
pub use id::FlowId;
pub use memory_store::{MemoryOwner, MemoryStateStore};
pub use plan_controller::PlanController;
pub use policy::{Poll, RetryPolicy};
pub use state::{FlowState, FlowStatus};
pub use step_context::StepContext;
pub use step_flow::StepFlow;
pub use task::{BoxTask, Plan, Task, TaskContext};
