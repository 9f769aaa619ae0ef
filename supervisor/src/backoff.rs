use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter and a cap.
///
/// The delay before retry number `n` (0-based) is `initial * multiplier^n`, capped at `max`,
/// then spread by up to `± jitter` (a fraction of the delay) so that many failing tasks do
/// not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

/// Why a [`Backoff`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffError {
    /// The initial delay was zero.
    #[error("backoff initial delay must be greater than zero")]
    ZeroInitial,
    /// The cap was below the initial delay.
    #[error("backoff max delay {max:?} is below the initial delay {initial:?}")]
    MaxBelowInitial {
        /// The configured initial delay.
        initial: Duration,
        /// The configured cap.
        max: Duration,
    },
    /// The multiplier was below 1 or not finite.
    #[error("backoff multiplier must be a finite number >= 1, got {0}")]
    BadMultiplier(f64),
    /// The jitter fraction was outside `0.0..=1.0`.
    #[error("backoff jitter must be within 0.0..=1.0, got {0}")]
    BadJitter(f64),
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// A builder starting from the defaults (100 ms, ×2, capped at 30 s, ±20 % jitter).
    pub fn builder() -> BackoffBuilder {
        BackoffBuilder {
            backoff: Backoff::default(),
        }
    }

    /// The delay before retry `attempt` (0-based), without jitter.
    pub fn delay_without_jitter(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        let nanos = (self.initial.as_nanos() as f64 * factor).min(self.max.as_nanos() as f64);
        Duration::from_nanos(nanos as u64).min(self.max)
    }

    /// The delay before retry `attempt` (0-based), with jitter applied; never above `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.delay_without_jitter(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let spread = rand::rng().random_range(-self.jitter..=self.jitter);
        let nanos = base.as_nanos() as f64 * (1.0 + spread);
        Duration::from_nanos(nanos.max(0.0) as u64).min(self.max)
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }
}

/// Builds a [`Backoff`], validated at [`BackoffBuilder::build`].
#[derive(Debug, Clone)]
pub struct BackoffBuilder {
    backoff: Backoff,
}

impl BackoffBuilder {
    /// The first delay.
    pub fn initial(mut self, initial: Duration) -> Self {
        self.backoff.initial = initial;
        self
    }

    /// The largest delay.
    pub fn max(mut self, max: Duration) -> Self {
        self.backoff.max = max;
        self
    }

    /// The growth factor between consecutive delays.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff.multiplier = multiplier;
        self
    }

    /// The jitter as a fraction of the delay (0 disables jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.backoff.jitter = jitter;
        self
    }

    /// Validates and returns the backoff.
    pub fn build(self) -> Result<Backoff, BackoffError> {
        let b = self.backoff;
        if b.initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if b.max < b.initial {
            return Err(BackoffError::MaxBelowInitial {
                initial: b.initial,
                max: b.max,
            });
        }
        if !b.multiplier.is_finite() || b.multiplier < 1.0 {
            return Err(BackoffError::BadMultiplier(b.multiplier));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(BackoffError::BadJitter(b.jitter));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let b = Backoff::builder()
            .initial(Duration::from_millis(10))
            .max(Duration::from_millis(50))
            .jitter(0.0)
            .build()
            .unwrap();
        let delays: Vec<_> = (0..5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::builder()
            .initial(Duration::from_millis(100))
            .max(Duration::from_secs(10))
            .jitter(0.5)
            .build()
            .unwrap();
        for _ in 0..1000 {
            let d = b.delay(0);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
    }

    #[test]
    fn invalid_settings_are_typed_errors() {
        assert_eq!(
            Backoff::builder().initial(Duration::ZERO).build(),
            Err(BackoffError::ZeroInitial)
        );
        assert!(matches!(
            Backoff::builder()
                .initial(Duration::from_secs(2))
                .max(Duration::from_secs(1))
                .build(),
            Err(BackoffError::MaxBelowInitial { .. })
        ));
        assert!(matches!(
            Backoff::builder().multiplier(0.5).build(),
            Err(BackoffError::BadMultiplier(_))
        ));
        assert!(matches!(
            Backoff::builder().jitter(1.5).build(),
            Err(BackoffError::BadJitter(_))
        ));
    }
}
