//! The schema of `mixture.jsonl`: a start record, then one update record per publish. The
//! scheduler actor and the service write these types; `replay`, `report`, `experiment` and the
//! tests read the same ones.

use serde::{Deserialize, Serialize};

use crate::config::RewardKind;

/// One mixture-log line (`mixture.jsonl`), the record `replay` re-runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpdateRecord {
    /// Training step of the probe/report that triggered the update.
    pub step: u64,
    /// Version of the mixture published by this update.
    pub version: u64,
    /// Mixture before the update.
    pub before: Vec<f64>,
    /// Mixture after the update.
    pub after: Vec<f64>,
    /// Reward family (absent for static strategies).
    pub reward: Option<RewardKind>,
    /// Raw rewards per dataset (empty for static strategies).
    pub raw: Vec<f64>,
    /// Smoothed rewards per dataset: what the scorer update used.
    pub smoothed: Vec<f64>,
    /// Examples drawn per dataset since the previous update.
    pub counts: Vec<u64>,
    /// Dataset names, in order.
    pub names: Vec<String>,
}

/// The first line of `mixture.jsonl`: everything `replay` needs to rebuild the scheduler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartRecord {
    /// Dataset names, in order.
    pub names: Vec<String>,
    /// Training-split sizes (records), the input of the prior.
    pub sizes: Vec<u64>,
    /// The scheduler settings of the run.
    pub scheduler: crate::config::SchedulerConfig,
    /// MoSpec target index.
    pub target: Option<usize>,
    /// Seed of the scheduler's own RNG stream.
    pub seed: u64,
    /// The mixture published at start-up.
    pub prior: Vec<f64>,
}

/// One line of `mixture.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MixtureLogLine {
    /// Written once when the scheduler starts.
    Start(StartRecord),
    /// Written at every update.
    Update(UpdateRecord),
}

/// The `reward` label value of a reward family.
pub fn reward_label(kind: RewardKind) -> &'static str {
    match kind {
        RewardKind::Cossim => "cossim",
        RewardKind::Diff => "diff",
        RewardKind::Constant => "constant",
    }
}
