use keyloop_core::{CancellationToken, Epoch};

use crate::FlowId;

/// What a step (or a wait's condition) knows about where it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub(crate) flow: FlowId,
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) iteration: u32,
    pub(crate) poll: u32,
    pub(crate) token: CancellationToken,
    pub(crate) epoch: Option<Epoch>,
}

impl StepContext {
    /// The flow.
    pub fn flow(&self) -> &FlowId {
        &self.flow
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The attempt of the innermost enclosing `retry` (1 for the first try, and outside
    /// any retry).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Finished iterations of the innermost enclosing `loop_until` (0 outside any loop).
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// For a wait's condition, how many earlier polls returned `false`.
    pub fn poll(&self) -> u32 {
        self.poll
    }

    /// The owner's fencing token (the loop's epoch inside an engine), to pass to external
    /// systems so that they reject writes from a stale owner.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// Cancelled when the flow must stop; the step is dropped soon after, so hand this to
    /// work the step spawns or to client calls that should be aborted with it.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }
}
