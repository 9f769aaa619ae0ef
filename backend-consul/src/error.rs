//! Errors of the Consul client and of the backend's configuration.

use std::time::Duration;

use keyloop_core::CoordinatorError;

/// The backend's name in [`CoordinatorError`]s.
pub(crate) const BACKEND: &str = "consul";

/// An error from [`ConsulClient`](crate::ConsulClient).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request did not get an answer: connection refused or dropped, or a timeout.
    #[error("no answer from consul at {url}")]
    Transport {
        /// The request URL (without query).
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Consul answered with a status this call does not expect.
    #[error("consul answered {status} to {url}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The request URL (without query).
        url: String,
        /// The answer's body (Consul explains errors in plain text).
        body: String,
    },
    /// The ACL token was missing or lacks a permission (HTTP 403).
    #[error("consul refused the ACL token for {url}: {body}")]
    Forbidden {
        /// The request URL (without query).
        url: String,
        /// Consul's explanation.
        body: String,
    },
    /// The answer could not be decoded.
    #[error("cannot decode consul's answer from {url}: {detail}")]
    Decode {
        /// The request URL (without query).
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A value is larger than Consul accepts; nothing was sent.
    #[error("value of {size} bytes for {key:?} exceeds consul's limit of {max} bytes")]
    ValueTooLarge {
        /// The KV key.
        key: String,
        /// The value's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction has more operations than Consul accepts; nothing was sent.
    #[error("transaction of {ops} operations exceeds the limit of {max}")]
    TooManyOps {
        /// Operations in the transaction.
        ops: usize,
        /// The limit.
        max: usize,
    },
}

impl ClientError {
    /// Whether the request may succeed if retried (no answer, or a 5xx answer).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn into_coordinator(self) -> CoordinatorError {
        let detail = self.to_string();
        if self.is_transient() {
            CoordinatorError::unavailable(BACKEND, detail, Some(Box::new(self) as _))
        } else {
            CoordinatorError::backend(BACKEND, detail, Some(Box::new(self) as _))
        }
    }
}

impl From<ClientError> for CoordinatorError {
    fn from(e: ClientError) -> Self {
        e.into_coordinator()
    }
}

/// An invalid [`ConsulConfig`](crate::ConsulConfig), reported by
/// [`ConsulConfigBuilder::build`](crate::ConsulConfigBuilder::build). No variant carries the
/// ACL token or TLS key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The address was not an `http://` or `https://` URL with a host.
    #[error("consul address {0:?} must be an http:// or https:// URL with a host")]
    BadAddress(String),
    /// The address carried user credentials (`user:password@`); they are not repeated here.
    /// Use [`token`](crate::ConsulConfigBuilder::token) for the ACL token.
    #[error("consul address must not carry credentials (user:password@host)")]
    AddressWithCredentials,
    /// The KV prefix was empty, started or ended with `/`, or had an empty segment.
    #[error("key prefix {0:?} must be non-empty, without leading, trailing or doubled '/'")]
    BadPrefix(String),
    /// The datacenter name was empty or had characters Consul does not allow.
    #[error("datacenter {0:?} must be non-empty letters, digits, '-' or '_'")]
    BadDatacenter(String),
    /// The ACL token was empty or had characters an HTTP header cannot carry.
    #[error("acl token must be non-empty printable ASCII")]
    BadToken,
    /// The lock-delay was above Consul's maximum of 60 s.
    #[error("lock_delay {0:?} exceeds consul's maximum of 60s")]
    LockDelayTooLong(Duration),
    /// The request timeout was outside 1 ms..=10 min.
    #[error("request_timeout {0:?} must be between 1ms and 10m")]
    RequestTimeoutOutOfRange(Duration),
    /// The blocking-query wait was outside 1 s..=10 min (Consul caps it at 10 min).
    #[error("watch_wait {0:?} must be between 1s and 10m")]
    BadWatchWait(Duration),
    /// The watch rate limit was outside 1 ms..=1 min.
    #[error("watch_min_interval {0:?} must be between 1ms and 1m")]
    WatchIntervalOutOfRange(Duration),
    /// The value size limit was outside 1 KiB..=256 MiB.
    #[error("max_value_bytes {0} must be between 1 KiB and 256 MiB")]
    ValueLimitOutOfRange(usize),
    /// The transaction size limit was outside 64 KiB..=256 MiB (below, no room for state).
    #[error("txn_max_request_bytes {0} must be between 64 KiB and 256 MiB")]
    TxnLimitOutOfRange(usize),
    /// The CA bundle file named by `CONSUL_CACERT` could not be read.
    #[error("cannot read the CA bundle {path:?} (CONSUL_CACERT)")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle held no PEM certificate.
    #[error("ca certificate bundle holds no PEM certificate")]
    NoCaCertificate,
    /// A TLS certificate or identity could not be read.
    #[error("invalid TLS material: {0}")]
    Tls(#[source] reqwest::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
}
