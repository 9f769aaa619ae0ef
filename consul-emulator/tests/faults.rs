//! What only the emulator can do: fault injection, operator actions, leader changes, stale
//! followers, and watching blocking queries park. (Consul's behaviours themselves are in
//! `fidelity.rs`, which also runs against real Consul.)

use std::time::Duration;

use base64::Engine as _;
use keyloop_consul_emulator::{Emulator, EmulatorConfig, FaultKind, Target};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Emulator {
    let config = EmulatorConfig::builder()
        .min_session_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    Emulator::start_with(config).await.unwrap()
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn index_of(r: &reqwest::Response) -> u64 {
    r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn session(http: &reqwest::Client, url: &str, body: Value) -> String {
    let r: Value = http
        .put(format!("{url}/v1/session/create"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["ID"].as_str().unwrap().to_string()
}

async fn put(
    http: &reqwest::Client,
    url: &str,
    key_and_query: &str,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let r = http
        .put(format!("{url}/v1/kv/{key_and_query}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn get_entry(http: &reqwest::Client, url: &str, key: &str) -> Option<Value> {
    let r = http.get(format!("{url}/v1/kv/{key}")).send().await.unwrap();
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    Some(v[0].clone())
}

/// The parked form of the fidelity suite's no-op-write test: a query already waiting is not
/// answered by a write that stores what is stored, and is by one that changes it.
#[tokio::test]
async fn identical_write_does_not_wake_a_parked_query() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    put(&http, &url, "w/a", b"1".to_vec()).await;
    let r = http
        .get(format!("{url}/v1/kv/w/?recurse"))
        .send()
        .await
        .unwrap();
    let idx = index_of(&r);
    let waiter = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let r = http
                .get(format!("{url}/v1/kv/w/?recurse&index={idx}&wait=30s"))
                .send()
                .await
                .unwrap();
            index_of(&r)
        })
    };
    let control = emu.control();
    assert!(control.wait_for_blocked_queries(1, WAIT).await);
    put(&http, &url, "w/a", b"1".to_vec()).await;
    let b64v = b64(b"1");
    http.put(format!("{url}/v1/txn"))
        .json(&json!([{"KV": {"Verb": "set", "Key": "w/a", "Value": b64v}}]))
        .send()
        .await
        .unwrap();
    // The query re-checked after each write (they notified it) and parked again.
    assert!(control.wait_for_blocked_queries(1, WAIT).await);
    assert!(
        !waiter.is_finished(),
        "an identical write answered a parked query"
    );
    put(&http, &url, "w/a", b"2".to_vec()).await;
    let new_idx = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(new_idx > idx);
}

/// A write elsewhere wakes nothing either: a query re-runs only when what it read changed.
#[tokio::test]
async fn writes_elsewhere_do_not_answer_an_empty_prefix_query() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let r = http
        .get(format!("{url}/v1/kv/empty/?recurse"))
        .send()
        .await
        .unwrap();
    let idx = index_of(&r);
    let waiter = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            http.get(format!("{url}/v1/kv/empty/?recurse&index={idx}&wait=30s"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let control = emu.control();
    assert!(control.wait_for_blocked_queries(1, WAIT).await);
    put(&http, &url, "elsewhere", b"x".to_vec()).await;
    assert!(control.wait_for_blocked_queries(1, WAIT).await);
    assert!(
        !waiter.is_finished(),
        "the table index moved, but nothing under the prefix"
    );
    put(&http, &url, "empty/now", b"x".to_vec()).await;
    let status = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn stale_reads_serve_the_lagging_follower_to_non_consistent_reads_only() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let control = emu.control();
    put(&http, &url, "s", b"old".to_vec()).await;
    control.inject(FaultKind::StaleRead, 10, Target::Any);
    put(&http, &url, "s", b"new".to_vec()).await;
    let value = |v: Value| v[0]["Value"].clone();

    let consistent: Value = http
        .get(format!("{url}/v1/kv/s?consistent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(value(consistent), b64(b"new"));
    let ro = json!([{"KV": {"Verb": "get", "Key": "s"}}]);
    let r: Value = http
        .put(format!("{url}/v1/txn?consistent"))
        .json(&ro)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["Results"][0]["KV"]["Value"], b64(b"new"));
    // A write transaction goes through Raft: never stale, even with a read in it.
    let rw = json!([
        {"KV": {"Verb": "set", "Key": "other", "Value": b64(b"x")}},
        {"KV": {"Verb": "get", "Key": "s"}},
    ]);
    let r: Value = http
        .put(format!("{url}/v1/txn"))
        .json(&rw)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["Results"][1]["KV"]["Value"], b64(b"new"));
    assert_eq!(
        control.pending_faults(),
        10,
        "none of those consumed the fault"
    );

    let default: Value = http
        .get(format!("{url}/v1/kv/s"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(value(default), b64(b"old"));
    let stale: Value = http
        .get(format!("{url}/v1/kv/s?stale"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(value(stale), b64(b"old"));
    let r: Value = http
        .put(format!("{url}/v1/txn"))
        .json(&ro)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["Results"][0]["KV"]["Value"], b64(b"old"), "read-only txn");
    let r = http.get(format!("{url}/v1/kv/other")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "written after the follower stopped"
    );
    assert_eq!(control.pending_faults(), 6);
    control.clear_faults();
    let r: Value = http
        .get(format!("{url}/v1/kv/s"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(value(r), b64(b"new"));
}

#[tokio::test]
async fn a_leader_change_restarts_session_timers() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let ttl = Duration::from_millis(300);
    let created = Instant::now();
    let id = session(&http, &url, json!({"TTL": "300ms", "Checks": []})).await;
    tokio::time::sleep(ttl).await;
    let changed = Instant::now();
    emu.control().change_leader();
    loop {
        let r: Value = http
            .get(format!("{url}/v1/session/info/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r.as_array().unwrap().is_empty() {
            break;
        }
        assert!(created.elapsed() < WAIT, "never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        changed.elapsed() >= ttl * 2,
        "the new leader gave it a full TTL × 2 from its election"
    );
}

#[tokio::test]
async fn reaping_tombstones_can_move_a_listing_index_backwards() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    put(&http, &url, "r/live", vec![]).await;
    put(&http, &url, "r/dead", vec![]).await;
    http.delete(format!("{url}/v1/kv/r/dead"))
        .send()
        .await
        .unwrap();
    let list = || http.get(format!("{url}/v1/kv/r/?recurse")).send();
    let before = index_of(&list().await.unwrap());
    assert_eq!(emu.control().reap_tombstones(), 1);
    let after = index_of(&list().await.unwrap());
    assert!(after < before, "{after} < {before}");
}

#[tokio::test]
async fn acl_token_and_datacenter_are_checked() {
    let config = EmulatorConfig::builder()
        .acl_token("s3cret")
        .datacenter("east")
        .build()
        .unwrap();
    let emu = Emulator::start_with(config).await.unwrap();
    let http = reqwest::Client::new();
    let url = emu.url();
    let r = http.get(format!("{url}/v1/kv/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .get(format!("{url}/v1/kv/x"))
        .header("X-Consul-Token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .get(format!("{url}/v1/kv/x?dc=east&token=s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .get(format!("{url}/v1/kv/x?dc=west"))
        .header("X-Consul-Token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn fault_error_500_skips_and_request_counts() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    emu.control().inject_after(
        1,
        FaultKind::Error500,
        2,
        Target::PathPrefix("/v1/kv/f".into()),
    );
    assert_eq!(
        put(&http, &url, "other", vec![]).await.0,
        StatusCode::OK,
        "not targeted"
    );
    assert_eq!(
        put(&http, &url, "f0", vec![]).await.0,
        StatusCode::OK,
        "skipped"
    );
    assert_eq!(
        put(&http, &url, "f1", vec![]).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        put(&http, &url, "f1", vec![]).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert!(emu.control().kv_value("f1").is_none(), "a 500 does nothing");
    assert_eq!(put(&http, &url, "f1", vec![]).await.0, StatusCode::OK);
    assert_eq!(emu.control().pending_faults(), 0);
    assert_eq!(emu.control().request_counts()["PUT /v1/kv"], 5);
    assert_eq!(emu.control().request_total(), 5);
}

#[tokio::test]
async fn fault_drop_connection() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    emu.control()
        .inject(FaultKind::DropConnection, 1, Target::Any);
    let r = http.put(format!("{url}/v1/kv/d")).body("x").send().await;
    assert!(r.is_err(), "connection dropped: {r:?}");
    assert!(emu.control().kv_value("d").is_none());
    assert_eq!(put(&http, &url, "d", vec![]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn fault_delay() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    emu.control()
        .inject(FaultKind::Delay(Duration::from_millis(300)), 1, Target::Any);
    let start = Instant::now();
    assert_eq!(put(&http, &url, "slow", vec![]).await.0, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    emu.control()
        .inject(FaultKind::Delay(Duration::from_millis(500)), 1, Target::Any);
    let r = client.get(format!("{url}/v1/kv/slow")).send().await;
    assert!(r.unwrap_err().is_timeout());
}

#[tokio::test]
async fn fault_index_backwards_reset_and_zero() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    for i in 0..5 {
        put(&http, &url, &format!("i/{i}"), vec![]).await;
    }
    let r = http
        .get(format!("{url}/v1/kv/i/?recurse"))
        .send()
        .await
        .unwrap();
    let idx = index_of(&r);
    assert!(idx > 2);

    // Index faults are consumed only by KV reads; a write in between does not take them.
    emu.control()
        .inject(FaultKind::IndexBackwards, 1, Target::Blocking);
    put(&http, &url, "unrelated", vec![]).await;
    let start = Instant::now();
    let r = http
        .get(format!("{url}/v1/kv/i/?recurse&index={idx}&wait=10s"))
        .send()
        .await
        .unwrap();
    assert!(index_of(&r) < idx, "went backwards");
    assert!(start.elapsed() < Duration::from_secs(5), "answers at once");

    emu.control().inject(FaultKind::IndexReset, 1, Target::Any);
    let r = http
        .get(format!("{url}/v1/kv/i/?recurse"))
        .send()
        .await
        .unwrap();
    assert_eq!(index_of(&r), 1);

    emu.control().inject(FaultKind::IndexZero, 1, Target::Any);
    let r = http.get(format!("{url}/v1/kv/i/0")).send().await.unwrap();
    assert_eq!(index_of(&r), 0);

    let r = http
        .get(format!("{url}/v1/kv/i/?recurse"))
        .send()
        .await
        .unwrap();
    assert_eq!(index_of(&r), idx, "faults are one-shot");
}

#[tokio::test]
async fn operator_destroy_releases_locks() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let a = session(&http, &url, json!({"Name": "node-a", "Checks": []})).await;
    put(&http, &url, &format!("x?acquire={a}"), vec![]).await;
    let sessions = emu.control().sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].name, "node-a");
    assert_eq!(
        sessions[0].lock_delay,
        Duration::from_secs(15),
        "Consul's default lock-delay"
    );
    assert!(emu.control().destroy_session(&a));
    assert!(
        get_entry(&http, &url, "x")
            .await
            .unwrap()
            .get("Session")
            .is_none()
    );
    let r = http
        .put(format!("{url}/v1/session/renew/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn binary_values_and_keys_needing_encoding_roundtrip() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        put(&http, &url, "a%20b%3F%25%E2%9C%93", bytes.clone()).await,
        (StatusCode::OK, "true".into())
    );
    let e = get_entry(&http, &url, "a%20b%3F%25%E2%9C%93")
        .await
        .unwrap();
    assert_eq!(e["Key"], "a b?%✓");
    let v = base64::engine::general_purpose::STANDARD
        .decode(e["Value"].as_str().unwrap())
        .unwrap();
    assert_eq!(v, bytes);
    assert_eq!(emu.control().kv_value("a b?%✓").unwrap(), bytes);
}
