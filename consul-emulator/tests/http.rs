//! The emulator over real HTTP: Consul semantics and every fault mode.

use std::time::Duration;

use base64::Engine as _;
use keyloop_consul_emulator::{Emulator, EmulatorConfig, FaultKind, Target};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

async fn start() -> Emulator {
    let config = EmulatorConfig::builder()
        .min_session_ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    Emulator::start_with(config).await.unwrap()
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

#[tokio::test]
async fn binary_values_roundtrip_and_404_carries_an_index() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let r = http
        .get(format!("{url}/v1/kv/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(index_of(&r) >= 1, "index is never 0");

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

    let r = http
        .get(format!("{url}/v1/kv/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        index_of(&r),
        e["ModifyIndex"].as_u64().unwrap(),
        "404 reports the table index"
    );
}

#[tokio::test]
async fn blocking_query_wakes_on_change_and_times_out_with_jitter() {
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

    // No change: returns after `wait` (up to wait/16 later), with the same index.
    let start = Instant::now();
    let r = http
        .get(format!("{url}/v1/kv/w/?recurse&index={idx}&wait=320ms"))
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(index_of(&r), idx);
    assert!(took >= Duration::from_millis(320), "{took:?}");
    // wait/16 of jitter plus generous room for a loaded machine.
    assert!(took < Duration::from_millis(320 + 20 + 1500), "{took:?}");

    // A change wakes it.
    let waiter = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let r = http
                .get(format!("{url}/v1/kv/w/?recurse&index={idx}&wait=30s"))
                .send()
                .await
                .unwrap();
            index_of(&r)
        })
    };
    assert!(
        emu.control()
            .wait_for_blocked_queries(1, Duration::from_secs(5))
            .await,
        "the waiter parks in its blocking query"
    );
    put(&http, &url, "w/b", b"2".to_vec()).await;
    let new_idx = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(new_idx > idx);

    // A delete under the prefix advances the prefix index too (tombstones).
    let r = http
        .delete(format!("{url}/v1/kv/w/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let r = http
        .get(format!("{url}/v1/kv/w/?recurse&index={new_idx}&wait=5s"))
        .send()
        .await
        .unwrap();
    assert!(index_of(&r) > new_idx);
}

#[tokio::test]
async fn cas_acquire_release_and_lock_index() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    assert_eq!(put(&http, &url, "c?cas=0", b"x".to_vec()).await.1, "true");
    assert_eq!(put(&http, &url, "c?cas=0", b"y".to_vec()).await.1, "false");
    let e = get_entry(&http, &url, "c").await.unwrap();
    let mi = e["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        put(&http, &url, &format!("c?cas={}", mi + 1), b"y".to_vec())
            .await
            .1,
        "false"
    );
    assert_eq!(
        put(&http, &url, &format!("c?cas={mi}"), b"y".to_vec())
            .await
            .1,
        "true"
    );
    let r = http
        .delete(format!("{url}/v1/kv/c?cas={mi}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "false", "stale delete-cas");

    let a = session(&http, &url, json!({"LockDelay": "0s", "Checks": []})).await;
    let b = session(&http, &url, json!({"LockDelay": "0s", "Checks": []})).await;
    assert_eq!(
        put(&http, &url, &format!("l?acquire={a}"), b"a".to_vec())
            .await
            .1,
        "true"
    );
    let e = get_entry(&http, &url, "l").await.unwrap();
    assert_eq!(
        (e["LockIndex"].as_u64(), e["Session"].as_str()),
        (Some(1), Some(a.as_str()))
    );
    assert_eq!(
        put(&http, &url, &format!("l?acquire={b}"), vec![]).await.1,
        "false"
    );
    assert_eq!(
        put(&http, &url, &format!("l?release={b}"), vec![]).await.1,
        "false"
    );
    assert_eq!(
        put(&http, &url, &format!("l?acquire={a}"), b"again".to_vec())
            .await
            .1,
        "true"
    );
    assert_eq!(get_entry(&http, &url, "l").await.unwrap()["LockIndex"], 1);
    assert_eq!(
        put(&http, &url, &format!("l?release={a}"), b"free".to_vec())
            .await
            .1,
        "true"
    );
    let e = get_entry(&http, &url, "l").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(
        put(&http, &url, &format!("l?acquire={b}"), vec![]).await.1,
        "true"
    );
    assert_eq!(get_entry(&http, &url, "l").await.unwrap()["LockIndex"], 2);

    let (status, body) = put(&http, &url, "l?acquire=not-a-session", vec![]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("invalid session"), "{body}");
}

#[tokio::test]
async fn sessions_expire_between_ttl_and_twice_ttl_then_renew_is_404() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let (status, body) = {
        let r = http
            .put(format!("{url}/v1/session/create"))
            .json(&json!({"TTL": "100ms"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::BAD_REQUEST, "below the minimum TTL");
    assert!(body.contains("Invalid Session TTL"), "{body}");

    let created = Instant::now();
    let id = session(
        &http,
        &url,
        json!({"TTL": "300ms", "LockDelay": "0s", "Checks": [], "Behavior": "release"}),
    )
    .await;
    assert_eq!(
        put(&http, &url, &format!("held?acquire={id}"), vec![])
            .await
            .1,
        "true"
    );
    let gone = loop {
        let r: Value = http
            .get(format!("{url}/v1/session/info/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if r.as_array().unwrap().is_empty() {
            break created.elapsed();
        }
        assert!(
            created.elapsed() < Duration::from_secs(3),
            "session never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        gone >= Duration::from_millis(300),
        "expired early: {gone:?}"
    );
    assert!(
        gone <= Duration::from_millis(600 + 100),
        "expired late: {gone:?}"
    );
    let e = get_entry(&http, &url, "held").await.unwrap();
    assert!(
        e.get("Session").is_none(),
        "release behavior clears the lock"
    );
    let r = http
        .put(format!("{url}/v1/session/renew/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn renew_keeps_a_session_alive() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let id = session(&http, &url, json!({"TTL": "200ms", "Checks": []})).await;
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        let r = http
            .put(format!("{url}/v1/session/renew/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v[0]["TTL"], "200ms");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

#[tokio::test]
async fn lock_delay_after_invalidation_but_not_after_release() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    let a = session(&http, &url, json!({"LockDelay": "10s", "Checks": []})).await;
    let b = session(&http, &url, json!({"LockDelay": "0s", "Checks": []})).await;
    put(&http, &url, &format!("released?acquire={a}"), vec![]).await;
    put(&http, &url, &format!("dropped?acquire={a}"), vec![]).await;
    put(&http, &url, &format!("released?release={a}"), vec![]).await;
    let r = http
        .put(format!("{url}/v1/session/destroy/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    assert_eq!(
        put(&http, &url, &format!("released?acquire={b}"), vec![])
            .await
            .1,
        "true"
    );
    assert_eq!(
        put(&http, &url, &format!("dropped?acquire={b}"), vec![])
            .await
            .1,
        "false"
    );
    // Destroy is idempotent.
    let r = http
        .put(format!("{url}/v1/session/destroy/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
}

#[tokio::test]
async fn txn_is_all_or_nothing() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    put(&http, &url, "t/a", b"1".to_vec()).await;
    let before = emu.control().index();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let r = http
        .put(format!("{url}/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("2")}},
            {"KV": {"Verb": "check-index", "Key": "t/a", "Index": 999_999}},
            {"KV": {"Verb": "get", "Key": "t/nope"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    let errors = v["Errors"].as_array().unwrap();
    assert_eq!(
        errors
            .iter()
            .map(|e| e["OpIndex"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(get_entry(&http, &url, "t/b").await.is_none(), "rolled back");
    assert_eq!(emu.control().index(), before);

    let a_index = get_entry(&http, &url, "t/a").await.unwrap()["ModifyIndex"]
        .as_u64()
        .unwrap();
    let r = http
        .put(format!("{url}/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("2")}},
            {"KV": {"Verb": "check-index", "Key": "t/a", "Index": a_index}},
            {"KV": {"Verb": "get-or-empty", "Key": "t/nope"}},
            {"KV": {"Verb": "delete-cas", "Key": "t/gone", "Index": 5}},
            {"KV": {"Verb": "get", "Key": "t/a"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let results = v["Results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results[0]["KV"]["Value"],
        Value::Null,
        "writes do not echo values"
    );
    assert_eq!(results[2]["KV"]["ModifyIndex"], 0);
    assert_eq!(results[3]["KV"]["Value"], b64("1"));
    assert_eq!(
        results[0]["KV"]["ModifyIndex"],
        emu.control().index(),
        "one index per txn"
    );

    let too_many: Vec<Value> = (0..129)
        .map(|i| json!({"KV": {"Verb": "get-or-empty", "Key": format!("k{i}")}}))
        .collect();
    let r = http
        .put(format!("{url}/v1/txn"))
        .json(&too_many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn values_over_512_kib_are_refused() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    assert_eq!(
        put(&http, &url, "big", vec![7; 512 * 1024]).await.0,
        StatusCode::OK
    );
    let (status, body) = put(&http, &url, "big", vec![7; 512 * 1024 + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("too large"), "{body}");
    assert_eq!(emu.control().kv_value("big").unwrap().len(), 512 * 1024);
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
        .get(format!("{url}/v1/kv/x?dc=east"))
        .header("X-Consul-Token", "s3cret")
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
async fn fault_error_500_and_request_counts() {
    let emu = start().await;
    let http = reqwest::Client::new();
    let url = emu.url();
    emu.control().inject(
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
    assert_eq!(emu.control().request_counts()["PUT /v1/kv"], 4);
    assert_eq!(emu.control().request_total(), 4);
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
