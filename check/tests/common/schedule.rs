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
    /// How long a node passes itself over for a key it handed off outside shutdown.
    handoff_avoid: Duration,
    /// Consecutive failures that park a key (1: every failing run may park it).
    max_failures: u32,
    /// Steady trigger traffic over every key, besides the schedule's own triggers.
    traffic: bool,
    /// One kind of call slower than the others on every node until healed (a backend
    /// whose listing scans, whose claims contend), with its maximum delay.
    slow_call: Option<(&'static str, Duration)>,
}

impl Draw {
    fn new(rng: &mut StdRng, ttl: Duration) -> Draw {
        Draw {
            // The shortest the engine accepts (100 ms), or past the schedule.
            resync_interval: if rng.random_bool(0.5) {
                ttl / 6
            } else {
                Duration::from_secs(30)
            },
            handoff_avoid: if rng.random_bool(0.5) {
                ttl / 100
            } else {
                ttl / 20
            },
            max_failures: rng.random_range(1..=3),
            traffic: rng.random_bool(0.5),
            slow_call: match rng.random_range(0..6) {
                0..=2 => Some(("owned", ttl * rng.random_range(1..=3) / 12)),
                3 => Some(("release", ttl * rng.random_range(1..=3) / 12)),
                4 => Some(("claim", ttl * rng.random_range(1..=3) / 12)),
                _ => None,
            },
        }
    }
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
    /// The settings drawn from the seed.
    pub draw: String,
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
    /// Set when healing begins: storms of triggers stop.
    calm: tokio::sync::watch::Sender<bool>,
    /// Healing began: nodes start without faults.
    healed: bool,
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
            .max_failures(self.draw.max_failures)
            .handoff_avoid(self.draw.handoff_avoid)
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
        if let Some((call, max)) = self.draw.slow_call.filter(|_| !self.healed) {
            faults.delay_call(call, Some(max));
        }
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

    /// Triggers one of `keys` (picked at random) every `every` from now until a while
    /// after healing begins, in the background: users who keep asking for a key whose loop
    /// keeps failing, or steady traffic. Through a live engine (another one once it
    /// stops), or a client when none is up.
    fn storm(&mut self, rng: &mut StdRng, keys: Vec<Key>, every: Duration, tail: bool) {
        // Users of a failing key stop at different times once healing begins, so the last
        // trigger lands at any point of a failing run; steady traffic stops at once.
        let tail = if tail {
            self.options.ttl * rng.random_range(0..50) / 100
        } else {
            Duration::ZERO
        };
        let engines: Vec<Engine> = self
            .slots
            .iter()
            .filter_map(|s| s.up.as_ref().map(|(e, _)| e.clone()))
            .collect();
        let first = rng.random_range(0..engines.len().max(1));
        let client = Client::new(self.ns.coordinator());
        let workload = self.workload.clone();
        let mut picks = StdRng::seed_from_u64(rng.random());
        let mut calm = self.calm.subscribe();
        self.triggers.spawn(async move {
            let mut tick = 0;
            let mut until: Option<tokio::time::Instant> = None;
            loop {
                if until.is_none() && *calm.borrow_and_update() {
                    until = Some(tokio::time::Instant::now() + tail);
                }
                if until.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    break;
                }
                let key = keys[picks.random_range(0..keys.len())].clone();
                let engine = (0..engines.len())
                    .map(|i| &engines[(first + tick + i) % engines.len()])
                    .find(|e| e.is_running());
                let _ = match engine {
                    Some(engine) => workload.trigger(engine, &key).await,
                    None => workload.trigger_with(&key, |k| client.trigger(k)).await,
                };
                tick += 1;
                match until {
                    Some(at) => {
                        tokio::time::sleep_until(at.min(tokio::time::Instant::now() + every)).await
                    }
                    None => {
                        tokio::select! {
                            _ = tokio::time::sleep(every) => {}
                            _ = calm.changed() => {}
                        }
                    }
                }
            }
        });
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
            0..=27 => {
                self.trigger(rng, key);
            }
            28..=32 => {
                for _ in 0..rng.random_range(2..6) {
                    self.trigger(rng, key.clone());
                }
                self.count("trigger burst");
            }
            33..=49 => {
                let behaviour = match rng.random_range(0..8) {
                    0 | 1 => {
                        // A dependency breaks: every pass fails after working a while
                        // without watching for triggers, until healed, and users keep
                        // triggering the key meanwhile, so triggers land during failing
                        // runs (the last ones too: the storm lasts until healing).
                        self.storm(rng, vec![key.clone()], ttl / 20, true);
                        Behaviour {
                            fail_runs: u32::MAX,
                            work: ttl / 5,
                            ..Behaviour::default()
                        }
                    }
                    2 => Behaviour {
                        panic_runs: rng.random_range(1..3),
                        ..Behaviour::default()
                    },
                    3 => Behaviour {
                        on_shutdown: Some(IgnoreShutdown::Await(ttl / 6)),
                        linger: Some(ttl * 3 / 2),
                        ..Behaviour::default()
                    },
                    4 | 5 => Behaviour {
                        // Past the grace period, but at most the fence margin, so a fenced
                        // node's blocked loop still ends before its lease can expire on
                        // the backend.
                        on_shutdown: Some(IgnoreShutdown::Block(
                            ttl * rng.random_range(5..=8) / 40,
                        )),
                        linger: Some(ttl * 3 / 2),
                        ..Behaviour::default()
                    },
                    6 => Behaviour {
                        linger: Some(ttl * rng.random_range(1..5) / 6),
                        ..Behaviour::default()
                    },
                    _ => Behaviour {
                        // The loop asks to continue elsewhere (G7a) after a while, a few
                        // times in a row or until healed (no node has what it needs).
                        continue_runs: if rng.random_bool(0.5) {
                            rng.random_range(1..4)
                        } else {
                            u32::MAX
                        },
                        linger: Some(ttl * rng.random_range(1..=3) / 12),
                        ..Behaviour::default()
                    },
                };
                let name = match &behaviour {
                    b if b.fail_runs > 0 => "loop fails",
                    b if b.panic_runs > 0 => "loop panics",
                    b if b.on_shutdown.is_some() => "loop ignores shutdown",
                    b if b.continue_runs > 0 => "loop continues elsewhere",
                    _ => "loop lingers",
                };
                self.ignoring.retain(|k| *k != key);
                if behaviour.on_shutdown.is_some() {
                    self.ignoring.push(key.clone());
                }
                self.workload.set_behaviour(&key, behaviour);
                self.count(name);
                // What changed the loop's behaviour (a new version of what it reconciles)
                // comes with a trigger.
                self.trigger(rng, key);
            }
            _ => self.fault(rng, i, roll).await,
        }
    }

    async fn fault(&mut self, rng: &mut StdRng, i: usize, roll: u32) {
        let ttl = self.options.ttl;
        // A graceful shutdown mostly hits a node running a loop that ignores it.
        let i = match roll {
            72..=77 if rng.random_bool(0.8) => {
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
            50..=54 if rng.random_bool(0.4) => {
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
            50..=54 => {
                // One kind of call much slower than the others (a listing that scans, a
                // contended claim): its answers go stale on the way back while the quick
                // calls (releases, other nodes' claims) move on.
                let call = match rng.random_range(0..5) {
                    0 | 1 => "owned",
                    2 => "release",
                    3 => "claim",
                    _ => "claim_key",
                };
                let max = ttl * rng.random_range(1..=4) / 6;
                faults.delay_call(call, Some(max));
                if rng.random_bool(0.5) {
                    faults.delay_calls(Some(ttl / 100));
                }
                self.count(match call {
                    "owned" => "slow owned calls",
                    "release" => "slow release calls",
                    "claim" => "slow claim calls",
                    _ => "slow claim_key calls",
                });
            }
            55..=59 => {
                faults.inject_resync();
                self.count("spurious resync");
            }
            60..=64 => {
                faults.drop_triggers(rng.random_bool(0.6));
                self.count("dropped triggers");
            }
            65..=68 => {
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
            69..=71 => {
                engine.kill();
                self.slots[i].up = None;
                self.count("node kill");
            }
            72..=77 => {
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

    /// Ends every fault: storms of triggers, heartbeats, delays, drops, failures,
    /// behaviours; every node up.
    async fn heal(&mut self) {
        // Storms end first, while their keys still fail: their last triggers land during
        // failing runs.
        self.calm.send_replace(true);
        while self.triggers.join_next().await.is_some() {}
        self.healed = true;
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
                    faults.clear_delays();
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
    let draw = Draw::new(&mut rng, options.ttl);
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
        calm: tokio::sync::watch::channel(false).0,
        healed: false,
    };
    for i in 0..options.nodes {
        world.start(i).await;
    }
    // Half the keys have long-running loops (lingering for triggers) from the start, and
    // half of those ask to continue elsewhere (G7a) whenever they are done, until healed:
    // they keep moving between nodes.
    for key in world.keys.clone() {
        if rng.random_bool(0.5) {
            let (linger, continue_runs) = if rng.random_bool(0.5) {
                // Each node keeps it a short while.
                (options.ttl * rng.random_range(1..=3) / 24, u32::MAX)
            } else {
                (options.ttl * rng.random_range(1..7) / 4, 0)
            };
            workload.set_behaviour(
                &key,
                Behaviour {
                    linger: Some(linger),
                    continue_runs,
                    ..Behaviour::default()
                },
            );
        }
    }
    if draw.traffic {
        world.storm(&mut rng, world.keys.clone(), options.ttl / 80, false);
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
        draw: format!("{draw:?}"),
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
        .worker_threads(6)
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
