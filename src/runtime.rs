//! The embedding API: start the whole runtime from a [`Config`] inside the host's tokio runtime
//! and drive it through a [`RuntimeHandle`].
//!
//! Start-up order: load and validate every dataset (so bad input stops the run before any actor
//! exists), compute the prior mixture, create the output directory, then start the supervisor,
//! which spawns one loader actor per dataset, the scheduler actor and (MoS) the reward actor, and
//! finally the trainer's dedicated OS thread. This module never installs a tracing subscriber or a
//! metrics recorder: that is the binary's (or the host's) job.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use crate::actors::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::{Mixing, MixingPlan, ResumedMixing};

use crate::checkpoint::{self, ActorState, RunState};
use crate::config::{Backend, Config, ConfigError, Strategy as StrategyKind};
use crate::control::{Control, LiveSet};
use crate::data::{load_dataset, DataError, Dataset, Tokenizer};
use crate::mixture::{q_tau, static_mixture, MixtureError, MixtureSnapshot, Strategy};
use crate::seed::stream_seed;
use crate::trainer::{
    run_with_learner, BoxError, Learner, Resume, RunSummary, TrainerCtx, TrainerError,
};

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
    /// `model.pretrained` could not be read.
    #[error("model.pretrained: {0}")]
    Pretrained(#[source] crate::model::LoadError),
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
    let model = match &cfg.model.pretrained {
        Some(path) => crate::model::pretrained_config(path, cfg.training.seq_len)
            .map_err(RuntimeError::Pretrained)?,
        None => crate::trainer::llama_config(&cfg, &tokenizer),
    };
    Ok(Prepared {
        cfg: Arc::new(cfg),
        tokenizer,
        datasets,
        sizes,
        prior,
        model,
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
        let out = cfg.runtime.output_dir.clone();
        preflight_output_dir(&out, &p)?;
        let (resume, actor_state) = {
            let p2 = p.clone();
            let opts2 = opts.clone();
            tokio::task::spawn_blocking(move || find_resume(&p2, &opts2))
                .await
                .map_err(|e| RuntimeError::Spawn(e.into()))??
        };
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
                out.join("mixture.jsonl"),
            )
        };
        // Counters that only move on rare events are registered at zero, so dashboards and
        // alerts see a series (and a rate of 0) from the first scrape instead of "no data".
        metrics::counter!(crate::telemetry::REPORTS_DROPPED).increment(0);
        metrics::counter!(crate::telemetry::TRAIN_STEPS_SKIPPED).increment(0);
        for d in &p.datasets {
            metrics::counter!(crate::telemetry::LOADER_BAD_RECORDS, "dataset" => d.name.clone())
                .increment(0);
        }

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
        let backend = cfg.runtime.backend;
        let device_index = cfg.runtime.device;
        let trainer = std::thread::Builder::new()
            .name("mos-trainer".to_string())
            .spawn(move || match factory {
                Some(f) => {
                    let learner = f(&ctx.cfg, &ctx.tokenizer).map_err(TrainerError::Learner)?;
                    run_with_learner(ctx, learner)
                }
                None => run_on_backend(ctx, backend, device_index),
            })
            .map_err(|e| RuntimeError::Spawn(e.into()))?;
        Ok(RuntimeHandle {
            mixing,
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
    device_index: usize,
) -> Result<RunSummary, TrainerError> {
    let learner = crate::model::build_learner(
        &ctx.cfg,
        backend,
        device_index,
        &ctx.model_shape,
        ctx.tokenizer.vocab_size(),
    )?;
    run_with_learner(ctx, learner)
}

/// How long [`RuntimeHandle::wait`] waits for the scheduler to handle what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    mixing: Mixing,
    control: Arc<Control>,
    supervisor: ActorRef<SupervisorMsg>,
    sup_join: Option<tokio::task::JoinHandle<()>>,
    trainer: Option<std::thread::JoinHandle<Result<RunSummary, TrainerError>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl RuntimeHandle {
    /// The current mixture (lock-free).
    pub fn mixture(&self) -> Arc<MixtureSnapshot> {
        self.mixing.board.load()
    }

    /// A receiver notified at every mixture publish.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MixtureSnapshot>> {
        self.mixing.board.subscribe()
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

    /// Asks for a checkpoint after the current step (written on the trainer thread, atomically,
    /// like the periodic ones). Returns at once; the checkpoint appears in
    /// `output_dir/checkpoints/` within about one step.
    pub fn checkpoint(&self) {
        self.control.request_checkpoint();
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
            Some(t) => t.join().unwrap_or_else(|_| Err(TrainerError::Panicked)),
            None => Err(TrainerError::AlreadyWaited),
        })
        .await
        .map_err(|e| RuntimeError::Spawn(e.into()))?;
        // Ordered drain: the scheduler handles what is already queued (the last update's log
        // line) before anything stops. The bound only matters when an actor has failed.
        if !self.mixing.flush(DRAIN_TIMEOUT).await {
            tracing::warn!(
                "the scheduler did not drain its mailbox within {}s",
                DRAIN_TIMEOUT.as_secs()
            );
        }
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

/// Checks, before anything starts, that the output directory can be created and written and
/// has room for a checkpoint.
fn preflight_output_dir(out: &Path, p: &Prepared) -> Result<(), RuntimeError> {
    let err = |message: String| RuntimeError::OutputDir {
        path: out.to_path_buf(),
        message,
    };
    if out.exists() && !out.is_dir() {
        return Err(err("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| err(format!("cannot be created: {e}")))?;
    let probe = out.join(format!(".write-test-{}", std::process::id()));
    let written = std::fs::write(&probe, [0u8; 4096]).and_then(|_| {
        std::fs::File::open(&probe)?.sync_all()?;
        std::fs::remove_file(&probe)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&probe);
        return Err(err(format!("not writable: {e}")));
    }
    // Weights plus AdamW's two moments, f32, plus a margin for the small files.
    let params = p.model.num_params() as u64;
    let checkpoint_bytes = params * 4 * 3 + (1 << 20);
    if let Some(free) = free_bytes(out) {
        if free < checkpoint_bytes {
            return Err(err(format!(
                "only {} MiB free, but one checkpoint needs about {} MiB",
                free >> 20,
                checkpoint_bytes.div_ceil(1 << 20)
            )));
        }
    }
    Ok(())
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Files of a run in its output directory (besides `checkpoints/`).
const RUN_FILES: &[&str] = &[
    "run.jsonl",
    "mixture.jsonl",
    "samples.jsonl",
    "model.mpk",
    "config.resolved.toml",
];

/// Moves an existing run's files to `output_dir/archive/<unix-time>/`.
fn archive_run(out: &Path) -> Result<PathBuf, RuntimeError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dest = out.join("archive").join(stamp.to_string());
    let err = |e: std::io::Error| RuntimeError::OutputDir {
        path: out.to_path_buf(),
        message: format!("cannot archive the previous run: {e}"),
    };
    std::fs::create_dir_all(&dest).map_err(err)?;
    for name in RUN_FILES.iter().copied().chain([checkpoint::DIR]) {
        let from = out.join(name);
        if from.exists() {
            std::fs::rename(&from, dest.join(name)).map_err(err)?;
        }
    }
    tracing::warn!(to = %dest.display(), "previous run archived");
    Ok(dest)
}

fn existing_run(out: &Path) -> bool {
    !checkpoint::list(out).is_empty() || RUN_FILES.iter().any(|f| out.join(f).exists())
}

/// Decides how the run starts: fresh, or from the newest complete checkpoint (verified, and
/// checked against the config). Blocking I/O.
fn find_resume(
    p: &Prepared,
    opts: &StartOptions,
) -> Result<(Option<Resume>, Option<ActorState>), RuntimeError> {
    let out = &p.cfg.runtime.output_dir;
    checkpoint::clean_partial(out);
    if opts.fresh {
        if existing_run(out) {
            if !opts.overwrite {
                return Err(RuntimeError::ExistingRun { path: out.clone() });
            }
            archive_run(out)?;
        }
        return Ok((None, None));
    }
    let Some((dir, manifest)) = checkpoint::latest_valid(out) else {
        if existing_run(out) {
            tracing::warn!(dir = %out.display(), "the output directory holds a run without a complete checkpoint: starting over");
            archive_run(out)?;
        }
        return Ok((None, None));
    };
    let mismatch = |message: String| RuntimeError::ResumeMismatch {
        checkpoint: dir.clone(),
        message,
    };
    let run: RunState = checkpoint::read_json(&dir, checkpoint::RUN_STATE)?;
    let actors: ActorState = checkpoint::read_json(&dir, checkpoint::ACTOR_STATE)?;
    let model = p.model.clone();
    if run.model != model {
        return Err(mismatch(format!(
            "the model shape changed (checkpoint {:?}, config {:?}); a checkpoint only resumes the model it was made with. Use another runtime.output_dir, or --fresh --overwrite",
            run.model, model
        )));
    }
    if let Ok(old) = std::fs::read_to_string(dir.join(checkpoint::CONFIG)) {
        let new = toml::to_string_pretty(&*p.cfg).unwrap_or_default();
        for line in checkpoint::diff_configs(&old, &new) {
            tracing::warn!("config changed since the checkpoint: {line}");
        }
    }
    let names: Vec<String> = p.datasets.iter().map(|d| d.name.clone()).collect();
    let same_data = run.names == names && run.sizes == p.sizes;
    let (run, actors, needs_initial_probe) = if same_data {
        (run, actors, false)
    } else if !opts.allow_dataset_change {
        return Err(mismatch(format!(
            "the datasets changed: checkpoint {}, config {}. Pass --allow-dataset-change to remap the mixture, cursors and probe sets by dataset name",
            describe_datasets(&run.names, &run.sizes),
            describe_datasets(&names, &p.sizes)
        )));
    } else {
        remap(p, run, actors).map_err(|e| mismatch(e.to_string()))?
    };
    // Cut the logs back to the checkpoint: what a killed run wrote after it is abandoned.
    let cut = |name: &str, len: u64| {
        crate::runlog::truncate_to(&out.join(name), len).map_err(|e| RuntimeError::OutputDir {
            path: out.clone(),
            message: e.to_string(),
        })
    };
    cut("run.jsonl", run.logs.run)?;
    cut("mixture.jsonl", run.logs.mixture)?;
    if let Some(n) = run.logs.samples {
        cut("samples.jsonl", n)?;
    }
    tracing::info!(step = manifest.step, dir = %dir.display(), "resuming from the newest complete checkpoint");
    Ok((
        Some(Resume {
            dir,
            state: run,
            needs_initial_probe,
        }),
        Some(actors),
    ))
}

fn describe_datasets(names: &[String], sizes: &[u64]) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(sizes)
        .map(|(n, s)| format!("{n}({s})"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Remaps a checkpoint's per-dataset state onto the current dataset list, by name. Datasets
/// present in both keep their cursor, probe set, theta_0 perplexities and share of the mixture
/// (a dataset whose size changed keeps its share but restarts its stream and probe set); new
/// ones start at cursor 0 with their prior share. The MoS scorer restarts from the remapped
/// mixture with fresh Adam moments and EMA.
fn remap(
    p: &Prepared,
    run: RunState,
    actors: ActorState,
) -> Result<(RunState, ActorState, bool), MixtureError> {
    let names: Vec<String> = p.datasets.iter().map(|d| d.name.clone()).collect();
    let old_index = |name: &str| run.names.iter().position(|n| n == name);
    let kept: Vec<Option<usize>> = names
        .iter()
        .zip(&p.sizes)
        .map(|(n, &size)| old_index(n).filter(|&j| run.sizes.get(j) == Some(&size)))
        .collect();
    let remap_weights = |old: &[f64]| -> Vec<f64> {
        let mut w: Vec<f64> = names
            .iter()
            .enumerate()
            .map(|(i, n)| match old_index(n) {
                Some(j) => old.get(j).copied().unwrap_or(p.prior[i]),
                None => p.prior[i],
            })
            .collect();
        let total: f64 = w.iter().sum();
        if total > 0.0 && total.is_finite() {
            w.iter_mut().for_each(|x| *x /= total);
        } else {
            w = p.prior.clone();
        }
        w
    };
    let snapshot = |s: &MixtureSnapshot| MixtureSnapshot {
        version: s.version,
        step: s.step,
        names: names.iter().cloned().collect(),
        weights: remap_weights(&s.weights),
    };
    let pick = |v: &[u64]| -> Vec<u64> {
        kept.iter()
            .map(|k| k.and_then(|j| v.get(j).copied()).unwrap_or(0))
            .collect()
    };
    let new_run = RunState {
        names: names.clone(),
        sizes: p.sizes.clone(),
        counts: pick(&run.counts),
        cursors: pick(&run.cursors),
        active: snapshot(&run.active),
        probe_ids: kept
            .iter()
            .map(|k| {
                k.and_then(|j| run.probe_ids.get(j).cloned())
                    .unwrap_or_default()
            })
            .collect(),
        ..run.clone()
    };
    let latest = snapshot(&actors.latest);
    let cfg = &p.cfg;
    let target = cfg
        .scheduler
        .target
        .as_deref()
        .and_then(|t| cfg.dataset_index(t));
    let scheduler = match &actors.scheduler {
        Some(s) => Some(s.restarted_from(
            &cfg.scheduler,
            &latest.weights,
            target,
            stream_seed(cfg.runtime.seed, "scheduler"),
        )?),
        None => None,
    };
    let initial_ppl = actors.initial_ppl.map(|old| {
        kept.iter()
            .map(|k| k.and_then(|j| old.get(j).cloned()).unwrap_or_default())
            .collect::<Vec<Vec<f64>>>()
    });
    let needs_initial = scheduler.is_some() && kept.iter().any(Option::is_none);
    if needs_initial {
        tracing::warn!("datasets new since the checkpoint get theta_0 perplexities from the current model (their DIFF reward starts at 0)");
    }
    tracing::warn!(
        from = ?run.names,
        to = ?names,
        "dataset list changed: mixture, cursors and probe sets remapped by name; the scorer restarts from the remapped mixture"
    );
    Ok((
        new_run,
        ActorState {
            estimator: scheduler.clone(),
            scheduler,
            initial_ppl,
            latest,
        },
        needs_initial,
    ))
}
