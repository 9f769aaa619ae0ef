//! The HTTP front: routes Consul API requests to the store, applying faults, ACLs and limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::EmulatorConfig;
use crate::duration;
use crate::fault::{Control, FaultKind, FaultState, Shared};
use crate::store::{Behavior, Entry, Store, StoreError};

/// Consul's default blocking wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's longest blocking wait.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's default lock-delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// How often expired sessions are reaped.
const REAP_EVERY: Duration = Duration::from_millis(10);

/// A running Consul HTTP API emulator bound to `127.0.0.1` on a free port.
///
/// It stops when dropped.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use keyloop_consul_emulator::Emulator;
///
/// let emulator = Emulator::start().await.unwrap();
/// assert!(emulator.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(emulator.control().request_total(), 0);
/// # });
/// ```
pub struct Emulator {
    addr: SocketAddr,
    control: Control,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listening socket failed.
    #[error("cannot bind the emulator's socket")]
    Bind(#[source] std::io::Error),
}

struct Dropped;

impl std::fmt::Debug for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Dropped {}

impl Emulator {
    /// Starts an emulator with Consul's default settings.
    pub async fn start() -> Result<Emulator, StartError> {
        Emulator::start_with(EmulatorConfig::default()).await
    }

    /// Starts an emulator with `config`.
    pub async fn start_with(config: EmulatorConfig) -> Result<Emulator, StartError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(StartError::Bind)?;
        let addr = listener.local_addr().map_err(StartError::Bind)?;
        let (changed, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changed,
            faults: Mutex::new(FaultState::default()),
            blocked: watch::channel(0).0,
        });
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(config);

        let reaper = {
            let shared = shared.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REAP_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    let mut store = shared.store.lock().unwrap();
                    if store.reap(Instant::now()) > 0 {
                        let index = store.index();
                        drop(store);
                        shared.changed.send_replace(index);
                    }
                }
            })
        };

        let acceptor = {
            let shared = shared.clone();
            let mut stopped_accept = stopped.clone();
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        r = listener.accept() => match r {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                        _ = stopped_accept.changed() => return,
                    };
                    let shared = shared.clone();
                    let config = config.clone();
                    let mut stopped = stopped.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            handle(shared.clone(), config.clone(), req)
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = conn => {}
                            _ = stopped.changed() => {}
                        }
                    });
                }
            })
        };

        Ok(Emulator {
            addr,
            control: Control { shared },
            stop,
            tasks: vec![reaper, acceptor],
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The handle that injects faults and inspects state.
    pub fn control(&self) -> Control {
        self.control.clone()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = respond(status, body.into());
    r.headers_mut()
        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, serde_json::to_vec(v).unwrap())
}

fn with_index(mut r: Resp, index: u64) -> Resp {
    let h = r.headers_mut();
    h.insert("x-consul-index", index.to_string().parse().unwrap());
    h.insert("x-consul-knownleader", "true".parse().unwrap());
    h.insert("x-consul-lastcontact", "0".parse().unwrap());
    r
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(&k.replace('+', " ")).unwrap_or_default();
        let v = decode(&v.replace('+', " ")).unwrap_or_default();
        out.insert(k, v);
    }
    out
}

fn endpoint_name(method: &Method, path: &str) -> String {
    let ep = if path.starts_with("/v1/kv/") {
        "/v1/kv".to_string()
    } else if let Some(rest) = path.strip_prefix("/v1/session/") {
        format!("/v1/session/{}", rest.split('/').next().unwrap_or(""))
    } else {
        path.to_string()
    };
    format!("{method} {ep}")
}

async fn handle(
    shared: Arc<Shared>,
    config: Arc<EmulatorConfig>,
    req: Request<Incoming>,
) -> Result<Resp, Dropped> {
    let method = req.method().clone();
    let Some(path) = decode(req.uri().path()) else {
        return Ok(text(StatusCode::BAD_REQUEST, "invalid path encoding"));
    };
    let query = parse_query(req.uri().query());
    let index_param: u64 = query.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
    let reports_index = method == Method::GET && path.starts_with("/v1/kv/");
    let fault = {
        let mut faults = shared.faults.lock().unwrap();
        *faults
            .counts
            .entry(endpoint_name(&method, &path))
            .or_default() += 1;
        faults.take(&path, index_param > 0, reports_index)
    };
    match fault {
        Some(FaultKind::Error500) => {
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "injected fault"));
        }
        Some(FaultKind::DropConnection) => return Err(Dropped),
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }

    if let Some(want) = &config.acl_token {
        let given = req
            .headers()
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query.get("token").cloned());
        if given.as_deref() != Some(want.as_str()) {
            return Ok(text(
                StatusCode::FORBIDDEN,
                "Permission denied: token with AccessorID '' lacks permission",
            ));
        }
    }
    if let Some(dc) = query.get("dc") {
        if dc != &config.datacenter {
            return Ok(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
            ));
        }
    }

    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };

    let index_fault = fault.filter(|f| f.is_index_fault());
    let resp = if let Some(key) = path.strip_prefix("/v1/kv/") {
        match method {
            Method::GET => kv_get(&shared, &config, key, &query, index_param, index_fault).await,
            Method::PUT => kv_put(&shared, &config, key, &query, body),
            Method::DELETE => kv_delete(&shared, key, &query),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    } else if path == "/v1/txn" {
        if method == Method::PUT {
            txn(&shared, &config, &body)
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
    } else if let Some(rest) = path.strip_prefix("/v1/session/") {
        session(&shared, &config, &method, rest, &body)
    } else {
        text(StatusCode::NOT_FOUND, "404 page not found")
    };
    Ok(resp)
}

/// A KV entry as Consul renders it (typed, so large listings serialize quickly).
#[derive(serde::Serialize)]
struct EntryOut<'a> {
    #[serde(rename = "LockIndex")]
    lock_index: u64,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "Flags")]
    flags: u64,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

impl<'a> EntryOut<'a> {
    fn new(key: &'a str, e: &'a Entry, with_value: bool) -> EntryOut<'a> {
        EntryOut {
            lock_index: e.lock_index,
            key,
            flags: e.flags,
            value: (with_value && !e.value.is_empty()).then(|| B64.encode(&e.value)),
            session: e.session.as_deref(),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if with_value && !e.value.is_empty() { Value::String(B64.encode(&e.value)) } else { Value::Null },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::String(s.clone());
    }
    v
}

fn notify(shared: &Shared, store: &Store) {
    shared.changed.send_replace(store.index());
}

/// Counts a blocking query while it waits, so tests can wait for one to be in flight.
struct BlockedGuard<'a>(&'a Shared);

impl<'a> BlockedGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.blocked.send_modify(|n| *n += 1);
        BlockedGuard(shared)
    }
}

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        self.0.blocked.send_modify(|n| *n -= 1);
    }
}

async fn kv_get(
    shared: &Shared,
    config: &EmulatorConfig,
    key: &str,
    query: &HashMap<String, String>,
    want: u64,
    index_fault: Option<FaultKind>,
) -> Resp {
    let recurse = query.contains_key("recurse");
    let keys = query.contains_key("keys");
    let wait = match query.get("wait") {
        Some(w) => match duration::parse(w) {
            Some(d) => d.min(MAX_WAIT),
            None => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
        },
        None => DEFAULT_WAIT,
    };
    let jitter = if config.jitter && want > 0 {
        let max = (wait / 16).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=max))
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait + jitter;
    let mut changes = shared.changed.subscribe();
    loop {
        changes.borrow_and_update();
        // Cheap index check first: only a query about to answer builds its body.
        let index = {
            let store = shared.store.lock().unwrap();
            if recurse || keys {
                store.prefix_index(key)
            } else {
                store.key_index(key)
            }
        };
        let ready =
            want == 0 || index.max(1) > want || index_fault.is_some() || Instant::now() >= deadline;
        if !ready {
            let _blocked = BlockedGuard::new(shared);
            tokio::select! {
                r = changes.changed() => { if r.is_err() { return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"); } }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            continue;
        }
        // Copy what the answer needs under the lock; render it outside, so that a large
        // listing does not hold up every other request.
        let (found, index) = {
            let store = shared.store.lock().unwrap();
            if recurse || keys {
                let items: Vec<(String, Entry)> = store
                    .list(key)
                    .into_iter()
                    .map(|(k, e)| (k.to_string(), e.clone()))
                    .collect();
                (items, store.prefix_index(key))
            } else {
                let items = store
                    .get(key)
                    .map(|e| (key.to_string(), e.clone()))
                    .into_iter()
                    .collect();
                (items, store.key_index(key))
            }
        };
        let large = found.len() > 256;
        let render = move || -> (StatusCode, Vec<u8>) {
            if found.is_empty() {
                (StatusCode::NOT_FOUND, Vec::new())
            } else if keys {
                let names: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
                (StatusCode::OK, serde_json::to_vec(&names).unwrap())
            } else {
                let all: Vec<EntryOut<'_>> = found
                    .iter()
                    .map(|(k, e)| EntryOut::new(k, e, true))
                    .collect();
                (StatusCode::OK, serde_json::to_vec(&all).unwrap())
            }
        };
        let (status, body) = if large {
            match tokio::task::spawn_blocking(render).await {
                Ok(r) => r,
                Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "render failed"),
            }
        } else {
            render()
        };
        // Consul never reports 0, so that clients do not busy-loop.
        let index = index.max(1);
        let done = want == 0 || index > want || index_fault.is_some() || Instant::now() >= deadline;
        if done {
            let reported = match index_fault {
                Some(FaultKind::IndexBackwards) => {
                    want.saturating_sub(1).max(index / 2).min(index - 1).max(1)
                }
                Some(FaultKind::IndexReset) => 1,
                Some(FaultKind::IndexZero) => 0,
                _ => index,
            };
            let r = respond(status, body);
            return with_index(r, reported);
        }
        tokio::select! {
            r = changes.changed() => { if r.is_err() { return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"); } }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn too_large(size: usize, max: usize) -> Resp {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({size} bytes) too large, max size: {max} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

fn kv_put(
    shared: &Shared,
    config: &EmulatorConfig,
    key: &str,
    query: &HashMap<String, String>,
    body: Bytes,
) -> Resp {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if body.len() > config.max_value_bytes {
        return too_large(body.len(), config.max_value_bytes);
    }
    let flags: u64 = query.get("flags").and_then(|f| f.parse().ok()).unwrap_or(0);
    let mut store = shared.store.lock().unwrap();
    let now = Instant::now();
    let ok = if let Some(session) = query.get("acquire") {
        match store.acquire(key, body.to_vec(), flags, session, now, None) {
            Ok(e) => e.is_some(),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    } else if let Some(session) = query.get("release") {
        match store.release(key, Some(body.to_vec()), flags, session, None) {
            Ok(e) => e.is_some(),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    } else if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "Invalid CAS index");
        };
        store.cas(key, body.to_vec(), flags, cas, None).is_some()
    } else {
        store.set(key, body.to_vec(), flags, None);
        true
    };
    notify(shared, &store);
    respond(StatusCode::OK, if ok { "true" } else { "false" })
}

fn kv_delete(shared: &Shared, key: &str, query: &HashMap<String, String>) -> Resp {
    let mut store = shared.store.lock().unwrap();
    let ok = if query.contains_key("recurse") {
        store.delete_tree(key, None);
        true
    } else if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "Invalid CAS index");
        };
        store.delete_cas(key, cas, None)
    } else {
        store.delete(key, None);
        true
    };
    notify(shared, &store);
    respond(StatusCode::OK, if ok { "true" } else { "false" })
}

#[derive(serde::Deserialize)]
struct TxnOp {
    #[serde(rename = "KV")]
    kv: Option<KvOp>,
}

#[derive(serde::Deserialize)]
struct KvOp {
    #[serde(rename = "Verb")]
    verb: String,
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "Index", default)]
    index: u64,
    #[serde(rename = "Session", default)]
    session: String,
}

fn txn(shared: &Shared, config: &EmulatorConfig, body: &[u8]) -> Resp {
    if body.len() > config.txn_max_request_bytes {
        return too_large(body.len(), config.txn_max_request_bytes);
    }
    let ops: Vec<TxnOp> = match serde_json::from_slice(body) {
        Ok(ops) => ops,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse body: {e}"),
            );
        }
    };
    if ops.len() > config.txn_max_ops {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {})",
                ops.len(),
                config.txn_max_ops
            ),
        );
    }
    let mut kv_ops = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(kv) = op.kv else {
            return text(StatusCode::BAD_REQUEST, "only KV operations are emulated");
        };
        let value = match &kv.value {
            Some(v) => match B64.decode(v) {
                Ok(v) => v,
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "Failed to parse body: bad base64 value",
                    );
                }
            },
            None => Vec::new(),
        };
        if value.len() > config.max_value_bytes {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {:?} is too large ({} > {} bytes)",
                    kv.key,
                    value.len(),
                    config.max_value_bytes
                ),
            );
        }
        kv_ops.push((kv, value));
    }

    let mut store = shared.store.lock().unwrap();
    let saved_kv_index = store.kv_index();
    let idx = store.begin();
    let now = Instant::now();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, (op, value)) in kv_ops.into_iter().enumerate() {
        let key = op.key.as_str();
        let outcome: Result<Vec<Value>, String> = match op.verb.as_str() {
            "set" => Ok(vec![entry_json(
                key,
                &store.set(key, value, op.flags, Some(idx)),
                false,
            )]),
            "cas" => match store.cas(key, value, op.flags, op.index, Some(idx)) {
                Some(e) => Ok(vec![entry_json(key, &e, false)]),
                None => Err(format!("failed to set key {key:?}, index is stale")),
            },
            "lock" => match store.acquire(key, value, op.flags, &op.session, now, Some(idx)) {
                Ok(Some(e)) => Ok(vec![entry_json(key, &e, false)]),
                Ok(None) => Err(format!(
                    "failed to lock key {key:?}, lock is already held or lock-delay is in effect"
                )),
                Err(StoreError::InvalidSession(s)) => {
                    Err(format!("failed to lock key {key:?}: invalid session {s:?}"))
                }
            },
            "unlock" => match store.release(key, Some(value), op.flags, &op.session, Some(idx)) {
                Ok(Some(e)) => Ok(vec![entry_json(key, &e, false)]),
                Ok(None) => Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
                Err(StoreError::InvalidSession(s)) => Err(format!(
                    "failed to unlock key {key:?}: invalid session {s:?}"
                )),
            },
            "get" => match store.get(key) {
                Some(e) => Ok(vec![entry_json(key, e, true)]),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            "get-or-empty" => Ok(vec![match store.get(key) {
                Some(e) => entry_json(key, e, true),
                None => {
                    json!({"LockIndex": 0, "Key": key, "Flags": 0, "Value": null, "CreateIndex": 0, "ModifyIndex": 0})
                }
            }]),
            "get-tree" => Ok(store
                .list(key)
                .iter()
                .map(|(k, e)| entry_json(k, e, true))
                .collect()),
            "check-index" => match store.get(key) {
                Some(e) if e.modify_index == op.index => Ok(vec![entry_json(key, e, false)]),
                Some(e) => Err(format!(
                    "current modify index {} != {}",
                    e.modify_index, op.index
                )),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            "check-session" => match store.get(key) {
                Some(e) if e.session.as_deref() == Some(op.session.as_str()) => {
                    Ok(vec![entry_json(key, e, false)])
                }
                Some(e) => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    e.session.clone().unwrap_or_default(),
                    op.session
                )),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            "check-not-exists" => match store.get(key) {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(vec![]),
            },
            "delete" => {
                store.delete(key, Some(idx));
                Ok(vec![])
            }
            "delete-tree" => {
                store.delete_tree(key, Some(idx));
                Ok(vec![])
            }
            "delete-cas" => {
                if store.delete_cas(key, op.index, Some(idx)) {
                    Ok(vec![])
                } else {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
            }
            other => {
                drop(store);
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Unknown KV verb {other:?}"),
                );
            }
        };
        match outcome {
            Ok(rs) => results.extend(rs.into_iter().map(|kv| json!({ "KV": kv }))),
            Err(what) => errors.push(json!({"OpIndex": i, "What": what})),
        }
    }
    if errors.is_empty() {
        store.commit(idx);
        notify(shared, &store);
        json_resp(StatusCode::OK, &json!({"Results": results, "Errors": null}))
    } else {
        store.rollback(saved_kv_index);
        json_resp(
            StatusCode::CONFLICT,
            &json!({"Results": null, "Errors": errors}),
        )
    }
}

fn session_json(s: &crate::store::Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": "emulator",
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl.map(duration::format).unwrap_or_default(),
        "NodeChecks": [],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

#[derive(serde::Deserialize, Default)]
struct CreateSession {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "TTL", default)]
    ttl: String,
    #[serde(rename = "LockDelay", default)]
    lock_delay: Option<Value>,
    #[serde(rename = "Behavior", default)]
    behavior: String,
}

fn parse_lock_delay(v: Option<&Value>) -> Result<Duration, String> {
    let d = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_LOCK_DELAY),
        Some(Value::String(s)) => {
            duration::parse(s).ok_or_else(|| format!("invalid LockDelay {s:?}"))?
        }
        Some(Value::Number(n)) => Duration::from_nanos(n.as_u64().ok_or("invalid LockDelay")?),
        Some(_) => return Err("invalid LockDelay".into()),
    };
    // Consul reads values under 1000 ns as seconds (FixupLockDelay).
    let d = if d < Duration::from_nanos(1000) {
        Duration::from_secs(d.as_nanos() as u64)
    } else {
        d
    };
    if d > Duration::from_secs(60) {
        return Err("LockDelay must be at most 60s".into());
    }
    Ok(d)
}

fn session(
    shared: &Shared,
    config: &EmulatorConfig,
    method: &Method,
    rest: &str,
    body: &[u8],
) -> Resp {
    let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
    let now = Instant::now();
    match (method, op) {
        (&Method::PUT, "create") => {
            let req: CreateSession = if body.is_empty() {
                CreateSession::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Request decode failed: {e}"),
                        );
                    }
                }
            };
            let ttl = if req.ttl.is_empty() {
                None
            } else {
                match duration::parse(&req.ttl) {
                    Some(t) if t.is_zero() => None,
                    Some(t) if t >= config.min_session_ttl && t <= Duration::from_secs(86400) => {
                        Some(t)
                    }
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "Invalid Session TTL '{}', must be between [{}=24h0m0s]",
                                req.ttl,
                                duration::format(config.min_session_ttl)
                            ),
                        );
                    }
                }
            };
            let lock_delay = match parse_lock_delay(req.lock_delay.as_ref()) {
                Ok(d) => d,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let behavior = match req.behavior.as_str() {
                "" | "release" => Behavior::Release,
                "delete" => Behavior::Delete,
                other => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("Invalid Behavior setting '{other}'"),
                    );
                }
            };
            let mut store = shared.store.lock().unwrap();
            let id = store.create_session(req.name, ttl, lock_delay, behavior, now);
            notify(shared, &store);
            json_resp(StatusCode::OK, &json!({ "ID": id }))
        }
        (&Method::PUT, "renew") => {
            let mut store = shared.store.lock().unwrap();
            match store.renew(id, now) {
                Some(s) => json_resp(StatusCode::OK, &json!([session_json(&s)])),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("Session id '{id}' not found"),
                ),
            }
        }
        (&Method::PUT, "destroy") => {
            let mut store = shared.store.lock().unwrap();
            store.invalidate(id, now);
            notify(shared, &store);
            respond(StatusCode::OK, "true")
        }
        (&Method::GET, "info") => {
            let store = shared.store.lock().unwrap();
            let body = match store.session(id) {
                Some(s) => json!([session_json(s)]),
                None => json!([]),
            };
            with_index(json_resp(StatusCode::OK, &body), store.index())
        }
        (&Method::GET, "list") => {
            let store = shared.store.lock().unwrap();
            let all: Vec<Value> = store.sessions().iter().map(session_json).collect();
            with_index(json_resp(StatusCode::OK, &Value::Array(all)), store.index())
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}
