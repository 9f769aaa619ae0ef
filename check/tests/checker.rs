//! The checker on hand-made histories: each violation kind is flagged, and the legal
//! histories that look like violations are not.

use keyloop_check::{
    CheckReport, EventKind, History, LoopEnd, OpId, Recorder, RunId, SaveResult, ViolationKind,
    check,
};
use keyloop_core::{Key, NodeId};

/// Writes a history by hand, one event per call, on a recorder's clock.
struct Script {
    recorder: Recorder,
    key: Key,
}

impl Script {
    fn new() -> Script {
        Script {
            recorder: Recorder::new(),
            key: Key::new("vm/1").unwrap(),
        }
    }

    fn at(&self, kind: EventKind) -> u64 {
        self.recorder.record(&self.key, kind)
    }

    fn start(&self, node: NodeId, epoch: u64) -> RunId {
        let run = self.recorder.next_run();
        self.at(EventKind::LoopStarted { node, epoch, run });
        run
    }

    fn end(&self, run: RunId, end: LoopEnd) {
        self.at(EventKind::LoopEnded { run, end });
    }

    fn trigger(&self) -> OpId {
        let op = self.recorder.next_op();
        self.at(EventKind::TriggerCalled { op });
        self.at(EventKind::TriggerAcked { op, seq: None });
        op
    }

    fn write(&self, run: RunId, epoch: u64, accepted: bool) {
        self.at(EventKind::ExternalWrite {
            run: Some(run),
            epoch,
            value: 1,
            accepted,
        });
    }

    fn save(&self, run: RunId, epoch: u64, sent_ns: u64) {
        self.at(EventKind::StateSaved {
            run,
            epoch,
            sent_ns,
            result: SaveResult::Accepted,
        });
    }

    fn settle(&self, desired: u64, actual: Option<u64>, registered: bool) {
        self.at(EventKind::Settled {
            desired,
            actual,
            registered,
        });
    }

    fn check(&self) -> CheckReport {
        let report = check(&self.recorder.history());
        println!("{report}");
        report
    }
}

fn only(report: &CheckReport, kind: ViolationKind) {
    assert!(report.count(kind) >= 1, "expected {kind}: {report}");
    assert!(
        report.violations.iter().all(|v| v.kind == kind),
        "expected only {kind}: {report}"
    );
    assert!(report.violations.iter().all(|v| !v.excerpt.is_empty()));
}

#[test]
fn two_live_loops_are_flagged() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    let b = s.start(NodeId::random(), 2);
    s.end(b, LoopEnd::Complete);
    s.end(a, LoopEnd::Continue);
    let report = s.check();
    only(&report, ViolationKind::TwoLiveLoops);
    assert_eq!(report.violations[0].excerpt.len(), 3, "{report}");
}

#[test]
fn a_loop_that_never_ended_is_live_to_the_end() {
    let s = Script::new();
    let _zombie = s.start(NodeId::random(), 1);
    let b = s.start(NodeId::random(), 2);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::TwoLiveLoops);
}

#[test]
fn an_epoch_going_back_is_flagged() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 5);
    s.end(a, LoopEnd::Continue);
    let b = s.start(NodeId::random(), 4);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::EpochOrder);
}

#[test]
fn the_same_epoch_on_another_node_is_flagged() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 3);
    s.end(a, LoopEnd::Complete);
    let b = s.start(NodeId::random(), 3);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::EpochOrder);
}

#[test]
fn a_rerun_at_the_same_epoch_after_continue_is_flagged() {
    // After `Continue` the key was handed off: running it again at that epoch means a stale
    // ownership was trusted (the resync-trusts-listing bug).
    let s = Script::new();
    let node = NodeId::random();
    let a = s.start(node, 3);
    s.end(a, LoopEnd::Continue);
    let b = s.start(node, 3);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::EpochOrder);
}

#[test]
fn a_rerun_after_complete_with_no_trigger_is_flagged() {
    // `Complete` with no trigger pending retires the key: nothing may run it again at that
    // epoch (a stale `owned` listing trusted by a resync would).
    let s = Script::new();
    let node = NodeId::random();
    s.trigger();
    let first = s.start(NodeId::random(), 2);
    s.end(first, LoopEnd::Continue);
    let a = s.start(node, 3);
    s.end(a, LoopEnd::Complete);
    let b = s.start(node, 3);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::EpochOrder);
}

#[test]
fn a_rerun_at_the_same_epoch_after_retriggered_or_failure_is_legal() {
    let s = Script::new();
    let node = NodeId::random();
    let a = s.start(node, 3);
    s.trigger();
    // `Complete` answered `Retriggered`: the engine runs the loop again at epoch 3.
    s.end(a, LoopEnd::Complete);
    let b = s.start(node, 3);
    s.end(
        b,
        LoopEnd::Failed {
            error: "boom".into(),
        },
    );
    let c = s.start(node, 3);
    s.end(c, LoopEnd::Panicked);
    let d = s.start(node, 3);
    s.end(d, LoopEnd::Complete);
    let report = s.check();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.triggers_judged, 1);
}

#[test]
fn a_handoff_to_a_higher_epoch_is_legal() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    s.write(a, 1, true);
    s.end(a, LoopEnd::Continue);
    s.trigger();
    let b = s.start(NodeId::random(), 2);
    s.write(b, 2, true);
    s.write(a, 1, false);
    s.end(b, LoopEnd::Complete);
    s.settle(1, Some(1), false);
    let report = s.check();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys_settled, 1);
}

#[test]
fn a_trigger_observed_by_a_running_loop_is_not_lost() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    s.trigger();
    s.at(EventKind::TriggerObserved { run: a });
    s.end(a, LoopEnd::Complete);
    assert!(s.check().is_ok());
}

#[test]
fn a_trigger_nobody_saw_is_lost() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    s.trigger();
    s.end(a, LoopEnd::Complete);
    only(&s.check(), ViolationKind::LostTrigger);
}

#[test]
fn a_start_between_call_and_acknowledgement_counts() {
    let s = Script::new();
    let op = s.recorder.next_op();
    s.at(EventKind::TriggerCalled { op });
    let a = s.start(NodeId::random(), 1);
    s.at(EventKind::TriggerAcked { op, seq: Some(1) });
    s.end(a, LoopEnd::Complete);
    assert!(s.check().is_ok());
}

#[test]
fn a_trigger_without_its_call_is_unjudged() {
    let s = Script::new();
    s.at(EventKind::TriggerAcked {
        op: OpId(77),
        seq: None,
    });
    let report = s.check();
    assert!(report.is_ok());
    assert_eq!(report.triggers_unjudged, 1);
}

#[test]
fn a_stale_external_write_accepted_is_flagged() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    s.end(a, LoopEnd::Continue);
    let b = s.start(NodeId::random(), 2);
    s.write(b, 2, true);
    s.end(b, LoopEnd::Complete);
    // A store that forgot its fence.
    s.write(a, 1, true);
    only(&s.check(), ViolationKind::StaleWriteAccepted);
}

#[test]
fn a_zombie_state_save_accepted_is_flagged() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    s.end(a, LoopEnd::Continue);
    let b = s.start(NodeId::random(), 2);
    let sent = s.recorder.now_ns() + 1;
    // Sent after epoch 2 started (so after it was granted), yet accepted.
    s.at(EventKind::TriggerCalled { op: OpId(1) });
    s.save(a, 1, sent);
    s.end(b, LoopEnd::Complete);
    only(&s.check(), ViolationKind::StaleWriteAccepted);
}

#[test]
fn a_save_sent_before_the_newer_start_may_be_accepted() {
    let s = Script::new();
    let a = s.start(NodeId::random(), 1);
    let sent = s.recorder.now_ns();
    s.end(a, LoopEnd::Continue);
    let b = s.start(NodeId::random(), 2);
    // Processed before the claim, answered late: fine.
    s.save(a, 1, sent);
    s.end(b, LoopEnd::Complete);
    assert!(s.check().is_ok());
}

#[test]
fn keys_that_did_not_converge_are_flagged() {
    let s = Script::new();
    s.settle(3, Some(2), false);
    only(&s.check(), ViolationKind::NotConverged);
    let s = Script::new();
    s.settle(3, Some(3), true);
    only(&s.check(), ViolationKind::NotConverged);
}

#[test]
fn histories_roundtrip_as_json_lines_and_merge() {
    let one = Script::new();
    let a = one.start(NodeId::random(), 1);
    one.trigger();
    let mut file = Vec::new();
    one.recorder.write_jsonl(&mut file).unwrap();
    let read = History::read_jsonl(&file[..]).unwrap();
    assert_eq!(read, one.recorder.history());
    // Another process, on an explicit clock, saw the loop end later.
    let other = Recorder::with_source("other");
    other.record_at(
        u64::MAX / 2,
        &one.key,
        EventKind::LoopEnded {
            run: a,
            end: LoopEnd::Complete,
        },
    );
    let merged = History::merge([read, other.history()]);
    assert_eq!(merged.events().len(), 4);
    assert_eq!(merged.events()[3].source.as_deref(), Some("other"));
    // The trigger was called after the start and never observed: lost.
    only(&check(&merged), ViolationKind::LostTrigger);
    let bad = b"{\"at_ns\":1}\n";
    let err = History::read_jsonl(&bad[..]).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}
