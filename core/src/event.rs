use std::fmt;
use std::sync::Arc;

use crate::{Key, TriggerSeq};

/// A hint from the coordinator to one node.
///
/// Events are hints: the durable trigger sequences and ownership records are the truth.
/// A backend that may have missed events (a reconnect, a watch gap) sends
/// [`CoordinatorEvent::Resync`], and the engine re-reads what it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordinatorEvent {
    /// A key this node owns was triggered; `seq` is its trigger sequence after the trigger.
    Triggered {
        /// The triggered key.
        key: Key,
        /// The key's trigger sequence after this trigger.
        seq: TriggerSeq,
    },
    /// One or more keys became claimable (new, released, or orphaned).
    KeysAvailable,
    /// This node lost ownership of `key`, or of every key when `key` is `None`.
    OwnershipLost {
        /// The key lost, or `None` for all keys.
        key: Option<Key>,
    },
    /// Events may have been lost: re-read ownership and trigger sequences.
    Resync,
}

/// Where a backend delivers [`CoordinatorEvent`]s for one node.
///
/// Delivery is a synchronous, non-blocking call: the receiver only records the hint and
/// wakes whoever waits for it, and never calls back into the coordinator, so a backend may
/// send while holding its own locks.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(CoordinatorEvent) + Send + Sync>);

impl EventSink {
    /// A sink that calls `deliver` for every event.
    pub fn new(deliver: impl Fn(CoordinatorEvent) + Send + Sync + 'static) -> EventSink {
        EventSink(Arc::new(deliver))
    }

    /// A sink that drops every event.
    pub fn discard() -> EventSink {
        EventSink::new(|_| {})
    }

    /// Delivers one event.
    pub fn send(&self, event: CoordinatorEvent) {
        (self.0)(event)
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}
