//! The fidelity suite: behaviours of Consul's HTTP API as Consul's source and its own API
//! tests (`api/kv_test.go`, `api/txn_test.go`, `api/session_test.go`, `api/lock_test.go`)
//! define them, checked over HTTP. Every test names the Consul function it follows; the
//! crate README's table maps each behaviour to its test.
//!
//! These run against whatever [`TestConsul`] selects: the emulator by default, a real agent
//! when `CONSUL_HTTP_ADDR` is set or a `consul` binary is on `PATH`. That is how the emulator
//! is held to Consul, and how a new Consul version is validated. Each test works under its
//! own random key prefix, so a shared agent is fine.

use std::time::Duration;

use base64::Engine as _;
use keyloop_consul_emulator::{EmulatorConfig, REAL_SESSION_TTL_MIN, TestConsul};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

/// A well-formed session id that no session has.
const UNKNOWN_SESSION: &str = "00000000-0000-0000-0000-000000000000";

/// Generous bound for "promptly" on a loaded machine.
const PROMPT: Duration = Duration::from_secs(10);

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One answer: status, `X-Consul-Index` (if any), whether `X-Consul-KnownLeader` was sent, and
/// the body.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    known_leader: bool,
    /// The `Date` header, if any.
    date: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn index(&self) -> u64 {
        self.index.expect("an X-Consul-Index header")
    }
}

/// A client for one test: its own key prefix on the Consul under test.
struct Api {
    consul: TestConsul,
    http: reqwest::Client,
    prefix: String,
}

impl Api {
    async fn new() -> Api {
        let config = EmulatorConfig::builder()
            .min_session_ttl(Duration::from_millis(100))
            .build()
            .unwrap();
        Api {
            consul: TestConsul::start(config).await,
            http: reqwest::Client::new(),
            prefix: format!("fidelity/{}/", uuid::Uuid::new_v4()),
        }
    }

    /// A session TTL every tier accepts and that keeps timing tests short.
    fn ttl(&self) -> Duration {
        if self.consul.is_real() {
            REAL_SESSION_TTL_MIN
        } else {
            Duration::from_millis(300)
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.consul.url()));
        if let Some(token) = self.consul.token() {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let r = req.send().await.expect("an answer");
        let index = r
            .headers()
            .get("x-consul-index")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let known_leader = r.headers().contains_key("x-consul-knownleader");
        let date = r
            .headers()
            .get("date")
            .map(|v| v.to_str().unwrap().to_string());
        Answer {
            status: r.status(),
            index,
            known_leader,
            date,
            body: r.text().await.unwrap(),
        }
    }

    /// `GET /v1/kv/<prefix><key_and_query>`.
    async fn kv_get(&self, key_and_query: &str) -> Answer {
        let path = format!("/v1/kv/{}{key_and_query}", self.prefix);
        self.send(reqwest::Method::GET, &path, None).await
    }

    /// `PUT /v1/kv/<prefix><key_and_query>`; the body answer (`true`/`false`) as text.
    async fn kv_put(&self, key_and_query: &str, body: &[u8]) -> Answer {
        let path = format!("/v1/kv/{}{key_and_query}", self.prefix);
        self.send(reqwest::Method::PUT, &path, Some(body.to_vec()))
            .await
    }

    async fn kv_delete(&self, key_and_query: &str) -> Answer {
        let path = format!("/v1/kv/{}{key_and_query}", self.prefix);
        self.send(reqwest::Method::DELETE, &path, None).await
    }

    /// The entry at `key`, or `None` on 404.
    async fn entry(&self, key: &str) -> Option<Value> {
        let a = self.kv_get(key).await;
        if a.status == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        Some(a.json()[0].clone())
    }

    async fn modify_index(&self, key: &str) -> u64 {
        self.entry(key).await.expect("the entry exists")["ModifyIndex"]
            .as_u64()
            .unwrap()
    }

    async fn txn(&self, ops: Value) -> Answer {
        self.txn_query("", ops).await
    }

    async fn txn_query(&self, query: &str, ops: Value) -> Answer {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/txn{query}"),
            Some(serde_json::to_vec(&ops).unwrap()),
        )
        .await
    }

    async fn session_create(&self, body: Value) -> Answer {
        self.send(
            reqwest::Method::PUT,
            "/v1/session/create",
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    async fn session(&self, body: Value) -> String {
        let a = self.session_create(body).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.json()["ID"].as_str().unwrap().to_string()
    }

    async fn session_info(&self, id: &str) -> Answer {
        self.send(
            reqwest::Method::GET,
            &format!("/v1/session/info/{id}"),
            None,
        )
        .await
    }

    async fn renew(&self, id: &str) -> Answer {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/session/renew/{id}"),
            None,
        )
        .await
    }

    async fn destroy(&self, id: &str) -> Answer {
        self.send(
            reqwest::Method::PUT,
            &format!("/v1/session/destroy/{id}"),
            None,
        )
        .await
    }

    /// Waits until `n` blocking queries are parked. The emulator says so; a real agent does
    /// not, so there this only gives the query time to get there (the tests using it are
    /// correct either way on the emulator, and only exercise the parked path better).
    async fn parked(&self, n: usize) {
        match self.consul.emulator() {
            Some(e) => assert!(e.control().wait_for_blocked_queries(n, PROMPT).await),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    /// Polls until the session is gone; how long after `since` that was.
    async fn wait_gone(&self, id: &str, since: Instant) -> Duration {
        loop {
            let a = self.session_info(id).await;
            if a.json().as_array().unwrap().is_empty() {
                return since.elapsed();
            }
            assert!(since.elapsed() < PROMPT * 2, "session {id} never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ----- KV: agent/consul/state/kvs.go, agent/consul/kvs_endpoint.go, agent/kvs_endpoint.go

/// `TestClientPutGetDelete`; `KVS.Get`: a missing key is a 404 that still carries an index.
#[tokio::test]
async fn put_get_delete_and_the_index_of_a_404() {
    let api = Api::new().await;
    let missing = api.kv_get("k").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.index() >= 1, "never 0");
    assert!(missing.known_leader);

    assert_eq!(api.kv_put("k?flags=42", b"test").await.body, "true");
    let got = api.kv_get("k").await;
    assert_eq!(got.status, StatusCode::OK);
    let e = &got.json()[0];
    assert_eq!(e["Value"], b64(b"test"));
    assert_eq!(e["Flags"], 42);
    assert_eq!(e["LockIndex"], 0);
    assert!(e.get("Session").is_none());
    assert_eq!(e["CreateIndex"], e["ModifyIndex"]);
    assert_eq!(
        got.index(),
        e["ModifyIndex"].as_u64().unwrap(),
        "a key reports its ModifyIndex"
    );

    let raw = api.kv_get("k?raw").await;
    assert_eq!(raw.body, "test");

    assert_eq!(api.kv_delete("k").await.body, "true");
    let gone = api.kv_get("k").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(
        gone.index() > got.index(),
        "a missing key reports the table index, which the delete moved"
    );
    assert_eq!(
        api.kv_delete("k").await.body,
        "true",
        "deleting nothing is fine"
    );
}

/// `kvsSetTxn` (Consul ≥ 1.6, hashicorp/consul#5885): a PUT of what is stored is skipped:
/// `ModifyIndex` stays and a blocking query at that index is not answered early.
#[tokio::test]
async fn identical_put_keeps_the_modify_index_and_wakes_nobody() {
    let api = Api::new().await;
    api.kv_put("k", b"v").await;
    let first = api.modify_index("k").await;
    assert_eq!(api.kv_put("k", b"v").await.body, "true");
    assert_eq!(api.modify_index("k").await, first, "same value: no write");

    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let a = api.kv_get(&format!("k?index={first}&wait=500ms")).await;
    assert!(
        started.elapsed() >= wait,
        "answered before wait: {:?}",
        started.elapsed()
    );
    assert_eq!(a.index(), first);

    assert_eq!(api.kv_put("k?flags=1", b"v").await.body, "true");
    let flagged = api.modify_index("k").await;
    assert!(flagged > first, "flags are part of the entry");
    api.kv_put("k?flags=1", b"w").await;
    assert!(
        api.modify_index("k").await > flagged,
        "a new value is a write"
    );
}

/// `kvsSetCASTxn` then `kvsSetTxn`: a CAS that stores the same value succeeds but keeps the
/// index, so the same CAS index works again.
#[tokio::test]
async fn identical_cas_succeeds_and_keeps_the_modify_index() {
    let api = Api::new().await;
    api.kv_put("k", b"v").await;
    let first = api.modify_index("k").await;
    assert_eq!(
        api.kv_put(&format!("k?cas={first}"), b"v").await.body,
        "true"
    );
    assert_eq!(
        api.kv_put(&format!("k?cas={first}"), b"v").await.body,
        "true"
    );
    assert_eq!(api.modify_index("k").await, first);
    assert_eq!(
        api.kv_put(&format!("k?cas={first}"), b"w").await.body,
        "true"
    );
    assert_eq!(
        api.kv_put(&format!("k?cas={first}"), b"x").await.body,
        "false"
    );
}

/// `txnKVS` `set` through `kvsSetTxn`: the result reports the kept `ModifyIndex`.
#[tokio::test]
async fn identical_txn_set_keeps_the_modify_index() {
    let api = Api::new().await;
    let k = api.key("k");
    let set = |v: &[u8]| json!([{"KV": {"Verb": "set", "Key": k, "Value": b64(v)}}]);
    let a = api.txn(set(b"v")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let first = a.json()["Results"][0]["KV"]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let again = api.txn(set(b"v")).await.json();
    assert_eq!(again["Results"][0]["KV"]["ModifyIndex"], first);
    assert_eq!(api.modify_index("k").await, first);
    let changed = api.txn(set(b"w")).await.json();
    assert!(changed["Results"][0]["KV"]["ModifyIndex"].as_u64().unwrap() > first);
}

/// `kvsLockTxn`, `kvsUnlockTxn`; `TestClient_AcquireRelease`, `TestLock_ReclaimLock`: the
/// holder acquiring again keeps `LockIndex` (and, with the same value, `ModifyIndex`); a
/// release clears the session and keeps `LockIndex`; the next holder increments it.
#[tokio::test]
async fn acquire_release_and_lock_index() {
    let api = Api::new().await;
    let a = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    let b = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    assert_eq!(
        api.kv_put(&format!("l?acquire={a}"), b"test").await.body,
        "true"
    );
    let e = api.entry("l").await.unwrap();
    assert_eq!(
        (e["LockIndex"].as_u64(), e["Session"].as_str()),
        (Some(1), Some(a.as_str()))
    );
    let held = e["ModifyIndex"].as_u64().unwrap();

    assert_eq!(
        api.kv_put(&format!("l?acquire={a}"), b"test").await.body,
        "true"
    );
    assert_eq!(
        api.modify_index("l").await,
        held,
        "reclaiming with the same value is no write"
    );
    assert_eq!(
        api.kv_put(&format!("l?acquire={a}"), b"new").await.body,
        "true"
    );
    let e = api.entry("l").await.unwrap();
    assert_eq!(e["LockIndex"], 1);
    assert!(e["ModifyIndex"].as_u64().unwrap() > held);

    assert_eq!(
        api.kv_put(&format!("l?acquire={b}"), b"").await.body,
        "false"
    );
    assert_eq!(
        api.kv_put(&format!("l?release={b}"), b"").await.body,
        "false"
    );
    assert_eq!(
        api.kv_put(&format!("l?release={a}"), b"").await.body,
        "true"
    );
    let e = api.entry("l").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(
        e["Value"],
        Value::Null,
        "the release's (empty) body replaced the value"
    );
    assert_eq!(
        api.kv_put(&format!("l?release={a}"), b"").await.body,
        "false"
    );
    assert_eq!(
        api.kv_put(&format!("l?acquire={b}"), b"").await.body,
        "true"
    );
    assert_eq!(api.entry("l").await.unwrap()["LockIndex"], 2);
}

/// `kvsLockTxn` errors reach the HTTP API as 500s (`KVS.Apply` returns them); an unknown
/// session releasing is just `false` (`kvsUnlockTxn` only compares sessions).
#[tokio::test]
async fn acquire_with_an_unknown_session_is_a_500() {
    let api = Api::new().await;
    let bogus = UNKNOWN_SESSION;
    let a = api.kv_put(&format!("l?acquire={bogus}"), b"").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(a.body.contains("invalid session"), "{}", a.body);
    api.kv_put("l", b"").await;
    let r = api.kv_put(&format!("l?release={bogus}"), b"").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "false"));
}

/// `kvsSetTxn` with `updateSession` false: a plain PUT on a held lock keeps the session and,
/// carrying `LockIndex` 0, resets the entry's `LockIndex`.
#[tokio::test]
async fn plain_put_on_a_lock_keeps_the_session_and_resets_lock_index() {
    let api = Api::new().await;
    let a = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    api.kv_put(&format!("l?acquire={a}"), b"v").await;
    api.kv_put("l", b"v").await;
    let e = api.entry("l").await.unwrap();
    assert_eq!(e["Session"], a.as_str());
    assert_eq!(e["LockIndex"], 0);
}

/// `TestClient_CAS`, `TestClient_DeleteCAS`; `kvsSetCASTxn`, `kvsDeleteCASTxn`.
#[tokio::test]
async fn cas_and_delete_cas() {
    let api = Api::new().await;
    assert_eq!(api.kv_put("c?cas=0", b"x").await.body, "true");
    assert_eq!(
        api.kv_put("c?cas=0", b"y").await.body,
        "false",
        "cas=0: only if absent"
    );
    let mi = api.modify_index("c").await;
    assert_eq!(
        api.kv_put(&format!("c?cas={}", mi + 1), b"y").await.body,
        "false"
    );
    assert_eq!(api.kv_put("missing?cas=5", b"y").await.body, "false");
    assert_eq!(api.kv_put(&format!("c?cas={mi}"), b"y").await.body, "true");
    assert_eq!(
        api.kv_delete(&format!("c?cas={mi}")).await.body,
        "false",
        "stale"
    );
    let mi = api.modify_index("c").await;
    assert_eq!(api.kv_delete(&format!("c?cas={mi}")).await.body, "true");
    assert_eq!(api.kv_delete("c?cas=1").await.body, "true", "already gone");
}

/// `TestClient_WatchGet`; `blockingquery.Query`: a blocking GET answers once the key changes,
/// with a higher index; without a change it answers after `wait` with the same index.
#[tokio::test]
async fn blocking_get_wakes_on_change_and_times_out_with_the_same_index() {
    let api = Api::new().await;
    api.kv_put("w", b"1").await;
    let idx = api.modify_index("w").await;
    let started = Instant::now();
    let a = api.kv_get(&format!("w?index={idx}&wait=400ms")).await;
    let took = started.elapsed();
    assert_eq!(a.index(), idx);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // wait/16 of jitter plus room for a loaded machine.
    assert!(took < Duration::from_millis(400 + 25) + PROMPT, "{took:?}");

    let query = format!("w?index={idx}&wait=30s");
    let (a, ()) = tokio::join!(api.kv_get(&query), async {
        api.parked(1).await;
        api.kv_put("w?flags=42", b"2").await;
    });
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.index() > idx);
    assert_eq!(a.json()[0]["Flags"], 42);
}

/// `KVS.Get` returning `errNotFound` to `blockingquery.Query`: a blocking GET of a key that
/// stays missing keeps blocking while other keys change, and answers when it appears.
#[tokio::test]
async fn blocking_get_of_a_missing_key_waits_for_that_key() {
    let api = Api::new().await;
    let missing = api.kv_get("absent").await;
    let idx = missing.index();
    let query = format!("absent?index={idx}&wait=30s");
    let (a, ()) = tokio::join!(api.kv_get(&query), async {
        api.parked(1).await;
        for i in 0..3 {
            api.kv_put(&format!("other/{i}"), b"x").await;
        }
        api.parked(1).await;
        api.kv_put("absent", b"here").await;
    });
    assert_eq!(
        a.status,
        StatusCode::OK,
        "answered only when the key appeared"
    );
    assert_eq!(a.json()[0]["Value"], b64(b"here"));
}

/// `TestClient_WatchList`; `kvsListTxn`: a listing reports the highest `ModifyIndex` under
/// its prefix, so writes elsewhere leave it alone; a delete under it moves it (tombstones);
/// a blocking listing answers on a change under the prefix.
#[tokio::test]
async fn prefix_listing_index_and_blocking_list() {
    let api = Api::new().await;
    let empty = api.kv_get("p/?recurse").await;
    assert_eq!(empty.status, StatusCode::NOT_FOUND);
    assert!(empty.index() >= 1);

    api.kv_put("p/a", b"1").await;
    api.kv_put("p/b", b"2").await;
    let listed = api.kv_get("p/?recurse").await;
    let b_index = api.modify_index("p/b").await;
    assert_eq!(listed.index(), b_index);
    api.kv_put("elsewhere", b"x").await;
    assert_eq!(
        api.kv_get("p/?recurse").await.index(),
        b_index,
        "writes elsewhere"
    );
    api.kv_put("p/a", b"1").await;
    assert_eq!(
        api.kv_get("p/?recurse").await.index(),
        b_index,
        "identical writes"
    );

    api.kv_delete("p/b").await;
    let after = api.kv_get("p/?recurse").await;
    assert!(after.index() > b_index, "the tombstone counts");
    assert_eq!(after.json().as_array().unwrap().len(), 1);
    let keys = api.kv_get("p/?keys").await;
    assert_eq!(keys.index(), after.index(), "?keys reports the same index");
    assert_eq!(keys.json(), json!([api.key("p/a")]));

    let idx = after.index();
    let query = format!("p/?recurse&index={idx}&wait=30s");
    let (a, ()) = tokio::join!(api.kv_get(&query), async {
        api.parked(1).await;
        api.kv_put("p/c", b"3").await;
    });
    assert!(a.index() > idx);
    assert_eq!(a.json().as_array().unwrap().len(), 2);
}

/// `TestClient_Keys_DeleteRecurse`; `KVS.ListKeys` with a separator; `kvsDeleteTreeTxn`.
#[tokio::test]
async fn keys_separator_and_delete_tree() {
    let api = Api::new().await;
    for k in ["t/a", "t/b/1", "t/b/2", "t/c"] {
        api.kv_put(k, b"").await;
    }
    let keys = api.kv_get("t/?keys&separator=/").await.json();
    assert_eq!(
        keys,
        json!([api.key("t/a"), api.key("t/b/"), api.key("t/c")])
    );
    let before = api.kv_get("t/?recurse").await.index();
    assert_eq!(api.kv_delete("t/?recurse").await.body, "true");
    let gone = api.kv_get("t/?keys").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.index() > before, "the tree's tombstone");
}

/// `KVSPut` / `KVSDelete` input checks and the value limit (`kv_max_value_size`).
#[tokio::test]
async fn kv_input_errors() {
    let api = Api::new().await;
    let conflict = api.kv_put("k?cas=0&acquire=x", b"").await;
    assert_eq!(conflict.status, StatusCode::BAD_REQUEST);
    assert!(
        conflict.body.contains("Conflicting flags"),
        "{}",
        conflict.body
    );
    let conflict = api.kv_delete("k?cas=0&recurse").await;
    assert_eq!(conflict.status, StatusCode::BAD_REQUEST);
    let root = api
        .send(reqwest::Method::PUT, "/v1/kv/", Some(Vec::new()))
        .await;
    assert_eq!(root.status, StatusCode::BAD_REQUEST);
    assert!(root.body.contains("Missing key name"), "{}", root.body);
    let both = api.kv_get("k?stale&consistent").await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);

    let big = vec![7u8; 512 * 1024 + 1];
    let a = api.kv_put("big", &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.body.contains("too large"), "{}", a.body);
    assert_eq!(api.kv_put("big", &big[1..]).await.status, StatusCode::OK);
}

// ----- Transactions: agent/consul/state/txn.go, agent/consul/txn_endpoint.go, agent/txn_endpoint.go

/// `TestAPI_ClientTxn`: a lock without a session and a get of the (so) missing key fail
/// together, each error naming its operation; with a session the lock's result carries the
/// session and `LockIndex` 1 but no value, and the get's carries the value.
#[tokio::test]
async fn txn_reports_every_failed_operation_and_write_results_carry_no_value() {
    let api = Api::new().await;
    let k = api.key("k");
    let ops = |session: &str| {
        json!([
            {"KV": {"Verb": "lock", "Key": k, "Value": b64(b"test"), "Session": session}},
            {"KV": {"Verb": "get", "Key": k}},
        ])
    };
    let failed = api.txn(ops("")).await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    let v = failed.json();
    assert_eq!(v["Results"], Value::Null);
    let errors = v["Errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["OpIndex"], 0);
    assert!(
        errors[0]["What"]
            .as_str()
            .unwrap()
            .contains("missing session")
    );
    assert_eq!(errors[1]["OpIndex"], 1);
    assert!(
        errors[1]["What"]
            .as_str()
            .unwrap()
            .contains("doesn't exist")
    );

    let id = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    let ok = api.txn(ops(&id)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.index, None, "a write transaction reports no index");
    let v = ok.json();
    assert_eq!(v["Errors"], Value::Null);
    let results = v["Results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["KV"]["Key"], k.as_str());
        assert_eq!(r["KV"]["Session"], id.as_str());
        assert_eq!(r["KV"]["LockIndex"], 1);
        let want = if i == 1 {
            json!(b64(b"test"))
        } else {
            Value::Null
        };
        assert_eq!(r["KV"]["Value"], want);
    }
}

/// `Store.TxnRW`: any failed operation rolls the whole transaction back.
#[tokio::test]
async fn txn_is_all_or_nothing() {
    let api = Api::new().await;
    api.kv_put("a", b"1").await;
    let a_index = api.modify_index("a").await;
    let (a, b) = (api.key("a"), api.key("b"));
    let failed = api
        .txn(json!([
            {"KV": {"Verb": "set", "Key": b, "Value": b64(b"2")}},
            {"KV": {"Verb": "set", "Key": a, "Value": b64(b"changed")}},
            {"KV": {"Verb": "check-index", "Key": a, "Index": a_index + 1000}},
        ]))
        .await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    assert!(api.entry("b").await.is_none(), "rolled back");
    assert_eq!(api.modify_index("a").await, a_index);
    assert_eq!(api.entry("a").await.unwrap()["Value"], b64(b"1"));
}

/// The error texts of `txnKVS` and the `kvs*Txn` checks (clients classify failures by
/// `OpIndex`; the texts are for people, but they should read like Consul's).
#[tokio::test]
async fn txn_failure_texts() {
    let api = Api::new().await;
    api.kv_put("k", b"v").await;
    let mi = api.modify_index("k").await;
    let k = api.key("k");
    let m = api.key("missing");
    let cases = [
        (
            json!({"Verb": "check-index", "Key": k, "Index": mi + 1}),
            "failed index check",
        ),
        (
            json!({"Verb": "check-index", "Key": m, "Index": 1}),
            "doesn't exist",
        ),
        (
            json!({"Verb": "check-session", "Key": k, "Session": "s"}),
            "failed session check",
        ),
        (
            json!({"Verb": "check-session", "Key": m, "Session": "s"}),
            "doesn't exist",
        ),
        (json!({"Verb": "check-not-exists", "Key": k}), "exists"),
        (json!({"Verb": "get", "Key": m}), "doesn't exist"),
        (
            json!({"Verb": "cas", "Key": k, "Value": b64(b"x"), "Index": mi + 1}),
            "index is stale",
        ),
        (
            json!({"Verb": "delete-cas", "Key": k, "Index": mi + 1}),
            "index is stale",
        ),
        (
            json!({"Verb": "unlock", "Key": k, "Session": "s"}),
            "lock isn't held",
        ),
        (
            json!({"Verb": "lock", "Key": k, "Session": UNKNOWN_SESSION}),
            "invalid session",
        ),
        (json!({"Verb": "set", "Key": ""}), "Must provide key"),
    ];
    for (op, text) in cases {
        let a = api.txn(json!([{ "KV": op }])).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{op}: {}", a.body);
        let what = a.json()["Errors"][0]["What"].as_str().unwrap().to_string();
        assert!(what.contains(text), "{op}: {what:?} lacks {text:?}");
    }
}

/// `txnKVS` reads: `get-or-empty` of a missing key answers the request's own (empty) entry,
/// `get-tree` lists values, `check-not-exists` and deletes return nothing.
#[tokio::test]
async fn txn_reads_and_deletes() {
    let api = Api::new().await;
    api.kv_put("t/1", b"a").await;
    api.kv_put("t/2", b"b").await;
    let a = api
        .txn(json!([
            {"KV": {"Verb": "get-or-empty", "Key": api.key("nope")}},
            {"KV": {"Verb": "get-tree", "Key": api.key("t/")}},
            {"KV": {"Verb": "check-not-exists", "Key": api.key("nope")}},
        ]))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let r = a.json()["Results"].as_array().unwrap().clone();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["KV"]["ModifyIndex"], 0);
    assert_eq!(r[0]["KV"]["Value"], Value::Null);
    assert_eq!(r[1]["KV"]["Value"], b64(b"a"));
    assert_eq!(r[2]["KV"]["Value"], b64(b"b"));
    let d = api
        .txn(json!([
            {"KV": {"Verb": "delete", "Key": api.key("t/1")}},
            {"KV": {"Verb": "delete-tree", "Key": api.key("t/")}},
        ]))
        .await;
    assert_eq!(d.json()["Results"], json!([]));
    assert!(api.entry("t/2").await.is_none());
}

/// `agent/txn_endpoint.go` `Txn`: a transaction without writes goes to `Txn.Read`, outside
/// Raft: it reports the leader headers but no index.
#[tokio::test]
async fn read_only_txn_is_a_read_without_an_index() {
    let api = Api::new().await;
    api.kv_put("k", b"v").await;
    let ops = json!([{"KV": {"Verb": "get", "Key": api.key("k")}}]);
    for query in ["", "?consistent", "?stale"] {
        let a = api.txn_query(query, ops.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.body);
        assert!(a.known_leader, "{query}");
        assert_eq!(a.index, None, "{query}");
    }
    let both = api.txn_query("?stale&consistent", ops).await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
}

/// `convertOps`: 64 operations at most, the body limit (`txn_max_req_len`, 512 KiB) and the
/// value limit, all 413; an undecodable body 400.
#[tokio::test]
async fn txn_limits() {
    let api = Api::new().await;
    let ops = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"KV": {"Verb": "get-or-empty", "Key": api.key(&format!("k{i}"))}}))
            .collect()
    };
    assert_eq!(api.txn(ops(64)).await.status, StatusCode::OK);
    let a = api.txn(ops(65)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.body.contains("too many operations (65 > 64)"),
        "{}",
        a.body
    );

    let big = b64(&vec![1u8; 512 * 1024 + 1]);
    let a = api
        .txn(json!([{"KV": {"Verb": "set", "Key": api.key("big"), "Value": big}}]))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.body.contains("too large"), "{}", a.body);
    let value = b64(&vec![1u8; 300 * 1024]);
    let a = api
        .txn(json!([
            {"KV": {"Verb": "set", "Key": api.key("v1"), "Value": value}},
            {"KV": {"Verb": "set", "Key": api.key("v2"), "Value": value}},
        ]))
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "the sum counts");

    let bad = api
        .send(reqwest::Method::PUT, "/v1/txn", Some(b"{not json".to_vec()))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("Failed to parse body"), "{}", bad.body);
    let bad = api
        .txn(json!([{"KV": {"Verb": "set", "Key": api.key("x"), "Value": "***"}}]))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

// ----- Sessions: agent/consul/state/session.go, agent/consul/session_ttl.go,
// agent/consul/session_endpoint.go, agent/session_endpoint.go

/// `TestAPI_SessionCreateRenewDestroy`, `TestAPI_SessionCreateRenewDestroyRenew`: renew
/// answers the session with its TTL as written; after a destroy it answers 404.
#[tokio::test]
async fn session_renew_then_destroy_then_renew_is_404() {
    let api = Api::new().await;
    let id = api
        .session(json!({"TTL": "500s", "Behavior": "delete"}))
        .await;
    let renewed = api.renew(&id).await;
    assert_eq!(renewed.status, StatusCode::OK);
    let v = renewed.json();
    assert_eq!(v[0]["ID"], id.as_str());
    assert_eq!(v[0]["TTL"], "500s");
    assert_eq!(v[0]["Behavior"], "delete");
    assert_eq!(api.destroy(&id).await.body, "true");
    let gone = api.renew(&id).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.body.contains("not found"), "{}", gone.body);
    assert_eq!(api.destroy(&id).await.body, "true", "destroy is idempotent");
}

/// `TestAPI_SessionInfo_NoChecks`; `SessionCreate` defaults: lock-delay 15 s, behaviour
/// `release`; info of an unknown session is `[]`; the index is never 0.
#[tokio::test]
async fn session_info_defaults() {
    let api = Api::new().await;
    let id = api.session(json!({"Checks": []})).await;
    let info = api.session_info(&id).await;
    assert!(info.index() >= 1);
    assert!(info.known_leader);
    let v = info.json();
    assert_eq!(v[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(v[0]["Behavior"], "release");
    assert!(v[0]["CreateIndex"].as_u64().unwrap() > 0);
    api.destroy(&id).await;
    assert_eq!(api.session_info(&id).await.json(), json!([]));
}

/// `FixupLockDelay`: numbers below 1000 are seconds, larger numbers nanoseconds, strings Go
/// durations.
#[tokio::test]
async fn lock_delay_fixup() {
    let api = Api::new().await;
    for (given, nanos) in [
        (json!(5), 5_000_000_000u64),
        (json!(2_000_000_000u64), 2_000_000_000),
        (json!("250ms"), 250_000_000),
        (json!("0s"), 0),
    ] {
        let id = api.session(json!({"LockDelay": given, "Checks": []})).await;
        assert_eq!(
            api.session_info(&id).await.json()[0]["LockDelay"],
            nanos,
            "{given}"
        );
        api.destroy(&id).await;
    }
    let bad = api.session_create(json!({"LockDelay": "soon"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// `Session.Apply`: a TTL outside `[session_ttl_min, 24h]` or an unknown behaviour is an
/// RPC error, which the HTTP API answers 500; an undecodable body is 400.
#[tokio::test]
async fn session_create_errors() {
    let api = Api::new().await;
    let low = api.session_create(json!({"TTL": "1ms"})).await;
    assert_eq!(low.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(low.body.contains("Invalid Session TTL"), "{}", low.body);
    let high = api.session_create(json!({"TTL": "25h"})).await;
    assert_eq!(high.status, StatusCode::INTERNAL_SERVER_ERROR);
    let behavior = api.session_create(json!({"Behavior": "explode"})).await;
    assert_eq!(behavior.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        behavior.body.contains("Invalid Behavior"),
        "{}",
        behavior.body
    );
    let body = api
        .send(
            reqwest::Method::PUT,
            "/v1/session/create",
            Some(b"{".to_vec()),
        )
        .await;
    assert_eq!(body.status, StatusCode::BAD_REQUEST);
}

/// `createSessionTimer`: the leader invalidates a session `TTL × 2` after its last renew,
/// never earlier; renewing restarts the timer; the release behaviour clears its locks.
#[tokio::test]
async fn session_expires_twice_the_ttl_after_the_last_renew() {
    let api = Api::new().await;
    let ttl = api.ttl();
    let ttl_text = format!("{}ms", ttl.as_millis());
    let created = Instant::now();
    let id = api
        .session(json!({"TTL": ttl_text, "LockDelay": "0s", "Checks": []}))
        .await;
    api.kv_put(&format!("held?acquire={id}"), b"").await;
    let gone = api.wait_gone(&id, created).await;
    assert!(
        gone >= ttl * 2,
        "invalidated {gone:?} after creation, before 2×{ttl:?}"
    );
    assert!(
        api.entry("held").await.unwrap().get("Session").is_none(),
        "release behavior clears the lock"
    );
    assert_eq!(api.renew(&id).await.status, StatusCode::NOT_FOUND);

    // Renewing restarts the timer.
    let id = api
        .session(json!({"TTL": ttl_text, "LockDelay": "0s", "Checks": []}))
        .await;
    let until = Instant::now() + ttl * 3;
    let mut last_renew = Instant::now();
    while Instant::now() < until {
        last_renew = Instant::now();
        assert_eq!(
            api.renew(&id).await.status,
            StatusCode::OK,
            "renewed in time"
        );
        tokio::time::sleep(ttl / 3).await;
    }
    let gone = api.wait_gone(&id, last_renew).await;
    assert!(gone >= ttl * 2, "invalidated {gone:?} after the last renew");
}

/// `deleteSessionTxn`; `TestLock_ForceInvalidate`: destroying a session releases its locks
/// (one write: `ModifyIndex` moves, `LockIndex` stays) and puts its lock-delay on them; an
/// explicit release carries none. `kvsPreApply`: a lock under lock-delay is `false` over
/// the KV API and a pre-check failure (nothing applied) in a transaction.
#[tokio::test]
async fn destroy_releases_locks_under_lock_delay_but_release_does_not() {
    let api = Api::new().await;
    let a = api.session(json!({"LockDelay": "1s", "Checks": []})).await;
    let b = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    api.kv_put(&format!("released?acquire={a}"), b"").await;
    api.kv_put(&format!("dropped?acquire={a}"), b"v").await;
    api.kv_put(&format!("released?release={a}"), b"").await;
    let held = api.entry("dropped").await.unwrap();
    let destroyed_at = Instant::now();
    assert_eq!(api.destroy(&a).await.body, "true");
    let e = api.entry("dropped").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(e["LockIndex"], held["LockIndex"]);
    assert_eq!(e["Value"], b64(b"v"));
    assert!(e["ModifyIndex"].as_u64() > held["ModifyIndex"].as_u64());

    assert_eq!(
        api.kv_put(&format!("released?acquire={b}"), b"").await.body,
        "true"
    );
    assert_eq!(
        api.kv_put(&format!("dropped?acquire={b}"), b"").await.body,
        "false"
    );
    let other = api.key("other");
    let txn = api
        .txn(json!([
            {"KV": {"Verb": "set", "Key": other, "Value": b64(b"x")}},
            {"KV": {"Verb": "lock", "Key": api.key("dropped"), "Session": b}},
        ]))
        .await;
    assert_eq!(txn.status, StatusCode::CONFLICT);
    let errors = txn.json()["Errors"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 1, "only the pre-check ran: {errors:?}");
    assert_eq!(errors[0]["OpIndex"], 1);
    assert!(errors[0]["What"].as_str().unwrap().contains("lock delay"));
    assert!(api.entry("other").await.is_none());

    loop {
        if api.kv_put(&format!("dropped?acquire={b}"), b"").await.body == "true" {
            break;
        }
        assert!(destroyed_at.elapsed() < PROMPT, "lock-delay never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        destroyed_at.elapsed() >= Duration::from_secs(1),
        "lock-delay was shorter"
    );
}

/// `deleteSessionTxn` with the `delete` behaviour: held keys are deleted.
#[tokio::test]
async fn delete_behavior_deletes_held_keys() {
    let api = Api::new().await;
    let a = api
        .session(json!({"Behavior": "delete", "LockDelay": "0s", "Checks": []}))
        .await;
    api.kv_put(&format!("k?acquire={a}"), b"v").await;
    api.destroy(&a).await;
    assert!(api.entry("k").await.is_none());
}

/// `TestAPI_SessionList`, `TestAPI_SessionNode`: a session shows in the list and under its
/// node, with an index and the leader header.
#[tokio::test]
async fn session_list_and_node_sessions() {
    let api = Api::new().await;
    let id = api.session(json!({"Checks": []})).await;
    let node = api.session_info(&id).await.json()[0]["Node"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        "/v1/session/list".to_string(),
        format!("/v1/session/node/{node}"),
    ] {
        let a = api.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert!(a.index() >= 1 && a.known_leader, "{path}");
        let ids: Vec<String> = a
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["ID"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.contains(&id), "{path}: {ids:?}");
    }
    api.destroy(&id).await;
}

/// `TestLock_DeleteKey`: deleting a held lock's key removes it (the holder loses the lock).
#[tokio::test]
async fn deleting_a_held_lock_key_removes_it() {
    let api = Api::new().await;
    let a = api.session(json!({"LockDelay": "0s", "Checks": []})).await;
    api.kv_put(&format!("l?acquire={a}"), b"").await;
    assert_eq!(api.kv_delete("l").await.body, "true");
    assert!(api.entry("l").await.is_none());
    assert_eq!(
        api.kv_put(&format!("l?release={a}"), b"").await.body,
        "false"
    );
}

// ----- Server time: Go's net/http under agent/http.go

/// Consul's KV entries and sessions carry no time (`agent/structs/structs.go` `DirEntry`:
/// indexes, flags, value, session; `Session`: TTL, lock-delay, no timestamps); the only
/// server time in the HTTP API is the `Date` header that Go's `net/http` server adds to
/// every answer whose handler did not set one (`net/http/server.go`
/// `chunkWriter.writeHeader`, from `time.Now()`, whole seconds). Consul's `HTTPServer`
/// wraps a plain `http.Server` and its `wrap` sets only `X-Consul-*` and the configured
/// `http_config.response_headers` (`agent/http.go`), so every answer — 200, 404, 409, a
/// blocking query's — carries the answering agent's clock. keyloop-consul decides wake-ups
/// on it.
#[tokio::test]
async fn every_answer_carries_the_agents_date() {
    let api = Api::new().await;
    let check = |what: &str, a: &Answer, before: std::time::SystemTime| {
        let date = a
            .date
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: no Date header"));
        let at = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{what}: {date}: {e}"));
        let after = std::time::SystemTime::now();
        // Whole seconds, truncated: within a second before the request and the answer.
        assert!(
            at + Duration::from_secs(1) >= before && at <= after,
            "{what}: Date {date} outside the request's time"
        );
    };
    let before = std::time::SystemTime::now();
    let missing = api.kv_get("missing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    check("404", &missing, before);

    let before = std::time::SystemTime::now();
    let put = api.kv_put("k", b"v").await;
    assert_eq!(put.status, StatusCode::OK);
    check("put", &put, before);

    let before = std::time::SystemTime::now();
    let failed = api
        .txn(json!([{ "KV": { "Verb": "check-index", "Key": api.key("k"), "Index": 1 } }]))
        .await;
    assert_eq!(failed.status, StatusCode::CONFLICT, "{}", failed.body);
    check("409", &failed, before);

    let index = api.modify_index("k").await;
    let before = std::time::SystemTime::now();
    let blocked = api.kv_get(&format!("k?index={index}&wait=1100ms")).await;
    assert_eq!(blocked.status, StatusCode::OK);
    check("blocking query", &blocked, before);

    let before = std::time::SystemTime::now();
    let session = api
        .session_create(json!({ "TTL": "10s", "Checks": [] }))
        .await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    check("session create", &session, before);
    let id = session.json()["ID"].as_str().unwrap().to_string();
    api.destroy(&id).await;
}
