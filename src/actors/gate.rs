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

    /// The most messages admitted by [`ReportGate::try_acquire`].
    pub fn capacity(&self) -> usize {
        self.capacity
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
    use super::*;

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
}
