//! keyloop benchmarks. Each scenario runs next to a hand-rolled baseline
//! (`Mutex<HashMap<Key, Arc<Notify>>>` and one tokio task per key) in the same run,
//! alternating subject and baseline, and prints the medians and their ratio.
//!
//! ```text
//! cargo run --release -p keyloop-bench -- [all|p1|p2|p3] [--quick]
//! ```

mod baseline;
mod p1;
mod p2;
mod p3;
mod report;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("p3-child") {
        p3::child(&args[1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let which = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(String::as_str)
        .unwrap_or("all");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rounds = if quick { 1 } else { 5 };
    println!("keyloop benchmarks ({rounds} rounds each, median; 2 tokio workers)");
    if matches!(which, "all" | "p1") {
        runtime.block_on(p1::run(rounds, if quick { 200_000 } else { 2_000_000 }));
    }
    if matches!(which, "all" | "p2") {
        runtime.block_on(p2::run(rounds, if quick { 20_000 } else { 200_000 }));
    }
    drop(runtime);
    if matches!(which, "all" | "p3") {
        let sizes: &[usize] = if quick {
            &[100_000]
        } else {
            &[100_000, 1_000_000]
        };
        p3::run(sizes);
    }
}

/// Waits until `done` holds, polling (benchmarks only; tests wait on events).
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
