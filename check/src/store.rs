//! A [`FencedStore`]: the external system a reconcile loop writes to, fenced by epoch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyloop_core::{Epoch, Key};

use crate::{EventKind, Recorder, RunId};

/// An external store that accepts a write for a key only when its epoch is at least the
/// highest epoch accepted for that key so far, and records every write (and whether it was
/// accepted) in a [`Recorder`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FencedStore {
    recorder: Recorder,
    keys: Arc<Mutex<HashMap<Key, Entry>>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    highest: u64,
    value: u64,
}

impl FencedStore {
    /// An empty store recording into `recorder`.
    pub fn new(recorder: Recorder) -> FencedStore {
        FencedStore {
            recorder,
            keys: Arc::default(),
        }
    }

    /// Writes `value` for `key` fenced by `epoch`; `true` if accepted.
    pub fn write(&self, key: &Key, epoch: Epoch, value: u64, run: Option<RunId>) -> bool {
        let mut keys = self.keys.lock().unwrap();
        let accepted = keys.get(key).is_none_or(|e| epoch.0 >= e.highest);
        if accepted {
            keys.insert(
                key.clone(),
                Entry {
                    highest: epoch.0,
                    value,
                },
            );
        }
        // Recorded under the store's lock, so the history orders writes as the store did.
        self.recorder.record(
            key,
            EventKind::ExternalWrite {
                run,
                epoch: epoch.0,
                value,
                accepted,
            },
        );
        accepted
    }

    /// The value last accepted for `key`.
    pub fn read(&self, key: &Key) -> Option<u64> {
        self.keys.lock().unwrap().get(key).map(|e| e.value)
    }

    /// The highest epoch accepted for `key`.
    pub fn highest_epoch(&self, key: &Key) -> Option<Epoch> {
        self.keys.lock().unwrap().get(key).map(|e| Epoch(e.highest))
    }
}
