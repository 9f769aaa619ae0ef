//! The keyloop conformance suite every backend runs.
