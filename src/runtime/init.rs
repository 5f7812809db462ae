//! `model.init` at start-up: what the path names (a weights file, or a checkpoint directory
//! whose manifest verifies), and whether its weights have the shape the config gives. Checked
//! while the run is prepared, so `check` and a run refuse the same things with exit 2 before any
//! actor starts; the trainer reads the weights themselves later, on its own thread.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CheckpointError, RunState};
use crate::config::Config;
use crate::model::{check_init_weights, init_weights_file, LlamaConfig, WeightShape};

/// Why `model.init` cannot start the run. The runtime's error adds the config file and the key.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Nothing at the path.
    #[error("{path} does not exist (a finished run's model.mpk or a checkpoint directory checkpoints/step-N/ was expected)")]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// A directory that is not a complete, verified checkpoint.
    #[error("{path} is a directory but not a usable checkpoint: {source}")]
    Checkpoint {
        /// The directory.
        path: PathBuf,
        /// What the checkpoint module found.
        #[source]
        source: CheckpointError,
    },
    /// A checkpoint of a host's own learner, whose files the built-in trainers cannot read.
    #[error("the checkpoint {path} was written by the `{kind}` learner; only checkpoints of the built-in trainers (`fused`, `burn`) hold weights this runtime can start from")]
    NotBuiltIn {
        /// The directory.
        path: PathBuf,
        /// The kind it records.
        kind: String,
    },
    /// The checkpoint records a model of another shape (including the head split, which the
    /// tensors alone do not show).
    #[error("the checkpoint {path} was made with {found}, but the config has {expected}; set the [model] keys to the earlier run's values")]
    RecordedShape {
        /// The directory.
        path: PathBuf,
        /// The recorded shape, formatted.
        found: String,
        /// The config's shape, formatted.
        expected: String,
    },
    /// `model.init` lies inside this run's own output directory, which the run resumes from
    /// or archives (moving the weights away before the trainer reads them).
    #[error("{path} is inside this run's runtime.output_dir {output_dir}, which the run resumes from or archives; copy the weights elsewhere or use another runtime.output_dir")]
    InsideOutputDir {
        /// The configured path.
        path: PathBuf,
        /// The output directory.
        output_dir: PathBuf,
    },
    /// The weights do not load into the config's model.
    #[error(transparent)]
    Weights(#[from] crate::model::InitError),
}

/// Where a run's initial weights come from under `model.init`: what `check` prints and the
/// start-up log names.
#[derive(Debug, Clone, PartialEq)]
pub struct InitSource {
    /// The configured path (resolved against the config file's directory).
    pub path: PathBuf,
    /// The weights file read: the path itself, or `model.mpk` inside the checkpoint.
    pub weights: PathBuf,
    /// The optimiser step of the checkpoint, when the path is one.
    pub checkpoint_step: Option<u64>,
    /// The shape of the stored weights (equal to the config's).
    pub shape: WeightShape,
}

impl fmt::Display for InitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.checkpoint_step {
            Some(step) => write!(
                f,
                "{} (the weights of a checkpoint at step {step})",
                self.path.display()
            ),
            None => write!(f, "{} (a weights file)", self.path.display()),
        }
    }
}

/// Checks the weights `model.init = path` names against `shape`, the model the config gives.
/// Blocking I/O (reads the whole weights file, and hashes a checkpoint's files).
pub(crate) fn inspect(
    cfg: &Config,
    path: &Path,
    shape: &LlamaConfig,
) -> Result<InitSource, InitError> {
    if !path.exists() {
        return Err(InitError::Missing {
            path: path.to_path_buf(),
        });
    }
    refuse_inside_output_dir(path, &cfg.runtime.output_dir)?;
    let checkpoint_step = if path.is_dir() {
        Some(inspect_checkpoint(path, shape)?)
    } else {
        None
    };
    let weights = init_weights_file(path);
    let found = check_init_weights(&weights, shape)?;
    Ok(InitSource {
        path: path.to_path_buf(),
        weights,
        checkpoint_step,
        shape: found,
    })
}

/// A checkpoint directory must verify as a whole (the weights file is one of the files its
/// manifest lists), have been written by a built-in trainer, and record the config's shape.
/// Returns its step.
fn inspect_checkpoint(dir: &Path, shape: &LlamaConfig) -> Result<u64, InitError> {
    let wrap = |source| InitError::Checkpoint {
        path: dir.to_path_buf(),
        source,
    };
    let manifest = checkpoint::verify(dir).map_err(wrap)?;
    let run: RunState = checkpoint::read_json(dir, checkpoint::RUN_STATE).map_err(wrap)?;
    if let Some(kind) = run.learner.as_deref() {
        if kind != "fused" && kind != "burn" {
            return Err(InitError::NotBuiltIn {
                path: dir.to_path_buf(),
                kind: kind.to_string(),
            });
        }
    }
    let recorded = &run.model;
    if architecture(recorded) != architecture(shape) {
        return Err(InitError::RecordedShape {
            path: dir.to_path_buf(),
            found: describe(recorded),
            expected: describe(shape),
        });
    }
    // Neither is a tensor shape: the weights load either way, but they were trained for the
    // recorded values, which is worth a line when a config changes them on purpose or not.
    if recorded.rope_theta != shape.rope_theta || recorded.norm_eps != shape.norm_eps {
        tracing::warn!(
            checkpoint = %dir.display(),
            "model.init: the checkpoint was trained with rope_theta {} and norm_eps {}, the config has rope_theta {} and norm_eps {}",
            recorded.rope_theta,
            recorded.norm_eps,
            shape.rope_theta,
            shape.norm_eps
        );
    }
    Ok(manifest.step)
}

/// The fields that decide what the weights compute; `max_seq_len` (the training sequence
/// length, which only sizes the rotary tables) may change between the runs.
fn architecture(c: &LlamaConfig) -> (usize, usize, usize, usize, usize, usize, bool) {
    (
        c.vocab_size,
        c.d_model,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_hidden,
        c.tie_embeddings,
    )
}

fn describe(c: &LlamaConfig) -> String {
    format!(
        "vocab_size {}, d_model {}, n_layers {}, n_heads {}, n_kv_heads {}, ffn_hidden {}, tie_embeddings {}",
        c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden, c.tie_embeddings
    )
}

fn refuse_inside_output_dir(path: &Path, output_dir: &Path) -> Result<(), InitError> {
    // Both must exist to be compared by their real locations; an output directory that does
    // not exist yet cannot hold the weights.
    let (Ok(p), Ok(out)) = (path.canonicalize(), output_dir.canonicalize()) else {
        return Ok(());
    };
    if p.starts_with(&out) {
        return Err(InitError::InsideOutputDir {
            path: path.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
        });
    }
    Ok(())
}
