use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Notification, Socket};

use crate::PostgresError;

/// Whether connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP (or Unix sockets).
    #[default]
    Disable,
    /// TLS with rustls, verifying the server against the Mozilla root certificates
    /// (`webpki-roots`). Needs the `tls` feature.
    #[cfg(feature = "tls")]
    Require,
}

/// Opens connections with the configured TLS mode. Both the pool and the listener use it.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    #[cfg(feature = "tls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Connector {
    pub(crate) fn new(mode: TlsMode) -> Result<Connector, PostgresError> {
        match mode {
            TlsMode::Disable => Ok(Connector::Plain),
            #[cfg(feature = "tls")]
            TlsMode::Require => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| PostgresError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Connector::Rustls(
                    tokio_postgres_rustls::MakeRustlsConnect::new(config),
                ))
            }
        }
    }

    /// A pool manager for ordinary queries.
    pub(crate) fn manager(&self, pg: Config) -> deadpool_postgres::Manager {
        let mc = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        match self {
            Connector::Plain => {
                deadpool_postgres::Manager::from_config(pg, tokio_postgres::NoTls, mc)
            }
            #[cfg(feature = "tls")]
            Connector::Rustls(tls) => deadpool_postgres::Manager::from_config(pg, tls.clone(), mc),
        }
    }

    /// A standalone connection whose notifications are forwarded to the returned receiver.
    /// The receiver closes when the connection is gone.
    pub(crate) async fn connect_listening(
        &self,
        pg: &Config,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error> {
        match self {
            Connector::Plain => connect_listening(pg, tokio_postgres::NoTls).await,
            #[cfg(feature = "tls")]
            Connector::Rustls(tls) => connect_listening(pg, tls.clone()).await,
        }
    }
}

async fn connect_listening<T>(
    pg: &Config,
    tls: T,
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = pg.connect(tls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Driving the connection with `poll_message` is the only way to see notifications:
    // awaiting the connection (as pools do) drops them.
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "keyloop listener connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, rx))
}
