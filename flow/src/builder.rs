use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use keyloop_core::BoxError;

use crate::node::Node;
use crate::{BuildError, FlowData, FlowId, Poll, RetryPolicy, StepContext, StepFlow};

/// A list of steps, for the body of a `case`, `retry` or `loop_until`.
///
/// ```
/// use keyloop_flow::{StepFlow, Steps};
///
/// let canary: Steps<u32> = Steps::new()
///     .step("deploy canary", |n, _cx| async move { Ok(n + 1) })
///     .step("check canary", |n, _cx| async move { Ok(n + 1) });
/// let flow = StepFlow::builder("rollout", 1)
///     .case("canary", |n: &u32| *n == 0, canary)
///     .build()
///     .unwrap();
/// # let _ = flow;
/// ```
pub struct Steps<T> {
    pub(crate) nodes: Vec<Node<T>>,
}

impl<T: FlowData> Default for Steps<T> {
    fn default() -> Self {
        Steps::new()
    }
}

impl<T: FlowData> Steps<T> {
    /// No steps yet.
    pub fn new() -> Steps<T> {
        Steps { nodes: Vec::new() }
    }

    /// A step: `f` gets a copy of the data and returns the new data. Its completion is saved
    /// before the next step starts; a step interrupted before that runs again on resume, so
    /// make its effect idempotent.
    pub fn step<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        self.nodes.push(Node::Step {
            name: name.into(),
            run: Arc::new(move |data, cx| Box::pin(f(data, cx))),
        });
        self
    }

    /// A wait with the default [`Poll`]: `check` is polled until it returns `true`; between
    /// polls the flow is saved and its driver sleeps.
    pub fn wait_for<F, Fut>(self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
    {
        self.wait_for_with(name, Poll::default(), check)
    }

    /// A wait polled as `poll` says.
    pub fn wait_for_with<F, Fut>(mut self, name: impl Into<String>, poll: Poll, check: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
    {
        self.nodes.push(Node::WaitFor {
            name: name.into(),
            check: Arc::new(move |data, cx| Box::pin(check(data, cx))),
            poll,
        });
        self
    }

    /// Runs `steps` if `when` holds for the data on arrival; skips them otherwise. The
    /// decision is kept in the saved position, so a resumed flow does not re-decide.
    pub fn case<P>(mut self, name: impl Into<String>, when: P, steps: Steps<T>) -> Self
    where
        P: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.nodes.push(Node::Case {
            name: name.into(),
            when: Arc::new(when),
            body: steps.nodes,
        });
        self
    }

    /// Runs `steps`; when one of them fails, waits the policy's backoff and runs the block
    /// again from its first step, with the data the last completed step left. After the
    /// last attempt the failure goes to the enclosing retry, or out of
    /// [`apply`](StepFlow::apply). The attempt count is saved, so it survives handoffs.
    pub fn retry(mut self, name: impl Into<String>, policy: RetryPolicy, steps: Steps<T>) -> Self {
        self.nodes.push(Node::Retry {
            name: name.into(),
            policy,
            body: steps.nodes,
        });
        self
    }

    /// Runs `steps` again and again until `until` holds for the data; checked before every
    /// iteration, so the block may not run at all.
    pub fn loop_until<P>(mut self, name: impl Into<String>, until: P, steps: Steps<T>) -> Self
    where
        P: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.nodes.push(Node::LoopUntil {
            name: name.into(),
            until: Arc::new(until),
            body: steps.nodes,
        });
        self
    }
}

/// Builds a [`StepFlow`]; see [`StepFlow::builder`]. Checked at [`build`](Self::build).
pub struct StepFlowBuilder<T> {
    name: String,
    version: u32,
    steps: Steps<T>,
}

impl<T: FlowData> StepFlowBuilder<T> {
    pub(crate) fn new(name: String, version: u32) -> Self {
        StepFlowBuilder {
            name,
            version,
            steps: Steps::new(),
        }
    }

    /// Appends a step; see [`Steps::step`].
    pub fn step<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        self.steps = self.steps.step(name, f);
        self
    }

    /// Appends a wait with the default poll; see [`Steps::wait_for`].
    pub fn wait_for<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
    {
        self.steps = self.steps.wait_for(name, check);
        self
    }

    /// Appends a wait; see [`Steps::wait_for_with`].
    pub fn wait_for_with<F, Fut>(mut self, name: impl Into<String>, poll: Poll, check: F) -> Self
    where
        F: Fn(T, StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
    {
        self.steps = self.steps.wait_for_with(name, poll, check);
        self
    }

    /// Appends a conditional block; see [`Steps::case`].
    pub fn case<P>(mut self, name: impl Into<String>, when: P, steps: Steps<T>) -> Self
    where
        P: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.steps = self.steps.case(name, when, steps);
        self
    }

    /// Appends a retried block; see [`Steps::retry`].
    pub fn retry(mut self, name: impl Into<String>, policy: RetryPolicy, steps: Steps<T>) -> Self {
        self.steps = self.steps.retry(name, policy, steps);
        self
    }

    /// Appends a loop; see [`Steps::loop_until`].
    pub fn loop_until<P>(mut self, name: impl Into<String>, until: P, steps: Steps<T>) -> Self
    where
        P: Fn(&T) -> bool + Send + Sync + 'static,
    {
        self.steps = self.steps.loop_until(name, until, steps);
        self
    }

    /// Checks the flow and builds it: a valid name, at least one step, no empty block,
    /// step names unique across the whole flow, retries with at least one attempt, waits
    /// with a non-zero interval.
    pub fn build(self) -> Result<StepFlow<T>, BuildError> {
        let id = FlowId::new(&self.name, self.version)?;
        if self.steps.nodes.is_empty() {
            return Err(BuildError::EmptyFlow { flow: id });
        }
        let mut seen = HashSet::new();
        check(&id, &self.steps.nodes, &mut seen)?;
        Ok(StepFlow::from_parts(id, self.steps.nodes))
    }
}

fn check<'a, T>(
    flow: &FlowId,
    nodes: &'a [Node<T>],
    seen: &mut HashSet<&'a str>,
) -> Result<(), BuildError> {
    for node in nodes {
        let name = node.name();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(BuildError::BadStepName {
                flow: flow.clone(),
                step: name.to_owned(),
            });
        }
        if !seen.insert(name) {
            return Err(BuildError::DuplicateStep {
                flow: flow.clone(),
                step: name.to_owned(),
            });
        }
        match node {
            Node::Retry { policy, .. } if policy.max_attempts == 0 => {
                return Err(BuildError::ZeroAttempts {
                    flow: flow.clone(),
                    step: name.to_owned(),
                });
            }
            Node::WaitFor { poll, .. } => {
                if let Some(detail) = poll.problem() {
                    return Err(BuildError::BadPoll {
                        flow: flow.clone(),
                        step: name.to_owned(),
                        detail,
                    });
                }
            }
            _ => {}
        }
        if let Some(body) = node.body() {
            if body.is_empty() {
                return Err(BuildError::EmptyBlock {
                    flow: flow.clone(),
                    step: name.to_owned(),
                });
            }
            check(flow, body, seen)?;
        }
    }
    Ok(())
}
