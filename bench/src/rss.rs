//! Resident memory per key, measured in a fresh child process per figure so allocator state
//! from other scenarios does not count (P3, P4).
//!
//! The child builds its keys first, reads RSS, sets up `n` keys one way, waits for the
//! steady state, reads RSS again and prints the difference divided by `n`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyloop_core::{Decision, Engine, Key, controller_fn};
use keyloop_memory::MemoryCluster;

use crate::baseline::Baseline;

/// The first argument that makes the benchmark binary act as an RSS child.
pub(crate) const CHILD: &str = "rss-child";

/// How the child holds its `n` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// keyloop on the memory backend, one running loop per key idle in `ctx.shutdown()`.
    KeyloopIdle,
    /// keyloop on the memory backend, every key asleep after `RequeueAfter(1 h)`.
    KeyloopSleeping,
    /// The hand-rolled baseline: one tokio task per key waiting on its `Arc<Notify>`.
    BaselineIdle,
    /// One tokio task per key in `tokio::time::sleep(1 h)`, keys in a map.
    TokioSleeping,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::KeyloopIdle => "keyloop-idle",
            Setup::KeyloopSleeping => "keyloop-sleeping",
            Setup::BaselineIdle => "baseline-idle",
            Setup::TokioSleeping => "tokio-sleeping",
        }
    }

    fn parse(name: &str) -> Setup {
        [
            Setup::KeyloopIdle,
            Setup::KeyloopSleeping,
            Setup::BaselineIdle,
            Setup::TokioSleeping,
        ]
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("unknown RSS setup {name:?}"))
    }
}

/// A tokio runtime flavour, as the benchmarks report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    pub(crate) const BOTH: [Flavor; 2] = [Flavor::CurrentThread, Flavor::MultiThread];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread(2)",
        }
    }

    pub(crate) fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
        }
        .enable_all()
        .build()
        .expect("tokio runtime")
    }

    fn parse(name: &str) -> Flavor {
        Flavor::BOTH
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("unknown runtime flavour {name:?}"))
    }
}

/// Bytes of RSS per key for `n` keys held as `setup`, measured in a fresh child process.
pub(crate) fn measure(setup: Setup, n: usize, flavor: Flavor) -> f64 {
    let exe = std::env::current_exe().expect("own executable");
    let out = Command::new(&exe)
        .args([CHILD, setup.name(), &n.to_string(), flavor.name()])
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Runs in the child: prints bytes of RSS per key.
pub(crate) fn child(args: &[String]) {
    let setup = Setup::parse(&args[0]);
    let n: usize = args[1].parse().unwrap();
    let flavor = Flavor::parse(&args[2]);
    let per_key = flavor.runtime().block_on(async move {
        let keys: Vec<Key> = (0..n)
            .map(|i| Key::new(format!("key-{i}")).unwrap())
            .collect();
        let before = rss_bytes();
        let after = match setup {
            Setup::KeyloopIdle | Setup::KeyloopSleeping => keyloop(setup, &keys).await,
            Setup::BaselineIdle => {
                let baseline = Arc::new(Baseline::default());
                for key in &keys {
                    baseline.start_idle(key.clone());
                }
                tokio::task::yield_now().await;
                let after = rss_bytes();
                std::mem::forget(baseline);
                after
            }
            Setup::TokioSleeping => {
                let map = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
                for key in &keys {
                    let task = tokio::spawn(tokio::time::sleep(Duration::from_secs(3600)));
                    map.lock().unwrap().insert(key.clone(), task);
                }
                tokio::task::yield_now().await;
                let after = rss_bytes();
                std::mem::forget(map);
                after
            }
        };
        (after.saturating_sub(before)) as f64 / n as f64
    });
    println!("{per_key:.1}");
    std::process::exit(0);
}

/// Sets up keyloop with one idle loop per key, or with every key asleep; returns the RSS
/// at the steady state.
async fn keyloop(setup: Setup, keys: &[Key]) -> u64 {
    let n = keys.len();
    let sleeping = setup == Setup::KeyloopSleeping;
    let started = Arc::new(AtomicU64::new(0));
    let controller = {
        let started = Arc::clone(&started);
        controller_fn(move |_key, ctx| {
            started.fetch_add(1, Ordering::Relaxed);
            async move {
                if sleeping {
                    return Ok(Decision::RequeueAfter(Duration::from_secs(3600)));
                }
                ctx.shutdown().await;
                Ok(Decision::Continue)
            }
        })
    };
    let cluster = MemoryCluster::new();
    // Sleeping keys run once each, so the default `max_loops` (10,000) is enough and keeps
    // the transient of running loops small; idle loops need one slot each.
    let max_loops = if sleeping { n.min(10_000) } else { n };
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| c.max_loops(max_loops).claim_batch(4096))
        .start()
        .await
        .unwrap();
    for key in keys {
        engine.trigger(key).await.unwrap();
    }
    crate::wait_for(
        "keys to reach their steady state",
        Duration::from_secs(600),
        || {
            started.load(Ordering::Relaxed) as usize == n
                && (!sleeping || engine.owned_count() == 0)
        },
    )
    .await;
    let after = rss_bytes();
    std::mem::forget(engine);
    std::mem::forget(cluster);
    after
}
