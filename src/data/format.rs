//! Dataset file formats: JSONL (shape detected per line) and separated plain text.
//!
//! Files are read as bytes through a line reader that never buffers more than
//! `max_record_bytes + 1` bytes of one line, so a huge or binary line cannot exhaust memory and
//! invalid UTF-8 is a counted malformed record, never a panic. This module never tokenizes and
//! never decides the train/eval split; it only hands back parsed records with the hash of their
//! bytes (the split key).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{ChatMessage, DataError, Record};
use crate::config::DatasetFormat;

/// Warn lines per file before only the summary is logged: a corrupt file must not flood the log.
const MAX_WARNINGS_PER_FILE: u64 = 20;

/// A record as read from a file, with where it came from and its split key.
#[derive(Debug, Clone)]
pub(crate) struct ParsedRecord {
    /// The parsed record.
    pub(crate) record: Record,
    /// `xxh3_64_with_seed` of the record's bytes (the JSONL line or the trimmed text record),
    /// with the split seed. Depends only on the record itself, so adding records never moves
    /// another one between train and eval.
    pub(crate) key_hash: u64,
}

/// The outcome of reading one file.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    pub(crate) records: Vec<ParsedRecord>,
    /// Malformed records skipped.
    pub(crate) bad: u64,
}

/// Which file a message is about, for error texts (`dataset file`, `eval file`).
pub(crate) type FileRole = &'static str;

/// Opens `path` after checking it is an existing regular file, mapping each failure to a typed
/// error that names the path.
fn open_checked(path: &Path, what: FileRole) -> Result<File, DataError> {
    check_regular_file(path, what)?;
    File::open(path).map_err(|source| DataError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `path` exists and is a regular file (not a directory), with an error naming it.
pub(crate) fn check_regular_file(path: &Path, what: FileRole) -> Result<(), DataError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::NotFound {
                what,
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DataError::Io {
                what,
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(DataError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Reads and parses every record of `path`. Malformed records are skipped, counted, logged
/// (`file:line`, capped per file) and added to the `mos_loader_bad_records_total{dataset}`
/// counter. A file with no valid record is an error naming it.
pub(crate) fn read_records(
    path: &Path,
    what: FileRole,
    format: DatasetFormat,
    separator: Option<&str>,
    max_record_bytes: usize,
    dataset: &str,
    split_seed: u64,
) -> Result<ParsedFile, DataError> {
    let file = open_checked(path, what)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut log = BadLog::new(path, dataset);
    let io_err = |source| DataError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let records = match format {
        DatasetFormat::Jsonl => {
            read_jsonl(&mut reader, max_record_bytes, split_seed, &mut log).map_err(io_err)?
        }
        DatasetFormat::Text => read_text(
            &mut reader,
            separator,
            max_record_bytes,
            split_seed,
            &mut log,
        )
        .map_err(io_err)?,
    };
    let bad = log.finish();
    if records.is_empty() {
        return Err(DataError::NoValidRecords {
            what,
            path: path.to_path_buf(),
            bad,
        });
    }
    Ok(ParsedFile { records, bad })
}

fn read_jsonl(
    reader: &mut impl BufRead,
    max_record_bytes: usize,
    split_seed: u64,
    log: &mut BadLog,
) -> std::io::Result<Vec<ParsedRecord>> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    while let Some(len) = next_line(reader, max_record_bytes, &mut buf)? {
        line_no += 1;
        if len > max_record_bytes {
            log.bad(
                line_no,
                &format!("line of {len} bytes exceeds max_record_bytes = {max_record_bytes}"),
            );
            continue;
        }
        let mut line: &[u8] = &buf;
        if line_no == 1 {
            // A UTF-8 byte-order mark is harmless noise some editors add; not a malformed record.
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            // Blank lines (often a trailing one) are not records at all.
            continue;
        }
        match parse_jsonl_line(line) {
            Ok(record) => records.push(ParsedRecord {
                record,
                key_hash: xxh3_64_with_seed(line, split_seed),
            }),
            Err(reason) => log.bad(line_no, &reason),
        }
    }
    Ok(records)
}

/// Parses one JSONL line, detecting its shape: `messages` wins over `prompt`/`response`, which
/// wins over `text`; other keys are ignored. The error is a human-readable reason.
pub(crate) fn parse_jsonl_line(line: &[u8]) -> Result<Record, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".to_string());
    };
    if let Some(messages) = map.get("messages") {
        let Value::Array(items) = messages else {
            return Err("`messages` is not an array".to_string());
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let role = item.get("role").and_then(Value::as_str);
            let content = item.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(role), Some(content)) if !role.trim().is_empty() => out.push(ChatMessage {
                    role: role.to_string(),
                    content: content.to_string(),
                }),
                _ => {
                    return Err(format!(
                        "messages[{i}] needs a non-empty string `role` and a string `content`"
                    ))
                }
            }
        }
        if !out.iter().any(ChatMessage::is_assistant) {
            // Without an assistant turn the example has no training target at all.
            return Err("chat has no assistant message (nothing to train on)".to_string());
        }
        return Ok(Record::Chat(out));
    }
    if map.contains_key("prompt") || map.contains_key("response") {
        let prompt = map.get("prompt").and_then(Value::as_str);
        let response = map.get("response").and_then(Value::as_str);
        return match (prompt, response) {
            (Some(prompt), Some(response)) if !response.trim().is_empty() => {
                Ok(Record::PromptResponse {
                    prompt: prompt.to_string(),
                    response: response.to_string(),
                })
            }
            (Some(_), Some(_)) => Err("`response` is empty".to_string()),
            _ => Err("`prompt` and `response` must both be strings".to_string()),
        };
    }
    match map.get("text") {
        Some(Value::String(t)) if !t.trim().is_empty() => Ok(Record::Text(t.clone())),
        Some(Value::String(_)) => Err("`text` is empty".to_string()),
        Some(_) => Err("`text` is not a string".to_string()),
        None => Err("expected a `text`, `prompt`/`response` or `messages` key".to_string()),
    }
}

fn read_text(
    reader: &mut impl BufRead,
    separator: Option<&str>,
    max_record_bytes: usize,
    split_seed: u64,
    log: &mut BadLog,
) -> std::io::Result<Vec<ParsedRecord>> {
    // A blank (or absent) separator means "blank lines separate records".
    let separator = separator.map(str::trim).filter(|s| !s.is_empty());
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut current = TextRecord::default();
    let mut line_no = 0u64;
    loop {
        let next = next_line(reader, max_record_bytes, &mut buf)?;
        let Some(len) = next else { break };
        line_no += 1;
        let mut line: &[u8] = &buf;
        if line_no == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        let is_sep = match separator {
            Some(sep) => len <= max_record_bytes && line.trim_ascii() == sep.as_bytes(),
            None => len <= max_record_bytes && line.trim_ascii().is_empty(),
        };
        if is_sep {
            current.finish(max_record_bytes, split_seed, &mut records, log);
            continue;
        }
        current.push(line_no, line, len, max_record_bytes);
    }
    current.finish(max_record_bytes, split_seed, &mut records, log);
    Ok(records)
}

/// A text record being accumulated line by line.
#[derive(Default)]
struct TextRecord {
    start_line: u64,
    bytes: Vec<u8>,
    /// Total size including lines not kept after the limit was hit.
    size: usize,
    lines: u64,
}

impl TextRecord {
    fn push(&mut self, line_no: u64, line: &[u8], len: usize, max: usize) {
        if self.lines == 0 {
            self.start_line = line_no;
        }
        self.lines += 1;
        self.size = self.size.saturating_add(len + 1);
        // Stop accumulating once over the limit: the record is malformed anyway.
        if self.size <= max.saturating_add(1) {
            if !self.bytes.is_empty() {
                self.bytes.push(b'\n');
            }
            self.bytes.extend_from_slice(line);
        }
    }

    fn finish(
        &mut self,
        max: usize,
        split_seed: u64,
        out: &mut Vec<ParsedRecord>,
        log: &mut BadLog,
    ) {
        let rec = std::mem::take(self);
        if rec.lines == 0 {
            return;
        }
        // `size` counts a newline per line; the record itself has one fewer.
        let size = rec.size.saturating_sub(1);
        if size > max {
            log.bad(
                rec.start_line,
                &format!("record of {size} bytes exceeds max_record_bytes = {max}"),
            );
            return;
        }
        match std::str::from_utf8(&rec.bytes) {
            Ok(text) => {
                let text = text.trim();
                if text.is_empty() {
                    // Whitespace-only chunks are padding between records, not bad records.
                    return;
                }
                out.push(ParsedRecord {
                    record: Record::Text(text.to_string()),
                    key_hash: xxh3_64_with_seed(text.as_bytes(), split_seed),
                });
            }
            Err(e) => log.bad(
                rec.start_line,
                &format!("invalid UTF-8 at byte {} of the record", e.valid_up_to()),
            ),
        }
    }
}

/// Reads one `\n`-terminated line into `buf` (without the newline and a trailing `\r`), keeping at
/// most `cap + 1` bytes of it. Returns the line's full length (so `len > cap` means "too long"), or
/// `None` at end of file.
fn next_line(
    reader: &mut impl BufRead,
    cap: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let keep = cap.saturating_add(1);
    let mut total = 0usize;
    let mut any = false;
    loop {
        let (used, found) = {
            let avail = match reader.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                break;
            }
            any = true;
            let (chunk, found) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (&avail[..i], true),
                None => (avail, false),
            };
            if buf.len() < keep {
                let room = keep - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            total = total.saturating_add(chunk.len());
            (chunk.len() + usize::from(found), found)
        };
        reader.consume(used);
        if found {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if total <= cap && buf.last() == Some(&b'\r') {
        buf.pop();
        total -= 1;
    }
    Ok(Some(total))
}

/// Counts malformed records of one file and logs the first few with `file:line`.
struct BadLog {
    file: String,
    dataset: String,
    count: u64,
}

impl BadLog {
    fn new(path: &Path, dataset: &str) -> Self {
        Self {
            file: path.display().to_string(),
            dataset: dataset.to_string(),
            count: 0,
        }
    }

    fn bad(&mut self, line: u64, reason: &str) {
        self.count += 1;
        if self.count <= MAX_WARNINGS_PER_FILE {
            tracing::warn!(
                dataset = %self.dataset,
                "{}:{}: malformed record skipped: {}",
                self.file,
                line,
                reason
            );
        }
    }

    /// Logs the summary, records the metric and returns the count.
    fn finish(self) -> u64 {
        if self.count > 0 {
            tracing::warn!(
                dataset = %self.dataset,
                "{}: {} malformed record(s) skipped in total{}",
                self.file,
                self.count,
                if self.count > MAX_WARNINGS_PER_FILE {
                    format!(" (only the first {MAX_WARNINGS_PER_FILE} were logged)")
                } else {
                    String::new()
                }
            );
            metrics::counter!(crate::telemetry::LOADER_BAD_RECORDS, "dataset" => self.dataset)
                .increment(self.count);
        }
        self.count
    }
}
