use std::time::Duration;

use keyloop_core::{CancellationToken, Epoch};

use crate::node::Node;
use crate::state::{Frame, Header};
use crate::{
    FlowContext, FlowData, FlowError, FlowId, FlowState, FlowStatus, StepContext, StepFlowBuilder,
};

/// A versioned, named flow of steps that drives one long-running external process, one step
/// at a time, saving a small [`FlowState`] after every step.
///
/// One flow value drives any number of processes: each has its own state, and
/// [`apply`](StepFlow::apply) loads nothing and keeps nothing, it takes a state and returns
/// the next one. A state saved by another flow, or by another version of this one, is
/// rejected with [`FlowError::WrongFlow`] or [`FlowError::VersionMismatch`].
///
/// Steps are at least once: a step whose completion was saved never runs again, no step is
/// skipped, and a step interrupted before its completion was saved runs again on resume.
///
/// ```
/// use keyloop_flow::{FlowStatus, MemoryStateStore, Poll, StepFlow};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), keyloop_flow::FlowError> {
/// let flow = StepFlow::builder("count", 1)
///     .step("one", |n: u32, _cx| async move { Ok(n + 1) })
///     .wait_for_with("ready", Poll::every(Duration::from_millis(1)), |n, cx| async move {
///         Ok(n == 1 && cx.poll() >= 2)
///     })
///     .step("two", |n, _cx| async move { Ok(n + 1) })
///     .build()
///     .unwrap();
///
/// let store = MemoryStateStore::new();
/// let owner = store.acquire();
/// let mut state = flow.load(&owner, 0).await?;
/// loop {
///     match state.status() {
///         FlowStatus::Completed => break,
///         FlowStatus::Waiting(delay) => tokio::time::sleep(delay).await,
///         FlowStatus::Ready => {}
///     }
///     state = flow.apply(&owner, state).await?;
/// }
/// assert_eq!(*state.data(), 2);
/// # Ok(()) }
/// ```
pub struct StepFlow<T> {
    id: FlowId,
    id_string: String,
    steps: Vec<Node<T>>,
}

impl<T> std::fmt::Debug for StepFlow<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFlow")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T: FlowData> StepFlow<T> {
    /// Starts building the flow `name/v{version}`.
    pub fn builder(name: impl Into<String>, version: u32) -> StepFlowBuilder<T> {
        StepFlowBuilder::new(name.into(), version)
    }

    pub(crate) fn from_parts(id: FlowId, steps: Vec<Node<T>>) -> Self {
        StepFlow {
            id_string: id.to_string(),
            id,
            steps,
        }
    }

    /// The flow's id.
    pub fn id(&self) -> &FlowId {
        &self.id
    }

    /// A fresh state at the first step.
    pub fn start(&self, data: T) -> FlowState<T> {
        FlowState {
            flow: self.id_string.clone(),
            at: vec![Frame(0, 0)],
            wait_ms: None,
            done: false,
            data,
        }
    }

    /// Loads the saved state from `ctx`, or starts afresh with `data` when nothing is saved.
    pub async fn load<C: FlowContext + ?Sized>(
        &self,
        ctx: &C,
        data: T,
    ) -> Result<FlowState<T>, FlowError> {
        match ctx.load_state().await? {
            Some(bytes) => self.decode(&bytes),
            None => Ok(self.start(data)),
        }
    }

    /// Decodes a saved state, checking that it belongs to this flow and version and fits
    /// its steps.
    pub fn decode(&self, bytes: &[u8]) -> Result<FlowState<T>, FlowError> {
        let header: Header = serde_json::from_slice(bytes).map_err(FlowError::Decode)?;
        if header.flow != self.id_string {
            return Err(match FlowId::parse(&header.flow) {
                Some(found) if found.name() == self.id.name() => FlowError::VersionMismatch {
                    name: found.name().to_owned(),
                    expected: self.id.version(),
                    found: found.version(),
                },
                _ => FlowError::WrongFlow {
                    expected: self.id.clone(),
                    found: header.flow,
                },
            });
        }
        let state: FlowState<T> = serde_json::from_slice(bytes).map_err(FlowError::Decode)?;
        self.validate(&state)?;
        Ok(state)
    }

    /// Encodes a state the way [`apply`](Self::apply) saves it.
    pub fn encode(&self, state: &FlowState<T>) -> Result<Vec<u8>, FlowError> {
        serde_json::to_vec(state).map_err(FlowError::Encode)
    }

    /// Whether every step has run.
    pub fn is_completed(&self, state: &FlowState<T>) -> bool {
        state.is_completed()
    }

    /// The name of the step the state is at (innermost), if the flow is not completed.
    pub fn current_step(&self, state: &FlowState<T>) -> Option<&str> {
        if state.done || self.validate(state).is_err() {
            return None;
        }
        let mut list: &[Node<T>] = &self.steps;
        let mut name = None;
        for frame in &state.at {
            let node = list.get(frame.0)?;
            name = Some(node.name());
            list = node.body().unwrap_or(&[]);
        }
        name
    }

    /// Runs steps from `state` until the flow completes, must wait (a wait's condition is
    /// false, or a retry backs off), or `ctx`'s cancellation token fires. The state is
    /// saved through `ctx` after every step, every unsatisfied poll, every retry, and at
    /// completion. The returned state's [`status`](FlowState::status) says what to do next.
    ///
    /// On cancellation the step in flight is dropped (it runs again on resume) and the
    /// state of the last completed step is returned with status `Ready`.
    pub async fn apply<C: FlowContext + ?Sized>(
        &self,
        ctx: &C,
        mut state: FlowState<T>,
    ) -> Result<FlowState<T>, FlowError> {
        self.validate(&state)?;
        state.wait_ms = None;
        if state.done {
            return Ok(state);
        }
        let token = ctx.cancellation_token();
        loop {
            if token.is_cancelled() {
                return Ok(state);
            }
            let depth = state.at.len();
            let Frame(index, count) = state.at[depth - 1];
            let Some(node) = self.block(&state.at).get(index) else {
                // The block at this depth has run to its end.
                if depth == 1 {
                    state.done = true;
                    self.save(ctx, &state).await?;
                    return Ok(state);
                }
                state.at.pop();
                let is_loop = matches!(self.node_at(&state.at), Node::LoopUntil { .. });
                let parent = state.at.last_mut().expect("depth > 1");
                if is_loop {
                    parent.1 += 1;
                } else {
                    *parent = Frame(parent.0 + 1, 0);
                }
                continue;
            };
            match node {
                Node::Step { name, run } => {
                    let cx = self.step_context(&state, name, &token, ctx.epoch());
                    let future = run(state.data.clone(), cx);
                    let result = tokio::select! {
                        biased;
                        result = future => result,
                        () = token.cancelled() => return Ok(state),
                    };
                    match result {
                        Ok(data) => {
                            state.data = data;
                            advance(&mut state);
                            self.save(ctx, &state).await?;
                        }
                        Err(source) => {
                            let error = FlowError::StepFailed {
                                flow: self.id.clone(),
                                step: name.clone(),
                                source,
                            };
                            return self.fail(ctx, state, error).await;
                        }
                    }
                }
                Node::WaitFor { name, check, poll } => {
                    let cx = self.step_context(&state, name, &token, ctx.epoch());
                    let future = check(state.data.clone(), cx);
                    let result = tokio::select! {
                        biased;
                        result = future => result,
                        () = token.cancelled() => return Ok(state),
                    };
                    match result {
                        Ok(true) => {
                            advance(&mut state);
                            self.save(ctx, &state).await?;
                        }
                        Ok(false) => {
                            let polls = count + 1;
                            if poll.max_polls.is_some_and(|max| polls >= max) {
                                let error = FlowError::PollsExhausted {
                                    flow: self.id.clone(),
                                    step: name.clone(),
                                    polls,
                                };
                                return self.fail(ctx, state, error).await;
                            }
                            state.at[depth - 1].1 = polls;
                            state.wait_ms = Some(millis(poll.delay(polls - 1)));
                            self.save(ctx, &state).await?;
                            return Ok(state);
                        }
                        Err(source) => {
                            let error = FlowError::StepFailed {
                                flow: self.id.clone(),
                                step: name.clone(),
                                source,
                            };
                            return self.fail(ctx, state, error).await;
                        }
                    }
                }
                Node::Case { when, .. } => {
                    if when(&state.data) {
                        state.at.push(Frame(0, 0));
                    } else {
                        advance(&mut state);
                    }
                }
                Node::Retry { .. } => state.at.push(Frame(0, 0)),
                Node::LoopUntil { until, .. } => {
                    if until(&state.data) {
                        advance(&mut state);
                    } else {
                        state.at.push(Frame(0, 0));
                    }
                }
            }
        }
    }

    /// Drives the flow to its end: loads (or starts with `data`), applies, sleeps through
    /// waits, until completed or cancelled. Returns the last state: completed, or `Ready` /
    /// `Waiting` when `ctx`'s token was cancelled.
    pub async fn run<C: FlowContext + ?Sized>(
        &self,
        ctx: &C,
        data: T,
    ) -> Result<FlowState<T>, FlowError> {
        let token = ctx.cancellation_token();
        let mut state = self.load(ctx, data).await?;
        loop {
            match state.status() {
                FlowStatus::Completed => return Ok(state),
                FlowStatus::Waiting(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = token.cancelled() => return Ok(state),
                    }
                }
                FlowStatus::Ready if token.is_cancelled() => return Ok(state),
                FlowStatus::Ready => {}
            }
            state = self.apply(ctx, state).await?;
        }
    }

    /// Hands a failure to the innermost retry that has attempts left (saving the retry's
    /// count and backoff), or returns it.
    async fn fail<C: FlowContext + ?Sized>(
        &self,
        ctx: &C,
        mut state: FlowState<T>,
        mut error: FlowError,
    ) -> Result<FlowState<T>, FlowError> {
        for level in (0..state.at.len().saturating_sub(1)).rev() {
            let Node::Retry { name, policy, .. } = self.node_at(&state.at[..=level]) else {
                continue;
            };
            let failures = state.at[level].1 + 1;
            if failures < policy.max_attempts {
                tracing::debug!(flow = %self.id, retry = %name, failures, error = %error, "retrying block");
                state.at.truncate(level + 1);
                state.at[level].1 = failures;
                state.wait_ms = Some(millis(policy.backoff.delay(failures - 1)));
                self.save(ctx, &state).await?;
                return Ok(state);
            }
            error = FlowError::RetriesExhausted {
                flow: self.id.clone(),
                step: name.clone(),
                attempts: failures,
                source: Box::new(error),
            };
        }
        Err(error)
    }

    async fn save<C: FlowContext + ?Sized>(
        &self,
        ctx: &C,
        state: &FlowState<T>,
    ) -> Result<(), FlowError> {
        let bytes = self.encode(state)?;
        ctx.save_state(bytes.into()).await?;
        Ok(())
    }

    fn step_context(
        &self,
        state: &FlowState<T>,
        step: &str,
        token: &CancellationToken,
        epoch: Option<Epoch>,
    ) -> StepContext {
        let depth = state.at.len();
        let mut attempt = 1;
        let mut iteration = 0;
        let mut list: &[Node<T>] = &self.steps;
        for frame in &state.at[..depth - 1] {
            let node = &list[frame.0];
            match node {
                Node::Retry { .. } => attempt = frame.1 + 1,
                Node::LoopUntil { .. } => iteration = frame.1,
                _ => {}
            }
            list = node.body().expect("validated path");
        }
        StepContext {
            flow: self.id.clone(),
            step: step.to_owned(),
            attempt,
            iteration,
            poll: state.at[depth - 1].1,
            token: token.clone(),
            epoch,
        }
    }

    /// The list of steps the last frame of `path` indexes into.
    fn block(&self, path: &[Frame]) -> &[Node<T>] {
        let mut list: &[Node<T>] = &self.steps;
        for frame in &path[..path.len() - 1] {
            list = list[frame.0].body().expect("validated path");
        }
        list
    }

    /// The node the last frame of `path` points at (never past the end of its block).
    fn node_at(&self, path: &[Frame]) -> &Node<T> {
        &self.block(path)[path[path.len() - 1].0]
    }

    /// Checks that the state belongs to this flow and that its path fits the steps: every
    /// frame but the last points at a block, the last at a step or just past its block.
    fn validate(&self, state: &FlowState<T>) -> Result<(), FlowError> {
        if state.flow != self.id_string {
            return Err(FlowError::WrongFlow {
                expected: self.id.clone(),
                found: state.flow.clone(),
            });
        }
        let corrupt = |detail: String| FlowError::CorruptState {
            flow: self.id.clone(),
            detail,
        };
        let Some((last, parents)) = state.at.split_last() else {
            return Err(corrupt("empty position".into()));
        };
        let mut list: &[Node<T>] = &self.steps;
        for (depth, frame) in parents.iter().enumerate() {
            let body = list.get(frame.0).and_then(Node::body);
            list = body.ok_or_else(|| {
                corrupt(format!("position {depth}: no block at index {}", frame.0))
            })?;
        }
        if last.0 > list.len() {
            return Err(corrupt(format!(
                "position {}: index {} past a block of {} steps",
                parents.len(),
                last.0,
                list.len()
            )));
        }
        Ok(())
    }
}

/// Moves past the step the innermost frame points at.
fn advance<T>(state: &mut FlowState<T>) {
    let frame = state.at.last_mut().expect("non-empty position");
    *frame = Frame(frame.0 + 1, 0);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
