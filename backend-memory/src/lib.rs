//! In-memory keyloop coordinator: the reference backend and a deterministic simulator.
