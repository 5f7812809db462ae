//! The MoS scorer psi (method.md 2.1) and its REINFORCE update (method.md 2.2).
//!
//! Two parameterisations produce p_psi = softmax(logits):
//! - `Logits`: N free logits (the reference code); initialised to ln(prior) exactly.
//! - `Mlp`: the paper's two-layer network on an all-ones availability vector
//!   (N -> 32, tanh, 32 -> N); initialised from a seeded RNG, then fitted to the prior by MSE.
//!
//! Gradients are analytic. Every loop runs in index order, so results are bit-reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{exact, softmax_into, Adam, MixtureError};
use crate::config::ScorerKind;

/// Hidden width of the MLP scorer (method.md 2.1).
pub const MLP_HIDDEN: usize = 32;

/// The MLP is fitted to its prior until the mean squared error of the probabilities is below this.
pub const MLP_FIT_MSE: f64 = 1e-10;

/// Iteration cap of the MLP fit; [`Scorer::new`] fails with [`MixtureError::ScorerFit`] beyond it.
pub const MLP_FIT_MAX_ITERS: usize = 50_000;

/// Adam learning rate used only for the MLP's initial fit (not the REINFORCE updates).
const MLP_FIT_LR: f64 = 1e-2;

/// The scorer psi: a parameterisation of the mixture p_psi over N datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scorer {
    /// N free logits; p = softmax(w).
    Logits {
        /// The logits, one per dataset.
        #[serde(with = "exact::vec_bits")]
        w: Vec<f64>,
    },
    /// The two-layer MLP on an all-ones input.
    Mlp(MlpScorer),
}

/// Weights of the MLP scorer, stored flat so that one [`Adam`] can optimise them.
///
/// Layout (row-major): `W1` (32 x N), `b1` (32), `W2` (N x 32), `b2` (N). With the all-ones input,
/// the hidden layer is `h = tanh(W1 * 1 + b1)` and the logits are `W2 h + b2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpScorer {
    n: usize,
    #[serde(with = "exact::vec_bits")]
    params: Vec<f64>,
}

impl MlpScorer {
    fn n_params(n: usize) -> usize {
        2 * MLP_HIDDEN * n + MLP_HIDDEN + n
    }

    /// Offsets of b1, W2 and b2 in the flat vector (W1 starts at 0).
    fn offsets(n: usize) -> (usize, usize, usize) {
        let b1 = MLP_HIDDEN * n;
        let w2 = b1 + MLP_HIDDEN;
        let b2 = w2 + n * MLP_HIDDEN;
        (b1, w2, b2)
    }

    /// Seeded initialisation as PyTorch's `nn.Linear`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    fn init(n: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (_, w2, _) = Self::offsets(n);
        // Layer 1 (W1, b1) has fan-in N, layer 2 (W2, b2) fan-in 32.
        let a1 = 1.0 / (n as f64).sqrt();
        let a2 = 1.0 / (MLP_HIDDEN as f64).sqrt();
        let params = (0..Self::n_params(n))
            .map(|k| {
                let a = if k < w2 { a1 } else { a2 };
                rng.random_range(-a..a)
            })
            .collect();
        Self { n, params }
    }

    /// The flat parameter vector.
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// Forward pass: fills `h` (hidden activations) and `logits`.
    fn forward(&self, h: &mut [f64], logits: &mut [f64]) {
        forward(self.n, &self.params, h, logits);
    }
}

/// MLP forward pass over a flat parameter slice (see [`MlpScorer`] for the layout).
fn forward(n: usize, params: &[f64], h: &mut [f64], logits: &mut [f64]) {
    let (b1, w2, b2) = MlpScorer::offsets(n);
    for (k, hk) in h.iter_mut().enumerate() {
        // The input is all ones, so layer 1 is a row sum plus the bias.
        let row = &params[k * n..(k + 1) * n];
        let a = params[b1 + k] + row.iter().sum::<f64>();
        *hk = a.tanh();
    }
    for (i, o) in logits.iter_mut().enumerate() {
        let row = &params[w2 + i * MLP_HIDDEN..w2 + (i + 1) * MLP_HIDDEN];
        let dot: f64 = row.iter().zip(h.iter()).map(|(w, h)| w * h).sum();
        *o = params[b2 + i] + dot;
    }
}

/// MLP backward pass: given d loss / d logits (`g_o`) and the hidden activations `h`, writes the
/// gradient of every parameter into `grad`; `g_h` is scratch of length [`MLP_HIDDEN`].
fn backward(n: usize, params: &[f64], h: &[f64], g_o: &[f64], g_h: &mut [f64], grad: &mut [f64]) {
    let (b1, w2, b2) = MlpScorer::offsets(n);
    g_h.iter_mut().for_each(|g| *g = 0.0);
    for (i, &go) in g_o.iter().enumerate() {
        grad[b2 + i] = go;
        let row = &params[w2 + i * MLP_HIDDEN..w2 + (i + 1) * MLP_HIDDEN];
        let grow = &mut grad[w2 + i * MLP_HIDDEN..w2 + (i + 1) * MLP_HIDDEN];
        for k in 0..MLP_HIDDEN {
            grow[k] = go * h[k];
            g_h[k] += row[k] * go;
        }
    }
    for k in 0..MLP_HIDDEN {
        // tanh' = 1 - tanh^2; the input is 1, so every W1 entry of row k gets the same gradient.
        let ga = g_h[k] * (1.0 - h[k] * h[k]);
        grad[b1 + k] = ga;
        grad[k * n..(k + 1) * n].iter_mut().for_each(|g| *g = ga);
    }
}

/// Scratch buffers of one update, allocated once per update and reused by every inner step.
struct Work {
    logits: Vec<f64>,
    p: Vec<f64>,
    g_o: Vec<f64>,
    h: Vec<f64>,
    g_h: Vec<f64>,
    grad: Vec<f64>,
}

impl Work {
    fn new(n: usize, n_params: usize) -> Self {
        Self {
            logits: vec![0.0; n],
            p: vec![0.0; n],
            g_o: vec![0.0; n],
            h: vec![0.0; MLP_HIDDEN],
            g_h: vec![0.0; MLP_HIDDEN],
            grad: vec![0.0; n_params],
        }
    }
}

impl Scorer {
    /// A scorer over `prior.len()` datasets whose initial distribution is `prior`.
    ///
    /// `Logits` are set to `ln(prior)` exactly (a zero prior entry gives a `-inf` logit, i.e. a
    /// dataset that is never sampled). `Mlp` is initialised from `seed` and fitted to `prior` by
    /// minimising MSE(p, prior) with Adam until the MSE is below [`MLP_FIT_MSE`]; that fit uses
    /// its own throw-away optimiser, so the run's Adam starts fresh. Fails if `prior` is not a
    /// probability vector or the fit does not converge within [`MLP_FIT_MAX_ITERS`].
    pub fn new(kind: ScorerKind, prior: &[f64], seed: u64) -> Result<Self, MixtureError> {
        check_prior(prior)?;
        match kind {
            ScorerKind::Logits => Ok(Scorer::Logits {
                w: prior.iter().map(|q| q.ln()).collect(),
            }),
            ScorerKind::Mlp => fit_mlp(prior, seed).map(Scorer::Mlp),
        }
    }

    /// Which parameterisation this is.
    pub fn kind(&self) -> ScorerKind {
        match self {
            Scorer::Logits { .. } => ScorerKind::Logits,
            Scorer::Mlp(_) => ScorerKind::Mlp,
        }
    }

    /// Number of datasets N.
    pub fn n_datasets(&self) -> usize {
        match self {
            Scorer::Logits { w } => w.len(),
            Scorer::Mlp(m) => m.n,
        }
    }

    /// Number of trainable parameters (the size of the matching [`Adam`]).
    pub fn n_params(&self) -> usize {
        match self {
            Scorer::Logits { w } => w.len(),
            Scorer::Mlp(m) => m.params.len(),
        }
    }

    /// Every trainable parameter, in the order of the matching [`Adam`]'s moments.
    pub fn params(&self) -> &[f64] {
        match self {
            Scorer::Logits { w } => w,
            Scorer::Mlp(m) => &m.params,
        }
    }

    /// The parameters that each set one logit with a gradient of exactly that logit's: every
    /// logit of `Logits`, the output biases `b2` of `Mlp`. If each of them can still move, the
    /// mixture can (the scheduler's "can still move" check reads only these; an MLP's other
    /// weights may legitimately be stuck, e.g. behind a saturated tanh unit).
    pub(crate) fn direct_params(&self) -> std::ops::Range<usize> {
        match self {
            Scorer::Logits { w } => 0..w.len(),
            Scorer::Mlp(m) => {
                let (_, _, b2) = MlpScorer::offsets(m.n);
                b2..b2 + m.n
            }
        }
    }

    /// The scorer's logits (for `Logits` the parameters themselves; for `Mlp` its output layer).
    pub fn logits(&self) -> Vec<f64> {
        match self {
            Scorer::Logits { w } => w.clone(),
            Scorer::Mlp(m) => {
                let mut h = vec![0.0; MLP_HIDDEN];
                let mut o = vec![0.0; m.n];
                m.forward(&mut h, &mut o);
                o
            }
        }
    }

    /// The current mixture p_psi = softmax(logits); sums to 1.
    pub fn probs(&self) -> Vec<f64> {
        let logits = self.logits();
        let mut p = vec![0.0; logits.len()];
        softmax_into(&logits, &mut p);
        p
    }

    /// REINFORCE (method.md 2.2): `steps` Adam steps on `loss = -sum_i R_i ln p_i`.
    ///
    /// `rewards` must already be clipped to at least [`super::REWARD_FLOOR`] and have one entry
    /// per dataset; `adam` must have [`Scorer::n_params`] entries. Allocates only its scratch
    /// buffers, once, before the inner loop.
    pub(crate) fn reinforce(&mut self, adam: &mut Adam, rewards: &[f64], lr: f64, steps: usize) {
        let n = self.n_datasets();
        debug_assert_eq!(rewards.len(), n);
        let total: f64 = rewards.iter().sum();
        let mut work = Work::new(n, self.n_params());
        let Work {
            logits,
            p,
            g_o,
            h,
            g_h,
            grad,
        } = &mut work;
        match self {
            Scorer::Logits { w } => {
                for _ in 0..steps {
                    softmax_into(w, p);
                    // d loss / d w_j = p_j * sum_i R_i - R_j
                    for ((g, &pj), &rj) in grad.iter_mut().zip(p.iter()).zip(rewards) {
                        *g = pj * total - rj;
                    }
                    adam.step(w, grad, lr);
                }
            }
            Scorer::Mlp(m) => {
                for _ in 0..steps {
                    forward(n, &m.params, h, logits);
                    softmax_into(logits, p);
                    for ((g, &pj), &rj) in g_o.iter_mut().zip(p.iter()).zip(rewards) {
                        *g = pj * total - rj;
                    }
                    backward(n, &m.params, h, g_o, g_h, grad);
                    adam.step(&mut m.params, grad, lr);
                }
            }
        }
    }
}

fn check_prior(prior: &[f64]) -> Result<(), MixtureError> {
    if prior.is_empty() {
        return Err(MixtureError::NoDatasets);
    }
    if let Some((i, q)) = prior
        .iter()
        .enumerate()
        .find(|(_, q)| !(q.is_finite() && **q >= 0.0))
    {
        return Err(MixtureError::InvalidPrior(format!(
            "entry {i} is {q}; probabilities must be finite and non-negative"
        )));
    }
    let sum: f64 = prior.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(MixtureError::InvalidPrior(format!(
            "entries sum to {sum}, not 1"
        )));
    }
    Ok(())
}

/// Fits a freshly initialised MLP to `prior` by MSE (method.md 2.1).
fn fit_mlp(prior: &[f64], seed: u64) -> Result<MlpScorer, MixtureError> {
    let n = prior.len();
    let mut mlp = MlpScorer::init(n, seed);
    // The MSE gradient w.r.t. the logits is tiny (~p * (p - q) / N); with the usual eps = 1e-8,
    // Adam would stall once it falls below eps. A negligible eps keeps Adam scale-invariant, which
    // is the same as minimising a rescaled MSE (same minimiser).
    let mut adam = Adam::with_settings(mlp.params.len(), 0.9, 0.999, 1e-30);
    let mut work = Work::new(n, mlp.params.len());
    let Work {
        logits,
        p,
        g_o,
        h,
        g_h,
        grad,
    } = &mut work;
    let mut mse = f64::INFINITY;
    for iter in 0..MLP_FIT_MAX_ITERS {
        forward(n, &mlp.params, h, logits);
        softmax_into(logits, p);
        mse = p
            .iter()
            .zip(prior)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / n as f64;
        if mse < MLP_FIT_MSE {
            return Ok(mlp);
        }
        // d mse / d p_i = 2 (p_i - q_i) / N; through the softmax:
        // d / d o_j = p_j * (dp_j - sum_i p_i dp_i).
        let scale = 2.0 / n as f64;
        let dot: f64 = p
            .iter()
            .zip(prior)
            .map(|(&pi, &qi)| pi * scale * (pi - qi))
            .sum();
        for ((g, &pj), &qj) in g_o.iter_mut().zip(p.iter()).zip(prior) {
            *g = pj * (scale * (pj - qj) - dot);
        }
        backward(n, &mlp.params, h, g_o, g_h, grad);
        // Decay the step late in the fit so Adam settles instead of oscillating around q.
        let lr = MLP_FIT_LR / (1.0 + iter as f64 / 1000.0);
        adam.step(&mut mlp.params, grad, lr);
    }
    Err(MixtureError::ScorerFit {
        mse,
        iterations: MLP_FIT_MAX_ITERS,
    })
}

/// Hooks for the gradient check in `mixture::tests`.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The MLP forward pass.
    pub(crate) fn forward(n: usize, params: &[f64], h: &mut [f64], logits: &mut [f64]) {
        super::forward(n, params, h, logits);
    }

    /// The analytic gradient of `-sum_i r_i ln p_i` w.r.t. every MLP parameter.
    pub(crate) fn reinforce_grad(n: usize, params: &[f64], r: &[f64]) -> Vec<f64> {
        let mut w = Work::new(n, params.len());
        super::forward(n, params, &mut w.h, &mut w.logits);
        softmax_into(&w.logits, &mut w.p);
        let total: f64 = r.iter().sum();
        for ((g, &pj), &rj) in w.g_o.iter_mut().zip(&w.p).zip(r) {
            *g = pj * total - rj;
        }
        backward(n, params, &w.h, &w.g_o, &mut w.g_h, &mut w.grad);
        w.grad
    }
}
