use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a flow is: one frame per nesting level, `(index of the step in its block, counter)`.
///
/// The counter belongs to the step the index points at: polls made by a `wait_for`, failed
/// attempts of a `retry`, finished iterations of a `loop_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Frame(pub(crate) usize, pub(crate) u32);

/// The running state of one [`StepFlow`](crate::StepFlow) instance: small, serializable, and
/// saved after every step.
///
/// It holds the flow id (`deploy/v1`), the position as a path of step indices with attempt,
/// poll and iteration counters, the delay the flow asked to wait before its next step, and
/// the user data `T` that steps read and replace. As JSON it looks like
/// `{"flow":"deploy/v1","at":[[2,0],[1,3]],"wait_ms":2000,"data":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowState<T> {
    pub(crate) flow: String,
    pub(crate) at: Vec<Frame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) done: bool,
    pub(crate) data: T,
}

/// What a [`FlowState`] asks its driver to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatus {
    /// Call [`apply`](crate::StepFlow::apply) now (a new flow, or one interrupted by
    /// cancellation).
    Ready,
    /// Wait this long (a poll interval or a retry backoff), then call `apply`.
    Waiting(Duration),
    /// Every step has run.
    Completed,
}

impl<T> FlowState<T> {
    /// The id (`name/vN`) of the flow this state belongs to.
    pub fn flow_id(&self) -> &str {
        &self.flow
    }

    /// The user data, as the last completed step left it.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// Takes the user data out.
    pub fn into_data(self) -> T {
        self.data
    }

    /// Whether every step has run.
    pub fn is_completed(&self) -> bool {
        self.done
    }

    /// What the driver should do next.
    pub fn status(&self) -> FlowStatus {
        if self.done {
            FlowStatus::Completed
        } else if let Some(ms) = self.wait_ms {
            FlowStatus::Waiting(Duration::from_millis(ms))
        } else {
            FlowStatus::Ready
        }
    }
}

/// The part of a saved state read before the user data, to reject a foreign flow clearly.
#[derive(Deserialize)]
pub(crate) struct Header {
    pub(crate) flow: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_small_json() {
        let state = FlowState {
            flow: "deploy/v1".into(),
            at: vec![Frame(2, 0), Frame(1, 3)],
            wait_ms: Some(2000),
            done: false,
            data: 7u32,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            json,
            r#"{"flow":"deploy/v1","at":[[2,0],[1,3]],"wait_ms":2000,"data":7}"#
        );
        let back: FlowState<u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.status(), FlowStatus::Waiting(Duration::from_secs(2)));
    }
}
