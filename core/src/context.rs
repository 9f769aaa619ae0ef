use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::slot::LoopSlot;
use crate::{Epoch, Key, NodeId, StateHandle};

/// Why a loop is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The node is shutting down gracefully: persist, then return `Continue` so another node
    /// takes over (or `Complete` if done).
    NodeShutdown,
    /// The node is no longer sure it owns the key (lease not renewed, fenced write, taken
    /// over). Stop acting at once; the key will be released or taken over without this loop.
    OwnershipLost,
}

impl ShutdownReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            ShutdownReason::NodeShutdown => 1,
            ShutdownReason::OwnershipLost => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<ShutdownReason> {
        match code {
            1 => Some(ShutdownReason::NodeShutdown),
            2 => Some(ShutdownReason::OwnershipLost),
            _ => None,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownReason::NodeShutdown => "node shutdown",
            ShutdownReason::OwnershipLost => "ownership lost",
        })
    }
}

/// What woke a loop waiting in [`LoopContext::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// One or more triggers arrived since the loop last observed one.
    Triggered,
    /// The loop must persist and return.
    Shutdown(ShutdownReason),
}

/// What a running loop gets from keyloop: its key's fencing token, trigger notifications,
/// the shutdown signal and fenced durable state.
pub struct LoopContext {
    slot: Arc<LoopSlot>,
}

impl fmt::Debug for LoopContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopContext")
            .field("key", &self.slot.key)
            .field("epoch", &self.slot.epoch)
            .finish()
    }
}

impl LoopContext {
    pub(crate) fn new(slot: Arc<LoopSlot>) -> LoopContext {
        LoopContext { slot }
    }

    pub(crate) fn slot(&self) -> &LoopSlot {
        &self.slot
    }

    /// The key this loop reconciles.
    pub fn key(&self) -> &Key {
        &self.slot.key
    }

    /// The fencing token of this ownership: strictly greater than that of every earlier
    /// owner of the key. Pass it to external systems to fence your own writes.
    pub fn epoch(&self) -> Epoch {
        self.slot.epoch
    }

    /// The node running this loop.
    pub fn node(&self) -> NodeId {
        self.slot.session.node.id
    }

    /// How many times in a row this key's loop failed before this run (0 on a healthy key).
    pub fn failures(&self) -> u32 {
        self.slot.failures()
    }

    /// Resolves when the loop must persist its state and return quickly.
    pub async fn shutdown(&self) -> ShutdownReason {
        self.slot.wait_for(|| self.slot.reason_now()).await
    }

    /// Why the loop must stop, if it must.
    ///
    /// Judged when called: besides a signalled reason, this is
    /// [`OwnershipLost`](ShutdownReason::OwnershipLost) as soon as the node can no longer
    /// vouch for its lease (the send time of its last successful heartbeat + TTL − fence
    /// margin has passed on its own clock), even if the engine has not yet got round to
    /// signalling — for instance right after the process was frozen past its lease.
    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.slot.reason_now()
    }

    /// Whether the loop must stop; judged when called, like
    /// [`shutdown_reason`](Self::shutdown_reason).
    pub fn is_shutting_down(&self) -> bool {
        self.slot.reason_now().is_some()
    }

    /// Whether this loop may still act as its key's owner right now: it has not lost
    /// ownership, and the node's lease is certainly still valid. Cheap (an atomic load and
    /// a clock read) and synchronous: call it right before every write to an external
    /// system, and pass [`epoch`](Self::epoch) along so the system can fence writes itself
    /// (a check and a write are never atomic; the epoch is what makes a stale write
    /// harmless).
    ///
    /// During a graceful shutdown the loop is still the owner (it may persist and hand
    /// off); this turns `false` only when ownership is lost or cannot be vouched for.
    pub fn is_owner(&self) -> bool {
        self.slot.is_owner()
    }

    /// A token cancelled together with the shutdown signal, to abort calls to external
    /// systems (`select!` on `token.cancelled()`, or hand it to a client library).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.slot.cancellation_token()
    }

    /// Resolves once per burst of triggers that arrived since the loop last observed one:
    /// N triggers while the loop is busy wake it once, and no trigger is lost. Starting the
    /// loop observes every trigger before the start.
    pub async fn triggered(&self) {
        self.slot
            .wait_for(|| self.slot.take_trigger().then_some(()))
            .await
    }

    /// Takes a pending trigger without waiting; `true` if one had arrived.
    pub fn take_trigger(&self) -> bool {
        self.slot.take_trigger()
    }

    /// Waits for the next trigger burst or the shutdown signal, whichever comes first
    /// (shutdown wins when both are pending).
    pub async fn next(&self) -> Wake {
        self.slot
            .wait_for(|| {
                if let Some(reason) = self.slot.reason_now() {
                    Some(Wake::Shutdown(reason))
                } else if self.slot.take_trigger() {
                    Some(Wake::Triggered)
                } else {
                    None
                }
            })
            .await
    }

    /// The key's durable state, fenced by this loop's epoch.
    pub fn state(&self) -> StateHandle<'_> {
        StateHandle::new(self)
    }
}
