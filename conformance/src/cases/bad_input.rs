//! Cases: bad input (work in progress).

use crate::Harness;

/// Not written yet: fails loudly until it is.
pub async fn invalid_keys_rejected(_harness: &dyn Harness) {
    panic!("conformance case invalid_keys_rejected is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn unicode_and_special_keys_roundtrip(_harness: &dyn Harness) {
    panic!("conformance case unicode_and_special_keys_roundtrip is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn trigger_after_shutdown_is_error(_harness: &dyn Harness) {
    panic!("conformance case trigger_after_shutdown_is_error is not written yet");
}

/// Not written yet: fails loudly until it is.
pub async fn client_trigger_registers_key(_harness: &dyn Harness) {
    panic!("conformance case client_trigger_registers_key is not written yet");
}
