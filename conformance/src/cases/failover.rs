//! Cases: failover (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn crashed_node_keys_fail_over_after_ttl(_harness: &dyn Harness) {
    panic!("conformance case crashed_node_keys_fail_over_after_ttl is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn crashed_node_keys_not_claimed_before_ttl(_harness: &dyn Harness) {
    panic!("conformance case crashed_node_keys_not_claimed_before_ttl is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn stalled_node_stops_loops_before_expiry(_harness: &dyn Harness) {
    panic!("conformance case stalled_node_stops_loops_before_expiry is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn zombie_save_rejected_after_takeover(_harness: &dyn Harness) {
    panic!("conformance case zombie_save_rejected_after_takeover is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn zombie_save_rejected_after_expiry_without_takeover(_harness: &dyn Harness) {
    panic!(
        "conformance case zombie_save_rejected_after_expiry_without_takeover is not written yet"
    );
}

/// Not written yet: fails loudly until it is.
pub async fn stale_release_rejected(_harness: &dyn Harness) {
    panic!("conformance case stale_release_rejected is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn ownership_lost_signals_shutdown(_harness: &dyn Harness) {
    panic!("conformance case ownership_lost_signals_shutdown is not written yet");
}
