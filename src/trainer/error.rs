//! Why the trainer stopped. Every variant that wraps another error keeps it as its `source`,
//! so a host (or the binary's error report) can walk the chain down to the I/O error.

use crate::learner::{BoxError, ModelError};
use crate::model::{BuildError, InitError};
use crate::runlog::LogError;

/// Why the trainer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A loader's queue closed: its actor died and nothing restarted it.
    #[error("the loader of dataset `{0}` stopped delivering examples")]
    LoaderGone(String),
    /// Writing `run.jsonl` or `samples.jsonl` failed.
    #[error("{0}")]
    Log(#[source] LogError),
    /// The model could not be built, saved or exported.
    #[error("model: {0}")]
    Model(#[source] ModelError),
    /// The weights `model.init` names did not load (the runtime checks them at start-up, so
    /// this means they changed since).
    #[error("model.init: {0}")]
    Init(#[source] InitError),
    /// A host's [`LearnerFactory`](crate::runtime::LearnerFactory) failed.
    #[error("model: {0}")]
    Learner(#[source] BoxError),
    /// The trainer thread panicked.
    #[error("model: trainer thread panicked")]
    Panicked,
    /// [`RuntimeHandle::wait`](crate::runtime::RuntimeHandle::wait) was called twice.
    #[error("model: already waited")]
    AlreadyWaited,
    /// `runtime.backend = "cuda"` in a build without the `cuda` feature.
    #[error("model: this build has no cuda backend (build with --features cuda)")]
    NoCuda,
    /// A checkpoint could not be written, or the one to resume from could not be loaded.
    #[error("checkpoint: {message}")]
    Checkpoint {
        /// What failed, with the cause's own message.
        message: String,
        /// The cause, when there is one beyond the message.
        #[source]
        source: Option<BoxError>,
    },
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

// The built-in learner's build errors keep the variants (and messages) they had when the
// trainer built the learner itself.
impl From<BuildError> for TrainerError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::NoCuda => Self::NoCuda,
            BuildError::Model(e) => Self::Model(e),
            BuildError::Init(e) => Self::Init(e),
        }
    }
}

impl TrainerError {
    /// A checkpoint failure caused by `source`.
    pub(crate) fn checkpoint(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Checkpoint {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// A checkpoint failure with no underlying error (a missing or silent actor).
    pub(crate) fn checkpoint_msg(message: impl Into<String>) -> Self {
        Self::Checkpoint {
            message: message.into(),
            source: None,
        }
    }

    /// Loading the checkpoint at `dir` failed.
    pub(crate) fn resume(dir: &std::path::Path, source: ModelError) -> Self {
        Self::Checkpoint {
            message: format!("{}: {source}", dir.display()),
            source: Some(Box::new(source)),
        }
    }
}
