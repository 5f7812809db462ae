//! The reward actor: turns probe statistics from the trainer into per-dataset rewards.
//!
//! It keeps the theta_0 perplexities of the fixed probe sets (sent once, at start-up) and the EMA
//! state, computes COSSIM or DIFF (with MoSpec when a target is set) and forwards raw and smoothed
//! rewards to the scheduler actor. It never touches tensors: the trainer already reduced the probe
//! pass to per-example NLLs and pooled embeddings.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::gate::{Gated, GatedSender};
use super::scheduler::{SchedulerMsg, SnapshotReply};
use crate::config::RewardKind;
use crate::mixture::{mean_embedding, MixtureStrategy, ProbeInput, Strategy};

/// Probe statistics of one probe pass.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Training step at which the probe ran (0 for theta_0).
    pub step: u64,
    /// True for the start-up pass on theta_0.
    pub initial: bool,
    /// Per dataset, per probe example: mean NLL over the probed tokens.
    pub nll: Vec<Vec<f64>>,
    /// Per dataset, per probe example: mean-pooled last hidden state.
    pub embeddings: Vec<Vec<Vec<f32>>>,
    /// Examples drawn per dataset since the previous update.
    pub counts: Vec<u64>,
    /// Wall time of the probe pass.
    pub seconds: f64,
}

/// Messages of the reward actor.
#[derive(Debug)]
pub enum RewardMsg {
    /// A probe pass to turn into rewards.
    Probe(ProbeReport),
    /// Capture state for a checkpoint: this actor adds its EMA and theta_0 perplexities and
    /// forwards the request to the scheduler, behind the rewards it already sent.
    Snapshot(crossbeam_channel::Sender<SnapshotReply>),
    /// Answered by the scheduler once every message sent before it (and the rewards they
    /// produced) has been handled: an orderly shutdown waits for it.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Start-up arguments.
#[derive(Debug)]
pub struct RewardArgs {
    /// The estimator's copy of the strategy: it turns probe statistics into update inputs
    /// (MoS: the reward settings and the EMA state; its scorer half is unused here).
    pub estimator: Box<Strategy>,
    /// Where rewards go. Every forward is admitted whatever the number in flight: a reward
    /// the trainer's report already paid for must not be lost.
    pub scheduler: GatedSender<SchedulerMsg>,
    /// theta_0 perplexities restored from a checkpoint (None on a fresh run: the trainer's
    /// first report provides them).
    pub initial_ppl: Option<Vec<Vec<f64>>>,
}

/// The reward actor. Its mailbox takes [`Gated`] messages: send through a
/// [`GatedSender`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RewardActor;

/// Its state.
#[derive(Debug)]
pub struct RewardState {
    args: RewardArgs,
    /// exp(NLL) of every probe example under theta_0.
    initial_ppl: Option<Vec<Vec<f64>>>,
}

impl Actor for RewardActor {
    type Msg = Gated<RewardMsg>;
    type State = RewardState;
    type Arguments = RewardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        mut args: RewardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let initial_ppl = args.initial_ppl.take();
        Ok(RewardState { args, initial_ppl })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Gated<RewardMsg>,
        state: &mut RewardState,
    ) -> Result<(), ActorProcessingErr> {
        // A forward that fails means the scheduler has stopped; its supervisor already knows,
        // and the run is stopping.
        let report = match msg.open() {
            RewardMsg::Probe(report) => report,
            RewardMsg::Snapshot(reply) => {
                let _ = state.args.scheduler.send(SchedulerMsg::Snapshot {
                    estimator: Some(state.args.estimator.clone()),
                    initial_ppl: state.initial_ppl.clone(),
                    reply,
                });
                return Ok(());
            }
            RewardMsg::Flush(reply) => {
                let _ = state.args.scheduler.send(SchedulerMsg::Flush(reply));
                return Ok(());
            }
        };
        let ppl: Vec<Vec<f64>> = report
            .nll
            .iter()
            .map(|v| v.iter().map(|l| l.exp()).collect())
            .collect();
        if report.initial {
            // After a resume with added datasets only the gaps are filled: the others keep the
            // perplexities of the true theta_0.
            match &mut state.initial_ppl {
                Some(have) if have.len() == ppl.len() => {
                    for (h, p) in have.iter_mut().zip(ppl) {
                        if h.is_empty() {
                            *h = p;
                        }
                    }
                }
                _ => state.initial_ppl = Some(ppl),
            }
            return Ok(());
        }
        let Some(kind) = state.args.estimator.needs().probe else {
            return Err("a probe report reached a strategy that reads no probe statistics".into());
        };
        let input = match kind {
            RewardKind::Cossim => ProbeInput::Embeddings(
                report
                    .embeddings
                    .iter()
                    .map(|e| mean_embedding(e))
                    .collect(),
            ),
            RewardKind::Diff => {
                let Some(initial) = state.initial_ppl.clone() else {
                    return Err("DIFF reward requested before the theta_0 probe pass".into());
                };
                ProbeInput::Perplexities { now: ppl, initial }
            }
            RewardKind::Constant => {
                return Err("the constant-reward control reads no probe statistics".into());
            }
        };
        let input = match state.args.estimator.estimate(&input) {
            Ok(o) => o,
            Err(e) => {
                // A NaN perplexity or a reward outside its range (diverged model) must not
                // poison the EMA or the scorer: the update is refused, counted under its reason
                // and logged, and the mixture stays as it is. It is counted here, not in
                // `mos_reports_dropped_total`, which counts reports a full queue turned away.
                let reason = e.reject_reason();
                tracing::warn!(step = report.step, reason, error = %e, "probe report rejected: mixture kept");
                metrics::counter!(crate::telemetry::SCHEDULER_UPDATES_REJECTED, "reason" => reason)
                    .increment(1);
                // A tick keeps the one-report-one-publish rule that deterministic runs rely on.
                let _ = state.args.scheduler.send(SchedulerMsg::Tick {
                    step: report.step,
                    counts: report.counts,
                });
                return Ok(());
            }
        };
        let _ = state.args.scheduler.send(SchedulerMsg::Rewards {
            step: report.step,
            input,
            counts: report.counts,
        });
        Ok(())
    }
}
