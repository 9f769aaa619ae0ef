//! P1: triggers per second on 10k running keys, and loop wake-ups per second (coalescing
//! makes them differ).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyloop_core::{Decision, Engine, Key, Wake, controller_fn};
use keyloop_memory::MemoryCluster;

use crate::baseline::Baseline;
use crate::report::line;

const KEYS: usize = 10_000;
const TRIGGER_TASKS: usize = 2;

pub(crate) async fn run(rounds: usize, triggers: usize) {
    println!(
        "P1 triggers on {KEYS} running keys ({triggers} triggers per round, {TRIGGER_TASKS} triggering tasks)"
    );
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|i| Key::new(format!("key-{i}")).unwrap())
            .collect(),
    );

    let wakeups = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let controller = {
        let wakeups = Arc::clone(&wakeups);
        let started = Arc::clone(&started);
        controller_fn(move |_key, ctx| {
            let wakeups = Arc::clone(&wakeups);
            started.fetch_add(1, Ordering::Relaxed);
            async move {
                loop {
                    match ctx.next().await {
                        Wake::Triggered => {
                            wakeups.fetch_add(1, Ordering::Relaxed);
                        }
                        Wake::Shutdown(_) => return Ok(Decision::Continue),
                    }
                }
            }
        })
    };
    let cluster = MemoryCluster::new();
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| c.max_loops(KEYS).claim_batch(1024))
        .start()
        .await
        .unwrap();
    for key in keys.iter() {
        engine.trigger(key).await.unwrap();
    }
    crate::wait_for("P1 loops to start", Duration::from_secs(60), || {
        started.load(Ordering::Relaxed) as usize == KEYS
    })
    .await;

    let baseline = Arc::new(Baseline::default());
    for key in keys.iter() {
        baseline.start_idle(key.clone());
    }

    let (mut s_trig, mut s_wake, mut b_trig, mut b_wake) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let before = wakeups.load(Ordering::Relaxed);
        let elapsed = drive(&keys, triggers, {
            let engine = engine.clone();
            move |key| {
                let engine = engine.clone();
                async move {
                    engine.trigger(&key).await.unwrap();
                }
            }
        })
        .await;
        let woke = wakeups.load(Ordering::Relaxed) - before;
        s_trig.push(triggers as f64 / elapsed.as_secs_f64());
        s_wake.push(woke as f64 / elapsed.as_secs_f64());

        let before = baseline.wakeups.load(Ordering::Relaxed);
        let elapsed = drive(&keys, triggers, {
            let baseline = Arc::clone(&baseline);
            move |key| {
                baseline.trigger(&key);
                std::future::ready(())
            }
        })
        .await;
        let woke = baseline.wakeups.load(Ordering::Relaxed) - before;
        b_trig.push(triggers as f64 / elapsed.as_secs_f64());
        b_wake.push(woke as f64 / elapsed.as_secs_f64());
    }
    let ratio = line("P1 triggers/s", "/s", &mut s_trig, &mut b_trig);
    line("P1 loop wake-ups/s", "/s", &mut s_wake, &mut b_wake);
    println!(
        "  P1 floor 0.5x: {}",
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
    engine.shutdown().await;
}

/// Sends `total` triggers round-robin over `keys` from [`TRIGGER_TASKS`] tasks.
async fn drive<F, Fut>(keys: &Arc<Vec<Key>>, total: usize, trigger: F) -> Duration
where
    F: Fn(Key) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TRIGGER_TASKS {
        let keys = Arc::clone(keys);
        let trigger = trigger.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / TRIGGER_TASKS {
                let key = &keys[(i * TRIGGER_TASKS + t) % keys.len()];
                trigger(key.clone()).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}
