//! Random concurrent operations from several nodes; afterwards every registered, unparked
//! key must be claimable by a fresh node (the claim hints lost nothing), and with an epoch
//! above every epoch handed out during the run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{
    Coordinator, CoordinatorError, EventSink, Key, NodeId, NodeInfo, Release, Released,
};
use keyloop_sled::SledStore;

const KEYS: u64 = 40;
const TASKS: u64 = 4;
const STEPS: u64 = 1_500;

/// xorshift64*: deterministic per task, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn join(c: &Arc<keyloop_sled::SledCoordinator>, name: &str) -> NodeId {
    let info = NodeInfo {
        id: NodeId::random(),
        name: name.into(),
    };
    c.join(&info, Duration::from_secs(600), EventSink::discard())
        .await
        .unwrap();
    info.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_keep_every_pending_key_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("db")).unwrap();
    let max_epoch: Arc<Mutex<HashMap<Key, u64>>> = Arc::default();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let c = store.coordinator();
            let max_epoch = Arc::clone(&max_epoch);
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut node = join(&c, &format!("n{t}")).await;
                let mut owned: Vec<keyloop_core::Claim> = Vec::new();
                for _ in 0..STEPS {
                    match rng.below(10) {
                        0..=3 => {
                            let key = Key::new(format!("k{}", rng.below(KEYS))).unwrap();
                            c.trigger(&key).await.unwrap();
                        }
                        4..=5 => {
                            let got = c.claim(&node, 1 + rng.below(3) as usize).await.unwrap();
                            let mut seen = max_epoch.lock().unwrap();
                            for claim in &got {
                                let e = seen.entry(claim.key.clone()).or_default();
                                assert!(claim.epoch.0 > *e, "epoch went back for {}", claim.key);
                                *e = claim.epoch.0;
                            }
                            owned.extend(got);
                        }
                        6..=8 if !owned.is_empty() => {
                            let claim = owned.swap_remove(rng.below(owned.len() as u64) as usize);
                            let how = match rng.below(3) {
                                0 => Release::Complete {
                                    observed_seq: claim.trigger_seq,
                                },
                                1 => Release::Continue {
                                    avoid_for: Duration::ZERO,
                                },
                                _ => Release::Park {
                                    error: "stress".into(),
                                    observed_seq: claim.trigger_seq,
                                },
                            };
                            match c.release(&node, &claim.key, claim.epoch, how).await {
                                Ok(Released::Retriggered { seq }) => {
                                    owned.push(keyloop_core::Claim {
                                        trigger_seq: seq,
                                        ..claim
                                    });
                                }
                                Ok(_) => {}
                                Err(e) => panic!("release of an owned key failed: {e}"),
                            }
                        }
                        9 => {
                            // Leave with keys still owned and come back as a new node.
                            c.leave(&node).await.unwrap();
                            for claim in owned.drain(..) {
                                let r = c
                                    .save_state(&node, &claim.key, claim.epoch, "x".into())
                                    .await;
                                assert!(matches!(r, Err(CoordinatorError::Fenced { .. })));
                            }
                            node = join(&c, &format!("n{t}")).await;
                        }
                        _ => {}
                    }
                }
                c.leave(&node).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let c = store.coordinator();
    let snapshot = c.inspect().await.unwrap();
    let pending: BTreeSet<Key> = snapshot
        .keys
        .iter()
        .filter(|k| k.parked.is_none())
        .map(|k| k.key.clone())
        .collect();
    assert!(
        snapshot.keys.iter().all(|k| k.owner.is_none()),
        "every node left"
    );
    let fresh = join(&c, "fresh").await;
    let claims = c.claim(&fresh, usize::MAX).await.unwrap();
    let claimed: BTreeSet<Key> = claims.iter().map(|c| c.key.clone()).collect();
    assert_eq!(claimed, pending, "the claim hints lost or invented keys");
    let seen = max_epoch.lock().unwrap();
    for claim in &claims {
        assert!(claim.epoch.0 > seen.get(&claim.key).copied().unwrap_or(0));
    }
    assert!(!seen.is_empty());
}
