//! Behaviour of step flows driven through the in-memory state store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{Backoff, StateError};
use keyloop_flow::{
    BuildError, FlowContext, FlowError, FlowStatus, MemoryStateStore, Poll, RetryPolicy, StepFlow,
    Steps,
};
use tokio::time::Instant;

type Done = Vec<String>;

fn push(
    name: &'static str,
) -> impl Fn(Done, keyloop_flow::StepContext) -> std::future::Ready<Result<Done, keyloop_core::BoxError>>
+ Send
+ Sync
+ 'static {
    move |mut d: Done, _cx| {
        d.push(name.to_owned());
        std::future::ready(Ok(d))
    }
}

fn no_jitter(initial_ms: u64) -> Backoff {
    Backoff::builder()
        .initial(Duration::from_millis(initial_ms))
        .max(Duration::from_secs(60))
        .multiplier(2.0)
        .jitter(0.0)
        .build()
        .unwrap()
}

#[test]
fn build_rejects_bad_flows() {
    let err = StepFlow::<Done>::builder("f", 1).build().unwrap_err();
    assert!(matches!(err, BuildError::EmptyFlow { .. }), "{err}");
    assert_eq!(err.to_string(), "flow f/v1 has no steps");

    let err = StepFlow::builder("f", 1)
        .step("a", push("a"))
        .step("a", push("a"))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::DuplicateStep { ref step, .. } if step == "a"),
        "{err}"
    );

    let err = StepFlow::builder("f", 1)
        .step("a", push("a"))
        .case("c", |_: &Done| true, Steps::new().step("a", push("a")))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::DuplicateStep { ref step, .. } if step == "a"),
        "nested duplicate: {err}"
    );

    let err = StepFlow::builder("f", 1)
        .case("c", |_: &Done| true, Steps::new())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, BuildError::EmptyBlock { ref step, .. } if step == "c"),
        "{err}"
    );

    let err = StepFlow::builder("f", 1)
        .retry(
            "r",
            RetryPolicy::attempts(0),
            Steps::new().step("a", push("a")),
        )
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::ZeroAttempts { .. }), "{err}");

    let err = StepFlow::builder("f", 1)
        .wait_for_with("w", Poll::every(Duration::ZERO), |_: Done, _cx| async {
            Ok(true)
        })
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::BadPoll { .. }), "{err}");

    let err = StepFlow::builder("f", 1)
        .wait_for_with(
            "w",
            Poll::every(Duration::from_secs(1)).max_polls(0),
            |_: Done, _cx| async { Ok(true) },
        )
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::BadPoll { .. }), "{err}");

    let err = StepFlow::builder("f", 1)
        .step("", push("a"))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::BadStepName { .. }), "{err}");

    let err = StepFlow::builder("", 1)
        .step("a", push("a"))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::BadFlowName(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn steps_run_in_order_and_state_is_saved_after_each() {
    let flow = StepFlow::builder("seq", 1)
        .step("a", push("a"))
        .step("b", push("b"))
        .step("c", push("c"))
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let state = flow
        .apply(&store.acquire(), flow.start(vec![]))
        .await
        .unwrap();
    assert!(flow.is_completed(&state));
    assert_eq!(state.data(), &["a", "b", "c"]);
    // One save per step, plus the completion.
    assert_eq!(store.saves(), 4);
    let saved = flow.decode(&store.saved().unwrap()).unwrap();
    assert_eq!(saved, state);
    // Applying a completed flow does nothing.
    let again = flow.apply(&store.acquire(), saved).await.unwrap();
    assert_eq!(again.status(), FlowStatus::Completed);
    assert_eq!(store.saves(), 4);
}

#[tokio::test(start_paused = true)]
async fn wait_for_polls_with_backoff_until_true() {
    let polls = Arc::new(AtomicU32::new(0));
    let seen = polls.clone();
    let flow = StepFlow::builder("wait", 1)
        .wait_for_with(
            "ready",
            Poll::with_backoff(no_jitter(100)),
            move |_: Done, cx| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                assert_eq!(cx.poll(), n, "the poll counter is saved in the state");
                async move { Ok(n == 3) }
            },
        )
        .step("after", push("after"))
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let owner = store.acquire();
    let mut state = flow.start(vec![]);
    let mut waits = vec![];
    loop {
        state = flow.apply(&owner, state).await.unwrap();
        match state.status() {
            FlowStatus::Waiting(d) => {
                waits.push(d);
                assert_eq!(flow.current_step(&state), Some("ready"));
            }
            FlowStatus::Completed => break,
            FlowStatus::Ready => panic!("not cancelled"),
        }
    }
    assert_eq!(waits, [100, 200, 400].map(Duration::from_millis));
    assert_eq!(polls.load(Ordering::SeqCst), 4);
    assert_eq!(state.data(), &["after"]);

    // `run` sleeps through the waits: 100 + 200 + 400 ms of (paused) time.
    polls.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let state = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap();
    assert!(state.is_completed());
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn wait_for_gives_up_after_max_polls() {
    let flow = StepFlow::builder("wait", 1)
        .wait_for_with(
            "never",
            Poll::every(Duration::from_secs(1)).max_polls(3),
            |_: Done, _cx| async { Ok(false) },
        )
        .build()
        .unwrap();
    let err = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, FlowError::PollsExhausted { polls: 3, .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn case_runs_its_steps_only_when_the_condition_holds() {
    let flow = StepFlow::builder("case", 1)
        .step("a", push("a"))
        .case(
            "yes",
            |d: &Done| d.len() == 1,
            Steps::new().step("y1", push("y1")).step("y2", push("y2")),
        )
        .case(
            "no",
            |d: &Done| d.is_empty(),
            Steps::new().step("n1", push("n1")),
        )
        .step("z", push("z"))
        .build()
        .unwrap();
    let state = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap();
    assert_eq!(state.data(), &["a", "y1", "y2", "z"]);
}

#[tokio::test(start_paused = true)]
async fn loop_until_repeats_its_steps() {
    let flow = StepFlow::builder("loop", 1)
        .loop_until(
            "three",
            |d: &Done| d.len() >= 6,
            Steps::new()
                .step("x", |mut d: Done, cx| async move {
                    d.push(format!("x{}", cx.iteration()));
                    Ok(d)
                })
                .step("y", |mut d: Done, cx| async move {
                    d.push(format!("y{}", cx.iteration()));
                    Ok(d)
                }),
        )
        .loop_until(
            "skipped",
            |_: &Done| true,
            Steps::new().step("never", push("never")),
        )
        .build()
        .unwrap();
    let state = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap();
    assert_eq!(state.data(), &["x0", "y0", "x1", "y1", "x2", "y2"]);
}

/// A step that fails until it has been called `failures` times.
fn flaky(
    name: &'static str,
    failures: u32,
    calls: Arc<AtomicU32>,
    attempts: Arc<Mutex<Vec<u32>>>,
) -> impl Fn(Done, keyloop_flow::StepContext) -> std::future::Ready<Result<Done, keyloop_core::BoxError>>
+ Send
+ Sync
+ 'static {
    move |mut d: Done, cx| {
        attempts.lock().unwrap().push(cx.attempt());
        if calls.fetch_add(1, Ordering::SeqCst) < failures {
            return std::future::ready(Err(format!("{name} failed").into()));
        }
        d.push(name.to_owned());
        std::future::ready(Ok(d))
    }
}

#[tokio::test(start_paused = true)]
async fn retry_reruns_the_block_from_its_start_with_backoff() {
    let calls = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(vec![]));
    let flow = StepFlow::builder("retry", 1)
        .step("before", push("before"))
        .retry(
            "r",
            RetryPolicy::attempts(3).backoff(no_jitter(1000)),
            Steps::new()
                .step("first", push("first"))
                .step("flaky", flaky("flaky", 2, calls.clone(), attempts.clone())),
        )
        .step("after", push("after"))
        .build()
        .unwrap();
    let start = Instant::now();
    let state = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap();
    // The block restarts from "first", keeping the data of completed steps.
    assert_eq!(
        state.data(),
        &["before", "first", "first", "first", "flaky", "after"]
    );
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(start.elapsed(), Duration::from_millis(1000 + 2000));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retry_fails_the_flow_and_reaches_an_outer_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(vec![]));
    let flow = StepFlow::builder("retry", 1)
        .retry(
            "r",
            RetryPolicy::attempts(2).backoff(no_jitter(10)),
            Steps::new().step("flaky", flaky("flaky", 10, calls.clone(), attempts.clone())),
        )
        .build()
        .unwrap();
    let err = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap_err();
    match &err {
        FlowError::RetriesExhausted {
            step,
            attempts,
            source,
            ..
        } => {
            assert_eq!(step, "r");
            assert_eq!(*attempts, 2);
            assert!(matches!(**source, FlowError::StepFailed { ref step, .. } if step == "flaky"));
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // An exhausted inner retry is a failure the outer retry absorbs.
    let calls = Arc::new(AtomicU32::new(0));
    let flow = StepFlow::builder("nested", 1)
        .retry(
            "outer",
            RetryPolicy::attempts(2).backoff(no_jitter(10)),
            Steps::new().retry(
                "inner",
                RetryPolicy::attempts(2).backoff(no_jitter(10)),
                Steps::new().step("flaky", flaky("flaky", 3, calls.clone(), attempts.clone())),
            ),
        )
        .build()
        .unwrap();
    // Three failures: inner gives up after 2, outer re-enters, inner's count starts again,
    // the 4th call succeeds.
    let state = flow
        .run(&MemoryStateStore::new().acquire(), vec![])
        .await
        .unwrap();
    assert_eq!(state.data(), &["flaky"]);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_attempts_survive_a_handoff() {
    let calls = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(vec![]));
    let flow = StepFlow::builder("retry", 1)
        .retry(
            "r",
            RetryPolicy::attempts(2).backoff(no_jitter(10)),
            Steps::new().step("flaky", flaky("flaky", 5, calls.clone(), attempts.clone())),
        )
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let first = store.acquire();
    let state = flow.apply(&first, flow.start(vec![])).await.unwrap();
    assert_eq!(
        state.status(),
        FlowStatus::Waiting(Duration::from_millis(10))
    );
    // Another node takes over from the saved state: it is on attempt 2, the last one.
    let second = store.acquire();
    let loaded = flow.load(&second, vec![]).await.unwrap();
    assert_eq!(
        loaded.status(),
        FlowStatus::Waiting(Duration::from_millis(10))
    );
    let err = flow.apply(&second, loaded).await.unwrap_err();
    assert!(
        matches!(err, FlowError::RetriesExhausted { attempts: 2, .. }),
        "{err}"
    );
    assert_eq!(*attempts.lock().unwrap(), [1, 2]);
}

#[tokio::test]
async fn state_of_another_flow_or_version_is_a_clear_error() {
    let v1 = StepFlow::builder("deploy", 1)
        .step("a", push("a"))
        .build()
        .unwrap();
    let v2 = StepFlow::builder("deploy", 2)
        .step("a", push("a"))
        .build()
        .unwrap();
    let other = StepFlow::builder("backup", 1)
        .step("a", push("a"))
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    v1.apply(&store.acquire(), v1.start(vec![])).await.unwrap();
    let bytes = store.saved().unwrap();

    let err = v2.decode(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FlowError::VersionMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "saved state of flow \"deploy\" is version 1, this flow is version 2"
    );
    let err = v2.load(&store.acquire(), vec![]).await.unwrap_err();
    assert!(matches!(err, FlowError::VersionMismatch { .. }), "{err}");

    let err = other.decode(&bytes).unwrap_err();
    assert!(
        matches!(err, FlowError::WrongFlow { ref found, .. } if found == "deploy/v1"),
        "{err}"
    );

    // A state value of another flow handed to apply directly is rejected too.
    let err = other
        .apply(&store.acquire(), v1.start(vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, FlowError::WrongFlow { .. }), "{err}");
}

#[tokio::test]
async fn undecodable_or_misfitting_state_is_a_typed_error() {
    let flow = StepFlow::builder("f", 1)
        .case("c", |_: &Done| true, Steps::new().step("a", push("a")))
        .build()
        .unwrap();
    assert!(matches!(
        flow.decode(b"not json"),
        Err(FlowError::Decode(_))
    ));
    assert!(matches!(
        flow.decode(br#"{"flow":"f/v1","at":[[0,0]],"data":17}"#),
        Err(FlowError::Decode(_))
    ));
    for at in ["[]", "[[5,0]]", "[[0,0],[3,0]]", "[[0,0],[0,0],[0,0]]"] {
        let json = format!(r#"{{"flow":"f/v1","at":{at},"data":[]}}"#);
        let err = flow.decode(json.as_bytes()).unwrap_err();
        assert!(matches!(err, FlowError::CorruptState { .. }), "{at}: {err}");
    }
    assert!(
        flow.decode(br#"{"flow":"f/v1","at":[[0,0],[1,0]],"data":[]}"#)
            .is_ok()
    );
}

#[tokio::test]
async fn stale_owner_cannot_save() {
    let flow = StepFlow::builder("f", 1)
        .step("a", push("a"))
        .step("b", push("b"))
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let stale = store.acquire();
    let _new_owner = store.acquire();
    let err = flow.apply(&stale, flow.start(vec![])).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(matches!(err, FlowError::State(StateError::Fenced { .. })));
    assert_eq!(store.saves(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_drops_the_step_in_flight_and_resume_reruns_it() {
    struct Guard(Arc<AtomicU32>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicU32::new(0));
    let runs = Arc::new(AtomicU32::new(0));
    let (d, r) = (dropped.clone(), runs.clone());
    let flow = StepFlow::builder("f", 1)
        .step("a", push("a"))
        .step("slow", move |mut data: Done, _cx| {
            let guard = Guard(d.clone());
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    // The first run hangs until it is dropped.
                    std::future::pending::<()>().await;
                }
                drop(guard);
                data.push("slow".into());
                Ok(data)
            }
        })
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let owner = store.acquire();
    let canceller = owner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        canceller.cancel();
    });
    let state = tokio::time::timeout(
        Duration::from_secs(5),
        flow.apply(&owner, flow.start(vec![])),
    )
    .await
    .expect("apply returns on cancellation")
    .unwrap();
    assert_eq!(state.status(), FlowStatus::Ready);
    assert_eq!(state.data(), &["a"]);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the step's future was dropped"
    );
    assert_eq!(flow.current_step(&state), Some("slow"));

    let next = store.acquire();
    assert!(owner.cancellation_token().is_cancelled());
    let state = flow.run(&next, vec![]).await.unwrap();
    assert_eq!(state.data(), &["a", "slow"]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn steps_see_their_owner_epoch() {
    let flow = StepFlow::builder("f", 1)
        .step("a", |mut d: Done, cx| async move {
            d.push(cx.epoch().map(|e| e.to_string()).unwrap_or_default());
            Ok(d)
        })
        .build()
        .unwrap();
    let store = MemoryStateStore::new();
    let _first = store.acquire();
    let second = store.acquire();
    let state = flow.run(&second, vec![]).await.unwrap();
    assert_eq!(state.data(), &["2"]);
}
