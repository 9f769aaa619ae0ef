//! `SyncEvery` on the memory backend, under paused time: a key that completes runs again
//! after the period without a trigger, sleeping in the backend in between; a key the
//! adapter is told is gone retires; a trigger runs a resyncing key early.

use std::time::Duration;

use keyloop_core::{Decision, Engine, Key, KeyStatus, SyncEvery, controller_fn};
use keyloop_memory::MemoryCluster;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const PERIOD: Duration = Duration::from_secs(60);
/// Long enough for anything in these tests (paused time: waiting costs nothing).
const LIMIT: Duration = Duration::from_secs(600);

/// An engine whose controller completes at once and reports every run and status change.
async fn engine(
    cluster: &MemoryCluster,
    gone: &'static str,
) -> (
    Engine,
    mpsc::UnboundedReceiver<(Key, Instant)>,
    mpsc::UnboundedReceiver<(Key, KeyStatus)>,
) {
    let (runs_tx, runs) = mpsc::unbounded_channel();
    let (status_tx, statuses) = mpsc::unbounded_channel();
    let reconcile = controller_fn(move |key, _ctx| {
        let _ = runs_tx.send((key, Instant::now()));
        async { Ok(Decision::Complete) }
    });
    let controller = SyncEvery::new(reconcile, PERIOD)
        .unwrap()
        .retire_when(move |key| key.as_str() == gone);
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| {
            c.status_listener(move |key, status| {
                let _ = status_tx.send((key.clone(), status.clone()));
            })
        })
        .start()
        .await
        .unwrap();
    (engine, runs, statuses)
}

async fn next_run(runs: &mut mpsc::UnboundedReceiver<(Key, Instant)>) -> (Key, Instant) {
    timeout(LIMIT, runs.recv())
        .await
        .expect("a run within the limit")
        .expect("engine alive")
}

/// Waits for `key`'s next status that `wanted` accepts.
async fn status_of(
    statuses: &mut mpsc::UnboundedReceiver<(Key, KeyStatus)>,
    key: &str,
    wanted: impl Fn(&KeyStatus) -> bool,
) -> KeyStatus {
    timeout(LIMIT, async {
        loop {
            let (k, status) = statuses.recv().await.expect("engine alive");
            if k.as_str() == key && wanted(&status) {
                return status;
            }
        }
    })
    .await
    .expect("the status within the limit")
}

#[tokio::test(start_paused = true)]
async fn completed_key_runs_again_after_the_period_without_a_trigger() {
    let cluster = MemoryCluster::new();
    let (engine, mut runs, mut statuses) = engine(&cluster, "none").await;
    engine.trigger("vm/1").await.unwrap();
    let (_, mut last) = next_run(&mut runs).await;
    for _ in 0..2 {
        // Between runs the key sleeps in the backend: registered, no loop.
        status_of(&mut statuses, "vm/1", |s| {
            matches!(s, KeyStatus::Sleeping { .. })
        })
        .await;
        assert!(cluster.is_registered(&Key::new("vm/1").unwrap()));
        assert_eq!(engine.owned_count(), 0);
        let (key, at) = next_run(&mut runs).await;
        assert_eq!(key.as_str(), "vm/1");
        assert!(at - last >= PERIOD, "ran early: {:?}", at - last);
        last = at;
    }
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn key_that_is_gone_retires_instead_of_resyncing() {
    let cluster = MemoryCluster::new();
    let (engine, mut runs, mut statuses) = engine(&cluster, "vm/gone").await;
    engine.trigger("vm/gone").await.unwrap();
    next_run(&mut runs).await;
    status_of(&mut statuses, "vm/gone", |s| {
        matches!(s, KeyStatus::NotRegistered)
    })
    .await;
    assert!(!cluster.is_registered(&Key::new("vm/gone").unwrap()));
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn trigger_runs_a_resyncing_key_early() {
    let cluster = MemoryCluster::new();
    let (engine, mut runs, mut statuses) = engine(&cluster, "none").await;
    engine.trigger("vm/2").await.unwrap();
    let (_, first) = next_run(&mut runs).await;
    status_of(&mut statuses, "vm/2", |s| {
        matches!(s, KeyStatus::Sleeping { .. })
    })
    .await;
    engine.trigger("vm/2").await.unwrap();
    let (_, second) = next_run(&mut runs).await;
    assert!(
        second.duration_since(first) < PERIOD,
        "the trigger did not run it early"
    );
    engine.shutdown().await;
}
