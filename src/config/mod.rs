//! Configuration: raw serde structs loaded from TOML, environment and `--set` overrides, then
//! validated into a [`Config`] that the rest of the runtime trusts.
//!
//! Loading is two-staged (as ripgrep does with its flags): figment merges the file, `MOS_`
//! environment variables and command-line overrides into one tree and deserialises it with unknown
//! keys rejected; [`Config::validate`] then checks the cross-field rules serde cannot express. Every
//! error names the file and the key. This module never touches the file system beyond reading the
//! config file itself; dataset files are checked by `data`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::{Figment, Metadata, Provider};
use serde::{Deserialize, Serialize};

mod service;
pub use service::{load_service_config, Secret, ServiceConfig, TOKEN_ENV};

/// A configuration error. The message always names the source (file, environment or `--set`) and
/// the key involved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist or cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A `--set` override is not of the form `section.key=value`.
    #[error("invalid override `{0}`: expected `section.key=value`")]
    BadOverride(String),
    /// Parsing or deserialising failed (syntax error, unknown key, wrong type).
    #[error("{0}")]
    Parse(String),
    /// A value is syntactically fine but not allowed.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The config file (or `<defaults>`).
        file: String,
        /// Dotted key path, e.g. `datasets[2].weight`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole runtime configuration, validated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-level settings: seed, backend, output directory, step budget.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Model shape (trained from scratch) and tokenizer.
    #[serde(default)]
    pub model: ModelConfig,
    /// Optimiser, schedule, batch shape.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Data pipeline settings shared by all datasets.
    #[serde(default)]
    pub data: DataConfig,
    /// The mixture strategy and the MoS keys of method.md.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// The datasets ("skills") to mix; at least one.
    #[serde(default)]
    pub datasets: Vec<DatasetConfig>,
    /// `mos-runtime serve` only: the scheduler as an HTTP service (ignored by training runs).
    #[serde(default)]
    pub service: ServiceConfig,
    /// The file this config was read from (not a TOML key); used in later error messages and to
    /// resolve relative dataset paths.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Which burn backend runs the model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn-flex on the CPU (always available).
    #[default]
    Cpu,
    /// burn-cuda; needs a build with `--features cuda` and a GPU at run time.
    Cuda,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Master seed; the data, probe and scheduler RNG streams are derived from it.
    pub seed: u64,
    /// `cpu` or `cuda`.
    pub backend: Backend,
    /// Device index for `cuda`.
    pub device: usize,
    /// Where run logs, weights and checkpoints go.
    pub output_dir: PathBuf,
    /// Number of optimiser steps in the run.
    pub max_steps: u64,
    /// A progress line every this many steps.
    pub log_every: u64,
    /// Per-dataset held-out loss every this many steps (0 = only at the end).
    pub eval_every: u64,
    /// Seconds allowed, after SIGINT/SIGTERM, to finish the step and write the outputs.
    pub shutdown_grace_secs: u64,
    /// Write `samples.jsonl`: the (dataset, record index) pairs of every batch (audits, tests).
    pub trace_samples: bool,
    /// A checkpoint every this many steps (0 = only on stop and at the end).
    pub checkpoint_every: u64,
    /// Stop at this step as on SIGTERM (checkpoint, exit 0), leaving the run to be resumed
    /// later; 0 = run to `max_steps`. For time-sliced or preemptible clusters, and for testing
    /// resume. Unlike a smaller `max_steps`, it leaves the learning-rate schedule unchanged.
    pub stop_at_step: u64,
    /// How many complete checkpoints to keep (the newest ones).
    pub keep_checkpoints: usize,
    /// Make every run reproducible bit for bit: at each update boundary the trainer waits until
    /// the previous report's mixture is published (normally already done) instead of going on
    /// with the older mixture, and reports are never dropped. Off by default, because waiting
    /// on the scheduler is exactly what the runtime otherwise never does.
    pub deterministic: bool,
    /// At the end of the run, also write the model as a Hugging Face directory (`<output_dir>/hf`).
    pub export_hf: bool,
    /// Also put a Hugging Face export in every checkpoint (`checkpoints/step-N/hf/`, covered by
    /// the manifest like the other files).
    pub export_hf_checkpoints: bool,
    /// Refuse to start a run whose memory estimate (weights, gradients, optimiser moments,
    /// activations, probe and eval batches, prefetch queues) exceeds what the process may use
    /// (the cgroup limit, else the available memory). Off only for a user who knows better
    /// than the estimate.
    pub memory_check: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            backend: Backend::Cpu,
            device: 0,
            output_dir: PathBuf::from("runs/default"),
            max_steps: 1000,
            log_every: 20,
            eval_every: 200,
            shutdown_grace_secs: 30,
            trace_samples: false,
            checkpoint_every: 500,
            stop_at_step: 0,
            keep_checkpoints: 3,
            deterministic: false,
            export_hf: false,
            export_hf_checkpoints: false,
            memory_check: true,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all (the binary only; the library never installs a recorder).
    pub enabled: bool,
    /// Listen address; loopback by default so nothing is exposed unless asked.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".to_string(),
        }
    }
}

/// The tokenizer: the built-in byte-level one or a Hugging Face `tokenizer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// 256 byte tokens plus BOS, EOS and PAD; needs no file.
    #[default]
    Byte,
    /// A Hugging Face `tokenizer.json` loaded with the `tokenizers` crate (`model.tokenizer_path`).
    Hf,
}

/// How prompt/response and chat records are rendered to text.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplate {
    /// ChatML when the tokenizer has the `<|im_start|>`/`<|im_end|>` tokens (a ChatML-tuned
    /// checkpoint such as SmolLM2), `plain` otherwise; resolved when the tokenizer is loaded.
    #[default]
    Auto,
    /// `User: ...\nAssistant: ...\n` style, for models trained from scratch.
    Plain,
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as SmolLM2 uses.
    Chatml,
}

/// `[model]`: a Llama-style decoder trained from scratch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `byte` (default) or `hf`.
    pub tokenizer: TokenizerKind,
    /// Path of `tokenizer.json` when `tokenizer = "hf"`.
    pub tokenizer_path: Option<PathBuf>,
    /// Chat rendering of prompt/response and messages records.
    pub chat_template: ChatTemplate,
    /// A pretrained checkpoint to fine-tune: a GGUF file or a Hugging Face Llama directory.
    /// When set, the model shape and the tokenizer come from it and the shape keys below and
    /// `tokenizer`/`tokenizer_path` are not used.
    pub pretrained: Option<PathBuf>,
    /// The weights of an earlier run of this runtime to start from: its `model.mpk` (what a
    /// finished run writes in its `runtime.output_dir`) or one of its checkpoint directories
    /// (`checkpoints/step-N/`, used only if its manifest verifies). Only the weights are taken:
    /// the optimiser, the learning-rate schedule and the mixture start afresh. The shape keys
    /// below (and the tokenizer) must describe the same model; another shape is refused. It
    /// applies to a fresh start only: a run that resumes from a checkpoint in its own
    /// `output_dir` continues that checkpoint's weights. Not with `pretrained`.
    pub init: Option<PathBuf>,
    /// Hidden size.
    pub d_model: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); must divide `n_heads`.
    pub n_kv_heads: usize,
    /// SwiGLU hidden size.
    pub ffn_hidden: usize,
    /// Rotary embedding base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Share the input embedding with the output projection.
    pub tie_embeddings: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            tokenizer: TokenizerKind::Byte,
            tokenizer_path: None,
            chat_template: ChatTemplate::Auto,
            pretrained: None,
            init: None,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_hidden: 352,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        }
    }
}

/// `[training]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Tokens per example after truncation.
    pub seq_len: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps before cosine decay.
    pub warmup_steps: u64,
    /// The cosine decays to `lr * min_lr_ratio` at `max_steps`.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Train on prompt tokens too (the reference code's behaviour); method.md section 6.
    pub loss_on_prompt: bool,
    /// Held-out examples per dataset used by each evaluation.
    pub eval_examples: usize,
    /// After this many non-finite losses in a row, `on_nonfinite` applies (skipped steps below
    /// the limit are only counted and logged).
    pub nonfinite_limit: u64,
    /// What to do at `nonfinite_limit`: roll back to the last checkpoint or stop the run.
    pub on_nonfinite: NonFiniteAction,
    /// Rollbacks allowed in one process before the run stops instead.
    pub max_rollbacks: u32,
    /// Held-out records per dataset scored by exact match of greedy decoding at the end of the
    /// run, for datasets with `exact_match = true` (0 turns it off everywhere).
    pub exact_match_examples: usize,
    /// Records whose reference answer is longer than this many tokens are not used for exact
    /// match (greedy decoding costs one forward pass per generated token).
    pub max_answer_tokens: usize,
    /// Which trainer runs on the CPU backend: `fused` (hand-derived kernels over flat buffers,
    /// about 2-3x faster) or `burn` (burn's autodiff). Both compute the same function; the GPU
    /// always uses burn. Checkpoints name their trainer, and resume with the same one.
    pub cpu_kernels: CpuKernels,
}

/// The CPU trainer (`training.cpu_kernels`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuKernels {
    /// [`FusedTrainer`](crate::model::FusedTrainer): fused forward and backward kernels; falls
    /// back to `burn` (with a warning) for a pretrained model with projection biases.
    #[default]
    Fused,
    /// [`Trainer`](crate::model::Trainer) on burn-flex with autodiff.
    Burn,
}

/// What happens after too many non-finite losses in a row.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NonFiniteAction {
    /// Reload the newest checkpoint and continue with a re-seeded data stream.
    #[default]
    Rollback,
    /// Stop the run with an error (the last checkpoint stays as it is).
    Stop,
}

/// What happens to a dataset whose loader keeps failing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoaderFailureAction {
    /// Stop the run (with a checkpoint).
    #[default]
    Stop,
    /// Drop the dataset: training goes on over the others, the mixture renormalised.
    Drop,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            batch_size: 16,
            seq_len: 128,
            lr: 3e-3,
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            loss_on_prompt: false,
            eval_examples: 64,
            nonfinite_limit: 5,
            on_nonfinite: NonFiniteAction::Rollback,
            max_rollbacks: 3,
            exact_match_examples: 32,
            max_answer_tokens: 24,
            cpu_kernels: CpuKernels::Fused,
        }
    }
}

/// `[data]`: defaults shared by every dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Fraction of records held out for evaluation when a dataset has no `eval_path`.
    pub eval_fraction: f64,
    /// Capacity of each loader's prefetch queue, in examples.
    pub prefetch: usize,
    /// Records longer than this many bytes are treated as malformed (protects memory).
    pub max_record_bytes: usize,
    /// Restarts of one dataset's loader allowed before `on_loader_failure` applies.
    pub max_loader_restarts: u32,
    /// Delay before the first restart of a failed loader; doubles at each further restart of
    /// the same loader (capped at 30 s).
    pub restart_backoff_ms: u64,
    /// What happens to a dataset whose loader failed more than `max_loader_restarts` times.
    pub on_loader_failure: LoaderFailureAction,
    /// Train on these `[[datasets]]` only (by name); the others in the file are ignored. Empty:
    /// all of them. Lets one file serve a specialist baseline (`--set 'data.only=["maths"]'`).
    pub only: Vec<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            eval_fraction: 0.05,
            prefetch: 256,
            max_record_bytes: 1 << 20,
            max_loader_restarts: 5,
            restart_backoff_ms: 200,
            on_loader_failure: LoaderFailureAction::Stop,
            only: Vec::new(),
        }
    }
}

/// The mixture strategy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Learned online by the MoS scorer.
    Mos,
    /// q_tau over dataset sizes with `scheduler.temperature`.
    #[default]
    Temperature,
    /// tau = 1.
    Proportional,
    /// tau = inf.
    Uniform,
    /// The `weight` of each dataset, normalised.
    Fixed,
}

/// The MoS scorer's parameterisation (method.md 2.1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    /// N free logits, p = softmax(w).
    #[default]
    Logits,
    /// Two layers, hidden 32, tanh, on an all-ones input.
    Mlp,
}

/// Reward family (method.md 3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// Transferability: mean cosine similarity of dataset embeddings.
    #[default]
    Cossim,
    /// Difficulty: perplexity now over perplexity at theta_0.
    Diff,
    /// The control: every reward is 1 at every update boundary, with no probe pass. What the
    /// method does with no signal at all (a learned mixture that only beats a static one by as
    /// much as this control does has learned nothing from the data).
    Constant,
}

/// Which tokens the DIFF perplexity covers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PplSpan {
    /// Response tokens given the prompt (the paper).
    #[default]
    Response,
    /// Every token (the reference code).
    Sequence,
}

/// Whether the mixture is sampled per example or per batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SampleUnit {
    /// One dataset draw per example (the reference code).
    #[default]
    Example,
    /// One dataset draw per batch (the paper's Algorithm 1).
    Batch,
}

/// A temperature that may be infinite (`"inf"` in TOML).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(pub f64);

impl Serialize for Temperature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_infinite() {
            s.serialize_str("inf")
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Temperature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(Temperature(v)),
            Raw::Int(v) => Ok(Temperature(v as f64)),
            Raw::Str(s) if s.eq_ignore_ascii_case("inf") => Ok(Temperature(f64::INFINITY)),
            Raw::Str(s) => s.parse::<f64>().map(Temperature).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a positive number or \"inf\", found {s:?}"
                ))
            }),
        }
    }
}

/// `[scheduler]`: the strategy and every MoS key of method.md, with its defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// `mos`, `temperature`, `proportional`, `uniform` or `fixed`.
    pub strategy: Strategy,
    /// tau for `strategy = "temperature"`.
    pub temperature: Temperature,
    /// S: steps between MoS updates (also how often static strategies re-publish).
    pub update_every: u64,
    /// tau of the prior q_tau the scorer starts from.
    pub init_temperature: Temperature,
    /// `logits` or `mlp`.
    pub scorer: ScorerKind,
    /// Adam learning rate of the scorer.
    pub scorer_lr: f64,
    /// Adam steps per update.
    pub scorer_steps: usize,
    /// `cossim` or `diff`.
    pub reward: RewardKind,
    /// Smooth rewards with the EMA of method.md 3.3.
    pub ema: bool,
    /// Weight of the new reward in the EMA.
    pub ema_beta: f64,
    /// MoSpec target dataset name.
    pub target: Option<String>,
    /// MoSpec DIFF multiplier of the target's reward.
    pub target_boost: f64,
    /// Probe examples per dataset.
    pub probe_size: usize,
    /// Tokens covered by the DIFF perplexity.
    pub ppl_span: PplSpan,
    /// Per-example or per-batch dataset draws.
    pub sample_unit: SampleUnit,
    /// Test and benchmark hook: the scheduler sleeps this long in every update, to prove the
    /// training loop never waits on it.
    pub debug_update_delay_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Temperature,
            temperature: Temperature(10.0),
            update_every: 100,
            init_temperature: Temperature(10.0),
            scorer: ScorerKind::Logits,
            scorer_lr: 1e-4,
            scorer_steps: 200,
            reward: RewardKind::Cossim,
            ema: false,
            ema_beta: 0.9,
            target: None,
            target_boost: 2.0,
            probe_size: 64,
            ppl_span: PplSpan::Response,
            sample_unit: SampleUnit::Example,
            debug_update_delay_ms: 0,
        }
    }
}

/// Record format of a dataset file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// One JSON object per line: `{"text"}`, `{"prompt","response"}` or `{"messages":[...]}`.
    Jsonl,
    /// Plain text; records separated by `separator`.
    Text,
}

/// One `[[datasets]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Unique name; the `dataset` label in metrics.
    pub name: String,
    /// Training file (a relative path is relative to the config file's directory).
    pub path: PathBuf,
    /// `jsonl` or `text`.
    pub format: DatasetFormat,
    /// Record separator line for `format = "text"` (default: a blank line).
    #[serde(default)]
    pub separator: Option<String>,
    /// Explicit held-out file, same format; otherwise a seeded hash split of `path`.
    #[serde(default)]
    pub eval_path: Option<PathBuf>,
    /// Per-dataset override of `data.eval_fraction`.
    #[serde(default)]
    pub eval_fraction: Option<f64>,
    /// Weight for `strategy = "fixed"`.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Score this dataset's held-out records by exact match of the greedy answer at the end of
    /// the run (prompt/response or chat records; see `answer_marker`).
    #[serde(default)]
    pub exact_match: bool,
    /// For exact match: the reference answer is the text after the last occurrence of this
    /// marker in the response (e.g. `"Answer:"`), and the response up to it is given to the
    /// model as context. Without it the whole response is the answer.
    #[serde(default)]
    pub answer_marker: Option<String>,
}

impl Config {
    /// Loads `path`, then `MOS_` environment overrides (`MOS_RUNTIME__MAX_STEPS=50`: sections and
    /// keys separated by a double underscore), then `overrides` (`section.key=value`, values parsed
    /// as TOML), and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, overrides, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (tests, embedding hosts).
    pub fn load_with_env(
        path: &Path,
        overrides: &[String],
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let cfg = Self::load_layers(path, overrides, env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file, then `MOS_` variables of `env`, then `overrides`, with relative paths resolved
    /// against the file's directory; not yet validated (the training and the service configs
    /// validate different things).
    pub(crate) fn load_layers(
        path: &Path,
        overrides: &[String],
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        // Read the file ourselves first: figment treats a missing file as empty, which would turn
        // a typo in --config into a silent run on defaults.
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        let mut fig = Figment::new().merge(Named {
            inner: Toml::string(&text),
            name: file.clone(),
        });
        fig = fig.merge(env_provider(env));
        for o in overrides {
            let (key, value) = parse_override(o)?;
            fig = fig.merge(Named {
                inner: Serialized::default(&key, value),
                name: format!("--set {o}"),
            });
        }
        let mut cfg: Config = fig.extract().map_err(|e| render_figment_error(e, &file))?;
        cfg.source = Some(path.to_path_buf());
        cfg.apply_only()?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses a config from a TOML string (no file, no environment); for tests and embedding.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = Figment::new()
            .merge(Named {
                inner: Toml::string(text),
                name: "<string>".to_string(),
            })
            .extract()
            .map_err(|e| render_figment_error(e, "<string>"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Input paths (datasets, tokenizer) are relative to the config file's directory, as in
    /// Cargo manifests, so a config works from any working directory; `runtime.output_dir` stays
    /// relative to the working directory, where a user expects run outputs to appear.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for d in &mut self.datasets {
            fix(&mut d.path);
            if let Some(e) = d.eval_path.as_mut() {
                fix(e);
            }
        }
        if let Some(t) = self.model.tokenizer_path.as_mut() {
            fix(t);
        }
        if let Some(p) = self.model.pretrained.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.init.as_mut() {
            fix(p);
        }
    }

    /// Keeps only the datasets named in `data.only` (an unknown name is an error naming the
    /// key). Idempotent, so a resolved config that already lists only those loads the same.
    fn apply_only(&mut self) -> Result<(), ConfigError> {
        if self.data.only.is_empty() {
            return Ok(());
        }
        for name in &self.data.only {
            if self.dataset_index(name).is_none() {
                let known: Vec<&str> = self.datasets.iter().map(|d| d.name.as_str()).collect();
                return Err(self.invalid(
                    "data.only",
                    format!("no dataset named {name:?} (datasets: {})", known.join(", ")),
                ));
            }
        }
        let only = self.data.only.clone();
        self.datasets.retain(|d| only.contains(&d.name));
        Ok(())
    }

    /// The file this config was read from, for messages (`<config>` for one built in code);
    /// the runtime's `model.init` errors name it too.
    pub(crate) fn file_label(&self) -> String {
        self.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<config>".to_string())
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file_label(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks the rules serde cannot express. Called by every loader; public so that hosts that
    /// build a `Config` in code can check it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.runtime;
        if r.max_steps == 0 {
            return Err(self.invalid("runtime.max_steps", "must be at least 1"));
        }
        if r.log_every == 0 {
            return Err(self.invalid("runtime.log_every", "must be at least 1"));
        }
        if r.keep_checkpoints == 0 {
            return Err(self.invalid("runtime.keep_checkpoints", "must be at least 1"));
        }
        if self.metrics.enabled && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(self.invalid(
                "metrics.listen",
                format!(
                    "`{}` is not an address of the form 127.0.0.1:9464",
                    self.metrics.listen
                ),
            ));
        }
        let m = &self.model;
        if m.d_model == 0 || m.n_layers == 0 || m.n_heads == 0 || m.n_kv_heads == 0 {
            return Err(self.invalid(
                "model",
                "d_model, n_layers, n_heads and n_kv_heads must be positive",
            ));
        }
        if !m.d_model.is_multiple_of(m.n_heads) {
            return Err(self.invalid("model.n_heads", "must divide model.d_model"));
        }
        if !(m.d_model / m.n_heads).is_multiple_of(2) {
            return Err(self.invalid(
                "model.n_heads",
                "head size d_model / n_heads must be even (rotary embeddings)",
            ));
        }
        if !m.n_heads.is_multiple_of(m.n_kv_heads) {
            return Err(self.invalid("model.n_kv_heads", "must divide model.n_heads"));
        }
        if m.ffn_hidden == 0 {
            return Err(self.invalid("model.ffn_hidden", "must be positive"));
        }
        if m.pretrained.is_some() && m.init.is_some() {
            // Both name the starting weights, and the shape comes from the pretrained file
            // but is checked against the [model] keys for `init`: one of them has to go.
            return Err(self.invalid(
                "model.init",
                "model.init and model.pretrained both name the starting weights; set only one \
                 (model.init for the weights of an earlier run of this runtime, \
                 model.pretrained for a GGUF file or a Hugging Face directory)",
            ));
        }
        if m.pretrained.is_some() && m.tokenizer == TokenizerKind::Hf {
            return Err(self.invalid(
                "model.tokenizer",
                "the tokenizer comes from model.pretrained; leave model.tokenizer unset",
            ));
        }
        if m.tokenizer == TokenizerKind::Hf && m.tokenizer_path.is_none() {
            return Err(self.invalid(
                "model.tokenizer_path",
                "required when model.tokenizer = \"hf\"",
            ));
        }
        let t = &self.training;
        if t.batch_size == 0 {
            return Err(self.invalid("training.batch_size", "must be at least 1"));
        }
        if t.seq_len < 2 {
            return Err(self.invalid("training.seq_len", "must be at least 2"));
        }
        if t.exact_match_examples > 0
            && (t.max_answer_tokens == 0 || t.max_answer_tokens >= t.seq_len)
        {
            return Err(self.invalid(
                "training.max_answer_tokens",
                format!(
                    "must be between 1 and training.seq_len - 1 = {}",
                    t.seq_len - 1
                ),
            ));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(self.invalid("training.lr", "must be a positive number"));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(self.invalid("training.min_lr_ratio", "must be in [0, 1]"));
        }
        if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
            return Err(self.invalid("training.grad_clip", "must be >= 0"));
        }
        if !(0.0..1.0).contains(&self.data.eval_fraction) {
            return Err(self.invalid("data.eval_fraction", "must be in [0, 1)"));
        }
        if self.data.prefetch == 0 {
            return Err(self.invalid("data.prefetch", "must be at least 1"));
        }
        let s = &self.scheduler;
        for (key, tau) in [
            ("scheduler.temperature", s.temperature.0),
            ("scheduler.init_temperature", s.init_temperature.0),
        ] {
            if tau.is_nan() || tau <= 0.0 {
                return Err(self.invalid(key, "must be a positive number or \"inf\""));
            }
        }
        if s.update_every == 0 {
            return Err(self.invalid("scheduler.update_every", "must be at least 1"));
        }
        if !(s.scorer_lr > 0.0 && s.scorer_lr.is_finite()) {
            return Err(self.invalid("scheduler.scorer_lr", "must be positive"));
        }
        if !(s.ema_beta > 0.0 && s.ema_beta <= 1.0) {
            return Err(self.invalid("scheduler.ema_beta", "must be in (0, 1]"));
        }
        if !(s.target_boost > 0.0 && s.target_boost.is_finite()) {
            return Err(self.invalid("scheduler.target_boost", "must be positive"));
        }
        if s.strategy == Strategy::Mos && s.probe_size == 0 {
            return Err(self.invalid("scheduler.probe_size", "must be at least 1"));
        }
        if self.datasets.is_empty() {
            return Err(self.invalid("datasets", "at least one [[datasets]] entry is required"));
        }
        let mut names = BTreeSet::new();
        for (i, d) in self.datasets.iter().enumerate() {
            let key = |k: &str| format!("datasets[{i}].{k}");
            if d.name.trim().is_empty() {
                return Err(self.invalid(key("name"), "must not be empty"));
            }
            if !d
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(self.invalid(
                    key("name"),
                    format!(
                        "`{}` may only contain ASCII letters, digits, '_', '-' and '.' (it is a metrics label)",
                        d.name
                    ),
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(
                    self.invalid(key("name"), format!("duplicate dataset name `{}`", d.name))
                );
            }
            if let Some(f) = d.eval_fraction {
                if !(0.0..1.0).contains(&f) {
                    return Err(self.invalid(key("eval_fraction"), "must be in [0, 1)"));
                }
            }
            if let Some(w) = d.weight {
                if !(w.is_finite() && w > 0.0) {
                    return Err(self.invalid(
                        key("weight"),
                        format!("fixed weights must be positive and finite, found {w}"),
                    ));
                }
            }
            if s.strategy == Strategy::Fixed && d.weight.is_none() {
                return Err(self.invalid(
                    key("weight"),
                    "required for every dataset when scheduler.strategy = \"fixed\"",
                ));
            }
            if d.format == DatasetFormat::Jsonl && d.separator.is_some() {
                return Err(self.invalid(key("separator"), "only meaningful for format = \"text\""));
            }
        }
        if let Some(t) = &s.target {
            if !names.contains(t.as_str()) {
                return Err(self.invalid(
                    "scheduler.target",
                    format!("`{t}` is not the name of a dataset"),
                ));
            }
        }
        Ok(())
    }

    /// Index of a dataset by name.
    pub fn dataset_index(&self, name: &str) -> Option<usize> {
        self.datasets.iter().position(|d| d.name == name)
    }
}

fn env_provider(env: &[(String, String)]) -> Figment {
    // figment's own Env provider reads the process environment; we take the pairs explicitly so
    // tests and embedding hosts control them. Keys look like MOS_RUNTIME__MAX_STEPS.
    let mut fig = Figment::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("MOS_") else {
            continue;
        };
        if rest.is_empty() || !rest.contains("__") {
            continue;
        }
        let key = rest
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        fig = fig.merge(Named {
            inner: Serialized::default(&key, parse_value(v)),
            name: format!("environment variable {k}"),
        });
    }
    fig
}

/// A provider with a name of our choosing, so errors say where a value came from
/// ("environment variable MOS_RUNTIME__SEED", "--set runtime.seed=x") instead of "rust struct".
struct Named<P> {
    inner: P,
    name: String,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Parses `section.key=value`; the value is read as a TOML value when it parses as one, else as a
/// string (so `--set runtime.output_dir=runs/x` works without quotes).
fn parse_override(o: &str) -> Result<(String, toml::Value), ConfigError> {
    let (k, v) = o
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(o.to_string()))?;
    let k = k.trim();
    if k.is_empty() || k.starts_with('.') || k.ends_with('.') {
        return Err(ConfigError::BadOverride(o.to_string()));
    }
    Ok((k.to_string(), parse_value(v.trim())))
}

fn parse_value(v: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Wrap {
        v: toml::Value,
    }
    toml::from_str::<Wrap>(&format!("v = {v}"))
        .map(|w| w.v)
        .unwrap_or_else(|_| toml::Value::String(v.to_string()))
}

fn render_figment_error(e: figment::Error, file: &str) -> ConfigError {
    let mut lines = Vec::new();
    for err in e {
        let key = if err.path.is_empty() {
            String::new()
        } else {
            format!(" at key `{}`", err.path.join("."))
        };
        let origin = err
            .metadata
            .as_ref()
            .map(|m| m.name.to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| file.to_string());
        lines.push(format!("{origin}{key}: {}", err.kind));
    }
    ConfigError::Parse(lines.join("\n"))
}

#[cfg(test)]
mod tests;
