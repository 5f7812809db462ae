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
//!
//! The model is a [`Learner`] and nothing more: nothing here names burn, so the loop and its
//! tests run as well on the burn-free [`UnigramLearner`]. The built-in learner comes from
//! [`model::build_learner`](crate::model::build_learner).

mod batcher;
mod checkpointing;
mod error;
mod evaluation;
mod link;
mod r#loop;
mod progress;
mod sets;
mod shape;
mod unigram;

pub use crate::learner::{BoxError, Learner};
pub use crate::runlog::ExactMatch;
pub use error::TrainerError;
pub use r#loop::{run_with_learner, Resume, RunSummary, TrainerCtx};
pub use shape::llama_config;
pub use unigram::UnigramLearner;
