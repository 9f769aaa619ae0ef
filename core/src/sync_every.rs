//! `SyncEvery`: controller-runtime's `SyncPeriod` as a controller adapter.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{BoxError, ConfigError, Controller, Decision, Key, LoopContext};

type RetireIf = Arc<dyn Fn(&Key) -> bool + Send + Sync>;

const MIN_PERIOD: Duration = Duration::from_millis(1);
const MAX_PERIOD: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Runs every key again at most `period` after its last run, without a trigger
/// (controller-runtime's `SyncPeriod`): a [`Controller`] adapter that turns the wrapped
/// controller's `Complete` into `RequeueAfter(period)`, stretched by its own
/// [`jitter`](SyncEvery::jitter).
///
/// The resync is an ordinary durable wake-up: between runs the key sleeps in the backend,
/// holding no task, no loop slot and no lease ([`Decision::RequeueAfter`]); a trigger runs it
/// early. Requeues the wrapped controller asks for itself are kept when they are sooner
/// than the period and shortened to the period otherwise, so every key runs at least once
/// per period (plus jitter). `Continue` and errors pass through unchanged (errors restart
/// with backoff and may park the key as usual).
///
/// Since `Complete` no longer retires a key, a key stays registered for good unless
/// [`retire_when`](SyncEvery::retire_when) says it is gone: then its `Complete` passes
/// through and the key leaves the registry.
///
/// The engine's [`requeue_jitter`](crate::EngineConfigBuilder::requeue_jitter) applies on
/// top, as to every requeue.
///
/// ```
/// use std::collections::HashSet;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use keyloop_core::{controller_fn, Decision, Engine, SyncEvery};
///
/// # async fn demo(coordinator: Arc<dyn keyloop_core::Coordinator>) -> Result<(), Box<dyn std::error::Error>> {
/// let deleted: Arc<Mutex<HashSet<String>>> = Arc::default();
/// let reconcile = controller_fn(|key, _ctx| async move {
///     println!("reconciling {key}");
///     Ok(Decision::Complete)
/// });
/// // Every key runs again 10 minutes (up to 11) after it completed, until it is deleted.
/// let controller = SyncEvery::new(reconcile, Duration::from_secs(600))?
///     .jitter(0.1)?
///     .retire_when({
///         let deleted = Arc::clone(&deleted);
///         move |key| deleted.lock().unwrap().contains(key.as_str())
///     });
/// let engine = Engine::builder(coordinator, controller).start().await?;
/// engine.trigger("vm/1").await?;
/// # Ok(()) }
/// ```
pub struct SyncEvery<C> {
    inner: C,
    period: Duration,
    jitter: f64,
    retire_if: Option<RetireIf>,
}

impl<C> fmt::Debug for SyncEvery<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncEvery")
            .field("period", &self.period)
            .field("jitter", &self.jitter)
            .field("retire_when", &self.retire_if.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: Controller> SyncEvery<C> {
    /// Wraps `inner` so that each of its keys runs again `period` after it completed.
    ///
    /// `period` is 1 ms to 10 years ([`ConfigError::OutOfRange`] otherwise: a zero period
    /// would run every key in a tight loop).
    pub fn new(inner: C, period: Duration) -> Result<SyncEvery<C>, ConfigError> {
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(ConfigError::OutOfRange {
                setting: "SyncEvery period",
                value: format!("{period:?}"),
                valid: "1ms to 3650 days".into(),
            });
        }
        Ok(SyncEvery {
            inner,
            period,
            jitter: 0.0,
            retire_if: None,
        })
    }

    /// Stretches each resync by a random part of `fraction` of the period (between
    /// `period` and `period × (1 + fraction)`, never shorter), so keys that completed
    /// together do not all run again together. 0 (the default) to 1
    /// ([`ConfigError::OutOfRange`] otherwise).
    pub fn jitter(mut self, fraction: f64) -> Result<SyncEvery<C>, ConfigError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(ConfigError::OutOfRange {
                setting: "SyncEvery jitter",
                value: fraction.to_string(),
                valid: "0 to 1".into(),
            });
        }
        self.jitter = fraction;
        Ok(self)
    }

    /// Lets keys leave the registry: after a `Complete`, a key for which `gone` answers
    /// `true` is retired as without the adapter instead of resynced. Called from the
    /// loop's task: keep it short and non-blocking (look the key up in a cache).
    pub fn retire_when(mut self, gone: impl Fn(&Key) -> bool + Send + Sync + 'static) -> Self {
        self.retire_if = Some(Arc::new(gone));
        self
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The wrapped controller.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// What `decision` of the wrapped controller for `key` becomes, seen at `now`; `draw`
    /// is a random number in `0..1` for the jitter.
    fn resync(&self, key: &Key, decision: Decision, now: SystemTime, draw: f64) -> Decision {
        let next = self.period + self.period.mul_f64(draw * self.jitter);
        match decision {
            Decision::Complete if self.retire_if.as_ref().is_some_and(|gone| gone(key)) => {
                Decision::Complete
            }
            Decision::Complete => Decision::RequeueAfter(next),
            Decision::RequeueAfter(delay) if delay > self.period => Decision::RequeueAfter(next),
            Decision::RequeueAt(at) if at > now + self.period => Decision::RequeueAfter(next),
            other => other,
        }
    }
}

#[async_trait]
impl<C: Controller> Controller for SyncEvery<C> {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let decision = self.inner.run(key.clone(), ctx).await?;
        Ok(self.resync(&key, decision, SystemTime::now(), rand::random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_fn;

    const PERIOD: Duration = Duration::from_secs(60);

    fn adapter() -> SyncEvery<impl Controller> {
        SyncEvery::new(
            controller_fn(|_key, _ctx| async { Ok(Decision::Complete) }),
            PERIOD,
        )
        .unwrap()
    }

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    #[test]
    fn complete_becomes_a_resync_after_the_period() {
        let now = SystemTime::now();
        let d = adapter().resync(&key("a"), Decision::Complete, now, 0.7);
        assert_eq!(d, Decision::RequeueAfter(PERIOD));
    }

    #[test]
    fn jitter_only_stretches_the_period() {
        let sync = adapter().jitter(0.5).unwrap();
        let now = SystemTime::now();
        for (draw, want) in [(0.0, 60.0), (0.5, 75.0), (0.999, 89.97)] {
            let Decision::RequeueAfter(d) = sync.resync(&key("a"), Decision::Complete, now, draw)
            else {
                panic!("not a requeue");
            };
            assert!((d.as_secs_f64() - want).abs() < 0.01, "{d:?} for {draw}");
        }
    }

    #[test]
    fn sooner_requeues_are_kept_and_later_ones_shortened_to_the_period() {
        let sync = adapter();
        let now = SystemTime::now();
        let k = key("a");
        let soon = Decision::RequeueAfter(Duration::from_secs(5));
        assert_eq!(sync.resync(&k, soon, now, 0.0), soon);
        let late = Decision::RequeueAfter(Duration::from_secs(3600));
        assert_eq!(
            sync.resync(&k, late, now, 0.0),
            Decision::RequeueAfter(PERIOD)
        );
        let soon_at = Decision::RequeueAt(now + Duration::from_secs(5));
        assert_eq!(sync.resync(&k, soon_at, now, 0.0), soon_at);
        let late_at = Decision::RequeueAt(now + Duration::from_secs(3600));
        assert_eq!(
            sync.resync(&k, late_at, now, 0.0),
            Decision::RequeueAfter(PERIOD)
        );
        assert_eq!(
            sync.resync(&k, Decision::Continue, now, 0.0),
            Decision::Continue
        );
    }

    #[test]
    fn retired_keys_complete() {
        let sync = adapter().retire_when(|key| key.as_str() == "gone");
        let now = SystemTime::now();
        assert_eq!(
            sync.resync(&key("gone"), Decision::Complete, now, 0.0),
            Decision::Complete
        );
        assert_eq!(
            sync.resync(&key("kept"), Decision::Complete, now, 0.0),
            Decision::RequeueAfter(PERIOD)
        );
    }

    #[test]
    fn periods_and_jitter_outside_their_range_are_refused() {
        let make = |period| {
            SyncEvery::new(
                controller_fn(|_key, _ctx| async { Ok(Decision::Complete) }),
                period,
            )
        };
        for period in [Duration::ZERO, Duration::from_micros(999), MAX_PERIOD * 2] {
            let err = make(period).unwrap_err();
            assert!(
                err.to_string().contains("SyncEvery period"),
                "{period:?}: {err}"
            );
        }
        assert!(make(MIN_PERIOD).is_ok() && make(MAX_PERIOD).is_ok());
        for fraction in [-0.1, 1.5, f64::NAN] {
            let err = adapter().jitter(fraction).unwrap_err();
            assert!(err.to_string().contains("SyncEvery jitter"), "{err}");
        }
        assert!(adapter().jitter(0.0).is_ok() && adapter().jitter(1.0).is_ok());
    }
}
