//! The training loop proper, generic over the burn backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

use super::Learner;
use crate::actors::{Mixing, ProbeReport, RewardMsg, SchedulerMsg, SendError, SnapshotReply};
use crate::checkpoint::{self, LogLengths, RunState};
use crate::config::{Config, NonFiniteAction, PplSpan, RewardKind, SampleUnit, Strategy};
use crate::control::{Control, LiveSet};
use crate::data::{encode_all, probe_indices, Dataset, Example, Tokenizer};
use crate::mixture::{MixtureBoard, MixtureSampler, MixtureSnapshot};
use crate::model::{LlamaConfig, ProbeNeed, TokenBatch, TrainHyper, Trainer};
use crate::runlog::JsonlWriter;
use crate::seed::stream_seed;
use crate::telemetry;

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

/// Exact-match result of one dataset (also a `run.jsonl` record of kind `exact_match`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ExactMatch {
    /// The dataset.
    pub dataset: String,
    /// Answers reproduced exactly (after normalisation of case, spaces, final punctuation).
    pub correct: usize,
    /// Questions asked.
    pub total: usize,
    /// `correct / total` (0 when `total` is 0).
    pub accuracy: f64,
    /// Held-out records not used: no final answer, marker missing, or answer too long.
    pub skipped: usize,
    /// Up to three (reference, generated) pairs, for a reader of the log.
    pub examples: Vec<(String, String)>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum RunEvent<'a> {
    Train {
        step: u64,
        loss: f32,
        lr: f64,
        tokens_per_second: f64,
        step_seconds: f64,
        data_wait_seconds: f64,
        mixture_version: u64,
        mixture: &'a [f64],
    },
    Eval {
        step: u64,
        loss: Vec<(String, f64)>,
        seconds: f64,
    },
    Probe {
        step: u64,
        seconds: f64,
    },
    #[serde(rename = "exact_match")]
    ExactMatch {
        step: u64,
        results: &'a [ExactMatch],
        seconds: f64,
    },
}

/// One line of `samples.jsonl`: the (dataset, record index) pairs of one step's batch.
#[derive(Serialize)]
struct SampleTrace<'a> {
    step: u64,
    mixture_version: u64,
    samples: &'a [(usize, u32)],
}

/// One encoded sequence with the mask the current use needs.
struct Seq {
    tokens: Vec<u32>,
    mask: Vec<bool>,
}

fn to_batch(seqs: &[Seq], pad: u32) -> TokenBatch {
    let views: Vec<(&[u32], &[bool])> = seqs
        .iter()
        .map(|s| (s.tokens.as_slice(), s.mask.as_slice()))
        .collect();
    TokenBatch::new(&views, pad)
}

fn training_mask(ex_mask: &[bool], loss_on_prompt: bool) -> Vec<bool> {
    if loss_on_prompt {
        (0..ex_mask.len()).map(|k| k > 0).collect()
    } else {
        ex_mask.to_vec()
    }
}

/// Per-dataset fixed example sets (eval or probe), pre-batched.
struct FixedSets {
    /// For each dataset, its batches (possibly none).
    batches: Vec<Vec<TokenBatch>>,
}

/// Runs the whole training loop with the built-in burn Llama on `device`, on the calling thread
/// (the trainer's dedicated OS thread).
pub fn run_training<B: AutodiffBackend>(
    ctx: TrainerCtx,
    device: B::Device,
) -> Result<RunSummary, TrainerError> {
    B::seed(&device, ctx.cfg.runtime.seed);
    let model = initial_model::<B>(&ctx, &device)?;
    let hyper = train_hyper(&ctx.cfg);
    run_with_learner(ctx, Trainer::new(model, hyper, device))
}

/// The weights a run starts from: the pretrained checkpoint, or the seeded initialisation of
/// the shape `prepare` already derived (and recorded for checkpoints). Host-seeded, so every
/// backend and both CPU trainers start from the same weights, independent of burn's
/// process-global RNG.
fn initial_model<B: burn::tensor::backend::Backend>(
    ctx: &TrainerCtx,
    device: &B::Device,
) -> Result<crate::model::Llama<B>, TrainerError> {
    let cfg = &ctx.cfg;
    match &cfg.model.pretrained {
        Some(path) => {
            crate::model::load_for_training::<B>(path, cfg.training.seq_len, &ctx.tokenizer, device)
                .map_err(|e| TrainerError::Model(e.to_string()))
        }
        None => Ok(ctx
            .model_shape
            .init_seeded::<B>(stream_seed(cfg.runtime.seed, "model"), device)),
    }
}

/// Runs the whole training loop on the CPU with the fused trainer
/// ([`FusedTrainer`](crate::model::FusedTrainer), `training.cpu_kernels = "fused"`): the same
/// initial weights as [`run_training`] on the CPU, the same function, about 2-3x the speed.
/// A pretrained model the fused kernels do not cover (projection biases) falls back to burn's
/// trainer with a warning.
pub fn run_training_fused(ctx: TrainerCtx) -> Result<RunSummary, TrainerError> {
    use crate::model::{CpuAutodiff, CpuBackend, FusedTrainer};
    let device = crate::model::cpu_device();
    let model = initial_model::<CpuBackend>(&ctx, &device)?;
    match FusedTrainer::new(model, train_hyper(&ctx.cfg)) {
        Ok(fused) => {
            tracing::info!(
                "training on the CPU with the fused kernels (training.cpu_kernels = \"fused\")"
            );
            run_with_learner(ctx, fused)
        }
        Err(e) => {
            tracing::warn!("{e}: training with burn's trainer instead");
            run_training::<CpuAutodiff>(ctx, device)
        }
    }
}

/// Runs the whole training loop with any [`Learner`] on the calling thread: the built-in burn
/// trainer or a host's own model.
pub fn run_with_learner<L: Learner>(
    ctx: TrainerCtx,
    mut trainer: L,
) -> Result<RunSummary, TrainerError> {
    let cfg = ctx.cfg.clone();
    let n = ctx.datasets.len();
    let names: Vec<String> = ctx.datasets.iter().map(|d| d.name.clone()).collect();
    let seq_len = cfg.training.seq_len;
    let pad = ctx.tokenizer.pad_id();
    let template = cfg.model.chat_template;
    let out_dir = cfg.runtime.output_dir.clone();
    let resumed: Option<RunState> = match &ctx.resume {
        Some(r) => {
            trainer
                .load_state(&r.dir)
                .map_err(|e| TrainerError::Checkpoint(format!("{}: {e}", r.dir.display())))?;
            tracing::info!(step = r.state.step, dir = %r.dir.display(), "resumed from checkpoint");
            Some(r.state.clone())
        }
        None => None,
    };

    // Held-out sets: the first `eval_examples` eval records of each dataset, scored with the
    // training mask so eval loss and train loss measure the same tokens.
    let eval_sets = FixedSets {
        batches: ctx
            .datasets
            .iter()
            .map(|d| {
                let take = d.eval.len().min(cfg.training.eval_examples);
                let seqs: Vec<Seq> = encode_all(&ctx.tokenizer, &d.eval[..take], template, seq_len)
                    .into_iter()
                    .map(|e| Seq {
                        mask: training_mask(&e.response_mask, cfg.training.loss_on_prompt),
                        tokens: e.tokens,
                    })
                    .filter(|s| s.mask.iter().any(|&m| m))
                    .collect();
                chunk(seqs, cfg.training.batch_size.max(8), pad)
            })
            .collect(),
    };
    for (name, b) in names.iter().zip(&eval_sets.batches) {
        if b.is_empty() {
            tracing::warn!(dataset = %name, "no held-out examples: eval loss will not be reported for this dataset");
        }
    }

    // Probe sets (MoS only), chosen with their own RNG stream from the training split.
    let mos = cfg.scheduler.strategy == Strategy::Mos;
    let probe_seed = stream_seed(cfg.runtime.seed, "probe");
    let probe_ids: Vec<Vec<u32>> = if mos {
        ctx.datasets
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // A resumed run keeps the probe sets it started with (the theta_0 perplexities
                // belong to those examples); datasets new since the checkpoint get fresh ones.
                match resumed.as_ref().and_then(|r| r.probe_ids.get(i)) {
                    Some(ids) if !ids.is_empty() => ids.clone(),
                    _ => probe_indices(d.train.len(), cfg.scheduler.probe_size, probe_seed, i),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let probe_sets = if mos {
        Some(FixedSets {
            batches: ctx
                .datasets
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let idx = &probe_ids[i];
                    let recs: Vec<_> = idx
                        .iter()
                        .filter_map(|&j| d.train.get(j as usize).cloned())
                        .collect();
                    let seqs: Vec<Seq> = encode_all(&ctx.tokenizer, &recs, template, seq_len)
                        .into_iter()
                        .map(|e| Seq {
                            mask: match cfg.scheduler.ppl_span {
                                PplSpan::Response => e.response_mask.clone(),
                                PplSpan::Sequence => (0..e.tokens.len()).map(|k| k > 0).collect(),
                            },
                            tokens: e.tokens,
                        })
                        .collect();
                    // One forward pass per probe chunk: big enough to use the device well,
                    // small enough that [chunk, seq, vocab] logits fit in memory.
                    chunk(seqs, cfg.training.batch_size.max(16) * 2, pad)
                })
                .collect(),
        })
    } else {
        None
    };

    let mut counts = resumed
        .as_ref()
        .map_or_else(|| vec![0u64; n], |r| r.counts.clone());
    let needs_initial = ctx.resume.as_ref().is_none_or(|r| r.needs_initial_probe);
    if let (true, Some(sets), Some(reward)) = (needs_initial, &probe_sets, &ctx.mixing.reward) {
        // theta_0 perplexities, computed once; the reward actor keeps them.
        // NLLs only: the reward actor keeps theta_0's perplexities from this pass and nothing
        // else, under either reward (a resume may switch COSSIM to DIFF). A reward actor that
        // has stopped has stopped the run; its supervisor reports why.
        let report = probe_report(&trainer, sets, ProbeNeed::Nll, 0, true, counts.clone());
        let _ = reward.send(RewardMsg::Probe(report));
    }

    // An update's probe pass computes only what the reward reads.
    let update_need = match cfg.scheduler.reward {
        RewardKind::Cossim => ProbeNeed::Embeddings,
        RewardKind::Diff => ProbeNeed::Nll,
    };

    let sample_counters: Vec<metrics::Counter> = names
        .iter()
        .map(|n| metrics::counter!(telemetry::DATASET_SAMPLES, "dataset" => n.clone()))
        .collect();
    let loss_gauge = metrics::gauge!(telemetry::TRAIN_LOSS);
    let lr_gauge = metrics::gauge!(telemetry::TRAIN_LR);
    let step_gauge = metrics::gauge!(telemetry::TRAIN_STEP);
    let tokens_counter = metrics::counter!(telemetry::TRAIN_TOKENS);
    let step_hist = metrics::histogram!(telemetry::TRAIN_STEP_DURATION);
    let wait_counter = metrics::counter!(telemetry::DATA_WAIT);
    let wait_hist = metrics::histogram!(telemetry::DATA_WAIT_BATCH);
    let mut wait_carry = 0f64;
    let skipped_counter = metrics::counter!(telemetry::TRAIN_STEPS_SKIPPED);

    let mut runlog = JsonlWriter::append(&out_dir.join("run.jsonl"))
        .map_err(|e| TrainerError::Io(e.to_string()))?;
    let mut sampler = match &resumed {
        Some(r) => r.sampler.clone(),
        None => MixtureSampler::new(stream_seed(cfg.runtime.seed, "data")),
    };
    if ctx.rollbacks > 0 {
        sampler = MixtureSampler::new(stream_seed(
            cfg.runtime.seed,
            &format!("data-rollback-{}", ctx.rollbacks),
        ));
        tracing::warn!(
            rollback = ctx.rollbacks,
            "dataset sampler re-seeded after a rollback"
        );
    }
    let mut cursors: Vec<u64> = resumed
        .as_ref()
        .map_or_else(|| vec![0; n], |r| r.cursors.clone());
    // The mixture the trainer samples from. It changes only at update boundaries, to the latest
    // published one, so that when the scheduler keeps up (it normally answers within
    // milliseconds) the run does not depend on thread timing and resumes exactly.
    let mut active: Arc<MixtureSnapshot> = match &resumed {
        Some(r) => Arc::new(r.active.clone()),
        None => ctx.mixing.board.load(),
    };
    let mut target_version = resumed
        .as_ref()
        .map_or(active.version, |r| r.target_version);
    let late_counter = metrics::counter!(telemetry::MIXTURE_LATE);
    let mut live_note = true;
    let mut streak = 0u64;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut last_checkpoint_step = resumed.as_ref().map(|r| r.step);
    let resumed_from = resumed.as_ref().map(|r| r.step);
    let mut trace = if cfg.runtime.trace_samples {
        Some(
            JsonlWriter::append(&out_dir.join("samples.jsonl"))
                .map_err(|e| TrainerError::Io(e.to_string()))?,
        )
    } else {
        None
    };
    let mut drawn: Vec<(usize, u32)> = Vec::with_capacity(cfg.training.batch_size);

    let started = Instant::now();
    let mut total_tokens: u64 = 0;
    let mut window_tokens: u64 = 0;
    let mut window_loss = 0f64;
    let mut window_steps = 0u64;
    let mut window_start = Instant::now();
    let mut window_wait = 0f64;
    let mut first_loss = resumed
        .as_ref()
        .and_then(|r| r.first_loss)
        .unwrap_or(f32::NAN);
    let mut last_loss = f32::NAN;
    let mut skipped = resumed.as_ref().map_or(0, |r| r.skipped);
    let mut interrupted = false;
    let max_steps = cfg.runtime.max_steps;
    let mut step = trainer.step();

    // The trainer-side state a checkpoint records, gathered from the loop's locals (a macro
    // because those locals are mutated between checkpoints, which a closure's borrows forbid).
    macro_rules! checkpoint_inputs {
        () => {
            CheckpointInputs {
                step,
                names: &names,
                sizes: ctx.datasets.iter().map(|d| d.train.len() as u64).collect(),
                sampler: &sampler,
                counts: &counts,
                cursors: &cursors,
                active: &active,
                target_version,
                probe_ids: &probe_ids,
                first_loss,
                skipped,
            }
        };
    }

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
        let snap = active.clone();
        let mut seqs = Vec::with_capacity(cfg.training.batch_size);
        let mut wait = Duration::ZERO;
        let mut batch_ds = None;
        drawn.clear();
        // Restored if the batch cannot be completed (a stop request mid-batch), so a checkpoint
        // taken after the stop does not skip the examples that were taken but never trained on.
        let before_batch = (sampler.clone(), cursors.clone(), counts.clone());
        while seqs.len() < cfg.training.batch_size {
            // With every loader healthy (the normal case) the mixture is used as published;
            // otherwise datasets that are down get weight 0 and the draw renormalises.
            let weights: std::borrow::Cow<[f64]> = if ctx.live.all_live() {
                if !live_note {
                    tracing::info!("every dataset is live again: sampling from the full mixture");
                    live_note = true;
                }
                std::borrow::Cow::Borrowed(&snap.weights)
            } else {
                let w: Vec<f64> = (0..n)
                    .map(|i| {
                        if ctx.live.is_live(i) {
                            snap.weights[i]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                if live_note {
                    let out: Vec<&str> = (0..n)
                        .filter(|&i| !ctx.live.is_live(i))
                        .map(|i| names[i].as_str())
                        .collect();
                    tracing::warn!(out = ?out, live = ctx.live.live_count(), "datasets out of sampling: mixture renormalised over the live ones");
                    live_note = false;
                }
                std::borrow::Cow::Owned(w)
            };
            if !weights.iter().any(|&x| x.is_finite() && x > 0.0) {
                if !ctx.live.any_usable() {
                    return Err(TrainerError::NoLiveDataset);
                }
                // Every dataset with weight is restarting: wait for one to come back.
                if ctx.control.stop_requested() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let ds = match (cfg.scheduler.sample_unit, batch_ds) {
                (SampleUnit::Batch, Some(d)) if ctx.live.is_live(d) => d,
                _ => {
                    let d = sampler.draw(&weights);
                    batch_ds = Some(d);
                    d
                }
            };
            let t0 = Instant::now();
            let ex = match recv(&ctx.receivers[ds], &ctx.control, &ctx.live, ds) {
                Recv::Got(ex) => ex,
                Recv::Stop => break,
                // The loader went down while we waited: draw again among the live ones.
                Recv::Down => continue,
                Recv::Closed => return Err(TrainerError::LoaderGone(names[ds].clone())),
            };
            wait += t0.elapsed();
            cursors[ds] = ex.seq + 1;
            counts[ds] += 1;
            drawn.push((ds, ex.index));
            sample_counters[ds].increment(1);
            seqs.push(Seq {
                mask: training_mask(&ex.response_mask, cfg.training.loss_on_prompt),
                tokens: ex.tokens,
            });
        }
        if seqs.len() < cfg.training.batch_size {
            (sampler, cursors, counts) = before_batch;
            interrupted = true;
            break;
        }
        // The metrics facade's counters are integers, so the seconds counter advances in whole
        // seconds (the fraction is carried, never lost); the histogram keeps full resolution.
        wait_hist.record(wait.as_secs_f64());
        wait_carry += wait.as_secs_f64();
        if wait_carry >= 1.0 {
            let whole = wait_carry.floor();
            wait_counter.increment(whole as u64);
            wait_carry -= whole;
        }
        window_wait += wait.as_secs_f64();
        let batch = to_batch(&seqs, pad);
        let real_tokens: u64 = seqs.iter().map(|s| s.tokens.len() as u64).sum();
        if crate::faults::nan_loss(trainer.step() + 1) {
            trainer.poison_next_step();
        }
        let out = trainer.train_step(&batch);
        step = trainer.step();
        ctx.control.set_step(step);
        if let Some(trace) = trace.as_mut() {
            trace
                .write(&SampleTrace {
                    step,
                    mixture_version: snap.version,
                    samples: &drawn,
                })
                .map_err(|e| TrainerError::Io(e.to_string()))?;
        }
        if !out.finite {
            skipped += 1;
            streak += 1;
            skipped_counter.increment(1);
            tracing::warn!(step, streak, "non-finite loss: update skipped");
            let limit = cfg.training.nonfinite_limit;
            if limit > 0 && streak >= limit {
                let can_roll_back = cfg.training.on_nonfinite == NonFiniteAction::Rollback
                    && last_checkpoint_step.is_some()
                    && ctx.rollbacks < cfg.training.max_rollbacks;
                return Err(if can_roll_back {
                    TrainerError::Rollback { step, streak }
                } else {
                    TrainerError::NonFinite { step, streak }
                });
            }
        } else {
            streak = 0;
            if first_loss.is_nan() {
                first_loss = out.loss;
            }
            window_loss += out.loss as f64;
            window_steps += 1;
            loss_gauge.set(out.loss as f64);
        }
        lr_gauge.set(out.lr);
        step_gauge.set(step as f64);
        tokens_counter.increment(real_tokens);
        total_tokens += real_tokens;
        window_tokens += real_tokens;
        let step_secs = step_started.elapsed().as_secs_f64();
        step_hist.record(step_secs);

        if step.is_multiple_of(cfg.runtime.log_every) || step == max_steps {
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let loss = if window_steps > 0 {
                (window_loss / window_steps as f64) as f32
            } else {
                f32::NAN
            };
            last_loss = loss;
            let tps = window_tokens as f64 / secs;
            let mix = snap
                .names
                .iter()
                .zip(&snap.weights)
                .map(|(n, w)| format!("{n}={w:.3}"))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(
                "step {step}/{max_steps} loss {loss:.4} lr {:.2e} tok/s {tps:.0} data-wait {:.1}% mixture v{} [{mix}]",
                out.lr,
                100.0 * window_wait / secs,
                snap.version
            );
            runlog
                .write(&RunEvent::Train {
                    step,
                    loss,
                    lr: out.lr,
                    tokens_per_second: tps,
                    step_seconds: secs / window_steps.max(1) as f64,
                    data_wait_seconds: window_wait,
                    mixture_version: snap.version,
                    mixture: &snap.weights,
                })
                .map_err(|e| TrainerError::Io(e.to_string()))?;
            window_tokens = 0;
            window_loss = 0.0;
            window_steps = 0;
            window_wait = 0.0;
            window_start = Instant::now();
        }

        if step.is_multiple_of(cfg.scheduler.update_every) && step < max_steps {
            // Adopt the mixture of the previous report before sending this one.
            active = adopt(
                &ctx.mixing.board,
                target_version,
                &cfg,
                &ctx.control,
                &late_counter,
            );
            let report_counts = std::mem::replace(&mut counts, vec![0; n]);
            // Check the gate before the probe pass: a dropped report must not cost a forward
            // pass either. Deterministic runs never drop a report.
            let deterministic = cfg.runtime.deterministic;
            match (&probe_sets, &ctx.mixing.reward) {
                (Some(sets), Some(reward)) => {
                    let slot = if deterministic {
                        Some(reward.reserve())
                    } else {
                        reward.try_reserve()
                    };
                    if let Some(slot) = slot {
                        target_version += 1;
                        let report =
                            probe_report(&trainer, sets, update_need, step, false, report_counts);
                        runlog
                            .write(&RunEvent::Probe {
                                step,
                                seconds: report.seconds,
                            })
                            .map_err(|e| TrainerError::Io(e.to_string()))?;
                        let _ = slot.send(RewardMsg::Probe(report));
                    }
                }
                _ => {
                    let sched = &ctx.mixing.scheduler;
                    let tick = SchedulerMsg::Tick {
                        step,
                        counts: report_counts,
                    };
                    let sent = if deterministic {
                        sched.send(tick)
                    } else {
                        sched.try_send(tick)
                    };
                    // An admitted tick counts even if the scheduler has stopped: the run is then
                    // stopping, and the version it waits for is the one it asked for.
                    if sent != Err(SendError::Full) {
                        target_version += 1;
                    }
                }
            }
        }

        if cfg.runtime.eval_every > 0
            && step.is_multiple_of(cfg.runtime.eval_every)
            && step < max_steps
        {
            let ev = evaluate(&trainer, &eval_sets, &names);
            log_eval(&mut runlog, step, ev)?;
        }

        let periodic = cfg.runtime.checkpoint_every > 0
            && step.is_multiple_of(cfg.runtime.checkpoint_every)
            && step < max_steps;
        if periodic || ctx.control.take_checkpoint_request() {
            let state = checkpoint_inputs!();
            if let Some(dir) = checkpoint_now(&trainer, &ctx, &cfg, &runlog, trace.as_ref(), state)
            {
                last_checkpoint = Some(dir);
                last_checkpoint_step = Some(step);
            }
        }
    }

    // A stop between two progress lines still reports the loss of the steps since the last one.
    if window_steps > 0 {
        last_loss = (window_loss / window_steps as f64) as f32;
    }
    let already_complete = resumed_from == Some(step);
    let final_eval = !interrupted && !already_complete;
    let eval = if interrupted {
        tracing::info!(step, "stop requested: skipping the final evaluation");
        Vec::new()
    } else if already_complete {
        tracing::info!(
            step,
            "the run is already complete (raise runtime.max_steps to train further)"
        );
        Vec::new()
    } else {
        let ev = evaluate(&trainer, &eval_sets, &names);
        log_eval(&mut runlog, step, ev.clone())?;
        ev.0
    };
    let exact_match = if final_eval {
        let t0 = Instant::now();
        let results = exact_match(&trainer, &ctx, &cfg);
        if !results.is_empty() {
            runlog
                .write(&RunEvent::ExactMatch {
                    step,
                    results: &results,
                    seconds: t0.elapsed().as_secs_f64(),
                })
                .map_err(|e| TrainerError::Io(e.to_string()))?;
        }
        results
    } else {
        Vec::new()
    };
    // A final checkpoint, on a stop request (SIGTERM) as at the normal end, so that a restart
    // continues (or a longer max_steps extends the run) from here.
    if last_checkpoint_step != Some(step) {
        let state = checkpoint_inputs!();
        if let Some(dir) = checkpoint_now(&trainer, &ctx, &cfg, &runlog, trace.as_ref(), state) {
            last_checkpoint = Some(dir);
        }
    }
    let model_path = out_dir.join("model.mpk");
    trainer
        .save_weights(&model_path)
        .map_err(|e| TrainerError::Model(e.to_string()))?;
    tracing::info!(path = %model_path.display(), "model weights written");
    if cfg.runtime.export_hf {
        let dir = out_dir.join("hf");
        if trainer
            .export_hf(&ctx.tokenizer, &dir)
            .map_err(|e| TrainerError::Model(e.to_string()))?
        {
            tracing::info!(dir = %dir.display(), "Hugging Face export written");
        } else {
            tracing::warn!("runtime.export_hf is set but this learner cannot export");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RunSummary {
        steps: step,
        first_loss,
        last_loss,
        eval,
        interrupted,
        skipped_steps: skipped,
        resumed_from,
        last_checkpoint,
        seconds,
        tokens_per_second: total_tokens as f64 / seconds.max(1e-9),
        exact_match,
    })
}

/// Exact match of greedy answers on the held-out records of every dataset with
/// `exact_match = true`: at most `training.exact_match_examples` questions each, all of a
/// dataset's questions decoded together, one token per forward pass, each stopping at the end
/// of its turn (EOS, `<|im_end|>`) or two tokens past the reference answer's length.
fn exact_match<L: Learner>(trainer: &L, ctx: &TrainerCtx, cfg: &Config) -> Vec<ExactMatch> {
    let t = &cfg.training;
    // By name: the trainer's dataset list and the config's are the same, but a name lookup does
    // not depend on that.
    let wanted: Vec<(usize, &crate::config::DatasetConfig)> = ctx
        .datasets
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            cfg.datasets
                .iter()
                .find(|c| c.name == d.name && c.exact_match)
                .map(|c| (i, c))
        })
        .collect();
    if wanted.is_empty() || t.exact_match_examples == 0 {
        return Vec::new();
    }
    let tok = &ctx.tokenizer;
    let pad = tok.pad_id();
    let stops: Vec<u32> = std::iter::once(tok.eos_id())
        .chain(tok.special(crate::data::IM_END))
        .collect();
    let mut out = Vec::new();
    for (i, dcfg) in wanted {
        let d = &ctx.datasets[i];
        let (items, skips) = crate::data::answer_items(
            tok,
            &d.eval,
            cfg.model.chat_template,
            t.seq_len,
            dcfg.answer_marker.as_deref(),
            t.max_answer_tokens,
            t.exact_match_examples,
        );
        let skipped = skips.no_answer + skips.no_marker + skips.too_long;
        if items.is_empty() {
            tracing::warn!(dataset = %d.name, ?skips, "exact match: no usable held-out answer");
            continue;
        }
        let mut contexts: Vec<Vec<u32>> = items.iter().map(|it| it.context.clone()).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); items.len()];
        let mut active: Vec<usize> = (0..items.len()).collect();
        while !active.is_empty() {
            let batch: Vec<Vec<u32>> = active.iter().map(|&k| contexts[k].clone()).collect();
            let Some(next) = trainer.greedy_next(&batch, pad) else {
                tracing::warn!("this learner cannot generate: exact match skipped");
                return Vec::new();
            };
            let mut still = Vec::with_capacity(active.len());
            for (&k, &id) in active.iter().zip(&next) {
                if stops.contains(&id) {
                    continue;
                }
                generated[k].push(id);
                contexts[k].push(id);
                // A context that reached seq_len, or an answer already longer than the
                // reference allows, ends here.
                if generated[k].len() < items[k].answer_tokens + 2 && contexts[k].len() < t.seq_len
                {
                    still.push(k);
                }
            }
            active = still;
        }
        let mut correct = 0;
        let mut examples = Vec::new();
        for (it, ids) in items.iter().zip(&generated) {
            let text = tok.decode(ids);
            if crate::data::is_exact_match(&text, &it.answer) {
                correct += 1;
            }
            if examples.len() < 3 {
                examples.push((it.answer.clone(), text.trim().to_string()));
            }
        }
        let accuracy = correct as f64 / items.len() as f64;
        metrics::gauge!(telemetry::EVAL_EXACT_MATCH, "dataset" => d.name.clone()).set(accuracy);
        tracing::info!(
            dataset = %d.name,
            "exact match {correct}/{} = {accuracy:.3} ({skipped} held-out records not usable)",
            items.len()
        );
        out.push(ExactMatch {
            dataset: d.name.clone(),
            correct,
            total: items.len(),
            accuracy,
            skipped,
            examples,
        });
    }
    out
}

/// Outcome of waiting for one example.
enum Recv {
    Got(Example),
    /// A stop was requested while waiting.
    Stop,
    /// The dataset's loader is down (restarting or dropped) and its queue is empty.
    Down,
    /// The queue is closed: nothing will ever restart its loader.
    Closed,
}

/// Receives the next example of dataset `ds`. Examples already queued by a loader that has since
/// failed are still used; only an empty queue of a dead loader sends the trainer elsewhere.
fn recv(rx: &Receiver<Example>, control: &Control, live: &LiveSet, ds: usize) -> Recv {
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(ex) => return Recv::Got(ex),
            Err(RecvTimeoutError::Timeout) if control.stop_requested() => return Recv::Stop,
            Err(RecvTimeoutError::Timeout) if !live.is_live(ds) => return Recv::Down,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) if control.stop_requested() => return Recv::Stop,
            Err(RecvTimeoutError::Disconnected) => return Recv::Closed,
        }
    }
}

/// The mixture to sample from after an update boundary: the latest published one. In
/// deterministic mode, first wait until it includes every report sent before this boundary.
fn adopt(
    board: &MixtureBoard,
    target_version: u64,
    cfg: &Config,
    control: &Control,
    late: &metrics::Counter,
) -> Arc<MixtureSnapshot> {
    let snap = board.load();
    if snap.version >= target_version {
        return snap;
    }
    if !cfg.runtime.deterministic {
        late.increment(1);
        tracing::debug!(
            have = snap.version,
            want = target_version,
            "scheduler behind: keeping the older mixture"
        );
        return snap;
    }
    loop {
        // The scheduler publishes within milliseconds; polling keeps this thread free of any
        // async machinery and re-checks the stop flag.
        std::thread::sleep(Duration::from_millis(1));
        let snap = board.load();
        if snap.version >= target_version || control.stop_requested() {
            return snap;
        }
    }
}

/// The trainer-side values a checkpoint records.
struct CheckpointInputs<'a> {
    step: u64,
    names: &'a [String],
    sizes: Vec<u64>,
    sampler: &'a MixtureSampler,
    counts: &'a [u64],
    cursors: &'a [u64],
    active: &'a Arc<MixtureSnapshot>,
    target_version: u64,
    probe_ids: &'a [Vec<u32>],
    first_loss: f32,
    skipped: u64,
}

/// How long the trainer waits for the actors' part of a checkpoint before skipping it.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a checkpoint; on failure logs, counts and returns None (training goes on, and the
/// previous checkpoint stays the newest complete one).
fn checkpoint_now<L: Learner>(
    trainer: &L,
    ctx: &TrainerCtx,
    cfg: &Config,
    runlog: &JsonlWriter,
    trace: Option<&JsonlWriter>,
    inputs: CheckpointInputs<'_>,
) -> Option<PathBuf> {
    let t0 = Instant::now();
    match write_checkpoint(trainer, ctx, cfg, runlog, trace, inputs) {
        Ok(dir) => {
            let secs = t0.elapsed().as_secs_f64();
            metrics::histogram!(telemetry::CHECKPOINT_DURATION).record(secs);
            metrics::counter!(telemetry::CHECKPOINTS_WRITTEN).increment(1);
            tracing::info!(dir = %dir.display(), seconds = secs, "checkpoint written");
            Some(dir)
        }
        Err(e) => {
            metrics::counter!(telemetry::CHECKPOINT_FAILURES).increment(1);
            tracing::error!(error = %e, "checkpoint failed; the previous one stays the newest");
            None
        }
    }
}

fn write_checkpoint<L: Learner>(
    trainer: &L,
    ctx: &TrainerCtx,
    cfg: &Config,
    runlog: &JsonlWriter,
    trace: Option<&JsonlWriter>,
    c: CheckpointInputs<'_>,
) -> Result<PathBuf, TrainerError> {
    // The actors' part first: the request travels behind every report already sent, so the
    // state it captures matches the trainer's state at this step.
    let (tx, rx) = crossbeam_channel::bounded::<SnapshotReply>(1);
    let sent = match &ctx.mixing.reward {
        Some(reward) => reward.send(RewardMsg::Snapshot(tx)),
        None => ctx.mixing.scheduler.send(SchedulerMsg::Snapshot {
            estimator: None,
            initial_ppl: None,
            reply: tx,
        }),
    };
    if sent.is_err() {
        return Err(TrainerError::Checkpoint(
            "the scheduler is not running; its state cannot be saved".into(),
        ));
    }
    let actors = rx.recv_timeout(SNAPSHOT_TIMEOUT).map_err(|_| {
        TrainerError::Checkpoint(format!(
            "the scheduler did not answer within {}s",
            SNAPSHOT_TIMEOUT.as_secs()
        ))
    })?;
    let io = |e: &dyn std::fmt::Display| TrainerError::Checkpoint(e.to_string());
    let writer = checkpoint::Writer::begin(&cfg.runtime.output_dir, c.step).map_err(|e| io(&e))?;
    trainer
        .save_state(writer.dir())
        .map_err(|e| TrainerError::Checkpoint(e.to_string()))?;
    if cfg.runtime.export_hf_checkpoints
        && !trainer
            .export_hf(&ctx.tokenizer, &writer.dir().join("hf"))
            .map_err(|e| TrainerError::Checkpoint(e.to_string()))?
    {
        tracing::warn!("runtime.export_hf_checkpoints is set but this learner cannot export");
    }
    let run = RunState {
        step: c.step,
        names: c.names.to_vec(),
        sizes: c.sizes,
        model: ctx.model_shape.clone(),
        sampler: c.sampler.clone(),
        counts: c.counts.to_vec(),
        cursors: c.cursors.to_vec(),
        active: (**c.active).clone(),
        target_version: c.target_version,
        probe_ids: c.probe_ids.to_vec(),
        logs: LogLengths {
            run: runlog.len().map_err(|e| io(&e))?,
            samples: trace.map(|t| t.len()).transpose().map_err(|e| io(&e))?,
            mixture: actors.mixture_log_len,
        },
        first_loss: c.first_loss.is_finite().then_some(c.first_loss),
        skipped: c.skipped,
    };
    writer
        .write_json(checkpoint::RUN_STATE, &run)
        .map_err(|e| io(&e))?;
    writer
        .write_json(checkpoint::ACTOR_STATE, &actors.state)
        .map_err(|e| io(&e))?;
    let resolved = toml::to_string_pretty(cfg).map_err(|e| io(&e))?;
    writer
        .write_bytes(checkpoint::CONFIG, resolved.as_bytes())
        .map_err(|e| io(&e))?;
    writer
        .commit(cfg.runtime.keep_checkpoints)
        .map_err(|e| io(&e))
}

fn chunk(seqs: Vec<Seq>, size: usize, pad: u32) -> Vec<TokenBatch> {
    seqs.chunks(size.max(1)).map(|c| to_batch(c, pad)).collect()
}

fn probe_report<L: Learner>(
    trainer: &L,
    sets: &FixedSets,
    need: ProbeNeed,
    step: u64,
    initial: bool,
    counts: Vec<u64>,
) -> ProbeReport {
    let t0 = Instant::now();
    let mut nll = Vec::with_capacity(sets.batches.len());
    let mut embeddings = Vec::with_capacity(sets.batches.len());
    for batches in &sets.batches {
        let mut ds_nll = Vec::new();
        let mut ds_emb = Vec::new();
        for b in batches {
            let stats = trainer.probe_for(b, need);
            ds_nll.extend(stats.nll);
            ds_emb.extend(stats.embeddings);
        }
        nll.push(ds_nll);
        embeddings.push(ds_emb);
    }
    let seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!(telemetry::PROBE_DURATION).record(seconds);
    ProbeReport {
        step,
        initial,
        nll,
        embeddings,
        counts,
        seconds,
    }
}

fn evaluate<L: Learner>(
    trainer: &L,
    sets: &FixedSets,
    names: &[String],
) -> (Vec<(String, f64)>, f64) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for (name, batches) in names.iter().zip(&sets.batches) {
        if batches.is_empty() {
            continue;
        }
        // Token-weighted mean: the same quantity as the training loss.
        let (mut sum, mut count) = (0f64, 0f64);
        for b in batches {
            let per_ex = trainer.eval_nll(b);
            for (i, l) in per_ex.iter().enumerate() {
                let t = targets_of(b, i) as f64;
                sum += l * t;
                count += t;
            }
        }
        let loss = sum / count.max(1.0);
        metrics::gauge!(telemetry::EVAL_LOSS, "dataset" => name.clone()).set(loss);
        out.push((name.clone(), loss));
    }
    let seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!(telemetry::EVAL_DURATION).record(seconds);
    (out, seconds)
}

fn log_eval(
    runlog: &mut JsonlWriter,
    step: u64,
    (ev, seconds): (Vec<(String, f64)>, f64),
) -> Result<(), TrainerError> {
    let line = ev
        .iter()
        .map(|(n, l)| format!("{n}={l:.4}"))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!("eval at step {step}: {line}");
    runlog
        .write(&RunEvent::Eval {
            step,
            loss: ev,
            seconds,
        })
        .map_err(|e| TrainerError::Io(e.to_string()))
}

/// The model shape implied by a config and its tokenizer.
pub fn llama_config(cfg: &Config, tok: &Tokenizer) -> LlamaConfig {
    let m = &cfg.model;
    LlamaConfig {
        vocab_size: tok.vocab_size(),
        d_model: m.d_model,
        n_layers: m.n_layers,
        n_heads: m.n_heads,
        n_kv_heads: m.n_kv_heads,
        ffn_hidden: m.ffn_hidden,
        max_seq_len: cfg.training.seq_len,
        rope_theta: m.rope_theta,
        norm_eps: m.norm_eps,
        tie_embeddings: m.tie_embeddings,
    }
}

/// Optimiser hyper-parameters from the config.
pub fn train_hyper(cfg: &Config) -> TrainHyper {
    let t = &cfg.training;
    TrainHyper {
        lr: t.lr,
        warmup_steps: t.warmup_steps,
        max_steps: cfg.runtime.max_steps,
        min_lr_ratio: t.min_lr_ratio,
        weight_decay: t.weight_decay,
        beta1: t.beta1,
        beta2: t.beta2,
        eps: t.eps,
        grad_clip: t.grad_clip,
    }
}

/// Number of loss targets of example `i` of a batch.
fn targets_of(b: &TokenBatch, i: usize) -> usize {
    b.target_mask[i * b.len..(i + 1) * b.len]
        .iter()
        .filter(|&&m| m > 0.0)
        .count()
}
