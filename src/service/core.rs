//! The service's state machine, without HTTP: registration, updates and the history around one
//! [`Strategy`] (the MoS scheduler). The HTTP layer (`http.rs`) only parses, authenticates and maps errors.
//!
//! Guarantees:
//! - Every write is all-or-nothing: an update is computed on a copy of the scheduler and committed
//!   (scheduler, history, log line, published mixture) only when every check has passed, so a
//!   refused request leaves the version, the mixture, the EMA state and the history untouched.
//! - Writes are serialised by one mutex and applied in the order they take it; versions are
//!   consecutive (1, 2, 3, ...) and the version equals the number of accepted updates; the
//!   recorded steps never decrease (a `step` below the last accepted one is a 409).
//! - The scheduler's own checks decide what is accepted: rewards in their family's range, and a
//!   new state (scorer, Adam moments, EMA, mixture) that is finite and can still move. A
//!   registration whose prior has an entry of exactly 0 is refused for the same reason.
//! - Reads of the mixture never take the mutex: they load the latest snapshot from a
//!   [`MixtureBoard`] (an `ArcSwap`), so a slow update never delays a reader.
//! - The arithmetic is the built-in path's: `MixtureStrategy::estimate` then
//!   `MixtureStrategy::apply`, with perplexities computed from NLLs as the reward actor computes
//!   them, so the same statistics give bit-identical mixtures.
//! - Nothing survives a restart except the optional `mixture.jsonl` (which `replay` checks).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{RewardKind, SchedulerConfig};
use crate::mixture::{
    reward_label, MixtureError, MixtureStrategy, ProbeInput, Strategy, UpdateInput,
};
use crate::mixture::{MixtureBoard, MixtureLogLine, MixtureSnapshot, StartRecord, UpdateRecord};
use crate::runlog::JsonlWriter;

use super::api::{
    DatasetSpec, Health, History, PairedStats, RegisterRequest, Registration, UpdateRequest,
    HISTORY_PAGE_MAX,
};

/// A refused or failed request: the HTTP status it maps to and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is not well-formed (JSON syntax, types, query string, unknown fields).
    #[error("{0}")]
    BadRequest(String),
    /// 401: a write without the right bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists for another method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the request does not fit the service's state (no datasets yet, registered twice, a
    /// `step` below the last accepted update's).
    #[error("{0}")]
    Conflict(String),
    /// 413: the body exceeds `service.max_body_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// 422: well-formed but invalid values (lengths, names, NaN, non-positive perplexities,
    /// rewards outside their accepted range, an update the scheduler's state checks refuse).
    #[error("{0}")]
    Invalid(String),
    /// 500: the service could not record an accepted update (the mixture log failed).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge(_) => 413,
            ApiError::Invalid(_) => 422,
            ApiError::Internal(_) => 500,
        }
    }
}

/// What exists once datasets are registered.
#[derive(Debug)]
struct Registered {
    start: StartRecord,
    board: MixtureBoard,
}

/// The mutable half, behind the mutex.
#[derive(Debug)]
struct Inner {
    strategy: Option<Strategy>,
    history: Vec<UpdateRecord>,
    log: Option<JsonlWriter>,
}

/// The scheduler service's state: the settings it was started with, the registration (set once)
/// and the scheduler with its history. Shared between request handlers as `Arc<ServiceCore>`.
#[derive(Debug)]
pub struct ServiceCore {
    settings: SchedulerConfig,
    seed: u64,
    max_datasets: usize,
    log_path: Option<std::path::PathBuf>,
    registered: OnceLock<Registered>,
    inner: Mutex<Inner>,
}

impl ServiceCore {
    /// A service with no datasets yet. `seed` seeds the MLP scorer's initialisation exactly as a
    /// training run's scheduler stream does (`stream_seed(runtime.seed, "scheduler")`), so that
    /// a served and a trained scheduler start from the same state. `log_path`, when given, gets
    /// `mixture.jsonl` lines (appended; a previous run's lines stay as an earlier segment).
    pub fn new(
        settings: SchedulerConfig,
        seed: u64,
        max_datasets: usize,
        log_path: Option<&Path>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            seed,
            max_datasets,
            log_path: log_path.map(Path::to_path_buf),
            registered: OnceLock::new(),
            inner: Mutex::new(Inner {
                strategy: None,
                history: Vec::new(),
                log: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied update (updates are
        // committed by plain assignments after every fallible step), so a poisoned lock is safe
        // to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest mixture, lock-free; `None` before registration.
    pub fn mixture(&self) -> Option<Arc<MixtureSnapshot>> {
        self.registered.get().map(|r| r.board.load())
    }

    /// A receiver notified at every publish; `None` before registration.
    pub fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<Arc<MixtureSnapshot>>> {
        self.registered.get().map(|r| r.board.subscribe())
    }

    /// A copy of the scheduler's whole current state (`None` before registration), for
    /// in-process hosts and tests that inspect what the API does not show (the Adam moments,
    /// the EMA). Takes the write lock briefly, so it waits for an update in progress.
    pub fn strategy(&self) -> Option<Strategy> {
        self.lock().strategy.clone()
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Health {
        let snap = self.mixture();
        Health {
            status: "ok".to_string(),
            api: super::api::API_VERSION.to_string(),
            registered: snap.is_some(),
            version: snap.map(|s| s.version),
        }
    }

    /// `GET /v1/datasets`.
    pub fn registration(&self) -> Result<Registration, ApiError> {
        let r = self.registered.get().ok_or_else(not_registered)?;
        Ok(Registration {
            datasets: r
                .start
                .names
                .iter()
                .zip(&r.start.sizes)
                .map(|(name, &size)| DatasetSpec {
                    name: name.clone(),
                    size,
                })
                .collect(),
            start: r.start.clone(),
        })
    }

    /// `POST /v1/datasets`: defines the dataset list and the prior, once. Returns the prior as
    /// mixture version 0.
    pub fn register(&self, req: &RegisterRequest) -> Result<Arc<MixtureSnapshot>, ApiError> {
        let mut inner = self.lock();
        if self.registered.get().is_some() {
            return Err(ApiError::Conflict(
                "datasets are already registered; registration happens once per service start"
                    .into(),
            ));
        }
        let n = req.datasets.len();
        if n == 0 {
            return Err(ApiError::Invalid(
                "datasets: at least one dataset is required".into(),
            ));
        }
        if n > self.max_datasets {
            return Err(ApiError::Invalid(format!(
                "datasets: {n} datasets exceed service.max_datasets = {}",
                self.max_datasets
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in req.datasets.iter().enumerate() {
            check_name(&d.name)
                .map_err(|m| ApiError::Invalid(format!("datasets[{i}].name: {m}")))?;
            if !seen.insert(d.name.as_str()) {
                return Err(ApiError::Invalid(format!(
                    "datasets[{i}].name: duplicate dataset name `{}`",
                    d.name
                )));
            }
        }
        let names: Vec<String> = req.datasets.iter().map(|d| d.name.clone()).collect();
        let sizes: Vec<u64> = req.datasets.iter().map(|d| d.size).collect();
        let target = match &self.settings.target {
            Some(t) => Some(names.iter().position(|n| n == t).ok_or_else(|| {
                ApiError::Invalid(format!(
                    "datasets: the service's scheduler.target `{t}` is not among the registered names"
                ))
            })?),
            None => None,
        };
        let mut scheduler = self.settings.clone();
        scheduler.strategy = crate::config::Strategy::Mos;
        let mos = Strategy::new(&scheduler, &sizes, target, self.seed, &[]).map_err(|e| {
            ApiError::Invalid(match e {
                MixtureError::AllEmpty => "datasets[].size: every size is 0".to_string(),
                // A zero prior entry would freeze the mixture at the first update (issue 20),
                // so registration refuses it, naming the dataset or the setting to change.
                e @ MixtureError::EmptyDataset { index } => format!("datasets[{index}].size: {e}"),
                other => format!("datasets: {other}"),
            })
        })?;
        let start = StartRecord {
            names: names.clone(),
            sizes,
            scheduler,
            target,
            seed: self.seed,
            prior: mos.probs(),
        };
        let mut log = match &self.log_path {
            Some(p) => Some(
                JsonlWriter::append(p)
                    .map_err(|e| ApiError::Internal(format!("mixture log: {e}")))?,
            ),
            None => None,
        };
        if let Some(l) = log.as_mut() {
            l.write(&MixtureLogLine::Start(start.clone()))
                .map_err(|e| ApiError::Internal(format!("mixture log: {e}")))?;
        }
        let board = MixtureBoard::new(MixtureSnapshot {
            version: 0,
            step: 0,
            names: names.into(),
            weights: start.prior.clone(),
        });
        crate::mixture::export_weights(&board.load());
        let snap = board.load();
        inner.strategy = Some(mos);
        inner.log = log;
        // Set last, under the lock: a reader that sees the registration sees a scheduler too.
        let _ = self.registered.set(Registered { start, board });
        Ok(snap)
    }

    /// `POST /v1/updates`: one REINFORCE update from probe statistics or ready-made rewards.
    /// Returns the update's record (the line written to `mixture.jsonl`).
    ///
    /// A `step` below the last accepted update's is refused (409): the history is the client's
    /// training trajectory, and a step that goes backwards is a restarted or confused client
    /// whose statistics would be learned from out of order. An omitted step defaults to the new
    /// version, or to the last accepted step when that is larger, so it never goes backwards
    /// either.
    pub fn update(&self, req: &UpdateRequest) -> Result<UpdateRecord, ApiError> {
        let mut inner = self.lock();
        let reg = self.registered.get().ok_or_else(not_registered)?;
        let names = &reg.start.names;
        let n = names.len();
        let last_step = inner.history.last().map(|u| u.step);
        let version = reg.board.load().version + 1;
        let step = match (req.step, last_step) {
            (Some(step), Some(last)) if step < last => {
                return Err(ApiError::Conflict(format!(
                    "step: {step} is below the last accepted update's step {last}; steps must \
                     not go backwards (nothing was applied)"
                )));
            }
            (Some(step), _) => step,
            (None, last) => last.map_or(version, |l| l.max(version)),
        };
        let order = match &req.datasets {
            Some(given) => Some(permutation(names, given)?),
            None => None,
        };
        let counts = match &req.counts {
            Some(c) => {
                check_rows("counts", n, c.len())?;
                reorder(c.clone(), order.as_deref())
            }
            None => Vec::new(),
        };
        let given = [
            req.nll.is_some(),
            req.perplexities.is_some(),
            req.embeddings.is_some(),
            req.rewards.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(ApiError::Invalid(
                "exactly one of `nll`, `perplexities`, `embeddings` and `rewards` is required"
                    .into(),
            ));
        }
        let Some(current) = inner.strategy.as_ref() else {
            return Err(not_registered());
        };
        let Some(kind) = current.needs().probe else {
            return Err(not_registered());
        };
        // All the work happens on a copy; the shared state changes only after every check.
        let mut next = current.clone();
        let (field, raw, smoothed) = if let Some(r) = &req.rewards {
            check_rows("rewards", n, r.len())?;
            check_finite_row("rewards", r, names)?;
            let r = reorder(r.clone(), order.as_deref());
            ("rewards", r.clone(), r)
        } else {
            let (field, input) = probe_input(req, kind, n, order.as_deref())?;
            let outcome = next
                .estimate(&input)
                .map_err(|e| probe_error(field, e, names, None))?;
            (field, outcome.raw, outcome.smoothed)
        };
        let input = UpdateInput {
            reward: kind,
            raw,
            smoothed,
        };
        // `apply` refuses rewards outside their accepted range and any new state that would not
        // be finite or could no longer move, computing on `next`; the copy is then discarded, so
        // the published scorer stays as it was. The error names the request field the rewards
        // came from; ready-made rewards by the client's index (`rewards[k]`), which `order`
        // maps back from the registration index.
        let after = next
            .apply(&input)
            .map_err(|e| probe_error(field, e, names, order.as_deref()))?;
        if !next.is_finite() || after.iter().any(|x| !x.is_finite()) {
            // Kept as a last line of defence: `apply`'s own checks make this unreachable.
            return Err(ApiError::Invalid(
                "rewards: the update would give a non-finite mixture; nothing was applied".into(),
            ));
        }
        let before = reg.board.load();
        let record = UpdateRecord {
            step,
            version,
            before: before.weights.clone(),
            after: after.clone(),
            reward: Some(kind),
            raw: input.raw,
            smoothed: input.smoothed,
            counts,
            names: names.clone(),
        };
        if let Some(l) = inner.log.as_mut() {
            l.write(&MixtureLogLine::Update(record.clone()))
                .map_err(|e| {
                    ApiError::Internal(format!("mixture log: {e}; the update was not applied"))
                })?;
        }
        inner.strategy = Some(next);
        inner.history.push(record.clone());
        reg.board.publish(record.step, after);
        Ok(record)
    }

    /// `GET /v1/history`: updates with a version above `since`, oldest first, at most `limit`
    /// (capped at [`HISTORY_PAGE_MAX`]).
    pub fn history(&self, since: u64, limit: Option<usize>) -> Result<History, ApiError> {
        let limit = match limit {
            Some(0) => {
                return Err(ApiError::BadRequest("limit: must be at least 1".into()));
            }
            Some(l) => l.min(HISTORY_PAGE_MAX),
            None => HISTORY_PAGE_MAX,
        };
        let inner = self.lock();
        let reg = self.registered.get().ok_or_else(not_registered)?;
        // Versions are consecutive from 1, so update v sits at index v - 1.
        let from = usize::try_from(since)
            .unwrap_or(usize::MAX)
            .min(inner.history.len());
        let updates = inner.history[from..].iter().take(limit).cloned().collect();
        Ok(History {
            start: reg.start.clone(),
            updates,
            version: inner.history.len() as u64,
        })
    }
}

fn not_registered() -> ApiError {
    ApiError::Conflict("no datasets registered yet: POST /v1/datasets first".into())
}

/// The dataset-name rule of the training config (names become metric labels there too).
fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err(format!("longer than 128 bytes ({})", name.len()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!(
            "`{name}` may only contain ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// `order[k]` = registration index of the k-th name in `given`.
fn permutation(names: &[String], given: &[String]) -> Result<Vec<usize>, ApiError> {
    check_rows("datasets", names.len(), given.len())?;
    let index: std::collections::HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut used = vec![false; names.len()];
    let mut order = Vec::with_capacity(given.len());
    for (k, g) in given.iter().enumerate() {
        let Some(&i) = index.get(g.as_str()) else {
            return Err(ApiError::Invalid(format!(
                "datasets[{k}]: unknown dataset `{g}`; registered: {}",
                names.join(", ")
            )));
        };
        if std::mem::replace(&mut used[i], true) {
            return Err(ApiError::Invalid(format!(
                "datasets[{k}]: dataset `{g}` is listed twice"
            )));
        }
        order.push(i);
    }
    Ok(order)
}

/// Puts rows given in the client's order into registration order. `order` is a permutation
/// (checked by [`permutation`]), so every slot is filled exactly once.
fn reorder<T>(rows: Vec<T>, order: Option<&[usize]>) -> Vec<T> {
    let Some(order) = order else {
        return rows;
    };
    let mut slots: Vec<Option<T>> = (0..rows.len()).map(|_| None).collect();
    for (k, row) in rows.into_iter().enumerate() {
        slots[order[k]] = Some(row);
    }
    slots.into_iter().flatten().collect()
}

fn check_rows(field: &str, expected: usize, found: usize) -> Result<(), ApiError> {
    if expected == found {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "{field}: expected {expected} entries (one per registered dataset), found {found}"
        )))
    }
}

fn check_finite_row(field: &str, row: &[f64], names: &[String]) -> Result<(), ApiError> {
    // JSON has no NaN or infinity literal, so this only catches values a future input format
    // could carry; the check is cheap and keeps the scorer safe whatever the parser accepts.
    match row.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(ApiError::Invalid(format!(
            "{field}[{i}] (dataset `{}`): not a finite number",
            names.get(i).map(String::as_str).unwrap_or("?")
        ))),
        None => Ok(()),
    }
}

/// Turns the request's probe statistics into the scheduler's input, in registration order.
fn probe_input(
    req: &UpdateRequest,
    kind: RewardKind,
    n: usize,
    order: Option<&[usize]>,
) -> Result<(&'static str, ProbeInput), ApiError> {
    let wrong = |field: &str| {
        ApiError::Invalid(format!(
            "{field}: this service computes the {kind:?} reward (scheduler.reward); send {}",
            match kind {
                RewardKind::Diff => "`nll` or `perplexities`",
                RewardKind::Cossim => "`embeddings`",
                RewardKind::Constant => "`rewards` (every reward 1: the constant-reward control)",
            }
        ))
    };
    let paired = |field: &'static str, p: &PairedStats| -> Result<(), ApiError> {
        check_rows(&format!("{field}.now"), n, p.now.len())?;
        check_rows(&format!("{field}.initial"), n, p.initial.len())
    };
    match (kind, req) {
        (RewardKind::Diff, UpdateRequest { nll: Some(p), .. }) => {
            paired("nll", p)?;
            // exp of each NLL, element by element, as the reward actor does, so that the same
            // NLLs give bit-identical perplexities.
            let exp = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
                rows.iter()
                    .map(|v| v.iter().map(|l| l.exp()).collect())
                    .collect()
            };
            Ok((
                "nll",
                ProbeInput::Perplexities {
                    now: reorder(exp(&p.now), order),
                    initial: reorder(exp(&p.initial), order),
                },
            ))
        }
        (
            RewardKind::Diff,
            UpdateRequest {
                perplexities: Some(p),
                ..
            },
        ) => {
            paired("perplexities", p)?;
            Ok((
                "perplexities",
                ProbeInput::Perplexities {
                    now: reorder(p.now.clone(), order),
                    initial: reorder(p.initial.clone(), order),
                },
            ))
        }
        (
            RewardKind::Cossim,
            UpdateRequest {
                embeddings: Some(z),
                ..
            },
        ) => {
            check_rows("embeddings", n, z.len())?;
            if z.iter().any(Vec::is_empty) {
                let i = z.iter().position(Vec::is_empty).unwrap_or(0);
                return Err(ApiError::Invalid(format!(
                    "embeddings[{i}]: an embedding needs at least one dimension"
                )));
            }
            Ok((
                "embeddings",
                ProbeInput::Embeddings(reorder(z.clone(), order)),
            ))
        }
        (_, UpdateRequest { nll: Some(_), .. }) => Err(wrong("nll")),
        (
            _,
            UpdateRequest {
                perplexities: Some(_),
                ..
            },
        ) => Err(wrong("perplexities")),
        _ => Err(wrong("embeddings")),
    }
}

/// Names the request field (and dataset) of a scheduler error. Indices in scheduler errors are
/// registration indices; with `order` (the client's arrays in another order) a ready-made
/// reward is named by its index in the client's array.
fn probe_error(
    field: &str,
    e: MixtureError,
    names: &[String],
    order: Option<&[usize]>,
) -> ApiError {
    let name = |i: usize| names.get(i).map(String::as_str).unwrap_or("?");
    ApiError::Invalid(match e {
        MixtureError::BadProbe { index, message } => {
            format!("{field} of dataset `{}`: {message}", name(index))
        }
        MixtureError::NonFiniteReward { index, value } => format!(
            "{field}: the reward of dataset `{}` would be {value} (overflow); nothing was applied",
            name(index)
        ),
        MixtureError::RewardOutOfRange {
            index,
            value,
            kind,
            min,
            max,
        } => {
            let range = format!(
                "outside the accepted range [{min}, {max}] of {} rewards",
                reward_label(kind)
            );
            if field == "rewards" {
                let k = order
                    .and_then(|o| o.iter().position(|&i| i == index))
                    .unwrap_or(index);
                format!(
                    "rewards[{k}] (dataset `{}`): {value:e} is {range}; rewards beyond it are not \
                     ones the method produces and could give a non-finite mixture; nothing was \
                     applied",
                    name(index)
                )
            } else {
                format!(
                    "{field}: the reward of dataset `{}` would be {value:e}, {range} (a \
                     perplexity ratio that large means a diverged model); nothing was applied",
                    name(index)
                )
            }
        }
        other => format!("{field}: {other}"),
    })
}
