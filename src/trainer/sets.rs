//! The fixed example sets a run scores again and again, pre-batched once at start-up: the
//! held-out sets (evaluation) and the probe sets (MoS rewards).

use std::sync::Arc;

use crate::config::{Config, PplSpan};
use crate::data::{encode_all, probe_indices, Dataset, Record, Tokenizer};
use crate::learner::TokenBatch;
use crate::seed::stream_seed;

/// One encoded sequence with the mask the current use needs.
pub(super) struct Seq {
    pub(super) tokens: Vec<u32>,
    pub(super) mask: Vec<bool>,
}

/// A padded batch of sequences.
pub(super) fn to_batch(seqs: &[Seq], pad: u32) -> TokenBatch {
    let views: Vec<(&[u32], &[bool])> = seqs
        .iter()
        .map(|s| (s.tokens.as_slice(), s.mask.as_slice()))
        .collect();
    TokenBatch::new(&views, pad)
}

/// The loss mask of a training or held-out example: its response mask, or every position but
/// the first with `training.loss_on_prompt`.
pub(super) fn training_mask(ex_mask: &[bool], loss_on_prompt: bool) -> Vec<bool> {
    if loss_on_prompt {
        (0..ex_mask.len()).map(|k| k > 0).collect()
    } else {
        ex_mask.to_vec()
    }
}

fn chunk(seqs: Vec<Seq>, size: usize, pad: u32) -> Vec<TokenBatch> {
    seqs.chunks(size.max(1)).map(|c| to_batch(c, pad)).collect()
}

/// Per-dataset fixed example sets (held-out or probe), pre-batched.
pub(super) struct FixedSets {
    /// For each dataset, its batches (possibly none).
    pub(super) batches: Vec<Vec<TokenBatch>>,
}

/// The held-out sets: the first `eval_examples` eval records of each dataset, scored with the
/// training mask so that held-out loss and training loss measure the same tokens.
pub(super) fn eval_sets(cfg: &Config, datasets: &[Arc<Dataset>], tok: &Tokenizer) -> FixedSets {
    let t = &cfg.training;
    let pad = tok.pad_id();
    let batches: Vec<Vec<TokenBatch>> = datasets
        .iter()
        .map(|d| {
            let take = d.eval.len().min(t.eval_examples);
            let seqs: Vec<Seq> =
                encode_all(tok, &d.eval[..take], cfg.model.chat_template, t.seq_len)
                    .into_iter()
                    .map(|e| Seq {
                        mask: training_mask(&e.response_mask, t.loss_on_prompt),
                        tokens: e.tokens,
                    })
                    .filter(|s| s.mask.iter().any(|&m| m))
                    .collect();
            chunk(seqs, t.batch_size.max(8), pad)
        })
        .collect();
    for (d, b) in datasets.iter().zip(&batches) {
        if b.is_empty() {
            tracing::warn!(dataset = %d.name, "no held-out examples: eval loss will not be reported for this dataset");
        }
    }
    FixedSets { batches }
}

/// The probe-set record indices of each dataset, chosen on their own RNG stream from the
/// training split. A resumed run keeps the probe sets it started with (the theta_0 perplexities
/// belong to those examples); datasets new since the checkpoint get fresh ones.
pub(super) fn probe_ids(
    cfg: &Config,
    datasets: &[Arc<Dataset>],
    resumed: Option<&[Vec<u32>]>,
) -> Vec<Vec<u32>> {
    let seed = stream_seed(cfg.runtime.seed, "probe");
    datasets
        .iter()
        .enumerate()
        .map(|(i, d)| match resumed.and_then(|r| r.get(i)) {
            Some(ids) if !ids.is_empty() => ids.clone(),
            _ => probe_indices(d.train.len(), cfg.scheduler.probe_size, seed, i),
        })
        .collect()
}

/// The probe sets of `ids`, masked by `scheduler.ppl_span`.
pub(super) fn probe_sets(
    cfg: &Config,
    datasets: &[Arc<Dataset>],
    tok: &Tokenizer,
    ids: &[Vec<u32>],
) -> FixedSets {
    let t = &cfg.training;
    let pad = tok.pad_id();
    let batches = datasets
        .iter()
        .zip(ids)
        .map(|(d, idx)| {
            let recs: Vec<Record> = idx
                .iter()
                .filter_map(|&j| d.train.get(j as usize).cloned())
                .collect();
            let seqs: Vec<Seq> = encode_all(tok, &recs, cfg.model.chat_template, t.seq_len)
                .into_iter()
                .map(|e| Seq {
                    mask: match cfg.scheduler.ppl_span {
                        PplSpan::Response => e.response_mask.clone(),
                        PplSpan::Sequence => (0..e.tokens.len()).map(|k| k > 0).collect(),
                    },
                    tokens: e.tokens,
                })
                .collect();
            // One forward pass per probe chunk: big enough to use the device well, small
            // enough that [chunk, seq, vocab] logits fit in memory.
            chunk(seqs, t.batch_size.max(16) * 2, pad)
        })
        .collect();
    FixedSets { batches }
}

/// Number of loss targets of example `i` of a batch.
pub(super) fn targets_of(b: &TokenBatch, i: usize) -> usize {
    b.target_mask[i * b.len..(i + 1) * b.len]
        .iter()
        .filter(|&&m| m > 0.0)
        .count()
}
