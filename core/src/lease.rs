//! The lease keeper: renews the node's lease, self-fences before it can expire, and joins
//! again under a new node id after the lease is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::engine::{Inner, RUNNING};
use crate::slot::Session;
use crate::{CoordinatorError, ShutdownReason};

/// When the current lease was last renewed (send time of the request) and for how long.
/// Kept in the engine, not in the keeper task, so that a keeper restarted by the supervisor
/// after a panic fences on the same deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseClock {
    pub(crate) last_ok: Instant,
    pub(crate) ttl: Duration,
}

/// Runs as the engine's supervised `lease` service.
pub(crate) async fn keep(inner: Arc<Inner>) {
    loop {
        let Some(session) = inner.current_session() else {
            // A previous keeper fenced this incarnation and did not get to join again.
            if !rejoin(&inner).await {
                return;
            }
            continue;
        };
        let mut clock = *inner.lease_clock.lock().unwrap();
        let lost = renew_until_lost(&inner, &session, &mut clock).await;
        let Some(hard_deadline) = lost else {
            return;
        };
        fence(&inner, &session, hard_deadline).await;
        let interval = inner.config.heartbeat_interval;
        if tokio::time::timeout(interval, inner.coordinator.leave(&session.node.id))
            .await
            .is_err()
        {
            tracing::warn!("leave timed out; the old lease will expire");
        }
        if !rejoin(&inner).await {
            return;
        }
    }
}

/// Renews until the lease is lost (returns the instant by which every loop must be gone)
/// or the engine stops (`None`).
async fn renew_until_lost(
    inner: &Inner,
    session: &Session,
    clock: &mut LeaseClock,
) -> Option<Instant> {
    let interval = inner.config.heartbeat_interval;
    let margin = inner.config.fence_margin;
    let mut next_beat = clock.last_ok + interval;
    loop {
        let LeaseClock { last_ok, ttl } = *clock;
        let fence_at = last_ok + ttl.saturating_sub(margin);
        tokio::select! {
            _ = inner.stop_lease.cancelled() => return None,
            _ = inner.shared.lost_wake.notified() => {
                tracing::error!("backend reports every ownership lost");
                return Some(Instant::now());
            }
            _ = sleep_until(fence_at) => {
                tracing::error!(?margin, "lease not renewed in time: stopping every loop");
                return Some(hard_deadline(last_ok, ttl, margin));
            }
            _ = sleep_until(next_beat) => {}
        }
        let sent = Instant::now();
        let outcome = tokio::select! {
            _ = inner.stop_lease.cancelled() => return None,
            outcome = tokio::time::timeout(interval, inner.coordinator.heartbeat(&session.node.id)) => outcome,
            _ = sleep_until(fence_at) => {
                tracing::error!(?margin, "lease not renewed in time: stopping every loop");
                return Some(hard_deadline(last_ok, ttl, margin));
            }
        };
        match outcome {
            Ok(Ok(lease)) => {
                *clock = LeaseClock {
                    last_ok: sent,
                    ttl: lease.ttl,
                };
                *inner.lease_clock.lock().unwrap() = *clock;
                next_beat = sent + interval;
            }
            Ok(Err(CoordinatorError::LeaseExpired { .. })) => {
                tracing::error!("lease expired on the backend: stopping every loop");
                return Some(Instant::now());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "heartbeat failed: retrying");
                next_beat = Instant::now() + interval / 4;
            }
            Err(_) => {
                tracing::warn!(?interval, "heartbeat timed out: retrying");
                next_beat = Instant::now();
            }
        }
    }
}

/// When loops that ignored the fence are aborted: strictly before the backend can expire
/// the lease (it measures from when it received the heartbeat, which is after `last_ok`).
fn hard_deadline(last_ok: Instant, ttl: Duration, margin: Duration) -> Instant {
    last_ok + ttl.saturating_sub(margin / 2)
}

/// Stops every loop of `session`, and aborts those still running at `hard_deadline`.
async fn fence(inner: &Inner, session: &Session, hard_deadline: Instant) {
    // Cleared first, so that the claimer takes nothing more under this incarnation (a claim
    // in flight is given back untouched). Every loop now belongs to it: the next
    // incarnation starts only after this returns.
    *inner.session.write().unwrap() = None;
    inner
        .shared
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    for slot in inner.shared.loops.all() {
        slot.signal_shutdown(ShutdownReason::OwnershipLost);
    }
    inner.wait_for_loops(hard_deadline).await;
    for slot in inner.shared.loops.all() {
        tracing::error!(key = %slot.key, node = %session.node.id, "loop still running at lease expiry: aborted");
        slot.abort();
        inner.finish_slot(&slot);
    }
    if inner.phase() == RUNNING {
        inner
            .shared
            .draining
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Joins under a new node id, retrying with backoff; `false` if the engine stops first.
async fn rejoin(inner: &Inner) -> bool {
    let interval = inner.config.heartbeat_interval;
    let mut attempt = 0;
    loop {
        if inner.phase() != RUNNING || inner.stop_lease.is_cancelled() {
            return false;
        }
        let session = inner.new_session();
        let sent = Instant::now();
        let joined = tokio::time::timeout(
            interval,
            inner
                .coordinator
                .join(&session.node, inner.config.lease_ttl, inner.shared.sink()),
        )
        .await;
        match joined {
            Ok(Ok(lease)) => {
                tracing::info!(node = %session.node.id, "joined again after losing the lease");
                *inner.lease_clock.lock().unwrap() = LeaseClock {
                    last_ok: sent,
                    ttl: lease.ttl,
                };
                *inner.session.write().unwrap() = Some(session);
                inner.shared.claim_wake.notify_one();
                return true;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "join failed: retrying"),
            Err(_) => tracing::warn!("join timed out: retrying"),
        }
        let delay = inner
            .config
            .restart_backoff
            .delay(attempt)
            .max(interval / 4);
        attempt += 1;
        tokio::select! {
            _ = inner.stop_lease.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
