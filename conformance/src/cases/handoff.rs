//! Cases: handoff (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn graceful_shutdown_hands_off_all_keys(_harness: &dyn Harness) {
    panic!("conformance case graceful_shutdown_hands_off_all_keys is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn handoff_does_not_wait_for_ttl(_harness: &dyn Harness) {
    panic!("conformance case handoff_does_not_wait_for_ttl is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn triggers_during_handoff_reach_next_owner(_harness: &dyn Harness) {
    panic!("conformance case triggers_during_handoff_reach_next_owner is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn loop_ignoring_shutdown_is_abandoned_and_reported(_harness: &dyn Harness) {
    panic!("conformance case loop_ignoring_shutdown_is_abandoned_and_reported is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn shutdown_report_lists_keys(_harness: &dyn Harness) {
    panic!("conformance case shutdown_report_lists_keys is not written yet");
}
