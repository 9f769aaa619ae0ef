//! A log of what loops did, shared by every node of a case, with waiting and checks.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keyloop_core::{Decision, Epoch, Key, NodeId, ShutdownReason};
use tokio::sync::watch;
use tokio::time::Instant;

/// What happened in one loop.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Happening {
    /// `Controller::run` was entered.
    Start,
    /// The loop observed a trigger burst (`ctx.next()` returned `Triggered`).
    TriggerObserved,
    /// The loop saw its shutdown signal, with the reason and whether its cancellation token
    /// was cancelled at that moment.
    Shutdown {
        /// The reason given.
        reason: ShutdownReason,
        /// Whether `ctx.cancellation_token()` was cancelled too.
        token_cancelled: bool,
    },
    /// The loop loaded its state (decoded as a counter where possible).
    StateLoaded(Option<Vec<u8>>),
    /// The loop saved its state.
    StateSaved(Vec<u8>),
    /// A state save failed; the error's `Debug` form.
    SaveFailed(String),
    /// `run` returned a decision.
    End(Decision),
    /// `run` returned an error.
    Failed(String),
    /// `run` is about to panic.
    Panicking,
    /// The loop's future was dropped without returning (the task was aborted).
    Dropped,
    /// The loop is about to block its thread (`Step::BlockOnShutdown`).
    Blocked,
    /// Not a loop event: the case is about to call `trigger` for the key (recorded with node
    /// id 0, epoch 0), so the log orders triggers against loop starts.
    TriggerSent,
}

impl Happening {
    /// Whether the loop is over after this.
    pub fn ends_loop(&self) -> bool {
        matches!(
            self,
            Happening::End(_) | Happening::Failed(_) | Happening::Panicking | Happening::Dropped
        )
    }
}

/// One entry of the log.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position in the log.
    pub index: usize,
    /// When it happened (tokio's clock, so virtual under paused time).
    pub at: Instant,
    /// The name of the node, as the case called it.
    pub node: String,
    /// The node incarnation that ran the loop.
    pub node_id: NodeId,
    /// The key.
    pub key: Key,
    /// The loop's epoch.
    pub epoch: Epoch,
    /// Which run of this key this is, counted across all nodes (0 for the first).
    pub run: usize,
    /// What happened.
    pub what: Happening,
}

#[derive(Debug, Clone)]
struct Live {
    run: usize,
    node: String,
    node_id: NodeId,
    epoch: Epoch,
    since: Instant,
}

/// Everything recorded so far, with indexes for cheap queries.
#[derive(Default)]
pub struct Log {
    records: Vec<Record>,
    runs_by_key: HashMap<Key, usize>,
    live: HashMap<Key, Vec<Live>>,
    live_per_node: HashMap<String, usize>,
    max_live_per_node: HashMap<String, usize>,
    max_epoch: HashMap<Key, (Epoch, NodeId)>,
    violations: Vec<(Key, String)>,
}

impl Log {
    /// Every record, in order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Records of `key`, in order.
    pub fn of(&self, key: &Key) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| &r.key == key)
    }

    /// The `Start` records of `key`, in order.
    pub fn starts(&self, key: &Key) -> Vec<&Record> {
        self.of(key)
            .filter(|r| r.what == Happening::Start)
            .collect()
    }

    /// How many times `key` was started.
    pub fn start_count(&self, key: &Key) -> usize {
        self.runs_by_key.get(key).copied().unwrap_or(0)
    }

    /// How many distinct keys were started at least once.
    pub fn started_keys(&self) -> usize {
        self.runs_by_key.len()
    }

    /// The position of the last record of `key` matching `what`.
    pub fn last_index(&self, key: &Key, what: impl Fn(&Happening) -> bool) -> Option<usize> {
        self.last(key, what).map(|r| r.index)
    }

    /// Records of `key` matching `what`.
    pub fn count(&self, key: &Key, what: impl Fn(&Happening) -> bool) -> usize {
        self.of(key).filter(|r| what(&r.what)).count()
    }

    /// The last record of `key` matching `what`.
    pub fn last(&self, key: &Key, what: impl Fn(&Happening) -> bool) -> Option<&Record> {
        self.of(key).filter(|r| what(&r.what)).last()
    }

    /// Whether a loop of `key` is running now (started, not yet ended).
    pub fn is_live(&self, key: &Key) -> bool {
        self.live.get(key).is_some_and(|l| !l.is_empty())
    }

    /// Node names with a live loop for `key`.
    pub fn live_nodes(&self, key: &Key) -> Vec<String> {
        self.live
            .get(key)
            .map(|l| l.iter().map(|l| l.node.clone()).collect())
            .unwrap_or_default()
    }

    /// Number of live loops on node `node`.
    pub fn live_on(&self, node: &str) -> usize {
        self.live_per_node.get(node).copied().unwrap_or(0)
    }

    /// The most loops node `node` ever ran at once.
    pub fn max_live_on(&self, node: &str) -> usize {
        self.max_live_per_node.get(node).copied().unwrap_or(0)
    }

    /// Overlaps and epoch regressions seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Every record of `key`, one a line, for failure messages.
    pub fn history(&self, key: &Key) -> String {
        let origin = self.records.first().map(|r| r.at);
        let mut out = String::new();
        for r in self.of(key) {
            let _ = writeln!(
                out,
                "  +{:>10.3?} {:<8} {:?} epoch={} run={} {:?}",
                origin.map(|o| r.at - o).unwrap_or_default(),
                r.node,
                r.node_id,
                r.epoch,
                r.run,
                r.what
            );
        }
        out
    }

    fn violation_report(&self) -> String {
        let mut msg = String::new();
        for (key, v) in &self.violations {
            let _ = writeln!(msg, "- {v}");
            let _ = writeln!(msg, "  history of {key:?}:\n{}", self.history(key));
        }
        msg
    }

    fn push(
        &mut self,
        node: &str,
        node_id: NodeId,
        key: &Key,
        epoch: Epoch,
        run: usize,
        what: Happening,
    ) {
        let at = Instant::now();
        if what == Happening::Start {
            self.check_start(node, node_id, key, epoch, run, at);
        } else if what.ends_loop() {
            if let Some(lives) = self.live.get_mut(key) {
                if let Some(pos) = lives.iter().position(|l| l.run == run) {
                    let gone = lives.remove(pos);
                    if let Some(n) = self.live_per_node.get_mut(&gone.node) {
                        *n -= 1;
                    }
                }
            }
        }
        self.records.push(Record {
            index: self.records.len(),
            at,
            node: node.to_string(),
            node_id,
            key: key.clone(),
            epoch,
            run,
            what,
        });
    }

    fn check_start(
        &mut self,
        node: &str,
        node_id: NodeId,
        key: &Key,
        epoch: Epoch,
        run: usize,
        at: Instant,
    ) {
        let lives = self.live.entry(key.clone()).or_default();
        {
            for other in lives.iter() {
                self.violations.push((key.clone(), format!(
                    "two live loops for key {key:?}: run {run} started on {node} ({node_id:?}) at epoch {epoch} \
                     while run {} on {} ({:?}) at epoch {} (started {:?} earlier) had not ended",
                    other.run,
                    other.node,
                    other.node_id,
                    other.epoch,
                    at - other.since,
                )));
            }
        }
        lives.push(Live {
            run,
            node: node.to_string(),
            node_id,
            epoch,
            since: at,
        });
        let n = self.live_per_node.entry(node.to_string()).or_default();
        *n += 1;
        let max = self.max_live_per_node.entry(node.to_string()).or_default();
        *max = (*max).max(*n);
        match self.max_epoch.get(key) {
            Some(&(max, by)) if epoch < max || (epoch == max && by != node_id) => {
                self.violations.push((key.clone(), format!(
                    "epoch did not increase for key {key:?}: run {run} on {node} ({node_id:?}) got epoch \
                     {epoch} after epoch {max} on {by:?}"
                )));
            }
            _ => {}
        }
        let entry = self
            .max_epoch
            .entry(key.clone())
            .or_insert((epoch, node_id));
        if epoch >= entry.0 {
            *entry = (epoch, node_id);
        }
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(first) = self.records.first() else {
            return f.write_str("(no loop activity)");
        };
        let origin = first.at;
        let shown = self.records.len().min(200);
        let skip = self.records.len() - shown;
        if skip > 0 {
            writeln!(f, "({skip} earlier records not shown)")?;
        }
        for r in &self.records[skip..] {
            writeln!(
                f,
                "  +{:>10.3?} {:<8} {:?} key={:?} epoch={} run={} {:?}",
                r.at - origin,
                r.node,
                r.node_id,
                r.key.as_str(),
                r.epoch,
                r.run,
                r.what
            )?;
        }
        Ok(())
    }
}

/// A shared, append-only log of loop activity across every node of a case.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Log>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lock().fmt(f)
    }
}

impl Recorder {
    /// An empty log.
    pub fn new() -> Recorder {
        Recorder {
            log: Arc::new(Mutex::new(Log::default())),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Locks the log to query it.
    pub fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run of `key`; returns its run number.
    pub(crate) fn start(&self, node: &str, node_id: NodeId, key: &Key, epoch: Epoch) -> usize {
        let run = {
            let mut log = self.lock();
            let runs = log.runs_by_key.entry(key.clone()).or_insert(0);
            let run = *runs;
            *runs += 1;
            log.push(node, node_id, key, epoch, run, Happening::Start);
            run
        };
        self.changed.send_modify(|v| *v += 1);
        run
    }

    /// Records that the case is about to trigger `key` from `by`.
    pub fn trigger_sent(&self, by: &str, key: &Key) {
        self.note(
            by,
            NodeId::from_u128(0),
            key,
            Epoch(0),
            usize::MAX,
            Happening::TriggerSent,
        );
    }

    pub(crate) fn note(
        &self,
        node: &str,
        node_id: NodeId,
        key: &Key,
        epoch: Epoch,
        run: usize,
        what: Happening,
    ) {
        self.lock().push(node, node_id, key, epoch, run, what);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits until `done` holds on the log; panics with `what` and the log after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&Log) -> bool) {
        let mut changes = self.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                {
                    let log = self.lock();
                    if !log.violations.is_empty() {
                        panic!(
                            "single-owner violation while waiting until {what}:\n{}loop log:\n{log:?}",
                            log.violation_report()
                        );
                    }
                    if done(&log) {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            panic!("timed out after {timeout:?} waiting until {what}; loop log:\n{self:?}");
        }
    }

    /// Panics if, within `quiet`, anything matching `unwanted` happens (for checks that
    /// something does *not* happen; the only place the suite waits a fixed time).
    pub async fn assert_nothing_for(
        &self,
        what: &str,
        quiet: Duration,
        unwanted: impl Fn(&Log) -> bool,
    ) {
        let mut changes = self.changed.subscribe();
        let _ = tokio::time::timeout(quiet, async {
            loop {
                changes.borrow_and_update();
                let happened = unwanted(&self.lock());
                assert!(
                    !happened,
                    "{what} happened, which must not; loop log:\n{self:?}"
                );
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
    }

    /// Panics if two loops of a key ever overlapped or an epoch failed to increase.
    pub fn assert_consistent(&self) {
        let log = self.lock();
        if !log.violations.is_empty() {
            panic!(
                "single-owner violations:\n{}loop log:\n{log:?}",
                log.violation_report()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::new(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_owners_with_rising_epochs_are_consistent() {
        let r = Recorder::new();
        let (a, b) = (NodeId::random(), NodeId::random());
        let run = r.start("a", a, &k("x"), Epoch(1));
        r.note(
            "a",
            a,
            &k("x"),
            Epoch(1),
            run,
            Happening::End(Decision::Continue),
        );
        let run = r.start("b", b, &k("x"), Epoch(2));
        // A restart on the same node keeps the epoch.
        r.note(
            "b",
            b,
            &k("x"),
            Epoch(2),
            run,
            Happening::Failed("e".into()),
        );
        r.start("b", b, &k("x"), Epoch(2));
        r.assert_consistent();
        let log = r.lock();
        assert_eq!(log.start_count(&k("x")), 3);
        assert_eq!(log.live_on("b"), 1);
        assert_eq!(log.max_live_on("a"), 1);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "two live loops")]
    async fn overlapping_loops_are_a_violation() {
        let r = Recorder::new();
        r.start("a", NodeId::random(), &k("x"), Epoch(1));
        r.start("b", NodeId::random(), &k("x"), Epoch(2));
        r.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "epoch did not increase")]
    async fn a_reused_epoch_on_another_node_is_a_violation() {
        let r = Recorder::new();
        let a = NodeId::random();
        let run = r.start("a", a, &k("x"), Epoch(5));
        r.note("a", a, &k("x"), Epoch(5), run, Happening::Dropped);
        r.start("b", NodeId::random(), &k("x"), Epoch(5));
        r.assert_consistent();
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_times_out_with_the_log() {
        let r = Recorder::new();
        r.start("a", NodeId::random(), &k("x"), Epoch(1));
        let waiting = r.clone();
        let waited = tokio::spawn(async move {
            waiting
                .wait_until("two starts", Duration::from_secs(5), |log| {
                    log.start_count(&k("x")) == 2
                })
                .await
        })
        .await;
        let panic = waited.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("timed out after 5s waiting until two starts"),
            "{message}"
        );
        assert!(message.contains("key=\"x\""), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_wakes_on_new_records() {
        let r = Recorder::new();
        let writer = r.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.start("a", NodeId::random(), &k("x"), Epoch(1));
        });
        r.wait_until("a start", Duration::from_secs(5), |log| {
            log.started_keys() == 1
        })
        .await;
    }
}
