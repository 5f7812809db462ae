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
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::gate::Gated;
use crate::config::RewardKind;
use crate::mixture::{
    reward_label, MixtureBoard, MixtureError, MixtureLogLine, MixtureStrategy, StartRecord,
    Strategy, UpdateInput, UpdateRecord, REJECT_REASONS,
};
use crate::runlog::JsonlWriter;
use crate::telemetry;

/// Messages of the scheduler actor.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// An update's input, estimated by the reward actor from the probe at `step`.
    Rewards {
        /// Training step of the probe.
        step: u64,
        /// The rewards the update applies.
        input: UpdateInput,
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
        estimator: Option<Box<Strategy>>,
        /// The theta_0 probe perplexities held by the reward actor.
        initial_ppl: Option<Vec<Vec<f64>>>,
        /// Where the captured state goes.
        reply: crossbeam_channel::Sender<SnapshotReply>,
    },
    /// Answered once every message sent before it has been handled (and its update logged):
    /// what an orderly shutdown waits for before it stops the actor.
    Flush(tokio::sync::oneshot::Sender<()>),
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
#[derive(Debug)]
pub struct SchedulerArgs {
    /// The strategy and its state (the copy that applies updates).
    pub strategy: Strategy,
    /// Where mixtures are published.
    pub board: MixtureBoard,
    /// `<output_dir>/mixture.jsonl`.
    pub log_path: PathBuf,
    /// Reward family, recorded in the log.
    pub reward: RewardKind,
    /// Artificial delay per update (tests and benchmarks of the no-stall invariant).
    pub debug_delay: Duration,
    /// Written as the first line of the log (not on resume: the log already has it).
    pub start: StartRecord,
    /// True when the run resumes from a checkpoint.
    pub resume: bool,
}

/// Registers `mos_scheduler_updates_rejected_total` at 0 for every reason, so that a healthy
/// run exports zeros (a dashboard then shows 0, not "no data").
fn register_rejection_counters() {
    for reason in REJECT_REASONS {
        metrics::counter!(telemetry::SCHEDULER_UPDATES_REJECTED, "reason" => reason).increment(0);
    }
}

/// Applies an update's input, or keeps the mixture when the strategy refuses it. A refusal (a
/// reward outside its range, a new state that would not be finite or could no longer move) is
/// all or nothing, so the strategy is untouched: the skip is logged and counted under its reason
/// and the run goes on. The input is still returned, so the log line records what was refused
/// (and `replay`, which refuses it the same way, reproduces the kept mixture).
fn apply_or_skip(
    strategy: &mut Strategy,
    step: u64,
    input: UpdateInput,
) -> (Vec<f64>, Option<UpdateInput>) {
    match strategy.apply(&input) {
        Ok(p) => (p, Some(input)),
        // Rewards for a strategy that learns nothing publish it unchanged, as a tick.
        Err(MixtureError::NotLearned) => (strategy.probs(), None),
        Err(e) => {
            let reason = e.reject_reason();
            tracing::warn!(step, reason, error = %e, "scheduler update rejected: mixture kept");
            metrics::counter!(telemetry::SCHEDULER_UPDATES_REJECTED, "reason" => reason)
                .increment(1);
            (strategy.probs(), Some(input))
        }
    }
}

/// The scheduler actor. Its mailbox takes [`Gated`] messages: send through a
/// [`GatedSender`](super::GatedSender).
#[derive(Debug, Clone, Copy, Default)]
pub struct SchedulerActor;

/// Its state.
#[derive(Debug)]
pub struct SchedulerState {
    args: SchedulerArgs,
    log: JsonlWriter,
}

impl Actor for SchedulerActor {
    type Msg = Gated<SchedulerMsg>;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        register_rejection_counters();
        let mut log = JsonlWriter::append(&args.log_path)?;
        if !args.resume {
            log.write(&MixtureLogLine::Start(args.start.clone()))?;
        }
        Ok(SchedulerState { args, log })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Gated<SchedulerMsg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let SchedulerState { args, log } = state;
        let msg = match msg.open() {
            SchedulerMsg::Flush(reply) => {
                // The requester may have given up waiting; nothing to do then.
                let _ = reply.send(());
                return Ok(());
            }
            SchedulerMsg::Snapshot {
                estimator,
                initial_ppl,
                reply,
            } => {
                // A strategy without state is rebuilt from the config on resume.
                let scheduler = args.strategy.has_state().then(|| args.strategy.clone());
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
        let (step, input, counts) = match msg {
            SchedulerMsg::Rewards {
                step,
                input,
                counts,
            } => (step, Some(input), counts),
            // A tick means a static strategy's boundary, or a probe report that was dropped or
            // rejected: the mixture is kept.
            // A strategy that learns without statistics (the constant-reward control) turns
            // the tick into its input.
            SchedulerMsg::Tick { step, counts } => (step, args.strategy.tick(), counts),
            // Answered before the delay above; nothing to publish.
            SchedulerMsg::Snapshot { .. } | SchedulerMsg::Flush(_) => return Ok(()),
        };
        // An update is a few hundred Adam steps over N floats: microseconds to a few
        // milliseconds, fine on a tokio worker.
        let (after, input) = match input {
            Some(input) => apply_or_skip(&mut args.strategy, step, input),
            None => (args.strategy.probs(), None),
        };
        let (reward, raw, smoothed) = match input {
            Some(i) => (Some(i.reward), i.raw, i.smoothed),
            None => (None, Vec::new(), Vec::new()),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::{SchedulerConfig, Strategy as StrategyKind};
    use crate::mixture::MosScheduler;

    /// Counters only, keyed `name{label=value,...}`; enough to see what the actor counts.
    #[derive(Default)]
    struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

    impl Counters {
        fn get(&self, reason: &str) -> Option<u64> {
            let key = format!(
                "{}{{reason={reason}}}",
                telemetry::SCHEDULER_UPDATES_REJECTED
            );
            let map = self.0.lock().unwrap();
            map.get(&key).map(|c| c.load(Ordering::SeqCst))
        }
    }

    impl metrics::Recorder for Counters {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let c = Arc::clone(self.0.lock().unwrap().entry(name).or_default());
            metrics::Counter::from_arc(c)
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    fn mos() -> Strategy {
        let settings = SchedulerConfig {
            strategy: StrategyKind::Mos,
            ..SchedulerConfig::default()
        };
        Strategy::Mos(Box::new(
            MosScheduler::new(&settings, &[10, 20], None, 1).unwrap(),
        ))
    }

    fn input(rewards: [f64; 2]) -> UpdateInput {
        UpdateInput {
            reward: RewardKind::Cossim,
            raw: rewards.to_vec(),
            smoothed: rewards.to_vec(),
        }
    }

    #[test]
    fn every_rejection_reason_is_registered_at_zero() {
        let counters = Counters::default();
        metrics::with_local_recorder(&counters, register_rejection_counters);
        for reason in REJECT_REASONS {
            assert_eq!(counters.get(reason), Some(0), "{reason}");
        }
    }

    #[test]
    fn a_refused_update_is_a_counted_skip_and_the_next_one_applies() {
        let counters = Counters::default();
        let mut strategy = mos();
        let before = strategy.clone();
        let absurd = input([1e300, -5.0]);
        let (kept, logged) = metrics::with_local_recorder(&counters, || {
            apply_or_skip(&mut strategy, 7, absurd.clone())
        });
        assert_eq!(strategy, before, "a refused update changed the strategy");
        assert_eq!(kept, before.probs());
        assert_eq!(logged, Some(absurd), "the refused input is still logged");
        assert_eq!(counters.get("reward_out_of_range"), Some(1));
        assert_eq!(counters.get("non_finite_state"), None);
        // The run goes on: an ordinary update afterwards moves the mixture.
        let (moved, _) = metrics::with_local_recorder(&counters, || {
            apply_or_skip(&mut strategy, 8, input([0.5, 1.0]))
        });
        assert_ne!(moved, kept);
        assert_eq!(strategy.updates(), 1);
        assert_eq!(counters.get("reward_out_of_range"), Some(1));
    }
}
