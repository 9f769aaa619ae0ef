//! The conformance suite on the memory backend on a multi-thread runtime with real time,
//! where the engine's races can actually happen (the paused suite runs single-threaded).

mod common;

use std::time::Duration;

use common::MemoryHarness;

keyloop_conformance::conformance_tests!(
    MemoryHarness::real_time(Duration::from_secs(1)),
    paused = false
);
