//! Emulator settings.

use std::time::Duration;

/// Consul's default `limits.kv_max_value_size` and `txn_max_req_len`: 512 KiB.
pub const DEFAULT_MAX_BYTES: usize = 512 * 1024;

/// Consul's limit on operations in one transaction (`maxTxnOps` in `agent/txn_endpoint.go`).
pub const DEFAULT_TXN_MAX_OPS: usize = 64;

/// An invalid emulator setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The minimum session TTL was zero.
    #[error("min_session_ttl must be greater than zero")]
    ZeroMinTtl,
    /// A size limit was zero.
    #[error("{0} must be greater than zero")]
    ZeroLimit(&'static str),
    /// The datacenter name was empty.
    #[error("datacenter must not be empty")]
    EmptyDatacenter,
}

/// Settings of an [`Emulator`](crate::Emulator), built with [`EmulatorConfig::builder`].
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub(crate) min_session_ttl: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) txn_max_request_bytes: usize,
    pub(crate) txn_max_ops: usize,
    pub(crate) datacenter: String,
    pub(crate) acl_token: Option<String>,
    pub(crate) jitter: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            min_session_ttl: Duration::from_secs(10),
            max_value_bytes: DEFAULT_MAX_BYTES,
            txn_max_request_bytes: DEFAULT_MAX_BYTES,
            txn_max_ops: DEFAULT_TXN_MAX_OPS,
            datacenter: "dc1".to_string(),
            acl_token: None,
            jitter: true,
        }
    }
}

impl EmulatorConfig {
    /// A builder starting from Consul's defaults.
    pub fn builder() -> EmulatorConfigBuilder {
        EmulatorConfigBuilder(EmulatorConfig::default())
    }
}

/// Builds an [`EmulatorConfig`]; validated by [`build`](EmulatorConfigBuilder::build).
#[derive(Debug, Clone)]
pub struct EmulatorConfigBuilder(EmulatorConfig);

impl EmulatorConfigBuilder {
    /// The smallest session TTL accepted (Consul's `session_ttl_min`, 10 s by default).
    /// Tests lower it to expire sessions quickly.
    pub fn min_session_ttl(mut self, ttl: Duration) -> Self {
        self.0.min_session_ttl = ttl;
        self
    }

    /// The largest KV value accepted (`limits.kv_max_value_size`).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.0.max_value_bytes = bytes;
        self
    }

    /// The largest `/v1/txn` request body accepted (`txn_max_req_len`). As in Consul, the
    /// effective limit is the larger of this and [`max_value_bytes`](Self::max_value_bytes).
    pub fn txn_max_request_bytes(mut self, bytes: usize) -> Self {
        self.0.txn_max_request_bytes = bytes;
        self
    }

    /// The most operations accepted in one transaction (64 in Consul, not configurable
    /// there).
    pub fn txn_max_ops(mut self, ops: usize) -> Self {
        self.0.txn_max_ops = ops;
        self
    }

    /// The datacenter this emulator is; `?dc=` naming another one is refused.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.0.datacenter = dc.into();
        self
    }

    /// Require this ACL token (`X-Consul-Token` header or `?token=`) on every request.
    pub fn acl_token(mut self, token: impl Into<String>) -> Self {
        self.0.acl_token = Some(token.into());
        self
    }

    /// Whether blocking queries wait up to `wait/16` longer than asked, as Consul does.
    pub fn jitter(mut self, on: bool) -> Self {
        self.0.jitter = on;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<EmulatorConfig, ConfigError> {
        let c = self.0;
        if c.min_session_ttl.is_zero() {
            return Err(ConfigError::ZeroMinTtl);
        }
        if c.max_value_bytes == 0 {
            return Err(ConfigError::ZeroLimit("max_value_bytes"));
        }
        if c.txn_max_request_bytes == 0 {
            return Err(ConfigError::ZeroLimit("txn_max_request_bytes"));
        }
        if c.txn_max_ops == 0 {
            return Err(ConfigError::ZeroLimit("txn_max_ops"));
        }
        if c.datacenter.is_empty() {
            return Err(ConfigError::EmptyDatacenter);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_typed_errors() {
        let b = EmulatorConfig::builder;
        assert_eq!(
            b().min_session_ttl(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroMinTtl
        );
        assert_eq!(
            b().max_value_bytes(0).build().unwrap_err(),
            ConfigError::ZeroLimit("max_value_bytes")
        );
        assert_eq!(
            b().txn_max_request_bytes(0).build().unwrap_err(),
            ConfigError::ZeroLimit("txn_max_request_bytes")
        );
        assert_eq!(
            b().txn_max_ops(0).build().unwrap_err(),
            ConfigError::ZeroLimit("txn_max_ops")
        );
        assert_eq!(
            b().datacenter("").build().unwrap_err(),
            ConfigError::EmptyDatacenter
        );
        assert!(b().build().is_ok());
    }
}
