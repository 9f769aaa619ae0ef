//! One node's watches: a blocking query on `P/pend/` that turns trigger markers of owned keys
//! into `Triggered` events (and consumes them), availability changes into `KeysAvailable`,
//! and any gap into `Resync`; and one on `P/nodes/` that turns a node's death (its record's
//! lock released by the session's invalidation) into `KeysAvailable`, at once and again once
//! the lock-delay on its keys has passed.
//!
//! Blocking-query rules from Consul's documentation: keep the index of every answer (404s
//! included); when it goes backwards (snapshot restore, tombstone reaping) or reads 0,
//! start over from 0, which answers at once instead of blocking; and never send requests
//! faster than `watch_min_interval`, whatever the index does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keyloop_core::{CoordinatorEvent, TriggerSeq};
use tokio::time::{Instant, sleep_until};

use crate::client::{ConsulClient, ReadOptions, TXN_MAX_OPS, TxnOp};
use crate::config::ConsulConfig;
use crate::coordinator::NodeState;
use crate::layout::Layout;

/// Longest pause after failed requests.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the next blocking query should use as its index, given the last one and the new
/// answer's, and whether the answer shows a gap (the index went backwards or read 0).
pub(crate) fn next_index(last: u64, reported: u64) -> (u64, bool) {
    if reported == 0 || reported < last {
        (0, true)
    } else {
        (reported, false)
    }
}

pub(crate) async fn run(
    client: ConsulClient,
    layout: Arc<Layout>,
    config: Arc<ConsulConfig>,
    node: Arc<NodeState>,
) {
    let prefix = layout.pend_prefix();
    let mut index = 0u64;
    let mut last_avail: Option<u64> = None;
    let mut last_wake: Option<u64> = None;
    let mut gap = false;
    let mut failures = 0u32;
    let mut not_before = Instant::now();
    loop {
        sleep_until(not_before).await;
        not_before = Instant::now() + config.watch_min_interval;
        let answer = client
            .kv_list(
                &prefix,
                ReadOptions {
                    consistent: false,
                    index,
                    wait: Some(config.watch_wait),
                },
            )
            .await;
        let listed = match answer {
            Ok(listed) => listed,
            Err(error) => {
                failures += 1;
                gap = true;
                let backoff = (config.watch_min_interval * 2u32.saturating_pow(failures.min(16)))
                    .min(MAX_BACKOFF);
                tracing::debug!(%error, ?backoff, node = %node.id, "watch request failed");
                not_before = Instant::now() + backoff;
                continue;
            }
        };
        failures = 0;
        let (next, reset) = next_index(index, listed.index);
        if reset {
            tracing::debug!(last = index, reported = listed.index, node = %node.id, "watch index reset");
            gap = true;
        }
        index = next;

        let mut events = Vec::new();
        let mut consume = Vec::new();
        {
            let mut local = node.local.lock().unwrap();
            local.pend.clear();
            for entry in listed.value {
                if layout.is_avail(&entry.key) {
                    if last_avail != Some(entry.modify_index) {
                        last_avail = Some(entry.modify_index);
                        local.stale = true;
                        events.push(CoordinatorEvent::KeysAvailable);
                    }
                    continue;
                }
                if layout.is_wake_marker(&entry.key) {
                    if last_wake != Some(entry.modify_index) {
                        last_wake = Some(entry.modify_index);
                        // A key went to sleep: re-read the wake-up index, and let the
                        // engine run a round, after which it asks for the next wake-up.
                        node.wake.lock().unwrap().stale = true;
                        events.push(CoordinatorEvent::KeysAvailable);
                    }
                    continue;
                }
                let Some(Ok(key)) = layout.parse_pend(&entry.key) else {
                    continue;
                };
                let seq = entry.modify_index;
                local.pend.insert(key.clone(), seq);
                if let Some(owned) = local.owned.get_mut(&key) {
                    if seq > owned.seen {
                        owned.seen = seq;
                        events.push(CoordinatorEvent::Triggered {
                            key: key.clone(),
                            seq: TriggerSeq(seq),
                        });
                    }
                    consume.push(TxnOp::DeleteCas {
                        key: entry.key,
                        index: seq,
                    });
                }
            }
        }
        if gap {
            events.push(CoordinatorEvent::Resync);
            gap = false;
        }
        for event in events {
            node.events.send(event);
        }
        // Markers are only hints; consuming them keeps every node's watch answer small.
        // A marker rewritten meanwhile fails its delete-cas, and the next answer shows it.
        for chunk in consume.chunks(TXN_MAX_OPS) {
            if let Err(error) = client.txn(chunk).await {
                tracing::debug!(%error, "consuming trigger markers failed");
            }
        }
    }
}

/// Watches the node records. A record whose lock is released (its session was invalidated:
/// TTL, operator, failed renewals) means that node's keys were released too, under
/// lock-delay; nothing else announces them (nobody writes `~avail` for a dead node), so
/// without this the claimers would find them only at their next periodic listing.
pub(crate) async fn run_nodes(
    client: ConsulClient,
    layout: Arc<Layout>,
    config: Arc<ConsulConfig>,
    node: Arc<NodeState>,
) {
    let prefix = layout.nodes_prefix();
    let mut index = 0u64;
    // Record key -> whether it was locked when last seen; `None` until the first answer,
    // whose dead records are old news (their keys were claimable long before).
    let mut seen: Option<HashMap<String, bool>> = None;
    let mut failures = 0u32;
    let mut not_before = Instant::now();
    loop {
        sleep_until(not_before).await;
        not_before = Instant::now() + config.watch_min_interval;
        let answer = client
            .kv_list(
                &prefix,
                ReadOptions {
                    consistent: false,
                    index,
                    wait: Some(config.watch_wait),
                },
            )
            .await;
        let listed = match answer {
            Ok(listed) => listed,
            Err(error) => {
                failures += 1;
                let backoff = (config.watch_min_interval * 2u32.saturating_pow(failures.min(16)))
                    .min(MAX_BACKOFF);
                tracing::debug!(%error, ?backoff, node = %node.id, "node watch request failed");
                not_before = Instant::now() + backoff;
                continue;
            }
        };
        failures = 0;
        index = next_index(index, listed.index).0;
        let now: HashMap<String, bool> = listed
            .value
            .into_iter()
            .map(|e| (e.key, e.session.is_some()))
            .collect();
        let died = seen.as_ref().is_some_and(|before| {
            now.iter()
                .any(|(k, locked)| !locked && before.get(k).copied() != Some(false))
        });
        seen = Some(now);
        if died {
            tracing::debug!(node = %node.id, "a node's session ended; its keys are claimable after lock-delay");
            announce(&node);
            // Its keys are under lock-delay: claims fail until it passes, so wake the
            // claimers again then (with a little room for the leader's clock).
            let node = node.clone();
            let delay = config.lock_delay + config.lock_delay / 10 + Duration::from_millis(20);
            if !config.lock_delay.is_zero() {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    announce(&node);
                });
            }
        }
    }
}

fn announce(node: &NodeState) {
    node.local.lock().unwrap().stale = true;
    node.events.send(CoordinatorEvent::KeysAvailable);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 5), (5, false));
        assert_eq!(
            next_index(5, 5),
            (5, false),
            "a return is no guarantee of change"
        );
        assert_eq!(next_index(5, 9), (9, false));
        assert_eq!(
            next_index(9, 4),
            (0, true),
            "backwards: start over without blocking"
        );
        assert_eq!(next_index(9, 0), (0, true), "zero: never block on it");
        assert_eq!(next_index(0, 0), (0, true));
    }
}
