//! The one list of case names, and the macro that turns it into tests.

/// Calls `$callback! { $($args)* [case, case, ...] }` with every case name: the checklist
/// of DESIGN §6 in its order, then the cases beyond it. The single source of the case list: tests, [`CASES`](crate::CASES) and
/// [`run_case`](crate::run_case) all expand from it.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:path { $($args:tt)* }) => {
        $callback! { $($args)* [
            // ownership
            triggered_key_runs,
            trigger_wakes_running_loop,
            trigger_reaches_owner_on_other_node,
            burst_of_triggers_coalesces,
            trigger_during_complete_reruns_loop,
            complete_retires_key,
            continue_hands_key_to_other_node,
            continue_on_single_node_runs_again,
            epochs_strictly_increase_across_owners,
            epochs_never_reset_after_retire_and_retrigger,
            concurrent_claimers_get_disjoint_keys,
            racing_claims_leave_one_owner,
            // failover and fencing
            crashed_node_keys_fail_over_after_ttl,
            crashed_node_keys_not_claimed_before_ttl,
            stalled_node_stops_loops_before_expiry,
            zombie_save_rejected_after_takeover,
            zombie_save_rejected_after_expiry_without_takeover,
            stale_release_rejected,
            ownership_lost_signals_shutdown,
            // handoff
            graceful_shutdown_hands_off_all_keys,
            handoff_does_not_wait_for_ttl,
            triggers_during_handoff_reach_next_owner,
            loop_ignoring_shutdown_is_abandoned_and_reported,
            shutdown_report_lists_keys,
            // registry and state
            registry_survives_restart_of_all_nodes,
            state_roundtrips,
            state_visible_to_next_owner,
            oversized_state_is_typed_error,
            // liveness and concurrency
            max_loops_respected,
            excess_keys_go_to_other_nodes,
            new_node_picks_pending_keys,
            ten_thousand_keys_across_three_nodes,
            // notifications
            notification_gap_resyncs,
            lost_notification_does_not_lose_trigger,
            // supervision
            loop_error_restarts_with_backoff,
            loop_panic_is_caught,
            repeated_failures_park_key,
            parked_key_resumes_on_trigger,
            // bad input
            invalid_keys_rejected,
            unicode_and_special_keys_roundtrip,
            trigger_after_shutdown_is_error,
            client_trigger_registers_key,
            // beyond the checklist
            trigger_storm_loses_nothing,
            concurrent_triggers_never_lower_the_sequence,
            // engine races at the edges of ownership
            resync_never_starts_a_released_key,
            trigger_during_failing_run_is_not_parked,
            abandoned_loop_is_released_only_after_its_task_ends,
            loop_started_during_shutdown_gets_its_signal,
            shutdown_hand_off_is_not_claimed_back,
            wrong_ownership_notice_does_not_strand_the_key,
            stale_incarnation_events_are_ignored,
            claims_whose_answer_was_lost_still_run,
            lost_hint_is_recovered_by_periodic_resync,
            short_granted_lease_is_refused,
            // durable wake-ups
            sleeping_key_is_not_claimable_before_its_wake_up,
            requeued_key_runs_after_its_delay_and_not_before,
            trigger_wakes_a_sleeping_key_early,
            wake_up_survives_restart_of_all_nodes,
            many_sleeping_keys_hold_no_loop_and_all_wake,
            requeue_without_durable_wake_ups_waits_in_the_task,
        ] }
    };
}

/// Generates the conformance suite for a backend: a module `conformance` with one
/// `#[tokio::test]` per case, named after the case, so `cargo test -p <backend> conformance::`
/// runs exactly the suite.
///
/// - `harness`: an expression building the backend's [`Harness`](crate::Harness); evaluated
///   once per test, inside the generated module (which sees the enclosing module's items).
/// - `paused = true` runs every case on a current-thread runtime with tokio's time paused
///   (for backends whose clock is tokio's, such as memory); `paused = false` on a
///   multi-thread runtime with two workers and real time.
/// - `skip = { case: "why", ... }` (optional): cases the backend cannot support, each with
///   its reason; they run as a test that prints the reason and passes.
///
/// The backend needs no direct tokio dependency for this: the tests use the suite's own.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use keyloop_conformance::{async_trait, Harness, Namespace};
/// # struct MyHarness;
/// # #[async_trait]
/// # impl Harness for MyHarness {
/// #     fn name(&self) -> &str { "mine" }
/// #     fn lease_ttl(&self) -> Duration { Duration::from_secs(2) }
/// #     async fn namespace(&self) -> Box<dyn Namespace> { unimplemented!() }
/// # }
/// keyloop_conformance::conformance_tests!(MyHarness, paused = false, skip = {
///     ten_thousand_keys_across_three_nodes: "the test server is too small",
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr, paused = true $(, skip = { $($skip:ident : $reason:literal),* $(,)? })? $(,)?) => {
        $crate::__with_cases! { $crate::__conformance_module {
            harness = $harness,
            attr = #[$crate::__private::tokio::test(
                crate = "::keyloop_conformance::__private::tokio",
                flavor = "current_thread",
                start_paused = true
            )],
            skip = [$($(($skip, $reason)),*)?],
        } }
    };
    ($harness:expr, paused = false $(, skip = { $($skip:ident : $reason:literal),* $(,)? })? $(,)?) => {
        $crate::__with_cases! { $crate::__conformance_module {
            harness = $harness,
            attr = #[$crate::__private::tokio::test(
                crate = "::keyloop_conformance::__private::tokio",
                flavor = "multi_thread",
                worker_threads = 2
            )],
            skip = [$($(($skip, $reason)),*)?],
        } }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_module {
    (
        harness = $harness:expr,
        attr = #[$attr:meta],
        skip = [$(($skip:ident, $reason:literal)),*],
        [$($case:ident),* $(,)?]
    ) => {
        /// The keyloop conformance suite, one test per case.
        #[allow(unused_imports, non_snake_case)]
        mod conformance {
            use super::*;

            const SKIPPED: &[(&str, &str)] = &[$((stringify!($skip), $reason)),*];

            #[test]
            fn skipped_cases_exist() {
                $crate::__private::check_skipped(SKIPPED);
            }

            $(
                #[$attr]
                async fn $case() {
                    if let Some(reason) = $crate::__private::skip_reason(SKIPPED, stringify!($case)) {
                        eprintln!("conformance case {} skipped: {}", stringify!($case), reason);
                        return;
                    }
                    let harness = $harness;
                    $crate::cases::$case(&harness).await;
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    ([$($case:ident),* $(,)?]) => {
        /// Every case name: the checklist of DESIGN §6 in its order, then the cases beyond it.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];

        /// Runs the case named `case` against `harness`; panics when the case fails or no
        /// case has that name.
        pub async fn run_case(harness: &dyn $crate::Harness, case: &str) {
            match case {
                $(stringify!($case) => $crate::cases::$case(harness).await,)*
                other => panic!("no conformance case named {other:?}"),
            }
        }
    };
}
