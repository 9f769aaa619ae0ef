//! Cases: the durable registry and per-key state.

use std::time::Duration;

use keyloop_core::{Bytes, CoordinatorError, Key, Release};

use crate::{Case, Happening, Harness, Step, key};

/// Keys that were triggered and not completed outlive every node (and, where the backend can
/// restart, the backend); a new node runs them all.
pub async fn registry_survives_restart_of_all_nodes(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let pending: Vec<Key> = (0..3)
        .map(|i| key(&format!("registry/pending-{i}")))
        .collect();
    let running: Vec<Key> = (0..10)
        .map(|i| key(&format!("registry/running-{i}")))
        .collect();
    {
        let client = case.client().await;
        for k in &pending {
            client.trigger(k.clone()).await.expect("trigger");
        }
    }
    {
        let a = case.node("a").await;
        let b = case.node("b").await;
        for (i, k) in running.iter().enumerate() {
            let node = if i % 2 == 0 { &a } else { &b };
            node.engine.trigger(k.clone()).await.expect("trigger");
        }
        case.wait("every key runs", |log| {
            pending
                .iter()
                .chain(&running)
                .all(|k| log.start_count(k) == 1)
        })
        .await;
    }
    case.drop_nodes().await;
    {
        let snapshot = case.coordinator().await.inspect().await.expect("inspect");
        let registered: Vec<&Key> = snapshot.keys.iter().map(|i| &i.key).collect();
        for k in pending.iter().chain(&running) {
            assert!(
                registered.contains(&k),
                "{k:?} left the registry: {snapshot:?}"
            );
        }
    }
    let restarted = case.ns.restart_backend().await;
    let _c = case.node("c").await;
    case.recorder
        .wait_until(
            &format!("every key runs on a new node (backend restarted: {restarted})"),
            case.timeout() * 2,
            |log| {
                pending
                    .iter()
                    .chain(&running)
                    .all(|k| log.start_count(k) == 2)
            },
        )
        .await;
    {
        let log = case.recorder.lock();
        for k in pending.iter().chain(&running) {
            let starts = log.starts(k);
            assert_eq!(starts[1].node, "c");
            assert!(
                starts[1].epoch > starts[0].epoch,
                "epoch of {k:?} went from {} to {} (backend restarted: {restarted})",
                starts[0].epoch,
                starts[1].epoch
            );
        }
    }
    case.recorder.assert_consistent();
}

/// Saved bytes load back unchanged: arbitrary binary, empty, and as large as the limit.
pub async fn state_roundtrips(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("state/direct");
    let d1 = case.direct("d1").await;
    let c = &d1.coordinator;
    c.trigger(&k0).await.expect("trigger");
    let claim = c
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    assert_eq!(
        c.load_state(&k0).await.expect("load_state"),
        None,
        "no state yet"
    );
    let max = c.limits().max_state_bytes;
    let big: Vec<u8> = (0..max.min(4 << 20)).map(|i| (i % 251) as u8).collect();
    let samples: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        vec![0, 255, 0, 1, 0xc3, 0x28, b'\'', b'"', b'\\', 0],
        Vec::new(),
        big,
        "ключ🦀".as_bytes().to_vec(),
    ];
    for sample in samples {
        c.save_state(&d1.id(), &k0, claim.epoch, Bytes::from(sample.clone()))
            .await
            .unwrap_or_else(|e| panic!("saving {} bytes: {e}", sample.len()));
        let loaded = c.load_state(&k0).await.expect("load_state");
        assert_eq!(
            loaded.as_deref(),
            Some(&sample[..]),
            "{} saved bytes must load back unchanged",
            sample.len()
        );
        let elsewhere = case
            .coordinator()
            .await
            .load_state(&k0)
            .await
            .expect("load_state");
        assert_eq!(
            elsewhere.as_deref(),
            Some(&sample[..]),
            "visible to other processes"
        );
    }

    let k = key("state/engine");
    let binary = vec![0u8, 1, 2, 0xff, 0xfe, b'\n', 0];
    case.script.set(&k, vec![Step::TrySave(binary.clone())]);
    let empty = key("state/engine-empty");
    case.script.set(&empty, vec![Step::TrySave(Vec::new())]);
    let a = case.node("a").await;
    for k in [&k, &empty] {
        a.engine.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("both loops saved and loaded", |log| {
        [&k, &empty]
            .iter()
            .all(|k| log.count(k, |h| matches!(h, Happening::StateLoaded(_))) == 1)
    })
    .await;
    let log = case.recorder.lock();
    for (k, bytes) in [(&k, binary), (&empty, Vec::new())] {
        let loaded = log
            .last(k, |h| matches!(h, Happening::StateLoaded(_)))
            .map(|r| r.what.clone());
        assert_eq!(
            loaded,
            Some(Happening::StateLoaded(Some(bytes))),
            "{k:?}:\n{log:?}"
        );
    }
}

/// State saved by one owner is what the next owner loads.
pub async fn state_visible_to_next_owner(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("state/next-direct");
    let d1 = case.direct("d1").await;
    let d2 = case.direct("d2").await;
    d1.coordinator.trigger(&k0).await.expect("trigger");
    let first = d1
        .coordinator
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    d1.coordinator
        .save_state(&d1.id(), &k0, first.epoch, Bytes::from_static(b"from d1"))
        .await
        .expect("save");
    d1.coordinator
        .release(
            &d1.id(),
            &k0,
            first.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await
        .expect("release");
    d2.coordinator
        .claim_key(&d2.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    let loaded = d2.coordinator.load_state(&k0).await.expect("load_state");
    assert_eq!(loaded.as_deref(), Some(&b"from d1"[..]));

    let k = key("state/next");
    case.script.set(&k, vec![Step::CountState]);
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("a saves the counter", |log| {
        log.count(&k, |h| matches!(h, Happening::StateSaved(_))) == 1
    })
    .await;
    let _b = case.node("b").await;
    a.engine.shutdown().await;
    case.wait("b saves the counter", |log| {
        log.count(&k, |h| matches!(h, Happening::StateSaved(_))) == 2
    })
    .await;
    let log = case.recorder.lock();
    let loads: Vec<_> = log
        .of(&k)
        .filter_map(|r| match &r.what {
            Happening::StateLoaded(s) => Some((r.node.clone(), s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        loads,
        vec![
            ("a".to_string(), None),
            ("b".to_string(), Some(1u64.to_be_bytes().to_vec()))
        ],
        "{log:?}"
    );
}

/// State over the backend's limit is a typed error and leaves the stored state unchanged.
pub async fn oversized_state_is_typed_error(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;

    let k0 = key("state/oversized-direct");
    let d1 = case.direct("d1").await;
    let c = &d1.coordinator;
    c.trigger(&k0).await.expect("trigger");
    let claim = c
        .claim_key(&d1.id(), &k0)
        .await
        .expect("claim_key")
        .expect("claimable");
    c.save_state(&d1.id(), &k0, claim.epoch, Bytes::from_static(b"small"))
        .await
        .expect("save");
    let max = c.limits().max_state_bytes;
    let result = c
        .save_state(&d1.id(), &k0, claim.epoch, Bytes::from(vec![7u8; max + 1]))
        .await;
    match result {
        Err(CoordinatorError::StateTooLarge { key, size, max: m }) => {
            assert_eq!((key, size, m), (k0.clone(), max + 1, max));
        }
        other => panic!("state of max+1 bytes must fail with StateTooLarge: {other:?}"),
    }
    let loaded = c.load_state(&k0).await.expect("load_state");
    assert_eq!(
        loaded.as_deref(),
        Some(&b"small"[..]),
        "the stored state is unchanged"
    );

    let k = key("state/oversized");
    case.script.set(&k, vec![Step::TrySave(vec![1u8; max + 1])]);
    let a = case.node("a").await;
    a.engine.trigger(k.clone()).await.expect("trigger");
    case.wait("the loop tried to save", |log| {
        log.count(&k, |h| matches!(h, Happening::StateLoaded(_))) == 1
    })
    .await;
    let log = case.recorder.lock();
    let failed = log
        .last(&k, |h| matches!(h, Happening::SaveFailed(_)))
        .map(|r| r.what.clone());
    assert!(
        matches!(&failed, Some(Happening::SaveFailed(e)) if e.starts_with("TooLarge")),
        "an oversized save from a loop is StateError::TooLarge: {failed:?}\n{log:?}"
    );
    assert_eq!(
        log.last(&k, |h| matches!(h, Happening::StateLoaded(_)))
            .map(|r| r.what.clone()),
        Some(Happening::StateLoaded(None)),
        "nothing was written"
    );
}
