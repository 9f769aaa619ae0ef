use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{Backoff, BoxError, RestartPolicy};

pub(crate) type ServiceFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
pub(crate) type Factory = Arc<dyn Fn(ServiceContext) -> ServiceFuture + Send + Sync>;

/// A named service for a [`Supervisor`](crate::Supervisor): a factory that makes a fresh future
/// for every start, and the policy that decides when it is restarted.
///
/// The future gets a [`ServiceContext`]; it should return soon after
/// [`ServiceContext::stopped`] resolves. Returning `Ok(())` is a clean end, returning an error
/// or panicking is a failure.
pub struct Service {
    pub(crate) name: String,
    pub(crate) policy: RestartPolicy,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) factory: Factory,
}

impl Service {
    /// A service called `name` under `policy`, started by calling `factory`.
    pub fn new<F, Fut, E>(name: impl Into<String>, policy: RestartPolicy, factory: F) -> Self
    where
        F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let factory: Factory = Arc::new(move |ctx| {
            let fut = factory(ctx);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Service {
            name: name.into(),
            policy,
            backoff: None,
            factory,
        }
    }

    /// A [`RestartPolicy::Permanent`] service: always restarted.
    pub fn permanent<F, Fut, E>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Service::new(name, RestartPolicy::Permanent, factory)
    }

    /// A [`RestartPolicy::Transient`] service: restarted only after a failure or panic.
    pub fn transient<F, Fut, E>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Service::new(name, RestartPolicy::Transient, factory)
    }

    /// A [`RestartPolicy::Temporary`] service: never restarted.
    pub fn temporary<F, Fut, E>(name: impl Into<String>, factory: F) -> Self
    where
        F: Fn(ServiceContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Service::new(name, RestartPolicy::Temporary, factory)
    }

    /// Uses `backoff` for this service's restarts instead of the supervisor's.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's restart policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// What a supervised service gets each time it is started.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub(crate) name: Arc<str>,
    pub(crate) restarts: u32,
    pub(crate) token: CancellationToken,
}

impl ServiceContext {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times this service was restarted before this start (0 on the first start).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The token cancelled when this run of the service must stop; hand it (or child tokens)
    /// to calls that should be aborted on shutdown.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves when this run of the service must stop.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Whether this run of the service has been told to stop.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }
}
