//! keyloop: one control loop per key, reliably, on one machine or across a cluster.
//!
//! This facade re-exports [`keyloop_core`] and the backends enabled by features
//! (`memory` by default; `sled`, `postgres`, `consul`).

#[cfg(feature = "consul")]
pub use keyloop_consul as consul;
pub use keyloop_core::*;
pub use keyloop_flow as flow;
#[cfg(feature = "memory")]
pub use keyloop_memory as memory;
#[cfg(feature = "postgres")]
pub use keyloop_postgres as postgres;
#[cfg(feature = "sled")]
pub use keyloop_sled as sled;
pub use keyloop_supervisor as supervisor;
