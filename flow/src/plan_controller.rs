use std::sync::Arc;

use keyloop_core::{BoxError, Controller, Decision, Key, LoopContext, async_trait};

use crate::{ExecError, Plan, PlanExecutor};

type MakePlan<P> = dyn Fn(&Key) -> Result<P, BoxError> + Send + Sync;

/// A [`Controller`] that runs a [`Plan`] for each key with a [`PlanExecutor`], stopped by the
/// loop's shutdown signal.
///
/// The plan reached its final state: `Complete`. Shutdown: `Continue` (the next owner asks
/// the plan again; plans are built from the actual state, so nothing else is saved). Too
/// many errors or the execution timeout: an error, which the engine's supervision restarts
/// with backoff.
pub struct PlanController<P> {
    executor: PlanExecutor,
    make: Arc<MakePlan<P>>,
}

impl<P: Plan + 'static> PlanController<P> {
    /// Runs the plan `make` builds from each key.
    pub fn new(
        executor: PlanExecutor,
        make: impl Fn(&Key) -> Result<P, BoxError> + Send + Sync + 'static,
    ) -> Self {
        PlanController {
            executor,
            make: Arc::new(make),
        }
    }
}

#[async_trait]
impl<P: Plan + 'static> Controller for PlanController<P> {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let plan = (self.make)(&key)?;
        match self.executor.run(&plan, &ctx.cancellation_token()).await {
            Ok(_) => Ok(Decision::Complete),
            Err(ExecError::Cancelled) => Ok(Decision::Continue),
            Err(error) if ctx.is_shutting_down() => {
                tracing::debug!(%key, error = %error, "plan stopped while shutting down");
                Ok(Decision::Continue)
            }
            Err(error) => Err(error.into()),
        }
    }
}
