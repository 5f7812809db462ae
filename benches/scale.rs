//! Scale in datasets (BENCHMARKS.md section 6): the MoS scheduler's update latency and the
//! process memory with 4, 64 and 1024 datasets, loaders included.
//!
//! - Update latency, in two measurements. The maths alone: `MosScheduler::rewards_from_probes`
//!   then `update` (the work of one update, COSSIM and DIFF, logits scorer, the default 200
//!   Adam steps). And the actor round trip: a `ProbeReport` cast to the real `RewardActor`,
//!   turned into rewards, sent to the real `SchedulerActor`, updated, logged to `mixture.jsonl`
//!   and published on the `MixtureBoard`, timed until a subscriber sees the new version.
//! - Memory: `VmRSS` of this process before and after loading N small generated datasets, and
//!   after starting their N real loader actors (each an actor plus its producer thread) and
//!   letting every bounded queue (`data.prefetch` examples) fill, so each loader is idle and
//!   full; divided by N.
//!
//! Usage: `cargo bench --bench scale [-- update memory]`; `BENCH_QUICK=1` for a smoke run;
//! `BENCH_SCALE_COUNTS=4,64,1024` chooses the dataset counts.

mod common;

use std::path::Path;

use std::time::{Duration, Instant};

use common::{median, percentile, progress, quick, rss_bytes, table, verdict_at_most};
use mos_runtime::actors::{MixingPlan, ProbeReport, RewardMsg};
use mos_runtime::config::{Config, RewardKind, SchedulerConfig, Strategy};
use mos_runtime::mixture::{MosScheduler, ProbeInput};
use mos_runtime::runtime::prepare;
use mos_runtime::seed::stream_seed;

/// Probe examples per dataset and embedding width: the demo model's (`d_model` 128) with the
/// benchmark's probe size.
const PROBE: usize = 16;
const DIM: usize = 128;

/// A deterministic value in (0, 1] for synthetic probe statistics.
fn unit(i: usize, j: usize, salt: usize) -> f64 {
    let x = (i * 7919 + j * 104_729 + salt * 1_299_709) % 10_007;
    (x as f64 + 1.0) / 10_007.0
}

fn settings(reward: RewardKind) -> SchedulerConfig {
    SchedulerConfig {
        strategy: Strategy::Mos,
        reward,
        ema: true,
        ..SchedulerConfig::default()
    }
}

fn embeddings(n: usize, salt: usize) -> Vec<Vec<Vec<f32>>> {
    (0..n)
        .map(|i| {
            (0..PROBE)
                .map(|j| {
                    (0..DIM)
                        .map(|k| unit(i, j * DIM + k, salt) as f32 - 0.5)
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn nlls(n: usize, salt: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| (0..PROBE).map(|j| 1.0 + 2.0 * unit(i, j, salt)).collect())
        .collect()
}

/// Seconds of `rewards_from_probes` + `update` over `reps` updates with changing inputs.
fn maths_latency(n: usize, reward: RewardKind, reps: usize) -> Vec<f64> {
    let sizes = vec![1000u64; n];
    let mut mos = MosScheduler::new(&settings(reward), &sizes, None, 1).expect("scheduler");
    let initial: Vec<Vec<f64>> = nlls(n, 0)
        .iter()
        .map(|v| v.iter().map(|x| x.exp()).collect())
        .collect();
    (0..reps)
        .map(|r| {
            // Inputs are built outside the timed region: the reward actor receives them ready.
            let input = match reward {
                RewardKind::Cossim => ProbeInput::Embeddings(
                    embeddings(n, r + 1)
                        .iter()
                        .map(|ex| {
                            (0..DIM)
                                .map(|k| {
                                    ex.iter().map(|e| f64::from(e[k])).sum::<f64>() / PROBE as f64
                                })
                                .collect()
                        })
                        .collect(),
                ),
                RewardKind::Diff => ProbeInput::Perplexities {
                    now: nlls(n, r + 1)
                        .iter()
                        .map(|v| v.iter().map(|x| x.exp()).collect())
                        .collect(),
                    initial: initial.clone(),
                },
                RewardKind::Constant => unreachable!("the bench times the probing rewards"),
            };
            let t0 = Instant::now();
            let out = mos.rewards_from_probes(&input).expect("rewards");
            let probs = mos.update(&out.smoothed).expect("update");
            let s = t0.elapsed().as_secs_f64();
            std::hint::black_box(probs);
            s
        })
        .collect()
}

/// Seconds from casting a probe report to the reward actor until the scheduler's publish is
/// seen on the board, over `reps` reports sent one after another.
async fn actor_latency(n: usize, reward: RewardKind, reps: usize, tmp: &Path) -> Vec<f64> {
    let settings = settings(reward);
    let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let sizes = vec![1000u64; n];
    let seed = stream_seed(7, "scheduler");
    let mos = MosScheduler::new(&settings, &sizes, None, seed).expect("scheduler");
    let log_path = tmp.join(format!("mixture-{n}-{reward:?}.jsonl"));
    let actors = MixingPlan::new(
        names,
        sizes,
        settings,
        seed,
        mos_runtime::mixture::Strategy::Mos(Box::new(mos)),
        log_path,
    )
    .spawn(None)
    .await
    .expect("scheduler and reward actors");
    let board = actors.mixing.board.clone();
    let reward_actor = actors.mixing.reward.clone().expect("reward actor");
    let report = |step: u64, initial: bool, salt: usize| ProbeReport {
        step,
        initial,
        nll: if reward == RewardKind::Diff {
            nlls(n, salt)
        } else {
            Vec::new()
        },
        embeddings: if reward == RewardKind::Cossim {
            embeddings(n, salt)
        } else {
            Vec::new()
        },
        counts: vec![1; n],
        seconds: 0.0,
    };
    let mut updates = board.subscribe();
    // theta_0 first (DIFF needs it; it yields no publish).
    reward_actor
        .try_send(RewardMsg::Probe(report(0, true, 0)))
        .expect("an idle reward actor admits a report");
    let mut out = Vec::with_capacity(reps);
    for r in 0..reps {
        let msg = RewardMsg::Probe(report(r as u64 + 1, false, r + 1));
        let slot = loop {
            match reward_actor.try_reserve() {
                Some(slot) => break slot,
                None => tokio::time::sleep(Duration::from_micros(100)).await,
            }
        };
        let t0 = Instant::now();
        slot.send(msg).expect("send");
        tokio::time::timeout(Duration::from_secs(30), updates.changed())
            .await
            .expect("publish within 30 s")
            .expect("board open");
        out.push(t0.elapsed().as_secs_f64());
        updates.borrow_and_update();
    }
    actors.stop(Duration::from_secs(30)).await;
    out
}

fn section_update(counts: &[usize], reps: usize, rt: &tokio::runtime::Runtime, tmp: &Path) {
    println!(
        "### 6b. Scheduler update latency by number of datasets (logits scorer, 200 Adam steps, \
         EMA on; {PROBE} probe examples per dataset, embeddings of {DIM}; median and p99 of \
         {reps} updates)\n"
    );
    let mut rows = Vec::new();
    let mut worst_1024: f64 = 0.0;
    for &n in counts {
        for reward in [RewardKind::Cossim, RewardKind::Diff] {
            progress(&format!("update latency: {n} datasets, {reward:?}"));
            let maths = maths_latency(n, reward, reps);
            let actor = rt.block_on(actor_latency(n, reward, reps, tmp));
            if n == *counts.last().unwrap_or(&0) {
                worst_1024 = worst_1024.max(median(&actor)).max(median(&maths));
            }
            rows.push(vec![
                n.to_string(),
                format!("{reward:?}").to_lowercase(),
                format!("{:.3}", median(&maths) * 1e3),
                format!("{:.3}", percentile(&maths, 99.0) * 1e3),
                format!("{:.3}", median(&actor) * 1e3),
                format!("{:.3}", percentile(&actor, 99.0) * 1e3),
            ]);
        }
    }
    table(
        &[
            "datasets",
            "reward",
            "maths ms (median)",
            "maths ms (p99)",
            "actor round trip ms (median)",
            "actor round trip ms (p99)",
        ],
        &rows,
    );
    println!(
        "Target: an update under 10 ms at {} datasets: {} (median {:.3} ms, the slower of the \
         two measurements). The trainer never waits for it either way (section 2).\n",
        counts.last().copied().unwrap_or(0),
        verdict_at_most(worst_1024 * 1e3, 10.0),
        worst_1024 * 1e3
    );
}

/// Writes `n` small JSONL datasets and a config naming them; returns the config's path.
fn generate(n: usize, dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dataset dir");
    let mut toml = String::from(
        "[runtime]\nseed = 1\n[model]\ntokenizer = \"byte\"\nchat_template = \"plain\"\n\
         [training]\nseq_len = 96\n[data]\nprefetch = 256\neval_fraction = 0.0\n",
    );
    for i in 0..n {
        let path = dir.join(format!("d{i}.jsonl"));
        let body: String = (0..40)
            .map(|j| {
                format!(
                    "{{\"prompt\": \"question {j} of dataset {i}: what is {i} plus {j}?\", \
                     \"response\": \"{i} plus {j} is {}.\"}}\n",
                    i + j
                )
            })
            .collect();
        std::fs::write(&path, body).expect("write dataset");
        toml.push_str(&format!(
            "[[datasets]]\nname = \"d{i}\"\npath = \"{}\"\nformat = \"jsonl\"\n",
            path.display()
        ));
    }
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, toml).expect("write config");
    cfg
}

/// (RSS per loaded dataset, RSS per idle loader with a full queue, queue capacity), in bytes.
fn memory(n: usize, rt: &tokio::runtime::Runtime, tmp: &Path) -> (f64, f64, usize) {
    let cfg_path = generate(n, &tmp.join(format!("data-{n}")));
    let cfg = Config::load_with_env(&cfg_path, &[], &[]).expect("config");
    let before = rss_bytes();
    let prepared = prepare(cfg).expect("prepare");
    let loaded = rss_bytes();
    let cfg = prepared.cfg.clone();
    let (receivers, actors) = rt.block_on(common::spawn_loaders(&prepared));
    // Wait until every queue is full: the loaders are then idle, blocked on their queue.
    let deadline = Instant::now() + Duration::from_secs(120);
    while receivers.iter().any(|r| !r.is_full()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = rss_bytes();
    rt.block_on(async {
        for (actor, handle) in actors {
            actor.stop(None);
            let _ = handle.await;
        }
    });
    drop(receivers);
    drop(prepared);
    let per_dataset = loaded.saturating_sub(before) as f64 / n as f64;
    let per_loader = running.saturating_sub(loaded) as f64 / n as f64;
    (per_dataset, per_loader, cfg.data.prefetch)
}

fn section_memory(counts: &[usize], rt: &tokio::runtime::Runtime, tmp: &Path) {
    println!(
        "### 6a. Memory by number of datasets (RSS of this process; generated datasets of 40 \
         prompt/response records, byte tokenizer, seq 96)\n"
    );
    let mut rows = Vec::new();
    let mut largest = 0.0;
    for &n in counts {
        progress(&format!("memory: {n} datasets"));
        let (per_dataset, per_loader, prefetch) = memory(n, rt, tmp);
        largest = per_loader;
        rows.push(vec![
            n.to_string(),
            format!("{:.1}", per_dataset / 1024.0),
            format!("{:.1}", per_loader / 1024.0),
            format!("{prefetch}"),
        ]);
    }
    table(
        &[
            "datasets",
            "KiB per loaded dataset",
            "KiB per idle loader (actor + thread + full queue)",
            "queue capacity (examples)",
        ],
        &rows,
    );
    println!(
        "Target: memory per idle loader < 1 MB: {} ({:.1} KiB at the largest count). Most of it is the full \
         queue of tokenized examples (`data.prefetch`); the producer thread's stack is only \
         touched a few pages deep. The counts run in one process, smallest first, so a row can \
         reuse memory an earlier row freed; the largest row is mostly fresh allocations and the \
         one to read.\n",
        verdict_at_most(largest, 1024.0 * 1024.0),
        largest / 1024.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let q = quick();
    let counts: Vec<usize> = match std::env::var("BENCH_SCALE_COUNTS") {
        Ok(list) => list
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect(),
        Err(_) if q => vec![4, 64],
        Err(_) => vec![4, 64, 1024],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    // Memory first, while the allocator has not yet been grown by the latency runs.
    if want("memory") {
        section_memory(&counts, &rt, tmp.path());
    }
    if want("update") {
        section_update(&counts, if q { 5 } else { 50 }, &rt, tmp.path());
    }
}
