//! [`UnigramLearner`]: the smallest complete [`Learner`], in plain Rust.
//!
//! It models text as independent draws from a smoothed token distribution that it learns by
//! counting. That is a poor language model but a real one: its loss falls as it sees data, its
//! per-example NLL differs between datasets (so DIFF rewards move), and its embeddings (token
//! histograms) differ between datasets (so COSSIM rewards move). It serves as the reference for
//! implementing [`Learner`] and lets the runtime's loop, actors and checkpoints be exercised
//! without burn.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Learner;
use crate::learner::{ModelError, ProbeStats, StepOutput, TokenBatch};

/// Width of the histogram embeddings.
const EMBED: usize = 32;
const STATE_FILE: &str = "unigram.json";

/// A unigram token model with add-one smoothing, learned by counting target tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnigramLearner {
    step: u64,
    counts: Vec<f64>,
    total: f64,
    #[serde(skip)]
    poison: bool,
}

impl UnigramLearner {
    /// An untrained model over `vocab_size` token ids (uniform: every NLL is ln(vocab_size)).
    pub fn new(vocab_size: usize) -> Self {
        let v = vocab_size.max(1);
        Self {
            step: 0,
            counts: vec![1.0; v],
            total: v as f64,
            poison: false,
        }
    }

    fn nll(&self, token: i64) -> f64 {
        let c = usize::try_from(token)
            .ok()
            .and_then(|t| self.counts.get(t))
            .copied()
            .unwrap_or(1.0);
        -(c / self.total).ln()
    }

    /// Per example: (sum of target NLLs, number of targets).
    fn per_example(&self, b: &TokenBatch) -> Vec<(f64, usize)> {
        (0..b.batch)
            .map(|i| {
                let row = i * b.len..(i + 1) * b.len;
                b.tokens[row.clone()]
                    .iter()
                    .zip(&b.target_mask[row])
                    .filter(|(_, &m)| m > 0.0)
                    .fold((0.0, 0), |(s, n), (&t, _)| (s + self.nll(t), n + 1))
            })
            .collect()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Learner for UnigramLearner {
    fn kind(&self) -> &str {
        "unigram"
    }

    fn step(&self) -> u64 {
        self.step
    }

    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        self.step += 1;
        let per = self.per_example(batch);
        let (sum, n) = per
            .iter()
            .fold((0.0, 0usize), |(s, c), (x, k)| (s + x, c + k));
        let mut loss = if n > 0 { (sum / n as f64) as f32 } else { 0.0 };
        if std::mem::take(&mut self.poison) {
            loss = f32::NAN;
        }
        let finite = loss.is_finite();
        if finite {
            for (t, m) in batch.tokens.iter().zip(&batch.target_mask) {
                if *m > 0.0 {
                    if let Some(c) = usize::try_from(*t)
                        .ok()
                        .and_then(|t| self.counts.get_mut(t))
                    {
                        *c += 1.0;
                        self.total += 1.0;
                    }
                }
            }
        }
        StepOutput {
            loss,
            lr: 0.0,
            target_tokens: n,
            finite,
            grad_norm: 0.0,
            example_loss: per
                .iter()
                .map(|&(s, k)| if k > 0 { (s / k as f64) as f32 } else { 0.0 })
                .collect(),
        }
    }

    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        self.per_example(batch)
            .into_iter()
            .map(|(s, n)| if n > 0 { s / n as f64 } else { 0.0 })
            .collect()
    }

    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        let embeddings = (0..batch.batch)
            .map(|i| {
                let mut h = vec![0f32; EMBED];
                let real = &batch.tokens[i * batch.len..i * batch.len + batch.lengths[i]];
                for &t in real {
                    h[(t.unsigned_abs() as usize) % EMBED] += 1.0;
                }
                let norm = real.len().max(1) as f32;
                h.iter_mut().for_each(|x| *x /= norm);
                h
            })
            .collect();
        ProbeStats {
            nll: self.eval_nll(batch),
            embeddings,
        }
    }

    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        self.save_weights(&dir.join(STATE_FILE))
    }

    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        *self =
            serde_json::from_slice(&bytes).map_err(|source| ModelError::State { path, source })?;
        Ok(())
    }

    fn save_weights(&self, path: &Path) -> Result<(), ModelError> {
        let json = serde_json::to_vec(self).map_err(|source| ModelError::State {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, json).map_err(io(path))
    }

    fn poison_next_step(&mut self) {
        self.poison = true;
    }
}
