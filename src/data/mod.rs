//! Data: record formats, tokenizers, train/eval splits, the deterministic example stream and
//! probe sets. The loader actor that prefetches from the stream is in
//! [`actors::loader`](crate::actors::loader).
//!
//! What this module owns:
//! - parsing dataset files ([`format`]): JSONL (`text`, `prompt`/`response`, `messages`) and plain
//!   text with a separator; malformed records are skipped, counted, and logged with `file:line`;
//! - the tokenizers ([`Tokenizer`]): the built-in byte-level one and Hugging Face `tokenizer.json`;
//! - rendering records through a [`ChatTemplate`](crate::config::ChatTemplate) into token ids
//!   with a response mask ([`encode_record`]);
//! - the seeded hash split into train/eval and the per-epoch shuffle ([`load_dataset`],
//!   [`epoch_order`]); the `n`-th example of a dataset is a pure function of
//!   `(seed, dataset index, n)` ([`example_at`]), which is what makes resume exact;
//! - the probe-set choice ([`probe_indices`]) on its own RNG stream, distinct from training data;
//! - `ExampleStream`: a dataset's examples in stream order, which a loader's thread encodes.
//!
//! What it must never do: touch tensors or the device (that is the trainer's), block a tokio
//! worker (all blocking sends happen on the loader's own thread), install a tracing subscriber or
//! metrics recorder, or panic on anything read from a dataset file.

mod answers;
mod chat;
mod dataset;
mod encode;
mod format;
mod tokenizer;

use std::path::PathBuf;

pub use answers::{answer_items, is_exact_match, normalize_answer, AnswerItem, AnswerSkips};
pub(crate) use dataset::ExampleStream;
pub use dataset::{
    epoch_order, example_at, load_dataset, probe_indices, split_fraction, Dataset, Example,
};
pub use encode::{encode_all, encode_record, Encoded};
pub use tokenizer::Tokenizer;
pub(crate) use tokenizer::IM_END;

/// One parsed training record, before rendering and tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Plain text (`{"text": ...}` or one record of a text file); every token is a target.
    Text(String),
    /// An instruction pair; only the response is a training target.
    PromptResponse {
        /// The instruction / user turn.
        prompt: String,
        /// The answer the model learns to produce.
        response: String,
    },
    /// A conversation; assistant turns are the training targets. Always has at least one
    /// assistant message (a chat without one is rejected as malformed while loading, because it
    /// would yield no training target).
    Chat(Vec<ChatMessage>),
}

/// One message of a [`Record::Chat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or any other role name (rendered as given).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// True for the role whose content is a training target (`assistant`, any ASCII case).
    pub fn is_assistant(&self) -> bool {
        self.role.eq_ignore_ascii_case("assistant")
    }
}

/// Errors of the data pipeline. Every variant that concerns a file names its path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset (or tokenizer) file does not exist.
    #[error("{what} {path} does not exist")]
    NotFound {
        /// What the file is (`dataset file`, `eval file`, `tokenizer file`).
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// A directory (or other non-file) was given where a file is expected.
    #[error("{what} {path} is not a regular file (a directory?)")]
    NotAFile {
        /// What the file is.
        what: &'static str,
        /// The offending path.
        path: PathBuf,
    },
    /// Reading the file failed (permissions, I/O error).
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The unreadable path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but yielded no valid record.
    #[error("{what} {path} contains no valid record ({bad} malformed record(s) skipped)")]
    NoValidRecords {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Malformed records skipped in it.
        bad: u64,
    },
    /// The hash split left no training record (too few records for the eval fraction).
    #[error(
        "dataset `{name}` ({path}): no training record left after the eval split \
         ({eval} record(s) went to eval); add records or lower eval_fraction"
    )]
    EmptyTrain {
        /// Dataset name.
        name: String,
        /// The dataset file.
        path: PathBuf,
        /// Records that went to the eval split.
        eval: usize,
    },
    /// More records than a `u32` index can address.
    #[error("dataset file {path} has {count} records; at most {max} are supported", max = u32::MAX)]
    TooManyRecords {
        /// The dataset file.
        path: PathBuf,
        /// Records read.
        count: usize,
    },
    /// The tokenizer could not be built (bad `tokenizer.json`, missing special tokens).
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The `tokenizer.json` (or `<config>` for configuration problems).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
pub(crate) mod tests;
