use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

use crate::error::Endpoint;
use crate::{ConfigError, TlsMode};

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "keyloop";

/// The largest state accepted by default (1 MiB).
pub const DEFAULT_MAX_STATE_BYTES: usize = 1 << 20;

/// The largest `max_state_bytes` accepted (256 MiB; PostgreSQL's own limit is 1 GiB).
pub const MAX_MAX_STATE_BYTES: usize = 256 << 20;

/// How to reach PostgreSQL and where keyloop keeps its tables. Built with
/// [`PostgresConfig::builder`] and validated by [`PostgresConfigBuilder::build`].
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) schema: String,
    pub(crate) pool_size: usize,
    pub(crate) max_state_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: TlsMode,
    pub(crate) endpoint: Endpoint,
}

impl fmt::Debug for PostgresConfig {
    // By hand: tokio_postgres::Config's Debug redacts the password, but an explicit list
    // makes sure nothing else that is secret slips in later.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .field("user", &self.endpoint.user)
            .field("dbname", &self.pg.get_dbname())
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("max_state_bytes", &self.max_state_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Starts a configuration for the server named by `url`, a libpq-style connection
    /// string (`postgresql://user:password@host:5432/db` or `host=... user=...`).
    pub fn builder(url: impl Into<String>) -> PostgresConfigBuilder {
        PostgresConfigBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            connect_timeout: Duration::from_secs(5),
            tls: TlsMode::Disable,
        }
    }

    /// The schema holding keyloop's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server's host (or socket directory) as `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.endpoint.host, self.endpoint.port)
    }

    /// The largest state accepted by `save_state`.
    pub fn max_state_bytes(&self) -> usize {
        self.max_state_bytes
    }
}

/// Builds a [`PostgresConfig`].
#[derive(Clone)]
pub struct PostgresConfigBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    max_state_bytes: usize,
    connect_timeout: Duration,
    tls: TlsMode,
}

impl fmt::Debug for PostgresConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfigBuilder")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresConfigBuilder {
    /// The schema for keyloop's tables (default `keyloop`). Several deployments can share
    /// one database under different schemas. Lowercase letters, digits and `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connections in the pool for ordinary queries (default 8; valid 1 to 1024). Each
    /// node additionally holds one dedicated listening connection.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The largest per-key state accepted, in bytes (default 1 MiB).
    pub fn max_state_bytes(mut self, max: usize) -> Self {
        self.max_state_bytes = max;
        self
    }

    /// How long to wait for a new connection (default 5 s; valid 1 ms to 10 minutes).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether to use TLS (default [`TlsMode::Disable`]).
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<PostgresConfig, ConfigError> {
        let mut pg =
            tokio_postgres::Config::from_str(&self.url).map_err(|e| ConfigError::InvalidUrl {
                reason: redact(&e.to_string(), &self.url),
            })?;
        validate_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(ConfigError::ZeroPoolSize);
        }
        if self.max_state_bytes == 0 || self.max_state_bytes > MAX_MAX_STATE_BYTES {
            return Err(ConfigError::BadMaxState {
                got: self.max_state_bytes,
                max: MAX_MAX_STATE_BYTES,
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("connect_timeout"));
        }
        // Upper bounds: beyond them a value is a mistake, and `Duration::MAX` overflows the
        // connection deadline inside tokio-postgres (a panic in connect).
        if self.connect_timeout < Duration::from_millis(1)
            || self.connect_timeout > Duration::from_secs(600)
        {
            return Err(ConfigError::OutOfRange {
                setting: "connect_timeout",
                value: format!("{:?}", self.connect_timeout),
                valid: "1ms..=10min",
            });
        }
        if self.pool_size > 1024 {
            return Err(ConfigError::OutOfRange {
                setting: "pool_size",
                value: self.pool_size.to_string(),
                valid: "1..=1024",
            });
        }
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => match pg.get_hostaddrs().first() {
                Some(a) => a.to_string(),
                None => return Err(ConfigError::NoHost),
            },
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let user = pg.get_user().unwrap_or("postgres").to_owned();
        pg.connect_timeout(self.connect_timeout);
        // Notice a dead peer on idle connections (the listener is idle most of the time).
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(10));
        #[cfg(feature = "tls")]
        if self.tls == TlsMode::Require {
            // Without this tokio-postgres "prefers" TLS and silently falls back to plain TCP.
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("keyloop");
        }
        Ok(PostgresConfig {
            pg,
            schema: self.schema,
            pool_size: self.pool_size,
            max_state_bytes: self.max_state_bytes,
            connect_timeout: self.connect_timeout,
            tls: self.tls,
            endpoint: Endpoint { host, port, user },
        })
    }
}

/// Whether `schema` is a plain identifier that needs no quoting and cannot collide with
/// SQL syntax (we still quote it).
fn validate_schema(schema: &str) -> Result<(), ConfigError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidSchema(schema.to_owned()))
    }
}

/// Removes the `user:password@` part of `url` from `message`, in case a parser echoed it.
fn redact(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    if let Some(rest) = url.split_once("://").map(|(_, r)| r)
        && let Some((userinfo, _)) = rest.split_once('@')
        && !userinfo.is_empty()
    {
        out = out.replace(userinfo, "<redacted>");
    }
    for part in url.split_whitespace() {
        if let Some(pw) = part.strip_prefix("password=")
            && !pw.is_empty()
        {
            out = out.replace(pw, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_endpoint() {
        let c = PostgresConfig::builder("postgresql://u:secret@db.example:6543/app")
            .build()
            .unwrap();
        assert_eq!(c.schema(), "keyloop");
        assert_eq!(c.address(), "db.example:6543");
        assert_eq!(c.max_state_bytes(), DEFAULT_MAX_STATE_BYTES);
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        let builder = || PostgresConfig::builder("postgresql://localhost/db");
        for timeout in [
            Duration::from_micros(999),
            Duration::from_secs(601),
            Duration::MAX,
        ] {
            let err = builder().connect_timeout(timeout).build().unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::OutOfRange {
                        setting: "connect_timeout",
                        ..
                    }
                ),
                "{timeout:?}: {err}"
            );
        }
        let err = builder().pool_size(1025).build().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::OutOfRange {
                    setting: "pool_size",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            builder()
                .connect_timeout(Duration::from_secs(600))
                .pool_size(1024)
                .build()
                .is_ok()
        );
        assert!(
            builder()
                .connect_timeout(Duration::from_millis(1))
                .pool_size(1)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn bad_schema_names_rejected() {
        for bad in [
            "",
            "Keyloop",
            "1abc",
            "a-b",
            "a b",
            "x\"y",
            "pg_toast",
            &"a".repeat(64),
        ] {
            let err = PostgresConfig::builder("postgresql://localhost/db")
                .schema(bad)
                .build()
                .unwrap_err();
            assert_eq!(err, ConfigError::InvalidSchema(bad.to_owned()));
        }
        for good in ["keyloop", "tenant_2", "_x", &"a".repeat(63)] {
            PostgresConfig::builder("postgresql://localhost/db")
                .schema(good)
                .build()
                .unwrap();
        }
    }

    #[test]
    fn bad_numbers_rejected() {
        let b = || PostgresConfig::builder("postgresql://localhost/db");
        assert_eq!(
            b().pool_size(0).build().unwrap_err(),
            ConfigError::ZeroPoolSize
        );
        assert!(matches!(
            b().max_state_bytes(0).build().unwrap_err(),
            ConfigError::BadMaxState { got: 0, .. }
        ));
        assert!(matches!(
            b().max_state_bytes(MAX_MAX_STATE_BYTES + 1)
                .build()
                .unwrap_err(),
            ConfigError::BadMaxState { .. }
        ));
        assert_eq!(
            b().connect_timeout(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroTimeout("connect_timeout")
        );
    }

    #[test]
    fn invalid_url_does_not_leak_password() {
        let err = PostgresConfig::builder("postgresql://u:hunter2@host:notaport/db")
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::InvalidUrl { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PostgresConfig::builder("host=h password=hunter2 port=x")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_host_rejected() {
        assert_eq!(
            PostgresConfig::builder("user=me dbname=x")
                .build()
                .unwrap_err(),
            ConfigError::NoHost
        );
    }
}
