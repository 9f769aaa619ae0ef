//! What the cluster stores per node and per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use keyloop_core::{EventSink, NodeId, NodeInfo};
use tokio::sync::Notify;
use tokio::time::Instant;

/// `NodeEntry::expires_at` of a node that left or was reaped.
const GONE: u64 = 0;

/// One joined node.
pub(crate) struct NodeEntry {
    pub(crate) info: NodeInfo,
    pub(crate) sink: EventSink,
    /// The lease length granted at join; renewals reuse it.
    pub(crate) ttl: std::time::Duration,
    /// Lease expiry, in nanoseconds since the cluster's base instant; [`GONE`] once the
    /// node left or was reaped. Renewal and reaping are compare-and-swaps on this one word,
    /// so a heartbeat racing the expiry either renews a lease nobody reaped, or fails: it
    /// never renews a node whose keys another node has already taken.
    expires_at: AtomicU64,
    /// Test hook: heartbeats hang while set.
    pub(crate) stalled: AtomicBool,
    /// Test hook: events are dropped while set.
    pub(crate) crashed: AtomicBool,
    pub(crate) unstall: Notify,
}

impl NodeEntry {
    pub(crate) fn new(
        info: NodeInfo,
        sink: EventSink,
        ttl: std::time::Duration,
        expires_at: u64,
    ) -> NodeEntry {
        NodeEntry {
            info,
            sink,
            ttl,
            expires_at: AtomicU64::new(expires_at),
            stalled: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            unstall: Notify::new(),
        }
    }

    pub(crate) fn id(&self) -> NodeId {
        self.info.id
    }

    pub(crate) fn alive_at(&self, now: u64) -> bool {
        self.expires_at.load(Ordering::Acquire) > now
    }

    /// Left or reaped: owns nothing any more.
    pub(crate) fn is_gone(&self) -> bool {
        self.expires_at.load(Ordering::Acquire) == GONE
    }

    /// Renews the lease to `ttl` after the current time, read at the moment of the swap,
    /// if it has not expired; `false` if it had.
    pub(crate) fn renew(&self, now: impl Fn() -> u64, ttl: std::time::Duration) -> bool {
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        self.expires_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let now = now();
                (current > now).then(|| now.saturating_add(ttl).max(current))
            })
            .is_ok()
    }

    /// Marks the node gone if its lease has expired at `now` (or it is gone already);
    /// `true` if it is gone now. Whoever takes an expired node's keys calls this first.
    pub(crate) fn reap_if_expired(&self, now: u64) -> bool {
        self.expires_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != GONE && current <= now).then_some(GONE)
            })
            .is_ok()
            || self.is_gone()
    }

    /// Marks the node gone (it left).
    pub(crate) fn leave(&self) {
        self.expires_at.store(GONE, Ordering::Release);
    }

    pub(crate) fn send(&self, event: keyloop_core::CoordinatorEvent) {
        if !self.crashed.load(Ordering::Acquire) {
            self.sink.send(event);
        }
    }
}

/// Rarely used per-key fields, boxed to keep the common record small.
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) state: Option<Bytes>,
    pub(crate) parked: Option<String>,
    /// Nodes that released the key with `Continue`, and until when they pass it over. A
    /// set, so that a key every node hands on visits each at most once per window
    /// instead of bouncing between two.
    pub(crate) avoid: Vec<(NodeId, Instant)>,
    /// When the sleeping key falls due (`Release::Sleep`).
    pub(crate) wake: Option<Wake>,
}

/// A sleeping key's wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wake {
    /// On the cluster's clock, in nanoseconds since its base instant.
    pub(crate) due: u64,
    /// The same instant on the wall clock, for status.
    pub(crate) wall: std::time::SystemTime,
}

/// One registered key.
#[derive(Default)]
pub(crate) struct KeyRecord {
    pub(crate) owner: Option<Arc<NodeEntry>>,
    /// Epoch of the latest acquisition (0: never owned).
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) extra: Option<Box<Extra>>,
    /// Whether the key sits in the pending queue.
    pub(crate) queued: bool,
}

impl KeyRecord {
    pub(crate) fn live_owner(&self, now: u64) -> Option<&Arc<NodeEntry>> {
        self.owner.as_ref().filter(|o| o.alive_at(now))
    }

    /// Whether the key's owner (if any) is gone for good — reaping it if its lease has
    /// expired, so that its heartbeat can no longer renew it. Claims decide with this, not
    /// with [`live_owner`](Self::live_owner), which a racing heartbeat could overturn.
    pub(crate) fn owner_gone(&self, now: u64) -> bool {
        self.owner.as_ref().is_none_or(|o| o.reap_if_expired(now))
    }

    pub(crate) fn parked(&self) -> Option<&String> {
        self.extra.as_ref().and_then(|e| e.parked.as_ref())
    }

    pub(crate) fn set_parked(&mut self, error: Option<String>) {
        if error.is_none() && self.extra.is_none() {
            return;
        }
        self.extra.get_or_insert_with(Default::default).parked = error;
        self.shrink_extra();
    }

    pub(crate) fn avoided_by(&self, node: NodeId, now: Instant) -> bool {
        self.extra.as_ref().is_some_and(|e| {
            e.avoid
                .iter()
                .any(|&(avoid, until)| avoid == node && now < until)
        })
    }

    /// Adds `node` to the nodes passing the key over until `until`, dropping lapsed ones.
    pub(crate) fn add_avoid(&mut self, node: NodeId, until: Instant, now: Instant) {
        let extra = self.extra.get_or_insert_with(Default::default);
        extra.avoid.retain(|&(n, u)| n != node && now < u);
        extra.avoid.push((node, until));
    }

    /// Drops lapsed avoid entries.
    pub(crate) fn prune_avoid(&mut self, now: Instant) {
        if let Some(extra) = &mut self.extra {
            extra.avoid.retain(|&(_, until)| now < until);
        }
        self.shrink_extra();
    }

    pub(crate) fn state(&self) -> Option<&Bytes> {
        self.extra.as_ref().and_then(|e| e.state.as_ref())
    }

    pub(crate) fn set_state(&mut self, state: Bytes) {
        self.extra.get_or_insert_with(Default::default).state = Some(state);
    }

    pub(crate) fn wake(&self) -> Option<Wake> {
        self.extra.as_ref().and_then(|e| e.wake)
    }

    /// Sets or clears the wake-up (the caller keeps the cluster's sleeping index in step).
    pub(crate) fn set_wake(&mut self, wake: Option<Wake>) {
        if wake.is_none() && self.extra.is_none() {
            return;
        }
        self.extra.get_or_insert_with(Default::default).wake = wake;
        self.shrink_extra();
    }

    fn shrink_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| {
            e.state.is_none() && e.parked.is_none() && e.avoid.is_empty() && e.wake.is_none()
        }) {
            self.extra = None;
        }
    }
}
