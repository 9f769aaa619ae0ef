//! The hand-rolled peer: a global `Mutex<HashMap<Key, Arc<Notify>>>` and one tokio task
//! per key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keyloop_core::Key;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Baseline {
    pub(crate) map: Mutex<HashMap<Key, Arc<Notify>>>,
    pub(crate) wakeups: AtomicU64,
    pub(crate) completed: AtomicU64,
}

impl Baseline {
    /// Starts an idle loop for `key` that counts wake-ups until `stop` is notified.
    pub(crate) fn start_idle(self: &Arc<Self>, key: Key) {
        let notify = Arc::new(Notify::new());
        self.map.lock().unwrap().insert(key, Arc::clone(&notify));
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                me.wakeups.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Starts a loop for `key` that completes at once and leaves the map.
    pub(crate) fn start_and_complete(self: &Arc<Self>, key: Key) {
        let notify = Arc::new(Notify::new());
        self.map.lock().unwrap().insert(key.clone(), notify);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.map.lock().unwrap().remove(&key);
            me.completed.fetch_add(1, Ordering::Relaxed);
        });
    }

    pub(crate) fn trigger(&self, key: &Key) {
        if let Some(notify) = self.map.lock().unwrap().get(key) {
            notify.notify_one();
        }
    }
}
