//! Named random streams derived from `runtime.seed`.

/// Derives an independent RNG seed for a named stream, so data, probes, model initialisation
/// and scheduler never share random numbers (design invariant 5): turning rewards on or off
/// never changes which training examples are drawn.
pub fn stream_seed(seed: u64, stream: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(stream.as_bytes(), seed)
}
