//! The coordinator's operations on a real sled directory, under tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use keyloop_core::{
    Bytes, Coordinator, CoordinatorError, CoordinatorEvent, Epoch, Key, Release, Released,
    TriggerSeq,
};
use keyloop_sled::{SledConfig, SledStore};

/// A node joined by hand, recording its events.
struct DirectNode {
    id: keyloop_core::NodeId,
    coordinator: Arc<dyn Coordinator>,
    events: Arc<std::sync::Mutex<Vec<CoordinatorEvent>>>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for DirectNode {
    fn drop(&mut self) {
        if let Some(task) = self.keepalive.take() {
            task.abort();
        }
    }
}

impl DirectNode {
    async fn join(coordinator: Arc<dyn Coordinator>, name: &str, ttl: Duration) -> DirectNode {
        let info = keyloop_core::NodeInfo {
            id: keyloop_core::NodeId::random(),
            name: name.into(),
        };
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = {
            let events = Arc::clone(&events);
            keyloop_core::EventSink::new(move |e| events.lock().unwrap().push(e))
        };
        coordinator.join(&info, ttl, sink).await.unwrap();
        DirectNode {
            id: info.id,
            coordinator,
            events,
            keepalive: None,
        }
    }

    fn id(&self) -> keyloop_core::NodeId {
        self.id
    }

    fn events(&self) -> Vec<CoordinatorEvent> {
        self.events.lock().unwrap().clone()
    }

    fn keep_alive(&mut self, every: Duration) {
        let (c, id) = (Arc::clone(&self.coordinator), self.id);
        self.keepalive = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                c.heartbeat(&id).await.unwrap();
            }
        }));
    }
}

const TTL: Duration = Duration::from_secs(2);

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("db")).unwrap();
    (dir, store)
}

async fn node(store: &SledStore, name: &str) -> DirectNode {
    DirectNode::join(store.coordinator(), name, TTL).await
}

fn fenced(result: Result<impl std::fmt::Debug, CoordinatorError>) -> bool {
    matches!(result, Err(CoordinatorError::Fenced { .. }))
}

#[tokio::test(start_paused = true)]
async fn trigger_registers_and_bumps_sequence() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let a = node(&store, "a").await;
    let first = c.trigger(&key("vm/1")).await.unwrap();
    assert!(first.registered);
    assert_eq!(first.owner, None);
    let second = c.trigger(&key("vm/1")).await.unwrap();
    assert!(!second.registered);
    assert!(second.seq > first.seq);
    let info = c.key_info(&key("vm/1")).await.unwrap().unwrap();
    assert_eq!(info.trigger_seq, second.seq);
    assert_eq!((info.owner, info.epoch, info.parked), (None, None, None));
    assert_eq!(
        a.events(),
        vec![
            CoordinatorEvent::KeysAvailable,
            CoordinatorEvent::KeysAvailable
        ]
    );
    assert_eq!(c.key_info(&key("vm/2")).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn trigger_of_owned_key_notifies_only_its_owner() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    c.trigger(&key("k")).await.unwrap();
    let claim = c.claim(&a.id(), 10).await.unwrap().pop().unwrap();
    let before = b.events().len();
    let outcome = c.trigger(&key("k")).await.unwrap();
    assert_eq!(outcome.owner, Some(a.id()));
    assert!(outcome.seq > claim.trigger_seq);
    assert!(a.events().contains(&CoordinatorEvent::Triggered {
        key: key("k"),
        seq: outcome.seq
    }));
    assert_eq!(b.events().len(), before, "b got {:?}", b.events());
}

#[tokio::test(start_paused = true)]
async fn claims_are_bounded_and_skip_live_owners() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    for i in 0..5 {
        c.trigger(&key(&format!("k{i}"))).await.unwrap();
    }
    assert!(c.claim(&a.id(), 0).await.unwrap().is_empty());
    let first = c.claim(&a.id(), 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let second = c.claim(&b.id(), 10).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(c.claim(&a.id(), 10).await.unwrap().is_empty());
    let mut keys: Vec<_> = first.iter().chain(&second).map(|c| c.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5);
    let owned_by_a: Vec<_> = c.owned(&a.id()).await.unwrap();
    assert_eq!(owned_by_a, first);
}

#[tokio::test(start_paused = true)]
async fn epochs_strictly_increase_across_release_retire_and_owners() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    let k = key("k");
    let mut last = Epoch(0);
    let mut last_seq = TriggerSeq(0);
    for round in 0..4 {
        let seq = c.trigger(&k).await.unwrap().seq;
        assert!(seq > last_seq);
        last_seq = seq;
        let who = if round % 2 == 0 { &a } else { &b };
        let claim = c.claim_key(&who.id(), &k).await.unwrap().unwrap();
        assert!(
            claim.epoch > last,
            "round {round}: {:?} <= {last:?}",
            claim.epoch
        );
        last = claim.epoch;
        let done = c
            .release(
                &who.id(),
                &k,
                claim.epoch,
                Release::Complete {
                    observed_seq: claim.trigger_seq,
                },
            )
            .await
            .unwrap();
        assert_eq!(done, Released::Retired);
        assert_eq!(c.key_info(&k).await.unwrap(), None);
    }
}

#[tokio::test(start_paused = true)]
async fn complete_with_newer_trigger_keeps_ownership() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let a = node(&store, "a").await;
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    let newer = c.trigger(&k).await.unwrap().seq;
    let outcome = c
        .release(
            &a.id(),
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, Released::Retriggered { seq: newer });
    // Still owned at the same epoch: a fenced save works.
    c.save_state(&a.id(), &k, claim.epoch, Bytes::from_static(b"s"))
        .await
        .unwrap();
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!((info.owner, info.epoch), (Some(a.id()), Some(claim.epoch)));
    let done = c
        .release(
            &a.id(),
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: newer,
            },
        )
        .await
        .unwrap();
    assert_eq!(done, Released::Retired);
    assert_eq!(
        c.load_state(&k).await.unwrap(),
        None,
        "retiring drops state"
    );
}

#[tokio::test(start_paused = true)]
async fn continue_avoids_the_releasing_node_for_a_while() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (mut a, mut b) = (node(&store, "a").await, node(&store, "b").await);
    a.keep_alive(TTL / 4);
    b.keep_alive(TTL / 4);
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    let avoid_for = Duration::from_millis(500);
    let released = c
        .release(&a.id(), &k, claim.epoch, Release::Continue { avoid_for })
        .await
        .unwrap();
    assert_eq!(released, Released::Released);
    assert!(b.events().contains(&CoordinatorEvent::KeysAvailable));
    assert!(c.claim(&a.id(), 10).await.unwrap().is_empty());
    assert_eq!(c.claim_key(&a.id(), &k).await.unwrap(), None);
    tokio::time::sleep(avoid_for).await;
    let again = c.claim(&a.id(), 10).await.unwrap().pop().unwrap();
    assert!(again.epoch > claim.epoch);
    assert!(fenced(
        c.save_state(&a.id(), &k, claim.epoch, Bytes::new()).await
    ));
}

#[tokio::test(start_paused = true)]
async fn continue_lets_another_node_claim_at_once() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    c.release(
        &a.id(),
        &k,
        claim.epoch,
        Release::Continue {
            avoid_for: Duration::from_secs(60),
        },
    )
    .await
    .unwrap();
    let taken = c.claim(&b.id(), 10).await.unwrap().pop().unwrap();
    assert!(taken.epoch > claim.epoch);
    assert_eq!(taken.trigger_seq, claim.trigger_seq);
}

#[tokio::test(start_paused = true)]
async fn parked_key_waits_for_a_trigger() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let a = node(&store, "a").await;
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    c.release(
        &a.id(),
        &k,
        claim.epoch,
        Release::Park {
            error: "boom".into(),
            observed_seq: claim.trigger_seq,
        },
    )
    .await
    .unwrap();
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!((info.owner, info.parked.as_deref()), (None, Some("boom")));
    assert!(c.claim(&a.id(), 10).await.unwrap().is_empty());
    assert_eq!(c.claim_key(&a.id(), &k).await.unwrap(), None);
    c.trigger(&k).await.unwrap();
    assert_eq!(c.key_info(&k).await.unwrap().unwrap().parked, None);
    let again = c.claim(&a.id(), 10).await.unwrap().pop().unwrap();
    assert!(again.epoch > claim.epoch);
}

#[tokio::test(start_paused = true)]
async fn expired_node_is_fenced_and_its_keys_fail_over() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, mut b) = (node(&store, "a").await, node(&store, "b").await);
    b.keep_alive(TTL / 4);
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    tokio::time::sleep(TTL - Duration::from_millis(1)).await;
    assert!(c.claim(&b.id(), 10).await.unwrap().is_empty(), "before TTL");
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Expired but not taken over: writes are already fenced.
    assert!(fenced(
        c.save_state(&a.id(), &k, claim.epoch, Bytes::new()).await
    ));
    assert_eq!(c.key_info(&k).await.unwrap().unwrap().owner, None);
    let taken = c.claim(&b.id(), 10).await.unwrap().pop().unwrap();
    assert!(taken.epoch > claim.epoch);
    assert!(fenced(
        c.release(
            &a.id(),
            &k,
            claim.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO
            }
        )
        .await
    ));
    assert!(matches!(
        c.heartbeat(&a.id()).await,
        Err(CoordinatorError::LeaseExpired { .. })
    ));
    assert!(matches!(
        c.claim(&a.id(), 1).await,
        Err(CoordinatorError::LeaseExpired { .. })
    ));
    assert!(matches!(
        c.owned(&a.id()).await,
        Err(CoordinatorError::LeaseExpired { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn stale_epoch_and_foreign_node_are_fenced() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    let stale = Epoch(claim.epoch.0 - 1);
    assert!(fenced(c.save_state(&a.id(), &k, stale, Bytes::new()).await));
    assert!(fenced(
        c.save_state(&b.id(), &k, claim.epoch, Bytes::new()).await
    ));
    assert!(fenced(
        c.release(
            &b.id(),
            &k,
            claim.epoch,
            Release::Complete {
                observed_seq: claim.trigger_seq
            }
        )
        .await
    ));
    assert!(fenced(
        c.save_state(&a.id(), &key("unregistered"), claim.epoch, Bytes::new())
            .await
    ));
}

#[tokio::test(start_paused = true)]
async fn oversized_state_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::builder()
        .path(dir.path())
        .max_state_bytes(8)
        .build()
        .unwrap();
    let store = SledStore::open_with(config).unwrap();
    let c = store.coordinator();
    assert_eq!(c.limits().max_state_bytes, 8);
    let a = node(&store, "a").await;
    let k = key("k");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
    c.save_state(&a.id(), &k, claim.epoch, Bytes::from_static(b"12345678"))
        .await
        .unwrap();
    let err = c
        .save_state(&a.id(), &k, claim.epoch, Bytes::from_static(b"123456789"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::StateTooLarge {
                size: 9,
                max: 8,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        c.load_state(&k).await.unwrap(),
        Some(Bytes::from_static(b"12345678"))
    );
}

#[tokio::test(start_paused = true)]
async fn leave_releases_keys_at_once_and_is_idempotent() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    for i in 0..3 {
        c.trigger(&key(&format!("k{i}"))).await.unwrap();
    }
    let claims = c.claim(&a.id(), 10).await.unwrap();
    assert_eq!(claims.len(), 3);
    c.leave(&a.id()).await.unwrap();
    c.leave(&a.id()).await.unwrap();
    assert!(b.events().contains(&CoordinatorEvent::KeysAvailable));
    let taken = c.claim(&b.id(), 10).await.unwrap();
    assert_eq!(taken.len(), 3);
    for claim in &claims {
        assert!(fenced(
            c.save_state(&a.id(), &claim.key, claim.epoch, Bytes::new())
                .await
        ));
    }
    assert!(matches!(
        c.heartbeat(&a.id()).await,
        Err(CoordinatorError::LeaseExpired { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn claim_key_is_idempotent_for_the_owner() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let (a, b) = (node(&store, "a").await, node(&store, "b").await);
    let k = key("k");
    assert_eq!(
        c.claim_key(&a.id(), &k).await.unwrap(),
        None,
        "unregistered"
    );
    c.trigger(&k).await.unwrap();
    let first = c.claim_key(&a.id(), &k).await.unwrap().unwrap();
    assert_eq!(c.claim_key(&a.id(), &k).await.unwrap(), Some(first.clone()));
    assert_eq!(c.claim_key(&b.id(), &k).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn inspect_lists_nodes_and_sorted_keys() {
    let (_dir, store) = store();
    let c = store.coordinator();
    let a = node(&store, "a").await;
    for name in ["b", "a/2", "a/1", "ü"] {
        c.trigger(&key(name)).await.unwrap();
    }
    c.claim_key(&a.id(), &key("b")).await.unwrap().unwrap();
    let snap = c.inspect().await.unwrap();
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(
        (snap.nodes[0].name.as_str(), snap.nodes[0].alive),
        ("a", true)
    );
    let names: Vec<_> = snap.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(names, vec!["a/1", "a/2", "b", "ü"]);
    assert_eq!(snap.keys[2].owner, Some(a.id()));
}

#[tokio::test(start_paused = true)]
async fn reopen_keeps_registry_and_state_and_moves_epochs_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let k = key("k");
    let (epoch, seq) = {
        let store = SledStore::open(&path).unwrap();
        assert!(!store.was_recovered());
        let c = store.coordinator();
        let a = node(&store, "a").await;
        c.trigger(&k).await.unwrap();
        let claim = c.claim(&a.id(), 1).await.unwrap().pop().unwrap();
        c.save_state(&a.id(), &k, claim.epoch, Bytes::from_static(b"kept"))
            .await
            .unwrap();
        let seq = c.trigger(&k).await.unwrap().seq;
        (claim.epoch, seq)
    };
    let store = SledStore::open(&path).unwrap();
    assert!(store.was_recovered());
    let c = store.coordinator();
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!(info.trigger_seq, seq);
    assert_eq!(info.owner, None, "leases do not survive a restart");
    assert_eq!(
        c.load_state(&k).await.unwrap(),
        Some(Bytes::from_static(b"kept"))
    );
    let b = node(&store, "b").await;
    let claim = c.claim(&b.id(), 10).await.unwrap().pop().unwrap();
    assert!(claim.epoch > epoch);
    assert_eq!(claim.trigger_seq, seq);
    assert!(c.trigger(&k).await.unwrap().seq > seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_get_disjoint_keys() {
    let (_dir, store) = store();
    let c = store.coordinator();
    for i in 0..200 {
        c.trigger(&key(&format!("k{i:03}"))).await.unwrap();
    }
    let mut nodes = Vec::new();
    for i in 0..4 {
        let n = DirectNode::join(
            store.coordinator(),
            &format!("n{i}"),
            Duration::from_secs(60),
        )
        .await;
        nodes.push(n.id());
    }
    let tasks: Vec<_> = nodes
        .iter()
        .map(|id| {
            let c = Arc::clone(&c);
            let id = *id;
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = c.claim(&id, 7).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|c| c.key));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, 200, "every key claimed once");
    assert_eq!(all.len(), 200, "no key claimed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claim_key_leaves_one_owner() {
    let (_dir, store) = store();
    let c = store.coordinator();
    for round in 0..20 {
        let k = key(&format!("race/{round}"));
        c.trigger(&k).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                DirectNode::join(
                    store.coordinator(),
                    &format!("n{i}"),
                    Duration::from_secs(60),
                )
                .await,
            );
        }
        let tasks: Vec<_> = ids
            .iter()
            .map(|n| {
                let (c, k, id) = (Arc::clone(&c), k.clone(), n.id());
                tokio::spawn(async move { c.claim_key(&id, &k).await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap().is_some());
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

/// A sink that calls back into the coordinator (on another thread, as a blocking
/// receiver could) would deadlock if events were sent while a lock is held.
#[test]
fn events_are_sent_without_holding_locks() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (_dir, store) = store();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = store.coordinator();
            let reentrant = {
                let c = Arc::clone(&c);
                keyloop_core::EventSink::new(move |_event| {
                    let c = Arc::clone(&c);
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let inner = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .unwrap();
                            inner.block_on(async {
                                c.inspect().await.unwrap();
                                c.key_info(&key("k")).await.unwrap();
                            });
                        })
                        .join()
                        .unwrap();
                    });
                })
            };
            let info = keyloop_core::NodeInfo {
                id: keyloop_core::NodeId::random(),
                name: "a".into(),
            };
            c.join(&info, Duration::from_secs(60), reentrant)
                .await
                .unwrap();
            c.trigger(&key("k")).await.unwrap(); // KeysAvailable
            let claim = c.claim(&info.id, 1).await.unwrap().pop().unwrap();
            c.trigger(&key("k")).await.unwrap(); // Triggered
            c.release(
                &info.id,
                &key("k"),
                claim.epoch,
                Release::Continue {
                    avoid_for: Duration::ZERO,
                },
            )
            .await
            .unwrap(); // KeysAvailable
            c.leave(&info.id).await.unwrap();
        });
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("an event sent under a lock deadlocked the coordinator");
    worker.join().unwrap();
}

/// An error part-way through a claim batch returns the claims already taken: before, one
/// bad record after a good one dropped the committed claim, and the key stayed owned by a
/// live node that ran nothing.
#[tokio::test(start_paused = true)]
async fn claims_taken_before_a_failure_are_returned() {
    let (_dir, store) = store();
    let a = node(&store, "a").await;
    for k in ["batch/1", "batch/2"] {
        a.coordinator.trigger(&key(k)).await.unwrap();
    }
    store.damage_record_for_tests("batch/2", b"\x07garbage");
    let claims = a
        .coordinator
        .claim(&a.id(), 10)
        .await
        .expect("the claims taken");
    assert_eq!(
        claims.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["batch/1"]
    );
    let info = a
        .coordinator
        .key_info(&key("batch/1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.owner, Some(a.id()));
}
