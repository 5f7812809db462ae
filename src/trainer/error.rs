//! Why the trainer stopped.

/// Why the trainer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A loader's queue closed: its actor died and nothing restarted it.
    #[error("the loader of dataset `{0}` stopped delivering examples")]
    LoaderGone(String),
    /// Writing a log or the model failed.
    #[error("{0}")]
    Io(String),
    /// The model could not be built or saved.
    #[error("model: {0}")]
    Model(String),
    /// A checkpoint could not be loaded.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Too many non-finite losses in a row, and `training.on_nonfinite = "stop"` (or no
    /// rollback is possible).
    #[error(
        "{streak} non-finite losses in a row up to step {step}: stopping (training.on_nonfinite)"
    )]
    NonFinite {
        /// Last step.
        step: u64,
        /// Non-finite losses in a row.
        streak: u64,
    },
    /// Too many non-finite losses in a row: the caller should restart from the newest checkpoint
    /// (the binary does; see `Runtime::start_with`).
    #[error("{streak} non-finite losses in a row up to step {step}: rolling back to the last checkpoint")]
    Rollback {
        /// Last step.
        step: u64,
        /// Non-finite losses in a row.
        streak: u64,
    },
    /// Every dataset's loader was dropped.
    #[error("no dataset is left to train on: every loader failed and was dropped")]
    NoLiveDataset,
}
