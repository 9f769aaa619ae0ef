//! A heartbeat landing at the instant its lease expires must not succeed for a node whose
//! keys another node has just claimed: renewal and expiry are one atomic decision.
//!
//! Worst interleaving (before the fix): the heartbeat checks "alive" (just before expiry)
//! → the lease expires → another node's `claim_key` sees the owner expired and takes the
//! key → the heartbeat stores the new expiry and answers `Ok`. Both nodes then believe they
//! own the key.

use std::sync::Arc;
use std::time::Duration;

use keyloop_core::{EventSink, Key, NodeId, NodeInfo};
use keyloop_memory::MemoryCluster;

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId::random(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_at_expiry_never_renews_a_lease_whose_keys_were_taken() {
    let ttl = Duration::from_micros(300);
    let mut both = 0;
    let mut rounds_with_race = 0;
    for _ in 0..3000 {
        let cluster = MemoryCluster::new();
        let a_c = cluster.coordinator();
        let b_c = cluster.coordinator();
        let a = node("a");
        let b = node("b");
        let k = Key::new("k").unwrap();
        let joined = std::time::Instant::now();
        a_c.join(&a, ttl, EventSink::discard()).await.unwrap();
        b_c.join(&b, Duration::from_secs(60), EventSink::discard())
            .await
            .unwrap();
        a_c.trigger(&k).await.unwrap();
        if !matches!(a_c.claim_key(&a.id, &k).await, Ok(Some(_))) {
            // The machine was slower than the lease: no race this round.
            continue;
        }
        // Race a's renewal against b's takeover right at a's expiry.
        let deadline = joined + ttl;
        while std::time::Instant::now() + Duration::from_micros(20) < deadline {
            std::hint::spin_loop();
        }
        let renew = {
            let a_c = Arc::clone(&a_c);
            let id = a.id;
            tokio::spawn(async move {
                let sent = std::time::Instant::now();
                a_c.heartbeat(&id).await.is_ok().then_some(sent)
            })
        };
        let take = {
            let b_c = Arc::clone(&b_c);
            let (id, k) = (b.id, k.clone());
            tokio::spawn(async move {
                loop {
                    let claimed = b_c.claim_key(&id, &k).await.unwrap();
                    let answered = std::time::Instant::now();
                    match claimed {
                        Some(_) => return Some(answered),
                        None if answered > deadline + ttl * 4 => return None,
                        None => tokio::task::yield_now().await,
                    }
                }
            })
        };
        let (renewed, taken) = (renew.await.unwrap(), take.await.unwrap());
        if renewed.is_some() || taken.is_some() {
            rounds_with_race += 1;
        }
        // a believes its lease valid until `sent + ttl`; b's claim answered before then
        // took the key inside that window.
        if let (Some(sent), Some(answered)) = (renewed, taken) {
            if answered < sent + ttl {
                both += 1;
            }
        }
    }
    assert!(rounds_with_race > 0);
    assert_eq!(
        both, 0,
        "a heartbeat renewed a lease whose key another node had taken in {both} rounds"
    );
}
