//! Throughput of the sled coordinator next to raw sled in the same run.
//!
//! For each durability mode it measures, alternating subject and peer over several rounds:
//! - `trigger`: `Coordinator::trigger` on existing keys, one call after another;
//! - `claim`: `Coordinator::claim(node, 1)` on pending keys, one key per call;
//! - the peer, raw sled: `insert` + `flush` + `fsync` of the directory's files per operation
//!   (durable: what `FlushEach` does, since sled's own flush ends with `sync_file_range`),
//!   or `insert` alone (batched, with the same background flush interval): the limit for
//!   one write each;
//! - `trigger x16`: 16 tasks triggering at once, next to 16 threads of raw writes.
//!
//! Run with `cargo run --release -p keyloop-sled --example bench_sled [ops_per_round] [rounds]`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyloop_core::{Coordinator, EventSink, Key, NodeId, NodeInfo};
use keyloop_sled::{Durability, SledConfig, SledCoordinator, SledStore};

const KEYS: usize = 1_000;
const CONCURRENCY: usize = 16;
const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What `FlushEach` adds after sled's flush: fsync every file of the directory, then the
/// directory.
fn fsync_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::File::open(entry.path())
                .unwrap()
                .sync_all()
                .unwrap();
        }
    }
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
}

struct Raw {
    dir: std::path::PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    flush: bool,
    n: u64,
}

impl Raw {
    /// Opens the peer's database holding `filler` extra keys, so that its tree is as large
    /// as the subject's (sled copies leaf nodes on write; bigger trees cost more).
    fn open(path: &Path, durability: Durability, filler: usize) -> Raw {
        let mut config = sled::Config::new().path(path);
        let flush = match durability {
            Durability::Batched { interval } => {
                config = config.flush_every_ms(Some(interval.as_millis() as u64));
                false
            }
            _ => true,
        };
        let db = config.open().unwrap();
        let tree = db.open_tree("raw").unwrap();
        for i in 0..filler {
            tree.insert(format!("c{i}").as_bytes(), &[0u8; 35][..])
                .unwrap();
        }
        db.flush().unwrap();
        Raw {
            dir: path.to_path_buf(),
            db,
            tree,
            flush,
            n: 0,
        }
    }

    /// `ops` single writes from `threads` threads at once; ops per second.
    fn run_concurrent(&mut self, ops: usize, threads: usize) -> f64 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let (db, tree, flush, dir) = (&self.db, &self.tree, self.flush, &self.dir);
                s.spawn(move || {
                    for i in 0..ops / threads {
                        let key = format!("k{}", (t * 7919 + i) % KEYS);
                        let mut value = [7u8; 35];
                        value[..8].copy_from_slice(&((t * ops + i) as u64).to_be_bytes());
                        tree.insert(key.as_bytes(), &value[..]).unwrap();
                        if flush {
                            db.flush().unwrap();
                            fsync_dir(dir);
                        }
                    }
                });
            }
        });
        self.n += ops as u64;
        (ops / threads * threads) as f64 / start.elapsed().as_secs_f64()
    }

    /// `ops` single writes of a record-sized value; ops per second.
    fn run(&mut self, ops: usize) -> f64 {
        let mut value = [7u8; 35];
        let start = Instant::now();
        for _ in 0..ops {
            self.n += 1;
            let key = format!("k{}", self.n as usize % KEYS);
            // A fresh value every time: sled skips writing a value equal to the stored one.
            value[..8].copy_from_slice(&self.n.to_be_bytes());
            self.tree.insert(key.as_bytes(), &value[..]).unwrap();
            if self.flush {
                self.db.flush().unwrap();
                fsync_dir(&self.dir);
            }
        }
        ops as f64 / start.elapsed().as_secs_f64()
    }
}

struct Subject {
    coordinator: Arc<SledCoordinator>,
    node: NodeId,
    round: usize,
}

impl Subject {
    async fn open(path: &Path, durability: Durability) -> Subject {
        let config = SledConfig::builder()
            .path(path)
            .durability(durability)
            .build()
            .unwrap();
        let store = SledStore::open_with(config).unwrap();
        let coordinator = store.coordinator();
        let info = NodeInfo {
            id: NodeId::random(),
            name: "bench".into(),
        };
        coordinator
            .join(&info, Duration::from_secs(3600), EventSink::discard())
            .await
            .unwrap();
        for i in 0..KEYS {
            coordinator
                .trigger(&Key::new(format!("t{i}")).unwrap())
                .await
                .unwrap();
        }
        // Own every `t` key so triggers below notify an owner, as on a busy node.
        while !coordinator.claim(&info.id, 1024).await.unwrap().is_empty() {}
        Subject {
            coordinator,
            node: info.id,
            round: 0,
        }
    }

    async fn triggers(&self, ops: usize) -> f64 {
        let keys: Vec<Key> = (0..KEYS)
            .map(|i| Key::new(format!("t{i}")).unwrap())
            .collect();
        let start = Instant::now();
        for i in 0..ops {
            self.coordinator.trigger(&keys[i % KEYS]).await.unwrap();
        }
        ops as f64 / start.elapsed().as_secs_f64()
    }

    /// `ops` triggers from `tasks` concurrent tasks.
    async fn concurrent_triggers(&self, ops: usize, tasks: usize) -> f64 {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let c = Arc::clone(&self.coordinator);
                tokio::spawn(async move {
                    for i in 0..ops / tasks {
                        let key = Key::new(format!("t{}", (t * 7919 + i) % KEYS)).unwrap();
                        c.trigger(&key).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        (ops / tasks * tasks) as f64 / start.elapsed().as_secs_f64()
    }

    /// Registers `ops` fresh keys (not timed), then claims them one per call.
    async fn claims(&mut self, ops: usize) -> f64 {
        self.round += 1;
        for i in 0..ops {
            let key = Key::new(format!("c{}/{i}", self.round)).unwrap();
            self.coordinator.trigger(&key).await.unwrap();
        }
        let start = Instant::now();
        let mut claimed = 0;
        while claimed < ops {
            claimed += self.coordinator.claim(&self.node, 1).await.unwrap().len();
        }
        ops as f64 / start.elapsed().as_secs_f64()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn spread(xs: &[f64]) -> (f64, f64) {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(0.0, f64::max);
    (min, max)
}

/// Prints medians with their spread, and the median of the per-round ratios (subject and
/// peer measured back to back, so slow phases of the disk hit both).
fn report(what: &str, subject: Vec<f64>, raw: Vec<f64>) {
    let ratios: Vec<f64> = subject.iter().zip(&raw).map(|(s, r)| s / r).collect();
    let (q_min, q_max) = spread(&ratios);
    let (s_min, s_max) = spread(&subject);
    let (r_min, r_max) = spread(&raw);
    let (s, r, q) = (median(subject), median(raw), median(ratios));
    println!(
        "{what:<30} {s:>9.0}/s [{s_min:.0}..{s_max:.0}]  raw {r:>9.0}/s [{r_min:.0}..{r_max:.0}]  ratio {q:.2} [{q_min:.2}..{q_max:.2}]"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().map_or(2_000, |a| a.parse().expect("ops"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("rounds"));
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    println!(
        "ops per round {ops}, rounds {rounds}, directory {}",
        dir.path().display()
    );
    for (label, durability) in [
        ("flush each", Durability::FlushEach),
        (
            "batched 500ms",
            Durability::Batched {
                interval: BATCH_INTERVAL,
            },
        ),
    ] {
        let tag = label.replace(' ', "-");
        let mut raw = Raw::open(
            &dir.path().join(format!("raw-{tag}")),
            durability,
            rounds * ops,
        );
        let mut subject = Subject::open(&dir.path().join(format!("sub-{tag}")), durability).await;
        let (mut t, mut c, mut r_t, mut r_c) = (vec![], vec![], vec![], vec![]);
        let (mut tc, mut r_tc) = (vec![], vec![]);
        raw.run(ops / 4); // warm-up
        for round in 0..rounds {
            // Alternate which side goes first.
            if round % 2 == 0 {
                r_t.push(raw.run(ops));
                t.push(subject.triggers(ops).await);
                r_c.push(raw.run(ops));
                c.push(subject.claims(ops).await);
                r_tc.push(raw.run_concurrent(ops, CONCURRENCY));
                tc.push(subject.concurrent_triggers(ops, CONCURRENCY).await);
            } else {
                t.push(subject.triggers(ops).await);
                r_t.push(raw.run(ops));
                c.push(subject.claims(ops).await);
                r_c.push(raw.run(ops));
                tc.push(subject.concurrent_triggers(ops, CONCURRENCY).await);
                r_tc.push(raw.run_concurrent(ops, CONCURRENCY));
            }
        }
        report(&format!("{label}: trigger"), t, r_t);
        report(&format!("{label}: claim (1 per call)"), c, r_c);
        report(&format!("{label}: trigger x{CONCURRENCY}"), tc, r_tc);
    }
}
