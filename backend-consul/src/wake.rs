//! Durable wake-ups: sleeping keys, the wake-up index `P/wake/`, and when they fall due by
//! the Consul agent's clock (see [`crate::clock`]).
//!
//! A sleeping key has `P/k/<e>/wake` (its due time) and an index entry
//! `P/wake/<bucket>/<due>.<e>`, written in one transaction and so sharing one `ModifyIndex`.
//! Claiming a due key checks that index on `P/k/<e>/wake` (`check-index`): the index entry
//! is then that key's current wake-up, not one a trigger dropped. Finding due keys reads
//! the bucket names (`?keys&separator=/`, one name per minute holding wake-ups) and the
//! entries of the buckets that are due, never the registry.

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keyloop_core::{CoordinatorError, Key};
use tokio::time::Instant;

use crate::client::{ConsulClient, KvEntry, ReadOptions};
use crate::clock::ClockBounds;
use crate::layout::Layout;

/// A due entry of the wake-up index, as read.
#[derive(Debug, Clone)]
pub(crate) struct DueKey {
    pub(crate) key: Key,
    /// The index entry's KV key.
    pub(crate) entry: String,
    /// The index entry's `ModifyIndex`: `P/k/<e>/wake` has the same while this is the key's
    /// current wake-up.
    pub(crate) index: u64,
}

/// What a coordinator last read of the wake-up index.
#[derive(Debug, Default)]
pub(crate) struct WakeCache {
    read_at: Option<Instant>,
    /// The earliest due time in the index (stale entries included), Unix microseconds.
    earliest: Option<u64>,
    /// Set by a node's watch when keys became available (every `Sleep` says so).
    pub(crate) stale: bool,
    /// Wake-ups this coordinator stored, with the local instant each `After` delay ends
    /// when counted from the release: `next_wake` reports that for them rather than the
    /// agent-clock estimate, which includes the width of the clock bounds on top.
    own: Vec<(u64, Instant)>,
}

/// Most wake-ups remembered in [`WakeCache::own`].
const OWN_MAX: usize = 1024;

impl WakeCache {
    /// The earliest wake-up, if what was read is recent enough to trust (`max_age`) and no
    /// node announced a change since; `None` means "read the index".
    pub(crate) fn fresh(&self, max_age: Duration) -> Option<Option<u64>> {
        let read_at = self.read_at?;
        (!self.stale && read_at.elapsed() < max_age).then_some(self.earliest)
    }

    pub(crate) fn set(&mut self, read_at: Instant, earliest: Option<u64>) {
        self.read_at = Some(read_at);
        self.earliest = earliest;
        self.stale = false;
        // Wake-ups before the earliest one are no longer in the index.
        self.own
            .retain(|(due, _)| earliest.is_some_and(|e| *due >= e));
    }

    /// This coordinator put a key to sleep until `due_us`; by the local clock its delay
    /// ends at `local` (for `WakeTime::At`, none).
    pub(crate) fn slept(&mut self, due_us: u64, local: Option<Instant>) {
        if self.read_at.is_some() {
            self.earliest = Some(self.earliest.map_or(due_us, |e| e.min(due_us)));
        }
        if let Some(local) = local {
            let now = Instant::now();
            self.own.retain(|(_, at)| *at > now);
            if self.own.len() >= OWN_MAX {
                self.own.remove(0);
            }
            self.own.push((due_us, local));
        }
    }

    /// How long until the local end of the delay of wake-up `due_us`, if this coordinator
    /// stored it and that end is still ahead.
    pub(crate) fn own_left(&self, due_us: u64) -> Option<Duration> {
        let now = Instant::now();
        self.own
            .iter()
            .filter(|(due, at)| *due == due_us && *at > now)
            .map(|(_, at)| *at - now)
            .min()
    }
}

/// The agent's clock now: from the `Date` headers of its answers, or — before any answer
/// carried one, which a real Consul never does — this host's wall clock, with a warning.
pub(crate) fn agent_clock(client: &ConsulClient) -> ClockBounds {
    client.clock().bounds().unwrap_or_else(|| {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "consul answered without a Date header: wake-ups fall back to this host's clock"
            );
        });
        let now = SystemTime::now();
        ClockBounds {
            lower: now,
            upper: now,
        }
    })
}

/// Unix microseconds, rounded down.
pub(crate) fn floor_us(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Unix microseconds, rounded up.
pub(crate) fn ceil_us(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if d.subsec_nanos() % 1_000 == 0 {
        us
    } else {
        us.saturating_add(1)
    }
}

pub(crate) fn from_us(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// The value of `P/k/<e>/wake`: the due time and a nonce (every write must change the value,
/// or Consul skips it and the shared `ModifyIndex` would not be shared).
pub(crate) fn wake_value(due_us: u64) -> Bytes {
    Bytes::from(format!("{due_us} {:016x}", rand::random::<u64>()))
}

/// The due time stored in a `P/k/<e>/wake` entry.
pub(crate) fn due_of(entry: &KvEntry) -> Option<u64> {
    std::str::from_utf8(&entry.value)
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Reads the wake-up index in due order: up to `max` entries due by `now_us`, and the due
/// time of the first entry after them (`None` if there is none). Lists the bucket names,
/// then the entries of each bucket until one entry is not taken: the due buckets and one
/// more. Consistent reads: what is read decides what to claim.
pub(crate) async fn read_index(
    client: &ConsulClient,
    layout: &Layout,
    now_us: u64,
    max: usize,
) -> Result<(Vec<DueKey>, Option<u64>), CoordinatorError> {
    let consistent = ReadOptions {
        consistent: true,
        ..ReadOptions::default()
    };
    let names = client
        .kv_keys_up_to(&layout.wake_prefix(), Some("/"), consistent)
        .await?;
    let mut buckets: Vec<(u64, String)> = names
        .value
        .into_iter()
        .filter_map(|name| Some((layout.parse_wake_bucket(&name)?, name)))
        .collect();
    buckets.sort();
    let mut due = Vec::new();
    for (_, bucket) in buckets {
        let listed = client.kv_list(&bucket, consistent).await?;
        let mut entries: Vec<(u64, Key, KvEntry)> = Vec::new();
        for e in listed.value {
            match layout.parse_wake_entry(&e.key) {
                Some(Ok(w)) => entries.push((w.due_us, w.key, e)),
                Some(Err(error)) => return Err(CoordinatorError::InvalidStoredKey(error)),
                None => {}
            }
        }
        entries.sort_by_key(|(due_us, _, _)| *due_us);
        for (due_us, key, e) in entries {
            if due_us > now_us || due.len() >= max {
                return Ok((due, Some(due_us)));
            }
            due.push(DueKey {
                key,
                entry: e.key,
                index: e.modify_index,
            });
        }
    }
    Ok((due, None))
}
