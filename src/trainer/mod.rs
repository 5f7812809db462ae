//! The trainer: owns the model and the device, and runs the training loop on its own OS thread.
//!
//! Per batch it reads the latest mixture snapshot (lock-free), draws a dataset per example (or per
//! batch) with the training RNG, takes the next example from that dataset's loader queue, and runs
//! one optimiser step. Every `update_every` steps it sends a report without waiting: a probe report
//! to the reward actor under MoS (one batched, no-gradient forward pass over the fixed probe sets),
//! or a tick to the scheduler for static strategies. It evaluates held-out loss every `eval_every`
//! steps and at the end, and writes `run.jsonl`.
//!
//! Invariants it must keep: it never waits on the scheduler, the reward actor, metrics or
//! logging (reports go through [`ReportGate`], which drops and counts instead of queueing without
//! bound); burn code runs only on this thread.

mod learner;
mod r#loop;
mod unigram;

pub use learner::Learner;
pub use r#loop::{
    llama_config, run_training, run_training_fused, run_with_learner, stream_seed, train_hyper,
    ExactMatch, Resume, RunSummary, TrainerCtx, TrainerError,
};
pub use unigram::UnigramLearner;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::telemetry;

/// A bounded-mailbox emulation in front of a ractor actor (ractor mailboxes are unbounded): the
/// sender acquires a slot before casting and the actor releases it when it handles the message.
/// When every slot is taken the report is dropped and counted in `mos_reports_dropped_total`, so a
/// slow receiver can never make the training loop wait or grow memory without bound.
#[derive(Debug)]
pub struct ReportGate {
    in_flight: AtomicUsize,
    capacity: usize,
}

impl ReportGate {
    /// A gate admitting at most `capacity` messages in flight.
    pub fn new(capacity: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Takes a slot if one is free; otherwise counts a dropped report and returns false.
    pub fn try_acquire(&self) -> bool {
        let ok = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            metrics::counter!(telemetry::REPORTS_DROPPED).increment(1);
        }
        ok
    }

    /// Takes a slot regardless of capacity: for senders that are not the training loop (the reward
    /// actor forwarding rewards) and must not lose messages.
    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases a slot; called by the receiving actor for every message it handles.
    pub fn done(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Messages currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Run control shared between the trainer thread and its owners (the runtime handle, the signal
/// handler): a stop request, a pause flag and a checkpoint request.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    checkpoint: AtomicBool,
    step: AtomicU64,
}

impl Control {
    /// Asks the trainer to finish its current step and wind down.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Pauses (true) or resumes (false) training between steps.
    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::Release);
    }

    /// Whether training is paused.
    pub fn paused(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// Records the number of completed steps (the trainer calls this after every step).
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Release);
    }

    /// Completed optimiser steps.
    pub fn step(&self) -> u64 {
        self.step.load(Ordering::Acquire)
    }

    /// Asks for a checkpoint after the current step.
    pub fn request_checkpoint(&self) {
        self.checkpoint.store(true, Ordering::Release);
    }

    /// Takes a pending checkpoint request (true once per request).
    pub fn take_checkpoint_request(&self) -> bool {
        self.checkpoint.swap(false, Ordering::AcqRel)
    }
}

/// Health of each dataset's loader, shared by the supervisor (writer) and the trainer (reader).
///
/// A dataset that is not live is left out of sampling (its weight treated as 0, the rest
/// renormalised) until its loader is back; a dropped one is left out for the rest of the process.
#[derive(Debug)]
pub struct LiveSet {
    flags: Vec<AtomicU8>,
}

const LIVE: u8 = 0;
const RESTARTING: u8 = 1;
const DROPPED: u8 = 2;

impl LiveSet {
    /// `n` live datasets.
    pub fn new(n: usize) -> Self {
        Self {
            flags: (0..n).map(|_| AtomicU8::new(LIVE)).collect(),
        }
    }

    /// Whether dataset `i` can be sampled.
    pub fn is_live(&self, i: usize) -> bool {
        self.flags
            .get(i)
            .is_some_and(|f| f.load(Ordering::Acquire) == LIVE)
    }

    /// Whether every dataset is live (the common case: the trainer then uses the mixture as is).
    pub fn all_live(&self) -> bool {
        self.flags.iter().all(|f| f.load(Ordering::Acquire) == LIVE)
    }

    /// Marks dataset `i` as waiting for a restart.
    pub fn set_restarting(&self, i: usize) {
        if let Some(f) = self.flags.get(i) {
            let _ = f.compare_exchange(LIVE, RESTARTING, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Marks dataset `i` live again after a restart (a dropped dataset stays dropped).
    pub fn set_live(&self, i: usize) {
        if let Some(f) = self.flags.get(i) {
            let _ = f.compare_exchange(RESTARTING, LIVE, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Drops dataset `i` for the rest of the process.
    pub fn drop_dataset(&self, i: usize) {
        if let Some(f) = self.flags.get(i) {
            f.store(DROPPED, Ordering::Release);
        }
    }

    /// Number of live datasets.
    pub fn live_count(&self) -> usize {
        (0..self.flags.len()).filter(|&i| self.is_live(i)).count()
    }

    /// Whether any dataset can still come back (live or restarting).
    pub fn any_usable(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f.load(Ordering::Acquire) != DROPPED)
    }
}
