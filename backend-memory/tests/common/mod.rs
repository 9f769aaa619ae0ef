//! The memory backend's conformance harness, shared by the suite and its self-test.

use std::sync::Arc;
use std::time::Duration;

use keyloop_conformance::{Harness, Namespace, async_trait};
use keyloop_core::Coordinator;
use keyloop_memory::MemoryCluster;

/// A fresh [`MemoryCluster`] per case; its leases follow tokio's (paused) clock.
pub(crate) struct MemoryHarness;

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
