//! The ACL token and the TLS client key never appear in `Debug` or `Display` output, nor in
//! any error (or its sources).

use std::time::Duration;

use keyloop_consul::{ClientError, ConfigError, ConsulConfig, ConsulCoordinator, ReadOptions};
use keyloop_consul_emulator::{Emulator, EmulatorConfig};
use keyloop_core::{Coordinator, EventSink, NodeId, NodeInfo};

const TOKEN: &str = "9f1c2e7a-acl-token-that-must-not-leak";
const IDENTITY: &[u8] = include_bytes!("fixtures/test-client-identity.pem");

/// Lines of the private key's body (any one of them showing is a leak).
fn key_lines() -> Vec<String> {
    let text = std::str::from_utf8(IDENTITY).unwrap();
    let key = text.split("-----BEGIN PRIVATE KEY-----").nth(1).unwrap();
    let key = key.split("-----END PRIVATE KEY-----").next().unwrap();
    let lines: Vec<String> = key
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    assert!(!lines.is_empty());
    lines
}

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "{what} shows the ACL token: {text}");
    for line in key_lines() {
        // Also catch a partial leak of a key line.
        assert!(
            !text.contains(&line[..line.len().min(24)]),
            "{what} shows TLS key material: {text}"
        );
    }
}

/// Display, Debug and every source of an error.
fn assert_error_clean(what: &str, e: &(dyn std::error::Error + 'static)) {
    assert_clean(what, &format!("{e} {e:?}"));
    let mut source = e.source();
    while let Some(s) = source {
        assert_clean(what, &format!("{s} {s:?}"));
        source = s.source();
    }
}

#[tokio::test]
async fn the_acl_token_and_the_tls_key_never_show() {
    // The emulator wants another token, so every request is refused (403).
    let emu = Emulator::start_with(
        EmulatorConfig::builder()
            .acl_token("the-right-token")
            .min_session_ttl(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let builder = ConsulConfig::builder(emu.url())
        .token(TOKEN)
        .client_identity_pem(IDENTITY.to_vec())
        .ca_certificate_pem(IDENTITY.to_vec());
    assert_clean("the builder", &format!("{builder:?}"));
    let config = builder.build().expect("a valid identity");
    assert_clean("the config", &format!("{config:?}"));
    assert_clean("the client", &format!("{:?}", config.client()));
    let coordinator = ConsulCoordinator::new(config.clone());
    assert_clean("the coordinator", &format!("{coordinator:?}"));

    // A refused request, through the client and through the coordinator.
    let err = config
        .client()
        .kv_get("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Forbidden { .. }), "{err}");
    assert_error_clean("a 403", &err);
    let err = coordinator
        .join(
            &NodeInfo {
                id: NodeId::random(),
                name: "n".into(),
            },
            Duration::from_secs(10),
            EventSink::new(|_| {}),
        )
        .await
        .unwrap_err();
    assert_error_clean("a refused join", &err);

    // No answer at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = ConsulConfig::builder(format!("http://{closed}"))
        .token(TOKEN)
        .client_identity_pem(IDENTITY.to_vec())
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = config
        .client()
        .kv_get("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert_error_clean("a transport error", &err);
}

#[test]
fn configuration_errors_do_not_repeat_secrets() {
    let b = || ConsulConfig::builder("127.0.0.1:8500");
    let mut broken_key = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
    broken_key.extend(key_lines()[0].as_bytes());
    broken_key.extend(b"\n-----END PRIVATE KEY-----\n");
    let err = b().client_identity_pem(broken_key).build().unwrap_err();
    assert!(matches!(err, ConfigError::Tls(_)), "{err}");
    assert_error_clean("a bad identity", &err);
    let err = b()
        .token(format!("{TOKEN} with a space"))
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::BadToken), "{err}");
    assert_error_clean("a bad token", &err);
    let err = ConsulConfig::builder(format!("http://user:{TOKEN}@consul:8500"))
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::AddressWithCredentials), "{err}");
    assert_error_clean("an address with credentials", &err);
}
