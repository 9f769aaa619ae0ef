//! A node driven by hand through the `Coordinator` trait, for cases that check the
//! backend's atomic operations without an engine in between.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{Coordinator, CoordinatorEvent, EventSink, NodeId, NodeInfo};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// A joined node without an engine: the case calls the coordinator itself.
pub struct DirectNode {
    /// The node's identity.
    pub info: NodeInfo,
    /// Its coordinator.
    pub coordinator: Arc<dyn Coordinator>,
    events: Arc<Mutex<Vec<CoordinatorEvent>>>,
    changed: Arc<watch::Sender<u64>>,
    keepalive: Mutex<Option<AbortHandle>>,
}

impl Drop for DirectNode {
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}

impl DirectNode {
    /// Joins a new node named `name` with lease `ttl` on `coordinator`.
    pub async fn join(coordinator: Arc<dyn Coordinator>, name: &str, ttl: Duration) -> DirectNode {
        let info = NodeInfo {
            id: NodeId::random(),
            name: name.to_string(),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(watch::channel(0u64).0);
        let sink = {
            let events = Arc::clone(&events);
            let changed = Arc::clone(&changed);
            EventSink::new(move |event| {
                events.lock().unwrap().push(event);
                changed.send_modify(|n| *n += 1);
            })
        };
        coordinator
            .join(&info, ttl, sink)
            .await
            .unwrap_or_else(|e| panic!("node {name} could not join: {e}"));
        DirectNode {
            info,
            coordinator,
            events,
            changed,
            keepalive: Mutex::new(None),
        }
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.info.id
    }

    /// Renews the lease every `every` in the background until dropped or
    /// [`stop_heartbeats`](Self::stop_heartbeats).
    pub fn keep_alive(&self, every: Duration) {
        let coordinator = Arc::clone(&self.coordinator);
        let id = self.info.id;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if coordinator.heartbeat(&id).await.is_err() {
                    return;
                }
            }
        });
        if let Some(old) = self.keepalive.lock().unwrap().replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// Stops the background heartbeats (the node "crashes").
    pub fn stop_heartbeats(&self) {
        if let Some(task) = self.keepalive.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Every event delivered so far.
    pub fn events(&self) -> Vec<CoordinatorEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until some delivered event satisfies `wanted`; panics after `timeout`.
    pub async fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&CoordinatorEvent) -> bool,
    ) {
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                if self.events.lock().unwrap().iter().any(&wanted) {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "timed out after {timeout:?} waiting for {what}; node {} got events {:?}",
                self.info.name,
                self.events()
            );
        }
    }
}
