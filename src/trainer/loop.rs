//! The training loop proper, generic over the burn backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use ractor::ActorRef;
use serde::Serialize;

use super::{Control, ReportGate};
use crate::config::{Config, PplSpan, SampleUnit, Strategy};
use crate::data::{encode_all, probe_indices, Dataset, Example, Tokenizer};
use crate::mixture::MixtureSampler;
use crate::model::{LlamaConfig, TokenBatch, TrainHyper, Trainer};
use crate::reward::{ProbeReport, RewardMsg};
use crate::runlog::JsonlWriter;
use crate::scheduler::{MixtureBoard, SchedulerMsg};
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
    /// Where the current mixture is read from.
    pub board: MixtureBoard,
    /// The reward actor (MoS only) and its gate.
    pub reward: Option<(ActorRef<RewardMsg>, Arc<ReportGate>)>,
    /// The scheduler actor and its gate (ticks of static strategies).
    pub scheduler: (ActorRef<SchedulerMsg>, Arc<ReportGate>),
    /// Stop and pause requests.
    pub control: Arc<Control>,
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
    /// Wall-clock seconds of the loop.
    pub seconds: f64,
    /// Training tokens per second over the run.
    pub tokens_per_second: f64,
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

/// Derives an independent RNG seed for a named stream, so data, probes and scheduler never share
/// random numbers (design invariant 5).
pub fn stream_seed(seed: u64, stream: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(stream.as_bytes(), seed)
}

/// Runs the whole training loop on the calling thread (the trainer's dedicated OS thread).
pub fn run_training<B: AutodiffBackend>(
    ctx: TrainerCtx,
    device: B::Device,
) -> Result<RunSummary, TrainerError> {
    let cfg = ctx.cfg.clone();
    let n = ctx.datasets.len();
    let names: Vec<String> = ctx.datasets.iter().map(|d| d.name.clone()).collect();
    let seq_len = cfg.training.seq_len;
    let pad = ctx.tokenizer.pad_id();
    let template = cfg.model.chat_template;
    let out_dir = cfg.runtime.output_dir.clone();

    B::seed(&device, cfg.runtime.seed);
    let llama = llama_config(&cfg, &ctx.tokenizer);
    // Host-seeded initialisation: the same weights on every backend, independent of burn's
    // process-global RNG.
    let model = match &cfg.model.pretrained {
        Some(path) => crate::model::load_for_training::<B>(path, seq_len, &ctx.tokenizer, &device)
            .map_err(|e| TrainerError::Model(e.to_string()))?,
        None => llama.init_seeded::<B>(stream_seed(cfg.runtime.seed, "model"), &device),
    };
    let hyper = train_hyper(&cfg);
    let mut trainer = Trainer::new(model, hyper, device.clone());

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
    let probe_sets = if mos {
        let probe_seed = stream_seed(cfg.runtime.seed, "probe");
        Some(FixedSets {
            batches: ctx
                .datasets
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let idx = probe_indices(d.train.len(), cfg.scheduler.probe_size, probe_seed, i);
                    let recs: Vec<_> = idx.iter().map(|&j| d.train[j as usize].clone()).collect();
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

    let mut counts = vec![0u64; n];
    if let (Some(sets), Some((reward, gate))) = (&probe_sets, &ctx.reward) {
        // theta_0 perplexities, computed once; the reward actor keeps them.
        let report = probe_report(&trainer, sets, 0, true, counts.clone());
        gate.acquire();
        if reward.cast(RewardMsg::Probe(report)).is_err() {
            gate.done();
        }
    }

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
    let mut sampler = MixtureSampler::new(stream_seed(cfg.runtime.seed, "data"));
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
    let mut first_loss = f32::NAN;
    let mut last_loss = f32::NAN;
    let mut skipped = 0u64;
    let mut interrupted = false;
    let max_steps = cfg.runtime.max_steps;
    let mut step = trainer.step();

    while step < max_steps {
        if ctx.control.stop_requested() {
            interrupted = true;
            break;
        }
        if ctx.control.paused() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let step_started = Instant::now();
        let snap = ctx.board.load();
        let mut seqs = Vec::with_capacity(cfg.training.batch_size);
        let mut wait = Duration::ZERO;
        let mut batch_ds = None;
        drawn.clear();
        for _ in 0..cfg.training.batch_size {
            let ds = match (cfg.scheduler.sample_unit, batch_ds) {
                (SampleUnit::Batch, Some(d)) => d,
                _ => {
                    let d = sampler.draw(&snap.weights);
                    batch_ds = Some(d);
                    d
                }
            };
            let t0 = Instant::now();
            let ex = match recv(&ctx.receivers[ds], &ctx.control) {
                Some(ex) => ex,
                None if ctx.control.stop_requested() => break,
                None => return Err(TrainerError::LoaderGone(names[ds].clone())),
            };
            wait += t0.elapsed();
            counts[ds] += 1;
            drawn.push((ds, ex.index));
            sample_counters[ds].increment(1);
            seqs.push(Seq {
                mask: training_mask(&ex.response_mask, cfg.training.loss_on_prompt),
                tokens: ex.tokens,
            });
        }
        if seqs.len() < cfg.training.batch_size {
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
            skipped_counter.increment(1);
            tracing::warn!(step, "non-finite loss: update skipped");
        } else {
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

        if step % cfg.runtime.log_every == 0 || step == max_steps {
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

        if step % cfg.scheduler.update_every == 0 && step < max_steps {
            let report_counts = std::mem::replace(&mut counts, vec![0; n]);
            match (&probe_sets, &ctx.reward) {
                (Some(sets), Some((reward, gate))) => {
                    // Check the gate before the probe pass: a dropped report must not cost a
                    // forward pass either.
                    if gate.try_acquire() {
                        let report = probe_report(&trainer, sets, step, false, report_counts);
                        runlog
                            .write(&RunEvent::Probe {
                                step,
                                seconds: report.seconds,
                            })
                            .map_err(|e| TrainerError::Io(e.to_string()))?;
                        if reward.cast(RewardMsg::Probe(report)).is_err() {
                            gate.done();
                        }
                    }
                }
                _ => {
                    let (sched, gate) = &ctx.scheduler;
                    if gate.try_acquire()
                        && sched
                            .cast(SchedulerMsg::Tick {
                                step,
                                counts: report_counts,
                            })
                            .is_err()
                    {
                        gate.done();
                    }
                }
            }
        }

        if cfg.runtime.eval_every > 0 && step % cfg.runtime.eval_every == 0 && step < max_steps {
            let ev = evaluate(&trainer, &eval_sets, &names);
            log_eval(&mut runlog, step, ev)?;
        }
    }

    let eval = if interrupted {
        tracing::info!(step, "stop requested: skipping the final evaluation");
        Vec::new()
    } else {
        let ev = evaluate(&trainer, &eval_sets, &names);
        log_eval(&mut runlog, step, ev.clone())?;
        ev.0
    };
    let model_path = out_dir.join("model.mpk");
    trainer
        .save_model(&model_path)
        .map_err(|e| TrainerError::Model(e.to_string()))?;
    tracing::info!(path = %model_path.display(), "model weights written");
    if cfg.runtime.export_hf {
        crate::model::export::export_run(trainer.model(), &ctx.tokenizer, &out_dir)
            .map_err(|e| TrainerError::Model(e.to_string()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RunSummary {
        steps: step,
        first_loss,
        last_loss,
        eval,
        interrupted,
        skipped_steps: skipped,
        seconds,
        tokens_per_second: total_tokens as f64 / seconds.max(1e-9),
    })
}

/// Receives the next example, giving up when a stop is requested or the queue is closed.
fn recv(rx: &Receiver<Example>, control: &Control) -> Option<Example> {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ex) => return Some(ex),
            Err(RecvTimeoutError::Timeout) if control.stop_requested() => return None,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn chunk(seqs: Vec<Seq>, size: usize, pad: u32) -> Vec<TokenBatch> {
    seqs.chunks(size.max(1)).map(|c| to_batch(c, pad)).collect()
}

fn probe_report<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    sets: &FixedSets,
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
            let stats = trainer.probe(b);
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

fn evaluate<B: AutodiffBackend>(
    trainer: &Trainer<B>,
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
