use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyloop_core::{Coordinator, Defect};

/// What a backend provides to run the conformance suite: fresh isolated namespaces and the
/// lease TTL its cases use.
///
/// The harness is built once per case (by the expression given to
/// [`conformance_tests!`](crate::conformance_tests)), so it may be cheap to make; expensive
/// set-up (a database server) belongs in a process-wide `OnceLock` the harness refers to.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Backend name for messages.
    fn name(&self) -> &str;

    /// Lease TTL the cases use on this backend; every other timing of a case (heartbeat,
    /// claim interval, backoff, timeouts) is derived from it.
    fn lease_ttl(&self) -> Duration;

    /// How much later than the TTL the backend may expire a lease that is not renewed.
    /// Zero for backends that expire exactly at the TTL; Consul may take up to another TTL.
    /// Failover cases allow this much on top of TTL + claim interval.
    fn expiry_slack(&self) -> Duration {
        Duration::ZERO
    }

    /// Engine defects the case's engines get (only for the suite's self-test, see
    /// [`Breakage::Engine`](crate::Breakage::Engine)).
    #[doc(hidden)]
    fn engine_defects(&self) -> Vec<Defect> {
        Vec::new()
    }

    /// A fresh, isolated namespace (memory: a new cluster; postgres: a new schema; sled: a
    /// new directory). Nothing of an earlier namespace is visible in it.
    async fn namespace(&self) -> Box<dyn Namespace>;
}

/// One isolated cluster of a backend, in which a case starts its nodes.
#[async_trait]
pub trait Namespace: Send + Sync {
    /// A coordinator for one more node of this namespace (each engine gets its own, as
    /// separate processes would).
    async fn coordinator(&self) -> Arc<dyn Coordinator>;

    /// Restarts the backend itself (reopen the sled database, restart the server) if it can;
    /// returns `false` when the backend has no such notion. Called only while no engine of
    /// the namespace runs; coordinators made before the restart are not used afterwards.
    async fn restart_backend(&self) -> bool {
        false
    }
}

#[async_trait]
impl<H: Harness + ?Sized> Harness for Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn lease_ttl(&self) -> Duration {
        (**self).lease_ttl()
    }
    fn expiry_slack(&self) -> Duration {
        (**self).expiry_slack()
    }
    fn engine_defects(&self) -> Vec<Defect> {
        (**self).engine_defects()
    }
    async fn namespace(&self) -> Box<dyn Namespace> {
        (**self).namespace().await
    }
}
