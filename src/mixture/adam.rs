//! A minimal Adam optimiser over a flat parameter vector (Kingma & Ba; PyTorch's formulation).
//!
//! One instance lives for the whole run inside the scheduler (method.md 2.2): its moments and step
//! count carry over between updates and are part of the checkpointed state.

use serde::{Deserialize, Serialize};

use super::exact;

/// Adam state: first and second moments per parameter, the step count, and the running powers of
/// the betas used for bias correction.
///
/// The powers are kept as running products rather than recomputed with `powi`/`powf`, because
/// multiplication is exactly reproducible across platforms and build profiles while `powi` is not
/// guaranteed to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    #[serde(with = "exact::vec_bits")]
    m: Vec<f64>,
    #[serde(with = "exact::vec_bits")]
    v: Vec<f64>,
    t: u64,
    #[serde(with = "exact::f64_bits")]
    beta1: f64,
    #[serde(with = "exact::f64_bits")]
    beta2: f64,
    #[serde(with = "exact::f64_bits")]
    eps: f64,
    #[serde(with = "exact::f64_bits")]
    beta1_pow: f64,
    #[serde(with = "exact::f64_bits")]
    beta2_pow: f64,
}

impl Adam {
    /// Adam for `n_params` parameters with the method's settings: betas 0.9 / 0.999, eps 1e-8.
    pub fn new(n_params: usize) -> Self {
        Self::with_settings(n_params, 0.9, 0.999, 1e-8)
    }

    /// Adam with explicit betas and epsilon.
    pub fn with_settings(n_params: usize, beta1: f64, beta2: f64, eps: f64) -> Self {
        Self {
            m: vec![0.0; n_params],
            v: vec![0.0; n_params],
            t: 0,
            beta1,
            beta2,
            eps,
            beta1_pow: 1.0,
            beta2_pow: 1.0,
        }
    }

    /// Number of parameters this state was created for.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether it optimises no parameter at all.
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Steps taken so far (over the whole run).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The first moment (one entry per parameter).
    pub fn first_moment(&self) -> &[f64] {
        &self.m
    }

    /// The second moment (one entry per parameter).
    pub fn second_moment(&self) -> &[f64] {
        &self.v
    }

    /// The first part of this state that is not finite, as the field's name and the entry:
    /// `adam.m`, `adam.v` (also for a negative entry, which the update cannot produce) or
    /// `adam.beta_powers` (entry 0 for beta1's, 1 for beta2's).
    pub(crate) fn non_finite(&self) -> Option<(&'static str, usize)> {
        if let Some(i) = self.m.iter().position(|x| !x.is_finite()) {
            return Some(("adam.m", i));
        }
        if let Some(i) = self.v.iter().position(|x| !(x.is_finite() && *x >= 0.0)) {
            return Some(("adam.v", i));
        }
        [self.beta1_pow, self.beta2_pow]
            .iter()
            .position(|x| !x.is_finite())
            .map(|i| ("adam.beta_powers", i))
    }

    /// The size of the step parameter `k` would take from an ordinary gradient of 1 (the size of
    /// an ordinary reward) if the second moment already held it: `lr / (sqrt(v_hat + 1) + eps)`,
    /// with `v_hat` the bias-corrected second moment (0 before the first step). The scheduler
    /// refuses an update after which this no longer changes a logit (see
    /// [`super::StateFault::CannotMove`]); Adam's first moment is left out on purpose, so that
    /// stale momentum cannot pass for the ability to follow a new gradient.
    pub(crate) fn unit_step(&self, k: usize, lr: f64) -> f64 {
        let v_hat = if self.t == 0 {
            0.0
        } else {
            self.v[k] / (1.0 - self.beta2_pow)
        };
        lr / ((v_hat + 1.0).sqrt() + self.eps)
    }

    /// One Adam step: `params -= lr * m_hat / (sqrt(v_hat) + eps)`. Allocates nothing.
    ///
    /// # Panics
    /// If `params` or `grads` do not have [`Adam::len`] entries (a programming error).
    pub fn step(&mut self, params: &mut [f64], grads: &[f64], lr: f64) {
        assert_eq!(params.len(), self.m.len(), "Adam: parameter count changed");
        assert_eq!(grads.len(), self.m.len(), "Adam: gradient count mismatch");
        self.t += 1;
        self.beta1_pow *= self.beta1;
        self.beta2_pow *= self.beta2;
        let bc1 = 1.0 - self.beta1_pow;
        let sqrt_bc2 = (1.0 - self.beta2_pow).sqrt();
        let step_size = lr / bc1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / sqrt_bc2 + eps;
            *p -= step_size * *m / denom;
        }
    }
}
