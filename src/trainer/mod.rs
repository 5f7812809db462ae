//! The trainer: owns the model and the device, and runs the training loop on its own OS thread.
//!
//! Per batch it reads the latest mixture snapshot (lock-free), draws a dataset per example (or per
//! batch) with the training RNG, takes the next example from that dataset's loader queue, and runs
//! one optimiser step. Every `update_every` steps it sends a report without waiting: a probe report
//! to the reward actor under MoS (one batched, no-gradient forward pass over the fixed probe sets),
//! or a tick to the scheduler for static strategies. It evaluates held-out loss every `eval_every`
//! steps and at the end, and writes `run.jsonl`.
//!
//! Invariants it must keep: it never waits on the scheduler, the reward actor, metrics or
//! logging (reports go through a [`GatedSender`](crate::actors::GatedSender), which drops and counts instead of queueing without
//! bound); burn code runs only on this thread.

mod batcher;
mod checkpointing;
mod error;
mod evaluation;
mod factory;
mod learner;
mod link;
mod r#loop;
mod progress;
mod sets;
mod unigram;

pub use crate::runlog::ExactMatch;
pub use error::{BoxError, TrainerError};
pub use factory::{llama_config, run_training, run_training_fused, train_hyper};
pub use learner::Learner;
pub use r#loop::{run_with_learner, Resume, RunSummary, TrainerCtx};
pub use unigram::UnigramLearner;
