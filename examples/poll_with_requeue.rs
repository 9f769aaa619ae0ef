//! A controller that polls an external system through requeues instead of sleeping in its
//! task.
//!
//! Three "builds" run in a simulated CI system that finishes each after a few polls. The
//! loop for a build asks the system once per run: while the build is still running it
//! returns `Decision::RequeueAfter(..)`, so the key is released and sleeps with its wake-up
//! stored by the backend (no task, no loop slot, no lease); when the build is done it
//! returns `Complete`. Two nodes share one sled store in a temporary directory, so any node
//! may take the next poll.
//!
//! Run with `cargo run --example poll_with_requeue`. It finishes by itself in about a
//! second and prints every poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop::{BoxError, Controller, Coordinator, Decision, Engine, Key, LoopContext, async_trait};

const POLL_EVERY: Duration = Duration::from_millis(100);

/// The simulated CI system: each build needs a number of polls before it reports done.
struct CiSystem {
    polls_left: Mutex<HashMap<String, u32>>,
    journal: Mutex<Vec<String>>,
}

struct BuildWatcher {
    ci: Arc<CiSystem>,
}

#[async_trait]
impl Controller for BuildWatcher {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let done = {
            let mut left = self.ci.polls_left.lock().unwrap();
            let polls = left.entry(key.as_str().to_owned()).or_insert(0);
            *polls = polls.saturating_sub(1);
            *polls == 0
        };
        let line = format!(
            "{} polled on {}: {}",
            key.as_str(),
            ctx.node(),
            if done { "done" } else { "still running" }
        );
        println!("{line}");
        self.ci.journal.lock().unwrap().push(line);
        if done {
            Ok(Decision::Complete)
        } else {
            // Released now; any node runs it again once the delay has passed.
            Ok(Decision::RequeueAfter(POLL_EVERY))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builds = [("build/1", 2), ("build/2", 4), ("build/3", 3)];
    let ci = Arc::new(CiSystem {
        polls_left: Mutex::new(builds.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()),
        journal: Mutex::new(Vec::new()),
    });
    let store = keyloop::sled::SledStore::temporary()?;
    let mut engines = Vec::new();
    for name in ["node-a", "node-b"] {
        let coordinator = store.coordinator() as Arc<dyn Coordinator>;
        assert!(coordinator.limits().durable_wake_ups);
        let engine = Engine::builder(
            coordinator,
            BuildWatcher {
                ci: Arc::clone(&ci),
            },
        )
        .node_name(name)
        .lease_ttl(Duration::from_secs(3))
        .start()
        .await?;
        engines.push(engine);
    }
    let client = engines[0].client();
    for (key, _) in builds {
        client.trigger(key).await?;
    }

    // Every build completes: the registry drains.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let snapshot = client.inspect().await?;
        if snapshot.keys.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("builds still registered: {:?}", snapshot.keys).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let polls = ci.journal.lock().unwrap().len();
    let expected: u32 = builds.iter().map(|(_, n)| n).sum();
    println!(
        "{polls} polls for {} builds; every build finished",
        builds.len()
    );
    if polls != expected as usize {
        return Err(format!("expected {expected} polls, saw {polls}").into());
    }
    for engine in engines {
        engine.shutdown().await;
    }
    Ok(())
}
