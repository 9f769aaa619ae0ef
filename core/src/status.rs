use std::fmt;
use std::sync::Arc;

use crate::{Epoch, Key, NodeId, ShutdownReason};

/// Where a key stands.
///
/// [`Engine::status`](crate::Engine::status) reports the detailed states of keys the engine
/// owns (`Running`, `ShuttingDown`, `Backoff`); for other keys, and from a
/// [`Client`](crate::Client), the backend's view (`Pending`, `Running` elsewhere, `Failed`,
/// `NotRegistered`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyStatus {
    /// Not in the registry: never triggered, or completed.
    NotRegistered,
    /// Registered and waiting for a node to claim it.
    Pending,
    /// A loop runs (or may run) for the key on `node`.
    Running {
        /// The owner.
        node: NodeId,
        /// The owner's epoch.
        epoch: Epoch,
    },
    /// The loop was told to stop and has not returned yet.
    ShuttingDown {
        /// Why it is stopping.
        reason: ShutdownReason,
    },
    /// The loop failed and waits to be restarted on this node.
    Backoff {
        /// Consecutive failures so far.
        failures: u32,
        /// The last error.
        last_error: String,
    },
    /// The key is parked after repeated failures; it runs again on its next trigger or on
    /// [`Engine::resume`](crate::Engine::resume).
    Failed {
        /// The last error.
        error: String,
    },
    /// The key sleeps until a wake-up time (a loop returned `RequeueAfter` / `RequeueAt`);
    /// it holds no loop, and runs at that time or on its next trigger.
    Sleeping {
        /// When it falls due, on the backend's clock.
        until: std::time::SystemTime,
    },
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyStatus::NotRegistered => f.write_str("not registered"),
            KeyStatus::Pending => f.write_str("pending"),
            KeyStatus::Running { node, epoch } => write!(f, "running on {node} at epoch {epoch}"),
            KeyStatus::ShuttingDown { reason } => write!(f, "shutting down ({reason})"),
            KeyStatus::Backoff {
                failures,
                last_error,
            } => write!(f, "backoff after {failures} failures: {last_error}"),
            KeyStatus::Failed { error } => write!(f, "failed: {error}"),
            KeyStatus::Sleeping { until } => {
                match until.duration_since(std::time::SystemTime::now()) {
                    Ok(left) => write!(f, "sleeping for another {left:.1?}"),
                    Err(_) => f.write_str("sleeping, due now"),
                }
            }
        }
    }
}

/// A callback told about every status change of the keys an engine owns.
///
/// Called synchronously from the loop's task: keep it short and non-blocking.
pub type StatusListener = Arc<dyn Fn(&Key, &KeyStatus) + Send + Sync>;
