//! Export of a (fine-tuned) model as a Hugging Face Llama directory: `model.safetensors` with
//! Hugging Face tensor names (f32, PyTorch `[out, in]` layout), `config.json` for
//! `LlamaForCausalLM`, and `tokenizer.json` when the run used a Hugging Face tokenizer.
//!
//! The directory loads back with [`super::load_pretrained`] and with `transformers`'
//! `AutoModelForCausalLM.from_pretrained`. Files are written atomically, one by one.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde_json::json;

use super::pretrained::hf_tensor_names;
use super::{write_atomic, Llama, ModelError};
// The learner's view of the tokenizer files, under this module's path too (where the
// tokenizer's conversion and the export tests name it).
pub use crate::learner::ExportTokenizer;

/// Copies a 2-D tensor to the host as f32.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>, name: &str) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::InvalidConfig(format!("cannot read tensor {name}: {e:?}")))
}

/// PyTorch layout of a burn Linear weight (`[d_in, d_out]` -> `[d_out, d_in]`).
fn transposed(w: Vec<f32>, d_in: usize, d_out: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for i in 0..d_in {
        for o in 0..d_out {
            t[o * d_in + i] = w[i * d_out + o];
        }
    }
    t
}

/// A tensor of an export: Hugging Face name, PyTorch shape, f32 values in row-major order.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every tensor of `model` under its Hugging Face name, in PyTorch layout, as f32 values.
pub fn hf_tensors<B: Backend>(model: &Llama<B>) -> Result<Vec<NamedTensor>, ModelError> {
    let cfg = model.config();
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let lin = |l: &burn::nn::Linear<B>, name: &str| -> Result<Vec<f32>, ModelError> {
        let [d_in, d_out] = l.weight.val().dims();
        Ok(transposed(host(l.weight.val(), name)?, d_in, d_out))
    };
    values.insert(
        "model.embed_tokens.weight".into(),
        host(model.embed_tokens.weight.val(), "model.embed_tokens.weight")?,
    );
    for (l, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        let a = &layer.self_attn;
        let m = &layer.mlp;
        for (leaf, v) in [
            ("self_attn.q_proj.weight", lin(&a.q_proj, "q_proj")?),
            ("self_attn.k_proj.weight", lin(&a.k_proj, "k_proj")?),
            ("self_attn.v_proj.weight", lin(&a.v_proj, "v_proj")?),
            ("self_attn.o_proj.weight", lin(&a.o_proj, "o_proj")?),
            ("mlp.gate_proj.weight", lin(&m.gate_proj, "gate_proj")?),
            ("mlp.up_proj.weight", lin(&m.up_proj, "up_proj")?),
            ("mlp.down_proj.weight", lin(&m.down_proj, "down_proj")?),
            (
                "input_layernorm.weight",
                host(layer.input_layernorm.gamma.val(), "input_layernorm")?,
            ),
            (
                "post_attention_layernorm.weight",
                host(
                    layer.post_attention_layernorm.gamma.val(),
                    "post_attention_layernorm",
                )?,
            ),
        ] {
            values.insert(format!("{p}.{leaf}"), v);
        }
    }
    values.insert(
        "model.norm.weight".into(),
        host(model.norm.gamma.val(), "model.norm.weight")?,
    );
    if let Some(head) = &model.lm_head {
        values.insert("lm_head.weight".into(), lin(head, "lm_head.weight")?);
    }
    hf_tensor_names(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let v = values.remove(&name).ok_or_else(|| {
                ModelError::InvalidConfig(format!("model has no tensor for {name}"))
            })?;
            Ok((name, shape, v))
        })
        .collect()
}

/// The `config.json` of a `LlamaForCausalLM` with `model`'s shape.
///
/// `max_position_embeddings` is the model's rotary-table length (the training sequence length):
/// Llama's default RoPE does not use it to compute angles, and it is the longest context this
/// model was run with here.
pub fn hf_config_json<B: Backend>(model: &Llama<B>, bos: u32, eos: u32) -> serde_json::Value {
    let c = model.config();
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "vocab_size": c.vocab_size,
        "rms_norm_eps": c.norm_eps,
        // transformers 4 reads the top-level `rope_theta`, transformers 5 `rope_parameters`.
        "rope_theta": c.rope_theta,
        "rope_parameters": { "rope_type": "default", "rope_theta": c.rope_theta },
        "tie_word_embeddings": c.tie_embeddings,
        "max_position_embeddings": c.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    })
}

/// Writes `model` (and the tokenizer) as a Hugging Face Llama directory at `dir`.
pub fn export_hf_dir<B: Backend>(
    model: &Llama<B>,
    tokenizer: ExportTokenizer<'_>,
    dir: &Path,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = hf_tensors(model)?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, v)| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, shape, b)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::InvalidConfig(format!("safetensors view: {e}")))?;
    // transformers refuses safetensors files without `format = pt` metadata.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = dir.join("model.safetensors");
    let encoded = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Record {
        path: file.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&file, &encoded)?;

    let config = hf_config_json(model, tokenizer.bos, tokenizer.eos);
    let text = serde_json::to_string_pretty(&config).map_err(|source| ModelError::State {
        path: dir.join("config.json"),
        source,
    })?;
    write_atomic(&dir.join("config.json"), text.as_bytes())?;

    match tokenizer.hf {
        Some(tok) => {
            let path = dir.join("tokenizer.json");
            let text = tok.to_string(false).map_err(|e| ModelError::Record {
                path: path.clone(),
                message: e.to_string(),
            })?;
            write_atomic(&path, text.as_bytes())?;
        }
        None => tracing::warn!(
            dir = %dir.display(),
            "the built-in byte tokenizer has no tokenizer.json form: the export has weights and config only"
        ),
    }
    Ok(())
}
