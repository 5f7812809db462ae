//! A run from start to its end, with the policies a daemon needs and a host embedding the
//! runtime should get too: a stop request (a signal, an orchestrator) finishes the current step
//! and writes a checkpoint, and `training.on_nonfinite = "rollback"` restarts the run from its
//! newest checkpoint with the data sampler re-seeded, up to `training.max_rollbacks` times (the
//! trainer enforces the cap and stops with a plain error once it is reached).

use tokio::sync::watch;

use super::{Runtime, RuntimeError, RuntimeHandle, StartOptions};
use crate::config::Config;
use crate::trainer::{RunSummary, TrainerError};

/// Starts the runtime, waits for the run to end and returns its summary. `start` says how the
/// first start treats an existing run (`fresh`, `overwrite`, ...); restarts after a rollback
/// always resume. When `stop` turns
/// true the trainer is asked to stop (it finishes its step and checkpoints); a rollback
/// (`TrainerError::Rollback`) starts the runtime again from the newest checkpoint, counted in
/// `mos_rollbacks_total`. Must be called inside a multi-threaded tokio runtime; the caller keeps
/// any hard deadline after a stop request (the binary exits on a second signal or after
/// `runtime.shutdown_grace_secs`), because only the process can abandon a step in flight.
pub async fn run_until_done(
    cfg: Config,
    mut start: StartOptions,
    stop: watch::Receiver<bool>,
) -> Result<RunSummary, RuntimeError> {
    loop {
        let handle = Runtime::start_with(cfg.clone(), start.clone()).await?;
        match wait_or_stop(handle, stop.clone()).await {
            Err(RuntimeError::Trainer(TrainerError::Rollback { step, streak })) => {
                start.rollbacks += 1;
                start.fresh = false;
                start.overwrite = false;
                metrics::counter!(crate::telemetry::ROLLBACKS).increment(1);
                tracing::error!(
                    step,
                    streak,
                    rollback = start.rollbacks,
                    "rolling back to the newest checkpoint"
                );
            }
            other => return other,
        }
    }
}

/// Waits for the run, passing a stop request on once.
async fn wait_or_stop(
    handle: RuntimeHandle,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary, RuntimeError> {
    tokio::select! {
        () = handle.finished() => {}
        // A closed channel means nobody can ask for a stop any more: just wait.
        r = stop.wait_for(|&s| s) => {
            if r.is_ok() {
                handle.stop();
            }
            handle.finished().await;
        }
    }
    handle.wait().await
}
