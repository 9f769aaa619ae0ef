use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a flow's user data must be: cloneable (a step gets its own copy, so an interrupted
/// step leaves the state untouched) and serializable (it is saved after every step).
///
/// Implemented for every type that qualifies.
pub trait FlowData: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> FlowData for T {}
