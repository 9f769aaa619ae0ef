//! Cases: liveness and bounded concurrency.

use futures::StreamExt;
use keyloop_core::{Key, KeyStatus};

use crate::{Case, Harness, Step, eventually, key};

/// A node never runs more than `max_loops`; freed capacity is used for pending keys.
pub async fn max_loops_respected(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let keys: Vec<Key> = (0..8).map(|i| key(&format!("capacity/{i}"))).collect();
    case.script.set_default(vec![Step::WaitTriggers(1)]);
    let a = case.node_with("a", |c| c.max_loops(3)).await;
    for k in &keys {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("three loops run", |log| log.live_on("a") == 3)
        .await;
    case.recorder
        .assert_nothing_for(
            "a fourth loop at once on a node with max_loops 3",
            case.claim_interval() * 5,
            |log| log.max_live_on("a") > 3 || log.started_keys() > 3,
        )
        .await;
    assert_eq!(a.engine.owned_count(), 3);
    // Completing one loop frees a slot for a pending key.
    let running: Vec<Key> = keys
        .iter()
        .filter(|k| case.recorder.lock().is_live(k))
        .cloned()
        .collect();
    a.engine.trigger(running[0].clone()).await.expect("trigger");
    case.wait("a pending key takes the freed slot", |log| {
        log.started_keys() == 4
    })
    .await;
    case.recorder
        .assert_nothing_for(
            "more than max_loops loops at once",
            case.claim_interval() * 3,
            |log| log.max_live_on("a") > 3,
        )
        .await;
    let pending = case
        .client()
        .await
        .status(
            keys.iter()
                .find(|k| case.recorder.lock().start_count(k) == 0)
                .expect("a pending key")
                .clone(),
        )
        .await
        .expect("status");
    assert_eq!(
        pending,
        KeyStatus::Pending,
        "keys beyond capacity stay pending"
    );
    case.recorder.assert_consistent();
}

/// Keys beyond one node's capacity run on the other nodes.
pub async fn excess_keys_go_to_other_nodes(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let keys: Vec<Key> = (0..7).map(|i| key(&format!("excess/{i}"))).collect();
    let a = case.node_with("a", |c| c.max_loops(2)).await;
    for k in &keys {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("a is full", |log| log.live_on("a") == 2).await;
    case.node_with("b", |c| c.max_loops(2)).await;
    case.node_with("c", |c| c.max_loops(3)).await;
    case.wait("every key runs", |log| log.started_keys() == keys.len())
        .await;
    {
        let log = case.recorder.lock();
        for (node, max) in [("a", 2), ("b", 2), ("c", 3)] {
            assert_eq!(log.live_on(node), max, "{node} runs {max}:\n{log:?}");
            assert!(
                log.max_live_on(node) <= max,
                "{node} exceeded max_loops:\n{log:?}"
            );
        }
    }
    case.recorder.assert_consistent();
}

/// Keys registered before a node joined are claimed by it.
pub async fn new_node_picks_pending_keys(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("pending/direct");
    let client = case.client().await;
    client.trigger(k0.clone()).await.expect("trigger");
    let d1 = case.direct("d1").await;
    let claims = d1.coordinator.claim(&d1.id(), 10).await.expect("claim");
    assert!(
        claims.iter().any(|c| c.key == k0),
        "a joined node claims keys registered before it: {claims:?}"
    );

    let keys: Vec<Key> = (0..5).map(|i| key(&format!("pending/{i}"))).collect();
    for k in &keys {
        client.trigger(k.clone()).await.expect("trigger");
        let status = client.status(k.clone()).await.expect("status");
        assert_eq!(status, KeyStatus::Pending);
    }
    let a = case.node("a").await;
    case.wait("the new node runs every pending key", |log| {
        keys.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    let a_id = a.engine.node_id().expect("joined");
    for k in &keys {
        let status = client.status(k.clone()).await.expect("status");
        assert!(
            matches!(status, KeyStatus::Running { node, .. } if node == a_id),
            "{k:?}: {status:?}"
        );
    }
    case.recorder.assert_consistent();
}

/// 10,000 keys registered through a client all run, across three nodes, each on one node.
pub async fn ten_thousand_keys_across_three_nodes(harness: &dyn Harness) {
    const KEYS: usize = 10_000;
    let mut case = Case::new(harness).await;
    // No node can take them all: the keys must spread over the three.
    const MAX_LOOPS: usize = 4_000;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(case.node_with(name, |c| c.max_loops(MAX_LOOPS)).await);
    }
    let client = case.client().await;
    let keys: Vec<Key> = (0..KEYS).map(|i| key(&format!("many/{i:05}"))).collect();
    futures::stream::iter(keys.iter().cloned())
        .for_each_concurrent(64, |k| {
            let client = client.clone();
            async move {
                client.trigger(k).await.expect("trigger");
            }
        })
        .await;
    case.recorder
        .wait_until("every key runs", case.timeout() * 6, |log| {
            log.started_keys() == KEYS
        })
        .await;
    // A node that lost its lease under the load re-joins under a new id and its keys move;
    // wait until the backend and the loops agree again.
    let (per_node, live) = eventually(
        "every key is owned by a live node that runs its loop",
        case.timeout(),
        case.ttl / 10,
        || async {
            let snapshot = client.inspect().await.expect("inspect");
            assert_eq!(snapshot.keys.len(), KEYS, "keys left the registry");
            let current: Vec<_> = nodes.iter().map(|n| n.engine.node_id()).collect();
            let mut per_node = vec![0usize; nodes.len()];
            for info in &snapshot.keys {
                let i = current
                    .iter()
                    .position(|id| info.owner.is_some() && *id == info.owner)?;
                per_node[i] += 1;
            }
            let log = case.recorder.lock();
            let live: Vec<usize> = nodes.iter().map(|n| log.live_on(&n.name)).collect();
            (live == per_node).then_some((per_node, live))
        },
    )
    .await;
    assert_eq!(per_node.iter().sum::<usize>(), KEYS);
    assert!(per_node.iter().all(|&n| n <= MAX_LOOPS), "{per_node:?}");
    let restarts = case.recorder.lock().records().len() - KEYS;
    eprintln!(
        "[{}] 10,000 keys: per node {live:?}, {restarts} records beyond the first starts",
        case.backend
    );
    case.recorder.assert_consistent();
}
