//! The seeded fault schedules on the sled backend (one store in a temporary directory per
//! schedule, shared by every node), multi-thread runtime: the intact engine shows no
//! violation.
//!
//! Rerun one schedule with `KEYLOOP_CHECK_SEED=<seed> cargo test -p keyloop-check --test
//! schedules_sled`.

#[path = "common/schedule.rs"]
mod schedule;

use schedule::{Backend, Options, run_schedules, save_history, seed_from_env};

/// Schedules in the CI slice: sled flushes every acknowledged write, so fewer than memory.
const CI_SCHEDULES: u64 = 12;

#[test]
fn sled_slice_finds_no_violation() {
    let (first, count) = match seed_from_env() {
        Some(seed) => (seed, 1),
        None => (0, CI_SCHEDULES),
    };
    let options = Options {
        backend: Backend::Sled,
        ..Options::default()
    };
    let mut failed = Vec::new();
    run_schedules(first, count, &options, |outcome| {
        println!(
            "seed {}: faults {:?}, convergence {:?}, {} violations",
            outcome.seed,
            outcome.faults,
            outcome.convergence,
            outcome.report.violations.len()
        );
        if !outcome.report.is_ok() {
            let path = save_history(&outcome, "sled");
            println!("{}history: {}", outcome.report, path.display());
            failed.push(outcome.seed);
        }
        true
    });
    assert!(
        failed.is_empty(),
        "schedules with violations, rerun each with KEYLOOP_CHECK_SEED=<seed>: {failed:?}"
    );
}
