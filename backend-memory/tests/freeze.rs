//! A process frozen past its lease (SIGSTOP, a VM pause, a long stall) and then resumed
//! must not act on the keys it owned before its lease keeper gets to run: loops judge the
//! lease synchronously, and get their shutdown signal rather than being cut off.
//!
//! The freeze is real: a task blocks the only thread of a current-thread runtime for twice
//! the lease TTL, so no task runs and every timer is overdue when it returns — then the
//! loops' own timers fire before the lease keeper's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{Decision, Defect, Engine, EngineConfigBuilder, NodeId, controller_fn};
use keyloop_memory::MemoryCluster;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A write to the outside world, made after checking `ctx.is_owner()`.
    Write { node: NodeId, at: Instant },
    /// The loop saw it must stop and returned.
    Stopped { node: NodeId },
}

const LOOPS: usize = 20;
const TTL: Duration = Duration::from_secs(1);

async fn run_frozen(
    adjust: impl FnOnce(EngineConfigBuilder) -> EngineConfigBuilder,
) -> (Vec<Seen>, Instant) {
    let cluster = MemoryCluster::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let controller = {
        let seen = Arc::clone(&seen);
        controller_fn(move |_key, ctx| {
            let seen = Arc::clone(&seen);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let node = ctx.node();
                    if ctx.is_owner() {
                        seen.lock().unwrap().push(Seen::Write {
                            node,
                            at: Instant::now(),
                        });
                    } else {
                        seen.lock().unwrap().push(Seen::Stopped { node });
                        return Ok(Decision::Continue);
                    }
                }
            }
        })
    };
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| adjust(c.lease_ttl(TTL).claim_interval(Duration::from_millis(50))))
        .start()
        .await
        .unwrap();
    for i in 0..LOOPS {
        engine.trigger(format!("frozen/{i}")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.owned_count() < LOOPS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every loop runs");
    // Freeze the whole runtime for twice the TTL.
    std::thread::sleep(TTL * 2);
    let thawed = Instant::now();
    // Let the loops and the lease keeper run after the thaw.
    tokio::time::sleep(TTL / 2).await;
    engine.kill();
    let seen = seen.lock().unwrap().clone();
    (seen, thawed)
}

/// The incarnation that ran before the freeze: the node of the first record.
fn frozen_node(seen: &[Seen]) -> NodeId {
    match seen[0] {
        Seen::Write { node, .. } | Seen::Stopped { node } => node,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn loops_resumed_after_a_freeze_do_not_act_and_see_their_signal() {
    let (seen, thawed) = run_frozen(|c| c).await;
    let frozen = frozen_node(&seen);
    let late_writes = seen
        .iter()
        .filter(|s| matches!(s, Seen::Write { node, at } if *node == frozen && *at >= thawed))
        .count();
    assert_eq!(
        late_writes, 0,
        "writes by the frozen incarnation after the thaw"
    );
    let stopped = seen
        .iter()
        .filter(|s| matches!(s, Seen::Stopped { node } if *node == frozen))
        .count();
    assert_eq!(
        stopped, LOOPS,
        "every loop of the frozen incarnation sees that it must stop (none is cut off)"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_test_catches_loops_that_trust_a_stale_lease() {
    let (seen, thawed) = run_frozen(|c| c.inject_defect(Defect::LoopsIgnoreLeaseClock)).await;
    let frozen = frozen_node(&seen);
    let late_writes = seen
        .iter()
        .filter(|s| matches!(s, Seen::Write { node, at } if *node == frozen && *at >= thawed))
        .count();
    assert!(
        late_writes > 0,
        "with loops ignoring the lease clock, the frozen incarnation writes after the thaw"
    );
}

/// A loop waiting out its restart backoff when the process freezes must not run again
/// after the thaw: the backoff's timer fires before the lease keeper's, and the runner must
/// judge the lease itself before it restarts the controller.
///
/// Seen in the PostgreSQL real-process runs (seed 1050): a loop failed during a server
/// restart, its node was frozen (SIGSTOP) during the backoff, and on SIGCONT the engine
/// started the loop again at its old epoch, 57 µs before the lease keeper fenced, while
/// another node had run the key at a higher epoch.
#[tokio::test(flavor = "current_thread")]
async fn loops_in_backoff_across_a_freeze_do_not_restart() {
    let cluster = MemoryCluster::new();
    let starts: Arc<Mutex<Vec<(NodeId, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let controller = {
        let starts = Arc::clone(&starts);
        controller_fn(move |_key, ctx| {
            let starts = Arc::clone(&starts);
            async move {
                starts.lock().unwrap().push((ctx.node(), Instant::now()));
                if ctx.failures() == 0 {
                    return Err("fails once, then waits out its backoff".into());
                }
                ctx.shutdown().await;
                Ok(Decision::Continue)
            }
        })
    };
    let backoff = keyloop_core::Backoff::builder()
        .initial(TTL / 2)
        .max(TTL / 2)
        .build()
        .unwrap();
    let engine = Engine::builder(cluster.coordinator(), controller)
        .config(|c| {
            c.lease_ttl(TTL)
                .claim_interval(Duration::from_millis(50))
                .restart_backoff(backoff)
        })
        .start()
        .await
        .unwrap();
    for i in 0..LOOPS {
        engine.trigger(format!("backoff/{i}")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while starts.lock().unwrap().len() < LOOPS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every loop runs and fails once");
    let frozen = starts.lock().unwrap()[0].0;
    // Freeze the whole runtime for twice the TTL: every backoff ends during the freeze.
    std::thread::sleep(TTL * 2);
    let thawed = Instant::now();
    tokio::time::sleep(TTL / 2).await;
    engine.kill();
    let late = starts
        .lock()
        .unwrap()
        .iter()
        .filter(|(node, at)| *node == frozen && *at >= thawed)
        .count();
    assert_eq!(
        late, 0,
        "runs started by the frozen incarnation after the thaw, at its stale epochs"
    );
}
