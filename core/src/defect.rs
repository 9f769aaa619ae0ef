//! Deliberate defects, for testing the tests.
//!
//! Each variant brings back one bug the engine once had, so that a test suite (the
//! conformance suite's self-test, the history checker's) can show that it catches it.
//! Hidden from the documentation; never set one outside such a test.

/// A bug the engine can be told to have again (see the module docs). Set with the hidden
/// `EngineConfigBuilder::inject_defect`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Defect {
    /// A resync starts a loop for every key the (possibly stale) `owned` answer lists
    /// without one, instead of re-claiming it with `claim_key`.
    ResyncTrustsListing,
    /// A key is parked after repeated failures whatever triggers arrived during the
    /// failing run (the park carries no observed sequence).
    ParkIgnoresTriggers,
    /// An abandoned loop's key is released right after the abort, before its task ended.
    ReleasesAbandonedAtOnce,
    /// The claimer checks phase and session before inserting a new loop, not after (and
    /// is "preempted" for 200 µs in between, as a thread can be).
    ChecksBeforeInsert,
    /// Events of an earlier incarnation are applied to the current one, and a lost-lease
    /// notice is a bare wake-up any incarnation may consume.
    AcceptsStaleEvents,
    /// A failed claim (which may have committed) triggers no resync.
    ForgetsFailedClaims,
    /// No periodic resync.
    NoPeriodicResync,
    /// Leases shorter than requested are accepted.
    AcceptsShortLeases,
    /// Loops judge ownership only by the signal, not by the lease clock.
    LoopsIgnoreLeaseClock,
}

impl Defect {
    /// Every defect.
    pub const ALL: &'static [Defect] = &[
        Defect::ResyncTrustsListing,
        Defect::ParkIgnoresTriggers,
        Defect::ReleasesAbandonedAtOnce,
        Defect::ChecksBeforeInsert,
        Defect::AcceptsStaleEvents,
        Defect::ForgetsFailedClaims,
        Defect::NoPeriodicResync,
        Defect::AcceptsShortLeases,
        Defect::LoopsIgnoreLeaseClock,
    ];

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The set of defects an engine was built with (empty in every real engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Defects(u32);

impl Defects {
    pub(crate) fn with(self, defect: Defect) -> Defects {
        Defects(self.0 | defect.bit())
    }

    pub(crate) fn has(self, defect: Defect) -> bool {
        self.0 & defect.bit() != 0
    }
}
