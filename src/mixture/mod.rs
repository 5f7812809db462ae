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
pub use prior::{mos_prior, q_tau, static_mixture};
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

/// The largest reward an update accepts, of either family (see [`reward_range`]).
///
/// The method's rewards are small: a COSSIM reward is a cosine or a mean of cosines, in [-1, 1];
/// a DIFF reward is a mean ratio of perplexities, about 1 on a model that learns and rarely
/// above 10 on one that does not, doubled for a MoSpec target. A million is far above anything a
/// working run produces and far below what could make the REINFORCE gradient overflow (its size
/// is at most the sum of the rewards, so at most `N * 1e6` for N datasets), so a reward beyond it
/// is a client or model failure and is refused rather than learned from.
pub const REWARD_MAX: f64 = 1e6;

/// Accepted rewards whose largest entry (after the floor) is above this are scaled down by one
/// common factor so that the largest becomes exactly this, before the gradient.
///
/// A common factor does not change what REINFORCE learns (its fixed point is `p_i = R_i / sum_j
/// R_j`, and Adam's steps are invariant to the scale of one gradient), but it keeps Adam's second
/// moment, which carries over between updates, at the size ordinary rewards give it: one update
/// with rewards of a million would otherwise make the next few hundred ordinary updates move the
/// mixture a million times less. Every reward vector whose largest entry is at most 100 (every
/// vector the method produces on a model that has not diverged) is used exactly as given, so
/// ordinary runs and their recorded traces are bit-identical with or without this rule.
pub const REWARD_SCALE_THRESHOLD: f64 = 100.0;

/// The accepted range of one reward of `kind`, inclusive: `[-REWARD_MAX, REWARD_MAX]` for COSSIM
/// (cosines may be negative; anything below [`REWARD_FLOOR`] counts as the floor) and `[0,
/// REWARD_MAX]` for DIFF (a ratio of positive perplexities is positive; 0 is accepted because the
/// quotient of two positive `f64` can round to 0, and the floor then applies).
pub fn reward_range(kind: RewardKind) -> (f64, f64) {
    match kind {
        RewardKind::Cossim => (-REWARD_MAX, REWARD_MAX),
        RewardKind::Diff => (0.0, REWARD_MAX),
        RewardKind::Constant => (1.0, 1.0),
    }
}

/// The values of the `reason` label of `mos_scheduler_updates_rejected_total`, one per kind of
/// refusal ([`MixtureError::reject_reason`] maps every error to one of them). The scheduler
/// registers each at 0 when it starts, so a dashboard shows 0 rather than no data.
pub const REJECT_REASONS: [&str; 7] = [
    "reward_out_of_range",
    "non_finite_reward",
    "bad_statistics",
    "non_finite_state",
    "scorer_stuck",
    "mixture_saturated",
    "other",
];

/// What is wrong with one part of the state an update would leave (see
/// [`MixtureError::StateRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFault {
    /// Entry `index` is NaN or infinite.
    NotFinite {
        /// The entry.
        index: usize,
    },
    /// The parameter at `index` could no longer move: Adam's second moment for it is so large
    /// that the step an ordinary (unit) gradient would take, `lr / (sqrt(v_hat + 1) + eps)`, no
    /// longer changes the parameter in `f64`. Only the parameters that set one logit each are
    /// checked (every logit; the MLP's output biases), which is enough for the mixture to move.
    CannotMove {
        /// The parameter.
        index: usize,
    },
    /// The mixture would give dataset `index` probability exactly 0 (its logit is so far below
    /// the others that the softmax underflows), from which only a very long run of updates could
    /// bring it back.
    Saturated {
        /// The dataset.
        index: usize,
    },
}

impl std::fmt::Display for StateFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateFault::NotFinite { index } => write!(f, "entry {index} would not be finite"),
            StateFault::CannotMove { index } => write!(
                f,
                "entry {index} would be so large that the step an ordinary gradient gives \
                 parameter {index} falls below f64 resolution (the scorer could no longer move)"
            ),
            StateFault::Saturated { index } => {
                write!(f, "would give dataset {index} probability exactly 0")
            }
        }
    }
}

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
    /// The REINFORCE update produced non-finite scorer parameters (the logits or the MLP's
    /// weights; rewards too large); the scheduler state was left as it was.
    #[error(
        "the scorer update overflowed (rewards too large): the scorer's parameters would not be \
         finite; the mixture was kept"
    )]
    UpdateDiverged,
    /// A reward is finite but outside the accepted range of its family ([`reward_range`]).
    #[error(
        "reward of dataset {index} is {value:e}, outside the accepted range [{min}, {max}] of \
         {kind:?} rewards"
    )]
    RewardOutOfRange {
        /// Index of the dataset.
        index: usize,
        /// The offending reward.
        value: f64,
        /// The reward family whose range applies.
        kind: RewardKind,
        /// The smallest accepted reward.
        min: f64,
        /// The largest accepted reward.
        max: f64,
    },
    /// The update would leave part of the scheduler's state unusable (not finite, a scorer that
    /// can no longer move, a probability of exactly 0); it was refused and nothing changed.
    #[error("update refused: `{field}` {fault}; the mixture was kept")]
    StateRefused {
        /// The part of the state: `adam.m`, `adam.v`, `adam.beta_powers`, `ema` or `mixture`.
        field: &'static str,
        /// What would be wrong with it.
        fault: StateFault,
    },
    /// A dataset of size 0 under MoS: its prior entry and so its logit would be exactly 0 and
    /// `-inf`, and no update could ever give it weight.
    #[error(
        "dataset {index} has size 0: the MoS scorer cannot learn a weight for a dataset without \
         examples (its prior probability would be exactly 0)"
    )]
    EmptyDataset {
        /// Index of the dataset.
        index: usize,
    },
    /// The prior q_tau underflows to exactly 0 for a non-empty dataset (a tiny
    /// `scheduler.init_temperature` with very unequal sizes): its logit would be `-inf`.
    #[error(
        "scheduler.init_temperature = {tau:e} is too small for these dataset sizes: the prior \
         q_tau gives dataset {index} probability exactly 0 (it underflows), so the MoS scorer \
         could never learn a weight for it; raise scheduler.init_temperature"
    )]
    PriorUnderflow {
        /// Index of the dataset.
        index: usize,
        /// The temperature.
        tau: f64,
    },
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

impl MixtureError {
    /// The `reason` label under which a refused update of this kind is counted (one of
    /// [`REJECT_REASONS`]).
    pub fn reject_reason(&self) -> &'static str {
        match self {
            MixtureError::RewardOutOfRange { .. } => "reward_out_of_range",
            MixtureError::NonFiniteReward { .. } => "non_finite_reward",
            MixtureError::LengthMismatch { .. }
            | MixtureError::WrongProbeKind { .. }
            | MixtureError::BadProbe { .. } => "bad_statistics",
            MixtureError::UpdateDiverged
            | MixtureError::StateRefused {
                fault: StateFault::NotFinite { .. },
                ..
            } => "non_finite_state",
            MixtureError::StateRefused {
                fault: StateFault::CannotMove { .. },
                ..
            } => "scorer_stuck",
            MixtureError::StateRefused {
                fault: StateFault::Saturated { .. },
                ..
            } => "mixture_saturated",
            MixtureError::NoDatasets
            | MixtureError::AllEmpty
            | MixtureError::InvalidTemperature(_)
            | MixtureError::MissingWeight { .. }
            | MixtureError::InvalidWeight { .. }
            | MixtureError::InvalidPrior(_)
            | MixtureError::ScorerFit { .. }
            | MixtureError::TargetOutOfRange { .. }
            | MixtureError::NotLearned
            | MixtureError::InvalidSetting { .. }
            | MixtureError::EmptyDataset { .. }
            | MixtureError::PriorUnderflow { .. } => "other",
        }
    }
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
