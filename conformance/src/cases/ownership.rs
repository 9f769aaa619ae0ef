//! Cases: ownership — triggers, completion, `Continue`, epochs, claims.

use std::collections::HashSet;
use std::sync::Arc;

use keyloop_core::{
    Claim, CoordinatorEvent, Decision, Key, KeyStatus, Release, Released, TriggerSeq,
};

use crate::{Case, Gate, Happening, Harness, Step, key};

/// A trigger registers a new key durably before returning, and a loop starts for it.
pub async fn triggered_key_runs(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let a = case.node("a").await;
    let k = key("ownership/triggered");

    let out = a.engine.trigger(k.clone()).await.expect("trigger");
    assert!(
        out.registered,
        "first trigger of a new key must register it: {out:?}"
    );
    assert!(
        out.seq >= TriggerSeq(1),
        "trigger sequence starts above 0: {out:?}"
    );
    // Durable before returning: another process's coordinator sees it at once.
    let other = case.coordinator().await;
    let info = other
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("a triggered key is registered when trigger returns");
    assert_eq!(info.key, k);
    assert!(info.trigger_seq >= out.seq, "{info:?} vs {out:?}");

    let triggered = tokio::time::Instant::now();
    case.wait("the key's loop starts", |log| log.start_count(&k) == 1)
        .await;
    let start = case.recorder.lock().starts(&k)[0].clone();
    let a_id = a.engine.node_id().expect("a joined");
    assert_eq!(start.node_id, a_id);
    // G6: a new key gets its loop at once, not after a claim interval or a TTL.
    let took = start.at - triggered;
    assert!(
        took < case.claim_interval() * 2,
        "a new key waited {took:?} for its loop"
    );

    let info = other
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(
        info.owner,
        Some(a_id),
        "the backend names the owner: {info:?}"
    );
    assert_eq!(
        info.epoch,
        Some(start.epoch),
        "the backend's epoch is the loop's"
    );
    let status = a.engine.status(k.clone()).await.expect("status");
    assert!(
        matches!(status, KeyStatus::Running { node, epoch } if node == a_id && epoch == start.epoch),
        "status of a running key: {status:?}"
    );
    case.recorder.assert_consistent();
}

/// Each trigger of a running key wakes its loop, which keeps running (no restart).
pub async fn trigger_wakes_running_loop(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let a = case.node("a").await;
    let k = key("ownership/wake");
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop starts", |log| log.start_count(&k) == 1)
        .await;

    for i in 1..=3 {
        let out = a.engine.trigger(k.clone()).await.expect("trigger");
        assert!(!out.registered, "a running key is already registered");
        assert_eq!(out.owner, a.engine.node_id(), "the owner is reported");
        case.wait(&format!("the running loop observes trigger {i}"), |log| {
            log.count(&k, |h| *h == Happening::TriggerObserved) >= i
        })
        .await;
    }
    {
        let log = case.recorder.lock();
        assert_eq!(
            log.start_count(&k),
            1,
            "triggers must not restart the loop:\n{log:?}"
        );
        let epoch = log.starts(&k)[0].epoch;
        assert!(log.of(&k).all(|r| r.epoch == epoch));
    }
    case.recorder.assert_consistent();
}

/// A trigger sent through any node (or a client) reaches the owner wherever it runs.
pub async fn trigger_reaches_owner_on_other_node(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    // The backend alone: a trigger from another coordinator notifies the owning node.
    let k0 = key("ownership/remote-direct");
    let d1 = case.direct("d1").await;
    let elsewhere = case.coordinator().await;
    elsewhere.trigger(&k0).await.expect("trigger");
    let claim = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("a registered, unowned key can be claimed");
    let out = elsewhere.trigger(&k0).await.expect("trigger");
    assert_eq!(out.owner, Some(d1.id()), "trigger reports the owner");
    assert!(out.seq > claim.trigger_seq);
    d1.wait_event(
        "a Triggered (or Resync) event for the owned key",
        case.timeout(),
        |e| {
            matches!(e, CoordinatorEvent::Triggered { key, seq } if *key == k0 && *seq >= out.seq)
                || *e == CoordinatorEvent::Resync
        },
    )
    .await;

    // Through engines.
    let a = case.node("a").await;
    let k = key("ownership/remote");
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop starts on a", |log| log.start_count(&k) == 1)
        .await;
    let b = case.node("b").await;
    let out = b.engine.trigger(k.clone()).await.expect("trigger via b");
    assert_eq!(
        out.owner,
        a.engine.node_id(),
        "b's trigger names a as owner"
    );
    case.wait("a's loop observes b's trigger", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) >= 1
    })
    .await;
    let client = case.client().await;
    client.trigger(k.clone()).await.expect("trigger via client");
    case.wait("a's loop observes the client's trigger", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) >= 2
    })
    .await;
    {
        let log = case.recorder.lock();
        assert_eq!(log.start_count(&k), 1, "{log:?}");
        assert!(
            log.of(&k).all(|r| r.node == "a"),
            "only a may run the key:\n{log:?}"
        );
    }
    case.recorder.assert_consistent();
}

/// A burst of triggers while the loop is busy wakes it a few times at most, never N.
pub async fn burst_of_triggers_coalesces(harness: &dyn Harness) {
    const BURST: usize = 100;
    let mut case = Case::new(harness).await;
    let k = key("ownership/burst");
    let busy = Gate::new();
    case.script.set(
        &k,
        vec![Step::AfterGate(busy.clone(), Box::new(Step::UntilShutdown))],
    );
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop starts", |log| log.start_count(&k) == 1)
        .await;
    for _ in 0..BURST {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    busy.open();
    case.wait("the loop observes the burst", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) >= 1
    })
    .await;
    // One more trigger after the burst: notifications arrive in order, so once it is
    // observed every hint of the burst has been delivered.
    let seen = case
        .recorder
        .lock()
        .count(&k, |h| *h == Happening::TriggerObserved);
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop observes the trigger after the burst", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) > seen
    })
    .await;
    {
        let log = case.recorder.lock();
        let wakes = log.count(&k, |h| *h == Happening::TriggerObserved);
        assert!(
            wakes <= 5,
            "{BURST} triggers while busy plus one woke the loop {wakes} times; they must coalesce:\n{log:?}"
        );
        assert_eq!(log.start_count(&k), 1, "{log:?}");
    }
    case.recorder.assert_consistent();
}

/// `Complete` while a trigger the loop did not observe is pending runs the loop again (same
/// owner, same epoch); the key retires only after a run that saw every trigger.
pub async fn trigger_during_complete_reruns_loop(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    // The backend alone.
    let k0 = key("ownership/complete-race-direct");
    let d1 = case.direct("d1").await;
    let c = &d1.coordinator;
    c.trigger(&k0).await.expect("trigger");
    let claim = c
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let newer = c.trigger(&k0).await.expect("trigger");
    let released = c
        .release(
            &d1.id(),
            &k0,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq,
            },
        )
        .await
        .expect("release");
    assert_eq!(
        released,
        Released::Retriggered { seq: newer.seq },
        "Complete with an older sequence must not retire the key"
    );
    let info = c
        .key_info(&k0)
        .await
        .expect("key_info")
        .expect("still registered");
    assert_eq!(
        info.owner,
        Some(d1.id()),
        "the caller keeps ownership: {info:?}"
    );
    assert_eq!(info.epoch, Some(claim.epoch), "at the same epoch: {info:?}");
    let released = c
        .release(
            &d1.id(),
            &k0,
            claim.epoch,
            Release::Complete {
                observed_seq: newer.seq,
            },
        )
        .await
        .expect("release");
    assert_eq!(released, Released::Retired);
    assert_eq!(c.key_info(&k0).await.expect("key_info"), None);

    // Through an engine.
    let k = key("ownership/complete-race");
    let busy = Gate::new();
    case.script.set(
        &k,
        vec![
            Step::AfterGate(busy.clone(), Box::new(Step::Complete)),
            Step::Complete,
        ],
    );
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop starts", |log| log.start_count(&k) == 1)
        .await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    busy.open();
    case.wait(
        "the loop runs again after completing with a pending trigger",
        |log| log.start_count(&k) >= 2,
    )
    .await;
    let starts: Vec<_> = case
        .recorder
        .lock()
        .starts(&k)
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(starts[1].node_id, starts[0].node_id, "same owner");
    assert_eq!(starts[1].epoch, starts[0].epoch, "same epoch");
    let coordinator = case.coordinator().await;
    case.wait_key(
        &*coordinator,
        &k,
        "the key retires after the second run",
        |i| i.is_none(),
    )
    .await;
    case.recorder.assert_consistent();
}

/// `Complete` with no newer trigger removes the key from the registry for good.
pub async fn complete_retires_key(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("ownership/retire-direct");
    let d1 = case.direct("d1").await;
    let c = &d1.coordinator;
    let out = c.trigger(&k0).await.expect("trigger");
    let claim = c
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    assert_eq!(claim.trigger_seq, out.seq, "the claim carries the sequence");
    let released = c
        .release(
            &d1.id(),
            &k0,
            claim.epoch,
            Release::Complete {
                observed_seq: out.seq,
            },
        )
        .await
        .expect("release");
    assert_eq!(released, Released::Retired);
    assert_eq!(c.key_info(&k0).await.expect("key_info"), None);
    let snapshot = c.inspect().await.expect("inspect");
    assert!(!snapshot.keys.iter().any(|i| i.key == k0), "{snapshot:?}");
    let again = c.claim(&d1.id(), 10).await.expect("claim");
    assert!(
        again.is_empty(),
        "a retired key is not claimable: {again:?}"
    );

    let k = key("ownership/retire");
    case.script.set(&k, vec![Step::Complete]);
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop completes", |log| {
        log.count(&k, |h| *h == Happening::End(Decision::Complete)) == 1
    })
    .await;
    let coordinator = case.coordinator().await;
    case.wait_key(&*coordinator, &k, "the key leaves the registry", |i| {
        i.is_none()
    })
    .await;
    let status = case.client().await.status(k.clone()).await.expect("status");
    assert_eq!(status, KeyStatus::NotRegistered);
    case.recorder
        .assert_nothing_for(
            "a retired key running again",
            case.claim_interval() * 5,
            |log| log.start_count(&k) > 1,
        )
        .await;
    case.recorder.assert_consistent();
}

/// `Continue` releases the key at once and another node takes it; the releasing node is
/// passed over for `avoid_for`.
pub async fn continue_hands_key_to_other_node(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("ownership/continue-direct");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let first = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let released = d1
        .coordinator
        .release(
            &d1.id(),
            &k0,
            first.epoch,
            Release::Continue {
                avoid_for: case.ttl * 10,
            },
        )
        .await
        .expect("release");
    assert_eq!(released, Released::Released);
    let mine = d1.coordinator.claim(&d1.id(), 10).await.expect("claim");
    assert!(
        !mine.iter().any(|c| c.key == k0),
        "the releasing node got the key back within avoid_for: {mine:?}"
    );
    let theirs = d2.coordinator.claim(&d2.id(), 10).await.expect("claim");
    let second = theirs
        .iter()
        .find(|c| c.key == k0)
        .unwrap_or_else(|| panic!("another node must get a continued key at once: {theirs:?}"));
    assert!(second.epoch > first.epoch);

    let k = key("ownership/continue");
    case.script
        .set(&k, vec![Step::Continue, Step::UntilShutdown]);
    let avoid = case.ttl * 5;
    let _a = case.node_with("a", |c| c.handoff_avoid(avoid)).await;
    let _b = case.node_with("b", |c| c.handoff_avoid(avoid)).await;
    let client = case.client().await;
    client.trigger(k.clone()).await.expect("trigger");
    case.wait("the continued key runs again", |log| {
        log.start_count(&k) == 2
    })
    .await;
    {
        let log = case.recorder.lock();
        let starts = log.starts(&k);
        let end = log
            .last(&k, |h| *h == Happening::End(Decision::Continue))
            .expect("the first run returned Continue");
        assert_ne!(
            starts[1].node, starts[0].node,
            "another node takes it:\n{log:?}"
        );
        assert!(starts[1].epoch > starts[0].epoch);
        let waited = starts[1].at - end.at;
        assert!(
            waited < case.ttl / 2,
            "handoff after Continue took {waited:?}; it must not wait for a TTL ({:?}):\n{log:?}",
            case.ttl
        );
    }
    case.recorder.assert_consistent();
}

/// With no other node, a key released with `Continue` runs again on the same node, with a
/// new epoch, once `avoid_for` has passed.
pub async fn continue_on_single_node_runs_again(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("ownership/continue-alone");
    case.script
        .set(&k, vec![Step::Continue, Step::UntilShutdown]);
    let avoid = case.ttl / 2;
    let _a = case.node_with("a", |c| c.handoff_avoid(avoid)).await;
    case.client()
        .await
        .trigger(k.clone())
        .await
        .expect("trigger");
    case.wait("the key runs again on the only node", |log| {
        log.start_count(&k) == 2
    })
    .await;
    {
        let log = case.recorder.lock();
        let starts = log.starts(&k);
        let end = log
            .last(&k, |h| *h == Happening::End(Decision::Continue))
            .expect("the first run returned Continue");
        assert!(
            starts[1].epoch > starts[0].epoch,
            "a reclaim is a new acquisition:\n{log:?}"
        );
        let waited = starts[1].at - end.at;
        assert!(
            waited >= avoid,
            "the node took its continued key back after {waited:?}, before avoid_for {avoid:?}:\n{log:?}"
        );
    }
    case.recorder.assert_consistent();
}

/// Every acquisition of a key has a greater epoch than the one before, whoever takes it and
/// however it was given up (release, expiry).
pub async fn epochs_strictly_increase_across_owners(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("ownership/epochs-direct");
    let nodes = [
        case.direct("d1").await,
        case.direct("d2").await,
        case.direct("d3").await,
    ];
    nodes[0].coordinator.trigger(&k0).await.expect("trigger");
    let mut last = None;
    for round in 0..6 {
        let node = &nodes[round % 3];
        let claim = if round % 2 == 0 {
            node.coordinator
                .claim_key(&node.id(), &k0)
                .await
                .expect("claim_key")
        } else {
            let claims = node.coordinator.claim(&node.id(), 10).await.expect("claim");
            claims.into_iter().find(|c| c.key == k0)
        }
        .unwrap_or_else(|| panic!("round {round}: a released key must be claimable"));
        if let Some(previous) = last {
            assert!(
                claim.epoch > previous,
                "round {round}: epoch {} after {previous}",
                claim.epoch
            );
        }
        last = Some(claim.epoch);
        node.coordinator
            .release(
                &node.id(),
                &k0,
                claim.epoch,
                Release::Continue {
                    avoid_for: std::time::Duration::ZERO,
                },
            )
            .await
            .expect("release");
    }
    // Taken over after the owner's lease expired.
    let zombie = case.direct_without_heartbeats("zombie").await;
    let taken = zombie
        .coordinator
        .claim_key(&zombie.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    assert!(Some(taken.epoch) > last);
    let heir = &nodes[1];
    let after_expiry = crate::eventually(
        "the expired owner's key is claimable",
        case.timeout(),
        case.ttl / 10,
        || async {
            heir.coordinator
                .claim(&heir.id(), 10)
                .await
                .expect("claim")
                .into_iter()
                .find(|c| c.key == k0)
        },
    )
    .await;
    assert!(
        after_expiry.epoch > taken.epoch,
        "takeover after expiry must raise the epoch"
    );

    // Through engines: a key handed on five times across three nodes.
    let k = key("ownership/epochs");
    let mut steps = vec![Step::Continue; 5];
    steps.push(Step::UntilShutdown);
    case.script.set(&k, steps);
    for name in ["a", "b", "c"] {
        case.node(name).await;
    }
    case.client()
        .await
        .trigger(k.clone())
        .await
        .expect("trigger");
    case.wait("six runs", |log| log.start_count(&k) == 6).await;
    {
        let log = case.recorder.lock();
        let epochs: Vec<_> = log.starts(&k).iter().map(|r| r.epoch).collect();
        assert!(
            epochs.windows(2).all(|w| w[1] > w[0]),
            "epochs must strictly increase: {epochs:?}\n{log:?}"
        );
    }
    case.recorder.assert_consistent();
}

/// Retiring a key and triggering it again continues its trigger sequence and epochs, also
/// across a restart of the backend where the backend has one.
pub async fn epochs_never_reset_after_retire_and_retrigger(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k0 = key("ownership/never-reset");
    let (seq, epoch) = {
        let d1 = case.direct("d1").await;
        let c = &d1.coordinator;
        let mut out = c.trigger(&k0).await.expect("trigger");
        for _ in 0..2 {
            out = c.trigger(&k0).await.expect("trigger");
        }
        let first = c
            .claim_key(&d1.id(), &k0)
            .await
            .expect("claim_key")
            .expect("claimable");
        let released = c
            .release(
                &d1.id(),
                &k0,
                first.epoch,
                Release::Complete {
                    observed_seq: out.seq,
                },
            )
            .await
            .expect("release");
        assert_eq!(released, Released::Retired);
        assert_eq!(c.key_info(&k0).await.expect("key_info"), None);

        let again = c.trigger(&k0).await.expect("trigger");
        assert!(again.registered, "a retired key registers again: {again:?}");
        assert!(
            again.seq > out.seq,
            "the trigger sequence went from {} back to {} after retirement",
            out.seq,
            again.seq
        );
        let second = c
            .claim_key(&d1.id(), &k0)
            .await
            .expect("claim_key")
            .expect("claimable");
        assert!(
            second.epoch > first.epoch,
            "epoch went from {} to {} after retirement",
            first.epoch,
            second.epoch
        );
        let released = c
            .release(
                &d1.id(),
                &k0,
                second.epoch,
                Release::Complete {
                    observed_seq: again.seq,
                },
            )
            .await
            .expect("release");
        assert_eq!(released, Released::Retired);
        c.leave(&d1.id()).await.expect("leave");
        (again.seq, second.epoch)
    };

    if case.ns.restart_backend().await {
        let d2 = case.direct("d2").await;
        let c = &d2.coordinator;
        let out = c.trigger(&k0).await.expect("trigger after restart");
        assert!(
            out.seq > seq,
            "after a backend restart the trigger sequence went from {seq} back to {}",
            out.seq
        );
        let claim = c
            .claim_key(&d2.id(), &k0)
            .await
            .expect("claim_key")
            .expect("claimable");
        assert!(
            claim.epoch > epoch,
            "after a backend restart the epoch went from {epoch} back to {}",
            claim.epoch
        );
        c.release(
            &d2.id(),
            &k0,
            claim.epoch,
            Release::Complete {
                observed_seq: out.seq,
            },
        )
        .await
        .expect("release");
    }

    let k = key("ownership/never-reset-engine");
    case.script.set(&k, vec![Step::Complete]);
    let a = case.node("a").await;
    let coordinator = case.coordinator().await;
    for run in 1..=2 {
        a.engine.trigger(k.clone()).await.expect("trigger");
        case.wait("the loop completes", |log| {
            log.count(&k, |h| *h == Happening::End(Decision::Complete)) == run
        })
        .await;
        case.wait_key(&*coordinator, &k, "the key retires", |i| i.is_none())
            .await;
    }
    let epochs: Vec<_> = case
        .recorder
        .lock()
        .starts(&k)
        .iter()
        .map(|r| r.epoch)
        .collect();
    assert!(epochs[1] > epochs[0], "epochs after retire: {epochs:?}");
    case.recorder.assert_consistent();
}

/// Concurrent claims by several nodes never return the same key twice.
pub async fn concurrent_claimers_get_disjoint_keys(harness: &dyn Harness) {
    const KEYS: usize = 200;
    let case = Case::new(harness).await;
    let nodes = [
        case.direct("d1").await,
        case.direct("d2").await,
        case.direct("d3").await,
        case.direct("d4").await,
    ];
    let keys: Vec<Key> = (0..KEYS).map(|i| key(&format!("claims/{i:04}"))).collect();
    let client = case.coordinator().await;
    for k in &keys {
        client.trigger(k).await.expect("trigger");
    }
    let mut tasks = Vec::new();
    for node in &nodes {
        let coordinator = Arc::clone(&node.coordinator);
        let id = node.id();
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<Claim> = Vec::new();
            loop {
                let got = coordinator.claim(&id, 7).await.expect("claim");
                if got.is_empty() {
                    return (id, mine);
                }
                mine.extend(got);
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut owner_of = std::collections::HashMap::new();
    for task in tasks {
        let (id, claims) = task.await.expect("claimer");
        for claim in claims {
            if let Some(other) = owner_of.insert(claim.key.clone(), id) {
                panic!(
                    "key {:?} was claimed by both {other:?} and {id:?}",
                    claim.key
                );
            }
        }
    }
    let claimed: HashSet<_> = owner_of.keys().cloned().collect();
    let all: HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(claimed, all, "every key is claimed exactly once");
    let snapshot = client.inspect().await.expect("inspect");
    for info in snapshot.keys {
        assert_eq!(
            info.owner,
            owner_of.get(&info.key).copied(),
            "the backend's owner of {:?} is its claimer",
            info.key
        );
    }
}

/// Of several nodes racing `claim_key` for one key, exactly one gets it.
pub async fn racing_claims_leave_one_owner(harness: &dyn Harness) {
    let case = Case::new(harness).await;
    let nodes = [
        case.direct("d1").await,
        case.direct("d2").await,
        case.direct("d3").await,
        case.direct("d4").await,
    ];
    let client = case.coordinator().await;
    for i in 0..30 {
        let k = key(&format!("race/{i}"));
        client.trigger(&k).await.expect("trigger");
        let mut tasks = Vec::new();
        for node in &nodes {
            let coordinator = Arc::clone(&node.coordinator);
            let id = node.id();
            let k = k.clone();
            tasks.push(tokio::spawn(async move {
                (id, coordinator.claim_key(&id, &k).await.expect("claim_key"))
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (id, claim) = task.await.expect("claimer");
            if let Some(claim) = claim {
                winners.push((id, claim));
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "key {k:?}: exactly one racer must win, got {winners:?}"
        );
        let (winner, claim) = winners.remove(0);
        let info = client
            .key_info(&k)
            .await
            .expect("key_info")
            .expect("registered");
        assert_eq!(info.owner, Some(winner));
        assert_eq!(info.epoch, Some(claim.epoch));
        let node = nodes.iter().find(|n| n.id() == winner).expect("a racer");
        let again = node
            .coordinator
            .claim_key(&winner, &k)
            .await
            .expect("claim_key")
            .expect("the owner claiming again gets its existing claim");
        assert_eq!(
            again.epoch, claim.epoch,
            "claiming an owned key is not a new acquisition"
        );
    }
}
