//! The [`ReconcileWorkload`]: desired generations per key, a fenced external store, and
//! the bookkeeping to record triggers and judge convergence.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyloop_core::{Coordinator, CoordinatorError, Key, TriggerOutcome};

use crate::{Behaviour, EventKind, FencedStore, ReconcileController, Recorder};

/// A reconcile workload for tests: per key a desired generation, bumped before each
/// trigger; a [`FencedStore`] holding the actual generation the loops wrote; and
/// [`Behaviour`]s (failures, panics, ignored shutdowns) to inject per key. Everything it
/// does is recorded in its [`Recorder`]. Cheap to clone.
///
/// Convergence: every key's actual value has reached its *acknowledged* desired value (the
/// generation bumped before its latest trigger that returned `Ok`; a trigger that failed
/// promises nothing, though a loop may still read its bump, so actual may be ahead), and
/// the registry is drained (no key left in [`Coordinator::inspect`]).
#[derive(Clone, Debug)]
pub struct ReconcileWorkload {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    recorder: Recorder,
    store: FencedStore,
    desired: Mutex<BTreeMap<Key, u64>>,
    /// Per key, the generation bumped before the latest trigger that returned `Ok`.
    acknowledged: Mutex<BTreeMap<Key, u64>>,
    behaviours: Mutex<HashMap<Key, Behaviour>>,
    linger: Duration,
}

/// What one run of a loop is told to do (taken from the key's [`Behaviour`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunPlan {
    pub(crate) fail: bool,
    pub(crate) panic: bool,
    pub(crate) linger: Duration,
    pub(crate) work: Duration,
}

/// Where the workload stands, as [`ReconcileWorkload::progress`] sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Keys whose actual value has not reached their acknowledged desired one.
    pub behind: Vec<Key>,
    /// Keys still registered and not parked.
    pub registered: Vec<Key>,
    /// Keys parked after repeated failures.
    pub parked: Vec<Key>,
}

impl Progress {
    /// Every key converged and the registry is drained.
    pub fn converged(&self) -> bool {
        self.behind.is_empty() && self.registered.is_empty() && self.parked.is_empty()
    }

    /// Nothing moves any more without a new trigger: every key converged, or is parked
    /// with its actual value up to date.
    pub fn settled(&self) -> bool {
        self.behind.is_empty() && self.registered.is_empty()
    }
}

impl ReconcileWorkload {
    /// A workload recording into `recorder`; converged loops return `Complete` at once
    /// unless a [`Behaviour`] sets a linger.
    pub fn new(recorder: Recorder) -> ReconcileWorkload {
        ReconcileWorkload::with_linger(recorder, Duration::ZERO)
    }

    /// A workload whose converged loops wait `linger` for more triggers before returning
    /// `Complete`.
    pub fn with_linger(recorder: Recorder, linger: Duration) -> ReconcileWorkload {
        ReconcileWorkload {
            inner: Arc::new(Inner {
                store: FencedStore::new(recorder.clone()),
                recorder,
                desired: Mutex::default(),
                acknowledged: Mutex::default(),
                behaviours: Mutex::default(),
                linger,
            }),
        }
    }

    /// The recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// The external store the loops write.
    pub fn store(&self) -> &FencedStore {
        &self.inner.store
    }

    /// A controller running this workload, for an engine.
    pub fn controller(&self) -> ReconcileController {
        ReconcileController::new(self.clone())
    }

    /// The desired generation of `key` (0 if never triggered through the workload).
    pub fn desired(&self, key: &Key) -> u64 {
        self.inner
            .desired
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The generation bumped before `key`'s latest trigger that returned `Ok` (0 if none):
    /// what convergence requires.
    pub fn acknowledged(&self, key: &Key) -> u64 {
        self.inner
            .acknowledged
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Every key the workload triggered.
    pub fn keys(&self) -> Vec<Key> {
        self.inner.desired.lock().unwrap().keys().cloned().collect()
    }

    /// Sets how `key`'s loops misbehave from now on.
    pub fn set_behaviour(&self, key: &Key, behaviour: Behaviour) {
        self.inner
            .behaviours
            .lock()
            .unwrap()
            .insert(key.clone(), behaviour);
    }

    /// Every loop behaves again (faults healed).
    pub fn clear_behaviours(&self) {
        self.inner.behaviours.lock().unwrap().clear();
    }

    /// What `key`'s loops do on a graceful-shutdown signal, as of now.
    pub(crate) fn on_shutdown(&self, key: &Key) -> Option<crate::IgnoreShutdown> {
        self.inner
            .behaviours
            .lock()
            .unwrap()
            .get(key)
            .and_then(|b| b.on_shutdown)
    }

    /// Whether a converged run of `key` returns `Continue` rather than `Complete` (taking
    /// one of the behaviour's `continue_runs`).
    pub(crate) fn take_continue(&self, key: &Key) -> bool {
        let mut behaviours = self.inner.behaviours.lock().unwrap();
        match behaviours.get_mut(key) {
            Some(b) if b.continue_runs > 0 => {
                b.continue_runs -= 1;
                true
            }
            _ => false,
        }
    }

    /// What the next pass of a run of `key` does, taking one of the behaviour's counted
    /// failures or panics.
    pub(crate) fn plan_run(&self, key: &Key) -> RunPlan {
        let mut behaviours = self.inner.behaviours.lock().unwrap();
        let Some(b) = behaviours.get_mut(key) else {
            return RunPlan {
                linger: self.inner.linger,
                ..RunPlan::default()
            };
        };
        let fail = b.fail_runs > 0;
        let panic = !fail && b.panic_runs > 0;
        if fail {
            b.fail_runs -= 1;
        } else if panic {
            b.panic_runs -= 1;
        }
        RunPlan {
            fail,
            panic,
            linger: b.linger.unwrap_or(self.inner.linger),
            work: b.work,
        }
    }

    /// Bumps `key`'s desired generation, then calls `call` (a trigger through an engine or
    /// a client), recording the call and, if it returned `Ok`, its acknowledgement.
    pub async fn trigger_with<F, Fut, E>(&self, key: &Key, call: F) -> Result<TriggerOutcome, E>
    where
        F: FnOnce(Key) -> Fut,
        Fut: Future<Output = Result<TriggerOutcome, E>>,
    {
        let generation = {
            let mut desired = self.inner.desired.lock().unwrap();
            let generation = desired.entry(key.clone()).or_insert(0);
            *generation += 1;
            *generation
        };
        let recorder = &self.inner.recorder;
        let op = recorder.next_op();
        recorder.record(key, EventKind::TriggerCalled { op });
        let outcome = call(key.clone()).await?;
        let mut acknowledged = self.inner.acknowledged.lock().unwrap();
        let target = acknowledged.entry(key.clone()).or_insert(0);
        *target = (*target).max(generation);
        drop(acknowledged);
        recorder.record(
            key,
            EventKind::TriggerAcked {
                op,
                seq: Some(outcome.seq.0),
            },
        );
        Ok(outcome)
    }

    /// Triggers `key` through `engine` ([`trigger_with`](Self::trigger_with)).
    pub async fn trigger(
        &self,
        engine: &keyloop_core::Engine,
        key: &Key,
    ) -> Result<TriggerOutcome, keyloop_core::Error> {
        self.trigger_with(key, |k| engine.trigger(k)).await
    }

    /// Where every key stands on `coordinator`'s registry.
    pub async fn progress(
        &self,
        coordinator: &dyn Coordinator,
    ) -> Result<Progress, CoordinatorError> {
        let snapshot = coordinator.inspect().await?;
        let mut progress = Progress::default();
        for info in snapshot.keys {
            if info.parked.is_some() {
                progress.parked.push(info.key);
            } else {
                progress.registered.push(info.key);
            }
        }
        for (key, target) in self.inner.acknowledged.lock().unwrap().iter() {
            if self
                .inner
                .store
                .read(key)
                .is_none_or(|actual| actual < *target)
            {
                progress.behind.push(key.clone());
            }
        }
        Ok(progress)
    }

    /// Polls [`progress`](Self::progress) every `every` until `done` holds or `timeout`
    /// passes; returns the last progress and how long it took (`None` on timeout).
    pub async fn wait_for(
        &self,
        coordinator: &dyn Coordinator,
        timeout: Duration,
        every: Duration,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<(Progress, Option<Duration>), CoordinatorError> {
        let started = Instant::now();
        loop {
            let progress = self.progress(coordinator).await?;
            if done(&progress) {
                return Ok((progress, Some(started.elapsed())));
            }
            if started.elapsed() >= timeout {
                return Ok((progress, None));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Records the final word on every key (a [`EventKind::Settled`] event) as
    /// `coordinator` sees it now, for the checker's convergence judgement.
    pub async fn settle(&self, coordinator: &dyn Coordinator) -> Result<(), CoordinatorError> {
        let keys = self.keys();
        for key in keys {
            let registered = coordinator.key_info(&key).await?.is_some();
            self.inner.recorder.record(
                &key,
                EventKind::Settled {
                    desired: self.acknowledged(&key),
                    actual: self.inner.store.read(&key),
                    registered,
                },
            );
        }
        Ok(())
    }
}
