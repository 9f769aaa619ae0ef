//! Cases: supervision (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn loop_error_restarts_with_backoff(_harness: &dyn Harness) {
    panic!("conformance case loop_error_restarts_with_backoff is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn loop_panic_is_caught(_harness: &dyn Harness) {
    panic!("conformance case loop_panic_is_caught is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn repeated_failures_park_key(_harness: &dyn Harness) {
    panic!("conformance case repeated_failures_park_key is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn parked_key_resumes_on_trigger(_harness: &dyn Harness) {
    panic!("conformance case parked_key_resumes_on_trigger is not written yet");
}
