//! Signal handling, in its own test binary: the handlers installed here stay for the life of
//! the process.
#![cfg(unix)]

use std::time::Duration;

use keyloop_supervisor::{Lifecycle, ShutdownSignals, Signal};
use tokio::time::timeout;

fn send_to_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

// One test so that the two signals cannot be consumed by the wrong listener.
#[tokio::test]
async fn sigterm_and_sigint_are_received_and_request_shutdown() {
    let mut signals = ShutdownSignals::new().unwrap();
    send_to_self("TERM");
    let got = timeout(Duration::from_secs(10), signals.recv())
        .await
        .expect("no SIGTERM seen");
    assert_eq!(got, Signal::Terminate);

    let lc = Lifecycle::new();
    lc.shutdown_on_signals().unwrap();
    assert!(!lc.is_shutdown_requested());
    send_to_self("INT");
    timeout(Duration::from_secs(10), lc.shutdown_requested())
        .await
        .expect("SIGINT did not request shutdown");
    let report = lc.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.is_clean());
}
