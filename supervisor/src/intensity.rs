use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How many restarts a supervisor tolerates within a time window before it gives up.
///
/// When a restart would make more than `max_restarts` restarts (counted over all services of
/// the supervisor) within `within`, the supervisor escalates instead: it stops every service
/// and reports [`StopReason::IntensityExceeded`](crate::StopReason::IntensityExceeded). A crash
/// loop is then visible to whoever runs the supervisor instead of spinning forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    max_restarts: u32,
    within: Duration,
}

impl Intensity {
    /// At most `max_restarts` restarts within any window of length `within`. A zero window is
    /// rejected when the supervisor is built.
    pub fn new(max_restarts: u32, within: Duration) -> Self {
        Intensity {
            max_restarts,
            within,
        }
    }

    /// The number of restarts tolerated within the window.
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The length of the window.
    pub fn within(&self) -> Duration {
        self.within
    }
}

impl Default for Intensity {
    /// 10 restarts within 10 seconds.
    fn default() -> Self {
        Intensity::new(10, Duration::from_secs(10))
    }
}

/// The sliding window of recent restart times behind an [`Intensity`].
#[derive(Debug)]
pub(crate) struct RestartWindow {
    limit: Option<Intensity>,
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new(limit: Option<Intensity>) -> Self {
        RestartWindow {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; returns `false` when it exceeds the limit.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        // A restart exactly `within` ago has left the window.
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) >= limit.within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() <= limit.max_restarts as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_only_recent_restarts() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new(Some(Intensity::new(2, Duration::from_secs(10))));
        assert!(w.admit(t0));
        assert!(w.admit(t0 + Duration::from_secs(1)));
        assert!(
            !w.admit(t0 + Duration::from_secs(2)),
            "third restart within 10 s"
        );
        let mut w = RestartWindow::new(Some(Intensity::new(2, Duration::from_secs(10))));
        assert!(w.admit(t0));
        assert!(w.admit(t0 + Duration::from_secs(5)));
        assert!(
            w.admit(t0 + Duration::from_secs(10)),
            "the first one left the window"
        );
        assert!(!w.admit(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn zero_restarts_escalates_on_the_first() {
        let mut w = RestartWindow::new(Some(Intensity::new(0, Duration::from_secs(1))));
        assert!(!w.admit(Instant::now()));
    }

    #[test]
    fn unlimited_never_escalates() {
        let t0 = Instant::now();
        let mut w = RestartWindow::new(None);
        assert!((0..10_000).all(|_| w.admit(t0)));
    }

    proptest::proptest! {
        /// The sliding window agrees with counting, for every restart, the restarts less than
        /// `within` before it (itself included).
        #[test]
        fn window_matches_a_naive_count(
            max in 0u32..5,
            within_ms in 1u64..1000,
            gaps in proptest::collection::vec(0u64..600, 1..60),
        ) {
            let t0 = Instant::now();
            let within = Duration::from_millis(within_ms);
            let mut w = RestartWindow::new(Some(Intensity::new(max, within)));
            let mut times = Vec::new();
            let mut t = t0;
            for gap in gaps {
                t += Duration::from_millis(gap);
                times.push(t);
                let count = times.iter().filter(|&&x| t.duration_since(x) < within).count();
                proptest::prop_assert_eq!(w.admit(t), count <= max as usize);
            }
        }
    }
}
