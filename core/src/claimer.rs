//! The task that takes pending keys up to `max_loops`, and re-reads ownership after a
//! notification gap, after a failed claim, and periodically.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::engine::{Inner, RUNNING};
use crate::slot::{LoopSlot, Session};
use crate::{Claim, CoordinatorError, Defect, ShutdownReason};

pub(crate) async fn run(inner: Arc<Inner>) {
    let periodic = !inner.config.defects.has(Defect::NoPeriodicResync);
    let mut next_resync = Instant::now() + inner.config.resync_interval;
    // A resync asked for by a failure (a claim that may have committed, a resync that
    // failed): soon, but never in a tight loop — a backend answering at once with an error
    // would otherwise starve every other task of a single-threaded runtime.
    let mut retry_resync: Option<Instant> = None;
    // When the earliest sleeping key falls due: a claim round is scheduled for then.
    let mut next_wake: Option<Instant> = None;
    loop {
        let resync_at = match retry_resync {
            Some(at) if !periodic || at < next_resync => at,
            _ => next_resync,
        };
        let timed = periodic || retry_resync.is_some();
        let resync = tokio::select! {
            _ = inner.stop_claims.cancelled() => return,
            _ = inner.shared.claim_wake.notified() => false,
            _ = inner.shared.resync_wake.notified() => true,
            _ = tokio::time::sleep(inner.config.claim_interval) => false,
            _ = tokio::time::sleep_until(next_wake.unwrap_or_else(Instant::now)), if next_wake.is_some() => false,
            // Also the backstop for hints lost without a `Resync` (a half-open connection).
            _ = tokio::time::sleep_until(resync_at), if timed => true,
        };
        if resync {
            next_resync = Instant::now() + inner.config.resync_interval;
            retry_resync = None;
            if !resync_owned(&inner).await {
                retry_resync = Some(Instant::now() + inner.config.claim_interval);
            }
        }
        let claimed = claim_round(&inner).await;
        if claimed == Claimed::Failed && !inner.config.defects.has(Defect::ForgetsFailedClaims) {
            // The claim may have committed before its answer was lost: re-read what this
            // node owns, which starts the loops of keys claimed that way.
            retry_resync.get_or_insert_with(Instant::now);
        }
        next_wake = match inner.coordinator.next_wake().await {
            // Due now but not taken (no capacity here, or passed over): the claim interval
            // is the backstop, rather than a tight loop.
            Ok(Some(due)) if due.is_zero() && claimed != Claimed::Some => None,
            Ok(Some(due)) => Some(Instant::now() + due),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "next wake-up unknown");
                next_wake
            }
        };
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Claimed {
    /// Took at least one key.
    Some,
    /// Took nothing (nothing claimable, or no capacity).
    Nothing,
    Failed,
}

async fn claim_round(inner: &Arc<Inner>) -> Claimed {
    let mut outcome = Claimed::Nothing;
    loop {
        if inner.phase() != RUNNING {
            return outcome;
        }
        let Some(session) = inner.current_session() else {
            return outcome;
        };
        let owned = inner.owned.load(Ordering::Acquire);
        let capacity = inner.config.max_loops.saturating_sub(owned);
        if capacity == 0 {
            return outcome;
        }
        let want = capacity.min(inner.config.claim_batch);
        inner.shared.begin_claim();
        let result = inner.coordinator.claim(&session.node.id, want).await;
        let claims = match result {
            Ok(claims) => claims,
            Err(e) => {
                inner.shared.end_claim();
                report_error(inner, &session, &e, "claim");
                return Claimed::Failed;
            }
        };
        let got = claims.len();
        if got > 0 {
            outcome = Claimed::Some;
        }
        start(inner, &session, claims);
        inner.shared.end_claim();
        if got < want {
            return outcome;
        }
    }
}

/// Starts a loop per claim; `Inner::start_loop` checks, after inserting it, that the
/// engine still runs under `session`, and otherwise makes the loop give its key back
/// without running.
fn start(inner: &Arc<Inner>, session: &Arc<Session>, claims: Vec<Claim>) {
    for claim in claims {
        let slot = Arc::new(LoopSlot::new(
            claim.key,
            claim.epoch,
            claim.trigger_seq.0,
            Arc::clone(session),
        ));
        inner.start_loop(slot);
    }
}

/// Re-reads what the backend says this node owns: wakes loops whose triggers were missed,
/// stops loops the node no longer owns, and starts loops for owned keys without one.
///
/// The answer may be stale by the time it arrives: a loop may have returned and released
/// its key meanwhile, and another node claimed it at a higher epoch (or it retired). So a
/// key listed without a loop is never started from the listing: it is claimed again with
/// `claim_key`, which answers with the current claim only if this node still owns the key
/// (or can take it now), atomically on the backend.
///
/// `false` if it failed and should be retried.
async fn resync_owned(inner: &Arc<Inner>) -> bool {
    let Some(session) = inner.current_session() else {
        return true;
    };
    let owned = match inner.coordinator.owned(&session.node.id).await {
        Ok(owned) => owned,
        Err(e) => {
            report_error(inner, &session, &e, "resync");
            return false;
        }
    };
    tracing::debug!(owned = owned.len(), "resync");
    let mut by_key: HashMap<_, _> = owned.into_iter().map(|c| (c.key.clone(), c)).collect();
    for slot in inner.shared.loops.all() {
        if !Arc::ptr_eq(&slot.session, &session) {
            continue;
        }
        // Only this task inserts slots, so every slot here existed before `owned` was
        // read: one missing from the answer, or at another epoch, is no longer ours.
        match by_key.remove(&slot.key) {
            Some(claim) if claim.epoch == slot.epoch => slot.note_trigger(claim.trigger_seq.0),
            _ => slot.signal_shutdown(ShutdownReason::OwnershipLost),
        }
    }
    if inner.config.defects.has(Defect::ResyncTrustsListing) {
        if inner.phase() == RUNNING {
            start(inner, &session, by_key.into_values().collect());
        }
        return true;
    }
    let mut ok = true;
    for key in by_key.into_keys() {
        if inner.phase() != RUNNING {
            return true;
        }
        inner.shared.begin_claim();
        let claimed = inner.coordinator.claim_key(&session.node.id, &key).await;
        match claimed {
            Ok(Some(claim)) => {
                tracing::debug!(key = %claim.key, epoch = claim.epoch.0, "resync: owned key without a loop");
                start(inner, &session, vec![claim]);
            }
            Ok(None) => {}
            Err(e) => {
                report_error(inner, &session, &e, "resync claim");
                ok = false;
            }
        }
        inner.shared.end_claim();
    }
    ok
}

fn report_error(inner: &Inner, session: &Session, error: &CoordinatorError, what: &str) {
    match error {
        CoordinatorError::LeaseExpired { .. } => {
            tracing::warn!(%error, "{what}: lease lost");
            inner.shared.report_lost(session.node.id);
        }
        _ => tracing::warn!(%error, "{what} failed"),
    }
}
