//! The seeded dataset sampler: which dataset the next example (or batch) comes from.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Draws dataset indices from a mixture with its own ChaCha8 stream.
///
/// Deterministic given the seed, and serialisable (the RNG's seed, stream and position), so a
/// resumed run draws exactly the datasets it would have drawn. With `sample_unit = "example"` the
/// trainer calls [`MixtureSampler::draw`] once per example; with `sample_unit = "batch"` (the
/// paper's Algorithm 1) it calls it ONCE per batch and takes every example of the batch from the
/// drawn dataset. Either way each call consumes exactly one `f64` from the stream, so the draw
/// sequence does not depend on the mixture values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSampler {
    rng: ChaCha8Rng,
}

impl MixtureSampler {
    /// A sampler seeded with `seed` (derive it from the run seed, separately from the probe and
    /// training-data streams).
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Draws one index from `p` by inverse CDF on a uniform `f64` in [0, 1).
    ///
    /// `p` need not sum exactly to 1 (the uniform is scaled by the actual total). Entries that are
    /// zero, negative or not finite are never returned.
    ///
    /// # Panics
    /// If `p` has no positive finite entry (there is nothing to draw from; a caller bug, since
    /// every mixture this module produces has one).
    pub fn draw(&mut self, p: &[f64]) -> usize {
        let valid = |x: f64| x.is_finite() && x > 0.0;
        let total: f64 = p.iter().copied().filter(|&x| valid(x)).sum();
        let last = p
            .iter()
            .rposition(|&x| valid(x))
            .expect("MixtureSampler::draw: the mixture has no positive entry");
        let u: f64 = self.rng.random::<f64>();
        let target = u * total;
        let mut cum = 0.0;
        for (i, &x) in p.iter().enumerate() {
            if valid(x) {
                cum += x;
                if target < cum {
                    return i;
                }
            }
        }
        // Rounding can leave `target` a hair above the final cumulative sum.
        last
    }

    /// Draws `count` indices (one [`MixtureSampler::draw`] each), e.g. one per example of a batch.
    pub fn draw_n(&mut self, p: &[f64], count: usize) -> Vec<usize> {
        (0..count).map(|_| self.draw(p)).collect()
    }
}
