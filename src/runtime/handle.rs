//! `RuntimeHandle`: what a host holds while a run is going. Every method returns at once (the
//! trainer reads the requests between steps) except [`RuntimeHandle::finished`] and
//! [`RuntimeHandle::wait`], which wait without polling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;

use super::RuntimeError;
use crate::actors::supervisor::SupervisorMsg;
use crate::actors::Mixing;
use crate::control::Control;
use crate::mixture::MixtureSnapshot;
use crate::trainer::{RunSummary, TrainerError};

/// How long [`RuntimeHandle::wait`] waits for the scheduler to handle what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running runtime.
#[derive(Debug)]
pub struct RuntimeHandle {
    pub(super) mixing: Mixing,
    pub(super) control: Arc<Control>,
    pub(super) supervisor: ActorRef<SupervisorMsg>,
    pub(super) sup_join: Option<tokio::task::JoinHandle<()>>,
    pub(super) trainer: Option<std::thread::JoinHandle<Result<RunSummary, TrainerError>>>,
    /// Turns true when the trainer thread returns (and closes if it panics): what
    /// [`RuntimeHandle::finished`] waits on.
    pub(super) done: watch::Receiver<bool>,
    pub(super) failure: Arc<Mutex<Option<String>>>,
}

impl RuntimeHandle {
    /// The current mixture (lock-free).
    pub fn mixture(&self) -> Arc<MixtureSnapshot> {
        self.mixing.board.load()
    }

    /// A receiver notified at every mixture publish.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MixtureSnapshot>> {
        self.mixing.board.subscribe()
    }

    /// Pauses training between steps (loaders keep their queues full).
    pub fn pause(&self) {
        self.control.set_paused(true);
    }

    /// Resumes after [`RuntimeHandle::pause`].
    pub fn resume(&self) {
        self.control.set_paused(false);
    }

    /// Asks the trainer to finish its current step, write the model and logs, and stop.
    pub fn stop(&self) {
        self.control.set_paused(false);
        self.control.request_stop();
    }

    /// Asks for a checkpoint after the current step (written on the trainer thread, atomically,
    /// like the periodic ones). Returns at once; the checkpoint appears in
    /// `output_dir/checkpoints/` within about one step.
    pub fn checkpoint(&self) {
        self.control.request_checkpoint();
    }

    /// Optimiser steps completed so far.
    pub fn step(&self) -> u64 {
        self.control.step()
    }

    /// Whether the trainer thread has finished.
    pub fn is_finished(&self) -> bool {
        self.trainer.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Returns once the trainer thread has finished (or at once if it has). Cancel-safe, so a
    /// host can `select!` it against its own signals; the result comes from
    /// [`RuntimeHandle::wait`].
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        // An error means the sender was dropped: the thread ended by unwinding.
        let _ = done.wait_for(|&d| d).await;
    }

    /// Waits for the run to end, then stops every actor.
    pub async fn wait(mut self) -> Result<RunSummary, RuntimeError> {
        let trainer = self.trainer.take();
        let result = tokio::task::spawn_blocking(move || match trainer {
            Some(t) => t.join().unwrap_or_else(|_| Err(TrainerError::Panicked)),
            None => Err(TrainerError::AlreadyWaited),
        })
        .await
        .map_err(|e| RuntimeError::Spawn(e.into()))?;
        // Ordered drain: the scheduler handles what is already queued (the last update's log
        // line) before anything stops. The bound only matters when an actor has failed.
        if !self.mixing.flush(DRAIN_TIMEOUT).await {
            tracing::warn!(
                "the scheduler did not drain its mailbox within {}s",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        self.supervisor.stop(None);
        if let Some(j) = self.sup_join.take() {
            let _ = j.await;
        }
        let failure = self.failure.lock().ok().and_then(|f| f.clone());
        match (result, failure) {
            (Ok(summary), None) => Ok(summary),
            (_, Some(f)) => Err(RuntimeError::Actor(f)),
            (Err(e), None) => Err(e.into()),
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        // A handle dropped without `wait` must not leave a trainer running on its own.
        self.control.request_stop();
        self.supervisor.stop(None);
    }
}
