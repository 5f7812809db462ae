//! Datasets in memory: loading with the train/eval split, the deterministic per-epoch order, the
//! `n`-th example of the stream, and probe-set selection.
//!
//! Three seeded streams live here and never share an RNG: the hash split (xxh3 of each record's
//! bytes), the training order (ChaCha8 per `(seed, dataset, epoch)`), and the probe sets (ChaCha8
//! under a different domain constant). So turning probes on or off never changes which training
//! examples are drawn, and a loader restarted at `start_at = n` replays the same stream exactly.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::encode::encode_record;
use super::format::read_records;
use super::{DataError, Record, Tokenizer};
use crate::config::{ChatTemplate, DataConfig, DatasetConfig};

/// Domain constants that keep the derived RNG streams apart (arbitrary, fixed forever: changing
/// one changes every run's data order).
const DOMAIN_TRAIN_ORDER: u64 = 0x6d6f_735f_6461_7461; // "mos_data"
const DOMAIN_PROBE: u64 = 0x6d6f_735f_7072_6f62; // "mos_prob"

/// One dataset ("skill") loaded into memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The configured name (the `dataset` metrics label).
    pub name: String,
    /// The training file it was read from.
    pub path: PathBuf,
    /// Training records, in file order; never empty for a dataset built by [`load_dataset`].
    pub train: Vec<Record>,
    /// Held-out records (from `eval_path`, or the hash split); may be empty.
    pub eval: Vec<Record>,
    /// Malformed records skipped while reading (training and eval files together).
    pub bad_records: u64,
}

/// One tokenized training example, as a loader delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// Index of the record in the dataset's train split.
    pub index: u32,
    /// Position in this dataset's stream (`n`, counted from 0 over the whole run).
    pub seq: u64,
    /// Token ids, BOS first, at most `seq_len` of them.
    pub tokens: Vec<u32>,
    /// Training targets; see [`Encoded::response_mask`](super::Encoded::response_mask).
    pub response_mask: Vec<bool>,
}

/// Loads one dataset and splits it.
///
/// With `cfg.eval_path`, that file (same format) is the eval split and every record of `cfg.path`
/// trains. Otherwise a record goes to eval iff [`split_fraction`] of
/// `xxh3_64_with_seed(record bytes, seed)` is below `cfg.eval_fraction` (or
/// `data.eval_fraction`): the split depends only on the record's own bytes (the trimmed JSONL line,
/// or the trimmed text record), so adding records never moves others and exact duplicates land on
/// the same side. Fails, naming the file, when a file is missing, not a file, unreadable, has no
/// valid record, or the split leaves no training record.
pub fn load_dataset(
    cfg: &DatasetConfig,
    data: &DataConfig,
    seed: u64,
) -> Result<Dataset, DataError> {
    let separator = cfg.separator.as_deref();
    let read = |path: &std::path::Path, what| {
        read_records(
            path,
            what,
            cfg.format,
            separator,
            data.max_record_bytes,
            &cfg.name,
            seed,
        )
    };
    let main = read(&cfg.path, "dataset file")?;
    let mut bad_records = main.bad;
    let (train, eval) = match cfg.eval_path.as_deref() {
        Some(eval_path) => {
            let eval = read(eval_path, "eval file")?;
            bad_records += eval.bad;
            let train = main.records.into_iter().map(|r| r.record).collect();
            (train, eval.records.into_iter().map(|r| r.record).collect())
        }
        None => {
            let fraction = cfg.eval_fraction.unwrap_or(data.eval_fraction);
            let mut train = Vec::new();
            let mut eval = Vec::new();
            for r in main.records {
                if split_fraction(r.key_hash) < fraction {
                    eval.push(r.record);
                } else {
                    train.push(r.record);
                }
            }
            (train, eval)
        }
    };
    if train.is_empty() {
        return Err(DataError::EmptyTrain {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            eval: eval.len(),
        });
    }
    if u32::try_from(train.len()).is_err() {
        return Err(DataError::TooManyRecords {
            path: cfg.path.clone(),
            count: train.len(),
        });
    }
    tracing::info!(
        dataset = %cfg.name,
        train = train.len(),
        eval = eval.len(),
        bad = bad_records,
        "loaded {}",
        cfg.path.display()
    );
    Ok(Dataset {
        name: cfg.name.clone(),
        path: cfg.path.clone(),
        train,
        eval,
        bad_records,
    })
}

/// Maps a 64-bit hash to `[0, 1)` (its top 53 bits, so every value is an exact `f64`).
pub fn split_fraction(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// A ChaCha8 seed that encodes the whole tuple, so distinct tuples can never collide.
fn derive_seed(domain: u64, seed: u64, dataset: u64, epoch: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(8).zip([domain, seed, dataset, epoch]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// The order of the train split in one epoch: a permutation of `0..len` drawn with ChaCha8 seeded
/// from `(seed, dataset, epoch)`. The `n`-th example a dataset yields is
/// `train[epoch_order(seed, ds, n / len, len)[n % len]]`.
pub fn epoch_order(seed: u64, dataset: usize, epoch: u64, len: usize) -> Vec<u32> {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let mut rng =
        ChaCha8Rng::from_seed(derive_seed(DOMAIN_TRAIN_ORDER, seed, dataset as u64, epoch));
    let mut order: Vec<u32> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// The probe set of a dataset: `min(probe_size, train_len)` distinct train indices, sorted, drawn
/// with ChaCha8 under its own domain (never the training-order stream). Fixed for the run.
pub fn probe_indices(train_len: usize, probe_size: usize, seed: u64, dataset: usize) -> Vec<u32> {
    let train_len = train_len.min(u32::MAX as usize);
    let mut rng = ChaCha8Rng::from_seed(derive_seed(DOMAIN_PROBE, seed, dataset as u64, 0));
    let amount = probe_size.min(train_len);
    let mut picked: Vec<u32> = rand::seq::index::sample(&mut rng, train_len, amount)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    picked.sort_unstable();
    picked
}

/// The `n`-th example of dataset `ds_index` (`n` from 0 over the whole run), tokenized.
///
/// Costs one [`epoch_order`] (O(len)) per call; the loader caches the epoch's order instead.
/// For a dataset with an empty train split (impossible through [`load_dataset`]) it returns a
/// BOS-only example with no target rather than panicking.
pub fn example_at(
    ds: &Dataset,
    ds_index: usize,
    tok: &Tokenizer,
    template: ChatTemplate,
    seq_len: usize,
    seed: u64,
    n: u64,
) -> Example {
    ExampleStream::new(ds_index, seed).example(ds, tok, template, seq_len, n)
}

/// The example stream of one dataset with the current epoch's order cached; shared by
/// [`example_at`] and the loader thread so both produce exactly the same examples.
pub(crate) struct ExampleStream {
    ds_index: usize,
    seed: u64,
    cached: Option<(u64, Vec<u32>)>,
}

impl ExampleStream {
    pub(crate) fn new(ds_index: usize, seed: u64) -> Self {
        Self {
            ds_index,
            seed,
            cached: None,
        }
    }

    /// Which record the `n`-th example is, or `None` for an empty train split.
    pub(crate) fn index_of(&mut self, len: usize, n: u64) -> Option<u32> {
        if len == 0 {
            return None;
        }
        let len64 = len as u64;
        let (epoch, pos) = (n / len64, (n % len64) as usize);
        let stale = !matches!(&self.cached, Some((e, o)) if *e == epoch && o.len() == len);
        if stale {
            self.cached = Some((epoch, epoch_order(self.seed, self.ds_index, epoch, len)));
        }
        self.cached
            .as_ref()
            .and_then(|(_, order)| order.get(pos).copied())
    }

    pub(crate) fn example(
        &mut self,
        ds: &Dataset,
        tok: &Tokenizer,
        template: ChatTemplate,
        seq_len: usize,
        n: u64,
    ) -> Example {
        let found = self
            .index_of(ds.train.len(), n)
            .and_then(|i| ds.train.get(i as usize).map(|r| (i, r)));
        let (index, encoded) = match found {
            Some((i, record)) => (i, encode_record(tok, record, template, seq_len)),
            None => (
                0,
                super::Encoded {
                    tokens: vec![tok.bos_id()],
                    response_mask: vec![false],
                },
            ),
        };
        Example {
            dataset: self.ds_index,
            index,
            seq: n,
            tokens: encoded.tokens,
            response_mask: encoded.response_mask,
        }
    }
}
