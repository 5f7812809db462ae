//! `replay`: re-runs the MoS scheduler on the rewards recorded in a `mixture.jsonl` and checks that
//! it reproduces every recorded mixture bit for bit (method.md section 7g).
//!
//! This is possible because the scheduler is pure, deterministic f64 maths (`mixture`) and the log
//! records the smoothed rewards each update used, plus a start record with everything needed to
//! rebuild the scheduler's initial state.

use std::path::Path;

use crate::mixture::MixtureLogLine;
use crate::mixture::{MixtureError, MixtureStrategy, Strategy};
use crate::runlog::{read_all, LogError};

/// Why a replay could not run or did not reproduce the log.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The log has no start record (written by an older version or truncated at the head).
    #[error("{0}: no start record (first line with \"kind\": \"start\")")]
    NoStart(String),
    /// The scheduler could not be rebuilt.
    #[error(transparent)]
    Mixture(#[from] MixtureError),
    /// A recorded mixture differs from the recomputed one.
    #[error("update {index} (step {step}): recorded {recorded:?}, recomputed {recomputed:?}")]
    Mismatch {
        /// 0-based update index.
        index: usize,
        /// Training step of the update.
        step: u64,
        /// The mixture in the log.
        recorded: Vec<f64>,
        /// The mixture the scheduler produces.
        recomputed: Vec<f64>,
    },
}

/// The outcome of a successful replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// Updates replayed.
    pub updates: usize,
    /// Updates whose mixture was recomputed by the scorer (the rest were static or kept).
    pub learned: usize,
    /// The last mixture.
    pub last: Vec<f64>,
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Replays `path` and checks every update.
pub fn replay(path: &Path) -> Result<ReplayReport, ReplayError> {
    let lines: Vec<MixtureLogLine> = read_all(path)?;
    let mut iter = lines.into_iter();
    let start = loop {
        match iter.next() {
            Some(MixtureLogLine::Start(s)) => break s,
            Some(_) => continue,
            None => return Err(ReplayError::NoStart(path.display().to_string())),
        }
    };
    let mut strategy = Strategy::from_start(&start)?;
    let mut current = strategy.probs();
    let (mut updates, mut learned) = (0, 0);
    for line in iter {
        let MixtureLogLine::Update(u) = line else {
            // A second start record means the run was resumed; replay checks one segment.
            break;
        };
        if !same_bits(&u.before, &current) {
            return Err(ReplayError::Mismatch {
                index: updates,
                step: u.step,
                recorded: u.before,
                recomputed: current,
            });
        }
        let (next, learnt) = strategy.replay(&u);
        learned += usize::from(learnt);
        if !same_bits(&u.after, &next) {
            return Err(ReplayError::Mismatch {
                index: updates,
                step: u.step,
                recorded: u.after,
                recomputed: next,
            });
        }
        current = next;
        updates += 1;
    }
    Ok(ReplayReport {
        updates,
        learned,
        last: current,
    })
}
