use std::time::Duration;

use keyloop_core::Backoff;

/// How a `wait_for` polls its condition: a fixed interval or a backoff, optionally at most
/// a number of times.
///
/// The default polls after 1 s, doubling up to 30 s, with ±10 % jitter, forever.
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    pub(crate) schedule: Schedule,
    pub(crate) max_polls: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Schedule {
    Every(Duration),
    Backoff(Backoff),
}

impl Default for Poll {
    fn default() -> Self {
        let backoff = Backoff::builder()
            .initial(Duration::from_secs(1))
            .max(Duration::from_secs(30))
            .multiplier(2.0)
            .jitter(0.1)
            .build()
            .expect("valid constant backoff");
        Poll::with_backoff(backoff)
    }
}

impl Poll {
    /// Polls at a fixed interval (must be greater than zero; checked when the flow is built).
    pub fn every(interval: Duration) -> Poll {
        Poll {
            schedule: Schedule::Every(interval),
            max_polls: None,
        }
    }

    /// Polls with growing delays.
    pub fn with_backoff(backoff: Backoff) -> Poll {
        Poll {
            schedule: Schedule::Backoff(backoff),
            max_polls: None,
        }
    }

    /// Gives up (a step failure, which an enclosing `retry` may absorb) after `polls`
    /// conditions returned `false`. At least 1; checked when the flow is built.
    pub fn max_polls(mut self, polls: u32) -> Poll {
        self.max_polls = Some(polls);
        self
    }

    /// The delay after the `poll`-th (0-based) unsatisfied condition.
    pub(crate) fn delay(&self, poll: u32) -> Duration {
        match &self.schedule {
            Schedule::Every(d) => *d,
            Schedule::Backoff(b) => b.delay(poll),
        }
    }

    pub(crate) fn problem(&self) -> Option<&'static str> {
        match (&self.schedule, self.max_polls) {
            (Schedule::Every(d), _) if d.is_zero() => {
                Some("must poll at an interval greater than zero")
            }
            (_, Some(0)) => Some("must allow at least one poll"),
            _ => None,
        }
    }
}

/// How a `retry` block retries: how many attempts in all, and the backoff between them.
///
/// ```
/// use keyloop_flow::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::attempts(5).backoff(
///     keyloop_core::Backoff::builder().initial(Duration::from_millis(200)).build().unwrap(),
/// );
/// assert_eq!(policy.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
}

impl RetryPolicy {
    /// At most `attempts` attempts (the first one included; at least 1, checked when the
    /// flow is built), with the default [`Backoff`] between them.
    pub fn attempts(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts,
            backoff: Backoff::default(),
        }
    }

    /// The delays between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> RetryPolicy {
        self.backoff = backoff;
        self
    }

    /// The maximum number of attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}
