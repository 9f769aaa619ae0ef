//! The keyloop conformance suite every backend runs.
//!
//! A backend implements [`Harness`] (fresh isolated namespaces, its lease TTL) and runs the
//! whole suite from one line in its tests; [`conformance_tests!`] expands to a module
//! `conformance` with one `#[tokio::test]` per case of DESIGN §6, so
//! `cargo test -p <backend> conformance::` runs exactly the suite:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keyloop_conformance::{async_trait, Harness, Namespace};
//! use keyloop_core::Coordinator;
//!
//! struct MyHarness;
//! struct MyNamespace;
//!
//! #[async_trait]
//! impl Harness for MyHarness {
//!     fn name(&self) -> &str { "mine" }
//!     fn lease_ttl(&self) -> Duration { Duration::from_secs(10) }
//!     async fn namespace(&self) -> Box<dyn Namespace> { Box::new(MyNamespace) }
//! }
//!
//! #[async_trait]
//! impl Namespace for MyNamespace {
//!     async fn coordinator(&self) -> Arc<dyn Coordinator> {
//!         unimplemented!("a coordinator of this namespace")
//!     }
//! }
//!
//! // In the backend's `tests/conformance.rs`:
//! keyloop_conformance::conformance_tests!(MyHarness, paused = true);
//! # fn main() {}
//! ```
//!
//! The suite checks itself: [`Breakage`] names deliberately broken coordinators
//! ([`TwoOwners`], [`DropsTriggers`]), and [`assert_suite_catches`] shows that the cases meant
//! to catch each pass on the intact backend and fail on the broken one.
//!
//! Tools for the cases, public so backends can write their own: a [`Case`] (namespace,
//! nodes, shared [`Recorder`] and [`Script`]), the [`ScriptedController`], the
//! [`FaultyCoordinator`], and [`DirectNode`] for calling the `Coordinator` trait by hand.

mod broken;
mod direct;
mod faulty;
mod fixture;
mod harness;
mod macros;
mod postgres_server;
mod recorder;
mod script;
mod selftest;
mod skip;

/// Every case, one function each, named as in DESIGN §6.
pub mod cases {
    mod bad_input;
    mod failover;
    mod handoff;
    mod liveness;
    mod notifications;
    mod ownership;
    mod races;
    mod registry;
    mod stress;
    mod supervision;
    mod wakeups;

    pub use bad_input::*;
    pub use failover::*;
    pub use handoff::*;
    pub use liveness::*;
    pub use notifications::*;
    pub use ownership::*;
    pub use races::*;
    pub use registry::*;
    pub use stress::*;
    pub use supervision::*;
    pub use wakeups::*;
}

pub use async_trait::async_trait;
pub use broken::{Breakage, BrokenHarness, DropsTriggers, TwoOwners, assert_suite_catches};
pub use direct::DirectNode;
pub use faulty::{Faults, FaultyCoordinator, Hold};
pub use fixture::{Case, Node, eventually, key};
pub use harness::{Harness, Namespace};
pub use postgres_server::{
    POSTGRES_URL_ENV, PostgresServer, PostgresServerError, TEST_PASSWORD, TEST_USER,
    dedicated_postgres_server, shared_postgres_server, test_postgres_url,
};
pub use recorder::{Happening, Log, Record, Recorder};
pub use script::{Gate, Latch, SCRIPTED_FAILURE, Script, ScriptedController, Step};
pub use selftest::{assert_case_fails, run_case_to_completion};

__with_cases! { __case_list {} }

/// Used by the code [`conformance_tests!`] generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::skip::{check_skipped, skip_reason};
    pub use tokio;
}
