//! `model.init`: the weights of an earlier run (its `model.mpk`, or the `model.mpk` inside one of
//! its checkpoint directories) as the starting point of a new run, checked against the shape the
//! config gives before a single weight is used.
//!
//! Both built-in trainers write the same file (burn's named MessagePack record of [`Llama`]; the
//! fused trainer converts its flat buffers with `to_burn` first), so a file written by either
//! starts a run on either. Only the weights are read: the optimiser moments, the step counter and
//! the learning-rate schedule of the earlier run are not, so the new run starts them afresh.
//!
//! burn's `load_record` does not compare shapes (a record of another width would silently
//! become a model whose tensors disagree with its own config, and fail later inside a kernel), so
//! every tensor's shape is compared with the one the config implies first, and a mismatch is a
//! typed [`InitError`] that names both shapes.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::llama::LlamaRecord;
use super::{load_record, CpuBackend, Llama, LlamaConfig, ModelError};

/// The weights file of a finished run (in its output directory) and of a built-in trainer's
/// checkpoint (in `checkpoints/step-N/`): the same name and the same format in both places.
pub const WEIGHTS_FILE: &str = "model.mpk";

/// Why the weights named by `model.init` cannot start the run.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The file is missing, unreadable, or not a record of this model.
    #[error("cannot read {path} as model weights: {source}")]
    Read {
        /// The weights file.
        path: PathBuf,
        /// What the reader said.
        #[source]
        source: ModelError,
    },
    /// The stored tensors do not have the shape the config gives.
    #[error(
        "the weights in {path} have {found}, but the config has {expected} (different: {}); \
         set the [model] keys to the earlier run's values",
        found.differences(expected).join(", ")
    )]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The shape of the stored tensors.
        found: WeightShape,
        /// The shape the config implies.
        expected: WeightShape,
    },
    /// The summary shapes agree but one tensor does not (a file that no built-in trainer
    /// writes, so it is named rather than guessed at).
    #[error("tensor {tensor} in {path} is {found:?}, but the config needs {expected:?}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's dotted name.
        tensor: String,
        /// Its stored dimensions.
        found: Vec<usize>,
        /// The dimensions the config implies.
        expected: Vec<usize>,
    },
}

/// What the tensors of a weights file say about the model's shape. The head count itself is
/// not recorded in the tensors (only the key/value width `n_kv_heads * d_model / n_heads` is),
/// and neither are `rope_theta` or `norm_eps`; a checkpoint directory records them, and the
/// runtime compares those too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightShape {
    /// Embedding rows (the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Width of the key and value projections, `n_kv_heads * d_model / n_heads`.
    pub kv_width: usize,
    /// SwiGLU hidden width.
    pub ffn_hidden: usize,
    /// Whether the output projection is the embedding matrix.
    pub tie_embeddings: bool,
    /// Whether the attention projections have biases (some pretrained models do; a config's
    /// model never does).
    pub biases: bool,
}

impl WeightShape {
    /// The shape a model built from `cfg` has.
    pub fn of_config(cfg: &LlamaConfig) -> Self {
        Self {
            vocab_size: cfg.vocab_size,
            d_model: cfg.d_model,
            n_layers: cfg.n_layers,
            kv_width: cfg.n_kv_heads * cfg.head_dim(),
            ffn_hidden: cfg.ffn_hidden,
            tie_embeddings: cfg.tie_embeddings,
            biases: false,
        }
    }

    /// The names of the fields that differ from `other`, in display order.
    pub fn differences(&self, other: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let pairs = [
            ("vocab_size", self.vocab_size == other.vocab_size),
            ("d_model", self.d_model == other.d_model),
            ("n_layers", self.n_layers == other.n_layers),
            ("kv_width", self.kv_width == other.kv_width),
            ("ffn_hidden", self.ffn_hidden == other.ffn_hidden),
            (
                "tie_embeddings",
                self.tie_embeddings == other.tie_embeddings,
            ),
            ("biases", self.biases == other.biases),
        ];
        for (name, same) in pairs {
            if !same {
                out.push(name);
            }
        }
        out
    }

    fn of_record<B: Backend>(rec: &LlamaRecord<B>) -> Self {
        let embed = dims(&rec.embed_tokens.weight);
        let first = rec.layers.first();
        Self {
            vocab_size: embed.first().copied().unwrap_or(0),
            d_model: embed.get(1).copied().unwrap_or(0),
            n_layers: rec.layers.len(),
            kv_width: first.map_or(0, |l| dims(&l.self_attn.k_proj.weight)[1]),
            ffn_hidden: first.map_or(0, |l| dims(&l.mlp.gate_proj.weight)[1]),
            tie_embeddings: rec.lm_head.is_none(),
            biases: first.is_some_and(|l| l.self_attn.q_proj.bias.is_some()),
        }
    }
}

impl fmt::Display for WeightShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vocab_size {}, d_model {}, n_layers {}, kv_width {} (n_kv_heads x d_model / n_heads), \
             ffn_hidden {}, tie_embeddings {}",
            self.vocab_size,
            self.d_model,
            self.n_layers,
            self.kv_width,
            self.ffn_hidden,
            self.tie_embeddings
        )?;
        if self.biases {
            f.write_str(", attention biases")?;
        }
        Ok(())
    }
}

/// The weights file `model.init` names: the path itself, or `model.mpk` inside it when it is a
/// directory (a checkpoint; the runtime verifies its manifest before this file is read).
pub fn init_weights_file(init: &Path) -> PathBuf {
    if init.is_dir() {
        init.join(WEIGHTS_FILE)
    } else {
        init.to_path_buf()
    }
}

/// Reads the weights file at `path` and checks every tensor's shape against `shape`; returns
/// the shape the tensors have. Reads the whole file on the CPU (the record format has no header
/// that holds the shapes alone), without building a model.
pub fn check_init_weights(path: &Path, shape: &LlamaConfig) -> Result<WeightShape, InitError> {
    let rec = read::<CpuBackend>(path, &Default::default())?;
    check_record(path, &rec, shape)?;
    Ok(WeightShape::of_record(&rec))
}

/// The model of `shape` with the weights of `path` (checked as in [`check_init_weights`]) on
/// `device`.
pub fn load_init<B: Backend>(
    path: &Path,
    shape: &LlamaConfig,
    device: &B::Device,
) -> Result<Llama<B>, InitError> {
    let rec = read::<B>(path, device)?;
    check_record(path, &rec, shape)?;
    // The seeded weights are all replaced; building them keeps one constructor of the module
    // (and its rotary tables) rather than a second one that fills it from a record.
    Ok(shape.init_seeded::<B>(0, device).load_record(rec))
}

fn read<B: Backend>(path: &Path, device: &B::Device) -> Result<LlamaRecord<B>, InitError> {
    load_record::<B, LlamaRecord<B>>(path, device).map_err(|source| InitError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn check_record<B: Backend>(
    path: &Path,
    rec: &LlamaRecord<B>,
    shape: &LlamaConfig,
) -> Result<(), InitError> {
    let found = WeightShape::of_record(rec);
    let expected = WeightShape::of_config(shape);
    if found != expected {
        return Err(InitError::Shape {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    for ((name, have), (_, want)) in record_tensors(rec).into_iter().zip(config_tensors(shape)) {
        if have != want {
            return Err(InitError::Tensor {
                path: path.to_path_buf(),
                tensor: name,
                found: have,
                expected: want,
            });
        }
    }
    Ok(())
}

fn dims<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> Vec<usize> {
    p.lazy_shape().as_slice().to_vec()
}

/// Every tensor of a record with its dotted name, in the order of [`config_tensors`].
fn record_tensors<B: Backend>(rec: &LlamaRecord<B>) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(
        "embed_tokens.weight".to_string(),
        dims(&rec.embed_tokens.weight),
    )];
    for (i, l) in rec.layers.iter().enumerate() {
        let a = &l.self_attn;
        let m = &l.mlp;
        for (name, w) in [
            ("self_attn.q_proj", &a.q_proj.weight),
            ("self_attn.k_proj", &a.k_proj.weight),
            ("self_attn.v_proj", &a.v_proj.weight),
            ("self_attn.o_proj", &a.o_proj.weight),
            ("mlp.gate_proj", &m.gate_proj.weight),
            ("mlp.up_proj", &m.up_proj.weight),
            ("mlp.down_proj", &m.down_proj.weight),
        ] {
            out.push((format!("layers.{i}.{name}.weight"), dims(w)));
        }
        out.push((
            format!("layers.{i}.input_layernorm.weight"),
            dims(&l.input_layernorm.gamma),
        ));
        out.push((
            format!("layers.{i}.post_attention_layernorm.weight"),
            dims(&l.post_attention_layernorm.gamma),
        ));
    }
    out.push(("norm.weight".to_string(), dims(&rec.norm.gamma)));
    if let Some(h) = &rec.lm_head {
        out.push(("lm_head.weight".to_string(), dims(&h.weight)));
    }
    out
}

/// Every tensor a model of `cfg` has, named and ordered as [`record_tensors`] lists them.
fn config_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, q, kv, f) = (
        cfg.d_model,
        cfg.n_heads * cfg.head_dim(),
        cfg.n_kv_heads * cfg.head_dim(),
        cfg.ffn_hidden,
    );
    let mut out = vec![("embed_tokens.weight".to_string(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.n_layers {
        for (name, shape) in [
            ("self_attn.q_proj", vec![d, q]),
            ("self_attn.k_proj", vec![d, kv]),
            ("self_attn.v_proj", vec![d, kv]),
            ("self_attn.o_proj", vec![q, d]),
            ("mlp.gate_proj", vec![d, f]),
            ("mlp.up_proj", vec![d, f]),
            ("mlp.down_proj", vec![f, d]),
        ] {
            out.push((format!("layers.{i}.{name}.weight"), shape));
        }
        out.push((format!("layers.{i}.input_layernorm.weight"), vec![d]));
        out.push((
            format!("layers.{i}.post_attention_layernorm.weight"),
            vec![d],
        ));
    }
    out.push(("norm.weight".to_string(), vec![d]));
    if !cfg.tie_embeddings {
        out.push(("lm_head.weight".to_string(), vec![d, cfg.vocab_size]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(d_model: usize, tie: bool) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 20,
            d_model,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_hidden: 24,
            max_seq_len: 8,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: tie,
        }
    }

    #[test]
    fn saved_weights_load_back_and_another_shape_is_refused_naming_both() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(WEIGHTS_FILE);
        let device = Default::default();
        let saved = shape(16, false).init_seeded::<CpuBackend>(3, &device);
        // The inherent writer (the one the trainers use), not burn's `Module::save_file`.
        Llama::save_file(&saved, &path).unwrap();

        // The same shape (with another sequence length, which no tensor depends on) loads the
        // very same weights.
        let mut longer = shape(16, false);
        longer.max_seq_len = 32;
        let found = check_init_weights(&path, &longer).unwrap();
        assert_eq!(found, WeightShape::of_config(&shape(16, false)));
        let loaded = load_init::<CpuBackend>(&path, &longer, &device).unwrap();
        let a = saved.embed_tokens.weight.val().into_data();
        let b = loaded.embed_tokens.weight.val().into_data();
        assert_eq!(a, b);
        assert_eq!(loaded.config().max_seq_len, 32);

        // A wider config is refused with both shapes and the differing field named.
        let err = check_init_weights(&path, &shape(32, false)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, InitError::Shape { .. }), "{msg}");
        assert!(msg.contains("have vocab_size 20, d_model 16"), "{msg}");
        assert!(
            msg.contains("config has vocab_size 20, d_model 32"),
            "{msg}"
        );
        assert!(msg.contains("(different: d_model, kv_width)"), "{msg}");
        // Tied against untied embeddings is a shape difference too.
        let msg = check_init_weights(&path, &shape(16, true))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(different: tie_embeddings)"), "{msg}");
        // The head split is not in the tensors, but the projections' widths are.
        let mut heads = shape(16, false);
        heads.n_kv_heads = 2;
        let msg = check_init_weights(&path, &heads).unwrap_err().to_string();
        assert!(msg.contains("kv_width 8"), "{msg}");
        assert!(msg.contains("kv_width 16"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_weights_is_a_read_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("junk.mpk");
        std::fs::write(&path, b"not a record").unwrap();
        let err = check_init_weights(&path, &shape(16, false)).unwrap_err();
        assert!(matches!(err, InitError::Read { .. }), "{err}");
        assert!(err.to_string().contains("junk.mpk"), "{err}");
        let missing = tmp.path().join("absent.mpk");
        let err = check_init_weights(&missing, &shape(16, false)).unwrap_err();
        assert!(err.to_string().contains("absent.mpk"), "{err}");
    }
}
