//! A small keyloop cluster in one process: three nodes share one backend, a controller
//! "provisions" virtual machines, keys are triggered and re-triggered, and one node shuts
//! down gracefully so its keys move to the others.
//!
//! Run with `cargo run --example quickstart`. It finishes by itself. The backend is the
//! embedded sled store in a temporary directory; `cargo run --example quickstart -- DIR`
//! keeps the data in `DIR` (run it twice to see the registry survive), and
//! `-- --memory` uses the in-memory backend.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyloop::{
    BoxError, Controller, Coordinator, Decision, Engine, Key, KeyStatus, LoopContext, Wake,
    async_trait,
};
use serde::{Deserialize, Serialize};

/// What the controller remembers per VM (saved through keyloop's fenced state).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Vm {
    provisioned: bool,
    reconciles: u64,
}

#[derive(Default)]
struct Counters {
    loops_started: AtomicU64,
    wakeups: AtomicU64,
    provisioned: AtomicU64,
}

struct Provisioner {
    counters: Arc<Counters>,
}

#[async_trait]
impl Controller for Provisioner {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        self.counters.loops_started.fetch_add(1, Ordering::Relaxed);
        let mut vm: Vm = ctx.state().load_json().await?.unwrap_or_default();
        if !vm.provisioned {
            // Pretend to call a cloud API.
            tokio::time::sleep(Duration::from_millis(20)).await;
            vm.provisioned = true;
            self.counters.provisioned.fetch_add(1, Ordering::Relaxed);
        }
        vm.reconciles += 1;
        ctx.state().save_json(&vm).await?;
        if key.as_str().starts_with("job/") {
            // One-shot work: done once provisioned.
            return Ok(Decision::Complete);
        }
        loop {
            match ctx.next().await {
                Wake::Triggered => {
                    self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                    // Reconcile again: compare desired with actual and act.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    vm.reconciles += 1;
                    ctx.state().save_json(&vm).await?;
                }
                // Persisted after every step, so another node can take over now.
                Wake::Shutdown(_) => return Ok(Decision::Continue),
            }
        }
    }
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args().nth(1);
    let (backend, new_coordinator): (String, Box<dyn Fn() -> Arc<dyn Coordinator>>) =
        match arg.as_deref() {
            Some("--memory") => {
                let cluster = keyloop::memory::MemoryCluster::new();
                ("memory".into(), Box::new(move || cluster.coordinator()))
            }
            Some(dir) => {
                let store = keyloop::sled::SledStore::open(dir)?;
                (
                    format!("sled in {dir}"),
                    Box::new(move || store.coordinator() as Arc<dyn Coordinator>),
                )
            }
            None => {
                let store = keyloop::sled::SledStore::temporary()?;
                (
                    "sled in a temporary directory".into(),
                    Box::new(move || store.coordinator() as Arc<dyn Coordinator>),
                )
            }
        };
    println!("backend: {backend}");
    let counters = Arc::new(Counters::default());

    let mut engines = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let coordinator = new_coordinator();
        let engine = Engine::builder(
            coordinator,
            Provisioner {
                counters: Arc::clone(&counters),
            },
        )
        .node_name(name)
        .max_loops(12)
        .lease_ttl(Duration::from_secs(3))
        .shutdown_grace(Duration::from_secs(5))
        .start()
        .await?;
        engines.push(engine);
    }
    let client = engines[0].client();

    // A batch of VMs (long-running loops) and one-shot jobs.
    let vms: Vec<String> = (1..=24).map(|i| format!("vm/{i:02}")).collect();
    let jobs: Vec<String> = (1..=6).map(|i| format!("job/{i}")).collect();
    for key in vms.iter().chain(&jobs) {
        client.trigger(key).await?;
    }
    println!("triggered {} vms and {} jobs", vms.len(), jobs.len());

    wait_until("every vm to run and every job to complete", async || {
        let snapshot = client.inspect().await.unwrap();
        let running = snapshot.keys.iter().filter(|k| k.owner.is_some()).count();
        running == vms.len() && snapshot.keys.len() == vms.len()
    })
    .await;

    // Re-trigger some VMs in bursts: the loops coalesce them.
    let mut retriggers = 0;
    for key in vms.iter().take(8) {
        for _ in 0..10 {
            client.trigger(key).await?;
            retriggers += 1;
        }
    }
    wait_until("re-triggered vms to reconcile", async || {
        counters.wakeups.load(Ordering::Relaxed) >= 8
    })
    .await;

    let owners_before = owners(&engines);
    // Shut one node down gracefully: its loops return `Continue` and the other nodes pick
    // their keys up at once.
    let leaving = engines.remove(0);
    let report = leaving.shutdown().await;
    println!(
        "{} shut down in {:?}: handed off {} keys, abandoned {}",
        leaving.node_name(),
        report.elapsed,
        report.handed_off.len(),
        report.abandoned.len()
    );
    wait_until(
        "handed-off keys to run on the remaining nodes",
        async || engines.iter().map(Engine::owned_count).sum::<usize>() == vms.len(),
    )
    .await;

    println!();
    println!("summary");
    println!(
        "  loops started:         {}",
        counters.loops_started.load(Ordering::Relaxed)
    );
    println!(
        "  vms provisioned:       {}",
        counters.provisioned.load(Ordering::Relaxed)
    );
    println!(
        "  re-triggers sent:      {retriggers}, loop wake-ups: {} (coalesced {})",
        counters.wakeups.load(Ordering::Relaxed),
        retriggers as u64
            - counters
                .wakeups
                .load(Ordering::Relaxed)
                .min(retriggers as u64)
    );
    println!("  keys handed off:       {}", report.handed_off.len());
    println!("  owners before handoff: {owners_before:?}");
    println!("  owners after handoff:  {:?}", owners(&engines));
    let status = client.status(vms[0].as_str()).await?;
    println!("  status of {}:         {status}", vms[0]);
    let jobs_done = {
        let mut done = 0;
        for job in &jobs {
            if client.status(job.as_str()).await? == KeyStatus::NotRegistered {
                done += 1;
            }
        }
        done
    };
    println!("  jobs completed:        {jobs_done}/{}", jobs.len());

    for engine in engines {
        engine.shutdown().await;
    }
    Ok(())
}

fn owners(engines: &[Engine]) -> BTreeMap<String, usize> {
    engines
        .iter()
        .map(|e| (e.node_name().to_string(), e.owned_count()))
        .collect()
}
