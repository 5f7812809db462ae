//! Append-only JSON-lines logs (`run.jsonl`, `mixture.jsonl`, `samples.jsonl`) and the schema of
//! `run.jsonl` and `samples.jsonl` (that of `mixture.jsonl` is `mixture::MixtureLogLine`).
//!
//! Each record is serialised to one line and flushed, so a crash loses at most the line being
//! written and readers (the `report` and `replay` commands, tests) can tail the file while the run
//! goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One line of `run.jsonl`. The trainer writes these; `report`, `experiment` and the tests read
/// the same type. Fields added after the first release default when absent, so older logs
/// still read; kinds this version does not know read as [`RunRecord::Other`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunRecord {
    /// A progress window (every `runtime.log_every` steps and at the last).
    Train {
        /// Steps completed.
        step: u64,
        /// Mean training loss over the window; `null` when every step of it was non-finite.
        loss: Option<f32>,
        /// Learning rate of the last step.
        #[serde(default)]
        lr: f64,
        /// Training tokens per second over the window.
        #[serde(default)]
        tokens_per_second: f64,
        /// Mean seconds per step over the window.
        #[serde(default)]
        step_seconds: f64,
        /// Seconds the window waited for data.
        #[serde(default)]
        data_wait_seconds: f64,
        /// Version of the mixture the last step sampled from.
        #[serde(default)]
        mixture_version: u64,
        /// That mixture.
        #[serde(default)]
        mixture: Vec<f64>,
    },
    /// Held-out loss per dataset (`null` where it was not finite).
    Eval {
        /// Steps completed.
        step: u64,
        /// (dataset, loss) pairs.
        loss: Vec<(String, Option<f64>)>,
        /// Seconds the evaluation took.
        #[serde(default)]
        seconds: f64,
    },
    /// A probe pass at an update boundary (MoS).
    Probe {
        /// Steps completed.
        step: u64,
        /// Seconds the probe pass took.
        #[serde(default)]
        seconds: f64,
    },
    /// Exact match of greedy answers at the end of a run.
    #[serde(rename = "exact_match")]
    ExactMatch {
        /// Steps completed.
        step: u64,
        /// One result per dataset with `exact_match = true`.
        results: Vec<ExactMatch>,
        /// Seconds the decoding took.
        #[serde(default)]
        seconds: f64,
    },
    /// A kind this version does not know (never written).
    #[serde(other)]
    Other,
}

/// One line of `samples.jsonl` (`runtime.trace_samples`): the (dataset, record index) pairs of
/// one step's batch and the mixture version they were drawn under. The pairs are borrowed when
/// written (the trainer writes one record per step and need not copy its batch) and owned when
/// read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord<'a> {
    /// Steps completed (this batch's step).
    pub step: u64,
    /// Version of the mixture the batch was drawn from.
    pub mixture_version: u64,
    /// (dataset index, record index) per example, in batch order.
    pub samples: std::borrow::Cow<'a, [(usize, u32)]>,
}

/// Exact-match result of one dataset (also a `run.jsonl` record of kind `exact_match`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExactMatch {
    /// The dataset.
    pub dataset: String,
    /// Answers reproduced exactly (after normalisation of case, spaces, final punctuation).
    pub correct: usize,
    /// Questions asked.
    pub total: usize,
    /// `correct / total` (0 when `total` is 0).
    pub accuracy: f64,
    /// Held-out records not used: no final answer, marker missing, or answer too long.
    pub skipped: usize,
    /// Up to three (reference, generated) pairs, for a reader of the log.
    pub examples: Vec<(String, String)>,
}

/// An error reading or writing a JSONL log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be opened or written.
    #[error("{path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not valid JSON of the expected shape.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// A JSONL file opened for appending.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlWriter {
    /// Opens (creating if needed) `path` for appending.
    pub fn append(path: &Path) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Writes one record as one line and flushes it.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let line = serde_json::to_string(record).map_err(|e| io(std::io::Error::other(e)))?;
        self.out.write_all(line.as_bytes()).map_err(io)?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }

    /// Bytes in the file so far (every write is already flushed).
    pub fn len(&self) -> Result<u64, LogError> {
        self.out
            .get_ref()
            .metadata()
            .map(|m| m.len())
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool, LogError> {
        self.len().map(|n| n == 0)
    }
}

/// Cuts `path` back to `len` bytes: on resume, the lines a killed run wrote after its last
/// checkpoint describe an abandoned trajectory. A missing file is left missing; a file shorter
/// than `len` (edited by hand) is left as it is and reported.
pub fn truncate_to(path: &Path, len: u64) -> Result<(), LogError> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let cur = file.metadata().map_err(io)?.len();
    if cur < len {
        tracing::warn!(path = %path.display(), have = cur, expected = len, "log is shorter than at the checkpoint; leaving it as it is");
        return Ok(());
    }
    if cur > len {
        tracing::info!(path = %path.display(), dropped_bytes = cur - len, "log cut back to the checkpoint");
        file.set_len(len).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok(())
}

/// Reads every line of a JSONL file as `T`.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, LogError> {
    let file = File::open(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| LogError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}
