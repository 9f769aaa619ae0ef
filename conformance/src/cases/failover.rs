//! Cases: failover and fencing — crashes, stalls, zombies, stale writes.

use std::time::Duration;

use keyloop_core::{Bytes, CoordinatorError, Key, NodeId, Release, Released, ShutdownReason};
use tokio::time::Instant;

use crate::{Case, Happening, Harness, Node, Step, eventually, key};

/// Starts `keys` on a single node `name` and waits until all run there.
async fn keys_running_on(case: &mut Case, name: &str, keys: &[Key]) -> Node {
    let node = case.node(name).await;
    for k in keys {
        node.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait(&format!("every key runs on {name}"), |log| {
        keys.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    node
}

fn is_fenced(result: &Result<impl std::fmt::Debug, CoordinatorError>) -> bool {
    matches!(
        result,
        Err(CoordinatorError::Fenced { .. } | CoordinatorError::LeaseExpired { .. })
    )
}

/// After a node dies, its keys run elsewhere within lease TTL plus the claim interval.
pub async fn crashed_node_keys_fail_over_after_ttl(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let keys: Vec<Key> = (0..5).map(|i| key(&format!("failover/{i}"))).collect();
    let a = keys_running_on(&mut case, "a", &keys).await;
    let _b = case.node("b").await;
    let killed_at = Instant::now();
    a.engine.kill();
    let deadline = case.ttl * 3 + case.expiry_slack;
    case.recorder
        .wait_until("every key of the dead node runs on b", deadline, |log| {
            keys.iter().all(|k| log.start_count(k) == 2)
        })
        .await;
    {
        let log = case.recorder.lock();
        // G6: lease TTL (+ the backend's expiry slack) + claim interval after the death,
        // with room for the backend's clock.
        let bound = case.ttl + case.expiry_slack + case.claim_interval() + case.ttl / 2;
        for k in &keys {
            let starts = log.starts(k);
            assert_eq!(starts[1].node, "b", "{log:?}");
            assert!(starts[1].epoch > starts[0].epoch);
            let took = starts[1].at - killed_at;
            assert!(
                took <= bound,
                "key {k:?} failed over {took:?} after the crash; at most {bound:?} expected:\n{log:?}"
            );
            assert!(
                log.count(k, |h| *h == Happening::Dropped) == 1,
                "the dead node's loop vanished with it:\n{log:?}"
            );
        }
    }
    case.recorder.assert_consistent();
}

/// Keys of a node are not taken before its lease could have expired, however eager the
/// other nodes are.
pub async fn crashed_node_keys_not_claimed_before_ttl(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    // The backend alone: a live owner's key is never claimed by another node.
    let k0 = key("failover/live-owner-direct");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let first = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let until = Instant::now() + case.ttl * 2;
    while Instant::now() < until {
        let got = d2.coordinator.claim(&d2.id(), 10).await.expect("claim");
        assert!(
            got.is_empty(),
            "a live node's key was claimed by another: {got:?}"
        );
        let got = d2
            .coordinator
            .claim_key(&d2.id(), &k0)
            .await
            .expect("claim_key");
        assert_eq!(got, None, "a live node's key was claimed by another");
        tokio::time::sleep(case.ttl / 10).await;
    }
    d1.stop_heartbeats();
    let taken = eventually(
        "the key is claimable after its owner stopped",
        case.timeout(),
        case.ttl / 10,
        || async {
            d2.coordinator
                .claim(&d2.id(), 10)
                .await
                .expect("claim")
                .into_iter()
                .find(|c| c.key == k0)
        },
    )
    .await;
    assert!(taken.epoch > first.epoch);

    // Through engines: b takes a's keys only after a's lease could have run out.
    let keys: Vec<Key> = (0..3)
        .map(|i| key(&format!("failover/early-{i}")))
        .collect();
    let a = keys_running_on(&mut case, "a", &keys).await;
    let _b = case.node("b").await;
    a.engine.kill();
    let (sent, granted) = a.faults.last_renewal().expect("a renewed its lease");
    case.wait("every key of the dead node runs on b", |log| {
        keys.iter().all(|k| log.start_count(k) == 2)
    })
    .await;
    let expiry = sent + granted;
    {
        let log = case.recorder.lock();
        for k in &keys {
            let start = log.starts(k)[1];
            assert!(
                start.at >= expiry,
                "key {k:?} was taken {:?} before the dead node's lease (last renewed {:?} before that, for {granted:?}) could expire:\n{log:?}",
                expiry - start.at,
                start.at - sent,
            );
        }
    }
    case.recorder.assert_consistent();
}

/// A node that cannot renew its lease stops its loops before the lease can expire on the
/// backend, measured from the send time of its last successful heartbeat.
pub async fn stalled_node_stops_loops_before_expiry(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let keys: Vec<Key> = (0..3).map(|i| key(&format!("stall/{i}"))).collect();
    let a = keys_running_on(&mut case, "a", &keys).await;
    let _b = case.node("b").await;
    a.faults.stall_heartbeats();
    case.wait("the stalled node's loops end", |log| {
        keys.iter().all(|k| log.count(k, Happening::ends_loop) >= 1)
    })
    .await;
    let (sent, granted) = a.faults.last_renewal().expect("a renewed its lease");
    let expiry = sent + granted;
    {
        let log = case.recorder.lock();
        for k in &keys {
            let end = log.last(k, Happening::ends_loop).expect("ended");
            assert!(
                end.at < expiry,
                "the stalled node's loop for {k:?} ended {:?} after its lease could expire:\n{log:?}",
                end.at - expiry
            );
            let shutdown = log
                .last(k, |h| matches!(h, Happening::Shutdown { .. }))
                .expect("the loop got a shutdown signal");
            assert_eq!(
                shutdown.what,
                Happening::Shutdown {
                    reason: ShutdownReason::OwnershipLost,
                    token_cancelled: true
                },
                "{log:?}"
            );
        }
    }
    case.wait("the keys run again", |log| {
        keys.iter().all(|k| log.start_count(k) >= 2)
    })
    .await;
    case.recorder.assert_consistent();
}

/// A node whose key was taken over after its lease expired cannot save state, release or
/// renew; the new owner's state stays.
pub async fn zombie_save_rejected_after_takeover(harness: &dyn Harness) {
    let case = Case::new(harness).await;
    let k = key("zombie/takeover");
    let zombie = case.direct_without_heartbeats("zombie").await;
    let heir = case.direct("heir").await;
    zombie.coordinator.trigger(&k).await.expect("trigger");
    let old = zombie
        .coordinator
        .claim_key(&zombie.id(), &k)
        .await
        .expect("claim_key")
        .expect("claimable");
    zombie
        .coordinator
        .save_state(&zombie.id(), &k, old.epoch, Bytes::from_static(b"one"))
        .await
        .expect("the owner saves");
    let new = eventually(
        "the heir takes the key over",
        case.timeout(),
        case.ttl / 10,
        || async {
            heir.coordinator
                .claim(&heir.id(), 10)
                .await
                .expect("claim")
                .into_iter()
                .find(|c| c.key == k)
        },
    )
    .await;
    assert!(new.epoch > old.epoch);
    heir.coordinator
        .save_state(&heir.id(), &k, new.epoch, Bytes::from_static(b"two"))
        .await
        .expect("the new owner saves");

    let zombie_save = zombie
        .coordinator
        .save_state(&zombie.id(), &k, old.epoch, Bytes::from_static(b"zombie"))
        .await;
    assert!(
        is_fenced(&zombie_save),
        "a zombie's save must be fenced: {zombie_save:?}"
    );
    let stale_epoch = heir
        .coordinator
        .save_state(&heir.id(), &k, old.epoch, Bytes::from_static(b"stale"))
        .await;
    assert!(
        matches!(stale_epoch, Err(CoordinatorError::Fenced { .. })),
        "a save with a superseded epoch must be fenced: {stale_epoch:?}"
    );
    let zombie_release = zombie
        .coordinator
        .release(
            &zombie.id(),
            &k,
            old.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await;
    assert!(is_fenced(&zombie_release), "{zombie_release:?}");
    let state = heir.coordinator.load_state(&k).await.expect("load_state");
    assert_eq!(
        state.as_deref(),
        Some(&b"two"[..]),
        "the new owner's state stays"
    );
    let info = heir
        .coordinator
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(info.owner, Some(heir.id()));
    assert_eq!(info.epoch, Some(new.epoch));
}

/// Once a node's lease expired, its writes are fenced even if nobody took its keys, its
/// heartbeat fails with `LeaseExpired`, and it owns nothing.
pub async fn zombie_save_rejected_after_expiry_without_takeover(harness: &dyn Harness) {
    let case = Case::new(harness).await;
    let k = key("zombie/expired");
    let zombie = case.direct_without_heartbeats("zombie").await;
    let c = &zombie.coordinator;
    c.trigger(&k).await.expect("trigger");
    let claim = c
        .claim_key(&zombie.id(), &k)
        .await
        .expect("claim_key")
        .expect("claimable");
    c.save_state(&zombie.id(), &k, claim.epoch, Bytes::from_static(b"one"))
        .await
        .expect("the owner saves");
    let observer = case.coordinator().await;
    case.wait_key(
        &*observer,
        &k,
        "the expired owner is no longer reported",
        |i| i.as_ref().is_some_and(|i| i.owner.is_none()),
    )
    .await;

    let save = c
        .save_state(&zombie.id(), &k, claim.epoch, Bytes::from_static(b"zombie"))
        .await;
    assert!(
        is_fenced(&save),
        "a save after lease expiry must be fenced: {save:?}"
    );
    let release = c
        .release(
            &zombie.id(),
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq,
            },
        )
        .await;
    assert!(
        is_fenced(&release),
        "a release after lease expiry must be fenced: {release:?}"
    );
    let beat = c.heartbeat(&zombie.id()).await;
    assert!(
        matches!(beat, Err(CoordinatorError::LeaseExpired { node }) if node == zombie.id()),
        "a heartbeat after expiry must fail with LeaseExpired: {beat:?}"
    );
    match c.owned(&zombie.id()).await {
        Ok(owned) => assert!(owned.is_empty(), "an expired node owns nothing: {owned:?}"),
        Err(CoordinatorError::LeaseExpired { .. }) => {}
        Err(e) => panic!("owned() of an expired node: {e}"),
    }
    let state = observer.load_state(&k).await.expect("load_state");
    assert_eq!(
        state.as_deref(),
        Some(&b"one"[..]),
        "the rejected save changed nothing"
    );
    let info = observer
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("still registered");
    assert_eq!(info.owner, None);
}

/// Releases with a stale epoch, or by a node that does not own the key, are fenced.
pub async fn stale_release_rejected(harness: &dyn Harness) {
    let case = Case::new(harness).await;
    let k = key("fencing/stale-release");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    let out = d1.coordinator.trigger(&k).await.expect("trigger");
    let first = d1
        .coordinator
        .claim_key(&d1.id(), &k)
        .await
        .expect("claim_key")
        .expect("claimable");
    let released = d1
        .coordinator
        .release(
            &d1.id(),
            &k,
            first.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await
        .expect("release");
    assert_eq!(released, Released::Released);
    let second = d2
        .coordinator
        .claim_key(&d2.id(), &k)
        .await
        .expect("claim_key")
        .expect("a released key is claimable");
    assert!(second.epoch > first.epoch);

    let complete = Release::Complete {
        observed_seq: out.seq,
    };
    let attempts: [(&str, NodeId, _); 4] = [
        (
            "the previous owner with its old epoch",
            d1.id(),
            first.epoch,
        ),
        ("a non-owner with the current epoch", d1.id(), second.epoch),
        ("the owner with a superseded epoch", d2.id(), first.epoch),
        (
            "the owner with a future epoch",
            d2.id(),
            keyloop_core::Epoch(second.epoch.0 + 1),
        ),
    ];
    for (who, node, epoch) in attempts {
        let result = d1
            .coordinator
            .release(&node, &k, epoch, complete.clone())
            .await;
        assert!(
            matches!(result, Err(CoordinatorError::Fenced { .. })),
            "release by {who} must be fenced: {result:?}"
        );
    }
    let info = d2
        .coordinator
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(
        info.owner,
        Some(d2.id()),
        "fenced releases changed nothing: {info:?}"
    );
    assert_eq!(info.epoch, Some(second.epoch));
    let released = d2
        .coordinator
        .release(&d2.id(), &k, second.epoch, complete.clone())
        .await
        .expect("the owner's release");
    assert_eq!(released, Released::Retired);
    let twice = d2
        .coordinator
        .release(&d2.id(), &k, second.epoch, complete)
        .await;
    assert!(
        matches!(twice, Err(CoordinatorError::Fenced { .. })),
        "releasing a retired key must be fenced: {twice:?}"
    );
}

/// A loop whose node loses its lease gets the shutdown signal with reason `OwnershipLost`
/// and its cancellation token cancelled, and its state writes stop.
pub async fn ownership_lost_signals_shutdown(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let k = key("fencing/ownership-lost");
    case.script.set(&k, vec![Step::CountState]);
    let a = keys_running_on(&mut case, "a", std::slice::from_ref(&k)).await;
    case.wait("the loop saved its state", |log| {
        log.count(&k, |h| matches!(h, Happening::StateSaved(_))) == 1
    })
    .await;
    a.faults.stall_heartbeats();
    case.wait("the loop is told it lost ownership", |log| {
        log.count(&k, |h| matches!(h, Happening::Shutdown { .. })) == 1
    })
    .await;
    let shutdown = case
        .recorder
        .lock()
        .last(&k, |h| matches!(h, Happening::Shutdown { .. }))
        .cloned()
        .expect("shutdown recorded");
    assert_eq!(
        shutdown.what,
        Happening::Shutdown {
            reason: ShutdownReason::OwnershipLost,
            token_cancelled: true,
        },
        "loop log:\n{:?}",
        case.recorder
    );
    case.wait("the loop ends", |log| {
        log.count(&k, Happening::ends_loop) == 1
    })
    .await;
    // Another node continues from the saved state.
    let _b = case.node("b").await;
    case.wait("the key runs again and saves", |log| {
        log.count(&k, |h| matches!(h, Happening::StateSaved(_))) >= 2
    })
    .await;
    {
        let log = case.recorder.lock();
        let loads: Vec<_> = log
            .of(&k)
            .filter_map(|r| match &r.what {
                Happening::StateLoaded(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(loads[0], None);
        assert_eq!(
            loads[1].as_deref(),
            Some(&1u64.to_be_bytes()[..]),
            "the next owner loads the state saved before the loss:\n{log:?}"
        );
    }
    case.recorder.assert_consistent();
}
