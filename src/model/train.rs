//! The optimiser step: AdamW, warm-up + cosine schedule, global-norm gradient clipping,
//! skip-on-non-finite, and saving/loading weights and optimiser state.

use std::collections::HashSet;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::loss::target_token_nll;
use super::{
    load_record, probe_for, save_record, write_atomic, Llama, ModelError, ProbeNeed, ProbeStats,
    StepOutput, TokenBatch,
};
use crate::learner::{ExportTokenizer, Learner};

/// Optimiser and schedule settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainHyper {
    /// Peak learning rate (reached at the end of warm-up).
    pub lr: f64,
    /// Linear warm-up length in steps (0 = start at `lr`).
    pub warmup_steps: u64,
    /// Step at which the cosine decay reaches `lr * min_lr_ratio` (and stays there).
    pub max_steps: u64,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (applied to matrices only, see [`Trainer`]).
    pub weight_decay: f64,
    /// AdamW first-moment decay.
    pub beta1: f64,
    /// AdamW second-moment decay.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Maximum global L2 norm of the gradient; `<= 0` or non-finite disables clipping.
    pub grad_clip: f64,
}

/// Learning rate used for the update at 0-based `step`.
///
/// Warm-up: `lr * (step + 1) / warmup_steps` for `step < warmup_steps` (so the first step
/// uses `lr / warmup_steps` and step `warmup_steps - 1` uses `lr`). Then cosine from `lr` at
/// `warmup_steps` to `lr * min_lr_ratio` at `max_steps`, constant afterwards.
pub fn lr_at(h: &TrainHyper, step: u64) -> f64 {
    if step < h.warmup_steps {
        return h.lr * (step + 1) as f64 / h.warmup_steps as f64;
    }
    let min_lr = h.lr * h.min_lr_ratio;
    let span = h.max_steps.saturating_sub(h.warmup_steps);
    if span == 0 {
        // No decay phase configured: the run ends with warm-up.
        return min_lr;
    }
    let progress = ((step - h.warmup_steps) as f64 / span as f64).min(1.0);
    min_lr + (h.lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The factor that scales the gradient down to `grad_clip` when its global norm exceeds it;
/// `None` when it does not, or when clipping is off (`<= 0` or non-finite). Same rule as
/// `torch.nn.utils.clip_grad_norm_`: scale by clip / (norm + 1e-6).
pub(crate) fn clip_coef(grad_clip: f64, norm: f32) -> Option<f32> {
    (grad_clip > 0.0 && grad_clip.is_finite() && f64::from(norm) > grad_clip)
        .then(|| (grad_clip / (f64::from(norm) + 1e-6)) as f32)
}

type Adam<B> = OptimizerAdaptor<AdamW, Llama<B>, B>;

/// Owns the model being trained, its AdamW optimiser, the step counter and the schedule.
///
/// Weight decay follows the common GPT/Llama recipe: 2-D weights (projections, embeddings)
/// decay, 1-D parameters (RMSNorm scales) do not. burn's AdamW has one decay rate per
/// optimiser, so two AdamW instances share the step, each seeing only its parameters'
/// gradients (parameters without a gradient are left untouched by burn's adaptor).
pub struct Trainer<B: AutodiffBackend> {
    model: Option<Llama<B>>,
    hyper: TrainHyper,
    device: B::Device,
    step: u64,
    decay: Adam<B>,
    no_decay: Adam<B>,
    no_decay_ids: Vec<ParamId>,
    poison_next: bool,
}

// By hand: the model and the optimiser state are tensors; the step and the settings are what a
// reader of a Debug line wants.
impl<B: AutodiffBackend> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("hyper", &self.hyper)
            .finish_non_exhaustive()
    }
}

/// Small side file of [`Learner::save_state`].
#[derive(Serialize, Deserialize)]
struct TrainerStateFile {
    step: u64,
}

// The same name as a finished run's weights, so that `model.init` reads either.
const STATE_MODEL: &str = super::WEIGHTS_FILE;
const STATE_OPT_DECAY: &str = "optim_decay.mpk";
const STATE_OPT_NO_DECAY: &str = "optim_no_decay.mpk";
const STATE_TRAINER: &str = "trainer.json";
/// [`Learner::kind`] of this trainer, whatever its backend.
const KIND: &str = "burn";

impl<B: AutodiffBackend> Trainer<B> {
    /// Wraps `model` (already on `device`) with a fresh optimiser at step 0.
    pub fn new(model: Llama<B>, hyper: TrainHyper, device: B::Device) -> Self {
        let (decay, no_decay) = build_optimisers::<B>(&hyper);
        let no_decay_ids = vector_param_ids(&model);
        Trainer {
            model: Some(model),
            hyper,
            device,
            step: 0,
            decay,
            no_decay,
            no_decay_ids,
            poison_next: false,
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &Llama<B> {
        self.model
            .as_ref()
            .expect("model present outside train_step")
    }

    /// The hyper-parameters.
    pub fn hyper(&self) -> &TrainHyper {
        &self.hyper
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Replaces the weights with those saved at `path` (same config). The optimiser state is
    /// reset (moments from another trajectory would be meaningless); the step is kept.
    /// Use [`Learner::load_state`] for an exact resume.
    pub fn load_model(&mut self, path: &Path) -> Result<(), ModelError> {
        let model = self.model.take().expect("model present");
        let loaded = model.clone().load_file(path, &self.device);
        match loaded {
            Ok(m) => {
                self.no_decay_ids = vector_param_ids(&m);
                self.model = Some(m);
                let (decay, no_decay) = build_optimisers::<B>(&self.hyper);
                self.decay = decay;
                self.no_decay = no_decay;
                Ok(())
            }
            Err(e) => {
                self.model = Some(model);
                Err(e)
            }
        }
    }
}

impl<B: AutodiffBackend> Learner for Trainer<B> {
    /// `"burn"` on every backend: burn's records do not depend on the device they came from.
    fn kind(&self) -> &str {
        KIND
    }

    /// Number of [`Learner::train_step`] calls so far, skipped updates included (the
    /// schedule advances on every batch, as PyTorch's scheduler does when AMP skips a step).
    fn step(&self) -> u64 {
        self.step
    }

    /// One optimiser step on `batch`: forward, token-weighted mean NLL, backward, global-norm
    /// clipping, AdamW. Reads two scalars back from the device (loss and gradient norm).
    /// A non-finite loss or gradient skips the update (`finite: false`); a batch with no
    /// targets skips it too (there is nothing to learn from) and reports loss 0.
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        let lr = lr_at(&self.hyper, self.step);
        self.step += 1;
        let target_tokens = batch.num_targets();
        // Only the target positions are projected to the vocabulary; a batch without any
        // target gives `None` before any forward pass, which is the one no-target path.
        let model = self.model.as_ref().expect("model present");
        let Some(tok) = target_token_nll(model, batch, &self.device) else {
            return StepOutput::no_targets(lr);
        };
        let model = self.model.take().expect("model present");
        // The inner (non-autodiff) copy of the per-target NLLs, for the per-example losses.
        let per_target = tok.clone().inner();
        let mut loss = tok.sum().div_scalar(target_tokens as f32);
        if std::mem::take(&mut self.poison_next) {
            loss = loss.mul_scalar(f32::NAN);
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);

        let mut sumsq = SumSquares::<B> {
            grads: &grads,
            total: None,
        };
        model.visit(&mut sumsq);
        let norm = sumsq
            .total
            .unwrap_or_else(|| Tensor::<B, 1>::zeros([1], &self.device).inner())
            .sqrt();
        // The per-target NLLs ride along in the one device-to-host copy the step already makes
        // (loss and norm), so the per-example losses cost no extra synchronisation.
        let host: Vec<f32> = Tensor::cat(vec![loss.inner(), norm, per_target], 0)
            .into_data()
            .iter::<f32>()
            .collect();
        let (loss_v, norm_v) = (host[0], host[1]);
        let example_loss = batch.mean_per_example(&host[2..]);
        let finite = loss_v.is_finite() && norm_v.is_finite();
        if !finite {
            self.model = Some(model);
            return StepOutput {
                loss: loss_v,
                lr,
                target_tokens,
                finite,
                grad_norm: norm_v,
                example_loss,
            };
        }

        if let Some(coef) = clip_coef(self.hyper.grad_clip, norm_v) {
            model.visit(&mut ScaleGrads {
                grads: &mut grads,
                coef,
            });
        }

        let mut vector_grads = GradientsParams::new();
        for id in &self.no_decay_ids {
            if let Some(g) = grads.remove::<B::InnerBackend, 1>(*id) {
                vector_grads.register::<B::InnerBackend, 1>(*id, g);
            }
        }
        let model = self.decay.step(lr, model, grads);
        let model = self.no_decay.step(lr, model, vector_grads);
        self.model = Some(model);
        StepOutput {
            loss: loss_v,
            lr,
            target_tokens,
            finite,
            grad_norm: norm_v,
            example_loss,
        }
    }

    /// Mean NLL per example (over its targets) with no gradient, on the inner model.
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        self.probe_for(batch, ProbeNeed::Nll).nll
    }

    /// The greedy next token after each context ([`super::greedy_next`]), on the inner model.
    fn greedy_next(&self, contexts: &[Vec<u32>], pad: u32) -> Option<Vec<u32>> {
        Some(super::greedy_next(
            &self.model().valid(),
            contexts,
            pad,
            &self.device,
        ))
    }

    /// Probe statistics ([`probe`](super::probe)) with no gradient, on the inner model.
    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        self.probe_for(batch, ProbeNeed::Both)
    }

    /// The probe statistics `need` asks for ([`probe_for`]), with no gradient.
    fn probe_for(&self, batch: &TokenBatch, need: ProbeNeed) -> ProbeStats {
        probe_for(&self.model().valid(), batch, need, &self.device)
    }

    /// Saves the weights atomically to exactly `path` (burn named MessagePack, f32).
    fn save_weights(&self, path: &Path) -> Result<(), ModelError> {
        self.model().save_file(path)
    }

    /// Writes weights, both optimisers' moments and the step counter into `dir` (created if
    /// needed; each file is written atomically). Making the whole directory atomic (temp dir +
    /// rename) is the checkpoint module's job.
    fn save_state(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.save_weights(&dir.join(STATE_MODEL))?;
        save_record::<B, _>(self.decay.to_record(), &dir.join(STATE_OPT_DECAY))?;
        save_record::<B, _>(self.no_decay.to_record(), &dir.join(STATE_OPT_NO_DECAY))?;
        let path = dir.join(STATE_TRAINER);
        let json = serde_json::to_vec(&TrainerStateFile { step: self.step }).map_err(|source| {
            ModelError::State {
                path: path.clone(),
                source,
            }
        })?;
        write_atomic(&path, &json)
    }

    /// Restores what [`Learner::save_state`] wrote: continuing from here reproduces the
    /// run that was saved (bit-exact on CPU). The hyper-parameters are this trainer's.
    fn load_state(&mut self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(STATE_TRAINER);
        if !path.exists() {
            // The checkpoint records which learner wrote it, and the loop refuses another kind
            // before this is called; this catches checkpoints older than that record (and
            // direct callers), naming the setting rather than the missing file.
            return Err(ModelError::Record {
                path: dir.to_path_buf(),
                message: format!(
                    "no {STATE_TRAINER}: this checkpoint was not written by burn's trainer; \
                     one of the fused CPU trainer resumes with training.cpu_kernels = \"fused\""
                ),
            });
        }
        let state: TrainerStateFile = super::read_json(&path)?;
        let decay_rec = load_record::<B, _>(&dir.join(STATE_OPT_DECAY), &self.device)?;
        let no_decay_rec = load_record::<B, _>(&dir.join(STATE_OPT_NO_DECAY), &self.device)?;
        self.load_model(&dir.join(STATE_MODEL))?;
        let (decay, no_decay) = build_optimisers::<B>(&self.hyper);
        self.decay = decay.load_record(decay_rec);
        self.no_decay = no_decay.load_record(no_decay_rec);
        self.step = state.step;
        Ok(())
    }

    /// Makes the next [`Learner::train_step`]'s loss NaN (it is multiplied by NaN on the
    /// device), so the real non-finite path runs end to end. Fault injection for tests.
    fn poison_next_step(&mut self) {
        self.poison_next = true;
    }

    fn export_hf(&self, tokenizer: ExportTokenizer<'_>, dir: &Path) -> Result<bool, ModelError> {
        super::export::export_hf_dir(self.model(), tokenizer, dir).map(|()| true)
    }
}

fn build_optimisers<B: AutodiffBackend>(h: &TrainHyper) -> (Adam<B>, Adam<B>) {
    let cfg = AdamWConfig::new()
        .with_beta_1(h.beta1 as f32)
        .with_beta_2(h.beta2 as f32)
        .with_epsilon(h.eps as f32);
    (
        cfg.clone().with_weight_decay(h.weight_decay as f32).init(),
        cfg.with_weight_decay(0.0).init(),
    )
}

/// Ids of the 1-D float parameters (norm scales), which get no weight decay.
fn vector_param_ids<B: Backend>(model: &Llama<B>) -> Vec<ParamId> {
    struct Collect(HashSet<ParamId>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D == 1 {
                self.0.insert(param.id);
            }
        }
    }
    let mut c = Collect(HashSet::new());
    model.visit(&mut c);
    c.0.into_iter().collect()
}

/// Sums the squares of every parameter's gradient on the device (no host copy).
struct SumSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// Multiplies every parameter's gradient by `coef`.
struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    coef: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.coef));
        }
    }
}
