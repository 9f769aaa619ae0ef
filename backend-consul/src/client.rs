//! A thin typed async client for the Consul HTTP endpoints this backend uses.
//!
//! Why not a published crate: see the crate README. In short, none covers session renew
//! with its 404, `/v1/txn`, the `X-Consul-Index` of 404 answers and binary values at once.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ClientError;

/// Path characters sent as they are; everything else (space, `?`, `%`, `#`, non-ASCII…)
/// is percent-encoded. `/` stays, because it separates Consul KV path segments.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Query values: everything but unreserved characters is encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Answers larger than this are decoded on a blocking thread.
const LARGE_ANSWER: usize = 64 * 1024;

/// Consul's default value size limit (`limits.kv_max_value_size`).
pub const CONSUL_MAX_VALUE_BYTES: usize = 512 * 1024;

/// The most operations Consul accepts in one transaction (`maxTxnOps` in
/// `agent/txn_endpoint.go`); this client refuses more before sending.
pub const TXN_MAX_OPS: usize = 64;

/// One KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The full KV key.
    pub key: String,
    /// The raw value (empty for writes in transaction results, which Consul does not echo).
    pub value: Bytes,
    /// Opaque user flags.
    pub flags: u64,
    /// Index of the entry's creation.
    pub create_index: u64,
    /// Index of its last modification (global, strictly increasing).
    pub modify_index: u64,
    /// How many times it was acquired by a new session.
    pub lock_index: u64,
    /// The session holding its lock, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "CreateIndex", default)]
    create_index: u64,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
    #[serde(rename = "LockIndex", default)]
    lock_index: u64,
    #[serde(rename = "Session", default)]
    session: Option<String>,
}

impl RawEntry {
    fn decode(self) -> Result<KvEntry, String> {
        let value = match self.value {
            Some(v) => Bytes::from(
                B64.decode(v)
                    .map_err(|e| format!("bad base64 value: {e}"))?,
            ),
            None => Bytes::new(),
        };
        Ok(KvEntry {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

/// A read's answer together with its `X-Consul-Index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The answer.
    pub value: T,
    /// The `X-Consul-Index` header (also present on 404 answers); 0 if it was missing.
    pub index: u64,
}

/// How a read is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Linearizable read (`?consistent`): for reads that decide ownership.
    pub consistent: bool,
    /// Make it a blocking query: answer once the index exceeds this (0 = answer at once).
    pub index: u64,
    /// How long a blocking query may wait (Consul adds up to `wait/16`).
    pub wait: Option<Duration>,
}

/// How a KV write is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Write only if the entry's `ModifyIndex` is this (0: only if absent).
    pub cas: Option<u64>,
    /// Acquire the entry's lock for this session.
    pub acquire: Option<String>,
    /// Release the entry's lock held by this session.
    pub release: Option<String>,
    /// Opaque user flags.
    pub flags: u64,
}

/// What a session does to its locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behavior {
    /// Release the locks (keys stay).
    Release,
    /// Delete the locked keys.
    Delete,
}

/// A session to create: always TTL-only (`Checks: []`), so only the TTL decides its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// Its name (shown by `consul operator` tools).
    pub name: String,
    /// Its TTL (Consul accepts 10 s to 24 h by default).
    pub ttl: Duration,
    /// Its lock-delay.
    pub lock_delay: Duration,
    /// What invalidation does to its locks.
    pub behavior: Behavior,
}

/// A live session as Consul reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its TTL as Consul reports it (may be higher than asked under load).
    pub ttl: Option<Duration>,
}

#[derive(Deserialize)]
struct RawSession {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "TTL", default)]
    ttl: String,
}

impl RawSession {
    fn decode(self) -> SessionEntry {
        SessionEntry {
            ttl: parse_go_duration(&self.ttl).filter(|d| !d.is_zero()),
            id: self.id,
            name: self.name,
        }
    }
}

/// One operation of a `/v1/txn` transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxnOp {
    /// Write a value.
    Set {
        /// KV key.
        key: String,
        /// Value.
        value: Bytes,
    },
    /// Write a value if the `ModifyIndex` matches (0: if absent).
    Cas {
        /// KV key.
        key: String,
        /// Value.
        value: Bytes,
        /// Expected `ModifyIndex`.
        index: u64,
    },
    /// Acquire the lock for `session` and write the value.
    Lock {
        /// KV key.
        key: String,
        /// Value.
        value: Bytes,
        /// Session id.
        session: String,
    },
    /// Release the lock held by `session`, writing `value` (Consul replaces the value).
    Unlock {
        /// KV key.
        key: String,
        /// The value left behind.
        value: Bytes,
        /// Session id.
        session: String,
    },
    /// Read an entry; fails the transaction if it is missing.
    Get {
        /// KV key.
        key: String,
    },
    /// Read an entry, or an empty entry with index 0 if it is missing.
    GetOrEmpty {
        /// KV key.
        key: String,
    },
    /// Read every entry under a prefix.
    GetTree {
        /// KV prefix.
        prefix: String,
    },
    /// Fail unless the entry's `ModifyIndex` is `index`.
    CheckIndex {
        /// KV key.
        key: String,
        /// Expected `ModifyIndex`.
        index: u64,
    },
    /// Fail unless `session` holds the entry's lock.
    CheckSession {
        /// KV key.
        key: String,
        /// Session id.
        session: String,
    },
    /// Fail if the entry exists.
    CheckNotExists {
        /// KV key.
        key: String,
    },
    /// Delete an entry.
    Delete {
        /// KV key.
        key: String,
    },
    /// Delete an entry if its `ModifyIndex` matches (succeeds if it is already gone).
    DeleteCas {
        /// KV key.
        key: String,
        /// Expected `ModifyIndex`.
        index: u64,
    },
}

impl TxnOp {
    fn key(&self) -> &str {
        match self {
            TxnOp::Set { key, .. }
            | TxnOp::Cas { key, .. }
            | TxnOp::Lock { key, .. }
            | TxnOp::Unlock { key, .. }
            | TxnOp::Get { key }
            | TxnOp::GetOrEmpty { key }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::CheckSession { key, .. }
            | TxnOp::CheckNotExists { key }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. } => key,
            TxnOp::GetTree { prefix } => prefix,
        }
    }

    /// Whether it changes the store (Consul's `isWrite`): a transaction without such an
    /// operation is served outside Raft.
    fn is_write(&self) -> bool {
        matches!(
            self,
            TxnOp::Set { .. }
                | TxnOp::Cas { .. }
                | TxnOp::Lock { .. }
                | TxnOp::Unlock { .. }
                | TxnOp::Delete { .. }
                | TxnOp::DeleteCas { .. }
        )
    }

    fn value(&self) -> Option<&Bytes> {
        match self {
            TxnOp::Set { value, .. }
            | TxnOp::Cas { value, .. }
            | TxnOp::Lock { value, .. }
            | TxnOp::Unlock { value, .. } => Some(value),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let (verb, index, session) = match self {
            TxnOp::Set { .. } => ("set", 0, None),
            TxnOp::Cas { index, .. } => ("cas", *index, None),
            TxnOp::Lock { session, .. } => ("lock", 0, Some(session)),
            TxnOp::Unlock { session, .. } => ("unlock", 0, Some(session)),
            TxnOp::Get { .. } => ("get", 0, None),
            TxnOp::GetOrEmpty { .. } => ("get-or-empty", 0, None),
            TxnOp::GetTree { .. } => ("get-tree", 0, None),
            TxnOp::CheckIndex { index, .. } => ("check-index", *index, None),
            TxnOp::CheckSession { session, .. } => ("check-session", 0, Some(session)),
            TxnOp::CheckNotExists { .. } => ("check-not-exists", 0, None),
            TxnOp::Delete { .. } => ("delete", 0, None),
            TxnOp::DeleteCas { index, .. } => ("delete-cas", *index, None),
        };
        let mut kv = json!({ "Verb": verb, "Key": self.key() });
        if let Some(v) = self.value() {
            kv["Value"] = Value::String(B64.encode(v));
        }
        if index != 0 || matches!(self, TxnOp::Cas { .. }) {
            kv["Index"] = json!(index);
        }
        if let Some(s) = session {
            kv["Session"] = Value::String(s.clone());
        }
        json!({ "KV": kv })
    }
}

/// Why a transaction was rolled back: one failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnFailure {
    /// Position of the failed operation.
    pub op_index: usize,
    /// Consul's explanation.
    pub what: String,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied. One result per operation that returns an entry (writes, reads and checks;
    /// not deletes or `check-not-exists`), in order; `get-tree` gives one per entry.
    Committed(Vec<KvEntry>),
    /// Rolled back (HTTP 409): nothing was applied.
    RolledBack(Vec<TxnFailure>),
}

/// Settings of the HTTP client. Its `Debug` shows whether a token is set, not the token.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub(crate) address: String,
    pub(crate) token: Option<String>,
    pub(crate) datacenter: Option<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) txn_max_request_bytes: usize,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("address", &self.address)
            .field("token", &crate::config::redacted(&self.token))
            .field("datacenter", &self.datacenter)
            .field("request_timeout", &self.request_timeout)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("txn_max_request_bytes", &self.txn_max_request_bytes)
            .finish()
    }
}

/// A thin typed client for the Consul HTTP API: sessions, KV, transactions and blocking
/// queries. Cheap to clone. Its `Debug` shows neither the ACL token nor TLS material.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    settings: std::sync::Arc<ClientSettings>,
    /// Bounds on the agent's clock from the `Date` of every answer.
    clock: std::sync::Arc<crate::clock::ServerClock>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The reqwest client is left out: it holds the TLS identity.
        f.debug_struct("ConsulClient")
            .field("settings", &*self.settings)
            .finish()
    }
}

impl ConsulClient {
    pub(crate) fn new(http: reqwest::Client, settings: ClientSettings) -> ConsulClient {
        ConsulClient {
            http,
            settings: std::sync::Arc::new(settings),
            clock: std::sync::Arc::default(),
        }
    }

    /// Bounds on the Consul agent's clock, from the `Date` headers of its answers.
    pub(crate) fn clock(&self) -> &crate::clock::ServerClock {
        &self.clock
    }

    /// The largest value accepted by [`ConsulClient::kv_put`] and in transactions.
    pub fn max_value_bytes(&self) -> usize {
        self.settings.max_value_bytes
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.settings.address,
            utf8_percent_encode(path, PATH)
        )
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, u64, Bytes), ClientError> {
        let url = self.url(path);
        let mut full = url.clone();
        let mut params: Vec<(&str, String)> = query.to_vec();
        if let Some(dc) = &self.settings.datacenter {
            params.push(("dc", dc.clone()));
        }
        for (i, (k, v)) in params.iter().enumerate() {
            full.push(if i == 0 { '?' } else { '&' });
            full.push_str(k);
            if !v.is_empty() {
                full.push('=');
                full.extend(utf8_percent_encode(v, QUERY));
            }
        }
        let mut req = self.http.request(method, &full).timeout(timeout);
        if let Some(token) = &self.settings.token {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let sent = std::time::Instant::now();
        let resp = req.send().await.map_err(transport)?;
        let received = std::time::Instant::now();
        if let Some(date) = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
        {
            self.clock.observe(sent, received, date);
        }
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bytes = resp.bytes().await.map_err(transport)?;
        if status == StatusCode::FORBIDDEN {
            return Err(ClientError::Forbidden {
                url,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok((status, index, bytes))
    }

    fn unexpected(&self, path: &str, status: StatusCode, body: &[u8]) -> ClientError {
        ClientError::Status {
            status: status.as_u16(),
            url: self.url(path),
            body: String::from_utf8_lossy(body).trim().to_string(),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            detail: e.to_string(),
        })
    }

    fn read_query(
        &self,
        opts: &ReadOptions,
        extra: &[(&'static str, String)],
    ) -> (Vec<(&'static str, String)>, Duration) {
        let mut q: Vec<(&'static str, String)> = extra.to_vec();
        if opts.consistent {
            q.push(("consistent", String::new()));
        }
        let mut timeout = self.settings.request_timeout;
        if opts.index > 0 {
            q.push(("index", opts.index.to_string()));
            let wait = opts.wait.unwrap_or(Duration::from_secs(300));
            q.push(("wait", format!("{}ms", wait.as_millis())));
            // Consul may answer up to wait/16 late; the timeout must not cut that short.
            timeout += wait + wait / 16;
        }
        (q, timeout)
    }

    // ----- sessions -----

    /// Creates a TTL-only session (`Checks: []`); returns its id.
    pub async fn session_create(&self, spec: &SessionSpec) -> Result<String, ClientError> {
        let path = "/v1/session/create";
        let body = json!({
            "Name": spec.name,
            "TTL": format!("{}ms", spec.ttl.as_millis()),
            // A string duration: Consul reads numbers below 1000 as seconds, and the Go API
            // client drops zero, which would give the 15 s default.
            "LockDelay": format!("{}ms", spec.lock_delay.as_millis()),
            "Checks": [],
            "NodeChecks": [],
            "Behavior": match spec.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        });
        let (status, _, bytes) = self
            .send(
                Method::PUT,
                path,
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
                self.settings.request_timeout,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(path, status, &bytes));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        Ok(self.decode::<Created>(path, &bytes)?.id)
    }

    /// Renews a session. `Ok(None)` means Consul answered 404: the session is gone and
    /// every lock it held is lost. `Ok(Some(ttl))` is the TTL Consul reports.
    pub async fn session_renew(&self, id: &str) -> Result<Option<Duration>, ClientError> {
        let path = format!("/v1/session/renew/{id}");
        let (status, _, bytes) = self
            .send(Method::PUT, &path, &[], None, self.settings.request_timeout)
            .await?;
        match status {
            StatusCode::OK => {
                let sessions: Vec<RawSession> = self.decode(&path, &bytes)?;
                let ttl = sessions.into_iter().next().and_then(|s| s.decode().ttl);
                Ok(Some(ttl.unwrap_or_default()))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&path, status, &bytes)),
        }
    }

    /// Destroys a session (idempotent). Its remaining locks are released or deleted, and
    /// lock-delay applies to them: release keys first for an immediate handoff.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/session/destroy/{id}");
        let (status, _, bytes) = self
            .send(Method::PUT, &path, &[], None, self.settings.request_timeout)
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&path, status, &bytes));
        }
        Ok(())
    }

    /// A session's details, or `None` if it no longer exists.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionEntry>, ClientError> {
        let path = format!("/v1/session/info/{id}");
        let (status, _, bytes) = self
            .send(
                Method::GET,
                &path,
                &[("consistent", String::new())],
                None,
                self.settings.request_timeout,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&path, status, &bytes));
        }
        let sessions: Option<Vec<RawSession>> = self.decode(&path, &bytes)?;
        Ok(sessions
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(RawSession::decode))
    }

    // ----- KV -----

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{key}")
    }

    /// Reads one entry; `value: None` if it does not exist (the index is kept either way).
    pub async fn kv_get(
        &self,
        key: &str,
        opts: ReadOptions,
    ) -> Result<Indexed<Option<KvEntry>>, ClientError> {
        let path = Self::kv_path(key);
        let (query, timeout) = self.read_query(&opts, &[]);
        let (status, index, bytes) = self.send(Method::GET, &path, &query, None, timeout).await?;
        match status {
            StatusCode::OK => {
                let raw: Vec<RawEntry> = self.decode(&path, &bytes)?;
                let entry = match raw.into_iter().next() {
                    Some(r) => Some(r.decode().map_err(|detail| ClientError::Decode {
                        url: self.url(&path),
                        detail,
                    })?),
                    None => None,
                };
                Ok(Indexed {
                    value: entry,
                    index,
                })
            }
            StatusCode::NOT_FOUND => Ok(Indexed { value: None, index }),
            _ => Err(self.unexpected(&path, status, &bytes)),
        }
    }

    /// Reads every entry under `prefix` (empty if none; the index is kept either way).
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: ReadOptions,
    ) -> Result<Indexed<Vec<KvEntry>>, ClientError> {
        let path = Self::kv_path(prefix);
        let (query, timeout) = self.read_query(&opts, &[("recurse", String::new())]);
        let (status, index, bytes) = self.send(Method::GET, &path, &query, None, timeout).await?;
        match status {
            StatusCode::OK => {
                let large = bytes.len() > LARGE_ANSWER;
                let parse = move || -> Result<Vec<KvEntry>, String> {
                    let raw: Vec<RawEntry> =
                        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                    raw.into_iter().map(RawEntry::decode).collect()
                };
                // Large listings are decoded off the async workers, so that heartbeats
                // and other requests of this process are not held up behind them.
                let parsed = if large {
                    tokio::task::spawn_blocking(parse)
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                } else {
                    parse()
                };
                let entries = parsed.map_err(|detail| ClientError::Decode {
                    url: self.url(&path),
                    detail,
                })?;
                Ok(Indexed {
                    value: entries,
                    index,
                })
            }
            StatusCode::NOT_FOUND => Ok(Indexed {
                value: Vec::new(),
                index,
            }),
            _ => Err(self.unexpected(&path, status, &bytes)),
        }
    }

    /// Lists the keys under `prefix` without their values.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        opts: ReadOptions,
    ) -> Result<Indexed<Vec<String>>, ClientError> {
        self.kv_keys_up_to(prefix, None, opts).await
    }

    /// Lists the keys under `prefix` without their values; with a `separator`, keys with it
    /// after the prefix are rolled up into one name ending at its first occurrence (Consul's
    /// `?keys&separator=`, `agent/kvs_endpoint.go` `KVSGetKeys`).
    pub async fn kv_keys_up_to(
        &self,
        prefix: &str,
        separator: Option<&str>,
        opts: ReadOptions,
    ) -> Result<Indexed<Vec<String>>, ClientError> {
        let path = Self::kv_path(prefix);
        let mut extra = vec![("keys", String::new())];
        if let Some(sep) = separator {
            extra.push(("separator", sep.to_string()));
        }
        let (query, timeout) = self.read_query(&opts, &extra);
        let (status, index, bytes) = self.send(Method::GET, &path, &query, None, timeout).await?;
        match status {
            StatusCode::OK => Ok(Indexed {
                value: self.decode(&path, &bytes)?,
                index,
            }),
            StatusCode::NOT_FOUND => Ok(Indexed {
                value: Vec::new(),
                index,
            }),
            _ => Err(self.unexpected(&path, status, &bytes)),
        }
    }

    /// Writes a value; returns whether Consul applied it (`false`: CAS mismatch, lock held
    /// by another session, lock-delay, or release by a non-holder).
    pub async fn kv_put(
        &self,
        key: &str,
        value: Bytes,
        opts: &PutOptions,
    ) -> Result<bool, ClientError> {
        if value.len() > self.settings.max_value_bytes {
            return Err(ClientError::ValueTooLarge {
                key: key.to_string(),
                size: value.len(),
                max: self.settings.max_value_bytes,
            });
        }
        let path = Self::kv_path(key);
        let mut query = Vec::new();
        if let Some(cas) = opts.cas {
            query.push(("cas", cas.to_string()));
        }
        if let Some(s) = &opts.acquire {
            query.push(("acquire", s.clone()));
        }
        if let Some(s) = &opts.release {
            query.push(("release", s.clone()));
        }
        if opts.flags != 0 {
            query.push(("flags", opts.flags.to_string()));
        }
        let (status, _, bytes) = self
            .send(
                Method::PUT,
                &path,
                &query,
                Some(value.to_vec()),
                self.settings.request_timeout,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&path, status, &bytes));
        }
        self.decode(&path, &bytes)
    }

    /// Deletes an entry (with `cas`: only at that `ModifyIndex`); returns whether it did.
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool, ClientError> {
        let path = Self::kv_path(key);
        let query: Vec<(&str, String)> = cas.map(|c| ("cas", c.to_string())).into_iter().collect();
        let (status, _, bytes) = self
            .send(
                Method::DELETE,
                &path,
                &query,
                None,
                self.settings.request_timeout,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&path, status, &bytes));
        }
        self.decode(&path, &bytes)
    }

    /// Deletes every entry under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<(), ClientError> {
        let path = Self::kv_path(prefix);
        let (status, _, bytes) = self
            .send(
                Method::DELETE,
                &path,
                &[("recurse", String::new())],
                None,
                self.settings.request_timeout,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&path, status, &bytes));
        }
        Ok(())
    }

    // ----- transactions -----

    /// Runs an all-or-nothing transaction. Too many operations or a too-large value is an
    /// error before any request.
    ///
    /// A transaction without writes is a read: Consul serves it outside Raft with the
    /// request's consistency mode (`Txn.Read`), which by default may answer from a leader
    /// that was just deposed. Every read-only transaction this client sends is therefore
    /// `?consistent` (the leader confirms its leadership first); transactions with a write
    /// go through Raft and are linearizable anyway.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ClientError> {
        if ops.len() > TXN_MAX_OPS {
            return Err(ClientError::TooManyOps {
                ops: ops.len(),
                max: TXN_MAX_OPS,
            });
        }
        for op in ops {
            if let Some(v) = op.value() {
                if v.len() > self.settings.max_value_bytes {
                    return Err(ClientError::ValueTooLarge {
                        key: op.key().to_string(),
                        size: v.len(),
                        max: self.settings.max_value_bytes,
                    });
                }
            }
        }
        let body =
            serde_json::to_vec(&Value::Array(ops.iter().map(TxnOp::to_json).collect())).unwrap();
        if body.len() > self.settings.txn_max_request_bytes {
            let largest = ops.iter().max_by_key(|o| o.value().map_or(0, Bytes::len));
            return Err(ClientError::ValueTooLarge {
                key: largest.map(|o| o.key().to_string()).unwrap_or_default(),
                size: body.len(),
                max: self.settings.txn_max_request_bytes,
            });
        }
        let path = "/v1/txn";
        let query: &[(&str, String)] = if ops.iter().any(TxnOp::is_write) {
            &[]
        } else {
            &[("consistent", String::new())]
        };
        let (status, _, bytes) = self
            .send(
                Method::PUT,
                path,
                query,
                Some(body),
                self.settings.request_timeout,
            )
            .await?;
        #[derive(Deserialize)]
        struct RawResult {
            #[serde(rename = "KV")]
            kv: Option<RawEntry>,
        }
        #[derive(Deserialize)]
        struct RawError {
            #[serde(rename = "OpIndex", default)]
            op_index: usize,
            #[serde(rename = "What", default)]
            what: String,
        }
        #[derive(Deserialize)]
        struct RawTxn {
            #[serde(rename = "Results", default)]
            results: Option<Vec<RawResult>>,
            #[serde(rename = "Errors", default)]
            errors: Option<Vec<RawError>>,
        }
        match status {
            StatusCode::OK => {
                let raw: RawTxn = self.decode(path, &bytes)?;
                let entries = raw
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .map(RawEntry::decode)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|detail| ClientError::Decode {
                        url: self.url(path),
                        detail,
                    })?;
                Ok(TxnOutcome::Committed(entries))
            }
            StatusCode::CONFLICT => {
                let raw: RawTxn = self.decode(path, &bytes)?;
                Ok(TxnOutcome::RolledBack(
                    raw.errors
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| TxnFailure {
                            op_index: e.op_index,
                            what: e.what,
                        })
                        .collect(),
                ))
            }
            _ => Err(self.unexpected(path, status, &bytes)),
        }
    }
}

/// Parses a Go duration string as Consul prints it (`10s`, `1.5s`, `500ms`, `1m0s`).
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u..];
        nanos += number * per;
    }
    Some(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("xs"), None);
    }

    #[test]
    fn paths_are_percent_encoded_but_keep_slashes() {
        let encoded = utf8_percent_encode("/v1/kv/a b?c%d#é/x", PATH).to_string();
        assert_eq!(encoded, "/v1/kv/a%20b%3Fc%25d%23%C3%A9/x");
    }

    #[test]
    fn txn_ops_serialize_like_consul_expects() {
        let op = TxnOp::Cas {
            key: "k".into(),
            value: Bytes::from_static(b"\x00\xff"),
            index: 0,
        };
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "cas", "Key": "k", "Value": "AP8=", "Index": 0}})
        );
        let op = TxnOp::CheckSession {
            key: "k".into(),
            session: "s".into(),
        };
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "check-session", "Key": "k", "Session": "s"}})
        );
    }
}
