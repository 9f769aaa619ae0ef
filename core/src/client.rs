use std::sync::Arc;

use crate::{
    ClusterSnapshot, Coordinator, CoordinatorError, Error, IntoKey, Key, KeyStatus, TriggerOutcome,
};

/// Triggers and inspects keys without running loops — for an API server that only
/// enqueues work.
///
/// ```
/// # async fn demo(coordinator: std::sync::Arc<dyn keyloop_core::Coordinator>) -> Result<(), keyloop_core::Error> {
/// use keyloop_core::Client;
///
/// let client = Client::new(coordinator);
/// client.trigger("vm/1").await?;
/// println!("{}", client.status("vm/1").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    coordinator: Arc<dyn Coordinator>,
}

impl Client {
    /// A client on `coordinator`.
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Client {
        Client { coordinator }
    }

    /// Triggers `key`: registers it if new and wakes its loop wherever it runs.
    pub async fn trigger(&self, key: impl IntoKey) -> Result<TriggerOutcome, Error> {
        let key = key.into_key()?;
        Ok(self.coordinator.trigger(&key).await?)
    }

    /// Restarts a parked (`Failed`) key; same as a trigger.
    pub async fn resume(&self, key: impl IntoKey) -> Result<(), Error> {
        self.trigger(key).await.map(|_| ())
    }

    /// The key's status as the backend sees it.
    pub async fn status(&self, key: impl IntoKey) -> Result<KeyStatus, Error> {
        let key = key.into_key()?;
        Ok(status_from_backend(&*self.coordinator, &key).await?)
    }

    /// Every node and key the backend knows.
    pub async fn inspect(&self) -> Result<ClusterSnapshot, Error> {
        Ok(self.coordinator.inspect().await?)
    }
}

pub(crate) async fn status_from_backend(
    coordinator: &dyn Coordinator,
    key: &Key,
) -> Result<KeyStatus, CoordinatorError> {
    Ok(match coordinator.key_info(key).await? {
        None => KeyStatus::NotRegistered,
        Some(info) => match (info.parked, info.owner, info.epoch, info.wake_at) {
            (Some(error), _, _, _) => KeyStatus::Failed { error },
            (None, Some(node), Some(epoch), _) => KeyStatus::Running { node, epoch },
            (None, None, _, Some(until)) => KeyStatus::Sleeping { until },
            _ => KeyStatus::Pending,
        },
    })
}
