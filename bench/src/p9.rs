//! P9: wake-up lateness with 10,000 keys falling due per second, on the memory backend and
//! on PostgreSQL, on both tokio runtimes.
//!
//! Each key `w/i` runs once and returns `RequeueAt(t0 + i / 10,000 s)`, so the keys fall due
//! at 10,000 per second over a window of some seconds; `t0` is far enough ahead that every
//! key is asleep before the first falls due (checked: a round whose setup overran `t0` says
//! so). When it runs again, the loop records its lateness — the wall clock at the start of
//! the run minus the requested wake time — and completes. One node; `max_loops` covers every
//! key, so capacity never holds a wake-up back.
//!
//! The peer, in the same process and runtime, alternating with the subject: one tokio task
//! per key in `tokio::time::sleep` until the same wall-clock times (what a hand-rolled,
//! non-durable timer per key costs), so the ratio shows the framework's overhead.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyloop_core::{Coordinator, Decision, Engine, Key, KeyStatus, controller_fn};

use crate::report::{loadavg, median};
use crate::rss::Flavor;

/// Keys falling due per second.
const RATE: f64 = 10_000.0;
/// Tasks triggering the keys at the start of a round.
const TRIGGER_TASKS: usize = 16;
/// "Kept up": the wake-ups came at least this fraction of the due rate.
const KEPT_UP: f64 = 0.95;

/// Where the subject's keys live.
pub(crate) enum Backend {
    Memory,
    Postgres { url: String, what: &'static str },
}

impl Backend {
    fn name(&self) -> String {
        match self {
            Backend::Memory => "memory".into(),
            Backend::Postgres { what, .. } => format!("postgres ({what})"),
        }
    }

    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        match self {
            Backend::Memory => keyloop_memory::MemoryCluster::new().coordinator(),
            Backend::Postgres { url, .. } => {
                let schema = format!(
                    "bench_p9_{}",
                    &keyloop_core::NodeId::random().to_string()[..8]
                );
                let config = keyloop_postgres::PostgresConfig::builder(url.as_str())
                    .schema(schema)
                    .build()
                    .expect("postgres config");
                Arc::new(
                    keyloop_postgres::PostgresCoordinator::connect(config)
                        .await
                        .expect("connecting to PostgreSQL"),
                )
            }
        }
    }

    /// The lead before the first wake-up in a first round, before a setup was measured.
    fn first_lead(&self, n: usize) -> Duration {
        match self {
            Backend::Memory => Duration::from_secs_f64(1.0 + n as f64 / 100_000.0),
            Backend::Postgres { .. } => Duration::from_secs_f64(2.0 + n as f64 / 2_000.0),
        }
    }
}

/// When each key falls due, and what its loops saw.
struct Round {
    t0: SystemTime,
    /// Per key: 0 not run yet, 1 asleep (first run returned), 2 woke.
    phase: Vec<AtomicU8>,
    /// Per key: nanoseconds from the requested wake time to the start of the run.
    lateness: Vec<AtomicI64>,
    woke: AtomicUsize,
    asleep: AtomicUsize,
    last_asleep: Mutex<Option<SystemTime>>,
    /// Runs beyond the two expected per key (there should be none).
    extra_runs: AtomicUsize,
}

impl Round {
    fn new(n: usize, lead: Duration) -> Round {
        Round {
            t0: SystemTime::now() + lead,
            phase: (0..n).map(|_| AtomicU8::new(0)).collect(),
            lateness: (0..n).map(|_| AtomicI64::new(0)).collect(),
            woke: AtomicUsize::new(0),
            asleep: AtomicUsize::new(0),
            last_asleep: Mutex::new(None),
            extra_runs: AtomicUsize::new(0),
        }
    }

    fn due(&self, i: usize) -> SystemTime {
        self.t0 + Duration::from_secs_f64(i as f64 / RATE)
    }

    /// Records that key `i` started at `now` after its wake-up.
    fn woke(&self, i: usize, now: SystemTime) {
        let due = self.due(i);
        let late = match now.duration_since(due) {
            Ok(late) => late.as_nanos() as i64,
            Err(early) => -(early.duration().as_nanos() as i64),
        };
        self.lateness[i].store(late, Ordering::Relaxed);
        self.woke.fetch_add(1, Ordering::Release);
    }

    fn stats(&self) -> Stats {
        let n = self.phase.len();
        let mut late: Vec<i64> = self
            .lateness
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect();
        let starts: Vec<f64> = late
            .iter()
            .enumerate()
            .map(|(i, l)| i as f64 / RATE + *l as f64 / 1e9)
            .collect();
        // From the first due time (not the first start: a late start followed by a burst
        // would look faster than the due rate) to the last start.
        let last = starts.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        late.sort_unstable();
        let at = |p: f64| late[((n as f64 - 1.0) * p).round() as usize] as f64 / 1e6;
        Stats {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            early: late.iter().filter(|l| **l < 0).count(),
            achieved: (n - 1) as f64 / last,
        }
    }
}

#[derive(Clone, Copy)]
struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    early: usize,
    /// Wake-ups per second from the first due time to the last start.
    achieved: f64,
}

impl Stats {
    fn kept_up(&self) -> bool {
        self.achieved >= KEPT_UP * RATE
    }

    fn show(&self) -> String {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  woke at {:.0}/s of {RATE:.0}/s due ({}){}",
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.achieved,
            if self.kept_up() {
                "kept up"
            } else {
                "did NOT keep up"
            },
            if self.early > 0 {
                format!("  {} EARLY", self.early)
            } else {
                String::new()
            }
        )
    }
}

/// Runs the scenario on `backend` for each runtime flavour: `rounds` rounds of `n` keys.
pub(crate) fn run(backend: &Backend, n: usize, rounds: usize) {
    println!(
        "P9 wake-up lateness, {n} keys due at {RATE:.0}/s over {:.1} s, {} backend, one node, {rounds} rounds (median)  loadavg {}",
        n as f64 / RATE,
        backend.name(),
        loadavg()
    );
    for flavor in Flavor::BOTH {
        let runtime = flavor.runtime();
        runtime.block_on(flavour(backend, flavor, n, rounds));
    }
}

async fn flavour(backend: &Backend, flavor: Flavor, n: usize, rounds: usize) {
    let mut lead = backend.first_lead(n);
    let (mut subject, mut peer) = (Vec::new(), Vec::new());
    let mut all_kept_up = 0;
    for round in 1..=rounds {
        let (stats, setup) = match subject_round(backend, n, lead).await {
            Ok(done) => done,
            Err(e) => {
                println!("  P9 {} round {round}: {e}", flavor.name());
                continue;
            }
        };
        let p = peer_round(n).await;
        println!(
            "  P9 {:<15} round {round}  keyloop {}   setup {:.2} s (lead {:.2} s)  loadavg {}",
            flavor.name(),
            stats.show(),
            setup.as_secs_f64(),
            lead.as_secs_f64(),
            loadavg()
        );
        println!(
            "  P9 {:<15} round {round}  peer    {}",
            flavor.name(),
            p.show()
        );
        all_kept_up += usize::from(stats.kept_up());
        subject.push(stats);
        peer.push(p);
        // Later rounds need only the setup time measured, with a margin for a busier
        // machine (a round whose setup overruns its lead is discarded).
        lead = setup * 2 + Duration::from_secs(1);
    }
    if subject.is_empty() {
        return;
    }
    let med = |v: &[Stats], f: fn(&Stats) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (s50, s99, smax) = (
        med(&subject, |s| s.p50_ms),
        med(&subject, |s| s.p99_ms),
        med(&subject, |s| s.max_ms),
    );
    let (p50, p99, pmax) = (
        med(&peer, |s| s.p50_ms),
        med(&peer, |s| s.p99_ms),
        med(&peer, |s| s.max_ms),
    );
    println!(
        "  P9 {} {:<15} keyloop p50 {s50:.2} ms p99 {s99:.2} ms max {smax:.2} ms, woke {:.0}/s   peer (tokio sleep per key) p50 {p50:.2} ms p99 {p99:.2} ms max {pmax:.2} ms, woke {:.0}/s   ratio p50 {:.1}x p99 {:.1}x   kept up {all_kept_up}/{} rounds",
        backend.name(),
        flavor.name(),
        med(&subject, |s| s.achieved),
        med(&peer, |s| s.achieved),
        s50 / p50,
        s99 / p99,
        subject.len(),
    );
}

/// One round of keyloop; the stats and how long the setup (every key asleep) took.
async fn subject_round(
    backend: &Backend,
    n: usize,
    lead: Duration,
) -> Result<(Stats, Duration), String> {
    let coordinator = backend.coordinator().await;
    let started = SystemTime::now();
    let round = Arc::new(Round::new(n, lead));
    let controller = {
        let round = Arc::clone(&round);
        controller_fn(move |key, _ctx| {
            let now = SystemTime::now();
            let round = Arc::clone(&round);
            async move {
                let i: usize = key.as_str()[2..].parse()?;
                match round.phase[i].fetch_add(1, Ordering::AcqRel) {
                    0 => Ok(Decision::RequeueAt(round.due(i))),
                    1 => {
                        round.woke(i, now);
                        Ok(Decision::Complete)
                    }
                    _ => {
                        round.extra_runs.fetch_add(1, Ordering::Relaxed);
                        Ok(Decision::Complete)
                    }
                }
            }
        })
    };
    let listener = {
        let round = Arc::clone(&round);
        move |_key: &Key, status: &KeyStatus| {
            if matches!(status, KeyStatus::Sleeping { .. }) {
                *round.last_asleep.lock().unwrap() = Some(SystemTime::now());
                round.asleep.fetch_add(1, Ordering::Release);
            }
        }
    };
    let engine = Engine::builder(coordinator, controller)
        .node_name("p9")
        .config(|c| c.max_loops(n).status_listener(listener))
        .start()
        .await
        .map_err(|e| format!("engine start: {e}"))?;
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..n)
            .map(|i| Key::new(format!("w/{i}")).unwrap())
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in 0..TRIGGER_TASKS {
        let (keys, client) = (Arc::clone(&keys), engine.client());
        tasks.push(tokio::spawn(async move {
            for key in keys.iter().skip(t).step_by(TRIGGER_TASKS) {
                client.trigger(key).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let limit = lead + Duration::from_secs(120);
    crate::wait_for("P9 keys asleep", limit, || {
        round.asleep.load(Ordering::Acquire) == n
    })
    .await;
    let setup = round
        .last_asleep
        .lock()
        .unwrap()
        .unwrap()
        .duration_since(started)
        .unwrap_or_default();
    let overran = setup > lead;
    let window = Duration::from_secs_f64(n as f64 / RATE);
    crate::wait_for(
        "P9 wake-ups",
        lead + window + Duration::from_secs(120),
        || round.woke.load(Ordering::Acquire) == n,
    )
    .await;
    engine.shutdown().await;
    let extra = round.extra_runs.load(Ordering::Relaxed);
    if overran {
        return Err(format!(
            "setup took {:.2} s, longer than the lead of {:.2} s: early keys fell due before every key was asleep; round discarded",
            setup.as_secs_f64(),
            lead.as_secs_f64()
        ));
    }
    if extra > 0 {
        return Err(format!("{extra} unexpected extra runs; round discarded"));
    }
    Ok((round.stats(), setup))
}

/// One round of the peer: a tokio task per key sleeping until the same schedule.
async fn peer_round(n: usize) -> Stats {
    let round = Arc::new(Round::new(n, Duration::from_millis(500)));
    for i in 0..n {
        let round = Arc::clone(&round);
        tokio::spawn(async move {
            let left = round
                .due(i)
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left).await;
            round.woke(i, SystemTime::now());
        });
    }
    let limit = Duration::from_secs_f64(n as f64 / RATE) + Duration::from_secs(60);
    crate::wait_for("P9 peer wake-ups", limit, || {
        round.woke.load(Ordering::Acquire) == n
    })
    .await;
    round.stats()
}
