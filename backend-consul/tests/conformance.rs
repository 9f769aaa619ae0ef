//! The keyloop conformance suite on the Consul backend.
//!
//! Runs against whatever [`TestConsul`] selects: the in-process emulator, or a real Consul
//! when `CONSUL_HTTP_ADDR` is set (each case in a fresh random KV prefix) or a `consul`
//! binary is on `PATH` (each case starts its own `consul agent -dev`). See the crate README.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyloop_conformance::{Harness, Namespace};
use keyloop_consul::{ConsulConfig, ConsulCoordinator};
use keyloop_consul_emulator::{EmulatorConfig, TestConsul};
use keyloop_core::Coordinator;

/// Lease TTL of every case. A real agent must allow it (`session_ttl_min` ≤ 2 s). Two
/// seconds rather than one: with 44 cases in parallel (one of them 10,000 keys) a 1 s TTL
/// left too little room for timing bounds derived from it on a loaded 2-core machine.
const TTL: Duration = Duration::from_secs(2);

/// Lock-delay of every node's session: after a crash its keys wait this long on top of the
/// session's invalidation, so the failover cases check the bound with it.
const LOCK_DELAY: Duration = Duration::from_millis(500);

struct ConsulHarness;

struct ConsulNamespace {
    consul: TestConsul,
    prefix: String,
}

#[async_trait]
impl Harness for ConsulHarness {
    fn name(&self) -> &str {
        "consul"
    }

    fn lease_ttl(&self) -> Duration {
        TTL
    }

    /// How Consul makes the failover bound: the leader invalidates a session `TTL × 2`
    /// after its last renew (`session_ttl.go`, `SessionTTLMultiplier`), and its keys are
    /// then under lock-delay; the claim interval comes on top in the case itself. So a
    /// dead node's keys move within about 2 × TTL + lock-delay + claim interval.
    fn expiry_slack(&self) -> Duration {
        TTL + LOCK_DELAY
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        let config = EmulatorConfig::builder()
            .min_session_ttl(Duration::from_millis(100))
            .build()
            .unwrap();
        Box::new(ConsulNamespace {
            consul: TestConsul::start(config).await,
            prefix: format!("keyloop-conformance/{:016x}", rand::random::<u64>()),
        })
    }
}

#[async_trait]
impl Namespace for ConsulNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        let mut config = ConsulConfig::builder(self.consul.url())
            .prefix(&self.prefix)
            .lock_delay(LOCK_DELAY)
            .watch_wait(Duration::from_secs(5));
        if let Some(token) = self.consul.token() {
            config = config.token(token);
        }
        Arc::new(ConsulCoordinator::new(config.build().unwrap()))
    }
}

keyloop_conformance::conformance_tests!(ConsulHarness, paused = false);
