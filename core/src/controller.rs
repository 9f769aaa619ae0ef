use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{BoxError, Key, LoopContext};

/// What a loop decided when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The key is reconciled: retire it from the registry unless a trigger arrived that the
    /// loop has not observed, in which case the loop runs again.
    Complete,
    /// The key still needs a loop, but not here and not now (usually after the shutdown
    /// signal): release it at once so another node picks it up.
    Continue,
    /// Run the key again after this delay (controller-runtime's `RequeueAfter`), on any
    /// node. The key stays registered with its wake-up time stored by the backend and is
    /// released meanwhile: it holds no task, no loop slot and no lease. Never earlier than
    /// the delay by the backend's clock (plus the engine's `requeue_jitter`, which only
    /// adds); a trigger before then runs it at once and drops the wake-up. If a trigger the
    /// loop did not observe is already pending, the loop runs again at once instead.
    ///
    /// Durable on backends whose [`Limits::durable_wake_ups`](crate::Limits) is `true`
    /// (memory, sled, PostgreSQL and Consul). On a backend without them the engine keeps the
    /// key's loop and waits in its task instead: a trigger or the delay ends the wait, and
    /// a handoff or failover during it runs the key at once (early, never lost).
    ///
    /// How late: the engine schedules a claim round for the earliest wake-up the backend
    /// reports ([`Coordinator::next_wake`](crate::Coordinator::next_wake)), so a wake-up
    /// waits for that round and the claim itself — about a millisecond (tokio's timer tick)
    /// on the memory backend, and the duration of claim rounds on PostgreSQL (p50 tens of
    /// milliseconds at 10,000 wake-ups per second on a lightly loaded 2-core machine, far
    /// more when the machine is busy; see `BENCHMARKS.md`, P9). To resync every key periodically, wrap the controller in
    /// [`SyncEvery`](crate::SyncEvery).
    RequeueAfter(std::time::Duration),
    /// Like [`RequeueAfter`](Decision::RequeueAfter), at a wall-clock instant as the
    /// backend's clock tells it (an instant in the past means at once).
    RequeueAt(std::time::SystemTime),
}

/// The user's reconciler: one invocation of [`run`](Controller::run) is one loop for one key.
///
/// keyloop guarantees at most one live `run` per key across the cluster (fenced by
/// [`LoopContext::epoch`]), wakes it through [`LoopContext::triggered`], and tells it to stop
/// through [`LoopContext::shutdown`]. An error or a panic restarts the loop with backoff.
///
/// ```
/// use keyloop_core::{async_trait, BoxError, Controller, Decision, Key, LoopContext, Wake};
///
/// struct Provisioner;
///
/// #[async_trait]
/// impl Controller for Provisioner {
///     async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
///         loop {
///             // compare desired with actual state for `key` and act ...
///             match ctx.next().await {
///                 Wake::Triggered => continue,
///                 Wake::Shutdown(_) => return Ok(Decision::Continue),
///             }
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Controller: Send + Sync + 'static {
    /// Reconciles `key` until done (`Complete`) or asked to stop (`Continue`).
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError>;
}

#[async_trait]
impl<C: Controller + ?Sized> Controller for Arc<C> {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        (**self).run(key, ctx).await
    }
}

/// A [`Controller`] made from an async closure; see [`controller_fn`].
pub struct ControllerFn<F>(F);

/// Builds a [`Controller`] from a closure returning a future.
///
/// ```
/// use keyloop_core::{controller_fn, Decision};
///
/// let controller = controller_fn(|key, _ctx| async move {
///     println!("reconciling {key}");
///     Ok(Decision::Complete)
/// });
/// # let _ = controller;
/// ```
pub fn controller_fn<F, Fut>(f: F) -> ControllerFn<F>
where
    F: Fn(Key, LoopContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision, BoxError>> + Send + 'static,
{
    ControllerFn(f)
}

#[async_trait]
impl<F, Fut> Controller for ControllerFn<F>
where
    F: Fn(Key, LoopContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision, BoxError>> + Send + 'static,
{
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        (self.0)(key, ctx).await
    }
}
