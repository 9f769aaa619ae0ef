//! Model-based test: random interleavings of triggers, loop decisions (complete, continue,
//! error, waiting for a trigger), node crashes, stalls, graceful shutdowns, restarts and
//! spurious resyncs — under tokio's paused time (many cases, single thread) and on a
//! multi-thread runtime with real time (fewer cases, real races) — checked against the
//! guarantees:
//!
//! - G1: never two live loops of one key at once; epochs strictly increase per key;
//! - G3: every trigger is followed by a loop start or an observed trigger for its key;
//! - G5/G6: once the faults stop, every registered key runs (and completes) while a live
//!   node exists.
//!
//! 1,000 paused and 16 multi-thread cases run in the normal test run; `PROPTEST_CASES=100000
//! cargo test --release -p keyloop-memory --test model` runs 100,000 paused cases, and
//! `PROPTEST_CASES_MT=1000` as many multi-thread ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{
    BoxError, Controller, Decision, Engine, EngineConfig, Epoch, Key, LoopContext, Wake,
    async_trait,
};
use keyloop_memory::MemoryCluster;
use proptest::prelude::*;

const NODES: usize = 3;
const KEYS: usize = 4;

/// The timings of one flavour of the model: paused time runs them as written; real time
/// scales them down so a case takes a second or two.
#[derive(Debug, Clone, Copy)]
struct Timing {
    ttl: Duration,
    /// Multiplies every other duration of the model (advances, slow work, intervals).
    scale: f64,
}

const PAUSED: Timing = Timing {
    ttl: Duration::from_secs(2),
    scale: 1.0,
};

const REAL: Timing = Timing {
    ttl: Duration::from_millis(400),
    scale: 0.1,
};

impl Timing {
    fn of(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 * self.scale / 1000.0)
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Complete,
    /// Works a while (triggers may arrive unobserved), then completes.
    SlowComplete,
    Continue,
    Fail,
    WaitTrigger,
}

#[derive(Debug, Clone)]
enum Op {
    Trigger(usize),
    Advance(u64),
    Crash(usize),
    Stall(usize),
    Unstall(usize),
    Restart(usize),
    Shutdown(usize),
    Resync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS).prop_map(Op::Trigger),
        4 => (0u64..3_000).prop_map(Op::Advance),
        1 => (0..NODES).prop_map(Op::Crash),
        1 => (0..NODES).prop_map(Op::Stall),
        1 => (0..NODES).prop_map(Op::Unstall),
        1 => (0..NODES).prop_map(Op::Restart),
        1 => (0..NODES).prop_map(Op::Shutdown),
        1 => Just(Op::Resync),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Complete),
        Just(Action::SlowComplete),
        Just(Action::Continue),
        Just(Action::Fail),
        Just(Action::WaitTrigger),
    ]
}

#[derive(Debug, Clone)]
enum Event {
    TriggerBegan(Key),
    Start(Key, Epoch),
    Observed(Key),
    End(Key, Epoch),
}

#[derive(Default)]
struct Log {
    events: Mutex<Vec<Event>>,
}

impl Log {
    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

struct Scripted {
    log: Arc<Log>,
    script: Vec<Action>,
    next: AtomicUsize,
    settle: Arc<AtomicBool>,
    timing: Timing,
}

/// Records the end of a run even when its task is aborted (crash, abandonment).
struct EndGuard {
    log: Arc<Log>,
    key: Key,
    epoch: Epoch,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.log.push(Event::End(self.key.clone(), self.epoch));
    }
}

#[async_trait]
impl Controller for Scripted {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        self.log.push(Event::Start(key.clone(), ctx.epoch()));
        let _guard = EndGuard {
            log: Arc::clone(&self.log),
            key: key.clone(),
            epoch: ctx.epoch(),
        };
        if self.settle.load(Ordering::SeqCst) {
            return Ok(Decision::Complete);
        }
        let action = self.script[self.next.fetch_add(1, Ordering::SeqCst) % self.script.len()];
        match action {
            Action::Complete => Ok(Decision::Complete),
            Action::SlowComplete => {
                tokio::time::sleep(self.timing.of(300)).await;
                Ok(Decision::Complete)
            }
            Action::Continue => Ok(Decision::Continue),
            Action::Fail => Err("scripted failure".into()),
            Action::WaitTrigger => match ctx.next().await {
                Wake::Triggered => {
                    self.log.push(Event::Observed(key));
                    Ok(Decision::Complete)
                }
                Wake::Shutdown(_) => Ok(Decision::Continue),
            },
        }
    }
}

struct World {
    cluster: MemoryCluster,
    controller: Arc<Scripted>,
    engines: Vec<Option<Engine>>,
    timing: Timing,
}

impl World {
    async fn start_node(&mut self, slot: usize) {
        let t = self.timing;
        let config = EngineConfig::builder()
            .node_name(format!("n{slot}"))
            .max_loops(KEYS)
            .lease_ttl(t.ttl)
            .claim_interval(t.of(100))
            .handoff_avoid(t.of(100))
            .max_failures(1000)
            .restart_backoff(
                keyloop_core::Backoff::builder()
                    .initial(t.of(10).max(Duration::from_millis(1)))
                    .max(t.of(200))
                    .build()
                    .unwrap(),
            )
            .shutdown_grace(t.of(1000))
            .abandon_timeout(t.of(1000))
            .resync_interval(t.of(5000).max(Duration::from_millis(100)))
            .build()
            .unwrap();
        let engine = Engine::start(
            config,
            self.cluster.coordinator(),
            Arc::clone(&self.controller) as Arc<dyn Controller>,
        )
        .await
        .unwrap();
        self.engines[slot] = Some(engine);
    }
}

async fn simulate(ops: Vec<Op>, script: Vec<Action>, timing: Timing) -> Result<(), TestCaseError> {
    if std::env::var_os("MODEL_DEBUG").is_some() {
        eprintln!("case: ops={ops:?} script={script:?}");
    }
    let log = Arc::new(Log::default());
    let settle = Arc::new(AtomicBool::new(false));
    let mut world = World {
        cluster: MemoryCluster::new(),
        controller: Arc::new(Scripted {
            log: Arc::clone(&log),
            script,
            next: AtomicUsize::new(0),
            settle: Arc::clone(&settle),
            timing,
        }),
        engines: (0..NODES).map(|_| None).collect(),
        timing,
    };
    for slot in 0..NODES {
        world.start_node(slot).await;
    }
    let keys: Vec<Key> = (0..KEYS)
        .map(|i| Key::new(format!("k{i}")).unwrap())
        .collect();
    let client = keyloop_core::Client::new(world.cluster.coordinator());

    for op in ops {
        match op {
            Op::Trigger(k) => {
                log.push(Event::TriggerBegan(keys[k].clone()));
                client.trigger(&keys[k]).await.unwrap();
            }
            Op::Advance(ms) => tokio::time::sleep(timing.of(ms)).await,
            Op::Crash(n) => {
                if let Some(engine) = world.engines[n].take() {
                    engine.kill();
                }
            }
            Op::Stall(n) => {
                if let Some(id) = world.engines[n].as_ref().and_then(Engine::node_id) {
                    world.cluster.stall(id);
                }
            }
            Op::Unstall(n) => {
                // The node may have re-joined under a new id since it was stalled.
                if world.engines[n].is_some() {
                    world.cluster.resume_everyone();
                }
            }
            Op::Restart(n) => {
                if world.engines[n].is_none() {
                    world.start_node(n).await;
                }
            }
            Op::Shutdown(n) => {
                if let Some(engine) = world.engines[n].take() {
                    engine.shutdown().await;
                }
            }
            Op::Resync => world.cluster.resync_all(),
        }
        tokio::task::yield_now().await;
    }

    // Settle: faults stop, every node is live, loops complete at once.
    settle.store(true, Ordering::SeqCst);
    world.cluster.resume_everyone();
    for n in 0..NODES {
        if world.engines[n].is_none() {
            world.start_node(n).await;
        }
    }
    // Wake loops that wait for a trigger so they complete.
    for key in &keys {
        if world.cluster.is_registered(key) {
            log.push(Event::TriggerBegan(key.clone()));
            client.trigger(key).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + timing.of(60_000).max(Duration::from_secs(20));
    while world.cluster.registered() > 0 {
        prop_assert!(
            tokio::time::Instant::now() < deadline,
            "G5/G6: keys still registered after settling: {:?}",
            client.inspect().await.unwrap().keys
        );
        tokio::time::sleep(timing.of(50)).await;
    }

    check(&log.events.lock().unwrap())?;
    for engine in world.engines.into_iter().flatten() {
        engine.shutdown().await;
    }
    Ok(())
}

fn check(events: &[Event]) -> Result<(), TestCaseError> {
    // G1: one live loop per key; epochs strictly increase.
    let mut running: HashMap<Key, Epoch> = HashMap::new();
    let mut last_epoch: HashMap<Key, Epoch> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Start(key, epoch) => {
                if let Some(other) = running.get(key) {
                    // The same epoch re-running on its owner (after Retriggered or a restart
                    // with backoff) starts only after its previous run ended.
                    prop_assert!(
                        false,
                        "G1: {key} started at epoch {epoch} while epoch {other} runs (event {i})"
                    );
                }
                if let Some(last) = last_epoch.get(key) {
                    prop_assert!(
                        epoch >= last,
                        "G1: epoch of {key} went back from {last} to {epoch}"
                    );
                }
                running.insert(key.clone(), *epoch);
                last_epoch.insert(key.clone(), *epoch);
            }
            Event::End(key, epoch) if running.get(key) == Some(epoch) => {
                running.remove(key);
            }
            _ => {}
        }
    }
    // Strictly increasing across owners: a new epoch never repeats an old one.
    let mut seen: HashMap<Key, Vec<Epoch>> = HashMap::new();
    for event in events {
        if let Event::Start(key, epoch) = event {
            let list = seen.entry(key.clone()).or_default();
            if list.last() != Some(epoch) {
                prop_assert!(!list.contains(epoch), "G1: epoch {epoch} of {key} reused");
                list.push(*epoch);
            }
        }
    }
    // G3: every trigger is followed by a start or an observation for its key.
    for (i, event) in events.iter().enumerate() {
        if let Event::TriggerBegan(key) = event {
            let followed = events[i + 1..].iter().any(|e| match e {
                Event::Start(k, _) | Event::Observed(k) => k == key,
                _ => false,
            });
            prop_assert!(followed, "G3: trigger of {key} (event {i}) was lost");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn guarantees_hold_under_random_interleavings(
        ops in proptest::collection::vec(op(), 1..40),
        script in proptest::collection::vec(action(), 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(simulate(ops, script, PAUSED))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES_MT").ok().and_then(|c| c.parse().ok()).unwrap_or(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn guarantees_hold_on_a_multi_thread_runtime(
        ops in proptest::collection::vec(op(), 1..40),
        script in proptest::collection::vec(action(), 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(simulate(ops, script, REAL))?;
    }
}
