//! Padded token batches, as the loop builds them on the host. Their upload to a device is the
//! model's business (`model::batch`), so this file stays plain Rust.

/// A right-padded batch of token sequences with loss-target and real-token information.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    /// Number of sequences.
    pub batch: usize,
    /// Padded length (the longest sequence, at least 1).
    pub len: usize,
    /// Token ids `[batch * len]`, row-major, padded with the pad id.
    pub tokens: Vec<i64>,
    /// `[batch * len]`; 1.0 at position `k` means token `k` is a loss target, predicted from
    /// position `k - 1`. Always 0 at `k = 0` and on padding.
    pub target_mask: Vec<f32>,
    /// Real (non-padding) length of each sequence; positions `< lengths[i]` are real tokens
    /// (the mask for pooled embeddings, which differs from `target_mask`).
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Pads `seqs` to the longest one (`pad_id` must be a valid token id, `< vocab_size`). Each entry is `(tokens, is_target)`, where
    /// `is_target[k]` says whether token `k` should be predicted (e.g. response tokens);
    /// the flag of the first token is ignored (nothing precedes it).
    ///
    /// # Panics
    /// If `seqs` is empty or a flag slice's length differs from its token slice's.
    pub fn new(seqs: &[(&[u32], &[bool])], pad_id: u32) -> TokenBatch {
        assert!(
            !seqs.is_empty(),
            "TokenBatch::new needs at least one sequence"
        );
        let batch = seqs.len();
        let len = seqs.iter().map(|(t, _)| t.len()).max().unwrap_or(0).max(1);
        let mut tokens = vec![i64::from(pad_id); batch * len];
        let mut target_mask = vec![0.0f32; batch * len];
        let mut lengths = Vec::with_capacity(batch);
        for (i, (toks, flags)) in seqs.iter().enumerate() {
            assert_eq!(
                toks.len(),
                flags.len(),
                "sequence {i}: {} tokens but {} target flags",
                toks.len(),
                flags.len()
            );
            let row = i * len;
            for (k, (&tok, &flag)) in toks.iter().zip(flags.iter()).enumerate() {
                tokens[row + k] = i64::from(tok);
                if k > 0 && flag {
                    target_mask[row + k] = 1.0;
                }
            }
            lengths.push(toks.len());
        }
        TokenBatch {
            batch,
            len,
            tokens,
            target_mask,
            lengths,
        }
    }

    /// Pads `seqs` with every token after the first as a loss target (plain language modelling).
    pub fn all_targets(seqs: &[&[u32]], pad_id: u32) -> TokenBatch {
        let flags: Vec<Vec<bool>> = seqs.iter().map(|s| vec![true; s.len()]).collect();
        let pairs: Vec<(&[u32], &[bool])> = seqs
            .iter()
            .zip(flags.iter())
            .map(|(s, f)| (*s, f.as_slice()))
            .collect();
        TokenBatch::new(&pairs, pad_id)
    }

    /// Total number of loss targets in the batch.
    pub fn num_targets(&self) -> usize {
        self.target_mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// Number of loss targets of each example.
    pub fn targets_per_example(&self) -> Vec<usize> {
        self.target_mask
            .chunks(self.len)
            .map(|row| row.iter().filter(|&&m| m > 0.0).count())
            .collect()
    }

    /// The mean over each example's targets of per-target values (one per position that
    /// predicts a target, in position order: what the trainers' target-only losses produce),
    /// 0 for an example without targets. Positions are in order and every example's targets
    /// lie in its own row, so example `i` owns the next `targets_per_example()[i]` values.
    pub fn mean_per_example(&self, per_target: &[f32]) -> Vec<f32> {
        let mut rest = per_target;
        self.targets_per_example()
            .into_iter()
            .map(|n| {
                let (mine, tail) = rest.split_at(n.min(rest.len()));
                rest = tail;
                if mine.is_empty() {
                    0.0
                } else {
                    (mine.iter().map(|&x| f64::from(x)).sum::<f64>() / mine.len() as f64) as f32
                }
            })
            .collect()
    }

    /// Targets aligned with the prediction positions, on the host: position `k` predicts token
    /// `k + 1`. Returns the target ids and their weights, both `[batch * len]` (the last position
    /// never predicts). Non-targets keep id 0, so a gather by these ids is always in range.
    pub(crate) fn shifted_target_ids(&self) -> (Vec<i64>, Vec<f32>) {
        let (b, t) = (self.batch, self.len);
        let mut ids = vec![0i64; b * t];
        let mut mask = vec![0.0f32; b * t];
        for i in 0..b {
            let row = i * t;
            for k in 0..t.saturating_sub(1) {
                let m = self.target_mask[row + k + 1];
                if m > 0.0 {
                    ids[row + k] = self.tokens[row + k + 1];
                    mask[row + k] = m;
                }
            }
        }
        (ids, mask)
    }
}
