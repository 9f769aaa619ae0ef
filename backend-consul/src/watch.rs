//! One node's watch: a blocking query on `P/pend/` that turns trigger markers of owned keys
//! into `Triggered` events (and consumes them), availability changes into `KeysAvailable`,
//! and any gap into `Resync`.
//!
//! Blocking-query rules from Consul's documentation: keep the index of every answer (404s
//! included); when it goes backwards (snapshot restore, tombstone reaping) or reads 0,
//! start over from 0, which answers at once instead of blocking; and never send requests
//! faster than `watch_min_interval`, whatever the index does.

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
