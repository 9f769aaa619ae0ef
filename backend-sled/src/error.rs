use std::path::PathBuf;
use std::time::Duration;

use keyloop_core::CoordinatorError;

/// Why a [`SledConfig`](crate::SledConfig) was rejected by
/// [`SledConfigBuilder::build`](crate::SledConfigBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SledConfigError {
    /// Neither a path nor a temporary database was chosen.
    #[error("no database location: call path(..) or temporary()")]
    NoLocation,
    /// The path was the empty string.
    #[error("path must not be empty")]
    EmptyPath,
    /// `max_state_bytes` was zero or above [`MAX_STATE_BYTES_LIMIT`](crate::MAX_STATE_BYTES_LIMIT).
    #[error("max_state_bytes must be between 1 and {limit}, got {got}")]
    BadMaxStateBytes {
        /// The value given.
        got: usize,
        /// The largest value accepted.
        limit: usize,
    },
    /// Batched durability with a zero interval.
    #[error("batched flush interval must be greater than zero, got {0:?}")]
    ZeroFlushInterval(Duration),
    /// The cache capacity was zero.
    #[error("cache_capacity_bytes must be greater than zero")]
    ZeroCacheCapacity,
    /// A setting is outside its documented valid range.
    #[error("{setting} = {value} is outside its valid range {valid}")]
    OutOfRange {
        /// The setting's builder method.
        setting: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range, as documented on the builder method.
        valid: &'static str,
    },
}

/// Why a [`SledStore`](crate::SledStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SledError {
    /// The configuration was not valid.
    #[error(transparent)]
    Config(#[from] SledConfigError),
    /// This process already has a store open on this directory. Share that store (it is
    /// cheap to clone) instead of opening the directory again.
    #[error(
        "sled database at {path} is already open in this process; clone the existing SledStore instead"
    )]
    AlreadyOpen {
        /// The directory (canonical form).
        path: PathBuf,
    },
    /// Another process (or a raw `sled::open` in this one) holds the database's lock.
    #[error("sled database at {path} is locked by another process")]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The error sled reported.
        #[source]
        source: sled::Error,
    },
    /// The directory holds keyloop data in a format this version cannot read. Nothing was
    /// changed.
    #[error(
        "sled database at {path} has keyloop format version {found}, this build supports {supported}"
    )]
    IncompatibleVersion {
        /// The directory.
        path: PathBuf,
        /// The version found in the database.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The directory holds a sled database that was not written by keyloop (or has a
    /// damaged version marker). Nothing was changed.
    #[error("sled database at {path} is not a keyloop database: {detail}")]
    NotKeyloop {
        /// The directory.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The database lost registered keys: its records disagree with the registry tally, or
    /// a directory that was initialised opened as an empty database. Nothing was changed;
    /// [`SledConfigBuilder::recover_damaged`](crate::SledConfigBuilder::recover_damaged)
    /// opens it anyway with the keys that are left.
    #[error(
        "sled database at {path} is damaged: {detail}; nothing was changed (recover_damaged(true) opens it with what is left)"
    )]
    Damaged {
        /// The directory.
        path: PathBuf,
        /// What disagrees.
        detail: String,
    },
    /// A stored record could not be decoded (damage or a foreign writer).
    #[error("sled database at {path} holds a damaged record: {detail}")]
    Corrupt {
        /// The directory.
        path: PathBuf,
        /// What could not be decoded.
        detail: String,
    },
    /// The directory could not be created or resolved.
    #[error("cannot use directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// sled failed to open or initialise the database.
    #[error("sled failed on database at {path}")]
    Sled {
        /// The directory.
        path: PathBuf,
        /// The error sled reported.
        #[source]
        source: sled::Error,
    },
}

/// Maps a sled failure during an operation to the core error type.
pub(crate) fn backend_error(path: &str, what: &str, e: sled::Error) -> CoordinatorError {
    let transient = matches!(e, sled::Error::Io(_));
    let backend = format!("sled at {path}");
    let detail = format!("{what} failed");
    if transient {
        CoordinatorError::unavailable(backend, detail, Some(Box::new(e) as _))
    } else {
        CoordinatorError::backend(backend, detail, Some(Box::new(e) as _))
    }
}

/// A stored record that does not decode: data corruption or a foreign writer.
pub(crate) fn corrupt(path: &str, detail: String) -> CoordinatorError {
    CoordinatorError::backend(format!("sled at {path}"), detail, None)
}
