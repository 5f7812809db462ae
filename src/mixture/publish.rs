//! The publish point of the mixture: every strategy's output reaches the trainer, the runtime
//! handle, subscribers and the metrics through one [`MixtureBoard`].
//!
//! The board is an `ArcSwap` (wait-free reads, so the training loop can read it at every batch)
//! plus a `watch` channel for change notification. It holds no maths; it sits in `mixture/` so
//! that the actors, the service and the checkpoint code share one definition of a snapshot.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::telemetry;

/// One published mixture: the weights the trainer samples from until the next publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSnapshot {
    /// Increments by one at every publish; 0 is the prior published at start-up.
    pub version: u64,
    /// Training step whose report produced this mixture (0 for the prior).
    pub step: u64,
    /// Dataset names, in config order.
    pub names: Arc<[String]>,
    /// Sampling probabilities, in config order; they sum to 1.
    pub weights: Vec<f64>,
}

/// The publish point of the mixture: lock-free reads for the trainer, change notification for
/// subscribers (embedding hosts, tests).
#[derive(Debug, Clone)]
pub struct MixtureBoard {
    current: Arc<ArcSwap<MixtureSnapshot>>,
    tx: Arc<watch::Sender<Arc<MixtureSnapshot>>>,
}

impl MixtureBoard {
    /// A board holding `initial`.
    pub fn new(initial: MixtureSnapshot) -> Self {
        let initial = Arc::new(initial);
        let (tx, _rx) = watch::channel(initial.clone());
        Self {
            current: Arc::new(ArcSwap::new(initial)),
            tx: Arc::new(tx),
        }
    }

    /// The latest snapshot; wait-free, safe to call from the training loop.
    pub fn load(&self) -> Arc<MixtureSnapshot> {
        self.current.load_full()
    }

    /// A receiver that sees every later publish (intermediate ones may be skipped if the receiver
    /// is slow; the latest is never lost).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MixtureSnapshot>> {
        self.tx.subscribe()
    }

    /// Publishes new weights as the next version and exports them as metrics.
    pub fn publish(&self, step: u64, weights: Vec<f64>) -> Arc<MixtureSnapshot> {
        let prev = self.load();
        let snap = Arc::new(MixtureSnapshot {
            version: prev.version + 1,
            step,
            names: prev.names.clone(),
            weights,
        });
        self.current.store(snap.clone());
        export_weights(&snap);
        // A send error only means nobody subscribes; the ArcSwap is the source of truth.
        let _ = self.tx.send(snap.clone());
        snap
    }
}

/// Sets `mos_mixture_weight{dataset}` and `mos_mixture_version` from a snapshot.
pub fn export_weights(snap: &MixtureSnapshot) {
    for (name, w) in snap.names.iter().zip(&snap.weights) {
        metrics::gauge!(telemetry::MIXTURE_WEIGHT, "dataset" => name.clone()).set(*w);
    }
    metrics::gauge!(telemetry::MIXTURE_VERSION).set(snap.version as f64);
}
