//! The on-disk layout: tree names, the format version and record encoding.
//!
//! Everything lives in one tree (`keyloop.registry`) so that retiring a key (record and
//! state) is one atomic `apply_batch`:
//! - `k` + key bytes → [`Record`] (registered keys only),
//! - `s` + key bytes → the key's saved state.
//!
//! The default tree holds `keyloop.format` → the format version (u32, big endian) and
//! `keyloop.id_ceiling` → the durable ceiling of issued ids (u64, big endian). Trigger
//! sequences and epochs come from one counter that never goes backwards (`ids.rs`), also
//! for a key that was retired and registered again.

use keyloop_core::NodeId;

/// The format version this build reads and writes.
///
/// Version 2 keeps a registry tally (see [`TALLY_KEY`]); version 1 databases are refused
/// with `IncompatibleVersion`, untouched.
pub const FORMAT_VERSION: u32 = 2;

pub(crate) const VERSION_KEY: &[u8] = b"keyloop.format";
/// The durable ceiling of issued ids (u64, big endian); see `ids.rs`.
pub(crate) const ID_CEILING_KEY: &[u8] = b"keyloop.id_ceiling";
pub(crate) const REGISTRY_TREE: &[u8] = b"keyloop.registry";
pub(crate) const RECORD_PREFIX: u8 = b'k';
/// In the registry tree: how many key records it holds (u64, big endian), changed in the
/// same sled transaction as every record created or retired, and compared with the records
/// found at open. A damaged file that lost records (sled opens it without error) then
/// disagrees with its tally, or has lost the tally itself.
pub(crate) const TALLY_KEY: &[u8] = b"#tally";
/// A file written (and fsynced) beside the database once it is initialised: a directory that
/// has it but whose database opens as fresh was wiped (e.g. a zeroed header), not new.
pub(crate) const WITNESS_FILE: &str = "keyloop.initialised";

/// A tally value: (key records, registry generation). The generation grows with every
/// record created or retired; the witness file holds the last one known flushed, so a
/// database that sled rolled back to an older consistent state (it replays its log up to
/// the damage) is caught although its records agree with its own tally.
pub(crate) fn decode_tally(raw: &[u8]) -> Option<(u64, u64)> {
    let bytes = <[u8; 16]>::try_from(raw).ok()?;
    let (count, generation) = bytes.split_at(8);
    Some((
        u64::from_be_bytes(count.try_into().ok()?),
        u64::from_be_bytes(generation.try_into().ok()?),
    ))
}

/// Encodes a tally value.
pub(crate) fn encode_tally(count: u64, generation: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&count.to_be_bytes());
    out[8..].copy_from_slice(&generation.to_be_bytes());
    out
}

/// Reads the generation the witness file last recorded (0 for an empty file).
pub(crate) fn read_witness(dir: &std::path::Path) -> std::io::Result<Option<u64>> {
    match std::fs::read(dir.join(WITNESS_FILE)) {
        Ok(bytes) if bytes.is_empty() => Ok(Some(0)),
        Ok(bytes) => Ok(<[u8; 8]>::try_from(bytes.as_slice())
            .ok()
            .map(u64::from_be_bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Durably records `generation` in the witness file (write a temporary file, fsync,
/// rename over, fsync the directory).
pub(crate) fn write_witness(dir: &std::path::Path, generation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{WITNESS_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&generation.to_be_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(WITNESS_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}
pub(crate) const STATE_PREFIX: u8 = b's';

const RECORD_TAG: u8 = 1;
/// A record of a sleeping key: the wake-up time follows the epoch.
const RECORD_TAG_SLEEPING: u8 = 2;

/// What the registry knows about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) trigger_seq: u64,
    /// The epoch of the latest acquisition; 0 if never owned since registration.
    pub(crate) epoch: u64,
    /// The node that last acquired the key and has not released it. Whether it is alive is
    /// decided by the in-process node table, never by this field.
    pub(crate) owner: Option<NodeId>,
    /// Set while the key is parked, with the last error.
    pub(crate) parked: Option<String>,
    /// Set while the key sleeps (`Release::Sleep`): when it falls due, in nanoseconds since
    /// the Unix epoch by this machine's wall clock (the only clock that outlives a restart).
    pub(crate) wake_at: Option<u64>,
}

pub(crate) fn record_key(key: &str) -> Vec<u8> {
    prefixed(RECORD_PREFIX, key)
}

pub(crate) fn state_key(key: &str) -> Vec<u8> {
    prefixed(STATE_PREFIX, key)
}

fn prefixed(prefix: u8, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(prefix);
    out.extend_from_slice(key.as_bytes());
    out
}

impl Record {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let parked_len = self.parked.as_ref().map_or(0, |p| p.len());
        let mut out = Vec::with_capacity(1 + 8 + 8 + 17 + 1 + parked_len);
        out.push(if self.wake_at.is_some() {
            RECORD_TAG_SLEEPING
        } else {
            RECORD_TAG
        });
        out.extend_from_slice(&self.trigger_seq.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        if let Some(at) = self.wake_at {
            out.extend_from_slice(&at.to_be_bytes());
        }
        match self.owner {
            Some(node) => {
                out.push(1);
                out.extend_from_slice(&node.as_u128().to_be_bytes());
            }
            None => out.push(0),
        }
        match &self.parked {
            Some(error) => {
                out.push(1);
                out.extend_from_slice(error.as_bytes());
            }
            None => out.push(0),
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
        let mut r = Reader(bytes);
        let tag = r.u8()?;
        if tag != RECORD_TAG && tag != RECORD_TAG_SLEEPING {
            return Err(format!("unknown record tag {tag}"));
        }
        let trigger_seq = u64::from_be_bytes(r.array()?);
        let epoch = u64::from_be_bytes(r.array()?);
        let wake_at = if tag == RECORD_TAG_SLEEPING {
            Some(u64::from_be_bytes(r.array()?))
        } else {
            None
        };
        let owner = match r.u8()? {
            0 => None,
            1 => Some(NodeId::from_u128(u128::from_be_bytes(r.array()?))),
            other => return Err(format!("bad owner flag {other}")),
        };
        let parked = match r.u8()? {
            0 => {
                if !r.0.is_empty() {
                    return Err(format!("{} trailing bytes", r.0.len()));
                }
                None
            }
            1 => Some(
                String::from_utf8(r.0.to_vec())
                    .map_err(|_| "parked error is not UTF-8".to_string())?,
            ),
            other => return Err(format!("bad parked flag {other}")),
        };
        Ok(Record {
            trigger_seq,
            epoch,
            owner,
            parked,
            wake_at,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, String> {
        let (&first, rest) = self.0.split_first().ok_or("record truncated")?;
        self.0 = rest;
        Ok(first)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("record truncated".to_string());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("split at N"))
    }
}

/// What the version marker of a database says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FormatCheck {
    /// The database is empty: write the current version.
    Fresh,
    /// The database has the current version.
    Current,
    /// Another version.
    Other(u32),
    /// Data that is not ours, or a damaged marker.
    Foreign(String),
}

/// Reads the version marker without writing anything.
pub(crate) fn check_format(db: &sled::Db) -> sled::Result<FormatCheck> {
    match db.get(VERSION_KEY)? {
        Some(raw) => {
            let Ok(bytes) = <[u8; 4]>::try_from(raw.as_ref()) else {
                return Ok(FormatCheck::Foreign(format!(
                    "version marker has {} bytes, expected 4",
                    raw.len()
                )));
            };
            match u32::from_be_bytes(bytes) {
                FORMAT_VERSION => Ok(FormatCheck::Current),
                other => Ok(FormatCheck::Other(other)),
            }
        }
        None => {
            // sled always has its default tree; anything else means someone else's data.
            let foreign_trees: Vec<String> = db
                .tree_names()
                .into_iter()
                .filter(|name| name.as_ref() != b"__sled__default")
                .map(|name| String::from_utf8_lossy(&name).into_owned())
                .collect();
            if !foreign_trees.is_empty() {
                return Ok(FormatCheck::Foreign(format!(
                    "no version marker but trees {foreign_trees:?}"
                )));
            }
            if !db.is_empty() {
                return Ok(FormatCheck::Foreign(format!(
                    "no version marker but {} entries in the default tree",
                    db.len()
                )));
            }
            Ok(FormatCheck::Fresh)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record {
                trigger_seq: 0,
                epoch: 0,
                owner: None,
                parked: None,
                wake_at: None,
            },
            Record {
                trigger_seq: u64::MAX,
                epoch: 42,
                owner: Some(NodeId::random()),
                parked: None,
                wake_at: None,
            },
            Record {
                trigger_seq: 7,
                epoch: u64::MAX,
                owner: None,
                parked: Some("boom: ünïcode\nand newline".into()),
                wake_at: None,
            },
            Record {
                trigger_seq: 7,
                epoch: 1,
                owner: Some(NodeId::from_u128(u128::MAX)),
                parked: Some(String::new()),
                wake_at: Some(1),
            },
            Record {
                trigger_seq: 9,
                epoch: 3,
                owner: None,
                parked: None,
                wake_at: Some(u64::MAX),
            },
        ]
    }

    #[test]
    fn records_roundtrip() {
        for record in samples() {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for record in samples() {
            let bytes = record.encode();
            // A parked record's message may legitimately be cut short, so only check up to
            // the parked flag.
            let fixed = bytes.len() - record.parked.as_ref().map_or(0, String::len);
            for len in 0..fixed {
                assert!(Record::decode(&bytes[..len]).is_err(), "len {len}");
            }
        }
    }

    #[test]
    fn bad_tag_flags_and_trailing_bytes_are_errors() {
        let mut bytes = samples()[0].encode();
        bytes[0] = 9;
        assert_eq!(
            Record::decode(&bytes),
            Err("unknown record tag 9".to_string())
        );
        let mut bytes = samples()[0].encode();
        bytes[17] = 5;
        assert_eq!(Record::decode(&bytes), Err("bad owner flag 5".to_string()));
        let mut bytes = samples()[0].encode();
        bytes[18] = 3;
        assert_eq!(Record::decode(&bytes), Err("bad parked flag 3".to_string()));
        let mut bytes = samples()[0].encode();
        bytes.push(0);
        assert_eq!(Record::decode(&bytes), Err("1 trailing bytes".to_string()));
        let mut bytes = samples()[2].encode();
        bytes.push(0xff);
        assert!(Record::decode(&bytes).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn prefixes_separate_records_from_state() {
        assert_eq!(record_key("vm/1"), b"kvm/1".to_vec());
        assert_eq!(state_key("vm/1"), b"svm/1".to_vec());
    }

    #[test]
    fn format_check_of_fresh_current_other_and_foreign() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        assert_eq!(check_format(&db).unwrap(), FormatCheck::Fresh);
        db.insert(VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
            .unwrap();
        assert_eq!(check_format(&db).unwrap(), FormatCheck::Current);
        db.insert(VERSION_KEY, &7u32.to_be_bytes()).unwrap();
        assert_eq!(check_format(&db).unwrap(), FormatCheck::Other(7));
        db.insert(VERSION_KEY, b"xy").unwrap();
        assert!(matches!(
            check_format(&db).unwrap(),
            FormatCheck::Foreign(_)
        ));

        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(b"hello", b"world").unwrap();
        assert!(
            matches!(check_format(&db).unwrap(), FormatCheck::Foreign(d) if d.contains("default tree"))
        );

        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("other").unwrap();
        assert!(
            matches!(check_format(&db).unwrap(), FormatCheck::Foreign(d) if d.contains("other"))
        );
    }
}
