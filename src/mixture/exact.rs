//! Serde helpers that store `f64` values as their IEEE-754 bit patterns (`u64`).
//!
//! Why: serde_json's default float parser is "best effort" and may land one ULP away from the
//! value that was written, which would break the bit-exact resume and replay guarantees of the
//! scheduler. Integers round-trip exactly in every serde format.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A single `f64` stored as bits.
pub(crate) mod f64_bits {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        v.to_bits().serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// A `Vec<f64>` stored as a vector of bits.
pub(crate) mod vec_bits {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.to_bits()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(f64::from_bits).collect())
    }
}

/// An `Option<Vec<f64>>` stored as an optional vector of bits.
pub(crate) mod opt_vec_bits {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>())
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<f64>>, D::Error> {
        Option::<Vec<u64>>::deserialize(d)
            .map(|o| o.map(|v| v.into_iter().map(f64::from_bits).collect()))
    }
}
