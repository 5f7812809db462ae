//! One builder for the pair that learns the mixture: the scheduler actor and, under MoS, the
//! reward actor in front of it, with their gates, the publish board and the start record of
//! `mixture.jsonl`.
//!
//! The supervisor, the examples, the benches and the tests all start the pair here, so a host
//! that embeds the actors gets exactly the wiring the runtime uses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use super::gate::{GatedSender, ReportGate};
use super::reward::{RewardActor, RewardArgs, RewardMsg};
use super::scheduler::{SchedulerActor, SchedulerArgs, SchedulerMsg};
use crate::config::SchedulerConfig;
use crate::mixture::{
    export_weights, MixtureBoard, MixtureSnapshot, MixtureStrategy, Needs, StartRecord, Strategy,
};

/// Reports in flight towards the scheduler before the trainer's ticks are dropped.
pub const SCHEDULER_CAPACITY: usize = 4;
/// Probe reports in flight towards the reward actor before the trainer's reports (and their
/// probe passes) are dropped.
pub const REWARD_CAPACITY: usize = 2;

/// Actor state restored from a checkpoint.
#[derive(Debug, Clone)]
pub struct ResumedMixing {
    /// The mixture published last before the checkpoint (the board starts from it).
    pub latest: MixtureSnapshot,
    /// The reward actor's estimator (MoS: its EMA state).
    pub estimator: Option<Strategy>,
    /// The theta_0 probe perplexities.
    pub initial_ppl: Option<Vec<Vec<f64>>>,
}

/// Everything the pair needs to start.
#[derive(Debug)]
pub struct MixingPlan {
    /// Dataset names, in order.
    pub names: Vec<String>,
    /// Training-split sizes (records), recorded in the start record.
    pub sizes: Vec<u64>,
    /// The scheduler settings, recorded in the start record.
    pub settings: SchedulerConfig,
    /// MoSpec target index.
    pub target: Option<usize>,
    /// Seed of the scheduler's RNG stream, recorded in the start record.
    pub seed: u64,
    /// The strategy and its state. Under MoS the prior is the scorer's own softmax, so every
    /// mixture in the log comes from one computation and `replay` compares bit for bit.
    pub strategy: Strategy,
    /// State from a checkpoint (None: a fresh start, whose log gets a start record).
    pub resumed: Option<ResumedMixing>,
    /// `mixture.jsonl`.
    pub log_path: PathBuf,
    /// Artificial delay per scheduler update (tests and benchmarks of the no-stall invariant).
    pub debug_delay: Duration,
    /// Capacity of the scheduler's gate.
    pub scheduler_capacity: usize,
    /// Capacity of the reward actor's gate.
    pub reward_capacity: usize,
    /// Suffix of the actors' names (`mos-scheduler-{suffix}`, `mos-reward-{suffix}`); ractor
    /// names are process-global, so two runtimes in one process need distinct suffixes. None:
    /// unnamed actors.
    pub name_suffix: Option<String>,
}

impl MixingPlan {
    /// A fresh plan with the default capacities, no delay and unnamed actors.
    pub fn new(
        names: Vec<String>,
        sizes: Vec<u64>,
        settings: SchedulerConfig,
        seed: u64,
        strategy: Strategy,
        log_path: PathBuf,
    ) -> Self {
        Self {
            names,
            sizes,
            settings,
            target: None,
            seed,
            strategy,
            resumed: None,
            log_path,
            debug_delay: Duration::ZERO,
            scheduler_capacity: SCHEDULER_CAPACITY,
            reward_capacity: REWARD_CAPACITY,
            name_suffix: None,
        }
    }

    /// The mixture published at start-up.
    pub fn prior(&self) -> Vec<f64> {
        self.strategy.probs()
    }

    /// Spawns the scheduler (and, under MoS, the reward actor), linked to `supervisor` when
    /// given. The board starts from the resumed mixture or the prior, and is exported as
    /// metrics at once.
    pub async fn spawn(self, supervisor: Option<ActorCell>) -> Result<MixingActors, SpawnErr> {
        let prior = self.prior();
        let board = MixtureBoard::new(match &self.resumed {
            Some(r) => r.latest.clone(),
            None => MixtureSnapshot {
                version: 0,
                step: 0,
                names: self.names.iter().cloned().collect(),
                weights: prior.clone(),
            },
        });
        export_weights(&board.load());
        // A reward actor runs only for a strategy that reads probe statistics.
        let needs = self.strategy.needs();
        let reward_half = needs.probe.is_some().then(|| {
            self.resumed
                .as_ref()
                .and_then(|r| r.estimator.clone())
                .unwrap_or_else(|| self.strategy.clone())
        });
        let initial_ppl = self.resumed.as_ref().and_then(|r| r.initial_ppl.clone());
        let name = |role: &str| self.name_suffix.as_ref().map(|s| format!("mos-{role}-{s}"));
        let args = SchedulerArgs {
            strategy: self.strategy,
            board: board.clone(),
            log_path: self.log_path,
            reward: self.settings.reward,
            debug_delay: self.debug_delay,
            start: StartRecord {
                names: self.names,
                sizes: self.sizes,
                scheduler: self.settings.clone(),
                target: self.target,
                seed: self.seed,
                prior,
            },
            resume: self.resumed.is_some(),
        };
        let (actor, join) = spawn(name("scheduler"), SchedulerActor, args, &supervisor).await?;
        let scheduler = GatedSender::new(actor, Arc::new(ReportGate::new(self.scheduler_capacity)));
        let mut joins = vec![join];
        let reward = match reward_half {
            Some(estimator) => {
                let args = RewardArgs {
                    estimator: Box::new(estimator),
                    scheduler: scheduler.clone(),
                    initial_ppl,
                };
                let (actor, join) = spawn(name("reward"), RewardActor, args, &supervisor).await?;
                joins.push(join);
                Some(GatedSender::new(
                    actor,
                    Arc::new(ReportGate::new(self.reward_capacity)),
                ))
            }
            None => None,
        };
        Ok(MixingActors {
            mixing: Mixing {
                needs,
                board,
                scheduler,
                reward,
            },
            joins,
        })
    }
}

/// Spawns `actor`, linked to `supervisor` when there is one.
async fn spawn<A: Actor>(
    name: Option<String>,
    actor: A,
    args: A::Arguments,
    supervisor: &Option<ActorCell>,
) -> Result<(ActorRef<A::Msg>, tokio::task::JoinHandle<()>), SpawnErr> {
    match supervisor {
        Some(cell) => Actor::spawn_linked(name, actor, args, cell.clone()).await,
        None => Actor::spawn(name, actor, args).await,
    }
}

/// How to reach the running pair: cheap to clone, handed to the trainer and the runtime handle.
#[derive(Debug, Clone)]
pub struct Mixing {
    /// What the strategy's updates read: the trainer gathers exactly that.
    pub needs: Needs,
    /// Where mixtures are published.
    pub board: MixtureBoard,
    /// The scheduler (ticks of static strategies; the reward actor's forwards).
    pub scheduler: GatedSender<SchedulerMsg>,
    /// The reward actor (MoS only): where probe reports go.
    pub reward: Option<GatedSender<RewardMsg>>,
}

impl Mixing {
    /// Waits until every message sent to the pair before this call has been handled (each
    /// update applied and logged), or `timeout` passes; returns whether it completed. The
    /// request travels behind those messages in mailbox order, through the reward actor first
    /// when there is one.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = match &self.reward {
            Some(reward) => reward.send(RewardMsg::Flush(tx)),
            None => self.scheduler.send(SchedulerMsg::Flush(tx)),
        };
        sent.is_ok() && matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }
}

/// The running pair with the tasks that end when its actors stop.
#[derive(Debug)]
pub struct MixingActors {
    /// How to reach the pair.
    pub mixing: Mixing,
    joins: Vec<tokio::task::JoinHandle<()>>,
}

impl MixingActors {
    /// Drains the pair (see [`Mixing::flush`]), then stops the reward actor and the scheduler,
    /// in that order, and waits for both.
    pub async fn stop(self, timeout: Duration) {
        self.mixing.flush(timeout).await;
        if let Some(r) = &self.mixing.reward {
            r.actor().stop(None);
        }
        self.mixing.scheduler.actor().stop(None);
        for j in self.joins {
            let _ = j.await;
        }
    }
}
