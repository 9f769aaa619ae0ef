//! Cases: lost notifications and `Resync`.

use keyloop_core::TriggerSeq;

use crate::{Case, Gate, Happening, Harness, Step, key};

/// After a gap in notifications, `Resync` makes the engine re-read what it owns, and `owned`
/// reports the triggers whose notifications were lost.
pub async fn notification_gap_resyncs(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("notify/owned-direct");
    let d1 = case.direct("d1").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let claim = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let elsewhere = case.coordinator().await;
    elsewhere.trigger(&k0).await.expect("trigger");
    let last = elsewhere.trigger(&k0).await.expect("trigger");
    let owned = d1.coordinator.owned(&d1.id()).await.expect("owned");
    let mine = owned
        .iter()
        .find(|c| c.key == k0)
        .unwrap_or_else(|| panic!("owned() must list the owned key: {owned:?}"));
    assert_eq!(mine.epoch, claim.epoch);
    assert!(
        mine.trigger_seq >= last.seq && last.seq >= TriggerSeq(claim.trigger_seq.0 + 2),
        "owned() must report the current trigger sequence: {mine:?} vs {last:?}"
    );

    let k = key("notify/gap");
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop runs", |log| log.start_count(&k) == 1)
        .await;
    a.faults.drop_triggers(true);
    a.engine.trigger(k.clone()).await.expect("trigger");
    a.faults.inject_resync();
    case.wait("the loop observes the trigger after the resync", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) == 1
    })
    .await;
    {
        let log = case.recorder.lock();
        assert_eq!(
            log.start_count(&k),
            1,
            "a resync does not restart loops:\n{log:?}"
        );
    }
    case.recorder.assert_consistent();
}

/// A loop that completes without having seen a trigger whose notification was lost runs
/// again: the durable sequence, not the notification, decides.
pub async fn lost_notification_does_not_lose_trigger(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("notify/lost");
    let busy = Gate::new();
    case.script.set(
        &k,
        vec![
            Step::AfterGate(busy.clone(), Box::new(Step::Complete)),
            Step::UntilShutdown,
        ],
    );
    let a = case.node("a").await;
    a.faults.drop_triggers(true);
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop runs", |log| log.start_count(&k) == 1)
        .await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    busy.open();
    case.wait(
        "the loop runs again for the trigger it never heard of",
        |log| log.start_count(&k) == 2,
    )
    .await;
    let info = case
        .coordinator()
        .await
        .key_info(&k)
        .await
        .expect("key_info");
    assert!(
        info.is_some(),
        "the key must not retire with a trigger pending"
    );
    case.recorder.assert_consistent();
}
