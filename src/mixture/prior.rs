//! Static mixtures over dataset sizes (method.md 1 and 5): the temperature prior q_tau and the
//! baseline strategies.

use super::{softmax_into, MixtureError};
use crate::config::Strategy;

/// The temperature prior `q_tau(i) = q(i)^(1/tau) / sum_n q(n)^(1/tau)` with `q(i) = M_i / sum M`.
///
/// `tau = 1` is proportional sampling, `tau = f64::INFINITY` is uniform. It is computed as a
/// softmax of `(ln M_i - ln M_max) / tau`, which is algebraically the same and never overflows or
/// produces NaN, even for `tau` near 0 (the largest datasets share all the mass) or huge sizes.
///
/// A dataset of size 0 always gets probability 0 (it cannot be sampled), also for `tau = inf`
/// (uniform over the non-empty datasets). If every size is 0 the result is uniform, so this
/// function is total; [`static_mixture`] reports that case as [`MixtureError::AllEmpty`].
/// `tau` must be positive or infinite (config validation guarantees it); a non-positive or NaN
/// `tau` is treated as infinite.
pub fn q_tau(sizes: &[u64], tau: f64) -> Vec<f64> {
    let n = sizes.len();
    if n == 0 {
        return Vec::new();
    }
    if sizes.iter().all(|&m| m == 0) {
        return vec![1.0 / n as f64; n];
    }
    let tau = if tau > 0.0 { tau } else { f64::INFINITY };
    let ln_max = (sizes.iter().copied().max().unwrap_or(1) as f64).ln();
    let scaled: Vec<f64> = sizes
        .iter()
        .map(|&m| {
            if m == 0 {
                f64::NEG_INFINITY
            } else {
                // <= 0 by construction; dividing a finite non-positive number by tau (even a tiny
                // or infinite one) gives a value in [-inf, 0], never NaN.
                ((m as f64).ln() - ln_max) / tau
            }
        })
        .collect();
    let mut out = vec![0.0; n];
    softmax_into(&scaled, &mut out);
    out
}

/// The MoS scorer's starting mixture: `q_tau(sizes, tau)` (method.md 2), refused when an entry
/// is exactly 0.
///
/// A zero entry would become a `-inf` logit, which no REINFORCE step can move and which every
/// later update's finiteness check would trip on: the mixture would freeze for the whole run.
/// It arises from a dataset of size 0 ([`MixtureError::EmptyDataset`]) or from a temperature so
/// small that `q(i)^(1/tau)` underflows for a smaller dataset ([`MixtureError::PriorUnderflow`],
/// naming `scheduler.init_temperature`). Refusing it at start-up is what a user can act on; a
/// dataset that must never be sampled can simply be left out.
pub fn mos_prior(sizes: &[u64], tau: f64) -> Result<Vec<f64>, MixtureError> {
    if sizes.is_empty() {
        return Err(MixtureError::NoDatasets);
    }
    if sizes.iter().all(|&m| m == 0) {
        return Err(MixtureError::AllEmpty);
    }
    if tau.is_nan() || tau <= 0.0 {
        return Err(MixtureError::InvalidTemperature(tau));
    }
    if let Some(index) = sizes.iter().position(|&m| m == 0) {
        return Err(MixtureError::EmptyDataset { index });
    }
    let q = q_tau(sizes, tau);
    if let Some(index) = q.iter().position(|&x| x == 0.0) {
        return Err(MixtureError::PriorUnderflow { index, tau });
    }
    Ok(q)
}

/// The mixture of a static strategy (method.md 5).
///
/// - `Uniform`: `q_tau` with tau = inf; `Proportional`: tau = 1; `Temperature`: tau =
///   `temperature`.
/// - `Fixed`: `weights` normalised to sum to 1; every weight must be present, positive, finite.
/// - `Mos`: the scorer's starting point, [`mos_prior`] with tau = `temperature` (callers pass
///   `scheduler.init_temperature`), which refuses a zero entry.
///
/// `weights` is only read for `Fixed` (it must then have one entry per dataset).
pub fn static_mixture(
    strategy: Strategy,
    sizes: &[u64],
    temperature: f64,
    weights: &[Option<f64>],
) -> Result<Vec<f64>, MixtureError> {
    if sizes.is_empty() {
        return Err(MixtureError::NoDatasets);
    }
    let tau = match strategy {
        Strategy::Uniform => f64::INFINITY,
        Strategy::Proportional => 1.0,
        Strategy::Temperature => temperature,
        Strategy::Mos => return mos_prior(sizes, temperature),
        Strategy::Fixed => return fixed_mixture(sizes.len(), weights),
    };
    if tau.is_nan() || tau <= 0.0 {
        return Err(MixtureError::InvalidTemperature(tau));
    }
    if sizes.iter().all(|&m| m == 0) {
        return Err(MixtureError::AllEmpty);
    }
    Ok(q_tau(sizes, tau))
}

fn fixed_mixture(n: usize, weights: &[Option<f64>]) -> Result<Vec<f64>, MixtureError> {
    if weights.len() != n {
        return Err(MixtureError::LengthMismatch {
            what: "fixed weights",
            expected: n,
            found: weights.len(),
        });
    }
    let mut w = Vec::with_capacity(n);
    for (index, wi) in weights.iter().enumerate() {
        match *wi {
            None => return Err(MixtureError::MissingWeight { index }),
            Some(value) if !(value.is_finite() && value > 0.0) => {
                return Err(MixtureError::InvalidWeight { index, value })
            }
            Some(value) => w.push(value),
        }
    }
    let total: f64 = w.iter().sum();
    if !total.is_finite() {
        // Each weight is finite but their sum overflowed: rescale first.
        let max = w.iter().copied().fold(0.0, f64::max);
        w.iter_mut().for_each(|x| *x /= max);
    }
    let total: f64 = w.iter().sum();
    Ok(w.into_iter().map(|x| x / total).collect())
}
