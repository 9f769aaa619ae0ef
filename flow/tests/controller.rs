//! FlowController and PlanController inside real engines on the in-memory backend.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{BoxError, Engine, Key, KeyStatus, async_trait};
use keyloop_flow::{
    BoxTask, FlowController, Plan, PlanController, PlanExecutor, Poll, StepFlow, Task, TaskContext,
};
use keyloop_memory::MemoryCluster;
use serde::{Deserialize, Serialize};

/// Every step effect, per key.
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<Vec<(String, String)>>>);

impl Effects {
    fn push(&self, key: &str, step: &str) {
        self.0.lock().unwrap().push((key.into(), step.into()));
    }

    fn steps_of(&self, key: &str) -> Vec<String> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|e| e.0 == key)
            .map(|e| e.1.clone())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    key: String,
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn retired(engine: &Engine, key: &str) -> bool {
    engine.status(key).await.unwrap() == KeyStatus::NotRegistered
}

/// prepare → wait for the gate → apply → verify. The gate lets a test hold the flow in the
/// middle, in a wait, where a handoff saves nothing new.
fn flow(effects: &Effects, gate: Arc<AtomicBool>) -> StepFlow<Job> {
    let step = |name: &'static str| {
        let effects = effects.clone();
        move |job: Job, _cx| {
            effects.push(&job.key, name);
            async move { Ok(job) }
        }
    };
    StepFlow::builder("job", 1)
        .step("prepare", step("prepare"))
        .wait_for_with(
            "gate",
            Poll::every(Duration::from_millis(100)),
            move |_, _cx| {
                let open = gate.load(Ordering::SeqCst);
                async move { Ok(open) }
            },
        )
        .step("apply", step("apply"))
        .step("verify", step("verify"))
        .build()
        .unwrap()
}

fn controller(flow: StepFlow<Job>) -> FlowController<Job> {
    FlowController::new(flow, |key: &Key| {
        Ok(Job {
            key: key.to_string(),
        })
    })
}

#[tokio::test(start_paused = true)]
async fn one_engine_drives_many_flows_to_completion() {
    let cluster = MemoryCluster::new();
    let effects = Effects::default();
    let gate = Arc::new(AtomicBool::new(true));
    let engine = Engine::builder(cluster.coordinator(), controller(flow(&effects, gate)))
        .node_name("solo")
        .start()
        .await
        .unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("job/{i}")).collect();
    for key in &keys {
        engine.trigger(key.as_str()).await.unwrap();
    }
    for key in &keys {
        wait_until("the flow to complete and the key to retire", async || {
            effects.steps_of(key).len() == 3
        })
        .await;
    }
    for key in &keys {
        wait_until("the key to retire", async || retired(&engine, key).await).await;
        assert_eq!(effects.steps_of(key), ["prepare", "apply", "verify"]);
    }
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_hands_the_flow_over_mid_way() {
    let cluster = MemoryCluster::new();
    let effects = Effects::default();
    let gate = Arc::new(AtomicBool::new(false));
    let a = Engine::builder(
        cluster.coordinator(),
        controller(flow(&effects, gate.clone())),
    )
    .node_name("a")
    .start()
    .await
    .unwrap();
    a.trigger("job/handoff").await.unwrap();
    wait_until("node a to prepare", async || {
        effects.steps_of("job/handoff") == ["prepare"]
    })
    .await;

    let b = Engine::builder(
        cluster.coordinator(),
        controller(flow(&effects, gate.clone())),
    )
    .node_name("b")
    .start()
    .await
    .unwrap();
    let report = a.shutdown().await;
    assert_eq!(report.handed_off, [Key::new("job/handoff").unwrap()]);
    let key = Key::new("job/handoff").unwrap();
    wait_until("node b to own the key", async || {
        b.owned_keys().contains(&key)
    })
    .await;
    gate.store(true, Ordering::SeqCst);
    wait_until("node b to finish", async || {
        effects.steps_of("job/handoff").len() == 3
    })
    .await;
    // Each step exactly once: b resumed after "prepare", it did not run it again.
    assert_eq!(
        effects.steps_of("job/handoff"),
        ["prepare", "apply", "verify"]
    );
    wait_until("the key to retire", async || {
        retired(&b, "job/handoff").await
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_owner_flow_resumes_on_another_node() {
    let cluster = MemoryCluster::new();
    let effects = Effects::default();
    let gate = Arc::new(AtomicBool::new(false));
    let a = Engine::builder(
        cluster.coordinator(),
        controller(flow(&effects, gate.clone())),
    )
    .node_name("a")
    .lease_ttl(Duration::from_secs(3))
    .start()
    .await
    .unwrap();
    a.trigger("job/crash").await.unwrap();
    wait_until("node a to prepare", async || {
        effects.steps_of("job/crash") == ["prepare"]
    })
    .await;
    let b = Engine::builder(
        cluster.coordinator(),
        controller(flow(&effects, gate.clone())),
    )
    .node_name("b")
    .lease_ttl(Duration::from_secs(3))
    .start()
    .await
    .unwrap();
    a.kill();
    let key = Key::new("job/crash").unwrap();
    wait_until("node b to take the key over", async || {
        b.owned_keys().contains(&key)
    })
    .await;
    gate.store(true, Ordering::SeqCst);
    wait_until("node b to take over and finish", async || {
        effects.steps_of("job/crash").len() == 3
    })
    .await;
    assert_eq!(
        effects.steps_of("job/crash"),
        ["prepare", "apply", "verify"]
    );
    b.shutdown().await;
}

/// A plan that needs `want` units; each task adds one.
struct Fill {
    have: Arc<AtomicU32>,
    want: u32,
}

struct AddOne(Arc<AtomicU32>);

#[async_trait]
impl Task for AddOne {
    fn name(&self) -> String {
        "add-one".into()
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(vec![])
    }
}

#[async_trait]
impl Plan for Fill {
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
        Ok(if self.have.load(Ordering::SeqCst) < self.want {
            vec![Box::new(AddOne(self.have.clone()))]
        } else {
            vec![]
        })
    }
}

#[tokio::test(start_paused = true)]
async fn plan_controller_completes_the_key_when_the_plan_is_done() {
    let cluster = MemoryCluster::new();
    let have = Arc::new(AtomicU32::new(0));
    let executor = PlanExecutor::builder()
        .round_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let shared = have.clone();
    let controller = PlanController::new(executor, move |_key: &Key| {
        Ok(Fill {
            have: shared.clone(),
            want: 5,
        })
    });
    let engine = Engine::builder(cluster.coordinator(), controller)
        .start()
        .await
        .unwrap();
    engine.trigger("vm/1").await.unwrap();
    wait_until("the plan to finish", async || {
        have.load(Ordering::SeqCst) == 5
    })
    .await;
    wait_until("the key to retire", async || retired(&engine, "vm/1").await).await;
    assert_eq!(have.load(Ordering::SeqCst), 5);
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_in_the_middle_of_a_step_drops_it_and_the_next_owner_reruns_it() {
    let cluster = MemoryCluster::new();
    let calls = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let make = || {
        let (calls, finished) = (calls.clone(), finished.clone());
        let flow = StepFlow::builder("slow", 1)
            .step("first", |n: u32, _cx| async move { Ok(n + 1) })
            .step("hang-once", move |n: u32, _cx| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                let finished = finished.clone();
                async move {
                    if first {
                        // Hangs until the shutdown drops it.
                        std::future::pending::<()>().await;
                    }
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(n + 1)
                }
            })
            .build()
            .unwrap();
        FlowController::new(flow, |_key: &Key| Ok(0))
    };
    let a = Engine::builder(cluster.coordinator(), make())
        .node_name("a")
        .start()
        .await
        .unwrap();
    a.trigger("job/slow").await.unwrap();
    wait_until("node a to be inside the step", async || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let b = Engine::builder(cluster.coordinator(), make())
        .node_name("b")
        .start()
        .await
        .unwrap();
    let report = a.shutdown().await;
    assert_eq!(report.handed_off, [Key::new("job/slow").unwrap()]);
    assert!(
        report.abandoned.is_empty(),
        "the step was dropped, not waited for"
    );
    wait_until("the key to retire", async || retired(&b, "job/slow").await).await;
    // The interrupted step ran again on b and finished once.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_trigger_ends_a_flow_wait_early() {
    let cluster = MemoryCluster::new();
    let polls = Arc::new(AtomicU32::new(0));
    let seen = polls.clone();
    let flow = StepFlow::builder("slow-poll", 1)
        .wait_for_with(
            "ready",
            Poll::every(Duration::from_secs(3600)),
            move |_: u32, _cx| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move { Ok(n >= 1) }
            },
        )
        .build()
        .unwrap();
    let engine = Engine::builder(
        cluster.coordinator(),
        FlowController::new(flow, |_: &Key| Ok(0)),
    )
    .start()
    .await
    .unwrap();
    engine.trigger("job/poll").await.unwrap();
    wait_until("the first poll", async || polls.load(Ordering::SeqCst) == 1).await;
    let start = tokio::time::Instant::now();
    engine.trigger("job/poll").await.unwrap();
    wait_until("the key to retire", async || {
        retired(&engine, "job/poll").await
    })
    .await;
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "polled on the trigger, not after an hour"
    );
    engine.shutdown().await;
}

/// A plan that never finishes: one slow task per round.
struct Forever {
    performed: Arc<AtomicU32>,
}

struct Slow(Arc<AtomicU32>);

#[async_trait]
impl Task for Slow {
    fn name(&self) -> String {
        "slow".into()
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(vec![])
    }
}

#[async_trait]
impl Plan for Forever {
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
        Ok(vec![Box::new(Slow(self.performed.clone()))])
    }
}

#[tokio::test(start_paused = true)]
async fn plan_controller_hands_off_on_shutdown() {
    let cluster = MemoryCluster::new();
    let performed = Arc::new(AtomicU32::new(0));
    let make = || {
        let performed = performed.clone();
        let executor = PlanExecutor::builder()
            .round_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        PlanController::new(executor, move |_key: &Key| {
            Ok(Forever {
                performed: performed.clone(),
            })
        })
    };
    let a = Engine::builder(cluster.coordinator(), make())
        .node_name("a")
        .start()
        .await
        .unwrap();
    a.trigger("vm/forever").await.unwrap();
    wait_until("a few rounds", async || {
        performed.load(Ordering::SeqCst) >= 3
    })
    .await;
    let b = Engine::builder(cluster.coordinator(), make())
        .node_name("b")
        .start()
        .await
        .unwrap();
    let report = a.shutdown().await;
    assert_eq!(report.handed_off, [Key::new("vm/forever").unwrap()]);
    assert!(report.abandoned.is_empty());
    let key = Key::new("vm/forever").unwrap();
    wait_until("node b to run the plan", async || {
        b.owned_keys().contains(&key)
    })
    .await;
    let before = performed.load(Ordering::SeqCst);
    wait_until("node b to make progress", async || {
        performed.load(Ordering::SeqCst) > before
    })
    .await;
    b.shutdown().await;
}
