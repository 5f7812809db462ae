//! The wire types of the service's JSON API. `docs/openapi.yaml` describes the same shapes; keep
//! the two in step (the route list itself is checked by `tests/service.rs`).
//!
//! Requests reject unknown fields, so a misspelt field is an error naming it instead of being
//! silently ignored.

use serde::{Deserialize, Serialize};

use crate::mixture::{StartRecord, UpdateRecord};

/// `POST /v1/datasets`: the dataset list, in the order every later per-dataset array uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The datasets ("skills"); their sizes define the prior q_tau.
    pub datasets: Vec<DatasetSpec>,
}

/// One dataset of a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Unique name: ASCII letters, digits, `_`, `-` and `.` (the same rule as `[[datasets]] name`).
    pub name: String,
    /// Number of training examples; the input of the prior q_tau (method.md 1). Must be
    /// positive: MoS cannot learn a weight for an empty dataset.
    pub size: u64,
}

/// Per-example statistics of the DIFF reward under the current and the initial model, one row per
/// dataset, the same probe examples in the same order in both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairedStats {
    /// Under the current model theta_t.
    pub now: Vec<Vec<f64>>,
    /// Under the initial model theta_0.
    pub initial: Vec<Vec<f64>>,
}

/// `POST /v1/updates`: the statistics of one mixture update. Exactly one of `nll`,
/// `perplexities`, `embeddings` and `rewards` must be present.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The client's training step, recorded in the history. It must not be below the last
    /// accepted update's step (409); it defaults to the new version, or to the last accepted
    /// step when that is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// The order of the per-dataset arrays when it is not the registration order: every
    /// registered name exactly once. Unknown or missing names are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<Vec<String>>,
    /// Examples drawn per dataset since the previous update (recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Vec<u64>>,
    /// DIFF: per-example mean negative log-likelihoods (nats); perplexity = exp(NLL), computed
    /// exactly as the built-in reward actor does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<PairedStats>,
    /// DIFF: per-example perplexities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexities: Option<PairedStats>,
    /// COSSIM: per-dataset mean embedding z_i of the probe examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f64>>>,
    /// Final rewards for the REINFORCE update, used as given (after the 1e-6 floor): neither
    /// MoSpec nor the EMA is applied to them, exactly as `replay` feeds recorded rewards. Each
    /// must lie in the service's reward family's range (`mixture::reward_range`: at most 1e6
    /// in magnitude, not negative for DIFF), or the update is refused (422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Vec<f64>>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` when the service answers.
    pub status: String,
    /// The API version this service speaks ([`API_VERSION`], `info.version` of
    /// `docs/openapi.yaml`): a client refuses a service whose API it does not speak.
    pub api: String,
    /// Whether datasets have been registered.
    pub registered: bool,
    /// The current mixture version (absent before registration).
    pub version: Option<u64>,
}

/// The API version of this service: the path prefix (`/v1`) and `info.version` of
/// `docs/openapi.yaml`. A change a client could notice bumps it.
pub const API_VERSION: &str = "1";

/// `GET /v1/datasets`: the registration and the scheduler settings it runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The registered datasets, in order.
    pub datasets: Vec<DatasetSpec>,
    /// The start record, as the first line of `mixture.jsonl` holds it (prior, settings, seed).
    pub start: StartRecord,
}

/// `GET /v1/history`: the start record and accepted updates, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The start record (the same as the first line of `mixture.jsonl`).
    pub start: StartRecord,
    /// Updates with a version above `since`, oldest first, at most `limit`.
    pub updates: Vec<UpdateRecord>,
    /// The current mixture version; more updates remain when it exceeds the last one returned.
    pub version: u64,
}

/// Query of `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only updates with a version above this (default 0: all).
    #[serde(default)]
    pub since: u64,
    /// At most this many updates (default and maximum [`HISTORY_PAGE_MAX`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The largest page of `GET /v1/history`.
pub const HISTORY_PAGE_MAX: usize = 1000;

/// Every error response: `{"error": "..."}`, the message naming the offending field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, in a sentence.
    pub error: String,
}
