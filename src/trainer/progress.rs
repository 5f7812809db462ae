//! Progress: what the run reports about itself. Per step it updates the metrics, the loss
//! statistics and the non-finite streak; every `log_every` steps it prints a progress line and
//! appends a `train` record to `run.jsonl`; it also writes the probe, eval and exact-match
//! records, and `samples.jsonl` when `runtime.trace_samples` is set.

use std::path::Path;
use std::time::{Duration, Instant};

use super::TrainerError;
use crate::checkpoint::RunState;
use crate::config::Config;
use crate::learner::StepOutput;
use crate::mixture::MixtureSnapshot;
use crate::runlog::{ExactMatch, JsonlWriter, RunRecord, SampleRecord};
use crate::telemetry;

/// The metric handles of the training loop, registered once.
struct Metrics {
    loss: metrics::Gauge,
    lr: metrics::Gauge,
    step: metrics::Gauge,
    tokens: metrics::Counter,
    step_duration: metrics::Histogram,
    wait: metrics::Counter,
    wait_batch: metrics::Histogram,
    skipped: metrics::Counter,
}

/// A step's verdict on the non-finite rule.
pub(super) enum Health {
    /// Go on.
    Fine,
    /// `training.nonfinite_limit` non-finite losses in a row.
    Streak(u64),
}

/// The run's reporting state.
pub(super) struct Progress {
    runlog: JsonlWriter,
    trace: Option<JsonlWriter>,
    metrics: Metrics,
    log_every: u64,
    max_steps: u64,
    nonfinite_limit: u64,
    /// The fraction of a second of data wait not yet added to the integer seconds counter.
    wait_carry: f64,
    started: Instant,
    total_tokens: u64,
    window_tokens: u64,
    window_loss: f64,
    window_steps: u64,
    window_start: Instant,
    window_wait: f64,
    streak: u64,
    /// Loss of the run's first finite step.
    pub(super) first_loss: f32,
    /// Mean loss over the last progress window.
    pub(super) last_loss: f32,
    /// Steps skipped for a non-finite loss.
    pub(super) skipped: u64,
}

impl Progress {
    /// Opens the logs (appending: a resumed run's logs were cut back to its checkpoint).
    pub(super) fn new(cfg: &Config, resumed: Option<&RunState>) -> Result<Self, TrainerError> {
        let out = &cfg.runtime.output_dir;
        let open = |p: &Path| JsonlWriter::append(p).map_err(TrainerError::Log);
        let now = Instant::now();
        Ok(Self {
            runlog: open(&out.join("run.jsonl"))?,
            trace: match cfg.runtime.trace_samples {
                true => Some(open(&out.join("samples.jsonl"))?),
                false => None,
            },
            metrics: Metrics {
                loss: metrics::gauge!(telemetry::TRAIN_LOSS),
                lr: metrics::gauge!(telemetry::TRAIN_LR),
                step: metrics::gauge!(telemetry::TRAIN_STEP),
                tokens: metrics::counter!(telemetry::TRAIN_TOKENS),
                step_duration: metrics::histogram!(telemetry::TRAIN_STEP_DURATION),
                wait: metrics::counter!(telemetry::DATA_WAIT),
                wait_batch: metrics::histogram!(telemetry::DATA_WAIT_BATCH),
                skipped: metrics::counter!(telemetry::TRAIN_STEPS_SKIPPED),
            },
            log_every: cfg.runtime.log_every,
            max_steps: cfg.runtime.max_steps,
            nonfinite_limit: cfg.training.nonfinite_limit,
            wait_carry: 0.0,
            started: now,
            total_tokens: 0,
            window_tokens: 0,
            window_loss: 0.0,
            window_steps: 0,
            window_start: now,
            window_wait: 0.0,
            streak: 0,
            first_loss: resumed.and_then(|r| r.first_loss).unwrap_or(f32::NAN),
            last_loss: f32::NAN,
            skipped: resumed.map_or(0, |r| r.skipped),
        })
    }

    /// Records the time a batch waited for data. The metrics facade's counters are integers,
    /// so the seconds counter advances in whole seconds (the fraction is carried, never lost);
    /// the histogram keeps full resolution.
    pub(super) fn data_wait(&mut self, wait: Duration) {
        let secs = wait.as_secs_f64();
        self.metrics.wait_batch.record(secs);
        self.wait_carry += secs;
        if self.wait_carry >= 1.0 {
            let whole = self.wait_carry.floor();
            self.metrics.wait.increment(whole as u64);
            self.wait_carry -= whole;
        }
        self.window_wait += secs;
    }

    /// Appends the batch of `step` to `samples.jsonl`, when traced.
    pub(super) fn trace(
        &mut self,
        step: u64,
        version: u64,
        drawn: &[(usize, u32)],
    ) -> Result<(), TrainerError> {
        if let Some(trace) = self.trace.as_mut() {
            trace
                .write(&SampleRecord {
                    step,
                    mixture_version: version,
                    samples: drawn.into(),
                })
                .map_err(TrainerError::Log)?;
        }
        Ok(())
    }

    /// Accounts for one optimiser step and says whether the non-finite streak hit its limit.
    pub(super) fn step(
        &mut self,
        step: u64,
        out: &StepOutput,
        real_tokens: u64,
        started: Instant,
    ) -> Health {
        let mut health = Health::Fine;
        if !out.finite {
            self.skipped += 1;
            self.streak += 1;
            self.metrics.skipped.increment(1);
            tracing::warn!(
                step,
                streak = self.streak,
                "non-finite loss: update skipped"
            );
            if self.nonfinite_limit > 0 && self.streak >= self.nonfinite_limit {
                health = Health::Streak(self.streak);
            }
        } else {
            self.streak = 0;
            if self.first_loss.is_nan() {
                self.first_loss = out.loss;
            }
            self.window_loss += out.loss as f64;
            self.window_steps += 1;
            self.metrics.loss.set(out.loss as f64);
        }
        if let Health::Streak(_) = health {
            // The caller stops the run; the step's remaining accounting is moot.
            return health;
        }
        self.metrics.lr.set(out.lr);
        self.metrics.step.set(step as f64);
        self.metrics.tokens.increment(real_tokens);
        self.total_tokens += real_tokens;
        self.window_tokens += real_tokens;
        self.metrics
            .step_duration
            .record(started.elapsed().as_secs_f64());
        health
    }

    /// Every `log_every` steps and at the last: the progress line and a `train` record.
    pub(super) fn window(
        &mut self,
        step: u64,
        lr: f64,
        snap: &MixtureSnapshot,
    ) -> Result<(), TrainerError> {
        if !(step.is_multiple_of(self.log_every) || step == self.max_steps) {
            return Ok(());
        }
        let secs = self.window_start.elapsed().as_secs_f64().max(1e-9);
        let loss = if self.window_steps > 0 {
            (self.window_loss / self.window_steps as f64) as f32
        } else {
            f32::NAN
        };
        self.last_loss = loss;
        let tps = self.window_tokens as f64 / secs;
        let mix = snap
            .names
            .iter()
            .zip(&snap.weights)
            .map(|(n, w)| format!("{n}={w:.3}"))
            .collect::<Vec<_>>()
            .join(" ");
        let max_steps = self.max_steps;
        tracing::info!(
            "step {step}/{max_steps} loss {loss:.4} lr {lr:.2e} tok/s {tps:.0} data-wait {:.1}% mixture v{} [{mix}]",
            100.0 * self.window_wait / secs,
            snap.version
        );
        self.write(&RunRecord::Train {
            step,
            // NaN (every step of the window non-finite) is written as null, as before.
            loss: loss.is_finite().then_some(loss),
            lr,
            tokens_per_second: tps,
            step_seconds: secs / self.window_steps.max(1) as f64,
            data_wait_seconds: self.window_wait,
            mixture_version: snap.version,
            mixture: snap.weights.clone(),
        })?;
        self.window_tokens = 0;
        self.window_loss = 0.0;
        self.window_steps = 0;
        self.window_wait = 0.0;
        self.window_start = Instant::now();
        Ok(())
    }

    /// A `probe` record.
    pub(super) fn probe(&mut self, step: u64, seconds: f64) -> Result<(), TrainerError> {
        self.write(&RunRecord::Probe { step, seconds })
    }

    /// The eval line and its `eval` record.
    pub(super) fn eval(
        &mut self,
        step: u64,
        (loss, seconds): (Vec<(String, f64)>, f64),
    ) -> Result<(), TrainerError> {
        let line = loss
            .iter()
            .map(|(n, l)| format!("{n}={l:.4}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!("eval at step {step}: {line}");
        let loss = loss
            .into_iter()
            .map(|(n, l)| (n, l.is_finite().then_some(l)))
            .collect();
        self.write(&RunRecord::Eval {
            step,
            loss,
            seconds,
        })
    }

    /// An `exact_match` record (none when there are no results).
    pub(super) fn exact_match(
        &mut self,
        step: u64,
        results: &[ExactMatch],
        seconds: f64,
    ) -> Result<(), TrainerError> {
        if results.is_empty() {
            return Ok(());
        }
        self.write(&RunRecord::ExactMatch {
            step,
            results: results.to_vec(),
            seconds,
        })
    }

    /// At the end: a stop between two progress lines still reports the loss of the steps
    /// since the last one.
    pub(super) fn close_window(&mut self) {
        if self.window_steps > 0 {
            self.last_loss = (self.window_loss / self.window_steps as f64) as f32;
        }
    }

    /// Bytes in `run.jsonl` and `samples.jsonl` (a checkpoint records them).
    pub(super) fn log_lengths(&self) -> Result<(u64, Option<u64>), crate::runlog::LogError> {
        Ok((
            self.runlog.len()?,
            self.trace.as_ref().map(|t| t.len()).transpose()?,
        ))
    }

    /// Seconds since the loop started, and training tokens per second over them.
    pub(super) fn throughput(&self) -> (f64, f64) {
        let seconds = self.started.elapsed().as_secs_f64();
        (seconds, self.total_tokens as f64 / seconds.max(1e-9))
    }

    fn write(&mut self, event: &RunRecord) -> Result<(), TrainerError> {
        self.runlog.write(event).map_err(TrainerError::Log)
    }
}
