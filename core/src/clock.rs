//! The clock a node measures its own lease on.
//!
//! Self-fencing compares "now" with "send time of the last successful heartbeat + TTL −
//! margin". Two requirements pick the clock:
//!
//! - it must be tokio's clock, so that tests on paused time control expiry exactly and
//!   agree with the memory backend, which measures leases on the same clock;
//! - it must not stop while the machine is suspended (a laptop lid, a VM paused by its
//!   host): `CLOCK_MONOTONIC`, behind both `std` and tokio instants on Linux, does not
//!   count suspended time, so a node resumed after a long suspend would believe its lease
//!   still valid for a moment while the backend expired it long ago.
//!
//! So lease time is tokio's elapsed time plus the time the machine spent suspended since
//! the clock was made, which Linux reports as `CLOCK_BOOTTIME − CLOCK_MONOTONIC` (the
//! difference grows only during a suspend). Elsewhere the suspended part is zero.
//! A process stopped with SIGSTOP needs nothing of this: the monotonic clock keeps
//! counting while it is stopped.

use std::time::Duration;

use tokio::time::Instant;

/// A point on a node's lease clock, in nanoseconds since the clock was made.
pub(crate) type LeaseNanos = u64;

/// The lease clock of one engine: cheap to copy, shared by every incarnation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseClock {
    base: Instant,
    suspended_at_base: u64,
}

impl LeaseClock {
    pub(crate) fn new() -> LeaseClock {
        LeaseClock {
            base: Instant::now(),
            suspended_at_base: suspended_nanos(),
        }
    }

    /// Now, on the lease clock.
    pub(crate) fn now(&self) -> LeaseNanos {
        let elapsed = saturating_nanos(Instant::now().saturating_duration_since(self.base));
        let suspended = suspended_nanos().saturating_sub(self.suspended_at_base);
        elapsed.saturating_add(suspended)
    }

    /// The tokio instant at which the lease clock will read `at`, if the machine is not
    /// suspended before then (for timers; every decision re-reads [`now`](Self::now)).
    pub(crate) fn instant_of(&self, at: LeaseNanos) -> Instant {
        let now = self.now();
        Instant::now() + Duration::from_nanos(at.saturating_sub(now))
    }
}

/// `d` in nanoseconds, saturating (a lease clock runs for 584 years before it saturates).
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(target_os = "linux")]
fn suspended_nanos() -> u64 {
    use rustix::time::{ClockId, clock_gettime};
    let nanos =
        |t: rustix::time::Timespec| (t.tv_sec as i128) * 1_000_000_000 + (t.tv_nsec as i128);
    // Monotonic first: a suspend between the two reads can only make the difference larger,
    // so the lease clock reads late rather than early (fencing early is the safe side).
    let monotonic = nanos(clock_gettime(ClockId::Monotonic));
    let boottime = nanos(clock_gettime(ClockId::Boottime));
    u64::try_from((boottime - monotonic).max(0)).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
fn suspended_nanos() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let clock = LeaseClock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(5)).await;
        let after = clock.now();
        // Paused time advanced by exactly 5 s; no suspend happens during a test.
        assert!(after - before >= 5_000_000_000, "{before} {after}");
        assert!(after - before < 6_000_000_000, "{before} {after}");
    }

    #[test]
    fn suspended_time_never_goes_backwards() {
        let a = suspended_nanos();
        let b = suspended_nanos();
        assert!(b + 1_000_000 >= a, "{a} {b}");
    }
}
