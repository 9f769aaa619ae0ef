//! The conformance suite catches the engine's own past bugs: each case written for one of
//! them passes on the engine as it is and fails on the engine with that bug put back
//! (`Breakage::Engine`). Multi-thread runtime and real time, where the races can happen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::MemoryHarness;
use keyloop_conformance::{Breakage, assert_suite_catches};
use keyloop_core::Defect;

fn harness() -> Arc<MemoryHarness> {
    Arc::new(MemoryHarness::real_time(Duration::from_secs(1)))
}

macro_rules! catches {
    ($($name:ident: $defect:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                assert_suite_catches(harness(), Breakage::Engine(Defect::$defect)).await;
            }
        )*

        #[test]
        fn every_defect_with_a_case_is_tested() {
            let tested = [$(Defect::$defect),*];
            for defect in Defect::ALL {
                let has_case = !Breakage::Engine(*defect).cases_that_must_fail().is_empty();
                assert_eq!(
                    has_case,
                    tested.contains(defect),
                    "{defect:?}: a defect with a case must be tested here, and only those"
                );
            }
        }
    };
}

catches! {
    suite_catches_resync_trusting_a_stale_listing: ResyncTrustsListing,
    suite_catches_parking_past_an_acknowledged_trigger: ParkIgnoresTriggers,
    suite_catches_releasing_abandoned_loops_at_once: ReleasesAbandonedAtOnce,
    suite_catches_checking_before_inserting_a_loop: ChecksBeforeInsert,
    suite_catches_applying_stale_incarnation_events: AcceptsStaleEvents,
    suite_catches_forgetting_failed_claims: ForgetsFailedClaims,
    suite_catches_no_periodic_resync: NoPeriodicResync,
    suite_catches_accepting_short_leases: AcceptsShortLeases,
}
