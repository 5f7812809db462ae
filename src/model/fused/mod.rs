//! The fused CPU trainer: the same Llama, loss, clipping and AdamW as [`Trainer`](super::Trainer),
//! computed by hand-derived forward and backward kernels over flat `f32` buffers instead of
//! burn's autodiff graph.
//!
//! Why it exists: on the CPU, burn-flex's autodiff records and allocates every operation
//! separately, repeats the shared key/value heads into copies, runs attention as separate
//! products, mask and softmax, and steps AdamW tensor by tensor. The benchmarks measured that
//! overhead at 40-60% of a step (BENCHMARKS.md, sections 3 and 4). Here the matrix products are
//! the same `gemm` kernels burn-flex calls, and everything between them is one pass per
//! operation over buffers that are reused from step to step:
//! - attention reads the shared kv heads in place and keeps only the softmax probabilities;
//! - RMSNorm, rotary positions, SwiGLU and the cross-entropy each fuse their forward into one
//!   pass and their backward into one pass;
//! - clipping and AdamW are one pass over one flat parameter buffer.
//!
//! burn stays the model of record: weights come in as a burn [`Llama`] and go out as one
//! (`model.mpk`, Hugging Face export), so every other part of the program, and the CUDA path,
//! is unchanged. The GPU and pretrained models with biases keep burn's trainer
//! (`training.cpu_kernels = "burn"` forces it on the CPU too).
//!
//! Invariant: the two trainers compute the same function. Tests compare the loss, every
//! gradient and the weights after several AdamW steps against burn's autodiff on models with
//! tied and untied heads and grouped-query attention.

mod kernels;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::kernels::{AttnShape, Mm};
use super::{
    cpu_device, lr_at, write_atomic, Attention, CpuBackend, DecoderLayer, Llama, LlamaConfig, Mlp,
    ModelError, ProbeNeed, ProbeStats, StepOutput, TokenBatch, TrainHyper,
};
use crate::learner::{ExportTokenizer, Learner};

/// Where one decoder block's parameters sit in the flat buffer. Matrices keep burn's
/// `[d_in, d_out]` layout, so a projection is `x * W`.
#[derive(Clone, Debug)]
struct LayerSlots {
    ln1: Range<usize>,
    wq: Range<usize>,
    wk: Range<usize>,
    wv: Range<usize>,
    wo: Range<usize>,
    ln2: Range<usize>,
    wg: Range<usize>,
    wu: Range<usize>,
    wd: Range<usize>,
}

/// The flat parameter layout: embedding, blocks in order, final norm, untied head.
#[derive(Clone, Debug)]
struct Layout {
    embed: Range<usize>,
    layers: Vec<LayerSlots>,
    norm: Range<usize>,
    head: Option<Range<usize>>,
    total: usize,
}

impl Layout {
    fn new(c: &LlamaConfig) -> Layout {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let r = at..at + n;
            at += n;
            r
        };
        let (d, f) = (c.d_model, c.ffn_hidden);
        let (qw, kw) = (c.n_heads * c.head_dim(), c.n_kv_heads * c.head_dim());
        let embed = take(c.vocab_size * d);
        let layers = (0..c.n_layers)
            .map(|_| LayerSlots {
                ln1: take(d),
                wq: take(d * qw),
                wk: take(d * kw),
                wv: take(d * kw),
                wo: take(qw * d),
                ln2: take(d),
                wg: take(d * f),
                wu: take(d * f),
                wd: take(f * d),
            })
            .collect();
        let norm = take(d);
        let head = (!c.tie_embeddings).then(|| take(d * c.vocab_size));
        Layout {
            embed,
            layers,
            norm,
            head,
            total: at,
        }
    }

    /// The RMSNorm scales: 1-D parameters, which get no weight decay (as in [`Trainer`]).
    fn no_decay(&self) -> Vec<Range<usize>> {
        let mut v: Vec<Range<usize>> = self
            .layers
            .iter()
            .flat_map(|l| [l.ln1.clone(), l.ln2.clone()])
            .collect();
        v.push(self.norm.clone());
        v
    }
}

/// Activations of one block kept for the backward pass.
#[derive(Default)]
struct LayerActs {
    /// Block input `[n, d]`.
    x: Vec<f32>,
    r1: Vec<f32>,
    xn1: Vec<f32>,
    /// Queries and keys after rotary positions; values.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Softmax probabilities `[b, heads, t, t]`.
    p: Vec<f32>,
    /// Attention output before `o_proj`.
    o: Vec<f32>,
    /// Residual stream after attention.
    x2: Vec<f32>,
    r2: Vec<f32>,
    xn2: Vec<f32>,
    /// Gate and up projections, and `silu(gate) * up`.
    g: Vec<f32>,
    u: Vec<f32>,
    h: Vec<f32>,
}

/// All forward activations, reused between calls (resized, never shrunk).
#[derive(Default)]
struct Acts {
    layers: Vec<LayerActs>,
    xl: Vec<f32>,
    rf: Vec<f32>,
    hf: Vec<f32>,
    /// Positions (`example * t + k`) that predict a target, in order.
    rows: Vec<usize>,
    /// The final hidden states of those positions, `[rows, d_model]`.
    hsel: Vec<f32>,
    /// Logits of those positions only, `[rows, vocab]` (all positions only for greedy decoding).
    logits: Vec<f32>,
}

/// Scratch of the backward pass, reused between steps.
#[derive(Default)]
struct GradScratch {
    dx: Vec<f32>,
    dxn: Vec<f32>,
    /// Gradient of the gathered final hidden states, `[rows, d_model]`.
    dsel: Vec<f32>,
    dh: Vec<f32>,
    du: Vec<f32>,
    d_o: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn fit(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// Side file of [`Learner::save_state`].
#[derive(Serialize, Deserialize)]
struct FusedStateFile {
    step: u64,
    /// AdamW updates applied (skipped non-finite steps do not count; the bias correction uses
    /// this, as burn's optimiser state does).
    adam_updates: u64,
}

// The same file name as burn's trainer and a finished run, so that `model.init` reads either.
const STATE_MODEL: &str = super::WEIGHTS_FILE;
const STATE_MOMENTS: &str = "adamw_moments.safetensors";
const STATE_FUSED: &str = "fused_trainer.json";
/// [`Learner::kind`] of this trainer: its moments are flat buffers that burn's trainer cannot
/// read, and burn's optimiser records are nothing this one reads.
const KIND: &str = "fused";

// By hand: the flat buffers hold millions of floats, which a derived Debug would print.
impl std::fmt::Debug for FusedTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedTrainer")
            .field("cfg", &self.cfg)
            .field("hyper", &self.hyper)
            .field("parameters", &self.w.len())
            .finish_non_exhaustive()
    }
}

// By hand, for the same reason: only the shape is worth printing.
impl std::fmt::Debug for AttentionKernelBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionKernelBench")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// The fused CPU trainer. See the module documentation.
pub struct FusedTrainer {
    cfg: LlamaConfig,
    hyper: TrainHyper,
    layout: Layout,
    /// Parameters, their gradients and AdamW's two moments, one flat buffer each.
    w: Vec<f32>,
    grad: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
    adam_updates: u64,
    /// Rotary tables `[max_seq_len, head_dim / 2]`, computed in f32 as burn's model does.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The forward activations; a mutex only so evaluation (`&self`) can reuse them too. Every
    /// call comes from the trainer's one thread, so it is never contended.
    acts: Mutex<Acts>,
    scratch: GradScratch,
    poison_next: bool,
}

fn to_vec<const D: usize>(t: Tensor<CpuBackend, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

impl FusedTrainer {
    /// Takes over `model`'s weights with a fresh optimiser at step 0. Refuses models the fused
    /// kernels do not cover (projection biases), naming what is unsupported, so the caller can
    /// keep burn's trainer.
    pub fn new(model: Llama<CpuBackend>, hyper: TrainHyper) -> Result<FusedTrainer, ModelError> {
        let cfg = model.config().clone();
        cfg.validate()?;
        let layout = Layout::new(&cfg);
        let mut t = FusedTrainer {
            layout: layout.clone(),
            w: vec![0.0; layout.total],
            grad: vec![0.0; layout.total],
            m: vec![0.0; layout.total],
            v: vec![0.0; layout.total],
            step: 0,
            adam_updates: 0,
            cos: Vec::new(),
            sin: Vec::new(),
            acts: Mutex::new(Acts::default()),
            scratch: GradScratch::default(),
            poison_next: false,
            hyper,
            cfg,
        };
        t.rope_tables();
        t.import(model)?;
        Ok(t)
    }

    fn rope_tables(&mut self) {
        let c = &self.cfg;
        let hd = c.head_dim();
        let half = hd / 2;
        // The same f32 arithmetic as `llama::rope_tables` (and transformers).
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / hd as f32))
            .collect();
        self.cos.clear();
        self.sin.clear();
        for p in 0..c.max_seq_len {
            for f in &inv_freq {
                let a = p as f32 * f;
                self.cos.push(a.cos());
                self.sin.push(a.sin());
            }
        }
    }

    /// Copies a burn model's weights into the flat buffer.
    fn import(&mut self, model: Llama<CpuBackend>) -> Result<(), ModelError> {
        let unsupported = |what: &str| {
            Err(ModelError::InvalidConfig(format!(
                "the fused CPU kernels do not support {what}; set training.cpu_kernels = \"burn\""
            )))
        };
        let Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            ..
        } = model;
        if lm_head.as_ref().is_some_and(|h| h.bias.is_some()) {
            return unsupported("an output projection with a bias");
        }
        let lay = self.layout.clone();
        let mut put = |r: &Range<usize>, v: Vec<f32>| {
            debug_assert_eq!(v.len(), r.len());
            self.w[r.clone()].copy_from_slice(&v);
        };
        put(&lay.embed, to_vec(embed_tokens.weight.val()));
        for (slots, layer) in lay.layers.iter().zip(layers) {
            let a = layer.self_attn;
            let mlp = layer.mlp;
            for lin in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &mlp.gate_proj,
                &mlp.up_proj,
                &mlp.down_proj,
            ] {
                if lin.bias.is_some() {
                    return unsupported("projection biases");
                }
            }
            put(&slots.ln1, to_vec(layer.input_layernorm.gamma.val()));
            put(&slots.wq, to_vec(a.q_proj.weight.val()));
            put(&slots.wk, to_vec(a.k_proj.weight.val()));
            put(&slots.wv, to_vec(a.v_proj.weight.val()));
            put(&slots.wo, to_vec(a.o_proj.weight.val()));
            put(
                &slots.ln2,
                to_vec(layer.post_attention_layernorm.gamma.val()),
            );
            put(&slots.wg, to_vec(mlp.gate_proj.weight.val()));
            put(&slots.wu, to_vec(mlp.up_proj.weight.val()));
            put(&slots.wd, to_vec(mlp.down_proj.weight.val()));
        }
        put(&lay.norm, to_vec(norm.gamma.val()));
        if let (Some(r), Some(h)) = (&lay.head, lm_head) {
            put(r, to_vec(h.weight.val()));
        }
        Ok(())
    }

    /// The current weights as a burn model (for saving, export and anything else that wants
    /// burn's model).
    pub fn to_burn(&self) -> Llama<CpuBackend> {
        let c = &self.cfg;
        let dev = cpu_device();
        let (d, f, qw, kw) = (
            c.d_model,
            c.ffn_hidden,
            c.n_heads * c.head_dim(),
            c.n_kv_heads * c.head_dim(),
        );
        let mat = |r: &Range<usize>, shape: [usize; 2]| -> Param<Tensor<CpuBackend, 2>> {
            Param::from_tensor(Tensor::from_data(
                TensorData::new(self.w[r.clone()].to_vec(), shape),
                &dev,
            ))
        };
        let lin = |r: &Range<usize>, shape: [usize; 2]| Linear {
            weight: mat(r, shape),
            bias: None,
        };
        let norm = |r: &Range<usize>| RmsNorm {
            gamma: Param::from_tensor(Tensor::from_data(
                TensorData::new(self.w[r.clone()].to_vec(), [d]),
                &dev,
            )),
            epsilon: c.norm_eps,
        };
        let layers = self
            .layout
            .layers
            .iter()
            .map(|s| DecoderLayer {
                input_layernorm: norm(&s.ln1),
                self_attn: Attention::from_projections(
                    lin(&s.wq, [d, qw]),
                    lin(&s.wk, [d, kw]),
                    lin(&s.wv, [d, kw]),
                    lin(&s.wo, [qw, d]),
                    c,
                ),
                post_attention_layernorm: norm(&s.ln2),
                mlp: Mlp {
                    gate_proj: lin(&s.wg, [d, f]),
                    up_proj: lin(&s.wu, [d, f]),
                    down_proj: lin(&s.wd, [f, d]),
                },
            })
            .collect();
        Llama::from_parts(
            c.clone(),
            Embedding {
                weight: mat(&self.layout.embed, [c.vocab_size, d]),
            },
            layers,
            norm(&self.layout.norm),
            self.layout.head.as_ref().map(|r| lin(r, [d, c.vocab_size])),
            &dev,
        )
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        AttnShape {
            b,
            t,
            heads: self.cfg.n_heads,
            kv_heads: self.cfg.n_kv_heads,
            hd: self.cfg.head_dim(),
            block: kernels::CAUSAL_BLOCK,
        }
    }

    /// The forward pass over `tokens` (`[b, t]`, row-major) up to the logits, keeping every
    /// activation the backward pass needs in `acts`.
    fn forward(&self, tokens: &[i64], b: usize, t: usize, acts: &mut Acts) {
        self.forward_hidden(tokens, b, t, acts);
        let n = b * t;
        fit(&mut acts.logits, n * self.cfg.vocab_size);
        self.head(&acts.hf, n, &mut acts.logits);
    }

    /// The output projection of `rows` final hidden states (`[rows, d_model]`) into `out`
    /// (`[rows, vocab]`): the model's own head, or the tied embedding read transposed in place.
    fn head(&self, hidden: &[f32], rows: usize, out: &mut [f32]) {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        match &self.layout.head {
            Some(r) => kernels::mm(out, hidden, &self.w[r.clone()], Mm::NN, rows, d, v, false),
            None => {
                let embed = &self.w[self.layout.embed.clone()];
                kernels::mm(out, hidden, embed, Mm::NT, rows, d, v, false);
            }
        }
    }

    /// The forward pass up to the final norm's output (`acts.hf`), without the output
    /// projection: what a probe needs for embeddings, and the input of [`Self::head`].
    fn forward_hidden(&self, tokens: &[i64], b: usize, t: usize, acts: &mut Acts) {
        let c = &self.cfg;
        assert!(
            t <= c.max_seq_len,
            "sequence length {t} exceeds max_seq_len {}",
            c.max_seq_len
        );
        let (n, d, f, v) = (b * t, c.d_model, c.ffn_hidden, c.vocab_size);
        let (qw, kw) = (c.n_heads * c.head_dim(), c.n_kv_heads * c.head_dim());
        let eps = c.norm_eps as f32;
        let w = &self.w;
        let lay = &self.layout;
        acts.layers.resize_with(c.n_layers, LayerActs::default);
        for la in &mut acts.layers {
            for (buf, len) in [
                (&mut la.x, n * d),
                (&mut la.r1, n),
                (&mut la.xn1, n * d),
                (&mut la.q, n * qw),
                (&mut la.k, n * kw),
                (&mut la.v, n * kw),
                (&mut la.p, b * c.n_heads * t * t),
                (&mut la.o, n * qw),
                (&mut la.x2, n * d),
                (&mut la.r2, n),
                (&mut la.xn2, n * d),
                (&mut la.g, n * f),
                (&mut la.u, n * f),
                (&mut la.h, n * f),
            ] {
                fit(buf, len);
            }
        }
        fit(&mut acts.xl, n * d);
        fit(&mut acts.rf, n);
        fit(&mut acts.hf, n * d);

        let embed = &w[lay.embed.clone()];
        let first = match acts.layers.first_mut() {
            Some(la) => &mut la.x,
            None => &mut acts.xl,
        };
        for (row, &tok) in first.chunks_mut(d).zip(tokens) {
            let tok = usize::try_from(tok).ok().filter(|&x| x < v);
            let tok = tok.unwrap_or_else(|| panic!("token id out of range 0..{v}"));
            row.copy_from_slice(&embed[tok * d..(tok + 1) * d]);
        }
        let shape = self.attn_shape(b, t);
        let hd = c.head_dim();
        for l in 0..c.n_layers {
            let s = &lay.layers[l];
            let (cur, rest) = acts.layers.split_at_mut(l + 1);
            let la = &mut cur[l];
            kernels::rmsnorm_fwd(&la.x, &w[s.ln1.clone()], eps, &mut la.xn1, &mut la.r1);
            kernels::mm(
                &mut la.q,
                &la.xn1,
                &w[s.wq.clone()],
                Mm::NN,
                n,
                d,
                qw,
                false,
            );
            kernels::mm(
                &mut la.k,
                &la.xn1,
                &w[s.wk.clone()],
                Mm::NN,
                n,
                d,
                kw,
                false,
            );
            kernels::mm(
                &mut la.v,
                &la.xn1,
                &w[s.wv.clone()],
                Mm::NN,
                n,
                d,
                kw,
                false,
            );
            kernels::rope(&mut la.q, t, c.n_heads, hd, &self.cos, &self.sin, false);
            kernels::rope(&mut la.k, t, c.n_kv_heads, hd, &self.cos, &self.sin, false);
            kernels::attention_fwd(shape, &la.q, &la.k, &la.v, &mut la.p, &mut la.o);
            la.x2.copy_from_slice(&la.x);
            kernels::mm(&mut la.x2, &la.o, &w[s.wo.clone()], Mm::NN, n, qw, d, true);
            kernels::rmsnorm_fwd(&la.x2, &w[s.ln2.clone()], eps, &mut la.xn2, &mut la.r2);
            kernels::mm(&mut la.g, &la.xn2, &w[s.wg.clone()], Mm::NN, n, d, f, false);
            kernels::mm(&mut la.u, &la.xn2, &w[s.wu.clone()], Mm::NN, n, d, f, false);
            kernels::swiglu_fwd(&la.g, &la.u, &mut la.h);
            let next = match rest.first_mut() {
                Some(nx) => &mut nx.x,
                None => &mut acts.xl,
            };
            next.copy_from_slice(&la.x2);
            kernels::mm(next, &la.h, &w[s.wd.clone()], Mm::NN, n, f, d, true);
        }
        kernels::rmsnorm_fwd(
            &acts.xl,
            &w[lay.norm.clone()],
            eps,
            &mut acts.hf,
            &mut acts.rf,
        );
    }

    /// Target ids and weights per position (position `k` predicts token `k + 1`), the same
    /// host-side targets burn's loss uploads.
    fn shifted_targets(batch: &TokenBatch) -> (Vec<usize>, Vec<f32>) {
        let (ids, w) = batch.shifted_target_ids();
        // Ids are token ids of the batch (checked against the vocabulary by the forward pass).
        (ids.into_iter().map(|x| x as usize).collect(), w)
    }

    /// After [`Self::forward_hidden`]: gathers the positions that predict a target into
    /// `acts.hsel` and projects only those into `acts.logits` (`[rows, vocab]`). Returns their
    /// target ids and weights. Prompt and padding positions carry no loss, so their logits
    /// were wasted work: with a large vocabulary the projection is the biggest product of the
    /// forward pass (and two more of the backward).
    fn project_targets(&self, batch: &TokenBatch, acts: &mut Acts) -> (Vec<usize>, Vec<f32>) {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let (ids, wts) = Self::shifted_targets(batch);
        acts.rows.clear();
        acts.rows
            .extend((0..batch.batch * batch.len).filter(|&k| wts[k] > 0.0));
        let m = acts.rows.len();
        fit(&mut acts.hsel, m * d);
        for (dst, &k) in acts.hsel.chunks_mut(d).zip(&acts.rows) {
            dst.copy_from_slice(&acts.hf[k * d..(k + 1) * d]);
        }
        fit(&mut acts.logits, m * v);
        if m > 0 {
            self.head(&acts.hsel, m, &mut acts.logits);
        }
        let targets = acts.rows.iter().map(|&k| ids[k]).collect();
        let weights = acts.rows.iter().map(|&k| wts[k]).collect();
        (targets, weights)
    }

    /// The backward pass from the gradient of the target positions' logits (`acts.logits`,
    /// `[acts.rows, vocab]`, as [`Self::project_targets`] left them) into `self.grad`.
    fn backward(&mut self, tokens: &[i64], b: usize, t: usize, acts: &Acts) {
        let c = self.cfg.clone();
        let (n, d, f, v) = (b * t, c.d_model, c.ffn_hidden, c.vocab_size);
        let (qw, kw) = (c.n_heads * c.head_dim(), c.n_kv_heads * c.head_dim());
        let hd = c.head_dim();
        let shape = self.attn_shape(b, t);
        let lay = self.layout.clone();
        let w = &self.w;
        let g = &mut self.grad;
        let sc = &mut self.scratch;
        let m = acts.rows.len();
        for (buf, len) in [
            (&mut sc.dx, n * d),
            (&mut sc.dxn, n * d),
            (&mut sc.dsel, m * d),
            (&mut sc.dh, n * f),
            (&mut sc.du, n * f),
            (&mut sc.d_o, n * qw),
            (&mut sc.dq, n * qw),
            (&mut sc.dk, n * kw),
            (&mut sc.dv, n * kw),
        ] {
            fit(buf, len);
        }
        let dlogits = &acts.logits;
        // Output head over the target positions only: its weight gradient, and the gradient
        // of those positions' final hidden states (dsel), scattered into dxn (zero elsewhere).
        match &lay.head {
            Some(r) => {
                kernels::mm(
                    &mut g[r.clone()],
                    &acts.hsel,
                    dlogits,
                    Mm::TN,
                    d,
                    m,
                    v,
                    false,
                );
                kernels::mm(&mut sc.dsel, dlogits, &w[r.clone()], Mm::NT, m, v, d, false);
                g[lay.embed.clone()].fill(0.0);
            }
            None => {
                // Tied: the head's gradient is the embedding's first term.
                kernels::mm(
                    &mut g[lay.embed.clone()],
                    dlogits,
                    &acts.hsel,
                    Mm::TN,
                    v,
                    m,
                    d,
                    false,
                );
                kernels::mm(
                    &mut sc.dsel,
                    dlogits,
                    &w[lay.embed.clone()],
                    Mm::NN,
                    m,
                    v,
                    d,
                    false,
                );
            }
        }
        sc.dxn.fill(0.0);
        for (src, &k) in sc.dsel.chunks(d).zip(&acts.rows) {
            sc.dxn[k * d..(k + 1) * d].copy_from_slice(src);
        }
        sc.dx.fill(0.0);
        kernels::rmsnorm_bwd(
            &sc.dxn,
            &acts.xl,
            &acts.rf,
            &w[lay.norm.clone()],
            &mut sc.dx,
            &mut g[lay.norm.clone()],
        );
        for l in (0..c.n_layers).rev() {
            let s = &lay.layers[l];
            let la = &acts.layers[l];
            // MLP: x_out = x2 + down(silu(gate(xn2)) * up(xn2)); sc.dx is d x_out.
            kernels::mm(&mut g[s.wd.clone()], &la.h, &sc.dx, Mm::TN, f, n, d, false);
            kernels::mm(&mut sc.dh, &sc.dx, &w[s.wd.clone()], Mm::NT, n, d, f, false);
            kernels::swiglu_bwd(&la.g, &la.u, &mut sc.dh, &mut sc.du);
            kernels::mm(
                &mut g[s.wg.clone()],
                &la.xn2,
                &sc.dh,
                Mm::TN,
                d,
                n,
                f,
                false,
            );
            kernels::mm(
                &mut g[s.wu.clone()],
                &la.xn2,
                &sc.du,
                Mm::TN,
                d,
                n,
                f,
                false,
            );
            kernels::mm(
                &mut sc.dxn,
                &sc.dh,
                &w[s.wg.clone()],
                Mm::NT,
                n,
                f,
                d,
                false,
            );
            kernels::mm(&mut sc.dxn, &sc.du, &w[s.wu.clone()], Mm::NT, n, f, d, true);
            kernels::rmsnorm_bwd(
                &sc.dxn,
                &la.x2,
                &la.r2,
                &w[s.ln2.clone()],
                &mut sc.dx,
                &mut g[s.ln2.clone()],
            );
            // Attention: x2 = x + o_proj(attn(rope(q), rope(k), v)); sc.dx is now d x2.
            kernels::mm(&mut g[s.wo.clone()], &la.o, &sc.dx, Mm::TN, qw, n, d, false);
            kernels::mm(
                &mut sc.d_o,
                &sc.dx,
                &w[s.wo.clone()],
                Mm::NT,
                n,
                d,
                qw,
                false,
            );
            kernels::attention_bwd(
                shape, &la.q, &la.k, &la.v, &la.p, &sc.d_o, &mut sc.dq, &mut sc.dk, &mut sc.dv,
            );
            kernels::rope(&mut sc.dq, t, c.n_heads, hd, &self.cos, &self.sin, true);
            kernels::rope(&mut sc.dk, t, c.n_kv_heads, hd, &self.cos, &self.sin, true);
            kernels::mm(
                &mut g[s.wq.clone()],
                &la.xn1,
                &sc.dq,
                Mm::TN,
                d,
                n,
                qw,
                false,
            );
            kernels::mm(
                &mut g[s.wk.clone()],
                &la.xn1,
                &sc.dk,
                Mm::TN,
                d,
                n,
                kw,
                false,
            );
            kernels::mm(
                &mut g[s.wv.clone()],
                &la.xn1,
                &sc.dv,
                Mm::TN,
                d,
                n,
                kw,
                false,
            );
            kernels::mm(
                &mut sc.dxn,
                &sc.dq,
                &w[s.wq.clone()],
                Mm::NT,
                n,
                qw,
                d,
                false,
            );
            kernels::mm(
                &mut sc.dxn,
                &sc.dk,
                &w[s.wk.clone()],
                Mm::NT,
                n,
                kw,
                d,
                true,
            );
            kernels::mm(
                &mut sc.dxn,
                &sc.dv,
                &w[s.wv.clone()],
                Mm::NT,
                n,
                kw,
                d,
                true,
            );
            kernels::rmsnorm_bwd(
                &sc.dxn,
                &la.x,
                &la.r1,
                &w[s.ln1.clone()],
                &mut sc.dx,
                &mut g[s.ln1.clone()],
            );
        }
        // Embedding rows: scatter-add in row order (a token can repeat).
        let ge = &mut g[lay.embed.clone()];
        for (row, &tok) in sc.dx.chunks(d).zip(tokens) {
            let tok = tok as usize;
            for (o, x) in ge[tok * d..(tok + 1) * d].iter_mut().zip(row) {
                *o += x;
            }
        }
    }

    /// Token-weighted mean NLL of `batch` (which has targets), with its gradient left in
    /// `self.grad`.
    fn loss_and_grad(&mut self, batch: &TokenBatch) -> (f32, Vec<f32>) {
        let (b, t) = (batch.batch, batch.len);
        let target_tokens = batch.num_targets();
        let mut acts = std::mem::take(&mut *self.acts.lock().unwrap_or_else(|e| e.into_inner()));
        self.forward_hidden(&batch.tokens, b, t, &mut acts);
        let (ids, wts) = self.project_targets(batch, &mut acts);
        let inv = 1.0 / target_tokens as f32;
        let nll =
            kernels::cross_entropy(&mut acts.logits, self.cfg.vocab_size, &ids, &wts, Some(inv));
        let loss = nll.iter().map(|&x| f64::from(x)).sum::<f64>() / target_tokens as f64;
        // The per-example losses come from the same per-position NLLs: no extra pass.
        let example_loss = batch.mean_per_example(&nll);
        self.backward(&batch.tokens, b, t, &acts);
        *self.acts.lock().unwrap_or_else(|e| e.into_inner()) = acts;
        (loss as f32, example_loss)
    }

    /// Global-norm clipping (torch's rule: scale by clip / (norm + 1e-6)) and AdamW in one pass
    /// over the flat buffers, with burn's AdamW arithmetic (decay first, then the
    /// bias-corrected update).
    fn adamw(&mut self, lr: f64, norm: f32) {
        let h = &self.hyper;
        let coef = super::train::clip_coef(h.grad_clip, norm).unwrap_or(1.0);
        self.adam_updates += 1;
        let time = self.adam_updates.min(i32::MAX as u64) as i32;
        let (b1, b2, eps) = (h.beta1 as f32, h.beta2 as f32, h.eps as f32);
        let bc1 = 1.0 - b1.powi(time);
        let bc2 = 1.0 - b2.powi(time);
        let lr32 = lr as f32;
        let decay_keep = (1.0 - lr * h.weight_decay) as f32;
        // Segments of the flat buffer with their decay factor, in order.
        let mut segments: Vec<(Range<usize>, f32)> = Vec::new();
        let mut at = 0;
        for r in self.layout.no_decay() {
            if r.start > at {
                segments.push((at..r.start, decay_keep));
            }
            segments.push((r.clone(), 1.0));
            at = r.end;
        }
        if at < self.layout.total {
            segments.push((at..self.layout.total, decay_keep));
        }
        const CHUNK: usize = 1 << 14;
        for (r, keep) in segments {
            self.w[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(self.grad[r.clone()].par_chunks(CHUNK))
                .zip(self.m[r.clone()].par_chunks_mut(CHUNK))
                .zip(self.v[r].par_chunks_mut(CHUNK))
                .for_each(|(((w, g), m), v)| {
                    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let g = g * coef;
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let upd = (*m / bc1) / ((*v / bc2).sqrt() + eps);
                        *w = *w * keep - lr32 * upd;
                    }
                });
        }
    }

    /// What `need` asks for, from one forward pass without gradients: per-example mean NLLs
    /// (empty unless asked) and pooled embeddings (empty unless asked).
    ///
    /// Only the positions that predict a target are projected to the vocabulary, gathered into
    /// one `[rows, d_model]` matrix; without NLLs the projection is skipped. The numbers are the
    /// ones projecting every position and masking would give (a test checks that against
    /// burn's full-logits loss).
    fn eval_pass(&self, batch: &TokenBatch, need: ProbeNeed) -> ProbeStats {
        let (b, t) = (batch.batch, batch.len);
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let mut acts = self.acts.lock().unwrap_or_else(|e| e.into_inner());
        self.forward_hidden(&batch.tokens, b, t, &mut acts);
        let nll = if need.nll() {
            let (targets, weights) = self.project_targets(batch, &mut acts);
            let token_nll = kernels::cross_entropy(&mut acts.logits, v, &targets, &weights, None);
            let mut sum = vec![0.0f32; b];
            for (&k, x) in acts.rows.iter().zip(token_nll) {
                sum[k / t] += x;
            }
            sum.iter()
                .zip(batch.targets_per_example())
                .map(|(&s, n)| if n == 0 { 0.0 } else { f64::from(s / n as f32) })
                .collect()
        } else {
            Vec::new()
        };
        let embeddings = if need.embeddings() {
            batch
                .lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let len = len.min(t);
                    let mut e = vec![0.0f32; d];
                    for row in acts.hf[i * t * d..].chunks(d).take(len) {
                        for (o, x) in e.iter_mut().zip(row) {
                            *o += x;
                        }
                    }
                    if len > 0 {
                        e.iter_mut().for_each(|x| *x /= len as f32);
                    }
                    e
                })
                .collect()
        } else {
            Vec::new()
        };
        ProbeStats { nll, embeddings }
    }
}

impl Learner for FusedTrainer {
    fn kind(&self) -> &str {
        KIND
    }

    /// One optimiser step; the same contract as burn's [`Trainer`](super::Trainer)'s.
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        let lr = lr_at(&self.hyper, self.step);
        self.step += 1;
        let target_tokens = batch.num_targets();
        if target_tokens == 0 {
            return StepOutput::no_targets(lr);
        }
        let (mut loss, example_loss) = self.loss_and_grad(batch);
        if std::mem::take(&mut self.poison_next) {
            loss = f32::NAN;
        }
        let norm = kernels::sum_squares(&self.grad).sqrt() as f32;
        let finite = loss.is_finite() && norm.is_finite();
        if finite {
            self.adamw(lr, norm);
        }
        StepOutput {
            loss,
            lr,
            target_tokens,
            finite,
            grad_norm: norm,
            example_loss,
        }
    }

    /// Mean NLL per example over its targets (0 for an example without targets).
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        self.eval_pass(batch, ProbeNeed::Nll).nll
    }

    /// Probe statistics: per-example mean NLL and the mean final-norm hidden state over each
    /// example's real tokens (as [`probe`](super::probe)).
    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        self.eval_pass(batch, ProbeNeed::Both)
    }

    /// The probe statistics `need` asks for (as [`probe_for`](super::probe_for)).
    fn probe_for(&self, batch: &TokenBatch, need: ProbeNeed) -> ProbeStats {
        self.eval_pass(batch, need)
    }

    /// The greedy next token after each context (as [`greedy_next`](super::greedy_next)).
    fn greedy_next(&self, contexts: &[Vec<u32>], pad: u32) -> Option<Vec<u32>> {
        let b = contexts.len();
        if b == 0 {
            return Some(Vec::new());
        }
        let t = contexts.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(b * t);
        for c in contexts {
            ids.extend(c.iter().map(|&x| i64::from(x)));
            ids.extend(std::iter::repeat_n(i64::from(pad), t - c.len()));
        }
        let mut acts = self.acts.lock().unwrap_or_else(|e| e.into_inner());
        self.forward(&ids, b, t, &mut acts);
        let v = self.cfg.vocab_size;
        let tokens = contexts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let row = i * t + c.len().max(1) - 1;
                let logits = &acts.logits[row * v..(row + 1) * v];
                // The first maximum, as burn's argmax on CPU.
                let mut best = 0;
                for (j, &x) in logits.iter().enumerate() {
                    if x > logits[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect();
        Some(tokens)
    }

    /// Optimiser steps taken so far.
    fn step(&self) -> u64 {
        self.step
    }

    /// Makes the next step's loss NaN (fault injection, as burn's trainer does).
    fn poison_next_step(&mut self) {
        self.poison_next = true;
    }

    /// Weights (`model.mpk`, burn's format, the same file as [`Trainer`](super::Trainer)'s),
    /// AdamW moments (safetensors) and the counters into `dir`.
    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.to_burn().save_file(&dir.join(STATE_MODEL))?;
        let path = dir.join(STATE_MOMENTS);
        let bytes = moments_bytes(&self.m, &self.v).map_err(|e| ModelError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes)?;
        let path = dir.join(STATE_FUSED);
        let json = serde_json::to_vec(&FusedStateFile {
            step: self.step,
            adam_updates: self.adam_updates,
        })
        .map_err(|source| ModelError::State {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)
    }

    /// Restores what [`Learner::save_state`] wrote (continuing reproduces the saved run).
    /// A directory without this trainer's state file is refused with an error that names the
    /// setting.
    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(STATE_FUSED);
        if !path.exists() {
            // The checkpoint records which learner wrote it, and the loop refuses another kind
            // before this is called; this catches checkpoints older than that record (and
            // direct callers), naming the setting rather than the missing file.
            return Err(ModelError::Record {
                path: dir.to_path_buf(),
                message: format!(
                    "no {STATE_FUSED}: this checkpoint was not written by the fused CPU trainer; \
                     one of burn's trainer resumes with training.cpu_kernels = \"burn\" (or \
                     on the GPU)"
                ),
            });
        }
        let state: FusedStateFile = super::read_json(&path)?;
        let mpath = dir.join(STATE_MOMENTS);
        let mbytes = super::read_file(&mpath)?;
        let (m, v) =
            read_moments(&mbytes, self.layout.total).map_err(|message| ModelError::Record {
                path: mpath.clone(),
                message,
            })?;
        let model = self
            .to_burn()
            .load_file(&dir.join(STATE_MODEL), &cpu_device())?;
        self.import(model)?;
        self.m = m;
        self.v = v;
        self.step = state.step;
        self.adam_updates = state.adam_updates;
        Ok(())
    }

    /// Writes the weights alone to `path` (burn's `model.mpk` format).
    fn save_weights(&self, path: &Path) -> Result<(), ModelError> {
        self.to_burn().save_file(path)
    }

    fn export_hf(&self, tokenizer: ExportTokenizer<'_>, dir: &Path) -> Result<bool, ModelError> {
        super::export::export_hf_dir(&self.to_burn(), tokenizer, dir).map(|()| true)
    }
}

fn moments_bytes(m: &[f32], v: &[f32]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let mb: Vec<u8> = m.iter().flat_map(|x| x.to_le_bytes()).collect();
    let vb: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("m", TensorView::new(Dtype::F32, vec![m.len()], &mb)?),
        ("v", TensorView::new(Dtype::F32, vec![v.len()], &vb)?),
    ];
    safetensors::serialize(views, None)
}

fn read_moments(bytes: &[u8], len: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let get = |name: &str| -> Result<Vec<f32>, String> {
        let t = st.tensor(name).map_err(|e| format!("tensor {name}: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [len] {
            return Err(format!(
                "tensor {name}: expected f32 [{len}], found {:?} {:?} (another model shape?)",
                t.dtype(),
                t.shape()
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok((get("m")?, get("v")?))
}

/// The fused attention kernels on their own, forward then backward, for `benches/` (section 7
/// times the causal blocks against the whole `[t, t]` square they replaced). Not part of the
/// library's API: the kernels are internal and this is their only outside door.
#[doc(hidden)]
pub struct AttentionKernelBench {
    shape: AttnShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    o: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl AttentionKernelBench {
    /// Buffers for `b` examples of `t` positions with the given heads, filled with a fixed
    /// pattern (values do not matter for timing). `blocked = false` computes the whole square,
    /// as the kernels did before the causal blocks.
    pub fn new(
        b: usize,
        t: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
        blocked: bool,
    ) -> Self {
        let shape = AttnShape {
            b,
            t,
            heads,
            kv_heads,
            hd,
            block: if blocked { kernels::CAUSAL_BLOCK } else { t },
        };
        let fill = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect()
        };
        let (nq, nkv) = (b * t * heads * hd, b * t * kv_heads * hd);
        Self {
            shape,
            q: fill(nq),
            k: fill(nkv),
            v: fill(nkv),
            p: vec![0.0; b * heads * t * t],
            o: vec![0.0; nq],
            dq: vec![0.0; nq],
            dk: vec![0.0; nkv],
            dv: vec![0.0; nkv],
        }
    }

    /// One forward and one backward pass (the forward's output doubles as the output gradient).
    /// Returns a checksum of the gradients so the work cannot be optimised away.
    pub fn run(&mut self) -> f32 {
        let s = self.shape;
        kernels::attention_fwd(s, &self.q, &self.k, &self.v, &mut self.p, &mut self.o);
        kernels::attention_bwd(
            s,
            &self.q,
            &self.k,
            &self.v,
            &self.p,
            &self.o,
            &mut self.dq,
            &mut self.dk,
            &mut self.dv,
        );
        self.dq[0] + self.dk[0] + self.dv[0]
    }
}
