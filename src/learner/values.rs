//! The plain values a [`Learner`](super::Learner) trades with the loop: what a step reports,
//! which probe statistics are wanted and what they are, and the tokenizer view an export needs.

/// Result of one [`Learner::train_step`](super::Learner::train_step).
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// Mean NLL over all target tokens of the batch (token-weighted), before the update.
    pub loss: f32,
    /// Learning rate used (or that would have been used, if the update was skipped).
    pub lr: f64,
    /// Number of target tokens in the batch.
    pub target_tokens: usize,
    /// False when the loss or the gradient norm was not finite; the update was then skipped.
    pub finite: bool,
    /// Global L2 norm of the gradient before clipping (0 when there were no targets).
    pub grad_norm: f32,
    /// Mean NLL over each example's targets, before the update, in batch order (0 for an
    /// example without targets): what strategies that learn from training losses (ODM, ADO)
    /// read without an extra pass. Empty when the learner does not report it; the built-in
    /// learners always do, from the numbers their loss is made of.
    pub example_loss: Vec<f32>,
}

impl StepOutput {
    /// The result of a step on a batch without targets: nothing to learn from, no update.
    pub(crate) fn no_targets(lr: f64) -> StepOutput {
        StepOutput {
            loss: 0.0,
            lr,
            target_tokens: 0,
            finite: true,
            grad_norm: 0.0,
            example_loss: Vec::new(),
        }
    }
}

/// Per-example statistics of a probe batch (method.md 3.1 and 3.2).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeStats {
    /// Mean NLL over each example's target tokens (0 if it has none); perplexity = `exp(nll)`.
    pub nll: Vec<f64>,
    /// Mean over each example's real (non-padding) tokens of the final-norm hidden state.
    pub embeddings: Vec<Vec<f32>>,
}

/// Which statistics a probe pass must produce. A run's reward reads one of the two (COSSIM the
/// embeddings, DIFF the NLLs), and each one skipped saves work: without NLLs the output
/// projection is not run at all, and NLLs alone need it only at the positions that predict a
/// target, where a `[rows, vocab]` product is the largest single matrix product of a pretrained
/// model's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeNeed {
    /// Both statistics (what [`Learner::probe`](super::Learner::probe) returns).
    Both,
    /// Per-example NLLs only; `embeddings` may come back empty.
    Nll,
    /// Pooled embeddings only; `nll` may come back empty.
    Embeddings,
}

impl ProbeNeed {
    /// Whether the NLLs are asked for.
    pub fn nll(self) -> bool {
        self != ProbeNeed::Embeddings
    }
    /// Whether the embeddings are asked for.
    pub fn embeddings(self) -> bool {
        self != ProbeNeed::Nll
    }
}

/// The tokenizer files of an export: the Hugging Face tokenizer (none for the built-in byte
/// tokenizer, which has no `tokenizer.json` form) and the BOS/EOS ids for `config.json`. The
/// run's tokenizer converts into it (`From<&data::Tokenizer>`), so a learner exports without
/// depending on the data module.
#[derive(Clone, Copy, Debug)]
pub struct ExportTokenizer<'a> {
    /// Saved as `tokenizer.json` when present.
    pub hf: Option<&'a tokenizers::Tokenizer>,
    /// `bos_token_id` of `config.json`.
    pub bos: u32,
    /// `eos_token_id` of `config.json`.
    pub eos: u32,
}
