//! Evaluation: held-out loss per dataset (token-weighted, the same quantity as the training
//! loss) and exact match of greedy answers on held-out records.

use std::sync::Arc;
use std::time::Instant;

use super::sets::{targets_of, FixedSets};
use super::Learner;
use crate::config::Config;
use crate::data::{Dataset, Tokenizer};
use crate::runlog::ExactMatch;
use crate::telemetry;

/// Held-out loss of every dataset that has held-out examples, and the seconds it took.
pub(super) fn evaluate<L: Learner>(
    trainer: &L,
    sets: &FixedSets,
    names: &[String],
) -> (Vec<(String, f64)>, f64) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for (name, batches) in names.iter().zip(&sets.batches) {
        if batches.is_empty() {
            continue;
        }
        // Token-weighted mean: the same quantity as the training loss.
        let (mut sum, mut count) = (0f64, 0f64);
        for b in batches {
            let per_ex = trainer.eval_nll(b);
            for (i, l) in per_ex.iter().enumerate() {
                let t = targets_of(b, i) as f64;
                sum += l * t;
                count += t;
            }
        }
        let loss = sum / count.max(1.0);
        metrics::gauge!(telemetry::EVAL_LOSS, "dataset" => name.clone()).set(loss);
        out.push((name.clone(), loss));
    }
    let seconds = t0.elapsed().as_secs_f64();
    metrics::histogram!(telemetry::EVAL_DURATION).record(seconds);
    (out, seconds)
}

/// Exact match of greedy answers on the held-out records of every dataset with
/// `exact_match = true`: at most `training.exact_match_examples` questions each, all of a
/// dataset's questions decoded together, one token per forward pass, each stopping at the end
/// of its turn (EOS, `<|im_end|>`) or two tokens past the reference answer's length.
pub(super) fn exact_match<L: Learner>(
    trainer: &L,
    datasets: &[Arc<Dataset>],
    tok: &Tokenizer,
    cfg: &Config,
) -> Vec<ExactMatch> {
    let t = &cfg.training;
    // By name: the trainer's dataset list and the config's are the same, but a name lookup does
    // not depend on that.
    let wanted: Vec<(usize, &crate::config::DatasetConfig)> = datasets
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            cfg.datasets
                .iter()
                .find(|c| c.name == d.name && c.exact_match)
                .map(|c| (i, c))
        })
        .collect();
    if wanted.is_empty() || t.exact_match_examples == 0 {
        return Vec::new();
    }
    let pad = tok.pad_id();
    let stops: Vec<u32> = std::iter::once(tok.eos_id())
        .chain(tok.special(crate::data::IM_END))
        .collect();
    let mut out = Vec::new();
    for (i, dcfg) in wanted {
        let d = &datasets[i];
        let (items, skips) = crate::data::answer_items(
            tok,
            &d.eval,
            cfg.model.chat_template,
            t.seq_len,
            dcfg.answer_marker.as_deref(),
            t.max_answer_tokens,
            t.exact_match_examples,
        );
        let skipped = skips.no_answer + skips.no_marker + skips.too_long;
        if items.is_empty() {
            tracing::warn!(dataset = %d.name, ?skips, "exact match: no usable held-out answer");
            continue;
        }
        let mut contexts: Vec<Vec<u32>> = items.iter().map(|it| it.context.clone()).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); items.len()];
        let mut active: Vec<usize> = (0..items.len()).collect();
        while !active.is_empty() {
            let batch: Vec<Vec<u32>> = active.iter().map(|&k| contexts[k].clone()).collect();
            let Some(next) = trainer.greedy_next(&batch, pad) else {
                tracing::warn!("this learner cannot generate: exact match skipped");
                return Vec::new();
            };
            let mut still = Vec::with_capacity(active.len());
            for (&k, &id) in active.iter().zip(&next) {
                if stops.contains(&id) {
                    continue;
                }
                generated[k].push(id);
                contexts[k].push(id);
                // A context that reached seq_len, or an answer already longer than the
                // reference allows, ends here.
                if generated[k].len() < items[k].answer_tokens + 2 && contexts[k].len() < t.seq_len
                {
                    still.push(k);
                }
            }
            active = still;
        }
        let mut correct = 0;
        let mut examples = Vec::new();
        for (it, ids) in items.iter().zip(&generated) {
            let text = tok.decode(ids);
            if crate::data::is_exact_match(&text, &it.answer) {
                correct += 1;
            }
            if examples.len() < 3 {
                examples.push((it.answer.clone(), text.trim().to_string()));
            }
        }
        let accuracy = correct as f64 / items.len() as f64;
        metrics::gauge!(telemetry::EVAL_EXACT_MATCH, "dataset" => d.name.clone()).set(accuracy);
        tracing::info!(
            dataset = %d.name,
            "exact match {correct}/{} = {accuracy:.3} ({skipped} held-out records not usable)",
            items.len()
        );
        out.push(ExactMatch {
            dataset: d.name.clone(),
            correct,
            total: items.len(),
            accuracy,
            skipped,
            examples,
        });
    }
    out
}
