//! The keyloop conformance suite against PostgreSQL: `cargo test -p keyloop-postgres conformance::`.
//!
//! Uses the server named by `KEYLOOP_TEST_POSTGRES_URL` (each case in its own schema; the
//! backend is then never restarted), or else a throw-away server per case, so that cases can
//! restart the backend (`restart_backend`) without disturbing each other.

use std::sync::Arc;
use std::time::Duration;

use keyloop_conformance::{
    Harness, Namespace, POSTGRES_URL_ENV, PostgresServer, async_trait, dedicated_postgres_server,
};
use keyloop_core::{Coordinator, NodeId};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};

struct PostgresHarness;

struct PostgresNamespace {
    url: String,
    schema: String,
    /// The case's own server, when not using an external one.
    server: Option<Arc<PostgresServer>>,
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
        let schema = format!("conf_{}", &NodeId::random().to_string()[..16]);
        if let Ok(url) = std::env::var(POSTGRES_URL_ENV)
            && !url.is_empty()
        {
            return Box::new(PostgresNamespace {
                url,
                schema,
                server: None,
            });
        }
        let server = tokio::task::spawn_blocking(dedicated_postgres_server)
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "the postgres conformance suite needs PostgreSQL: put initdb and postgres \
                     on PATH or set {POSTGRES_URL_ENV}"
                )
            });
        Box::new(PostgresNamespace {
            url: server.url(),
            schema,
            server: Some(Arc::new(server)),
        })
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

    async fn restart_backend(&self) -> bool {
        let Some(server) = self.server.clone() else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            server.stop().unwrap();
            server.resume().unwrap();
        })
        .await
        .unwrap();
        true
    }
}

impl Drop for PostgresNamespace {
    fn drop(&mut self) {
        // Stopping waits for the server; keep that off the async workers.
        if let Some(server) = self.server.take() {
            std::thread::spawn(move || drop(server));
        }
    }
}

keyloop_conformance::conformance_tests!(PostgresHarness, paused = false);
