//! Greedy decoding, one token at a time: used by the end-of-run exact-match evaluation.
//!
//! There is no key/value cache: each call runs the whole contexts again. Answers scored this way
//! are short (`training.max_answer_tokens`), so the quadratic cost stays a few forward passes of
//! an eval batch, and the model code keeps a single forward path.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::Llama;

/// The most likely next token after each context (`contexts` non-empty, each at most
/// `max_seq_len` tokens and non-empty). Contexts are right-padded with `pad` into one batch;
/// attention is causal, so a context's last position never sees the padding after it.
pub fn greedy_next<B: Backend>(
    model: &Llama<B>,
    contexts: &[Vec<u32>],
    pad: u32,
    device: &B::Device,
) -> Vec<u32> {
    let b = contexts.len();
    if b == 0 {
        return Vec::new();
    }
    let t = contexts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut last = Vec::with_capacity(b);
    for (i, c) in contexts.iter().enumerate() {
        ids.extend(c.iter().map(|&x| i64::from(x)));
        ids.extend(std::iter::repeat_n(i64::from(pad), t - c.len()));
        last.push((i * t + c.len().max(1) - 1) as i64);
    }
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let hidden = model.forward_hidden(tokens);
    let d = hidden.dims()[2];
    // Only the last real position of each row goes through the output head.
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), device);
    let picked = hidden
        .reshape([b * t, d])
        .select(0, rows)
        .reshape([b, 1, d]);
    let next = model.logits(picked).argmax(2).reshape([b]);
    next.into_data()
        .convert::<i64>()
        .iter::<i64>()
        .map(|x| x as u32)
        .collect()
}
