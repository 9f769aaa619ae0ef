//! P2: loops started and completed per second on fresh keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyloop_core::{Decision, Engine, Key, controller_fn};
use keyloop_memory::MemoryCluster;

use crate::baseline::Baseline;
use crate::report::line;

pub(crate) async fn run(rounds: usize, loops: usize) {
    println!("P2 start -> run -> complete on fresh keys ({loops} keys per round)");
    let completed = Arc::new(AtomicU64::new(0));
    let controller = {
        let completed = Arc::clone(&completed);
        controller_fn(move |_key, _ctx| {
            completed.fetch_add(1, Ordering::Relaxed);
            async { Ok(Decision::Complete) }
        })
    };
    let cluster = MemoryCluster::new();
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| c.max_loops(loops).claim_batch(1024))
        .start()
        .await
        .unwrap();

    let (mut subject, mut base) = (vec![], vec![]);
    for round in 0..rounds {
        let keys: Vec<Key> = (0..loops)
            .map(|i| Key::new(format!("r{round}-key-{i}")).unwrap())
            .collect();
        let start = Instant::now();
        let target = completed.load(Ordering::Relaxed) + loops as u64;
        for key in &keys {
            engine.trigger(key).await.unwrap();
        }
        crate::wait_for("P2 loops", Duration::from_secs(120), || {
            completed.load(Ordering::Relaxed) >= target && cluster.registered() == 0
        })
        .await;
        subject.push(loops as f64 / start.elapsed().as_secs_f64());

        let baseline = Arc::new(Baseline::default());
        let start = Instant::now();
        for key in keys {
            baseline.start_and_complete(key);
        }
        crate::wait_for("P2 baseline loops", Duration::from_secs(120), || {
            baseline.completed.load(Ordering::Relaxed) as usize == loops
        })
        .await;
        base.push(loops as f64 / start.elapsed().as_secs_f64());
    }
    let ratio = line(
        "P2 loops started+completed/s",
        "/s",
        &mut subject,
        &mut base,
    );
    println!(
        "  P2 floor 0.5x: {}",
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
    engine.shutdown().await;
}
