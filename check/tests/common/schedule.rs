//! Seeded fault schedules: several engines on one backend, a random mix of triggers and
//! faults chosen from a seed, then heal, wait for convergence and check the history.
//!
//! Shared by `tests/schedules_memory.rs` and `examples/schedules.rs` (through `#[path]`).
//! The choice of operations is deterministic per seed; their timing on a multi-thread
//! runtime is not, so a seed reproduces a schedule, not an interleaving.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyloop_check::{
    Behaviour, CheckReport, History, IgnoreShutdown, ReconcileWorkload, Recorder, check,
};
use keyloop_conformance::{Breakage, Faults, FaultyCoordinator};
use keyloop_core::{
    Backoff, Client, Coordinator, CoordinatorEvent, Defect, Engine, EngineConfig, Key,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

/// Which backend the schedules run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// keyloop-memory.
    Memory,
    /// keyloop-sled in a temporary directory.
    Sled,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sled => "sled",
        }
    }
}

/// What a schedule runs against.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: Backend,
    pub nodes: usize,
    pub keys: usize,
    pub ops: usize,
    pub ttl: Duration,
    /// A broken coordinator or engine (`Breakage::Engine(defect)`), to test the checker.
    pub breakage: Option<Breakage>,
    /// How long to wait for convergence once faults stop.
    pub settle_timeout: Duration,
}

/// Settings a schedule draws from its seed.
#[derive(Debug, Clone, Copy)]
struct Draw {
    /// Periodic resync: short, or past the schedule (then only events and failed calls
    /// make the engine re-read what it owns).
    resync_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Memory,
            nodes: 3,
            keys: 8,
            ops: 40,
            ttl: Duration::from_millis(600),
            breakage: None,
            settle_timeout: Duration::from_secs(5),
        }
    }
}

/// What one schedule did and what the checker found.
pub struct Outcome {
    pub seed: u64,
    pub ops: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub keys: usize,
    /// From the moment faults stopped to convergence (`None`: did not converge in time).
    pub convergence: Option<Duration>,
    pub report: CheckReport,
    pub history: History,
}

/// Makes coordinators of one backend namespace (a cluster, a sled store).
struct Namespace {
    make: Box<dyn Fn() -> Arc<dyn Coordinator> + Send + Sync>,
    _dir: Option<tempfile::TempDir>,
}

impl Namespace {
    fn new(backend: Backend) -> Namespace {
        match backend {
            Backend::Memory => {
                let cluster = keyloop_memory::MemoryCluster::new();
                Namespace {
                    make: Box::new(move || cluster.coordinator()),
                    _dir: None,
                }
            }
            Backend::Sled => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let store = keyloop_sled::SledStore::open(dir.path().join("keyloop"))
                    .expect("sled opens in a fresh directory");
                Namespace {
                    make: Box::new(move || store.coordinator()),
                    _dir: Some(dir),
                }
            }
        }
    }

    fn coordinator(&self) -> Arc<dyn Coordinator> {
        (self.make)()
    }
}

/// One node's place in the schedule: its engine while up.
struct Slot {
    name: String,
    up: Option<(Engine, Faults)>,
    /// A graceful shutdown under way.
    stopping: Option<tokio::task::JoinHandle<()>>,
}

struct World {
    options: Options,
    draw: Draw,
    ns: Namespace,
    workload: ReconcileWorkload,
    slots: Vec<Slot>,
    keys: Vec<Key>,
    triggers: JoinSet<()>,
    faults: BTreeMap<&'static str, usize>,
    /// Fault-ending timers (heartbeat stalls end after a while).
    timers: JoinSet<()>,
    /// Keys told to ignore graceful shutdown.
    ignoring: Vec<Key>,
}

impl World {
    fn config(&self, name: &str) -> EngineConfig {
        let ttl = self.options.ttl;
        let mut config = EngineConfig::builder()
            .node_name(name)
            .lease_ttl(ttl)
            .heartbeat_interval(ttl / 6)
            .fence_margin(ttl / 4)
            .claim_interval(ttl / 10)
            .shutdown_grace(ttl / 20)
            .abandon_timeout(ttl)
            .restart_backoff(
                Backoff::builder()
                    .initial(Duration::from_millis(5))
                    .max(ttl / 15)
                    .multiplier(2.0)
                    .jitter(0.0)
                    .build()
                    .expect("valid backoff"),
            )
            .healthy_run(ttl * 100)
            .max_failures(3)
            .handoff_avoid(ttl / 20)
            .resync_interval(self.draw.resync_interval);
        if let Some(defect) = self.options.breakage.and_then(|b| b.engine_defect()) {
            config = config.inject_defect(defect);
        }
        config
            .build()
            .expect("the schedule's engine settings are valid")
    }

    fn coordinator(&self) -> Arc<dyn Coordinator> {
        let plain = self.ns.coordinator();
        match self.options.breakage {
            Some(b) => b.wrap(plain),
            None => plain,
        }
    }

    async fn start(&mut self, i: usize) {
        let name = self.slots[i].name.clone();
        let (coordinator, faults) = FaultyCoordinator::wrap(self.coordinator());
        let engine = Engine::start(
            self.config(&name),
            coordinator,
            Arc::new(self.workload.controller()),
        )
        .await
        .unwrap_or_else(|e| panic!("node {name} could not start: {e}"));
        self.slots[i].up = Some((engine, faults));
    }

    fn count(&mut self, fault: &'static str) {
        *self.faults.entry(fault).or_default() += 1;
    }

    fn up(&self, i: usize) -> Option<&(Engine, Faults)> {
        self.slots[i].up.as_ref()
    }

    /// Triggers `key` through a random live engine, or a client if none is up; in the
    /// background, so that slow calls do not hold the schedule up.
    fn trigger(&mut self, rng: &mut StdRng, key: Key) {
        let workload = self.workload.clone();
        match self.live_engine(rng).filter(|_| rng.random_bool(0.9)) {
            Some(engine) => {
                self.triggers.spawn(async move {
                    let _ = workload.trigger(&engine, &key).await;
                });
            }
            None => {
                let client = Client::new(self.ns.coordinator());
                self.triggers.spawn(async move {
                    let _ = workload.trigger_with(&key, |k| client.trigger(k)).await;
                });
            }
        }
    }

    /// Triggers `key` now and every `ttl/20` over the next `ttl/2`, in the background.
    fn storm(&mut self, rng: &mut StdRng, key: &Key) {
        let ttl = self.options.ttl;
        for at in (0..10).map(|i| ttl.as_millis() * i / 20) {
            let Some(engine) = self.live_engine(rng) else {
                return;
            };
            let workload = self.workload.clone();
            let key = key.clone();
            self.triggers.spawn(async move {
                tokio::time::sleep(Duration::from_millis(at as u64)).await;
                let _ = workload.trigger(&engine, &key).await;
            });
        }
    }

    fn live_engine(&self, rng: &mut StdRng) -> Option<Engine> {
        let live: Vec<Engine> = self
            .slots
            .iter()
            .filter_map(|s| s.up.as_ref().map(|(e, _)| e.clone()))
            .collect();
        (!live.is_empty()).then(|| live[rng.random_range(0..live.len())].clone())
    }

    /// Runs one random operation.
    async fn step(&mut self, rng: &mut StdRng) {
        let key = self.keys[rng.random_range(0..self.keys.len())].clone();
        let i = rng.random_range(0..self.slots.len());
        let ttl = self.options.ttl;
        let roll = rng.random_range(0..100);
        if self.slots[i].up.is_none() {
            // A node that is down comes back now and then.
            if roll < 25 {
                if let Some(stopping) = self.slots[i].stopping.take() {
                    let _ = stopping.await;
                }
                self.start(i).await;
                self.count("restart");
                return;
            }
        }
        match roll {
            0..=34 => {
                self.trigger(rng, key);
            }
            35..=39 => {
                for _ in 0..rng.random_range(2..6) {
                    self.trigger(rng, key.clone());
                }
                self.count("trigger burst");
            }
            40..=49 => {
                let behaviour = match rng.random_range(0..5) {
                    0 => {
                        // Failing runs that work a while without watching for triggers,
                        // and triggers landing during them.
                        self.storm(rng, &key);
                        // Three failures park the key (max_failures), and the storm's
                        // last triggers land during the third run.
                        Behaviour {
                            fail_runs: 3,
                            work: ttl / 5,
                            ..Behaviour::default()
                        }
                    }
                    1 => Behaviour {
                        panic_runs: rng.random_range(1..3),
                        ..Behaviour::default()
                    },
                    2 => Behaviour {
                        on_shutdown: Some(IgnoreShutdown::Await(ttl / 6)),
                        linger: Some(ttl),
                        ..Behaviour::default()
                    },
                    3 => Behaviour {
                        // Below the fence margin, so a fenced node's blocked loop still
                        // ends before its lease can expire on the backend.
                        on_shutdown: Some(IgnoreShutdown::Block(ttl / 8)),
                        linger: Some(ttl),
                        ..Behaviour::default()
                    },
                    _ => Behaviour {
                        linger: Some(ttl * rng.random_range(1..5) / 6),
                        ..Behaviour::default()
                    },
                };
                let name = match &behaviour {
                    b if b.fail_runs > 0 => "loop fails",
                    b if b.panic_runs > 0 => "loop panics",
                    b if b.on_shutdown.is_some() => "loop ignores shutdown",
                    _ => "loop lingers",
                };
                if behaviour.on_shutdown.is_some() {
                    self.ignoring.push(key.clone());
                }
                self.workload.set_behaviour(&key, behaviour);
                self.count(name);
            }
            _ => self.fault(rng, i, roll).await,
        }
    }

    async fn fault(&mut self, rng: &mut StdRng, i: usize, roll: u32) {
        let ttl = self.options.ttl;
        // A graceful shutdown mostly hits a node running a loop that ignores it.
        let i = match roll {
            74..=77 if rng.random_bool(0.7) => {
                let target = self.slots.iter().position(|s| {
                    s.up.as_ref().is_some_and(|(e, _)| {
                        e.owned_keys().iter().any(|k| self.ignoring.contains(k))
                    })
                });
                if target.is_some() {
                    self.count("shutdown of a loop ignoring it");
                }
                target.unwrap_or(i)
            }
            _ => i,
        };
        let Some((engine, faults)) = self.up(i).cloned() else {
            return;
        };
        match roll {
            50..=54 => {
                let max = match rng.random_range(0..5) {
                    0 | 1 => None,
                    2 | 3 => Some(ttl / 30),
                    // Slow enough that answers (of `owned`, say) go stale on the way back.
                    4 if rng.random_bool(0.7) => Some(ttl / 10),
                    // A slow network: calls outlive the fence margin.
                    _ => Some(ttl / 2),
                };
                faults.delay_calls(max);
                self.count("call delays");
            }
            55..=59 => {
                faults.inject_resync();
                self.count("spurious resync");
            }
            60..=64 => {
                faults.drop_triggers(rng.random_bool(0.6));
                self.count("dropped triggers");
            }
            65..=69 => {
                // Stalls either shorter than the fence deadline, or past the TTL (the node
                // fences itself, the backend expires it, it re-joins afterwards).
                let stall = if rng.random_bool(0.5) {
                    ttl / 3
                } else {
                    ttl * 3 / 2
                };
                faults.stall_heartbeats();
                self.timers.spawn(async move {
                    tokio::time::sleep(stall).await;
                    faults.resume_heartbeats();
                });
                self.count("heartbeat stall");
            }
            70..=73 => {
                engine.kill();
                self.slots[i].up = None;
                self.count("node kill");
            }
            74..=77 => {
                self.slots[i].up = None;
                self.slots[i].stopping = Some(tokio::spawn(async move {
                    engine.shutdown().await;
                }));
                self.count("graceful shutdown");
            }
            78..=81 => {
                faults.lose_claim_answers(1);
                self.count("lost claim answer");
            }
            82..=85 => {
                faults.fail_calls(if rng.random_bool(0.6) { 50 } else { 0 });
                self.count("failing calls");
            }
            86..=89 => {
                faults.duplicate_events(rng.random_bool(0.6));
                self.count("duplicated events");
            }
            90..=93 if faults.joins() >= 2 => {
                let key = self.keys[rng.random_range(0..self.keys.len())].clone();
                faults.inject_into(0, CoordinatorEvent::OwnershipLost { key: None });
                faults.inject_into(0, CoordinatorEvent::OwnershipLost { key: Some(key) });
                faults.inject_into(0, CoordinatorEvent::Resync);
                self.count("stale incarnation events");
            }
            _ => {
                let key = self.keys[rng.random_range(0..self.keys.len())].clone();
                self.trigger(rng, key);
            }
        }
    }

    /// Ends every fault: heartbeats, delays, drops, failures, behaviours; every node up.
    async fn heal(&mut self) {
        self.workload.clear_behaviours();
        self.ignoring.clear();
        self.timers.abort_all();
        while self.timers.join_next().await.is_some() {}
        for i in 0..self.slots.len() {
            if let Some(stopping) = self.slots[i].stopping.take() {
                let _ = stopping.await;
            }
            match self.up(i) {
                Some((_, faults)) => {
                    faults.resume_heartbeats();
                    faults.delay_calls(None);
                    faults.drop_triggers(false);
                    faults.fail_calls(0);
                    faults.duplicate_events(false);
                }
                None => self.start(i).await,
            }
        }
        while self.triggers.join_next().await.is_some() {}
    }

    fn any_engine(&self) -> Engine {
        self.slots
            .iter()
            .find_map(|s| s.up.as_ref().map(|(e, _)| e.clone()))
            .expect("every node is up after healing")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Some((engine, _)) = &slot.up {
                engine.kill();
            }
        }
    }
}

/// Runs the schedule of `seed`. Call on a multi-thread runtime.
pub async fn run_schedule(seed: u64, options: &Options) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let draw = Draw {
        resync_interval: if rng.random_bool(0.5) {
            options.ttl / 6
        } else {
            Duration::from_secs(30)
        },
    };
    let recorder = Recorder::new();
    let workload = ReconcileWorkload::new(recorder.clone());
    let ns = Namespace::new(options.backend);
    let mut world = World {
        options: options.clone(),
        draw,
        ns,
        workload: workload.clone(),
        slots: (0..options.nodes)
            .map(|n| Slot {
                name: format!("n{n}"),
                up: None,
                stopping: None,
            })
            .collect(),
        keys: (0..options.keys)
            .map(|k| Key::new(format!("key/{k}")).unwrap())
            .collect(),
        triggers: JoinSet::new(),
        faults: BTreeMap::new(),
        timers: JoinSet::new(),
        ignoring: Vec::new(),
    };
    for i in 0..options.nodes {
        world.start(i).await;
    }
    // Half the keys have long-running loops (lingering for triggers) from the start.
    for key in world.keys.clone() {
        if rng.random_bool(0.5) {
            let linger = options.ttl * rng.random_range(1..7) / 4;
            workload.set_behaviour(
                &key,
                Behaviour {
                    linger: Some(linger),
                    ..Behaviour::default()
                },
            );
        }
    }
    for _ in 0..options.ops {
        world.step(&mut rng).await;
        let pause = Duration::from_millis(rng.random_range(0..15));
        tokio::time::sleep(pause).await;
    }
    // Every key gets one last trigger while faults still rage, then faults stop.
    for key in world.keys.clone() {
        world.trigger(&mut rng, key);
    }
    world.heal().await;
    let healed = Instant::now();
    let observer = world.ns.coordinator();
    let every = Duration::from_millis(5);
    let (progress, settled) = workload
        .wait_for(&*observer, options.settle_timeout, every, |p| p.settled())
        .await
        .expect("the backend answers once healed");
    let mut convergence = None;
    if settled.is_some() {
        // Keys parked after repeated failures (with their work done) resume on a trigger.
        let engine = world.any_engine();
        for key in &progress.parked {
            workload
                .trigger(&engine, key)
                .await
                .expect("a trigger after healing succeeds");
        }
        let (_, converged) = workload
            .wait_for(&*observer, options.settle_timeout, every, |p| p.converged())
            .await
            .expect("the backend answers once healed");
        convergence = converged.map(|_| healed.elapsed());
    }
    workload
        .settle(&*observer)
        .await
        .expect("the backend answers once healed");
    let faults = std::mem::take(&mut world.faults);
    drop(world);
    let history = recorder.history();
    Outcome {
        seed,
        ops: options.ops,
        faults,
        keys: options.keys,
        convergence,
        report: check(&history),
        history,
    }
}

/// Runs schedules of seeds `first..first + count` on a fresh multi-thread runtime, calling
/// `each` after every one; stops early when `each` returns `false`.
pub fn run_schedules(
    first: u64,
    count: u64,
    options: &Options,
    mut each: impl FnMut(Outcome) -> bool,
) {
    quiet_injected_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Loops that block their thread (ignoring shutdown) must not starve the engine.
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for seed in first..first + count {
        let outcome = runtime.block_on(run_schedule(seed, options));
        if !each(outcome) {
            break;
        }
    }
}

/// The seed to rerun from the environment (`KEYLOOP_CHECK_SEED`), if set.
pub fn seed_from_env() -> Option<u64> {
    let text = std::env::var("KEYLOOP_CHECK_SEED").ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("KEYLOOP_CHECK_SEED={text:?} is not a number")),
    )
}

/// Writes a failing schedule's history next to the temporary files, for reading.
pub fn save_history(outcome: &Outcome, label: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("keyloop-check-{label}-seed-{}.jsonl", outcome.seed));
    let file = std::fs::File::create(&path).expect("a history file");
    outcome
        .history
        .write_jsonl(std::io::BufWriter::new(file))
        .expect("the history is written");
    path
}

/// The engine defects a schedule may bring back.
pub fn defect_breakages() -> Vec<Breakage> {
    Defect::ALL.iter().map(|&d| Breakage::Engine(d)).collect()
}

/// Keeps the panics the schedules inject out of the output (every other panic is printed).
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"injected panic") {
                previous(info);
            }
        }));
    });
}
