//! Cases: durable wake-ups — a loop returning `RequeueAfter` sleeps without a task and runs
//! again after its delay, on any node, or earlier when triggered.

use std::time::Duration;

use keyloop_core::{Decision, Key, KeyStatus, Release, Released, WakeTime};

use crate::{Case, Gate, Happening, Harness, Step, eventually, key};

fn ended_with(h: &Happening, decision: Decision) -> bool {
    *h == Happening::End(decision)
}

/// Asserts that the key's second run started no earlier than `delay` after its first run
/// ended with `RequeueAfter(delay)`; returns the node of the second run.
fn assert_second_run_not_early(case: &Case, k: &Key, delay: Duration) -> String {
    let log = case.recorder.lock();
    let ended = log
        .last(k, |h| ended_with(h, Decision::RequeueAfter(delay)))
        .expect("the first run ended with the requeue")
        .at;
    let again = &log.starts(k)[1];
    assert!(
        again.at >= ended + delay,
        "woke {:?} after requeueing, before its delay {delay:?}:\n{}",
        again.at - ended,
        log.history(k)
    );
    again.node.clone()
}

/// The backend's half of a requeue: `Sleep` releases the key, `key_info` and `next_wake`
/// report its wake-up, and neither `claim` nor `claim_key` takes it before then.
pub async fn sleeping_key_is_not_claimable_before_its_wake_up(harness: &dyn Harness) {
    let case = Case::new(harness).await;
    let delay = case.ttl;
    let k0 = key("wake/direct");
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
            Release::Sleep {
                observed_seq: claim.trigger_seq,
                until: WakeTime::After(delay * 3),
            },
        )
        .await
        .expect("sleep");
    assert_eq!(released, Released::Released);
    let info = d1
        .coordinator
        .key_info(&k0)
        .await
        .expect("key_info")
        .expect("a sleeping key stays registered");
    assert_eq!(info.owner, None, "{info:?}");
    assert!(
        info.wake_at.is_some(),
        "key_info shows the wake-up: {info:?}"
    );
    let next = d1.coordinator.next_wake().await.expect("next_wake");
    assert!(
        next.is_some_and(|d| d <= delay * 3),
        "next_wake reports the wake-up: {next:?}"
    );
    let early = d1.coordinator.claim(&d1.id(), 10).await.expect("claim");
    assert!(
        early.iter().all(|c| c.key != k0),
        "claimed before its wake-up: {early:?}"
    );
    assert_eq!(
        d1.coordinator
            .claim_key(&d1.id(), &k0)
            .await
            .expect("claim_key"),
        None,
        "claim_key before the wake-up"
    );
}

/// A requeued key sleeps without a loop, shows as `Sleeping`, and runs again after its
/// delay and not before.
pub async fn requeued_key_runs_after_its_delay_and_not_before(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let delay = case.ttl;
    let k = key("wake/after");
    // The loop requeues only once the gate opens, long after the claim round that started
    // it has read `next_wake`; and there are no periodic claim rounds to fall back on: the
    // engine must schedule a round for the wake-up itself.
    let requeue_now = Gate::new();
    case.script.set(
        &k,
        vec![
            Step::AfterGate(requeue_now.clone(), Box::new(Step::RequeueAfter(delay))),
            Step::UntilShutdown,
        ],
    );
    let never = case.timeout() * 4;
    let a = case.node_with("a", |c| c.claim_interval(never)).await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop starts", |log| log.start_count(&k) == 1)
        .await;
    requeue_now.open();
    case.wait("the loop requeues", |log| {
        log.count(&k, |h| ended_with(h, Decision::RequeueAfter(delay))) == 1
    })
    .await;
    let status = eventually(
        "the key shows as sleeping",
        case.timeout(),
        case.ttl / 20,
        || async {
            let status = case.client().await.status(k.clone()).await.expect("status");
            matches!(status, KeyStatus::Sleeping { .. }).then_some(status)
        },
    )
    .await;
    assert!(matches!(status, KeyStatus::Sleeping { .. }));
    // The backend may show the wake-up before its release call has returned (sled flushes
    // after writing), so the loop's slot goes a moment later; well before the delay.
    eventually(
        "a sleeping key holds no loop",
        delay / 2,
        delay / 100,
        || async { (a.engine.owned_count() == 0).then_some(()) },
    )
    .await;
    case.wait("the key runs again after its delay", |log| {
        log.start_count(&k) == 2
    })
    .await;
    assert_second_run_not_early(&case, &k, delay);
    case.recorder.assert_consistent();
}

/// A trigger runs a sleeping key at once and drops its wake-up; `Complete` then retires it
/// for good. `Sleep` with an older sequence is answered `Retriggered`.
pub async fn trigger_wakes_a_sleeping_key_early(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("wake/direct-retriggered");
    let d1 = case.direct("d1").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let claim = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let later = d1.coordinator.trigger(&k0).await.expect("trigger");
    let released = d1
        .coordinator
        .release(
            &d1.id(),
            &k0,
            claim.epoch,
            Release::Sleep {
                observed_seq: claim.trigger_seq,
                until: WakeTime::After(case.ttl * 100),
            },
        )
        .await
        .expect("sleep");
    assert!(
        matches!(released, Released::Retriggered { seq } if seq >= later.seq),
        "Sleep with an older sequence answers Retriggered: {released:?}"
    );

    let k = key("wake/early");
    let long = case.ttl * 100;
    case.script
        .set(&k, vec![Step::RequeueAfter(long), Step::Complete]);
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop requeues for a long time", |log| {
        log.count(&k, |h| ended_with(h, Decision::RequeueAfter(long))) == 1
    })
    .await;
    case.wait_key(&*case.coordinator().await, &k, "the key sleeps", |info| {
        info.as_ref().is_some_and(|i| i.wake_at.is_some())
    })
    .await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the trigger runs the sleeping key at once", |log| {
        log.start_count(&k) == 2
    })
    .await;
    case.wait_key(
        &*case.coordinator().await,
        &k,
        "Complete retires the woken key",
        |info| info.is_none(),
    )
    .await;
    case.recorder
        .assert_nothing_for(
            "the dropped wake-up running the retired key",
            case.claim_interval() * 5,
            |log| log.start_count(&k) > 2,
        )
        .await;
    case.recorder.assert_consistent();
}

/// A wake-up outlives every node: the requeueing node dies (or all nodes restart, and the
/// backend with them where it can), and another node runs the key when it falls due.
pub async fn wake_up_survives_restart_of_all_nodes(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("wake/durable");
    let delay = case.ttl * 2;
    case.script
        .set(&k, vec![Step::RequeueAfter(delay), Step::UntilShutdown]);
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop requeues", |log| {
        log.count(&k, |h| ended_with(h, Decision::RequeueAfter(delay))) == 1
    })
    .await;
    // The loop's end is logged before the engine's release reaches the backend.
    case.wait_key(
        &*case.coordinator().await,
        &k,
        "the backend stores the wake-up",
        |info| info.as_ref().is_some_and(|i| i.wake_at.is_some()),
    )
    .await;
    case.drop_nodes().await;
    let restarted = case.ns.restart_backend().await;
    let info = case
        .coordinator()
        .await
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("the sleeping key stays registered across restarts");
    assert!(
        info.wake_at.is_some(),
        "the wake-up survives (backend restarted: {restarted}): {info:?}"
    );
    let _b = case.node("b").await;
    case.wait("another node runs the key when it falls due", |log| {
        log.start_count(&k) == 2
    })
    .await;
    let second = assert_second_run_not_early(&case, &k, delay);
    assert_eq!(
        second, "b",
        "the node started after the restart runs the key"
    );
    case.recorder.assert_consistent();
}

/// Sleeping keys spread like any pending key and hold nothing while asleep: many keys
/// requeued at once all run again, and no node owns them meanwhile.
pub async fn many_sleeping_keys_hold_no_loop_and_all_wake(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let delay = case.ttl / 2;
    let keys: Vec<_> = (0..40).map(|i| key(&format!("wake/many/{i:02}"))).collect();
    case.script
        .set_default(vec![Step::RequeueAfter(delay), Step::UntilShutdown]);
    let a = case.node("a").await;
    let b = case.node("b").await;
    for k in &keys {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("every key requeued once", |log| {
        keys.iter()
            .all(|k| log.count(k, |h| ended_with(h, Decision::RequeueAfter(delay))) == 1)
    })
    .await;
    case.wait("every key runs again", |log| {
        keys.iter().all(|k| log.start_count(k) == 2)
    })
    .await;
    assert_eq!(
        a.engine.owned_count() + b.engine.owned_count(),
        keys.len(),
        "every woken key has one loop"
    );
    case.recorder.assert_consistent();
}

/// On a backend without durable wake-ups (`Limits::durable_wake_ups` false) a requeue keeps
/// the key's loop and waits in its task: the key runs again after its delay and not before,
/// and a trigger during the wait runs it at once.
pub async fn requeue_without_durable_wake_ups_waits_in_the_task(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let delay = case.ttl;
    let long = case.ttl * 100;
    let k = key("wake/in-task");
    let early = key("wake/in-task-early");
    case.script
        .set(&k, vec![Step::RequeueAfter(delay), Step::UntilShutdown]);
    case.script
        .set(&early, vec![Step::RequeueAfter(long), Step::Complete]);
    let a = case.node("a").await;
    a.faults.hide_durable_wake_ups();
    a.engine.trigger(k.clone()).await.expect("trigger");
    a.engine.trigger(early.clone()).await.expect("trigger");
    case.wait("both loops requeue", |log| {
        log.count(&k, |h| ended_with(h, Decision::RequeueAfter(delay))) == 1
            && log.count(&early, |h| ended_with(h, Decision::RequeueAfter(long))) == 1
    })
    .await;
    assert_eq!(
        a.engine.owned_count(),
        2,
        "without durable wake-ups a requeued key keeps its loop"
    );
    a.engine.trigger(early.clone()).await.expect("trigger");
    case.wait("the trigger ends the wait at once", |log| {
        log.start_count(&early) == 2
    })
    .await;
    case.wait("the key runs again after its delay", |log| {
        log.start_count(&k) == 2
    })
    .await;
    assert_second_run_not_early(&case, &k, delay);
    case.recorder.assert_consistent();
}
