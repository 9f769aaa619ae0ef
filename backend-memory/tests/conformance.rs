//! The conformance suite on the memory backend, under tokio's paused time.

use std::sync::Arc;
use std::time::Duration;

use keyloop_conformance::{Harness, Namespace, async_trait};
use keyloop_core::Coordinator;
use keyloop_memory::MemoryCluster;

/// A fresh [`MemoryCluster`] per case; its leases follow tokio's (paused) clock.
pub struct MemoryHarness;

struct MemoryNamespace(MemoryCluster);

#[async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> &str {
        "memory"
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(MemoryNamespace(MemoryCluster::new()))
    }
}

#[async_trait]
impl Namespace for MemoryNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        self.0.coordinator()
    }
}

keyloop_conformance::conformance_tests!(MemoryHarness, paused = true);

#[test]
fn suite_has_every_case_of_the_checklist() {
    assert_eq!(keyloop_conformance::CASES.len(), 42);
}
