//! The HTTP front: routes Consul API requests to the store, applying faults, ACLs and limits,
//! with the status codes and bodies of Consul's `agent/*_endpoint.go` handlers.

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
use crate::fault::{Control, FaultKind, FaultState, RequestKind, Shared};
use crate::store::{Behavior, Entry, Kv, KvOp, Store, TxnOutcome};

/// Consul's default blocking wait (`default_query_time`).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's longest blocking wait (`max_query_time`).
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's `structs.JitterFraction`: blocking queries wait up to `wait/16` longer.
const JITTER_FRACTION: u32 = 16;
/// The lock-delay a session gets when the request names none (`SessionCreate`).
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// `lockDelayMinThreshold`: numeric lock-delays below this many nanoseconds are seconds.
const LOCK_DELAY_MIN_THRESHOLD: u64 = 1000;
/// Consul's `structs.SessionTTLMax`.
const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// The node every session belongs to.
const NODE_NAME: &str = "emulator";
/// How often the leader's session timers are checked.
const TIMER_TICK: Duration = Duration::from_millis(10);

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

        // The leader's session timers (`session_ttl.go`).
        let timers = {
            let shared = shared.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TIMER_TICK);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    let mut store = shared.store.lock().unwrap();
                    if store.expire_sessions(Instant::now()) > 0 {
                        let index = store.raft_index();
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
                        // Every answer carries a `Date` header from this process's clock,
                        // as Go's `net/http` server adds one to every answer of Consul's
                        // `HTTPServer` (`agent/http.go` sets none itself); keyloop-consul
                        // decides wake-ups on it. Whole seconds, like Go's.
                        let conn = hyper::server::conn::http1::Builder::new()
                            .auto_date_header(true)
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
            tasks: vec![timers, acceptor],
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

/// A request refused before it reached the store: a status and Consul's plain-text reason.
struct Refusal(StatusCode, String);

impl Refusal {
    fn bad_request(why: impl Into<String>) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, why.into())
    }

    fn into_resp(self) -> Resp {
        text(self.0, self.1)
    }
}

/// An RPC error as the agent's HTTP wrapper answers it: 500 with the error text.
fn rpc_error(what: impl Into<String>) -> Resp {
    text(StatusCode::INTERNAL_SERVER_ERROR, what)
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, serde_json::to_vec(v).unwrap())
}

/// `setMeta`: what every blocking-query endpoint reports. Consul never reports index 0, so
/// that clients do not busy-loop.
fn with_index(mut r: Resp, index: u64) -> Resp {
    let h = r.headers_mut();
    h.insert("x-consul-index", index.to_string().parse().unwrap());
    with_leader(r)
}

/// `setKnownLeader` and `setLastContact`: all a read-only transaction reports.
fn with_leader(mut r: Resp) -> Resp {
    let h = r.headers_mut();
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

/// The query options `HTTPHandlers.parse` reads (`index`, `wait`; the consistency mode is
/// read where faults are chosen).
struct QueryOptions {
    index: u64,
    wait: Duration,
}

/// `parseConsistency` and `parseWait`, with their 400 answers.
fn query_options(query: &HashMap<String, String>) -> Result<QueryOptions, Refusal> {
    if query.contains_key("consistent") && query.contains_key("stale") {
        return Err(Refusal::bad_request(
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ));
    }
    let wait = match query.get("wait") {
        Some(w) => duration::parse(w).ok_or_else(|| Refusal::bad_request("Invalid wait time"))?,
        None => Duration::ZERO,
    };
    let index = match query.get("index") {
        Some(i) => i
            .parse()
            .map_err(|_| Refusal::bad_request("Invalid index"))?,
        None => 0,
    };
    Ok(QueryOptions { index, wait })
}

/// A Go `strconv.ParseUint` failure, which the KV handlers return as an error (500).
fn parse_uint(name: &str, query: &HashMap<String, String>) -> Result<Option<u64>, Refusal> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("strconv.ParseUint: parsing {v:?}: invalid syntax"),
            )
        }),
    }
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
    shared
        .faults
        .lock()
        .unwrap()
        .counts
        .entry(endpoint_name(&method, &path))
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let token = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("token").cloned());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };

    // What this request is, for the faults it may consume.
    let index_param: u64 = query.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
    let consistent = query.contains_key("consistent");
    let kv_read = method == Method::GET && path.starts_with("/v1/kv/");
    let txn = (path == "/v1/txn" && method == Method::PUT).then(|| decode_txn(&config, &body));
    let read_only_txn = matches!(&txn, Some(Ok(ops)) if !ops.iter().any(KvOp::is_write));
    let kind = RequestKind {
        blocking: index_param > 0,
        reports_index: kv_read,
        may_be_stale: !consistent && ((kv_read && index_param == 0) || read_only_txn),
    };
    let fault = shared.faults.lock().unwrap().take(&path, kind);
    let mut stale_view = None;
    let mut index_fault = None;
    match fault {
        Some((FaultKind::Error500, _)) => return Ok(rpc_error("injected fault")),
        Some((FaultKind::DropConnection, _)) => return Err(Dropped),
        Some((FaultKind::Delay(d), _)) => tokio::time::sleep(d).await,
        Some((FaultKind::StaleRead, view)) => stale_view = view,
        Some((other, _)) => index_fault = Some(other),
        None => {}
    }

    if let Some(want) = &config.acl_token {
        if token.as_deref() != Some(want.as_str()) {
            return Ok(text(
                StatusCode::FORBIDDEN,
                "Permission denied: token with AccessorID '' lacks permission",
            ));
        }
    }
    if let Some(dc) = query.get("dc") {
        if dc != &config.datacenter {
            return Ok(rpc_error("No path to datacenter"));
        }
    }

    let resp = if let Some(key) = path.strip_prefix("/v1/kv/") {
        match method {
            Method::GET => {
                let opts = match query_options(&query) {
                    Ok(o) => o,
                    Err(r) => return Ok(r.into_resp()),
                };
                kv_get(&shared, &config, key, &query, opts, index_fault, stale_view).await
            }
            Method::PUT => kv_put(&shared, &config, key, &query, body),
            Method::DELETE => kv_delete(&shared, key, &query),
            _ => method_not_allowed(&method),
        }
    } else if path == "/v1/txn" {
        match txn {
            Some(decoded) => txn_endpoint(&shared, &query, decoded, stale_view),
            None => method_not_allowed(&method),
        }
    } else if let Some(rest) = path.strip_prefix("/v1/session/") {
        session(&shared, &config, &method, rest, &query, &body)
    } else {
        text(StatusCode::NOT_FOUND, "404 page not found")
    };
    Ok(resp)
}

fn method_not_allowed(method: &Method) -> Resp {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    )
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

fn notify(shared: &Shared, store: &Store) {
    shared.changed.send_replace(store.raft_index());
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

/// What a KV read answers: the entries, and the index it reports.
struct KvAnswer {
    found: Vec<(String, Entry)>,
    index: u64,
}

fn read_kv(kv: &Kv, key: &str, prefix: bool) -> KvAnswer {
    if prefix {
        KvAnswer {
            found: kv.list(key).map(|(k, e)| (k.clone(), e.clone())).collect(),
            index: kv.prefix_index(key),
        }
    } else {
        KvAnswer {
            found: kv
                .get(key)
                .map(|e| (key.to_string(), e.clone()))
                .into_iter()
                .collect(),
            index: kv.key_index(key),
        }
    }
}

/// `GET /v1/kv/<key>` (`KVSGet`, `KVSGetKeys`) with Consul's blocking-query rules
/// (`blockingquery.Query`): the query runs at once; if its index is not above `index` it
/// re-runs only when what it read changes (its memdb watch channels fire), until the index
/// is above `index` or `wait` (plus up to `wait/16`) has passed. A single key that stays
/// missing keeps blocking (`ErrNotFound`: the second not-found run raises the index it
/// waits for).
async fn kv_get(
    shared: &Shared,
    config: &EmulatorConfig,
    key: &str,
    query: &HashMap<String, String>,
    opts: QueryOptions,
    index_fault: Option<FaultKind>,
    stale_view: Option<Arc<Kv>>,
) -> Resp {
    let recurse = query.contains_key("recurse");
    let keys = query.contains_key("keys");
    let prefix = recurse || keys;
    if key.is_empty() && !prefix {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let want = opts.index;
    if let Some(view) = stale_view {
        let answer = read_kv(&view, key, prefix);
        return render_kv(answer, key, query, None, want).await;
    }
    let wait = if opts.wait.is_zero() {
        DEFAULT_WAIT
    } else {
        opts.wait.min(MAX_WAIT)
    };
    let jitter = if config.jitter && want > 0 {
        let max = (wait / JITTER_FRACTION).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=max))
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait + jitter;
    let mut changes = shared.changed.subscribe();
    let mut min = want;
    let mut not_found_before = false;
    let mut last = None;
    loop {
        changes.borrow_and_update();
        let run = {
            let store = shared.store.lock().unwrap();
            let kv = store.kv();
            let watched = kv.watched(key, prefix);
            if last == Some(watched) {
                None
            } else {
                last = Some(watched);
                let index = if prefix {
                    kv.prefix_index(key)
                } else {
                    kv.key_index(key)
                };
                Some((index.max(1), prefix || kv.get(key).is_some()))
            }
        };
        if let Some((index, found)) = run {
            if !found {
                if not_found_before {
                    min = index;
                }
                not_found_before = true;
            }
            if index > min || index_fault.is_some() {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let _blocked = BlockedGuard::new(shared);
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    // Nothing the query read changed since its last run, so this is that run's answer.
    let answer = {
        let store = shared.store.lock().unwrap();
        read_kv(store.kv(), key, prefix)
    };
    render_kv(answer, key, query, index_fault, want).await
}

async fn render_kv(
    answer: KvAnswer,
    key: &str,
    query: &HashMap<String, String>,
    index_fault: Option<FaultKind>,
    want: u64,
) -> Resp {
    let keys = query.contains_key("keys");
    let raw = query.contains_key("raw") && !query.contains_key("recurse") && !keys;
    let separator = query
        .get("separator")
        .or_else(|| query.get("seperator"))
        .cloned()
        .unwrap_or_default();
    let index = answer.index.max(1);
    let reported = match index_fault {
        Some(FaultKind::IndexBackwards) => {
            want.saturating_sub(1).max(index / 2).min(index - 1).max(1)
        }
        Some(FaultKind::IndexReset) => 1,
        Some(FaultKind::IndexZero) => 0,
        _ => index,
    };
    let found = answer.found;
    let prefix = key.to_string();
    let large = found.len() > 256;
    let render = move || -> Resp {
        if keys {
            let mut names: Vec<&str> = Vec::new();
            for (k, _) in &found {
                let name = match k[prefix.len()..].find(separator.as_str()) {
                    Some(at) if !separator.is_empty() => &k[..prefix.len() + at + separator.len()],
                    _ => k.as_str(),
                };
                if names.last() != Some(&name) {
                    names.push(name);
                }
            }
            // An empty root listing is `[]`; any other empty listing is a 404.
            if names.is_empty() && !prefix.is_empty() {
                return respond(StatusCode::NOT_FOUND, Vec::new());
            }
            return respond(StatusCode::OK, serde_json::to_vec(&names).unwrap());
        }
        if found.is_empty() {
            return respond(StatusCode::NOT_FOUND, Vec::new());
        }
        if raw {
            let mut r = respond(StatusCode::OK, found[0].1.value.clone());
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            return r;
        }
        let all: Vec<EntryOut<'_>> = found
            .iter()
            .map(|(k, e)| EntryOut::new(k, e, true))
            .collect();
        respond(StatusCode::OK, serde_json::to_vec(&all).unwrap())
    };
    let r = if large {
        match tokio::task::spawn_blocking(render).await {
            Ok(r) => r,
            Err(_) => return rpc_error("render failed"),
        }
    } else {
        render()
    };
    with_index(r, reported)
}

/// `conflictingFlags`: at most one of `flags` may be given.
fn conflicting(query: &HashMap<String, String>, flags: &[&str]) -> Option<Resp> {
    if flags.iter().filter(|f| query.contains_key(**f)).count() > 1 {
        let mut given: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        given.sort();
        return Some(text(
            StatusCode::BAD_REQUEST,
            format!("Conflicting flags: {}\n", given.join("&")),
        ));
    }
    None
}

fn too_large(size: usize, max: usize) -> Resp {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({size} bytes) too large, max size: {max} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

/// `PUT /v1/kv/<key>` (`KVSPut`, then `KVS.Apply`).
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
    if let Some(r) = conflicting(query, &["cas", "acquire", "release"]) {
        return r;
    }
    let flags = match parse_uint("flags", query) {
        Ok(f) => f.unwrap_or(0),
        Err(r) => return r.into_resp(),
    };
    let cas = match parse_uint("cas", query) {
        Ok(c) => c,
        Err(r) => return r.into_resp(),
    };
    if body.len() > config.max_value_bytes {
        return too_large(body.len(), config.max_value_bytes);
    }
    let value = body.to_vec();
    let mut store = shared.store.lock().unwrap();
    let now = Instant::now();
    let ok = if let Some(session) = query.get("acquire") {
        // Lock-delay is enforced by the leader before Raft (`kvsPreApply`): a plain `false`.
        if store.lock_delayed(key, now) {
            return respond(StatusCode::OK, "false");
        }
        match store.put_acquire(key, value, flags, session) {
            Ok(ok) => ok,
            Err(e) => return rpc_error(e),
        }
    } else if let Some(session) = query.get("release") {
        match store.put_release(key, value, flags, session) {
            Ok(ok) => ok,
            Err(e) => return rpc_error(e),
        }
    } else if let Some(cas) = cas {
        store.put_cas(key, value, flags, cas)
    } else {
        store.put(key, value, flags);
        true
    };
    notify(shared, &store);
    respond(StatusCode::OK, if ok { "true" } else { "false" })
}

/// `DELETE /v1/kv/<key>` (`KVSDelete`).
fn kv_delete(shared: &Shared, key: &str, query: &HashMap<String, String>) -> Resp {
    if let Some(r) = conflicting(query, &["recurse", "cas"]) {
        return r;
    }
    let recurse = query.contains_key("recurse");
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let cas = match parse_uint("cas", query) {
        Ok(c) => c,
        Err(r) => return r.into_resp(),
    };
    let mut store = shared.store.lock().unwrap();
    let ok = if recurse {
        store.delete_tree(key);
        true
    } else if let Some(cas) = cas {
        store.delete_cas(key, cas)
    } else {
        store.delete(key);
        true
    };
    notify(shared, &store);
    respond(StatusCode::OK, if ok { "true" } else { "false" })
}

#[derive(serde::Deserialize)]
struct TxnOpIn {
    #[serde(rename = "KV")]
    kv: Option<KvOpIn>,
}

#[derive(serde::Deserialize)]
struct KvOpIn {
    #[serde(rename = "Verb", default)]
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

/// `convertOps`: the body limit, decoding, the operation limit and the value limit, each
/// answered as Consul does.
fn decode_txn(config: &EmulatorConfig, body: &[u8]) -> Result<Vec<KvOp>, Refusal> {
    let max_len = config.txn_max_request_bytes.max(config.max_value_bytes);
    if body.len() > max_len {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large, max size: {max_len} bytes"),
        ));
    }
    let parse_error = |e: String| Refusal::bad_request(format!("Failed to parse body: {e}"));
    let ops: Vec<TxnOpIn> = serde_json::from_slice(body).map_err(|e| parse_error(e.to_string()))?;
    if ops.len() > config.txn_max_ops {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {})",
                ops.len(),
                config.txn_max_ops
            ),
        ));
    }
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(kv) = op.kv else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the emulator only implements KV operations in transactions".into(),
            ));
        };
        let value = match &kv.value {
            Some(v) => B64
                .decode(v)
                .map_err(|e| parse_error(format!("failed to decode value: {e}")))?,
            None => Vec::new(),
        };
        if value.len() > config.max_value_bytes {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {:?} is too large ({} > {} bytes)",
                    kv.key,
                    value.len(),
                    config.max_value_bytes
                ),
            ));
        }
        out.push(KvOp {
            verb: kv.verb,
            key: kv.key,
            value,
            flags: kv.flags,
            index: kv.index,
            session: kv.session,
        });
    }
    Ok(out)
}

/// `PUT /v1/txn` (`Txn`): a transaction without writes goes to `Txn.Read`, outside Raft,
/// with the request's consistency mode and only the leader headers; anything else to
/// `Txn.Apply`. A failed transaction is answered 409 with every failed operation.
fn txn_endpoint(
    shared: &Shared,
    query: &HashMap<String, String>,
    decoded: Result<Vec<KvOp>, Refusal>,
    stale_view: Option<Arc<Kv>>,
) -> Resp {
    let ops = match decoded {
        Ok(ops) => ops,
        Err(r) => return r.into_resp(),
    };
    let now = Instant::now();
    if !ops.iter().any(KvOp::is_write) {
        if let Err(r) = query_options(query) {
            return r.into_resp();
        }
        let store = shared.store.lock().unwrap();
        let outcome = match &stale_view {
            Some(view) => store.txn_read(view, &ops, now),
            None => store.txn_read(store.kv(), &ops, now),
        };
        return with_leader(txn_response(outcome));
    }
    let mut store = shared.store.lock().unwrap();
    let outcome = store.txn_apply(&ops, now);
    notify(shared, &store);
    txn_response(outcome)
}

fn txn_response(outcome: TxnOutcome) -> Resp {
    match outcome {
        Ok(results) => {
            let results: Vec<Value> = results
                .iter()
                .map(|(k, e, shown)| json!({ "KV": EntryOut::new(k, e, *shown) }))
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({ "Results": results, "Errors": null }),
            )
        }
        Err(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|(i, what)| json!({ "OpIndex": i, "What": what }))
                .collect();
            json_resp(
                StatusCode::CONFLICT,
                &json!({ "Results": null, "Errors": errors }),
            )
        }
    }
}

fn session_json(s: &crate::store::Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": NODE_NAME,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl_text,
        "Checks": [],
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

/// `FixupLockDelay`: a duration string or nanoseconds; values under 1000 ns are seconds.
/// A bad string fails the body's decoding.
fn parse_lock_delay(v: Option<&Value>) -> Result<Duration, String> {
    let d = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_LOCK_DELAY),
        Some(Value::String(s)) => {
            duration::parse(s).ok_or_else(|| format!("time: invalid duration {s:?}"))?
        }
        Some(Value::Number(n)) => Duration::from_nanos(n.as_f64().unwrap_or(0.0).max(0.0) as u64),
        Some(_) => return Err("invalid LockDelay".into()),
    };
    Ok(if d.as_nanos() < u128::from(LOCK_DELAY_MIN_THRESHOLD) {
        Duration::from_secs(d.as_nanos() as u64)
    } else {
        d
    })
}

/// The `/v1/session/` endpoints (`agent/session_endpoint.go`, `Session.Apply`,
/// `Session.Renew`).
fn session(
    shared: &Shared,
    config: &EmulatorConfig,
    method: &Method,
    rest: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Resp {
    let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
    let now = Instant::now();
    let needs_id = matches!(op, "renew" | "destroy" | "info");
    if needs_id && id.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing session");
    }
    if matches!(op, "renew" | "info" | "list" | "node") {
        if let Err(r) = query_options(query) {
            return r.into_resp();
        }
    }
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
            let lock_delay = match parse_lock_delay(req.lock_delay.as_ref()) {
                Ok(d) => d,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("Request decode failed: {e}"),
                    );
                }
            };
            let behavior = match req.behavior.as_str() {
                "" | "release" => Behavior::Release,
                "delete" => Behavior::Delete,
                other => return rpc_error(format!("Invalid Behavior setting '{other}'")),
            };
            let ttl = if req.ttl.is_empty() {
                None
            } else {
                match duration::parse(&req.ttl) {
                    None => {
                        return rpc_error(format!(
                            "Session TTL '{}' invalid: time: invalid duration {:?}",
                            req.ttl, req.ttl
                        ));
                    }
                    Some(t) if t.is_zero() => None,
                    Some(t) if t < config.min_session_ttl || t > SESSION_TTL_MAX => {
                        return rpc_error(format!(
                            "Invalid Session TTL '{}', must be between [{}={}]",
                            t.as_nanos(),
                            duration::format(config.min_session_ttl),
                            duration::format(SESSION_TTL_MAX)
                        ));
                    }
                    Some(t) => Some(t),
                }
            };
            let mut store = shared.store.lock().unwrap();
            let id = store.create_session(req.name, req.ttl, ttl, lock_delay, behavior, now);
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
            store.destroy_session(id, now);
            notify(shared, &store);
            respond(StatusCode::OK, "true")
        }
        (&Method::GET, "info") => {
            let store = shared.store.lock().unwrap();
            let body = match store.session(id) {
                Some(s) => json!([session_json(s)]),
                None => json!([]),
            };
            with_index(
                json_resp(StatusCode::OK, &body),
                store.sessions_index().max(1),
            )
        }
        (&Method::GET, "list" | "node") => {
            let store = shared.store.lock().unwrap();
            let all: Vec<Value> = store
                .sessions()
                .iter()
                .filter(|_| op == "list" || id == NODE_NAME)
                .map(session_json)
                .collect();
            with_index(
                json_resp(StatusCode::OK, &Value::Array(all)),
                store.sessions_index().max(1),
            )
        }
        _ => method_not_allowed(method),
    }
}
