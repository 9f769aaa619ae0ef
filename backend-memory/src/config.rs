/// Settings of a [`MemoryCluster`](crate::MemoryCluster); build with [`MemoryConfig::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    pub(crate) max_state_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_state_bytes: 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    /// A builder starting from the defaults (state up to 1 MiB per key).
    pub fn builder() -> MemoryConfigBuilder {
        MemoryConfigBuilder {
            config: MemoryConfig::default(),
        }
    }
}

/// Builds a [`MemoryConfig`].
#[derive(Debug, Clone)]
pub struct MemoryConfigBuilder {
    config: MemoryConfig,
}

/// An invalid [`MemoryConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryConfigError {
    /// The state limit was zero.
    #[error("max_state_bytes must be at least 1")]
    ZeroMaxState,
}

impl MemoryConfigBuilder {
    /// The largest state accepted per key.
    pub fn max_state_bytes(mut self, max: usize) -> Self {
        self.config.max_state_bytes = max;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<MemoryConfig, MemoryConfigError> {
        if self.config.max_state_bytes == 0 {
            return Err(MemoryConfigError::ZeroMaxState);
        }
        Ok(self.config)
    }
}
