use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::lifecycle::Ticket;

/// A session registered with a [`Lifecycle`](crate::Lifecycle): a connection, a request, any
/// unit of work that shutdown should wait for.
///
/// The session is registered while this guard lives and deregistered when it is dropped. On
/// shutdown it is told to stop ([`Session::stopped`] resolves) and shutdown waits, up to the
/// grace period, for the guard to be dropped; if it is not, the session is abandoned, logged at
/// error level by name, and reported.
#[derive(Debug)]
pub struct Session {
    pub(crate) ticket: Ticket,
    pub(crate) token: CancellationToken,
}

impl Session {
    /// The session's name.
    pub fn name(&self) -> &str {
        self.ticket.name()
    }

    /// The name, shared.
    pub fn shared_name(&self) -> Arc<str> {
        self.ticket.shared_name()
    }

    /// The token cancelled when the session must wind down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves when the session must wind down: finish what is in flight, then end.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Whether the session has been told to wind down.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }
}
