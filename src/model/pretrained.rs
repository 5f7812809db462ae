//! Pretrained checkpoints: a GGUF file (llama.cpp) or a Hugging Face Llama directory
//! (`config.json`, `model.safetensors`, `tokenizer.json`) loaded into our [`Llama`], and the
//! tokenizer that comes with each.
//!
//! Both formats are reduced to one question, "give me the f32 values of the Hugging Face tensor
//! `name` with PyTorch shape `shape`", answered by [`assemble`]; the GGUF side maps names
//! (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`), dequantises and undoes
//! llama.cpp's Q/K row permutation, the safetensors side converts f16/bf16. So the two loaders
//! cannot disagree about the model's layout. Nothing here downloads anything.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use super::gguf::{unpermute_rows, GgufFile};
use super::llama::{Attention, DecoderLayer, Llama, LlamaConfig, Mlp};

/// Errors of the pretrained loaders; each names the file and, where there is one, the metadata
/// key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not in the expected format (bad magic, truncated, unparsable JSON...).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A metadata or config key is missing or has an unusable value.
    #[error("{path}: key `{key}`: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor is missing, has the wrong shape or an unsupported type.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name as stored in the file.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be built or read.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

// By hand rather than `#[from]`: the learner's error sits a layer below this reader and holds
// the load error boxed (its Display and source pass through unchanged).
impl From<LoadError> for super::ModelError {
    fn from(e: LoadError) -> Self {
        super::ModelError::Load(Box::new(e))
    }
}

/// The two checkpoint formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainedFormat {
    /// A single llama.cpp GGUF file.
    Gguf,
    /// A Hugging Face directory with `config.json`, `model.safetensors` and `tokenizer.json`.
    HfDir,
}

/// Which format `path` holds: a directory is a Hugging Face checkpoint, a file a GGUF file.
pub fn detect_format(path: &Path) -> Result<PretrainedFormat, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if meta.is_dir() {
        PretrainedFormat::HfDir
    } else {
        PretrainedFormat::Gguf
    })
}

/// Reads the model shape of a checkpoint (no weights are converted for a Hugging Face directory;
/// a GGUF file is read whole). `max_seq_len` sizes the rotary tables.
pub fn pretrained_config(path: &Path, max_seq_len: usize) -> Result<LlamaConfig, LoadError> {
    match detect_format(path)? {
        PretrainedFormat::Gguf => gguf_config(&GgufFile::open(path)?, max_seq_len),
        PretrainedFormat::HfDir => Ok(read_hf_config(path)?.to_llama(path, max_seq_len)?),
    }
}

/// Loads a checkpoint (see [`detect_format`]) into a new [`Llama`] on `device`; `max_seq_len`
/// sizes the rotary tables (the training sequence length).
pub fn load_pretrained<B: Backend>(
    path: &Path,
    max_seq_len: usize,
    device: &B::Device,
) -> Result<Llama<B>, LoadError> {
    match detect_format(path)? {
        PretrainedFormat::Gguf => load_gguf(&GgufFile::open(path)?, max_seq_len, device),
        PretrainedFormat::HfDir => load_hf_dir(path, max_seq_len, device),
    }
}

/// The tokenizer of a checkpoint: rebuilt from the GGUF metadata, or the directory's
/// `tokenizer.json`. The checkpoint's model metadata (GGUF keys, `config.json`) is checked too,
/// and every token id must have an embedding row, so a bad checkpoint is refused while the run
/// is prepared (a bad-input error) rather than when the trainer starts.
pub fn pretrained_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, LoadError> {
    let (tok, cfg) = match detect_format(path)? {
        PretrainedFormat::Gguf => {
            let g = GgufFile::open(path)?;
            (super::gguf_tokenizer::build(&g)?, gguf_config(&g, 1)?)
        }
        PretrainedFormat::HfDir => (
            hf_dir_tokenizer(path)?,
            read_hf_config(path)?.to_llama(path, 1)?,
        ),
    };
    let ids = tok.get_vocab_size(true);
    if ids > cfg.vocab_size {
        return Err(LoadError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "{ids} token ids but the model has only {} embedding rows",
                cfg.vocab_size
            ),
        });
    }
    Ok(tok)
}

fn hf_dir_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, LoadError> {
    let file = path.join("tokenizer.json");
    if !file.is_file() {
        return Err(LoadError::Tokenizer {
            path: file,
            message: "missing (a Hugging Face checkpoint needs tokenizer.json)".into(),
        });
    }
    tokenizers::Tokenizer::from_file(&file).map_err(|e| LoadError::Tokenizer {
        path: file,
        message: e.to_string(),
    })
}

/// Builds a [`Llama`] from Hugging Face-named tensors. `get(name, shape)` returns the f32 values
/// of the tensor in PyTorch layout (row-major, `[out, in]` for projections) and must check the
/// shape; it is called once per tensor.
pub(crate) fn assemble<B: Backend>(
    cfg: &LlamaConfig,
    device: &B::Device,
    mut get: impl FnMut(&str, &[usize]) -> Result<Vec<f32>, LoadError>,
) -> Result<Llama<B>, LoadError> {
    let d = cfg.d_model;
    let hd = cfg.head_dim();
    let embed = get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
    let embed_tokens = Embedding {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(embed, [cfg.vocab_size, d]),
            device,
        )),
    };
    // burn's Linear keeps `[d_in, d_out]`: transpose PyTorch's `[out, in]` on the host once.
    let mut linear = |name: &str, d_out: usize, d_in: usize| -> Result<Linear<B>, LoadError> {
        let w = get(name, &[d_out, d_in])?;
        let mut t = vec![0.0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = w[o * d_in + i];
            }
        }
        Ok(Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(t, [d_in, d_out]),
                device,
            )),
            bias: None,
        })
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    let mut norms = Vec::with_capacity(2 * cfg.n_layers + 1);
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let attn = Attention::from_projections(
            linear(&format!("{p}.self_attn.q_proj.weight"), cfg.n_heads * hd, d)?,
            linear(
                &format!("{p}.self_attn.k_proj.weight"),
                cfg.n_kv_heads * hd,
                d,
            )?,
            linear(
                &format!("{p}.self_attn.v_proj.weight"),
                cfg.n_kv_heads * hd,
                d,
            )?,
            linear(&format!("{p}.self_attn.o_proj.weight"), d, cfg.n_heads * hd)?,
            cfg,
        );
        let mlp = Mlp {
            gate_proj: linear(&format!("{p}.mlp.gate_proj.weight"), cfg.ffn_hidden, d)?,
            up_proj: linear(&format!("{p}.mlp.up_proj.weight"), cfg.ffn_hidden, d)?,
            down_proj: linear(&format!("{p}.mlp.down_proj.weight"), d, cfg.ffn_hidden)?,
        };
        layers.push((attn, mlp));
        norms.push(format!("{p}.input_layernorm.weight"));
        norms.push(format!("{p}.post_attention_layernorm.weight"));
    }
    let lm_head = if cfg.tie_embeddings {
        None
    } else {
        Some(linear("lm_head.weight", cfg.vocab_size, d)?)
    };
    let mut norm = |name: &str| -> Result<RmsNorm<B>, LoadError> {
        let g = get(name, &[d])?;
        let mut n = RmsNormConfig::new(d)
            .with_epsilon(cfg.norm_eps)
            .init(device);
        n.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(g, [d]), device));
        Ok(n)
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for (l, (self_attn, mlp)) in layers.into_iter().enumerate() {
        blocks.push(DecoderLayer {
            input_layernorm: norm(&norms[2 * l])?,
            self_attn,
            post_attention_layernorm: norm(&norms[2 * l + 1])?,
            mlp,
        });
    }
    let final_norm = norm("model.norm.weight")?;
    Ok(Llama::from_parts(
        cfg.clone(),
        embed_tokens,
        blocks,
        final_norm,
        lm_head,
        device,
    ))
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// The model shape from GGUF metadata (`llama.*` keys).
fn gguf_config(g: &GgufFile, max_seq_len: usize) -> Result<LlamaConfig, LoadError> {
    let arch = g
        .get("general.architecture")?
        .as_str()
        .ok_or_else(|| g.key_err("general.architecture", "must be a string"))?;
    if arch != "llama" {
        return Err(g.key_err(
            "general.architecture",
            &format!("`{arch}` is not supported (only `llama`)"),
        ));
    }
    let d_model = g.get_usize("llama.embedding_length")?;
    let n_heads = g.get_usize("llama.attention.head_count")?;
    let n_kv_heads = match g.metadata.get("llama.attention.head_count_kv") {
        Some(_) => g.get_usize("llama.attention.head_count_kv")?,
        None => n_heads,
    };
    // The vocabulary size is the embedding's row count (the `llama.vocab_size` key is optional).
    let vocab_size = match g.tensors.get("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => {
            return Err(LoadError::Tensor {
                path: g.path().to_path_buf(),
                tensor: "token_embd.weight".into(),
                message: "missing or not a matrix".into(),
            })
        }
    };
    let rope_theta = match g.metadata.get("llama.rope.freq_base") {
        Some(_) => g.get_f64("llama.rope.freq_base")? as f32,
        None => 10000.0,
    };
    let cfg = LlamaConfig {
        vocab_size,
        d_model,
        n_layers: g.get_usize("llama.block_count")?,
        n_heads,
        n_kv_heads,
        ffn_hidden: g.get_usize("llama.feed_forward_length")?,
        max_seq_len,
        rope_theta,
        norm_eps: g.get_f64("llama.attention.layer_norm_rms_epsilon")?,
        // llama.cpp omits `output.weight` when the output projection is the embedding.
        tie_embeddings: !g.tensors.contains_key("output.weight"),
    };
    if let Some(v) = g.metadata.get("llama.rope.dimension_count") {
        if v.as_u64() != Some(cfg.head_dim() as u64) {
            return Err(g.key_err(
                "llama.rope.dimension_count",
                "partial rotary embeddings (rope dimension != head dimension) are not supported",
            ));
        }
    }
    if g.metadata.contains_key("llama.rope.scaling.type") {
        let t = g.get("llama.rope.scaling.type")?.as_str().unwrap_or("");
        if !t.is_empty() && t != "none" {
            return Err(g.key_err("llama.rope.scaling.type", "RoPE scaling is not supported"));
        }
    }
    cfg.validate().map_err(|e| LoadError::Format {
        path: g.path().to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(cfg)
}

/// The GGUF tensor holding Hugging Face tensor `hf`, and the head count whose Q/K permutation
/// must be undone (None for every other tensor).
fn gguf_name(hf: &str, cfg: &LlamaConfig) -> Option<(String, Option<usize>)> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some((s.to_string(), None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let (name, heads) = match leaf {
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(cfg.n_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(cfg.n_kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), heads))
}

fn load_gguf<B: Backend>(
    g: &GgufFile,
    max_seq_len: usize,
    device: &B::Device,
) -> Result<Llama<B>, LoadError> {
    let cfg = gguf_config(g, max_seq_len)?;
    assemble(&cfg, device, |hf, shape| {
        let (name, permuted_heads) = gguf_name(hf, &cfg).ok_or_else(|| LoadError::Tensor {
            path: g.path().to_path_buf(),
            tensor: hf.to_string(),
            message: "no GGUF counterpart".into(),
        })?;
        // GGUF lists dimensions innermost first: PyTorch `[out, in]` is GGUF `[in, out]`.
        let dims: Vec<u64> = shape.iter().rev().map(|&s| s as u64).collect();
        let values = g.tensor_f32(&name, &dims)?;
        Ok(match permuted_heads {
            Some(heads) => unpermute_rows(&values, heads, shape[1]),
            None => values,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directory

/// The keys of a Hugging Face `LlamaConfig` that we read; others are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// transformers 4 writes `rope_theta` at the top level ...
    pub rope_theta: Option<f64>,
    /// ... transformers 5 inside `rope_parameters` (with `rope_type`).
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub head_dim: Option<usize>,
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_rms_eps() -> f64 {
    1e-6
}

/// Llama's RoPE base when a config names none.
const DEFAULT_ROPE_THETA: f64 = 10000.0;

impl HfConfig {
    fn to_llama(&self, dir: &Path, max_seq_len: usize) -> Result<LlamaConfig, LoadError> {
        let file = dir.join("config.json");
        let key = |key: &str, message: String| LoadError::Key {
            path: file.clone(),
            key: key.to_string(),
            message,
        };
        if let Some(t) = &self.model_type {
            if t != "llama" {
                return Err(key(
                    "model_type",
                    format!("`{t}` is not supported (only `llama`)"),
                ));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(key(
                    "hidden_act",
                    format!("`{act}` is not supported (only `silu`)"),
                ));
            }
        }
        if self.attention_bias || self.mlp_bias {
            return Err(key(
                "attention_bias",
                "biased projections are not supported".into(),
            ));
        }
        // Only the default rotary embedding is implemented: a `rope_type` other than
        // "default" (linear, dynamic, llama3, yarn...) changes the angles and is refused.
        for (name, v) in [
            ("rope_scaling", &self.rope_scaling),
            ("rope_parameters", &self.rope_parameters),
        ] {
            let Some(v) = v.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            let kind = v.get("rope_type").or_else(|| v.get("type"));
            match kind.and_then(|k| k.as_str()) {
                None if name == "rope_parameters" => {}
                Some("default") => {}
                _ => return Err(key(name, format!("RoPE scaling {v} is not supported"))),
            }
        }
        let nested_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|v| v.get("rope_theta"))
            .map(|t| {
                t.as_f64()
                    .ok_or_else(|| key("rope_parameters.rope_theta", "must be a number".into()))
            })
            .transpose()?;
        let rope_theta = self
            .rope_theta
            .or(nested_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        let cfg = LlamaConfig {
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            ffn_hidden: self.intermediate_size,
            max_seq_len,
            rope_theta: rope_theta as f32,
            norm_eps: self.rms_norm_eps,
            tie_embeddings: self.tie_word_embeddings,
        };
        if let Some(hd) = self.head_dim {
            if hd != cfg.head_dim() {
                return Err(key(
                    "head_dim",
                    format!(
                        "{hd} differs from hidden_size / num_attention_heads = {}; not supported",
                        cfg.head_dim()
                    ),
                ));
            }
        }
        cfg.validate().map_err(|e| LoadError::Format {
            path: file.clone(),
            message: e.to_string(),
        })?;
        Ok(cfg)
    }
}

pub(crate) fn read_hf_config(dir: &Path) -> Result<HfConfig, LoadError> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
        path: file.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Format {
        path: file,
        message: e.to_string(),
    })
}

/// Converts one safetensors tensor to f32, checking dtype and shape.
fn safetensor_f32(
    file: &Path,
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, LoadError> {
    let err = |message: String| LoadError::Tensor {
        path: file.to_path_buf(),
        tensor: name.to_string(),
        message,
    };
    let view = st.tensor(name).map_err(|e| err(e.to_string()))?;
    if view.shape() != shape {
        return Err(err(format!(
            "has shape {:?}, the model config needs {shape:?}",
            view.shape()
        )));
    }
    let data = view.data();
    use safetensors::Dtype;
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(err(format!(
                "dtype {other:?} is not supported (F32, F16, BF16 are)"
            )))
        }
    })
}

fn load_hf_dir<B: Backend>(
    dir: &Path,
    max_seq_len: usize,
    device: &B::Device,
) -> Result<Llama<B>, LoadError> {
    let cfg = read_hf_config(dir)?.to_llama(dir, max_seq_len)?;
    let file = dir.join("model.safetensors");
    if !file.is_file() && dir.join("model.safetensors.index.json").is_file() {
        return Err(LoadError::Format {
            path: file,
            message: "sharded checkpoints (model.safetensors.index.json) are not supported".into(),
        });
    }
    let bytes = std::fs::read(&file).map_err(|source| LoadError::Io {
        path: file.clone(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| LoadError::Format {
        path: file.clone(),
        message: e.to_string(),
    })?;
    assemble(&cfg, device, |name, shape| {
        safetensor_f32(&file, &st, name, shape)
    })
}

/// The Hugging Face names of every tensor of a model with this config, with PyTorch shapes, in
/// a fixed order (used by the exporter).
pub(crate) fn hf_tensor_names(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.d_model;
    let hd = cfg.head_dim();
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, d],
    )];
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        for (leaf, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![cfg.n_heads * hd, d]),
            ("self_attn.k_proj.weight", vec![cfg.n_kv_heads * hd, d]),
            ("self_attn.v_proj.weight", vec![cfg.n_kv_heads * hd, d]),
            ("self_attn.o_proj.weight", vec![d, cfg.n_heads * hd]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![cfg.ffn_hidden, d]),
            ("mlp.up_proj.weight", vec![cfg.ffn_hidden, d]),
            ("mlp.down_proj.weight", vec![d, cfg.ffn_hidden]),
        ] {
            out.push((format!("{p}.{leaf}"), shape));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !cfg.tie_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    out
}

/// Unused-key guard for tests: every name [`assemble`] asks for is in [`hf_tensor_names`].
#[cfg(test)]
pub(crate) fn requested_names(cfg: &LlamaConfig) -> Vec<String> {
    let mut names = Vec::new();
    let device = Default::default();
    let _ = assemble::<crate::model::CpuBackend>(cfg, &device, |name, shape| {
        names.push(name.to_string());
        Ok(vec![0.0; shape.iter().product()])
    });
    names
}

/// The starting model of a fine-tuning run: the checkpoint at `path`, checked against the run's
/// tokenizer, whose `vocab_size` ids must each have an embedding row. `max_seq_len` is the
/// training sequence length.
pub fn load_for_training<B: Backend>(
    path: &Path,
    max_seq_len: usize,
    vocab_size: usize,
    device: &B::Device,
) -> Result<Llama<B>, LoadError> {
    let started = std::time::Instant::now();
    let model = load_pretrained::<B>(path, max_seq_len, device)?;
    let cfg = model.config();
    if vocab_size > cfg.vocab_size {
        return Err(LoadError::Format {
            path: path.to_path_buf(),
            message: format!(
                "the tokenizer has {vocab_size} ids but the model only {} embedding rows",
                cfg.vocab_size
            ),
        });
    }
    tracing::info!(
        path = %path.display(),
        params = cfg.num_params(),
        layers = cfg.n_layers,
        d_model = cfg.d_model,
        seconds = started.elapsed().as_secs_f64(),
        "pretrained model loaded"
    );
    Ok(model)
}
