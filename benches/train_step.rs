//! Training throughput on CPU against the machine's own matrix-product peak (BENCHMARKS.md
//! section 3).
//!
//! Measures, in one process and one run: the peak f32 matrix product of burn-flex (`matmul`)
//! and of the `gemm` crate's sgemm called directly (burn-flex's own kernel library, the
//! "BLAS sgemm" here), then tokens/s and achieved FLOP/s of full training steps (forward,
//! backward, clipping, AdamW) for the demo model and a ~25M-parameter model at seq 256.
//!
//! FLOPs per trained token are counted as `6 * N + 12 * L * d * T` (the PaLM appendix B
//! convention): `N` are the parameters that take part in a matrix product (every parameter
//! but the input embedding table; a tied table is counted once, as the output projection),
//! `L` layers, `d` the attention width (`n_heads * head_dim`), `T` the sequence length. The
//! causal half of the score matrix is counted although it is wasted work, as PaLM does.
//!
//! Section `hotspots` times the fixes of issue 7 against the code they replaced, alternating old
//! and new on the 25M model's shapes, forward and backward: the projections as one 2-D product
//! instead of burn's `Linear::forward`, and rotary positions applied in the projections'
//! contiguous layout (the replaced code kept below verbatim, `old_*`); and the fused trainer's
//! causal attention cut to 64-row blocks instead of the whole `[t, t]` square (the old side is
//! the same kernels with a single block).
//!
//! Section `pytorch` compares tokens/s with the same model, batch and optimiser in PyTorch on
//! CPU (benches/pytorch_baseline.py, run with the interpreter in `MOS_PYTHON`, default
//! `python3`, and the same thread count), alternating our steps and a PyTorch process.
//!
//! Section `probe` times a probe pass that projects every position to the vocabulary (what
//! every probe pass ran before) against the DIFF and COSSIM passes, which project only the
//! target positions or none, on the demo model and on SmolLM2-135M's shape.
//!
//! Usage: `cargo bench --bench train_step [-- SECTION...]` with sections `peak`, `demo`,
//! `m25`, `hotspots`, `probe`, `pytorch` (default: all); `profile` runs 25M-model steps without output
//! for `perf`.
//! `BENCH_QUICK=1` shrinks everything to a smoke run.

mod common;

use std::cell::RefCell;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use common::{alternate, env_usize, median, quick, table, time, verdict_at_least};
use mos_runtime::learner::Learner;
use mos_runtime::model::{
    cpu_device, AttentionKernelBench, CpuAutodiff, CpuBackend, FusedTrainer, LlamaConfig,
    ProbeNeed, TokenBatch, TrainHyper, Trainer,
};

/// Which CPU trainer runs the steps: the fused kernels (the runtime's default on the CPU,
/// `training.cpu_kernels = "fused"`) or burn's autodiff (`"burn"`).
#[derive(Clone, Copy, PartialEq)]
enum Kernels {
    Fused,
    Burn,
}

impl Kernels {
    fn label(self) -> &'static str {
        match self {
            Kernels::Fused => "fused (default)",
            Kernels::Burn => "burn autodiff",
        }
    }
}

/// A trainer of either kind, stepping the same weights (seed 1).
enum Ours {
    Fused(Box<FusedTrainer>),
    Burn(Box<Trainer<CpuAutodiff>>),
}

impl Ours {
    fn new(cfg: &LlamaConfig, kernels: Kernels) -> Ours {
        let device = cpu_device();
        match kernels {
            Kernels::Fused => Ours::Fused(Box::new(
                FusedTrainer::new(cfg.init_seeded::<CpuBackend>(1, &device), hyper())
                    .expect("the fused kernels cover the benchmark models"),
            )),
            Kernels::Burn => Ours::Burn(Box::new(Trainer::new(
                cfg.init_seeded::<CpuAutodiff>(1, &device),
                hyper(),
                device,
            ))),
        }
    }

    fn train_step(&mut self, b: &TokenBatch) {
        match self {
            Ours::Fused(t) => {
                t.train_step(b);
            }
            Ours::Burn(t) => {
                t.train_step(b);
            }
        }
    }
}

/// A model shape and batch to time.
struct Shape {
    name: &'static str,
    cfg: LlamaConfig,
    batch: usize,
}

/// Byte-level tokenizer: 256 bytes + BOS/EOS/PAD, as the demo config uses.
const VOCAB: usize = 259;

fn demo_shape() -> Shape {
    // configs/demo.toml: d128, 4 layers, 4 heads (2 kv), ffn 352, seq 96, batch 16.
    Shape {
        name: "demo (configs/demo.toml)",
        cfg: LlamaConfig {
            vocab_size: VOCAB,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_hidden: 352,
            max_seq_len: 96,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        },
        batch: 16,
    }
}

/// ~25M parameters: d512, 8 layers, 8 heads of 64 (4 kv heads), SwiGLU 1536, seq 256.
fn m25_shape() -> Shape {
    Shape {
        name: "25M (d512 L8 seq256)",
        cfg: LlamaConfig {
            vocab_size: VOCAB,
            d_model: 512,
            n_layers: 8,
            n_heads: 8,
            n_kv_heads: 4,
            ffn_hidden: 1536,
            max_seq_len: 256,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        },
        batch: env_usize("BENCH_M25_BATCH", 8),
    }
}

/// The 25M model's widths on a batch of 1 x 64 tokens: the same code paths in seconds
/// (`BENCH_QUICK=1`).
fn m25_quick() -> Shape {
    let mut s = m25_shape();
    s.batch = 1;
    s.cfg.max_seq_len = 64;
    s.name = "25M (quick: batch 1, seq 64)";
    s
}

/// Training FLOPs per token (see the module comment for the formula).
fn flops_per_token(cfg: &LlamaConfig) -> f64 {
    let input_embedding = if cfg.tie_embeddings {
        0
    } else {
        cfg.vocab_size * cfg.d_model
    };
    let n = (cfg.num_params() - input_embedding) as f64;
    let attn = 12.0 * (cfg.n_layers * cfg.n_heads * cfg.head_dim() * cfg.max_seq_len) as f64;
    6.0 * n + attn
}

fn hyper() -> TrainHyper {
    TrainHyper {
        lr: 1e-3,
        warmup_steps: 10,
        max_steps: 1_000_000,
        min_lr_ratio: 0.1,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
    }
}

/// A full-length batch of pseudo-random byte tokens, every position after the first a target.
fn random_batch(batch: usize, len: usize, seed: u64) -> TokenBatch {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    // xorshift64: a deterministic stream without another dependency.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 256) as u32
                })
                .collect()
        })
        .collect();
    let views: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    TokenBatch::all_targets(&views, 258)
}

/// Peak f32 GFLOP/s of an `n x n x n` product: (burn-flex matmul, gemm sgemm directly).
fn peak(n: usize, rounds: usize) -> (f64, f64) {
    let device = cpu_device();
    let a = Tensor::<CpuBackend, 2>::random([n, n], Distribution::Default, &device);
    let b = Tensor::<CpuBackend, 2>::random([n, n], Distribution::Default, &device);
    let av: Vec<f32> = a.clone().into_data().to_vec().expect("f32");
    let bv: Vec<f32> = b.clone().into_data().to_vec().expect("f32");
    let mut cv = vec![0.0f32; n * n];
    let flop = 2.0 * (n * n * n) as f64;
    let mut burn_side = || {
        let (c, s) = time(|| {
            let c = a.clone().matmul(b.clone());
            // Reading one element forces the (synchronous) kernel to have finished.
            c.slice([0..1, 0..1]).into_scalar()
        });
        std::hint::black_box(c);
        flop / s / 1e9
    };
    let mut gemm_side = || {
        // SAFETY: `av`, `bv` and `cv` are live n x n buffers, and the strides below describe
        // exactly that layout.
        let (_, s) = time(|| unsafe {
            // Row-major n x n operands: column stride 1, row stride n.
            gemm::gemm(
                n,
                n,
                n,
                cv.as_mut_ptr(),
                1,
                n as isize,
                false,
                av.as_ptr(),
                1,
                n as isize,
                bv.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            )
        });
        std::hint::black_box(&cv);
        flop / s / 1e9
    };
    // One untimed call each: page faults, pool start-up and packing buffers.
    burn_side();
    gemm_side();
    let mut sides: [&mut dyn FnMut() -> f64; 2] = [&mut burn_side, &mut gemm_side];
    let r = alternate(rounds, &mut sides, |f, _| f());
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    (best(&r[0]), best(&r[1]))
}

/// Seconds per training step of `shape` over `steps` steps after `warmup` untimed ones.
fn step_seconds(shape: &Shape, kernels: Kernels, warmup: usize, steps: usize) -> Vec<f64> {
    let mut trainer = Ours::new(&shape.cfg, kernels);
    let batches: Vec<TokenBatch> = (0..4)
        .map(|i| random_batch(shape.batch, shape.cfg.max_seq_len, i))
        .collect();
    for i in 0..warmup {
        trainer.train_step(&batches[i % batches.len()]);
    }
    (0..steps)
        .map(|i| time(|| trainer.train_step(&batches[i % batches.len()])).1)
        .collect()
}

fn section_peak(n: usize, rounds: usize) -> f64 {
    println!("### 3a. Peak f32 matrix product ({n} x {n} x {n}, best of {rounds}, alternating)\n");
    let (burn_gflops, gemm_gflops) = peak(n, rounds);
    table(
        &["kernel", "GFLOP/s"],
        &[
            vec!["burn-flex `matmul`".into(), format!("{burn_gflops:.1}")],
            vec![
                "`gemm` 0.19 sgemm (direct, all threads)".into(),
                format!("{gemm_gflops:.1}"),
            ],
        ],
    );
    burn_gflops.max(gemm_gflops)
}

fn section_train(shapes: &[Shape], warmup: usize, steps: usize, peak_gflops: f64) {
    println!(
        "### 3b. Training throughput (full steps: forward, backward, clipping, AdamW; median of \
         {steps} steps after {warmup} warm-up)\n"
    );
    println!(
        "FLOPs per token = 6 x N + 12 x L x d x T (N: parameters in matrix products, L layers, \
         d = heads x head_dim, T = sequence length). Peak = the better of the two kernels above.\n"
    );
    let mut rows = Vec::new();
    for s in shapes {
        for kernels in [Kernels::Fused, Kernels::Burn] {
            common::progress(&format!("training steps: {} ({})", s.name, kernels.label()));
            let secs = step_seconds(s, kernels, warmup, steps);
            let step = median(&secs);
            let tokens = (s.batch * s.cfg.max_seq_len) as f64;
            let fpt = flops_per_token(&s.cfg);
            let gflops = fpt * tokens / step / 1e9;
            let frac = gflops / peak_gflops;
            rows.push(vec![
                s.name.to_string(),
                kernels.label().to_string(),
                format!("{:.2}M", s.cfg.num_params() as f64 / 1e6),
                format!("{} x {}", s.batch, s.cfg.max_seq_len),
                format!("{:.1}", step * 1e3),
                format!("{:.0}", tokens / step),
                format!("{:.2}", fpt / 1e6),
                format!("{gflops:.1}"),
                format!("{:.1}%", 100.0 * frac),
            ]);
        }
    }
    table(
        &[
            "model",
            "trainer",
            "params",
            "batch x seq",
            "ms/step",
            "tokens/s",
            "MFLOP/token",
            "GFLOP/s",
            "of peak",
        ],
        &rows,
    );
    if let Some(fused) = rows
        .iter()
        .find(|r| r[0].starts_with("25M") && r[1] == Kernels::Fused.label())
    {
        let pct: f64 = fused[8].trim_end_matches('%').parse().unwrap_or(0.0);
        println!(
            "Target: the 25M model at >= 30% of peak, with the trainer a run uses (fused): {} \
             ({pct:.1}%).\n",
            verdict_at_least(pct, 30.0)
        );
    }
}

// ---- The hot spots of issue 7: the replaced code (old_*) and the library's new code (new_*),
// copied here because the library keeps them private. ----

/// Before: burn's `Linear::forward` (weight broadcast to `[1, d_in, d_out]`).
fn old_project<B: AutodiffBackend>(lin: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    lin.forward(x)
}

/// After: one `[b * t, d_in] x [d_in, d_out]` product (src/model/llama.rs `project`).
fn new_project<B: AutodiffBackend>(lin: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let w = lin.weight.val();
    let out = w.dims()[1];
    x.reshape([b * t, d]).matmul(w).reshape([b, t, out])
}

/// Before: rotary positions on the `[b, heads, t, hd]` view, tables `[1, 1, t, hd]`.
fn old_rope<B: AutodiffBackend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let half = hd / 2;
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    x * cos.clone() + swapped * sin.clone()
}

/// After: on the contiguous `[b, t, heads, hd]` projection output, tables as one flat row
/// (src/model/llama.rs `rope`).
fn new_rope<B: AutodiffBackend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Tensor<B, 4> {
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

/// Seconds for one forward + backward of `f` on a fresh tracked input.
fn fwd_bwd<const D: usize>(
    input: &Tensor<CpuAutodiff, 3>,
    f: &dyn Fn(Tensor<CpuAutodiff, 3>) -> Tensor<CpuAutodiff, D>,
) -> f64 {
    let x = input.clone().detach().require_grad();
    time(|| {
        let grads = f(x.clone()).sum().backward();
        let g = x.grad(&grads).expect("input gradient");
        // One element read back: the (synchronous) backward has finished.
        std::hint::black_box(g.slice([0..1, 0..1, 0..1]).into_scalar());
    })
    .1
}

fn section_hotspots(reps: usize) {
    let s = m25_shape();
    // Quick mode keeps the shapes' widths but shortens the batch to a smoke run.
    let (b, t) = if quick() {
        (1, 64)
    } else {
        (s.batch, s.cfg.max_seq_len)
    };
    let d = s.cfg.d_model;
    let (nh, hd, ffn) = (s.cfg.n_heads, s.cfg.head_dim(), s.cfg.ffn_hidden);
    println!(
        "### 7. Hot spots: replaced code vs new code (25M shapes, batch {b} x seq {t}; forward + \
         backward; median of {reps}, alternating)\n"
    );
    let device = cpu_device();
    let x = Tensor::<CpuAutodiff, 3>::random([b, t, d], Distribution::Default, &device);
    let lin = |d_in: usize, d_out: usize| Linear::<CpuAutodiff> {
        weight: Param::from_tensor(Tensor::random(
            [d_in, d_out],
            Distribution::Normal(0.0, 0.02),
            &device,
        )),
        bias: None,
    };
    let (q_proj, up_proj) = (lin(d, d), lin(d, ffn));
    // Tables with the model's layout; values do not matter for timing.
    let rope_table = Tensor::<CpuAutodiff, 2>::random([t, hd], Distribution::Default, &device);
    let cos4 = rope_table.clone().unsqueeze::<4>();
    let row = rope_table
        .unsqueeze_dim::<3>(1)
        .expand([t, nh, hd])
        .reshape([1, t * nh * hd]);
    // The fused trainer's attention kernels on the model's heads; the old side is the same
    // kernels with one block spanning every row, which is exactly the square they computed.
    let kv = s.cfg.n_kv_heads;
    let square = RefCell::new(AttentionKernelBench::new(b, t, nh, kv, hd, false));
    let blocked = RefCell::new(AttentionKernelBench::new(b, t, nh, kv, hd, true));
    type Case<'a> = (
        &'a str,
        Box<dyn Fn() -> f64 + 'a>,
        Box<dyn Fn() -> f64 + 'a>,
    );
    let cases: Vec<Case> = vec![
        (
            "projection d -> d (q_proj)",
            Box::new(|| fwd_bwd(&x, &|x| old_project(&q_proj, x))),
            Box::new(|| fwd_bwd(&x, &|x| new_project(&q_proj, x))),
        ),
        (
            "projection d -> ffn (up_proj)",
            Box::new(|| fwd_bwd(&x, &|x| old_project(&up_proj, x))),
            Box::new(|| fwd_bwd(&x, &|x| new_project(&up_proj, x))),
        ),
        (
            "rotary positions on q",
            Box::new(|| {
                fwd_bwd(&x, &|x| {
                    old_rope(x.reshape([b, t, nh, hd]).swap_dims(1, 2), &cos4, &cos4)
                })
            }),
            Box::new(|| fwd_bwd(&x, &|x| new_rope(x.reshape([b, t, nh, hd]), &row, &row))),
        ),
        (
            "causal attention, fused kernels (whole [t, t] square vs 64-row causal blocks)",
            Box::new(|| time(|| std::hint::black_box(square.borrow_mut().run())).1),
            Box::new(|| time(|| std::hint::black_box(blocked.borrow_mut().run())).1),
        ),
    ];
    let mut rows = Vec::new();
    for (name, old, new) in &cases {
        old();
        new();
        let mut sides: [&dyn Fn() -> f64; 2] = [old.as_ref(), new.as_ref()];
        let r = alternate(reps, &mut sides, |f, _| f());
        let (o, n) = (median(&r[0]), median(&r[1]));
        rows.push(vec![
            name.to_string(),
            format!("{:.2}", o * 1e3),
            format!("{:.2}", n * 1e3),
            format!("{:.2}x", o / n),
        ]);
    }
    table(&["operation", "old ms", "new ms", "speed-up"], &rows);
    println!(
        "Per training step the 25M model runs 7 projections per layer (8 layers) plus the output \
         projection, rotary positions on q and k, and one attention in every layer. The first \
         three rows compare burn-level code; the attention row compares the fused trainer's \
         kernels before and after they skip the score blocks above the diagonal.\n"
    );
}

/// SmolLM2-135M's shape (the model `configs/prod.toml` fine-tunes), randomly initialised: with
/// a 49152-token vocabulary its output projection is about a fifth of a forward pass. Quick
/// mode keeps the widths and the vocabulary but only two layers.
fn smollm2_shape() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49152,
        d_model: 576,
        n_layers: if quick() { 2 } else { 30 },
        n_heads: 9,
        n_kv_heads: 3,
        ffn_hidden: 1536,
        max_seq_len: 256,
        rope_theta: 100000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    }
}

/// One table row per side: model, shape, the side's label, its median time in ms and its
/// speed-up over the first side.
fn speedup_rows(name: &str, shape: &str, labels: &[&str], times: &[Vec<f64>]) -> Vec<Vec<String>> {
    let base = median(&times[0]);
    labels
        .iter()
        .zip(times)
        .map(|(label, t)| {
            let m = median(t);
            vec![
                name.to_string(),
                shape.to_string(),
                label.to_string(),
                format!("{:.1}", m * 1e3),
                format!("{:.2}x", base / m),
            ]
        })
        .collect()
}

/// Probe passes of the fused trainer with each kind of output. Side A asks for NLLs on a batch
/// whose every position is a target: it projects every position to the vocabulary, which is
/// what every probe pass (and every evaluation) computed before the probe learned to skip
/// work. Side B is DIFF with the response as the span, here the second half of each example.
/// Side C is COSSIM, which needs no projection at all.
fn section_probe(reps: usize) {
    let q = quick();
    let cases = [
        ("demo (configs/demo.toml)", demo_shape().cfg, 16, 96),
        (
            "SmolLM2-135M shape",
            smollm2_shape(),
            if q { 1 } else { 4 },
            if q { 32 } else { 256 },
        ),
    ];
    println!(
        "### 7b. The output projection only where a statistic or the loss needs it (fused \
         trainer; probe passes of one chunk and training steps, median of {reps} each, \
         alternating)\n"
    );
    let mut rows = Vec::new();
    for (name, cfg, b, t) in cases {
        let device = cpu_device();
        let mut trainer = FusedTrainer::new(cfg.init_seeded::<CpuBackend>(1, &device), hyper())
            .expect("the fused kernels cover the benchmark models");
        let every = random_batch(b, t, 7);
        let seqs: Vec<Vec<u32>> = every
            .tokens
            .chunks(t)
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect();
        let flags: Vec<bool> = (0..t).map(|k| k >= t / 2).collect();
        let views: Vec<(&[u32], &[bool])> = seqs
            .iter()
            .map(|s| (s.as_slice(), flags.as_slice()))
            .collect();
        let half = TokenBatch::new(&views, 258);
        let sides: Vec<(&TokenBatch, ProbeNeed)> = vec![
            (&every, ProbeNeed::Nll),
            (&half, ProbeNeed::Nll),
            (&every, ProbeNeed::Embeddings),
        ];
        for (batch, need) in &sides {
            trainer.probe_for(batch, *need);
        }
        let mut sides = sides;
        let r = alternate(reps, &mut sides, |(batch, need), _| {
            time(|| std::hint::black_box(trainer.probe_for(batch, *need))).1
        });
        let labels = [
            "every position projected (what each probe pass ran before)",
            "DIFF, response span (half of the positions)",
            "COSSIM (embeddings only)",
        ];
        rows.extend(speedup_rows(name, &format!("{b} x {t}"), &labels, &r));
        // Training steps on the same two batches: the loss and its gradient also project only
        // the target positions, so a step on the half-target batch skips half the projection
        // forward and both of its backward products.
        let mut batches = [&every, &half];
        for batch in batches {
            trainer.train_step(batch);
        }
        let r = alternate(reps, &mut batches, |batch, _| {
            time(|| trainer.train_step(batch)).1
        });
        let labels = [
            "training step, every position a target",
            "training step, half of the positions targets (before: as every position)",
        ];
        rows.extend(speedup_rows(name, &format!("{b} x {t}"), &labels, &r));
    }
    table(&["model", "batch x seq", "pass", "ms", "speed-up"], &rows);
    println!(
        "DIFF projects the positions that predict a response token, and the start-up pass on \
         theta_0 does the same; COSSIM pools the final hidden states and projects nothing. \
         Evaluation (`eval_nll`) takes the DIFF path with the training mask, and a training \
         step projects only the positions its loss counts (prompt and padding positions carry \
         no loss): before, both paid for every position.\n"
    );
}

/// The interpreter of the PyTorch baseline, and whether it can import torch (with its version).
fn python_with_torch() -> (String, Result<String, String>) {
    let python = std::env::var("MOS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = std::process::Command::new(&python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output();
    let status = match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
            .lines()
            .last()
            .unwrap_or("import torch failed")
            .to_string()),
        Err(e) => Err(e.to_string()),
    };
    (python, status)
}

/// One PyTorch process: median seconds per step of `steps` steps after `warmup`.
fn pytorch_step_seconds(python: &str, shape: &Shape, warmup: usize, steps: usize) -> f64 {
    let c = &shape.cfg;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pytorch_baseline.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script);
    for (k, v) in [
        ("--vocab", c.vocab_size),
        ("--d-model", c.d_model),
        ("--layers", c.n_layers),
        ("--heads", c.n_heads),
        ("--kv-heads", c.n_kv_heads),
        ("--ffn", c.ffn_hidden),
        ("--seq", c.max_seq_len),
        ("--batch", shape.batch),
        ("--warmup", warmup),
        ("--steps", steps),
        ("--threads", common::threads()),
    ] {
        cmd.args([k.to_string(), v.to_string()]);
    }
    if !c.tie_embeddings {
        cmd.arg("--untied");
    }
    let out = cmd.output().expect("run the PyTorch baseline");
    assert!(
        out.status.success(),
        "pytorch_baseline.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).expect("baseline JSON line");
    v["step_seconds"].as_f64().expect("step_seconds")
}

fn section_pytorch(shapes: &[Shape], warmup: usize, steps: usize, rounds: usize) {
    println!(
        "### 4. Against PyTorch on CPU (same architecture, sizes, batch, AdamW and clipping; \
         {} threads each; median of {steps} steps after {warmup} warm-up per turn, {rounds} \
         rounds alternating ours / PyTorch)\n",
        common::threads()
    );
    let (python, torch) = python_with_torch();
    let version = match torch {
        Ok(v) => v,
        Err(e) => {
            println!(
                "**Skipped**: `{python}` cannot import torch ({e}). Set `MOS_PYTHON` to an \
                 interpreter with torch: `python3 -m venv .venv && .venv/bin/pip install torch`, \
                 then `MOS_PYTHON=.venv/bin/python scripts/bench.sh`.\n"
            );
            return;
        }
    };
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for s in shapes {
        common::progress(&format!("ours vs PyTorch: {}", s.name));
        let mut trainer = Ours::new(&s.cfg, Kernels::Fused);
        let batches: Vec<TokenBatch> = (0..4)
            .map(|i| random_batch(s.batch, s.cfg.max_seq_len, i))
            .collect();
        for i in 0..warmup {
            trainer.train_step(&batches[i % batches.len()]);
        }
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..rounds {
            let secs: Vec<f64> = (0..steps)
                .map(|i| time(|| trainer.train_step(&batches[i % batches.len()])).1)
                .collect();
            ours.push(median(&secs));
            theirs.push(pytorch_step_seconds(&python, s, warmup, steps));
        }
        let tokens = (s.batch * s.cfg.max_seq_len) as f64;
        let (o, t) = (tokens / median(&ours), tokens / median(&theirs));
        ratios.push(o / t);
        rows.push(vec![
            s.name.to_string(),
            format!("{} x {}", s.batch, s.cfg.max_seq_len),
            format!("{o:.0}"),
            format!("{t:.0}"),
            format!("{:.2}x", o / t),
        ]);
    }
    table(
        &[
            "model",
            "batch x seq",
            "ours tokens/s",
            "PyTorch tokens/s",
            "ours / PyTorch",
        ],
        &rows,
    );
    let worst = ratios.iter().copied().fold(f64::MAX, f64::min);
    let wait_policy = std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into());
    println!(
        "PyTorch {version} (`{python}`, OMP_WAIT_POLICY {wait_policy}). Target: ours >= 1.0x \
         PyTorch: {} (lowest {worst:.2}x). PyTorch's OpenMP threads spin while they wait, which \
         costs it dearly when other processes share the cores (about 12x in a smoke run on a \
         loaded machine, gone with OMP_WAIT_POLICY=PASSIVE): trust this table only from an \
         idle machine.\n",
        verdict_at_least(worst, 1.0)
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let q = quick();
    if args.iter().any(|a| a == "profile") {
        let s = m25_shape();
        let n = env_usize("BENCH_PROFILE_STEPS", 6);
        let kernels = if args.iter().any(|a| a == "burn") {
            Kernels::Burn
        } else {
            Kernels::Fused
        };
        let secs = step_seconds(&s, kernels, 1, n);
        eprintln!("profile: {n} steps, median {:.3} s/step", median(&secs));
        return;
    }
    let n = if q {
        512
    } else {
        env_usize("BENCH_PEAK_N", 2048)
    };
    let peak_gflops = if want("peak") || want("demo") || want("m25") {
        section_peak(n, if q { 2 } else { 5 })
    } else {
        f64::NAN
    };
    let mut shapes = Vec::new();
    if want("demo") {
        shapes.push(demo_shape());
    }
    if want("m25") {
        shapes.push(if q { m25_quick() } else { m25_shape() });
    }
    if !shapes.is_empty() {
        let (warmup, steps) = if q {
            (1, 2)
        } else {
            (2, env_usize("BENCH_TRAIN_STEPS", 8))
        };
        section_train(&shapes, warmup, steps, peak_gflops);
    }
    if want("hotspots") {
        section_hotspots(if q { 2 } else { 7 });
    }
    if want("probe") {
        section_probe(if q { 2 } else { 5 });
    }
    if want("pytorch") {
        let shapes = vec![demo_shape(), if q { m25_quick() } else { m25_shape() }];
        let (warmup, steps, rounds) = if q { (1, 2, 1) } else { (2, 6, 3) };
        section_pytorch(&shapes, warmup, steps, rounds);
    }
}
