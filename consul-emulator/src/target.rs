//! The Consul a test runs against: a real agent when the environment provides one, else an
//! emulator. The same suites (the emulator's fidelity suite, the backend's conformance
//! suite) run on either, which is how a new Consul version is validated.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Emulator, EmulatorConfig};

/// The `session_ttl_min` a throw-away agent is started with, and that an agent named by
/// `CONSUL_HTTP_ADDR` must allow.
pub const REAL_SESSION_TTL_MIN: Duration = Duration::from_secs(1);

/// How long a throw-away agent may take to elect itself leader.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A Consul to test against, chosen by [`TestConsul::start`]:
///
/// 1. `CONSUL_HTTP_ADDR` is set (with `CONSUL_HTTP_TOKEN` if ACLs are on): that agent. Its
///    `session_ttl_min` must be at most [`REAL_SESSION_TTL_MIN`]; tests isolate themselves
///    by key prefix.
/// 2. a `consul` binary is on `PATH`: a throw-away `consul agent -dev` on free ports with
///    `session_ttl_min = "1s"`, stopped when this is dropped.
/// 3. otherwise: an [`Emulator`] with the given settings.
///
/// An agent that cannot be reached or started is a panic, never a silent fallback.
pub struct TestConsul {
    url: String,
    token: Option<String>,
    emulator: Option<Emulator>,
    _agent: Option<Agent>,
}

impl std::fmt::Debug for TestConsul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestConsul")
            .field("url", &self.url)
            .field("real", &self.is_real())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A throw-away `consul agent -dev`, killed when dropped.
struct Agent {
    child: Child,
    data_dir: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Which tier the environment selects (see [`TestConsul`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tier {
    Agent(String),
    Binary,
    Emulator,
}

fn tier() -> Tier {
    if let Ok(addr) = std::env::var("CONSUL_HTTP_ADDR") {
        if !addr.is_empty() {
            return Tier::Agent(addr);
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("consul").is_file()))
        .unwrap_or(false);
    if on_path {
        Tier::Binary
    } else {
        Tier::Emulator
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("a bound port")
        .port()
}

/// `host:port` of an `http://` URL (or of a bare `host:port`).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/')
}

/// The agent's Raft leader (`GET /v1/status/leader`), `None` while there is none or the agent
/// does not answer.
async fn leader(url: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(host_port(url)).await.ok()?;
    let request = format!(
        "GET /v1/status/leader HTTP/1.0\r\nHost: {}\r\n\r\n",
        host_port(url)
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let leader = body.trim().trim_matches('"');
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
        .then(|| leader.to_string())
        .filter(|l| !l.is_empty())
}

async fn start_agent() -> (Agent, String) {
    let http = free_port();
    let data_dir = std::env::temp_dir().join(format!("keyloop-consul-{}", uuid::Uuid::new_v4()));
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
        .arg(format!("-data-dir={}", data_dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a consul binary is on PATH but could not be started");
    let agent = Agent { child, data_dir };
    let url = format!("http://127.0.0.1:{http}");
    let started = tokio::time::Instant::now();
    while started.elapsed() < AGENT_START_TIMEOUT {
        if leader(&url).await.is_some() {
            return (agent, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("consul agent -dev on port {http} elected no leader within {AGENT_START_TIMEOUT:?}");
}

impl TestConsul {
    /// The Consul the environment selects; an emulator started with `config` if none.
    pub async fn start(config: EmulatorConfig) -> TestConsul {
        match tier() {
            Tier::Agent(addr) => {
                let url = if addr.contains("://") {
                    addr
                } else {
                    format!("http://{addr}")
                };
                assert!(
                    leader(&url).await.is_some(),
                    "CONSUL_HTTP_ADDR={url} names no reachable Consul agent with a leader"
                );
                TestConsul {
                    url,
                    token: std::env::var("CONSUL_HTTP_TOKEN")
                        .ok()
                        .filter(|t| !t.is_empty()),
                    emulator: None,
                    _agent: None,
                }
            }
            Tier::Binary => {
                let (agent, url) = start_agent().await;
                TestConsul {
                    url,
                    token: None,
                    emulator: None,
                    _agent: Some(agent),
                }
            }
            Tier::Emulator => {
                let emulator = Emulator::start_with(config)
                    .await
                    .expect("the emulator starts");
                TestConsul {
                    url: emulator.url(),
                    token: None,
                    emulator: Some(emulator),
                    _agent: None,
                }
            }
        }
    }

    /// Its base URL (`http://host:port`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The ACL token to send (`CONSUL_HTTP_TOKEN` for an agent named by `CONSUL_HTTP_ADDR`).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The emulator, when this is one (tests that inject faults need it).
    pub fn emulator(&self) -> Option<&Emulator> {
        self.emulator.as_ref()
    }

    /// Whether this is a real Consul agent.
    pub fn is_real(&self) -> bool {
        self.emulator.is_none()
    }
}
