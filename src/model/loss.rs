//! Losses and probe statistics from one forward pass: log-softmax, gather the targets,
//! masked means per example; pooled embeddings from the same pass's hidden states.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::batch::BatchTensors;
use super::{Llama, ProbeNeed, ProbeStats, TokenBatch};

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

/// The NLL of every position that predicts a target, times its weight (`[rows]`, positions in
/// order), projecting only those positions to the vocabulary: the same numbers as the nonzero
/// entries of [`masked_token_nll`], without the logits of prompt and padding positions, whose
/// `[rows, vocab]` product (and its two backward products) is the largest of a pretrained
/// model's step. `None` when the batch has no target.
pub(crate) fn target_token_nll<B: Backend>(
    model: &Llama<B>,
    batch: &TokenBatch,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    let (ids, weights) = batch.shifted_target_ids();
    let rows = target_rows(&weights);
    if rows.is_empty() {
        return None;
    }
    let hidden = model.forward_hidden(batch.tokens_tensor::<B>(device));
    let w: Vec<f32> = rows.iter().map(|&k| weights[k]).collect();
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [rows.len()]), device);
    Some(nll_at_rows(model, hidden, &rows, &ids, device) * w)
}

/// The flat positions (`example * len + k`) whose weight says they predict a target.
fn target_rows(weights: &[f32]) -> Vec<usize> {
    (0..weights.len()).filter(|&k| weights[k] > 0.0).collect()
}

/// The unweighted NLL (`[rows.len()]`) of the flat positions `rows` of `hidden`
/// (`[batch, len, d_model]`) against the shifted target ids `ids`, gathering those positions
/// into one `[rows, d_model]` matrix before the output projection. `rows` must not be empty.
fn nll_at_rows<B: Backend>(
    model: &Llama<B>,
    hidden: Tensor<B, 3>,
    rows: &[usize],
    ids: &[i64],
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, t, d] = hidden.dims();
    let m = rows.len();
    let index: Vec<i64> = rows.iter().map(|&k| k as i64).collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [m]), device);
    let picked = hidden.reshape([b * t, d]).select(0, index);
    let logits = model.logits(picked.reshape([1, m, d]));
    let targets: Vec<i64> = rows.iter().map(|&k| ids[k]).collect();
    let targets = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [1, m, 1]), device);
    log_softmax(logits, 2).gather(2, targets).reshape([m]).neg()
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

/// Probe statistics from one forward pass without gradients: both of them
/// ([`probe_for`] with [`ProbeNeed::Both`]).
///
/// Call it on a non-autodiff model (`trainer_model.valid()`), so no graph is recorded.
pub fn probe<B: Backend>(model: &Llama<B>, batch: &TokenBatch, device: &B::Device) -> ProbeStats {
    probe_for(model, batch, ProbeNeed::Both, device)
}

/// The statistics `need` asks for, from one forward pass without gradients.
///
/// The output projection runs only on the positions that predict a target (gathered into one
/// `[rows, d_model]` matrix), and not at all without NLLs; the result is the same as projecting
/// every position and masking, as [`per_example_nll`] does. One device-to-host copy: the NLL of
/// every target position and the `[batch, d_model]` pooled embeddings, concatenated.
pub fn probe_for<B: Backend>(
    model: &Llama<B>,
    batch: &TokenBatch,
    need: ProbeNeed,
    device: &B::Device,
) -> ProbeStats {
    let (b, t) = (batch.batch, batch.len);
    let hidden = model.forward_hidden(batch.tokens_tensor::<B>(device));
    let d = hidden.dims()[2];
    let (ids, weights) = batch.shifted_target_ids();
    let rows = if need.nll() {
        target_rows(&weights)
    } else {
        Vec::new()
    };
    let mut parts = Vec::with_capacity(2);
    if !rows.is_empty() {
        parts.push(nll_at_rows(model, hidden.clone(), &rows, &ids, device));
    }
    if need.embeddings() {
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
        parts.push(pooled.reshape([b * d]));
    }
    let flat: Vec<f32> = if parts.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(parts, 0).into_data().iter::<f32>().collect()
    };
    let (token_nll, pooled) = flat.split_at(rows.len());
    let nll = if need.nll() {
        // Per-example means on the host, summed in f64 in position order.
        let mut sum = vec![0.0f64; b];
        for (&k, &x) in rows.iter().zip(token_nll) {
            sum[k / t] += f64::from(x * weights[k]);
        }
        sum.iter()
            .zip(batch.targets_per_example())
            .map(|(s, n)| if n == 0 { 0.0 } else { s / n as f64 })
            .collect()
    } else {
        Vec::new()
    };
    ProbeStats {
        nll,
        embeddings: pooled.chunks(d.max(1)).map(<[f32]>::to_vec).collect(),
    }
}
