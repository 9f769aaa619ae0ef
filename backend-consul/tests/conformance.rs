//! The keyloop conformance suite on the Consul backend.
//!
//! Runs against the in-process emulator, or against a real Consul when `CONSUL_HTTP_ADDR` is
//! set (each case in a fresh random KV prefix) or a `consul` binary is on `PATH` (each case
//! starts its own `consul agent -dev`). See the crate README.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyloop_conformance::{Harness, Namespace};
use keyloop_consul::{ConsulConfig, ConsulCoordinator};
use keyloop_consul_emulator::{Emulator, EmulatorConfig};
use keyloop_core::Coordinator;

/// Lease TTL of every case. A real agent must allow it (`session_ttl_min` ≤ 2 s). Two
/// seconds rather than one: with 44 cases in parallel (one of them 10,000 keys) a 1 s TTL
/// left too little room for timing bounds derived from it on a loaded 2-core machine.
const TTL: Duration = Duration::from_secs(2);

enum Backend {
    Emulator,
    Agent(String),
    Binary,
}

fn backend() -> Backend {
    if let Ok(addr) = std::env::var("CONSUL_HTTP_ADDR") {
        if !addr.is_empty() {
            return Backend::Agent(addr);
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("consul").is_file()))
        .unwrap_or(false);
    if on_path {
        Backend::Binary
    } else {
        Backend::Emulator
    }
}

struct ConsulHarness;

struct ConsulNamespace {
    address: String,
    prefix: String,
    token: Option<String>,
    _emulator: Option<Emulator>,
    _agent: Option<Agent>,
}

/// A throw-away `consul agent -dev`, killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_agent() -> (Agent, String) {
    let http = free_port();
    let dir = std::env::temp_dir().join(format!("keyloop-consul-{}", rand::random::<u64>()));
    let child = Command::new("consul")
        .args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-http-port", &http.to_string()])
        .args(["-serf-lan-port", &free_port().to_string()])
        .args(["-serf-wan-port", &free_port().to_string()])
        .args(["-server-port", &free_port().to_string()])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args(["-hcl", "session_ttl_min = \"1s\""])
        .arg(format!("-data-dir={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a consul binary is on PATH but could not be started");
    let agent = Agent(child);
    let address = format!("http://127.0.0.1:{http}");
    let probe = ConsulConfig::builder(&address).build().unwrap();
    for _ in 0..200 {
        if probe
            .client()
            .kv_get("keyloop-probe", keyloop_consul::ReadOptions::default())
            .await
            .is_ok()
        {
            return (agent, address);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("consul agent -dev on port {http} did not come up within 10 s");
}

#[async_trait]
impl Harness for ConsulHarness {
    fn name(&self) -> &str {
        "consul"
    }

    fn lease_ttl(&self) -> Duration {
        TTL
    }

    /// Consul may invalidate a session up to 2×TTL after its last renew.
    fn expiry_slack(&self) -> Duration {
        TTL
    }

    async fn namespace(&self) -> Box<dyn Namespace> {
        let prefix = format!("keyloop-conformance/{:016x}", rand::random::<u64>());
        match backend() {
            Backend::Emulator => {
                let config = EmulatorConfig::builder()
                    .min_session_ttl(Duration::from_millis(100))
                    .build()
                    .unwrap();
                let emulator = Emulator::start_with(config).await.unwrap();
                Box::new(ConsulNamespace {
                    address: emulator.url(),
                    prefix,
                    token: None,
                    _emulator: Some(emulator),
                    _agent: None,
                })
            }
            Backend::Agent(address) => Box::new(ConsulNamespace {
                address,
                prefix,
                token: std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                _emulator: None,
                _agent: None,
            }),
            Backend::Binary => {
                let (agent, address) = start_agent().await;
                Box::new(ConsulNamespace {
                    address,
                    prefix,
                    token: None,
                    _emulator: None,
                    _agent: Some(agent),
                })
            }
        }
    }
}

#[async_trait]
impl Namespace for ConsulNamespace {
    async fn coordinator(&self) -> Arc<dyn Coordinator> {
        let mut config = ConsulConfig::builder(&self.address)
            .prefix(&self.prefix)
            // Failover cases measure lease TTL + claim interval; lock-delay is covered by
            // the crate's own tests.
            .lock_delay(Duration::ZERO)
            .watch_wait(Duration::from_secs(5));
        if let Some(token) = &self.token {
            config = config.token(token);
        }
        Arc::new(ConsulCoordinator::new(config.build().unwrap()))
    }
}

keyloop_conformance::conformance_tests!(ConsulHarness, paused = false);
