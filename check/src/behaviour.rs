//! [`Behaviour`]: faults a [`ReconcileController`](crate::ReconcileController) can be told
//! to have, per key.

use std::time::Duration;

/// How a reconcile loop misbehaves for one key; set with
/// [`ReconcileWorkload::set_behaviour`](crate::ReconcileWorkload::set_behaviour).
///
/// Failures and panics come *after* the loop wrote the external store and saved its state
/// (a loop that did its work, then crashed reporting it), so a key parked after repeated
/// failures still has its actual value equal to the desired value it read.
///
/// A behaviour is read at the start of every pass of a run (a lingering loop woken by a
/// trigger starts another pass, so a dependency breaking under a running loop fails its
/// next pass), and `on_shutdown` when the shutdown signal arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// The next this many runs (or passes) return an error.
    pub fail_runs: u32,
    /// The next this many runs panic (after the failing ones).
    pub panic_runs: u32,
    /// The next this many runs that would return `Complete` (after lingering, if told to)
    /// return `Continue` instead: the loop asks to continue on another node (G7a).
    pub continue_runs: u32,
    /// What the loop does on a graceful-shutdown signal before returning `Continue`.
    pub on_shutdown: Option<IgnoreShutdown>,
    /// How long a converged loop waits for more triggers before it returns `Complete`
    /// (`None`: the workload's default).
    pub linger: Option<Duration>,
    /// How long each run works (awaiting, not watching for triggers) after its write and
    /// before it fails, panics or lingers: triggers arriving meanwhile are not observed.
    pub work: Duration,
}

/// A loop that ignores its graceful-shutdown signal for a while (an ownership-lost signal
/// is always obeyed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreShutdown {
    /// Keeps awaiting (a timer) for this long: an abort lands at once.
    Await(Duration),
    /// Blocks its thread for this long (no `.await`): an abort lands only after.
    Block(Duration),
}
