//! End-to-end runs of the whole runtime, in process, through the embedding API
//! (`Config::load`, `Runtime::start_with`, `RuntimeHandle::wait`) on the demo config
//! (BENCHMARKS.md sections 1, 2 and 5).
//!
//! - `overhead`: the same run under a static temperature mixture, MoS with COSSIM and MoS with
//!   DIFF, in turn (A B C, B C A, C A B, ...): steps/s and their ratio to static. A side's time
//!   is the sum over steps of the step's median over rounds (every round of a side trains on
//!   the same seeded batches, so a cost paid at every update survives the median and a burst
//!   of host load does not); the ratio of whole runs paired by round is shown beside it. MoS
//!   runs a probe forward pass every `scheduler.update_every` steps (`probe_size` examples per
//!   dataset): real compute, reported as its own share, so that what is left (the "stall") is
//!   visible. Two settings: the paper's (batch 64, four datasets, the method's default period
//!   100 and probe size 64, where the paper measured its +20%) and the demo's (batch 16, six
//!   datasets, period 25, probe 16: six times the probe examples per trained example). A
//!   second static side, identical to the first, runs as an A/A control: its ratio to the
//!   first is the run's own resolution.
//! - `stall`: a scheduler that sleeps `BENCH_STALL_MS` (default 2000) per update versus a normal
//!   one, both with the static temperature strategy (which sends its updates to the scheduler
//!   actor but runs no probe pass, so nothing but the scheduler differs), alternating, timed
//!   the same way, with a second normal side as its A/A control.
//! - `loaders`: the real loader actors of the demo datasets draining into a consumer as fast as
//!   they can (tokenized examples/s, then batched with the trainer's padding), against what the
//!   trainer consumes (steps/s x batch) and its data-wait share from the runs above.
//!
//! Step times come from the run's own `run.jsonl` (`log_every = 1`: one line per step with its
//! seconds and its data wait), skipping the first `WARMUP_STEPS`; the final evaluation and
//! checkpoint are outside the loop and not counted.
//!
//! Usage: `cargo bench --bench runtime_e2e [-- overhead stall loaders]`; `BENCH_QUICK=1` for a
//! smoke run; `BENCH_E2E_STEPS`, `BENCH_E2E_ROUNDS` to size the demo-setting and stall runs,
//! `BENCH_PAPER_STEPS`, `BENCH_PAPER_ROUNDS` the paper-setting ones.

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
    /// Real (unpadded) tokens trained on within the timed steps.
    tokens: f64,
    /// Each timed step's seconds, in step order.
    step_seconds: Vec<f64>,
}

impl RunStats {
    fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds
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
                st.step_seconds
                    .push(v["step_seconds"].as_f64().unwrap_or(0.0));
                st.data_wait_seconds += v["data_wait_seconds"].as_f64().unwrap_or(0.0);
                // With one step per line, the line's rate times its seconds is that step's
                // real tokens.
                st.tokens += v["tokens_per_second"].as_f64().unwrap_or(0.0)
                    * v["step_seconds"].as_f64().unwrap_or(0.0);
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

/// Runs the demo config with `overrides` for `steps` steps in a fresh directory under `tmp`,
/// on the datasets named in `keep` (all of the demo's when empty).
fn run(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    label: &str,
    steps: usize,
    keep: &[&str],
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
    let mut cfg = Config::load_with_env(&demo_config(), &sets, &[]).expect("demo config");
    if !keep.is_empty() {
        cfg.datasets.retain(|d| keep.contains(&d.name.as_str()));
        assert_eq!(
            cfg.datasets.len(),
            keep.len(),
            "datasets {keep:?} in the demo config"
        );
    }
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

/// Runs `rounds` rounds of every side in turn (on the datasets in `keep`, all when empty),
/// rotating which side goes first; returns each side's runs, in round order.
fn alternate_runs(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    steps: usize,
    rounds: usize,
    keep: &[&str],
    sides: &[(&str, Vec<&str>)],
) -> Vec<Vec<RunStats>> {
    let mut out = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        // Each round starts with the next side (A B C, B C A, C A B, ...), so that no side
        // always runs first, right after the process freed the previous round's buffers.
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let (label, sets) = &sides[i];
            out[i].push(run(rt, tmp, label, steps, keep, sets));
        }
    }
    out
}

/// A side's speed against the base side's, as the median over rounds of the ratio of the two
/// runs of the same round, and each round's ratio. Pairing within a round cancels the
/// machine's slow drift (a run's neighbours in time share it; runs rounds apart do not).
fn paired_ratios(side: &[RunStats], base: &[RunStats]) -> (f64, Vec<f64>) {
    let per_round: Vec<f64> = side
        .iter()
        .zip(base)
        .map(|(s, b)| s.steps_per_second() / b.steps_per_second())
        .collect();
    (median(&per_round), per_round)
}

/// Seconds of a side's run taken step by step as the median over its rounds, summed: every
/// round of a side trains on the same batches (the data stream is seeded), so step k does the
/// same work in each. A cost the side pays every time at step k (a probe pass, a stall at an
/// update) is in every round and survives the median; a burst of load from the host, which
/// slows a few seconds of one round and not the same steps of the others, does not.
fn stepwise_seconds(runs: &[RunStats]) -> (f64, usize) {
    let steps = runs.iter().map(|r| r.step_seconds.len()).min().unwrap_or(0);
    let total = (0..steps)
        .map(|k| median(&runs.iter().map(|r| r.step_seconds[k]).collect::<Vec<_>>()))
        .sum();
    (total, steps)
}

/// A side's steps/s from [`stepwise_seconds`], with and without its probe passes (the median
/// run's probe seconds taken out).
fn stepwise_rate(runs: &[RunStats]) -> (f64, f64) {
    let (secs, steps) = stepwise_seconds(runs);
    let probe = median(&runs.iter().map(|x| x.probe_seconds).collect::<Vec<_>>());
    (steps as f64 / secs, steps as f64 / (secs - probe))
}

fn probe_share(runs: &[RunStats]) -> f64 {
    let p: f64 = runs.iter().map(|r| r.probe_seconds).sum();
    let s: f64 = runs.iter().map(|r| r.seconds).sum();
    p / s
}

/// The label of section 1's A/A control: a second static side.
const CONTROL: &str = "static-again (control)";

/// One configuration of the overhead comparison (section 1).
struct Setting {
    /// Its name in the report.
    name: &'static str,
    /// Where its numbers come from.
    origin: &'static str,
    steps: usize,
    rounds: usize,
    batch: usize,
    update_every: usize,
    probe_size: usize,
    /// The demo datasets it trains on (all six when empty).
    keep: &'static [&'static str],
}

impl Setting {
    fn datasets(&self) -> usize {
        if self.keep.is_empty() {
            6
        } else {
            self.keep.len()
        }
    }
    /// Probe examples run forward per trained example: the method's own extra compute, a
    /// forward pass being about a third of a training step.
    fn probe_per_trained(&self) -> f64 {
        (self.probe_size * self.datasets()) as f64 / (self.update_every * self.batch) as f64
    }
}

/// Static mixture vs MoS (COSSIM and DIFF) under one setting; returns the runs and the worst
/// MoS ratio with everything included.
fn section_overhead(rt: &tokio::runtime::Runtime, tmp: &Path, s: &Setting) -> (Vec<RunStats>, f64) {
    println!(
        "#### {}: batch {}, {} datasets, update every {} steps, probe {} examples per dataset \
         ({}); {} steps per run, {} rounds alternating\n",
        s.name,
        s.batch,
        s.datasets(),
        s.update_every,
        s.probe_size,
        s.origin,
        s.steps,
        s.rounds
    );
    let ue = format!("scheduler.update_every={}", s.update_every);
    let ps = format!("scheduler.probe_size={}", s.probe_size);
    let bs = format!("training.batch_size={}", s.batch);
    let static_sets = vec![
        "scheduler.strategy=\"temperature\"",
        ue.as_str(),
        bs.as_str(),
    ];
    let sides = [
        ("static", static_sets.clone()),
        // An A/A control: the static side once more, timed by the same estimator. Both static
        // sides do identical work, so its distance from 1.000x is what this run's noise alone
        // does to a ratio, the resolution to read the MoS rows against.
        (CONTROL, static_sets),
        (
            "mos-cossim",
            vec![
                "scheduler.strategy=\"mos\"",
                "scheduler.reward=\"cossim\"",
                ue.as_str(),
                ps.as_str(),
                bs.as_str(),
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
                bs.as_str(),
            ],
        ),
    ];
    let runs = alternate_runs(rt, tmp, s.steps, s.rounds, s.keep, &sides);
    let (base, _) = stepwise_rate(&runs[0]);
    let mut rows = Vec::new();
    let (mut worst_all, mut worst_stall, mut worst_paired) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut control, mut control_paired) = (f64::NAN, f64::NAN);
    for (i, ((label, _), r)) in sides.iter().zip(&runs).enumerate() {
        let (all, without) = stepwise_rate(r);
        let (paired, per_round) = paired_ratios(r, &runs[0]);
        if *label == CONTROL {
            (control, control_paired) = (all / base, paired);
        } else if i > 0 {
            worst_all = worst_all.min(all / base);
            worst_stall = worst_stall.min(without / base);
            worst_paired = worst_paired.min(paired);
        }
        let tokens: f64 = r.iter().map(|x| x.tokens).sum();
        let steps: usize = r.iter().map(|x| x.steps).sum();
        rows.push(vec![
            label.to_string(),
            format!("{all:.3}"),
            format!("{:.3}x", all / base),
            format!("{:.1}%", 100.0 * probe_share(r)),
            format!("{:.3}x", without / base),
            format!("{paired:.3}x"),
            per_round
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            format!("{:.0}", tokens / steps.max(1) as f64),
        ]);
    }
    table(
        &[
            "strategy",
            "steps/s (step-wise median of rounds)",
            "vs static",
            "probe share of wall time",
            "vs static, without probe passes",
            "vs static, whole runs paired by round (median)",
            "each round",
            "real tokens per step",
        ],
        &rows,
    );
    println!(
        "Target: MoS >= 0.98x static. Everything included: {} ({worst_all:.3}x; whole runs \
         paired by round: {worst_paired:.3}x). Scheduler path alone (probe passes taken out): \
         {} ({worst_stall:.3}x). Resolution of this run: the second static side, identical \
         work, came out at {control:.3}x (whole runs paired: {control_paired:.3}x); a MoS \
         ratio that far from the first static side is within what noise alone does here. \
         Probe examples run forward per trained example: {:.3} (probe_size x datasets / \
         (update_every x batch_size)); a forward pass costs about a third of a training step, \
         so the probes' expected share is about {:.1}%.\n",
        verdict_at_least(worst_all, 0.98),
        verdict_at_least(worst_stall, 0.98),
        s.probe_per_trained(),
        100.0 * s.probe_per_trained() / 3.0 / (1.0 + s.probe_per_trained() / 3.0),
    );
    (runs.into_iter().flatten().collect(), worst_all)
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
    // A second normal side, identical work, is the A/A control: its distance from the first
    // is what host noise alone does to this ratio in this very run.
    let sleeping = format!("sleeping {delay} ms per update");
    let sides = [
        ("normal", vec![ue.as_str()]),
        (sleeping.as_str(), vec![ue.as_str(), slow.as_str()]),
        ("normal again (control)", vec![ue.as_str()]),
    ];
    let runs = alternate_runs(rt, tmp, steps, rounds, &[], &sides);
    let (normal, _) = stepwise_rate(&runs[0]);
    let publishes =
        |r: &[RunStats]| mean(&r.iter().map(|x| x.publishes as f64).collect::<Vec<_>>());
    let mut rows = Vec::new();
    let mut ratios = [1.0f64; 3];
    for (i, ((label, _), r)) in sides.iter().zip(&runs).enumerate() {
        let (rate, _) = stepwise_rate(r);
        ratios[i] = rate / normal;
        let (paired, per_round) = paired_ratios(r, &runs[0]);
        rows.push(vec![
            label.to_string(),
            format!("{rate:.3}"),
            format!("{:.0}", publishes(r)),
            format!("{:.3}x", ratios[i]),
            format!("{paired:.3}x"),
            if i == 0 {
                String::new()
            } else {
                per_round
                    .iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        ]);
    }
    table(
        &[
            "scheduler",
            "steps/s (step-wise median of rounds)",
            "mixture publishes per run",
            "ratio",
            "whole runs paired by round (median)",
            "each round",
        ],
        &rows,
    );
    println!(
        "Target: >= 0.99x: {} ({:.3}x). Resolution of this run: the second normal side, \
         identical work, came out at {:.3}x; a ratio that far from 1 is within what noise alone \
         does here. Fewer publishes show the slow scheduler fell behind (its reports beyond the \
         gate's quota were dropped and counted), while the trainer went on with the mixture it \
         had.\n",
        verdict_at_least(ratios[1], 0.99),
        ratios[1],
        ratios[2],
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
        // Two settings. The paper's: its batch (64) and number of datasets (4), with the
        // method's default update period and probe size (100 and 64, ../shared/method.md),
        // which is where the paper measured its +20%. The demo's: six times as many probe
        // examples per trained example (small batches, six datasets), which shows how the
        // probes' share scales. A paper-setting run is 100 timed steps and so holds exactly
        // one probe pass; more, shorter rounds keep the machine's drift out of the ratio.
        let paper = Setting {
            name: "Paper setting",
            origin:
                "the paper's batch and dataset count, the method's default period and probe size",
            steps: env_usize("BENCH_PAPER_STEPS", if q { WARMUP_STEPS + 10 } else { 105 }),
            rounds: env_usize("BENCH_PAPER_ROUNDS", if q { 1 } else { 7 }),
            batch: if q { 16 } else { 64 },
            update_every: if q { 4 } else { 100 },
            probe_size: if q { 16 } else { 64 },
            keep: &["maths", "code", "qa", "prose"],
        };
        let demo = Setting {
            name: "Demo setting",
            origin: "configs/demo.toml's batch, datasets and period",
            steps,
            rounds,
            batch: 16,
            update_every: env_usize("BENCH_UPDATE_EVERY", if q { 4 } else { 25 }),
            probe_size: env_usize("BENCH_PROBE_SIZE", 16),
            keep: &[],
        };
        println!(
            "### 1. Scheduler overhead: static mixture vs MoS (demo model, steps/s from the \
             runs' own step times)\n"
        );
        let (_, paper_ratio) = section_overhead(&rt, tmp.path(), &paper);
        let (runs, demo_ratio) = section_overhead(&rt, tmp.path(), &demo);
        println!(
            "Section 1 in one line: MoS vs static, everything included, {paper_ratio:.3}x at \
             the paper's setting and {demo_ratio:.3}x at the demo's.\n"
        );
        trainer_runs.extend(runs);
    }
    if want("stall") {
        let stall_steps = env_usize("BENCH_STALL_STEPS", if q { WARMUP_STEPS + 10 } else { 250 });
        let runs = section_stall(&rt, tmp.path(), stall_steps, rounds);
        trainer_runs.extend(runs);
    }
    if want("loaders") {
        if trainer_runs.is_empty() {
            trainer_runs.extend(
                alternate_runs(&rt, tmp.path(), steps, 1, &[], &[("static", vec![])])[0].clone(),
            );
        }
        section_loaders(&rt, if q { 2.0 } else { 10.0 }, &trainer_runs);
    }
}
