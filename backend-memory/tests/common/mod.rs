//! The memory backend's conformance harness, shared by the suites and the self-test.

use std::sync::Arc;
use std::time::Duration;

use keyloop_conformance::{Harness, Namespace, async_trait};
use keyloop_core::Coordinator;
use keyloop_memory::MemoryCluster;

/// A fresh [`MemoryCluster`] per case; its leases follow tokio's clock (paused or real).
pub(crate) struct MemoryHarness {
    ttl: Duration,
}

impl MemoryHarness {
    /// For tokio's paused clock: a 10 s TTL costs no real time.
    #[allow(dead_code)]
    pub(crate) fn paused() -> MemoryHarness {
        MemoryHarness {
            ttl: Duration::from_secs(10),
        }
    }

    /// For a multi-thread runtime on real time: a short TTL keeps failover cases quick.
    #[allow(dead_code)]
    pub(crate) fn real_time(ttl: Duration) -> MemoryHarness {
        MemoryHarness { ttl }
    }
}

struct MemoryNamespace(MemoryCluster);

#[async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> &str {
        "memory"
    }

    fn lease_ttl(&self) -> Duration {
        self.ttl
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
