//! The coordinator's operations against a real PostgreSQL server.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use keyloop_core::{
    Coordinator, CoordinatorError, CoordinatorEvent, EventSink, Key, Release, Released,
};
use keyloop_postgres::{PostgresConfig, PostgresCoordinator, PostgresError};

const TTL: Duration = Duration::from_secs(30);

macro_rules! server {
    () => {
        match test_postgres_url() {
            Some(url) => url,
            None => return,
        }
    };
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

#[tokio::test]
async fn trigger_claim_complete_lifecycle() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("life")).await;
    let a = node("a");
    let (sink, mut ev) = events();
    c.join(&a, TTL, sink).await.unwrap();

    let k = key("vm/1");
    let t1 = c.trigger(&k).await.unwrap();
    assert!(t1.registered);
    assert_eq!(t1.owner, None);
    ev.wait_for("keys available", |e| *e == CoordinatorEvent::KeysAvailable)
        .await;

    let claims = c.claim(&a.id, 10).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].key, k);
    assert_eq!(claims[0].trigger_seq, t1.seq);
    let e1 = claims[0].epoch;
    assert!(c.claim(&a.id, 10).await.unwrap().is_empty());

    let t2 = c.trigger(&k).await.unwrap();
    assert!(!t2.registered);
    assert_eq!(t2.owner, Some(a.id));
    assert!(t2.seq > t1.seq);
    let seen = ev
        .wait_for("triggered", |e| {
            matches!(e, CoordinatorEvent::Triggered { .. })
        })
        .await;
    assert_eq!(
        seen,
        CoordinatorEvent::Triggered {
            key: k.clone(),
            seq: t2.seq
        }
    );

    // Complete with an older sequence keeps the key at the same epoch.
    let r = c
        .release(
            &a.id,
            &k,
            e1,
            Release::Complete {
                observed_seq: t1.seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retriggered { seq: t2.seq });
    let owned = c.owned(&a.id).await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].epoch, e1);
    assert_eq!(owned[0].trigger_seq, t2.seq);

    let r = c
        .release(
            &a.id,
            &k,
            e1,
            Release::Complete {
                observed_seq: t2.seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Retired);
    assert_eq!(c.key_info(&k).await.unwrap(), None);

    // Re-registered: sequence and epoch keep growing.
    let t3 = c.trigger(&k).await.unwrap();
    assert!(t3.registered);
    assert!(t3.seq > t2.seq);
    let e2 = c.claim(&a.id, 10).await.unwrap()[0].epoch;
    assert!(e2 > e1);
}

#[tokio::test]
async fn concurrent_claimers_get_disjoint_keys() {
    let url = server!();
    let schema = fresh_schema("disjoint");
    let c = coordinator(&url, &schema).await;
    for i in 0..600 {
        c.trigger(&key(&format!("k/{i:04}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for n in 0..3 {
        let c = coordinator(&url, &schema).await;
        let me = node(&format!("n{n}"));
        c.join(&me, TTL, EventSink::discard()).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = c.claim(&me.id, 50).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut keys = HashSet::new();
    let mut epochs = HashSet::new();
    for t in tasks {
        for claim in t.await.unwrap() {
            assert!(
                keys.insert(claim.key.clone()),
                "{} claimed twice",
                claim.key
            );
            assert!(epochs.insert(claim.epoch));
        }
    }
    assert_eq!(keys.len(), 600);
}

#[tokio::test]
async fn racing_claim_key_leaves_one_owner() {
    let url = server!();
    let schema = fresh_schema("race");
    let c = coordinator(&url, &schema).await;
    let k = key("contended");
    c.trigger(&k).await.unwrap();
    let mut nodes = Vec::new();
    for n in 0..4 {
        let me = node(&format!("n{n}"));
        c.join(&me, TTL, EventSink::discard()).await.unwrap();
        nodes.push(me);
    }
    let results = futures_join(nodes.iter().map(|n| {
        let c = c.clone();
        let k = k.clone();
        let id = n.id;
        async move { c.claim_key(&id, &k).await.unwrap() }
    }))
    .await;
    let winners: Vec<_> = results.iter().flatten().collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    // The winner gets its existing claim back; others get nothing.
    let info = c.key_info(&k).await.unwrap().unwrap();
    let owner = info.owner.unwrap();
    let again = c.claim_key(&owner, &k).await.unwrap().unwrap();
    assert_eq!(&again, winners[0]);
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn expired_node_is_fenced_and_its_keys_fail_over() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("expiry")).await;
    let ttl = Duration::from_millis(1500);
    let (a, b) = (node("a"), node("b"));
    let (sink_a, mut ev_a) = events();
    let joined = Instant::now();
    c.join(&a, ttl, sink_a).await.unwrap();
    c.join(&b, TTL, EventSink::discard()).await.unwrap();
    let k = key("failover");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 10).await.unwrap().pop().unwrap();
    c.save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"v1"))
        .await
        .unwrap();

    // Not claimable while a's lease lasts.
    assert!(c.claim(&b.id, 10).await.unwrap().is_empty());
    assert_eq!(c.claim_key(&b.id, &k).await.unwrap(), None);

    let taken = eventually("failover", || async {
        c.claim(&b.id, 10).await.unwrap().pop()
    })
    .await;
    assert!(
        joined.elapsed() >= ttl,
        "claimed after {:?}",
        joined.elapsed()
    );
    assert!(taken.epoch > claim.epoch);
    ev_a.wait_for("ownership lost", |e| {
        *e == CoordinatorEvent::OwnershipLost { key: None }
    })
    .await;

    // The zombie's writes are rejected and it learns its lease is gone.
    let err = c
        .save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"zombie"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    assert_eq!(c.load_state(&k).await.unwrap().unwrap(), &b"v1"[..]);
    let err = c
        .release(
            &a.id,
            &k,
            claim.epoch,
            Release::Continue {
                avoid_for: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    assert!(matches!(
        c.heartbeat(&a.id).await.unwrap_err(),
        CoordinatorError::LeaseExpired { .. }
    ));
    assert!(matches!(
        c.claim(&a.id, 1).await.unwrap_err(),
        CoordinatorError::LeaseExpired { .. }
    ));
    // The expired node's listening connection is closed.
    let raw = raw_client(&url).await;
    let app = format!("keyloop-listener-{}", a.id);
    eventually("expired node's listener closed", || async {
        let n: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    c.save_state(&b.id, &k, taken.epoch, Bytes::from_static(b"v2"))
        .await
        .unwrap();
}

#[tokio::test]
async fn save_after_expiry_without_takeover_is_fenced() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("zombie")).await;
    let a = node("a");
    c.join(&a, Duration::from_millis(600), EventSink::discard())
        .await
        .unwrap();
    let k = key("z");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    // Watch without renewing: inspect only reads.
    eventually("lease expiry", || async {
        let snap = c.inspect().await.unwrap();
        (!snap.nodes.iter().any(|n| n.id == a.id && n.alive)).then_some(())
    })
    .await;
    let err = c
        .save_state(&a.id, &k, claim.epoch, Bytes::from_static(b"late"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    assert_eq!(c.load_state(&k).await.unwrap(), None);
}

#[tokio::test]
async fn heartbeat_renews_on_the_database_clock() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("renew")).await;
    let (a, b) = (node("a"), node("b"));
    let ttl = Duration::from_millis(900);
    c.join(&a, ttl, EventSink::discard()).await.unwrap();
    c.join(&b, TTL, EventSink::discard()).await.unwrap();
    let k = key("renewed");
    c.trigger(&k).await.unwrap();
    c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    // Renew well within the TTL for three TTLs: the key never becomes claimable.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert_eq!(c.heartbeat(&a.id).await.unwrap().ttl, ttl);
        assert!(c.claim(&b.id, 10).await.unwrap().is_empty());
        tokio::time::sleep(ttl / 6).await;
    }
}

#[tokio::test]
async fn continue_avoids_releasing_node_and_park_skips_until_trigger() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("cont")).await;
    let (a, b) = (node("a"), node("b"));
    let (sink_b, mut ev_b) = events();
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    c.join(&b, TTL, sink_b).await.unwrap();
    let k = key("moving");
    c.trigger(&k).await.unwrap();
    let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
    ev_b.clear();
    let r = c
        .release(
            &a.id,
            &k,
            claim.epoch,
            Release::Continue {
                avoid_for: Duration::from_secs(60),
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Released);
    ev_b.wait_for("keys available", |e| *e == CoordinatorEvent::KeysAvailable)
        .await;
    assert!(c.claim(&a.id, 10).await.unwrap().is_empty());
    assert_eq!(c.claim_key(&a.id, &k).await.unwrap(), None);
    let claim_b = c.claim(&b.id, 10).await.unwrap().pop().unwrap();
    assert!(claim_b.epoch > claim.epoch);

    // Park: nobody claims it until it is triggered again.
    let r = c
        .release(
            &b.id,
            &k,
            claim_b.epoch,
            Release::Park {
                error: "boom".into(),
                observed_seq: claim_b.trigger_seq,
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Released::Released);
    let info = c.key_info(&k).await.unwrap().unwrap();
    assert_eq!(info.parked.as_deref(), Some("boom"));
    assert_eq!(info.owner, None);
    assert!(c.claim(&b.id, 10).await.unwrap().is_empty());
    assert_eq!(c.claim_key(&b.id, &k).await.unwrap(), None);
    c.trigger(&k).await.unwrap();
    assert_eq!(c.key_info(&k).await.unwrap().unwrap().parked, None);
    assert_eq!(c.claim(&b.id, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn stale_release_and_save_are_fenced() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("stale")).await;
    let a = node("a");
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    let k = key("s");
    c.trigger(&k).await.unwrap();
    let first = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    c.release(
        &a.id,
        &k,
        first.epoch,
        Release::Continue {
            avoid_for: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    let second = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    assert!(second.epoch > first.epoch);
    for how in [
        Release::Complete {
            observed_seq: second.trigger_seq,
        },
        Release::Continue {
            avoid_for: Duration::ZERO,
        },
        Release::Park {
            error: "x".into(),
            observed_seq: second.trigger_seq,
        },
    ] {
        let err = c.release(&a.id, &k, first.epoch, how).await.unwrap_err();
        assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    }
    let err = c
        .save_state(&a.id, &k, first.epoch, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
    // Another node presenting the right epoch is fenced too.
    let b = node("b");
    c.join(&b, TTL, EventSink::discard()).await.unwrap();
    let err = c
        .save_state(&b.id, &k, second.epoch, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::Fenced { .. }), "{err}");
}

#[tokio::test]
async fn leave_releases_keys_at_once() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("leave")).await;
    let (a, b) = (node("a"), node("b"));
    let (sink_b, mut ev_b) = events();
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    c.join(&b, TTL, sink_b).await.unwrap();
    for i in 0..20 {
        c.trigger(&key(&format!("l/{i}"))).await.unwrap();
    }
    assert_eq!(c.claim(&a.id, 100).await.unwrap().len(), 20);
    ev_b.clear();
    c.leave(&a.id).await.unwrap();
    c.leave(&a.id).await.unwrap();
    ev_b.wait_for("keys available", |e| *e == CoordinatorEvent::KeysAvailable)
        .await;
    assert_eq!(c.claim(&b.id, 100).await.unwrap().len(), 20);
    let snap = c.inspect().await.unwrap();
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.keys.len(), 20);
    assert!(snap.keys.iter().all(|k| k.owner == Some(b.id)));
    assert!(matches!(
        c.heartbeat(&a.id).await.unwrap_err(),
        CoordinatorError::LeaseExpired { .. }
    ));
}

#[tokio::test]
async fn state_roundtrips_and_oversized_state_is_typed_error() {
    let url = server!();
    let config = PostgresConfig::builder(&url)
        .schema(fresh_schema("state"))
        .max_state_bytes(1024)
        .build()
        .unwrap();
    let c = PostgresCoordinator::connect(config).await.unwrap();
    assert_eq!(c.limits().max_state_bytes, 1024);
    let a = node("a");
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    let k = key("st");
    c.trigger(&k).await.unwrap();
    let claim = c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    assert_eq!(c.load_state(&k).await.unwrap(), None);
    let data: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    c.save_state(&a.id, &k, claim.epoch, Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(c.load_state(&k).await.unwrap().unwrap(), data);
    let err = c
        .save_state(&a.id, &k, claim.epoch, Bytes::from(vec![1u8; 1025]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::StateTooLarge {
                size: 1025,
                max: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(c.load_state(&k).await.unwrap().unwrap(), data);
    // The next owner sees it.
    c.release(
        &a.id,
        &k,
        claim.epoch,
        Release::Continue {
            avoid_for: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    let b = node("b");
    c.join(&b, TTL, EventSink::discard()).await.unwrap();
    c.claim(&b.id, 1).await.unwrap().pop().unwrap();
    assert_eq!(c.load_state(&k).await.unwrap().unwrap(), data);
}

#[tokio::test]
async fn special_keys_roundtrip() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("special")).await;
    let a = node("a");
    let (sink, mut ev) = events();
    c.join(&a, TTL, sink).await.unwrap();
    let names = [
        "it's",
        "say \"hi\"",
        r"back\slash\\",
        "'; DROP TABLE keys; --",
        "ключ/🚀",
        "colon:in:key",
        "percent%_wild*",
        "T1:fake-payload",
        &"x".repeat(1024),
    ];
    for n in names {
        c.trigger(&key(n)).await.unwrap();
    }
    let claimed: HashSet<Key> = c
        .claim(&a.id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key)
        .collect();
    let expected: HashSet<Key> = names.iter().map(|n| key(n)).collect();
    assert_eq!(claimed, expected);
    // Notifications carry them intact too.
    for n in names {
        let t = c.trigger(&key(n)).await.unwrap();
        let want = CoordinatorEvent::Triggered {
            key: key(n),
            seq: t.seq,
        };
        ev.wait_for(n, |e| *e == want).await;
        assert_eq!(c.key_info(&key(n)).await.unwrap().unwrap().key.as_str(), n);
    }
    let snap = c.inspect().await.unwrap();
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort();
    let listed: Vec<&str> = snap.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(listed, sorted, "inspect sorts keys like Rust strings");
}

#[tokio::test]
async fn unreachable_server_names_host_and_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = PostgresConfig::builder(format!("postgresql://u:topsecret@127.0.0.1:{port}/db"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = PostgresCoordinator::connect(config).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, PostgresError::Unreachable { host, port: p, .. } if host == "127.0.0.1" && *p == port),
        "{err:?}"
    );
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("topsecret") && !format!("{err:?}").contains("topsecret"));
    let coordinator_err: CoordinatorError = err.into();
    assert!(coordinator_err.is_transient());
}

#[tokio::test]
async fn wrong_credentials_are_a_typed_error_without_the_password() {
    let Some(server) = shared_postgres_server().ok() else {
        // Only the local server is known to require passwords.
        return;
    };
    let url = format!(
        "postgresql://postgres:wrong-pass-xyz@{}:{}/postgres",
        server.host(),
        server.port()
    );
    let config = PostgresConfig::builder(url).build().unwrap();
    let err = PostgresCoordinator::connect(config).await.unwrap_err();
    assert!(
        matches!(&err, PostgresError::Authentication { user, .. } if user == "postgres"),
        "{err:?}"
    );
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains("wrong-pass-xyz"), "{msg}");
}

#[tokio::test]
async fn schema_newer_than_code_is_an_error_and_nothing_changes() {
    let url = server!();
    let schema = fresh_schema("newer");
    let c = coordinator(&url, &schema).await;
    c.trigger(&key("keep-me")).await.unwrap();
    drop(c);
    let raw = raw_client(&url).await;
    raw.execute(
        &format!("INSERT INTO \"{schema}\".schema_version (version) VALUES (999)"),
        &[],
    )
    .await
    .unwrap();
    let config = PostgresConfig::builder(&url)
        .schema(&schema)
        .build()
        .unwrap();
    let err = PostgresCoordinator::connect(config).await.unwrap_err();
    assert!(
        matches!(
            &err,
            PostgresError::SchemaTooNew {
                found: 999,
                supported: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("999"), "{err}");
    let n: i64 = raw
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".keys"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let v: i32 = raw
        .query_one(
            &format!("SELECT max(version) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 999);
}

#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    let url = server!();
    let schema = fresh_schema("migrate");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move { coordinator(&url, &schema).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let raw = raw_client(&url).await;
    let versions: i64 = raw
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // One row per migration (two versions), each applied once.
    assert_eq!(versions, 2);
}

#[tokio::test]
async fn schemas_are_isolated() {
    let url = server!();
    let one = coordinator(&url, &fresh_schema("iso")).await;
    let two = coordinator(&url, &fresh_schema("iso")).await;
    let (a, b) = (node("a"), node("b"));
    let (sink_b, mut ev_b) = events();
    one.join(&a, TTL, EventSink::discard()).await.unwrap();
    two.join(&b, TTL, sink_b).await.unwrap();
    one.trigger(&key("only-in-one")).await.unwrap();
    assert!(two.claim(&b.id, 10).await.unwrap().is_empty());
    assert_eq!(two.key_info(&key("only-in-one")).await.unwrap(), None);
    // b hears KeysAvailable only for its own schema.
    two.trigger(&key("in-two")).await.unwrap();
    ev_b.wait_for("keys available", |e| *e == CoordinatorEvent::KeysAvailable)
        .await;
    assert_eq!(two.claim(&b.id, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn killed_listener_reconnects_resyncs_and_keeps_delivering() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("listen")).await;
    let a = node("a");
    let (sink, mut ev) = events();
    c.join(&a, TTL, sink).await.unwrap();
    let k = key("watched");
    c.trigger(&k).await.unwrap();
    c.claim(&a.id, 1).await.unwrap().pop().unwrap();
    ev.clear();

    let raw = raw_client(&url).await;
    let app = format!("keyloop-listener-{}", a.id);
    let killed: Vec<bool> = raw
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(killed, vec![true]);
    // A trigger while the listener is down may not be notified, but is found by the
    // resync that follows the reconnect.
    let missed = c.trigger(&k).await.unwrap();
    ev.wait_for("resync", |e| *e == CoordinatorEvent::Resync)
        .await;
    let owned = c.owned(&a.id).await.unwrap();
    assert!(owned[0].trigger_seq >= missed.seq);
    let after = c.trigger(&k).await.unwrap();
    let want = CoordinatorEvent::Triggered {
        key: k,
        seq: after.seq,
    };
    ev.wait_for("trigger after reconnect", |e| *e == want).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn required_tls_is_not_silently_dropped() {
    let Some(server) = shared_postgres_server().ok() else {
        return;
    };
    // The test server has no certificate: requiring TLS must fail, not fall back.
    let config = PostgresConfig::builder(server.url())
        .tls(keyloop_postgres::TlsMode::Require)
        .build()
        .unwrap();
    let err = PostgresCoordinator::connect(config).await.unwrap_err();
    assert!(
        err.to_string().contains(&server.port().to_string()),
        "{err}"
    );
}

/// A trigger racing a `Complete` is never lost: either the release sees it (`Retriggered`)
/// or the trigger re-registers the retired key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_trigger_racing_complete_is_never_lost() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("racecomplete")).await;
    let a = node("a");
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    let (mut retired, mut retriggered) = (0, 0);
    for i in 0..150 {
        let k = key(&format!("r/{i}"));
        let first = c.trigger(&k).await.unwrap();
        let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
        let (c2, k2) = (c.clone(), k.clone());
        let racer = tokio::spawn(async move { c2.trigger(&k2).await.unwrap() });
        let released = c
            .release(
                &a.id,
                &k,
                claim.epoch,
                Release::Complete {
                    observed_seq: first.seq,
                },
            )
            .await
            .unwrap();
        let t = racer.await.unwrap();
        let info = c.key_info(&k).await.unwrap();
        match released {
            Released::Retriggered { seq } => {
                retriggered += 1;
                assert!(
                    seq >= t.seq,
                    "{i}: release saw {seq}, trigger returned {}",
                    t.seq
                );
                assert_eq!(info.unwrap().owner, Some(a.id));
            }
            Released::Retired => {
                retired += 1;
                let info = info.unwrap_or_else(|| panic!("{i}: trigger after retire was lost"));
                assert!(t.registered, "{i}: trigger after retire must re-register");
                assert_eq!(info.trigger_seq, t.seq);
                assert_eq!(info.owner, None);
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!(
        "complete/trigger races: {retired} retired then re-registered, {retriggered} retriggered"
    );
}

/// A trigger racing a claim of an unowned key is seen by the claim or notifies the
/// claimer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_trigger_racing_claim_reaches_the_claimer() {
    let url = server!();
    let c = coordinator(&url, &fresh_schema("raceclaim")).await;
    let a = node("a");
    c.join(&a, TTL, EventSink::discard()).await.unwrap();
    for i in 0..150 {
        let k = key(&format!("c/{i}"));
        c.trigger(&k).await.unwrap();
        let (c2, k2) = (c.clone(), k.clone());
        let racer = tokio::spawn(async move { c2.trigger(&k2).await.unwrap() });
        let claim = c.claim_key(&a.id, &k).await.unwrap().unwrap();
        let t = racer.await.unwrap();
        assert!(
            claim.trigger_seq >= t.seq || t.owner == Some(a.id),
            "{i}: claim saw {}, trigger {} went to {:?}",
            claim.trigger_seq,
            t.seq,
            t.owner
        );
    }
}

/// Triggers racing on one hot key never lower its sequence: each draws its number after the
/// row lock, so the one that commits last holds the highest. (With the number drawn in the
/// INSERT's VALUES, before the lock, 8 clients lowered it on about 4 of 10 updates; then a
/// loop that observed the higher number could `Complete` past an acknowledged trigger.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_triggers_never_lower_the_sequence() {
    let url = server!();
    let schema = fresh_schema("hotseq");
    let k = key("hot/1");
    let first = coordinator(&url, &schema).await;
    first.trigger(&k).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(std::sync::Arc::new(coordinator(&url, &schema).await));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let k = k.clone();
        let c = coordinator(&url, &schema).await;
        tokio::spawn(async move {
            let (mut last, mut lowered, mut reads) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let seq = c
                    .key_info(&k)
                    .await
                    .unwrap()
                    .expect("registered")
                    .trigger_seq
                    .0;
                if seq < last {
                    lowered += 1;
                }
                last = last.max(seq);
                reads += 1;
            }
            (lowered, reads)
        })
    };
    let acked: Vec<Vec<u64>> = futures_join(clients.iter().map(|c| {
        let (c, k) = (c.clone(), k.clone());
        async move {
            let mut seqs = Vec::new();
            for _ in 0..150 {
                seqs.push(c.trigger(&k).await.unwrap().seq.0);
            }
            seqs
        }
    }))
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (lowered, reads) = reader.await.unwrap();
    let highest = acked.iter().flatten().copied().max().unwrap();
    let stored = first.key_info(&k).await.unwrap().unwrap().trigger_seq.0;
    assert!(
        stored >= highest,
        "the stored sequence {stored} is below an acknowledged trigger's {highest}"
    );
    assert_eq!(
        lowered, 0,
        "{lowered} of {reads} reads saw the sequence go down"
    );
}

/// A claim round whose statement committed returns every claim it took, even when one row
/// cannot be decoded: before, one bad key discarded the whole committed batch, and the
/// keys stayed owned by a live node that ran nothing.
#[tokio::test]
async fn committed_claims_survive_an_undecodable_row() {
    let url = server!();
    let schema = fresh_schema("partial");
    let c = coordinator(&url, &schema).await;
    let a = node("a");
    let (sink, _ev) = events();
    c.join(&a, TTL, sink).await.unwrap();
    c.trigger(&key("good/1")).await.unwrap();
    raw_client(&url)
        .await
        .execute(
            &format!(
                "INSERT INTO {schema}.keys (key, trigger_seq) \
                 VALUES (E'bad\\x01key', nextval('{schema}.trigger_seq'))"
            ),
            &[],
        )
        .await
        .unwrap();
    let claims = c.claim(&a.id, 10).await.expect("the committed claims");
    assert_eq!(
        claims.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["good/1"]
    );
}
