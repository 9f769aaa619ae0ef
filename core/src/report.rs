use std::time::Duration;

use crate::{Key, NodeId};

/// What [`Engine::shutdown`](crate::Engine::shutdown) did with each key the node owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The node that shut down (`None` if it never joined).
    pub node: Option<NodeId>,
    /// Keys released for another node (the loop returned `Continue`, failed during
    /// shutdown, or was waiting in backoff).
    pub handed_off: Vec<Key>,
    /// Keys whose loop returned `Complete` during shutdown and retired.
    pub completed: Vec<Key>,
    /// Keys whose loop asked to be requeued during shutdown: they sleep until their
    /// wake-up time and then run on any node.
    pub sleeping: Vec<Key>,
    /// Keys whose loop ignored the shutdown signal past the grace period: the loop was
    /// abandoned (aborted where possible) and the key released, so the loop's epoch is
    /// fenced.
    pub abandoned: Vec<Key>,
    /// Abandoned keys whose loop did not end even after it was aborted (code blocking its
    /// thread): they were not released — releasing would let another node start while the
    /// loop still runs — and fail over when this node's lease expires.
    pub left_to_expire: Vec<Key>,
    /// How long the shutdown took.
    pub elapsed: Duration,
}
