//! The conformance suite tests itself: cases that must catch a broken coordinator pass on
//! the memory backend and fail on the same backend deliberately broken.

mod common;

use std::sync::Arc;

use common::MemoryHarness;
use keyloop_conformance::{Breakage, assert_suite_catches};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn suite_catches_a_coordinator_that_allows_two_owners() {
    assert_suite_catches(Arc::new(MemoryHarness::paused()), Breakage::TwoOwners).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn suite_catches_a_coordinator_that_drops_triggers() {
    assert_suite_catches(Arc::new(MemoryHarness::paused()), Breakage::DropsTriggers).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn suite_catches_a_coordinator_with_unfenced_writes() {
    assert_suite_catches(Arc::new(MemoryHarness::paused()), Breakage::UnfencedWrites).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn suite_catches_a_coordinator_with_short_leases() {
    assert_suite_catches(Arc::new(MemoryHarness::paused()), Breakage::ShortLeases).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn suite_catches_a_coordinator_that_ignores_avoidance() {
    assert_suite_catches(Arc::new(MemoryHarness::paused()), Breakage::IgnoresAvoid).await;
}

#[test]
fn every_breakage_is_tested() {
    assert_eq!(Breakage::ALL.len(), 5);
}
