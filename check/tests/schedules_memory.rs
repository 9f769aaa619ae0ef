//! Seeded fault schedules on the memory backend, multi-thread runtime: the intact engine
//! shows no violation, and engines or coordinators with known bugs are caught.
//!
//! Rerun one schedule with `KEYLOOP_CHECK_SEED=<seed> cargo test -p keyloop-check --test
//! schedules_memory ci_slice`; its history is written to the temporary directory.

#[path = "common/schedule.rs"]
mod schedule;

use std::time::Instant;

use keyloop_conformance::Breakage;
use keyloop_core::Defect;
use schedule::{Options, Outcome, run_schedules, save_history, seed_from_env};

/// Schedules in the CI slice (about a minute on a shared 2-core machine).
const CI_SCHEDULES: u64 = 40;

fn describe(outcome: &Outcome) -> String {
    format!(
        "seed {}: {} ops, faults {:?}, convergence {:?}, {}",
        outcome.seed,
        outcome.ops,
        outcome.faults,
        outcome.convergence,
        outcome
            .report
            .by_kind()
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[test]
fn ci_slice_finds_no_violation() {
    let (first, count) = match seed_from_env() {
        Some(seed) => (seed, 1),
        None => (0, CI_SCHEDULES),
    };
    let options = Options::default();
    let started = Instant::now();
    let mut failed = Vec::new();
    run_schedules(first, count, &options, |outcome| {
        println!("{}", describe(&outcome));
        if !outcome.report.is_ok() {
            let path = save_history(&outcome, "memory");
            println!("{}history: {}", outcome.report, path.display());
            failed.push(outcome.seed);
        }
        true
    });
    println!("{count} schedules in {:?}", started.elapsed());
    assert!(
        failed.is_empty(),
        "schedules with violations, rerun each with KEYLOOP_CHECK_SEED=<seed>: {failed:?}"
    );
}

/// Runs up to `max` schedules against `breakage`; panics unless one shows a violation.
fn assert_caught(breakage: Breakage, max: u64) {
    let options = Options {
        breakage: Some(breakage),
        // A broken engine may never converge: do not wait for it long.
        settle_timeout: std::time::Duration::from_secs(3),
        ..Options::default()
    };
    let mut caught = None;
    run_schedules(1000, max, &options, |outcome| {
        println!("{breakage:?} {}", describe(&outcome));
        if outcome.report.is_ok() {
            return true;
        }
        println!("{}", outcome.report);
        caught = Some(outcome.seed);
        false
    });
    let seed = caught.unwrap_or_else(|| {
        panic!("no violation in {max} schedules against {breakage:?}: the schedules miss it")
    });
    println!("{breakage:?} caught by seed {seed}");
}

#[test]
fn catches_two_owners() {
    // Caught by every surveyed schedule.
    assert_caught(Breakage::TwoOwners, 3);
}

#[test]
fn catches_dropped_triggers() {
    // Caught by 14 of 16 surveyed schedules.
    assert_caught(Breakage::DropsTriggers, 6);
}

#[test]
fn catches_claims_forgotten_after_a_lost_answer() {
    // Caught by about one schedule in four (a lost claim answer on a node that then keeps
    // its lease, with the periodic resync drawn long): 16 misses in a row are ~1%.
    assert_caught(Breakage::Engine(Defect::ForgetsFailedClaims), 16);
}

// Not asserted, because no schedule written so far catches them reliably (see the
// `survey_breakages` test, run by hand): `UnfencedWrites`, `ShortLeases`, `IgnoresAvoid`,
// and the engine defects `ResyncTrustsListing`, `ParkIgnoresTriggers` (about 1 in 8),
// `ReleasesAbandonedAtOnce`, `ChecksBeforeInsert`, `AcceptsStaleEvents`,
// `NoPeriodicResync`, `AcceptsShortLeases`, `LoopsIgnoreLeaseClock`.

/// How many of `KEYLOOP_CHECK_SURVEY` (default 10) schedules catch each breakage; prints a
/// table. Not an assertion: run by hand to choose the bounds above.
#[test]
#[ignore = "a survey, run by hand"]
fn survey_breakages() {
    let count: u64 = std::env::var("KEYLOOP_CHECK_SURVEY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut all: Vec<Breakage> = Breakage::ALL.to_vec();
    all.extend(schedule::defect_breakages());
    if let Ok(only) = std::env::var("KEYLOOP_CHECK_SURVEY_ONLY") {
        all.retain(|b| format!("{b:?}").contains(&only));
    }
    for breakage in all {
        let options = Options {
            breakage: Some(breakage),
            settle_timeout: std::time::Duration::from_secs(3),
            ..Options::default()
        };
        let mut caught = Vec::new();
        run_schedules(1000, count, &options, |outcome| {
            if !outcome.report.is_ok() {
                let kinds: Vec<String> = outcome
                    .report
                    .by_kind()
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                caught.push(format!("{}:{}", outcome.seed, kinds.join(",")));
            }
            true
        });
        println!(
            "SURVEY {breakage:?}: caught by {}/{count}: {caught:?}",
            caught.len()
        );
    }
}
