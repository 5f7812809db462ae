//! The grid's process pool: every (seed, cell) not finished yet runs as
//! `EXE --config BASE --set ...` in a child process (its output in `output_dir/logs/`), `jobs` at a
//! time; then the report is written. A failed run is reported and the grid goes on.
//!
//! Each child is waited for on its own thread, which sends its exit status over a channel, so
//! the pool sleeps until a run ends instead of polling.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Instant;

use super::{collect, finished, plan, write_report, ExperimentError, ExperimentSpec, RunResult};

/// How [`run_grid`] runs a grid.
#[derive(Debug, Clone)]
pub struct GridOptions {
    /// The `mos-runtime` executable each run is a child process of.
    pub exe: PathBuf,
    /// Runs at a time (at least 1).
    pub jobs: usize,
    /// Only print what would run.
    pub dry_run: bool,
    /// Run nothing; write the report from the runs that finished earlier.
    pub report_only: bool,
    /// `RAYON_NUM_THREADS` for each child; `None` gives each child its share of the cores.
    pub threads: Option<String>,
}

/// What happens to one run, as it happens (for the caller to print or log).
#[derive(Debug)]
pub enum GridEvent<'a> {
    /// The run finished in an earlier invocation; its result is reused.
    Skipped {
        /// `[k/total] cell seed s`.
        label: &'a str,
    },
    /// Dry run: the overrides the run would get.
    WouldRun {
        /// `[k/total] cell seed s`.
        label: &'a str,
        /// Its `--set` overrides.
        overrides: &'a [String],
    },
    /// The run's process started.
    Started {
        /// `[k/total] cell seed s`.
        label: &'a str,
        /// Where its output goes.
        log: &'a Path,
    },
    /// The run finished and its result was read.
    Done {
        /// `[k/total] cell seed s`.
        label: &'a str,
        /// Wall-clock seconds.
        seconds: f64,
        /// Its mean held-out loss over the skills.
        mean_eval_loss: f64,
    },
    /// The run's process failed, or its logs lack a finished run's records.
    Failed {
        /// `[k/total] cell seed s`.
        label: &'a str,
        /// Why, in words (the exit status and the log file, or the missing record).
        reason: String,
    },
}

/// What a grid produced.
#[derive(Debug, Default)]
pub struct GridOutcome {
    /// The results of every finished run, earlier ones included.
    pub results: Vec<RunResult>,
    /// Labels of the runs that failed in this invocation.
    pub failed: Vec<String>,
    /// The report files written (none on a dry run or when nothing has finished).
    pub report: Vec<PathBuf>,
}

/// Plans the grid of `spec`, runs what has not finished, and writes the report. Errors are the
/// ones that stop the whole grid (an unreadable spec, a log directory that cannot be created, an
/// executable that cannot start); a run that fails is an event and an entry of
/// [`GridOutcome::failed`].
pub fn run_grid(
    spec: &ExperimentSpec,
    opts: &GridOptions,
    mut on_event: impl FnMut(&GridEvent<'_>),
) -> Result<GridOutcome, ExperimentError> {
    let runs = plan(spec)?;
    let logs = spec.output_dir.join("logs");
    let total = runs.len();
    let jobs = opts.jobs.max(1);
    // Parallel runs share the cores: each child gets its share of rayon threads, unless the
    // user chose a thread count. (Results do not depend on the thread count.)
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = opts
        .threads
        .clone()
        .unwrap_or_else(|| (cores / jobs).max(1).to_string());
    let mut out = GridOutcome::default();
    let mut pending = VecDeque::new();
    for (k, run) in runs.iter().enumerate() {
        let label = format!("[{}/{total}] {} seed {}", k + 1, run.cell.name, run.seed);
        if let Some(r) = finished(run) {
            on_event(&GridEvent::Skipped { label: &label });
            out.results.push(r);
        } else if opts.dry_run {
            on_event(&GridEvent::WouldRun {
                label: &label,
                overrides: &run.overrides,
            });
        } else if !opts.report_only {
            pending.push_back((run, label));
        }
    }
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, std::io::Result<ExitStatus>)>();
    let mut running: Vec<Option<(&super::PlannedRun, String, Instant, PathBuf)>> = Vec::new();
    let mut in_flight = 0usize;
    loop {
        while in_flight < jobs {
            let Some((run, label)) = pending.pop_front() else {
                break;
            };
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| ExperimentError::Io { path, source }
            };
            std::fs::create_dir_all(&logs).map_err(io(&logs))?;
            let log_path = logs.join(format!("{}-seed-{}.log", run.cell.name, run.seed));
            let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
            let log_err = log.try_clone().map_err(io(&log_path))?;
            on_event(&GridEvent::Started {
                label: &label,
                log: &log_path,
            });
            let mut cmd = std::process::Command::new(&opts.exe);
            cmd.arg("--config").arg(&spec.base);
            for o in &run.overrides {
                cmd.arg("--set").arg(o);
            }
            // Children never serve metrics: a daemon may be using the configured port.
            cmd.arg("--set").arg("metrics.enabled=false");
            cmd.env("RAYON_NUM_THREADS", &threads);
            let mut child = cmd.stdout(log).stderr(log_err).spawn().map_err(|source| {
                ExperimentError::Spawn {
                    exe: opts.exe.clone(),
                    source,
                }
            })?;
            let slot = running.len();
            running.push(Some((run, label, Instant::now(), log_path)));
            in_flight += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((slot, child.wait()));
            });
        }
        if in_flight == 0 {
            break;
        }
        // The senders live as long as their waiting threads, and this function holds one too,
        // so `recv` only returns when a child has ended.
        let Ok((slot, status)) = rx.recv() else {
            break;
        };
        in_flight -= 1;
        let Some((run, label, t0, log_path)) = running[slot].take() else {
            continue;
        };
        let seconds = t0.elapsed().as_secs_f64();
        let failure = match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some(format!(
                "FAILED ({s}) after {seconds:.0} s; see {}",
                log_path.display()
            )),
            Err(e) => Some(format!("cannot wait for the run: {e}")),
        };
        if let Some(reason) = failure {
            on_event(&GridEvent::Failed {
                label: &label,
                reason,
            });
            out.failed.push(label);
            continue;
        }
        match collect(run) {
            Ok(r) => {
                let mean_eval_loss =
                    r.eval_loss.values().sum::<f64>() / r.eval_loss.len().max(1) as f64;
                on_event(&GridEvent::Done {
                    label: &label,
                    seconds,
                    mean_eval_loss,
                });
                out.results.push(r);
            }
            Err(e) => {
                on_event(&GridEvent::Failed {
                    label: &label,
                    reason: e.to_string(),
                });
                out.failed.push(label);
            }
        }
    }
    if !opts.dry_run && !out.results.is_empty() {
        out.report = write_report(spec, &out.results)?;
    }
    Ok(out)
}
