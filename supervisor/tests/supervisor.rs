//! Supervisor behaviour: restarts, backoff timing, policies, panics, intensity, listeners,
//! shutdown. Timing tests run under tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keyloop_supervisor::{
    Backoff, BuildError, RestartPolicy, Service, ServiceContext, ServiceStatus, StatusChange,
    StopReason, Supervisor, SupervisorBuilder,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(60);

fn fixed_backoff(initial_ms: u64, max_ms: u64) -> Backoff {
    Backoff::builder()
        .initial(Duration::from_millis(initial_ms))
        .max(Duration::from_millis(max_ms))
        .multiplier(2.0)
        .jitter(0.0)
        .build()
        .unwrap()
}

/// A builder whose listener forwards every change, stamped with the time it was seen.
fn recorded() -> (
    SupervisorBuilder,
    mpsc::UnboundedReceiver<(Instant, StatusChange)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = Supervisor::builder().listener(move |change: &StatusChange| {
        let _ = tx.send((Instant::now(), change.clone()));
    });
    (builder, rx)
}

async fn next_change(
    rx: &mut mpsc::UnboundedReceiver<(Instant, StatusChange)>,
) -> (Instant, StatusChange) {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a status change")
        .expect("listener channel closed")
}

/// Waits until `service` reaches a status matching `pred`, returning that change.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<(Instant, StatusChange)>,
    service: &str,
    pred: impl Fn(&ServiceStatus) -> bool,
) -> (Instant, StatusChange) {
    loop {
        let (at, change) = next_change(rx).await;
        if change.service == service && pred(&change.status) {
            return (at, change);
        }
    }
}

/// A short label per status, to compare sequences.
fn label(status: &ServiceStatus) -> String {
    match status {
        ServiceStatus::Idle => "idle".into(),
        ServiceStatus::Running => "running".into(),
        ServiceStatus::Backoff { delay } => format!("backoff {}ms", delay.as_millis()),
        ServiceStatus::Stopped => "stopped".into(),
        ServiceStatus::Failed(e) => format!("failed: {e}"),
        ServiceStatus::Panicked(m) => format!("panicked: {m}"),
        ServiceStatus::Abandoned => "abandoned".into(),
        other => format!("{other:?}"),
    }
}

/// Fails the first `failures` runs, then waits for its stop signal and returns `Ok`.
fn fail_then_wait(
    failures: u32,
    runs: Arc<AtomicU32>,
) -> impl Fn(ServiceContext) -> futures_like::Fut {
    move |ctx: ServiceContext| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if run < failures {
                return Err(format!("failure {run}").into());
            }
            ctx.stopped().await;
            Ok(())
        })
    }
}

mod futures_like {
    use std::future::Future;
    use std::pin::Pin;

    pub(crate) type Fut =
        Pin<Box<dyn Future<Output = Result<(), keyloop_supervisor::BoxError>> + Send>>;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_exponentially_and_caps_between_restarts() {
    let runs = Arc::new(AtomicU32::new(0));
    let (builder, mut rx) = recorded();
    let handle = builder
        .backoff(fixed_backoff(100, 1000))
        .unlimited_restarts()
        .service(Service::permanent("flaky", fail_then_wait(6, runs.clone())))
        .build()
        .unwrap()
        .spawn();

    // Collect changes until the seventh start (the one that does not fail).
    let mut changes = Vec::new();
    let mut starts = 0;
    while starts < 7 {
        let (at, change) = next_change(&mut rx).await;
        if change.status == ServiceStatus::Running {
            starts += 1;
        }
        changes.push((at, change.status));
    }
    let mut delays = Vec::new();
    let mut gaps = Vec::new();
    for w in changes.windows(3) {
        if let [
            (failed_at, ServiceStatus::Failed(_)),
            (_, ServiceStatus::Backoff { delay }),
            (running_at, ServiceStatus::Running),
        ] = w
        {
            delays.push(delay.as_millis());
            gaps.push(*running_at - *failed_at);
        }
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    for (gap, delay) in gaps.iter().zip(&delays) {
        let delay = Duration::from_millis(*delay as u64);
        // The timer wheel has millisecond resolution.
        assert!(
            *gap >= delay && *gap <= delay + Duration::from_millis(2),
            "gap {gap:?} for delay {delay:?}"
        );
    }
    let report = handle.shutdown_and_wait().await;
    assert_eq!(report.reason, StopReason::ShutdownRequested);
    assert_eq!(report.restarts("flaky"), Some(6));
    assert_eq!(
        report.snapshot.status("flaky"),
        Some(&ServiceStatus::Stopped)
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_failing_three_times_is_restarted_three_times() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let report = Supervisor::builder()
        .backoff(fixed_backoff(10, 100))
        .service(Service::transient("flaky", move |_ctx| {
            let run = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if run < 3 {
                    Err(format!("failure {run}"))
                } else {
                    Ok(())
                }
            }
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(report.restarts("flaky"), Some(3));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        report.snapshot.status("flaky"),
        Some(&ServiceStatus::Stopped)
    );
    assert!(report.abandoned.is_empty());
}

#[tokio::test(start_paused = true)]
async fn context_counts_restarts() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let report = Supervisor::builder()
        .backoff(fixed_backoff(10, 100))
        .service(Service::transient("counter", move |ctx: ServiceContext| {
            let tx = tx.clone();
            async move {
                tx.send((ctx.name().to_owned(), ctx.restarts())).unwrap();
                if ctx.restarts() < 2 {
                    Err("again")
                } else {
                    Ok(())
                }
            }
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    let mut seen = Vec::new();
    while let Ok(x) = rx.try_recv() {
        seen.push(x);
    }
    let name = "counter".to_owned();
    assert_eq!(seen, vec![(name.clone(), 0), (name.clone(), 1), (name, 2)]);
}

#[tokio::test(start_paused = true)]
async fn permanent_services_restart_after_clean_exit() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let (builder, mut rx) = recorded();
    let handle = builder
        .backoff(fixed_backoff(10, 10))
        .unlimited_restarts()
        .service(Service::permanent("loop", move |_ctx| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), std::io::Error>(()) }
        }))
        .build()
        .unwrap()
        .spawn();
    // Three clean exits, each followed by a restart.
    for _ in 0..3 {
        until(&mut rx, "loop", |s| *s == ServiceStatus::Stopped).await;
        until(&mut rx, "loop", |s| {
            matches!(s, ServiceStatus::Backoff { .. })
        })
        .await;
        until(&mut rx, "loop", |s| *s == ServiceStatus::Running).await;
    }
    let report = handle.shutdown_and_wait().await;
    assert_eq!(report.reason, StopReason::ShutdownRequested);
    assert!(report.restarts("loop").unwrap() >= 3);
    assert!(runs.load(Ordering::SeqCst) >= 4);
}

#[tokio::test(start_paused = true)]
async fn transient_services_are_not_restarted_after_clean_exit() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let report = Supervisor::builder()
        .service(Service::transient("once", move |_ctx| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Ok::<(), std::io::Error>(()) }
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(report.restarts("once"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn temporary_services_are_never_restarted() {
    let report = Supervisor::builder()
        .service(Service::temporary("fails", |_ctx| async {
            Err::<(), _>(std::io::Error::other("disk on fire"))
        }))
        .service(Service::temporary("panics", |_ctx| async {
            panic!("temporary panic");
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(report.restarts("fails"), Some(0));
    assert_eq!(report.restarts("panics"), Some(0));
    match report.snapshot.status("fails") {
        Some(ServiceStatus::Failed(e)) => {
            assert_eq!(e.to_string(), "disk on fire");
            assert!(
                e.downcast_ref::<std::io::Error>().is_some(),
                "the original error is kept"
            );
        }
        other => panic!("unexpected status {other:?}"),
    }
    assert_eq!(
        report.snapshot.status("panics"),
        Some(&ServiceStatus::Panicked("temporary panic".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn panics_are_captured_with_their_message_and_restarted() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let (builder, mut rx) = recorded();
    let report = builder
        .backoff(fixed_backoff(10, 100))
        .service(Service::transient("panicky", move |_ctx| {
            let run = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("bad state in run {run}");
                }
                Ok::<(), std::io::Error>(())
            }
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(report.restarts("panicky"), Some(1));
    let (_, change) = until(&mut rx, "panicky", |s| {
        matches!(s, ServiceStatus::Panicked(_))
    })
    .await;
    assert_eq!(
        change.status,
        ServiceStatus::Panicked("bad state in run 0".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_factory_is_captured_too() {
    let report = Supervisor::builder()
        .service(Service::temporary(
            "factory",
            |_ctx| -> std::future::Ready<Result<(), std::io::Error>> { panic!("factory exploded") },
        ))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(
        report.snapshot.status("factory"),
        Some(&ServiceStatus::Panicked("factory exploded".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn exceeding_restart_intensity_stops_everything_and_names_the_service() {
    let steady_stopped = Arc::new(AtomicU32::new(0));
    let s = steady_stopped.clone();
    let started = Instant::now();
    let report = Supervisor::builder()
        .backoff(fixed_backoff(10, 10))
        .intensity(2, Duration::from_secs(1))
        .service(Service::permanent("steady", move |ctx: ServiceContext| {
            let s = s.clone();
            async move {
                ctx.stopped().await;
                s.fetch_add(1, Ordering::SeqCst);
                Ok::<(), std::io::Error>(())
            }
        }))
        .service(Service::permanent("crashy", |_ctx| async {
            Err::<(), _>("crash")
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(
        report.reason,
        StopReason::IntensityExceeded {
            service: "crashy".into(),
            max_restarts: 2,
            within: Duration::from_secs(1),
        }
    );
    // Two restarts were tolerated; the third was refused.
    assert_eq!(report.restarts("crashy"), Some(2));
    assert!(matches!(
        report.snapshot.status("crashy"),
        Some(ServiceStatus::Failed(_))
    ));
    assert_eq!(
        report.snapshot.status("steady"),
        Some(&ServiceStatus::Stopped)
    );
    assert_eq!(
        steady_stopped.load(Ordering::SeqCst),
        1,
        "steady was told to stop"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_out_beyond_the_window_do_not_escalate() {
    let runs = Arc::new(AtomicU32::new(0));
    let report = Supervisor::builder()
        // 600 ms apart: never more than 2 restarts within 1 s.
        .backoff(fixed_backoff(600, 600))
        .intensity(2, Duration::from_secs(1))
        .service(Service::transient(
            "slow-crash",
            fail_then_wait_then_done(5, runs.clone()),
        ))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(report.restarts("slow-crash"), Some(5));
}

/// Fails the first `failures` runs, then returns `Ok` at once.
fn fail_then_wait_then_done(
    failures: u32,
    runs: Arc<AtomicU32>,
) -> impl Fn(ServiceContext) -> futures_like::Fut {
    move |_ctx| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if run < failures {
                Err(format!("failure {run}").into())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn listener_receives_every_transition_in_order() {
    let runs = Arc::new(AtomicU32::new(0));
    let (builder, mut rx) = recorded();
    let report = builder
        .backoff(fixed_backoff(10, 100))
        .service(Service::transient(
            "a",
            fail_then_wait_then_done(2, runs.clone()),
        ))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    let mut labels = Vec::new();
    while let Ok((_, change)) = rx.try_recv() {
        assert_eq!(change.service, "a");
        // Each snapshot already includes the change it announces.
        assert_eq!(change.snapshot.status("a"), Some(&change.status));
        labels.push(label(&change.status));
    }
    assert_eq!(
        labels,
        vec![
            "running",
            "failed: failure 0",
            "backoff 10ms",
            "running",
            "failed: failure 1",
            "backoff 20ms",
            "running",
            "stopped",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn listeners_see_consistent_snapshots_across_services() {
    let (builder, mut rx) = recorded();
    let runs = Arc::new(AtomicU32::new(0));
    let handle = builder
        .backoff(fixed_backoff(10, 100))
        .service(Service::permanent(
            "worker",
            fail_then_wait(1, runs.clone()),
        ))
        .service(Service::permanent(
            "idle",
            |ctx: ServiceContext| async move {
                ctx.stopped().await;
                Ok::<(), std::io::Error>(())
            },
        ))
        .build()
        .unwrap()
        .spawn();
    let (_, change) = until(&mut rx, "worker", |s| *s == ServiceStatus::Running).await;
    assert_eq!(change.snapshot.services().len(), 2);
    let (_, change) = until(&mut rx, "idle", |s| *s == ServiceStatus::Running).await;
    assert!(
        change
            .snapshot
            .services()
            .iter()
            .all(|s| s.status.is_active())
    );
    until(&mut rx, "worker", |s| {
        matches!(s, ServiceStatus::Backoff { .. })
    })
    .await;
    let (_, change) = until(&mut rx, "worker", |s| *s == ServiceStatus::Running).await;
    assert_eq!(change.snapshot.get("worker").unwrap().restarts, 1);
    assert_eq!(handle.status().get("worker").unwrap().restarts, 1);
    let report = handle.shutdown_and_wait().await;
    // Shutdown transitions are reported too, one per service.
    let mut stops = Vec::new();
    while let Ok((_, change)) = rx.try_recv() {
        stops.push((change.service, label(&change.status)));
    }
    stops.sort();
    assert_eq!(
        stops,
        vec![
            ("idle".to_owned(), "stopped".to_owned()),
            ("worker".to_owned(), "stopped".to_owned())
        ]
    );
    assert_eq!(report.reason, StopReason::ShutdownRequested);
}

#[tokio::test(start_paused = true)]
async fn healthy_runs_reset_the_backoff() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let (builder, mut rx) = recorded();
    let handle = builder
        .backoff(fixed_backoff(100, 10_000))
        .healthy_after(Duration::from_secs(5))
        .unlimited_restarts()
        .service(Service::permanent("svc", move |_ctx| {
            let run = r.fetch_add(1, Ordering::SeqCst);
            async move {
                // Runs 0 and 1 fail at once; run 2 is healthy for 6 s, then fails.
                if run == 2 {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                }
                Err::<(), _>("fail")
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        let (_, change) = until(&mut rx, "svc", |s| {
            matches!(s, ServiceStatus::Backoff { .. })
        })
        .await;
        if let ServiceStatus::Backoff { delay } = change.status {
            delays.push(delay.as_millis());
        }
    }
    handle.shutdown_and_wait().await;
    assert_eq!(delays, vec![100, 200, 100, 200]);
}

#[tokio::test(start_paused = true)]
async fn services_ignoring_stop_are_abandoned_after_the_grace_period() {
    let (builder, mut rx) = recorded();
    let handle = builder
        .shutdown_grace(Duration::from_secs(3))
        .service(Service::permanent("stubborn", |_ctx| async {
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        }))
        .service(Service::permanent(
            "polite",
            |ctx: ServiceContext| async move {
                ctx.stopped().await;
                Ok::<(), std::io::Error>(())
            },
        ))
        .build()
        .unwrap()
        .spawn();
    until(&mut rx, "polite", |s| *s == ServiceStatus::Running).await;
    let asked = Instant::now();
    let report = handle.shutdown_and_wait().await;
    assert_eq!(report.reason, StopReason::ShutdownRequested);
    assert_eq!(report.abandoned, vec!["stubborn".to_owned()]);
    assert_eq!(
        report.snapshot.status("stubborn"),
        Some(&ServiceStatus::Abandoned)
    );
    assert_eq!(
        report.snapshot.status("polite"),
        Some(&ServiceStatus::Stopped)
    );
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn services_waiting_in_backoff_are_stopped_without_restart() {
    let runs = Arc::new(AtomicU32::new(0));
    let (builder, mut rx) = recorded();
    let handle = builder
        .backoff(fixed_backoff(60_000, 60_000))
        .service(Service::permanent(
            "waiting",
            fail_then_wait(10, runs.clone()),
        ))
        .build()
        .unwrap()
        .spawn();
    until(&mut rx, "waiting", |s| {
        matches!(s, ServiceStatus::Backoff { .. })
    })
    .await;
    let report = handle.shutdown_and_wait().await;
    assert_eq!(
        report.snapshot.status("waiting"),
        Some(&ServiceStatus::Stopped)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn run_stops_when_the_external_token_is_cancelled_and_never_cancels_it() {
    let parent = tokio_util::sync::CancellationToken::new();
    let sup = Supervisor::builder()
        .stop_token(parent.clone())
        .service(Service::permanent(
            "svc",
            |ctx: ServiceContext| async move {
                ctx.stopped().await;
                Ok::<(), std::io::Error>(())
            },
        ))
        .build()
        .unwrap();
    let p = parent.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.cancel();
    });
    let report = sup.run().await;
    assert_eq!(report.reason, StopReason::ShutdownRequested);

    let parent = tokio_util::sync::CancellationToken::new();
    let report = Supervisor::builder()
        .stop_token(parent.clone())
        .service(Service::transient("done", |_ctx| async {
            Ok::<(), std::io::Error>(())
        }))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert!(
        !parent.is_cancelled(),
        "the supervisor only cancels its own child token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_does_not_stop_supervision() {
    let runs = Arc::new(AtomicU32::new(0));
    let (builder, mut rx) = recorded();
    let report = builder
        .listener(|_change: &StatusChange| panic!("listener bug"))
        .backoff(fixed_backoff(10, 10))
        .service(Service::transient("svc", fail_then_wait_then_done(1, runs)))
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    assert_eq!(report.restarts("svc"), Some(1));
    // The other listener still saw every change.
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 5);
}

#[tokio::test(start_paused = true)]
async fn per_service_backoff_overrides_the_default() {
    let runs = Arc::new(AtomicU32::new(0));
    let (builder, mut rx) = recorded();
    let report = builder
        .backoff(fixed_backoff(10, 10))
        .service(
            Service::new(
                "own",
                RestartPolicy::Transient,
                fail_then_wait_then_done(1, runs),
            )
            .backoff(fixed_backoff(777, 1000)),
        )
        .build()
        .unwrap()
        .run()
        .await;
    assert_eq!(report.reason, StopReason::AllDone);
    let (_, change) = until(&mut rx, "own", |s| {
        matches!(s, ServiceStatus::Backoff { .. })
    })
    .await;
    assert_eq!(
        change.status,
        ServiceStatus::Backoff {
            delay: Duration::from_millis(777)
        }
    );
}

#[test]
fn invalid_configurations_are_typed_errors() {
    fn svc(name: &str) -> Service {
        Service::permanent(name, |_ctx| async { Ok::<(), std::io::Error>(()) })
    }
    assert_eq!(
        Supervisor::builder().build().unwrap_err(),
        BuildError::NoServices
    );
    assert_eq!(
        Supervisor::builder().service(svc("")).build().unwrap_err(),
        BuildError::EmptyName
    );
    assert_eq!(
        Supervisor::builder()
            .service(svc("a"))
            .service(svc("b"))
            .service(svc("a"))
            .build()
            .unwrap_err(),
        BuildError::DuplicateName("a".into())
    );
    assert_eq!(
        Supervisor::builder()
            .service(svc("a"))
            .intensity(3, Duration::ZERO)
            .build()
            .unwrap_err(),
        BuildError::ZeroIntensityWindow(Duration::ZERO)
    );
    assert_eq!(
        BuildError::DuplicateName("a".into()).to_string(),
        "service name \"a\" is used more than once"
    );
}

/// Many services failing and restarting at once on a multi-threaded runtime: every service
/// gets exactly its restarts, and each service's transitions stay well-formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_many_services_restarting_concurrently() {
    const SERVICES: usize = 40;
    const FAILURES: u32 = 5;
    let (builder, mut rx) = recorded();
    let mut builder = builder.backoff(fixed_backoff(1, 2)).unlimited_restarts();
    for i in 0..SERVICES {
        let runs = Arc::new(AtomicU32::new(0));
        let f = fail_then_wait_then_done(FAILURES, runs);
        builder = builder.service(Service::transient(format!("svc-{i}"), move |ctx| {
            let fut = f(ctx);
            async move {
                tokio::task::yield_now().await;
                fut.await
            }
        }));
    }
    let report = timeout(WAIT, builder.build().unwrap().run()).await.unwrap();
    assert_eq!(report.reason, StopReason::AllDone);
    for s in report.snapshot.services() {
        assert_eq!(s.restarts, FAILURES, "{}", s.name);
        assert_eq!(s.status, ServiceStatus::Stopped);
    }
    let mut per_service: std::collections::HashMap<String, Vec<String>> = Default::default();
    while let Ok((_, change)) = rx.try_recv() {
        let l = label(&change.status);
        per_service
            .entry(change.service)
            .or_default()
            .push(l.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(per_service.len(), SERVICES);
    let mut expected = Vec::new();
    for _ in 0..FAILURES {
        expected.extend(["running", "failed:", "backoff"].map(String::from));
    }
    expected.extend(["running", "stopped"].map(String::from));
    for (name, seq) in per_service {
        assert_eq!(seq, expected, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_a_running_supervisor_aborts_its_services() {
    /// Reports its drop, i.e. the abort of the future holding it.
    struct SignalOnDrop(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for SignalOnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let sup = Supervisor::builder()
        .service(Service::permanent("forever", move |_ctx| {
            let guard = SignalOnDrop(tx.lock().unwrap().take());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        }))
        .build()
        .unwrap();
    assert!(timeout(Duration::from_secs(1), sup.run()).await.is_err());
    timeout(WAIT, rx)
        .await
        .expect("the service was not aborted")
        .unwrap();
}
