//! The embedding API: start the whole runtime from a [`Config`] inside the host's tokio runtime
//! and drive it through a [`RuntimeHandle`].
//!
//! Start-up order: load and validate every dataset (so bad input stops the run before any actor
//! exists), compute the prior mixture, create the output directory, then start the supervisor,
//! which spawns one loader actor per dataset, the scheduler actor and (MoS) the reward actor, and
//! finally the trainer's dedicated OS thread. This module never installs a tracing subscriber or a
//! metrics recorder: that is the binary's (or the host's) job.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::config::{Backend, Config, ConfigError, Strategy as StrategyKind};
use crate::data::{load_dataset, DataError, Dataset, LoaderActor, LoaderArgs, Tokenizer};
use crate::mixture::{q_tau, static_mixture, MixtureError, MosScheduler};
use crate::reward::{RewardActor, RewardArgs, RewardMsg};
use crate::scheduler::{
    export_weights, MixtureBoard, MixtureSnapshot, SchedulerActor, SchedulerArgs, SchedulerMsg,
    StartRecord, Strategy,
};
use crate::trainer::{run_training, Control, ReportGate, RunSummary, TrainerCtx, TrainerError};

/// Everything that can stop the runtime from starting or finishing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A dataset or the tokenizer could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The mixture could not be computed.
    #[error(transparent)]
    Mixture(#[from] MixtureError),
    /// The output directory is unusable.
    #[error("output directory {path}: {message}")]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The configured backend is not available in this build.
    #[error("runtime.backend = \"{0}\" needs a build with `--features {0}`")]
    BackendUnavailable(Backend),
    /// An actor could not be spawned.
    #[error("actor start-up failed: {0}")]
    Spawn(String),
    /// The trainer failed.
    #[error("trainer: {0}")]
    Trainer(#[from] TrainerError),
    /// An actor failed during the run.
    #[error("actor failure: {0}")]
    Actor(String),
}

/// Datasets, tokenizer and prior of a config: what `check` prints and `start` runs on. Cloning is
/// cheap (shared pointers).
#[derive(Clone)]
pub struct Prepared {
    /// The validated config.
    pub cfg: Arc<Config>,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Loaded datasets, in config order.
    pub datasets: Vec<Arc<Dataset>>,
    /// Training-split sizes (records).
    pub sizes: Vec<u64>,
    /// The mixture the run starts from.
    pub prior: Vec<f64>,
}

/// Loads the tokenizer and every dataset, and computes the starting mixture. Blocking I/O: call it
/// from a blocking context (or `spawn_blocking`).
pub fn prepare(mut cfg: Config) -> Result<Prepared, RuntimeError> {
    cfg.validate()?;
    let tokenizer = Arc::new(Tokenizer::from_config(&cfg.model)?);
    // `chat_template = "auto"` becomes concrete here, so the run and config.resolved.toml agree.
    cfg.model.chat_template = cfg.model.chat_template.resolve(&tokenizer);
    let mut datasets = Vec::with_capacity(cfg.datasets.len());
    for d in &cfg.datasets {
        datasets.push(Arc::new(load_dataset(d, &cfg.data, cfg.runtime.seed)?));
    }
    let sizes: Vec<u64> = datasets.iter().map(|d| d.train.len() as u64).collect();
    let weights: Vec<Option<f64>> = cfg.datasets.iter().map(|d| d.weight).collect();
    let s = &cfg.scheduler;
    let prior = match s.strategy {
        StrategyKind::Mos => q_tau(&sizes, s.init_temperature.0),
        other => static_mixture(other, &sizes, s.temperature.0, &weights)?,
    };
    Ok(Prepared {
        cfg: Arc::new(cfg),
        tokenizer,
        datasets,
        sizes,
        prior,
    })
}

/// The entry point of the embedding API.
pub struct Runtime;

impl Runtime {
    /// Loads data, starts every actor and the trainer thread, and returns a handle. Must be
    /// called inside a multi-threaded tokio runtime.
    pub async fn start(cfg: Config) -> Result<RuntimeHandle, RuntimeError> {
        let prepared = tokio::task::spawn_blocking(move || prepare(cfg))
            .await
            .map_err(|e| RuntimeError::Spawn(e.to_string()))??;
        Self::start_prepared(prepared).await
    }

    /// As [`Runtime::start`], from an already prepared run.
    pub async fn start_prepared(p: Prepared) -> Result<RuntimeHandle, RuntimeError> {
        let cfg = p.cfg.clone();
        if cfg.runtime.backend == Backend::Cuda && !cfg!(feature = "cuda") {
            return Err(RuntimeError::BackendUnavailable(Backend::Cuda));
        }
        let out = cfg.runtime.output_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| RuntimeError::OutputDir {
            path: out.clone(),
            message: e.to_string(),
        })?;
        let resolved = toml::to_string_pretty(&*cfg).unwrap_or_default();
        std::fs::write(out.join("config.resolved.toml"), resolved).map_err(|e| {
            RuntimeError::OutputDir {
                path: out.clone(),
                message: format!("not writable: {e}"),
            }
        })?;

        let target = cfg
            .scheduler
            .target
            .as_deref()
            .and_then(|t| cfg.dataset_index(t));
        let mos = if cfg.scheduler.strategy == StrategyKind::Mos {
            Some(MosScheduler::new(
                &cfg.scheduler,
                &p.sizes,
                target,
                crate::trainer::stream_seed(cfg.runtime.seed, "scheduler"),
            )?)
        } else {
            None
        };
        // Under MoS the published prior is the scorer's own softmax (equal to q_tau within
        // rounding), so that every mixture in the log comes from one computation and `replay`
        // can compare bit for bit.
        let mut p = p;
        if let Some(m) = &mos {
            p.prior = m.probs();
        }
        let names: Arc<[String]> = p.datasets.iter().map(|d| d.name.clone()).collect();
        let board = MixtureBoard::new(MixtureSnapshot {
            version: 0,
            step: 0,
            names,
            weights: p.prior.clone(),
        });
        export_weights(&board.load());
        // Counters that only move on rare events are registered at zero, so dashboards and
        // alerts see a series (and a rate of 0) from the first scrape instead of "no data".
        metrics::counter!(crate::telemetry::REPORTS_DROPPED).increment(0);
        metrics::counter!(crate::telemetry::TRAIN_STEPS_SKIPPED).increment(0);
        for d in &p.datasets {
            metrics::counter!(crate::telemetry::LOADER_BAD_RECORDS, "dataset" => d.name.clone())
                .increment(0);
        }

        let control = Arc::new(Control::default());
        let failure = Arc::new(Mutex::new(None));
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in &p.datasets {
            let (tx, rx) = crossbeam_channel::bounded(cfg.data.prefetch);
            senders.push(tx);
            receivers.push(rx);
        }
        let sched_gate = Arc::new(ReportGate::new(4));
        let reward_gate = Arc::new(ReportGate::new(2));

        // ractor names are process-global; a per-instance suffix lets a host run several
        // runtimes (or tests run in parallel) without name clashes.
        static INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let instance = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (supervisor, sup_join) = Actor::spawn(
            Some(format!("mos-supervisor-{instance}")),
            Supervisor,
            SupervisorArgs {
                instance,
                prepared: p.clone(),
                senders,
                board: board.clone(),
                mos,
                sched_gate: sched_gate.clone(),
                reward_gate: reward_gate.clone(),
                control: control.clone(),
                failure: failure.clone(),
            },
        )
        .await
        .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
        let (scheduler, reward) = ractor::call!(supervisor, SupervisorMsg::Children)
            .map_err(|e| RuntimeError::Spawn(e.to_string()))?;

        let ctx = TrainerCtx {
            cfg: cfg.clone(),
            datasets: p.datasets,
            tokenizer: p.tokenizer,
            receivers,
            board: board.clone(),
            reward: reward.map(|r| (r, reward_gate.clone())),
            scheduler: (scheduler, sched_gate),
            control: control.clone(),
        };
        let backend = cfg.runtime.backend;
        let device_index = cfg.runtime.device;
        let trainer = std::thread::Builder::new()
            .name("mos-trainer".to_string())
            .spawn(move || run_on_backend(ctx, backend, device_index))
            .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
        Ok(RuntimeHandle {
            board,
            control,
            supervisor,
            sup_join: Some(sup_join),
            trainer: Some(trainer),
            failure,
        })
    }
}

fn run_on_backend(
    ctx: TrainerCtx,
    backend: Backend,
    #[allow(unused_variables)] device_index: usize,
) -> Result<RunSummary, TrainerError> {
    match backend {
        Backend::Cpu => run_training::<crate::model::CpuAutodiff>(ctx, crate::model::cpu_device()),
        #[cfg(feature = "cuda")]
        Backend::Cuda => run_training::<crate::model::CudaAutodiff>(
            ctx,
            burn::backend::cuda::CudaDevice::new(device_index),
        ),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(TrainerError::Model(
            "this build has no cuda backend (build with --features cuda)".into(),
        )),
    }
}

/// A running runtime.
pub struct RuntimeHandle {
    board: MixtureBoard,
    control: Arc<Control>,
    supervisor: ActorRef<SupervisorMsg>,
    sup_join: Option<tokio::task::JoinHandle<()>>,
    trainer: Option<std::thread::JoinHandle<Result<RunSummary, TrainerError>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl RuntimeHandle {
    /// The current mixture (lock-free).
    pub fn mixture(&self) -> Arc<MixtureSnapshot> {
        self.board.load()
    }

    /// A receiver notified at every mixture publish.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MixtureSnapshot>> {
        self.board.subscribe()
    }

    /// Pauses training between steps (loaders keep their queues full).
    pub fn pause(&self) {
        self.control.set_paused(true);
    }

    /// Resumes after [`RuntimeHandle::pause`].
    pub fn resume(&self) {
        self.control.set_paused(false);
    }

    /// Asks the trainer to finish its current step, write the model and logs, and stop.
    pub fn stop(&self) {
        self.control.set_paused(false);
        self.control.request_stop();
    }

    /// Optimiser steps completed so far.
    pub fn step(&self) -> u64 {
        self.control.step()
    }

    /// Whether the trainer thread has finished.
    pub fn is_finished(&self) -> bool {
        self.trainer.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the run to end, then stops every actor.
    pub async fn wait(mut self) -> Result<RunSummary, RuntimeError> {
        let trainer = self.trainer.take();
        let result = tokio::task::spawn_blocking(move || match trainer {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(TrainerError::Model("trainer thread panicked".into()))),
            None => Err(TrainerError::Model("already waited".into())),
        })
        .await
        .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
        // Let the scheduler handle what is already queued (the last update's log line), then stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.supervisor.stop(None);
        if let Some(j) = self.sup_join.take() {
            let _ = j.await;
        }
        let failure = self.failure.lock().ok().and_then(|f| f.clone());
        match (result, failure) {
            (Ok(summary), None) => Ok(summary),
            (_, Some(f)) => Err(RuntimeError::Actor(f)),
            (Err(e), None) => Err(e.into()),
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        // A handle dropped without `wait` must not leave a trainer running on its own.
        self.control.request_stop();
        self.supervisor.stop(None);
    }
}

/// The root actor: spawns and links every other actor, and stops the run when one fails.
struct Supervisor;

struct SupervisorArgs {
    instance: u64,
    prepared: Prepared,
    senders: Vec<crossbeam_channel::Sender<crate::data::Example>>,
    board: MixtureBoard,
    mos: Option<MosScheduler>,
    sched_gate: Arc<ReportGate>,
    reward_gate: Arc<ReportGate>,
    control: Arc<Control>,
    failure: Arc<Mutex<Option<String>>>,
}

type Children = (ActorRef<SchedulerMsg>, Option<ActorRef<RewardMsg>>);

enum SupervisorMsg {
    Children(ractor::RpcReplyPort<Children>),
}

struct SupervisorState {
    scheduler: ActorRef<SchedulerMsg>,
    reward: Option<ActorRef<RewardMsg>>,
    control: Arc<Control>,
    failure: Arc<Mutex<Option<String>>>,
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
        let p = args.prepared;
        let cfg = p.cfg.clone();
        for (i, (ds, tx)) in p.datasets.iter().zip(args.senders).enumerate() {
            Actor::spawn_linked(
                Some(format!("mos-loader-{}-{}", args.instance, ds.name)),
                LoaderActor,
                LoaderArgs {
                    dataset_index: i,
                    dataset: ds.clone(),
                    tokenizer: p.tokenizer.clone(),
                    template: cfg.model.chat_template,
                    seq_len: cfg.training.seq_len,
                    seed: crate::trainer::stream_seed(cfg.runtime.seed, "data"),
                    start_at: 0,
                    sender: tx,
                },
                myself.get_cell(),
            )
            .await?;
        }
        let strategy = match &args.mos {
            Some(m) => Strategy::Mos(Box::new(m.clone())),
            None => Strategy::Static(p.prior.clone()),
        };
        let (scheduler, _) = Actor::spawn_linked(
            Some(format!("mos-scheduler-{}", args.instance)),
            SchedulerActor,
            SchedulerArgs {
                strategy,
                board: args.board.clone(),
                log_path: cfg.runtime.output_dir.join("mixture.jsonl"),
                reward: cfg.scheduler.reward,
                debug_delay: Duration::from_millis(cfg.scheduler.debug_update_delay_ms),
                gate: args.sched_gate.clone(),
                start: StartRecord {
                    names: p.datasets.iter().map(|d| d.name.clone()).collect(),
                    sizes: p.sizes.clone(),
                    scheduler: cfg.scheduler.clone(),
                    target: cfg
                        .scheduler
                        .target
                        .as_deref()
                        .and_then(|t| cfg.dataset_index(t)),
                    seed: crate::trainer::stream_seed(cfg.runtime.seed, "scheduler"),
                    prior: p.prior.clone(),
                },
            },
            myself.get_cell(),
        )
        .await?;
        let reward = match args.mos {
            Some(m) => Some(
                Actor::spawn_linked(
                    Some(format!("mos-reward-{}", args.instance)),
                    RewardActor,
                    RewardArgs {
                        estimator: Box::new(m),
                        reward: cfg.scheduler.reward,
                        scheduler: scheduler.clone(),
                        gate: args.reward_gate.clone(),
                        scheduler_gate: args.sched_gate.clone(),
                    },
                    myself.get_cell(),
                )
                .await?
                .0,
            ),
            None => None,
        };
        Ok(SupervisorState {
            scheduler,
            reward,
            control: args.control,
            failure: args.failure,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Children(reply) = msg;
        let _ = reply.send((state.scheduler.clone(), state.reward.clone()));
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(who, err) => {
                let name = who.get_name().unwrap_or_else(|| "actor".to_string());
                tracing::error!(actor = %name, error = %err, "actor failed: stopping the run");
                if let Ok(mut f) = state.failure.lock() {
                    f.get_or_insert_with(|| format!("{name}: {err}"));
                }
                state.control.request_stop();
            }
            SupervisionEvent::ActorTerminated(who, _, reason) => {
                tracing::debug!(actor = ?who.get_name(), ?reason, "actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}
