//! The scheduler actor: owns the mixture strategy and publishes mixture snapshots.
//!
//! It receives rewards (from the reward actor) or plain update ticks (static strategies), runs the
//! REINFORCE update of `mixture::MosScheduler` when the strategy is `mos`, appends one line per
//! update to `<output_dir>/mixture.jsonl`, and publishes the new mixture through [`MixtureBoard`]:
//! an `ArcSwap` the trainer reads lock-free at every batch, plus a `watch` channel for subscribers.
//!
//! It must never touch tensors or the device, and nothing it does may block the training loop:
//! the trainer never waits for a reply from this actor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::RewardKind;
use crate::mixture::MosScheduler;
use crate::runlog::JsonlWriter;
use crate::telemetry;

/// One published mixture: the weights the trainer samples from until the next publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSnapshot {
    /// Increments by one at every publish; 0 is the prior published at start-up.
    pub version: u64,
    /// Training step whose report produced this mixture (0 for the prior).
    pub step: u64,
    /// Dataset names, in config order.
    pub names: Arc<[String]>,
    /// Sampling probabilities, in config order; they sum to 1.
    pub weights: Vec<f64>,
}

/// The publish point of the mixture: lock-free reads for the trainer, change notification for
/// subscribers (embedding hosts, tests).
#[derive(Debug, Clone)]
pub struct MixtureBoard {
    current: Arc<ArcSwap<MixtureSnapshot>>,
    tx: Arc<watch::Sender<Arc<MixtureSnapshot>>>,
}

impl MixtureBoard {
    /// A board holding `initial`.
    pub fn new(initial: MixtureSnapshot) -> Self {
        let initial = Arc::new(initial);
        let (tx, _rx) = watch::channel(initial.clone());
        Self {
            current: Arc::new(ArcSwap::new(initial)),
            tx: Arc::new(tx),
        }
    }

    /// The latest snapshot; wait-free, safe to call from the training loop.
    pub fn load(&self) -> Arc<MixtureSnapshot> {
        self.current.load_full()
    }

    /// A receiver that sees every later publish (intermediate ones may be skipped if the receiver
    /// is slow; the latest is never lost).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MixtureSnapshot>> {
        self.tx.subscribe()
    }

    /// Publishes new weights as the next version and exports them as metrics.
    pub fn publish(&self, step: u64, weights: Vec<f64>) -> Arc<MixtureSnapshot> {
        let prev = self.load();
        let snap = Arc::new(MixtureSnapshot {
            version: prev.version + 1,
            step,
            names: prev.names.clone(),
            weights,
        });
        self.current.store(snap.clone());
        export_weights(&snap);
        // A send error only means nobody subscribes; the ArcSwap is the source of truth.
        let _ = self.tx.send(snap.clone());
        snap
    }
}

/// Sets `mos_mixture_weight{dataset}` and `mos_mixture_version` from a snapshot.
pub fn export_weights(snap: &MixtureSnapshot) {
    for (name, w) in snap.names.iter().zip(&snap.weights) {
        metrics::gauge!(telemetry::MIXTURE_WEIGHT, "dataset" => name.clone()).set(*w);
    }
    metrics::gauge!(telemetry::MIXTURE_VERSION).set(snap.version as f64);
}

/// What the scheduler does at each update.
#[derive(Debug)]
pub enum Strategy {
    /// A fixed mixture (uniform, proportional, temperature, fixed): each tick re-publishes it so
    /// that every strategy goes through the same publish path and log.
    Static(Vec<f64>),
    /// The learned MoS mixture.
    Mos(Box<MosScheduler>),
}

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

/// Messages of the scheduler actor.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Rewards computed by the reward actor for the probe at `step`.
    Rewards {
        /// Training step of the probe.
        step: u64,
        /// Raw rewards.
        raw: Vec<f64>,
        /// Smoothed rewards (used by the update).
        smoothed: Vec<f64>,
        /// Examples drawn per dataset since the previous update.
        counts: Vec<u64>,
    },
    /// An update tick without rewards (static strategies, or a MoS report whose rewards were
    /// rejected): the mixture is re-published unchanged, so that every report yields exactly one
    /// publish.
    Tick {
        /// Training step.
        step: u64,
        /// Examples drawn per dataset since the previous update.
        counts: Vec<u64>,
    },
    /// Capture this actor's state for a checkpoint. Mailbox order guarantees that every report
    /// sent before the request has been applied. The reward actor fills in its own part and
    /// forwards the request; the reply goes straight to the trainer.
    Snapshot {
        /// The reward actor's estimator (its EMA), if any.
        estimator: Option<Box<MosScheduler>>,
        /// The theta_0 probe perplexities held by the reward actor.
        initial_ppl: Option<Vec<Vec<f64>>>,
        /// Where the captured state goes.
        reply: crossbeam_channel::Sender<SnapshotReply>,
    },
}

/// The scheduler-side part of a checkpoint.
#[derive(Debug, Clone)]
pub struct SnapshotReply {
    /// Scheduler and reward actor state.
    pub state: crate::checkpoint::ActorState,
    /// Bytes in `mixture.jsonl` after the last applied update.
    pub mixture_log_len: u64,
}

/// Start-up arguments of the scheduler actor.
pub struct SchedulerArgs {
    /// The strategy and its state.
    pub strategy: Strategy,
    /// Where mixtures are published.
    pub board: MixtureBoard,
    /// `<output_dir>/mixture.jsonl`.
    pub log_path: PathBuf,
    /// Reward family, recorded in the log.
    pub reward: RewardKind,
    /// Artificial delay per update (tests and benchmarks of the no-stall invariant).
    pub debug_delay: Duration,
    /// Counts reports in flight towards this actor (bounded-mailbox emulation).
    pub gate: Arc<crate::trainer::ReportGate>,
    /// Written as the first line of the log (not on resume: the log already has it).
    pub start: StartRecord,
    /// True when the run resumes from a checkpoint.
    pub resume: bool,
}

/// The scheduler actor.
pub struct SchedulerActor;

/// Its state.
pub struct SchedulerState {
    args: SchedulerArgs,
    log: JsonlWriter,
}

impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut log = JsonlWriter::append(&args.log_path)?;
        if !args.resume {
            log.write(&MixtureLogLine::Start(args.start.clone()))?;
        }
        Ok(SchedulerState { args, log })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let SchedulerState { args, log } = state;
        args.gate.done();
        let msg = match msg {
            SchedulerMsg::Snapshot {
                estimator,
                initial_ppl,
                reply,
            } => {
                let scheduler = match &args.strategy {
                    Strategy::Mos(m) => Some((**m).clone()),
                    Strategy::Static(_) => None,
                };
                let snapshot = SnapshotReply {
                    state: crate::checkpoint::ActorState {
                        scheduler,
                        estimator: estimator.map(|e| *e),
                        initial_ppl,
                        latest: (*args.board.load()).clone(),
                    },
                    mixture_log_len: log.len()?,
                };
                // The trainer may have given up waiting; the checkpoint is then skipped there.
                let _ = reply.send(snapshot);
                return Ok(());
            }
            other => other,
        };
        if !args.debug_delay.is_zero() {
            tokio::time::sleep(args.debug_delay).await;
        }
        let before = args.board.load();
        let (step, raw, smoothed, counts, after, reward) = match (msg, &mut args.strategy) {
            (
                SchedulerMsg::Rewards {
                    step,
                    raw,
                    smoothed,
                    counts,
                },
                Strategy::Mos(mos),
            ) => {
                // The REINFORCE update is a few hundred Adam steps over N floats: microseconds to
                // a few milliseconds, fine on a tokio worker. Invalid rewards (NaN from a diverged
                // model) leave the scorer untouched: the mixture is kept and the problem logged.
                let after = match mos.update(&smoothed) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(step, error = %e, "scheduler update rejected: mixture kept");
                        mos.probs()
                    }
                };
                (step, raw, smoothed, counts, after, Some(args.reward))
            }
            (SchedulerMsg::Tick { step, counts }, Strategy::Static(w)) => {
                (step, vec![], vec![], counts, w.clone(), None)
            }
            (SchedulerMsg::Tick { step, counts }, Strategy::Mos(mos)) => {
                // A tick under MoS means the probe report was dropped: keep the mixture.
                (step, vec![], vec![], counts, mos.probs(), None)
            }
            (SchedulerMsg::Rewards { step, counts, .. }, Strategy::Static(w)) => {
                (step, vec![], vec![], counts, w.clone(), None)
            }
            // Answered before the delay above; nothing to publish.
            (SchedulerMsg::Snapshot { .. }, _) => return Ok(()),
        };
        if let Some(kind) = reward {
            let label = reward_label(kind);
            for (i, name) in before.names.iter().enumerate() {
                metrics::gauge!(telemetry::REWARD, "dataset" => name.clone(), "reward" => label)
                    .set(raw[i]);
                metrics::gauge!(telemetry::REWARD_SMOOTHED, "dataset" => name.clone(), "reward" => label)
                    .set(smoothed[i]);
            }
        }
        let snap = args.board.publish(step, after.clone());
        let record = UpdateRecord {
            step,
            version: snap.version,
            before: before.weights.clone(),
            after,
            reward,
            raw,
            smoothed,
            counts,
            names: before.names.to_vec(),
        };
        log.write(&MixtureLogLine::Update(record))?;
        metrics::counter!(telemetry::SCHEDULER_UPDATES).increment(1);
        metrics::histogram!(telemetry::SCHEDULER_UPDATE_DURATION)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The `reward` label value of a reward family.
pub fn reward_label(kind: RewardKind) -> &'static str {
    match kind {
        RewardKind::Cossim => "cossim",
        RewardKind::Diff => "diff",
    }
}
