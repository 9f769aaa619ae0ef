//! P3: resident memory per idle running loop, at 100k and 1M loops. Each measurement runs
//! in a fresh child process so allocator state from other scenarios does not count.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyloop_core::{Decision, Engine, Key, controller_fn};
use keyloop_memory::MemoryCluster;

use crate::baseline::Baseline;

pub(crate) fn run(sizes: &[usize]) {
    println!("P3 resident memory per idle running loop (fresh process per figure)");
    let exe = std::env::current_exe().expect("own executable");
    for &n in sizes {
        let measure = |which: &str| -> f64 {
            let out = Command::new(&exe)
                .args(["p3-child", which, &n.to_string()])
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
        };
        let subject = measure("keyloop");
        let baseline = measure("baseline");
        let total_mib = subject * n as f64 / (1024.0 * 1024.0);
        println!(
            "  P3 {n:>9} loops   keyloop {subject:>7.0} B/loop ({total_mib:.0} MiB)   baseline {baseline:>7.0} B/loop   ratio {:.2}x (ceiling 2x{})",
            subject / baseline,
            if n >= 1_000_000 {
                ", and under 2 GiB"
            } else {
                ""
            }
        );
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Runs in the child: prints bytes of RSS per idle loop.
pub(crate) fn child(args: &[String]) {
    let which = args[0].as_str();
    let n: usize = args[1].parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_loop = runtime.block_on(async move {
        let keys: Vec<Key> = (0..n)
            .map(|i| Key::new(format!("key-{i}")).unwrap())
            .collect();
        let before = rss_bytes();
        let after = match which {
            "keyloop" => {
                let started = Arc::new(AtomicU64::new(0));
                let controller = {
                    let started = Arc::clone(&started);
                    controller_fn(move |_key, ctx| {
                        started.fetch_add(1, Ordering::Relaxed);
                        async move {
                            ctx.shutdown().await;
                            Ok(Decision::Continue)
                        }
                    })
                };
                let cluster = MemoryCluster::new();
                let engine = Engine::builder(cluster.coordinator(), controller)
                    .config(|c| c.max_loops(n).claim_batch(4096))
                    .start()
                    .await
                    .unwrap();
                for key in &keys {
                    engine.trigger(key).await.unwrap();
                }
                crate::wait_for("P3 loops", Duration::from_secs(600), || {
                    started.load(Ordering::Relaxed) as usize == n
                })
                .await;
                let after = rss_bytes();
                std::mem::forget(engine);
                std::mem::forget(cluster);
                after
            }
            _ => {
                let baseline = Arc::new(Baseline::default());
                for key in &keys {
                    baseline.start_idle(key.clone());
                }
                tokio::task::yield_now().await;
                let after = rss_bytes();
                std::mem::forget(baseline);
                after
            }
        };
        (after.saturating_sub(before)) as f64 / n as f64
    });
    println!("{per_loop:.1}");
    std::process::exit(0);
}
