use keyloop_core::{BoxError, CancellationToken, async_trait};

/// A boxed [`Task`], as plans and tasks return them.
pub type BoxTask = Box<dyn Task>;

/// What a task or plan knows about its run.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub(crate) token: CancellationToken,
    pub(crate) round: u64,
}

impl TaskContext {
    /// Cancelled when the task must stop (its timeout, the execution timeout, or the loop's
    /// shutdown). The task's future is dropped right after; hand the token to anything the
    /// task spawns so that it stops too.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.token
    }

    /// The round this task belongs to (1-based).
    pub fn round(&self) -> u64 {
        self.round
    }
}

/// One unit of work toward a plan's final state.
///
/// The executor runs `pre`, then `perform`, then `post`; the sub-tasks `perform` returns run
/// after their parent succeeded (depth first, in order). A failure in any phase ends the
/// round; the plan is asked again in the next round.
#[async_trait]
pub trait Task: Send + Sync {
    /// A name for reports and errors.
    fn name(&self) -> String;

    /// Runs before `perform`: check preconditions.
    async fn pre(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        Ok(())
    }

    /// Does the work; returns sub-tasks to run after this task succeeded.
    async fn perform(&self, cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError>;

    /// Runs after `perform`: verify the effect.
    async fn post(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Compares the desired state with the actual one and returns the tasks still needed.
///
/// The executor asks again after every round; an empty list means the final state is
/// reached and execution stops.
#[async_trait]
pub trait Plan: Send + Sync {
    /// The tasks still needed; empty when done.
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError>;
}
