//! The lease keeper: renews the node's lease, self-fences before it can expire, and joins
//! again under a new node id after the lease is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::clock::{LeaseNanos, saturating_nanos};
use crate::engine::{Inner, RUNNING};
use crate::slot::Session;
use crate::{CoordinatorError, ShutdownReason};

/// The last successful renewal of an incarnation: when its request was *sent*, on the
/// lease clock, and the TTL the backend granted. The backend received the request after
/// `sent`, so it cannot expire the lease before `sent + ttl`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewal {
    pub(crate) sent: LeaseNanos,
    pub(crate) ttl: Duration,
}

impl Renewal {
    /// After this the incarnation stops its loops: `margin` before the lease could expire.
    pub(crate) fn fence_at(&self, margin: Duration) -> LeaseNanos {
        self.sent
            .saturating_add(saturating_nanos(self.ttl.saturating_sub(margin)))
    }

    /// After this loops that ignored the fence are aborted: strictly before the backend can
    /// expire the lease (`margin / 2` before it).
    pub(crate) fn hard_deadline(&self, margin: Duration) -> LeaseNanos {
        self.sent
            .saturating_add(saturating_nanos(self.ttl.saturating_sub(margin / 2)))
    }
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
        let lost = renew_until_lost(&inner, &session).await;
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

/// Renews until the lease is lost (returns the lease-clock time by which every loop must be
/// gone) or the engine stops (`None`).
async fn renew_until_lost(inner: &Inner, session: &Session) -> Option<LeaseNanos> {
    let interval = inner.config.heartbeat_interval;
    let margin = inner.config.fence_margin;
    let clock = inner.clock;
    let mut renewal = *inner.renewal.lock().unwrap();
    let mut next_beat = renewal.sent.saturating_add(saturating_nanos(interval));
    loop {
        let fence_at = renewal.fence_at(margin);
        if clock.now() >= fence_at {
            tracing::error!(?margin, "lease not renewed in time: stopping every loop");
            return Some(renewal.hard_deadline(margin));
        }
        tokio::select! {
            _ = inner.stop_lease.cancelled() => return None,
            _ = inner.shared.lost.wait(session.node.id) => {
                tracing::error!("backend reports every ownership lost");
                return Some(clock.now());
            }
            // Timers follow the monotonic clock; a wake-up re-reads the lease clock, which
            // also counts a suspend of the machine.
            _ = sleep_until(clock.instant_of(fence_at)) => continue,
            _ = sleep_until(clock.instant_of(next_beat)) => {}
        }
        if clock.now() >= fence_at {
            continue;
        }
        let sent = clock.now();
        let outcome = tokio::select! {
            _ = inner.stop_lease.cancelled() => return None,
            outcome = tokio::time::timeout(interval, inner.coordinator.heartbeat(&session.node.id)) => outcome,
            _ = sleep_until(clock.instant_of(fence_at)) => continue,
        };
        match outcome {
            Ok(Ok(lease)) => {
                if lease.ttl < renewal.ttl {
                    tracing::warn!(granted = ?lease.ttl, before = ?renewal.ttl, "backend renewed the lease for less than before");
                }
                renewal = Renewal {
                    sent,
                    ttl: lease.ttl,
                };
                *inner.renewal.lock().unwrap() = renewal;
                session.renewed(renewal.fence_at(margin));
                next_beat = sent.saturating_add(saturating_nanos(interval));
            }
            Ok(Err(CoordinatorError::LeaseExpired { .. })) => {
                tracing::error!("lease expired on the backend: stopping every loop");
                return Some(clock.now());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "heartbeat failed: retrying");
                next_beat = clock.now().saturating_add(saturating_nanos(interval / 4));
            }
            Err(_) => {
                tracing::warn!(?interval, "heartbeat timed out: retrying");
                next_beat = clock.now();
            }
        }
    }
}

/// Stops every loop of `session`, and aborts those still running at `hard_deadline`.
///
/// When the deadline has already passed (the process was frozen past its lease, or the
/// backend says the lease is gone), loops still get `fence_margin / 2` to see their signal
/// before they are aborted: the lease is gone either way, and a loop that sees the signal
/// can stop cleanly instead of being cut off mid-step.
async fn fence(inner: &Inner, session: &Session, hard_deadline: LeaseNanos) {
    // First, so that loops judging the lease synchronously stop acting at once.
    session.expire();
    // Cleared before the snapshot, so that the claimer takes nothing more under this
    // incarnation: a loop it inserts from now on sees the change and stops unrun (see
    // `Inner::start_loop`). The next incarnation starts only after this returns.
    *inner.session.write().unwrap() = None;
    inner.shared.draining.store(true, Ordering::Release);
    for slot in inner.shared.loops.all() {
        slot.signal_shutdown(ShutdownReason::OwnershipLost);
    }
    let clock = inner.clock;
    let floor = clock
        .now()
        .saturating_add(saturating_nanos(inner.config.fence_margin / 2));
    let deadline = clock.instant_of(hard_deadline.max(floor));
    inner.wait_for_loops(deadline).await;
    let left = inner.shared.loops.all();
    for slot in &left {
        tracing::error!(key = %slot.key, node = %session.node.id, "loop still running at lease expiry: aborted");
        slot.abort();
    }
    let stuck = inner
        .wait_for_ended(left.clone(), Instant::now() + inner.config.abandon_timeout)
        .await;
    for slot in &stuck {
        tracing::error!(key = %slot.key, node = %session.node.id, "aborted loop did not end: it may still run after the lease expired");
    }
    for slot in &left {
        inner.finish_slot(slot);
    }
    if inner.phase() == RUNNING {
        inner.shared.draining.store(false, Ordering::Release);
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
        let joined = tokio::time::timeout(interval, inner.join(&session)).await;
        match joined {
            Ok(Ok(renewal)) => {
                tracing::info!(node = %session.node.id, "joined again after losing the lease");
                *inner.renewal.lock().unwrap() = renewal;
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
