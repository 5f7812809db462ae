//! The [`Learner`] trait.
//!
//! The loop (batching from the mixture, probe reports, evaluation, checkpoints, signals) only
//! needs a handful of operations from whatever holds the weights. The built-in trainers
//! ([`Trainer`](crate::model::Trainer), [`FusedTrainer`](crate::model::FusedTrainer))
//! implement them; a host that brings its own model (another framework behind FFI, a remote
//! worker, a toy for tests) implements them too and keeps the loaders, the reward actor, the
//! MoS scheduler and the checkpoints. Start it with
//! [`Runtime::start_with_learner`](crate::runtime::Runtime::start_with_learner).
//!
//! Guarantees the loop gives an implementation: every method is called on the trainer's own OS
//! thread (never on a tokio worker), in program order; `train_step` is called exactly once per
//! optimiser step; `save_state` and `load_state` get a directory of their own inside a checkpoint
//! that is sealed (checksummed, renamed into place) only after `save_state` returns.

use std::path::Path;

use super::{ExportTokenizer, ModelError, ProbeNeed, ProbeStats, StepOutput, TokenBatch};

/// What the training loop needs from a model and its optimiser.
pub trait Learner {
    /// The kind of learner, recorded once in every checkpoint (`run_state.json`), so that a
    /// resume by another kind is refused by name before any file is read. Learners that read
    /// each other's checkpoints share a kind. The built-in ones are `"burn"` (burn's trainer,
    /// on any backend) and `"fused"` (the fused CPU kernels); the default is `"custom"`.
    fn kind(&self) -> &str {
        "custom"
    }

    /// Optimiser steps taken so far (restored by [`Learner::load_state`]). The loop runs until
    /// this reaches `runtime.max_steps`.
    fn step(&self) -> u64;

    /// One optimiser step on `batch` (token ids and the loss mask, padded). Must advance
    /// [`Learner::step`] by one, even when the update is skipped for a non-finite loss (report
    /// that with `finite: false`).
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput;

    /// Mean NLL of each example over its target tokens, without updating anything.
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64>;

    /// Probe statistics for the MoS rewards: per-example mean NLL (DIFF) and a pooled embedding
    /// per example (COSSIM; any fixed-width representation of the example under the model).
    fn probe(&self, batch: &TokenBatch) -> ProbeStats;

    /// The probe statistics `need` asks for; the other field may come back empty. The loop asks
    /// for NLLs at start-up (the theta_0 pass) and for what the run's reward reads at every
    /// update, so a learner that can skip work (the built-in ones skip the output projection, or
    /// run it only where a target is predicted) should override this. The default computes
    /// both with [`Learner::probe`].
    fn probe_for(&self, batch: &TokenBatch, _need: ProbeNeed) -> ProbeStats {
        self.probe(batch)
    }

    /// Writes everything needed to continue exactly (weights, optimiser moments, step) into
    /// `dir`, which exists and is empty.
    fn save_state(&self, dir: &Path) -> Result<(), ModelError>;

    /// Restores what [`Learner::save_state`] wrote.
    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError>;

    /// Writes the weights alone to `path` (the run's final `model.mpk`, or the learner's own
    /// format under that name).
    fn save_weights(&self, path: &Path) -> Result<(), ModelError>;

    /// Fault injection (`MOS_FAULTS=nan_loss=...`): make the next step's loss non-finite. The
    /// default does nothing, so the fault is simply not injected for learners without it.
    fn poison_next_step(&mut self) {}

    /// Writes the model as a Hugging Face directory (`config.json`, `model.safetensors`,
    /// `tokenizer.json`) at `dir`; returns false when this learner has no such format (the
    /// default).
    fn export_hf(&self, _tokenizer: ExportTokenizer<'_>, _dir: &Path) -> Result<bool, ModelError> {
        Ok(false)
    }

    /// The most likely next token after each context (token ids, BOS first, each at most
    /// `training.seq_len` long), for the exact-match evaluation of greedy answers. `None` (the
    /// default) means this learner cannot generate; exact match is then skipped with a log line.
    fn greedy_next(&self, _contexts: &[Vec<u32>], _pad: u32) -> Option<Vec<u32>> {
        None
    }
}

// The runtime holds a host's learner (and the built-in one, from `model::build_learner`) as a
// `Box<dyn Learner>`, and the loop is generic over `L: Learner`.
impl<L: Learner + ?Sized> Learner for Box<L> {
    fn kind(&self) -> &str {
        (**self).kind()
    }
    fn step(&self) -> u64 {
        (**self).step()
    }
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        (**self).train_step(batch)
    }
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        (**self).eval_nll(batch)
    }
    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        (**self).probe(batch)
    }
    fn probe_for(&self, batch: &TokenBatch, need: ProbeNeed) -> ProbeStats {
        (**self).probe_for(batch, need)
    }
    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        (**self).save_state(dir)
    }
    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        (**self).load_state(dir)
    }
    fn save_weights(&self, path: &Path) -> Result<(), ModelError> {
        (**self).save_weights(path)
    }
    fn poison_next_step(&mut self) {
        (**self).poison_next_step()
    }
    fn export_hf(&self, tokenizer: ExportTokenizer<'_>, dir: &Path) -> Result<bool, ModelError> {
        (**self).export_hf(tokenizer, dir)
    }
    fn greedy_next(&self, contexts: &[Vec<u32>], pad: u32) -> Option<Vec<u32>> {
        (**self).greedy_next(contexts, pad)
    }
}
