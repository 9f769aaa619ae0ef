//! A service that fails three times is restarted three times, with backoff between attempts,
//! and then succeeds.
//!
//! Run with `cargo run --example restart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyloop::supervisor::{Backoff, BoxError, Service, StopReason, Supervisor};

const FAILURES: u32 = 3;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_target(false)
        .init();

    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let flaky = Service::transient("flaky", move |ctx| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            println!("attempt {attempt} (restarts so far: {})", ctx.restarts());
            if attempt <= FAILURES {
                return Err(format!("attempt {attempt} failed"));
            }
            println!("attempt {attempt} succeeded");
            Ok(())
        }
    });

    let report = Supervisor::builder()
        // Short delays so the example is quick: 10 ms, 20 ms, 40 ms.
        .backoff(
            Backoff::builder()
                .initial(Duration::from_millis(10))
                .max(Duration::from_secs(1))
                .jitter(0.1)
                .build()?,
        )
        .service(flaky)
        .build()?
        .run()
        .await;

    let restarts = report.restarts("flaky").unwrap_or_default();
    println!(
        "flaky was restarted {restarts} times; supervisor stopped: {:?}",
        report.reason
    );
    if restarts != FAILURES || report.reason != StopReason::AllDone {
        return Err(format!("expected {FAILURES} restarts and AllDone, got {report:?}").into());
    }
    Ok(())
}
