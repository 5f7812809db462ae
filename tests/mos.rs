//! The MoS scheduler end to end on a tiny model: the mixture moves away from the prior smoothly
//! and within bounds, `replay` reproduces it bit for bit, and probes never change which training
//! examples are drawn.

mod common;

use common::*;
use mos_runtime::config::Config;
use mos_runtime::mixture::{MixtureLogLine, UpdateRecord};
use mos_runtime::runtime::Runtime;

fn run(cfg: Config) {
    tokio_rt().block_on(async { Runtime::start(cfg).await.unwrap().wait().await.unwrap() });
}

fn updates(path: &std::path::Path) -> Vec<UpdateRecord> {
    mos_runtime::runlog::read_all::<MixtureLogLine>(path)
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            MixtureLogLine::Update(u) => Some(u),
            MixtureLogLine::Start(_) => None,
        })
        .collect()
}

fn check_trajectory(reward: &str, ema: bool) {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = format!(
        "[scheduler]\nstrategy = \"mos\"\nreward = \"{reward}\"\nema = {ema}\nupdate_every = 4\nprobe_size = 8\nscorer_lr = 0.001"
    );
    let cfg = load_tiny(dir.path(), "mos", 48, &extra);
    run(cfg);
    let log = dir.path().join("mos").join("mixture.jsonl");
    let ups = updates(&log);
    assert!(ups.len() >= 8, "only {} updates", ups.len());
    let prior = ups[0].before.clone();
    for u in &ups {
        assert_eq!(u.raw.len(), 4);
        assert!(u.raw.iter().all(|r| r.is_finite()));
        let sum: f64 = u.after.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "mixture sums to {sum}");
        assert!(u.after.iter().all(|&w| w > 0.0 && w < 1.0), "{:?}", u.after);
        // Smooth: one update moves no weight by more than a few points.
        let step = u
            .before
            .iter()
            .zip(&u.after)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(step < 0.1, "jump of {step} at step {}", u.step);
    }
    let last = &ups.last().unwrap().after;
    let moved = prior
        .iter()
        .zip(last)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "mixture did not move from the prior: {moved}");
    let report = mos_runtime::replay::replay(&log).unwrap();
    assert_eq!(report.updates, ups.len());
    assert_eq!(report.learned, ups.len());
    assert_eq!(&report.last, last);
}

#[test]
fn mos_cossim_ema_moves_the_mixture_and_replays_exactly() {
    check_trajectory("cossim", true);
}

#[test]
fn mos_diff_moves_the_mixture_and_replays_exactly() {
    check_trajectory("diff", false);
}

#[test]
fn replay_detects_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra =
        "[scheduler]\nstrategy = \"mos\"\nupdate_every = 4\nprobe_size = 8\nscorer_lr = 0.005";
    run(load_tiny(dir.path(), "mos", 20, extra));
    let log = dir.path().join("mos").join("mixture.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut u: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let w = u["smoothed"][0].as_f64().unwrap();
    u["smoothed"][0] = serde_json::json!(w * 1.5 + 0.1);
    lines[2] = u.to_string();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    assert!(matches!(
        mos_runtime::replay::replay(&log),
        Err(mos_runtime::replay::ReplayError::Mismatch { .. })
    ));
}

fn trace(path: &std::path::Path) -> Vec<(u64, Vec<(usize, u32)>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        mixture_version: u64,
        samples: Vec<(usize, u32)>,
    }
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let l: Line = serde_json::from_str(l).unwrap();
            (l.mixture_version, l.samples)
        })
        .collect()
}

#[test]
fn probes_never_change_the_training_stream() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    // Reward on: MoS with probes every 5 steps. Reward off: the same prior as a static mixture.
    let mut on = load_tiny(
        dir.path(),
        "on",
        30,
        "[scheduler]\nstrategy = \"mos\"\ninit_temperature = 10\nupdate_every = 5\nprobe_size = 8",
    );
    let mut off = load_tiny(
        dir.path(),
        "off",
        30,
        "[scheduler]\nstrategy = \"temperature\"\ntemperature = 10\nupdate_every = 5",
    );
    on.runtime.trace_samples = true;
    off.runtime.trace_samples = true;
    run(on);
    run(off);
    let a = trace(&dir.path().join("on").join("samples.jsonl"));
    let b = trace(&dir.path().join("off").join("samples.jsonl"));
    let same_mixture = a.iter().take_while(|(v, _)| *v == 0).count();
    assert!(
        same_mixture >= 5,
        "first mixture change after {same_mixture} steps"
    );
    for i in 0..same_mixture {
        assert_eq!(a[i].1, b[i].1, "step {} differs", i + 1);
    }
}

#[test]
fn the_constant_reward_control_learns_from_ticks_toward_uniform_and_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = "[scheduler]\nstrategy = \"mos\"\nreward = \"constant\"\nupdate_every = 4\nprobe_size = 8\nscorer_lr = 0.0005";
    run(load_tiny(dir.path(), "mos", 40, extra));
    let log = dir.path().join("mos").join("mixture.jsonl");
    let ups = updates(&log);
    assert!(ups.len() >= 8, "only {} updates", ups.len());
    let spread = |p: &[f64]| {
        p.iter().cloned().fold(f64::MIN, f64::max) - p.iter().cloned().fold(f64::MAX, f64::min)
    };
    let first = spread(&ups[0].before);
    assert!(
        first > 0.01,
        "the prior is already uniform: {:?}",
        ups[0].before
    );
    for u in &ups {
        // Every boundary is a learned update with rewards of exactly 1, and no probe pass
        // produced them (the control reads no statistics).
        assert_eq!(u.reward, Some(mos_runtime::config::RewardKind::Constant));
        assert!(u.raw.iter().chain(&u.smoothed).all(|&r| r == 1.0), "{u:?}");
        // With equal rewards the REINFORCE objective is maximised by the uniform mixture, so
        // each update narrows the spread (down to rounding once it is there).
        assert!(spread(&u.after) <= spread(&u.before) + 1e-15, "{u:?}");
    }
    let last = spread(&ups.last().unwrap().after);
    assert!(last < first / 2.0, "spread {first} -> {last}");
    let report = mos_runtime::replay::replay(&log).unwrap();
    assert_eq!(report.updates, ups.len());
    assert_eq!(report.learned, ups.len());
    assert_eq!(&report.last, &ups.last().unwrap().after);
}
