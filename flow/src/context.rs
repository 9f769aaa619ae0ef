use keyloop_core::{Bytes, CancellationToken, Epoch, LoopContext, StateError, async_trait};

/// Where a flow's state goes, and when it must stop: the one thing a
/// [`StepFlow`](crate::StepFlow) needs from its surroundings.
///
/// [`LoopContext`] implements it (the key's fenced durable state and the loop's shutdown
/// signal); [`MemoryStateStore`](crate::MemoryStateStore) implements it for tests and for
/// flows run outside an engine.
#[async_trait]
pub trait FlowContext: Send + Sync {
    /// Loads the saved state, if any.
    async fn load_state(&self) -> Result<Option<Bytes>, StateError>;

    /// Saves the state, replacing the previous one. A stale owner gets
    /// [`StateError::Fenced`].
    async fn save_state(&self, state: Bytes) -> Result<(), StateError>;

    /// Cancelled when the flow must stop (the step in flight is dropped and re-run by the
    /// next owner).
    fn cancellation_token(&self) -> CancellationToken;

    /// The owner's fencing token, if it has one; steps see it as
    /// [`StepContext::epoch`](crate::StepContext::epoch) to fence their own external writes.
    fn epoch(&self) -> Option<Epoch> {
        None
    }
}

#[async_trait]
impl FlowContext for LoopContext {
    async fn load_state(&self) -> Result<Option<Bytes>, StateError> {
        self.state().load().await
    }

    async fn save_state(&self, state: Bytes) -> Result<(), StateError> {
        self.state().save(state).await
    }

    fn cancellation_token(&self) -> CancellationToken {
        LoopContext::cancellation_token(self)
    }

    fn epoch(&self) -> Option<Epoch> {
        Some(LoopContext::epoch(self))
    }
}
