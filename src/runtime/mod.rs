//! The embedding API: start the whole runtime from a [`Config`] inside the host's tokio runtime
//! and drive it through a [`RuntimeHandle`].
//!
//! Start-up order: load and validate every dataset (so bad input stops the run before any actor
//! exists), compute the prior mixture, create the output directory, then start the supervisor,
//! which spawns one loader actor per dataset, the scheduler actor and (MoS) the reward actor, and
//! finally the trainer's dedicated OS thread. This module never installs a tracing subscriber or a
//! metrics recorder: that is the binary's (or the host's) job.

mod handle;
mod init;
pub mod memory;
mod resume;
mod rundir;
mod until_done;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::Actor;
use tokio::sync::watch;

use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::{Mixing, MixingPlan, ResumedMixing};
use crate::checkpoint;
use crate::config::{Backend, Config, ConfigError, Strategy as StrategyKind};
use crate::control::{Control, LiveSet};
use crate::data::{load_dataset, DataError, Dataset, Tokenizer};
use crate::mixture::{static_mixture, MixtureError, Strategy};
use crate::seed::stream_seed;
use crate::trainer::{run_with_learner, BoxError, Learner, RunSummary, TrainerCtx, TrainerError};

pub use handle::RuntimeHandle;
pub use init::{InitError, InitSource};
use rundir::RunDir;
pub use until_done::run_until_done;

/// Builds a host-supplied [`Learner`] on the trainer thread, from the config and the tokenizer
/// (whose vocabulary the token ids come from). An error message stops the start-up.
pub type LearnerFactory =
    Box<dyn FnOnce(&Config, &Tokenizer) -> Result<Box<dyn Learner>, BoxError> + Send>;

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
    /// An actor, the trainer thread or a blocking start-up task could not be started.
    #[error("actor start-up failed: {0}")]
    Spawn(#[source] BoxError),
    /// The trainer failed.
    #[error("trainer: {0}")]
    Trainer(#[from] TrainerError),
    /// An actor failed during the run. The supervisor records the failure's message (the
    /// actor's own error stays with ractor's supervision event, which the supervisor cannot
    /// move out of).
    #[error("actor failure: {0}")]
    Actor(String),
    /// `--fresh` over an output directory that already holds a run.
    #[error("{path} already holds a run (checkpoints or logs); resume it by starting without --fresh, or add --overwrite to archive it and start over")]
    ExistingRun {
        /// The output directory.
        path: PathBuf,
    },
    /// The newest checkpoint does not match the config.
    #[error("cannot resume from {checkpoint}: {message}")]
    ResumeMismatch {
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// What differs, and what to do about it.
        message: String,
    },
    /// The newest checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The run's memory estimate exceeds what the process may use.
    #[error("the run needs about {estimate} (mostly {largest}), more than the {limit} of {source_of_limit} this process may use: lower {keys}, or set runtime.memory_check = false to start anyway")]
    Memory {
        /// The estimate, formatted.
        estimate: String,
        /// The limit, formatted.
        limit: String,
        /// Where the limit comes from (`cgroup limit`, `available memory`).
        source_of_limit: &'static str,
        /// The largest part of the estimate.
        largest: &'static str,
        /// The config keys to lower, from the largest part down.
        keys: String,
    },
    /// `model.pretrained` could not be read.
    #[error("model.pretrained: {0}")]
    Pretrained(#[source] crate::model::LoadError),
    /// `model.init` names weights that cannot start this run (missing, a damaged checkpoint,
    /// another shape).
    #[error("{config}: key `model.init`: {source}")]
    Init {
        /// The config file that sets it.
        config: String,
        /// What is wrong (boxed: two shapes would make every `RuntimeError` large).
        #[source]
        source: Box<InitError>,
    },
}

/// How [`Runtime::start_with`] treats an output directory that already holds a run.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Ignore existing checkpoints and start from step 0. Refused over an existing run unless
    /// `overwrite` is also set.
    pub fresh: bool,
    /// With `fresh`: move the existing run's files to `output_dir/archive/<unix-time>/` first.
    pub overwrite: bool,
    /// Resume even though the dataset list (names or sizes) changed since the checkpoint; the
    /// mixture, cursors and probe sets are remapped by dataset name.
    pub allow_dataset_change: bool,
    /// Rollbacks already made in this process (re-seeds the data sampler; see
    /// `training.on_nonfinite`).
    pub rollbacks: u32,
}

/// Datasets, tokenizer and prior of a config: what `check` prints and `start` runs on. Cloning is
/// cheap (shared pointers).
#[derive(Clone, Debug)]
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
    /// The model shape: from `[model]`, or read from `model.pretrained`.
    pub model: crate::model::LlamaConfig,
    /// Where `model.init` takes the initial weights from, checked against `model`; None
    /// without it. A run that resumes from its own checkpoint does not use it.
    pub init: Option<InitSource>,
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
        // Refuses a prior entry that underflows to zero (a frozen mixture otherwise), naming
        // scheduler.init_temperature, so `check` and the run both stop with exit 2.
        StrategyKind::Mos => crate::mixture::mos_prior(&sizes, s.init_temperature.0)?,
        other => static_mixture(other, &sizes, s.temperature.0, &weights)?,
    };
    let model = match &cfg.model.pretrained {
        Some(path) => crate::model::pretrained_config(path, cfg.training.seq_len)
            .map_err(RuntimeError::Pretrained)?,
        None => crate::trainer::llama_config(&cfg, &tokenizer),
    };
    // Checked here rather than when the trainer loads them, so that `check` reports a bad
    // `model.init` and a run refuses it (exit 2) before any actor or output file exists.
    let init = match &cfg.model.init {
        Some(path) => {
            Some(
                init::inspect(&cfg, path, &model).map_err(|source| RuntimeError::Init {
                    config: cfg.file_label(),
                    source: Box::new(source),
                })?,
            )
        }
        None => None,
    };
    Ok(Prepared {
        cfg: Arc::new(cfg),
        tokenizer,
        datasets,
        sizes,
        prior,
        model,
        init,
    })
}

/// The entry point of the embedding API.
#[derive(Debug)]
pub struct Runtime;

impl Runtime {
    /// Loads data, starts every actor and the trainer thread, and returns a handle. Resumes
    /// from the newest complete checkpoint in `output_dir` when there is one. Must be called
    /// inside a multi-threaded tokio runtime.
    pub async fn start(cfg: Config) -> Result<RuntimeHandle, RuntimeError> {
        Self::start_with(cfg, StartOptions::default()).await
    }

    /// As [`Runtime::start`], with explicit options for an existing run.
    pub async fn start_with(
        cfg: Config,
        opts: StartOptions,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let prepared = tokio::task::spawn_blocking(move || prepare(cfg))
            .await
            .map_err(|e| RuntimeError::Spawn(e.into()))??;
        Self::start_prepared_with(prepared, opts).await
    }

    /// As [`Runtime::start`], from an already prepared run.
    pub async fn start_prepared(p: Prepared) -> Result<RuntimeHandle, RuntimeError> {
        Self::start_prepared_with(p, StartOptions::default()).await
    }

    /// As [`Runtime::start_with`], from an already prepared run.
    pub async fn start_prepared_with(
        p: Prepared,
        opts: StartOptions,
    ) -> Result<RuntimeHandle, RuntimeError> {
        Self::start_inner(p, opts, None).await
    }

    /// As [`Runtime::start_with`], training the host's own model: `factory` runs on the
    /// trainer's OS thread (where every [`Learner`] call will run) and returns the learner. The
    /// loaders, reward actor, MoS scheduler, checkpoints and handle work as with the built-in
    /// burn model; `[model]` settings are only used to size the tokenizer-derived checks.
    pub async fn start_with_learner(
        cfg: Config,
        opts: StartOptions,
        factory: LearnerFactory,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let prepared = tokio::task::spawn_blocking(move || prepare(cfg))
            .await
            .map_err(|e| RuntimeError::Spawn(e.into()))??;
        Self::start_inner(prepared, opts, Some(factory)).await
    }

    async fn start_inner(
        p: Prepared,
        opts: StartOptions,
        factory: Option<LearnerFactory>,
    ) -> Result<RuntimeHandle, RuntimeError> {
        let cfg = p.cfg.clone();
        if cfg.runtime.backend == Backend::Cuda && !cfg!(feature = "cuda") {
            return Err(RuntimeError::BackendUnavailable(Backend::Cuda));
        }
        // Before anything allocates for the run: a config that cannot fit stops here, by name.
        let estimate = memory::check(&p, memory::memory_limit())?;
        tracing::info!(
            estimate = %memory::human_bytes(estimate.total()),
            trainer = estimate.trainer,
            "memory estimate"
        );
        let run_dir = RunDir::new(&cfg.runtime.output_dir);
        run_dir.preflight(p.model.num_params())?;
        let (resume, actor_state) = {
            let (p2, opts2, dir2) = (p.clone(), opts.clone(), run_dir.clone());
            tokio::task::spawn_blocking(move || resume::find_resume(&p2, &opts2, &dir2))
                .await
                .map_err(|e| RuntimeError::Spawn(e.into()))??
        };
        run_dir.write_resolved_config(&cfg)?;
        log_initial_weights(&p, resume.as_ref(), factory.is_some());

        let target = cfg
            .scheduler
            .target
            .as_deref()
            .and_then(|t| cfg.dataset_index(t));
        // A checkpointed strategy continues; one without state is rebuilt from the config.
        let strategy = match actor_state.as_ref().and_then(|a| a.scheduler.clone()) {
            Some(s) => s,
            None => Strategy::new(
                &cfg.scheduler,
                &p.sizes,
                target,
                stream_seed(cfg.runtime.seed, "scheduler"),
                &p.prior,
            )?,
        };
        // ractor names are process-global; a per-instance suffix lets a host run several
        // runtimes (or tests run in parallel) without name clashes.
        static INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let instance = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mixing = MixingPlan {
            target,
            resumed: actor_state.map(|a| ResumedMixing {
                latest: a.latest,
                estimator: a.estimator,
                initial_ppl: a.initial_ppl,
            }),
            debug_delay: Duration::from_millis(cfg.scheduler.debug_update_delay_ms),
            name_suffix: Some(instance.to_string()),
            ..MixingPlan::new(
                p.datasets.iter().map(|d| d.name.clone()).collect(),
                p.sizes.clone(),
                cfg.scheduler.clone(),
                stream_seed(cfg.runtime.seed, "scheduler"),
                strategy,
                run_dir.mixture_log(),
            )
        };
        // Counters that only move on rare events are registered at zero, so dashboards and
        // alerts see a series (and a rate of 0) from the first scrape instead of "no data".
        let names: Vec<String> = p.datasets.iter().map(|d| d.name.clone()).collect();
        crate::telemetry::register_counters_at_zero(&names);

        let control = Arc::new(Control::default());
        let live = Arc::new(LiveSet::new(p.datasets.len()));
        metrics::gauge!(crate::telemetry::DATASETS_LIVE).set(p.datasets.len() as f64);
        let failure = Arc::new(Mutex::new(None));
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in &p.datasets {
            let (tx, rx) = crossbeam_channel::bounded(cfg.data.prefetch);
            senders.push(tx);
            receivers.push(rx);
        }
        let (supervisor, sup_join) = Actor::spawn(
            Some(format!("mos-supervisor-{instance}")),
            Supervisor,
            SupervisorArgs {
                instance,
                cfg: cfg.clone(),
                datasets: p.datasets.clone(),
                tokenizer: p.tokenizer.clone(),
                senders,
                cursors: resume
                    .as_ref()
                    .map_or_else(|| vec![0; p.datasets.len()], |r| r.state.cursors.clone()),
                live: live.clone(),
                mixing,
                control: control.clone(),
                failure: failure.clone(),
            },
        )
        .await
        .map_err(|e| RuntimeError::Spawn(e.into()))?;
        let mixing: Mixing = ractor::call!(supervisor, SupervisorMsg::Children)
            .map_err(|e| RuntimeError::Spawn(e.into()))?;

        let ctx = TrainerCtx {
            cfg: cfg.clone(),
            datasets: p.datasets,
            tokenizer: p.tokenizer,
            receivers,
            mixing: mixing.clone(),
            control: control.clone(),
            model_shape: p.model.clone(),
            live,
            resume,
            rollbacks: opts.rollbacks,
        };
        let (done_tx, done) = watch::channel(false);
        let trainer = std::thread::Builder::new()
            .name("mos-trainer".to_string())
            .spawn(move || {
                let result = match factory {
                    Some(f) => f(&ctx.cfg, &ctx.tokenizer)
                        .map_err(TrainerError::Learner)
                        .and_then(|learner| run_with_learner(ctx, learner)),
                    None => run_on_backend(ctx),
                };
                // Wakes `RuntimeHandle::finished`; a panic drops the sender, which wakes it too.
                let _ = done_tx.send(true);
                result
            })
            .map_err(|e| RuntimeError::Spawn(e.into()))?;
        Ok(RuntimeHandle {
            mixing,
            control,
            supervisor,
            sup_join: Some(sup_join),
            trainer: Some(trainer),
            done,
            failure,
        })
    }
}

/// Says where the run's weights come from when `model.init` is set: a resume continues its own
/// checkpoint (the init applies to a fresh start only), a fresh start takes the init's weights.
fn log_initial_weights(p: &Prepared, resume: Option<&crate::trainer::Resume>, host: bool) {
    let Some(init) = &p.init else {
        return;
    };
    match (resume, host) {
        (Some(r), _) => tracing::info!(
            checkpoint = %r.dir.display(),
            "resuming from this run's own checkpoint: model.init = {init} is not used (it applies to a fresh start only)"
        ),
        (None, false) => tracing::info!(
            "initial weights from model.init = {init}; the optimiser, the learning-rate schedule and the mixture start afresh"
        ),
        (None, true) => tracing::warn!(
            "model.init = {init} is read by the built-in trainers only: the host's learner starts from its own weights"
        ),
    }
}

fn run_on_backend(ctx: TrainerCtx) -> Result<RunSummary, TrainerError> {
    let learner = if ctx.resume.is_some() && ctx.cfg.model.init.is_some() {
        // The checkpoint's weights replace whatever the learner starts with, so reading the
        // init's weights as well would only cost time (and fail if they have moved since).
        let mut cfg = (*ctx.cfg).clone();
        cfg.model.init = None;
        crate::model::build_learner(&cfg, &ctx.model_shape, ctx.tokenizer.vocab_size())?
    } else {
        crate::model::build_learner(&ctx.cfg, &ctx.model_shape, ctx.tokenizer.vocab_size())?
    };
    run_with_learner(ctx, learner)
}
