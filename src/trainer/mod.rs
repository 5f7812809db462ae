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

mod r#loop;

pub use r#loop::{
    llama_config, run_training, stream_seed, train_hyper, RunSummary, TrainerCtx, TrainerError,
};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

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
}
