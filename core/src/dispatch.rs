//! Turns coordinator events into wake-ups of loops, the claimer, the resync and the lease
//! keeper.
//!
//! Every incarnation of the node gets its own sink, tagged with its node id: a backend may
//! deliver late events addressed to an earlier incarnation (a lost-ownership notice from a
//! watch that outlived its session), and those must not stop the current incarnation's
//! loops or fence it. Trigger hints, `KeysAvailable` and `Resync` are harmless whoever they
//! were meant for, and are applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::defect::Defects;
use crate::slot::LoopTable;
use crate::{CoordinatorEvent, Defect, EventSink, Key, NodeId, ShutdownReason};

/// Trigger hints that arrived for keys not (yet) in the loop table while a claim was in
/// flight: the claim may be about to return them with an older sequence.
#[derive(Default)]
struct Stash {
    claim_in_flight: bool,
    seqs: HashMap<Key, u64>,
}

/// "Every ownership of incarnation X is gone", for the lease keeper of X only.
///
/// A bare permit (`Notify::notify_one`) would be consumed by whichever incarnation waits
/// next, so a notice meant for a fenced incarnation could fence its successor.
#[derive(Default)]
pub(crate) struct LostSignal {
    lost: Mutex<Vec<NodeId>>,
    /// Only with `Defect::AcceptsStaleEvents`: a notice any incarnation takes.
    anyone: AtomicBool,
    notify: Notify,
}

impl LostSignal {
    /// Records that incarnation `node` lost everything.
    pub(crate) fn report(&self, node: NodeId) {
        {
            let mut lost = self.lost.lock().unwrap();
            if !lost.contains(&node) {
                lost.push(node);
            }
        }
        self.notify.notify_waiters();
    }

    /// Whether incarnation `node` was reported lost.
    pub(crate) fn is_lost(&self, node: NodeId) -> bool {
        self.lost.lock().unwrap().contains(&node)
    }

    /// Waits until incarnation `node` is reported lost.
    pub(crate) async fn wait(&self, node: NodeId) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_lost(node) || self.anyone.swap(false, Ordering::AcqRel) {
                return;
            }
            notified.await;
        }
    }

    /// Forgets reports about incarnations other than `current` (called when a new
    /// incarnation starts, so the list stays short).
    pub(crate) fn keep_only(&self, current: NodeId) {
        self.lost.lock().unwrap().retain(|n| *n == current);
    }
}

/// What the dispatcher and the engine's background tasks share. Holds no coordinator, so
/// the sink given to the backend creates no reference cycle.
pub(crate) struct Shared {
    pub(crate) loops: LoopTable,
    /// Wakes the claimer: keys became available or capacity was freed.
    pub(crate) claim_wake: Notify,
    /// Wakes the claimer to re-read ownership and trigger sequences.
    pub(crate) resync_wake: Notify,
    /// Wakes the lease keeper of an incarnation the backend says lost everything.
    pub(crate) lost: LostSignal,
    /// Wakes whoever waits for loops to end (shutdown, fencing) while `draining` is set.
    pub(crate) loop_ended: Notify,
    pub(crate) draining: AtomicBool,
    stash: Mutex<Stash>,
    defects: Defects,
}

impl Shared {
    pub(crate) fn new(defects: Defects) -> Shared {
        Shared {
            defects,
            loops: LoopTable::new(),
            claim_wake: Notify::new(),
            resync_wake: Notify::new(),
            lost: LostSignal::default(),
            loop_ended: Notify::new(),
            draining: AtomicBool::new(false),
            stash: Mutex::new(Stash::default()),
        }
    }

    /// The sink a backend delivers the events of incarnation `node` to.
    pub(crate) fn sink(self: &Arc<Self>, node: NodeId) -> EventSink {
        let shared = Arc::clone(self);
        EventSink::new(move |event| shared.deliver(node, event))
    }

    pub(crate) fn deliver(&self, to: NodeId, event: CoordinatorEvent) {
        match event {
            CoordinatorEvent::Triggered { key, seq } => self.deliver_trigger(key, seq.0),
            CoordinatorEvent::KeysAvailable => self.claim_wake.notify_one(),
            CoordinatorEvent::OwnershipLost { key: Some(key) } => {
                let stale_too = self.defects.has(Defect::AcceptsStaleEvents);
                self.loops.with(&key, |slot| {
                    if slot.session.node.id == to || stale_too {
                        slot.signal_shutdown(ShutdownReason::OwnershipLost)
                    }
                });
            }
            CoordinatorEvent::OwnershipLost { key: None } => self.report_lost(to),
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

    /// Records that incarnation `node` lost everything.
    pub(crate) fn report_lost(&self, node: NodeId) {
        if self.defects.has(Defect::AcceptsStaleEvents) {
            self.lost.anyone.store(true, Ordering::Release);
        }
        self.lost.report(node);
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
