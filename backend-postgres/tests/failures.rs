//! Real failures: a SIGKILLed process, a killed listening connection, a stopped server.
//!
//! Loops record `(key, epoch, start, end)`; the checks are that no key ever has two
//! overlapping runs, that keys move on within the lease TTL plus the claim interval, that
//! triggers are never lost and that loops stop before their lease can expire.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use keyloop_core::{
    BoxError, Client, Controller, Coordinator, Decision, Engine, Key, LoopContext, Wake,
    async_trait,
};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};
use tokio::sync::mpsc;

/// Wall-clock nanoseconds: comparable across processes on one machine.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Happened {
    Start,
    Triggered,
    End,
}

#[derive(Debug, Clone)]
struct Record {
    what: Happened,
    key: String,
    epoch: u64,
    at_ns: u128,
}

type Sink = Arc<dyn Fn(Record) + Send + Sync>;

/// Runs until told to stop, recording its start, every trigger burst and its end.
struct RecordingLoop {
    sink: Sink,
}

#[async_trait]
impl Controller for RecordingLoop {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let rec = |what| {
            (self.sink)(Record {
                what,
                key: key.to_string(),
                epoch: ctx.epoch().0,
                at_ns: now_ns(),
            })
        };
        rec(Happened::Start);
        while let Wake::Triggered = ctx.next().await {
            rec(Happened::Triggered);
        }
        rec(Happened::End);
        Ok(Decision::Continue)
    }
}

async fn engine(
    coordinator: Arc<dyn Coordinator>,
    sink: Sink,
    name: &str,
    ttl: Duration,
    max_loops: usize,
) -> Engine {
    Engine::builder(coordinator, RecordingLoop { sink })
        .config(|c| {
            c.node_name(name)
                .lease_ttl(ttl)
                .heartbeat_interval(ttl / 6)
                .fence_margin(ttl / 4)
                .claim_interval(CLAIM_INTERVAL)
                .claim_batch(100)
                .max_loops(max_loops)
                .shutdown_grace(Duration::from_secs(5))
        })
        .start()
        .await
        .unwrap()
}

const CLAIM_INTERVAL: Duration = Duration::from_millis(500);

async fn pg(url: &str, schema: &str) -> Arc<dyn Coordinator> {
    let config = PostgresConfig::builder(url)
        .schema(schema)
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    Arc::new(PostgresCoordinator::connect(config).await.unwrap())
}

/// Checks that no key has two overlapping runs, and that epochs grow with time.
/// `open_until` closes runs that never recorded an end (their process was killed).
fn assert_no_overlaps(records: &[Record], open_until: &HashMap<u64, u128>) {
    // Per key: (epoch, start, end).
    type Run = (u64, u128, Option<u128>);
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for r in records {
        let list = runs.entry(&r.key).or_default();
        match r.what {
            Happened::Start => list.push((r.epoch, r.at_ns, None)),
            Happened::End => {
                let run = list
                    .iter_mut()
                    .find(|(e, _, end)| *e == r.epoch && end.is_none())
                    .unwrap_or_else(|| panic!("end without start: {r:?}"));
                run.2 = Some(r.at_ns);
            }
            Happened::Triggered => {}
        }
    }
    for (key, list) in &mut runs {
        list.sort_by_key(|(_, start, _)| *start);
        for pair in list.windows(2) {
            let (e1, _s1, end1) = pair[0];
            let (e2, s2, _) = pair[1];
            let end1 = end1
                .or_else(|| open_until.get(&e1).copied())
                .unwrap_or_else(|| {
                    panic!("{key}: run at epoch {e1} never ended but another started")
                });
            assert!(
                end1 <= s2,
                "{key}: run at epoch {e2} started {} µs before the run at epoch {e1} ended",
                (end1 - s2) / 1000
            );
            assert!(e2 > e1, "{key}: epoch {e2} after {e1}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (1) Three processes, 1,000 keys, one SIGKILLed.

const WORKER_ENV: &str = "KEYLOOP_PG_FAILURE_WORKER";
const KEYS: usize = 1000;
const PROCESS_TTL: Duration = Duration::from_secs(3);

/// Not a test: the body of a worker process started by `sigkilled_process_keys_move_without_overlap`.
#[test]
#[ignore = "worker process for sigkilled_process_keys_move_without_overlap"]
fn worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '\n');
    let (name, log, schema) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let url = std::env::var("KEYLOOP_PG_FAILURE_URL").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let file = Mutex::new(
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log)
                .unwrap(),
        );
        let sink: Sink = Arc::new(move |r: Record| {
            let tag = match r.what {
                Happened::Start => 'S',
                Happened::End => 'E',
                Happened::Triggered => 'T',
            };
            // One write per record, unbuffered: a SIGKILL loses nothing already recorded.
            let line = format!("{tag}\t{}\t{}\t{}\n", r.epoch, r.at_ns, r.key);
            file.lock().unwrap().write_all(line.as_bytes()).unwrap();
        });
        let engine = engine(pg(&url, &schema).await, sink, &name, PROCESS_TTL, 500).await;
        // Run until our stdin closes (graceful stop) or we are killed.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        })
        .await
        .unwrap();
        let report = engine.shutdown().await;
        assert!(report.abandoned.is_empty(), "{report:?}");
    });
}

fn read_log(path: &Path) -> Vec<Record> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            let what = match f.next()? {
                "S" => Happened::Start,
                "E" => Happened::End,
                "T" => Happened::Triggered,
                _ => return None,
            };
            Some(Record {
                what,
                epoch: f.next()?.parse().ok()?,
                at_ns: f.next()?.parse().ok()?,
                key: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// Runs whose start has no end yet, by epoch.
fn active(records: &[Record]) -> HashMap<u64, String> {
    let mut open = HashMap::new();
    for r in records {
        match r.what {
            Happened::Start => {
                open.insert(r.epoch, r.key.clone());
            }
            Happened::End => {
                open.remove(&r.epoch);
            }
            Happened::Triggered => {}
        }
    }
    open
}

struct Worker {
    child: Child,
    log: PathBuf,
}

fn spawn_worker(url: &str, schema: &str, name: &str, dir: &Path) -> Worker {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, format!("{name}\n{}\n{schema}", log.display()))
        .env("KEYLOOP_PG_FAILURE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Worker { child, log }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_process_keys_move_without_overlap() {
    let Some(url) = test_postgres_url() else {
        return;
    };
    let schema = fresh_schema("sigkill");
    let client = Client::new(pg(&url, &schema).await);
    for i in 0..KEYS {
        client.trigger(format!("k/{i:04}")).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| spawn_worker(&url, &schema, &format!("w{i}"), dir.path()))
        .collect();

    // Every key runs somewhere, spread over the workers (max_loops 500 each).
    eventually("all keys running", || async {
        let total: usize = workers
            .iter()
            .map(|w| active(&read_log(&w.log)).len())
            .sum();
        (total == KEYS).then_some(())
    })
    .await;
    let victim_index = (0..3)
        .max_by_key(|i| active(&read_log(&workers[*i].log)).len())
        .unwrap();
    let mut victim = workers.remove(victim_index);
    let victim_keys = active(&read_log(&victim.log));
    assert!(!victim_keys.is_empty());
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    let killed_ns = now_ns();

    // Its keys run elsewhere, each with a new epoch.
    let moved_after = eventually("victim's keys taken over", || async {
        let running: HashMap<String, u64> = workers
            .iter()
            .flat_map(|w| active(&read_log(&w.log)))
            .map(|(e, k)| (k, e))
            .collect();
        victim_keys
            .values()
            .all(|k| running.contains_key(k))
            .then(|| killed_at.elapsed())
    })
    .await;
    eprintln!(
        "failover of {} keys after SIGKILL: {moved_after:?} (lease TTL {PROCESS_TTL:?}, claim interval {CLAIM_INTERVAL:?})",
        victim_keys.len()
    );
    assert!(
        moved_after < PROCESS_TTL + CLAIM_INTERVAL + Duration::from_secs(5),
        "failover took {moved_after:?}"
    );

    // Graceful stop of the others, then the whole history is checked.
    for w in &mut workers {
        drop(w.child.stdin.take());
    }
    for w in &mut workers {
        assert!(w.child.wait().unwrap().success());
    }
    let mut all = read_log(&victim.log);
    for w in &workers {
        all.extend(read_log(&w.log));
    }
    let open_until: HashMap<u64, u128> = victim_keys.keys().map(|e| (*e, killed_ns)).collect();
    assert_no_overlaps(&all, &open_until);
    let snap = client.inspect().await.unwrap();
    assert_eq!(snap.keys.len(), KEYS, "no key lost");
}

// ---------------------------------------------------------------------------------------
// (2) The listening connection is killed; triggers sent meanwhile still reach their loops.

fn channel_sink() -> (
    Sink,
    mpsc::UnboundedReceiver<Record>,
    Arc<Mutex<Vec<Record>>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let all = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&all);
    let sink: Sink = Arc::new(move |r: Record| {
        keep.lock().unwrap().push(r.clone());
        let _ = tx.send(r);
    });
    (sink, rx, all)
}

async fn next_record(
    rx: &mut mpsc::UnboundedReceiver<Record>,
    what: &str,
    mut pred: impl FnMut(&Record) -> bool,
) -> Record {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) if pred(&r) => return r,
            Ok(Some(_)) => {}
            Ok(None) => panic!("recorder closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_survive_a_killed_listening_connection() {
    let Some(url) = test_postgres_url() else {
        return;
    };
    let schema = fresh_schema("listenkill");
    let (sink, mut rx, _) = channel_sink();
    let e = engine(
        pg(&url, &schema).await,
        sink,
        "a",
        Duration::from_secs(6),
        100,
    )
    .await;
    let keys: Vec<String> = (0..5).map(|i| format!("watched/{i}")).collect();
    for k in &keys {
        e.trigger(k.as_str()).await.unwrap();
    }
    for _ in &keys {
        next_record(&mut rx, "loop start", |r| r.what == Happened::Start).await;
    }
    let raw = raw_client(&url).await;
    for round in 0..5 {
        // Drain what earlier rounds caused, then kill the listener and trigger at once.
        while rx.try_recv().is_ok() {}
        let node = e.node_id().unwrap();
        let killed: Vec<bool> = raw
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("keyloop-listener-{node}")],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(killed, vec![true], "round {round}: one listener to kill");
        let sent_ns = now_ns();
        for k in &keys {
            e.trigger(k.as_str()).await.unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        while seen.len() < keys.len() {
            let r = next_record(&mut rx, "trigger observed after the kill", |r| {
                r.what == Happened::Triggered && r.at_ns >= sent_ns
            })
            .await;
            seen.insert(r.key);
        }
    }
    let report = e.shutdown().await;
    assert_eq!(report.handed_off.len(), keys.len());
}

// ---------------------------------------------------------------------------------------
// (3) The server is stopped for longer than the lease TTL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_outage_longer_than_ttl_stops_loops_in_time_and_resumes_all() {
    let Some(server) = dedicated_postgres_server() else {
        return;
    };
    let url = server.url();
    let schema = fresh_schema("outage");
    let ttl = Duration::from_secs(3);
    let (sink, _rx, records) = channel_sink();
    let engines = [
        engine(pg(&url, &schema).await, Arc::clone(&sink), "a", ttl, 1000).await,
        engine(pg(&url, &schema).await, Arc::clone(&sink), "b", ttl, 1000).await,
    ];
    let client = Client::new(pg(&url, &schema).await);
    let keys: Vec<String> = (0..50).map(|i| format!("o/{i:02}")).collect();
    for k in &keys {
        client.trigger(k.as_str()).await.unwrap();
    }
    let running = |records: &Arc<Mutex<Vec<Record>>>| -> HashMap<String, u64> {
        let recs = records.lock().unwrap();
        active(&recs).into_iter().map(|(e, k)| (k, e)).collect()
    };
    eventually("all keys running", || async {
        (running(&records).len() == keys.len()).then_some(())
    })
    .await;

    // The last heartbeat that can have succeeded was sent before this instant, so every
    // lease expires on the server no later than `stopped + ttl`.
    let stopped_ns = now_ns();
    let stopped = Instant::now();
    let server = Arc::new(server);
    {
        let server = Arc::clone(&server);
        tokio::task::spawn_blocking(move || server.stop().unwrap())
            .await
            .unwrap();
    }
    eventually("every loop stopped", || async {
        running(&records).is_empty().then_some(())
    })
    .await;
    let last_end = records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.what == Happened::End)
        .map(|r| r.at_ns)
        .max()
        .unwrap();
    let stopped_within = Duration::from_nanos((last_end - stopped_ns) as u64);
    eprintln!(
        "all loops stopped {stopped_within:?} after the server went down (lease TTL {ttl:?})"
    );
    assert!(
        stopped_within < ttl,
        "loops stopped {stopped_within:?} after the outage began; leases last {ttl:?}"
    );

    // Stay down past the TTL, then come back.
    let down_for = ttl + Duration::from_secs(1);
    tokio::time::sleep(down_for.saturating_sub(stopped.elapsed())).await;
    {
        let server = Arc::clone(&server);
        tokio::task::spawn_blocking(move || server.resume().unwrap())
            .await
            .unwrap();
    }
    let back_ns = now_ns();
    eventually("every key running again", || async {
        let recs = records.lock().unwrap();
        let open = active(&recs);
        let restarted: std::collections::HashSet<&String> = recs
            .iter()
            .filter(|r| {
                r.what == Happened::Start && r.at_ns >= back_ns && open.contains_key(&r.epoch)
            })
            .map(|r| &r.key)
            .collect();
        (restarted.len() == keys.len()).then_some(())
    })
    .await;
    let snap = client.inspect().await.unwrap();
    assert_eq!(snap.keys.len(), keys.len(), "nothing lost");
    for e in &engines {
        e.shutdown().await;
    }
    assert_no_overlaps(&records.lock().unwrap(), &HashMap::new());
}
