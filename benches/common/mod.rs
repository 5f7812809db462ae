//! Helpers shared by the `harness = false` benchmark drivers: timing, alternation, process
//! memory, and the Markdown they print (scripts/bench.sh collects it into BENCHMARKS.md).
//!
//! Each driver includes this file with `mod common;`, and not every driver uses every helper,
//! hence the `dead_code` allowance.
#![allow(dead_code)]

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use mos_runtime::actors::{LoaderActor, LoaderArgs};
use mos_runtime::data::Example;
use mos_runtime::runtime::Prepared;
use mos_runtime::seed::stream_seed;
use ractor::{Actor, ActorRef};

/// One started loader actor per prepared dataset, each filling its own bounded queue of
/// `data.prefetch` examples (as the runtime wires them), with the receivers in dataset order.
pub(crate) async fn spawn_loaders(
    prepared: &Prepared,
) -> (
    Vec<crossbeam_channel::Receiver<Example>>,
    Vec<(
        ActorRef<mos_runtime::actors::LoaderMsg>,
        tokio::task::JoinHandle<()>,
    )>,
) {
    let cfg = &prepared.cfg;
    let mut receivers = Vec::new();
    let mut actors = Vec::new();
    for (i, ds) in prepared.datasets.iter().enumerate() {
        let (tx, rx) = crossbeam_channel::bounded(cfg.data.prefetch);
        let (actor, handle) = Actor::spawn(
            None,
            LoaderActor,
            LoaderArgs {
                dataset_index: i,
                dataset: ds.clone(),
                tokenizer: prepared.tokenizer.clone(),
                template: cfg.model.chat_template,
                seq_len: cfg.training.seq_len,
                seed: stream_seed(cfg.runtime.seed, "data"),
                start_at: 0,
                position: Arc::new(AtomicU64::new(0)),
                sender: tx,
            },
        )
        .await
        .expect("spawn loader");
        receivers.push(rx);
        actors.push((actor, handle));
    }
    (receivers, actors)
}

/// True when `BENCH_QUICK=1`: every driver shrinks its sizes to a smoke run of seconds.
pub(crate) fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// An unsigned setting from the environment (`name`), or `default` when unset or unparsable.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Seconds taken by `f`.
pub(crate) fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed().as_secs_f64())
}

/// Median of `xs` (NaN when empty).
pub(crate) fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Percentile `p` in [0, 100] of `xs` by nearest rank (NaN when empty).
pub(crate) fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Mean of `xs` (NaN when empty).
pub(crate) fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Runs `rounds` rounds of every side in turn (A B C, A B C, ...) and returns each side's
/// measurements. Alternating makes a drift of the machine (another process, thermal state)
/// hit all sides alike instead of biasing whichever ran last.
pub(crate) fn alternate<S, F>(rounds: usize, sides: &mut [S], mut measure: F) -> Vec<Vec<f64>>
where
    F: FnMut(&mut S, usize) -> f64,
{
    let mut out = vec![Vec::with_capacity(rounds); sides.len()];
    for round in 0..rounds {
        for (i, side) in sides.iter_mut().enumerate() {
            out[i].push(measure(side, round));
        }
    }
    out
}

/// Resident set size of this process in bytes, from `VmRSS` in /proc/self/status (0 where
/// the file does not exist).
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Number of threads the compute pools use (rayon's global pool, which burn-flex and gemm
/// share).
pub(crate) fn threads() -> usize {
    rayon_threads()
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// "met" / "MISSED" for a target that wants `value >= target`.
pub(crate) fn verdict_at_least(value: f64, target: f64) -> &'static str {
    if value >= target {
        "met"
    } else {
        "MISSED"
    }
}

/// "met" / "MISSED" for a target that wants `value <= target`.
pub(crate) fn verdict_at_most(value: f64, target: f64) -> &'static str {
    if value <= target {
        "met"
    } else {
        "MISSED"
    }
}

/// A Markdown table printed to stdout.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

/// A progress line on stderr (the script keeps stdout for the Markdown).
pub(crate) fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}
