//! The conformance suite on the memory backend, under tokio's paused time.

mod common;

use common::MemoryHarness;

keyloop_conformance::conformance_tests!(MemoryHarness::paused(), paused = true);

#[test]
fn suite_has_every_case_of_the_checklist() {
    assert_eq!(keyloop_conformance::CASES.len(), 60);
}
