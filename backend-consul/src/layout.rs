//! Where everything lives in Consul's KV store, under the configured prefix `P`:
//!
//! | KV key | what |
//! |---|---|
//! | `P/k/<e>/reg` | the key is registered; its `ModifyIndex` is the trigger sequence (each trigger rewrites it with a fresh value) |
//! | `P/k/<e>/own` | the ownership lock, acquired with the owner node's session; value = owner node id; its `ModifyIndex` right after the acquisition is the epoch |
//! | `P/k/<e>/park` | the key is parked; value = the last error |
//! | `P/k/<e>/wake` | the key sleeps ([`Release::Sleep`](keyloop_core::Release)); value = `<due> <nonce>`, `<due>` in Unix microseconds of the Consul agent's clock; written in the same transaction as its index entry, so both share one `ModifyIndex` |
//! | `P/wake/<b>/<due>.<e>` | the wake-up index: `<due>` zero-padded to 19 digits, `<b>` = `<due>` / 60 000 000 (one bucket per minute) zero-padded to 12, so names sort by due time; value = a fresh nonce. A trigger drops only `P/k/<e>/wake`, leaving its index entry stale: a claim that meets it finds the `ModifyIndex` mismatch and deletes it (`delete-cas`) |
//! | `P/state/<e>` | the key's state, raw bytes |
//! | `P/pend/<e>` | notification marker written with every trigger, consumed with `delete-cas` by the owner's watch (or by a claim) |
//! | `P/pend/~avail` | rewritten (with a fresh value) whenever keys become claimable; every node's watch sees it |
//! | `P/pend/~wake` | rewritten (with a fresh value) whenever a key goes to sleep: every node's watch marks its wake-up cache stale and its engine asks for the next wake-up |
//! | `P/nodes/<node id>` | one per node, locked by its session (so `Session` shows it alive, and its release announces the node's death to the other nodes' record watch); value = JSON with its name |
//!
//! `<e>` is the key escaped into one path segment: bytes outside `[A-Za-z0-9_.-]` (and a
//! leading `.`) become `%XX`, so keys with `/`, spaces, `?`, `%` or any unicode map to a
//! single flat segment and `.`/`..` segments never occur. Global indexes (`ModifyIndex`)
//! only grow, so sequences and epochs never go backwards, even after a key is retired
//! and its entries deleted.

use keyloop_core::{InvalidKey, Key, NodeId};

const AVAIL: &str = "~avail";
const WAKE_MARKER: &str = "~wake";
/// Width of one bucket of the wake-up index, in microseconds (a minute).
pub(crate) const WAKE_BUCKET_US: u64 = 60_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

/// What one entry under `P/k/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Reg,
    Own,
    Park,
    Wake,
}

/// One entry of the wake-up index `P/wake/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WakeEntry {
    pub(crate) key: Key,
    /// When it falls due, Unix microseconds of the agent's clock.
    pub(crate) due_us: u64,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn keys_prefix(&self) -> String {
        format!("{}/k/", self.prefix)
    }

    pub(crate) fn reg(&self, key: &Key) -> String {
        format!("{}/k/{}/reg", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn own(&self, key: &Key) -> String {
        format!("{}/k/{}/own", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn park(&self, key: &Key) -> String {
        format!("{}/k/{}/park", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn wake(&self, key: &Key) -> String {
        format!("{}/k/{}/wake", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn wake_prefix(&self) -> String {
        format!("{}/wake/", self.prefix)
    }

    /// The wake-up index entry of `key` falling due at `due_us`.
    pub(crate) fn wake_entry(&self, key: &Key, due_us: u64) -> String {
        format!(
            "{}{:012}/{due_us:019}.{}",
            self.wake_prefix(),
            due_us / WAKE_BUCKET_US,
            escape(key.as_str())
        )
    }

    /// The first due time a bucket name (`P/wake/<b>/`, as `?keys&separator=/` lists it)
    /// can hold; `None` for anything else.
    pub(crate) fn parse_wake_bucket(&self, name: &str) -> Option<u64> {
        let b = name.strip_prefix(&self.wake_prefix())?.strip_suffix('/')?;
        let b: u64 = b.parse().ok()?;
        b.checked_mul(WAKE_BUCKET_US)
    }

    /// Splits `P/wake/<b>/<due>.<e>`; `None` for anything else.
    pub(crate) fn parse_wake_entry(&self, kv_key: &str) -> Option<Result<WakeEntry, InvalidKey>> {
        let rest = kv_key.strip_prefix(&self.wake_prefix())?;
        let (_, name) = rest.split_once('/')?;
        let (due, escaped) = name.split_once('.')?;
        let due_us = due.parse().ok()?;
        Some(unescape(escaped).map(|key| WakeEntry { key, due_us }))
    }

    pub(crate) fn state(&self, key: &Key) -> String {
        format!("{}/state/{}", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn pend(&self, key: &Key) -> String {
        format!("{}/pend/{}", self.prefix, escape(key.as_str()))
    }

    pub(crate) fn pend_prefix(&self) -> String {
        format!("{}/pend/", self.prefix)
    }

    pub(crate) fn avail(&self) -> String {
        format!("{}/pend/{AVAIL}", self.prefix)
    }

    pub(crate) fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub(crate) fn node(&self, id: &NodeId) -> String {
        format!("{}/nodes/{id}", self.prefix)
    }

    /// Splits `P/k/<e>/<part>` into the key and the part; `None` for anything else.
    pub(crate) fn parse_key_entry(&self, kv_key: &str) -> Option<Result<(Key, Part), InvalidKey>> {
        let rest = kv_key.strip_prefix(&self.keys_prefix())?;
        let (escaped, part) = rest.split_once('/')?;
        let part = match part {
            "reg" => Part::Reg,
            "own" => Part::Own,
            "park" => Part::Park,
            "wake" => Part::Wake,
            _ => return None,
        };
        Some(unescape(escaped).map(|k| (k, part)))
    }

    /// What a `P/pend/` entry is: `Some(Ok(key))` for a trigger marker, `None` for the
    /// availability marker or anything else.
    pub(crate) fn parse_pend(&self, kv_key: &str) -> Option<Result<Key, InvalidKey>> {
        let rest = kv_key.strip_prefix(&self.pend_prefix())?;
        if rest == AVAIL || rest == WAKE_MARKER || rest.is_empty() {
            return None;
        }
        Some(unescape(rest))
    }

    pub(crate) fn is_avail(&self, kv_key: &str) -> bool {
        kv_key == self.avail()
    }

    pub(crate) fn wake_marker(&self) -> String {
        format!("{}/pend/{WAKE_MARKER}", self.prefix)
    }

    pub(crate) fn is_wake_marker(&self, kv_key: &str) -> bool {
        kv_key == self.wake_marker()
    }
}

fn keep(b: u8, first: bool) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !first)
}

/// Escapes a key into one KV path segment.
pub(crate) fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        if keep(b, i == 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape`], validating the key.
pub(crate) fn unescape(segment: &str) -> Result<Key, InvalidKey> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| InvalidKey::NotUtf8)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| InvalidKey::NotUtf8)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Key::from_utf8(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_roundtrips_and_gives_one_safe_segment() {
        for k in [
            "vm/1234",
            "a b?c%d#e",
            "ключ/🚀",
            ".",
            "..",
            ".hidden",
            "x.y",
            "~avail",
            "a/../b",
            "%41",
        ] {
            let e = escape(k);
            assert!(!e.contains('/'), "{e}");
            assert!(!e.starts_with('.'), "{e}");
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"%_-.".contains(&b)),
                "{e}"
            );
            assert_eq!(unescape(&e).unwrap().as_str(), k);
        }
        assert_eq!(escape("vm.example-1_x"), "vm.example-1_x");
        assert_eq!(escape("~avail"), "%7Eavail");
    }

    #[test]
    fn parses_its_own_paths() {
        let l = Layout::new("app/keyloop");
        let k = Key::new("vm/1 ?").unwrap();
        assert_eq!(
            l.parse_key_entry(&l.reg(&k)).unwrap().unwrap(),
            (k.clone(), Part::Reg)
        );
        assert_eq!(
            l.parse_key_entry(&l.own(&k)).unwrap().unwrap(),
            (k.clone(), Part::Own)
        );
        assert_eq!(
            l.parse_key_entry(&l.park(&k)).unwrap().unwrap(),
            (k.clone(), Part::Park)
        );
        assert_eq!(
            l.parse_key_entry(&l.wake(&k)).unwrap().unwrap(),
            (k.clone(), Part::Wake)
        );
        assert!(l.parse_key_entry(&l.state(&k)).is_none());
        let dotted = Key::new("a.b/c").unwrap();
        let entry = l.wake_entry(&dotted, 1_700_000_123_456_789);
        assert_eq!(
            entry,
            "app/keyloop/wake/000028333335/0001700000123456789.a.b%2Fc"
        );
        assert_eq!(
            l.parse_wake_entry(&entry).unwrap().unwrap(),
            WakeEntry {
                key: dotted,
                due_us: 1_700_000_123_456_789
            }
        );
        assert_eq!(
            l.parse_wake_bucket("app/keyloop/wake/000028333335/"),
            Some(28_333_335 * WAKE_BUCKET_US)
        );
        // Names sort by due time.
        assert!(l.wake_entry(&k, 999_999_999) < l.wake_entry(&k, 1_000_000_000));
        assert_eq!(l.parse_pend(&l.pend(&k)).unwrap().unwrap(), k);
        assert!(l.parse_pend(&l.avail()).is_none());
        assert!(l.parse_pend(&l.wake_marker()).is_none());
        assert!(l.is_wake_marker(&l.wake_marker()));
        assert!(l.is_avail(&l.avail()));
    }

    #[test]
    fn foreign_entries_are_invalid_keys_not_panics() {
        let l = Layout::new("p");
        assert!(l.parse_key_entry("p/k/%FF%FE/reg").unwrap().is_err());
        assert!(l.parse_key_entry("p/k/%00/reg").unwrap().is_err());
        assert!(l.parse_key_entry("p/k/trailing%/reg").is_some());
    }
}
