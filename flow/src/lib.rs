//! Step flows and plan/task executors for keyloop loops.
