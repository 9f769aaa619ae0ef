//! Running one case in isolation, to show that it fails against a broken backend.

use std::sync::Arc;

use crate::{Harness, run_case};

/// Runs `case` against `harness` in its own task; `Err` carries the panic message when the
/// case failed.
pub async fn run_case_to_completion(harness: Arc<dyn Harness>, case: &str) -> Result<(), String> {
    let name = case.to_string();
    let joined = tokio::spawn(async move { run_case(&*harness, &name).await }).await;
    match joined {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(message)
        }
        Err(e) => Err(format!("case task was cancelled: {e}")),
    }
}

/// Panics unless `case` fails against `harness` (for harnesses of deliberately broken
/// coordinators, see [`Breakage`](crate::Breakage)). Returns the failure message.
pub async fn assert_case_fails(harness: Arc<dyn Harness>, case: &str) -> String {
    let backend = harness.name().to_string();
    match run_case_to_completion(harness, case).await {
        Ok(()) => panic!(
            "conformance case {case} passed against the broken backend {backend}; it must fail"
        ),
        Err(message) => message,
    }
}
