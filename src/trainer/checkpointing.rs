//! Checkpointing: a checkpoint's [`RunState`] assembled from the loop's parts (batcher, link,
//! progress), the actors' state captured behind every report already sent, the learner's own
//! state, all sealed by the atomic [`checkpoint::Writer`].
//!
//! A checkpoint that fails is logged and counted, and training goes on: the previous one stays
//! the newest complete one.

use std::path::PathBuf;
use std::time::Instant;

use super::batcher::Batcher;
use super::link::Link;
use super::progress::Progress;
use super::{Learner, TrainerCtx, TrainerError};
use crate::checkpoint::{self, LogLengths, RunState};
use crate::telemetry;

/// The checkpoints this run wrote.
pub(super) struct Checkpoints {
    /// The newest checkpoint written by this run.
    pub(super) last: Option<PathBuf>,
    /// The step of the newest checkpoint, written by this run or resumed from.
    pub(super) last_step: Option<u64>,
}

/// The loop's parts a checkpoint reads.
pub(super) struct Parts<'a> {
    pub(super) step: u64,
    pub(super) batcher: &'a Batcher,
    pub(super) link: &'a Link,
    pub(super) progress: &'a Progress,
}

impl<'a> Parts<'a> {
    /// The parts at `step`.
    pub(super) fn new(
        step: u64,
        batcher: &'a Batcher,
        link: &'a Link,
        progress: &'a Progress,
    ) -> Self {
        Self {
            step,
            batcher,
            link,
            progress,
        }
    }
}

impl Checkpoints {
    /// Nothing written yet; `resumed_step` is the checkpoint the run started from.
    pub(super) fn new(resumed_step: Option<u64>) -> Self {
        Self {
            last: None,
            last_step: resumed_step,
        }
    }

    /// Writes a checkpoint at `parts.step`; a failure is logged and counted, not returned.
    pub(super) fn write<L: Learner>(&mut self, learner: &L, ctx: &TrainerCtx, parts: Parts<'_>) {
        let t0 = Instant::now();
        let step = parts.step;
        match write(learner, ctx, parts) {
            Ok(dir) => {
                let secs = t0.elapsed().as_secs_f64();
                metrics::histogram!(telemetry::CHECKPOINT_DURATION).record(secs);
                metrics::counter!(telemetry::CHECKPOINTS_WRITTEN).increment(1);
                tracing::info!(dir = %dir.display(), seconds = secs, "checkpoint written");
                self.last = Some(dir);
                self.last_step = Some(step);
            }
            Err(e) => {
                metrics::counter!(telemetry::CHECKPOINT_FAILURES).increment(1);
                tracing::error!(error = %e, "checkpoint failed; the previous one stays the newest");
            }
        }
    }
}

fn write<L: Learner>(
    learner: &L,
    ctx: &TrainerCtx,
    parts: Parts<'_>,
) -> Result<PathBuf, TrainerError> {
    let cfg = &ctx.cfg;
    // The actors' part first: it describes the same step as the trainer's.
    let actors = parts.link.snapshot()?;
    let writer = checkpoint::Writer::begin(&cfg.runtime.output_dir, parts.step)
        .map_err(TrainerError::checkpoint)?;
    learner
        .save_state(writer.dir())
        .map_err(TrainerError::checkpoint)?;
    if cfg.runtime.export_hf_checkpoints
        && !learner
            .export_hf(ctx.tokenizer.as_ref().into(), &writer.dir().join("hf"))
            .map_err(TrainerError::checkpoint)?
    {
        tracing::warn!("runtime.export_hf_checkpoints is set but this learner cannot export");
    }
    let (run_len, samples_len) = parts
        .progress
        .log_lengths()
        .map_err(TrainerError::checkpoint)?;
    let b = parts.batcher;
    let first_loss = parts.progress.first_loss;
    let run = RunState {
        step: parts.step,
        names: ctx.datasets.iter().map(|d| d.name.clone()).collect(),
        sizes: ctx.datasets.iter().map(|d| d.train.len() as u64).collect(),
        model: ctx.model_shape.clone(),
        learner: Some(learner.kind().to_string()),
        sampler: b.sampler.clone(),
        counts: b.counts.clone(),
        cursors: b.cursors.clone(),
        active: (*parts.link.active).clone(),
        target_version: parts.link.target_version,
        probe_ids: parts.link.probe_ids.clone(),
        logs: LogLengths {
            run: run_len,
            samples: samples_len,
            mixture: actors.mixture_log_len,
        },
        first_loss: first_loss.is_finite().then_some(first_loss),
        skipped: parts.progress.skipped,
    };
    writer
        .write_json(checkpoint::RUN_STATE, &run)
        .map_err(TrainerError::checkpoint)?;
    writer
        .write_json(checkpoint::ACTOR_STATE, &actors.state)
        .map_err(TrainerError::checkpoint)?;
    let resolved = toml::to_string_pretty(&**cfg).map_err(TrainerError::checkpoint)?;
    writer
        .write_bytes(checkpoint::CONFIG, resolved.as_bytes())
        .map_err(TrainerError::checkpoint)?;
    writer
        .commit(cfg.runtime.keep_checkpoints)
        .map_err(TrainerError::checkpoint)
}
