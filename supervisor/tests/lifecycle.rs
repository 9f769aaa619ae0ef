//! Lifecycle behaviour: services and sessions, grace deadline, abandonment, report, errors.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_supervisor::{BoxError, Lifecycle, LifecycleError, Outcome, Stopped, TaskKind};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Records log output so tests can check what was logged at which level.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

async fn wait_for_stop(token: CancellationToken) -> Result<(), std::io::Error> {
    token.cancelled().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn services_are_told_to_stop_and_sessions_finish_within_grace() {
    let lc = Lifecycle::new();
    lc.service("accept", wait_for_stop).unwrap();
    let session = lc.session("conn-1").unwrap();
    assert_eq!(lc.active_sessions(), 1);
    // A session that needs 2 s to clean up after being told to stop.
    let cleanup = tokio::spawn(async move {
        session.stopped().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(session);
    });
    lc.spawn_session("conn-2", |stop: CancellationToken| async move {
        stop.cancelled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<(), std::io::Error>(())
    })
    .unwrap();

    let started = Instant::now();
    let report = lc.shutdown(Duration::from_secs(5)).await.unwrap();
    let elapsed = started.elapsed();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.abandoned.is_empty());
    // In the order they ended.
    assert_eq!(
        report
            .stopped
            .iter()
            .map(|s| (s.name.as_str(), s.kind))
            .collect::<Vec<_>>(),
        vec![
            ("accept", TaskKind::Service),
            ("conn-2", TaskKind::Session),
            ("conn-1", TaskKind::Session),
        ]
    );
    assert!(report.stopped.iter().all(|s| !s.before_shutdown));
    // Shutdown returns as soon as the last session ends, not at the deadline.
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(lc.active_sessions(), 0);
    cleanup.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn sessions_past_the_deadline_are_abandoned_logged_and_reported() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let lc = Lifecycle::new();
    // A guard nobody drops in time.
    let stuck = lc.session("stuck-guard").unwrap();
    // A spawned session that ignores its stop signal; abandonment aborts it.
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    /// Reports its drop, i.e. the abort of the future holding it.
    struct SignalOnDrop(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for SignalOnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let flag = SignalOnDrop(Some(dropped_tx));
    lc.spawn_session("stuck-task", move |_stop| async move {
        let _flag = flag;
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    lc.spawn_session("quick", |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    lc.service("stuck-service", |_stop| async {
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    })
    .unwrap();

    let started = Instant::now();
    let report = lc.shutdown(Duration::from_secs(3)).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(!report.is_clean());
    assert_eq!(
        report.abandoned_names(TaskKind::Session),
        vec!["stuck-guard", "stuck-task"]
    );
    assert_eq!(
        report.abandoned_names(TaskKind::Service),
        vec!["stuck-service"]
    );
    assert_eq!(report.stopped_names(TaskKind::Session), vec!["quick"]);
    assert_eq!(report.grace, Duration::from_secs(3));

    // The aborted task's future is dropped.
    timeout(WAIT, dropped_rx)
        .await
        .expect("the abandoned spawned session was not aborted")
        .unwrap();

    let lines = logs.lines();
    for name in ["stuck-guard", "stuck-task", "stuck-service"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("ERROR") && l.contains(name) && l.contains("abandoned")),
            "no error line for {name}: {lines:#?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("quick"))
    );

    // A straggler that ends late is only warned about, not reported twice.
    drop(stuck);
    assert!(logs.lines().iter().any(|l| l.contains("WARN")
        && l.contains("stuck-guard")
        && l.contains("after it was abandoned")));
}

#[tokio::test(start_paused = true)]
async fn nothing_new_is_admitted_once_shutdown_began() {
    let lc = Lifecycle::new();
    let report = lc.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.is_clean());
    assert!(report.stopped.is_empty());
    assert!(matches!(
        lc.session("late"),
        Err(LifecycleError::ShuttingDown)
    ));
    assert!(matches!(
        lc.service("late", wait_for_stop),
        Err(LifecycleError::ShuttingDown)
    ));
    assert!(matches!(
        lc.spawn_session("late", wait_for_stop),
        Err(LifecycleError::ShuttingDown)
    ));
    assert!(matches!(
        lc.shutdown(Duration::from_secs(1)).await,
        Err(LifecycleError::ShuttingDown)
    ));
    assert_eq!(
        LifecycleError::ShuttingDown.to_string(),
        "the lifecycle is shutting down"
    );
}

#[tokio::test(start_paused = true)]
async fn sessions_are_refused_while_shutdown_is_in_progress() {
    let lc = Lifecycle::new();
    let held = lc.session("held").unwrap();
    let lc2 = lc.clone();
    let shutdown = tokio::spawn(async move { lc2.shutdown(Duration::from_secs(10)).await });
    held.stopped().await;
    assert!(matches!(
        lc.session("new"),
        Err(LifecycleError::ShuttingDown)
    ));
    drop(held);
    let report = timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stopped_names(TaskKind::Session), vec!["held"]);
}

#[tokio::test(start_paused = true)]
async fn empty_names_are_rejected() {
    let lc = Lifecycle::new();
    assert!(matches!(lc.session(""), Err(LifecycleError::EmptyName)));
    assert!(matches!(
        lc.service("", wait_for_stop),
        Err(LifecycleError::EmptyName)
    ));
    assert!(matches!(
        lc.spawn_session("", wait_for_stop),
        Err(LifecycleError::EmptyName)
    ));
    assert_eq!(lc.active_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn failures_and_panics_are_reported_with_their_cause() {
    let lc = Lifecycle::new();
    lc.service("fails-on-stop", |stop: CancellationToken| async move {
        stop.cancelled().await;
        Err::<(), _>(std::io::Error::other("flush failed"))
    })
    .unwrap();
    lc.spawn_session("panics-on-stop", |stop: CancellationToken| async move {
        stop.cancelled().await;
        panic!("session bug");
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    })
    .unwrap();
    let report = lc.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(!report.is_clean());
    assert!(report.abandoned.is_empty());
    let by_name = |n: &str| {
        report
            .stopped
            .iter()
            .find(|s| s.name == n)
            .cloned()
            .unwrap()
    };
    match by_name("fails-on-stop").outcome {
        Outcome::Failed(e) => assert_eq!(e.to_string(), "flush failed"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        by_name("panics-on-stop").outcome,
        Outcome::Panicked("session bug".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_service_that_ends_early_is_reported_as_ending_before_shutdown() {
    let lc = Lifecycle::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    lc.service("gives-up", |_stop| async move {
        let _ = tx.send(());
        Err::<(), _>("lost the database")
    })
    .unwrap();
    // The service returns in the same poll that sent this, so it has deregistered by the time
    // this task runs again (current-thread runtime).
    timeout(WAIT, rx).await.unwrap().unwrap();
    let report = lc.shutdown(Duration::from_secs(1)).await.unwrap();
    let gave_up: &Stopped = &report.stopped[0];
    assert_eq!(gave_up.name, "gives-up");
    assert!(gave_up.before_shutdown);
    assert!(matches!(gave_up.outcome, Outcome::Failed(_)));
}

#[tokio::test(start_paused = true)]
async fn sessions_that_end_before_shutdown_are_not_reported() {
    let lc = Lifecycle::new();
    for i in 0..100 {
        let s = lc.session(format!("req-{i}")).unwrap();
        drop(s);
    }
    assert_eq!(lc.active_sessions(), 0);
    let report = lc.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.stopped.is_empty());
    assert!(report.is_clean());
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_request_wakes_the_waiting_main_task() {
    let lc = Lifecycle::new();
    lc.service("svc", wait_for_stop).unwrap();
    let main = {
        let lc = lc.clone();
        tokio::spawn(async move { lc.shutdown_when_requested(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!main.is_finished());
    assert!(!lc.is_shutdown_requested());
    lc.request_shutdown();
    let report = timeout(WAIT, main).await.unwrap().unwrap().unwrap();
    assert_eq!(report.stopped_names(TaskKind::Service), vec!["svc"]);
    assert!(report.is_clean());
}

/// Sessions opening and closing from many tasks while shutdown starts: every session is either
/// refused, ended before shutdown, reported as stopped, or reported as abandoned — never lost
/// or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_sessions_racing_with_shutdown() {
    for round in 0..20 {
        let lc = Lifecycle::new();
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for w in 0..4 {
            let lc = lc.clone();
            let admitted = admitted.clone();
            workers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("w{w}-{i}");
                    let Ok(session) = lc.session(name.clone()) else {
                        break;
                    };
                    admitted.lock().unwrap().push(name);
                    if i % 3 == 0 {
                        // Some sessions are still open when shutdown begins and wait for it.
                        tokio::spawn(async move {
                            session.stopped().await;
                            drop(session);
                        });
                    } else {
                        tokio::task::yield_now().await;
                        drop(session);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let report = timeout(WAIT, lc.shutdown(Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        for w in workers {
            timeout(WAIT, w).await.unwrap().unwrap();
        }
        assert!(
            report.abandoned.is_empty(),
            "round {round}: {:?}",
            report.abandoned
        );
        let mut reported: Vec<&str> = report.stopped_names(TaskKind::Session);
        let n = reported.len();
        reported.sort_unstable();
        reported.dedup();
        assert_eq!(
            reported.len(),
            n,
            "round {round}: a session was reported twice"
        );
        let admitted = admitted.lock().unwrap();
        assert!(reported.iter().all(|r| admitted.iter().any(|a| a == r)));
        assert_eq!(lc.active_sessions(), 0);
    }
}

/// A runtime that has shut down drops spawned futures inside `spawn`; that must not deadlock
/// on the lifecycle's own lock, and the session must be deregistered.
#[test]
fn spawning_on_a_shut_down_runtime_does_not_deadlock() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        rt.shutdown_background();
        let _enter = handle.enter();
        let lc = Lifecycle::new();
        let result = lc.spawn_session("late", wait_for_stop);
        tx.send((result.is_ok(), lc.active_sessions())).unwrap();
    });
    let (ok, active) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("spawn_session deadlocked");
    assert!(ok);
    assert_eq!(active, 0);
}

/// A supervisor runs as a lifecycle service: the lifecycle's stop token stops it, and an
/// escalation surfaces as the service's failure.
#[tokio::test(start_paused = true)]
async fn a_supervisor_runs_as_a_lifecycle_service() {
    use keyloop_supervisor::{Service, ServiceContext, StopReason, Supervisor};

    let lc = Lifecycle::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let builder =
        Supervisor::builder().service(Service::permanent("worker", move |ctx: ServiceContext| {
            let tx = tx.clone();
            async move {
                tx.send(ctx.restarts()).unwrap();
                if ctx.restarts() < 2 {
                    return Err("warming up");
                }
                ctx.stopped().await;
                Ok(())
            }
        }));
    lc.service("supervisor", move |stop: CancellationToken| async move {
        let report = builder.stop_token(stop).build()?.run().await;
        match report.reason {
            StopReason::ShutdownRequested | StopReason::AllDone => Ok::<(), BoxError>(()),
            other => Err(format!("supervisor gave up: {other:?}").into()),
        }
    })
    .unwrap();
    // The worker's third start (two restarts) means the supervisor is running it steadily.
    for expected in 0..3 {
        assert_eq!(timeout(WAIT, rx.recv()).await.unwrap(), Some(expected));
    }
    let report = lc.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.stopped_names(TaskKind::Service), vec!["supervisor"]);
}
