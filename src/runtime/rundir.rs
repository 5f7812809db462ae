//! `RunDir`: the one owner of a run's output directory. It knows the layout (which files make a
//! run), checks the directory before anything starts, archives an earlier run, writes the
//! resolved config and cuts the logs back to a checkpoint. Nothing else in the runtime creates,
//! moves or truncates files in `output_dir` (the trainer appends to the logs and writes
//! checkpoints through `checkpoint/`, both below this layer).

use std::path::{Path, PathBuf};

use super::RuntimeError;
use crate::checkpoint::{self, LogLengths};
use crate::config::Config;

/// Files of a run in its output directory (besides `checkpoints/`).
const RUN_FILES: &[&str] = &[
    "run.jsonl",
    "mixture.jsonl",
    "samples.jsonl",
    "model.mpk",
    "config.resolved.toml",
];

/// A run's output directory.
#[derive(Debug, Clone)]
pub(crate) struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The directory of `runtime.output_dir`; nothing is touched until a method is called.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The scheduler's update log.
    pub(crate) fn mixture_log(&self) -> PathBuf {
        self.path.join("mixture.jsonl")
    }

    fn error(&self, message: String) -> RuntimeError {
        RuntimeError::OutputDir {
            path: self.path.clone(),
            message,
        }
    }

    /// Checks, before anything starts, that the directory can be created and written and has
    /// room for one checkpoint of `num_params` parameters.
    pub(crate) fn preflight(&self, num_params: usize) -> Result<(), RuntimeError> {
        let out = &self.path;
        if out.exists() && !out.is_dir() {
            return Err(self.error("exists and is not a directory".into()));
        }
        std::fs::create_dir_all(out).map_err(|e| self.error(format!("cannot be created: {e}")))?;
        let probe = out.join(format!(".write-test-{}", std::process::id()));
        let written = std::fs::write(&probe, [0u8; 4096]).and_then(|_| {
            std::fs::File::open(&probe)?.sync_all()?;
            std::fs::remove_file(&probe)
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&probe);
            return Err(self.error(format!("not writable: {e}")));
        }
        // Weights plus AdamW's two moments, f32, plus a margin for the small files.
        let checkpoint_bytes = num_params as u64 * 4 * 3 + (1 << 20);
        if let Some(free) = free_bytes(out) {
            if free < checkpoint_bytes {
                return Err(self.error(format!(
                    "only {} MiB free, but one checkpoint needs about {} MiB",
                    free >> 20,
                    checkpoint_bytes.div_ceil(1 << 20)
                )));
            }
        }
        Ok(())
    }

    /// Writes `config.resolved.toml`, the config exactly as the run uses it.
    pub(crate) fn write_resolved_config(&self, cfg: &Config) -> Result<(), RuntimeError> {
        let resolved = toml::to_string_pretty(cfg).unwrap_or_default();
        crate::fsio::write_atomic(&self.path.join("config.resolved.toml"), resolved.as_bytes())
            .map_err(|e| self.error(format!("not writable: {e}")))
    }

    /// Whether the directory holds a run (a checkpoint or any of a run's files).
    pub(crate) fn holds_run(&self) -> bool {
        !checkpoint::list(&self.path).is_empty()
            || RUN_FILES.iter().any(|f| self.path.join(f).exists())
    }

    /// Moves an existing run's files to `output_dir/archive/<unix-millis>/`.
    pub(crate) fn archive(&self) -> Result<PathBuf, RuntimeError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dest = self.path.join("archive").join(stamp.to_string());
        let err = |e: std::io::Error| self.error(format!("cannot archive the previous run: {e}"));
        std::fs::create_dir_all(&dest).map_err(err)?;
        for name in RUN_FILES.iter().copied().chain([checkpoint::DIR]) {
            let from = self.path.join(name);
            if from.exists() {
                std::fs::rename(&from, dest.join(name)).map_err(err)?;
            }
        }
        tracing::warn!(to = %dest.display(), "previous run archived");
        Ok(dest)
    }

    /// Cuts the logs back to their lengths at a checkpoint: what a killed run wrote after it is
    /// abandoned, so the resumed run's logs read as one uninterrupted run.
    pub(crate) fn truncate_logs(&self, to: &LogLengths) -> Result<(), RuntimeError> {
        let cut = |name: &str, len: u64| {
            crate::runlog::truncate_to(&self.path.join(name), len)
                .map_err(|e| self.error(e.to_string()))
        };
        cut("run.jsonl", to.run)?;
        cut("mixture.jsonl", to.mixture)?;
        if let Some(n) = to.samples {
            cut("samples.jsonl", n)?;
        }
        Ok(())
    }
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_moves_every_run_file_and_leaves_the_directory_empty_of_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path());
        assert!(!dir.holds_run());
        std::fs::write(tmp.path().join("run.jsonl"), b"{}\n").unwrap();
        std::fs::write(tmp.path().join("mixture.jsonl"), b"{}\n").unwrap();
        assert!(dir.holds_run());
        let dest = dir.archive().unwrap();
        assert!(!dir.holds_run());
        assert!(dest.join("run.jsonl").exists());
        assert!(dest.join("mixture.jsonl").exists());
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("out");
        std::fs::write(&file, b"x").unwrap();
        let err = RunDir::new(&file).preflight(10).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        assert!(err.contains("out"), "{err}");
    }

    #[test]
    fn logs_are_cut_back_to_their_checkpointed_lengths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RunDir::new(tmp.path());
        std::fs::write(tmp.path().join("run.jsonl"), b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        std::fs::write(tmp.path().join("mixture.jsonl"), b"{\"b\":1}\n").unwrap();
        dir.truncate_logs(&LogLengths {
            run: 8,
            mixture: 8,
            samples: None,
        })
        .unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("run.jsonl")).unwrap(),
            b"{\"a\":1}\n"
        );
    }
}
