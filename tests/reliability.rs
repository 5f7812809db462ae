//! Reliability, end to end through the binary: exact resume, crashes (SIGKILL, a kill inside a
//! checkpoint), loader failures, non-finite losses, refused config changes and start-up checks.
//!
//! Every run here is `runtime.deterministic = true`, so that an uninterrupted reference run and
//! an interrupted-then-resumed run must agree exactly: same examples, same mixtures, same losses.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use mos_runtime::mixture::{MixtureLogLine, UpdateRecord};
use serde::Deserialize;

/// A corpus and the base config of these tests (MoS with DIFF + EMA, updates every 5 steps).
struct Setup {
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

fn setup(steps: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let out = dir.path().join("out");
    let extra = "[scheduler]\nstrategy = \"mos\"\nreward = \"diff\"\nema = true\nupdate_every = 5\nprobe_size = 8";
    let text = tiny_config(dir.path(), &out, steps, extra);
    let cfg = write_file(dir.path(), "run.toml", &text);
    Setup { dir, cfg }
}

impl Setup {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with the base config, writing to `out`, plus extra arguments.
    fn cmd(&self, out: &str, args: &[&str]) -> Command {
        self.cmd_with(&self.cfg, out, args)
    }

    /// As [`Setup::cmd`] with another config file.
    fn cmd_with(&self, cfg: &Path, out: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(cfg)
            .arg("--set")
            .arg(format!("runtime.output_dir={}", self.out(out).display()))
            .args([
                "--set",
                "runtime.deterministic=true",
                "--set",
                "runtime.trace_samples=true",
                "--set",
                "runtime.checkpoint_every=10",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0");
        c
    }

    fn run(&self, out: &str, args: &[&str]) -> Output {
        self.cmd(out, args).output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panics other than the ones injected into loader threads on purpose (`MOS_FAULTS`).
fn unexpected_panic(t: &str) -> bool {
    t.lines()
        .any(|l| l.contains("panicked at") && !l.contains("thread 'loader-"))
}

fn assert_ok(o: &Output) -> String {
    let t = text(o);
    assert_eq!(o.status.code(), Some(0), "output: {t}");
    assert!(!unexpected_panic(&t), "{t}");
    t
}

#[derive(Deserialize, Debug, PartialEq)]
struct Trace {
    step: u64,
    mixture_version: u64,
    samples: Vec<(usize, u32)>,
}

fn samples(dir: &Path) -> Vec<Trace> {
    mos_runtime::runlog::read_all(&dir.join("samples.jsonl")).unwrap()
}

fn updates(dir: &Path) -> Vec<UpdateRecord> {
    let lines: Vec<MixtureLogLine> =
        mos_runtime::runlog::read_all(&dir.join("mixture.jsonl")).unwrap();
    assert!(
        matches!(lines.first(), Some(MixtureLogLine::Start(_))),
        "the log starts with its start record"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| matches!(l, MixtureLogLine::Start(_)))
            .count(),
        1,
        "exactly one start record, even across resumes"
    );
    lines
        .into_iter()
        .filter_map(|l| match l {
            MixtureLogLine::Update(u) => Some(u),
            MixtureLogLine::Start(_) => None,
        })
        .collect()
}

/// (step, loss) of the train events, and (step, per-dataset loss) of the eval events.
#[allow(clippy::type_complexity)]
fn losses(dir: &Path) -> (Vec<(u64, f64)>, Vec<(u64, Vec<(String, f64)>)>) {
    let events: Vec<serde_json::Value> =
        mos_runtime::runlog::read_all(&dir.join("run.jsonl")).unwrap();
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for e in events {
        match e["kind"].as_str() {
            Some("train") => train.push((
                e["step"].as_u64().unwrap(),
                e["loss"].as_f64().unwrap_or(f64::NAN),
            )),
            Some("eval") => eval.push((
                e["step"].as_u64().unwrap(),
                serde_json::from_value(e["loss"].clone()).unwrap(),
            )),
            _ => {}
        }
    }
    (train, eval)
}

/// The two runs took the same examples, published the same mixtures and had the same losses.
fn assert_same_trajectory(a: &Path, b: &Path) {
    let (sa, sb) = (samples(a), samples(b));
    assert!(!sa.is_empty());
    assert_eq!(sa.len(), sb.len(), "same number of steps traced");
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x, y, "sampled examples differ at step {}", x.step);
    }
    let (ua, ub) = (updates(a), updates(b));
    assert!(ua.len() >= 3, "the mixture was updated");
    assert!(
        ua.iter().any(|u| u.before != u.after),
        "the mixture actually moved"
    );
    assert_eq!(ua, ub, "mixture trajectories differ");
    let ((ta, ea), (tb, eb)) = (losses(a), losses(b));
    assert_eq!(ta.len(), tb.len());
    for ((s1, l1), (s2, l2)) in ta.iter().zip(&tb) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0),
            "loss at step {s1}: {l1} vs {l2}"
        );
    }
    assert_eq!(ea.len(), eb.len());
    for ((s1, l1), (s2, l2)) in ea.iter().zip(&eb) {
        assert_eq!(s1, s2);
        for ((n1, x1), (n2, x2)) in l1.iter().zip(l2) {
            assert_eq!(n1, n2);
            assert!((x1 - x2).abs() <= 1e-5, "eval {n1} at {s1}: {x1} vs {x2}");
        }
    }
}

#[test]
fn stop_and_resume_gives_the_same_run_as_no_stop() {
    let s = setup(40);
    let eval = ["--set", "runtime.eval_every=15"];
    assert_ok(&s.run("whole", &eval));

    let first = s.run(
        "split",
        &[&eval[..], &["--set", "runtime.stop_at_step=20"]].concat(),
    );
    let t = assert_ok(&first);
    assert!(t.contains("stop_at_step reached"), "{t}");
    assert_eq!(samples(&s.out("split")).len(), 20);
    let second = s.run("split", &eval);
    let t = assert_ok(&second);
    assert!(t.contains("resumed from the checkpoint at step 20"), "{t}");
    assert!(
        t.contains("resuming from the newest complete checkpoint"),
        "{t}"
    );
    assert_same_trajectory(&s.out("whole"), &s.out("split"));

    // Starting again over a finished run resumes at its end: nothing more to train.
    let again = s.run("split", &eval);
    let t = assert_ok(&again);
    assert!(t.contains("finished: 40 steps"), "{t}");
    assert_same_trajectory(&s.out("whole"), &s.out("split"));
}

/// Waits until the run in `out` has committed a checkpoint at or after `step`.
fn wait_for_checkpoint(out: &Path, step: u64, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let newest = mos_runtime::checkpoint::list(out).first().map(|c| c.0);
        if newest.is_some_and(|n| n >= step) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its checkpoint at step {step}");
        }
        assert!(Instant::now() < deadline, "no checkpoint at step {step}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_during_training_resumes_from_the_newest_complete_checkpoint() {
    let s = setup(60);
    // The scheduler's delay slows every update boundary (deterministic runs wait for it), which
    // leaves time to kill the run half-way.
    let slow = ["--set", "scheduler.debug_update_delay_ms=40"];
    assert_ok(&s.run("whole", &slow));

    let mut child = s
        .cmd("killed", &slow)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&s.out("killed"), 20, &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = mos_runtime::checkpoint::list(&s.out("killed"))[0].0;
    assert!(killed_at < 60, "killed before the end");

    let t = assert_ok(&s.run("killed", &slow));
    assert!(
        t.contains(&format!("resumed from the checkpoint at step {killed_at}")),
        "{t}"
    );
    assert_same_trajectory(&s.out("whole"), &s.out("killed"));
}

#[test]
fn a_kill_inside_a_checkpoint_never_leaves_a_loadable_partial_one() {
    let s = setup(40);
    assert_ok(&s.run("whole", &[]));

    // The process aborts after writing the files of checkpoint 30 but before its manifest.
    let o = s
        .cmd("aborted", &[])
        .env("MOS_FAULTS", "abort_in_checkpoint=30")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let root = mos_runtime::checkpoint::root(&s.out("aborted"));
    let partial: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-step-0000000030"))
        .collect();
    assert_eq!(partial.len(), 1, "the partial checkpoint is on disk");
    assert!(std::fs::read_dir(root.join(&partial[0]))
        .unwrap()
        .any(|e| e.unwrap().file_name() == "model.mpk"));
    assert_eq!(mos_runtime::checkpoint::list(&s.out("aborted"))[0].0, 20);

    let t = assert_ok(&s.run("aborted", &[]));
    assert!(t.contains("removing an incomplete checkpoint"), "{t}");
    assert!(t.contains("resumed from the checkpoint at step 20"), "{t}");
    assert_same_trajectory(&s.out("whole"), &s.out("aborted"));
}

#[test]
fn a_damaged_checkpoint_is_skipped_for_an_older_one() {
    let s = setup(30);
    let o = s.run("run", &["--set", "runtime.stop_at_step=30"]);
    assert_ok(&o);
    let newest = mos_runtime::checkpoint::list(&s.out("run"))[0].1.clone();
    let f = newest.join("run_state.json");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&f, bytes).unwrap();
    let t = assert_ok(&s.run("run", &["--set", "runtime.max_steps=30"]));
    assert!(t.contains("skipping a damaged checkpoint"), "{t}");
    assert!(t.contains("resumed from the checkpoint at step 20"), "{t}");
}

/// (step, dataset) of every sampled example.
fn drawn(dir: &Path) -> Vec<(u64, usize)> {
    samples(dir)
        .into_iter()
        .flat_map(|t| t.samples.into_iter().map(move |(d, _)| (t.step, d)))
        .collect()
}

#[test]
fn a_failing_loader_is_restarted_and_training_goes_on() {
    let s = setup(60);
    let o = s
        .cmd("restart", &["--set", "data.restart_backoff_ms=20"])
        .env("MOS_FAULTS", "loader_panic=prose@30:2")
        .output()
        .unwrap();
    let t = assert_ok(&o);
    assert_eq!(
        t.matches("loader failed: restarting after back-off")
            .count(),
        2,
        "{t}"
    );
    assert!(t.contains("loader restarted"), "{t}");
    assert!(t.contains("finished: 60 steps"), "{t}");
    // The prose stream went on past the failure point without a gap: its stream positions 0..k
    // were all consumed in order (record indices follow the seeded epoch order).
    let prose: Vec<u64> = drawn(&s.out("restart"))
        .into_iter()
        .filter(|&(_, d)| d == 0)
        .map(|(step, _)| step)
        .collect();
    assert!(
        prose.len() > 30,
        "prose was sampled after its loader came back"
    );
}

#[test]
fn a_loader_that_keeps_failing_is_dropped_or_stops_the_run_by_config() {
    let s = setup(60);
    let fault = "loader_panic=prose@20:always";
    let common = [
        "--set",
        "data.restart_backoff_ms=10",
        "--set",
        "data.max_loader_restarts=2",
    ];
    let o = s
        .cmd(
            "drop",
            &[&common[..], &["--set", "data.on_loader_failure=drop"]].concat(),
        )
        .env("MOS_FAULTS", fault)
        .output()
        .unwrap();
    let t = assert_ok(&o);
    assert!(t.contains("dataset dropped"), "{t}");
    assert!(t.contains("finished: 60 steps"), "{t}");
    let d = drawn(&s.out("drop"));
    let prose_total = d.iter().filter(|x| x.1 == 0).count();
    assert!(
        prose_total <= 20 + 16,
        "prose is not sampled once dropped: {prose_total} examples (20 produced + a batch)"
    );
    let last_steps: Vec<&(u64, usize)> = d.iter().filter(|x| x.0 > 50).collect();
    assert!(!last_steps.is_empty() && last_steps.iter().all(|x| x.1 != 0));

    let o = s
        .cmd(
            "stop",
            &[&common[..], &["--set", "data.on_loader_failure=stop"]].concat(),
        )
        .env("MOS_FAULTS", fault)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(!unexpected_panic(&t), "{t}");
    assert!(
        t.contains("the loader of dataset `prose` failed 3 times"),
        "{t}"
    );
}

#[test]
fn non_finite_losses_are_skipped_then_rolled_back_or_stop_the_run() {
    let s = setup(30);
    let limit = ["--set", "training.nonfinite_limit=3"];
    // Two in a row: skipped and counted only.
    let o = s
        .cmd("skip", &limit)
        .env("MOS_FAULTS", "nan_loss=12:2")
        .output()
        .unwrap();
    let t = assert_ok(&o);
    assert_eq!(
        t.matches("non-finite loss: update skipped").count(),
        2,
        "{t}"
    );
    assert!(!t.contains("rolling back"), "{t}");

    // Three in a row: back to the checkpoint at step 10, then on to the end.
    let o = s
        .cmd("rollback", &limit)
        .env("MOS_FAULTS", "nan_loss=12:3")
        .output()
        .unwrap();
    let t = assert_ok(&o);
    assert!(t.contains("rolling back to the newest checkpoint"), "{t}");
    assert!(t.contains("resumed from the checkpoint at step 10"), "{t}");
    assert!(t.contains("finished: 30 steps"), "{t}");
    let steps: Vec<u64> = samples(&s.out("rollback")).iter().map(|t| t.step).collect();
    assert_eq!(
        steps,
        (1..=30).collect::<Vec<_>>(),
        "the log shows one clean trajectory"
    );

    // With on_nonfinite = "stop": a clear error, exit 1.
    let o = s
        .cmd(
            "stop",
            &[&limit[..], &["--set", "training.on_nonfinite=stop"]].concat(),
        )
        .env("MOS_FAULTS", "nan_loss=12:3")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("3 non-finite losses in a row up to step 14"),
        "{t}"
    );
}

#[test]
fn resuming_with_changed_datasets_or_model_is_refused_unless_allowed() {
    let s = setup(30);
    assert_ok(&s.run("run", &["--set", "runtime.stop_at_step=10"]));

    // A different model shape can never resume.
    let o = s.run("run", &["--set", "model.d_model=48"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("the model shape changed"), "{t}");

    // One dataset fewer: refused, naming both lists...
    let cfg = std::fs::read_to_string(&s.cfg).unwrap();
    let cut = cfg.find("[[datasets]]\nname = \"quotes\"").unwrap();
    let fewer = write_file(s.dir.path(), "fewer.toml", &cfg[..cut]);
    let o = s.cmd_with(&fewer, "run", &[]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("the datasets changed"), "{t}");
    assert!(t.contains("quotes("), "{t}");
    assert!(t.contains("--allow-dataset-change"), "{t}");

    // ...and accepted with the flag, remapped by name.
    let t = assert_ok(
        &s.cmd_with(&fewer, "run", &["--allow-dataset-change"])
            .output()
            .unwrap(),
    );
    assert!(t.contains("remapped by name"), "{t}");
    assert!(t.contains("finished: 30 steps"), "{t}");

    // --fresh over an existing run: refused, then archived with --overwrite.
    let o = s.run("run", &["--fresh"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("already holds a run"), "{t}");
    let t = assert_ok(&s.run("run", &["--fresh", "--overwrite"]));
    assert!(t.contains("previous run archived"), "{t}");
    assert!(!t.contains("resumed from"), "{t}");
    assert!(s.out("run").join("archive").is_dir());
}

#[test]
fn a_fused_checkpoint_resumed_by_burn_names_both_kinds_and_the_setting() {
    let s = setup(20);
    assert_ok(&s.run("run", &["--set", "runtime.stop_at_step=10"]));

    // burn's trainer cannot read the fused trainer's moments: refused by name, with the key.
    let o = s.run("run", &["--set", "training.cpu_kernels=\"burn\""]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(!unexpected_panic(&t), "{t}");
    for needle in ["`fused`", "`burn`", "training.cpu_kernels"] {
        assert!(t.contains(needle), "`{needle}` missing from: {t}");
    }

    // With the setting it was written with, the same checkpoint resumes.
    let t = assert_ok(&s.run("run", &[]));
    assert!(t.contains("finished: 20 steps"), "{t}");
}

fn assert_refused_before_training(o: &Output, out: &Path, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for n in needles {
        assert!(t.contains(n), "`{n}` missing from: {t}");
    }
    assert!(!out.join("run.jsonl").exists(), "no training happened");
}

#[test]
fn start_up_checks_refuse_before_any_training() {
    let s = setup(10);
    // The output directory is a file.
    let file = write_file(s.dir.path(), "not-a-dir", "x");
    let o = s.run(
        "x",
        &["--set", &format!("runtime.output_dir={}", file.display())],
    );
    assert_refused_before_training(&o, &file, &["not-a-dir", "not a directory"]);

    // A dataset path that is a directory.
    let cfg = std::fs::read_to_string(&s.cfg)
        .unwrap()
        .replacen("/prose.jsonl", "/", 1);
    let bad = write_file(s.dir.path(), "dir-as-file.toml", &cfg);
    let o = s.cmd_with(&bad, "d", &[]).output().unwrap();
    assert_refused_before_training(&o, &s.out("d"), &["is not a regular file"]);

    // The metrics port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = s.run(
        "p",
        &[
            "--set",
            "metrics.enabled=true",
            "--set",
            &format!("metrics.listen={addr}"),
        ],
    );
    assert_refused_before_training(&o, &s.out("p"), &[&addr, "metrics.listen"]);

    // A full output directory: a 64 KiB tmpfs has no room for a checkpoint. Mounting needs
    // privileges; without them this part is skipped with a message.
    let mnt = s.dir.path().join("full");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if mounted {
        let o = s.run(
            "x",
            &["--set", &format!("runtime.output_dir={}", mnt.display())],
        );
        let _ = Command::new("umount").arg(&mnt).status();
        assert_refused_before_training(&o, &mnt, &["MiB free", "checkpoint needs"]);
    } else {
        eprintln!("skipping the full-disk check: cannot mount a small tmpfs here (needs root)");
    }
}

#[test]
fn the_handle_writes_a_checkpoint_on_request() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let mut cfg = load_tiny(dir.path(), "handle", 1_000_000, "");
    cfg.runtime.checkpoint_every = 0;
    let out = cfg.runtime.output_dir.clone();
    tokio_rt().block_on(async {
        let h = mos_runtime::runtime::Runtime::start(cfg).await.unwrap();
        while h.step() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(mos_runtime::checkpoint::list(&out).is_empty());
        h.checkpoint();
        let t0 = Instant::now();
        while mos_runtime::checkpoint::list(&out).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_, m) = mos_runtime::checkpoint::latest_valid(&out).unwrap();
        assert!(m.step >= 3);
        h.stop();
        let summary = h.wait().await.unwrap();
        assert!(summary.interrupted);
        assert!(summary.last_checkpoint.is_some());
    });
}
