use std::sync::{Arc, Mutex};

use keyloop_core::{Bytes, CancellationToken, Epoch, Key, StateError, async_trait};

use crate::FlowContext;

/// An in-memory, epoch-fenced home for one flow's state, for tests and for flows run
/// without an engine.
///
/// Each [`acquire`](MemoryStateStore::acquire) makes a new owner with a greater epoch, the
/// way a coordinator hands a key to a new node; saves by an older owner fail with
/// [`StateError::Fenced`].
///
/// ```
/// use keyloop_flow::{FlowContext, MemoryStateStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStateStore::new();
/// let old = store.acquire();
/// let new = store.acquire();
/// new.save_state("s".into()).await.unwrap();
/// assert!(old.save_state("x".into()).await.is_err());
/// assert_eq!(store.saved().as_deref(), Some(&b"s"[..]));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStateStore {
    inner: Arc<Mutex<Inner>>,
    key: Key,
}

#[derive(Debug, Default)]
struct Inner {
    state: Option<Bytes>,
    epoch: u64,
    saves: u64,
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        MemoryStateStore::new()
    }
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> MemoryStateStore {
        MemoryStateStore {
            inner: Arc::default(),
            key: Key::new("memory-flow").expect("a valid constant key"),
        }
    }

    /// A new owner: its epoch is greater than every earlier owner's, which are fenced from
    /// now on.
    pub fn acquire(&self) -> MemoryOwner {
        let mut inner = self.inner.lock().expect("memory store lock");
        inner.epoch += 1;
        MemoryOwner {
            store: self.clone(),
            epoch: inner.epoch,
            token: CancellationToken::new(),
        }
    }

    /// The saved bytes, if any.
    pub fn saved(&self) -> Option<Bytes> {
        self.inner.lock().expect("memory store lock").state.clone()
    }

    /// How many saves succeeded.
    pub fn saves(&self) -> u64 {
        self.inner.lock().expect("memory store lock").saves
    }
}

/// One owner of a [`MemoryStateStore`], with its own epoch and cancellation token.
#[derive(Debug, Clone)]
pub struct MemoryOwner {
    store: MemoryStateStore,
    epoch: u64,
    token: CancellationToken,
}

impl MemoryOwner {
    /// This owner's epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// Cancels this owner's token: the flow stops before its next step.
    pub fn cancel(&self) {
        self.token.cancel();
    }
}

#[async_trait]
impl FlowContext for MemoryOwner {
    async fn load_state(&self) -> Result<Option<Bytes>, StateError> {
        Ok(self.store.saved())
    }

    async fn save_state(&self, state: Bytes) -> Result<(), StateError> {
        let mut inner = self.store.inner.lock().expect("memory store lock");
        if inner.epoch != self.epoch {
            return Err(StateError::Fenced {
                key: self.store.key.clone(),
                epoch: Epoch(self.epoch),
            });
        }
        inner.state = Some(state);
        inner.saves += 1;
        Ok(())
    }

    fn cancellation_token(&self) -> CancellationToken {
        self.token.clone()
    }

    fn epoch(&self) -> Option<Epoch> {
        Some(Epoch(self.epoch))
    }
}
