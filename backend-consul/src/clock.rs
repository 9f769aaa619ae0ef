//! The Consul agent's clock, as far as this process can tell: bounds on it built from the
//! `Date` header of every answer.
//!
//! Consul keeps no time in KV entries or sessions (`agent/structs/structs.go` `DirEntry`,
//! `Session`); the only server time its HTTP API exposes is the `Date` header that Go's
//! `net/http` server adds to every answer (`net/http/server.go` `chunkWriter.writeHeader`;
//! Consul's `agent/http.go` sets none itself), in whole seconds, from the clock of the agent
//! that answered. An answer whose `Date` reads `D` was produced between sending the request
//! (`sent`) and receiving the answer (`received`), when the agent's clock read between `D`
//! and `D + 1 s`. So at any later local instant `t` the agent's clock reads at least
//! `D + (t − received)` and at most `D + 1 s + (t − sent)`. The tightest of these bounds over
//! recent answers brackets the agent's clock within about one round trip once two answers
//! have straddled a second boundary, which heartbeats and watches make happen within seconds.
//!
//! Local elapsed time is measured on the monotonic clock, widened by [`DRIFT`] against a
//! rate difference between it and the agent's clock; samples older than two [`WINDOW`]s are
//! dropped, and an answer that contradicts the bounds (the agent's clock stepped) starts
//! them afresh from that answer.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long one window of samples lasts; the bounds use the current and the previous one.
const WINDOW: Duration = Duration::from_secs(60);
/// The largest rate difference assumed between this host's monotonic clock and the agent's
/// wall clock (1000 ppm: NTP slews at most 500 ppm).
const DRIFT: f64 = 1e-3;

/// One bound: the agent's clock read `at` (plus the elapsed time since `since`).
#[derive(Debug, Clone, Copy)]
struct Bound {
    at: SystemTime,
    since: Instant,
}

impl Bound {
    fn lower(self, now: Instant) -> SystemTime {
        let elapsed = now.saturating_duration_since(self.since);
        self.at + elapsed - elapsed.mul_f64(DRIFT)
    }

    fn upper(self, now: Instant) -> SystemTime {
        let elapsed = now.saturating_duration_since(self.since);
        self.at + elapsed + elapsed.mul_f64(DRIFT)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    lower: Bound,
    upper: Bound,
}

impl Window {
    fn lower(&self, now: Instant) -> SystemTime {
        self.lower.lower(now)
    }

    fn upper(&self, now: Instant) -> SystemTime {
        self.upper.upper(now)
    }
}

#[derive(Debug, Default)]
struct Windows {
    current: Option<Window>,
    previous: Option<Window>,
}

/// Bounds on the Consul agent's clock, fed by every answer's `Date` header.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    windows: Mutex<Windows>,
}

/// The agent's clock now: it reads at least `lower` and at most `upper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClockBounds {
    pub(crate) lower: SystemTime,
    pub(crate) upper: SystemTime,
}

impl ServerClock {
    /// Takes the `Date` of an answer to a request sent at `sent` and received at `received`.
    pub(crate) fn observe(&self, sent: Instant, received: Instant, date: SystemTime) {
        let sample = Window {
            started: received,
            lower: Bound {
                at: date,
                since: received,
            },
            upper: Bound {
                at: date + Duration::from_secs(1),
                since: sent,
            },
        };
        let mut w = self.windows.lock().unwrap();
        if let Some(bounds) = Self::combined(&w, received) {
            let contradicts =
                sample.upper(received) < bounds.lower || sample.lower(received) > bounds.upper;
            if contradicts {
                // The agent's clock stepped (or another agent answered): start afresh.
                *w = Windows {
                    current: Some(sample),
                    previous: None,
                };
                return;
            }
        }
        match &mut w.current {
            Some(cur) if received.saturating_duration_since(cur.started) < WINDOW => {
                if sample.lower(received) > cur.lower(received) {
                    cur.lower = sample.lower;
                }
                if sample.upper(received) < cur.upper(received) {
                    cur.upper = sample.upper;
                }
            }
            _ => {
                w.previous = w.current.take();
                w.current = Some(sample);
            }
        }
    }

    fn combined(w: &Windows, now: Instant) -> Option<ClockBounds> {
        let cur = w.current?;
        let mut b = ClockBounds {
            lower: cur.lower(now),
            upper: cur.upper(now),
        };
        if let Some(prev) = w
            .previous
            .filter(|p| now.saturating_duration_since(p.started) < WINDOW * 2)
        {
            let lower = b.lower.max(prev.lower(now));
            let upper = b.upper.min(prev.upper(now));
            if lower <= upper {
                b = ClockBounds { lower, upper };
            }
        }
        Some(b)
    }

    /// Bounds on the agent's clock now; `None` before any answer carried a `Date`.
    pub(crate) fn bounds(&self) -> Option<ClockBounds> {
        Self::combined(&self.windows.lock().unwrap(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn bounds_tighten_across_a_second_boundary() {
        let clock = ServerClock::default();
        assert_eq!(clock.bounds(), None);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Sent at t0, answered 2 ms later with Date 100 s: the agent read 100.0..101.0 s.
        clock.observe(t0, t0 + ms(2), secs(100));
        let b = ServerClock::combined(&clock.windows.lock().unwrap(), t0 + ms(2)).unwrap();
        assert_eq!(b.lower, secs(100));
        assert!(b.upper >= secs(101) && b.upper <= secs(101) + ms(3));
        // 600 ms later the Date already reads 101 s: the second ticked within the first
        // 600 ms, so the agent's clock is known within the round trip.
        clock.observe(t0 + ms(600), t0 + ms(602), secs(101));
        let now = t0 + ms(602);
        let b = ServerClock::combined(&clock.windows.lock().unwrap(), now).unwrap();
        assert_eq!(b.lower, secs(101));
        assert!(b.upper.duration_since(b.lower).unwrap() <= ms(610));
        assert!(b.lower <= b.upper);
    }

    #[test]
    fn a_stepped_clock_restarts_the_bounds() {
        let clock = ServerClock::default();
        let t0 = Instant::now();
        clock.observe(t0, t0, secs(100));
        // Ten seconds back: contradicts everything known; the new answer alone counts.
        clock.observe(t0, t0, secs(90));
        let b = ServerClock::combined(&clock.windows.lock().unwrap(), t0).unwrap();
        assert_eq!(b.lower, secs(90));
    }
}
