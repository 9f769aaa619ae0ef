//! The [`ReconcileController`]: the loop of the reconcile workload, recording what it does.

use std::time::Duration;

use keyloop_core::{
    BoxError, Controller, Decision, Key, LoopContext, ShutdownReason, Wake, async_trait,
};

use crate::{EventKind, IgnoreShutdown, LoopEnd, ReconcileWorkload, Recorder, RunId, SaveResult};

/// The workload's controller: reads the desired generation, writes it to the fenced store
/// with `ctx.epoch()`, saves it as state, and returns `Complete` once actual == desired (after
/// lingering for triggers, if told to; each trigger observed starts another pass). It records its start, every trigger it observes,
/// and its end (an aborted run records `Aborted` when its future is dropped).
#[derive(Clone, Debug)]
pub struct ReconcileController {
    workload: ReconcileWorkload,
}

impl ReconcileController {
    pub(crate) fn new(workload: ReconcileWorkload) -> ReconcileController {
        ReconcileController { workload }
    }
}

/// Records the run's end exactly once: explicitly, or as `Aborted` when dropped unended
/// (an abort drops the future at its `.await`, a killed node drops every loop).
struct EndGuard {
    recorder: Recorder,
    key: Key,
    run: RunId,
    ended: bool,
}

impl EndGuard {
    fn end(&mut self, end: LoopEnd) {
        if !self.ended {
            self.ended = true;
            self.recorder
                .record(&self.key, EventKind::LoopEnded { run: self.run, end });
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.end(LoopEnd::Aborted);
    }
}

#[async_trait]
impl Controller for ReconcileController {
    async fn run(&self, key: Key, ctx: LoopContext) -> Result<Decision, BoxError> {
        let workload = &self.workload;
        let recorder = workload.recorder();
        let run = recorder.next_run();
        recorder.record(
            &key,
            EventKind::LoopStarted {
                node: ctx.node(),
                epoch: ctx.epoch().0,
                run,
            },
        );
        let mut guard = EndGuard {
            recorder: recorder.clone(),
            key: key.clone(),
            run,
            ended: false,
        };
        loop {
            if let Some(reason) = ctx.shutdown_reason() {
                return Ok(stop(&mut guard, reason, workload.on_shutdown(&key)).await);
            }
            // Every pass reads the key's behaviour afresh.
            let plan = workload.plan_run(&key);
            let desired = workload.desired(&key);
            // Checked right before the write; the epoch fences it if this goes stale
            // between the check and the write.
            if !ctx.is_owner() {
                return Ok(stop(&mut guard, ShutdownReason::OwnershipLost, None).await);
            }
            if !workload
                .store()
                .write(&key, ctx.epoch(), desired, Some(run))
            {
                // A newer owner wrote: this loop is stale.
                guard.end(LoopEnd::Continue);
                return Ok(Decision::Continue);
            }
            let sent_ns = recorder.now_ns();
            let saved = ctx.state().save_json(&desired).await;
            let result = match saved {
                Ok(()) => SaveResult::Accepted,
                Err(keyloop_core::StateError::Fenced { .. }) => SaveResult::Fenced,
                Err(e) => SaveResult::Error {
                    error: e.to_string(),
                },
            };
            recorder.record(
                &key,
                EventKind::StateSaved {
                    run,
                    epoch: ctx.epoch().0,
                    sent_ns,
                    result,
                },
            );
            if !plan.work.is_zero() {
                tokio::time::sleep(plan.work).await;
            }
            if plan.fail {
                let error = "injected failure".to_string();
                guard.end(LoopEnd::Failed {
                    error: error.clone(),
                });
                return Err(error.into());
            }
            if plan.panic {
                guard.end(LoopEnd::Panicked);
                panic!("injected panic");
            }
            if workload.desired(&key) != desired {
                continue;
            }
            if plan.linger.is_zero() {
                return Ok(done(&mut guard, workload, &key));
            }
            match tokio::time::timeout(plan.linger, ctx.next()).await {
                Err(_) => return Ok(done(&mut guard, workload, &key)),
                Ok(Wake::Triggered) => {
                    recorder.record(&key, EventKind::TriggerObserved { run });
                }
                Ok(Wake::Shutdown(reason)) => {
                    return Ok(stop(&mut guard, reason, workload.on_shutdown(&key)).await);
                }
            }
        }
    }
}

/// Ends a converged run: `Complete`, or `Continue` if the behaviour asks to continue
/// elsewhere.
fn done(guard: &mut EndGuard, workload: &ReconcileWorkload, key: &Key) -> Decision {
    if workload.take_continue(key) {
        guard.end(LoopEnd::Continue);
        Decision::Continue
    } else {
        guard.end(LoopEnd::Complete);
        Decision::Complete
    }
}

/// Stops the run on a shutdown signal: at once, or (graceful shutdown only) after ignoring
/// it as told. Records the end once the loop no longer acts.
async fn stop(
    guard: &mut EndGuard,
    reason: ShutdownReason,
    ignore: Option<IgnoreShutdown>,
) -> Decision {
    if reason == ShutdownReason::NodeShutdown {
        match ignore {
            Some(IgnoreShutdown::Await(d)) => tokio::time::sleep(d).await,
            Some(IgnoreShutdown::Block(d)) => block_for(d),
            None => {}
        }
    }
    guard.end(LoopEnd::Continue);
    Decision::Continue
}

/// Blocks the thread (a loop busy in code that never awaits).
fn block_for(d: Duration) {
    std::thread::sleep(d);
}
