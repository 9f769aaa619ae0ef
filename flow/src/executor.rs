use std::time::Duration;

use keyloop_core::CancellationToken;

use crate::{BoxTask, ExecError, ExecutorConfigError, Plan, TaskContext, TaskError, TaskPhase};

/// Runs a [`Plan`] round after round until it returns no tasks.
///
/// Each round asks the plan for the tasks still needed and runs them in order, each with
/// its sub-tasks; between rounds it sleeps. Errors are tolerated up to a number of
/// consecutive ones (a task that succeeds resets the count). A task running past the task
/// timeout, a run past the execution timeout, and cancellation all drop the running task's
/// future and cancel its token, so no work is left behind.
///
/// ```
/// use keyloop_core::{async_trait, BoxError, CancellationToken};
/// use keyloop_flow::{BoxTask, Plan, PlanExecutor, Task, TaskContext};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// struct Grow(Arc<AtomicU32>);
///
/// #[async_trait]
/// impl Task for Grow {
///     fn name(&self) -> String { "grow".into() }
///     async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
///         self.0.fetch_add(1, Ordering::SeqCst);
///         Ok(vec![])
///     }
/// }
///
/// struct ToThree(Arc<AtomicU32>);
///
/// #[async_trait]
/// impl Plan for ToThree {
///     async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
///         let n = self.0.load(Ordering::SeqCst);
///         Ok(if n < 3 { vec![Box::new(Grow(self.0.clone())) as BoxTask] } else { vec![] })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let executor = PlanExecutor::builder()
///     .round_interval(Duration::from_millis(1))
///     .build()
///     .unwrap();
/// let size = Arc::new(AtomicU32::new(0));
/// let report = executor.run(&ToThree(size.clone()), &CancellationToken::new()).await.unwrap();
/// assert_eq!(size.load(Ordering::SeqCst), 3);
/// assert_eq!(report.rounds, 4);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PlanExecutor {
    round_interval: Duration,
    tolerated_errors: u32,
    task_timeout: Option<Duration>,
    timeout: Option<Duration>,
}

/// What a finished [`PlanExecutor::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecReport {
    /// Rounds, the last one (where the plan returned no tasks) included.
    pub rounds: u64,
    /// Tasks that succeeded, sub-tasks included.
    pub tasks_succeeded: u64,
    /// Errors that were tolerated.
    pub errors_tolerated: u64,
}

impl Default for PlanExecutor {
    fn default() -> Self {
        PlanExecutor {
            round_interval: Duration::from_secs(1),
            tolerated_errors: 3,
            task_timeout: None,
            timeout: None,
        }
    }
}

impl PlanExecutor {
    /// A builder starting from the defaults: 1 s between rounds, 3 consecutive errors
    /// tolerated, no timeouts.
    pub fn builder() -> PlanExecutorBuilder {
        PlanExecutorBuilder {
            config: PlanExecutor::default(),
        }
    }

    /// The sleep between rounds.
    pub fn round_interval(&self) -> Duration {
        self.round_interval
    }

    /// Consecutive errors tolerated; one more ends the run.
    pub fn tolerated_errors(&self) -> u32 {
        self.tolerated_errors
    }

    /// The timeout of one task (its pre, perform and post), if any.
    pub fn task_timeout(&self) -> Option<Duration> {
        self.task_timeout
    }

    /// The timeout of a whole run, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Runs `plan` until it returns no tasks, too many consecutive errors occur, the
    /// execution timeout passes, or `cancel` fires (pass the loop's
    /// [`cancellation_token`](keyloop_core::LoopContext::cancellation_token) so the loop's
    /// shutdown stops it).
    pub async fn run<P: Plan + ?Sized>(
        &self,
        plan: &P,
        cancel: &CancellationToken,
    ) -> Result<ExecReport, ExecError> {
        let token = cancel.child_token();
        // Whatever way this returns, tasks' tokens are cancelled with it.
        let _guard = token.clone().drop_guard();
        let rounds = self.rounds(plan, &token);
        let bounded = async {
            match self.timeout {
                Some(after) => tokio::time::timeout(after, rounds)
                    .await
                    .map_err(|_| ExecError::TimedOut { after })?,
                None => rounds.await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(ExecError::Cancelled),
            result = bounded => result,
        }
    }

    async fn rounds<P: Plan + ?Sized>(
        &self,
        plan: &P,
        token: &CancellationToken,
    ) -> Result<ExecReport, ExecError> {
        let mut report = ExecReport::default();
        let mut errors = 0;
        loop {
            report.rounds += 1;
            let cx = TaskContext {
                token: token.clone(),
                round: report.rounds,
            };
            match plan.create().await {
                Ok(tasks) if tasks.is_empty() => return Ok(report),
                Ok(tasks) => {
                    if let Err(error) = self.run_round(tasks, &cx, &mut report, &mut errors).await {
                        self.tolerate(error, &mut errors, &mut report)?;
                    }
                }
                Err(source) => self.tolerate(TaskError::Plan(source), &mut errors, &mut report)?,
            }
            tokio::time::sleep(self.round_interval).await;
        }
    }

    fn tolerate(
        &self,
        error: TaskError,
        errors: &mut u32,
        report: &mut ExecReport,
    ) -> Result<(), ExecError> {
        *errors += 1;
        if *errors > self.tolerated_errors {
            return Err(ExecError::TooManyErrors {
                errors: *errors,
                tolerated: self.tolerated_errors,
                source: error,
            });
        }
        report.errors_tolerated += 1;
        tracing::warn!(error = %error, consecutive = *errors, "plan round failed; tolerated");
        Ok(())
    }

    /// Runs a round's tasks depth first, stopping at the first failure.
    async fn run_round(
        &self,
        tasks: Vec<BoxTask>,
        cx: &TaskContext,
        report: &mut ExecReport,
        errors: &mut u32,
    ) -> Result<(), TaskError> {
        let mut stack: Vec<BoxTask> = tasks.into_iter().rev().collect();
        while let Some(task) = stack.pop() {
            let subtasks = self.run_task(task.as_ref(), cx).await?;
            *errors = 0;
            report.tasks_succeeded += 1;
            stack.extend(subtasks.into_iter().rev());
        }
        Ok(())
    }

    async fn run_task(
        &self,
        task: &dyn crate::Task,
        cx: &TaskContext,
    ) -> Result<Vec<BoxTask>, TaskError> {
        let tcx = TaskContext {
            token: cx.token.child_token(),
            round: cx.round,
        };
        let _guard = tcx.token.clone().drop_guard();
        let failed = |phase, source| TaskError::Failed {
            task: task.name(),
            phase,
            source,
        };
        let phases = async {
            task.pre(&tcx)
                .await
                .map_err(|e| failed(TaskPhase::Pre, e))?;
            let subtasks = task
                .perform(&tcx)
                .await
                .map_err(|e| failed(TaskPhase::Perform, e))?;
            task.post(&tcx)
                .await
                .map_err(|e| failed(TaskPhase::Post, e))?;
            Ok(subtasks)
        };
        match self.task_timeout {
            Some(after) => tokio::time::timeout(after, phases)
                .await
                .unwrap_or_else(|_| {
                    Err(TaskError::TimedOut {
                        task: task.name(),
                        after,
                    })
                }),
            None => phases.await,
        }
    }
}

/// Builds a [`PlanExecutor`], validated at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct PlanExecutorBuilder {
    config: PlanExecutor,
}

impl PlanExecutorBuilder {
    /// The sleep between rounds (default 1 s; must be greater than zero).
    pub fn round_interval(mut self, interval: Duration) -> Self {
        self.config.round_interval = interval;
        self
    }

    /// How many consecutive errors to tolerate (default 3); one more ends the run. A task
    /// that succeeds resets the count.
    pub fn tolerate_errors(mut self, errors: u32) -> Self {
        self.config.tolerated_errors = errors;
        self
    }

    /// Cancels a task (pre, perform and post together) running longer than `timeout`; that
    /// counts as an error.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Ends a run lasting longer than `timeout`, cancelling the running task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Validates and returns the executor.
    pub fn build(self) -> Result<PlanExecutor, ExecutorConfigError> {
        let c = self.config;
        if c.round_interval.is_zero() {
            return Err(ExecutorConfigError::ZeroRoundInterval);
        }
        if c.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ExecutorConfigError::ZeroTaskTimeout);
        }
        if c.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ExecutorConfigError::ZeroTimeout);
        }
        Ok(c)
    }
}
