//! The [`Recorder`]: a cheap-clone, thread-safe log of [`Event`]s on one clock.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyloop_core::Key;
use tokio::sync::watch;

use crate::{Error, Event, EventKind, History, OpId, RunId};

/// A log of what happened to keys, shared by every controller, store and driver of a test.
///
/// Cheap to clone (a handle); safe to use from any thread. Its clock is monotonic
/// nanoseconds since the recorder was created, read while holding the log's lock, so the
/// order of the log and the order of the timestamps agree: an event recorded after another
/// (in the sense of happens-before) has a later position and a timestamp no smaller.
/// Events observed elsewhere (another process, the database's clock) can be recorded with
/// explicit timestamps through [`record_at`](Self::record_at); histories of several
/// recorders are merged with [`History::merge`].
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    source: Option<String>,
    events: Mutex<Vec<Event>>,
    /// Bumped on every record, to wait on.
    changed: watch::Sender<usize>,
    next_id: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("source", &self.inner.source)
            .field("events", &self.len())
            .finish()
    }
}

impl Recorder {
    /// A new, empty recorder; its clock starts now.
    pub fn new() -> Recorder {
        Recorder::build(None)
    }

    /// A new recorder that marks its events with `source` (a process name), for reading
    /// histories merged from several processes.
    pub fn with_source(source: impl Into<String>) -> Recorder {
        Recorder::build(Some(source.into()))
    }

    fn build(source: Option<String>) -> Recorder {
        // Ids unique across processes that append to one history: the process id in the
        // high bits, a counter below.
        let base = u64::from(std::process::id()) << 32;
        Recorder {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                source,
                events: Mutex::new(Vec::new()),
                changed: watch::channel(0).0,
                next_id: AtomicU64::new(base),
            }),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now_ns(&self) -> u64 {
        duration_ns(self.inner.origin.elapsed())
    }

    /// A fresh run id.
    pub fn next_run(&self) -> RunId {
        RunId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh trigger operation id.
    pub fn next_op(&self) -> OpId {
        OpId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Records `kind` for `key` now; returns the timestamp given.
    pub fn record(&self, key: &Key, kind: EventKind) -> u64 {
        let mut events = self.inner.events.lock().unwrap();
        // Read under the lock, so that log order and time order agree.
        let at_ns = self.now_ns();
        events.push(self.event(at_ns, key, kind));
        let len = events.len();
        drop(events);
        self.inner.changed.send_replace(len);
        at_ns
    }

    /// Records `kind` for `key` at an explicit time (for events observed on another clock,
    /// e.g. the database's, or replayed from another process).
    pub fn record_at(&self, at_ns: u64, key: &Key, kind: EventKind) {
        let mut events = self.inner.events.lock().unwrap();
        events.push(self.event(at_ns, key, kind));
        let len = events.len();
        drop(events);
        self.inner.changed.send_replace(len);
    }

    fn event(&self, at_ns: u64, key: &Key, kind: EventKind) -> Event {
        Event {
            at_ns,
            key: key.clone(),
            kind,
            source: self.inner.source.clone(),
        }
    }

    /// Number of events recorded so far.
    pub fn len(&self) -> usize {
        self.inner.events.lock().unwrap().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of everything recorded so far.
    pub fn history(&self) -> History {
        History::from_events(self.inner.events.lock().unwrap().clone())
    }

    /// Waits until `done` holds on the events recorded so far, or `timeout` passes;
    /// `true` if it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        let mut changed = self.inner.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changed.mark_unchanged();
                if done(&self.inner.events.lock().unwrap()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok()
    }

    /// Writes every event recorded so far as JSON lines (one event per line).
    pub fn write_jsonl(&self, out: impl Write) -> Result<(), Error> {
        self.history().write_jsonl(out)
    }
}

pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
