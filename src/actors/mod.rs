//! The actors of a run, each with its closed message enum: one loader per dataset, the reward
//! actor, the scheduler actor, and the supervisor that starts and watches them.
//!
//! Every message to the reward and scheduler actors goes through a [`GatedSender`]: a try-send
//! that drops and counts when the receiver already has its quota of unprocessed messages, with
//! the slot owned by the message envelope so that no path can leak it. [`MixingPlan`] is the one
//! place that starts the reward + scheduler pair. None of these actors touches a tensor.

pub mod gate;
pub mod loader;
pub mod mixing;
pub mod reward;
pub mod scheduler;
pub(crate) mod supervisor;

#[cfg(test)]
mod loader_tests;

pub use gate::{Gated, GatedSender, ReportGate, SendError, Slot};
pub use loader::{LoaderActor, LoaderArgs, LoaderMsg, LoaderState, LoaderStats};
pub use mixing::{Mixing, MixingActors, MixingPlan, ResumedMixing};
pub use reward::{ProbeReport, RewardActor, RewardArgs, RewardMsg};
pub use scheduler::{SchedulerActor, SchedulerArgs, SchedulerMsg, SnapshotReply};
