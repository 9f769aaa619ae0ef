//! Consul-specific behaviour of the coordinator, against the emulator.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keyloop_consul::{ConsulConfig, ConsulCoordinator, ReadOptions};
use keyloop_consul_emulator::{Control, Emulator, EmulatorConfig, FaultKind, Target};
use keyloop_core::{
    Coordinator, CoordinatorError, CoordinatorEvent, Decision, Engine, Epoch, EventSink, Key,
    NodeId, NodeInfo, Release, Released, ShutdownReason, TriggerSeq, WakeTime, controller_fn,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// Lease of nodes joined directly: they never heartbeat, so it outlasts every test…
const TTL: Duration = Duration::from_secs(60);
/// …except those that wait for an expiry.
const SHORT_TTL: Duration = Duration::from_millis(600);
const WAIT: Duration = Duration::from_secs(10);

async fn emulator() -> Emulator {
    let config = EmulatorConfig::builder()
        .min_session_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    Emulator::start_with(config).await.unwrap()
}

fn coordinator(emu: &Emulator, lock_delay: Duration) -> ConsulCoordinator {
    let config = ConsulConfig::builder(emu.url())
        .prefix("t")
        .lock_delay(lock_delay)
        .watch_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    ConsulCoordinator::new(config)
}

struct Node {
    id: NodeId,
    events: mpsc::UnboundedReceiver<CoordinatorEvent>,
}

async fn join(c: &ConsulCoordinator, name: &str) -> Node {
    join_for(c, name, TTL).await
}

async fn join_for(c: &ConsulCoordinator, name: &str, ttl: Duration) -> Node {
    let (tx, rx) = mpsc::unbounded_channel();
    let info = NodeInfo {
        id: NodeId::random(),
        name: name.to_string(),
    };
    c.join(
        &info,
        ttl,
        EventSink::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .await
    .unwrap();
    Node {
        id: info.id,
        events: rx,
    }
}

/// Waits for an event matching `pred`.
async fn expect_event(node: &mut Node, what: &str, pred: impl Fn(&CoordinatorEvent) -> bool) {
    let found = timeout(WAIT, async {
        while let Some(e) = node.events.recv().await {
            if pred(&e) {
                return;
            }
        }
        panic!("event stream ended");
    })
    .await;
    assert!(found.is_ok(), "no {what} event within {WAIT:?}");
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn session(c: &ConsulCoordinator, n: &Node) -> String {
    c.session_of(&n.id).unwrap()
}

/// Keeps claiming until `key` is claimed or `limit` passes.
async fn claim_within(
    c: &ConsulCoordinator,
    node: &NodeId,
    k: &Key,
    limit: Duration,
) -> Option<(Epoch, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(claim) = c
            .claim(node, 10)
            .await
            .unwrap()
            .into_iter()
            .find(|cl| &cl.key == k)
        {
            return Some((claim.epoch, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn handoff_does_not_wait_for_lock_delay() {
    let emu = emulator().await;
    // A 30 s lock-delay: any handoff that went through session invalidation would stall.
    let a_coord = coordinator(&emu, Duration::from_secs(30));
    let b_coord = coordinator(&emu, Duration::from_secs(30));
    let a = join(&a_coord, "a").await;
    let b = join(&b_coord, "b").await;
    let k1 = key("handoff/1");
    let k2 = key("handoff/2");
    a_coord.trigger(&k1).await.unwrap();
    a_coord.trigger(&k2).await.unwrap();
    let claimed = a_coord.claim(&a.id, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);

    // Continue: released at once.
    let c1 = claimed.iter().find(|c| c.key == k1).unwrap();
    let r = a_coord
        .release(
            &a.id,
            &k1,
            c1.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Released);
    let (e1, took) = claim_within(&b_coord, &b.id, &k1, Duration::from_secs(6))
        .await
        .expect("continue handoff");
    assert!(e1 > c1.epoch);
    assert!(
        took < Duration::from_secs(5),
        "far below the 30 s lock-delay: {took:?}"
    );

    // Leave: releases before destroying the session.
    a_coord.leave(&a.id).await.unwrap();
    let (_, took) = claim_within(&b_coord, &b.id, &k2, Duration::from_secs(6))
        .await
        .expect("leave handoff");
    assert!(
        took < Duration::from_secs(5),
        "far below the 30 s lock-delay: {took:?}"
    );
    assert!(
        emu.control()
            .sessions()
            .iter()
            .all(|s| s.name != format!("keyloop {}", a.id)),
        "session destroyed"
    );
}

#[tokio::test]
async fn lock_delay_does_apply_after_an_invalidated_session() {
    // The counterpart of the test above: proves the emulator would have caught a handoff
    // that destroyed the session with keys still held.
    let emu = emulator().await;
    let a_coord = coordinator(&emu, Duration::from_secs(30));
    let b_coord = coordinator(&emu, Duration::ZERO);
    let a = join(&a_coord, "a").await;
    let b = join(&b_coord, "b").await;
    let k = key("delayed");
    a_coord.trigger(&k).await.unwrap();
    assert_eq!(a_coord.claim(&a.id, 10).await.unwrap().len(), 1);
    assert!(emu.control().destroy_session(&session(&a_coord, &a)));
    assert_eq!(
        claim_within(&b_coord, &b.id, &k, Duration::from_millis(700)).await,
        None
    );
}

#[tokio::test]
async fn a_session_destroyed_from_outside_is_reported_lost() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let mut a = join(&c, "a").await;
    let k = key("x");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    assert!(emu.control().destroy_session(&session(&c, &a)));
    let err = c.heartbeat(&a.id).await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::LeaseExpired { node } if node == a.id),
        "{err}"
    );
    expect_event(&mut a, "OwnershipLost(all)", |e| {
        matches!(e, CoordinatorEvent::OwnershipLost { key: None })
    })
    .await;
    let err = c
        .save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"zombie"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
}

#[tokio::test]
async fn a_session_destroyed_from_outside_stops_the_nodes_loops() {
    let emu = emulator().await;
    let coord: Arc<dyn Coordinator> = Arc::new(coordinator(&emu, Duration::ZERO));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = Engine::builder(
        coord,
        controller_fn(move |key: Key, ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(format!("started {key}"));
                let reason = ctx.shutdown().await;
                let _ = tx.send(format!("stopped {key} {reason:?}"));
                Ok(Decision::Continue)
            }
        }),
    )
    .node_name("victim")
    .lease_ttl(Duration::from_millis(900))
    .start()
    .await
    .unwrap();
    engine.trigger("loop/1").await.unwrap();
    let started = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(started, "started loop/1");
    let sessions = emu.control().sessions();
    assert_eq!(sessions.len(), 1);
    assert!(emu.control().destroy_session(&sessions[0].id));
    let stopped = timeout(WAIT, rx.recv())
        .await
        .expect("loop stopped")
        .unwrap();
    assert_eq!(
        stopped,
        format!("stopped loop/1 {:?}", ShutdownReason::OwnershipLost)
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn index_going_backwards_or_resetting_resyncs_without_losing_triggers() {
    for fault in [
        FaultKind::IndexBackwards,
        FaultKind::IndexReset,
        FaultKind::IndexZero,
    ] {
        let emu = emulator().await;
        let c = coordinator(&emu, Duration::ZERO);
        let mut a = join(&c, "a").await;
        let k = key("resync/k");
        c.trigger(&k).await.unwrap();
        let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
        // Once the watch is parked in a blocking query, make its next answer misbehave.
        // (Both of its watches: trigger markers and node records.)
        assert!(emu.control().wait_for_blocked_queries(2, WAIT).await);
        emu.control()
            .inject(fault, 1, Target::PathPrefix("/v1/kv/t/pend/".into()));
        let t = c.trigger(&k).await.unwrap();
        assert!(t.seq > claim.trigger_seq);
        expect_event(&mut a, "Resync", |e| matches!(e, CoordinatorEvent::Resync)).await;
        assert_eq!(emu.control().pending_faults(), 0, "{fault:?} was served");
        // What the engine does on Resync: re-read what it owns. The trigger is there.
        let owned = c.owned(&a.id).await.unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].trigger_seq, t.seq, "{fault:?}");
        assert_eq!(owned[0].epoch, claim.epoch);
        // And Complete at the old sequence does not retire the key.
        let r = c
            .release(
                &a.id,
                &k,
                claim.epoch,
                Release::Complete {
                    observed_seq: claim.trigger_seq,
                },
            )
            .await
            .unwrap();
        assert_eq!(r, Released::Retriggered { seq: t.seq });
    }
}

#[tokio::test]
async fn watch_failures_resync_and_triggers_still_arrive() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let mut a = join(&c, "a").await;
    let k = key("flaky");
    c.trigger(&k).await.unwrap();
    c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    assert!(emu.control().wait_for_blocked_queries(2, WAIT).await);
    emu.control().inject(
        FaultKind::DropConnection,
        1,
        Target::PathPrefix("/v1/kv/t/pend/".into()),
    );
    emu.control().inject(
        FaultKind::Error500,
        2,
        Target::PathPrefix("/v1/kv/t/pend/".into()),
    );
    let t = c.trigger(&k).await.unwrap();
    let seq = t.seq;
    expect_event(
        &mut a,
        "Triggered",
        |e| matches!(e, CoordinatorEvent::Triggered { seq: s, .. } if *s == seq),
    )
    .await;
    expect_event(&mut a, "Resync", |e| matches!(e, CoordinatorEvent::Resync)).await;
}

#[tokio::test]
async fn triggers_reach_the_owner_and_are_consumed() {
    let emu = emulator().await;
    let owner_c = coordinator(&emu, Duration::ZERO);
    let other_c = coordinator(&emu, Duration::ZERO);
    let mut owner = join(&owner_c, "owner").await;
    let k = key("notify me");
    let first = other_c.trigger(&k).await.unwrap();
    assert!(first.registered);
    assert_eq!(first.owner, None);
    let claim = owner_c.claim(&owner.id, 5).await.unwrap().pop().unwrap();
    assert_eq!(claim.trigger_seq, first.seq);
    let t = other_c.trigger(&k).await.unwrap();
    assert!(!t.registered);
    assert_eq!(t.owner, Some(owner.id));
    let seq = t.seq;
    expect_event(&mut owner, "Triggered", |e| matches!(e, CoordinatorEvent::Triggered { key, seq: s } if key.as_str() == "notify me" && *s == seq)).await;
    let deadline = Instant::now() + WAIT;
    while !emu
        .control()
        .kv_keys("t/pend/")
        .iter()
        .all(|k| k.ends_with("~avail"))
    {
        assert!(
            Instant::now() < deadline,
            "marker never consumed: {:?}",
            emu.control().kv_keys("t/pend/")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn binary_state_roundtrips() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("bin");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    assert_eq!(c.load_state(&k).await.unwrap(), None);
    let all: Bytes = (0..=255u8).cycle().take(4096).collect::<Vec<_>>().into();
    c.save_state(&a.id, &k, claim.epoch, all.clone())
        .await
        .unwrap();
    assert_eq!(c.load_state(&k).await.unwrap(), Some(all));
    let max = c.limits().max_state_bytes;
    let biggest = Bytes::from(vec![0xA5u8; max]);
    c.save_state(&a.id, &k, claim.epoch, biggest.clone())
        .await
        .unwrap();
    assert_eq!(c.load_state(&k).await.unwrap(), Some(biggest));
}

#[tokio::test]
async fn oversized_state_is_a_typed_error_before_any_request() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("big");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    c.save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"small"))
        .await
        .unwrap();
    let max = c.limits().max_state_bytes;
    for size in [max + 1, 512 * 1024 + 1] {
        let before = emu
            .control()
            .request_counts()
            .get("PUT /v1/txn")
            .copied()
            .unwrap_or(0);
        let err = c
            .save_state(&a.id, &k, claim.epoch, Bytes::from(vec![1u8; size]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CoordinatorError::StateTooLarge { size: s, max: m, .. } if s == size && m == max),
            "{err}"
        );
        assert_eq!(
            emu.control()
                .request_counts()
                .get("PUT /v1/txn")
                .copied()
                .unwrap_or(0),
            before
        );
    }
    assert_eq!(
        c.load_state(&k).await.unwrap(),
        Some(Bytes::from_static(b"small"))
    );
}

#[tokio::test]
async fn keys_needing_url_encoding_work_everywhere() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let names = [
        "with space",
        "what?x=1&y",
        "100%",
        "ключ/🚀",
        ".",
        "..",
        "a/../b",
        "#frag",
        "~avail",
        "pend/x",
    ];
    for n in names {
        let k = key(n);
        assert!(c.trigger(&k).await.unwrap().registered, "{n}");
    }
    let claims = c.claim(&a.id, 100).await.unwrap();
    assert_eq!(claims.len(), names.len());
    for cl in &claims {
        let value = Bytes::from(format!("state of {}", cl.key));
        c.save_state(&a.id, &cl.key, cl.epoch, value.clone())
            .await
            .unwrap();
        assert_eq!(c.load_state(&cl.key).await.unwrap(), Some(value));
        let info = c.key_info(&cl.key).await.unwrap().unwrap();
        assert_eq!((info.owner, info.epoch), (Some(a.id), Some(cl.epoch)));
    }
    let snapshot = c.inspect().await.unwrap();
    let mut listed: Vec<&str> = snapshot.keys.iter().map(|k| k.key.as_str()).collect();
    let mut expected = names.to_vec();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(snapshot.nodes.len(), 1);
    assert!(snapshot.nodes[0].alive);
    assert_eq!(snapshot.nodes[0].name, "a");
    for cl in claims {
        let r = c
            .release(
                &a.id,
                &cl.key,
                cl.epoch,
                Release::Complete {
                    observed_seq: cl.trigger_seq,
                },
            )
            .await
            .unwrap();
        assert_eq!(r, Released::Retired, "{}", cl.key);
        assert_eq!(c.key_info(&cl.key).await.unwrap(), None);
        assert_eq!(c.load_state(&cl.key).await.unwrap(), None);
    }
}

#[tokio::test]
async fn fencing_and_epochs() {
    let emu = emulator().await;
    let a_c = coordinator(&emu, Duration::ZERO);
    let b_c = coordinator(&emu, Duration::ZERO);
    let a = join(&a_c, "a").await;
    let b = join(&b_c, "b").await;
    let k = key("fenced");
    let t0 = a_c.trigger(&k).await.unwrap();
    let c1 = a_c.claim_key(&a.id, &k).await.unwrap().unwrap();
    assert_eq!(c1.trigger_seq, t0.seq);
    assert_eq!(
        a_c.claim_key(&a.id, &k).await.unwrap(),
        Some(c1.clone()),
        "existing claim returned"
    );
    assert_eq!(b_c.claim_key(&b.id, &k).await.unwrap(), None, "held by a");
    a_c.release(
        &a.id,
        &k,
        c1.epoch,
        Release::Continue {
            avoid_for: Duration::from_secs(30),
        },
    )
    .await
    .unwrap();
    assert!(
        a_c.claim(&a.id, 10).await.unwrap().is_empty(),
        "a avoids the key it handed off"
    );
    let c2 = b_c.claim(&b.id, 10).await.unwrap().pop().unwrap();
    assert!(c2.epoch > c1.epoch);
    for err in [
        a_c.save_state(&a.id, &k, c1.epoch, Bytes::new())
            .await
            .unwrap_err(),
        a_c.release(
            &a.id,
            &k,
            c1.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await
        .unwrap_err(),
        b_c.save_state(&b.id, &k, c1.epoch, Bytes::new())
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    }
    // Complete with the current sequence retires; a later trigger re-registers with higher
    // sequence and, once claimed, a higher epoch.
    let r = b_c
        .release(
            &b.id,
            &k,
            c2.epoch,
            Release::Complete {
                observed_seq: c2.trigger_seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retired);
    let t1 = a_c.trigger(&k).await.unwrap();
    assert!(t1.registered && t1.seq > c2.trigger_seq);
    let c3 = b_c.claim_key(&b.id, &k).await.unwrap().unwrap();
    assert!(c3.epoch > c2.epoch);
    // Park: not claimable until triggered again.
    b_c.release(
        &b.id,
        &k,
        c3.epoch,
        Release::Park {
            error: "boom".into(),
            observed_seq: c3.trigger_seq,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        b_c.key_info(&k).await.unwrap().unwrap().parked.as_deref(),
        Some("boom")
    );
    assert!(b_c.claim(&b.id, 10).await.unwrap().is_empty());
    assert_eq!(b_c.claim_key(&b.id, &k).await.unwrap(), None);
    b_c.trigger(&k).await.unwrap();
    let c4 = claim_within(&b_c, &b.id, &k, Duration::from_secs(3))
        .await
        .expect("unparked");
    assert!(c4.0 > c3.epoch);
}

#[tokio::test]
async fn expired_session_fences_without_takeover() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join_for(&c, "a", SHORT_TTL).await;
    let k = key("expire");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    // No heartbeats: the emulator reaps the session between TTL and 2×TTL.
    let deadline = Instant::now() + WAIT;
    while !emu.control().sessions().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = c
        .save_state(&a.id, &k, claim.epoch, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    let err = c.heartbeat(&a.id).await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::LeaseExpired { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn complete_with_an_older_sequence_is_retriggered() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("rerun");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    let t = c.trigger(&k).await.unwrap();
    let r = c
        .release(
            &a.id,
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retriggered { seq: t.seq });
    let r = c
        .release(
            &a.id,
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: t.seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retired);
    assert_eq!(c.key_info(&k).await.unwrap(), None);
    let _ = TriggerSeq(0);
}

#[tokio::test]
async fn concurrent_claimers_get_disjoint_keys() {
    let emu = emulator().await;
    let coords: Vec<Arc<ConsulCoordinator>> = (0..3)
        .map(|_| Arc::new(coordinator(&emu, Duration::ZERO)))
        .collect();
    let mut nodes = Vec::new();
    for (i, c) in coords.iter().enumerate() {
        nodes.push(join(c, &format!("n{i}")).await.id);
    }
    for i in 0..200 {
        coords[0].trigger(&key(&format!("d/{i}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (c, n) in coords.iter().zip(&nodes) {
        let c = c.clone();
        let n = *n;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..40 {
                mine.extend(c.claim(&n, 7).await.unwrap().into_iter().map(|cl| cl.key));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a key was claimed twice");
    assert_eq!(total, 200);
}

/// Prints how many HTTP requests each operation costs (for BENCHMARKS.md) and pins the
/// counts on the caller's side.
#[tokio::test]
async fn request_counts_per_operation() {
    let emu = emulator().await;
    let ctl: Control = emu.control();
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delta = |before: u64| ctl.request_total() - before;

    let k = key("count");
    let txns = |ctl: &Control| {
        ctl.request_counts()
            .get("PUT /v1/txn")
            .copied()
            .unwrap_or(0)
    };
    let gets = |ctl: &Control| ctl.request_counts().get("GET /v1/kv").copied().unwrap_or(0);
    let (txn_before, get_before) = (txns(&ctl), gets(&ctl));
    c.trigger(&k).await.unwrap();
    let trigger_unowned = txns(&ctl) - txn_before;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let watch_answers_unowned = gets(&ctl) - get_before;

    // A claim right after a trigger re-lists (the watch marked the list stale).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = ctl.request_total();
    let claims = c.claim(&a.id, 1).await.unwrap();
    let claim_requests = delta(before);
    assert_eq!(claims.len(), 1);

    let before = ctl.request_total();
    c.heartbeat(&a.id).await.unwrap();
    let heartbeat = delta(before);

    let other = coordinator(&emu, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts_before = ctl.request_counts();
    let before = ctl.request_total();
    let retriggered = other.trigger(&k).await.unwrap();
    let trigger_owned_caller = delta(before);
    // Let the owner's watch answer and consume the marker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts_after = ctl.request_counts();
    let diff = |name: &str| {
        counts_after.get(name).copied().unwrap_or(0) - counts_before.get(name).copied().unwrap_or(0)
    };
    let trigger_owned_total = diff("PUT /v1/txn") + diff("GET /v1/kv");

    let before = ctl.request_total();
    c.save_state(&a.id, &k, claims[0].epoch, Bytes::from_static(b"s"))
        .await
        .unwrap();
    let save = delta(before);

    let before = ctl.request_total();
    let slept = c
        .release(
            &a.id,
            &k,
            claims[0].epoch,
            Release::Sleep {
                observed_seq: retriggered.seq,
                until: WakeTime::After(Duration::from_secs(60)),
            },
        )
        .await
        .unwrap();
    let sleep = delta(before);
    assert_eq!(slept, Released::Released);
    // The watch sees the sleep's marker: the next read of the wake-up index goes to Consul…
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = ctl.request_total();
    assert!(c.next_wake().await.unwrap().is_some());
    let next_wake_read = delta(before);
    // …and the one after is served from what it read.
    let before = ctl.request_total();
    assert!(c.next_wake().await.unwrap().is_some());
    let next_wake_cached = delta(before);
    let before = ctl.request_total();
    assert!(c.claim(&a.id, 1).await.unwrap().is_empty());
    let claim_nothing_due = delta(before);

    println!("requests: watch answers per unowned trigger (1 node)={watch_answers_unowned}");
    println!(
        "requests: trigger(unowned)={trigger_unowned} trigger(owned) caller={trigger_owned_caller} system={trigger_owned_total} claim(1 key)={claim_requests} heartbeat={heartbeat} save_state={save} sleep={sleep} next_wake(cached)={next_wake_cached} next_wake(after a sleep)={next_wake_read} claim(nothing due)={claim_nothing_due}"
    );
    assert_eq!(sleep, 1);
    assert_eq!(next_wake_cached, 0);
    assert_eq!(next_wake_read, 2, "bucket names and the earliest bucket");
    assert_eq!(trigger_unowned, 2);
    assert_eq!(trigger_owned_caller, 1);
    assert_eq!(claim_requests, 2, "one listing and one transaction");
    assert_eq!(heartbeat, 1);
    assert_eq!(save, 1);
    assert!(
        (2..=4).contains(&trigger_owned_total),
        "{trigger_owned_total}"
    );
}

/// Failover after a crash, with Consul's bound: the session is invalidated between TTL and
/// 2×TTL after the last renew, then the next claim takes the keys.
#[tokio::test]
async fn crash_failover_takes_twice_the_ttl_plus_lock_delay() {
    let emu = emulator().await;
    let ttl = Duration::from_millis(1000);
    let claim_interval = ttl / 10;
    let lock_delay = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start_engine = |name: &'static str| {
        let tx = tx.clone();
        let coord: Arc<dyn Coordinator> = Arc::new(coordinator(&emu, lock_delay));
        Engine::builder(
            coord,
            controller_fn(move |key: Key, ctx| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((name, key, ctx.epoch(), Instant::now()));
                    ctx.shutdown().await;
                    Ok(Decision::Continue)
                }
            }),
        )
        .config(move |c| {
            c.node_name(name)
                .lease_ttl(ttl)
                .heartbeat_interval(ttl / 5)
                .fence_margin(ttl / 5)
                .claim_interval(claim_interval)
        })
        .start()
    };
    let a = start_engine("a").await.unwrap();
    a.trigger("crash/1").await.unwrap();
    let (node, _, epoch_a, _) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(node, "a");
    let b = start_engine("b").await.unwrap();
    let killed = Instant::now();
    a.kill();
    let (node, key, epoch_b, at) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    let took = at - killed;
    assert_eq!((node, key.as_str()), ("b", "crash/1"));
    assert!(epoch_b > epoch_a);
    // Consul invalidates the session 2 × TTL after the last renew, which was at most one
    // heartbeat before the kill, and then the key is under lock-delay.
    assert!(
        took >= 2 * ttl - ttl / 5 + lock_delay,
        "taken over before Consul could have freed it: {took:?}"
    );
    // The bound, 2 × TTL + lock-delay + claim interval, with one more TTL of room for a
    // loaded machine.
    assert!(
        took <= 3 * ttl + lock_delay + claim_interval,
        "failover took {took:?}"
    );
    b.shutdown().await;
}

/// Stress: triggers racing with `Complete` are never lost. Every trigger that returned
/// before the release was answered is either reported by `Retriggered` or re-registers the
/// key after the retirement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_racing_complete_are_never_lost() {
    let emu = emulator().await;
    let c = Arc::new(coordinator(&emu, Duration::ZERO));
    let a = join(&c, "a").await;
    let triggerer = Arc::new(coordinator(&emu, Duration::ZERO));
    for round in 0..40 {
        let k = key(&format!("race/{round}"));
        let first = c.trigger(&k).await.unwrap();
        let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
        assert_eq!(claim.trigger_seq, first.seq);
        let racing = {
            let t = triggerer.clone();
            let k = k.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..(round % 4) {
                    seqs.push(t.trigger(&k).await.unwrap().seq);
                }
                seqs
            })
        };
        let mut observed = claim.trigger_seq;
        let retired = loop {
            match c
                .release(
                    &a.id,
                    &k,
                    claim.epoch,
                    Release::Complete {
                        observed_seq: observed,
                    },
                )
                .await
                .unwrap()
            {
                Released::Retired => break observed,
                Released::Retriggered { seq } => {
                    assert!(seq > observed, "retriggered with a newer sequence");
                    observed = seq;
                }
                other => panic!("{other:?}"),
            }
        };
        let seqs = racing.await.unwrap();
        let after = c.key_info(&k).await.unwrap();
        for s in seqs {
            let seen = s <= retired;
            let survives = after.as_ref().is_some_and(|info| info.trigger_seq >= s);
            assert!(
                seen || survives,
                "trigger {s:?} lost (retired at {retired:?}, now {after:?})"
            );
        }
    }
}

/// An index stuck at 0 makes every blocking query answer at once; the watch must still not
/// send more than one request per `watch_min_interval`.
#[tokio::test]
async fn watch_is_rate_limited_when_the_index_reads_zero() {
    let emu = emulator().await;
    let config = ConsulConfig::builder(emu.url())
        .prefix("t")
        .watch_min_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let c = ConsulCoordinator::new(config);
    let _a = join(&c, "a").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gets = |ctl: &Control| ctl.request_counts().get("GET /v1/kv").copied().unwrap_or(0);
    emu.control().inject(
        FaultKind::IndexZero,
        100_000,
        Target::PathPrefix("/v1/kv/t/pend/".into()),
    );
    // Wake the watch's pending blocking query; its next ones all read 0.
    c.trigger(&key("wake")).await.unwrap();
    let before = gets(&emu.control());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sent = gets(&emu.control()) - before;
    emu.control().clear_faults();
    // 1 s at one request per 50 ms is 20; a busy loop would send thousands.
    assert!((2..=25).contains(&sent), "{sent} watch requests in 1 s");
}

/// Consul skips a write that stores what is stored (`kvsSetTxn`, since 1.6): the entry's
/// `ModifyIndex` stays and no blocking query wakes. The registry entry's `ModifyIndex` is the
/// trigger sequence and the markers wake the watches, so every trigger must write fresh
/// values: each one moves the sequence, reaches the owner, and each trigger of an unowned
/// key wakes the claimers again.
#[tokio::test]
async fn every_trigger_moves_the_sequence_and_wakes_its_watchers() {
    let emu = emulator().await;
    let owner_c = coordinator(&emu, Duration::ZERO);
    let peer_c = coordinator(&emu, Duration::ZERO);
    let mut owner = join(&owner_c, "owner").await;
    let mut peer = join(&peer_c, "peer").await;
    let k = key("again and again");
    let first = peer_c.trigger(&k).await.unwrap();
    let claim = owner_c.claim_key(&owner.id, &k).await.unwrap().unwrap();
    assert_eq!(claim.trigger_seq, first.seq);
    let mut last = first.seq;
    for _ in 0..3 {
        let t = peer_c.trigger(&k).await.unwrap();
        assert!(t.seq > last, "the sequence moved: {t:?} after {last:?}");
        assert!(!t.registered);
        let seq = t.seq;
        expect_event(
            &mut owner,
            "Triggered at the new sequence",
            |e| matches!(e, CoordinatorEvent::Triggered { seq: s, .. } if *s == seq),
        )
        .await;
        last = seq;
    }
    let r = owner_c
        .release(
            &owner.id,
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: first.seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retriggered { seq: last }, "no trigger is lost");

    // Unowned keys: every trigger wakes every claimer.
    let free = key("nobody owns me");
    for _ in 0..3 {
        // Every watch of both nodes is parked: no answer is on its way.
        assert!(emu.control().wait_for_blocked_queries(4, WAIT).await);
        while peer.events.try_recv().is_ok() {}
        let t = owner_c.trigger(&free).await.unwrap();
        assert_eq!(t.owner, None);
        expect_event(&mut peer, "KeysAvailable", |e| {
            matches!(e, CoordinatorEvent::KeysAvailable)
        })
        .await;
    }
}

/// `Release::Park` parks only at the sequence the failing run observed (a `check-index` on
/// the registry entry, whose `ModifyIndex` is the sequence because every trigger writes a
/// fresh value); a trigger acknowledged during the run makes it `Retriggered`.
#[tokio::test]
async fn park_with_an_older_sequence_is_retriggered_and_parks_nothing() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("failing");
    c.trigger(&k).await.unwrap();
    let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
    let t = c.trigger(&k).await.unwrap();
    let park = |observed| Release::Park {
        error: "boom".into(),
        observed_seq: observed,
    };
    let r = c
        .release(&a.id, &k, claim.epoch, park(claim.trigger_seq))
        .await
        .unwrap();
    assert_eq!(r, Released::Retriggered { seq: t.seq });
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!(info.parked, None, "nothing parked");
    assert_eq!(info.owner, Some(a.id), "the caller keeps the key");
    assert_eq!(info.epoch, Some(claim.epoch), "at the same epoch");
    let r = c
        .release(&a.id, &k, claim.epoch, park(t.seq))
        .await
        .unwrap();
    assert_eq!(r, Released::Released);
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!(info.parked.as_deref(), Some("boom"));
    assert_eq!(info.owner, None);
}

/// Reads that decide ownership or sequences are `?consistent`, read-only transactions
/// included (Consul serves those outside Raft, possibly stale): with a lagging follower
/// serving every non-consistent read, they still see the newest trigger.
#[tokio::test]
async fn reads_that_decide_ownership_or_sequences_are_consistent() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("fresh reads");
    c.trigger(&k).await.unwrap();
    let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
    c.save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"old"))
        .await
        .unwrap();
    // A follower stops here; every read it could serve (all but the watch's) would be stale.
    let control = emu.control();
    for target in ["/v1/txn", "/v1/kv/t/k/", "/v1/kv/t/state/"] {
        control.inject(
            FaultKind::StaleRead,
            1000,
            Target::PathPrefix(target.into()),
        );
    }
    let t = c.trigger(&k).await.unwrap();
    c.save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"new"))
        .await
        .unwrap();

    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!(info.trigger_seq, t.seq, "key_info");
    let owned = c.owned(&a.id).await.unwrap();
    assert_eq!(owned[0].trigger_seq, t.seq, "owned");
    assert_eq!(
        c.load_state(&k).await.unwrap().as_deref(),
        Some(&b"new"[..]),
        "load_state"
    );
    let again = c.claim_key(&a.id, &k).await.unwrap().unwrap();
    assert_eq!(again.trigger_seq, t.seq, "claim_key of an owned key");
    let r = c
        .release(
            &a.id,
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        Released::Retriggered { seq: t.seq },
        "release's fenced read"
    );
    assert_eq!(control.pending_faults(), 3000, "no read was served stale");
}

/// A claim that takes keys in several transactions keeps the ones that committed when a
/// later transaction fails (the `Coordinator::claim` contract): `Ok` with those, and they
/// are this node's. `Err` only when nothing committed.
#[tokio::test]
async fn a_claim_that_fails_in_a_later_chunk_returns_what_committed() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let keys: Vec<Key> = (0..20).map(|i| key(&format!("chunked/{i}"))).collect();
    for k in &keys {
        c.trigger(k).await.unwrap();
    }
    // The first claim transaction commits, the second fails.
    emu.control().inject_after(
        1,
        FaultKind::Error500,
        1,
        Target::PathPrefix("/v1/txn".into()),
    );
    let claims = c.claim(&a.id, 40).await.expect("Ok with what committed");
    assert!(
        !claims.is_empty() && claims.len() < keys.len(),
        "{claims:?}"
    );
    assert_eq!(emu.control().pending_faults(), 0);
    let mut owned: Vec<Key> = c
        .owned(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    let mut claimed: Vec<Key> = claims.iter().map(|c| c.key.clone()).collect();
    owned.sort();
    claimed.sort();
    assert_eq!(
        owned, claimed,
        "exactly the committed claims are owned and reported"
    );

    // Nothing committed: an error.
    let b_c = coordinator(&emu, Duration::ZERO);
    let b = join(&b_c, "b").await;
    emu.control()
        .inject(FaultKind::Error500, 1, Target::PathPrefix("/v1/txn".into()));
    let err = b_c.claim(&b.id, 40).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // The rest is still claimable afterwards.
    let mut rest = Vec::new();
    let deadline = Instant::now() + WAIT;
    while rest.len() + claims.len() < keys.len() {
        assert!(
            Instant::now() < deadline,
            "only {} more claimed",
            rest.len()
        );
        rest.extend(b_c.claim(&b.id, 40).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rest.len() + claims.len(), keys.len());
}

/// A claim by a node whose session is gone is `LeaseExpired` (and `OwnershipLost` for
/// everything), recognised by the failed session check on the node record, not by text.
#[tokio::test]
async fn a_claim_after_the_session_ended_is_lease_expired() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let mut a = join(&c, "a").await;
    let k = key("orphan");
    c.trigger(&k).await.unwrap();
    assert!(emu.control().destroy_session(&session(&c, &a)));
    let err = c.claim(&a.id, 10).await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::LeaseExpired { node } if node == a.id),
        "{err}"
    );
    expect_event(&mut a, "OwnershipLost(all)", |e| {
        matches!(e, CoordinatorEvent::OwnershipLost { key: None })
    })
    .await;

    let mut b = join(&c, "b").await;
    assert!(emu.control().destroy_session(&session(&c, &b)));
    let err = c.claim_key(&b.id, &k).await.unwrap_err();
    assert!(
        matches!(err, CoordinatorError::LeaseExpired { node } if node == b.id),
        "{err}"
    );
    expect_event(&mut b, "OwnershipLost(all)", |e| {
        matches!(e, CoordinatorEvent::OwnershipLost { key: None })
    })
    .await;
}

/// A lease TTL Consul cannot have is a typed error before any request, not a 500 that reads
/// like an outage.
#[tokio::test]
async fn a_lease_ttl_consul_cannot_have_is_refused_before_any_request() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    for ttl in [
        Duration::MAX,
        Duration::from_secs(24 * 3600 + 1),
        Duration::ZERO,
    ] {
        let err = c
            .join(
                &NodeInfo {
                    id: NodeId::random(),
                    name: "n".into(),
                },
                ttl,
                EventSink::new(|_| {}),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CoordinatorError::Backend { .. }), "{err}");
        assert!(!err.is_transient());
    }
    assert_eq!(emu.control().request_total(), 0);
}

/// When a node's session ends, its keys are released under lock-delay and nobody writes a
/// marker for them: the node-record watch announces them (`KeysAvailable`) at once and again
/// once the lock-delay has passed, when a claim succeeds; the failover bound is 2 × TTL +
/// lock-delay + claim interval, not the claimers' periodic listing on top.
#[tokio::test]
async fn a_dead_nodes_keys_are_announced_again_after_lock_delay() {
    let emu = emulator().await;
    let lock_delay = Duration::from_millis(300);
    let a_c = coordinator(&emu, lock_delay);
    let b_c = coordinator(&emu, lock_delay);
    let a = join(&a_c, "a").await;
    let mut b = join(&b_c, "b").await;
    let k = key("orphaned");
    a_c.trigger(&k).await.unwrap();
    let first = a_c.claim_key(&a.id, &k).await.unwrap().unwrap();
    // b lists the candidates now (none free), so only an announcement makes it look again.
    assert!(b_c.claim(&b.id, 10).await.unwrap().is_empty());
    assert!(emu.control().wait_for_blocked_queries(4, WAIT).await);
    while b.events.try_recv().is_ok() {}
    let died = Instant::now();
    assert!(emu.control().expire_session(&session(&a_c, &a)));
    expect_event(&mut b, "KeysAvailable at the death", |e| {
        matches!(e, CoordinatorEvent::KeysAvailable)
    })
    .await;
    if died.elapsed() < lock_delay {
        assert!(
            b_c.claim(&b.id, 10).await.unwrap().is_empty(),
            "under lock-delay"
        );
    }
    expect_event(&mut b, "KeysAvailable after lock-delay", |e| {
        matches!(e, CoordinatorEvent::KeysAvailable)
    })
    .await;
    assert!(died.elapsed() >= lock_delay);
    let claims = b_c.claim(&b.id, 10).await.unwrap();
    assert_eq!(claims.len(), 1, "claimable once announced: {claims:?}");
    assert!(claims[0].epoch > first.epoch);
}

/// A trigger drops a sleeping key's wake-up but leaves its index entry: once that entry
/// falls due it must neither wake the key's later sleep early nor linger. The claim that
/// meets it sees the wake-up's `ModifyIndex` differ, takes nothing, and deletes the entry.
#[tokio::test]
async fn a_wake_up_dropped_by_a_trigger_wakes_nothing_and_is_cleaned_up() {
    let emu = emulator().await;
    let c = coordinator(&emu, Duration::ZERO);
    let a = join(&c, "a").await;
    let k = key("wake/stale");
    let sleep = |claim: keyloop_core::Claim, delay: Duration| {
        let c = &c;
        let id = a.id;
        async move {
            c.release(
                &id,
                &claim.key,
                claim.epoch,
                Release::Sleep {
                    observed_seq: claim.trigger_seq,
                    until: WakeTime::After(delay),
                },
            )
            .await
            .unwrap()
        }
    };
    let index = || async {
        c.client()
            .kv_keys("t/wake/", ReadOptions::default())
            .await
            .unwrap()
            .value
    };

    c.trigger(&k).await.unwrap();
    let first = c.claim_key(&a.id, &k).await.unwrap().unwrap();
    assert_eq!(
        sleep(first, Duration::from_millis(300)).await,
        Released::Released
    );
    assert_eq!(index().await.len(), 1);
    // The trigger wakes it at once; it sleeps again, for long.
    c.trigger(&k).await.unwrap();
    let second = c
        .claim_key(&a.id, &k)
        .await
        .unwrap()
        .expect("a trigger wakes it");
    assert_eq!(
        sleep(second, Duration::from_secs(60)).await,
        Released::Released
    );
    assert_eq!(index().await.len(), 2, "the first entry is stale, not gone");

    // The stale entry falls due (with a margin for the clock bounds' width).
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        c.next_wake().await.unwrap(),
        Some(Duration::ZERO),
        "the stale entry reads as due"
    );
    let claimed = c.claim(&a.id, 10).await.unwrap();
    assert!(
        claimed.is_empty(),
        "woken early by a dropped wake-up: {claimed:?}"
    );
    assert_eq!(c.claim_key(&a.id, &k).await.unwrap(), None);
    assert_eq!(index().await.len(), 1, "the claim deleted the stale entry");
    let next = c.next_wake().await.unwrap().expect("the live wake-up");
    assert!(next > Duration::from_secs(50), "{next:?}");
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert!(info.wake_at.is_some() && info.owner.is_none(), "{info:?}");
}
