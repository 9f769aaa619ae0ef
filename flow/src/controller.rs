use std::sync::Arc;

use keyloop_core::{BoxError, Controller, Decision, Key, LoopContext, Wake, async_trait};

use crate::{FlowData, FlowError, FlowStatus, StepFlow};

type InitFn<T> = dyn Fn(&Key) -> Result<T, BoxError> + Send + Sync;

/// A [`Controller`] that runs a [`StepFlow`] for each key, saving the flow's state in the
/// key's fenced state after every step.
///
/// A flow interrupted by shutdown or a crash resumes on the next owner at the step after the
/// last one saved. On shutdown the step in flight is dropped and the loop hands the key off
/// (`Continue`); a stale owner's save is fenced, which stops it. While a flow waits (a poll
/// interval or a retry backoff), a trigger on its key ends the wait early. A completed flow
/// returns `Complete`; its completed state stays saved, so a later trigger of the same key
/// completes at once (use a new key or a new flow version to run it again).
///
/// ```
/// use keyloop_flow::{FlowController, StepFlow};
///
/// let flow = StepFlow::builder("greet", 1)
///     .step("hello", |name: String, _cx| async move {
///         println!("hello {name}");
///         Ok(name)
///     })
///     .build()
///     .unwrap();
/// let controller = FlowController::new(flow, |key| Ok(key.to_string()));
/// // Engine::builder(coordinator, controller).start().await? ...
/// # let _ = controller;
/// ```
pub struct FlowController<T> {
    flow: Arc<StepFlow<T>>,
    init: Arc<InitFn<T>>,
}

impl<T> Clone for FlowController<T> {
    fn clone(&self) -> Self {
        FlowController {
            flow: Arc::clone(&self.flow),
            init: Arc::clone(&self.init),
        }
    }
}

impl<T: FlowData> FlowController<T> {
    /// Runs `flow` for every key, starting a key's flow with the data `init` makes from the
    /// key (called on every loop start; its result is used only when nothing is saved).
    pub fn new(
        flow: impl Into<Arc<StepFlow<T>>>,
        init: impl Fn(&Key) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> Self {
        FlowController {
            flow: flow.into(),
            init: Arc::new(init),
        }
    }

    /// The flow.
    pub fn flow(&self) -> &StepFlow<T> {
        &self.flow
    }

    /// `Ok(true)` when the flow completed, `Ok(false)` when asked to stop.
    async fn drive(&self, key: &Key, ctx: &LoopContext) -> Result<bool, BoxError> {
        let data = (self.init)(key)?;
        let mut state = self.flow.load(ctx, data).await?;
        loop {
            match state.status() {
                FlowStatus::Completed => return Ok(true),
                FlowStatus::Waiting(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        wake = ctx.next() => {
                            if let Wake::Shutdown(_) = wake {
                                return Ok(false);
                            }
                        }
                    }
                }
                FlowStatus::Ready if ctx.is_shutting_down() => return Ok(false),
                FlowStatus::Ready => {}
            }
            state = self.flow.apply(ctx, state).await?;
        }
    }
}

#[async_trait]
impl<T: FlowData> Controller for FlowController<T> {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        match self.drive(&key, &ctx).await {
            Ok(true) => Ok(Decision::Complete),
            Ok(false) => Ok(Decision::Continue),
            Err(error) if ctx.is_shutting_down() => {
                // Persisted progress is intact; the next owner resumes from it.
                let fenced = error
                    .downcast_ref::<FlowError>()
                    .is_some_and(FlowError::is_fenced);
                tracing::debug!(%key, fenced, error = %error, "flow stopped while shutting down");
                Ok(Decision::Continue)
            }
            Err(error) => Err(error),
        }
    }
}
