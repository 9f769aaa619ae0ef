use std::fmt;
use std::time::Duration;

use keyloop_supervisor::Backoff;

use crate::defect::Defects;
use crate::{ConfigError, Defect, StatusListener};

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
    pub(crate) resync_interval: Duration,
    pub(crate) abandon_timeout: Duration,
    pub(crate) requeue_jitter: f64,
    pub(crate) status_listener: Option<StatusListener>,
    pub(crate) defects: Defects,
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
            .field("resync_interval", &self.resync_interval)
            .field("abandon_timeout", &self.abandon_timeout)
            .field("requeue_jitter", &self.requeue_jitter)
            .field("status_listener", &self.status_listener.is_some())
            .finish()
    }
}

impl EngineConfig {
    /// A builder with the defaults. Every setting has a valid range, checked by
    /// [`build`](EngineConfigBuilder::build):
    ///
    /// | setting | default | valid |
    /// |---|---|---|
    /// | `max_loops` | 10,000 | 1 to 10,000,000 |
    /// | `lease_ttl` | 15 s | 100 ms to 1 h |
    /// | `heartbeat_interval` | `lease_ttl / 5` | 1 ms to `lease_ttl / 3` |
    /// | `fence_margin` | `lease_ttl / 5` | at least 1 ms, and `fence_margin + heartbeat_interval < lease_ttl` |
    /// | `claim_interval` | 1 s | 1 ms to 1 h |
    /// | `claim_batch` | 256 | 1 to 10,000 |
    /// | `shutdown_grace` | 30 s | 1 ms to 1 h |
    /// | `abandon_timeout` | 5 s | 1 ms to 1 h |
    /// | `resync_interval` | 30 s | 100 ms to 24 h |
    /// | `restart_backoff` | 100 ms ×2 up to 30 s | its maximum at most 24 h |
    /// | `healthy_run` | 10 s | 1 ms to 24 h |
    /// | `max_failures` | 5 | 1 to 1,000,000 |
    /// | `handoff_avoid` | 2 s | 0 to 1 h |
    /// | `requeue_jitter` | 0 | 0 to 1 |
    /// | `node_name` | `node-` + random hex | printable, at most 256 bytes |
    ///
    /// The backend must also grant a lease of at least `lease_ttl` (and longer than
    /// `heartbeat_interval + fence_margin`); otherwise `Engine::start` fails with
    /// [`Error::LeaseTooShort`](crate::Error::LeaseTooShort).
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
                resync_interval: Duration::from_secs(30),
                abandon_timeout: Duration::from_secs(5),
                requeue_jitter: 0.0,
                status_listener: None,
                defects: Defects::default(),
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
    /// How often the engine re-reads what it owns even without a `Resync` from the backend
    /// (a backstop for hints lost without notice, e.g. on a half-open connection).
    pub fn resync_interval(mut self, interval: Duration) -> Self {
        self.config.resync_interval = interval;
        self
    }
    /// How long a loop abandoned at the end of the shutdown grace (and aborted) gets to end
    /// before its key is left to lease expiry instead of being released.
    pub fn abandon_timeout(mut self, timeout: Duration) -> Self {
        self.config.abandon_timeout = timeout;
        self
    }
    /// Spreads requeues: a loop returning `RequeueAfter(d)` sleeps a random time between
    /// `d` and `d × (1 + jitter)` (never less than `d`), so a herd of keys requeued with
    /// the same delay does not wake at once. Also applies to `RequeueAt` (the spread is
    /// taken from the time left). 0 (the default) to 1.
    pub fn requeue_jitter(mut self, jitter: f64) -> Self {
        self.config.requeue_jitter = jitter;
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

    /// Brings back a fixed bug, for tests that show they catch it. Never in production.
    #[doc(hidden)]
    pub fn inject_defect(mut self, defect: Defect) -> Self {
        self.config.defects = self.config.defects.with(defect);
        self
    }

    /// Validates the settings; each has a valid range (see [`EngineConfig::builder`]), and a
    /// value outside it is a [`ConfigError`] naming the setting.
    pub fn build(self) -> Result<EngineConfig, ConfigError> {
        let mut c = self.config;
        if c.node_name.is_empty() {
            c.node_name = format!("node-{:08x}", rand::random::<u32>());
        }
        if c.node_name.chars().any(char::is_control) || c.node_name.len() > 256 {
            return Err(ConfigError::BadNodeName(c.node_name));
        }
        count("max_loops", c.max_loops as u64, 1, 10_000_000)?;
        count("claim_batch", c.claim_batch as u64, 1, 10_000)?;
        count("max_failures", u64::from(c.max_failures), 1, 1_000_000)?;
        duration("lease_ttl", c.lease_ttl, MIN_LEASE_TTL, HOUR)?;
        if !self.heartbeat_set {
            c.heartbeat_interval = c.lease_ttl / 5;
        }
        if !self.margin_set {
            c.fence_margin = c.lease_ttl / 5;
        }
        duration("heartbeat_interval", c.heartbeat_interval, MILLI, HOUR)?;
        if c.heartbeat_interval > c.lease_ttl / 3 {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: c.heartbeat_interval,
                ttl: c.lease_ttl,
            });
        }
        if c.fence_margin < MILLI || c.fence_margin + c.heartbeat_interval >= c.lease_ttl {
            return Err(ConfigError::BadFenceMargin {
                margin: c.fence_margin,
                heartbeat: c.heartbeat_interval,
                ttl: c.lease_ttl,
            });
        }
        duration("claim_interval", c.claim_interval, MILLI, HOUR)?;
        duration("shutdown_grace", c.shutdown_grace, MILLI, HOUR)?;
        duration("abandon_timeout", c.abandon_timeout, MILLI, HOUR)?;
        duration("resync_interval", c.resync_interval, 100 * MILLI, DAY)?;
        duration("healthy_run", c.healthy_run, MILLI, DAY)?;
        duration("handoff_avoid", c.handoff_avoid, Duration::ZERO, HOUR)?;
        if !(0.0..=1.0).contains(&c.requeue_jitter) {
            return Err(ConfigError::OutOfRange {
                setting: "requeue_jitter",
                value: c.requeue_jitter.to_string(),
                valid: "0 to 1".into(),
            });
        }
        duration(
            "restart_backoff (its maximum delay)",
            c.restart_backoff.max(),
            Duration::ZERO,
            DAY,
        )?;
        Ok(c)
    }
}

const MILLI: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Below this no backend can renew a lease in time across a network, and timer
/// granularity alone eats the fence margin.
const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

fn duration(
    setting: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            setting,
            value: format!("{value:?}"),
            valid: format!("{min:?} to {max:?}"),
        });
    }
    Ok(())
}

fn count(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            setting,
            value: value.to_string(),
            valid: format!("{min} to {max}"),
        });
    }
    Ok(())
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

    fn out_of_range(result: Result<EngineConfig, ConfigError>, name: &str) {
        match result {
            Err(ConfigError::OutOfRange { setting, .. }) => assert_eq!(setting, name),
            other => panic!("{name}: expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_setting_is_a_typed_error() {
        let b = EngineConfig::builder;
        out_of_range(b().max_loops(0).build(), "max_loops");
        out_of_range(b().max_loops(usize::MAX).build(), "max_loops");
        out_of_range(b().lease_ttl(Duration::ZERO).build(), "lease_ttl");
        out_of_range(b().lease_ttl(Duration::from_nanos(5)).build(), "lease_ttl");
        out_of_range(b().lease_ttl(Duration::MAX).build(), "lease_ttl");
        assert!(matches!(
            b().lease_ttl(Duration::from_secs(3))
                .heartbeat_interval(Duration::from_secs(2))
                .build()
                .unwrap_err(),
            ConfigError::HeartbeatTooSlow { .. }
        ));
        out_of_range(
            b().heartbeat_interval(Duration::ZERO).build(),
            "heartbeat_interval",
        );
        assert!(matches!(
            b().lease_ttl(Duration::from_secs(3))
                .heartbeat_interval(Duration::from_secs(1))
                .fence_margin(Duration::from_secs(2))
                .build()
                .unwrap_err(),
            ConfigError::BadFenceMargin { .. }
        ));
        out_of_range(b().shutdown_grace(Duration::ZERO).build(), "shutdown_grace");
        out_of_range(b().shutdown_grace(Duration::MAX).build(), "shutdown_grace");
        out_of_range(b().claim_interval(Duration::ZERO).build(), "claim_interval");
        out_of_range(b().claim_interval(Duration::MAX).build(), "claim_interval");
        out_of_range(b().claim_batch(0).build(), "claim_batch");
        out_of_range(b().max_failures(0).build(), "max_failures");
        out_of_range(
            b().abandon_timeout(Duration::ZERO).build(),
            "abandon_timeout",
        );
        out_of_range(
            b().abandon_timeout(Duration::MAX).build(),
            "abandon_timeout",
        );
        out_of_range(
            b().resync_interval(Duration::from_millis(1)).build(),
            "resync_interval",
        );
        out_of_range(
            b().resync_interval(Duration::MAX).build(),
            "resync_interval",
        );
        out_of_range(b().healthy_run(Duration::MAX).build(), "healthy_run");
        out_of_range(b().handoff_avoid(Duration::MAX).build(), "handoff_avoid");
        assert!(matches!(
            b().node_name("a\nb").build().unwrap_err(),
            ConfigError::BadNodeName(_)
        ));
    }

    #[test]
    fn error_messages_name_the_setting_and_its_range() {
        let e = EngineConfig::builder()
            .shutdown_grace(Duration::MAX)
            .build()
            .unwrap_err();
        let message = e.to_string();
        assert!(message.contains("shutdown_grace"), "{message}");
        assert!(
            message.contains("1h") || message.contains("3600s"),
            "{message}"
        );
    }
}
