//! Cases: graceful handoff on shutdown.

use std::time::Duration;

use keyloop_core::{Decision, Key, Release, ShutdownReason};
use tokio::time::Instant;

use crate::{Case, Gate, Happening, Harness, Step, key};

fn sorted(mut keys: Vec<Key>) -> Vec<Key> {
    keys.sort();
    keys
}

/// On shutdown every loop gets its signal, returns `Continue`, and every key is handed to
/// the remaining node; the report lists them.
pub async fn graceful_shutdown_hands_off_all_keys(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let keys: Vec<Key> = (0..20).map(|i| key(&format!("handoff/{i:02}"))).collect();
    let a = case.node("a").await;
    for k in &keys {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("every key runs on a", |log| {
        keys.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    let b = case.node("b").await;
    case.recorder
        .assert_nothing_for(
            "a new node running keys that a live node owns",
            case.claim_interval() * 3,
            |log| log.live_on("b") > 0,
        )
        .await;
    let a_id = a.engine.node_id();
    let report = a.engine.shutdown().await;
    assert_eq!(report.node, a_id);
    assert_eq!(report.handed_off, sorted(keys.clone()), "{report:?}");
    assert!(
        report.completed.is_empty() && report.abandoned.is_empty(),
        "{report:?}"
    );
    assert!(!a.engine.is_running());
    case.wait("every key runs on b", |log| {
        keys.iter().all(|k| log.start_count(k) == 2)
    })
    .await;
    {
        let log = case.recorder.lock();
        for k in &keys {
            let runs: Vec<_> = log
                .of(k)
                .filter(|r| r.run == 0)
                .map(|r| r.what.clone())
                .collect();
            assert_eq!(
                runs,
                vec![
                    Happening::Start,
                    Happening::Shutdown {
                        reason: ShutdownReason::NodeShutdown,
                        token_cancelled: true
                    },
                    Happening::End(Decision::Continue)
                ],
                "key {k:?} on the node shutting down:\n{log:?}"
            );
            assert_eq!(log.starts(k)[1].node, "b");
        }
    }
    let b_id = b.engine.node_id().expect("b joined");
    let snapshot = case.coordinator().await.inspect().await.expect("inspect");
    for info in &snapshot.keys {
        assert_eq!(info.owner, Some(b_id), "{info:?}");
    }
    assert!(
        !snapshot
            .nodes
            .iter()
            .any(|n| Some(n.id) == report.node && n.alive),
        "the node left the cluster: {snapshot:?}"
    );
    case.recorder.assert_consistent();
}

/// Keys handed off on shutdown (and by `leave`) are claimable at once, without waiting for
/// the lease to expire.
pub async fn handoff_does_not_wait_for_ttl(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("handoff/leave-direct");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let first = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    d1.coordinator.leave(&d1.id()).await.expect("leave");
    d1.coordinator
        .leave(&d1.id())
        .await
        .expect("leave is idempotent");
    let second = d2
        .coordinator
        .claim_key(&d2.id(), &k0)
        .await
        .expect("claim_key")
        .expect("a key released by leave is claimable at once");
    assert!(second.epoch > first.epoch);
    let info = d2
        .coordinator
        .key_info(&k0)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(info.owner, Some(d2.id()));

    let keys: Vec<Key> = (0..10).map(|i| key(&format!("handoff/fast-{i}"))).collect();
    let a = case.node("a").await;
    for k in &keys {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("every key runs on a", |log| {
        keys.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    let _b = case.node("b").await;
    let began = Instant::now();
    a.engine.shutdown().await;
    case.wait("every key runs on b", |log| {
        keys.iter().all(|k| log.start_count(k) == 2)
    })
    .await;
    {
        let log = case.recorder.lock();
        let slowest = keys
            .iter()
            .map(|k| log.starts(k)[1].at - began)
            .max()
            .expect("keys");
        assert!(
            slowest < case.ttl / 2,
            "handoff took {slowest:?}, it must not wait for the lease TTL {:?}:\n{log:?}",
            case.ttl
        );
    }
    case.recorder.assert_consistent();
}

/// Triggers that arrive while a key is being handed off are kept and seen by the next owner.
pub async fn triggers_during_handoff_reach_next_owner(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    // The backend alone: a claim carries every trigger recorded before it.
    let k0 = key("handoff/trigger-direct");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    let c = &d1.coordinator;
    c.trigger(&k0).await.expect("trigger");
    let first = c
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let while_owned = c.trigger(&k0).await.expect("trigger");
    c.release(
        &d1.id(),
        &k0,
        first.epoch,
        Release::Continue {
            avoid_for: Duration::ZERO,
        },
    )
    .await
    .expect("release");
    let while_released = c.trigger(&k0).await.expect("trigger");
    assert!(
        !while_released.registered,
        "a released key stays registered"
    );
    assert!(while_released.seq > while_owned.seq);
    let next = d2
        .coordinator
        .claim_key(&d2.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    assert!(
        next.trigger_seq >= while_released.seq,
        "the next claim must carry the triggers of the handoff: {next:?} vs {while_released:?}"
    );

    // Through engines: a trigger after the shutdown signal, before the loop returned.
    let k = key("handoff/trigger");
    let hold = Gate::new();
    case.script.set(
        &k,
        vec![Step::HoldShutdown(hold.clone()), Step::UntilShutdown],
    );
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop runs on a", |log| log.start_count(&k) == 1)
        .await;
    let _b = case.node("b").await;
    let stopping = a.engine.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown().await });
    case.wait("a's loop got its shutdown signal", |log| {
        log.count(&k, |h| matches!(h, Happening::Shutdown { .. })) == 1
    })
    .await;
    let client = case.client().await;
    let triggered_at = Instant::now();
    let out = client
        .trigger(k.clone())
        .await
        .expect("trigger during handoff");
    assert!(!out.registered);
    hold.open();
    let report = shutdown.await.expect("shutdown");
    assert_eq!(report.handed_off, vec![k.clone()], "{report:?}");
    case.wait("the next owner runs the key", |log| {
        log.start_count(&k) == 2
    })
    .await;
    let start = case.recorder.lock().starts(&k)[1].clone();
    assert_eq!(start.node, "b");
    assert!(start.at >= triggered_at);
    // The next owner is woken by later triggers as usual.
    client.trigger(k.clone()).await.expect("trigger");
    case.wait("the next owner observes a trigger", |log| {
        log.of(&k)
            .any(|r| r.run == 1 && r.what == Happening::TriggerObserved)
    })
    .await;
    case.recorder.assert_consistent();
}

/// A loop that ignores its shutdown signal past the grace period is abandoned, reported,
/// and its key released for another node.
pub async fn loop_ignoring_shutdown_is_abandoned_and_reported(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let stubborn = key("handoff/stubborn");
    let polite = key("handoff/polite");
    case.script
        .set(&stubborn, vec![Step::IgnoreShutdown, Step::UntilShutdown]);
    let grace = case.ttl / 2;
    let a = case.node_with("a", |c| c.shutdown_grace(grace)).await;
    for k in [&stubborn, &polite] {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("both loops run", |log| {
        log.start_count(&stubborn) == 1 && log.start_count(&polite) == 1
    })
    .await;
    let _b = case.node("b").await;
    let began = Instant::now();
    let report = a.engine.shutdown().await;
    let took = began.elapsed();
    assert_eq!(report.abandoned, vec![stubborn.clone()], "{report:?}");
    assert_eq!(report.handed_off, vec![polite.clone()], "{report:?}");
    assert!(
        took >= grace,
        "shutdown returned after {took:?}, before the grace {grace:?}"
    );
    assert!(report.elapsed >= grace, "{report:?}");
    case.wait("the abandoned loop is dropped", |log| {
        log.count(&stubborn, |h| *h == Happening::Dropped) == 1
    })
    .await;
    case.wait("both keys run on b", |log| {
        log.start_count(&stubborn) == 2 && log.start_count(&polite) == 2
    })
    .await;
    {
        let log = case.recorder.lock();
        assert_eq!(log.starts(&stubborn)[1].node, "b", "{log:?}");
        assert!(log.starts(&stubborn)[1].epoch > log.starts(&stubborn)[0].epoch);
    }
    case.recorder.assert_consistent();
}

/// The shutdown report sorts every owned key into handed off, completed or abandoned.
pub async fn shutdown_report_lists_keys(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let cont = key("report/continue");
    let done = key("report/complete");
    let failing = key("report/failing");
    let fails_late = key("report/fails-on-shutdown");
    let stubborn = key("report/stubborn");
    case.script.set(&cont, vec![Step::UntilShutdown]);
    case.script.set(&done, vec![Step::CompleteOnShutdown]);
    case.script.set(&failing, vec![Step::Fail]);
    case.script.set(&fails_late, vec![Step::FailOnShutdown]);
    case.script.set(&stubborn, vec![Step::IgnoreShutdown]);
    let all = [&cont, &done, &failing, &fails_late, &stubborn];
    let grace = case.ttl / 2;
    let a = case
        .node_with("a", |c| c.shutdown_grace(grace).max_failures(1000))
        .await;
    for k in all {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("every loop runs (the failing one restarts)", |log| {
        all.iter().all(|k| log.start_count(k) >= 1) && log.start_count(&failing) >= 2
    })
    .await;
    let node = a.engine.node_id();
    let report = a.engine.shutdown().await;
    assert_eq!(report.node, node);
    assert_eq!(
        report.handed_off,
        sorted(vec![cont.clone(), failing.clone(), fails_late.clone()]),
        "Continue, a loop in backoff and a loop failing during shutdown are handed off: {report:?}"
    );
    assert_eq!(report.completed, vec![done.clone()], "{report:?}");
    assert_eq!(report.abandoned, vec![stubborn.clone()], "{report:?}");
    assert_eq!(
        a.engine.shutdown().await,
        report,
        "shutdown again returns the same report"
    );

    let observer = case.coordinator().await;
    assert_eq!(
        observer.key_info(&done).await.expect("key_info"),
        None,
        "the completed key retired"
    );
    for k in [&cont, &failing, &fails_late, &stubborn] {
        let info = observer
            .key_info(k)
            .await
            .expect("key_info")
            .unwrap_or_else(|| panic!("{k:?} must stay registered"));
        assert_eq!(info.owner, None, "{k:?} was released: {info:?}");
    }
}
