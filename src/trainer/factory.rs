//! The learner factory: the built-in trainers from a config (burn's `Trainer` on the chosen
//! backend, or the fused CPU trainer), starting from the same weights on every path.

use burn::tensor::backend::AutodiffBackend;

use super::r#loop::run_with_learner;
use super::{RunSummary, TrainerCtx, TrainerError};
use crate::config::Config;
use crate::data::Tokenizer;
use crate::model::{LlamaConfig, TrainHyper, Trainer};
use crate::seed::stream_seed;

/// Runs the whole training loop with the built-in burn Llama on `device`, on the calling thread
/// (the trainer's dedicated OS thread).
pub fn run_training<B: AutodiffBackend>(
    ctx: TrainerCtx,
    device: B::Device,
) -> Result<RunSummary, TrainerError> {
    B::seed(&device, ctx.cfg.runtime.seed);
    let model = initial_model::<B>(&ctx, &device)?;
    let hyper = train_hyper(&ctx.cfg);
    run_with_learner(ctx, Trainer::new(model, hyper, device))
}

/// The weights a run starts from: the pretrained checkpoint, or the seeded initialisation of
/// the shape `prepare` already derived (and recorded for checkpoints). Host-seeded, so every
/// backend and both CPU trainers start from the same weights, independent of burn's
/// process-global RNG.
fn initial_model<B: burn::tensor::backend::Backend>(
    ctx: &TrainerCtx,
    device: &B::Device,
) -> Result<crate::model::Llama<B>, TrainerError> {
    let cfg = &ctx.cfg;
    match &cfg.model.pretrained {
        Some(path) => crate::model::load_for_training::<B>(
            path,
            cfg.training.seq_len,
            ctx.tokenizer.vocab_size(),
            device,
        )
        .map_err(|e| TrainerError::Model(e.into())),
        None => Ok(ctx
            .model_shape
            .init_seeded::<B>(stream_seed(cfg.runtime.seed, "model"), device)),
    }
}

/// Runs the whole training loop on the CPU with the fused trainer
/// ([`FusedTrainer`](crate::model::FusedTrainer), `training.cpu_kernels = "fused"`): the same
/// initial weights as [`run_training`] on the CPU, the same function, about 2-3x the speed.
/// A pretrained model the fused kernels do not cover (projection biases) falls back to burn's
/// trainer with a warning.
pub fn run_training_fused(ctx: TrainerCtx) -> Result<RunSummary, TrainerError> {
    use crate::model::{CpuAutodiff, CpuBackend, FusedTrainer};
    let device = crate::model::cpu_device();
    let model = initial_model::<CpuBackend>(&ctx, &device)?;
    match FusedTrainer::new(model, train_hyper(&ctx.cfg)) {
        Ok(fused) => {
            tracing::info!(
                "training on the CPU with the fused kernels (training.cpu_kernels = \"fused\")"
            );
            run_with_learner(ctx, fused)
        }
        Err(e) => {
            tracing::warn!("{e}: training with burn's trainer instead");
            run_training::<CpuAutodiff>(ctx, device)
        }
    }
}

/// The model shape implied by a config and its tokenizer.
pub fn llama_config(cfg: &Config, tok: &Tokenizer) -> LlamaConfig {
    let m = &cfg.model;
    LlamaConfig {
        vocab_size: tok.vocab_size(),
        d_model: m.d_model,
        n_layers: m.n_layers,
        n_heads: m.n_heads,
        n_kv_heads: m.n_kv_heads,
        ffn_hidden: m.ffn_hidden,
        max_seq_len: cfg.training.seq_len,
        rope_theta: m.rope_theta,
        norm_eps: m.norm_eps,
        tie_embeddings: m.tie_embeddings,
    }
}

/// Optimiser hyper-parameters from the config.
pub fn train_hyper(cfg: &Config) -> TrainHyper {
    let t = &cfg.training;
    TrainHyper {
        lr: t.lr,
        warmup_steps: t.warmup_steps,
        max_steps: cfg.runtime.max_steps,
        min_lr_ratio: t.min_lr_ratio,
        weight_decay: t.weight_decay,
        beta1: t.beta1,
        beta2: t.beta2,
        eps: t.eps,
        grad_clip: t.grad_clip,
    }
}
