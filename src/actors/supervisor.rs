//! The root actor of a run: it spawns and links the loaders and the mixing pair (scheduler,
//! reward actor), restarts failed loaders with exponential back-off, and stops the run when the
//! scheduler or the reward actor fails (or a loader keeps failing and
//! `data.on_loader_failure = "stop"`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::loader::{LoaderActor, LoaderArgs};
use super::mixing::{Mixing, MixingPlan};
use crate::config::{Config, LoaderFailureAction};
use crate::control::{Control, LiveSet};
use crate::data::{Dataset, Example, Tokenizer};

/// The root actor: spawns and links every other actor, restarts failed loaders with back-off,
/// and stops the run when the scheduler or the reward actor fails (or a loader keeps failing and
/// `data.on_loader_failure = "stop"`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Supervisor;

/// What the supervisor starts and watches.
#[derive(Debug)]
pub(crate) struct SupervisorArgs {
    /// Part of every child's name: ractor names are process-global.
    pub(crate) instance: u64,
    pub(crate) cfg: Arc<Config>,
    pub(crate) datasets: Vec<Arc<Dataset>>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    /// One queue sender per dataset, in config order.
    pub(crate) senders: Vec<crossbeam_channel::Sender<Example>>,
    /// Stream position each loader starts at.
    pub(crate) cursors: Vec<u64>,
    pub(crate) live: Arc<LiveSet>,
    /// The scheduler and reward actors to start, linked to the supervisor.
    pub(crate) mixing: MixingPlan,
    pub(crate) control: Arc<Control>,
    /// The first failure that stopped the run, read by the runtime handle.
    pub(crate) failure: Arc<Mutex<Option<String>>>,
}

#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    /// How to reach the mixing pair the supervisor started.
    Children(ractor::RpcReplyPort<Mixing>),
    /// Restart the loader of dataset `i` (sent by the supervisor to itself after the back-off).
    RestartLoader(usize),
}

/// One dataset's loader as the supervisor tracks it.
#[derive(Debug)]
struct LoaderSlot {
    id: Option<ractor::ActorId>,
    /// The next stream position to queue, shared with the running loader.
    position: Arc<AtomicU64>,
    /// A clone of the queue's sender, so a restarted loader feeds the same queue.
    sender: crossbeam_channel::Sender<Example>,
    restarts: u32,
}

#[derive(Debug)]
pub(crate) struct SupervisorState {
    spawner: LoaderSpawner,
    loaders: Vec<LoaderSlot>,
    live: Arc<LiveSet>,
    mixing: Mixing,
    control: Arc<Control>,
    failure: Arc<Mutex<Option<String>>>,
}

/// What every loader of the run starts from: at start-up and at each restart.
#[derive(Debug)]
struct LoaderSpawner {
    /// Part of every loader's name: ractor names are process-global.
    instance: u64,
    cfg: Arc<Config>,
    datasets: Vec<Arc<Dataset>>,
    tokenizer: Arc<Tokenizer>,
}

impl LoaderSpawner {
    /// Starts the loader of dataset `i`, linked to the supervisor, at the slot's stream position.
    async fn spawn(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        i: usize,
        slot: &LoaderSlot,
        generation: u32,
    ) -> Result<ractor::ActorId, ActorProcessingErr> {
        let cfg = &self.cfg;
        let ds = &self.datasets[i];
        let (actor, _) = Actor::spawn_linked(
            Some(format!(
                "mos-loader-{}-{}-{generation}",
                self.instance, ds.name
            )),
            LoaderActor,
            LoaderArgs {
                dataset_index: i,
                dataset: ds.clone(),
                tokenizer: self.tokenizer.clone(),
                template: cfg.model.chat_template,
                seq_len: cfg.training.seq_len,
                seed: crate::seed::stream_seed(cfg.runtime.seed, "data"),
                start_at: slot.position.load(Ordering::Acquire),
                position: slot.position.clone(),
                sender: slot.sender.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        Ok(actor.get_id())
    }
}

/// Records the first reason the run stops (later ones keep it) and asks the trainer to stop.
fn stop_run(failure: &Mutex<Option<String>>, control: &Control, why: impl FnOnce() -> String) {
    if let Ok(mut f) = failure.lock() {
        f.get_or_insert_with(why);
    }
    control.request_stop();
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spawner = LoaderSpawner {
            instance: args.instance,
            cfg: args.cfg,
            datasets: args.datasets,
            tokenizer: args.tokenizer,
        };
        let mut loaders = Vec::with_capacity(spawner.datasets.len());
        for (i, tx) in args.senders.into_iter().enumerate() {
            let mut slot = LoaderSlot {
                id: None,
                position: Arc::new(AtomicU64::new(args.cursors.get(i).copied().unwrap_or(0))),
                sender: tx,
                restarts: 0,
            };
            slot.id = Some(spawner.spawn(&myself, i, &slot, 0).await?);
            loaders.push(slot);
        }
        // The pair's tasks end with the actors; being linked, they stop with the supervisor.
        let mixing = args.mixing.spawn(Some(myself.get_cell())).await?.mixing;
        Ok(SupervisorState {
            spawner,
            loaders,
            live: args.live,
            mixing,
            control: args.control,
            failure: args.failure,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(state.mixing.clone());
            }
            SupervisorMsg::RestartLoader(i) => {
                if state.control.stop_requested() {
                    return Ok(());
                }
                let name = state.spawner.datasets[i].name.clone();
                let generation = state.loaders[i].restarts;
                match state
                    .spawner
                    .spawn(&myself, i, &state.loaders[i], generation)
                    .await
                {
                    Ok(id) => {
                        state.loaders[i].id = Some(id);
                        state.live.set_live(i);
                        metrics::counter!(crate::telemetry::ACTOR_RESTARTS, "actor" => "loader")
                            .increment(1);
                        metrics::gauge!(crate::telemetry::DATASETS_LIVE)
                            .set(state.live.live_count() as f64);
                        tracing::info!(dataset = %name, restart = generation, position = state.loaders[i].position.load(Ordering::Acquire), "loader restarted");
                    }
                    Err(e) => {
                        // A loader that cannot even start counts as one more failure.
                        tracing::error!(dataset = %name, error = %e, "loader restart failed");
                        self.loader_failed(&myself, state, i, &e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(who, err) => {
                let id = who.get_id();
                if let Some(i) = state.loaders.iter().position(|l| l.id == Some(id)) {
                    state.loaders[i].id = None;
                    self.loader_failed(&myself, state, i, &err.to_string());
                    return Ok(());
                }
                let name = who.get_name().unwrap_or_else(|| "actor".to_string());
                tracing::error!(actor = %name, error = %err, "actor failed: stopping the run");
                stop_run(&state.failure, &state.control, || format!("{name}: {err}"));
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                tracing::debug!(actor = ?who.get_name(), ?reason, "actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Longest back-off between two restarts of one loader.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Supervisor {
    /// A loader failed: schedule a restart after an exponential back-off, or, past
    /// `data.max_loader_restarts`, drop the dataset or stop the run.
    fn loader_failed(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        i: usize,
        err: &str,
    ) {
        let cfg = &state.spawner.cfg;
        let name = state.spawner.datasets[i].name.clone();
        state.live.set_restarting(i);
        let slot = &mut state.loaders[i];
        slot.restarts += 1;
        if slot.restarts > cfg.data.max_loader_restarts {
            match cfg.data.on_loader_failure {
                LoaderFailureAction::Drop => {
                    state.live.drop_dataset(i);
                    metrics::counter!(crate::telemetry::DATASETS_DROPPED).increment(1);
                    tracing::error!(dataset = %name, failures = slot.restarts, error = err, "loader keeps failing: dataset dropped (data.on_loader_failure = \"drop\"); training goes on over the others");
                    if !state.live.any_usable() {
                        stop_run(&state.failure, &state.control, || {
                            "every dataset was dropped".to_string()
                        });
                    }
                }
                LoaderFailureAction::Stop => {
                    tracing::error!(dataset = %name, failures = slot.restarts, error = err, "loader keeps failing: stopping the run (data.on_loader_failure = \"stop\")");
                    stop_run(&state.failure, &state.control, || {
                        format!(
                            "the loader of dataset `{name}` failed {} times (data.max_loader_restarts = {}): {err}",
                            slot.restarts, cfg.data.max_loader_restarts
                        )
                    });
                }
            }
        } else {
            let factor = 1u64 << (slot.restarts - 1).min(16);
            let backoff = Duration::from_millis(cfg.data.restart_backoff_ms.saturating_mul(factor))
                .min(MAX_BACKOFF);
            tracing::warn!(dataset = %name, failure = slot.restarts, backoff_ms = backoff.as_millis() as u64, error = err, "loader failed: restarting after back-off; sampling goes on over the other datasets");
            myself.send_after(backoff, move || SupervisorMsg::RestartLoader(i));
        }
        metrics::gauge!(crate::telemetry::DATASETS_LIVE).set(state.live.live_count() as f64);
    }
}
