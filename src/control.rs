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

/// An exhaustive enumerator of interleavings, shared by the tests of the atomics here and in
/// [`crate::actors::gate`].
///
/// The tests built on it treat each public operation as one indivisible step, which is sound for
/// these types: every operation under test is a single access (a load, a store or one
/// read-modify-write) to a single atomic location, and the accesses to one location are totally
/// ordered by its modification order, with every read-modify-write reading the latest value. So
/// whatever memory orderings the code uses, the values these atomics go through in a concurrent
/// run are those of some interleaving of whole operations. The orderings only matter for other
/// data published alongside the atomics, which these tests do not cover. Operations that read
/// several locations (such as [`LiveSet::any_usable`]) are argued for where they are tested.
#[cfg(test)]
pub(crate) mod interleave {
    /// Calls `visit` once with every interleaving of threads that run `steps[t]` operations each,
    /// and returns how many interleavings it visited. An interleaving is given as a schedule: the
    /// index of the thread that runs next, one entry per operation, so thread `t`'s `k`-th entry
    /// in the schedule is its `k`-th operation.
    pub(crate) fn for_each_interleaving(steps: &[usize], mut visit: impl FnMut(&[usize])) -> usize {
        let mut pc = vec![0; steps.len()];
        let mut schedule = Vec::with_capacity(steps.iter().sum());
        extend(steps, &mut pc, &mut schedule, &mut visit)
    }

    /// Extends `schedule` in every possible way from the program counters `pc`: each thread
    /// with an operation left may run next, and a schedule in which no thread has one left is
    /// complete.
    fn extend(
        steps: &[usize],
        pc: &mut [usize],
        schedule: &mut Vec<usize>,
        visit: &mut dyn FnMut(&[usize]),
    ) -> usize {
        let mut visited = 0;
        let mut complete = true;
        for t in 0..steps.len() {
            if pc[t] < steps[t] {
                complete = false;
                pc[t] += 1;
                schedule.push(t);
                visited += extend(steps, pc, schedule, visit);
                schedule.pop();
                pc[t] -= 1;
            }
        }
        if complete {
            visit(schedule);
            visited = 1;
        }
        visited
    }

    mod tests {
        use std::collections::HashSet;

        use super::for_each_interleaving;

        /// The interleaving tests trust the count they get back, so the enumerator must visit
        /// distinct, well-formed schedules. A well-formed schedule of threads with `k_t` steps
        /// each is a sequence holding `k_t` copies of each `t`, and there are exactly
        /// `(sum k_t)! / prod(k_t!)` of them; so distinct, well-formed schedules in that number
        /// are all of them.
        #[test]
        fn the_enumerator_visits_every_interleaving_exactly_once() {
            // 5! / (2! 2! 1!) = 30, 5! / (3! 0! 2!) = 10, and a single empty schedule when there
            // is nothing to run.
            for (steps, expected) in [
                (&[2, 2, 1][..], 30),
                (&[3, 0, 2][..], 10),
                (&[4][..], 1),
                (&[][..], 1),
            ] {
                let mut seen = HashSet::new();
                let visited = for_each_interleaving(steps, |schedule| {
                    for (t, &k) in steps.iter().enumerate() {
                        assert_eq!(schedule.iter().filter(|&&s| s == t).count(), k);
                    }
                    assert_eq!(schedule.len(), steps.iter().sum::<usize>());
                    assert!(
                        seen.insert(schedule.to_vec()),
                        "visited twice: {schedule:?}"
                    );
                });
                assert_eq!(visited, expected, "{steps:?}");
                assert_eq!(seen.len(), expected, "{steps:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interleave::for_each_interleaving;
    use super::*;

    /// One operation of the checkpoint interleaving test.
    #[derive(Debug, Clone, Copy)]
    enum ControlOp {
        Request,
        Take,
        Stop,
    }

    /// Checkpoint requests from the runtime handle and the signal handler interleaved with the
    /// trainer taking them, on a fresh [`Control`] per interleaving.
    ///
    /// The rule checked: a request is pending from when it is made until the next take, and a
    /// request made while another one is pending coalesces with it (both ask for the same
    /// checkpoint after the current step). So every take returns true exactly when a request is
    /// pending, and over a whole run the successful takes number the requests minus the
    /// coalesced ones, none lost and none taken twice. The signal handler also requests a stop
    /// midway, which must read as requested from then on and not before.
    #[test]
    fn every_interleaving_of_checkpoint_requests_and_takes_takes_each_request_once() {
        use ControlOp::*;
        let handle: &[ControlOp] = &[Request, Request, Request];
        let signal: &[ControlOp] = &[Request, Stop];
        let trainer: &[ControlOp] = &[Take, Take, Take, Take];
        let programs = [handle, signal, trainer];

        let (mut requests, mut taken, mut coalesced) = (0, 0, 0);
        let (mut none_coalesced, mut all_coalesced) = (0, 0);
        let steps = programs.map(<[ControlOp]>::len);
        let visited = for_each_interleaving(&steps, |schedule| {
            let control = Control::default();
            let mut pc = [0; 3];
            let mut pending = false;
            let mut stopped = false;
            let (mut run_requests, mut run_taken, mut run_coalesced) = (0, 0, 0);
            for &t in schedule {
                let op = programs[t][pc[t]];
                pc[t] += 1;
                match op {
                    Request => {
                        control.request_checkpoint();
                        run_requests += 1;
                        if pending {
                            run_coalesced += 1;
                        }
                        pending = true;
                    }
                    Take => {
                        let got = control.take_checkpoint_request();
                        assert_eq!(got, pending, "take after {schedule:?} up to {pc:?}");
                        run_taken += usize::from(got);
                        pending = false;
                    }
                    Stop => {
                        control.request_stop();
                        stopped = true;
                    }
                }
                assert_eq!(
                    control.stop_requested(),
                    stopped,
                    "{schedule:?} up to {pc:?}"
                );
            }
            // The trainer takes once more after its last step, so that a request still pending
            // at the end is counted too.
            let last = control.take_checkpoint_request();
            assert_eq!(last, pending, "final take after {schedule:?}");
            run_taken += usize::from(last);
            assert!(!control.take_checkpoint_request(), "a request taken twice");
            assert_eq!(run_requests, 4);
            assert_eq!(run_taken, run_requests - run_coalesced, "{schedule:?}");
            requests += run_requests;
            taken += run_taken;
            coalesced += run_coalesced;
            none_coalesced += usize::from(run_coalesced == 0);
            all_coalesced += usize::from(run_taken == 1);
        });
        // 9! / (3! 2! 4!) = 1260 interleavings of the three threads.
        assert_eq!(visited, 1260);
        assert_eq!(requests, 4 * 1260);
        assert_eq!(taken + coalesced, requests);
        // Both extremes occur, so the count above checks real interleavings: every request taken
        // on its own, and every request made before the first take, merged into one checkpoint.
        assert!(none_coalesced > 0 && all_coalesced > 0);
    }

    /// One operation of the live-set interleaving test.
    #[derive(Debug, Clone, Copy)]
    enum LiveOp {
        SetRestarting(usize),
        SetLive(usize),
        Drop(usize),
        IsLive(usize),
        AnyUsable,
    }

    /// The supervisor's writes to a two-dataset [`LiveSet`] interleaved with the trainer's
    /// reads, on a fresh set per interleaving.
    ///
    /// The supervisor is one actor, so in a real run its writes are sequential; here they are
    /// split over two threads, which also covers a restart that completes after the supervisor
    /// gave up on the dataset (the late `set_live(0)` can land on a restarting or a dropped
    /// dataset 0, and `set_restarting(1)` and `set_live(1)` can land before, between or after
    /// `drop_dataset(1)`).
    ///
    /// `any_usable` reads every flag in turn rather than one location, but it is still sound to
    /// run it as one step: it returns false only when each load saw DROPPED, and as DROPPED is
    /// final every dataset is dropped from its last load on, where this test places it; it
    /// returns true on seeing a flag that was not dropped at that moment.
    #[test]
    fn every_interleaving_of_live_set_writers_and_readers_keeps_dropped_final() {
        use LiveOp::*;
        let supervisor: &[LiveOp] = &[
            SetRestarting(0),
            SetLive(0),
            Drop(1),
            SetRestarting(0),
            Drop(0),
        ];
        let late_restart: &[LiveOp] = &[SetRestarting(1), SetLive(1), SetLive(0)];
        let trainer: &[LiveOp] = &[IsLive(0), AnyUsable, IsLive(1), AnyUsable];
        let programs = [supervisor, late_restart, trainer];

        let (mut revivals_refused, mut revivals, mut none_usable, mut seen_live) = (0, 0, 0, 0);
        let steps = programs.map(<[LiveOp]>::len);
        let visited = for_each_interleaving(&steps, |schedule| {
            let live = LiveSet::new(2);
            let flag = |i: usize| live.flags[i].load(Ordering::Acquire);
            let mut pc = [0; 3];
            let mut dropped = [false; 2];
            let mut restarted = [false; 2];
            for &t in schedule {
                let op = programs[t][pc[t]];
                pc[t] += 1;
                let at = || format!("{op:?} in {schedule:?} up to {pc:?}");
                let before = [flag(0), flag(1)];
                match op {
                    SetRestarting(i) => live.set_restarting(i),
                    SetLive(i) => {
                        live.set_live(i);
                        match before[i] {
                            DROPPED => {
                                assert!(
                                    !live.is_live(i),
                                    "set_live revived a dropped dataset: {}",
                                    at()
                                );
                                revivals_refused += 1;
                            }
                            RESTARTING => {
                                assert!(
                                    live.is_live(i),
                                    "a restart did not make it live: {}",
                                    at()
                                );
                                revivals += 1;
                                restarted[i] = true;
                            }
                            _ => {}
                        }
                    }
                    Drop(i) => {
                        live.drop_dataset(i);
                        dropped[i] = true;
                    }
                    IsLive(i) => {
                        let got = live.is_live(i);
                        assert_eq!(got, before[i] == LIVE, "{}", at());
                        assert!(
                            !(got && dropped[i]),
                            "a dropped dataset read as live: {}",
                            at()
                        );
                        seen_live += usize::from(got && restarted[i]);
                    }
                    AnyUsable => {
                        let got = live.any_usable();
                        assert_eq!(got, !dropped.iter().all(|&d| d), "{}", at());
                        none_usable += usize::from(!got);
                    }
                }
                // DROPPED is final, and it is reached only through drop_dataset.
                for (i, &gone) in dropped.iter().enumerate() {
                    assert_eq!(flag(i) == DROPPED, gone, "dataset {i}: {}", at());
                    if gone {
                        assert!(!live.is_live(i), "dataset {i}: {}", at());
                    }
                }
            }
            assert!(
                !live.any_usable(),
                "both datasets end dropped: {schedule:?}"
            );
        });
        // 12! / (5! 3! 4!) = 27720 interleavings of the three threads.
        assert_eq!(visited, 27720);
        // Every case the checks distinguish does occur: a restart refused because the dataset
        // was dropped, a restart that makes a dataset live, the trainer reading a dataset live
        // after its restart, and the trainer finding nothing usable.
        assert!(revivals_refused > 0 && revivals > 0 && seen_live > 0 && none_usable > 0);
    }
}
