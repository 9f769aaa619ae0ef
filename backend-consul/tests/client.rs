//! The typed client against the emulator.

use std::time::Duration;

use bytes::Bytes;
use keyloop_consul::{
    Behavior, ClientError, ConsulClient, ConsulConfig, PutOptions, ReadOptions, SessionSpec, TxnOp,
    TxnOutcome,
};
use keyloop_consul_emulator::{Emulator, EmulatorConfig, FaultKind, Target};
use tokio::time::Instant;

async fn emulator() -> Emulator {
    let config = EmulatorConfig::builder()
        .min_session_ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    Emulator::start_with(config).await.unwrap()
}

fn client(emu: &Emulator) -> ConsulClient {
    ConsulConfig::builder(emu.url())
        .build()
        .unwrap()
        .client()
        .clone()
}

fn spec(ttl_ms: u64) -> SessionSpec {
    SessionSpec {
        name: "test".into(),
        ttl: Duration::from_millis(ttl_ms),
        lock_delay: Duration::ZERO,
        behavior: Behavior::Release,
    }
}

#[tokio::test]
async fn sessions_create_renew_info_destroy() {
    let emu = emulator().await;
    let c = client(&emu);
    let id = c.session_create(&spec(10_000)).await.unwrap();
    assert_eq!(
        c.session_renew(&id).await.unwrap(),
        Some(Duration::from_secs(10))
    );
    let info = c.session_info(&id).await.unwrap().unwrap();
    assert_eq!(
        (info.id.as_str(), info.name.as_str(), info.ttl),
        (id.as_str(), "test", Some(Duration::from_secs(10)))
    );
    let sessions = emu.control().sessions();
    assert_eq!(
        sessions[0].lock_delay,
        Duration::ZERO,
        "lock-delay 0 is sent so that it is not the 15 s default"
    );
    c.session_destroy(&id).await.unwrap();
    c.session_destroy(&id).await.unwrap();
    assert_eq!(c.session_renew(&id).await.unwrap(), None, "404 means gone");
    assert_eq!(c.session_info(&id).await.unwrap(), None);
}

/// Consul answers a TTL outside `[session_ttl_min, 24h]` with an RPC error, which its HTTP
/// API turns into a 500 (`Session.Apply`): by status it cannot be told from a server failure,
/// so it is reported as one, with Consul's explanation.
#[tokio::test]
async fn session_ttl_below_the_server_minimum_is_a_status_error() {
    let emu = emulator().await;
    let err = client(&emu).session_create(&spec(10)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 500, body, .. } if body.contains("Invalid Session TTL")),
        "{err}"
    );
}

#[tokio::test]
async fn kv_binary_values_and_keys_needing_encoding() {
    let emu = emulator().await;
    let c = client(&emu);
    let value = Bytes::from((0..=255u8).rev().collect::<Vec<_>>());
    for key in [
        "p/with space",
        "p/what?",
        "p/100%",
        "p/ключ/🚀",
        "p/a#b",
        "p/plus+sign&x=y",
    ] {
        assert!(
            c.kv_put(key, value.clone(), &PutOptions::default())
                .await
                .unwrap(),
            "{key}"
        );
        let got = c
            .kv_get(key, ReadOptions::default())
            .await
            .unwrap()
            .value
            .unwrap();
        assert_eq!(got.key, key);
        assert_eq!(got.value, value, "{key}");
        assert_eq!(
            emu.control().kv_value(key).unwrap(),
            value.to_vec(),
            "stored under the exact key"
        );
    }
    let listed = c.kv_list("p/", ReadOptions::default()).await.unwrap();
    assert_eq!(listed.value.len(), 6);
    let keys = c.kv_keys("p/", ReadOptions::default()).await.unwrap();
    assert_eq!(keys.value.len(), 6);
    assert!(keys.value.contains(&"p/what?".to_string()));
    assert!(c.kv_delete("p/what?", None).await.unwrap());
    c.kv_delete_tree("p/").await.unwrap();
    assert!(
        c.kv_list("p/", ReadOptions::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
}

#[tokio::test]
async fn missing_keys_keep_their_index_and_block() {
    let emu = emulator().await;
    let c = client(&emu);
    c.kv_put("other", Bytes::new(), &PutOptions::default())
        .await
        .unwrap();
    let missing = c.kv_get("later", ReadOptions::default()).await.unwrap();
    assert_eq!(missing.value, None);
    assert!(missing.index >= 1, "the 404's index is kept");
    let empty = c.kv_list("nothing/", ReadOptions::default()).await.unwrap();
    assert!(empty.value.is_empty() && empty.index >= 1);

    let waiter = {
        let c = c.clone();
        let index = missing.index;
        tokio::spawn(async move {
            c.kv_get(
                "later",
                ReadOptions {
                    consistent: false,
                    index,
                    wait: Some(Duration::from_secs(20)),
                },
            )
            .await
            .unwrap()
        })
    };
    assert!(
        emu.control()
            .wait_for_blocked_queries(1, Duration::from_secs(5))
            .await,
        "the reader parks in its blocking query"
    );
    c.kv_put("later", Bytes::from_static(b"here"), &PutOptions::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value.unwrap().value, Bytes::from_static(b"here"));
    assert!(got.index > missing.index);
}

#[tokio::test]
async fn blocking_timeout_exceeds_wait_plus_jitter() {
    let emu = emulator().await;
    // A request timeout far below the wait: the blocking query must still get its answer.
    let c = ConsulConfig::builder(emu.url())
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .client()
        .clone();
    let first = c.kv_get("k", ReadOptions::default()).await.unwrap();
    let start = Instant::now();
    let again = c
        .kv_get(
            "k",
            ReadOptions {
                consistent: true,
                index: first.index,
                wait: Some(Duration::from_millis(800)),
            },
        )
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(800));
    assert_eq!(again.index, first.index);
}

#[tokio::test]
async fn cas_acquire_release() {
    let emu = emulator().await;
    let c = client(&emu);
    let s = c.session_create(&spec(10_000)).await.unwrap();
    let t = c.session_create(&spec(10_000)).await.unwrap();
    let cas0 = PutOptions {
        cas: Some(0),
        ..PutOptions::default()
    };
    assert!(
        c.kv_put("c", Bytes::from_static(b"1"), &cas0)
            .await
            .unwrap()
    );
    assert!(
        !c.kv_put("c", Bytes::from_static(b"2"), &cas0)
            .await
            .unwrap()
    );
    let acquire = |s: &str| PutOptions {
        acquire: Some(s.to_string()),
        ..PutOptions::default()
    };
    assert!(c.kv_put("l", Bytes::new(), &acquire(&s)).await.unwrap());
    assert!(!c.kv_put("l", Bytes::new(), &acquire(&t)).await.unwrap());
    let e = c
        .kv_get("l", ReadOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!((e.lock_index, e.session.as_deref()), (1, Some(s.as_str())));
    let release = PutOptions {
        release: Some(s.clone()),
        ..PutOptions::default()
    };
    assert!(c.kv_put("l", Bytes::new(), &release).await.unwrap());
    assert!(c.kv_put("l", Bytes::new(), &acquire(&t)).await.unwrap());
    let e = c
        .kv_get("l", ReadOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(e.lock_index, 2);
    assert!(!c.kv_delete("c", Some(e.modify_index + 100)).await.unwrap());
}

#[tokio::test]
async fn txn_commit_and_rollback() {
    let emu = emulator().await;
    let c = client(&emu);
    let s = c.session_create(&spec(10_000)).await.unwrap();
    let out = c
        .txn(&[
            TxnOp::Lock {
                key: "own".into(),
                value: Bytes::from_static(b"me"),
                session: s.clone(),
            },
            TxnOp::Set {
                key: "data".into(),
                value: Bytes::from_static(&[0, 1, 2]),
            },
            TxnOp::GetOrEmpty {
                key: "missing".into(),
            },
        ])
        .await
        .unwrap();
    let TxnOutcome::Committed(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].session.as_deref(), Some(s.as_str()));
    assert_eq!(
        r[0].modify_index, r[1].modify_index,
        "one index per transaction"
    );
    assert_eq!(r[2].modify_index, 0);
    let epoch = r[0].modify_index;

    let out = c
        .txn(&[
            TxnOp::CheckSession {
                key: "own".into(),
                session: s.clone(),
            },
            TxnOp::CheckIndex {
                key: "own".into(),
                index: epoch + 1,
            },
            TxnOp::Set {
                key: "data".into(),
                value: Bytes::from_static(b"stale"),
            },
        ])
        .await
        .unwrap();
    let TxnOutcome::RolledBack(f) = out else {
        panic!("{out:?}")
    };
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].op_index, 1);
    let data = c
        .kv_get("data", ReadOptions::default())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(data.value, Bytes::from_static(&[0, 1, 2]));
}

#[tokio::test]
async fn limits_are_typed_errors_before_any_request() {
    let emu = emulator().await;
    let c = client(&emu);
    let before = emu.control().request_total();
    let big = Bytes::from(vec![0u8; 512 * 1024 + 1]);
    let err = c
        .kv_put("big", big.clone(), &PutOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ValueTooLarge { size, max: 524288, .. } if size == 512 * 1024 + 1),
        "{err}"
    );
    let err = c
        .txn(&[TxnOp::Set {
            key: "big".into(),
            value: big,
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ValueTooLarge { .. }), "{err}");
    // Fits the value limit but not the transaction body (base64 grows it by a third).
    let err = c
        .txn(&[TxnOp::Set {
            key: "big".into(),
            value: Bytes::from(vec![0u8; 450 * 1024]),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ValueTooLarge { .. }), "{err}");
    let ops: Vec<TxnOp> = (0..65)
        .map(|i| TxnOp::Get {
            key: format!("k{i}"),
        })
        .collect();
    let err = c.txn(&ops).await.unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyOps { ops: 65, max: 64 }),
        "{err}"
    );
    assert_eq!(emu.control().request_total(), before, "nothing was sent");
}

#[tokio::test]
async fn acl_token_and_datacenter_are_sent() {
    let config = EmulatorConfig::builder()
        .acl_token("tok")
        .datacenter("east")
        .build()
        .unwrap();
    let emu = Emulator::start_with(config).await.unwrap();
    let without = client(&emu);
    let err = without
        .kv_get("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Forbidden { .. }), "{err}");
    let with = ConsulConfig::builder(emu.url())
        .token("tok")
        .datacenter("east")
        .build()
        .unwrap();
    assert_eq!(
        with.client()
            .kv_get("k", ReadOptions::default())
            .await
            .unwrap()
            .value,
        None
    );
    let wrong_dc = ConsulConfig::builder(emu.url())
        .token("tok")
        .datacenter("west")
        .build()
        .unwrap();
    let err = wrong_dc
        .client()
        .kv_get("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Status { status: 500, body, .. } if body.contains("datacenter")),
        "{err}"
    );
}

#[tokio::test]
async fn transport_failures_and_500s_are_transient() {
    let emu = emulator().await;
    let c = client(&emu);
    emu.control()
        .inject(FaultKind::DropConnection, 1, Target::Any);
    let err = c.kv_get("k", ReadOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Transport { .. }) && err.is_transient(),
        "{err}"
    );
    emu.control().inject(FaultKind::Error500, 1, Target::Any);
    let err = c.kv_get("k", ReadOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status: 500, .. }) && err.is_transient(),
        "{err}"
    );
    let slow = ConsulConfig::builder(emu.url())
        .request_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    emu.control()
        .inject(FaultKind::Delay(Duration::from_millis(400)), 1, Target::Any);
    let err = slow
        .client()
        .kv_get("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Transport { .. }) && err.is_transient(),
        "{err}"
    );
    assert_eq!(
        c.kv_get("k", ReadOptions::default()).await.unwrap().value,
        None
    );
}
