//! Cases: supervision — restarts with backoff, panics, parking.

use keyloop_core::{KeyStatus, Release, Released};

use crate::{Case, Happening, Harness, SCRIPTED_FAILURE, Step, eventually, key};

fn failed(h: &Happening) -> bool {
    matches!(h, Happening::Failed(_))
}

/// A failing loop restarts on the same node (same epoch) after exponential backoff, which
/// new triggers do not shorten.
pub async fn loop_error_restarts_with_backoff(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("supervision/errors");
    case.script.set(
        &k,
        vec![Step::Fail, Step::Fail, Step::Fail, Step::UntilShutdown],
    );
    let healthy = case.ttl / 2;
    let a = case
        .node_with("a", |c| c.max_failures(10).healthy_run(healthy))
        .await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("three failures", |log| log.count(&k, failed) == 3)
        .await;
    // The failure is recorded just before `run` returns; the engine enters backoff after.
    let status = eventually(
        "the failed loop shows as in backoff",
        case.ttl / 10,
        case.ttl / 200,
        || async {
            let status = a.engine.status(k.clone()).await.expect("status");
            matches!(&status, KeyStatus::Backoff { .. }).then_some(status)
        },
    )
    .await;
    assert!(
        matches!(&status, KeyStatus::Backoff { failures: 3, last_error } if last_error.contains(SCRIPTED_FAILURE)),
        "a failed loop waiting to restart is in Backoff with its last error: {status:?}"
    );
    // Triggers during the backoff do not shorten it.
    for _ in 0..5 {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("the fourth run", |log| log.start_count(&k) == 4)
        .await;
    let backoff = case.backoff();
    {
        let log = case.recorder.lock();
        let starts = log.starts(&k);
        let ends: Vec<_> = log.of(&k).filter(|r| failed(&r.what)).collect();
        for i in 0..3 {
            assert_eq!(
                starts[i + 1].node_id,
                starts[0].node_id,
                "restarted on the same node"
            );
            assert_eq!(
                starts[i + 1].epoch,
                starts[0].epoch,
                "a restart keeps the epoch"
            );
            let waited = starts[i + 1].at - ends[i].at;
            let expected = backoff.delay_without_jitter(i as u32);
            assert!(
                waited >= expected,
                "restart {} came {waited:?} after the failure, before the backoff of {expected:?}:\n{log:?}",
                i + 1
            );
        }
    }
    let status = a.engine.status(k.clone()).await.expect("status");
    assert!(matches!(status, KeyStatus::Running { .. }), "{status:?}");

    // A failure after a healthy run starts the count (and the backoff) afresh.
    let healed = key("supervision/healed");
    case.script.set(
        &healed,
        vec![Step::Fail, Step::FailAfterTrigger, Step::UntilShutdown],
    );
    a.engine.trigger(healed.clone()).await.expect("trigger");
    case.wait("the second run", |log| log.start_count(&healed) == 2)
        .await;
    // The run must last a healthy run's length: waiting is what this checks.
    tokio::time::sleep(healthy * 2).await;
    a.engine.trigger(healed.clone()).await.expect("trigger");
    let status = eventually(
        "the healed loop's next failure shows as in backoff",
        case.ttl,
        case.ttl / 200,
        || async {
            let status = a.engine.status(healed.clone()).await.expect("status");
            matches!(&status, KeyStatus::Backoff { .. }).then_some(status)
        },
    )
    .await;
    assert!(
        matches!(status, KeyStatus::Backoff { failures: 1, .. }),
        "a failure after a healthy run counts as the first: {status:?}"
    );
    case.recorder.assert_consistent();
}

/// A panicking loop is restarted like a failing one; the node and its other loops go on.
pub async fn loop_panic_is_caught(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("supervision/panic");
    let other = key("supervision/bystander");
    case.script
        .set(&k, vec![Step::Panic, Step::Panic, Step::UntilShutdown]);
    let a = case.node("a").await;
    a.engine.trigger(other.clone()).await.expect("trigger");
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the panicking key runs a third time", |log| {
        log.start_count(&k) == 3
    })
    .await;
    assert!(a.engine.is_running());
    {
        let log = case.recorder.lock();
        let starts = log.starts(&k);
        assert!(
            starts
                .iter()
                .all(|s| s.epoch == starts[0].epoch && s.node == "a")
        );
        assert!(
            log.is_live(&other),
            "the other loop is undisturbed:\n{log:?}"
        );
        assert_eq!(log.start_count(&other), 1);
    }
    a.engine.trigger(other.clone()).await.expect("trigger");
    case.wait("the other loop still gets triggers", |log| {
        log.count(&other, |h| *h == Happening::TriggerObserved) == 1
    })
    .await;
    case.recorder.assert_consistent();
}

/// After `max_failures` consecutive failures the key is parked: registered, shown as
/// `Failed` with the error, and claimed by no node.
pub async fn repeated_failures_park_key(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("supervision/park-direct");
    let d1 = case.direct("d1").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let claim = d1
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
            claim.epoch,
            Release::Park {
                error: "boom".to_string(),
                observed_seq: claim.trigger_seq,
            },
        )
        .await
        .expect("park");
    assert_eq!(released, Released::Released);
    let info = d1
        .coordinator
        .key_info(&k0)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(info.parked.as_deref(), Some("boom"), "{info:?}");
    assert_eq!(info.owner, None);
    let claims = d1.coordinator.claim(&d1.id(), 10).await.expect("claim");
    assert!(claims.is_empty(), "parked keys are not claimed: {claims:?}");
    let one = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key");
    assert_eq!(one, None, "a parked key is not claimable");

    let k = key("supervision/park");
    case.script.set(&k, vec![Step::Fail]);
    let a = case.node_with("a", |c| c.max_failures(3)).await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("three failures", |log| log.count(&k, failed) == 3)
        .await;
    // Another node with capacity must leave the parked key alone too.
    let _b = case.node_with("b", |c| c.max_failures(3)).await;
    let coordinator = case.coordinator().await;
    let info = case
        .wait_key(&*coordinator, &k, "the key is parked", |i| {
            i.as_ref().is_some_and(|i| i.parked.is_some())
        })
        .await
        .expect("registered");
    assert!(
        info.parked
            .as_deref()
            .is_some_and(|e| e.contains(SCRIPTED_FAILURE)),
        "the parked key shows the last error: {info:?}"
    );
    let status = case.client().await.status(k.clone()).await.expect("status");
    assert!(
        matches!(&status, KeyStatus::Failed { error } if error.contains(SCRIPTED_FAILURE)),
        "{status:?}"
    );
    case.recorder
        .assert_nothing_for(
            "a parked key running again without a trigger",
            case.claim_interval() * 5,
            |log| log.start_count(&k) > 3,
        )
        .await;
    case.recorder.assert_consistent();
}

/// A parked key runs again when triggered (or resumed), with a new epoch.
pub async fn parked_key_resumes_on_trigger(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let by_trigger = key("supervision/resume-trigger");
    let by_resume = key("supervision/resume");
    for k in [&by_trigger, &by_resume] {
        case.script
            .set(k, vec![Step::Fail, Step::Fail, Step::UntilShutdown]);
    }
    let a = case.node_with("a", |c| c.max_failures(2)).await;
    let coordinator = case.coordinator().await;
    for k in [&by_trigger, &by_resume] {
        a.engine.trigger(k.clone()).await.expect("trigger");
        case.wait_key(&*coordinator, k, "the key is parked", |i| {
            i.as_ref().is_some_and(|i| i.parked.is_some())
        })
        .await;
    }
    a.engine.trigger(by_trigger.clone()).await.expect("trigger");
    a.engine.resume(by_resume.clone()).await.expect("resume");
    case.wait("both keys run again", |log| {
        log.start_count(&by_trigger) == 3 && log.start_count(&by_resume) == 3
    })
    .await;
    for k in [&by_trigger, &by_resume] {
        let starts: Vec<_> = case
            .recorder
            .lock()
            .starts(k)
            .into_iter()
            .cloned()
            .collect();
        assert!(
            starts[2].epoch > starts[1].epoch,
            "a resumed key is a new acquisition"
        );
        let info = coordinator
            .key_info(k)
            .await
            .expect("key_info")
            .expect("registered");
        assert_eq!(info.parked, None, "{info:?}");
        let status = a.engine.status(k.clone()).await.expect("status");
        assert!(matches!(status, KeyStatus::Running { .. }), "{status:?}");
    }
    case.recorder.assert_consistent();
}
