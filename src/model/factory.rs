//! The built-in learner of a run: the one place that picks the backend and the CPU kernels.
//! burn's [`Trainer`] on the chosen backend, or the [`FusedTrainer`] on the CPU, both from the
//! same initial weights, behind a `Box<dyn Learner>` so that the loop never names burn.

use burn::tensor::backend::{AutodiffBackend, Backend as BurnBackend};

use super::{
    cpu_device, init_weights_file, load_for_training, load_init, CpuAutodiff, CpuBackend,
    FusedTrainer, InitError, Llama, LlamaConfig, ModelError, TrainHyper, Trainer,
};
use crate::config::{Backend, Config, CpuKernels};
use crate::learner::Learner;
use crate::seed::stream_seed;

/// Why the built-in learner could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `runtime.backend = "cuda"` in a build without the `cuda` feature.
    #[error("this build has no cuda backend (build with --features cuda)")]
    NoCuda,
    /// The initial weights could not be made (a pretrained checkpoint that does not load).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The weights `model.init` names do not load into the config's model.
    #[error("model.init: {0}")]
    Init(#[from] InitError),
}

/// The built-in learner of a run, on the calling thread (the trainer's own, where every call
/// on it will run). `cfg` gives where to train (`runtime.backend`, `runtime.device`), the CPU
/// kernels, the optimiser, the seed and the initial weights (`model.pretrained`, `model.init`
/// or the seeded initialisation); `shape` is the model shape the run records in its checkpoints
/// and `vocab_size` the tokenizer's.
///
/// On the CPU, `training.cpu_kernels = "fused"` gives the [`FusedTrainer`] unless the model has
/// something its kernels do not cover (projection biases of a pretrained model), in which case
/// burn's trainer takes over with a warning. The GPU always trains with burn's [`Trainer`].
pub fn build_learner(
    cfg: &Config,
    shape: &LlamaConfig,
    vocab_size: usize,
) -> Result<Box<dyn Learner>, BuildError> {
    match cfg.runtime.backend {
        Backend::Cpu => match cfg.training.cpu_kernels {
            CpuKernels::Fused => fused_or_burn(cfg, shape, vocab_size),
            CpuKernels::Burn => burn_learner::<CpuAutodiff>(cfg, shape, vocab_size, cpu_device()),
        },
        #[cfg(feature = "cuda")]
        Backend::Cuda => burn_learner::<super::CudaAutodiff>(
            cfg,
            shape,
            vocab_size,
            burn::backend::cuda::CudaDevice::new(cfg.runtime.device),
        ),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(BuildError::NoCuda),
    }
}

/// burn's trainer on `device`. burn's own RNG is seeded first, as it always was, although the
/// initial weights do not come from it.
fn burn_learner<B: AutodiffBackend>(
    cfg: &Config,
    shape: &LlamaConfig,
    vocab_size: usize,
    device: B::Device,
) -> Result<Box<dyn Learner>, BuildError> {
    B::seed(&device, cfg.runtime.seed);
    let model = initial_model::<B>(cfg, shape, vocab_size, &device)?;
    Ok(Box::new(Trainer::new(model, train_hyper(cfg), device)))
}

/// The fused CPU trainer, or burn's CPU trainer when the fused kernels refuse the model.
fn fused_or_burn(
    cfg: &Config,
    shape: &LlamaConfig,
    vocab_size: usize,
) -> Result<Box<dyn Learner>, BuildError> {
    let device = cpu_device();
    let model = initial_model::<CpuBackend>(cfg, shape, vocab_size, &device)?;
    match FusedTrainer::new(model, train_hyper(cfg)) {
        Ok(fused) => {
            tracing::info!(
                "training on the CPU with the fused kernels (training.cpu_kernels = \"fused\")"
            );
            Ok(Box::new(fused))
        }
        Err(e) => {
            tracing::warn!("{e}: training with burn's trainer instead");
            burn_learner::<CpuAutodiff>(cfg, shape, vocab_size, device)
        }
    }
}

/// The weights a run starts from: the pretrained checkpoint, the weights of an earlier run
/// (`model.init`: its `model.mpk`, or the one inside a checkpoint directory, whose manifest the
/// runtime has verified), or the seeded initialisation of `shape` (which the runtime derived and
/// records for checkpoints). Host-seeded, so every backend and both CPU trainers start from the
/// same weights, independent of burn's process-global RNG. Only weights come from `model.init`:
/// the trainer built around them starts its optimiser moments, step count and learning-rate
/// schedule at zero.
fn initial_model<B: BurnBackend>(
    cfg: &Config,
    shape: &LlamaConfig,
    vocab_size: usize,
    device: &B::Device,
) -> Result<Llama<B>, BuildError> {
    if let Some(path) = &cfg.model.pretrained {
        return Ok(
            load_for_training::<B>(path, cfg.training.seq_len, vocab_size, device)
                .map_err(ModelError::from)?,
        );
    }
    match &cfg.model.init {
        Some(path) => Ok(load_init::<B>(&init_weights_file(path), shape, device)?),
        None => Ok(shape.init_seeded::<B>(stream_seed(cfg.runtime.seed, "model"), device)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Config, LlamaConfig) {
        let cfg = Config::default();
        let shape = LlamaConfig {
            vocab_size: 20,
            d_model: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            ffn_hidden: 32,
            max_seq_len: 8,
            rope_theta: cfg.model.rope_theta,
            norm_eps: cfg.model.norm_eps,
            tie_embeddings: cfg.model.tie_embeddings,
        };
        (cfg, shape)
    }

    #[test]
    fn the_config_picks_the_kernels_and_the_kind_names_them() {
        let (mut cfg, shape) = tiny();
        cfg.training.cpu_kernels = CpuKernels::Fused;
        let fused = build_learner(&cfg, &shape, 20).unwrap();
        assert_eq!(fused.kind(), "fused");
        cfg.training.cpu_kernels = CpuKernels::Burn;
        let burn = build_learner(&cfg, &shape, 20).unwrap();
        assert_eq!(burn.kind(), "burn");
        // The same initial weights on both paths: the same first evaluation.
        let batch = crate::learner::TokenBatch::all_targets(&[&[1, 2, 3, 4, 5]], 0);
        let (a, b) = (fused.eval_nll(&batch), burn.eval_nll(&batch));
        assert!((a[0] - b[0]).abs() < 1e-4 * b[0].abs(), "{a:?} vs {b:?}");
    }

    #[test]
    fn both_trainers_report_each_examples_loss_before_the_update() {
        for kernels in [CpuKernels::Fused, CpuKernels::Burn] {
            let (mut cfg, shape) = tiny();
            cfg.training.cpu_kernels = kernels;
            let mut learner = build_learner(&cfg, &shape, 20).unwrap();
            // Three examples of different lengths, one with a prompt that is not a target.
            let seqs: Vec<(&[u32], &[bool])> = vec![
                (&[1, 2, 3, 4, 5, 6], &[true; 6]),
                (&[7, 8, 9], &[true; 3]),
                (&[3, 3, 4, 9, 2], &[false, false, false, true, true]),
            ];
            let batch = crate::learner::TokenBatch::new(&seqs, 0);
            let before = learner.eval_nll(&batch);
            let out = learner.train_step(&batch);
            assert_eq!(out.example_loss.len(), 3, "{kernels:?}");
            for (i, (&got, &want)) in out.example_loss.iter().zip(&before).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{kernels:?} example {i}: {got} vs the pre-step NLL {want}"
                );
            }
            // The step's loss is their target-weighted mean.
            let counts = batch.targets_per_example();
            let weighted: f64 = out
                .example_loss
                .iter()
                .zip(&counts)
                .map(|(&l, &n)| f64::from(l) * n as f64)
                .sum::<f64>()
                / counts.iter().sum::<usize>() as f64;
            assert!(
                (weighted - f64::from(out.loss)).abs() < 1e-5,
                "{kernels:?}: {weighted} vs {}",
                out.loss
            );
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_typed_error() {
        let (mut cfg, shape) = tiny();
        cfg.runtime.backend = Backend::Cuda;
        let err = build_learner(&cfg, &shape, 20)
            .err()
            .expect("no cuda backend in this build");
        assert!(matches!(err, BuildError::NoCuda), "{err}");
    }
}
