//! What a history is made of: one [`Event`] per thing that happened to a key.

use keyloop_core::{Key, NodeId};
use serde::{Deserialize, Serialize};

/// Names one call of `trigger`, so that its acknowledgement can be matched to its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId(pub u64);

/// Names one run of a controller (one invocation of `Controller::run`), unique within a
/// history (a [`Recorder`](crate::Recorder) hands out ids unique across processes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub u64);

/// One thing that happened to one key, at one instant of the history's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in nanoseconds on the history's one clock: monotonic from the recorder's
    /// creation in-process, or an explicit timestamp (for instance the database's clock)
    /// for events recorded across processes.
    pub at_ns: u64,
    /// The key it happened to.
    pub key: Key,
    /// What happened.
    pub kind: EventKind,
    /// Who recorded it (a process or recorder name), for reading merged histories; the
    /// checker ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What happened ([`Event::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// `trigger(key)` is about to be called.
    TriggerCalled {
        /// The call.
        op: OpId,
    },
    /// `trigger(key)` returned `Ok`.
    TriggerAcked {
        /// The call.
        op: OpId,
        /// The trigger sequence the backend answered, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A controller's `run` was entered.
    LoopStarted {
        /// The node incarnation running it (its 32-hex-digit form in JSON).
        #[serde(with = "node_hex")]
        node: NodeId,
        /// Its epoch (`ctx.epoch()`).
        epoch: u64,
        /// The run.
        run: RunId,
    },
    /// A running loop observed a trigger burst (`ctx.triggered()` resolved, `ctx.next()`
    /// returned `Triggered`, or `ctx.take_trigger()` returned `true`).
    TriggerObserved {
        /// The run.
        run: RunId,
    },
    /// A run ended: it is no longer acting for the key.
    LoopEnded {
        /// The run.
        run: RunId,
        /// How.
        end: LoopEnd,
    },
    /// A write to an external system, fenced by an epoch, and whether the system accepted it.
    ExternalWrite {
        /// The run that wrote, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        /// The epoch the write carried.
        epoch: u64,
        /// The value written.
        value: u64,
        /// Whether the fenced store accepted it.
        accepted: bool,
    },
    /// A state save (`ctx.state().save(..)`) returned.
    StateSaved {
        /// The run that saved.
        run: RunId,
        /// The epoch it saved with.
        epoch: u64,
        /// When the save was called, on the history's clock.
        sent_ns: u64,
        /// The answer.
        result: SaveResult,
    },
    /// The final word on the key once faults stopped and the history settled: what the
    /// workload wanted, what it got, and whether the key was still registered. Converged
    /// means `actual >= desired` (generations only grow) and not registered.
    Settled {
        /// The desired value (generation) that must be reached.
        desired: u64,
        /// The value the loops wrote, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actual: Option<u64>,
        /// Whether the key was still in the registry (a converged key has left it).
        registered: bool,
    },
}

/// How a run ended ([`EventKind::LoopEnded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoopEnd {
    /// It returned `Complete`: if a trigger it did not observe is pending, the engine runs
    /// it again at the same epoch.
    Complete,
    /// It returned `Continue`: the key is handed to a new owner (a new epoch).
    Continue,
    /// It returned `RequeueAfter`/`RequeueAt` (the engine may run it again at the same
    /// epoch if a trigger is pending, or wait in the task).
    Requeue,
    /// It returned an error: the engine restarts it at the same epoch after a backoff.
    Failed {
        /// The error.
        error: String,
    },
    /// It panicked (the engine treats this as an error).
    Panicked,
    /// Its future was dropped without returning (the task was aborted, or the node killed).
    Aborted,
}

impl LoopEnd {
    /// Whether the engine may run the same ownership (node and epoch) again after this.
    pub fn may_rerun(&self) -> bool {
        matches!(
            self,
            LoopEnd::Complete | LoopEnd::Requeue | LoopEnd::Failed { .. } | LoopEnd::Panicked
        )
    }
}

/// The answer to a state save ([`EventKind::StateSaved`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SaveResult {
    /// The backend stored it.
    Accepted,
    /// Fenced: the loop no longer owned the key (refused by the engine or the backend).
    Fenced,
    /// Another error (unreachable backend, too large...).
    Error {
        /// The error.
        error: String,
    },
}

/// A [`NodeId`] as its 32-hex-digit string: JSON numbers cannot hold a `u128` inside a
/// tagged enum.
mod node_hex {
    use keyloop_core::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(node: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(node)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let text = String::deserialize(d)?;
        NodeId::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a node id: {text:?}")))
    }
}
