//! The task that takes pending keys up to `max_loops`, and re-reads ownership after a
//! notification gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::engine::{Inner, RUNNING};
use crate::slot::{LoopSlot, Session};
use crate::{Claim, CoordinatorError, Release, ShutdownReason};

pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        let resync = tokio::select! {
            _ = inner.stop_claims.cancelled() => return,
            _ = inner.shared.claim_wake.notified() => false,
            _ = inner.shared.resync_wake.notified() => true,
            _ = tokio::time::sleep(inner.config.claim_interval) => false,
        };
        if resync {
            resync_owned(&inner).await;
        }
        claim_round(&inner).await;
    }
}

async fn claim_round(inner: &Arc<Inner>) {
    loop {
        if inner.phase() != RUNNING {
            return;
        }
        let Some(session) = inner.current_session() else {
            return;
        };
        let owned = inner.owned.load(Ordering::Acquire);
        let capacity = inner.config.max_loops.saturating_sub(owned);
        if capacity == 0 {
            return;
        }
        let want = capacity.min(inner.config.claim_batch);
        inner.shared.begin_claim();
        let result = inner.coordinator.claim(&session.node.id, want).await;
        let claims = match result {
            Ok(claims) => claims,
            Err(e) => {
                inner.shared.end_claim();
                report_error(inner, &e, "claim");
                return;
            }
        };
        let got = claims.len();
        start_or_return(inner, &session, claims).await;
        inner.shared.end_claim();
        if got < want {
            return;
        }
    }
}

async fn start_or_return(inner: &Arc<Inner>, session: &Arc<Session>, claims: Vec<Claim>) {
    let current = inner
        .current_session()
        .is_some_and(|s| Arc::ptr_eq(&s, session));
    for claim in claims {
        if inner.phase() != RUNNING || !current {
            // Shutting down (or fenced) while the claim was in flight: give the key back
            // untouched so another node takes it.
            let _ = inner
                .coordinator
                .release(
                    &session.node.id,
                    &claim.key,
                    claim.epoch,
                    Release::Continue {
                        avoid_for: Duration::ZERO,
                    },
                )
                .await;
            continue;
        }
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
async fn resync_owned(inner: &Arc<Inner>) {
    let Some(session) = inner.current_session() else {
        return;
    };
    let owned = match inner.coordinator.owned(&session.node.id).await {
        Ok(owned) => owned,
        Err(e) => {
            report_error(inner, &e, "resync");
            // Try again on the next round.
            inner.shared.resync_wake.notify_one();
            return;
        }
    };
    tracing::debug!(owned = owned.len(), "resync");
    let mut by_key: HashMap<_, _> = owned.into_iter().map(|c| (c.key.clone(), c)).collect();
    for slot in inner.shared.loops.all() {
        if !Arc::ptr_eq(&slot.session, &session) {
            continue;
        }
        match by_key.remove(&slot.key) {
            Some(claim) if claim.epoch == slot.epoch => slot.note_trigger(claim.trigger_seq.0),
            _ => slot.signal_shutdown(ShutdownReason::OwnershipLost),
        }
    }
    if inner.phase() == RUNNING {
        start_or_return(inner, &session, by_key.into_values().collect()).await;
    }
}

fn report_error(inner: &Inner, error: &CoordinatorError, what: &str) {
    match error {
        CoordinatorError::LeaseExpired { .. } => {
            tracing::warn!(%error, "{what}: lease lost");
            inner.shared.lost_wake.notify_one();
        }
        _ => tracing::warn!(%error, "{what} failed"),
    }
}
