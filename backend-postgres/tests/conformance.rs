//! The keyloop conformance suite against PostgreSQL: `cargo test -p keyloop-postgres conformance::`.
//!
//! Uses the server named by `KEYLOOP_TEST_POSTGRES_URL`, or one throw-away server per test
//! process; each case gets its own schema.

use std::sync::Arc;
use std::time::Duration;

use keyloop_conformance::{Harness, Namespace, async_trait, test_postgres_url};
use keyloop_core::{Coordinator, NodeId};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};

struct PostgresHarness;

struct PostgresNamespace {
    url: String,
    schema: String,
}

#[async_trait]
impl Harness for PostgresHarness {
    fn name(&self) -> &str {
        "postgres"
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        let url = test_postgres_url().unwrap_or_else(|| {
            panic!(
                "the postgres conformance suite needs PostgreSQL: put initdb and postgres on \
                 PATH or set KEYLOOP_TEST_POSTGRES_URL"
            )
        });
        let schema = format!("conf_{}", &NodeId::random().to_string()[..16]);
        Box::new(PostgresNamespace { url, schema })
    }
}

#[async_trait]
impl Namespace for PostgresNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        let config = PostgresConfig::builder(&self.url)
            .schema(&self.schema)
            .pool_size(4)
            .build()
            .unwrap();
        Arc::new(PostgresCoordinator::connect(config).await.unwrap())
    }
}

keyloop_conformance::conformance_tests!(PostgresHarness, paused = false);
