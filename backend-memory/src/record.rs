//! What the cluster stores per node and per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use keyloop_core::{EventSink, NodeId, NodeInfo};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One joined node.
pub(crate) struct NodeEntry {
    pub(crate) info: NodeInfo,
    pub(crate) sink: EventSink,
    /// The lease length granted at join; renewals reuse it.
    pub(crate) ttl: std::time::Duration,
    /// Lease expiry, in nanoseconds since the cluster's base instant.
    expires_at: AtomicU64,
    /// Left gracefully or reaped after expiry: owns nothing any more.
    pub(crate) gone: AtomicBool,
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
            gone: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            unstall: Notify::new(),
        }
    }

    pub(crate) fn id(&self) -> NodeId {
        self.info.id
    }

    pub(crate) fn alive_at(&self, now: u64) -> bool {
        !self.gone.load(Ordering::Acquire) && self.expires_at.load(Ordering::Acquire) > now
    }

    pub(crate) fn renew(&self, expires_at: u64) {
        self.expires_at.store(expires_at, Ordering::Release);
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

    fn shrink_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.state.is_none() && e.parked.is_none() && e.avoid.is_empty())
        {
            self.extra = None;
        }
    }
}
