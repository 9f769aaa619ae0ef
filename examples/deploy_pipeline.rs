//! A deployment pipeline as a step flow, handed from one node to another half-way.
//!
//! The flow `deploy/v1` collects the service's actual state, waits for the collection,
//! compares it with the desired version, opens a change (retried: the change board is busy
//! at first), waits for the change to be accepted and for the rollout to finish, then
//! collects and validates the post-deploy state. Every system it talks to is simulated in
//! this file.
//!
//! Two nodes share an in-memory cluster. Node a starts the flow; while the flow waits for
//! the change to be accepted, node a shuts down gracefully and hands the key over; node b
//! resumes at the step after the last one saved and finishes. Each step's effect happens
//! once: one collection per phase, one change, one rollout.
//!
//! Run with `cargo run --example deploy_pipeline`. It finishes by itself in a few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop::flow::{FlowController, Poll, RetryPolicy, StepContext, StepFlow, Steps};
use keyloop::{Backoff, BoxError, Engine, Key, KeyStatus};
use serde::{Deserialize, Serialize};

/// The simulated outside world: an inventory that collects actual state, a change board
/// that accepts changes, and a rollout system that applies them.
#[derive(Default)]
struct World {
    inner: Mutex<WorldState>,
}

#[derive(Default)]
struct WorldState {
    running: HashMap<String, String>,
    next_id: u64,
    collections: HashMap<u64, Collection>,
    changes: HashMap<u64, Change>,
    change_requests: HashMap<String, u64>,
    busy_answers_left: u32,
    journal: Vec<String>,
}

struct Collection {
    service: String,
    polls_left: u32,
}

struct Change {
    service: String,
    version: String,
    review_polls_left: u32,
    rollout_percent: u32,
}

impl World {
    fn new() -> Arc<World> {
        let world = World::default();
        {
            let mut w = world.inner.lock().unwrap();
            w.running.insert("web".into(), "1.4.0".into());
            w.busy_answers_left = 1;
        }
        Arc::new(world)
    }

    fn note(w: &mut WorldState, line: String) {
        println!("    world: {line}");
        w.journal.push(line);
    }

    fn start_collection(&self, service: &str) -> u64 {
        let mut w = self.inner.lock().unwrap();
        w.next_id += 1;
        let id = w.next_id;
        w.collections.insert(
            id,
            Collection {
                service: service.into(),
                polls_left: 2,
            },
        );
        World::note(&mut w, format!("collection #{id} of {service} started"));
        id
    }

    /// The collected version once the collection is done.
    fn collection_result(&self, id: u64) -> Result<Option<String>, BoxError> {
        let mut w = self.inner.lock().unwrap();
        let c = w.collections.get_mut(&id).ok_or("no such collection")?;
        if c.polls_left > 0 {
            c.polls_left -= 1;
            return Ok(None);
        }
        let service = c.service.clone();
        Ok(w.running.get(&service).cloned())
    }

    /// Opens a change, idempotently per request id (a re-run step gets the same change).
    fn open_change(&self, request: &str, service: &str, version: &str) -> Result<u64, BoxError> {
        let mut w = self.inner.lock().unwrap();
        if w.busy_answers_left > 0 {
            w.busy_answers_left -= 1;
            World::note(&mut w, "change board busy, try again".into());
            return Err("change board busy".into());
        }
        if let Some(id) = w.change_requests.get(request) {
            return Ok(*id);
        }
        w.next_id += 1;
        let id = w.next_id;
        w.changes.insert(
            id,
            Change {
                service: service.into(),
                version: version.into(),
                review_polls_left: 5,
                rollout_percent: 0,
            },
        );
        w.change_requests.insert(request.into(), id);
        World::note(
            &mut w,
            format!("change #{id} opened: {service} -> {version}"),
        );
        Ok(id)
    }

    fn change_accepted(&self, id: u64) -> Result<bool, BoxError> {
        let mut w = self.inner.lock().unwrap();
        let c = w.changes.get_mut(&id).ok_or("no such change")?;
        if c.review_polls_left > 0 {
            c.review_polls_left -= 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Rollout progress in percent; the rollout advances by a quarter per poll.
    fn rollout_progress(&self, id: u64) -> Result<u32, BoxError> {
        let mut w = self.inner.lock().unwrap();
        let c = w.changes.get_mut(&id).ok_or("no such change")?;
        c.rollout_percent = (c.rollout_percent + 25).min(100);
        let (percent, service, version) = (c.rollout_percent, c.service.clone(), c.version.clone());
        if percent == 100 && w.running.get(&service) != Some(&version) {
            w.running.insert(service.clone(), version.clone());
            World::note(
                &mut w,
                format!("rollout of change #{id} done: {service} runs {version}"),
            );
        }
        Ok(percent)
    }

    /// How many times the open change's review was polled.
    fn review_polls(&self) -> Option<u32> {
        let w = self.inner.lock().unwrap();
        w.changes.values().next().map(|c| 5 - c.review_polls_left)
    }
}

/// The flow's running state, saved after every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deploy {
    service: String,
    desired: String,
    collection: Option<u64>,
    actual: Option<String>,
    change: Option<u64>,
    validated: bool,
}

fn say(cx: &StepContext, what: impl std::fmt::Display) {
    let epoch = cx.epoch().map(|e| e.to_string()).unwrap_or_default();
    println!("  [epoch {epoch}] {}: {what}", cx.step());
}

fn deploy_flow(world: &Arc<World>) -> StepFlow<Deploy> {
    let poll = Poll::every(Duration::from_millis(100));
    let w = Arc::clone(world);
    let collect = move |mut d: Deploy, cx: StepContext| {
        let id = w.start_collection(&d.service);
        say(&cx, format!("collection #{id}"));
        d.collection = Some(id);
        async move { Ok(d) }
    };
    let w = Arc::clone(world);
    let collected = move |d: Deploy, _cx: StepContext| {
        let done = d
            .collection
            .ok_or("no collection started")
            .map_err(BoxError::from)
            .and_then(|id| w.collection_result(id));
        async move { Ok(done?.is_some()) }
    };
    let w = Arc::clone(world);
    let read = move |mut d: Deploy, cx: StepContext| {
        let result = d
            .collection
            .ok_or_else(|| BoxError::from("no collection started"))
            .and_then(|id| w.collection_result(id));
        async move {
            d.actual = Some(result?.ok_or("collection not done")?);
            say(
                &cx,
                format!("{} runs {}", d.service, d.actual.as_deref().unwrap_or("?")),
            );
            Ok(d)
        }
    };
    let w = Arc::clone(world);
    let submit = move |mut d: Deploy, cx: StepContext| {
        let request = format!("{}@{}", d.service, d.desired);
        let opened = w.open_change(&request, &d.service, &d.desired);
        async move {
            let id = opened?;
            say(&cx, format!("change #{id} (attempt {})", cx.attempt()));
            d.change = Some(id);
            Ok(d)
        }
    };
    let w = Arc::clone(world);
    let accepted = move |d: Deploy, cx: StepContext| {
        let result = w.change_accepted(d.change.unwrap_or_default());
        if let Ok(false) = result {
            say(&cx, format!("not yet (poll {})", cx.poll() + 1));
        }
        async move { result }
    };
    let w = Arc::clone(world);
    let rolled_out = move |d: Deploy, cx: StepContext| {
        let result = w.rollout_progress(d.change.unwrap_or_default());
        if let Ok(percent) = result {
            say(&cx, format!("{percent}%"));
        }
        async move { Ok(result? == 100) }
    };
    let w = Arc::clone(world);
    let read_after = move |mut d: Deploy, cx: StepContext| {
        let result = d
            .collection
            .ok_or_else(|| BoxError::from("no collection started"))
            .and_then(|id| w.collection_result(id));
        async move {
            let running = result?.ok_or("collection not done")?;
            if running != d.desired {
                return Err(format!("{} runs {running}, wanted {}", d.service, d.desired).into());
            }
            say(&cx, format!("{} runs {running} as desired", d.service));
            d.actual = Some(running);
            d.validated = true;
            Ok(d)
        }
    };
    let retry = RetryPolicy::attempts(3).backoff(
        Backoff::builder()
            .initial(Duration::from_millis(50))
            .jitter(0.0)
            .build()
            .expect("valid backoff"),
    );
    StepFlow::builder("deploy", 1)
        .step("collect actual state", collect.clone())
        .wait_for_with("actual state collected", poll.clone(), collected.clone())
        .step("read actual state", read)
        .case(
            "change needed",
            |d: &Deploy| d.actual.as_deref() != Some(d.desired.as_str()),
            Steps::new()
                .retry(
                    "open change",
                    retry,
                    Steps::new().step("submit change", submit),
                )
                .wait_for_with("change accepted", poll.clone(), accepted)
                .wait_for_with("rollout finished", poll.clone(), rolled_out),
        )
        .step("collect post-deploy state", collect)
        .wait_for_with("post-deploy state collected", poll, collected)
        .step("validate post-deploy state", read_after)
        .build()
        .expect("a valid flow")
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) -> Result<(), BoxError> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| format!("timed out waiting for {what}").into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let world = World::new();
    let desired: HashMap<String, String> = [("web".to_string(), "1.5.0".to_string())].into();
    let controller = FlowController::new(deploy_flow(&world), move |key: &Key| {
        let service = key.as_str().trim_start_matches("deploy/").to_owned();
        let version = desired.get(&service).ok_or("no desired version")?.clone();
        Ok(Deploy {
            service,
            desired: version,
            collection: None,
            actual: None,
            change: None,
            validated: false,
        })
    });

    let cluster = keyloop::memory::MemoryCluster::new();
    let node_a = Engine::builder(cluster.coordinator(), controller.clone())
        .node_name("node-a")
        .shutdown_grace(Duration::from_secs(2))
        .start()
        .await?;
    println!("node-a starts deploy/web");
    node_a.trigger("deploy/web").await?;

    let node_b = Engine::builder(cluster.coordinator(), controller)
        .node_name("node-b")
        .shutdown_grace(Duration::from_secs(2))
        .start()
        .await?;
    // node-a owns the key; once the flow sits in the "change accepted" wait, node-a leaves.
    wait_until("the change review to be polled", async || {
        world.review_polls() >= Some(2)
    })
    .await?;
    println!("node-a shuts down while the flow waits for the change to be accepted");
    let report = node_a.shutdown().await;
    println!("node-a shut down, handed off {:?}", report.handed_off);

    let key = Key::new("deploy/web")?;
    wait_until("node-b to finish the flow", async || {
        matches!(node_b.status(&key).await, Ok(KeyStatus::NotRegistered))
    })
    .await?;
    node_b.shutdown().await;

    let w = world.inner.lock().unwrap();
    println!("web runs {}", w.running["web"]);
    assert_eq!(w.running["web"], "1.5.0");
    assert_eq!(
        w.changes.len(),
        1,
        "one change opened, whoever ran the step"
    );
    assert_eq!(w.collections.len(), 2, "one collection before, one after");
    println!(
        "deploy/web finished on node-b: {} actions in the world",
        w.journal.len()
    );
    Ok(())
}
