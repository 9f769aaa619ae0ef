//! Crash safety: a child process triggers keys, claims them and saves state, and is killed
//! with SIGKILL mid-stream. Reopening the directory must show every acknowledged trigger
//! pending with (at least) its last acknowledged state, and hand out epochs greater than
//! any issued before the crash.
//!
//! The child is this test binary itself, re-run with `--ignored --exact crash_child`; it
//! prints one `ACK` line after each acknowledged operation.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use keyloop_core::{Bytes, Coordinator, Epoch, Key, NodeId, NodeInfo, Release, TriggerSeq};
use keyloop_sled::{Durability, SledConfig, SledStore};

const DIR_ENV: &str = "KEYLOOP_SLED_CRASH_DIR";
const MODE_ENV: &str = "KEYLOOP_SLED_CRASH_MODE";
const KEYS: usize = 40;

fn config(path: &std::path::Path, mode: &str) -> SledConfig {
    let durability = match mode {
        "flush" => Durability::FlushEach,
        "batched" => Durability::Batched {
            interval: Duration::from_millis(50),
        },
        // Nothing is flushed in the background: only what the store flushes itself.
        "unflushed" => Durability::Batched {
            interval: Duration::from_secs(3600),
        },
        other => panic!("unknown mode {other}"),
    };
    SledConfig::builder()
        .path(path)
        .durability(durability)
        .build()
        .unwrap()
}

/// The child: works until it is killed. Not a test on its own.
#[test]
#[ignore = "child process of the crash tests; they run it"]
fn crash_child() {
    let dir = std::env::var(DIR_ENV).expect("run by the crash tests only");
    let mode = std::env::var(MODE_ENV).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SledStore::open_with(config(dir.as_ref(), &mode)).unwrap();
        let c = store.coordinator();
        let node = NodeInfo {
            id: NodeId::random(),
            name: "child".into(),
        };
        c.join(
            &node,
            Duration::from_secs(3600),
            keyloop_core::EventSink::discard(),
        )
        .await
        .unwrap();
        let mut owned: HashMap<Key, Epoch> = HashMap::new();
        for i in 0u64.. {
            let key = Key::new(format!("k{}", i as usize % KEYS)).unwrap();
            let seq = c.trigger(&key).await.unwrap().seq;
            println!("ACK T {key} {}", seq.0);
            let epoch = match owned.get(&key) {
                Some(epoch) if i % 11 != 0 => *epoch,
                previous => {
                    if let Some(epoch) = previous {
                        c.release(
                            &node.id,
                            &key,
                            *epoch,
                            Release::Continue {
                                avoid_for: Duration::ZERO,
                            },
                        )
                        .await
                        .unwrap();
                    }
                    let claim = c.claim_key(&node.id, &key).await.unwrap().unwrap();
                    println!("ACK E {key} {}", claim.epoch.0);
                    owned.insert(key.clone(), claim.epoch);
                    claim.epoch
                }
            };
            c.save_state(&node.id, &key, epoch, Bytes::from(i.to_string()))
                .await
                .unwrap();
            println!("ACK S {key} {i}");
        }
    });
}

#[derive(Default, Debug)]
struct Acked {
    seqs: HashMap<String, u64>,
    states: HashMap<String, u64>,
    max_epoch: u64,
    /// The smallest epoch acknowledged (0 if none).
    min_epoch: u64,
    lines: usize,
}

/// Runs the child until it acknowledged `kill_after` operations, kills it with SIGKILL and
/// returns everything it acknowledged (including lines written before the kill landed).
fn run_child_and_kill(dir: &std::path::Path, mode: &str, kill_after: usize) -> Acked {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crash_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Acked::default();
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        let mut parts = line.split(' ');
        if parts.next() != Some("ACK") {
            continue;
        }
        let (kind, key, value) = (
            parts.next().unwrap(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().parse::<u64>().unwrap(),
        );
        match kind {
            "T" => {
                let seq = acked.seqs.entry(key).or_default();
                *seq = (*seq).max(value);
            }
            "S" => {
                let state = acked.states.entry(key).or_default();
                *state = (*state).max(value);
            }
            "E" => {
                acked.max_epoch = acked.max_epoch.max(value);
                if acked.min_epoch == 0 || value < acked.min_epoch {
                    acked.min_epoch = value;
                }
            }
            other => panic!("bad line {other}"),
        }
        acked.lines += 1;
        if acked.lines == 1 {
            // The child holds the directory: another process must get a typed error.
            match SledStore::open_with(config(dir, mode)) {
                Err(keyloop_sled::SledError::Locked { path, .. }) => {
                    assert_eq!(path, dir.canonicalize().unwrap());
                }
                other => panic!("expected Locked while the child runs, got {other:?}"),
            }
        }
        if acked.lines == kill_after && !killed {
            // std's kill is SIGKILL on unix: no destructor, no flush.
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "child ended on its own: {status:?}");
    assert!(!status.success());
    acked
}

async fn check_after_crash(dir: &std::path::Path, acked: &Acked, mode: &str) {
    let store = SledStore::open_with(config(dir, mode)).unwrap();
    assert!(store.was_recovered());
    let c = store.coordinator();
    if mode == "flush" {
        for (key, seq) in &acked.seqs {
            let info = c
                .key_info(&Key::new(key).unwrap())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
            assert!(
                info.trigger_seq >= TriggerSeq(*seq),
                "{key}: sequence {} < acknowledged {seq}",
                info.trigger_seq
            );
            assert_eq!(info.owner, None, "owners from before the crash are dead");
        }
        for (key, value) in &acked.states {
            let state = c
                .load_state(&Key::new(key).unwrap())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged state of {key} lost"));
            let stored: u64 = std::str::from_utf8(&state).unwrap().parse().unwrap();
            assert!(
                stored >= *value,
                "{key}: state {stored} older than acknowledged {value}"
            );
        }
    }
    let node = NodeInfo {
        id: NodeId::random(),
        name: "after".into(),
    };
    c.join(
        &node,
        Duration::from_secs(60),
        keyloop_core::EventSink::discard(),
    )
    .await
    .unwrap();
    let claims = c.claim(&node.id, usize::MAX).await.unwrap();
    if mode == "flush" {
        for key in acked.seqs.keys() {
            assert!(
                claims.iter().any(|c| c.key.as_str() == key),
                "pending key {key} is not claimable"
            );
        }
    }
    let probe = Key::new("probe").unwrap();
    c.trigger(&probe).await.unwrap();
    let probe_claim = c.claim_key(&node.id, &probe).await.unwrap().unwrap();
    for claim in claims.iter().chain([&probe_claim]) {
        assert!(
            claim.epoch.0 > acked.max_epoch,
            "{}: epoch {} not above {} issued before the crash",
            claim.key,
            claim.epoch,
            acked.max_epoch
        );
    }
    for (key, seq) in &acked.seqs {
        let next = c.trigger(&Key::new(key).unwrap()).await.unwrap().seq;
        assert!(next.0 > *seq);
    }
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_work_with_flush_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // Two crashes on the same directory: recovery of a recovered database too.
    for kill_after in [157, 311] {
        let acked = run_child_and_kill(&path, "flush", kill_after);
        assert!(acked.lines >= kill_after);
        assert!(!acked.states.is_empty() && acked.max_epoch > 0);
        check_after_crash(&path, &acked, "flush").await;
    }
}

#[tokio::test]
async fn sigkill_with_batched_flushing_keeps_epochs_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for kill_after in [500, 1300] {
        let acked = run_child_and_kill(&path, "batched", kill_after);
        check_after_crash(&path, &acked, "batched").await;
    }
}

/// Crashes right after recovery, before any background flush: the case in which sled's own
/// `generate_id` re-issued ids (its bumped counter is persisted lazily).
#[tokio::test]
async fn epochs_stay_monotonic_across_quick_successive_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut highest = 0;
    for round in 0..4 {
        let acked = run_child_and_kill(&path, "unflushed", 30);
        assert!(
            acked.min_epoch > highest,
            "round {round}: epoch {} issued after {highest} was issued before the crash",
            acked.min_epoch
        );
        highest = highest.max(acked.max_epoch);
    }
    check_after_crash(
        &path,
        &Acked {
            max_epoch: highest,
            ..Acked::default()
        },
        "unflushed",
    )
    .await;
}
