use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::SledConfigError;

/// The default largest state accepted per key: 1 MiB.
pub const DEFAULT_MAX_STATE_BYTES: usize = 1 << 20;

/// The largest `max_state_bytes` a configuration accepts: 64 MiB. sled keeps values in
/// memory pages, so far larger values belong in a file or object store.
pub const MAX_STATE_BYTES_LIMIT: usize = 64 << 20;

/// When acknowledged writes reach the disk.
///
/// Leases are never durable (after a restart every node from before is dead), and epochs
/// come from a counter that is only ever issued below a ceiling already on disk, so no
/// setting can make an epoch go backwards.
/// What differs is which acknowledged writes a crash (power loss, `SIGKILL`, OOM kill) can
/// lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every `trigger`, claim, release and state save is flushed by sled and then the
    /// database directory's files are fsynced before it returns (sled's own flush ends
    /// with `sync_file_range`, which survives a process crash but not a power loss).
    /// Anything acknowledged survives a crash, a power loss included on a disk that honours
    /// fsync. Concurrent callers share flushes.
    #[default]
    FlushEach,
    /// Writes are acknowledged once they are in sled's memory and flushed in the
    /// background every `interval` (and when the store closes). A crash loses up to `interval` (plus the time of one
    /// flush) of acknowledged work:
    /// - triggers: a new key may be missing from the registry and a trigger on a running
    ///   key may be forgotten, so a loop that completed may not run again for it;
    /// - state saves: the key's state goes back to an older save;
    /// - releases: a completed key may be registered again and run once more, a parked key
    ///   may be claimable again;
    /// - claims: nothing that matters, since ownership does not outlive the process and the
    ///   next epoch is still greater than every epoch issued before the crash.
    Batched {
        /// How often the background flush runs (valid 1 ms to 1 hour).
        interval: Duration,
    },
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    Path(PathBuf),
    Temporary,
}

/// A validated configuration for [`SledStore::open_with`](crate::SledStore::open_with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledConfig {
    pub(crate) location: Location,
    pub(crate) durability: Durability,
    pub(crate) max_state_bytes: usize,
    pub(crate) cache_capacity_bytes: Option<u64>,
    pub(crate) recover_damaged: bool,
}

impl SledConfig {
    /// A builder; choose [`path`](SledConfigBuilder::path) or
    /// [`temporary`](SledConfigBuilder::temporary).
    pub fn builder() -> SledConfigBuilder {
        SledConfigBuilder::default()
    }

    /// The database directory, or `None` for a temporary database.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::Path(p) => Some(p),
            Location::Temporary => None,
        }
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The largest state accepted per key, in bytes.
    pub fn max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }
}

/// The smallest accepted [`SledConfigBuilder::cache_capacity_bytes`] (1 MiB).
const MIN_CACHE_BYTES: u64 = 1 << 20;
/// The largest accepted [`SledConfigBuilder::cache_capacity_bytes`] (1 TiB).
const MAX_CACHE_BYTES: u64 = 1 << 40;

/// Builds a [`SledConfig`]; validated by [`build`](SledConfigBuilder::build).
#[derive(Debug, Clone, Default)]
pub struct SledConfigBuilder {
    location: Option<Location>,
    durability: Durability,
    max_state_bytes: Option<usize>,
    cache_capacity_bytes: Option<u64>,
    recover_damaged: bool,
}

impl SledConfigBuilder {
    /// Keep the database in directory `path` (created if missing).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.location = Some(Location::Path(path.into()));
        self
    }

    /// Keep the database in a fresh temporary directory deleted when the store closes
    /// (nothing survives the process; useful for tests and demos).
    pub fn temporary(mut self) -> Self {
        self.location = Some(Location::Temporary);
        self
    }

    /// When acknowledged writes reach the disk; [`Durability::FlushEach`] by default.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The largest state accepted per key ([`DEFAULT_MAX_STATE_BYTES`] by default).
    pub fn max_state_bytes(mut self, max: usize) -> Self {
        self.max_state_bytes = Some(max);
        self
    }

    /// Open a database found damaged (records missing against its tally, or an initialised
    /// directory that opens empty) with the keys that are left, logging what was lost,
    /// instead of refusing with `SledError::Damaged` (default `false`).
    pub fn recover_damaged(mut self, recover: bool) -> Self {
        self.recover_damaged = recover;
        self
    }

    /// sled's page cache size (sled's default, 1 GiB, if unset; valid 1 MiB to 1 TiB).
    /// Below a mebibyte sled's cache shards round down to nothing and sled panics.
    pub fn cache_capacity_bytes(mut self, bytes: u64) -> Self {
        self.cache_capacity_bytes = Some(bytes);
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<SledConfig, SledConfigError> {
        let location = match self.location {
            None => return Err(SledConfigError::NoLocation),
            Some(Location::Path(p)) if p.as_os_str().is_empty() => {
                return Err(SledConfigError::EmptyPath);
            }
            Some(location) => location,
        };
        let max_state_bytes = self.max_state_bytes.unwrap_or(DEFAULT_MAX_STATE_BYTES);
        if max_state_bytes == 0 || max_state_bytes > MAX_STATE_BYTES_LIMIT {
            return Err(SledConfigError::BadMaxStateBytes {
                got: max_state_bytes,
                limit: MAX_STATE_BYTES_LIMIT,
            });
        }
        if let Durability::Batched { interval } = self.durability {
            if interval.is_zero() {
                return Err(SledConfigError::ZeroFlushInterval(interval));
            }
            if interval < Duration::from_millis(1) || interval > Duration::from_secs(3600) {
                return Err(SledConfigError::OutOfRange {
                    setting: "durability(Batched { interval })",
                    value: format!("{interval:?}"),
                    valid: "1ms..=1h",
                });
            }
        }
        match self.cache_capacity_bytes {
            Some(0) => return Err(SledConfigError::ZeroCacheCapacity),
            Some(bytes) if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&bytes) => {
                return Err(SledConfigError::OutOfRange {
                    setting: "cache_capacity_bytes",
                    value: bytes.to_string(),
                    valid: "1 MiB..=1 TiB",
                });
            }
            _ => {}
        }
        Ok(SledConfig {
            location,
            durability: self.durability,
            max_state_bytes,
            cache_capacity_bytes: self.cache_capacity_bytes,
            recover_damaged: self.recover_damaged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_flush_each_and_one_mebibyte() {
        let config = SledConfig::builder().path("/tmp/x").build().unwrap();
        assert_eq!(config.durability(), Durability::FlushEach);
        assert_eq!(config.max_state_bytes(), DEFAULT_MAX_STATE_BYTES);
        assert_eq!(config.path(), Some(Path::new("/tmp/x")));
        let temp = SledConfig::builder().temporary().build().unwrap();
        assert_eq!(temp.path(), None);
    }

    #[test]
    fn rejects_missing_location() {
        assert_eq!(
            SledConfig::builder().build(),
            Err(SledConfigError::NoLocation)
        );
    }

    #[test]
    fn rejects_empty_path() {
        assert_eq!(
            SledConfig::builder().path("").build(),
            Err(SledConfigError::EmptyPath)
        );
    }

    #[test]
    fn rejects_bad_max_state_bytes() {
        for bad in [0, MAX_STATE_BYTES_LIMIT + 1] {
            assert_eq!(
                SledConfig::builder()
                    .temporary()
                    .max_state_bytes(bad)
                    .build(),
                Err(SledConfigError::BadMaxStateBytes {
                    got: bad,
                    limit: MAX_STATE_BYTES_LIMIT
                })
            );
        }
        assert!(
            SledConfig::builder()
                .temporary()
                .max_state_bytes(MAX_STATE_BYTES_LIMIT)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn rejects_zero_flush_interval() {
        let err = SledConfig::builder()
            .temporary()
            .durability(Durability::Batched {
                interval: Duration::ZERO,
            })
            .build()
            .unwrap_err();
        assert_eq!(err, SledConfigError::ZeroFlushInterval(Duration::ZERO));
        assert!(err.to_string().contains("greater than zero"));
    }

    #[test]
    fn rejects_settings_outside_their_range() {
        for bytes in [1, MIN_CACHE_BYTES - 1, MAX_CACHE_BYTES + 1] {
            let err = SledConfig::builder()
                .temporary()
                .cache_capacity_bytes(bytes)
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    SledConfigError::OutOfRange {
                        setting: "cache_capacity_bytes",
                        ..
                    }
                ),
                "{bytes}: {err}"
            );
        }
        for interval in [
            Duration::from_micros(1),
            Duration::from_secs(3601),
            Duration::MAX,
        ] {
            let err = SledConfig::builder()
                .temporary()
                .durability(Durability::Batched { interval })
                .build()
                .unwrap_err();
            assert!(
                matches!(err, SledConfigError::OutOfRange { .. }),
                "{interval:?}: {err}"
            );
        }
    }

    #[test]
    fn rejects_zero_cache() {
        assert_eq!(
            SledConfig::builder()
                .temporary()
                .cache_capacity_bytes(0)
                .build(),
            Err(SledConfigError::ZeroCacheCapacity)
        );
    }
}
