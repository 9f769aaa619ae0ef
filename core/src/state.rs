use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CoordinatorError, LoopContext, ShutdownReason, StateError};

/// A loop's durable per-key state in the coordinator, fenced by the loop's epoch.
///
/// A save from a loop that no longer owns its key fails with [`StateError::Fenced`] and
/// signals the loop to stop ([`ShutdownReason::OwnershipLost`]).
pub struct StateHandle<'a> {
    ctx: &'a LoopContext,
}

impl<'a> StateHandle<'a> {
    pub(crate) fn new(ctx: &'a LoopContext) -> Self {
        StateHandle { ctx }
    }

    /// Loads the saved bytes, if any.
    pub async fn load(&self) -> Result<Option<Bytes>, StateError> {
        let slot = self.ctx.slot();
        Ok(slot.session.coordinator.load_state(&slot.key).await?)
    }

    /// Saves `state`, replacing what was saved before.
    pub async fn save(&self, state: impl Into<Bytes>) -> Result<(), StateError> {
        let state = state.into();
        let slot = self.ctx.slot();
        let max = slot.session.max_state_bytes;
        if state.len() > max {
            return Err(StateError::TooLarge {
                size: state.len(),
                max,
            });
        }
        if !slot.is_owner() {
            // The backend might still accept it for a moment, but this node can no longer
            // vouch for its lease: safety first.
            slot.signal_shutdown(ShutdownReason::OwnershipLost);
            return Err(StateError::Fenced {
                key: slot.key.clone(),
                epoch: slot.epoch,
            });
        }
        let result = slot
            .session
            .coordinator
            .save_state(&slot.session.node.id, &slot.key, slot.epoch, state)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(CoordinatorError::Fenced { .. } | CoordinatorError::LeaseExpired { .. }) => {
                slot.signal_shutdown(ShutdownReason::OwnershipLost);
                Err(StateError::Fenced {
                    key: slot.key.clone(),
                    epoch: slot.epoch,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Loads and deserializes JSON state.
    pub async fn load_json<T: DeserializeOwned>(&self) -> Result<Option<T>, StateError> {
        match self.load().await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(StateError::Decode),
            None => Ok(None),
        }
    }

    /// Serializes `value` as JSON and saves it.
    pub async fn save_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(StateError::Encode)?;
        self.save(bytes).await
    }
}
