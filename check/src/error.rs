//! The crate's [`Error`].

/// Why a history could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying file failed.
    #[error("history I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// An event could not be encoded as JSON.
    #[error("could not encode an event as JSON: {source}")]
    Encode {
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A line is not a JSON event.
    #[error("line {line} of the history is not an event: {source}")]
    Decode {
        /// The line number, from 1.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}
