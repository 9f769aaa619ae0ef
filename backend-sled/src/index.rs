//! In-memory hints that keep claims from scanning the whole registry: which keys may be
//! claimable, and which keys each node owns (so a dead node's keys become claimable
//! without a scan). Built from the records when the store opens.
//!
//! Hints only: every claim re-reads the durable record under the key's stripe lock before
//! taking it, and drops hints that turn out stale. Updated under the key's stripe lock,
//! after the record is written, so a key is never missing from `free` while claimable.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

use keyloop_core::{Key, NodeId};

#[derive(Default)]
struct Inner {
    /// Registered, unparked keys not owned by anyone (or owned by a node since dead).
    free: BTreeSet<Key>,
    /// What each node acquired and has not released.
    owned: HashMap<NodeId, HashSet<Key>>,
    /// Sleeping keys by wake-up time (Unix nanoseconds): not free until due.
    sleeping: BTreeSet<(u64, Key)>,
}

#[derive(Default)]
pub(crate) struct Index {
    inner: Mutex<Inner>,
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key is registered, unowned and not parked.
    pub(crate) fn set_free(&self, key: &Key) {
        self.lock().free.insert(key.clone());
    }

    /// The key turned out not to be claimable (a stale hint).
    pub(crate) fn drop_free(&self, key: &Key) {
        self.lock().free.remove(key);
    }

    /// The key is retired or parked: neither free nor owned by `owner`.
    pub(crate) fn remove(&self, key: &Key, owner: Option<NodeId>) {
        let mut inner = self.lock();
        inner.free.remove(key);
        if let Some(owner) = owner {
            Self::unown(&mut inner, &owner, key);
        }
    }

    /// `node` acquired the key from `previous` (if any).
    pub(crate) fn acquired(&self, key: &Key, node: NodeId, previous: Option<NodeId>) {
        let mut inner = self.lock();
        inner.free.remove(key);
        if let Some(previous) = previous {
            Self::unown(&mut inner, &previous, key);
        }
        inner.owned.entry(node).or_default().insert(key.clone());
    }

    /// `node` released the key, which stays registered and claimable.
    pub(crate) fn released(&self, key: &Key, node: NodeId) {
        let mut inner = self.lock();
        Self::unown(&mut inner, &node, key);
        inner.free.insert(key.clone());
    }

    /// `node` put the key to sleep until `at`: neither free nor owned until then.
    pub(crate) fn sleep(&self, key: &Key, node: NodeId, at: u64) {
        let mut inner = self.lock();
        Self::unown(&mut inner, &node, key);
        inner.free.remove(key);
        inner.sleeping.insert((at, key.clone()));
    }

    /// A sleeping key (found sleeping at open).
    pub(crate) fn set_sleeping(&self, key: &Key, at: u64) {
        self.lock().sleeping.insert((at, key.clone()));
    }

    /// The key's wake-up at `at` is dropped (triggered, claimed or retired).
    pub(crate) fn unsleep(&self, key: &Key, at: u64) {
        self.lock().sleeping.remove(&(at, key.clone()));
    }

    /// Moves every sleeping key due at `now` to the free set.
    pub(crate) fn wake_due(&self, now: u64) {
        let mut inner = self.lock();
        while let Some((at, _)) = inner.sleeping.first() {
            if *at > now {
                break;
            }
            let (_, key) = inner.sleeping.pop_first().expect("first exists");
            inner.free.insert(key);
        }
    }

    /// The earliest wake-up still pending.
    pub(crate) fn next_wake(&self) -> Option<u64> {
        self.lock().sleeping.first().map(|(at, _)| *at)
    }

    fn unown(inner: &mut Inner, node: &NodeId, key: &Key) {
        if let Some(keys) = inner.owned.get_mut(node) {
            keys.remove(key);
            if keys.is_empty() {
                inner.owned.remove(node);
            }
        }
    }

    /// Makes the keys of every node `alive` rejects claimable; whether any moved.
    pub(crate) fn free_dead(&self, alive: impl Fn(&NodeId) -> bool) -> bool {
        let mut inner = self.lock();
        let dead: Vec<NodeId> = inner.owned.keys().filter(|n| !alive(n)).copied().collect();
        let mut moved = false;
        for node in dead {
            if let Some(keys) = inner.owned.remove(&node) {
                moved |= !keys.is_empty();
                inner.free.extend(keys);
            }
        }
        moved
    }

    /// Up to `limit` free keys after `after`, in key order.
    pub(crate) fn candidates(&self, after: Option<&Key>, limit: usize) -> Vec<Key> {
        let inner = self.lock();
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        inner
            .free
            .range::<Key, _>((start, Bound::Unbounded))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The keys `node` acquired and has not released.
    pub(crate) fn owned_by(&self, node: &NodeId) -> Vec<Key> {
        self.lock()
            .owned
            .get(node)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[test]
    fn keys_move_between_free_and_owned() {
        let index = Index::default();
        let (a, b) = (NodeId::random(), NodeId::random());
        for name in ["c", "a", "b"] {
            index.set_free(&k(name));
        }
        assert_eq!(index.candidates(None, 10), vec![k("a"), k("b"), k("c")]);
        assert_eq!(index.candidates(Some(&k("a")), 1), vec![k("b")]);
        index.acquired(&k("a"), a, None);
        index.acquired(&k("b"), a, None);
        assert_eq!(index.candidates(None, 10), vec![k("c")]);
        index.acquired(&k("b"), b, Some(a));
        assert_eq!(index.owned_by(&a), vec![k("a")]);
        assert_eq!(index.owned_by(&b), vec![k("b")]);
        index.released(&k("b"), b);
        assert!(index.owned_by(&b).is_empty());
        index.remove(&k("c"), None);
        assert_eq!(index.candidates(None, 10), vec![k("b")]);
        index.remove(&k("a"), Some(a));
        assert!(index.owned_by(&a).is_empty());
    }

    #[test]
    fn dead_nodes_keys_become_free() {
        let index = Index::default();
        let (a, b) = (NodeId::random(), NodeId::random());
        index.acquired(&k("x"), a, None);
        index.acquired(&k("y"), b, None);
        assert!(index.free_dead(|n| *n == b));
        assert_eq!(index.candidates(None, 10), vec![k("x")]);
        assert!(!index.free_dead(|n| *n == b), "nothing left to move");
        assert_eq!(index.owned_by(&b), vec![k("y")]);
    }
}
