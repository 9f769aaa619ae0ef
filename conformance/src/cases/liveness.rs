//! Cases: liveness (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn max_loops_respected(_harness: &dyn Harness) {
    panic!("conformance case max_loops_respected is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn excess_keys_go_to_other_nodes(_harness: &dyn Harness) {
    panic!("conformance case excess_keys_go_to_other_nodes is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn new_node_picks_pending_keys(_harness: &dyn Harness) {
    panic!("conformance case new_node_picks_pending_keys is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn ten_thousand_keys_across_three_nodes(_harness: &dyn Harness) {
    panic!("conformance case ten_thousand_keys_across_three_nodes is not written yet");
}
