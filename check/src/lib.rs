//! An offline history checker for keyloop, Jepsen/Elle style, and a workload to record
//! histories with.
//!
//! Record what loops, triggers and fenced stores did in a [`Recorder`]; hand the
//! [`History`] to [`check`]; read the typed [`Violation`]s of the guarantees (single owner,
//! epoch order, fencing, no lost trigger, convergence), each with the excerpt of the key's
//! history that shows it.
//!
//! ```
//! use keyloop_check::{check, EventKind, LoopEnd, Recorder, ViolationKind};
//! use keyloop_core::{Key, NodeId};
//!
//! let recorder = Recorder::new();
//! let key = Key::new("vm/1").unwrap();
//! let (a, b) = (NodeId::random(), NodeId::random());
//! let (first, second) = (recorder.next_run(), recorder.next_run());
//! recorder.record(&key, EventKind::LoopStarted { node: a, epoch: 1, run: first });
//! // A second owner starts while the first still runs: G1 is broken.
//! recorder.record(&key, EventKind::LoopStarted { node: b, epoch: 2, run: second });
//! recorder.record(&key, EventKind::LoopEnded { run: first, end: LoopEnd::Continue });
//! recorder.record(&key, EventKind::LoopEnded { run: second, end: LoopEnd::Complete });
//!
//! let report = check(&recorder.history());
//! assert_eq!(report.count(ViolationKind::TwoLiveLoops), 1);
//! println!("{report}");
//! ```
//!
//! Engines record through the [`ReconcileWorkload`]: its [`ReconcileController`] reads a
//! desired generation per key, writes it to a [`FencedStore`] fenced by the loop's epoch,
//! and records its start, the triggers it observes and its end;
//! [`ReconcileWorkload::trigger`] bumps the desired generation and records the trigger's
//! call and acknowledgement; [`ReconcileWorkload::settle`] records the final state for the
//! convergence judgement. Histories of several processes are written as JSON lines
//! ([`History::write_jsonl`]), read back ([`History::read_jsonl`]) and merged
//! ([`History::merge`]).
//!
//! Only `keyloop-core` is needed: the checker works with any backend.

mod behaviour;
mod check;
mod controller;
mod error;
mod event;
mod history;
mod recorder;
mod report;
mod store;
mod violation;
mod workload;

pub use behaviour::{Behaviour, IgnoreShutdown};
pub use check::check;
pub use controller::ReconcileController;
pub use error::Error;
pub use event::{Event, EventKind, LoopEnd, OpId, RunId, SaveResult};
pub use history::History;
pub use recorder::Recorder;
pub use report::CheckReport;
pub use store::FencedStore;
pub use violation::{Violation, ViolationKind};
pub use workload::{Progress, ReconcileWorkload};
