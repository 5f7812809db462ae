//! The link: the only part of the trainer that talks to the actors. It owns the mixture the
//! batcher samples from, adopts a new one at update boundaries, sends each boundary's report
//! (a probe report to the reward actor under MoS, a tick to the scheduler otherwise) through the
//! gates, and asks the actors for their part of a checkpoint.
//!
//! It never waits on an actor, except where `runtime.deterministic` asks it to (adopting at a
//! boundary waits for the previous report's publish; reports are never dropped) and for a
//! checkpoint's snapshot, which is bounded by [`SNAPSHOT_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sets::FixedSets;
use super::{Learner, TrainerError};
use crate::actors::{Mixing, ProbeReport, RewardMsg, SchedulerMsg, SendError, SnapshotReply};
use crate::checkpoint::RunState;
use crate::config::{Config, RewardKind};
use crate::control::Control;
use crate::learner::ProbeNeed;
use crate::mixture::MixtureSnapshot;
use crate::telemetry;

/// How long the trainer waits for the actors' part of a checkpoint before skipping it.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a boundary sent.
pub(super) enum Sent {
    /// A probe report, whose pass took this long.
    Probe { seconds: f64 },
    /// A tick, or nothing (dropped: the receiver had its quota).
    Other,
}

/// The trainer's end of the actors.
pub(super) struct Link {
    mixing: Mixing,
    deterministic: bool,
    /// The probe sets (MoS only) and what an update's probe pass computes.
    probes: Option<(FixedSets, ProbeNeed)>,
    /// The mixture the batcher samples from. It changes only at update boundaries, to the
    /// latest published one, so that when the scheduler keeps up (it normally answers within
    /// milliseconds) the run does not depend on thread timing and resumes exactly.
    pub(super) active: Arc<MixtureSnapshot>,
    /// The version the next adoption expects: reports sent so far.
    pub(super) target_version: u64,
    /// Per dataset, the train-record indices of its probe set (MoS; empty otherwise). A
    /// checkpoint records them: the theta_0 perplexities belong to those examples.
    pub(super) probe_ids: Vec<Vec<u32>>,
    late: metrics::Counter,
}

impl Link {
    /// The link of a fresh or resumed run.
    pub(super) fn new(
        cfg: &Config,
        mixing: Mixing,
        probes: Option<(Vec<Vec<u32>>, FixedSets)>,
        resumed: Option<&RunState>,
    ) -> Self {
        // An update's probe pass computes only what the reward reads.
        let need = match mixing.needs.probe {
            Some(RewardKind::Cossim) => ProbeNeed::Embeddings,
            Some(RewardKind::Diff | RewardKind::Constant) | None => ProbeNeed::Nll,
        };
        let (probe_ids, probes) = match probes {
            Some((ids, sets)) => (ids, Some((sets, need))),
            None => (Vec::new(), None),
        };
        let active = match resumed {
            Some(r) => Arc::new(r.active.clone()),
            None => mixing.board.load(),
        };
        Self {
            target_version: resumed.map_or(active.version, |r| r.target_version),
            active,
            deterministic: cfg.runtime.deterministic,
            probe_ids,
            probes,
            mixing,
            late: metrics::counter!(telemetry::MIXTURE_LATE),
        }
    }

    /// Sends the theta_0 probe pass (NLLs only: the reward actor keeps theta_0's perplexities
    /// from it and nothing else, under either reward, since a resume may switch COSSIM to DIFF).
    pub(super) fn initial_probe<L: Learner>(&self, learner: &L, counts: Vec<u64>) {
        if let (Some((sets, _)), Some(reward)) = (&self.probes, &self.mixing.reward) {
            let report = probe_report(learner, sets, ProbeNeed::Nll, 0, true, counts);
            // A reward actor that has stopped has stopped the run; its supervisor says why.
            let _ = reward.send(RewardMsg::Probe(report));
        }
    }

    /// An update boundary: adopts the mixture of the previous report, then sends this one. The
    /// gate is checked before the probe pass, so a dropped report costs no forward pass either.
    pub(super) fn boundary<L: Learner>(
        &mut self,
        learner: &L,
        step: u64,
        counts: Vec<u64>,
        control: &Control,
    ) -> Sent {
        self.active = self.adopt(control);
        match (&self.probes, &self.mixing.reward) {
            (Some((sets, need)), Some(reward)) => {
                let slot = if self.deterministic {
                    Some(reward.reserve())
                } else {
                    reward.try_reserve()
                };
                let Some(slot) = slot else {
                    return Sent::Other;
                };
                self.target_version += 1;
                let report = probe_report(learner, sets, *need, step, false, counts);
                let seconds = report.seconds;
                let _ = slot.send(RewardMsg::Probe(report));
                Sent::Probe { seconds }
            }
            _ => {
                let sched = &self.mixing.scheduler;
                let tick = SchedulerMsg::Tick { step, counts };
                let sent = if self.deterministic {
                    sched.send(tick)
                } else {
                    sched.try_send(tick)
                };
                // An admitted tick counts even if the scheduler has stopped: the run is then
                // stopping, and the version it waits for is the one it asked for.
                if sent != Err(SendError::Full) {
                    self.target_version += 1;
                }
                Sent::Other
            }
        }
    }

    /// The latest published mixture. In deterministic mode, first wait until it includes every
    /// report sent before this boundary.
    fn adopt(&self, control: &Control) -> Arc<MixtureSnapshot> {
        let board = &self.mixing.board;
        let snap = board.load();
        if snap.version >= self.target_version {
            return snap;
        }
        if !self.deterministic {
            self.late.increment(1);
            tracing::debug!(
                have = snap.version,
                want = self.target_version,
                "scheduler behind: keeping the older mixture"
            );
            return snap;
        }
        loop {
            // The scheduler publishes within milliseconds; polling keeps this thread free of
            // any async machinery and re-checks the stop flag.
            std::thread::sleep(Duration::from_millis(1));
            let snap = board.load();
            if snap.version >= self.target_version || control.stop_requested() {
                return snap;
            }
        }
    }

    /// The actors' part of a checkpoint. The request travels behind every report already sent,
    /// so the state it captures matches the trainer's state at this step.
    pub(super) fn snapshot(&self) -> Result<SnapshotReply, TrainerError> {
        let (tx, rx) = crossbeam_channel::bounded::<SnapshotReply>(1);
        let sent = match &self.mixing.reward {
            Some(reward) => reward.send(RewardMsg::Snapshot(tx)),
            None => self.mixing.scheduler.send(SchedulerMsg::Snapshot {
                estimator: None,
                initial_ppl: None,
                reply: tx,
            }),
        };
        if sent.is_err() {
            return Err(TrainerError::checkpoint_msg(
                "the scheduler is not running; its state cannot be saved",
            ));
        }
        rx.recv_timeout(SNAPSHOT_TIMEOUT).map_err(|_| {
            TrainerError::checkpoint_msg(format!(
                "the scheduler did not answer within {}s",
                SNAPSHOT_TIMEOUT.as_secs()
            ))
        })
    }
}

/// One probe pass over every dataset's probe set.
fn probe_report<L: Learner>(
    learner: &L,
    sets: &FixedSets,
    need: ProbeNeed,
    step: u64,
    initial: bool,
    counts: Vec<u64>,
) -> ProbeReport {
    let t0 = Instant::now();
    let mut nll = Vec::with_capacity(sets.batches.len());
    let mut embeddings = Vec::with_capacity(sets.batches.len());
    for batches in &sets.batches {
        let mut ds_nll = Vec::new();
        let mut ds_emb = Vec::new();
        for b in batches {
            let stats = learner.probe_for(b, need);
            ds_nll.extend(stats.nll);
            ds_emb.extend(stats.embeddings);
        }
        nll.push(ds_nll);
        embeddings.push(ds_emb);
    }
    let seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!(telemetry::PROBE_DURATION).record(seconds);
    ProbeReport {
        step,
        initial,
        nll,
        embeddings,
        counts,
        seconds,
    }
}
