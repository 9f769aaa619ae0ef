//! The in-process node table: leases and event sinks. Leases are deliberately not durable:
//! after a restart every node from before is dead, so all keys become claimable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use keyloop_core::{CoordinatorEvent, EventSink, Key, NodeId, NodeInfo, NodeSnapshot};
use tokio::time::Instant;

struct Entry {
    name: String,
    sink: EventSink,
    expires: Instant,
    ttl: Duration,
    /// Keys this node released with `Continue { avoid_for }`, and until when it is passed over.
    avoid: HashMap<Key, Instant>,
}

/// Live membership, measured with tokio's clock so paused-time tests drive expiry.
///
/// Once a node's lease has expired it never becomes alive again (a heartbeat then fails),
/// which is what lets the coordinator check liveness before taking a per-key lock.
#[derive(Default)]
pub(crate) struct Nodes {
    map: Mutex<HashMap<NodeId, Entry>>,
}

/// Events to send once no lock is held.
#[derive(Default)]
#[must_use = "events must be sent"]
pub(crate) struct Outbox(Vec<(EventSink, CoordinatorEvent)>);

impl Outbox {
    pub(crate) fn send(self) {
        for (sink, event) in self.0 {
            sink.send(event);
        }
    }
}

impl Nodes {
    pub(crate) fn join(&self, node: &NodeInfo, ttl: Duration, sink: EventSink) {
        let entry = Entry {
            name: node.name.clone(),
            sink,
            expires: Instant::now() + ttl,
            ttl,
            avoid: HashMap::new(),
        };
        self.map.lock().unwrap().insert(node.id, entry);
    }

    /// Renews the lease; `None` if the node is unknown or its lease already expired (it is
    /// then forgotten).
    pub(crate) fn heartbeat(&self, node: &NodeId) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        let entry = map.get_mut(node)?;
        if entry.expires <= now {
            map.remove(node);
            return None;
        }
        entry.expires = now + entry.ttl;
        Some(entry.ttl)
    }

    /// Removes the node; whether it was known.
    pub(crate) fn leave(&self, node: &NodeId) -> bool {
        self.map.lock().unwrap().remove(node).is_some()
    }

    pub(crate) fn is_alive(&self, node: &NodeId) -> bool {
        let now = Instant::now();
        self.map
            .lock()
            .unwrap()
            .get(node)
            .is_some_and(|e| e.expires > now)
    }

    pub(crate) fn avoid(&self, node: &NodeId, key: Key, until: Instant) {
        if let Some(entry) = self.map.lock().unwrap().get_mut(node) {
            entry.avoid.insert(key, until);
        }
    }

    /// The keys `node` must not claim yet (forgetting the ones whose time has passed).
    pub(crate) fn avoided(&self, node: &NodeId) -> HashMap<Key, Instant> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        match map.get_mut(node) {
            Some(entry) => {
                entry.avoid.retain(|_, until| *until > now);
                entry.avoid.clone()
            }
            None => HashMap::new(),
        }
    }

    /// Queues `event` for `node` if it is alive.
    pub(crate) fn to_node(&self, node: &NodeId, event: CoordinatorEvent, out: &mut Outbox) {
        let now = Instant::now();
        let map = self.map.lock().unwrap();
        if let Some(entry) = map.get(node).filter(|e| e.expires > now) {
            out.0.push((entry.sink.clone(), event));
        }
    }

    /// Queues `event` for every live node.
    pub(crate) fn to_all(&self, event: CoordinatorEvent, out: &mut Outbox) {
        let now = Instant::now();
        let map = self.map.lock().unwrap();
        for entry in map.values().filter(|e| e.expires > now) {
            out.0.push((entry.sink.clone(), event.clone()));
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<NodeSnapshot> {
        let now = Instant::now();
        let mut nodes: Vec<NodeSnapshot> = self
            .map
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| NodeSnapshot {
                id: *id,
                name: e.name.clone(),
                alive: e.expires > now,
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        nodes
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    fn recording() -> (EventSink, Arc<StdMutex<Vec<CoordinatorEvent>>>) {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let sink = {
            let seen = Arc::clone(&seen);
            EventSink::new(move |e| seen.lock().unwrap().push(e))
        };
        (sink, seen)
    }

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::random(),
            name: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_after_ttl_and_never_revives() {
        let nodes = Nodes::default();
        let a = info("a");
        nodes.join(&a, Duration::from_secs(3), EventSink::discard());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(nodes.heartbeat(&a.id), Some(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(nodes.is_alive(&a.id));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!nodes.is_alive(&a.id));
        assert_eq!(nodes.heartbeat(&a.id), None);
        assert!(!nodes.is_alive(&a.id));
        assert!(nodes.snapshot().is_empty(), "expired node is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn events_go_to_live_nodes_only() {
        let nodes = Nodes::default();
        let (a, b) = (info("a"), info("b"));
        let (sink_a, seen_a) = recording();
        let (sink_b, seen_b) = recording();
        nodes.join(&a, Duration::from_secs(1), sink_a);
        nodes.join(&b, Duration::from_secs(5), sink_b);
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut out = Outbox::default();
        nodes.to_all(CoordinatorEvent::KeysAvailable, &mut out);
        nodes.to_node(&a.id, CoordinatorEvent::Resync, &mut out);
        out.send();
        assert!(seen_a.lock().unwrap().is_empty());
        assert_eq!(
            *seen_b.lock().unwrap(),
            vec![CoordinatorEvent::KeysAvailable]
        );
        let snap = nodes.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap.iter().filter(|n| n.alive).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn avoidance_expires() {
        let nodes = Nodes::default();
        let a = info("a");
        nodes.join(&a, Duration::from_secs(10), EventSink::discard());
        let key = Key::new("k").unwrap();
        nodes.avoid(&a.id, key.clone(), Instant::now() + Duration::from_secs(1));
        assert!(nodes.avoided(&a.id).contains_key(&key));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(nodes.avoided(&a.id).is_empty());
    }
}
