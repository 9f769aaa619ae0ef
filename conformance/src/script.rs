//! A controller whose behaviour per key is scripted by the case and whose every move is
//! recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use keyloop_core::{
    BoxError, CancellationToken, Controller, Decision, Epoch, Key, LoopContext, NodeId,
    ShutdownReason, Wake, async_trait,
};
use tokio::sync::watch;

use crate::{Happening, Recorder};

/// A one-shot barrier a case opens to let scripted loops proceed.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    /// Opens the gate for every current and future waiter.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What one run of a scripted loop does.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Step {
    /// Return `Complete` at once.
    Complete,
    /// Return `Continue` at once.
    Continue,
    /// Observe triggers until the shutdown signal, then return `Continue`.
    UntilShutdown,
    /// Observe triggers until the shutdown signal, then return `Complete`.
    CompleteOnShutdown,
    /// Observe triggers until the shutdown signal, then fail.
    FailOnShutdown,
    /// Observe this many trigger bursts, then return `Complete` (`Continue` on shutdown).
    WaitTriggers(usize),
    /// Observe one trigger burst, then fail (`Continue` on shutdown).
    FailAfterTrigger,
    /// Record the shutdown signal but never return.
    IgnoreShutdown,
    /// Return an error at once.
    Fail,
    /// Panic at once.
    Panic,
    /// Wait for the gate without observing triggers (returning `Continue` if the shutdown
    /// signal comes first), then do the inner step.
    AfterGate(Gate, Box<Step>),
    /// Yield to the scheduler this many times (letting other tasks, such as triggers, run
    /// while the loop works), then do the inner step.
    Yield(u32, Box<Step>),
    /// Observe triggers until the shutdown signal, then wait for the gate (ignoring
    /// everything else) and return `Continue`.
    HoldShutdown(Gate),
    /// Load an 8-byte counter, save it plus one, then behave like `UntilShutdown`.
    CountState,
    /// Try to save these bytes (recording `StateSaved` or `SaveFailed`), load the state
    /// back (recorded), then behave like `UntilShutdown`.
    TrySave(Vec<u8>),
    /// Return `RequeueAfter` this delay at once.
    RequeueAfter(std::time::Duration),
    /// Observe triggers until the shutdown signal, then block the worker thread (as code
    /// stuck in a blocking call does, which no abort can interrupt) until the latch opens,
    /// then return `Continue`. Only on a multi-thread runtime.
    BlockOnShutdown(Latch),
}

/// A latch for code that blocks its thread: opened from any thread, waited on without an
/// async runtime.
#[derive(Clone, Debug, Default)]
pub struct Latch(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Latch {
    /// A closed latch.
    pub fn new() -> Latch {
        Latch::default()
    }

    /// Opens the latch, waking every blocked waiter.
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Blocks the calling thread until the latch is open.
    pub fn wait_blocking(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// The error scripted failures return.
pub const SCRIPTED_FAILURE: &str = "scripted failure";

/// Which step each run of each key performs; shared by every node of a case.
#[derive(Clone, Debug)]
pub struct Script {
    inner: Arc<Mutex<ScriptInner>>,
}

#[derive(Debug)]
struct ScriptInner {
    default: Vec<Step>,
    keys: HashMap<Key, Vec<Step>>,
}

impl Script {
    /// A script where every key runs `UntilShutdown`.
    pub fn new() -> Script {
        Script {
            inner: Arc::new(Mutex::new(ScriptInner {
                default: vec![Step::UntilShutdown],
                keys: HashMap::new(),
            })),
        }
    }

    /// Sets the steps of `key`: run `n` (counted across nodes) does `steps[n]`, and runs past
    /// the end repeat the last step.
    pub fn set(&self, key: &Key, steps: Vec<Step>) {
        assert!(!steps.is_empty(), "a script needs at least one step");
        self.inner.lock().unwrap().keys.insert(key.clone(), steps);
    }

    /// Sets the steps of every key without its own.
    pub fn set_default(&self, steps: Vec<Step>) {
        assert!(!steps.is_empty(), "a script needs at least one step");
        self.inner.lock().unwrap().default = steps;
    }

    fn step(&self, key: &Key, run: usize) -> Step {
        let inner = self.inner.lock().unwrap();
        let steps = inner.keys.get(key).unwrap_or(&inner.default);
        steps[run.min(steps.len() - 1)].clone()
    }
}

impl Default for Script {
    fn default() -> Self {
        Script::new()
    }
}

/// The controller every node of a case runs: performs the script, records to the recorder.
pub struct ScriptedController {
    node: String,
    recorder: Recorder,
    script: Script,
}

impl ScriptedController {
    /// A controller for the node called `node`.
    pub fn new(node: impl Into<String>, recorder: Recorder, script: Script) -> Self {
        ScriptedController {
            node: node.into(),
            recorder,
            script,
        }
    }
}

/// Records one run's happenings.
struct Run<'a> {
    recorder: &'a Recorder,
    node: &'a str,
    node_id: NodeId,
    key: Key,
    epoch: Epoch,
    run: usize,
    token: CancellationToken,
    finished: bool,
}

impl Run<'_> {
    fn note(&self, what: Happening) {
        self.recorder.note(
            self.node,
            self.node_id,
            &self.key,
            self.epoch,
            self.run,
            what,
        );
    }

    fn shutdown(&self, reason: ShutdownReason) {
        self.note(Happening::Shutdown {
            reason,
            token_cancelled: self.token.is_cancelled(),
        });
    }

    /// Observes triggers until shutdown (`Some(reason)`) or `limit` bursts (`None`).
    async fn observe(&self, ctx: &LoopContext, limit: Option<usize>) -> Option<ShutdownReason> {
        let mut seen = 0;
        loop {
            if limit.is_some_and(|limit| seen >= limit) {
                return None;
            }
            match ctx.next().await {
                Wake::Triggered => {
                    seen += 1;
                    self.note(Happening::TriggerObserved);
                }
                Wake::Shutdown(reason) => {
                    self.shutdown(reason);
                    return Some(reason);
                }
            }
        }
    }

    fn perform<'b>(
        &'b self,
        step: &'b Step,
        ctx: &'b LoopContext,
    ) -> BoxFuture<'b, Result<Decision, BoxError>> {
        async move {
            match step {
                Step::Complete => Ok(Decision::Complete),
                Step::Continue => Ok(Decision::Continue),
                Step::UntilShutdown => {
                    self.observe(ctx, None).await;
                    Ok(Decision::Continue)
                }
                Step::CompleteOnShutdown => {
                    self.observe(ctx, None).await;
                    Ok(Decision::Complete)
                }
                Step::FailOnShutdown => {
                    self.observe(ctx, None).await;
                    Err(SCRIPTED_FAILURE.into())
                }
                Step::WaitTriggers(n) => match self.observe(ctx, Some(*n)).await {
                    Some(_) => Ok(Decision::Continue),
                    None => Ok(Decision::Complete),
                },
                Step::IgnoreShutdown => {
                    let reason = ctx.shutdown().await;
                    self.shutdown(reason);
                    std::future::pending().await
                }
                Step::Fail => Err(SCRIPTED_FAILURE.into()),
                Step::FailAfterTrigger => match self.observe(ctx, Some(1)).await {
                    Some(_) => Ok(Decision::Continue),
                    None => Err(SCRIPTED_FAILURE.into()),
                },
                Step::Panic => {
                    self.note(Happening::Panicking);
                    panic!("scripted panic");
                }
                Step::AfterGate(gate, then) => {
                    tokio::select! {
                        _ = gate.wait() => self.perform(then, ctx).await,
                        reason = ctx.shutdown() => {
                            self.shutdown(reason);
                            Ok(Decision::Continue)
                        }
                    }
                }
                Step::Yield(times, then) => {
                    for _ in 0..*times {
                        tokio::task::yield_now().await;
                    }
                    self.perform(then, ctx).await
                }
                Step::HoldShutdown(gate) => {
                    self.observe(ctx, None).await;
                    gate.wait().await;
                    Ok(Decision::Continue)
                }
                Step::CountState => {
                    let loaded = ctx.state().load().await?;
                    self.note(Happening::StateLoaded(loaded.as_ref().map(|b| b.to_vec())));
                    let n = loaded
                        .as_deref()
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes);
                    let next = (n + 1).to_be_bytes().to_vec();
                    self.save(ctx, next).await?;
                    self.observe(ctx, None).await;
                    Ok(Decision::Continue)
                }
                Step::RequeueAfter(delay) => Ok(Decision::RequeueAfter(*delay)),
                Step::BlockOnShutdown(latch) => {
                    self.observe(ctx, None).await;
                    self.note(Happening::Blocked);
                    latch.wait_blocking();
                    Ok(Decision::Continue)
                }
                Step::TrySave(bytes) => {
                    let _ = self.save(ctx, bytes.clone()).await;
                    let loaded = ctx.state().load().await?;
                    self.note(Happening::StateLoaded(loaded.map(|b| b.to_vec())));
                    self.observe(ctx, None).await;
                    Ok(Decision::Continue)
                }
            }
        }
        .boxed()
    }

    async fn save(&self, ctx: &LoopContext, bytes: Vec<u8>) -> Result<(), BoxError> {
        match ctx.state().save(bytes.clone()).await {
            Ok(()) => {
                self.note(Happening::StateSaved(bytes));
                Ok(())
            }
            Err(e) => {
                self.note(Happening::SaveFailed(format!("{e:?}")));
                Err(e.into())
            }
        }
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.note(Happening::Dropped);
        }
    }
}

#[async_trait]
impl Controller for ScriptedController {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let node_id = ctx.node();
        let epoch = ctx.epoch();
        let token = ctx.cancellation_token();
        let run = self.recorder.start(&self.node, node_id, &key, epoch);
        let mut this = Run {
            recorder: &self.recorder,
            node: &self.node,
            node_id,
            key: key.clone(),
            epoch,
            run,
            token,
            finished: false,
        };
        let step = self.script.step(&key, run);
        let panics = matches!(step, Step::Panic);
        if panics {
            // The panic unwinds through `Run`; it was recorded as `Panicking` already.
            this.finished = true;
        }
        let result = this.perform(&step, &ctx).await;
        this.finished = true;
        match &result {
            Ok(decision) => this.note(Happening::End(*decision)),
            Err(e) => this.note(Happening::Failed(e.to_string())),
        }
        result
    }
}
