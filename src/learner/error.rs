//! [`ModelError`], what a learner's fallible operations (saving and restoring state, writing
//! weights, exporting) return. The built-in model returns it too, so it lives with the trait
//! rather than with burn.

use std::path::PathBuf;

use super::BoxError;

/// Errors of a learner: the built-in model's or a host's.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model configuration is inconsistent (names the offending field).
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record (weights or optimiser state) could not be encoded or decoded.
    #[error("record error on {path}: {message}")]
    Record {
        /// The file involved.
        path: PathBuf,
        /// The encoder's description of the failure.
        message: String,
    },
    /// A pretrained checkpoint could not be loaded: the model's `LoadError`, which names the
    /// file and the key or tensor. Boxed because that type belongs to the model's readers, a
    /// layer above this one (`From<LoadError>` is implemented there).
    #[error(transparent)]
    Load(BoxError),
    /// A small JSON side file (trainer state) could not be encoded or decoded.
    #[error("state file {path}: {source}")]
    State {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}
