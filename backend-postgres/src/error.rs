use keyloop_core::{BoxError, CoordinatorError};

/// An invalid [`PostgresConfig`](crate::PostgresConfig), reported by
/// [`PostgresConfigBuilder::build`](crate::PostgresConfigBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection string could not be parsed. The string itself is not repeated, since
    /// it may hold a password.
    #[error("invalid postgres connection string: {reason}")]
    InvalidUrl {
        /// Why it was rejected (never contains the password).
        reason: String,
    },
    /// The connection string names no host.
    #[error("postgres connection string names no host")]
    NoHost,
    /// The schema name is not a plain lowercase SQL identifier.
    #[error(
        "invalid schema name {0:?}: use 1-63 lowercase ASCII letters, digits or underscores, \
         not starting with a digit"
    )]
    InvalidSchema(String),
    /// The pool size was zero.
    #[error("pool_size must be at least 1")]
    ZeroPoolSize,
    /// The maximum state size was zero or above what PostgreSQL can store.
    #[error("max_state_bytes must be between 1 and {max}, got {got}")]
    BadMaxState {
        /// The configured value.
        got: usize,
        /// The largest accepted value.
        max: usize,
    },
    /// A timeout was zero.
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    /// A setting is outside its documented valid range.
    #[error("{setting} = {value} is outside its valid range {valid}")]
    OutOfRange {
        /// The setting's builder method.
        setting: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range, as documented on the builder method.
        valid: &'static str,
    },
}

/// An error from [`PostgresCoordinator::connect`](crate::PostgresCoordinator::connect).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not be reached.
    #[error("postgres at {host}:{port} is unreachable: {detail}")]
    Unreachable {
        /// The host tried.
        host: String,
        /// The port tried.
        port: u16,
        /// What went wrong.
        detail: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The server rejected the user name or password.
    #[error("postgres at {host}:{port} rejected the credentials of user {user:?}")]
    Authentication {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The user name presented.
        user: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The database schema was written by a newer keyloop; nothing was changed.
    #[error(
        "postgres schema {schema:?} has version {found}, newer than the {supported} this \
         keyloop-postgres supports; upgrade keyloop-postgres (nothing was changed)"
    )]
    SchemaTooNew {
        /// The schema name.
        schema: String,
        /// The version found in the database.
        found: i32,
        /// The newest version this code knows.
        supported: i32,
    },
    /// Any other database error (for example missing privileges while migrating).
    #[error("postgres error while {doing}: {detail}")]
    Database {
        /// What was being done.
        doing: &'static str,
        /// The server's message.
        detail: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// TLS could not be set up.
    #[error("postgres tls setup failed: {0}")]
    Tls(String),
}

impl From<PostgresError> for CoordinatorError {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Unreachable { ref host, port, .. } => CoordinatorError::Unavailable {
                backend: format!("postgres at {host}:{port}"),
                detail: e.to_string(),
                source: Some(Box::new(e)),
            },
            PostgresError::SchemaTooNew { .. } => CoordinatorError::Incompatible {
                detail: e.to_string(),
            },
            other => CoordinatorError::Backend {
                backend: "postgres".into(),
                detail: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// Where the coordinator's server is, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
}

impl Endpoint {
    pub(crate) fn backend(&self) -> String {
        format!("postgres at {}:{}", self.host, self.port)
    }

    /// Maps a driver error during an operation: connection trouble is transient
    /// (`Unavailable`), anything else is a backend error.
    pub(crate) fn op_error(&self, doing: &str, e: tokio_postgres::Error) -> CoordinatorError {
        let detail = format!("{doing}: {}", describe(&e));
        if is_connection_error(&e) {
            CoordinatorError::unavailable(self.backend(), detail, Some(Box::new(e) as BoxError))
        } else {
            CoordinatorError::backend(self.backend(), detail, Some(Box::new(e) as BoxError))
        }
    }

    pub(crate) fn pool_error(&self, e: deadpool_postgres::PoolError) -> CoordinatorError {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => self.op_error("connecting", e),
            PoolError::Closed => CoordinatorError::Closed,
            other => CoordinatorError::unavailable(
                self.backend(),
                format!("no pooled connection: {other}"),
                Some(Box::new(other) as BoxError),
            ),
        }
    }

    /// Maps an error while connecting: unreachable, bad credentials, or other.
    pub(crate) fn connect_error(
        &self,
        doing: &'static str,
        e: tokio_postgres::Error,
    ) -> PostgresError {
        let code = e.code().map(|c| c.code().to_owned());
        match code.as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01") | Some("28000") => PostgresError::Authentication {
                host: self.host.clone(),
                port: self.port,
                user: self.user.clone(),
                source: Box::new(e),
            },
            _ if is_connection_error(&e) => PostgresError::Unreachable {
                host: self.host.clone(),
                port: self.port,
                detail: describe(&e),
                source: Box::new(e),
            },
            _ => PostgresError::Database {
                doing,
                detail: describe(&e),
                source: Box::new(e),
            },
        }
    }
}

/// The driver's message plus the server's, if any (the driver's `Display` alone often says
/// only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// Whether the error means the connection (or the server) is gone rather than the statement
/// being wrong.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 connection exceptions, 57P01..57P03 shutdown / cannot connect now,
        // 53300 too many connections.
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }
        // No SQLSTATE: an I/O or protocol error on the socket.
        None => e.as_db_error().is_none(),
    }
}
