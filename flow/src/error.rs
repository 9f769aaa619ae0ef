use std::time::Duration;

use keyloop_core::{BoxError, StateError};

use crate::FlowId;

/// Why a [`StepFlow`](crate::StepFlow) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The flow name was empty or had control characters.
    #[error("flow name must be non-empty printable text, got {0:?}")]
    BadFlowName(String),
    /// The flow has no steps.
    #[error("flow {flow} has no steps")]
    EmptyFlow {
        /// The flow.
        flow: FlowId,
    },
    /// A `case`, `retry` or `loop_until` has no steps inside.
    #[error("flow {flow}: {step:?} has no steps inside")]
    EmptyBlock {
        /// The flow.
        flow: FlowId,
        /// The block's name.
        step: String,
    },
    /// Two steps share a name (names are unique across the whole flow, nested ones included).
    #[error("flow {flow}: step name {step:?} is used more than once")]
    DuplicateStep {
        /// The flow.
        flow: FlowId,
        /// The repeated name.
        step: String,
    },
    /// A step name was empty or had control characters.
    #[error("flow {flow}: step names must be non-empty printable text, got {step:?}")]
    BadStepName {
        /// The flow.
        flow: FlowId,
        /// The rejected name.
        step: String,
    },
    /// A retry allows no attempt at all.
    #[error("flow {flow}: retry {step:?} must allow at least one attempt")]
    ZeroAttempts {
        /// The flow.
        flow: FlowId,
        /// The retry's name.
        step: String,
    },
    /// A wait polls with a zero interval (a busy loop) or allows no poll at all.
    #[error("flow {flow}: wait {step:?} {detail}")]
    BadPoll {
        /// The flow.
        flow: FlowId,
        /// The wait's name.
        step: String,
        /// What is wrong.
        detail: &'static str,
    },
}

/// An error while running a [`StepFlow`](crate::StepFlow).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A step (or a wait's condition) returned an error outside any retry that could absorb it.
    #[error("step {step:?} of flow {flow} failed")]
    StepFailed {
        /// The flow.
        flow: FlowId,
        /// The failing step.
        step: String,
        /// The step's error.
        #[source]
        source: BoxError,
    },
    /// A wait's condition stayed false for its maximum number of polls.
    #[error("step {step:?} of flow {flow} gave up waiting after {polls} polls")]
    PollsExhausted {
        /// The flow.
        flow: FlowId,
        /// The wait.
        step: String,
        /// How many polls were made.
        polls: u32,
    },
    /// A retry block failed on every allowed attempt.
    #[error("retry {step:?} of flow {flow} failed {attempts} times")]
    RetriesExhausted {
        /// The flow.
        flow: FlowId,
        /// The retry block.
        step: String,
        /// Attempts made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        source: Box<FlowError>,
    },
    /// The saved state belongs to a different flow.
    #[error("saved state belongs to flow {found:?}, not to {expected}")]
    WrongFlow {
        /// This flow.
        expected: FlowId,
        /// The flow named in the saved state.
        found: String,
    },
    /// The saved state was written by another version of this flow.
    #[error("saved state of flow {name:?} is version {found}, this flow is version {expected}")]
    VersionMismatch {
        /// The flow name.
        name: String,
        /// This flow's version.
        expected: u32,
        /// The version in the saved state.
        found: u32,
    },
    /// The saved state names this flow but points at steps it does not have.
    #[error("saved state does not fit flow {flow}: {detail}")]
    CorruptState {
        /// The flow.
        flow: FlowId,
        /// What does not fit.
        detail: String,
    },
    /// The saved state could not be decoded.
    #[error("saved flow state could not be decoded")]
    Decode(#[source] serde_json::Error),
    /// The state could not be encoded.
    #[error("flow state could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// Loading or saving the state failed; [`StateError::Fenced`] means this owner is stale.
    #[error(transparent)]
    State(#[from] StateError),
}

impl FlowError {
    /// Whether this error means the caller no longer owns the flow's state (a stale owner).
    pub fn is_fenced(&self) -> bool {
        matches!(self, FlowError::State(StateError::Fenced { .. }))
    }
}

/// Why a [`PlanExecutor`](crate::PlanExecutor) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorConfigError {
    /// The sleep between rounds was zero (the executor would spin on a plan that never ends).
    #[error("round_interval must be greater than zero")]
    ZeroRoundInterval,
    /// The task timeout was zero.
    #[error("task_timeout must be greater than zero")]
    ZeroTaskTimeout,
    /// The execution timeout was zero.
    #[error("timeout must be greater than zero")]
    ZeroTimeout,
}

/// Where a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskPhase {
    /// [`Task::pre`](crate::Task::pre).
    Pre,
    /// [`Task::perform`](crate::Task::perform).
    Perform,
    /// [`Task::post`](crate::Task::post).
    Post,
}

impl std::fmt::Display for TaskPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskPhase::Pre => "pre",
            TaskPhase::Perform => "perform",
            TaskPhase::Post => "post",
        })
    }
}

/// One failure inside a plan round: the plan, or a task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// [`Plan::create`](crate::Plan::create) failed.
    #[error("plan could not be created")]
    Plan(#[source] BoxError),
    /// A task returned an error.
    #[error("task {task:?} failed in {phase}")]
    Failed {
        /// The task's name.
        task: String,
        /// Where it failed.
        phase: TaskPhase,
        /// The task's error.
        #[source]
        source: BoxError,
    },
    /// A task ran past the task timeout and was cancelled.
    #[error("task {task:?} timed out after {after:?} and was cancelled")]
    TimedOut {
        /// The task's name.
        task: String,
        /// The task timeout.
        after: Duration,
    },
}

/// Why a [`PlanExecutor`](crate::PlanExecutor) run ended without reaching the final state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// More consecutive errors than tolerated.
    #[error("{errors} consecutive errors, more than the {tolerated} tolerated")]
    TooManyErrors {
        /// Consecutive errors, the last one included.
        errors: u32,
        /// How many were tolerated.
        tolerated: u32,
        /// The last error.
        #[source]
        source: TaskError,
    },
    /// The execution timeout passed; the running task was cancelled.
    #[error("plan execution timed out after {after:?}")]
    TimedOut {
        /// The execution timeout.
        after: Duration,
    },
    /// The cancellation token (usually the loop's shutdown) fired; the running task was
    /// cancelled.
    #[error("plan execution was cancelled")]
    Cancelled,
}

impl ExecError {
    /// Whether the run was cancelled from outside (e.g. the loop's shutdown signal).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ExecError::Cancelled)
    }
}
