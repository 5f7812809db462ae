//! The fused trainer against burn's autodiff: same loss, same gradients, same weights after
//! several AdamW steps, same evaluation, probe and greedy outputs, exact resume.

use burn::module::AutodiffModule;
use burn::tensor::Tensor;

use super::*;
use crate::learner::Learner;
use crate::model::{CpuAutodiff, Trainer};

fn cfg(tied: bool, kv_heads: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 41,
        d_model: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: kv_heads,
        ffn_hidden: 40,
        max_seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: tied,
    }
}

fn hyper() -> TrainHyper {
    TrainHyper {
        lr: 1e-2,
        warmup_steps: 2,
        max_steps: 10,
        min_lr_ratio: 0.1,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        // Small enough that clipping is active on these models.
        grad_clip: 0.5,
    }
}

/// Right-padded examples of different lengths, prompt tokens masked out, ids from a simple
/// deterministic stream.
fn batch(seed: u64, vocab: usize) -> TokenBatch {
    batch_of(seed, vocab, &[16, 11, 7, 14])
}

fn batch_of(seed: u64, vocab: usize, lens: &[usize]) -> TokenBatch {
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let toks = (0..len)
                .map(|k| ((seed as usize * 31 + i * 17 + k * k * 7 + k) % vocab) as u32)
                .collect();
            let flags = (0..len).map(|k| k >= 2 + i).collect();
            (toks, flags)
        })
        .collect();
    let views: Vec<(&[u32], &[bool])> = seqs
        .iter()
        .map(|(t, f)| (t.as_slice(), f.as_slice()))
        .collect();
    TokenBatch::new(&views, 0)
}

/// The gradient of one parameter, flattened.
fn grad_of<const D: usize>(
    p: &Param<Tensor<CpuAutodiff, D>>,
    grads: &<CpuAutodiff as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f32> {
    p.val()
        .grad(grads)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect()
}

/// burn's gradients in the fused layout's order.
fn burn_grads(model: &Llama<CpuAutodiff>, b: &TokenBatch) -> (f32, Vec<f32>) {
    let dev = cpu_device();
    let (tok, _) = crate::model::loss::masked_token_nll(model, b, &dev);
    let loss = tok.sum().div_scalar(b.num_targets() as f32);
    let lv: f32 = loss.clone().into_data().iter::<f32>().next().unwrap();
    let grads = loss.backward();
    let mut flat = grad_of(&model.embed_tokens.weight, &grads);
    for l in &model.layers {
        flat.extend(grad_of(&l.input_layernorm.gamma, &grads));
        for p in [
            &l.self_attn.q_proj.weight,
            &l.self_attn.k_proj.weight,
            &l.self_attn.v_proj.weight,
            &l.self_attn.o_proj.weight,
        ] {
            flat.extend(grad_of(p, &grads));
        }
        flat.extend(grad_of(&l.post_attention_layernorm.gamma, &grads));
        for p in [
            &l.mlp.gate_proj.weight,
            &l.mlp.up_proj.weight,
            &l.mlp.down_proj.weight,
        ] {
            flat.extend(grad_of(p, &grads));
        }
    }
    flat.extend(grad_of(&model.norm.gamma, &grads));
    if let Some(h) = &model.lm_head {
        flat.extend(grad_of(&h.weight, &grads));
    }
    (lv, flat)
}

/// Largest absolute difference, relative to the largest magnitude of `want`.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn loss_and_every_gradient_match_burn_autodiff() {
    // The last case has sequences of up to 150 tokens: attention scores of realistic length,
    // padding of up to 86 positions, and a softmax over more than a handful of keys.
    let long = [150usize, 97, 64, 130];
    for (tied, kv, lens) in [
        (true, 2, &[16usize, 11, 7, 14][..]),
        (false, 4, &[16, 11, 7, 14][..]),
        (true, 1, &[16, 11, 7, 14][..]),
        (true, 2, &long[..]),
    ] {
        let mut c = cfg(tied, kv);
        c.max_seq_len = 160;
        let dev = cpu_device();
        let auto = c.init_seeded::<CpuAutodiff>(7, &dev);
        let mut fused = FusedTrainer::new(c.init_seeded::<CpuBackend>(7, &dev), hyper()).unwrap();
        for seed in 0..2 {
            let b = batch_of(seed, c.vocab_size, lens);
            let (want_loss, want) = burn_grads(&auto, &b);
            let (loss, _) = fused.loss_and_grad(&b);
            assert!(
                (loss - want_loss).abs() < 1e-5 * want_loss.abs(),
                "tied={tied} kv={kv}: loss {loss} vs burn {want_loss}"
            );
            let err = rel_err(&fused.grad, &want);
            assert!(err < 1e-4, "tied={tied} kv={kv}: gradient differs by {err}");
            // Per tensor too, so a small parameter cannot hide behind a large one.
            let lay = fused.layout.clone();
            for (i, s) in lay.layers.iter().enumerate() {
                for (name, r) in [
                    ("ln1", &s.ln1),
                    ("wq", &s.wq),
                    ("wk", &s.wk),
                    ("wv", &s.wv),
                    ("wo", &s.wo),
                    ("ln2", &s.ln2),
                    ("wg", &s.wg),
                    ("wu", &s.wu),
                    ("wd", &s.wd),
                ] {
                    let e = rel_err(&fused.grad[r.clone()], &want[r.clone()]);
                    assert!(e < 1e-4, "tied={tied} kv={kv} layer {i} {name}: {e}");
                }
            }
            let e = rel_err(&fused.grad[lay.embed.clone()], &want[lay.embed.clone()]);
            assert!(e < 1e-4, "embedding gradient differs by {e}");
        }
    }
}

fn flat_weights(model: Llama<CpuBackend>, h: TrainHyper) -> Vec<f32> {
    FusedTrainer::new(model, h).unwrap().w
}

#[test]
fn adamw_steps_with_clipping_match_burns_trainer() {
    for (tied, kv) in [(true, 2), (false, 4)] {
        let c = cfg(tied, kv);
        let dev = cpu_device();
        let mut burn_t = Trainer::new(c.init_seeded::<CpuAutodiff>(3, &dev), hyper(), dev);
        let mut fused = FusedTrainer::new(c.init_seeded::<CpuBackend>(3, &dev), hyper()).unwrap();
        for step in 0..5 {
            let b = batch(step, c.vocab_size);
            let want = burn_t.train_step(&b);
            let got = fused.train_step(&b);
            assert!(got.finite && want.finite);
            assert!(
                (got.loss - want.loss).abs() < 1e-4 * want.loss.abs(),
                "step {step}: loss {} vs {}",
                got.loss,
                want.loss
            );
            assert!((got.grad_norm - want.grad_norm).abs() < 1e-4 * want.grad_norm);
            assert!(want.grad_norm > 0.5, "clipping must be exercised");
            assert_eq!(got.lr, want.lr);
        }
        let want = flat_weights(burn_t.model().valid(), hyper());
        let e = rel_err(&fused.w, &want);
        assert!(
            e < 1e-4,
            "tied={tied} kv={kv}: weights after 5 steps differ by {e}"
        );
        // Weights through burn's model and back are exact.
        assert_eq!(flat_weights(fused.to_burn(), hyper()), fused.w);
    }
}

#[test]
fn eval_probe_and_greedy_match_burn() {
    let c = cfg(true, 2);
    let dev = cpu_device();
    let mut fused = FusedTrainer::new(c.init_seeded::<CpuBackend>(5, &dev), hyper()).unwrap();
    // A few steps so the weights are not the initial ones.
    for s in 0..3 {
        fused.train_step(&batch(s, c.vocab_size));
    }
    let model = fused.to_burn();
    let b = batch(9, c.vocab_size);
    let want = crate::model::probe(&model, &b, &dev);
    let got = fused.probe(&b);
    for (g, w) in got.nll.iter().zip(&want.nll) {
        assert!((g - w).abs() < 1e-5, "probe nll {g} vs {w}");
    }
    for (g, w) in got.embeddings.iter().zip(&want.embeddings) {
        assert!(rel_err(g, w) < 1e-5);
    }
    assert_eq!(fused.eval_nll(&b), got.nll);
    // The reference projects every position to the vocabulary and masks; the probe projects
    // only the positions that predict a target (this batch has prompts and padding).
    let (full, _) = crate::model::per_example_nll(&model, &b, &dev);
    let full: Vec<f32> = full.into_data().iter::<f32>().collect();
    assert_eq!(full.len(), got.nll.len());
    for (g, w) in got.nll.iter().zip(&full) {
        assert!(
            (g - f64::from(*w)).abs() < 1e-5,
            "probe nll {g} vs full logits {w}"
        );
    }
    let nll_only = fused.probe_for(&b, ProbeNeed::Nll);
    assert_eq!(nll_only.nll, got.nll);
    assert!(nll_only.embeddings.is_empty());
    let emb_only = fused.probe_for(&b, ProbeNeed::Embeddings);
    assert_eq!(emb_only.embeddings, got.embeddings);
    assert!(emb_only.nll.is_empty());
    let contexts = vec![vec![1u32, 5, 9], vec![2, 3], vec![7, 7, 7, 7, 1]];
    assert_eq!(
        fused.greedy_next(&contexts, 0),
        Some(crate::model::greedy_next(&model, &contexts, 0, &dev))
    );
}

#[test]
fn resume_from_saved_state_is_exact_and_burn_checkpoints_are_refused() {
    let c = cfg(false, 2);
    let dev = cpu_device();
    let dir = tempfile::tempdir().unwrap();
    let mut a = FusedTrainer::new(c.init_seeded::<CpuBackend>(11, &dev), hyper()).unwrap();
    for s in 0..2 {
        a.train_step(&batch(s, c.vocab_size));
    }
    a.save_state(dir.path()).unwrap();
    let cont: Vec<f32> = (2..5)
        .map(|s| a.train_step(&batch(s, c.vocab_size)).loss)
        .collect();

    let mut b = FusedTrainer::new(c.init_seeded::<CpuBackend>(99, &dev), hyper()).unwrap();
    b.load_state(dir.path()).unwrap();
    assert_eq!(b.step(), 2);
    let again: Vec<f32> = (2..5)
        .map(|s| b.train_step(&batch(s, c.vocab_size)).loss)
        .collect();
    assert_eq!(cont, again);
    assert_eq!(a.w, b.w);

    let burn_dir = tempfile::tempdir().unwrap();
    let t = Trainer::new(c.init_seeded::<CpuAutodiff>(1, &dev), hyper(), dev);
    t.save_state(burn_dir.path()).unwrap();
    let err = b.load_state(burn_dir.path()).unwrap_err().to_string();
    assert!(err.contains("cpu_kernels"), "{err}");
}

#[test]
fn poisoned_step_is_skipped_and_counted_as_a_step() {
    let c = cfg(true, 2);
    let mut f = FusedTrainer::new(c.init_seeded::<CpuBackend>(2, &cpu_device()), hyper()).unwrap();
    let before = f.w.clone();
    f.poison_next_step();
    let out = f.train_step(&batch(0, c.vocab_size));
    assert!(!out.finite);
    assert_eq!(f.step(), 1);
    assert_eq!(f.w, before);
    assert!(f.train_step(&batch(0, c.vocab_size)).finite);
    assert_ne!(f.w, before);
}

#[test]
fn causal_blocks_give_the_whole_squares_results() {
    // 150 positions: two full 64-row blocks and a partial one; grouped heads (4 on 2 kv heads)
    // so the dK/dV accumulation over a group crosses the blocks too.
    let (b, t, heads, kv, hd) = (2, 150, 4, 2, 8);
    let mut square = AttentionKernelBench::new(b, t, heads, kv, hd, false);
    let mut blocked = AttentionKernelBench::new(b, t, heads, kv, hd, true);
    assert_eq!(square.shape.block, t);
    assert!(blocked.shape.block < t);
    // Stale scores from an earlier step must not survive anywhere in `p`.
    blocked.p.fill(f32::NAN);
    square.run();
    blocked.run();
    for (name, got, want) in [
        ("p", &blocked.p, &square.p),
        ("o", &blocked.o, &square.o),
        ("dq", &blocked.dq, &square.dq),
        ("dk", &blocked.dk, &square.dk),
        ("dv", &blocked.dv, &square.dv),
    ] {
        let e = rel_err(got, want);
        assert!(e < 1e-5, "{name} differs by {e}");
    }
    // Every probability is written, zeros above the diagonal.
    let first = &blocked.p[..t * t];
    assert!(blocked.p.iter().all(|x| x.is_finite()));
    assert!((0..t).all(|i| first[i * t + i + 1..(i + 1) * t].iter().all(|&x| x == 0.0)));
}
