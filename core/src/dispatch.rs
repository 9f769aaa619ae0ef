//! Turns coordinator events into wake-ups of loops, the claimer and the resync.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::slot::LoopTable;
use crate::{CoordinatorEvent, EventSink, Key, ShutdownReason};

/// Trigger hints that arrived for keys not (yet) in the loop table while a claim was in
/// flight: the claim may be about to return them with an older sequence.
#[derive(Default)]
struct Stash {
    claim_in_flight: bool,
    seqs: HashMap<Key, u64>,
}

/// What the dispatcher and the engine's background tasks share. Holds no coordinator, so
/// the sink given to the backend creates no reference cycle.
pub(crate) struct Shared {
    pub(crate) loops: LoopTable,
    /// Wakes the claimer: keys became available or capacity was freed.
    pub(crate) claim_wake: Notify,
    /// Wakes the claimer to re-read ownership and trigger sequences.
    pub(crate) resync_wake: Notify,
    /// Wakes the lease keeper: the backend says every ownership is gone.
    pub(crate) lost_wake: Notify,
    /// Wakes whoever waits for loops to end (shutdown, fencing) while `draining` is set.
    pub(crate) loop_ended: Notify,
    pub(crate) draining: AtomicBool,
    stash: Mutex<Stash>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            loops: LoopTable::new(),
            claim_wake: Notify::new(),
            resync_wake: Notify::new(),
            lost_wake: Notify::new(),
            loop_ended: Notify::new(),
            draining: AtomicBool::new(false),
            stash: Mutex::new(Stash::default()),
        }
    }

    /// The sink a backend delivers this node's events to.
    pub(crate) fn sink(self: &Arc<Self>) -> EventSink {
        let shared = Arc::clone(self);
        EventSink::new(move |event| shared.deliver(event))
    }

    pub(crate) fn deliver(&self, event: CoordinatorEvent) {
        match event {
            CoordinatorEvent::Triggered { key, seq } => self.deliver_trigger(key, seq.0),
            CoordinatorEvent::KeysAvailable => self.claim_wake.notify_one(),
            CoordinatorEvent::OwnershipLost { key: Some(key) } => {
                self.loops.with(&key, |slot| {
                    slot.signal_shutdown(ShutdownReason::OwnershipLost)
                });
            }
            CoordinatorEvent::OwnershipLost { key: None } => self.lost_wake.notify_one(),
            CoordinatorEvent::Resync => self.resync_wake.notify_one(),
        }
    }

    fn deliver_trigger(&self, key: Key, seq: u64) {
        if self
            .loops
            .with(&key, |slot| slot.note_trigger(seq))
            .is_some()
        {
            return;
        }
        let mut stash = self.stash.lock().unwrap();
        if stash.claim_in_flight {
            let entry = stash.seqs.entry(key).or_insert(0);
            *entry = (*entry).max(seq);
        } else {
            // The claimer inserts slots before it closes the stash, so a claim that finished
            // between our first look-up and taking the lock is visible now.
            drop(stash);
            self.loops.with(&key, |slot| slot.note_trigger(seq));
        }
    }

    /// Opens the stash before a claim is sent.
    pub(crate) fn begin_claim(&self) {
        let mut stash = self.stash.lock().unwrap();
        stash.claim_in_flight = true;
        stash.seqs.clear();
    }

    /// Closes the stash after the claimed loops are in the table, applying stashed hints.
    pub(crate) fn end_claim(&self) {
        let seqs = {
            let mut stash = self.stash.lock().unwrap();
            stash.claim_in_flight = false;
            std::mem::take(&mut stash.seqs)
        };
        for (key, seq) in seqs {
            self.loops.with(&key, |slot| slot.note_trigger(seq));
        }
    }
}
