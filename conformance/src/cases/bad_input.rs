//! Cases: bad input — invalid and unusual keys, use after shutdown, clients.

use keyloop_core::{Error, InvalidKey, Key, KeyStatus, MAX_KEY_BYTES};

use crate::{Case, Happening, Harness, key};

/// Checks the error of one invalid key.
type Expected = fn(&InvalidKey) -> bool;

/// Invalid keys are typed errors everywhere, register nothing and disturb nothing; keys
/// right at the length limit work end to end.
pub async fn invalid_keys_rejected(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let a = case.node("a").await;
    let client = case.client().await;
    let good = key("input/good");
    a.engine.trigger(good.clone()).await.expect("trigger");
    case.wait("a valid key runs", |log| log.start_count(&good) == 1)
        .await;

    let too_long = "x".repeat(MAX_KEY_BYTES + 1);
    let too_long_multibyte = format!("{}x", "é".repeat(MAX_KEY_BYTES / 2));
    let bad: Vec<(&str, &str, Expected)> = vec![
        ("empty", "", |e| *e == InvalidKey::Empty),
        ("NUL", "a\0b", |e| {
            matches!(
                e,
                InvalidKey::ControlCharacter {
                    character: '\0',
                    position: 1
                }
            )
        }),
        ("newline", "line\nbreak", |e| {
            matches!(
                e,
                InvalidKey::ControlCharacter {
                    character: '\n',
                    ..
                }
            )
        }),
        ("tab", "\tkey", |e| {
            matches!(e, InvalidKey::ControlCharacter { position: 0, .. })
        }),
        ("DEL", "del\u{7f}", |e| {
            matches!(e, InvalidKey::ControlCharacter { .. })
        }),
        ("C1 control", "c1\u{85}", |e| {
            matches!(e, InvalidKey::ControlCharacter { .. })
        }),
        ("1025 bytes", &too_long, |e| {
            *e == InvalidKey::TooLong {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES,
            }
        }),
        ("1025 bytes of multibyte text", &too_long_multibyte, |e| {
            matches!(e, InvalidKey::TooLong { .. })
        }),
    ];
    for (what, input, expected) in bad {
        match a.engine.trigger(input).await {
            Err(Error::InvalidKey(e)) => assert!(expected(&e), "{what}: wrong error {e:?}"),
            other => panic!("engine trigger of a key with {what} must be InvalidKey: {other:?}"),
        }
        match client.trigger(input).await {
            Err(Error::InvalidKey(e)) => assert!(expected(&e), "{what}: wrong error {e:?}"),
            other => panic!("client trigger of a key with {what} must be InvalidKey: {other:?}"),
        }
        assert!(
            matches!(a.engine.status(input).await, Err(Error::InvalidKey(_))),
            "status of a key with {what}"
        );
        let message = Key::new(input).expect_err("invalid").to_string();
        assert!(
            message.starts_with("invalid key"),
            "error says what is wrong: {message}"
        );
    }

    let longest = format!("input/{}", "k".repeat(MAX_KEY_BYTES - 6));
    let longest_multibyte = "é".repeat(MAX_KEY_BYTES / 2);
    let edge: Vec<Key> = [longest, longest_multibyte]
        .iter()
        .map(|s| {
            assert_eq!(s.len(), MAX_KEY_BYTES);
            key(s)
        })
        .collect();
    for k in &edge {
        a.engine
            .trigger(k.clone())
            .await
            .expect("a key at the limit is valid");
    }
    case.wait("keys at the length limit run", |log| {
        edge.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    let snapshot = client.inspect().await.expect("inspect");
    let mut registered: Vec<Key> = snapshot.keys.iter().map(|i| i.key.clone()).collect();
    registered.sort();
    let mut expected = edge.clone();
    expected.push(good.clone());
    expected.sort();
    assert_eq!(
        registered, expected,
        "only valid keys are registered, none lost"
    );
    assert!(
        case.recorder.lock().is_live(&good),
        "the valid key's loop was not disturbed"
    );
    case.recorder.assert_consistent();
}

/// Keys with non-ASCII text and characters special to paths, URLs, SQL and shells are
/// stored, listed, routed and reported exactly.
pub async fn unicode_and_special_keys_roundtrip(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let texts = [
        "vm/1234",
        "ключ/значение",
        "emoji/🦀🚀",
        "中文/キー/한국어",
        "with space",
        " leading-space",
        "/leading/slash",
        "trailing/slash/",
        "double//slash",
        "a/../b",
        "./dot",
        "%2F%00%25",
        "query?x=1&y=2#frag",
        "'; DROP TABLE keys; --",
        "quote\"double",
        "back\\slash",
        "$(echo) `cmd` ${var}",
        "*?[glob]",
        "colon:semi;comma,",
        "+plus=equals",
        "~tilde^caret|pipe<>",
        "\u{200b}zero-width",
        "é precomposed",
        "e\u{301} combining",
    ];
    let keys: Vec<Key> = texts.iter().map(|t| key(t)).collect();
    let client = case.client().await;
    for k in &keys {
        let out = client.trigger(k.clone()).await.expect("trigger");
        assert!(out.registered, "{k:?} registers as a key of its own");
    }
    let _a = case.node("a").await;
    case.wait("every key runs", |log| {
        keys.iter().all(|k| log.start_count(k) == 1)
    })
    .await;
    let snapshot = client.inspect().await.expect("inspect");
    let listed: Vec<Key> = snapshot.keys.iter().map(|i| i.key.clone()).collect();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        listed, expected,
        "inspect lists exactly these keys, sorted by key"
    );
    let coordinator = case.coordinator().await;
    for k in &keys {
        let info = coordinator
            .key_info(k)
            .await
            .expect("key_info")
            .expect("registered");
        assert_eq!(&info.key, k);
        client.trigger(k.clone()).await.expect("trigger");
    }
    case.wait("every running loop observes its own trigger", |log| {
        keys.iter()
            .all(|k| log.count(k, |h| *h == Happening::TriggerObserved) == 1)
    })
    .await;
    case.recorder.assert_consistent();
}

/// An engine that has shut down (or was killed) refuses triggers with `ShutDown` and
/// registers nothing.
pub async fn trigger_after_shutdown_is_error(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let a = case.node("a").await;
    let b = case.node("b").await;
    a.engine.shutdown().await;
    b.engine.kill();
    let k = key("input/after-shutdown");
    for (name, engine) in [("shut down", &a.engine), ("killed", &b.engine)] {
        assert!(
            matches!(engine.trigger(k.clone()).await, Err(Error::ShutDown)),
            "trigger on a {name} engine must fail with ShutDown"
        );
        assert!(
            matches!(engine.resume(k.clone()).await, Err(Error::ShutDown)),
            "resume on a {name} engine must fail with ShutDown"
        );
    }
    let info = case
        .coordinator()
        .await
        .key_info(&k)
        .await
        .expect("key_info");
    assert_eq!(info, None, "a refused trigger registers nothing");
}

/// A client without loops registers keys and reports them; a node then runs them.
pub async fn client_trigger_registers_key(harness: &dyn Harness) {
    let mut case = Case::new(harness).await;
    let client = case.client().await;
    let k = key("input/client");
    let first = client.trigger(k.clone()).await.expect("trigger");
    assert!(first.registered && first.owner.is_none(), "{first:?}");
    let second = client.trigger(k.clone()).await.expect("trigger");
    assert!(!second.registered, "{second:?}");
    assert!(second.seq > first.seq, "each trigger bumps the sequence");
    let coordinator = case.coordinator().await;
    let info = coordinator
        .key_info(&k)
        .await
        .expect("key_info")
        .expect("registered");
    assert_eq!(info.key, k);
    assert_eq!(info.trigger_seq, second.seq);
    assert_eq!((info.owner, info.parked), (None, None));
    assert_eq!(
        client.status(k.clone()).await.expect("status"),
        KeyStatus::Pending
    );
    let snapshot = client.inspect().await.expect("inspect");
    assert!(snapshot.keys.iter().any(|i| i.key == k), "{snapshot:?}");
    let missing = key("input/never-triggered");
    assert_eq!(
        coordinator.key_info(&missing).await.expect("key_info"),
        None
    );
    assert_eq!(
        client.status(missing).await.expect("status"),
        KeyStatus::NotRegistered
    );

    let a = case.node("a").await;
    case.wait("a node runs the client's key", |log| {
        log.start_count(&k) == 1
    })
    .await;
    let start = case.recorder.lock().starts(&k)[0].clone();
    let a_id = a.engine.node_id().expect("joined");
    assert_eq!(
        client.status(k.clone()).await.expect("status"),
        KeyStatus::Running {
            node: a_id,
            epoch: start.epoch
        }
    );
    let third = client.trigger(k.clone()).await.expect("trigger");
    assert_eq!(third.owner, Some(a_id), "{third:?}");
    case.wait("the loop observes the client's trigger", |log| {
        log.count(&k, |h| *h == Happening::TriggerObserved) == 1
    })
    .await;
}
