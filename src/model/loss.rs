//! Losses and probe statistics from one forward pass: log-softmax, gather the targets,
//! masked means per example; pooled embeddings from the same pass's hidden states.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Llama, TokenBatch};

/// Per-position negative log-likelihood, already multiplied by the target mask
/// (`[batch, len]`, zero where position `k` does not predict a target), plus the hidden states.
pub(crate) fn masked_token_nll<B: Backend>(
    model: &Llama<B>,
    batch: &TokenBatch,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 3>) {
    let hidden = model.forward_hidden(batch.tokens_tensor::<B>(device));
    let logits = model.logits(hidden.clone());
    let (ids, mask) = batch.shifted_targets::<B>(device);
    let logp = log_softmax(logits, 2).gather(2, ids);
    let [b, t, _] = logp.dims();
    (logp.reshape([b, t]).neg() * mask, hidden)
}

/// `1 / n` for each count (0 where `n == 0`), as a `[len]` tensor.
fn inverse_counts<B: Backend>(counts: &[usize], device: &B::Device) -> Tensor<B, 1> {
    let inv: Vec<f32> = counts
        .iter()
        .map(|&n| if n == 0 { 0.0 } else { 1.0 / n as f32 })
        .collect();
    let n = inv.len();
    Tensor::from_data(TensorData::new(inv, [n]), device)
}

/// Mean NLL over each example's target tokens (`[batch]`; 0 for an example without targets)
/// and the final hidden states `[batch, len, d_model]` of the same forward pass.
pub fn per_example_nll<B: Backend>(
    model: &Llama<B>,
    batch: &TokenBatch,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 3>) {
    let (tok, hidden) = masked_token_nll(model, batch, device);
    let inv = inverse_counts::<B>(&batch.targets_per_example(), device);
    (tok.sum_dim(1).reshape([batch.batch]) * inv, hidden)
}

/// Per-example statistics of a probe batch (method.md 3.1 and 3.2).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeStats {
    /// Mean NLL over each example's target tokens (0 if it has none); perplexity = `exp(nll)`.
    pub nll: Vec<f64>,
    /// Mean over each example's real (non-padding) tokens of the final-norm hidden state.
    pub embeddings: Vec<Vec<f32>>,
}

/// Probe statistics from one forward pass without gradients.
///
/// Call it on a non-autodiff model (`trainer_model.valid()`), so no graph is recorded.
/// One device-to-host copy: `[batch, 1 + d_model]` floats.
pub fn probe<B: Backend>(model: &Llama<B>, batch: &TokenBatch, device: &B::Device) -> ProbeStats {
    let (b, t) = (batch.batch, batch.len);
    let (nll, hidden) = per_example_nll(model, batch, device);
    let d = hidden.dims()[2];
    let mut real = vec![0.0f32; b * t];
    for (i, &n) in batch.lengths.iter().enumerate() {
        real[i * t..i * t + n.min(t)].fill(1.0);
    }
    let real = Tensor::<B, 2>::from_data(TensorData::new(real, [b, t]), device);
    let inv_len = inverse_counts::<B>(&batch.lengths, device);
    let pooled = (hidden * real.unsqueeze_dim::<3>(2))
        .sum_dim(1)
        .reshape([b, d])
        * inv_len.unsqueeze_dim::<2>(1);
    let both = Tensor::cat(vec![nll.unsqueeze_dim::<2>(1), pooled], 1);
    let flat: Vec<f32> = both.into_data().iter::<f32>().collect();
    let mut stats = ProbeStats {
        nll: Vec::with_capacity(b),
        embeddings: Vec::with_capacity(b),
    };
    for row in flat.chunks(d + 1) {
        stats.nll.push(f64::from(row[0]));
        stats.embeddings.push(row[1..].to_vec());
    }
    stats
}
