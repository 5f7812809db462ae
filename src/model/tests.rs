//! Tiny-model tests of the model module (CPU, flex backend).

use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::*;
use crate::learner::Learner;

type B = CpuBackend;
type AD = CpuAutodiff;

fn tiny(n_kv_heads: usize, tie: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 32,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads,
        ffn_hidden: 64,
        max_seq_len: 32,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: tie,
    }
}

fn hyper(lr: f64) -> TrainHyper {
    TrainHyper {
        lr,
        warmup_steps: 0,
        max_steps: 1000,
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
    }
}

fn model<Bk: Backend>(cfg: &LlamaConfig, seed: u64) -> Llama<Bk> {
    cfg.init_seeded::<Bk>(seed, &Default::default())
}

fn floats<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn tokens<Bk: Backend>(rows: &[&[i64]]) -> Tensor<Bk, 2, Int> {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn trainer_can_move_to_its_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Trainer<AD>>();
    assert_send::<Llama<B>>();
}

#[test]
fn num_params_matches_module() {
    for (kv, tie) in [(4, false), (2, true), (1, false), (2, false)] {
        let cfg = tiny(kv, tie);
        let m = model::<B>(&cfg, 1);
        assert_eq!(m.num_params(), cfg.num_params(), "kv={kv} tie={tie}");
    }
}

#[test]
fn validate_rejects_bad_heads() {
    let mut cfg = tiny(3, false);
    assert!(matches!(cfg.validate(), Err(ModelError::InvalidConfig(_))));
    cfg.n_kv_heads = 2;
    cfg.d_model = 30;
    assert!(cfg.validate().is_err());
}

#[test]
fn init_is_eager_and_seed_determined() {
    let cfg = tiny(2, false);
    let dev = cpu_device();
    // Backend-RNG init (the only test using the global RNG, so no parallel test races it).
    B::seed(&dev, 21);
    let a = cfg.init::<B>(&dev);
    B::seed(&dev, 21);
    let b = cfg.init::<B>(&dev);
    // A clone taken before any use must carry the same weights (lazy params would not).
    let a_clone = a.clone();
    let t = tokens::<B>(&[&[1, 2, 3]]);
    let la = floats(a.logits(a.forward_hidden(t.clone())));
    let lc = floats(a_clone.logits(a_clone.forward_hidden(t.clone())));
    let lb = floats(b.logits(b.forward_hidden(t)));
    assert_eq!(la, lc);
    assert_eq!(la, lb);
    // Host-seeded init: same seed, same weights; another seed, other weights.
    let s1 = floats(model::<B>(&cfg, 5).embed_tokens.weight.val());
    let s2 = floats(model::<B>(&cfg, 5).embed_tokens.weight.val());
    let s3 = floats(model::<B>(&cfg, 6).embed_tokens.weight.val());
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    let n = s1.len() as f64;
    let mean = s1.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (s1
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    assert!(
        mean.abs() < 0.005 && (std - 0.02).abs() < 0.002,
        "mean {mean} std {std}"
    );
}

#[test]
fn causal_logits_ignore_future_tokens() {
    let cfg = tiny(2, false);
    let m = model::<B>(&cfg, 2);
    let a: Vec<i64> = (0..16).map(|i| (i * 7 % 32) as i64).collect();
    let mut b = a.clone();
    b[9] = (b[9] + 5) % 32;
    let la = floats(m.logits(m.forward_hidden(tokens::<B>(&[&a]))));
    let lb = floats(m.logits(m.forward_hidden(tokens::<B>(&[&b]))));
    let v = cfg.vocab_size;
    // Positions 0..=8 see only tokens 0..=8, identical in both.
    assert!(max_abs_diff(&la[..9 * v], &lb[..9 * v]) < 1e-6);
    // Position 9 sees the changed token.
    assert!(max_abs_diff(&la[9 * v..10 * v], &lb[9 * v..10 * v]) > 1e-4);
}

#[test]
fn rope_follows_rotate_half_convention() {
    // head_dim 4, theta 100: frequencies f0 = 1, f1 = 100^(-1/2) = 0.1.
    let cfg = LlamaConfig {
        vocab_size: 8,
        d_model: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        ffn_hidden: 8,
        max_seq_len: 4,
        rope_theta: 100.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    };
    let m = model::<B>(&cfg, 3);
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let input: Vec<f32> = (0..3).flat_map(|_| x).collect();
    let xt = Tensor::<B, 4>::from_data(TensorData::new(input, [1, 1, 3, 4]), &cpu_device());
    let out = floats(m.apply_rope(xt));
    for p in 0..3 {
        let (c0, s0) = ((p as f32).cos(), (p as f32).sin());
        let (c1, s1) = ((p as f32 * 0.1).cos(), (p as f32 * 0.1).sin());
        let want = [
            x[0] * c0 - x[2] * s0,
            x[1] * c1 - x[3] * s1,
            x[2] * c0 + x[0] * s0,
            x[3] * c1 + x[1] * s1,
        ];
        assert!(
            max_abs_diff(&out[p * 4..p * 4 + 4], &want) < 1e-5,
            "position {p}"
        );
    }
}

#[test]
fn token_batch_masks() {
    let a: &[u32] = &[5, 6, 7];
    let b: &[u32] = &[1, 2, 3, 4, 5];
    let tb = TokenBatch::new(
        &[
            (a, &[true, true, true]),
            (b, &[false, false, true, true, true]),
        ],
        0,
    );
    assert_eq!((tb.batch, tb.len), (2, 5));
    assert_eq!(tb.tokens, vec![5, 6, 7, 0, 0, 1, 2, 3, 4, 5]);
    assert_eq!(tb.target_mask, vec![0., 1., 1., 0., 0., 0., 0., 1., 1., 1.]);
    assert_eq!(tb.lengths, vec![3, 5]);
    assert_eq!(tb.num_targets(), 5);
    assert_eq!(tb.targets_per_example(), vec![2, 3]);
}

#[test]
fn padding_does_not_change_probe_stats() {
    let cfg = tiny(2, true);
    let m = model::<B>(&cfg, 4);
    let dev = cpu_device();
    let short: &[u32] = &[3, 9, 4, 1, 7];
    let short_flags: &[bool] = &[false, false, true, true, true];
    let long: Vec<u32> = (0..20).map(|i| (i * 5 % 32) as u32).collect();
    let long_flags = vec![true; long.len()];
    let alone = probe(&m, &TokenBatch::new(&[(short, short_flags)], 0), &dev);
    let both = probe(
        &m,
        &TokenBatch::new(&[(short, short_flags), (&long, &long_flags)], 0),
        &dev,
    );
    assert!((alone.nll[0] - both.nll[0]).abs() < 1e-5);
    assert!(max_abs_diff(&alone.embeddings[0], &both.embeddings[0]) < 1e-5);
    assert_eq!(both.embeddings[1].len(), cfg.d_model);
    // An untrained model over 32 tokens sits near ln(32).
    assert!(
        (alone.nll[0] - (32f64).ln()).abs() < 0.5,
        "{}",
        alone.nll[0]
    );
}

#[test]
fn probe_projects_only_target_positions_and_skips_what_is_not_asked() {
    for tie in [true, false] {
        let m = model::<B>(&tiny(2, tie), 8);
        let dev = cpu_device();
        let a: &[u32] = &[3, 9, 4, 1, 7, 2];
        let b: &[u32] = &[5, 6];
        let c: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
        // A prompt, an example without targets and a longer one, so both the prompt mask and
        // the padding decide which positions are projected.
        let tb = TokenBatch::new(
            &[
                (a, &[false, false, true, true, true, false]),
                (b, &[false, false]),
                (c, &[true; 9]),
            ],
            0,
        );
        let (full, _) = per_example_nll(&m, &tb, &dev);
        let full = floats(full);
        let both = probe(&m, &tb, &dev);
        assert_eq!(both.nll.len(), 3);
        assert_eq!(both.nll[1], 0.0);
        for (got, want) in both.nll.iter().zip(&full) {
            assert!((got - f64::from(*want)).abs() < 1e-5, "{got} vs {want}");
        }
        let nll = probe_for(&m, &tb, ProbeNeed::Nll, &dev);
        assert_eq!(nll.nll, both.nll);
        assert!(nll.embeddings.is_empty());
        let emb = probe_for(&m, &tb, ProbeNeed::Embeddings, &dev);
        assert!(emb.nll.is_empty());
        assert_eq!(emb.embeddings.len(), 3);
        for (got, want) in emb.embeddings.iter().zip(&both.embeddings) {
            assert!(max_abs_diff(got, want) < 1e-6);
        }
        // No target anywhere: nothing is projected and every NLL is 0.
        let none = TokenBatch::new(&[(b, &[false, false])], 0);
        assert_eq!(probe_for(&m, &none, ProbeNeed::Nll, &dev).nll, vec![0.0]);
    }
}

#[test]
fn training_loss_projecting_only_targets_matches_the_full_logits_loss_and_gradients() {
    for tie in [true, false] {
        let m = model::<AD>(&tiny(2, tie), 12);
        let dev = cpu_device();
        let a: &[u32] = &[3, 9, 4, 1, 7, 2];
        let c: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
        let tb = TokenBatch::new(
            &[
                (a, &[false, false, true, true, true, false]),
                (c, &[true; 9]),
            ],
            0,
        );
        let n = tb.num_targets() as f32;
        let compact = loss::target_token_nll(&m, &tb, &dev).unwrap().sum() / n;
        let (full, _) = loss::masked_token_nll(&m, &tb, &dev);
        let full = full.sum() / n;
        let (lc, lf) = (floats(compact.clone())[0], floats(full.clone())[0]);
        assert!((lc - lf).abs() < 1e-6, "tie={tie}: {lc} vs {lf}");
        let (gc, gf) = (compact.backward(), full.backward());
        let mut params: Vec<Tensor<AD, 2>> = vec![
            m.embed_tokens.weight.val(),
            m.layers[1].self_attn.q_proj.weight.val(),
        ];
        if let Some(h) = &m.lm_head {
            params.push(h.weight.val());
        }
        for p in params {
            let x = floats(p.grad(&gc).unwrap());
            let y = floats(p.grad(&gf).unwrap());
            assert!(max_abs_diff(&x, &y) < 1e-6, "tie={tie}: gradients differ");
            assert!(y.iter().any(|&v| v != 0.0));
        }
    }
    // No target: nothing to project.
    let m = model::<B>(&tiny(2, true), 12);
    let b: &[u32] = &[5, 6];
    let none = TokenBatch::new(&[(b, &[false, false])], 0);
    assert!(loss::target_token_nll(&m, &none, &cpu_device()).is_none());
}

#[test]
fn example_without_targets_gives_zero_nll() {
    let m = model::<B>(&tiny(2, false), 5);
    let a: &[u32] = &[1, 2, 3];
    let b: &[u32] = &[4, 5, 6, 7];
    let tb = TokenBatch::new(&[(a, &[false; 3]), (b, &[true; 4])], 0);
    let (nll, hidden) = per_example_nll(&m, &tb, &cpu_device());
    let nll = floats(nll);
    assert_eq!(nll[0], 0.0);
    assert!(nll[1] > 0.0);
    assert_eq!(hidden.dims(), [2, 4, 32]);
}

#[test]
fn gqa_runs_and_is_finite() {
    for kv in [1, 2, 4] {
        let cfg = tiny(kv, false);
        let m = model::<B>(&cfg, 6);
        let h = m.forward_hidden(tokens::<B>(&[&[1, 2, 3, 4, 5, 6], &[6, 5, 4, 3, 2, 1]]));
        assert_eq!(h.dims(), [2, 6, cfg.d_model]);
        let l = floats(m.logits(h));
        assert_eq!(l.len(), 2 * 6 * cfg.vocab_size);
        assert!(l.iter().all(|v| v.is_finite()), "kv={kv}");
    }
}

#[test]
fn gqa_shares_kv_heads_like_repeated_weights() {
    // A 2-kv-head model equals a 4-kv-head model whose k/v weights repeat each kv head for
    // its two query heads (HF repeat_kv order: query head i reads kv head i / 2).
    let small = tiny(2, false);
    let m2 = model::<B>(&small, 7);
    let mut m4 = model::<B>(&tiny(4, false), 8);
    let hd = small.head_dim();
    let rep = |w: Tensor<B, 2>| -> Tensor<B, 2> {
        let [d, _] = w.dims();
        w.reshape([d, 2, 1, hd])
            .repeat_dim(2, 2)
            .reshape([d, 4 * hd])
    };
    m4.embed_tokens = m2.embed_tokens.clone();
    m4.norm = m2.norm.clone();
    m4.lm_head = m2.lm_head.clone();
    for (l4, l2) in m4.layers.iter_mut().zip(m2.layers.iter()) {
        let mut a4 = l2.self_attn.clone().into_wide(4);
        a4.k_proj.weight = Param::from_tensor(rep(l2.self_attn.k_proj.weight.val()));
        a4.v_proj.weight = Param::from_tensor(rep(l2.self_attn.v_proj.weight.val()));
        l4.self_attn = a4;
        l4.mlp = l2.mlp.clone();
        l4.input_layernorm = l2.input_layernorm.clone();
        l4.post_attention_layernorm = l2.post_attention_layernorm.clone();
    }
    let t = tokens::<B>(&[&[3, 1, 4, 1, 5, 9, 2, 6]]);
    let a = floats(m2.logits(m2.forward_hidden(t.clone())));
    let b = floats(m4.logits(m4.forward_hidden(t)));
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn lr_schedule_shape() {
    let h = TrainHyper {
        lr: 1.0,
        warmup_steps: 10,
        max_steps: 110,
        min_lr_ratio: 0.1,
        ..hyper(1.0)
    };
    assert!((lr_at(&h, 0) - 0.1).abs() < 1e-12);
    assert!((lr_at(&h, 4) - 0.5).abs() < 1e-12);
    assert!((lr_at(&h, 9) - 1.0).abs() < 1e-12);
    assert!((lr_at(&h, 10) - 1.0).abs() < 1e-12);
    assert!((lr_at(&h, 60) - 0.55).abs() < 1e-12); // half-way: (1 + 0.1) / 2
    assert!((lr_at(&h, 110) - 0.1).abs() < 1e-12);
    assert!((lr_at(&h, 500) - 0.1).abs() < 1e-12);
    for s in 10..110 {
        assert!(lr_at(&h, s + 1) <= lr_at(&h, s));
    }
    let no_warmup = TrainHyper {
        warmup_steps: 0,
        ..h.clone()
    };
    assert!((lr_at(&no_warmup, 0) - 1.0).abs() < 1e-12);
}

fn pattern_batch() -> TokenBatch {
    let a: Vec<u32> = (0..24).map(|i| (i % 6) as u32 + 1).collect();
    let b: Vec<u32> = (0..20).map(|i| (i % 4) as u32 + 10).collect();
    let c: Vec<u32> = (0..16).map(|i| (i % 5) as u32 + 20).collect();
    TokenBatch::all_targets(&[&a, &b, &c], 0)
}

#[test]
fn train_loss_is_token_weighted_mean_of_eval_nll() {
    let dev = cpu_device();
    let batch = pattern_batch();
    let mut tr = Trainer::<AD>::new(model::<AD>(&tiny(2, false), 9), hyper(1e-3), dev);
    let nll = tr.eval_nll(&batch);
    // Probes are read-only: repeated calls agree exactly (the DIFF ratio is 1 at step 0).
    assert_eq!(tr.probe(&batch), tr.probe(&batch));
    let probe_nll = tr.probe(&batch).nll;
    assert!(
        max_abs_diff(
            &probe_nll.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &nll.iter().map(|&v| v as f32).collect::<Vec<_>>()
        ) < 1e-6
    );
    let counts = batch.targets_per_example();
    let want: f64 = nll
        .iter()
        .zip(&counts)
        .map(|(l, &n)| l * n as f64)
        .sum::<f64>()
        / batch.num_targets() as f64;
    let out = tr.train_step(&batch);
    assert!(out.finite);
    assert_eq!(out.target_tokens, batch.num_targets());
    assert!(
        (f64::from(out.loss) - want).abs() < 1e-5,
        "{} vs {want}",
        out.loss
    );
    assert!(out.grad_norm > 0.0);
    assert_eq!(tr.step(), 1);
}

#[test]
fn loss_falls_on_a_learnable_pattern() {
    let dev = cpu_device();
    let batch = pattern_batch();
    let mut tr = Trainer::<AD>::new(model::<AD>(&tiny(2, false), 10), hyper(1e-2), dev);
    let first = tr.train_step(&batch).loss;
    let mut last = first;
    for _ in 0..29 {
        let out = tr.train_step(&batch);
        assert!(out.finite);
        last = out.loss;
    }
    assert!(last < 0.3 * first, "loss {first} -> {last}");
}

#[test]
fn batch_without_targets_skips_the_update_and_keeps_the_model() {
    let dev = cpu_device();
    let mut tr = Trainer::<AD>::new(model::<AD>(&tiny(2, false), 11), hyper(1e-2), dev);
    let before = floats(tr.model().embed_tokens.weight.val().inner());
    let prompt_only: &[u32] = &[5, 6, 7];
    let out = tr.train_step(&TokenBatch::new(&[(prompt_only, &[false; 3])], 0));
    assert_eq!((out.loss, out.target_tokens), (0.0, 0));
    assert!(out.finite);
    assert_eq!(tr.step(), 1);
    let after = floats(tr.model().embed_tokens.weight.val().inner());
    assert_eq!(before, after);
    // The model is still in place for the next step, which learns.
    let next = tr.train_step(&pattern_batch());
    assert!(next.finite && next.target_tokens > 0 && next.loss > 0.0);
    assert_ne!(floats(tr.model().embed_tokens.weight.val().inner()), after);
}

#[test]
fn non_finite_loss_skips_the_update() {
    let dev = cpu_device();
    let mut m = model::<AD>(&tiny(2, false), 11);
    m.norm.gamma = m.norm.gamma.map(|g| g.mul_scalar(f32::INFINITY));
    let mut tr = Trainer::<AD>::new(m, hyper(1e-2), dev);
    let before = floats(tr.model().embed_tokens.weight.val().inner());
    let out = tr.train_step(&pattern_batch());
    assert!(!out.finite);
    assert_eq!(tr.step(), 1);
    let after = floats(tr.model().embed_tokens.weight.val().inner());
    assert_eq!(before, after);
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.mpk");
    let dev = cpu_device();
    let cfg = tiny(2, false);
    let mut tr = Trainer::<AD>::new(model::<AD>(&cfg, 12), hyper(1e-2), dev);
    tr.train_step(&pattern_batch());
    tr.save_weights(&path).unwrap();
    assert!(path.exists());
    let other = model::<B>(&cfg, 13);
    let loaded = other.load_file(&path, &dev).unwrap();
    let t = tokens::<B>(&[&[1, 2, 3, 4, 5, 6, 7]]);
    let inner = tr.model().valid();
    let a = floats(inner.logits(inner.forward_hidden(t.clone())));
    let b = floats(loaded.logits(loaded.forward_hidden(t)));
    assert_eq!(a, b);
    // Only the final file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn load_missing_file_is_a_typed_error() {
    let m = model::<B>(&tiny(2, false), 14);
    let err = m
        .load_file(std::path::Path::new("/nonexistent/x.mpk"), &cpu_device())
        .unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
}

#[test]
fn save_state_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let dev = cpu_device();
    let cfg = tiny(2, false);
    let batch = pattern_batch();
    let mut a = Trainer::<AD>::new(model::<AD>(&cfg, 15), hyper(5e-3), dev);
    for _ in 0..3 {
        a.train_step(&batch);
    }
    a.save_state(dir.path()).unwrap();
    let cont: Vec<f32> = (0..3).map(|_| a.train_step(&batch).loss).collect();

    let mut b = Trainer::<AD>::new(model::<AD>(&cfg, 16), hyper(5e-3), dev);
    b.load_state(dir.path()).unwrap();
    assert_eq!(b.step(), 3);
    let resumed: Vec<f32> = (0..3).map(|_| b.train_step(&batch).loss).collect();
    assert_eq!(cont, resumed);
}

/// ms/step of the demo-sized model. Run with
/// `cargo test --release -- --ignored bench_train_step --nocapture`.
#[test]
#[ignore]
fn bench_train_step() {
    let cfg = LlamaConfig {
        vocab_size: 259,
        d_model: 128,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 352,
        max_seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
    };
    let dev = cpu_device();
    let seqs: Vec<Vec<u32>> = (0..16)
        .map(|i| (0..128).map(|k| ((k * 7 + i * 13) % 259) as u32).collect())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let batch = TokenBatch::all_targets(&refs, 0);
    let mut tr = Trainer::<AD>::new(model::<AD>(&cfg, 17), hyper(1e-3), dev);
    for _ in 0..3 {
        tr.train_step(&batch);
    }
    let n = 20;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        assert!(tr.train_step(&batch).finite);
    }
    let step_ms = t0.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let t1 = std::time::Instant::now();
    for _ in 0..n {
        tr.probe(&batch);
    }
    let probe_ms = t1.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!(
        "params {} | train step {step_ms:.1} ms ({:.0} tokens/s) | probe {probe_ms:.1} ms",
        cfg.num_params(),
        (16.0 * 128.0) / (step_ms / 1000.0)
    );
}

#[test]
#[ignore]
fn profile_ops() {
    use burn::tensor::Distribution;
    let dev = cpu_device();
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let t0 = std::time::Instant::now();
        for _ in 0..10 {
            f();
        }
        println!("{name}: {:.2} ms", t0.elapsed().as_secs_f64() * 100.0);
    };
    let x = Tensor::<B, 3>::random([16, 128, 128], Distribution::Default, &dev);
    let w = Tensor::<B, 2>::random([128, 128], Distribution::Default, &dev);
    let q = Tensor::<B, 4>::random([16, 4, 128, 32], Distribution::Default, &dev);
    let cfg = LlamaConfig {
        vocab_size: 259,
        d_model: 128,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 352,
        max_seq_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
    };
    let m = model::<B>(&cfg, 1);
    let g = Tensor::<B, 1>::random([128], Distribution::Default, &dev);
    let col = Tensor::<B, 3>::random([16, 128, 1], Distribution::Default, &dev);
    time("floats only", &mut || {
        let _ = floats(x.clone());
    });
    time("x*x", &mut || {
        let _ = floats(x.clone() * x.clone());
    });
    time("x.exp", &mut || {
        let _ = floats(x.clone().exp());
    });
    time("x*row-bcast", &mut || {
        let _ = floats(x.clone() * g.clone().unsqueeze::<3>());
    });
    time("x/col-bcast", &mut || {
        let _ = floats(x.clone() / col.clone());
    });
    time("sum_dim2", &mut || {
        let _ = floats(x.clone().sum_dim(2));
    });
    time("mean_dim2", &mut || {
        let _ = floats(x.clone().mean_dim(2));
    });
    time("max_dim2", &mut || {
        let _ = floats(x.clone().max_dim(2));
    });
    time("linear 128x128", &mut || {
        let _ = floats(burn::tensor::module::linear(x.clone(), w.clone(), None));
    });
    time("matmul 3d x 2d-unsq", &mut || {
        let _ = floats(x.clone().matmul(w.clone().unsqueeze()));
    });
    time("attention causal", &mut || {
        let o = burn::tensor::module::attention(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            },
        );
        let _ = floats(o);
    });
    time("attention fallback", &mut || {
        let o = burn::tensor::module::attention_fallback(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            },
        );
        let _ = floats(o);
    });
    time("rope", &mut || {
        let _ = floats(m.apply_rope(q.clone()));
    });
    time("swap+reshape", &mut || {
        let _ = floats(x.clone().reshape([16, 128, 4, 32]).swap_dims(1, 2));
    });
    time("rmsnorm", &mut || {
        let _ = floats(m.norm.forward(x.clone()));
    });
    let l = Tensor::<B, 3>::random([16, 128, 259], Distribution::Default, &dev);
    time("log_softmax", &mut || {
        let _ = floats(burn::tensor::activation::log_softmax(l.clone(), 2));
    });
    let toks = tokens::<B>(&(0..16).map(|_| &[1i64; 128][..]).collect::<Vec<_>>());
    time("forward_hidden", &mut || {
        let _ = floats(m.forward_hidden(toks.clone()));
    });
    time("layer0", &mut || {
        let rope = m.rope_for_test(128);
        let _ = floats(m.layers[0].forward(x.clone(), &rope));
    });
}

#[test]
fn greedy_next_is_the_argmax_of_each_context_alone() {
    // Contexts of different lengths share one right-padded batch; each answer must equal the
    // argmax of the last position when the context runs on its own.
    let cfg = tiny(2, true);
    let m = model::<B>(&cfg, 5);
    let contexts: Vec<Vec<u32>> = vec![
        (0..11).map(|i| (i * 5 % 32) as u32).collect(),
        vec![3, 1, 4],
        (0..20).map(|i| (i * 3 % 32) as u32).collect(),
    ];
    let got = greedy_next(&m, &contexts, 0, &Default::default());
    let v = cfg.vocab_size;
    for (c, g) in contexts.iter().zip(&got) {
        let row: Vec<i64> = c.iter().map(|&x| i64::from(x)).collect();
        let logits = floats(m.logits(m.forward_hidden(tokens::<B>(&[&row]))));
        let last = &logits[(c.len() - 1) * v..c.len() * v];
        let best = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
        assert_eq!(*g, best, "context of length {}", c.len());
    }
    assert!(greedy_next(&m, &[], 0, &Default::default()).is_empty());
}
