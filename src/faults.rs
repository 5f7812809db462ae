//! Fault injection for the reliability tests: deliberate failures at named points, switched on by
//! the `MOS_FAULTS` environment variable and inert otherwise.
//!
//! A production run never sets the variable, and every hook is a cheap check of an empty list.
//! The hooks exist because the failures they simulate (a loader thread dying on a poisoned record,
//! a diverging loss, the process dying half-way through a checkpoint) cannot be produced on demand
//! from the outside in a test that must pass every time.
//!
//! Syntax: comma-separated entries.
//! - `loader_panic=DATASET@SEQ` or `loader_panic=DATASET@SEQ:TIMES`: the loader of `DATASET`
//!   panics when it is about to produce stream position `SEQ`, the first `TIMES` times (default 1;
//!   `TIMES` may be `always`).
//! - `nan_loss=STEP` or `nan_loss=STEP:COUNT`: the steps `STEP..STEP+COUNT` (1-based step numbers
//!   as in the logs) get a non-finite loss, each at most once per process, so that a rollback
//!   that re-runs those steps sees clean ones.
//! - `abort_in_checkpoint=STEP`: the process aborts (as if killed) after writing the model file of
//!   the checkpoint at `STEP` and before its manifest.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The environment variable read once, at the first hook call.
pub const ENV: &str = "MOS_FAULTS";

#[derive(Debug, Clone, PartialEq)]
enum Fault {
    LoaderPanic {
        dataset: String,
        seq: u64,
        times: Option<u64>,
    },
    NanLoss {
        step: u64,
        count: u64,
    },
    AbortInCheckpoint {
        step: u64,
    },
}

#[derive(Debug, Default)]
struct Faults {
    list: Vec<Fault>,
    /// How many times each (fault index, position) has fired.
    fired: Mutex<HashMap<(usize, u64), u64>>,
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let spec = std::env::var(ENV).unwrap_or_default();
        let mut list = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse(entry) {
                Some(f) => {
                    tracing::warn!(fault = entry, "fault injection enabled ({ENV})");
                    list.push(f);
                }
                None => tracing::error!(entry, "ignoring an unparsable {ENV} entry"),
            }
        }
        Faults {
            list,
            fired: Mutex::new(HashMap::new()),
        }
    })
}

fn parse(entry: &str) -> Option<Fault> {
    let (kind, arg) = entry.split_once('=')?;
    let (main, count) = match arg.split_once(':') {
        Some((m, c)) => (m, Some(c)),
        None => (arg, None),
    };
    match kind {
        "loader_panic" => {
            let (dataset, seq) = main.split_once('@')?;
            let times = match count {
                None => Some(1),
                Some("always") => None,
                Some(c) => Some(c.parse().ok()?),
            };
            Some(Fault::LoaderPanic {
                dataset: dataset.to_string(),
                seq: seq.parse().ok()?,
                times,
            })
        }
        "nan_loss" => Some(Fault::NanLoss {
            step: main.parse().ok()?,
            count: count.map_or(Some(1), |c| c.parse().ok())?,
        }),
        "abort_in_checkpoint" => Some(Fault::AbortInCheckpoint {
            step: main.parse().ok()?,
        }),
        _ => None,
    }
}

/// Records one firing of fault `i` at `pos`, allowed `limit` times (None = always); returns
/// whether it fires.
fn fire(i: usize, pos: u64, limit: Option<u64>) -> bool {
    let f = faults();
    let Ok(mut fired) = f.fired.lock() else {
        return false;
    };
    let n = fired.entry((i, pos)).or_insert(0);
    if limit.is_some_and(|l| *n >= l) {
        return false;
    }
    *n += 1;
    true
}

/// Whether the loader of `dataset` must panic before producing stream position `seq`.
pub fn loader_panic(dataset: &str, seq: u64) -> bool {
    let f = faults();
    f.list.iter().enumerate().any(|(i, fault)| match fault {
        Fault::LoaderPanic {
            dataset: d,
            seq: s,
            times,
        } if d == dataset && *s == seq => fire(i, seq, *times),
        _ => false,
    })
}

/// Whether step `step` (1-based) must see a non-finite loss.
pub fn nan_loss(step: u64) -> bool {
    let f = faults();
    f.list.iter().enumerate().any(|(i, fault)| match fault {
        Fault::NanLoss { step: s, count } if step >= *s && step < s + count => {
            fire(i, step, Some(1))
        }
        _ => false,
    })
}

/// Whether the checkpoint of `step` must abort the process half-way.
pub fn abort_in_checkpoint(step: u64) -> bool {
    faults()
        .list
        .iter()
        .any(|f| matches!(f, Fault::AbortInCheckpoint { step: s } if *s == step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        assert_eq!(
            parse("loader_panic=prose@40:3"),
            Some(Fault::LoaderPanic {
                dataset: "prose".into(),
                seq: 40,
                times: Some(3)
            })
        );
        assert_eq!(
            parse("loader_panic=prose@40:always"),
            Some(Fault::LoaderPanic {
                dataset: "prose".into(),
                seq: 40,
                times: None
            })
        );
        assert_eq!(
            parse("nan_loss=12:3"),
            Some(Fault::NanLoss { step: 12, count: 3 })
        );
        assert_eq!(
            parse("abort_in_checkpoint=20"),
            Some(Fault::AbortInCheckpoint { step: 20 })
        );
        assert_eq!(parse("nan_loss=x"), None);
        assert_eq!(parse("bogus=1"), None);
        assert_eq!(parse("loader_panic=prose"), None);
    }
}
