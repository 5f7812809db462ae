//! Checkpoints: atomic save and verified load of everything a run needs to continue exactly.
//!
//! Layout: `<output_dir>/checkpoints/step-<NNNNNNNNNN>/` holds the trainer's files (weights, both
//! optimisers' moments, the step), `run_state.json` (sampler RNG, loader cursors, the adopted
//! mixture, log lengths, the model shape, dataset list and kind of learner it was made with), `scheduler.json` (the
//! scheduler's and the reward actor's state: scorer, its Adam moments, EMA, theta_0 probe
//! perplexities), the resolved config, and `manifest.json` with each file's size and sha256.
//!
//! Atomicity: a checkpoint is written into `checkpoints/.tmp-step-N-<pid>/`, every file is
//! fsynced, the manifest is written and fsynced last, and only then is the directory renamed to
//! its final name and the parent directory fsynced. A crash at any point leaves either a `.tmp-`
//! directory (removed at the next start) or a complete checkpoint; [`latest_valid`] also re-checks
//! every checksum, so a directory damaged after the fact is skipped (logged) in favour of an older
//! one. It must never load a checkpoint whose manifest does not verify.

mod state;

pub use state::{diff_configs, ActorState, LogLengths, RunState};

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Sub-directory of `output_dir` holding the checkpoints.
pub const DIR: &str = "checkpoints";
/// The manifest, written last.
pub const MANIFEST: &str = "manifest.json";
/// Trainer-side run state.
pub const RUN_STATE: &str = "run_state.json";
/// Scheduler and reward actor state.
pub const ACTOR_STATE: &str = "scheduler.json";
/// The resolved config the checkpoint was made with.
pub const CONFIG: &str = "config.toml";
/// Version of the checkpoint layout; a different version is refused.
pub const FORMAT: u32 = 1;

const TMP_PREFIX: &str = ".tmp-step-";
const FINAL_PREFIX: &str = "step-";

/// Errors of writing or reading checkpoints; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is incomplete or damaged.
    #[error("checkpoint {path} is not usable: {message}")]
    Corrupt {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint was written by another kind of learner than the one this run trains
    /// with, whose files the run's learner cannot read.
    #[error(
        "checkpoint {path} was written by the `{checkpoint}` learner, but this run trains with \
         `{run}`: resume it with the learner that wrote it (training.cpu_kernels = \"fused\" or \
         \"burn\" picks the built-in one on the CPU; runtime.backend = \"cuda\" always trains \
         with \"burn\"), or start the run in another runtime.output_dir"
    )]
    LearnerMismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// The kind recorded in the checkpoint.
        checkpoint: String,
        /// The kind of this run's learner.
        run: String,
    },
    /// A JSON file could not be written or parsed.
    #[error("checkpoint file {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the contents.
    pub sha256: String,
}

/// `manifest.json`: what a complete checkpoint contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Optimiser steps completed when the checkpoint was taken.
    pub step: u64,
    /// Seconds since the Unix epoch at commit time.
    pub created_unix: u64,
    /// Every file of the checkpoint except the manifest itself.
    pub files: Vec<FileEntry>,
}

/// The checkpoints directory of an output directory.
pub fn root(output_dir: &Path) -> PathBuf {
    output_dir.join(DIR)
}

/// A checkpoint being written. Dropping it without [`Writer::commit`] removes the temporary
/// directory.
#[derive(Debug)]
pub struct Writer {
    root: PathBuf,
    tmp: PathBuf,
    step: u64,
    committed: bool,
}

impl Writer {
    /// Starts the checkpoint of `step` in a fresh temporary directory.
    pub fn begin(output_dir: &Path, step: u64) -> Result<Self, CheckpointError> {
        let root = root(output_dir);
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let tmp = root.join(format!("{TMP_PREFIX}{step:010}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        Ok(Self {
            root,
            tmp,
            step,
            committed: false,
        })
    }

    /// The temporary directory files are written into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes `value` as pretty JSON to `name` inside the checkpoint.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), CheckpointError> {
        let path = self.tmp.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| CheckpointError::Json {
            path: path.clone(),
            source,
        })?;
        self.write_bytes(name, &bytes)
    }

    /// Writes raw bytes to `name` inside the checkpoint.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let path = self.tmp.join(name);
        let mut f = File::create(&path).map_err(io(&path))?;
        f.write_all(bytes).map_err(io(&path))?;
        Ok(())
    }

    /// Seals the checkpoint: fsyncs every file, writes and fsyncs the manifest, renames the
    /// directory into place, fsyncs the parent, then deletes all but the newest `keep`
    /// checkpoints. Returns the final directory.
    pub fn commit(mut self, keep: usize) -> Result<PathBuf, CheckpointError> {
        let mut files = Vec::new();
        let mut names: Vec<String> = Vec::new();
        collect_files(&self.tmp, "", &mut names)?;
        names.sort();
        for name in names {
            let path = self.tmp.join(&name);
            let (bytes, sha256) = hash_file(&path)?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
            files.push(FileEntry {
                name,
                bytes,
                sha256,
            });
        }
        if crate::faults::abort_in_checkpoint(self.step) {
            tracing::error!(
                step = self.step,
                "fault injection: aborting inside a checkpoint"
            );
            std::process::abort();
        }
        let manifest = Manifest {
            format: FORMAT,
            step: self.step,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            files,
        };
        let mpath = self.tmp.join(MANIFEST);
        let bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|source| CheckpointError::Json {
                path: mpath.clone(),
                source,
            })?;
        let mut f = File::create(&mpath).map_err(io(&mpath))?;
        f.write_all(&bytes).map_err(io(&mpath))?;
        f.sync_all().map_err(io(&mpath))?;
        sync_dir(&self.tmp)?;

        let fin = self.root.join(format!("{FINAL_PREFIX}{:010}", self.step));
        if fin.exists() {
            // Only after a rollback or a resume re-reaches a step: the old directory describes
            // an abandoned trajectory. Move it aside first so the rename below stays atomic.
            let old = self.root.join(format!(".old-step-{:010}", self.step));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&fin, &old).map_err(io(&fin))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(&self.tmp, &fin).map_err(io(&fin))?;
        sync_dir(&self.root)?;
        self.committed = true;
        prune(&self.root, keep.max(1));
        Ok(fin)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Relative paths (with `/`) of every regular file under `dir`; sub-directories are fsynced so
/// that their entries are durable before the rename.
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), CheckpointError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let ty = entry.file_type().map_err(io(&entry.path()))?;
        if ty.is_file() {
            out.push(name);
        } else if ty.is_dir() {
            collect_files(&entry.path(), &format!("{name}/"), out)?;
            sync_dir(&entry.path())?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

fn hash_file(path: &Path) -> Result<(u64, String), CheckpointError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, hex))
}

/// Complete-looking checkpoint directories (final names only), newest first.
pub fn list(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let root = root(output_dir);
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(FINAL_PREFIX)?.parse::<u64>().ok()?;
            e.path().is_dir().then_some((step, e.path()))
        })
        .collect();
    out.sort_by_key(|x| std::cmp::Reverse(x.0));
    out
}

fn prune(root: &Path, keep: usize) {
    let Some(output_dir) = root.parent() else {
        return;
    };
    for (step, dir) in list(output_dir).into_iter().skip(keep) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::debug!(step, "old checkpoint removed"),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove an old checkpoint")
            }
        }
    }
}

/// Removes temporary directories left by checkpoints that never committed (a crash or a kill
/// while writing). Returns how many were removed.
pub fn clean_partial(output_dir: &Path) -> usize {
    let root = root(output_dir);
    let Ok(rd) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) || name.starts_with(".old-step-") {
            tracing::warn!(path = %e.path().display(), "removing an incomplete checkpoint (the process stopped while writing it)");
            if std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Checks a checkpoint directory against its manifest (presence, sizes, checksums).
pub fn verify(dir: &Path) -> Result<Manifest, CheckpointError> {
    let mpath = dir.join(MANIFEST);
    let bytes = std::fs::read(&mpath).map_err(|e| CheckpointError::Corrupt {
        path: dir.to_path_buf(),
        message: format!("no readable manifest ({e})"),
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json {
            path: mpath.clone(),
            source,
        })?;
    if manifest.format != FORMAT {
        return Err(CheckpointError::Corrupt {
            path: dir.to_path_buf(),
            message: format!(
                "layout version {} (this build reads {FORMAT})",
                manifest.format
            ),
        });
    }
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let (bytes, sha) = hash_file(&path).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(CheckpointError::Corrupt {
                path,
                message: format!(
                    "size/checksum mismatch ({bytes} bytes, sha256 {sha}; manifest says {} bytes, {})",
                    f.bytes, f.sha256
                ),
            });
        }
    }
    Ok(manifest)
}

/// The newest checkpoint that verifies, skipping (and logging) damaged ones.
pub fn latest_valid(output_dir: &Path) -> Option<(PathBuf, Manifest)> {
    for (step, dir) in list(output_dir) {
        match verify(&dir) {
            Ok(m) => return Some((dir, m)),
            Err(e) => {
                tracing::warn!(step, error = %e, "skipping a damaged checkpoint");
                metrics::counter!(crate::telemetry::CHECKPOINTS_INVALID).increment(1);
            }
        }
    }
    None
}

/// Reads and parses a JSON file of a checkpoint.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<T, CheckpointError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(out: &Path, step: u64, keep: usize) -> PathBuf {
        let w = Writer::begin(out, step).unwrap();
        w.write_bytes("a.bin", &vec![step as u8; 1000]).unwrap();
        w.write_json("b.json", &vec![step; 3]).unwrap();
        w.commit(keep).unwrap()
    }

    #[test]
    fn commit_verifies_and_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        for s in [10, 20, 30, 40] {
            write(tmp.path(), s, 2);
        }
        let steps: Vec<u64> = list(tmp.path()).iter().map(|x| x.0).collect();
        assert_eq!(steps, vec![40, 30]);
        let (dir, m) = latest_valid(tmp.path()).unwrap();
        assert_eq!(m.step, 40);
        assert_eq!(m.files.len(), 2);
        let b: Vec<u64> = read_json(&dir, "b.json").unwrap();
        assert_eq!(b, vec![40, 40, 40]);
    }

    #[test]
    fn damaged_or_partial_checkpoints_are_never_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 10, 5);
        let newest = write(tmp.path(), 20, 5);
        // Flip one byte of the newest: it must be skipped for the older one.
        let f = newest.join("a.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        assert!(verify(&newest).is_err());
        assert_eq!(latest_valid(tmp.path()).unwrap().1.step, 10);
        // A directory with a final name but no manifest (impossible through Writer, possible by
        // hand) is skipped too.
        std::fs::create_dir_all(root(tmp.path()).join("step-0000000030")).unwrap();
        assert_eq!(latest_valid(tmp.path()).unwrap().1.step, 10);
        // An uncommitted writer leaves nothing behind, and stale temp dirs are cleaned.
        {
            let w = Writer::begin(tmp.path(), 50).unwrap();
            w.write_bytes("a.bin", b"x").unwrap();
        }
        std::fs::create_dir_all(root(tmp.path()).join(".tmp-step-0000000060-1")).unwrap();
        assert_eq!(clean_partial(tmp.path()), 1);
        assert_eq!(latest_valid(tmp.path()).unwrap().1.step, 10);
    }
}
