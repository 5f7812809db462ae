//! The seam between the training loop and whatever holds the weights: the [`Learner`] trait and
//! the plain values it is spoken in ([`TokenBatch`], [`StepOutput`], [`ProbeNeed`],
//! [`ProbeStats`], [`ExportTokenizer`], [`ModelError`]).
//!
//! The built-in trainers (`model::Trainer` on burn, `model::FusedTrainer` on the CPU) implement
//! it, and `model::build_learner` picks between them; a host that brings its own model
//! implements it too and hands it to
//! [`Runtime::start_with_learner`](crate::runtime::Runtime::start_with_learner). The loop in
//! `trainer` only ever sees this trait.
//!
//! Nothing here names burn or the model (checked by `tests/architecture.rs`): a learner, the
//! loop and their tests need no tensor library.

mod batch;
mod error;
mod seam;
mod values;

pub use batch::TokenBatch;
pub use error::ModelError;
pub use seam::Learner;
pub use values::{ExportTokenizer, ProbeNeed, ProbeStats, StepOutput};

/// A boxed error from outside the crate (a host's learner factory, a checkpoint step, a reader
/// in a higher layer).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
