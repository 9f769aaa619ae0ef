//! One case's world: a namespace, its nodes, the shared recorder and script.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyloop_core::{
    Backoff, Client, Coordinator, Defect, Engine, EngineConfig, EngineConfigBuilder, Key, KeyInfo,
};

use crate::{
    DirectNode, Faults, FaultyCoordinator, Harness, Namespace, Recorder, Script, ScriptedController,
};

/// One engine of a case, with the fault controls of its coordinator.
#[derive(Clone)]
pub struct Node {
    /// The name the case gave it (also the engine's node name).
    pub name: String,
    /// The engine.
    pub engine: Engine,
    /// Fault injection on the engine's coordinator.
    pub faults: Faults,
}

/// The world of one case: a fresh namespace, the nodes started in it, and the recorder and
/// script their controllers share. Dropping it kills every node still running.
pub struct Case {
    /// The backend's name.
    pub backend: String,
    /// The namespace.
    pub ns: Box<dyn Namespace>,
    /// The backend's lease TTL; every timing below derives from it.
    pub ttl: Duration,
    /// How much later than the TTL the backend may expire a lease.
    pub expiry_slack: Duration,
    /// What every loop did.
    pub recorder: Recorder,
    /// What every loop does.
    pub script: Script,
    nodes: Vec<Node>,
    defects: Vec<Defect>,
}

impl Drop for Case {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.engine.kill();
        }
    }
}

impl Case {
    /// A fresh namespace of `harness`.
    pub async fn new(harness: &dyn Harness) -> Case {
        Case {
            backend: harness.name().to_string(),
            ns: harness.namespace().await,
            ttl: harness.lease_ttl(),
            expiry_slack: harness.expiry_slack(),
            recorder: Recorder::new(),
            script: Script::new(),
            nodes: Vec::new(),
            defects: harness.engine_defects(),
        }
    }

    /// How long a case waits for something that should happen promptly (many times every
    /// timing involved).
    pub fn timeout(&self) -> Duration {
        self.ttl * 10
    }

    /// The claim interval of the case's engines.
    pub fn claim_interval(&self) -> Duration {
        self.ttl / 10
    }

    /// The restart backoff of the case's engines: `ttl/20`, doubling, no jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff::builder()
            .initial(self.ttl / 20)
            .max(self.ttl)
            .multiplier(2.0)
            .jitter(0.0)
            .build()
            .expect("valid backoff")
    }

    /// The engine settings the case's nodes use, derived from the TTL.
    pub fn config(&self, name: &str) -> EngineConfigBuilder {
        let mut config = EngineConfig::builder();
        for defect in &self.defects {
            config = config.inject_defect(*defect);
        }
        config
            .node_name(name)
            .lease_ttl(self.ttl)
            .heartbeat_interval(self.ttl / 5)
            .fence_margin(self.ttl / 5)
            .claim_interval(self.claim_interval())
            .claim_batch(64)
            .shutdown_grace(self.ttl)
            .restart_backoff(self.backoff())
            .healthy_run(self.ttl * 100)
            .max_failures(5)
            .handoff_avoid(self.ttl / 10)
            // Past every case's timeout: cases check that hints arrive, not that the
            // periodic backstop recovers them (one case sets its own).
            .resync_interval(self.timeout() * 2)
    }

    /// Starts a node with the case's settings.
    pub async fn node(&mut self, name: &str) -> Node {
        self.node_with(name, |c| c).await
    }

    /// Starts a node with the case's settings adjusted by `adjust`.
    pub async fn node_with(
        &mut self,
        name: &str,
        adjust: impl FnOnce(EngineConfigBuilder) -> EngineConfigBuilder,
    ) -> Node {
        let config = adjust(self.config(name))
            .build()
            .expect("the suite's engine settings are valid");
        let (coordinator, faults) = FaultyCoordinator::wrap(self.ns.coordinator().await);
        let controller = ScriptedController::new(name, self.recorder.clone(), self.script.clone());
        let engine = Engine::start(config, coordinator, Arc::new(controller))
            .await
            .unwrap_or_else(|e| panic!("[{}] node {name} could not start: {e}", self.backend));
        let node = Node {
            name: name.to_string(),
            engine,
            faults,
        };
        self.nodes.push(node.clone());
        node
    }

    /// Joins a [`DirectNode`] on a fresh coordinator, renewing its lease every `ttl/5`.
    pub async fn direct(&self, name: &str) -> DirectNode {
        let node = DirectNode::join(self.coordinator().await, name, self.ttl).await;
        node.keep_alive(self.ttl / 5);
        node
    }

    /// Joins a [`DirectNode`] that never renews its lease.
    pub async fn direct_without_heartbeats(&self, name: &str) -> DirectNode {
        DirectNode::join(self.coordinator().await, name, self.ttl).await
    }

    /// Kills every node and lets go of them, so that nothing of theirs holds the backend
    /// (before [`Namespace::restart_backend`]).
    pub async fn drop_nodes(&mut self) {
        for node in self.nodes.drain(..) {
            node.engine.kill();
        }
        // Aborted tasks drop their futures (and coordinator handles) when next polled.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A fresh coordinator of the namespace (as another process would have).
    pub async fn coordinator(&self) -> Arc<dyn Coordinator> {
        self.ns.coordinator().await
    }

    /// A client on a fresh coordinator of the namespace.
    pub async fn client(&self) -> Client {
        Client::new(self.coordinator().await)
    }

    /// Waits, up to [`timeout`](Self::timeout), until `done` holds on the loop log.
    pub async fn wait(&self, what: &str, done: impl Fn(&crate::Log) -> bool) {
        self.recorder.wait_until(what, self.timeout(), done).await
    }

    /// Polls the backend's view of `key` until `done` holds; returns the last view.
    pub async fn wait_key(
        &self,
        coordinator: &dyn Coordinator,
        key: &Key,
        what: &str,
        done: impl Fn(&Option<KeyInfo>) -> bool,
    ) -> Option<KeyInfo> {
        eventually(what, self.timeout(), self.ttl / 20, || async {
            let info = coordinator
                .key_info(key)
                .await
                .unwrap_or_else(|e| panic!("key_info({key:?}) failed: {e}"));
            done(&info).then_some(info)
        })
        .await
    }
}

/// Polls `check` every `every` until it returns `Some`; panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, every: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polled = tokio::time::timeout(timeout, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(every).await;
        }
    })
    .await;
    match polled {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?} waiting until {what}"),
    }
}

/// Builds a key from a literal the suite knows is valid.
pub fn key(s: &str) -> Key {
    Key::new(s).unwrap_or_else(|e| panic!("suite key {s:?} is invalid: {e}"))
}
