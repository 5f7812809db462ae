//! Bounded delivery in front of ractor's unbounded mailboxes.
//!
//! ractor mailboxes are unbounded, so a slow receiver could make its sender grow memory without
//! bound. A [`ReportGate`] counts the messages in flight towards one actor; a [`GatedSender`]
//! takes a slot before it casts and wraps the message in a [`Gated`] envelope that owns the
//! slot. The slot is released when the receiver opens the envelope, or when the envelope is
//! dropped for any other reason (a failed cast returns it inside the error, an actor that stops
//! drops its mailbox), so no path can leak a slot and desynchronise the count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;

use crate::telemetry;

/// Counts the messages in flight towards one actor. The training loop's sends use
/// [`ReportGate::try_acquire`]: when every slot is taken the report is dropped and counted in
/// `mos_reports_dropped_total`, so a slow receiver never makes the loop wait.
#[derive(Debug)]
pub struct ReportGate {
    in_flight: AtomicUsize,
    capacity: usize,
}

impl ReportGate {
    /// A gate admitting at most `capacity` messages in flight (at least one).
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

    /// Takes a slot regardless of capacity: for messages that must not be lost (rewards
    /// forwarded by the reward actor, checkpoint snapshots, deterministic runs).
    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases a slot. Saturates at zero, so a stray release cannot wrap the count.
    fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Messages currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One slot of a [`ReportGate`], released when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<ReportGate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A message with the gate slot it occupies. The receiving actor calls [`Gated::open`] first
/// thing in its handler, so the slot frees as soon as the message is being handled (what the
/// sender's capacity means: messages not yet picked up).
#[derive(Debug)]
pub struct Gated<M> {
    msg: M,
    permit: Permit,
}

impl<M> Gated<M> {
    /// Releases the slot and returns the message.
    pub fn open(self) -> M {
        drop(self.permit);
        self.msg
    }
}

/// Why a gated send did not reach the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Every slot was taken: the message was dropped and counted in `mos_reports_dropped_total`.
    #[error("the receiver has its quota of unprocessed messages: dropped")]
    Full,
    /// The actor has stopped.
    #[error("the receiving actor has stopped")]
    Gone,
}

/// The only way to send to a gated actor: an [`ActorRef`] whose message type is
/// [`Gated<M>`], and the gate that counts what is in flight towards it.
#[derive(Debug)]
pub struct GatedSender<M: Send + 'static> {
    actor: ActorRef<Gated<M>>,
    gate: Arc<ReportGate>,
}

impl<M: Send + 'static> Clone for GatedSender<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<M: Send + 'static> GatedSender<M> {
    /// A sender to `actor` through `gate`.
    pub fn new(actor: ActorRef<Gated<M>>, gate: Arc<ReportGate>) -> Self {
        Self { actor, gate }
    }

    /// Sends if a slot is free; otherwise drops `msg` and counts it.
    pub fn try_send(&self, msg: M) -> Result<(), SendError> {
        self.try_reserve().ok_or(SendError::Full)?.send(msg)
    }

    /// Sends whatever the number in flight (for messages that must not be lost).
    pub fn send(&self, msg: M) -> Result<(), SendError> {
        self.reserve().send(msg)
    }

    /// Takes a slot now and sends later: for a sender that must decide before it computes the
    /// message (the trainer checks the gate before a probe pass, so that a dropped report costs
    /// no forward pass). `None` when every slot is taken (counted as a dropped report).
    pub fn try_reserve(&self) -> Option<Slot<M>> {
        self.gate.try_acquire().then(|| self.slot())
    }

    /// Takes a slot whatever the number in flight.
    pub fn reserve(&self) -> Slot<M> {
        self.gate.acquire();
        self.slot()
    }

    fn slot(&self) -> Slot<M> {
        Slot {
            actor: self.actor.clone(),
            permit: Permit {
                gate: self.gate.clone(),
            },
        }
    }

    /// Messages in flight towards the actor.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// The actor behind the gate (to stop it, or to watch it).
    pub fn actor(&self) -> &ActorRef<Gated<M>> {
        &self.actor
    }
}

/// A taken slot, waiting for its message. Dropping it unsent releases the slot.
#[derive(Debug)]
pub struct Slot<M: Send + 'static> {
    actor: ActorRef<Gated<M>>,
    permit: Permit,
}

impl<M: Send + 'static> Slot<M> {
    /// Casts `msg` in the slot. A failed cast hands the envelope back inside ractor's error,
    /// which is dropped here, so the slot is released.
    pub fn send(self, msg: M) -> Result<(), SendError> {
        let Self { actor, permit } = self;
        actor
            .cast(Gated { msg, permit })
            .map_err(|_| SendError::Gone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::control::interleave::for_each_interleaving;

    #[test]
    fn a_permit_releases_its_slot_on_every_path() {
        let gate = Arc::new(ReportGate::new(2));
        assert!(gate.try_acquire());
        let opened = Gated {
            msg: 1u8,
            permit: Permit { gate: gate.clone() },
        };
        assert!(gate.try_acquire());
        let dropped = Permit { gate: gate.clone() };
        assert_eq!(gate.in_flight(), 2);
        assert!(!gate.try_acquire(), "a full gate refuses");
        assert_eq!(opened.open(), 1);
        assert_eq!(gate.in_flight(), 1);
        drop(dropped);
        assert_eq!(gate.in_flight(), 0);
        // A release past zero saturates instead of wrapping.
        gate.release();
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn acquire_ignores_capacity_but_is_still_counted() {
        let gate = ReportGate::new(1);
        gate.acquire();
        gate.acquire();
        assert_eq!(gate.in_flight(), 2);
        assert!(!gate.try_acquire());
    }

    /// One operation of the gate interleaving test. Each one the gate sees is a single atomic
    /// read-modify-write, so the interleavings of whole operations are every behaviour (see
    /// [`crate::control::interleave`]).
    #[derive(Debug, Clone, Copy)]
    enum GateOp {
        /// `try_acquire`, keeping the slot as a bare permit (what `try_reserve` does).
        TryReserve,
        /// Drops one bare permit if the thread holds one (an unsent slot dropped).
        Release,
        /// `acquire` whatever the number in flight, with the slot in an envelope (`send`).
        Reserve,
        /// `try_acquire`, with the slot in an envelope if admitted (`try_send`).
        TrySend,
        /// Opens one envelope if the thread holds one (the receiver's first act).
        Open,
        /// Drops one envelope unopened if the thread holds one (an actor stopped with it in its
        /// mailbox).
        DropUnopened,
    }

    /// What one simulated thread holds: its bare permits and its envelopes.
    #[derive(Default)]
    struct Held {
        permits: Vec<Permit>,
        envelopes: Vec<Gated<usize>>,
    }

    /// Every interleaving of three senders on a fresh gate of capacity 1, 2 and 3: thread A
    /// takes two slots with `try_acquire` and then releases what it got, thread B takes a slot
    /// with `acquire` (over capacity if need be) and opens its envelope, thread C tries a send
    /// and drops the envelope unopened. Together they release a slot on each path a real one
    /// takes: a permit dropped, an envelope opened and an envelope dropped.
    ///
    /// After every operation the count must be exact: `in_flight` equals the slots the threads
    /// hold, which is what was admitted minus what was released (so it never underflows, and a
    /// release never goes missing). `try_acquire` must admit exactly when fewer than `capacity`
    /// are in flight: never at or over capacity, and never refuse a free slot. At the end every
    /// slot is released.
    #[test]
    fn every_interleaving_of_gate_callers_keeps_the_count_exact() {
        use GateOp::*;
        let a: &[GateOp] = &[TryReserve, TryReserve, Release, Release];
        let b: &[GateOp] = &[Reserve, Open];
        let c: &[GateOp] = &[TrySend, DropUnopened];
        let programs = [a, b, c];
        let steps = programs.map(<[GateOp]>::len);

        for capacity in 1..=3 {
            let (mut refused, mut over_capacity) = (0, 0);
            let visited = for_each_interleaving(&steps, |schedule| {
                let gate = Arc::new(ReportGate::new(capacity));
                let mut held: [Held; 3] = Default::default();
                let mut pc = [0; 3];
                let (mut admitted, mut released) = (0usize, 0usize);
                for &t in schedule {
                    let op = programs[t][pc[t]];
                    pc[t] += 1;
                    let at =
                        || format!("{op:?} at capacity {capacity} in {schedule:?} up to {pc:?}");
                    // The harness runs one operation at a time, so this read is exact.
                    let before = gate.in_flight();
                    let h = &mut held[t];
                    match op {
                        TryReserve | TrySend => {
                            let got = gate.try_acquire();
                            assert_eq!(
                                got,
                                before < capacity,
                                "admitted {got} with {before} in flight: {}",
                                at()
                            );
                            if got {
                                admitted += 1;
                                let permit = Permit { gate: gate.clone() };
                                match op {
                                    TrySend => h.envelopes.push(Gated { msg: t, permit }),
                                    _ => h.permits.push(permit),
                                }
                            } else {
                                refused += 1;
                            }
                        }
                        Reserve => {
                            gate.acquire();
                            admitted += 1;
                            let permit = Permit { gate: gate.clone() };
                            h.envelopes.push(Gated { msg: t, permit });
                        }
                        Release => {
                            if let Some(permit) = h.permits.pop() {
                                drop(permit);
                                released += 1;
                            }
                        }
                        Open => {
                            if let Some(envelope) = h.envelopes.pop() {
                                assert_eq!(envelope.open(), t);
                                released += 1;
                            }
                        }
                        DropUnopened => {
                            if let Some(envelope) = h.envelopes.pop() {
                                drop(envelope);
                                released += 1;
                            }
                        }
                    }
                    let holding: usize = held
                        .iter()
                        .map(|h| h.permits.len() + h.envelopes.len())
                        .sum();
                    let expected = admitted
                        .checked_sub(released)
                        .expect("released more than admitted");
                    assert_eq!(holding, expected);
                    assert_eq!(gate.in_flight(), expected, "{}", at());
                    over_capacity += usize::from(expected > capacity);
                }
                assert!(held
                    .iter()
                    .all(|h| h.permits.is_empty() && h.envelopes.is_empty()));
                assert_eq!(gate.in_flight(), 0, "a slot leaked: {schedule:?}");
            });
            // 8! / (4! 2! 2!) = 420 interleavings of the three threads, at each capacity.
            assert_eq!(visited, 420, "capacity {capacity}");
            // At every capacity some interleavings fill the gate (try_acquire refuses) and some
            // push it over capacity with acquire, so both sides of the admission rule are
            // exercised.
            assert!(refused > 0 && over_capacity > 0, "capacity {capacity}");
        }
    }

    /// Real threads on a real gate: four threads each try to take and release a slot 10,000
    /// times on a gate of capacity 3, sampling the count while they hold it (or just failed to
    /// get one). The count is one atomic, so no sample may exceed the capacity, a thread that
    /// holds a slot must see at least its own, and every slot is back at the end. This does not
    /// prove anything the interleaving test does not, but it runs the real atomics under real
    /// contention, where a non-atomic update would lose counts. Without the yield the four
    /// threads rarely hold slots at the same time on a two-core machine: an off-by-one admission
    /// rule (`<=` for `<`) then went unnoticed, and with it the test catches that every run.
    #[test]
    fn four_threads_hammering_try_acquire_never_exceed_capacity() {
        const THREADS: usize = 4;
        const ITERATIONS: usize = 10_000;
        const CAPACITY: usize = 3;
        let gate = Arc::new(ReportGate::new(CAPACITY));
        let start = Barrier::new(THREADS);
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    // Start together, so that the threads contend from the first iteration.
                    start.wait();
                    for _ in 0..ITERATIONS {
                        let permit = gate.try_acquire().then(|| Permit { gate: gate.clone() });
                        // Yielding while holding the slot lets other threads run meanwhile, so
                        // that all of them hold one at the same time often, even on few cores.
                        std::thread::yield_now();
                        let seen = gate.in_flight();
                        assert!(seen <= CAPACITY, "{seen} in flight on a gate of {CAPACITY}");
                        if permit.is_some() {
                            assert!(seen >= 1, "a held slot was not counted");
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(permit);
                    }
                });
            }
        });
        assert_eq!(gate.in_flight(), 0);
        assert!(admitted.load(Ordering::Relaxed) > 0);
    }
}
