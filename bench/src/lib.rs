//! keyloop benchmarks.
