//! A host's own trainer (a toy loop, no burn, no loaders) driving mos-runtime's scheduler and
//! reward actors directly: it sends them probe statistics and reads mixture snapshots.
//!
//! ```sh
//! cargo run --release --example custom_trainer            # writes target/custom-trainer/mixture.jsonl
//! cargo run --release -- replay --log target/custom-trainer/mixture.jsonl
//! ```
//!
//! The wiring is the one `Runtime::start` builds for the burn trainer, from the same
//! `MixingPlan`: a `MixtureBoard` the trainer reads lock-free, a `RewardActor` that turns
//! per-example NLLs into DIFF rewards (with the EMA), and a `SchedulerActor` that runs the
//! REINFORCE update, writes `mixture.jsonl` and publishes. A real trainer never waits for an update; this one waits after each probe only so
//! that its printout shows every mixture.

use std::time::Duration;

use mos_runtime::actors::{MixingPlan, ProbeReport, RewardMsg, SendError};
use mos_runtime::config::{RewardKind, SchedulerConfig, Strategy};
use mos_runtime::mixture::{MixtureSampler, MosScheduler};
use mos_runtime::seed::stream_seed;

/// (name, training examples, initial loss, learning speed per 1000 examples)
const DATASETS: [(&str, u64, f64, f64); 3] = [
    ("maths", 20_000, 3.2, 0.2),
    ("code", 5_000, 3.5, 0.8),
    ("chat", 12_000, 2.8, 2.0),
];
const PROBE: usize = 8;
const STEPS: u64 = 400;
const UPDATE_EVERY: u64 = 40;
const BATCH: usize = 16;

/// The toy model: per-example NLL of probe example `j` of dataset `i` after `seen` examples.
fn nll(i: usize, j: usize, seen: u64) -> f64 {
    let (_, _, start, speed) = DATASETS[i];
    let example = 0.05 * (j as f64 - PROBE as f64 / 2.0);
    (start + example) * (0.4 + 0.6 * (-speed * seen as f64 / 1000.0).exp())
}

fn probe(seen: &[u64]) -> Vec<Vec<f64>> {
    (0..DATASETS.len())
        .map(|i| (0..PROBE).map(|j| nll(i, j, seen[i])).collect())
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/custom-trainer".to_string()),
    );
    std::fs::create_dir_all(&out)?;
    let log_path = out.join("mixture.jsonl");
    let _ = std::fs::remove_file(&log_path);

    let settings = SchedulerConfig {
        strategy: Strategy::Mos,
        reward: RewardKind::Diff,
        ema: true,
        scorer_lr: 1e-3,
        ..SchedulerConfig::default()
    };
    let names: Vec<String> = DATASETS.iter().map(|d| d.0.to_string()).collect();
    let sizes: Vec<u64> = DATASETS.iter().map(|d| d.1).collect();
    let seed = stream_seed(7, "scheduler");
    let mos = MosScheduler::new(&settings, &sizes, None, seed)?;

    // Bounded-mailbox emulation: a report the actors have no room for is dropped, not queued.
    let actors = MixingPlan::new(
        names.clone(),
        sizes,
        settings,
        seed,
        mos_runtime::mixture::Strategy::Mos(Box::new(mos)),
        log_path.clone(),
    )
    .spawn(None)
    .await?;
    let board = actors.mixing.board.clone();
    let reward = actors
        .mixing
        .reward
        .clone()
        .ok_or("a MoS plan starts a reward actor")?;
    let send = |report: ProbeReport| -> Result<bool, Box<dyn std::error::Error>> {
        match reward.try_send(RewardMsg::Probe(report)) {
            Ok(()) => Ok(true),
            Err(SendError::Full) => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    let n = DATASETS.len();
    let mut seen = vec![0u64; n];
    // theta_0: the probe statistics of the untrained model, sent once.
    send(ProbeReport {
        step: 0,
        initial: true,
        nll: probe(&seen),
        embeddings: Vec::new(),
        counts: vec![0; n],
        seconds: 0.0,
    })?;

    let mut sampler = MixtureSampler::new(stream_seed(7, "data"));
    let mut updates = board.subscribe();
    let mut counts = vec![0u64; n];
    for step in 1..=STEPS {
        let mix = board.load(); // lock-free, every batch
        for i in sampler.draw_n(&mix.weights, BATCH) {
            counts[i] += 1;
            seen[i] += 1;
        }
        if step % UPDATE_EVERY == 0 {
            let sent = send(ProbeReport {
                step,
                initial: false,
                nll: probe(&seen),
                embeddings: Vec::new(),
                counts: std::mem::replace(&mut counts, vec![0; n]),
                seconds: 0.0,
            })?;
            if sent {
                tokio::time::timeout(Duration::from_secs(10), updates.changed()).await??;
                let m = updates.borrow_and_update().clone();
                let w: Vec<String> = names
                    .iter()
                    .zip(&m.weights)
                    .map(|(n, w)| format!("{n}={w:.4}"))
                    .collect();
                println!("step {step:4} version {:2}: {}", m.version, w.join(" "));
            }
        }
    }
    actors.stop(Duration::from_secs(10)).await;

    let replayed = mos_runtime::replay::replay(&log_path)?;
    println!(
        "{}: {} updates, replayed bit for bit",
        log_path.display(),
        replayed.updates
    );
    Ok(())
}
