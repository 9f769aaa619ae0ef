use std::fmt;
use std::time::Duration;

use keyloop_supervisor::Backoff;

use crate::{ConfigError, StatusListener};

/// An engine's validated configuration; build it with [`EngineConfig::builder`].
#[derive(Clone)]
pub struct EngineConfig {
    pub(crate) node_name: String,
    pub(crate) max_loops: usize,
    pub(crate) lease_ttl: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) fence_margin: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) claim_batch: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) restart_backoff: Backoff,
    pub(crate) healthy_run: Duration,
    pub(crate) max_failures: u32,
    pub(crate) handoff_avoid: Duration,
    pub(crate) status_listener: Option<StatusListener>,
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("node_name", &self.node_name)
            .field("max_loops", &self.max_loops)
            .field("lease_ttl", &self.lease_ttl)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("fence_margin", &self.fence_margin)
            .field("claim_interval", &self.claim_interval)
            .field("claim_batch", &self.claim_batch)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("restart_backoff", &self.restart_backoff)
            .field("healthy_run", &self.healthy_run)
            .field("max_failures", &self.max_failures)
            .field("handoff_avoid", &self.handoff_avoid)
            .field("status_listener", &self.status_listener.is_some())
            .finish()
    }
}

impl EngineConfig {
    /// A builder with the defaults: 10,000 loops, 15 s lease renewed every 3 s, self-fence
    /// 3 s before expiry, claim every second in batches of 256, 30 s shutdown grace, restart
    /// backoff 100 ms ×2 up to 30 s, a healthy run of 10 s resets it, park after 5
    /// consecutive failures, prefer other nodes for 2 s after `Continue`.
    pub fn builder() -> EngineConfigBuilder {
        EngineConfigBuilder {
            config: EngineConfig {
                node_name: String::new(),
                max_loops: 10_000,
                lease_ttl: Duration::from_secs(15),
                heartbeat_interval: Duration::from_secs(3),
                fence_margin: Duration::from_secs(3),
                claim_interval: Duration::from_secs(1),
                claim_batch: 256,
                shutdown_grace: Duration::from_secs(30),
                restart_backoff: Backoff::default(),
                healthy_run: Duration::from_secs(10),
                max_failures: 5,
                handoff_avoid: Duration::from_secs(2),
                status_listener: None,
            },
            heartbeat_set: false,
            margin_set: false,
        }
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
    /// Most loops run at once.
    pub fn max_loops(&self) -> usize {
        self.max_loops
    }
    /// Requested lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }
    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }
    /// How long before the lease could expire the engine stops its loops.
    pub fn fence_margin(&self) -> Duration {
        self.fence_margin
    }
    /// Backstop interval between claims.
    pub fn claim_interval(&self) -> Duration {
        self.claim_interval
    }
    /// Grace period for loops at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
    /// Restart backoff for failing loops.
    pub fn restart_backoff(&self) -> Backoff {
        self.restart_backoff
    }
    /// Consecutive failures after which a key is parked.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }
}

/// Builds an [`EngineConfig`]; every setting is checked at [`build`](Self::build).
#[derive(Clone)]
pub struct EngineConfigBuilder {
    config: EngineConfig,
    heartbeat_set: bool,
    margin_set: bool,
}

impl fmt::Debug for EngineConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl EngineConfigBuilder {
    /// A human-readable node name for logs and `inspect` (default: `node-` plus random hex).
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.config.node_name = name.into();
        self
    }
    /// The most loops this node runs at once; keys beyond stay pending for other nodes.
    pub fn max_loops(mut self, max_loops: usize) -> Self {
        self.config.max_loops = max_loops;
        self
    }
    /// The lease TTL requested from the backend. Unless set explicitly, the heartbeat
    /// interval and the fence margin follow it (a fifth of it each).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }
    /// How often the lease is renewed; at most a third of the lease TTL.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self.heartbeat_set = true;
        self
    }
    /// How long before the lease could expire the engine stops its loops when it could not
    /// renew (measured from the send time of the last successful heartbeat).
    pub fn fence_margin(mut self, margin: Duration) -> Self {
        self.config.fence_margin = margin;
        self.margin_set = true;
        self
    }
    /// Backstop interval between claims (claims also happen at once on notifications).
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.config.claim_interval = interval;
        self
    }
    /// Most keys taken in one claim.
    pub fn claim_batch(mut self, batch: usize) -> Self {
        self.config.claim_batch = batch;
        self
    }
    /// How long loops get to return after the shutdown signal before they are abandoned.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }
    /// Backoff between restarts of a failing loop.
    pub fn restart_backoff(mut self, backoff: Backoff) -> Self {
        self.config.restart_backoff = backoff;
        self
    }
    /// A run at least this long resets the loop's consecutive-failure count.
    pub fn healthy_run(mut self, healthy: Duration) -> Self {
        self.config.healthy_run = healthy;
        self
    }
    /// Consecutive failures after which a key is parked (`Failed`).
    pub fn max_failures(mut self, max: u32) -> Self {
        self.config.max_failures = max;
        self
    }
    /// After a loop returns `Continue`, how long this node leaves the key to other nodes
    /// before it may claim it again itself.
    pub fn handoff_avoid(mut self, avoid: Duration) -> Self {
        self.config.handoff_avoid = avoid;
        self
    }
    /// A callback for every status change of keys this engine owns.
    pub fn status_listener(
        mut self,
        listener: impl Fn(&crate::Key, &crate::KeyStatus) + Send + Sync + 'static,
    ) -> Self {
        self.config.status_listener = Some(std::sync::Arc::new(listener));
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<EngineConfig, ConfigError> {
        let mut c = self.config;
        if c.node_name.is_empty() {
            c.node_name = format!("node-{:08x}", rand::random::<u32>());
        }
        if c.node_name.chars().any(char::is_control) {
            return Err(ConfigError::BadNodeName(c.node_name));
        }
        if c.max_loops == 0 {
            return Err(ConfigError::ZeroMaxLoops);
        }
        if c.lease_ttl.is_zero() {
            return Err(ConfigError::ZeroLeaseTtl);
        }
        if !self.heartbeat_set {
            c.heartbeat_interval = c.lease_ttl / 5;
        }
        if !self.margin_set {
            c.fence_margin = c.lease_ttl / 5;
        }
        if c.heartbeat_interval.is_zero() {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if c.heartbeat_interval > c.lease_ttl / 3 {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: c.heartbeat_interval,
                ttl: c.lease_ttl,
            });
        }
        if c.fence_margin.is_zero() || c.fence_margin + c.heartbeat_interval >= c.lease_ttl {
            return Err(ConfigError::BadFenceMargin {
                margin: c.fence_margin,
                heartbeat: c.heartbeat_interval,
                ttl: c.lease_ttl,
            });
        }
        if c.shutdown_grace.is_zero() {
            return Err(ConfigError::ZeroGrace);
        }
        if c.claim_interval.is_zero() {
            return Err(ConfigError::ZeroClaimInterval);
        }
        if c.claim_batch == 0 {
            return Err(ConfigError::ZeroClaimBatch);
        }
        if c.max_failures == 0 {
            return Err(ConfigError::ZeroMaxFailures);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_ttl() {
        let c = EngineConfig::builder()
            .lease_ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(2));
        assert_eq!(c.fence_margin(), Duration::from_secs(2));
        assert!(c.node_name().starts_with("node-"));
    }

    #[test]
    fn each_bad_setting_is_a_typed_error() {
        let b = EngineConfig::builder;
        assert_eq!(
            b().max_loops(0).build().unwrap_err(),
            ConfigError::ZeroMaxLoops
        );
        assert_eq!(
            b().lease_ttl(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroLeaseTtl
        );
        assert!(matches!(
            b().lease_ttl(Duration::from_secs(3))
                .heartbeat_interval(Duration::from_secs(2))
                .build()
                .unwrap_err(),
            ConfigError::HeartbeatTooSlow { .. }
        ));
        assert_eq!(
            b().heartbeat_interval(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroHeartbeat
        );
        assert!(matches!(
            b().lease_ttl(Duration::from_secs(3))
                .heartbeat_interval(Duration::from_secs(1))
                .fence_margin(Duration::from_secs(2))
                .build()
                .unwrap_err(),
            ConfigError::BadFenceMargin { .. }
        ));
        assert_eq!(
            b().shutdown_grace(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroGrace
        );
        assert_eq!(
            b().claim_interval(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroClaimInterval
        );
        assert_eq!(
            b().claim_batch(0).build().unwrap_err(),
            ConfigError::ZeroClaimBatch
        );
        assert_eq!(
            b().max_failures(0).build().unwrap_err(),
            ConfigError::ZeroMaxFailures
        );
        assert!(matches!(
            b().node_name("a\nb").build().unwrap_err(),
            ConfigError::BadNodeName(_)
        ));
    }
}
