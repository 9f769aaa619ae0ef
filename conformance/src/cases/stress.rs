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

/// Triggers racing on one hot key from several coordinators never lower its sequence: a
/// reader never sees it go down, and it ends at or above every acknowledged trigger's. (A
/// sequence drawn before the row lock let an earlier draw commit later; a loop that had
/// observed the higher number could then `Complete` past an acknowledged trigger.)
pub async fn concurrent_triggers_never_lower_the_sequence(harness: &dyn Harness) {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 150;
    let case = Case::new(harness).await;
    let k = key("hot/sequence");
    let first = case.coordinator().await;
    first.trigger(&k).await.expect("trigger");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, k, c) = (Arc::clone(&stop), k.clone(), case.coordinator().await);
        tokio::spawn(async move {
            let (mut highest, mut lowered) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let info = c.key_info(&k).await.expect("key_info").expect("registered");
                if info.trigger_seq.0 < highest {
                    lowered.push((highest, info.trigger_seq.0));
                }
                highest = highest.max(info.trigger_seq.0);
                tokio::task::yield_now().await;
            }
            lowered
        })
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (c, k) = (case.coordinator().await, k.clone());
        clients.push(tokio::spawn(async move {
            let mut acked = Vec::with_capacity(PER_CLIENT);
            let mut below = Vec::new();
            for _ in 0..PER_CLIENT {
                let seq = c.trigger(&k).await.expect("trigger").seq.0;
                acked.push(seq);
                // Once acknowledged, the stored sequence is never below this one.
                let stored = c.key_info(&k).await.expect("key_info").expect("registered");
                if stored.trigger_seq.0 < seq {
                    below.push((seq, stored.trigger_seq.0));
                }
            }
            assert!(
                below.is_empty(),
                "read the sequence below an acknowledged trigger's (acked, read): {below:?}"
            );
            acked
        }));
    }
    let mut highest_acked = 0;
    for client in clients {
        let acked = client.await.expect("client");
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "one client's triggers got non-increasing sequences: {acked:?}"
        );
        highest_acked = highest_acked.max(*acked.iter().max().expect("acked"));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let lowered = reader.await.expect("reader");
    assert!(
        lowered.is_empty(),
        "the sequence went down (from, to): {lowered:?}"
    );
    let stored = first
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("registered")
        .trigger_seq
        .0;
    assert!(
        stored >= highest_acked,
        "stored sequence {stored} is below the acknowledged {highest_acked}"
    );
}
