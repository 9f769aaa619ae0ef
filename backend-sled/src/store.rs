//! Opening the database once per process, the format check, and flushing.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keyloop_core::CoordinatorError;

use crate::config::Location;
use crate::coordinator::WakeClock;
use crate::error::backend_error;
use crate::flush::GroupFlush;
use crate::ids::Ids;
use crate::index::Index;
use crate::nodes::Nodes;
use crate::schema::{self, FormatCheck};
use crate::{Durability, SledConfig, SledCoordinator, SledError};

/// Directories this process has open. sled's file lock would also refuse a second open,
/// but with an error that looks like another process holds it; this names the mistake.
static OPEN_PATHS: Mutex<Option<Registry>> = Mutex::new(None);

/// How long closing a store waits for sled's background threads to let go of the file
/// lock.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Registry {
    open: HashSet<PathBuf>,
    /// The wake-up clock of every directory opened in this process, kept across closes:
    /// reopening in the same process continues the same monotonic clock, so a wall-clock
    /// step between close and reopen cannot wake a sleeping key early.
    clocks: HashMap<PathBuf, WakeClock>,
}

/// Per-key locks (striped): every read-check-write of a key record happens under its
/// stripe, so claims, triggers, releases and fenced saves of one key are serialized. sled
/// transactions could do this too, but they may re-run closures and cannot scan; the
/// database is exclusive to this process anyway.
///
/// Lock order: a key's stripe, then the claim index, then the node table. The node table
/// and the index never wait for anything while held, and no lock is held while an event
/// is delivered or while a flush runs.
const STRIPES: usize = 256;

/// A keyloop database on sled, open in this process.
///
/// Open it once per process and share it: cloning is cheap, and every
/// [`coordinator`](SledStore::coordinator) made from it shares the database, the node
/// table and the in-process event bus. Opening a directory that this process already has
/// open fails with [`SledError::AlreadyOpen`]; a directory locked by another process fails
/// with [`SledError::Locked`]. The directory is flushed and closed when the last clone
/// (and every coordinator made from it) is dropped.
#[derive(Clone)]
pub struct SledStore {
    pub(crate) inner: Arc<Handle>,
}

pub(crate) struct Handle {
    core: Option<Core>,
    /// The registered canonical path, removed from [`OPEN_PATHS`] once the db is closed.
    registered: Option<PathBuf>,
}

pub(crate) struct Core {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) config: SledConfig,
    /// For messages: the directory, or `temporary`.
    pub(crate) label: String,
    pub(crate) nodes: Nodes,
    pub(crate) index: Index,
    ids: Ids,
    flusher: GroupFlush,
    stripes: Vec<Mutex<()>>,
    recovered: bool,
    pub(crate) clock: WakeClock,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Close the database before forgetting the path, so that a re-open in this process
        // never races sled's file lock.
        let mut registry = lock_open_paths();
        if let Some(core) = self.core.take() {
            // A graceful close loses nothing, also in batched mode. sled flushes on drop as
            // well; flushing here makes that explicit and reports a failure.
            if let Err(e) = core.db.flush() {
                tracing::error!(path = %core.label, error = %e, "flush on close failed");
            }
            drop(core);
            if let Some(path) = &self.registered {
                wait_released(path);
            }
        }
        if let (Some(registry), Some(path)) = (registry.as_mut(), &self.registered) {
            registry.open.remove(path);
        }
    }
}

fn lock_open_paths() -> MutexGuard<'static, Option<Registry>> {
    OPEN_PATHS.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("location", &self.core().label)
            .field("durability", &self.core().config.durability)
            .finish()
    }
}

impl SledStore {
    /// Opens (or creates) the database in directory `path` with default settings:
    /// [`Durability::FlushEach`] and 1 MiB of state per key.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, SledError> {
        SledStore::open_with(SledConfig::builder().path(path.as_ref()).build()?)
    }

    /// Opens a fresh database in a temporary directory that is deleted when the store
    /// closes. Nothing survives the process: for tests, demos and quick starts.
    pub fn temporary() -> Result<SledStore, SledError> {
        SledStore::open_with(SledConfig::builder().temporary().build()?)
    }

    /// Opens the database described by `config`.
    ///
    /// Writes the format version into a new database; refuses (changing nothing) a
    /// database with another version or one that keyloop did not create.
    pub fn open_with(config: SledConfig) -> Result<SledStore, SledError> {
        match &config.location {
            Location::Temporary => {
                let db = sled_config(&config)
                    .temporary(true)
                    .open()
                    .map_err(|source| SledError::Sled {
                        path: PathBuf::from("<temporary>"),
                        source,
                    })?;
                Self::finish(
                    db,
                    config,
                    "temporary".to_string(),
                    None,
                    WakeClock::start(),
                )
            }
            Location::Path(path) => {
                std::fs::create_dir_all(path).map_err(|source| SledError::Io {
                    path: path.clone(),
                    source,
                })?;
                let canonical = path.canonicalize().map_err(|source| SledError::Io {
                    path: path.clone(),
                    source,
                })?;
                let mut guard = lock_open_paths();
                let registry = guard.get_or_insert_with(Registry::default);
                if registry.open.contains(&canonical) {
                    return Err(SledError::AlreadyOpen { path: canonical });
                }
                let db = sled_config(&config)
                    .path(&canonical)
                    .open()
                    .map_err(|source| open_error(&canonical, source))?;
                let label = canonical.display().to_string();
                let clock = *registry
                    .clocks
                    .entry(canonical.clone())
                    .or_insert_with(WakeClock::start);
                match Self::finish(db, config, label, Some(canonical.clone()), clock) {
                    Ok(store) => {
                        registry.open.insert(canonical);
                        Ok(store)
                    }
                    Err(e) => {
                        // `finish` dropped the database: let go of the lock before saying
                        // no, so the caller can open the directory some other way.
                        wait_released(&canonical);
                        Err(e)
                    }
                }
            }
        }
    }

    fn finish(
        db: sled::Db,
        config: SledConfig,
        label: String,
        registered: Option<PathBuf>,
        clock: WakeClock,
    ) -> Result<SledStore, SledError> {
        let path = PathBuf::from(&label);
        let sled_err = |source| SledError::Sled {
            path: path.clone(),
            source,
        };
        match schema::check_format(&db).map_err(sled_err)? {
            FormatCheck::Current => {}
            FormatCheck::Fresh => {
                let witnessed = registered
                    .as_ref()
                    .is_some_and(|dir| dir.join(schema::WITNESS_FILE).exists());
                if witnessed && !config.recover_damaged {
                    return Err(SledError::Damaged {
                        path,
                        detail: format!(
                            "the directory was initialised ({} exists) but the database opened empty",
                            schema::WITNESS_FILE
                        ),
                    });
                }
                if witnessed {
                    tracing::error!(path = %path.display(), "recovering a wiped database: every key registered before is lost");
                }
                db.insert(schema::VERSION_KEY, &schema::FORMAT_VERSION.to_be_bytes())
                    .map_err(sled_err)?;
                db.open_tree(schema::REGISTRY_TREE)
                    .and_then(|t| t.insert(schema::TALLY_KEY, &schema::encode_tally(0, 0)))
                    .map_err(sled_err)?;
                db.flush().map_err(sled_err)?;
                if let Some(dir) = &registered {
                    schema::write_witness(dir, 0).map_err(|source| SledError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                }
            }
            FormatCheck::Other(found) => {
                return Err(SledError::IncompatibleVersion {
                    path,
                    found,
                    supported: schema::FORMAT_VERSION,
                });
            }
            FormatCheck::Foreign(detail) => return Err(SledError::NotKeyloop { path, detail }),
        }
        let tree = db.open_tree(schema::REGISTRY_TREE).map_err(sled_err)?;
        let recovered = db.was_recovered();
        let (index, floor, records) = build_index(&tree).map_err(|detail| SledError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        check_tally(
            &tree,
            records,
            registered.as_deref(),
            &path,
            config.recover_damaged,
        )?;
        let ids = Ids::open(&db, floor).map_err(sled_err)?;
        let flusher = GroupFlush::new(registered.clone().map(|dir| {
            let witnessed = schema::read_witness(&dir).ok().flatten().unwrap_or(0);
            (dir, tree.clone(), witnessed)
        }));
        let core = Core {
            db,
            tree,
            config,
            label,
            nodes: Nodes::default(),
            index,
            ids,
            flusher,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            recovered,
            clock,
        };
        // `registered` is recorded by the caller only once this returns, so a failed open
        // does not leave the path marked as open.
        Ok(SledStore {
            inner: Arc::new(Handle {
                core: Some(core),
                registered,
            }),
        })
    }

    pub(crate) fn core(&self) -> &Core {
        self.inner
            .core
            .as_ref()
            .expect("present until the handle drops")
    }

    /// Overwrites a key's stored record with `bytes` behind the coordinator's back, as
    /// damage would: for tests of what a bad record does to a running store.
    #[doc(hidden)]
    pub fn damage_record_for_tests(&self, key: &str, bytes: &[u8]) {
        let core = self.core();
        core.tree
            .insert(crate::schema::record_key(key), bytes)
            .expect("raw write");
    }

    /// A coordinator for one node (or several) on this store. All coordinators of a store
    /// share its database, node table and event bus, so engines built from them in one
    /// process form one cluster.
    pub fn coordinator(&self) -> Arc<SledCoordinator> {
        Arc::new(SledCoordinator::new(self.clone()))
    }

    /// The database directory (canonical), or `None` for a temporary database.
    pub fn path(&self) -> Option<&Path> {
        self.inner.registered.as_deref()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SledConfig {
        &self.core().config
    }

    /// Whether the database existed before this open (as opposed to being created now).
    pub fn was_recovered(&self) -> bool {
        self.core().recovered
    }

    /// Flushes every write so far to disk, whatever the [`Durability`] mode. Useful with
    /// [`Durability::Batched`] before a planned exit.
    pub async fn flush(&self) -> Result<(), CoordinatorError> {
        self.core().flush_now().await
    }
}

/// The claim hints of a database just opened: every registered key that is not parked is
/// claimable, since no owner from before this open is alive.
/// Also returns the largest epoch or sequence found, a floor for new ids.
/// Compares the records found with the registry tally; a mismatch (or a lost tally) is
/// damage. With `recover` the tally is reset to what is left and the loss logged.
fn check_tally(
    tree: &sled::Tree,
    records: u64,
    dir: Option<&Path>,
    path: &Path,
    recover: bool,
) -> Result<(), SledError> {
    let sled_err = |source| SledError::Sled {
        path: path.to_path_buf(),
        source,
    };
    let io_err = |source| SledError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tally = tree.get(schema::TALLY_KEY).map_err(sled_err)?;
    let stored = tally.as_deref().and_then(schema::decode_tally);
    let witnessed = match dir {
        Some(dir) => schema::read_witness(dir).map_err(io_err)?,
        None => None,
    };
    let detail = match (stored, witnessed) {
        (None, _) => format!("the registry tally is missing ({records} key records found)"),
        (Some((count, _)), _) if count != records => {
            format!("{records} key records found, the registry tally says {count}")
        }
        (Some((_, generation)), Some(flushed)) if generation < flushed => format!(
            "it rolled back to registry generation {generation}, but generation {flushed} was flushed before"
        ),
        _ => return Ok(()),
    };
    if !recover {
        return Err(SledError::Damaged {
            path: path.to_path_buf(),
            detail,
        });
    }
    tracing::error!(path = %path.display(), %detail, "recovering a damaged database with the keys that are left");
    let generation = stored.map_or(0, |(_, g)| g).max(witnessed.unwrap_or(0)) + 1;
    tree.insert(
        schema::TALLY_KEY,
        &schema::encode_tally(records, generation),
    )
    .map_err(sled_err)?;
    tree.flush().map_err(sled_err)?;
    if let Some(dir) = dir {
        schema::write_witness(dir, generation).map_err(io_err)?;
    }
    Ok(())
}

fn build_index(tree: &sled::Tree) -> Result<(Index, u64, u64), String> {
    let index = Index::default();
    let mut floor = 0;
    let mut records = 0u64;
    for item in tree.scan_prefix([schema::RECORD_PREFIX]) {
        let (raw_key, raw) = item.map_err(|e| format!("scan failed: {e}"))?;
        let key = keyloop_core::Key::from_utf8(&raw_key[1..]).map_err(|e| {
            format!(
                "stored key {:?}: {e}",
                String::from_utf8_lossy(&raw_key[1..])
            )
        })?;
        let record =
            schema::Record::decode(&raw).map_err(|e| format!("record of key {key:?}: {e}"))?;
        match (&record.parked, record.wake_at) {
            (Some(_), _) => {}
            (None, Some(at)) => index.set_sleeping(&key, at),
            (None, None) => index.set_free(&key),
        }
        floor = floor.max(record.epoch).max(record.trigger_seq);
        records += 1;
    }
    Ok((index, floor, records))
}

/// sled's settings for `config` (a fresh value each time: sled's builder methods panic
/// on a cloned `Config`).
fn sled_config(config: &SledConfig) -> sled::Config {
    let mut sled_config = sled::Config::new();
    if let Durability::Batched { interval } = config.durability {
        let ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        sled_config = sled_config.flush_every_ms(Some(ms));
    }
    if let Some(bytes) = config.cache_capacity_bytes {
        sled_config = sled_config.cache_capacity(bytes);
    }
    sled_config
}

/// Waits (up to [`RELEASE_WAIT`]) until sled's file lock on the database in `dir` is
/// free: sled's background I/O threads can hold the file for a moment after the last
/// handle dropped, and a closed store should be re-openable at once, by this process or
/// another.
fn wait_released(dir: &Path) {
    use fs2::FileExt;

    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("db"))
    else {
        return;
    };
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut pause = Duration::from_micros(100);
    loop {
        if file.try_lock_exclusive().is_ok() {
            let _ = FileExt::unlock(&file);
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(dir = %dir.display(), "sled still holds its lock after closing");
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn open_error(path: &Path, source: sled::Error) -> SledError {
    let locked =
        matches!(&source, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"));
    if locked {
        SledError::Locked {
            path: path.to_path_buf(),
            source,
        }
    } else {
        SledError::Sled {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Core {
    pub(crate) fn stripe(&self, key: &str) -> MutexGuard<'_, ()> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        self.stripes[(hash as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn err(&self, what: &str, e: sled::Error) -> CoordinatorError {
        backend_error(&self.label, what, e)
    }

    /// A fresh id, never 0, greater than every id issued before, also before a crash.
    pub(crate) fn next_id(&self) -> Result<u64, CoordinatorError> {
        self.ids
            .next(&self.db)
            .map_err(|e| self.err("reserve ids", e))
    }

    /// Makes acknowledged writes durable according to the durability mode.
    pub(crate) async fn commit(&self) -> Result<(), CoordinatorError> {
        match self.config.durability {
            Durability::FlushEach => self.flush_now().await,
            Durability::Batched { .. } => Ok(()),
        }
    }

    async fn flush_now(&self) -> Result<(), CoordinatorError> {
        self.flusher.flush(&self.db).await.map_err(|e| {
            CoordinatorError::unavailable(
                format!("sled at {}", self.label),
                "flush failed",
                Some(Box::new(e) as _),
            )
        })
    }
}
