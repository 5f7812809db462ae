//! The atomics shared between the trainer thread and everything that steers it: [`Control`]
//! (stop, pause, checkpoint requests and progress, written by the runtime handle and the signal
//! handler) and [`LiveSet`] (loader health, written by the supervisor). Reads never wait.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

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
