//! The Llama-style decoder: embeddings, pre-norm blocks with grouped-query attention and
//! rotary positions, SwiGLU MLPs, final RMSNorm and the (optionally tied) output projection.
//!
//! Field names follow Hugging Face's `LlamaForCausalLM` (`embed_tokens`, `layers.{i}.self_attn.
//! q_proj`, ..., `norm`, `lm_head`) so a safetensors/GGUF loader only has to remap burn's leaf
//! names (`weight` of a Linear is stored `[d_in, d_out]`, i.e. transposed relative to PyTorch;
//! RmsNorm's scale is called `gamma`).

use std::path::Path;

use burn::module::{Initializer, Module, ModuleVisitor, Param};
use burn::nn::{Embedding, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{load_record, save_record, ModelError};

/// Standard deviation of the normal initialiser (Hugging Face's `initializer_range`).
const INIT_STD: f64 = 0.02;

/// Sizes and constants of a [`Llama`] model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Number of token ids (embedding rows and logits).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Number of query heads; `d_model / n_heads` is the head dimension (must be even).
    pub n_heads: usize,
    /// Number of key/value heads; each is shared by `n_heads / n_kv_heads` query heads.
    pub n_kv_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub ffn_hidden: usize,
    /// Longest sequence the rotary tables cover; longer batches are rejected.
    pub max_seq_len: usize,
    /// Rotary base frequency (10000 for Llama 2, 500000 for Llama 3).
    pub rope_theta: f32,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f64,
    /// Whether the output projection reuses the token-embedding matrix.
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Checks that the sizes fit together; the error names the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_hidden", self.ffn_hidden),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "d_model ({}) must be divisible by n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads ({}) must be divisible by n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dimension d_model/n_heads ({}) must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return bad("rope_theta must be positive".into());
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad("norm_eps must be positive".into());
        }
        Ok(())
    }

    /// Number of trainable scalars, computed from the sizes (equals the module's count).
    pub fn num_params(&self) -> usize {
        let d = self.d_model;
        let hd = self.head_dim();
        let q = d * self.n_heads * hd;
        let kv = 2 * d * self.n_kv_heads * hd;
        let o = self.n_heads * hd * d;
        let mlp = 3 * d * self.ffn_hidden;
        let per_layer = 2 * d + q + kv + o + mlp;
        let embed = self.vocab_size * d;
        let head = if self.tie_embeddings {
            0
        } else {
            d * self.vocab_size
        };
        embed + self.n_layers * per_layer + d + head
    }

    /// Builds a randomly initialised model from the backend's RNG (normal, std 0.02, as
    /// Hugging Face; norm scales at 1).
    ///
    /// Seed the backend first (`B::seed`) for a reproducible initialisation; all parameters
    /// are initialised eagerly here (burn would otherwise do it lazily, on first use). The
    /// backend RNG is process-global (flex keeps it in a mutex), so a concurrent random op on
    /// another thread changes the result: prefer [`LlamaConfig::init_seeded`].
    ///
    /// # Panics
    /// If [`LlamaConfig::validate`] fails; call it first to get a typed error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let init = Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        };
        let model = self.build(device, |shape| init.init(shape, device));
        materialize(&model);
        model
    }

    /// Like [`LlamaConfig::init`], but the weights come from a host ChaCha8 stream seeded with
    /// `seed`: independent of the backend's global RNG and identical on every backend (CPU
    /// and CUDA start from the same weights). Costs one host-to-device upload per matrix.
    ///
    /// # Panics
    /// If [`LlamaConfig::validate`] fails.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Llama<B> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let model = self.build(device, |shape: [usize; 2]| {
            let n = shape[0] * shape[1];
            let mut v = Vec::with_capacity(n + 1);
            // Box-Muller, two normals per pair of uniforms; f64 for an accurate tail.
            while v.len() < n {
                let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
                let u2: f64 = rng.random::<f64>();
                let r = (-2.0 * u1.ln()).sqrt() * INIT_STD;
                let a = 2.0 * std::f64::consts::PI * u2;
                v.push((r * a.cos()) as f32);
                v.push((r * a.sin()) as f32);
            }
            v.truncate(n);
            Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device))
        });
        materialize(&model);
        model
    }

    /// Assembles the module; `weight` makes every matrix, in a fixed order (embedding, then
    /// per layer q, k, v, o, gate, up, down, then lm_head), so seeded streams are stable.
    fn build<B: Backend>(
        &self,
        device: &B::Device,
        mut weight: impl FnMut([usize; 2]) -> Param<Tensor<B, 2>>,
    ) -> Llama<B> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let d = self.d_model;
        let hd = self.head_dim();
        let embed_tokens = Embedding {
            weight: weight([self.vocab_size, d]),
        };
        // burn's Linear stores its weight as [d_in, d_out].
        let mut lin = |d_in: usize, d_out: usize| Linear {
            weight: weight([d_in, d_out]),
            bias: None,
        };
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let mut layers = Vec::with_capacity(self.n_layers);
        for _ in 0..self.n_layers {
            let q_proj = lin(d, self.n_heads * hd);
            let k_proj = lin(d, self.n_kv_heads * hd);
            let v_proj = lin(d, self.n_kv_heads * hd);
            let o_proj = lin(self.n_heads * hd, d);
            let gate_proj = lin(d, self.ffn_hidden);
            let up_proj = lin(d, self.ffn_hidden);
            let down_proj = lin(self.ffn_hidden, d);
            layers.push(DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    n_heads: self.n_heads,
                    n_kv_heads: self.n_kv_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj,
                    up_proj,
                    down_proj,
                },
            });
        }
        let lm_head = (!self.tie_embeddings).then(|| lin(d, self.vocab_size));
        let (rope_cos, rope_sin) = rope_tables::<B>(self, device);
        Llama {
            embed_tokens,
            layers,
            norm: norm(),
            lm_head,
            rope_cos,
            rope_sin,
            config: self.clone(),
        }
    }
}

/// Forces every parameter's initialisation now, in declaration order.
///
/// burn 0.21 initialises parameters lazily, on first use, from the backend's global RNG, and
/// a clone of a not-yet-initialised parameter initialises independently. Left lazy, the
/// weights would depend on which code touched them first (a probe, a clone, the first
/// step); eager initialisation makes them a function of the seed alone.
fn materialize<B: Backend>(model: &Llama<B>) {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// Rotary tables `[max_seq_len, head_dim]` in the Hugging Face "rotate_half" layout:
/// `cos = [cos(p*f), cos(p*f)]` and a pre-signed `sin = [-sin(p*f), sin(p*f)]`, so that
/// `rope(x) = x * cos + swap_halves(x) * sin` needs no negation at run time.
///
/// Computed in f32 like `transformers` (inv_freq and the angle products are f32 there too),
/// uploaded once at init and cached in the module (never recomputed per step).
fn rope_tables<B: Backend>(cfg: &LlamaConfig, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hd = cfg.head_dim();
    let half = hd / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    let mut cos = Vec::with_capacity(cfg.max_seq_len * hd);
    let mut sin = Vec::with_capacity(cfg.max_seq_len * hd);
    for p in 0..cfg.max_seq_len {
        let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
        cos.extend(angles.iter().map(|a| a.cos()));
        cos.extend(angles.iter().map(|a| a.cos()));
        sin.extend(angles.iter().map(|a| -a.sin()));
        sin.extend(angles.iter().map(|a| a.sin()));
    }
    let shape = [cfg.max_seq_len, hd];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// A Llama-style causal decoder. Build it with [`LlamaConfig::init`].
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding `[vocab, d_model]`.
    pub embed_tokens: Embedding<B>,
    /// The decoder blocks.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// Output projection; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    /// Cached rotary cosines (a constant, not a parameter, not saved).
    rope_cos: Tensor<B, 2>,
    /// Cached pre-signed rotary sines (a constant, not a parameter, not saved).
    rope_sin: Tensor<B, 2>,
    /// The sizes this model was built from.
    #[module(skip)]
    config: LlamaConfig,
}

impl<B: Backend> Llama<B> {
    /// The configuration the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Hidden states after the final norm, `[batch, time, d_model]`.
    ///
    /// Attention is causal only: with right-padded batches every real token sees real tokens
    /// only, so no padding mask is needed (padded positions are dropped by the loss masks).
    ///
    /// # Panics
    /// If `time` exceeds `max_seq_len` (the rotary tables stop there).
    pub fn forward_hidden(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, t] = tokens.dims();
        assert!(
            t <= self.config.max_seq_len,
            "sequence length {t} exceeds max_seq_len {}",
            self.config.max_seq_len
        );
        let rope = self.rope(t);
        let mut h = self.embed_tokens.forward(tokens);
        for layer in &self.layers {
            h = layer.forward(h, &rope);
        }
        self.norm.forward(h)
    }

    /// Next-token logits `[batch, time, vocab]` from [`Llama::forward_hidden`]'s output.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => project(head, hidden),
            // Tied: logits = h @ E^T, E^T being a strided view that gemm reads in place.
            None => matmul_2d(hidden, self.embed_tokens.weight.val().transpose()),
        }
    }

    /// The rotary tables for the first `t` positions, laid out for both head counts.
    fn rope(&self, t: usize) -> Rope<B> {
        let c = &self.config;
        let cos = self.rope_cos.clone().narrow(0, 0, t);
        let sin = self.rope_sin.clone().narrow(0, 0, t);
        Rope {
            cos_q: per_head_row(cos.clone(), c.n_heads),
            sin_q: per_head_row(sin.clone(), c.n_heads),
            cos_k: per_head_row(cos, c.n_kv_heads),
            sin_k: per_head_row(sin, c.n_kv_heads),
        }
    }

    /// A model from already-built parts (the pretrained loaders); the rotary tables are computed
    /// from `config` here, as in [`LlamaConfig::init`].
    pub(crate) fn from_parts(
        config: LlamaConfig,
        embed_tokens: Embedding<B>,
        layers: Vec<DecoderLayer<B>>,
        norm: RmsNorm<B>,
        lm_head: Option<Linear<B>>,
        device: &B::Device,
    ) -> Self {
        let (rope_cos, rope_sin) = rope_tables::<B>(&config, device);
        Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
            config,
        }
    }

    /// The rotary tables for `t` positions (tests only).
    #[cfg(test)]
    pub(crate) fn rope_for_test(&self, t: usize) -> Rope<B> {
        self.rope(t)
    }

    /// Applies this model's rotary embedding to `[b, heads, t, head_dim]` (tests only).
    #[cfg(test)]
    pub(crate) fn apply_rope(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, n, t, _] = x.dims();
        let cos = per_head_row(self.rope_cos.clone().narrow(0, 0, t), n);
        let sin = per_head_row(self.rope_sin.clone().narrow(0, 0, t), n);
        rope(x.swap_dims(1, 2), &cos, &sin).swap_dims(1, 2)
    }

    /// Saves the weights (burn named MessagePack, full precision) atomically to exactly `path`.
    pub fn save_file(&self, path: &Path) -> Result<(), ModelError> {
        save_record::<B, _>(self.clone().into_record(), path)
    }

    /// Loads weights written by [`Llama::save_file`] into this model (same config).
    pub fn load_file(self, path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let record = load_record::<B, _>(path, device)?;
        Ok(self.load_record(record))
    }
}

/// One pre-norm decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Causal grouped-query self-attention.
    pub self_attn: Attention<B>,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// SwiGLU MLP.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub(crate) fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// Causal self-attention with grouped-query heads and rotary positions; no biases.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection `d_model -> n_heads * head_dim`.
    pub q_proj: Linear<B>,
    /// Key projection `d_model -> n_kv_heads * head_dim`.
    pub k_proj: Linear<B>,
    /// Value projection `d_model -> n_kv_heads * head_dim`.
    pub v_proj: Linear<B>,
    /// Output projection `n_heads * head_dim -> d_model`.
    pub o_proj: Linear<B>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// Attention from its four projections, with the head counts of `cfg`.
    pub(crate) fn from_projections(
        q_proj: Linear<B>,
        k_proj: Linear<B>,
        v_proj: Linear<B>,
        o_proj: Linear<B>,
        cfg: &LlamaConfig,
    ) -> Self {
        Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim(),
        }
    }

    /// The same attention with another kv-head count (tests build equivalent models).
    #[cfg(test)]
    pub(crate) fn into_wide(mut self, n_kv_heads: usize) -> Self {
        self.n_kv_heads = n_kv_heads;
        self
    }

    fn forward(&self, x: Tensor<B, 3>, r: &Rope<B>) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // Rotary positions are applied in the projections' own `[b, t, heads, hd]` layout,
        // where the tensors are contiguous (see `rope`); only then are heads moved ahead of
        // time for the attention products, which read the strided view in place.
        let split = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]);
        let q = rope(
            split(project(&self.q_proj, x.clone()), nh),
            &r.cos_q,
            &r.sin_q,
        )
        .swap_dims(1, 2);
        let k = rope(
            split(project(&self.k_proj, x.clone()), nkv),
            &r.cos_k,
            &r.sin_k,
        )
        .swap_dims(1, 2);
        let v = split(project(&self.v_proj, x), nkv).swap_dims(1, 2);
        let (k, v) = if nkv == nh {
            (k, v)
        } else {
            (repeat_kv(k, nh / nkv), repeat_kv(v, nh / nkv))
        };
        // burn's fused attention op: flex has a native kernel (used by eval/probe passes);
        // autodiff backends decompose it into differentiable ops. `is_causal` lets the
        // backend build the mask itself, on device, without a host upload.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let o = attention(q, k, v, None, None, options);
        project(&self.o_proj, o.swap_dims(1, 2).reshape([b, t, nh * hd]))
    }
}

/// The rotary tables of one forward pass, each `[1, t * heads * head_dim]`: the
/// `[t, head_dim]` table repeated for every head of the query (`_q`) or key (`_k`) projection.
///
/// Built once per forward pass and shared by every layer. One flat row per table is what
/// lets the element-wise products in [`rope`] take burn-flex's vectorised "shared row"
/// broadcast (the row is reused for every example of the batch); a `[1, t, 1, hd]` table
/// broadcast over `[b, t, heads, hd]` takes its per-element strided fallback instead.
pub(crate) struct Rope<B: Backend> {
    cos_q: Tensor<B, 2>,
    sin_q: Tensor<B, 2>,
    cos_k: Tensor<B, 2>,
    sin_k: Tensor<B, 2>,
}

/// `[t, hd]` to `[1, t * heads * hd]`, the table repeated for each head of a position.
fn per_head_row<B: Backend>(table: Tensor<B, 2>, heads: usize) -> Tensor<B, 2> {
    let [t, hd] = table.dims();
    table
        .unsqueeze_dim::<3>(1)
        .expand([t, heads, hd])
        .reshape([1, t * heads * hd])
}

/// Rotary embedding, Hugging Face `rotate_half` convention (non-interleaved halves).
/// `x`: `[b, t, heads, hd]`, contiguous (a projection's output); `cos`/`sin`: [`Rope`] rows
/// for the same head count, `sin` pre-signed, so `rope(x) = x * cos + swap_halves(x) * sin`.
///
/// Working on the projection's layout keeps every operand contiguous: the profile of a 25M
/// model's training step showed the former `[b, heads, t, hd]` version (a transposed view)
/// running its products, the half swap and their backward passes through burn-flex's
/// per-element strided iterator.
fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, t, n, hd] = x.dims();
    let half = hd / 2;
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    let flat = [b, t * n * hd];
    (x.reshape(flat) * cos.clone() + swapped.reshape(flat) * sin.clone()).reshape([b, t, n, hd])
}

/// A bias-free or biased `Linear` applied to `[b, t, d_in]` as one 2-D product.
///
/// burn's `Linear::forward` broadcasts the weight to `[1, d_in, d_out]`; its backward then
/// copies the transposed weight into a contiguous tensor for the input gradient and computes
/// the weight gradient as `b` separate products summed afterwards. Flattening the batch into
/// rows gives one `[b * t, d_in] x [d_in, d_out]` product forward and one per gradient,
/// with transposes that gemm reads in place (the same sums, in another order: equal within
/// f32 rounding).
fn project<B: Backend>(lin: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let y = matmul_2d(x, lin.weight.val());
    match &lin.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}

/// `[b, t, d_in] x [d_in, d_out] -> [b, t, d_out]` as a single 2-D matrix product.
fn matmul_2d<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let out = w.dims()[1];
    x.reshape([b * t, d]).matmul(w).reshape([b, t, out])
}

/// Shares each of the `n_kv` heads with `rep` consecutive query heads (HF `repeat_kv`):
/// query head `i` reads kv head `i / rep`.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    let [b, nkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, rep, t, hd])
        .reshape([b, nkv * rep, t, hd])
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`, no biases.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection `d_model -> ffn_hidden`.
    pub gate_proj: Linear<B>,
    /// Up projection `d_model -> ffn_hidden`.
    pub up_proj: Linear<B>,
    /// Down projection `ffn_hidden -> d_model`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let g = silu(project(&self.gate_proj, x.clone()));
        project(&self.down_proj, g * project(&self.up_proj, x))
    }
}
