//! Plan executor: rounds, sub-tasks, error tolerance, timeouts and cancellation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop_core::{BoxError, CancellationToken, async_trait};
use keyloop_flow::{
    BoxTask, ExecError, ExecutorConfigError, Plan, PlanExecutor, Task, TaskContext, TaskError,
    TaskPhase,
};
use tokio::time::Instant;

type Journal = Arc<Mutex<Vec<String>>>;

/// A task that journals its phases, fails where told, and returns the given sub-tasks.
struct Scripted {
    name: String,
    journal: Journal,
    fail_in: Option<TaskPhase>,
    children: Mutex<Vec<BoxTask>>,
}

impl Scripted {
    fn new(name: &str, journal: &Journal) -> Scripted {
        Scripted {
            name: name.into(),
            journal: journal.clone(),
            fail_in: None,
            children: Mutex::new(vec![]),
        }
    }

    fn failing(mut self, phase: TaskPhase) -> Self {
        self.fail_in = Some(phase);
        self
    }

    fn with(self, child: Scripted) -> Self {
        self.children.lock().unwrap().push(Box::new(child));
        self
    }

    fn phase(&self, phase: TaskPhase) -> Result<(), BoxError> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{}.{phase}", self.name));
        if self.fail_in == Some(phase) {
            return Err(format!("{} broke in {phase}", self.name).into());
        }
        Ok(())
    }
}

#[async_trait]
impl Task for Scripted {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn pre(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        self.phase(TaskPhase::Pre)
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        self.phase(TaskPhase::Perform)?;
        Ok(std::mem::take(&mut *self.children.lock().unwrap()))
    }

    async fn post(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        self.phase(TaskPhase::Post)
    }
}

/// A plan that hands out one prepared round per call, then nothing.
struct Rounds {
    rounds: Mutex<VecDeque<Result<Vec<BoxTask>, BoxError>>>,
    calls: AtomicU32,
}

impl Rounds {
    fn new(rounds: Vec<Result<Vec<BoxTask>, BoxError>>) -> Rounds {
        Rounds {
            rounds: Mutex::new(rounds.into()),
            calls: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Plan for Rounds {
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.rounds
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(vec![]))
    }
}

fn executor(tolerate: u32) -> PlanExecutor {
    PlanExecutor::builder()
        .round_interval(Duration::from_secs(1))
        .tolerate_errors(tolerate)
        .build()
        .unwrap()
}

fn ok_task(name: &str, journal: &Journal) -> Result<Vec<BoxTask>, BoxError> {
    Ok(vec![Box::new(Scripted::new(name, journal))])
}

fn bad_task(name: &str, journal: &Journal) -> Result<Vec<BoxTask>, BoxError> {
    Ok(vec![Box::new(
        Scripted::new(name, journal).failing(TaskPhase::Perform),
    )])
}

#[tokio::test(start_paused = true)]
async fn subtasks_run_after_their_parent_and_rounds_repeat_until_the_plan_is_empty() {
    let j = Journal::default();
    let vm = Scripted::new("vm", &j)
        .with(Scripted::new("disk", &j).with(Scripted::new("format", &j)))
        .with(Scripted::new("nic", &j));
    let plan = Rounds::new(vec![
        Ok(vec![Box::new(vm), Box::new(Scripted::new("dns", &j))]),
        ok_task("tag", &j),
    ]);
    let start = Instant::now();
    let report = executor(0)
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap();
    let phases = |t: &str| ["pre", "perform", "post"].map(|p| format!("{t}.{p}"));
    let expected: Vec<String> = ["vm", "disk", "format", "nic", "dns", "tag"]
        .iter()
        .flat_map(|t| phases(t))
        .collect();
    assert_eq!(*j.lock().unwrap(), expected);
    assert_eq!(report.rounds, 3);
    assert_eq!(report.tasks_succeeded, 6);
    // Two sleeps between three rounds; none after the final (empty) one.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_failing_phase_stops_the_task_and_the_round() {
    let j = Journal::default();
    let parent = Scripted::new("parent", &j)
        .failing(TaskPhase::Post)
        .with(Scripted::new("child", &j));
    let plan = Rounds::new(vec![Ok(vec![
        Box::new(Scripted::new("pre-fails", &j).failing(TaskPhase::Pre)),
        Box::new(parent),
    ])]);
    let report = executor(1)
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap();
    // "pre-fails" never performs; the round ends there, "parent" is not reached.
    assert_eq!(*j.lock().unwrap(), ["pre-fails.pre"]);
    assert_eq!(report.errors_tolerated, 1);

    let j = Journal::default();
    let parent = Scripted::new("parent", &j)
        .failing(TaskPhase::Post)
        .with(Scripted::new("child", &j));
    let plan = Rounds::new(vec![Ok(vec![Box::new(parent)])]);
    let err = executor(0)
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::TooManyErrors {
                source: TaskError::Failed { phase: TaskPhase::Post, ref task, .. },
                ..
            } if task == "parent"
        ),
        "{err}"
    );
    // The child of a parent that failed in post never runs.
    assert_eq!(
        *j.lock().unwrap(),
        ["parent.pre", "parent.perform", "parent.post"]
    );
}

#[tokio::test(start_paused = true)]
async fn error_tolerance_counts_consecutive_errors_and_resets_on_success() {
    let j = Journal::default();
    // F F S F F S: four errors, never more than two in a row.
    let plan = Rounds::new(vec![
        bad_task("a", &j),
        Err("plan backend down".into()),
        ok_task("b", &j),
        bad_task("c", &j),
        bad_task("d", &j),
        ok_task("e", &j),
    ]);
    let report = executor(2)
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.errors_tolerated, 4);
    assert_eq!(report.tasks_succeeded, 2);
    assert_eq!(report.rounds, 7);

    // F F F: the third consecutive error is one too many.
    let plan = Rounds::new(vec![
        bad_task("a", &j),
        bad_task("b", &j),
        Err("plan backend down".into()),
        ok_task("never", &j),
    ]);
    let err = executor(2)
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap_err();
    match err {
        ExecError::TooManyErrors {
            errors,
            tolerated,
            source,
        } => {
            assert_eq!((errors, tolerated), (3, 2));
            assert!(matches!(source, TaskError::Plan(_)), "{source}");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(plan.calls.load(Ordering::SeqCst), 3);
}

/// A task that works forever: a spawned worker bound to the task's token, and a future
/// that counts ticks. Dropping or cancelling must stop both.
struct Endless {
    ticks: Arc<AtomicU32>,
    worker_ticks: Arc<AtomicU32>,
    dropped: Arc<AtomicBool>,
    workers: Arc<AtomicU32>,
    workers_done: Arc<AtomicU32>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct CountOnDrop(Arc<AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Task for Endless {
    fn name(&self) -> String {
        "endless".into()
    }

    async fn perform(&self, cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        let _guard = SetOnDrop(self.dropped.clone());
        let token = cx.cancellation_token().clone();
        let worker_ticks = self.worker_ticks.clone();
        self.workers.fetch_add(1, Ordering::SeqCst);
        let done = CountOnDrop(self.workers_done.clone());
        tokio::spawn(async move {
            let _done = done;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {
                        worker_ticks.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.ticks.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct EndlessPlan {
    task_ticks: Arc<AtomicU32>,
    worker_ticks: Arc<AtomicU32>,
    dropped: Arc<AtomicBool>,
    workers: Arc<AtomicU32>,
    workers_done: Arc<AtomicU32>,
}

impl EndlessPlan {
    fn new() -> EndlessPlan {
        EndlessPlan {
            task_ticks: Arc::default(),
            worker_ticks: Arc::default(),
            dropped: Arc::default(),
            workers: Arc::default(),
            workers_done: Arc::default(),
        }
    }

    /// Asserts that neither the task nor its worker makes progress any more.
    async fn assert_stopped(&self) {
        assert!(
            self.dropped.load(Ordering::SeqCst),
            "the task future was dropped"
        );
        // Spawned workers see their token cancelled and exit (one may finish a tick that
        // fell due at the same instant first).
        tokio::time::timeout(Duration::from_secs(1), async {
            while self.workers_done.load(Ordering::SeqCst) < self.workers.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the tasks' spawned workers stop");
        let before = (
            self.task_ticks.load(Ordering::SeqCst),
            self.worker_ticks.load(Ordering::SeqCst),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = (
            self.task_ticks.load(Ordering::SeqCst),
            self.worker_ticks.load(Ordering::SeqCst),
        );
        assert_eq!(before, after, "no work continues after cancellation");
        assert!(
            before.0 > 0 && before.1 > 0,
            "the task did work before: {before:?}"
        );
    }
}

#[async_trait]
impl Plan for EndlessPlan {
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
        Ok(vec![Box::new(Endless {
            ticks: self.task_ticks.clone(),
            worker_ticks: self.worker_ticks.clone(),
            dropped: self.dropped.clone(),
            workers: self.workers.clone(),
            workers_done: self.workers_done.clone(),
        })])
    }
}

#[tokio::test(start_paused = true)]
async fn task_timeout_cancels_the_task_and_counts_as_an_error() {
    let plan = EndlessPlan::new();
    let executor = PlanExecutor::builder()
        .round_interval(Duration::from_secs(1))
        .task_timeout(Duration::from_millis(500))
        .tolerate_errors(1)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = executor
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap_err();
    match err {
        ExecError::TooManyErrors {
            errors: 2,
            source: TaskError::TimedOut { ref task, after },
            ..
        } => {
            assert_eq!(task, "endless");
            assert_eq!(after, Duration::from_millis(500));
        }
        other => panic!("unexpected {other}"),
    }
    // Two timed-out attempts and one sleep between the rounds.
    assert_eq!(start.elapsed(), Duration::from_millis(2000));
    plan.assert_stopped().await;
}

#[tokio::test(start_paused = true)]
async fn execution_timeout_ends_the_run_and_cancels_the_running_task() {
    let plan = EndlessPlan::new();
    let executor = PlanExecutor::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = executor
        .run(&plan, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecError::TimedOut { after } if after == Duration::from_secs(3)),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    plan.assert_stopped().await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_the_run_and_the_running_task() {
    let plan = EndlessPlan::new();
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        canceller.cancel();
    });
    let start = Instant::now();
    let err = executor(3).run(&plan, &token).await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    plan.assert_stopped().await;
}

#[test]
fn bad_configuration_is_a_typed_error() {
    assert_eq!(
        PlanExecutor::builder()
            .round_interval(Duration::ZERO)
            .build()
            .unwrap_err(),
        ExecutorConfigError::ZeroRoundInterval
    );
    assert_eq!(
        PlanExecutor::builder()
            .task_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        ExecutorConfigError::ZeroTaskTimeout
    );
    assert_eq!(
        PlanExecutor::builder()
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        ExecutorConfigError::ZeroTimeout
    );
    let defaults = PlanExecutor::builder().build().unwrap();
    assert_eq!(defaults.round_interval(), Duration::from_secs(1));
    assert_eq!(defaults.tolerated_errors(), 3);
    assert_eq!(defaults.task_timeout(), None);
    assert_eq!(defaults.timeout(), None);
}
