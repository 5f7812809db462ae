//! End-to-end runs of the runtime on a tiny model: the loss falls, runs are deterministic, the
//! training loop never waits on a slow scheduler, and SIGTERM ends a run cleanly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mos_runtime::config::CpuKernels;
use mos_runtime::runtime::Runtime;

#[test]
fn tiny_model_loss_falls_and_eval_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let cfg = load_tiny(dir.path(), "run", 60, "");
    let summary = tokio_rt().block_on(async {
        let h = Runtime::start(cfg).await.unwrap();
        h.wait().await.unwrap()
    });
    assert_eq!(summary.steps, 60);
    assert!(
        summary.last_loss < summary.first_loss * 0.7,
        "loss {} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    let names: Vec<&str> = summary.eval.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["prose", "maths", "qa", "quotes"]);
    assert!(summary.eval.iter().all(|(_, l)| l.is_finite() && *l > 0.0));
    let out = dir.path().join("run");
    assert!(out.join("model.mpk").exists());
    let runlog = std::fs::read_to_string(out.join("run.jsonl")).unwrap();
    assert!(runlog.lines().any(|l| l.contains("\"kind\":\"eval\"")));
    // Static strategies publish through the scheduler too: one mixture line per update tick.
    let mixture = std::fs::read_to_string(out.join("mixture.jsonl")).unwrap();
    assert!(!mixture.is_empty());
}

fn first_pairs(path: &std::path::Path, n: usize) -> Vec<(usize, u32)> {
    #[derive(serde::Deserialize)]
    struct Line {
        samples: Vec<(usize, u32)>,
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .flat_map(|l| serde_json::from_str::<Line>(l).unwrap().samples)
        .take(n)
        .collect()
}

#[test]
fn same_seed_gives_the_same_sample_stream() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = "[scheduler]\nstrategy = \"temperature\"\ntemperature = 2.0";
    let runtime = tokio_rt();
    let mut streams = Vec::new();
    for (out, seed) in [("a", 7), ("b", 7), ("c", 8)] {
        let mut cfg = load_tiny(dir.path(), out, 50, extra);
        cfg.runtime.trace_samples = true;
        cfg.runtime.seed = seed;
        runtime.block_on(async {
            Runtime::start(cfg).await.unwrap().wait().await.unwrap();
        });
        streams.push(first_pairs(
            &dir.path().join(out).join("samples.jsonl"),
            200,
        ));
    }
    assert_eq!(streams[0].len(), 200);
    assert_eq!(streams[0], streams[1], "same seed, different stream");
    assert_ne!(streams[0], streams[2], "different seed, same stream");
    // Realised dataset frequencies follow the published mixture: chi-square over the 200 draws
    // against the prior recorded in mixture.jsonl (3 degrees of freedom, p = 0.001 -> 16.27).
    let log = dir.path().join("a").join("mixture.jsonl");
    let start = mos_runtime::runlog::read_all::<mos_runtime::mixture::MixtureLogLine>(&log)
        .unwrap()
        .into_iter()
        .find_map(|l| match l {
            mos_runtime::mixture::MixtureLogLine::Start(s) => Some(s),
            _ => None,
        })
        .unwrap();
    let mut counts = [0f64; 4];
    for &(d, _) in &streams[0] {
        counts[d] += 1.0;
    }
    let chi2: f64 = counts
        .iter()
        .zip(&start.prior)
        .map(|(c, p)| (c - 200.0 * p).powi(2) / (200.0 * p))
        .sum();
    assert!(
        chi2 < 16.27,
        "chi-square {chi2} for counts {counts:?} vs {:?}",
        start.prior
    );
}

#[test]
fn a_sleeping_scheduler_does_not_stop_training() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = "[scheduler]\nupdate_every = 2\ndebug_update_delay_ms = 2000";
    let cfg = load_tiny(dir.path(), "slow", 100_000, extra);
    tokio_rt().block_on(async {
        let h = Runtime::start(cfg).await.unwrap();
        // Wait until the first update tick (step 2) has been sent to the scheduler.
        let t0 = Instant::now();
        while h.step() < 3 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "training did not start"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s0 = h.step();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s1 = h.step();
        // The scheduler is still inside its 2 s sleep on the first update: nothing published.
        assert_eq!(
            h.mixture().version,
            0,
            "scheduler finished an update too early"
        );
        assert!(
            s1 >= s0 + 10,
            "training stalled while the scheduler slept: step {s0} -> {s1}"
        );
        h.stop();
        let summary = h.wait().await.unwrap();
        assert!(summary.interrupted);
    });
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_step_writes_outputs_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let out = dir.path().join("sig");
    let p = write_file(
        dir.path(),
        "sig.toml",
        &tiny_config(dir.path(), &out, 1_000_000, ""),
    );
    let child = std::process::Command::new(bin())
        .args(["--config", p.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    // Wait for training to be under way (the run log gets its first line at step 5).
    while !out.join("run.jsonl").exists()
        || std::fs::read_to_string(out.join("run.jsonl"))
            .unwrap()
            .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no training progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.join("model.mpk").exists(), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("stopped on request"));
    // The stop wrote a complete checkpoint at the step it stopped on.
    let (_, manifest) = mos_runtime::checkpoint::latest_valid(&out).expect("a checkpoint");
    assert!(manifest.step >= 5, "{err}");
}

/// The CPU runs with the fused trainer unless told otherwise, and both CPU trainers train the
/// same model the same way: the same first loss (same initial weights, same batch), losses
/// that stay together, and each checkpoint names the trainer that wrote it.
#[test]
fn fused_and_burn_cpu_trainers_run_the_same_training() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = "[scheduler]\nstrategy = \"temperature\"";
    let runtime = tokio_rt();
    let mut runs = Vec::new();
    for (out, kernels) in [("fused", None), ("burn", Some(CpuKernels::Burn))] {
        let mut cfg = load_tiny(dir.path(), out, 30, extra);
        // "fused" is the default: the first run leaves the key alone.
        assert_eq!(cfg.training.cpu_kernels, CpuKernels::Fused);
        if let Some(k) = kernels {
            cfg.training.cpu_kernels = k;
        }
        let summary = runtime.block_on(async {
            let h = Runtime::start(cfg).await.unwrap();
            h.wait().await.unwrap()
        });
        let ckpt = summary.last_checkpoint.clone().expect("a final checkpoint");
        let files: Vec<String> = walk(&ckpt);
        runs.push((summary, files));
    }
    let (fused, fused_files) = &runs[0];
    let (burn, burn_files) = &runs[1];
    assert!(
        (fused.first_loss - burn.first_loss).abs() < 1e-4 * burn.first_loss,
        "first loss {} (fused) vs {} (burn)",
        fused.first_loss,
        burn.first_loss
    );
    assert!(
        (fused.last_loss - burn.last_loss).abs() < 0.02 * burn.last_loss,
        "last loss {} (fused) vs {} (burn)",
        fused.last_loss,
        burn.last_loss
    );
    for ((name, a), (_, b)) in fused.eval.iter().zip(&burn.eval) {
        assert!(
            (a - b).abs() < 0.02 * b,
            "{name}: eval {a} (fused) vs {b} (burn)"
        );
    }
    assert!(fused_files
        .iter()
        .any(|f| f.ends_with("fused_trainer.json")));
    assert!(!burn_files.iter().any(|f| f.ends_with("fused_trainer.json")));
    assert!(burn_files.iter().any(|f| f.ends_with("optim_decay.mpk")));
}

/// Every file path under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}
