//! End-to-end runs of the whole runtime, in process, through the embedding API
//! (`Config::load`, `Runtime::start_with`, `RuntimeHandle::wait`) on the demo config
//! (BENCHMARKS.md sections 1, 2 and 5).
//!
//! - `overhead`: the same run under a static temperature mixture, MoS with COSSIM and MoS with
//!   DIFF, in turn (A B C A B C ...): steps/s and their ratio to static. MoS runs a probe
//!   forward pass every `scheduler.update_every` steps (`probe_size` examples per dataset):
//!   real compute, reported as its own share, so that what is left (the "stall") is visible.
//! - `stall`: a scheduler that sleeps `BENCH_STALL_MS` (default 2000) per update versus a normal
//!   one, both with the static temperature strategy (which sends its updates to the scheduler
//!   actor but runs no probe pass, so nothing but the scheduler differs), alternating.
//! - `loaders`: the real loader actors of the demo datasets draining into a consumer as fast as
//!   they can (tokenized examples/s, then batched with the trainer's padding), against what the
//!   trainer consumes (steps/s x batch) and its data-wait share from the runs above.
//!
//! Step times come from the run's own `run.jsonl` (`log_every = 1`: one line per step with its
//! seconds and its data wait), skipping the first `WARMUP_STEPS`; the final evaluation and
//! checkpoint are outside the loop and not counted.
//!
//! Usage: `cargo bench --bench runtime_e2e [-- overhead stall loaders]`; `BENCH_QUICK=1` for a
//! smoke run; `BENCH_E2E_STEPS`, `BENCH_E2E_ROUNDS` to size the runs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_usize, mean, median, progress, quick, table, verdict_at_least, verdict_at_most};
use mos_runtime::config::Config;
use mos_runtime::model::TokenBatch;
use mos_runtime::runtime::{prepare, Runtime, StartOptions};

/// Steps at the start of each run left out of the timing (allocation and cache warm-up).
const WARMUP_STEPS: usize = 5;

/// What one run's `run.jsonl` says about its steps.
#[derive(Clone, Debug, Default)]
struct RunStats {
    /// Steps timed (after the warm-up).
    steps: usize,
    /// Seconds of those steps, each including whatever the loop did after the step before
    /// (probe pass, report, adopting a mixture).
    seconds: f64,
    /// Seconds of the probe passes within them.
    probe_seconds: f64,
    /// Seconds the trainer waited for loaders within them.
    data_wait_seconds: f64,
    /// Mixture publishes in `mixture.jsonl` (updates the scheduler completed).
    publishes: usize,
    /// Training examples per step.
    batch: usize,
}

impl RunStats {
    fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds
    }
    /// Steps per second with the probe passes' time taken out.
    fn steps_per_second_without_probes(&self) -> f64 {
        self.steps as f64 / (self.seconds - self.probe_seconds)
    }
}

/// Reads `run.jsonl` and `mixture.jsonl` of a finished run.
fn read_run(dir: &Path, batch: usize) -> RunStats {
    let text = std::fs::read_to_string(dir.join("run.jsonl")).expect("run.jsonl");
    let mut st = RunStats {
        batch,
        ..RunStats::default()
    };
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("run.jsonl line");
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        match v["kind"].as_str() {
            Some("train") if step > WARMUP_STEPS => {
                st.steps += 1;
                st.seconds += v["step_seconds"].as_f64().unwrap_or(0.0);
                st.data_wait_seconds += v["data_wait_seconds"].as_f64().unwrap_or(0.0);
            }
            // A probe at step s runs after step s's log line, so its time is inside step
            // s + 1's. The loop sends no report at the final step, so every probe counted here
            // falls inside a timed step.
            Some("probe") if step >= WARMUP_STEPS => {
                st.probe_seconds += v["seconds"].as_f64().unwrap_or(0.0);
            }
            _ => {}
        }
    }
    st.publishes = std::fs::read_to_string(dir.join("mixture.jsonl"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0);
    st
}

/// Runs the demo config with `overrides` for `steps` steps in a fresh directory under `tmp`.
fn run(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    label: &str,
    steps: usize,
    overrides: &[&str],
) -> RunStats {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let dir = tmp.join(format!("{label}-{}", RUN.fetch_add(1, Ordering::Relaxed)));
    let mut sets: Vec<String> = vec![
        format!("runtime.max_steps={steps}"),
        format!("runtime.output_dir=\"{}\"", dir.display()),
        "runtime.log_every=1".into(),
        "runtime.eval_every=0".into(),
        "runtime.checkpoint_every=0".into(),
        "metrics.enabled=false".into(),
    ];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    let cfg = Config::load_with_env(&demo_config(), &sets, &[]).expect("demo config");
    let batch = cfg.training.batch_size;
    let summary = rt
        .block_on(async {
            let handle = Runtime::start_with(
                cfg,
                StartOptions {
                    fresh: true,
                    ..StartOptions::default()
                },
            )
            .await?;
            handle.wait().await
        })
        .expect("run");
    assert_eq!(summary.steps as usize, steps, "{label}: run stopped early");
    let st = read_run(&dir, batch);
    progress(&format!(
        "{label}: {:.2} steps/s ({} steps, probes {:.1} s, data wait {:.3} s, {} publishes)",
        st.steps_per_second(),
        st.steps,
        st.probe_seconds,
        st.data_wait_seconds,
        st.publishes
    ));
    // Keep the disk tidy: a run's weights and checkpoint are a few MB each.
    let _ = std::fs::remove_dir_all(&dir);
    st
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml")
}

/// Runs `rounds` rounds of every side in turn; returns each side's runs.
fn alternate_runs(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    steps: usize,
    rounds: usize,
    sides: &[(&str, Vec<&str>)],
) -> Vec<Vec<RunStats>> {
    let mut out = vec![Vec::new(); sides.len()];
    for _ in 0..rounds {
        for (i, (label, sets)) in sides.iter().enumerate() {
            out[i].push(run(rt, tmp, label, steps, sets));
        }
    }
    out
}

/// Median steps/s of a side's runs, with and without its probe passes.
fn rates(runs: &[RunStats]) -> (f64, f64) {
    let a: Vec<f64> = runs.iter().map(RunStats::steps_per_second).collect();
    let b: Vec<f64> = runs
        .iter()
        .map(RunStats::steps_per_second_without_probes)
        .collect();
    (median(&a), median(&b))
}

fn probe_share(runs: &[RunStats]) -> f64 {
    let p: f64 = runs.iter().map(|r| r.probe_seconds).sum();
    let s: f64 = runs.iter().map(|r| r.seconds).sum();
    p / s
}

fn section_overhead(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    steps: usize,
    rounds: usize,
) -> Vec<RunStats> {
    // Quick runs are too short for the default period: update often enough to exercise it.
    let update_every = env_usize("BENCH_UPDATE_EVERY", if quick() { 4 } else { 25 });
    let probe_size = env_usize("BENCH_PROBE_SIZE", 16);
    println!(
        "### 1. Scheduler overhead: static mixture vs MoS (demo model, {steps} steps per run, \
         {rounds} rounds alternating, update every {update_every} steps, probe {probe_size} \
         examples per dataset)\n"
    );
    let ue = format!("scheduler.update_every={update_every}");
    let ps = format!("scheduler.probe_size={probe_size}");
    let sides = [
        (
            "static",
            vec!["scheduler.strategy=\"temperature\"", ue.as_str()],
        ),
        (
            "mos-cossim",
            vec![
                "scheduler.strategy=\"mos\"",
                "scheduler.reward=\"cossim\"",
                ue.as_str(),
                ps.as_str(),
            ],
        ),
        (
            "mos-diff",
            vec![
                "scheduler.strategy=\"mos\"",
                "scheduler.reward=\"diff\"",
                "scheduler.ema=true",
                ue.as_str(),
                ps.as_str(),
            ],
        ),
    ];
    let runs = alternate_runs(rt, tmp, steps, rounds, &sides);
    let (base, _) = rates(&runs[0]);
    let mut rows = Vec::new();
    for ((label, _), r) in sides.iter().zip(&runs) {
        let (all, without) = rates(r);
        rows.push(vec![
            label.to_string(),
            format!("{all:.3}"),
            format!("{:.3}x", all / base),
            format!("{:.1}%", 100.0 * probe_share(r)),
            format!("{without:.3}"),
            format!("{:.3}x", without / base),
        ]);
    }
    table(
        &[
            "strategy",
            "steps/s",
            "vs static",
            "probe share of wall time",
            "steps/s without probe passes",
            "vs static, without probes",
        ],
        &rows,
    );
    let worst_all = (1..3)
        .map(|i| rates(&runs[i]).0 / base)
        .fold(f64::MAX, f64::min);
    let worst_stall = (1..3)
        .map(|i| rates(&runs[i]).1 / base)
        .fold(f64::MAX, f64::min);
    println!(
        "Target: MoS >= 0.98x static. Everything included: {} ({worst_all:.3}x). Scheduler \
         path alone (probe passes taken out): {} ({worst_stall:.3}x). The probe pass is a \
         forward pass over `probe_size` x datasets examples every `update_every` steps, on the \
         trainer's device by design (rewards need the current model); its share scales with \
         probe_size / (update_every x batch_size).\n",
        verdict_at_least(worst_all, 0.98),
        verdict_at_least(worst_stall, 0.98),
    );
    runs.into_iter().flatten().collect()
}

fn section_stall(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    steps: usize,
    rounds: usize,
) -> Vec<RunStats> {
    let delay = env_usize("BENCH_STALL_MS", 2000);
    let update_every = 5;
    println!(
        "### 2. Stall test: a scheduler sleeping {delay} ms per update vs a normal one \
         (demo model, temperature strategy, update every {update_every} steps, {steps} steps \
         per run, {rounds} rounds alternating)\n"
    );
    let ue = format!("scheduler.update_every={update_every}");
    let slow = format!("scheduler.debug_update_delay_ms={delay}");
    let sides = [
        ("normal", vec![ue.as_str()]),
        ("slow", vec![ue.as_str(), slow.as_str()]),
    ];
    let runs = alternate_runs(rt, tmp, steps, rounds, &sides);
    let (normal, _) = rates(&runs[0]);
    let (slow_rate, _) = rates(&runs[1]);
    let publishes =
        |r: &[RunStats]| mean(&r.iter().map(|x| x.publishes as f64).collect::<Vec<_>>());
    table(
        &["scheduler", "steps/s", "mixture publishes per run", "ratio"],
        &[
            vec![
                "normal".into(),
                format!("{normal:.3}"),
                format!("{:.0}", publishes(&runs[0])),
                "1.000x".into(),
            ],
            vec![
                format!("sleeping {delay} ms per update"),
                format!("{slow_rate:.3}"),
                format!("{:.0}", publishes(&runs[1])),
                format!("{:.3}x", slow_rate / normal),
            ],
        ],
    );
    println!(
        "Target: >= 0.99x: {} ({:.3}x). Fewer publishes show the slow scheduler fell behind \
         (its reports beyond the gate's quota were dropped and counted), while the trainer \
         went on with the mixture it had.\n",
        verdict_at_least(slow_rate / normal, 0.99),
        slow_rate / normal
    );
    runs.into_iter().flatten().collect()
}

/// Tokenized examples/s of the demo datasets' real loader actors draining into one consumer
/// for `seconds`, and the time to pad them into batches as the trainer does.
fn loader_rate(rt: &tokio::runtime::Runtime, seconds: f64) -> (f64, f64, usize) {
    let cfg = Config::load_with_env(&demo_config(), &[], &[]).expect("demo config");
    let prepared = prepare(cfg).expect("prepare demo datasets");
    let cfg = prepared.cfg.clone();
    let batch = cfg.training.batch_size;
    let pad = prepared.tokenizer.pad_id();
    let (examples, elapsed, batch_secs) = rt.block_on(async {
        let (receivers, actors) = common::spawn_loaders(&prepared).await;
        // Let every queue fill first, then count only what is produced while the consumer
        // drains them round-robin on its own thread, as fast as the loaders refill them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while receivers.iter().any(|r| !r.is_full()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued: usize = receivers.iter().map(|r| r.len()).sum();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let consumer = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut batch_secs = 0.0;
            let mut pending = Vec::with_capacity(batch);
            let t0 = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                for rx in &receivers {
                    if let Ok(ex) = rx.recv_timeout(Duration::from_millis(1)) {
                        n += 1;
                        pending.push(ex);
                        if pending.len() == batch {
                            let t = Instant::now();
                            let seqs: Vec<(&[u32], &[bool])> = pending
                                .iter()
                                .map(|e: &mos_runtime::data::Example| {
                                    (e.tokens.as_slice(), e.response_mask.as_slice())
                                })
                                .collect();
                            std::hint::black_box(TokenBatch::new(&seqs, pad));
                            batch_secs += t.elapsed().as_secs_f64();
                            pending.clear();
                        }
                    }
                }
            }
            (
                n.saturating_sub(queued as u64),
                t0.elapsed().as_secs_f64(),
                batch_secs,
            )
        });
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let out = consumer.join().expect("consumer");
        for (actor, handle) in actors {
            actor.stop(None);
            let _ = handle.await;
        }
        out
    });
    let per_batch = batch_secs / (examples as f64 / batch as f64).max(1.0);
    (examples as f64 / elapsed, per_batch, batch)
}

fn section_loaders(rt: &tokio::runtime::Runtime, seconds: f64, trainer_runs: &[RunStats]) {
    println!(
        "### 5. Loaders vs trainer (demo datasets and model; loaders drained for {seconds:.0} s)\n"
    );
    let (rate, per_batch, batch) = loader_rate(rt, seconds);
    let batched_rate = batch as f64 / (batch as f64 / rate + per_batch);
    let consumed: Vec<f64> = trainer_runs
        .iter()
        .map(|r| r.steps_per_second() * r.batch as f64)
        .collect();
    let consumed = median(&consumed);
    let wait: f64 = trainer_runs.iter().map(|r| r.data_wait_seconds).sum();
    let wall: f64 = trainer_runs.iter().map(|r| r.seconds).sum();
    let wait_share = wait / wall;
    table(
        &["quantity", "value"],
        &[
            vec![
                "loaders: tokenized examples/s (6 loader actors, one consumer)".into(),
                format!("{rate:.0}"),
            ],
            vec![
                format!("padding into a batch of {batch} (trainer's `TokenBatch::new`)"),
                format!("{:.1} us per batch", per_batch * 1e6),
            ],
            vec![
                "loaders: tokenized, batched examples/s".into(),
                format!("{batched_rate:.0}"),
            ],
            vec![
                "trainer consumes (median over the runs above), examples/s".into(),
                format!("{consumed:.0}"),
            ],
            vec![
                "ratio produced / consumed".into(),
                format!("{:.1}x", batched_rate / consumed),
            ],
            vec![
                format!(
                    "trainer data wait, share of step time ({} runs)",
                    trainer_runs.len()
                ),
                format!("{:.3}%", 100.0 * wait_share),
            ],
        ],
    );
    println!(
        "Targets: produced >= 10x consumed: {} ({:.1}x); data wait < 1% of wall time: {} \
         ({:.3}%). The loaders ran while nothing else did; during training they share the \
         cores with the trainer, which is why the prefetch queues (`data.prefetch`) matter \
         more than the raw rate.\n",
        verdict_at_least(batched_rate / consumed, 10.0),
        batched_rate / consumed,
        verdict_at_most(100.0 * wait_share, 1.0),
        100.0 * wait_share,
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let q = quick();
    // The fused CPU trainer runs the demo model at about 8 steps/s, so a run needs a few hundred
    // steps (and three rounds) to rise above the machine's own run-to-run noise (about 5%).
    let steps = env_usize("BENCH_E2E_STEPS", if q { WARMUP_STEPS + 10 } else { 300 });
    let rounds = env_usize("BENCH_E2E_ROUNDS", if q { 1 } else { 3 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut trainer_runs = Vec::new();
    if want("overhead") {
        trainer_runs.extend(section_overhead(&rt, tmp.path(), steps, rounds));
    }
    if want("stall") {
        let stall_steps = env_usize("BENCH_STALL_STEPS", if q { WARMUP_STEPS + 10 } else { 250 });
        let runs = section_stall(&rt, tmp.path(), stall_steps, rounds);
        trainer_runs.extend(runs);
    }
    if want("loaders") {
        if trainer_runs.is_empty() {
            trainer_runs.extend(
                alternate_runs(&rt, tmp.path(), steps, 1, &[("static", vec![])])[0].clone(),
            );
        }
        section_loaders(&rt, if q { 2.0 } else { 10.0 }, &trainer_runs);
    }
}
