//! Cases: ownership (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn triggered_key_runs(_harness: &dyn Harness) {
    panic!("conformance case triggered_key_runs is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn trigger_wakes_running_loop(_harness: &dyn Harness) {
    panic!("conformance case trigger_wakes_running_loop is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn trigger_reaches_owner_on_other_node(_harness: &dyn Harness) {
    panic!("conformance case trigger_reaches_owner_on_other_node is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn burst_of_triggers_coalesces(_harness: &dyn Harness) {
    panic!("conformance case burst_of_triggers_coalesces is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn trigger_during_complete_reruns_loop(_harness: &dyn Harness) {
    panic!("conformance case trigger_during_complete_reruns_loop is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn complete_retires_key(_harness: &dyn Harness) {
    panic!("conformance case complete_retires_key is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn continue_hands_key_to_other_node(_harness: &dyn Harness) {
    panic!("conformance case continue_hands_key_to_other_node is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn continue_on_single_node_runs_again(_harness: &dyn Harness) {
    panic!("conformance case continue_on_single_node_runs_again is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn epochs_strictly_increase_across_owners(_harness: &dyn Harness) {
    panic!("conformance case epochs_strictly_increase_across_owners is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn epochs_never_reset_after_retire_and_retrigger(_harness: &dyn Harness) {
    panic!("conformance case epochs_never_reset_after_retire_and_retrigger is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn concurrent_claimers_get_disjoint_keys(_harness: &dyn Harness) {
    panic!("conformance case concurrent_claimers_get_disjoint_keys is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn racing_claims_leave_one_owner(_harness: &dyn Harness) {
    panic!("conformance case racing_claims_leave_one_owner is not written yet");
}
