//! Crash-point property: stop the owner at every event (inside steps, between a step's
//! effect and its save, between steps) and resume from the saved state on a new owner.
//!
//! Steps are at least once only inside an interrupted step, so the property is:
//! - the effects whose completion was saved, in order, are exactly the effects of an
//!   uninterrupted run (a saved step never runs again, no step is skipped);
//! - an effect whose save did not happen is redone next, by the next owner;
//! - the final state equals the uninterrupted run's.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{Backoff, Bytes, CancellationToken, StateError, async_trait};
use keyloop_flow::{
    FlowContext, FlowState, MemoryOwner, MemoryStateStore, Poll, RetryPolicy, StepContext,
    StepFlow, Steps,
};
use proptest::prelude::*;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Start(String),
    Effect(String),
    Failed(String),
    Poll,
    SaveBegin,
    Saved,
    Crash,
}

#[derive(Clone)]
struct Log {
    events: Arc<Mutex<Vec<Ev>>>,
    len: watch::Sender<usize>,
}

impl Log {
    fn new() -> Log {
        Log {
            events: Arc::default(),
            len: watch::channel(0).0,
        }
    }

    fn push(&self, ev: Ev) {
        let mut events = self.events.lock().unwrap();
        events.push(ev);
        self.len.send_replace(events.len());
    }

    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }
}

/// A flow context that logs its saves and yields around them, so a crash can land between
/// a step's effect and its save.
struct LoggedOwner {
    inner: MemoryOwner,
    log: Log,
}

#[async_trait]
impl FlowContext for LoggedOwner {
    async fn load_state(&self) -> Result<Option<Bytes>, StateError> {
        self.inner.load_state().await
    }

    async fn save_state(&self, state: Bytes) -> Result<(), StateError> {
        self.log.push(Ev::SaveBegin);
        tokio::task::yield_now().await;
        self.inner.save_state(state).await?;
        self.log.push(Ev::Saved);
        tokio::task::yield_now().await;
        Ok(())
    }

    fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancellation_token()
    }
}

type Data = Vec<String>;
type StepFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Data, keyloop_core::BoxError>> + Send>,
>;

fn effect(
    log: &Log,
    name: &'static str,
) -> impl Fn(Data, StepContext) -> StepFuture + Send + Sync + 'static {
    let log = log.clone();
    move |mut data: Data, cx: StepContext| {
        let log = log.clone();
        Box::pin(async move {
            let id = format!("{name}#{}", cx.iteration());
            log.push(Ev::Start(id.clone()));
            tokio::task::yield_now().await;
            if name == "flaky" && cx.attempt() == 1 {
                // Fails on the first attempt of its retry, whoever runs it.
                log.push(Ev::Failed(id));
                tokio::task::yield_now().await;
                return Err("first attempt fails".into());
            }
            log.push(Ev::Effect(id.clone()));
            tokio::task::yield_now().await;
            data.push(id);
            Ok(data)
        })
    }
}

fn flow(log: &Log, polls: Arc<AtomicU32>) -> StepFlow<Data> {
    let fixed = Backoff::builder()
        .initial(Duration::from_millis(50))
        .jitter(0.0)
        .build()
        .unwrap();
    let poll_log = log.clone();
    StepFlow::builder("crashy", 1)
        .step("collect", effect(log, "collect"))
        .wait_for_with(
            "ready",
            Poll::every(Duration::from_millis(100)),
            move |_: Data, _cx| {
                let log = poll_log.clone();
                let n = polls.fetch_add(1, Ordering::SeqCst);
                async move {
                    log.push(Ev::Poll);
                    tokio::task::yield_now().await;
                    Ok(n >= 2)
                }
            },
        )
        .case(
            "taken",
            |d: &Data| d.len() == 1,
            Steps::new()
                .step("open", effect(log, "open"))
                .step("merge", effect(log, "merge")),
        )
        .case(
            "skipped",
            |d: &Data| d.is_empty(),
            Steps::new().step("never", effect(log, "never")),
        )
        .loop_until(
            "rollout",
            |d: &Data| d.len() >= 7,
            Steps::new()
                .step("wave", effect(log, "wave"))
                .step("check", effect(log, "check")),
        )
        .retry(
            "verify",
            RetryPolicy::attempts(3).backoff(fixed),
            Steps::new()
                .step("probe", effect(log, "probe"))
                .step("flaky", effect(log, "flaky")),
        )
        .step("done", effect(log, "done"))
        .build()
        .unwrap()
}

struct Outcome {
    events: Vec<Ev>,
    state: FlowState<Data>,
    owners: usize,
}

/// Runs the flow to completion, crashing the current owner whenever the log reaches the next
/// crash point.
fn run_with_crashes(crash_points: &[usize]) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let log = Log::new();
        let flow = flow(&log, Arc::new(AtomicU32::new(0)));
        let store = MemoryStateStore::new();
        let mut points = crash_points.iter().copied();
        let mut next_crash = points.next();
        let mut owners = 0;
        loop {
            owners += 1;
            let owner = LoggedOwner {
                inner: store.acquire(),
                log: log.clone(),
            };
            let mut len = log.len.subscribe();
            let crash = async {
                match next_crash {
                    Some(at) => {
                        len.wait_for(|n| *n >= at).await.unwrap();
                    }
                    None => std::future::pending().await,
                }
            };
            let work = tokio::time::timeout(Duration::from_secs(3600), flow.run(&owner, vec![]));
            tokio::select! {
                biased;
                () = crash => {
                    log.push(Ev::Crash);
                    next_crash = points.next();
                }
                result = work => {
                    let state = result.expect("flow finishes").expect("flow succeeds");
                    assert!(state.is_completed());
                    return Outcome { events: log.events(), state, owners };
                }
            }
        }
    })
}

/// Splits a log into the effects whose completion was saved and those cut off by a crash,
/// checking that every cut-off effect is redone next.
fn committed_effects(events: &[Ev]) -> Vec<String> {
    let mut committed = vec![];
    let mut pending: Option<String> = None;
    let mut must_redo: Option<String> = None;
    for ev in events {
        match ev {
            Ev::Effect(id) => {
                if let Some(redo) = must_redo.take() {
                    assert_eq!(&redo, id, "a step cut off after its effect is redone next");
                }
                assert!(pending.is_none(), "an effect without its save before {id}");
                pending = Some(id.clone());
            }
            Ev::Saved => committed.extend(pending.take()),
            Ev::Crash => {
                if let Some(id) = pending.take() {
                    must_redo = Some(id);
                }
            }
            Ev::Start(_) => assert!(
                pending.is_none(),
                "a step started before the last was saved"
            ),
            Ev::Failed(_) | Ev::Poll | Ev::SaveBegin => {}
        }
    }
    assert!(pending.is_none() && must_redo.is_none());
    committed
}

fn check(crash_points: &[usize], baseline: &Outcome) {
    let run = run_with_crashes(crash_points);
    let committed = committed_effects(&run.events);
    let expected = committed_effects(&baseline.events);
    assert_eq!(committed, expected, "crash points {crash_points:?}");
    assert_eq!(run.state, baseline.state, "crash points {crash_points:?}");
    let crashes = run.events.iter().filter(|e| **e == Ev::Crash).count();
    assert_eq!(run.owners, crashes + 1);
}

fn baseline() -> Outcome {
    let outcome = run_with_crashes(&[]);
    assert_eq!(outcome.owners, 1);
    outcome
}

#[test]
fn uninterrupted_run_is_as_designed() {
    let outcome = baseline();
    assert_eq!(
        outcome.state.data(),
        &[
            "collect#0",
            "open#0",
            "merge#0",
            "wave#0",
            "check#0",
            "wave#1",
            "check#1",
            "probe#0",
            "probe#0",
            "flaky#0",
            "done#0"
        ]
    );
    // The retry re-ran "probe" by design: the effects log shows it twice.
    let committed = committed_effects(&outcome.events);
    assert_eq!(committed.iter().filter(|e| *e == "probe#0").count(), 2);
    assert_eq!(outcome.events.iter().filter(|e| **e == Ev::Poll).count(), 3);
}

#[test]
fn a_crash_at_every_event_resumes_exactly() {
    let baseline = baseline();
    let len = baseline.events.len();
    assert!(len > 40 && len < 150, "log of {len} events");
    for at in 1..=len {
        check(&[at], &baseline);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn repeated_crashes_resume_exactly(points in prop::collection::btree_set(1usize..150, 0..6)) {
        let baseline = baseline();
        let points: Vec<usize> = points.into_iter().collect();
        check(&points, &baseline);
    }
}
