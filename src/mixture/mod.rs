//! The mixture maths: static mixtures, the Mixture-of-Skills (MoS) scorer with its Adam optimiser,
//! the rewards (COSSIM, DIFF, EMA, MoSpec) and the seeded dataset sampler.
//!
//! This module owns every number that decides *how much of each dataset* the trainer sees, and
//! nothing else. It is plain, deterministic `f64` arithmetic over a handful of values (one per
//! dataset), so that the scheduler actor, `replay` and unit tests can exercise it without a model.
//!
//! It must never touch tensors (no burn), perform I/O, spawn threads, hold locks or know about
//! actors. Determinism is part of its contract: given the same inputs, every function here
//! produces bit-identical results (no hash-map iteration order, no parallel reductions), which is
//! what lets `replay` reproduce a recorded mixture trajectory bit-for-bit and lets a resumed run
//! continue exactly. Serialised state stores every `f64` as its IEEE-754 bit pattern for the same
//! reason (a decimal round trip through JSON is not guaranteed exact).
//!
//! The method and its fixed choices are described in `shared/method.md`; section numbers in the
//! comments below refer to it.

mod adam;
mod exact;
mod log;
mod prior;
mod publish;
mod rewards;
mod sampler;
mod scheduler_state;
mod scorer;
mod strategy;

#[cfg(test)]
mod tests;

pub use adam::Adam;
pub use log::{reward_label, MixtureLogLine, StartRecord, UpdateRecord};
pub use prior::{q_tau, static_mixture};
pub use publish::{export_weights, MixtureBoard, MixtureSnapshot};
pub use rewards::{
    cosine, cossim_rewards, cossim_target_rewards, diff_rewards, mean_embedding, mospec_diff, Ema,
};
pub use sampler::MixtureSampler;
pub use scheduler_state::{MosScheduler, ProbeInput, RewardOutcome};
pub use scorer::{MlpScorer, Scorer, MLP_FIT_MAX_ITERS, MLP_FIT_MSE, MLP_HIDDEN};
pub use strategy::{MixtureStrategy, Needs, StaticMixture, Strategy, UpdateInput};

use crate::config::RewardKind;

/// Rewards are clipped to at least this value before a REINFORCE update (method.md 2.2): a cosine
/// can be negative, and a non-positive reward would push a dataset's probability to zero forever.
pub const REWARD_FLOOR: f64 = 1e-6;

/// Everything that can go wrong in the mixture maths. Every variant is a caller or configuration
/// error detected *before* any state is changed, so a failed call leaves the scheduler untouched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixtureError {
    /// A mixture over zero datasets was requested.
    #[error("no datasets: a mixture needs at least one")]
    NoDatasets,
    /// Every dataset has size 0, so no size-based mixture exists.
    #[error("every dataset is empty (all sizes are 0)")]
    AllEmpty,
    /// A temperature that is zero, negative or NaN.
    #[error("temperature must be a positive number or infinity, found {0}")]
    InvalidTemperature(f64),
    /// A per-dataset input has the wrong number of entries.
    #[error("{what}: expected {expected} entries (one per dataset), found {found}")]
    LengthMismatch {
        /// Which input was wrong.
        what: &'static str,
        /// The number of datasets.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// `strategy = "fixed"` and a dataset has no weight.
    #[error("dataset {index}: strategy \"fixed\" needs a weight for every dataset")]
    MissingWeight {
        /// Index of the dataset.
        index: usize,
    },
    /// A fixed weight that is not positive and finite.
    #[error("dataset {index}: a fixed weight must be positive and finite, found {value}")]
    InvalidWeight {
        /// Index of the dataset.
        index: usize,
        /// The offending weight.
        value: f64,
    },
    /// A prior handed to the scorer is not a probability vector.
    #[error("invalid prior: {0}")]
    InvalidPrior(String),
    /// The MLP scorer could not be fitted to its prior (method.md 2.1).
    #[error(
        "the MLP scorer did not fit its prior: MSE {mse:e} after {iterations} iterations \
         (needs < {MLP_FIT_MSE:e})"
    )]
    ScorerFit {
        /// The MSE reached.
        mse: f64,
        /// Iterations spent.
        iterations: usize,
    },
    /// The MoSpec target index is not a dataset.
    #[error("MoSpec target index {target} is out of range for {n} datasets")]
    TargetOutOfRange {
        /// The index given.
        target: usize,
        /// The number of datasets.
        n: usize,
    },
    /// Probe statistics of the other reward family were given.
    #[error("probe input carries {found} but the scheduler's reward is {expected:?}")]
    WrongProbeKind {
        /// The configured reward family.
        expected: RewardKind,
        /// What the input carried.
        found: &'static str,
    },
    /// Probe statistics of one dataset are malformed (empty, ragged, non-finite, non-positive).
    #[error("probe statistics of dataset {index}: {message}")]
    BadProbe {
        /// Index of the dataset.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A reward is NaN or infinite; applying it would corrupt the scorer for the rest of the run.
    #[error("reward of dataset {index} is not finite: {value}")]
    NonFiniteReward {
        /// Index of the dataset.
        index: usize,
        /// The offending reward.
        value: f64,
    },
    /// The REINFORCE update produced non-finite scorer parameters (rewards too large); the
    /// scheduler state was left as it was.
    #[error("the scorer update overflowed (rewards too large); the mixture was kept")]
    UpdateDiverged,
    /// Statistics were handed to a strategy that learns nothing from them (a static mixture).
    #[error("this strategy does not learn: it takes no statistics and no update input")]
    NotLearned,
    /// A scheduler setting is out of range.
    #[error("invalid scheduler setting `{key}`: {message}")]
    InvalidSetting {
        /// The config key, e.g. `scheduler.ema_beta`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Numerically stable softmax of `logits` into `out` (same length). Subtracting the maximum keeps
/// `exp` in range; the sum runs in index order so the result is deterministic. Entries equal to
/// `-inf` get probability exactly 0.
pub(crate) fn softmax_into(logits: &[f64], out: &mut [f64]) {
    debug_assert_eq!(logits.len(), out.len());
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        // Degenerate (every logit -inf): fall back to uniform rather than 0/0 = NaN.
        let u = 1.0 / out.len() as f64;
        out.iter_mut().for_each(|o| *o = u);
        return;
    }
    let mut sum = 0.0;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}
