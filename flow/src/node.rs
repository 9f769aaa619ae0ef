use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use keyloop_core::BoxError;

use crate::{Poll, RetryPolicy, StepContext};

pub(crate) type BoxFuture<R> = Pin<Box<dyn Future<Output = R> + Send + 'static>>;
pub(crate) type StepFn<T> =
    Arc<dyn Fn(T, StepContext) -> BoxFuture<Result<T, BoxError>> + Send + Sync>;
pub(crate) type CheckFn<T> =
    Arc<dyn Fn(T, StepContext) -> BoxFuture<Result<bool, BoxError>> + Send + Sync>;
pub(crate) type PredFn<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// One element of a flow: a step with an effect, a wait, or a block of nested steps.
pub(crate) enum Node<T> {
    Step {
        name: String,
        run: StepFn<T>,
    },
    WaitFor {
        name: String,
        check: CheckFn<T>,
        poll: Poll,
    },
    Case {
        name: String,
        when: PredFn<T>,
        body: Vec<Node<T>>,
    },
    Retry {
        name: String,
        policy: RetryPolicy,
        body: Vec<Node<T>>,
    },
    LoopUntil {
        name: String,
        until: PredFn<T>,
        body: Vec<Node<T>>,
    },
}

impl<T> Node<T> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Node::Step { name, .. }
            | Node::WaitFor { name, .. }
            | Node::Case { name, .. }
            | Node::Retry { name, .. }
            | Node::LoopUntil { name, .. } => name,
        }
    }

    pub(crate) fn body(&self) -> Option<&[Node<T>]> {
        match self {
            Node::Case { body, .. } | Node::Retry { body, .. } | Node::LoopUntil { body, .. } => {
                Some(body)
            }
            Node::Step { .. } | Node::WaitFor { .. } => None,
        }
    }
}
