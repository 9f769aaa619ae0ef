//! The checker: [`check`] judges a [`History`] key by key.
//!
//! "Before" and "after" are positions in the key's ordered history (by timestamp, then by
//! recording order; see [`History`]). In-process, with one [`Recorder`](crate::Recorder),
//! that order is the recorder's: an event recorded after another in the sense of
//! happens-before comes later. Across processes it is only as good as the clocks merged.
//!
//! What is judged, per key:
//!
//! - **G1, two live loops**: a run is live from its `LoopStarted` to its `LoopEnded` (or to
//!   the end of the history if it never ended). Two runs whose live spans overlap are a
//!   violation. A run records its end when it stops acting (returns, or its future is
//!   dropped), so an overlap means the second run started while the first could still act.
//! - **G1, epoch order**: runs in start order must carry strictly increasing epochs, except
//!   a rerun of the same ownership: same node incarnation, same epoch, started after the
//!   latest run at that epoch ended with a decision the engine reruns (see
//!   `core/src/runner.rs`): an error or a panic (restart after backoff), or `Complete` (or
//!   a requeue) answered `Retriggered` — which needs a trigger called before the rerun
//!   and not acknowledged before the ownership began (before the end of the last run of an
//!   earlier ownership); a same-epoch rerun after `Complete` with no such trigger means a
//!   loop was started for a key its node no longer owned.
//! - **G2, fencing**: an accepted external write whose epoch is below the highest epoch
//!   accepted before it; the same for accepted state saves; and an accepted state save that
//!   was *sent* after a run with a higher epoch had started (the backend had granted the
//!   newer epoch before the save reached it, so it must have refused the save).
//! - **G3, lost trigger**: for every `TriggerAcked` whose `TriggerCalled` is in the history,
//!   some `LoopStarted` or `TriggerObserved` of the key must come after the call. (After
//!   the *call*, not the acknowledgement: a loop may start or observe between the two and
//!   that is what DESIGN G3 promises.) Acknowledged triggers without a recorded call are
//!   counted as unjudged, never guessed.
//! - **Convergence**: the key's last `Settled` event, if any, must show the actual value
//!   reached the desired one (values are generations and only grow: actual ≥ desired) and
//!   the key no longer registered.

use std::collections::HashMap;

use keyloop_core::{Key, NodeId};

use crate::{CheckReport, Event, EventKind, History, LoopEnd, RunId, SaveResult, Violation};
use crate::{OpId, ViolationKind};

/// Longest excerpt attached to a violation.
const MAX_EXCERPT: usize = 40;

/// Checks every key of `history`; see the module documentation for what is judged.
pub fn check(history: &History) -> CheckReport {
    let mut report = CheckReport {
        events: history.events().len(),
        ..CheckReport::default()
    };
    for (key, events) in history.by_key() {
        report.keys += 1;
        KeyCheck::new(&key, &events, &mut report).run();
    }
    report
}

/// One run as the history shows it.
struct Run {
    id: RunId,
    node: NodeId,
    epoch: u64,
    start: usize,
    end: Option<(usize, LoopEnd)>,
}

impl Run {
    fn end_pos(&self) -> usize {
        self.end.as_ref().map_or(usize::MAX, |(pos, _)| *pos)
    }

    fn describe(&self) -> String {
        let end = match &self.end {
            Some((_, end)) => format!("ended {end:?}"),
            None => "never ended".to_string(),
        };
        format!(
            "run {} (node {}, epoch {}, {end})",
            self.id.0, self.node, self.epoch
        )
    }
}

/// A violation about two runs: message, excerpt from and to, the runs.
type RunPair = (String, usize, usize, [RunId; 2]);

struct KeyCheck<'a> {
    key: &'a Key,
    events: &'a [Event],
    report: &'a mut CheckReport,
    runs: Vec<Run>,
}

fn run_of(kind: &EventKind) -> Option<RunId> {
    match kind {
        EventKind::LoopStarted { run, .. }
        | EventKind::TriggerObserved { run }
        | EventKind::LoopEnded { run, .. }
        | EventKind::StateSaved { run, .. } => Some(*run),
        EventKind::ExternalWrite { run, .. } => *run,
        _ => None,
    }
}

impl<'a> KeyCheck<'a> {
    fn new(key: &'a Key, events: &'a [Event], report: &'a mut CheckReport) -> KeyCheck<'a> {
        let mut runs: Vec<Run> = Vec::new();
        let mut index: HashMap<RunId, usize> = HashMap::new();
        for (pos, event) in events.iter().enumerate() {
            match &event.kind {
                EventKind::LoopStarted { node, epoch, run } if !index.contains_key(run) => {
                    index.insert(*run, runs.len());
                    runs.push(Run {
                        id: *run,
                        node: *node,
                        epoch: *epoch,
                        start: pos,
                        end: None,
                    });
                }
                EventKind::LoopEnded { run, end } => {
                    if let Some(&i) = index.get(run) {
                        if runs[i].end.is_none() {
                            runs[i].end = Some((pos, end.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        KeyCheck {
            key,
            events,
            report,
            runs,
        }
    }

    fn run(mut self) {
        self.two_live_loops();
        self.epoch_order();
        self.fencing();
        self.lost_triggers();
        self.convergence();
    }

    fn violation(&mut self, kind: ViolationKind, message: String, excerpt: Vec<Event>) {
        self.report.violations.push(Violation {
            key: self.key.clone(),
            kind,
            message,
            excerpt,
        });
    }

    /// The events between positions `from` and `to` (inclusive) that belong to `runs` or
    /// to no run (triggers), capped at [`MAX_EXCERPT`].
    fn excerpt(&self, from: usize, to: usize, runs: &[RunId]) -> Vec<Event> {
        let to = to.min(self.events.len().saturating_sub(1));
        self.events[from..=to]
            .iter()
            .filter(|e| run_of(&e.kind).is_none_or(|r| runs.contains(&r)))
            .take(MAX_EXCERPT)
            .cloned()
            .collect()
    }

    /// Reports violations about pairs of runs: message, excerpt span, the runs.
    fn report_runs(&mut self, kind: ViolationKind, found: Vec<RunPair>) {
        for (message, from, to, runs) in found {
            let excerpt = self.excerpt(from, to, &runs);
            self.violation(kind, message, excerpt);
        }
    }

    fn two_live_loops(&mut self) {
        let mut found = Vec::new();
        // Runs are in start order: a later run overlaps an earlier one iff it starts before
        // the earlier one ends.
        for (i, first) in self.runs.iter().enumerate() {
            for second in &self.runs[i + 1..] {
                if second.start < first.end_pos() {
                    found.push((
                        format!(
                            "{} started while {} was live",
                            second.describe(),
                            first.describe()
                        ),
                        first.start,
                        first.end_pos().min(second.end_pos()),
                        [first.id, second.id],
                    ));
                }
            }
        }
        self.report_runs(ViolationKind::TwoLiveLoops, found);
    }

    /// Triggers of the key: the position of each call, and of its acknowledgement if any.
    fn triggers(&self) -> Vec<(usize, Option<usize>)> {
        let mut calls: HashMap<OpId, (usize, Option<usize>)> = HashMap::new();
        for (pos, event) in self.events.iter().enumerate() {
            match &event.kind {
                EventKind::TriggerCalled { op } => {
                    calls.entry(*op).or_insert((pos, None));
                }
                EventKind::TriggerAcked { op, .. } => {
                    if let Some(call) = calls.get_mut(op) {
                        call.1.get_or_insert(pos);
                    }
                }
                _ => {}
            }
        }
        calls.into_values().collect()
    }

    fn epoch_order(&mut self) {
        let mut found = Vec::new();
        let triggers = self.triggers();
        // The latest run at the highest epoch so far, and where the ownership it belongs
        // to began: after the end of every run of earlier ownerships that had ended.
        let mut last: Option<&Run> = None;
        let mut ownership_began: Option<usize> = None;
        for run in &self.runs {
            let Some(prev) = last else {
                last = Some(run);
                continue;
            };
            if run.epoch > prev.epoch {
                ownership_began = self
                    .runs
                    .iter()
                    .filter_map(|r| r.end.as_ref().map(|(pos, _)| *pos))
                    .filter(|pos| *pos < run.start)
                    .max();
                last = Some(run);
                continue;
            }
            // `Complete` (or a requeue) reruns only when answered `Retriggered`: a trigger
            // the run did not observe. Its call came before the rerun, and it was not yet
            // acknowledged when this ownership began (if it had been, the claim would have
            // seen it; this presumes G1 held, which is judged separately).
            let retriggered = || {
                triggers.iter().any(|(call, ack)| {
                    *call < run.start
                        && ack.is_none_or(|ack| ownership_began.is_none_or(|b| ack > b))
                })
            };
            let rerun = run.epoch == prev.epoch
                && run.node == prev.node
                && prev.end.as_ref().is_some_and(|(pos, end)| {
                    *pos < run.start
                        && match end {
                            LoopEnd::Complete | LoopEnd::Requeue => retriggered(),
                            other => other.may_rerun(),
                        }
                });
            if rerun {
                last = Some(run);
                continue;
            }
            found.push((
                format!(
                    "{} started after {}: epochs must strictly increase across owners",
                    run.describe(),
                    prev.describe()
                ),
                prev.start,
                run.start,
                [prev.id, run.id],
            ));
        }
        self.report_runs(ViolationKind::EpochOrder, found);
    }

    fn fencing(&mut self) {
        let mut found = Vec::new();
        let mut external: Option<(u64, usize)> = None;
        let mut state: Option<(u64, usize)> = None;
        for (pos, event) in self.events.iter().enumerate() {
            match &event.kind {
                EventKind::ExternalWrite {
                    epoch,
                    accepted: true,
                    ..
                } => {
                    if let Some((highest, at)) = external.filter(|(h, _)| epoch < h) {
                        found.push((
                            format!(
                                "external write at epoch {epoch} accepted after one at epoch {highest}"
                            ),
                            at,
                            pos,
                        ));
                    }
                    if external.is_none_or(|(h, _)| *epoch >= h) {
                        external = Some((*epoch, pos));
                    }
                }
                EventKind::StateSaved {
                    epoch,
                    sent_ns,
                    result: SaveResult::Accepted,
                    ..
                } => {
                    if let Some((highest, at)) = state.filter(|(h, _)| epoch < h) {
                        found.push((
                            format!(
                                "state save at epoch {epoch} accepted after one at epoch {highest}"
                            ),
                            at,
                            pos,
                        ));
                    }
                    if state.is_none_or(|(h, _)| *epoch >= h) {
                        state = Some((*epoch, pos));
                    }
                    let newer = self.runs.iter().find(|r| {
                        r.epoch > *epoch && self.events[r.start].at_ns < *sent_ns && r.start < pos
                    });
                    if let Some(newer) = newer {
                        found.push((
                            format!(
                                "state save at epoch {epoch} sent at {sent_ns} ns was accepted, \
                                 though {} had started before it was sent",
                                newer.describe()
                            ),
                            newer.start,
                            pos,
                        ));
                    }
                }
                _ => {}
            }
        }
        for (message, from, to) in found {
            let excerpt = self.excerpt_all(from, to);
            self.violation(ViolationKind::StaleWriteAccepted, message, excerpt);
        }
    }

    /// Every event between `from` and `to`, capped, keeping both ends.
    fn excerpt_all(&self, from: usize, to: usize) -> Vec<Event> {
        let slice = &self.events[from..=to];
        if slice.len() <= MAX_EXCERPT {
            return slice.to_vec();
        }
        let half = MAX_EXCERPT / 2;
        slice[..half]
            .iter()
            .chain(&slice[slice.len() - half..])
            .cloned()
            .collect()
    }

    fn lost_triggers(&mut self) {
        let mut called: HashMap<OpId, usize> = HashMap::new();
        let mut last_wake: Option<usize> = None;
        for (pos, event) in self.events.iter().enumerate() {
            match &event.kind {
                EventKind::TriggerCalled { op } => {
                    called.entry(*op).or_insert(pos);
                }
                EventKind::LoopStarted { .. } | EventKind::TriggerObserved { .. } => {
                    last_wake = Some(pos);
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        for (pos, event) in self.events.iter().enumerate() {
            let EventKind::TriggerAcked { op, seq } = &event.kind else {
                continue;
            };
            let Some(&call) = called.get(op) else {
                self.report.triggers_unjudged += 1;
                continue;
            };
            self.report.triggers_judged += 1;
            if last_wake.is_none_or(|wake| wake < call) {
                let seq = seq.map_or(String::new(), |s| format!(" (sequence {s})"));
                found.push((
                    format!(
                        "trigger {}{seq} returned Ok, and no loop started or observed a trigger \
                         after it was called",
                        op.0
                    ),
                    last_wake.unwrap_or(call).min(call),
                    pos,
                ));
            }
        }
        for (message, from, ack) in found {
            let to = self.events.len() - 1;
            let mut excerpt = self.excerpt_all(from, ack);
            excerpt.extend(
                self.events[ack + 1..=to]
                    .iter()
                    .take(MAX_EXCERPT / 2)
                    .cloned(),
            );
            self.violation(ViolationKind::LostTrigger, message, excerpt);
        }
    }

    fn convergence(&mut self) {
        let settled = self
            .events
            .iter()
            .rposition(|e| matches!(e.kind, EventKind::Settled { .. }));
        let Some(pos) = settled else { return };
        self.report.keys_settled += 1;
        let EventKind::Settled {
            desired,
            actual,
            registered,
        } = self.events[pos].kind
        else {
            unreachable!("found by its kind");
        };
        let reached = actual.is_some_and(|a| a >= desired) || desired == 0;
        if reached && !registered {
            return;
        }
        let mut why = Vec::new();
        if !reached {
            why.push(format!("actual {actual:?} short of desired {desired}"));
        }
        if registered {
            why.push("still registered".to_string());
        }
        let from = pos.saturating_sub(MAX_EXCERPT - 1);
        let excerpt = self.excerpt_all(from, pos);
        self.violation(
            ViolationKind::NotConverged,
            format!("did not converge: {}", why.join(", ")),
            excerpt,
        );
    }
}
