//! Backend settings, validated at [`ConsulConfigBuilder::build`].

use std::time::Duration;

use crate::client::{CONSUL_MAX_VALUE_BYTES, ClientSettings, ConsulClient};
use crate::error::ConfigError;

/// Valid ranges of the settings, checked by [`ConsulConfigBuilder::build`].
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(600));
const WATCH_WAIT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));
const WATCH_MIN_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(60));
const MAX_VALUE_BYTES: (usize, usize) = (1024, 256 * 1024 * 1024);
const TXN_MAX_REQUEST_BYTES: (usize, usize) = (64 * 1024, 256 * 1024 * 1024);

fn within<T: PartialOrd>(value: T, (min, max): (T, T)) -> bool {
    min <= value && value <= max
}

/// Room kept in a state-saving transaction for everything but the value (three operations
/// with keys of up to 1 KiB escaped, and JSON framing).
const TXN_OVERHEAD: usize = 16 * 1024;

/// Settings of a [`ConsulCoordinator`](crate::ConsulCoordinator), built with
/// [`ConsulConfig::builder`]. Holds the HTTP client, so TLS material is checked at `build()`.
/// Its `Debug` shows neither the ACL token nor TLS material.
#[derive(Clone)]
pub struct ConsulConfig {
    pub(crate) client: ConsulClient,
    pub(crate) address: String,
    pub(crate) prefix: String,
    pub(crate) lock_delay: Duration,
    pub(crate) watch_wait: Duration,
    pub(crate) watch_min_interval: Duration,
    pub(crate) max_state_bytes: usize,
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("client", &self.client)
            .field("prefix", &self.prefix)
            .field("lock_delay", &self.lock_delay)
            .field("watch_wait", &self.watch_wait)
            .field("watch_min_interval", &self.watch_min_interval)
            .field("max_state_bytes", &self.max_state_bytes)
            .finish()
    }
}

impl ConsulConfig {
    /// A builder for the agent at `address` (`http://host:port`, `https://host:port`, or
    /// `host:port` as in `CONSUL_HTTP_ADDR`, which means `http://`).
    pub fn builder(address: impl Into<String>) -> ConsulConfigBuilder {
        ConsulConfigBuilder {
            address: address.into(),
            token: None,
            datacenter: None,
            prefix: "keyloop".to_string(),
            lock_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            watch_wait: Duration::from_secs(60),
            watch_min_interval: Duration::from_millis(20),
            max_value_bytes: CONSUL_MAX_VALUE_BYTES,
            txn_max_request_bytes: CONSUL_MAX_VALUE_BYTES,
            ca_pem: None,
            ca_file_error: None,
            identity_pem: None,
        }
    }

    /// A builder from the standard environment: `CONSUL_HTTP_ADDR` (default
    /// `127.0.0.1:8500`), `CONSUL_HTTP_TOKEN` (ignored if empty), `CONSUL_CACERT` (a PEM
    /// file; an unreadable file is reported by `build()`).
    pub fn from_env() -> ConsulConfigBuilder {
        let addr = std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into());
        let mut b = ConsulConfig::builder(addr);
        if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN") {
            if !token.is_empty() {
                b = b.token(token);
            }
        }
        if let Ok(path) = std::env::var("CONSUL_CACERT") {
            match std::fs::read(&path) {
                Ok(pem) => b.ca_pem = Some(pem),
                Err(e) => b.ca_file_error = Some((path, e.kind())),
            }
        }
        b
    }

    /// The typed HTTP client this configuration built.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// The KV prefix everything is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The largest state a loop may save.
    pub fn max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }
}

/// Builds a [`ConsulConfig`]. Its `Debug` shows neither the ACL token nor TLS material.
#[derive(Clone)]
pub struct ConsulConfigBuilder {
    address: String,
    token: Option<String>,
    datacenter: Option<String>,
    prefix: String,
    lock_delay: Duration,
    request_timeout: Duration,
    watch_wait: Duration,
    watch_min_interval: Duration,
    max_value_bytes: usize,
    txn_max_request_bytes: usize,
    ca_pem: Option<Vec<u8>>,
    /// `CONSUL_CACERT` named a file that could not be read.
    ca_file_error: Option<(String, std::io::ErrorKind)>,
    identity_pem: Option<Vec<u8>>,
}

/// How a secret appears in `Debug`: only whether it is set.
pub(crate) fn redacted<T>(secret: &Option<T>) -> &'static str {
    if secret.is_some() {
        "<redacted>"
    } else {
        "<none>"
    }
}

impl std::fmt::Debug for ConsulConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfigBuilder")
            .field("address", &self.address)
            .field("token", &redacted(&self.token))
            .field("datacenter", &self.datacenter)
            .field("prefix", &self.prefix)
            .field("lock_delay", &self.lock_delay)
            .field("request_timeout", &self.request_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("watch_min_interval", &self.watch_min_interval)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("txn_max_request_bytes", &self.txn_max_request_bytes)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("identity_pem", &redacted(&self.identity_pem))
            .finish()
    }
}

impl ConsulConfigBuilder {
    /// ACL token sent as `X-Consul-Token` on every request (never in the URL, `Debug` output
    /// or errors). It needs `key:write` on the prefix and `session:write` on the agent's
    /// node.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Datacenter to address (`?dc=`); default: the agent's own.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// KV prefix under which everything is stored (default `keyloop`). Clusters with
    /// different prefixes are independent.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Lock-delay of node sessions (default 1 s, 0..=60 s). After a node's session is
    /// invalidated (crash, TTL lapse, operator), its keys cannot be claimed for this long.
    /// Epoch fencing already keeps a stale owner from writing, so this is only an extra
    /// margin that lengthens failover; graceful handoffs release keys explicitly and never
    /// wait for it.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// Timeout of ordinary requests (default 10 s, 1 ms..=10 min). Blocking queries get this
    /// plus their wait plus Consul's `wait/16` jitter.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long each blocking query of the watch may wait (default 60 s, 1 s to 10 min).
    pub fn watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait;
        self
    }

    /// Least time between two watch requests (default 20 ms, 1 ms..=1 min): keeps a flapping
    /// index from turning the watch into a busy loop.
    pub fn watch_min_interval(mut self, interval: Duration) -> Self {
        self.watch_min_interval = interval;
        self
    }

    /// The server's `limits.kv_max_value_size` (default 512 KiB, 1 KiB..=256 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The server's `txn_max_req_len` (default 512 KiB, 64 KiB..=256 MiB). State is saved in a
    /// transaction
    /// with its value base64-encoded, so the largest state is about three quarters of this
    /// (less 16 KiB for the rest of the request): 372 KiB with the defaults.
    pub fn txn_max_request_bytes(mut self, bytes: usize) -> Self {
        self.txn_max_request_bytes = bytes;
        self
    }

    /// PEM certificate(s) of the CA that signed the agent's HTTPS certificate.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// PEM client certificate and private key, for agents with `verify_incoming`. It never
    /// appears in `Debug` output or errors.
    pub fn client_identity_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.identity_pem = Some(pem.into());
        self
    }

    /// Validates the settings and builds the HTTP client.
    pub fn build(self) -> Result<ConsulConfig, ConfigError> {
        let address = normalize_address(&self.address)?;
        if self.prefix.is_empty()
            || self.prefix.starts_with('/')
            || self.prefix.ends_with('/')
            || self.prefix.contains("//")
            || self.prefix.chars().any(char::is_control)
        {
            return Err(ConfigError::BadPrefix(self.prefix));
        }
        if let Some(dc) = &self.datacenter {
            if dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::BadDatacenter(dc.clone()));
            }
        }
        if let Some(token) = &self.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::BadToken);
            }
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(ConfigError::LockDelayTooLong(self.lock_delay));
        }
        if !within(self.request_timeout, REQUEST_TIMEOUT) {
            return Err(ConfigError::RequestTimeoutOutOfRange(self.request_timeout));
        }
        if !within(self.watch_wait, WATCH_WAIT) {
            return Err(ConfigError::BadWatchWait(self.watch_wait));
        }
        if !within(self.watch_min_interval, WATCH_MIN_INTERVAL) {
            return Err(ConfigError::WatchIntervalOutOfRange(
                self.watch_min_interval,
            ));
        }
        if !within(self.max_value_bytes, MAX_VALUE_BYTES) {
            return Err(ConfigError::ValueLimitOutOfRange(self.max_value_bytes));
        }
        if !within(self.txn_max_request_bytes, TXN_MAX_REQUEST_BYTES) {
            return Err(ConfigError::TxnLimitOutOfRange(self.txn_max_request_bytes));
        }
        if let Some((path, kind)) = self.ca_file_error {
            return Err(ConfigError::CaFile {
                path,
                source: kind.into(),
            });
        }
        let max_state_bytes =
            ((self.txn_max_request_bytes - TXN_OVERHEAD) / 4 * 3).min(self.max_value_bytes);

        let mut http = reqwest::Client::builder()
            .connect_timeout(self.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(ConfigError::Tls)?;
            if certs.is_empty() {
                return Err(ConfigError::NoCaCertificate);
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &self.identity_pem {
            http = http.identity(reqwest::Identity::from_pem(pem).map_err(ConfigError::Tls)?);
        }
        let http = http.build().map_err(ConfigError::Http)?;
        let client = ConsulClient::new(
            http,
            ClientSettings {
                address: address.clone(),
                token: self.token,
                datacenter: self.datacenter,
                request_timeout: self.request_timeout,
                max_value_bytes: self.max_value_bytes,
                txn_max_request_bytes: self.txn_max_request_bytes,
            },
        );
        Ok(ConsulConfig {
            client,
            address,
            prefix: self.prefix,
            lock_delay: self.lock_delay,
            watch_wait: self.watch_wait,
            watch_min_interval: self.watch_min_interval,
            max_state_bytes,
        })
    }
}

fn normalize_address(raw: &str) -> Result<String, ConfigError> {
    if raw.contains('@') {
        return Err(ConfigError::AddressWithCredentials);
    }
    let bad = || ConfigError::BadAddress(raw.to_string());
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let rest = with_scheme
        .strip_prefix("http://")
        .or_else(|| with_scheme.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let host = rest.trim_end_matches('/');
    if host.is_empty()
        || host.contains('/')
        || host.contains(char::is_whitespace)
        || host.contains(['?', '#'])
    {
        return Err(bad());
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized() {
        let b = |a: &str| ConsulConfig::builder(a).build().map(|c| c.address);
        assert_eq!(b("127.0.0.1:8500").unwrap(), "http://127.0.0.1:8500");
        assert_eq!(
            b("https://consul.example:8501/").unwrap(),
            "https://consul.example:8501"
        );
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://a b",
            "http://x/path",
            "http://x?y",
        ] {
            assert!(matches!(b(bad), Err(ConfigError::BadAddress(_))), "{bad}");
        }
    }

    #[test]
    fn each_bad_setting_is_a_typed_error() {
        let b = || ConsulConfig::builder("127.0.0.1:8500");
        for p in ["", "/a", "a/", "a//b", "a\nb"] {
            assert!(
                matches!(b().prefix(p).build(), Err(ConfigError::BadPrefix(_))),
                "{p:?}"
            );
        }
        assert!(matches!(
            b().datacenter("").build(),
            Err(ConfigError::BadDatacenter(_))
        ));
        assert!(matches!(
            b().datacenter("dc 1").build(),
            Err(ConfigError::BadDatacenter(_))
        ));
        assert!(matches!(b().token("").build(), Err(ConfigError::BadToken)));
        assert!(matches!(
            b().token("a\nb").build(),
            Err(ConfigError::BadToken)
        ));
        assert!(matches!(
            b().lock_delay(Duration::from_secs(61)).build(),
            Err(ConfigError::LockDelayTooLong(_))
        ));
        for t in [Duration::ZERO, Duration::from_secs(601), Duration::MAX] {
            assert!(
                matches!(
                    b().request_timeout(t).build(),
                    Err(ConfigError::RequestTimeoutOutOfRange(_))
                ),
                "{t:?}"
            );
        }
        assert!(matches!(
            b().watch_wait(Duration::from_millis(10)).build(),
            Err(ConfigError::BadWatchWait(_))
        ));
        assert!(matches!(
            b().watch_wait(Duration::from_secs(601)).build(),
            Err(ConfigError::BadWatchWait(_))
        ));
        for i in [Duration::ZERO, Duration::from_secs(61), Duration::MAX] {
            assert!(matches!(
                b().watch_min_interval(i).build(),
                Err(ConfigError::WatchIntervalOutOfRange(_))
            ));
        }
        assert!(matches!(
            b().watch_wait(Duration::MAX).build(),
            Err(ConfigError::BadWatchWait(_))
        ));
        assert!(matches!(
            b().lock_delay(Duration::MAX).build(),
            Err(ConfigError::LockDelayTooLong(_))
        ));
        for n in [0, 1023, usize::MAX] {
            assert!(matches!(
                b().max_value_bytes(n).build(),
                Err(ConfigError::ValueLimitOutOfRange(_))
            ));
        }
        for n in [1000, 64 * 1024 - 1, usize::MAX] {
            assert!(matches!(
                b().txn_max_request_bytes(n).build(),
                Err(ConfigError::TxnLimitOutOfRange(_))
            ));
        }
        assert!(matches!(
            ConsulConfig::builder("http://user:hunter2@consul:8500").build(),
            Err(ConfigError::AddressWithCredentials)
        ));
        for ok in [
            b().request_timeout(Duration::from_millis(1)),
            b().request_timeout(Duration::from_secs(600)),
            b().watch_min_interval(Duration::from_secs(60)),
            b().lock_delay(Duration::from_secs(60)),
            b().max_value_bytes(1024),
            b().txn_max_request_bytes(256 * 1024 * 1024),
        ] {
            assert!(ok.build().is_ok());
        }
        assert!(matches!(
            b().ca_certificate_pem(b"not a certificate".to_vec())
                .build(),
            Err(ConfigError::Tls(_) | ConfigError::NoCaCertificate)
        ));
        assert!(matches!(
            b().client_identity_pem(b"not a key".to_vec()).build(),
            Err(ConfigError::Tls(_))
        ));
    }

    #[test]
    fn max_state_follows_the_transaction_limit() {
        let c = ConsulConfig::builder("127.0.0.1:8500").build().unwrap();
        assert_eq!(c.max_state_bytes(), (512 * 1024 - 16 * 1024) / 4 * 3);
        let c = ConsulConfig::builder("127.0.0.1:8500")
            .txn_max_request_bytes(4 * 1024 * 1024)
            .build()
            .unwrap();
        assert_eq!(c.max_state_bytes(), 512 * 1024, "capped by the value limit");
    }
}
