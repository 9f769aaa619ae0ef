//! Group commit: callers that need their writes on disk share flushes.
//!
//! A flush covers every write made before it *started*. A caller whose write came after
//! the running flush started waits for the next one; when a flush ends, one waiter starts
//! the next for everyone who queued meanwhile. On a multi-thread runtime the flush runs on
//! the caller's worker (`block_in_place`, no thread hand-off on the sequential path); on a
//! current-thread runtime it runs on the blocking pool, which also keeps tokio's paused
//! clock from auto-advancing during real I/O.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;

#[derive(Default)]
struct State {
    /// Generation of the last flush started.
    started: u64,
    running: bool,
    /// The newest generation that failed, with its error.
    failed: Option<(u64, String)>,
}

pub(crate) struct GroupFlush {
    state: Mutex<State>,
    /// Generation of the last flush finished.
    finished: watch::Sender<u64>,
    /// The database directory whose files are fsynced after each sled flush, with the
    /// registry tree whose generation the witness file records (`None` for a temporary
    /// store).
    fsync: Option<Arc<Durable>>,
}

/// What a flush of an on-disk store does beyond sled's flush.
pub(crate) struct Durable {
    dir: PathBuf,
    registry: sled::Tree,
    /// The registry generation the witness file holds.
    witnessed: AtomicU64,
}

impl Durable {
    fn after_flush(&self, generation: u64) -> std::io::Result<()> {
        fsync_files(&self.dir)?;
        if generation > self.witnessed.load(Ordering::Acquire) {
            crate::schema::write_witness(&self.dir, generation)?;
            self.witnessed.fetch_max(generation, Ordering::AcqRel);
        }
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.registry
            .get(crate::schema::TALLY_KEY)
            .ok()
            .flatten()
            .and_then(|raw| crate::schema::decode_tally(&raw))
            .map_or(0, |(_, generation)| generation)
    }
}

impl Default for GroupFlush {
    fn default() -> Self {
        GroupFlush::new(None)
    }
}

impl GroupFlush {
    /// A flusher that, after each sled flush, fsyncs the files of `fsync_dir` and the
    /// directory itself.
    ///
    /// Why: sled 0.34 ends its flush with `sync_file_range`, which writes the pages but
    /// flushes neither file metadata nor the disk's write cache, so a flushed write
    /// survived a process crash but not necessarily a power loss. `fsync` on the same
    /// inodes closes that gap (and the id ceiling relies on the same flush).
    ///
    /// After each flush that covered a registry change, the registry's generation is
    /// written to the witness file, so a later open can tell a database sled rolled back
    /// (damage) from one that never had those writes.
    pub(crate) fn new(fsync: Option<(PathBuf, sled::Tree, u64)>) -> GroupFlush {
        GroupFlush {
            state: Mutex::new(State::default()),
            finished: watch::channel(0).0,
            fsync: fsync.map(|(dir, registry, witnessed)| {
                Arc::new(Durable {
                    dir,
                    registry,
                    witnessed: AtomicU64::new(witnessed),
                })
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once a flush that started after this call began has finished.
    pub(crate) async fn flush(&self, db: &sled::Db) -> Result<(), FlushError> {
        let mut finished = self.finished.subscribe();
        let need = {
            let state = self.lock();
            state.started + 1
        };
        loop {
            let start = {
                let mut state = self.lock();
                if *finished.borrow_and_update() >= need {
                    return match &state.failed {
                        Some((generation, error)) if *generation >= need => {
                            Err(FlushError(error.clone()))
                        }
                        _ => Ok(()),
                    };
                }
                if state.running {
                    None
                } else {
                    state.running = true;
                    state.started += 1;
                    Some(state.started)
                }
            };
            match start {
                Some(generation) => {
                    let result = run_blocking(db, self.fsync.clone()).await;
                    {
                        let mut state = self.lock();
                        state.running = false;
                        if let Err(e) = &result {
                            state.failed = Some((generation, e.0.clone()));
                        }
                    }
                    self.finished.send_replace(generation);
                    if generation >= need {
                        return result;
                    }
                }
                None => {
                    // The sender lives in `self`, so this only ends with a new value.
                    let _ = finished.changed().await;
                }
            }
        }
    }
}

/// A failed flush, as text (sled's error is not `Clone`, and several callers share it).
#[derive(Debug, Clone)]
pub(crate) struct FlushError(pub(crate) String);

impl std::fmt::Display for FlushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlushError {}

/// fsyncs every regular file directly in `dir` (sled's data, config and snapshot files),
/// then the directory (so new and renamed files are durable too).
fn fsync_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

async fn run_blocking(db: &sled::Db, durable: Option<Arc<Durable>>) -> Result<(), FlushError> {
    let flush = {
        let db = db.clone();
        move || {
            // Read before the flush: the flush covers this generation.
            let generation = durable.as_ref().map_or(0, |d| d.generation());
            db.flush()
                .map(drop)
                .map_err(|e| FlushError(e.to_string()))?;
            match durable {
                Some(durable) => durable
                    .after_flush(generation)
                    .map_err(|e| FlushError(format!("fsync of {}: {e}", durable.dir.display()))),
                None => Ok(()),
            }
        }
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(flush),
        Ok(_) => match tokio::task::spawn_blocking(flush).await {
            Ok(result) => result,
            Err(e) => Err(FlushError(format!("flush task failed: {e}"))),
        },
        Err(_) => flush(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_flushes_and_all_return() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let group = Arc::new(GroupFlush::default());
        let tasks: Vec<_> = (0..32)
            .map(|i: u32| {
                let (db, group) = (db.clone(), Arc::clone(&group));
                tokio::spawn(async move {
                    for j in 0..20u32 {
                        db.insert(format!("{i}/{j}"), &j.to_be_bytes()).unwrap();
                        group.flush(&db).await.unwrap();
                    }
                })
            })
            .collect();
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            for task in tasks {
                task.await.unwrap();
            }
        })
        .await
        .expect("every caller returns");
        let state = group.lock();
        assert!(!state.running);
        assert_eq!(*group.finished.borrow(), state.started);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_after_a_flush_started_waits_for_the_next_flush() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let group = Arc::new(GroupFlush::default());
        // Pretend flush 5 is running (it started before our write).
        {
            let mut state = group.lock();
            state.started = 5;
            state.running = true;
        }
        let waiter = {
            let (db, group) = (db.clone(), Arc::clone(&group));
            tokio::spawn(async move { group.flush(&db).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "must not return before a covering flush"
        );
        // Flush 5 ends: it does not cover the waiter, which starts flush 6 itself.
        group.lock().running = false;
        group.finished.send_replace(5);
        waiter.await.unwrap().unwrap();
        assert_eq!(group.lock().started, 6);
        assert_eq!(*group.finished.borrow(), 6);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_covering_flush_fails_its_waiters() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let group = Arc::new(GroupFlush::default());
        {
            let mut state = group.lock();
            state.started = 1;
            state.running = true;
        }
        let waiter = {
            let (db, group) = (db.clone(), Arc::clone(&group));
            tokio::spawn(async move { group.flush(&db).await })
        };
        tokio::task::yield_now().await;
        // Someone else ran flush 2, covering the waiter, and it failed.
        {
            let mut state = group.lock();
            state.started = 2;
            state.running = false;
            state.failed = Some((2, "disk on fire".into()));
        }
        group.finished.send_replace(2);
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn works_on_a_current_thread_runtime() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let group = GroupFlush::default();
        db.insert("k", "v").unwrap();
        group.flush(&db).await.unwrap();
        group.flush(&db).await.unwrap();
        assert_eq!(group.lock().started, 2, "each sequential call flushes");
    }
}
