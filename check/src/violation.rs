//! What the checker reports: [`Violation`]s of a guarantee, each with its evidence.

use std::fmt;

use keyloop_core::Key;
use serde::{Deserialize, Serialize};

use crate::Event;

/// Which guarantee a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ViolationKind {
    /// G1: two runs of the key were live at once (one started before the other ended).
    TwoLiveLoops,
    /// G1: a run started at an epoch not above every earlier one, and it is not a rerun of
    /// the same ownership (same node and epoch, after a run that ended with a decision the
    /// engine reruns: `Complete` answered `Retriggered`, an error or a panic, a requeue).
    EpochOrder,
    /// G2: a fenced write was accepted although it carried an epoch below one already
    /// accepted (external store or state save), or a state save sent after a newer owner
    /// started was accepted.
    StaleWriteAccepted,
    /// G3: a trigger returned `Ok`, and no loop of the key started or observed a trigger
    /// after it was called.
    LostTrigger,
    /// The key did not converge once faults stopped: its final actual value falls short of
    /// the desired one, or it was still registered.
    NotConverged,
}

impl ViolationKind {
    /// Every kind, in the order reports list them.
    pub const ALL: &'static [ViolationKind] = &[
        ViolationKind::TwoLiveLoops,
        ViolationKind::EpochOrder,
        ViolationKind::StaleWriteAccepted,
        ViolationKind::LostTrigger,
        ViolationKind::NotConverged,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::TwoLiveLoops => "two-live-loops",
            ViolationKind::EpochOrder => "epoch-order",
            ViolationKind::StaleWriteAccepted => "stale-write-accepted",
            ViolationKind::LostTrigger => "lost-trigger",
            ViolationKind::NotConverged => "not-converged",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken guarantee on one key, with the excerpt of the key's history that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The key.
    pub key: Key,
    /// What was broken.
    pub kind: ViolationKind,
    /// What happened, in words.
    pub message: String,
    /// The offending events of the key's history, in order.
    pub excerpt: Vec<Event>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[{}] {}: {}", self.kind, self.key, self.message)?;
        for event in &self.excerpt {
            writeln!(f, "    {:>12} ns  {:?}", event.at_ns, event.kind)?;
        }
        Ok(())
    }
}
