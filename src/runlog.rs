//! Append-only JSON-lines logs (`run.jsonl`, `mixture.jsonl`).
//!
//! Each record is serialised to one line and flushed, so a crash loses at most the line being
//! written and readers (the `report` and `replay` commands, tests) can tail the file while the run
//! goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

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
