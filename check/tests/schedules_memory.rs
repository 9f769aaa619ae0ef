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
        "seed {}: {} ops, {}, faults {:?}, convergence {:?}, {}",
        outcome.seed,
        outcome.ops,
        outcome.draw,
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
    // Caught by every surveyed schedule (24 of 24).
    assert_caught(Breakage::TwoOwners, 3);
}

#[test]
fn catches_dropped_triggers() {
    // Caught by 23 of 48 surveyed schedules (fewer than before the schedules drew steady
    // trigger traffic, whose later triggers start loops anyway): 8 misses in a row are
    // ~0.5% at that rate.
    assert_caught(Breakage::DropsTriggers, 8);
}

#[test]
fn catches_claims_forgotten_after_a_lost_answer() {
    // Caught by 8 of 48 surveyed schedules (a lost claim answer on a node that then keeps
    // its lease, with the periodic resync drawn long): 26 misses in a row are ~0.9% at
    // that rate.
    assert_caught(Breakage::Engine(Defect::ForgetsFailedClaims), 26);
}

#[test]
fn catches_parking_that_ignores_triggers() {
    // A trigger lands during a failing run that parks the key, and no trigger comes after
    // (storms of triggers on failing keys last until healing, then stop at a random point
    // of a run; `max_failures` drawn 1 to 3). Caught by 20 of 48 surveyed schedules: 9
    // misses in a row are ~0.8% at that rate.
    assert_caught(Breakage::Engine(Defect::ParkIgnoresTriggers), 9);
}

#[test]
fn catches_abandoned_keys_released_at_once() {
    // A graceful shutdown of a node whose loop blocks its thread past the grace period,
    // with another node ready to claim the key the defect releases at once. Caught by 21
    // of 48 surveyed schedules: 9 misses in a row are ~0.6% at that rate.
    assert_caught(Breakage::Engine(Defect::ReleasesAbandonedAtOnce), 9);
}

#[test]
fn catches_resync_trusting_a_stale_listing() {
    // A slow `owned` answer lists a key its node released meanwhile (a loop that asked to
    // continue elsewhere, or completed and was triggered and claimed elsewhere). Caught by
    // 5 of 48 surveyed schedules: 45 misses in a row are ~0.7% at that rate. The weakest
    // of the bounds: the window (a release between the backend's read and the answer's
    // arrival) is narrow for 8 keys and 40 operations.
    assert_caught(Breakage::Engine(Defect::ResyncTrustsListing), 45);
}

// Not asserted, because no schedule written so far catches them reliably (see the
// `survey_breakages` test, or `--breakage` of the `schedules` example, run by hand):
// `UnfencedWrites`, `ShortLeases`, `IgnoresAvoid`, and the engine defects
// `ChecksBeforeInsert`, `AcceptsStaleEvents`, `NoPeriodicResync`, `AcceptsShortLeases`,
// `LoopsIgnoreLeaseClock`.
//
// Survey of the harsher schedules (skewed call delays, slow `owned` listings, keys that
// keep moving between nodes, steady trigger traffic, failing keys under storms of
// triggers until healing, blocking loops targeted by graceful shutdowns, `max_failures`
// and `handoff_avoid` drawn per schedule), memory backend, seeds from 1000, on a shared
// 2-core machine (`cargo run -p keyloop-check --example schedules -- --schedules N --seed
// 1000 --breakage <name>`):
//
// | breakage                          | seeds | caught | rate | bound | P(miss all) |
// |-----------------------------------|-------|--------|------|-------|-------------|
// | TwoOwners                         | 24    | 24     | 100% | 3     | ~0          |
// | DropsTriggers                     | 48    | 23     | 48%  | 8     | 0.5%        |
// | Engine(ForgetsFailedClaims)       | 48    | 8      | 17%  | 26    | 0.9%        |
// | Engine(ParkIgnoresTriggers)       | 48    | 20     | 42%  | 9     | 0.8%        |
// | Engine(ReleasesAbandonedAtOnce)   | 48    | 21     | 44%  | 9     | 0.6%        |
// | Engine(ResyncTrustsListing)       | 48    | 5      | 10%  | 45    | 0.7%        |
//
// (Before: ParkIgnoresTriggers about 1 in 8, ReleasesAbandonedAtOnce 2 of 16,
// ResyncTrustsListing 0 of 16, DropsTriggers 14 of 16.) The rest were not surveyed again.
//
// Intact engine: 300 schedules (seeds 0..300) with no violation, in 361 s on the shared
// machine; then 200 (seeds 5000..5200) in 253 s with one failing seed, 5060 (not
// reproduced in 5 reruns). Both failures found so far look like one liveness bug: a key
// stays registered and no loop runs it for 5 s after healing, the periodic resync drawn
// long (30 s), so a key owned by a live node without a loop is never re-read. Seed 5060:
// `key/5` completed at epoch 2, was triggered again and never ran (faults included a
// lost claim answer, failing calls and slow `owned`); an earlier draft's seed 139 (about
// one run in six): `key/5` returned `Continue` on a node with slow `release` calls and
// never ran again. Histories: `tests/histories/intact-memory-seed-{139,5060}.jsonl`. The
// cause is not found yet.

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
