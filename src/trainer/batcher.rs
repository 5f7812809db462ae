//! The batcher: draws each example's dataset from the adopted mixture with the training RNG,
//! takes the next example from that dataset's loader queue, and keeps the per-dataset stream
//! cursors and the counts drawn since the last report.
//!
//! Datasets whose loader is down are sampled with weight 0 (the rest renormalised) until they
//! are back. A batch that cannot be completed (a stop request while waiting) restores the RNG,
//! cursors and counts to where they were before it, so a checkpoint taken after the stop does not
//! skip the examples that were taken but never trained on.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::sets::{to_batch, training_mask, Seq};
use super::TrainerError;
use crate::checkpoint::RunState;
use crate::config::{Config, SampleUnit};
use crate::control::{Control, LiveSet};
use crate::data::Example;
use crate::learner::TokenBatch;
use crate::mixture::{MixtureSampler, MixtureSnapshot};
use crate::seed::stream_seed;
use crate::telemetry;

/// A complete batch.
pub(super) struct Batch {
    /// The padded batch the learner trains on.
    pub(super) batch: TokenBatch,
    /// Real (unpadded) tokens in it.
    pub(super) real_tokens: u64,
    /// Time spent blocked on loader queues while filling it.
    pub(super) wait: Duration,
}

/// The sampling state of a run: what a checkpoint records of it, and what it needs to draw.
pub(super) struct Batcher {
    names: Vec<String>,
    receivers: Vec<Receiver<Example>>,
    batch_size: usize,
    sample_unit: SampleUnit,
    loss_on_prompt: bool,
    pad: u32,
    /// The dataset-choice RNG.
    pub(super) sampler: MixtureSampler,
    /// Per dataset, the stream position of the next example to consume.
    pub(super) cursors: Vec<u64>,
    /// Examples drawn per dataset since the last report.
    pub(super) counts: Vec<u64>,
    /// The (dataset, record index) pairs of the last batch, for `samples.jsonl`.
    pub(super) drawn: Vec<(usize, u32)>,
    /// Whether every dataset was live at the last draw (logs a change once).
    all_live_noted: bool,
    sample_counters: Vec<metrics::Counter>,
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

impl Batcher {
    /// The batcher of a fresh or resumed run. After a rollback the sampler is re-seeded per
    /// rollback, so the batches that diverged are not replayed as they were.
    pub(super) fn new(
        cfg: &Config,
        names: Vec<String>,
        receivers: Vec<Receiver<Example>>,
        pad: u32,
        resumed: Option<&RunState>,
        rollbacks: u32,
    ) -> Self {
        let n = names.len();
        let mut sampler = match resumed {
            Some(r) => r.sampler.clone(),
            None => MixtureSampler::new(stream_seed(cfg.runtime.seed, "data")),
        };
        if rollbacks > 0 {
            sampler = MixtureSampler::new(stream_seed(
                cfg.runtime.seed,
                &format!("data-rollback-{rollbacks}"),
            ));
            tracing::warn!(
                rollback = rollbacks,
                "dataset sampler re-seeded after a rollback"
            );
        }
        let sample_counters = names
            .iter()
            .map(|n| metrics::counter!(telemetry::DATASET_SAMPLES, "dataset" => n.clone()))
            .collect();
        Self {
            receivers,
            batch_size: cfg.training.batch_size,
            sample_unit: cfg.scheduler.sample_unit,
            loss_on_prompt: cfg.training.loss_on_prompt,
            pad,
            sampler,
            cursors: resumed.map_or_else(|| vec![0; n], |r| r.cursors.clone()),
            counts: resumed.map_or_else(|| vec![0; n], |r| r.counts.clone()),
            drawn: Vec::with_capacity(cfg.training.batch_size),
            all_live_noted: true,
            sample_counters,
            names,
        }
    }

    /// The counts drawn since the last report, reset to zero: what a report carries.
    pub(super) fn take_counts(&mut self) -> Vec<u64> {
        let n = self.counts.len();
        std::mem::replace(&mut self.counts, vec![0; n])
    }

    /// Fills one batch from `snap`. `Ok(None)`: a stop was requested before the batch was
    /// complete; the sampling state is as it was before the call.
    pub(super) fn next(
        &mut self,
        snap: &MixtureSnapshot,
        control: &Control,
        live: &LiveSet,
    ) -> Result<Option<Batch>, TrainerError> {
        let n = self.names.len();
        let mut seqs = Vec::with_capacity(self.batch_size);
        let mut wait = Duration::ZERO;
        let mut batch_ds = None;
        self.drawn.clear();
        let before = (
            self.sampler.clone(),
            self.cursors.clone(),
            self.counts.clone(),
        );
        while seqs.len() < self.batch_size {
            // With every loader healthy (the normal case) the mixture is used as published;
            // otherwise datasets that are down get weight 0 and the draw renormalises.
            let weights: Cow<[f64]> = if live.all_live() {
                if !self.all_live_noted {
                    tracing::info!("every dataset is live again: sampling from the full mixture");
                    self.all_live_noted = true;
                }
                Cow::Borrowed(&snap.weights)
            } else {
                let w: Vec<f64> = (0..n)
                    .map(|i| {
                        if live.is_live(i) {
                            snap.weights[i]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                if self.all_live_noted {
                    let out: Vec<&str> = (0..n)
                        .filter(|&i| !live.is_live(i))
                        .map(|i| self.names[i].as_str())
                        .collect();
                    tracing::warn!(out = ?out, live = live.live_count(), "datasets out of sampling: mixture renormalised over the live ones");
                    self.all_live_noted = false;
                }
                Cow::Owned(w)
            };
            if !weights.iter().any(|&x| x.is_finite() && x > 0.0) {
                if !live.any_usable() {
                    return Err(TrainerError::NoLiveDataset);
                }
                // Every dataset with weight is restarting: wait for one to come back.
                if control.stop_requested() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let ds = match (self.sample_unit, batch_ds) {
                (SampleUnit::Batch, Some(d)) if live.is_live(d) => d,
                _ => {
                    let d = self.sampler.draw(&weights);
                    batch_ds = Some(d);
                    d
                }
            };
            let t0 = Instant::now();
            let ex = match recv(&self.receivers[ds], control, live, ds) {
                Recv::Got(ex) => ex,
                Recv::Stop => break,
                // The loader went down while we waited: draw again among the live ones.
                Recv::Down => continue,
                Recv::Closed => return Err(TrainerError::LoaderGone(self.names[ds].clone())),
            };
            wait += t0.elapsed();
            self.cursors[ds] = ex.seq + 1;
            self.counts[ds] += 1;
            self.drawn.push((ds, ex.index));
            self.sample_counters[ds].increment(1);
            seqs.push(Seq {
                mask: training_mask(&ex.response_mask, self.loss_on_prompt),
                tokens: ex.tokens,
            });
        }
        if seqs.len() < self.batch_size {
            (self.sampler, self.cursors, self.counts) = before;
            return Ok(None);
        }
        Ok(Some(Batch {
            batch: to_batch(&seqs, self.pad),
            real_tokens: seqs.iter().map(|s| s.tokens.len() as u64).sum(),
            wait,
        }))
    }
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
