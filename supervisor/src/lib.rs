//! Supervision and lifecycle building blocks used by the keyloop engine and offered to users.
//!
//! ```
//! use keyloop_supervisor::Backoff;
//! use std::time::Duration;
//!
//! let backoff = Backoff::builder().initial(Duration::from_millis(10)).max(Duration::from_secs(1)).build().unwrap();
//! assert_eq!(backoff.delay_without_jitter(0), Duration::from_millis(10));
//! ```

mod backoff;

pub use backoff::{Backoff, BackoffBuilder, BackoffError};
