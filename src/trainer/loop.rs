//! The training loop: the parts, each in a file of its own, put together. Per step it takes a
//! batch from the [`Batcher`], trains on it, reports [`Progress`], and at update boundaries lets
//! the [`Link`] adopt the published mixture and send the next report; evaluation and
//! checkpoints come at their intervals and at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::Serialize;

use super::batcher::Batcher;
use super::checkpointing::{Checkpoints, Parts};
use super::evaluation::{evaluate, exact_match};
use super::link::{Link, Sent};
use super::progress::{Health, Progress};
use super::{sets, Learner, TrainerError};
use crate::actors::Mixing;
use crate::checkpoint::RunState;
use crate::config::{Config, NonFiniteAction};
use crate::control::{Control, LiveSet};
use crate::data::{Dataset, Example, Tokenizer};
use crate::model::LlamaConfig;
use crate::runlog::ExactMatch;

/// Where a resumed run continues from, prepared by the runtime.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The verified checkpoint directory.
    pub dir: PathBuf,
    /// Its run state (already remapped to the current dataset order).
    pub state: RunState,
    /// Datasets were added since the checkpoint: send a theta_0-style probe pass on the current
    /// model so the reward actor can fill the perplexities it lacks.
    pub needs_initial_probe: bool,
}

/// Everything the training thread needs, assembled by the runtime.
#[derive(Debug)]
pub struct TrainerCtx {
    /// The validated config.
    pub cfg: Arc<Config>,
    /// The loaded datasets, in config order.
    pub datasets: Vec<Arc<Dataset>>,
    /// The tokenizer shared with the loaders.
    pub tokenizer: Arc<Tokenizer>,
    /// One prefetch queue per dataset, in config order.
    pub receivers: Vec<Receiver<Example>>,
    /// The mixing pair: the board the current mixture is read from, the reward actor (MoS
    /// only) and the scheduler (ticks of static strategies).
    pub mixing: Mixing,
    /// Stop, pause and checkpoint requests.
    pub control: Arc<Control>,
    /// The model shape, recorded in checkpoints (a resume with another shape is refused).
    pub model_shape: LlamaConfig,
    /// Loader health, written by the supervisor.
    pub live: Arc<LiveSet>,
    /// Where to continue from (None: a fresh run).
    pub resume: Option<Resume>,
    /// Rollbacks this process already made; each re-seeds the dataset sampler so that the
    /// batches that diverged are not replayed as they were.
    pub rollbacks: u32,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Steps completed.
    pub steps: u64,
    /// Loss of the first step.
    pub first_loss: f32,
    /// Mean loss over the last `log_every` steps.
    pub last_loss: f32,
    /// Final held-out loss per dataset (name, loss); empty when the run was interrupted.
    pub eval: Vec<(String, f64)>,
    /// Whether the run stopped early on request (signal or handle).
    pub interrupted: bool,
    /// Steps skipped because the loss was not finite.
    pub skipped_steps: u64,
    /// The step the run resumed from (None for a fresh start).
    pub resumed_from: Option<u64>,
    /// The newest checkpoint written by this run, if any.
    pub last_checkpoint: Option<PathBuf>,
    /// Wall-clock seconds of the loop.
    pub seconds: f64,
    /// Training tokens per second over the run.
    pub tokens_per_second: f64,
    /// Exact match of greedy answers per dataset with `exact_match = true` (empty when the run
    /// was interrupted, already complete, or the learner cannot generate).
    pub exact_match: Vec<ExactMatch>,
}

/// Runs the whole training loop with any [`Learner`] on the calling thread: the built-in one
/// ([`build_learner`](crate::model::build_learner)) or a host's own model.
pub fn run_with_learner<L: Learner>(
    mut ctx: TrainerCtx,
    mut trainer: L,
) -> Result<RunSummary, TrainerError> {
    let cfg = ctx.cfg.clone();
    let resumed: Option<RunState> = match &ctx.resume {
        Some(r) => {
            // Another kind of learner would read files it does not know; refuse it by name.
            r.state
                .check_learner(&r.dir, trainer.kind())
                .map_err(TrainerError::checkpoint)?;
            trainer
                .load_state(&r.dir)
                .map_err(|e| TrainerError::resume(&r.dir, e))?;
            tracing::info!(step = r.state.step, dir = %r.dir.display(), "resumed from checkpoint");
            Some(r.state.clone())
        }
        None => None,
    };
    let resumed = resumed.as_ref();
    let names: Vec<String> = ctx.datasets.iter().map(|d| d.name.clone()).collect();
    let eval_sets = sets::eval_sets(&cfg, &ctx.datasets, &ctx.tokenizer);
    // The probe sets exist only for a strategy that reads probe statistics.
    let probes = ctx.mixing.needs.probe.is_some().then(|| {
        let ids = sets::probe_ids(&cfg, &ctx.datasets, resumed.map(|r| &r.probe_ids[..]));
        let sets = sets::probe_sets(&cfg, &ctx.datasets, &ctx.tokenizer, &ids);
        (ids, sets)
    });
    let mut batcher = Batcher::new(
        &cfg,
        names.clone(),
        std::mem::take(&mut ctx.receivers),
        ctx.tokenizer.pad_id(),
        resumed,
        ctx.rollbacks,
    );
    let mut link = Link::new(&cfg, ctx.mixing.clone(), probes, resumed);
    if ctx.resume.as_ref().is_none_or(|r| r.needs_initial_probe) {
        // theta_0 perplexities, computed once; the reward actor keeps them.
        link.initial_probe(&trainer, batcher.counts.clone());
    }
    let mut progress = Progress::new(&cfg, resumed)?;
    let resumed_from = resumed.map(|r| r.step);
    let mut checkpoints = Checkpoints::new(resumed_from);
    let max_steps = cfg.runtime.max_steps;
    let mut interrupted = false;
    let mut step = trainer.step();

    while step < max_steps {
        if ctx.control.stop_requested() {
            interrupted = true;
            break;
        }
        if cfg.runtime.stop_at_step > 0 && step >= cfg.runtime.stop_at_step {
            tracing::info!(
                step,
                "runtime.stop_at_step reached: stopping with a checkpoint"
            );
            interrupted = true;
            break;
        }
        if ctx.control.paused() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let step_started = Instant::now();
        let snap = link.active.clone();
        let Some(batch) = batcher.next(&snap, &ctx.control, &ctx.live)? else {
            interrupted = true;
            break;
        };
        progress.data_wait(batch.wait);
        if crate::faults::nan_loss(trainer.step() + 1) {
            trainer.poison_next_step();
        }
        let out = trainer.train_step(&batch.batch);
        step = trainer.step();
        ctx.control.set_step(step);
        progress.trace(step, snap.version, &batcher.drawn)?;
        if let Health::Streak(streak) = progress.step(step, &out, batch.real_tokens, step_started) {
            let can_roll_back = cfg.training.on_nonfinite == NonFiniteAction::Rollback
                && checkpoints.last_step.is_some()
                && ctx.rollbacks < cfg.training.max_rollbacks;
            return Err(match can_roll_back {
                true => TrainerError::Rollback { step, streak },
                false => TrainerError::NonFinite { step, streak },
            });
        }
        progress.window(step, out.lr, &snap)?;

        if step.is_multiple_of(cfg.scheduler.update_every) && step < max_steps {
            let counts = batcher.take_counts();
            if let Sent::Probe { seconds } = link.boundary(&trainer, step, counts, &ctx.control) {
                progress.probe(step, seconds)?;
            }
        }
        if cfg.runtime.eval_every > 0
            && step.is_multiple_of(cfg.runtime.eval_every)
            && step < max_steps
        {
            progress.eval(step, evaluate(&trainer, &eval_sets, &names))?;
        }
        let periodic = cfg.runtime.checkpoint_every > 0
            && step.is_multiple_of(cfg.runtime.checkpoint_every)
            && step < max_steps;
        if periodic || ctx.control.take_checkpoint_request() {
            checkpoints.write(&trainer, &ctx, Parts::new(step, &batcher, &link, &progress));
        }
    }

    progress.close_window();
    let already_complete = resumed_from == Some(step);
    let final_eval = !interrupted && !already_complete;
    let mut eval = Vec::new();
    let mut exact = Vec::new();
    if interrupted {
        tracing::info!(step, "stop requested: skipping the final evaluation");
    } else if already_complete {
        tracing::info!(
            step,
            "the run is already complete (raise runtime.max_steps to train further)"
        );
    }
    if final_eval {
        let ev = evaluate(&trainer, &eval_sets, &names);
        eval = ev.0.clone();
        progress.eval(step, ev)?;
        let t0 = Instant::now();
        exact = exact_match(&trainer, &ctx.datasets, &ctx.tokenizer, &cfg);
        progress.exact_match(step, &exact, t0.elapsed().as_secs_f64())?;
    }
    // A final checkpoint, on a stop request (SIGTERM) as at the normal end, so that a restart
    // continues (or a longer max_steps extends the run) from here.
    if checkpoints.last_step != Some(step) {
        checkpoints.write(&trainer, &ctx, Parts::new(step, &batcher, &link, &progress));
    }
    save_outputs(&trainer, &ctx)?;
    let (seconds, tokens_per_second) = progress.throughput();
    Ok(RunSummary {
        steps: step,
        first_loss: progress.first_loss,
        last_loss: progress.last_loss,
        eval,
        interrupted,
        skipped_steps: progress.skipped,
        resumed_from,
        last_checkpoint: checkpoints.last,
        seconds,
        tokens_per_second,
        exact_match: exact,
    })
}

/// The run's final weights (`model.mpk`) and, with `runtime.export_hf`, the Hugging Face export.
fn save_outputs<L: Learner>(trainer: &L, ctx: &TrainerCtx) -> Result<(), TrainerError> {
    let out_dir = &ctx.cfg.runtime.output_dir;
    let model_path = out_dir.join("model.mpk");
    trainer
        .save_weights(&model_path)
        .map_err(TrainerError::Model)?;
    tracing::info!(path = %model_path.display(), "model weights written");
    if ctx.cfg.runtime.export_hf {
        let dir = out_dir.join("hf");
        if trainer
            .export_hf(ctx.tokenizer.as_ref().into(), &dir)
            .map_err(TrainerError::Model)?
        {
            tracing::info!(dir = %dir.display(), "Hugging Face export written");
        } else {
            tracing::warn!("runtime.export_hf is set but this learner cannot export");
        }
    }
    Ok(())
}
