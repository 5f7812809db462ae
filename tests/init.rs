//! `model.init`: a run starts from the weights of an earlier run (its `model.mpk` or a
//! checkpoint directory) with a fresh optimiser, schedule and mixture, on either CPU trainer;
//! another shape, a damaged checkpoint or both starting points at once are refused by name; a
//! resume takes precedence over the init.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use mos_runtime::config::Config;
use mos_runtime::runlog::RunRecord;
use mos_runtime::runtime::{prepare, Runtime, RuntimeError};
use mos_runtime::trainer::RunSummary;

/// The tiny config with `model.init = init` (when given, written into the file so that a
/// relative path is resolved against the file's directory), the learning-rate warm-up long
/// enough that the first step barely moves the weights, and a progress line every step.
fn config_text(dir: &Path, out: &str, steps: u64, init: Option<&str>, extra: &str) -> String {
    let mut text = tiny_config(dir, &dir.join(out), steps, extra)
        .replace("log_every = 5", "log_every = 1")
        .replace("warmup_steps = 2", "warmup_steps = 1000");
    if let Some(init) = init {
        text = text.replace("[model]\n", &format!("[model]\ninit = \"{init}\"\n"));
    }
    text
}

fn load(dir: &Path, out: &str, steps: u64, init: Option<&str>, extra: &str) -> Config {
    let p = write_file(
        dir,
        &format!("{out}.toml"),
        &config_text(dir, out, steps, init, extra),
    );
    Config::load_with_env(&p, &[], &[]).unwrap()
}

fn train(cfg: Config) -> RunSummary {
    tokio_rt().block_on(async { Runtime::start(cfg).await.unwrap().wait().await.unwrap() })
}

/// The first progress record of a run: (step, loss, lr).
fn first_train(out: &Path) -> (u64, f32, f64) {
    mos_runtime::runlog::read_all::<RunRecord>(&out.join("run.jsonl"))
        .unwrap()
        .into_iter()
        .find_map(|r| match r {
            RunRecord::Train { step, loss, lr, .. } => Some((step, loss.unwrap(), lr)),
            _ => None,
        })
        .expect("a train record")
}

fn evals(s: &RunSummary) -> Vec<f64> {
    s.eval.iter().map(|(_, l)| *l).collect()
}

fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

#[test]
fn a_run_starts_from_an_earlier_runs_weights_with_a_fresh_optimiser_on_both_trainers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    // Run A trains from scratch with the ordinary tiny schedule (warm-up 2, lr 0.01).
    let a_text = tiny_config(d, &d.join("a"), 30, "");
    let a_cfg = Config::load_with_env(&write_file(d, "a.toml", &a_text), &[], &[]).unwrap();
    let a = train(a_cfg);
    assert_eq!(a.steps, 30);
    let ckpt = "a/checkpoints/step-0000000030";
    assert!(d.join("a/model.mpk").is_file() && d.join(ckpt).is_dir());

    // B starts from A's final weights (a relative path, resolved against b.toml's directory),
    // C is the same config from scratch. One step with lr 1e-5 (warm-up 1000) barely moves the
    // weights, so each run's final held-out loss is its starting weights' loss.
    let b = train(load(d, "b", 1, Some("a/model.mpk"), ""));
    let c = train(load(d, "c", 1, None, ""));
    assert_eq!((b.steps, b.resumed_from), (1, None));
    // A's final weights scored on the held-out sets, by A itself and by B after one tiny step.
    for ((name, ea), (eb, ec)) in a.eval.iter().zip(evals(&b).into_iter().zip(evals(&c))) {
        assert!(
            (ea - eb).abs() < 1e-3 * ea,
            "{name}: A ended at {ea}, B started at {eb}"
        );
        assert!(
            eb < 0.8 * ec,
            "{name}: B {eb} is not clearly below from-scratch {ec}"
        );
    }
    // The same first batch (same seed, data and prior mixture): A's weights fit it far better.
    let (b_step, b_loss, b_lr) = first_train(&d.join("b"));
    let (c_step, c_loss, c_lr) = first_train(&d.join("c"));
    assert_eq!(
        c_loss, a.first_loss,
        "C and A start alike: the batches are the same"
    );
    assert!(b_loss < 0.8 * c_loss, "first loss {b_loss} vs {c_loss}");
    assert_eq!(b_loss, b.first_loss);
    // The optimiser starts at step 0: the warm-up restarts (A's 30 steps would give 31/1000).
    assert_eq!((b_step, c_step), (1, 1));
    assert_eq!(b_lr, c_lr);
    assert!((b_lr - 0.01 / 1000.0).abs() < 1e-15, "lr {b_lr}");

    // A checkpoint directory holds the same weights: a bit-identical run.
    let bc = train(load(d, "bc", 1, Some(ckpt), ""));
    assert_eq!(bc.first_loss.to_bits(), b.first_loss.to_bits());
    assert_eq!(evals(&bc), evals(&b));

    // burn's trainer reads the weights the fused trainer wrote, from either place, and
    // computes the same function (invariant 13).
    let burn = "[training]\n";
    let burn_kernels = |out: &str, init: &str| {
        let text = config_text(d, out, 1, Some(init), "")
            .replace(burn, &format!("{burn}cpu_kernels = \"burn\"\n"));
        Config::load_with_env(&write_file(d, &format!("{out}.toml"), &text), &[], &[]).unwrap()
    };
    for (out, init) in [("burn_file", "a/model.mpk"), ("burn_ckpt", ckpt)] {
        let s = train(burn_kernels(out, init));
        assert!(
            (s.first_loss - b.first_loss).abs() < 1e-4 * b.first_loss,
            "{out}: burn {} vs fused {}",
            s.first_loss,
            b.first_loss
        );
        for (x, y) in evals(&s).into_iter().zip(evals(&b)) {
            assert!((x - y).abs() < 1e-4 * y, "{out}: eval {x} vs {y}");
        }
    }

    // And the fused trainer reads what burn's trainer wrote: burn_a's final weights are one
    // tiny step past the ones it scored its first batch with, the batch the next run's first
    // step scores again.
    let burn_a = train(burn_kernels("burn_a", "a/model.mpk"));
    let f = train(load(d, "from_burn", 1, Some("burn_a/model.mpk"), ""));
    assert!(
        (f.first_loss - burn_a.last_loss).abs() < 1e-3 * burn_a.last_loss,
        "fused from burn's weights {} vs burn's last step {}",
        f.first_loss,
        burn_a.last_loss
    );
}

#[test]
fn a_damaged_checkpoint_or_another_shape_is_refused_naming_model_init() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    let a_text = tiny_config(d, &d.join("a"), 3, "");
    train(Config::load_with_env(&write_file(d, "a.toml", &a_text), &[], &[]).unwrap());
    let ckpt = d.join("a/checkpoints/step-0000000003");

    // Another width: exit 2 from `check` and from a run, with both shapes and the key named.
    let wide = config_text(d, "wide", 2, Some("a/model.mpk"), "")
        .replace("d_model = 32", "d_model = 64")
        .replace("ffn_hidden = 64", "ffn_hidden = 128");
    let wide = write_file(d, "wide.toml", &wide);
    let needles = [
        "wide.toml",
        "model.init",
        "model.mpk have vocab_size 259, d_model 32, n_layers 2",
        "ffn_hidden 64",
        "the config has vocab_size 259, d_model 64, n_layers 2",
        "ffn_hidden 128",
        "different: d_model, kv_width, ffn_hidden",
    ];
    assert_refused(
        &cli(&["check", "--config", wide.to_str().unwrap()]),
        &needles,
    );
    assert_refused(&cli(&["run", "--config", wide.to_str().unwrap()]), &needles);
    assert!(!d.join("wide").exists(), "a refused run wrote its output");

    // The same tensors with another head split: only the checkpoint's record shows it, and
    // the checkpoint is refused with both recorded shapes.
    let heads = config_text(d, "heads", 2, Some("a/checkpoints/step-0000000003"), "")
        .replace("n_heads = 2\nn_kv_heads = 1", "n_heads = 4\nn_kv_heads = 2");
    let heads = write_file(d, "heads.toml", &heads);
    assert_refused(
        &cli(&["check", "--config", heads.to_str().unwrap()]),
        &[
            "model.init",
            "n_heads 2, n_kv_heads 1",
            "the config has vocab_size 259, d_model 32, n_layers 2, n_heads 4, n_kv_heads 2",
        ],
    );

    // A checkpoint whose weights were changed after it was written does not verify.
    let copy = d.join("damaged");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&ckpt).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let w = copy.join("model.mpk");
    let mut bytes = std::fs::read(&w).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let err = prepare(load(d, "dmg", 2, Some("damaged"), "")).unwrap_err();
    assert!(matches!(err, RuntimeError::Init { .. }), "{err}");
    let msg = err.to_string();
    for n in [
        "dmg.toml",
        "model.init",
        "damaged",
        "not usable",
        "checksum",
    ] {
        assert!(msg.contains(n), "`{n}` missing from: {msg}");
    }

    // A path with nothing there, and a file that is not weights.
    let missing = prepare(load(d, "miss", 2, Some("nowhere/model.mpk"), "")).unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let junk = write_file(d, "junk.mpk", "not a record");
    let err = prepare(load(d, "junk", 2, Some(junk.to_str().unwrap()), "")).unwrap_err();
    assert!(
        err.to_string().contains("cannot read") && err.to_string().contains("junk.mpk"),
        "{err}"
    );

    // Both starting points at once: refused while the config loads, naming both keys.
    let both = config_text(d, "both", 2, Some("a/model.mpk"), "")
        .replace("[model]\n", "[model]\npretrained = \"a\"\n");
    let both = write_file(d, "both.toml", &both);
    assert_refused(
        &cli(&["check", "--config", both.to_str().unwrap()]),
        &["both.toml", "model.init", "model.pretrained"],
    );

    // The matching config is accepted, and `check` names where the weights come from.
    let ok = write_file(
        d,
        "ok.toml",
        &config_text(d, "ok", 2, Some("a/checkpoints/step-0000000003"), ""),
    );
    let o = cli(&["check", "--config", ok.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("initial weights from model.init =")
            && out.contains("checkpoint at step 3")
            && out.contains("shape matches"),
        "{out}"
    );
}

#[test]
fn a_resume_takes_precedence_over_model_init_and_the_log_says_which_happened() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_corpus(d);
    let a_text = tiny_config(d, &d.join("a"), 3, "");
    train(Config::load_with_env(&write_file(d, "a.toml", &a_text), &[], &[]).unwrap());

    let b = write_file(
        d,
        "b.toml",
        &config_text(d, "b", 2, Some("a/model.mpk"), ""),
    );
    let o = cli(&["run", "--config", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("initial weights from model.init =")
            && stderr(&o).contains("a weights file"),
        "{}",
        stderr(&o)
    );
    // Raising max_steps resumes B's own checkpoint at step 2; the init is not applied.
    let o = cli(&[
        "run",
        "--config",
        b.to_str().unwrap(),
        "--set",
        "runtime.max_steps=4",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("resuming from this run's own checkpoint")
            && err.contains("is not used (it applies to a fresh start only)"),
        "{err}"
    );
    assert!(!err.contains("initial weights from model.init"), "{err}");
    let o = cli(&["check", "--config", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("not used while runtime.output_dir holds a checkpoint"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // An init inside the run's own output directory would be archived or resumed over.
    let own = write_file(
        d,
        "own.toml",
        &config_text(d, "b", 2, Some("b/model.mpk"), ""),
    );
    assert_refused(
        &cli(&["check", "--config", own.to_str().unwrap()]),
        &["model.init", "inside this run's runtime.output_dir"],
    );
}
