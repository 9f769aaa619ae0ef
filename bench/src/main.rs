//! keyloop benchmarks. Each scenario runs next to a peer in the same run (a hand-rolled
//! baseline: `Mutex<HashMap<Key, Arc<Notify>>>` and one tokio task per key, or plain tokio
//! tasks and timers), alternating subject and peer, and prints the medians and their ratio
//! beside the machine's load average.
//!
//! ```text
//! cargo run --release -p keyloop-bench -- [all|p1|p2|p3|p4|p9|p9-memory|p9-postgres] [--quick] [--pg-durable]
//! ```
//!
//! P9 on PostgreSQL starts a throw-away server as the tests do (`fsync` off, on `/dev/shm`
//! when available); `--pg-durable` starts a durable one instead (fsync on, on disk), and
//! `KEYLOOP_TEST_POSTGRES_URL` names an existing server to use.

mod baseline;
mod p1;
mod p2;
mod p3;
mod p4;
mod p9;
mod report;
mod rss;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(rss::CHILD) {
        rss::child(&args[1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let durable = args.iter().any(|a| a == "--pg-durable");
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
    println!(
        "keyloop benchmarks ({rounds} rounds each, median; 2 tokio workers unless noted)  loadavg {}",
        report::loadavg()
    );
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
    if matches!(which, "all" | "p4") {
        p4::run(if quick { 100_000 } else { 1_000_000 });
    }
    if matches!(which, "all" | "p9" | "p9-memory") {
        let n = if quick { 20_000 } else { 50_000 };
        p9::run(&p9::Backend::Memory, n, if quick { 1 } else { 3 });
    }
    if matches!(which, "all" | "p9" | "p9-postgres") {
        p9_postgres(quick, durable);
    }
}

fn p9_postgres(quick: bool, durable: bool) {
    use keyloop_conformance::{POSTGRES_URL_ENV, PostgresServer};
    let server;
    let (url, what) = match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => (url, "server from KEYLOOP_TEST_POSTGRES_URL"),
        _ if durable => {
            server = PostgresServer::start_durable().expect("starting PostgreSQL");
            (server.url(), "throw-away server, fsync on")
        }
        _ => {
            server = PostgresServer::start().expect("starting PostgreSQL");
            (
                server.url(),
                "throw-away server as the tests start it, fsync off",
            )
        }
    };
    let n = if quick { 20_000 } else { 30_000 };
    p9::run(
        &p9::Backend::Postgres { url, what },
        n,
        if quick { 1 } else { 3 },
    );
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
