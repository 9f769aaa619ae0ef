use std::time::Duration;

use crate::{Epoch, InvalidKey, Key, NodeId};

/// A boxed error, as returned by controllers and kept as a source by backends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a [`Coordinator`](crate::Coordinator) operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// A fenced write was rejected: the caller no longer owns `key` at `epoch` (another node
    /// took it over, it was released, or the caller's lease expired).
    #[error("fenced: node {node} no longer owns key {key} at epoch {epoch}")]
    Fenced {
        /// The node that attempted the write.
        node: NodeId,
        /// The key written.
        key: Key,
        /// The epoch the caller presented.
        epoch: Epoch,
    },
    /// The node's lease has expired (or the node is unknown): it owns nothing any more and
    /// must join again under a new id.
    #[error("lease of node {node} has expired")]
    LeaseExpired {
        /// The node whose lease is gone.
        node: NodeId,
    },
    /// The state is larger than the backend accepts.
    #[error("state of {size} bytes for key {key} exceeds the maximum of {max} bytes")]
    StateTooLarge {
        /// The key whose state was rejected.
        key: Key,
        /// Size of the rejected state.
        size: usize,
        /// The backend's limit.
        max: usize,
    },
    /// The backend cannot be reached or did not answer in time; the operation may be retried.
    #[error("{backend} unavailable: {detail}")]
    Unavailable {
        /// Which backend (and where), e.g. `postgres at db:5432`.
        backend: String,
        /// What went wrong.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend holds data this code cannot use (a newer schema or format version).
    #[error("incompatible backend: {detail}")]
    Incompatible {
        /// What is incompatible.
        detail: String,
    },
    /// The backend stored a key that is not valid (data corruption or another writer).
    #[error("backend returned an invalid key")]
    InvalidStoredKey(#[source] InvalidKey),
    /// The coordinator was closed.
    #[error("coordinator is closed")]
    Closed,
    /// Any other backend failure.
    #[error("{backend} error: {detail}")]
    Backend {
        /// Which backend.
        backend: String,
        /// What went wrong.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl CoordinatorError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, CoordinatorError::Unavailable { .. })
    }

    /// Shorthand for an [`CoordinatorError::Unavailable`] error.
    pub fn unavailable(
        backend: impl Into<String>,
        detail: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        CoordinatorError::Unavailable {
            backend: backend.into(),
            detail: detail.into(),
            source: source.into(),
        }
    }

    /// Shorthand for a [`CoordinatorError::Backend`] error.
    pub fn backend(
        backend: impl Into<String>,
        detail: impl Into<String>,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        CoordinatorError::Backend {
            backend: backend.into(),
            detail: detail.into(),
            source: source.into(),
        }
    }
}

/// An invalid engine configuration, reported by
/// [`EngineConfigBuilder::build`](crate::EngineConfigBuilder::build).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting was outside its valid range (listed on
    /// [`EngineConfig::builder`](crate::EngineConfig::builder)).
    #[error("{setting} = {value} is out of range: valid is {valid}")]
    OutOfRange {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        valid: String,
    },
    /// The heartbeat interval was not well below the lease TTL.
    #[error(
        "heartbeat_interval {heartbeat:?} must be at most a third of lease_ttl {ttl:?} \
         so that a missed heartbeat does not lose the lease"
    )]
    HeartbeatTooSlow {
        /// The configured heartbeat interval.
        heartbeat: Duration,
        /// The configured lease TTL.
        ttl: Duration,
    },
    /// The self-fencing margin did not leave room for heartbeats.
    #[error(
        "fence_margin {margin:?} must be at least 1ms and leave at least one \
         heartbeat_interval {heartbeat:?} before lease_ttl {ttl:?}"
    )]
    BadFenceMargin {
        /// The configured margin.
        margin: Duration,
        /// The configured heartbeat interval.
        heartbeat: Duration,
        /// The configured lease TTL.
        ttl: Duration,
    },
    /// The node name had control characters or was longer than 256 bytes.
    #[error("node_name must be printable text of at most 256 bytes, got {0:?}")]
    BadNodeName(String),
}

/// An error from the [`Engine`](crate::Engine) or [`Client`](crate::Client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key was not valid.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// The configuration was not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The coordinator failed.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The engine has shut down (or is shutting down) and takes no more work.
    #[error("engine has shut down")]
    ShutDown,
    /// The backend granted a lease shorter than requested, or too short to renew and
    /// self-fence in time (it must exceed `heartbeat_interval + fence_margin`).
    #[error(
        "the backend granted a lease of {granted:?} for a requested {requested:?}; \
         the engine needs at least {needed:?}"
    )]
    LeaseTooShort {
        /// The TTL the engine asked for.
        requested: Duration,
        /// The TTL the backend granted.
        granted: Duration,
        /// The shortest TTL the engine accepts with its settings.
        needed: Duration,
    },
}

/// An error from a loop's fenced state ([`StateHandle`](crate::StateHandle)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// This loop no longer owns its key: the save was rejected and the loop is being stopped.
    #[error("state save fenced: key {key} is no longer owned at epoch {epoch}")]
    Fenced {
        /// The key.
        key: Key,
        /// The loop's epoch.
        epoch: Epoch,
    },
    /// The state is larger than the backend accepts; nothing was written.
    #[error("state of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the rejected state.
        size: usize,
        /// The backend's limit.
        max: usize,
    },
    /// The value could not be serialized.
    #[error("state could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// The stored bytes could not be deserialized into the requested type.
    #[error("stored state could not be decoded")]
    Decode(#[source] serde_json::Error),
    /// The coordinator failed.
    #[error(transparent)]
    Coordinator(CoordinatorError),
}

impl From<CoordinatorError> for StateError {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::Fenced { key, epoch, .. } => StateError::Fenced { key, epoch },
            CoordinatorError::StateTooLarge { size, max, .. } => StateError::TooLarge { size, max },
            other => StateError::Coordinator(other),
        }
    }
}
