//! The task that drives one loop: runs the controller, restarts it with backoff, and gives
//! the key back according to the loop's decision.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::engine::{Inner, RUNNING};
use crate::slot::LoopSlot;
use crate::{
    CoordinatorError, Decision, KeyStatus, LoopContext, Release, Released, ShutdownReason, WakeTime,
};

/// How one run of the controller ended.
enum Outcome {
    Decided(Decision),
    Failed(String),
}

/// Marks the loop's task ended when it is dropped: after it returned, or when an abort
/// dropped it at an `.await`. Shutdown releases an abandoned loop's key only after this.
struct Ended<'a> {
    inner: &'a Inner,
    slot: &'a Arc<LoopSlot>,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.inner.task_ended(self.slot);
    }
}

pub(crate) async fn run(inner: Arc<Inner>, slot: Arc<LoopSlot>) {
    let _ended = Ended {
        inner: &inner,
        slot: &slot,
    };
    let span = tracing::info_span!(
        "loop",
        key = %slot.key,
        epoch = slot.epoch.0,
        node = %slot.session.node.id
    );
    drive(&inner, &slot).instrument(span).await;
}

async fn drive(inner: &Arc<Inner>, slot: &Arc<LoopSlot>) {
    let mut first = true;
    loop {
        // Judged before every run, not only the first: a run starts after a backoff, a
        // retrigger or an in-task wake-up, and the timer that ends a backoff can fire
        // before the lease keeper's — a process frozen (SIGSTOP, a VM pause) past its
        // lease wakes with both overdue, and would otherwise restart the controller at a
        // stale epoch while another node runs the key.
        if let Some(reason) = slot.reason_now() {
            // Shutdown or fencing began while the key waited: no loop of this node runs
            // it, so give it back for another node. The release is fenced; if the lease
            // is already gone it fails harmlessly.
            tracing::debug!(%reason, first, "stopping before a run: giving the key back unrun");
            hand_off(inner, slot).await;
            return;
        }
        first = false;
        slot.observe_all();
        slot.set_running();
        let started = Instant::now();
        let ctx = LoopContext::new(Arc::clone(slot));
        let outcome = match AssertUnwindSafe(inner.controller.run(slot.key.clone(), ctx))
            .catch_unwind()
            .await
        {
            Ok(Ok(decision)) => Outcome::Decided(decision),
            Ok(Err(error)) => Outcome::Failed(error.to_string()),
            Err(panic) => Outcome::Failed(format!("panicked: {}", panic_message(&*panic))),
        };
        // Boxed so that an idle loop's task holds only the controller's future, not the
        // space for releases, retries and backoff timers.
        if !Box::pin(after_run(inner, slot, outcome, started)).await {
            return;
        }
    }
}

/// Acts on a finished run; `true` means run the controller again.
async fn after_run(
    inner: &Arc<Inner>,
    slot: &Arc<LoopSlot>,
    outcome: Outcome,
    started: Instant,
) -> bool {
    let shutdown = slot.reason_now();
    if shutdown == Some(ShutdownReason::OwnershipLost) {
        tracing::debug!("loop stopped after losing ownership");
        return false;
    }
    match outcome {
        Outcome::Decided(Decision::Complete) => {
            let how = Release::Complete {
                observed_seq: crate::TriggerSeq(slot.observed_seq()),
            };
            match release(inner, slot, how).await {
                Some(Released::Retriggered { seq }) => {
                    retriggered(inner, slot, seq, "completing").await
                }
                Some(_) => {
                    inner.record(|r| r.completed.push(slot.key.clone()));
                    slot.emit(&KeyStatus::NotRegistered);
                    false
                }
                None => false,
            }
        }
        Outcome::Decided(Decision::Continue) => {
            hand_off(inner, slot).await;
            false
        }
        Outcome::Decided(Decision::RequeueAfter(delay)) => {
            let delay = jittered(delay, inner.config.requeue_jitter);
            requeue(inner, slot, WakeTime::After(delay)).await
        }
        Outcome::Decided(Decision::RequeueAt(at)) => {
            let (left, _) = WakeTime::At(at).resolve(SystemTime::now());
            let extra = jittered(left, inner.config.requeue_jitter) - left;
            requeue(inner, slot, WakeTime::At(at + extra)).await
        }
        Outcome::Failed(error) if shutdown.is_some() => {
            tracing::warn!(%error, "loop failed during shutdown: handing off");
            hand_off(inner, slot).await;
            false
        }
        Outcome::Failed(error) => {
            let failures = if started.elapsed() >= inner.config.healthy_run {
                1
            } else {
                slot.failures() + 1
            };
            slot.set_failures(failures);
            if failures >= inner.config.max_failures {
                let observed = if inner.config.defects.has(crate::Defect::ParkIgnoresTriggers) {
                    u64::MAX
                } else {
                    slot.observed_seq()
                };
                let how = Release::Park {
                    error: error.clone(),
                    observed_seq: crate::TriggerSeq(observed),
                };
                match release(inner, slot, how).await {
                    Some(Released::Retriggered { seq }) => {
                        // A trigger the failing run did not observe: it resumes the key,
                        // here, after the backoff (the count keeps growing, so does the
                        // backoff; the next failure with no new trigger parks).
                        slot.note_trigger(seq.0);
                        tracing::warn!(%error, failures, seq = seq.0, "loop failed repeatedly, but was triggered since: not parked");
                    }
                    Some(_) => {
                        tracing::error!(%error, failures, "loop failed repeatedly: parked");
                        slot.emit(&KeyStatus::Failed { error });
                        return false;
                    }
                    None => return false,
                }
            }
            let delay = inner.config.restart_backoff.delay(failures - 1);
            tracing::warn!(%error, failures, ?delay, "loop failed: restarting after backoff");
            slot.set_backoff(error);
            // New triggers do not shorten the backoff; only a shutdown ends it early.
            let woke_for_shutdown = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = slot.wait_for(|| slot.shutdown_reason()) => true,
            };
            if woke_for_shutdown {
                if slot.shutdown_reason() == Some(ShutdownReason::NodeShutdown) {
                    hand_off(inner, slot).await;
                }
                return false;
            }
            true
        }
    }
}

/// A conditional release (`Complete`, `Sleep`) answered `Retriggered`: the key stays ours
/// and the unobserved trigger counts. Run again, or hand the key off if shutting down;
/// `true` means run the controller again.
async fn retriggered(
    inner: &Arc<Inner>,
    slot: &Arc<LoopSlot>,
    seq: crate::TriggerSeq,
    while_doing: &str,
) -> bool {
    slot.note_trigger(seq.0);
    slot.set_failures(0);
    if slot.shutdown_reason().is_some() {
        hand_off(inner, slot).await;
        return false;
    }
    tracing::debug!(seq = seq.0, "triggered while {while_doing}: running again");
    true
}

/// `delay` stretched by a random part of `jitter` (never shortened).
fn jittered(delay: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || delay.is_zero() {
        return delay;
    }
    delay + delay.mul_f64(rand::random::<f64>() * jitter)
}

/// Puts the key to sleep until `until`; `true` means run the controller again (a trigger
/// the loop did not observe arrived: it counts, the wake-up is not needed).
async fn requeue(inner: &Arc<Inner>, slot: &Arc<LoopSlot>, until: WakeTime) -> bool {
    if !slot.session.coordinator.limits().durable_wake_ups {
        return wait_in_task(inner, slot, until).await;
    }
    let how = Release::Sleep {
        observed_seq: crate::TriggerSeq(slot.observed_seq()),
        until,
    };
    match release(inner, slot, how).await {
        Some(Released::Retriggered { seq }) => retriggered(inner, slot, seq, "requeueing").await,
        Some(_) => {
            let (_, wakes) = until.resolve(SystemTime::now());
            tracing::debug!(?until, "requeued: sleeping");
            // This node's claimer re-reads `next_wake` after its round and schedules the
            // next one for this wake-up, whatever the backend tells other nodes.
            inner.shared.claim_wake.notify_one();
            inner.record(|r| r.sleeping.push(slot.key.clone()));
            slot.emit(&KeyStatus::Sleeping { until: wakes });
            false
        }
        None => false,
    }
}

/// The requeue of a backend without durable wake-ups: keep the key and its task, wait for
/// the wake-up time, a trigger or a shutdown; `true` means run the controller again.
///
/// A shutdown during the wait hands the key off (`Continue`): its next owner runs it at
/// once, early rather than never, because the backend cannot store the wake-up.
async fn wait_in_task(inner: &Arc<Inner>, slot: &Arc<LoopSlot>, until: WakeTime) -> bool {
    let (left, wakes) = until.resolve(SystemTime::now());
    slot.emit(&KeyStatus::Sleeping { until: wakes });
    let ended_early = tokio::select! {
        () = tokio::time::sleep(left) => false,
        () = slot.wait_for(|| (slot.shutdown_reason().is_some() || slot.take_trigger()).then_some(())) => true,
    };
    match slot.shutdown_reason() {
        Some(ShutdownReason::OwnershipLost) => false,
        Some(_) => {
            hand_off(inner, slot).await;
            false
        }
        None => {
            tracing::debug!(triggered = ended_early, "in-task wake-up: running again");
            true
        }
    }
}

/// Releases the key for another node (`Continue`).
///
/// While the node shuts down, it passes itself over for the key for as long as it can
/// still be a member: a claim it sent just before the shutdown began may reach the backend
/// after this release, and would otherwise take the key back only for the leaving node to
/// give it back unrun (other nodes are never passed over, so they take it at once).
async fn hand_off(inner: &Arc<Inner>, slot: &Arc<LoopSlot>) {
    let config = &inner.config;
    let avoid_for = if inner.phase() == RUNNING {
        config.handoff_avoid
    } else {
        config.shutdown_grace + config.abandon_timeout + config.lease_ttl
    };
    if release(inner, slot, Release::Continue { avoid_for })
        .await
        .is_some()
    {
        inner.record(|r| r.handed_off.push(slot.key.clone()));
        slot.emit(&KeyStatus::Pending);
    }
}

/// Releases with retries on transient errors; `None` when the key is no longer ours.
async fn release(inner: &Arc<Inner>, slot: &Arc<LoopSlot>, how: Release) -> Option<Released> {
    let mut attempt = 0;
    loop {
        let result = slot
            .session
            .coordinator
            .release(&slot.session.node.id, &slot.key, slot.epoch, how.clone())
            .await;
        match result {
            Ok(released) => return Some(released),
            Err(CoordinatorError::Fenced { .. } | CoordinatorError::LeaseExpired { .. }) => {
                tracing::warn!("release fenced: the key is no longer ours");
                return None;
            }
            Err(e) if slot.shutdown_reason() == Some(ShutdownReason::OwnershipLost) => {
                tracing::warn!(error = %e, "release failed after ownership was lost");
                return None;
            }
            Err(e) => {
                let delay = inner.config.restart_backoff.delay(attempt);
                attempt += 1;
                tracing::warn!(error = %e, ?delay, "release failed: retrying");
                // The lease keeper fences this loop if the backend stays unreachable.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = slot.wait_for(|| {
                        (slot.shutdown_reason() == Some(ShutdownReason::OwnershipLost)).then_some(())
                    }) => return None,
                }
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
