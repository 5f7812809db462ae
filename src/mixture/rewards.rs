//! Rewards (method.md 3 and 4): transferability (COSSIM), difficulty (DIFF), the MoSpec variants
//! and the EMA over the learning trajectory.
//!
//! The free functions are total: they never panic and never return NaN for finite input (a zero
//! vector has cosine 0 with everything). Shape checks with typed errors happen in
//! [`super::MosScheduler::rewards_from_probes`].

use serde::{Deserialize, Serialize};

use super::exact;

/// Mean of per-example embeddings, accumulated in `f64` (method.md 3.1: z_i is the mean of the
/// example embeddings e over the L probe examples).
///
/// Examples are expected to have the same length; a shorter one counts as zero-padded. An empty
/// slice gives an empty vector.
pub fn mean_embedding(examples: &[Vec<f32>]) -> Vec<f64> {
    let dim = examples.iter().map(Vec::len).max().unwrap_or(0);
    let mut z = vec![0.0f64; dim];
    for e in examples {
        for (zi, &x) in z.iter_mut().zip(e) {
            *zi += f64::from(x);
        }
    }
    let inv = 1.0 / examples.len().max(1) as f64;
    z.iter_mut().for_each(|x| *x *= inv);
    z
}

/// Cosine similarity, clamped to [-1, 1]; 0 when either vector has zero norm (or is not finite).
/// Missing trailing entries of the shorter vector count as zeros.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = norm(a);
    let nb = norm(b);
    let c = dot / (na * nb);
    if na > 0.0 && nb > 0.0 && c.is_finite() {
        c.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Unit vector in the direction of `a`, or all zeros if `a` has zero (or non-finite) norm.
fn unit(a: &[f64]) -> Vec<f64> {
    let n = norm(a);
    if n > 0.0 && n.is_finite() {
        a.iter().map(|x| x / n).collect()
    } else {
        vec![0.0; a.len()]
    }
}

/// MoS COSSIM (method.md 3.1): `R_i = (1/N) sum_n cos(z_i, z_n)`, where `z[i]` is dataset i's mean
/// embedding. The term n = i contributes exactly 1 (also for a zero vector).
///
/// Computed in O(N d) rather than O(N^2 d): with unit vectors u_n and U = sum_n u_n,
/// `sum_{n != i} cos(z_i, z_n) = <u_i, U> - <u_i, u_i>`. That matters at N = 1024 datasets with
/// embeddings of a few thousand dimensions.
pub fn cossim_rewards(z: &[Vec<f64>]) -> Vec<f64> {
    let n = z.len();
    if n == 0 {
        return Vec::new();
    }
    let units: Vec<Vec<f64>> = z.iter().map(|zi| unit(zi)).collect();
    let dim = units.iter().map(Vec::len).max().unwrap_or(0);
    let mut total = vec![0.0; dim];
    for u in &units {
        for (t, x) in total.iter_mut().zip(u) {
            *t += x;
        }
    }
    units
        .iter()
        .map(|u| {
            let with_all: f64 = u.iter().zip(&total).map(|(a, b)| a * b).sum();
            let self_dot: f64 = u.iter().map(|a| a * a).sum();
            // Each off-diagonal cosine lies in [-1, 1], so their sum lies in [-(N-1), N-1].
            let others = (with_all - self_dot).clamp(-((n - 1) as f64), (n - 1) as f64);
            (1.0 + others) / n as f64
        })
        .collect()
}

/// MoSpec COSSIM (method.md 4): `R_i = cos(z_i, z_target)`; the target's own reward is exactly 1.
///
/// # Panics
/// If `target >= z.len()`.
pub fn cossim_target_rewards(z: &[Vec<f64>], target: usize) -> Vec<f64> {
    let zt = &z[target];
    z.iter()
        .enumerate()
        .map(|(i, zi)| if i == target { 1.0 } else { cosine(zi, zt) })
        .collect()
}

/// MoS DIFF (method.md 3.2): `R_i = (1/L) sum_j ppl_now[i][j] / ppl_0[i][j]`, over the fixed probe
/// examples j of dataset i. When `ppl_now == ppl_0` every ratio, and so every reward, is exactly 1.
///
/// Rows are paired element-wise (extra entries of the longer row are ignored); a dataset with no
/// probe gives the neutral ratio 1.
pub fn diff_rewards(ppl_now: &[Vec<f64>], ppl_0: &[Vec<f64>]) -> Vec<f64> {
    ppl_now
        .iter()
        .zip(ppl_0)
        .map(|(now, init)| {
            let l = now.len().min(init.len());
            if l == 0 {
                return 1.0;
            }
            let sum: f64 = now.iter().zip(init).map(|(a, b)| a / b).sum();
            sum / l as f64
        })
        .collect()
}

/// MoSpec DIFF (method.md 4): multiplies only the target's reward by `target_boost`.
///
/// # Panics
/// If `target >= rewards.len()`.
pub fn mospec_diff(mut rewards: Vec<f64>, target: usize, target_boost: f64) -> Vec<f64> {
    rewards[target] *= target_boost;
    rewards
}

/// The learning-trajectory EMA (method.md 3.3): `R_t = beta * r_t + (1 - beta) * R_{t-1}`.
///
/// `beta` weighs the NEW reward (the paper's convention). The state starts at the first observed
/// reward (not at 1 as in the reference code), so the first smoothed reward equals the first raw
/// one exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ema {
    #[serde(with = "exact::f64_bits")]
    beta: f64,
    #[serde(with = "exact::opt_vec_bits")]
    state: Option<Vec<f64>>,
}

impl Ema {
    /// An EMA with weight `beta` on the new reward and no observation yet.
    pub fn new(beta: f64) -> Self {
        Self { beta, state: None }
    }

    /// The weight of the new reward.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The current smoothed reward, `None` before the first observation.
    pub fn state(&self) -> Option<&[f64]> {
        self.state.as_deref()
    }

    /// Folds in one reward vector and returns the smoothed one. A vector of a different length
    /// than the state (the dataset set changed) restarts the average from it.
    pub fn observe(&mut self, r: &[f64]) -> Vec<f64> {
        let beta = self.beta;
        match &mut self.state {
            Some(s) if s.len() == r.len() => {
                for (si, &ri) in s.iter_mut().zip(r) {
                    *si = beta * ri + (1.0 - beta) * *si;
                }
            }
            slot => *slot = Some(r.to_vec()),
        }
        self.state.clone().unwrap_or_default()
    }
}
