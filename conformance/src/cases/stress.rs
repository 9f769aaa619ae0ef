//! Cases beyond the checklist: races under load.

use std::sync::Arc;

use keyloop_core::{Client, Engine, Key, TriggerOutcome};

use crate::{Case, Happening, Harness, Recorder, Step, eventually, key};

/// Something that triggers keys: an engine or a client.
#[derive(Clone)]
enum Trigger {
    Engine(Engine),
    Client(Client),
}

impl Trigger {
    async fn trigger(&self, k: &Key) -> TriggerOutcome {
        match self {
            Trigger::Engine(e) => e.trigger(k.clone()).await,
            Trigger::Client(c) => c.trigger(k.clone()).await,
        }
        .unwrap_or_else(|e| panic!("trigger {k:?}: {e}"))
    }
}

/// G3 under load: triggers from several nodes and clients race with loops that complete at
/// once, with claims, and with a node handing its keys off; every trigger is followed by a
/// start of its key's loop, and the registry drains.
pub async fn trigger_storm_loses_nothing(harness: &dyn Harness) {
    const KEYS: usize = 16;
    const PER_TRIGGERER: usize = 100;
    let mut case = Case::new(harness).await;
    // Loops work a little (yielding) so that triggers land between claim and completion.
    case.script
        .set_default(vec![Step::Yield(3, Box::new(Step::Complete))]);
    let keys: Arc<Vec<Key>> = Arc::new((0..KEYS).map(|i| key(&format!("storm/{i:02}"))).collect());
    let a = case.node("a").await;
    let b = case.node("b").await;
    let c = case.node("c").await;
    let triggerers = vec![
        ("a", Trigger::Engine(a.engine.clone())),
        ("b", Trigger::Engine(b.engine.clone())),
        ("client-1", Trigger::Client(case.client().await)),
        ("client-2", Trigger::Client(case.client().await)),
    ];
    let mut tasks = Vec::new();
    for (n, (name, by)) in triggerers.into_iter().enumerate() {
        let keys = Arc::clone(&keys);
        let recorder: Recorder = case.recorder.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TRIGGERER {
                let k = &keys[(i * (n + 3) + n) % KEYS];
                recorder.trigger_sent(name, k);
                by.trigger(k).await;
                if i % 3 == n % 3 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // A node leaves in the middle of the storm: its keys are handed off.
    case.wait("the storm is under way", |log| {
        log.records().len() >= PER_TRIGGERER
    })
    .await;
    c.engine.shutdown().await;
    for task in tasks {
        task.await.expect("triggerer");
    }
    let coordinator = case.coordinator().await;
    eventually(
        "the registry drains",
        case.timeout(),
        case.ttl / 20,
        || async {
            let snapshot = coordinator.inspect().await.expect("inspect");
            snapshot.keys.is_empty().then_some(())
        },
    )
    .await;
    let log = case.recorder.lock();
    for k in keys.iter() {
        let sent = log.last_index(k, |h| *h == Happening::TriggerSent);
        let started = log.last_index(k, |h| *h == Happening::Start);
        assert!(
            started > sent,
            "the last trigger of {k:?} (record {sent:?}) was never followed by a start of its loop \
             (last start: record {started:?}):\n{}",
            log.history(k)
        );
    }
    drop(log);
    case.recorder.assert_consistent();
}
