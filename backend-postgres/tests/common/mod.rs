//! Shared helpers for the integration tests: a server, a fresh schema per test, event
//! collection with timeouts.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::time::Duration;

use keyloop_core::{CoordinatorEvent, EventSink, NodeId, NodeInfo};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator};
use tokio::sync::mpsc;

pub use keyloop_conformance::{
    PostgresServer, dedicated_postgres_server, shared_postgres_server, test_postgres_url,
};

pub const WAIT: Duration = Duration::from_secs(15);

/// A schema name no other test uses.
pub fn fresh_schema(tag: &str) -> String {
    let id = NodeId::random().to_string();
    format!("t_{tag}_{}", &id[..12])
}

pub async fn coordinator(url: &str, schema: &str) -> PostgresCoordinator {
    let config = PostgresConfig::builder(url).schema(schema).build().unwrap();
    PostgresCoordinator::connect(config).await.unwrap()
}

/// A raw client for poking at the database behind the coordinator's back.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

pub fn node(name: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId::random(),
        name: name.to_owned(),
    }
}

pub struct Events {
    rx: mpsc::UnboundedReceiver<CoordinatorEvent>,
}

pub fn events() -> (EventSink, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        EventSink::new(move |e| {
            let _ = tx.send(e);
        }),
        Events { rx },
    )
}

impl Events {
    /// Waits for an event matching `pred`, skipping others; panics after [`WAIT`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&CoordinatorEvent) -> bool,
    ) -> CoordinatorEvent {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) if pred(&e) => return e,
                Ok(Some(_)) => {}
                Ok(None) => panic!("event sink closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Drops every event received so far.
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// Waits until `f` returns `Some`, polling; panics after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
