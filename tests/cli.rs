//! The command line as a user meets it: config errors give a clear message naming the file and key
//! and a non-zero exit (never a panic); `check` summarises datasets, mixture and model.

mod common;

use std::process::{Command, Output};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_input_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

fn setup(extra: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let out = dir.path().join("out");
    let cfg = tiny_config(dir.path(), &out, 5, extra);
    (dir, cfg)
}

#[test]
fn check_prints_summary() {
    let (dir, cfg) = setup("");
    let p = write_file(dir.path(), "c.toml", &cfg);
    let o = run(&["check", "--config", p.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["prose", "maths", "qa", "quotes", "parameters", "mixture"] {
        assert!(out.contains(name), "`{name}` missing from: {out}");
    }
}

#[test]
fn unknown_key_is_refused() {
    let (dir, cfg) = setup("");
    let p = write_file(
        dir.path(),
        "c.toml",
        &cfg.replace("seed = 7", "seed = 7\nsede = 1"),
    );
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["sede", "c.toml"],
    );
}

#[test]
fn wrong_type_is_refused() {
    let (dir, cfg) = setup("");
    let p = write_file(
        dir.path(),
        "c.toml",
        &cfg.replace("batch_size = 4", "batch_size = \"four\""),
    );
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["training.batch_size", "c.toml"],
    );
}

#[test]
fn missing_config_file_is_refused() {
    assert_input_error(
        &run(&["check", "--config", "/no/such/file.toml"]),
        &["/no/such/file.toml"],
    );
}

#[test]
fn missing_dataset_file_is_refused() {
    let (dir, cfg) = setup("");
    let p = write_file(dir.path(), "c.toml", &cfg.replace("quotes.txt", "nope.txt"));
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["nope.txt"],
    );
}

#[test]
fn duplicate_dataset_name_is_refused() {
    let (dir, cfg) = setup("");
    let p = write_file(
        dir.path(),
        "c.toml",
        &cfg.replace("name = \"qa\"", "name = \"maths\""),
    );
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["duplicate", "datasets[2].name"],
    );
}

#[test]
fn non_positive_fixed_weight_is_refused() {
    let (dir, cfg) = setup("[scheduler]\nstrategy = \"fixed\"");
    let cfg = cfg
        .replace("format = \"jsonl\"", "format = \"jsonl\"\nweight = 1.0")
        .replace("separator = \"%\"", "separator = \"%\"\nweight = 0");
    let p = write_file(dir.path(), "c.toml", &cfg);
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["datasets[3].weight"],
    );
}

#[test]
fn set_override_is_applied_and_checked() {
    let (dir, cfg) = setup("");
    let p = write_file(dir.path(), "c.toml", &cfg);
    let o = run(&[
        "check",
        "--config",
        p.to_str().unwrap(),
        "--set",
        "runtime.max_steps=123",
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("123 steps"));
    assert_input_error(
        &run(&[
            "check",
            "--config",
            p.to_str().unwrap(),
            "--set",
            "runtime.max_steps=x",
        ]),
        &["runtime.max_steps", "--set"],
    );
}

#[test]
fn malformed_jsonl_lines_are_skipped_and_counted() {
    let (dir, cfg) = setup("");
    let mut text = std::fs::read_to_string(dir.path().join("maths.jsonl")).unwrap();
    text.push_str("{\"prompt\": 3}\nnot json at all\n{\"prompt\": \"x\", \"respo");
    std::fs::write(dir.path().join("maths.jsonl"), text).unwrap();
    let p = write_file(dir.path(), "c.toml", &cfg);
    let o = run(&["check", "--config", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.starts_with("maths")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[3], "3", "bad-record column in: {line}");
    assert!(stderr(&o).contains("maths.jsonl:81"), "{}", stderr(&o));
}

#[test]
fn empty_dataset_is_refused() {
    let (dir, cfg) = setup("");
    std::fs::write(dir.path().join("qa.jsonl"), "").unwrap();
    let p = write_file(dir.path(), "c.toml", &cfg);
    assert_input_error(
        &run(&["check", "--config", p.to_str().unwrap()]),
        &["qa.jsonl"],
    );
}

#[test]
fn no_config_is_a_clear_error() {
    assert_input_error(&run(&["check"]), &["--config"]);
}

#[test]
fn shipped_demo_configs_pass_check() {
    // The configs a new user runs first must stay valid as the schema evolves. prod.toml needs
    // the full corpus (scripts/build-data.sh --full) and is checked only when it is present.
    let root = env!("CARGO_MANIFEST_DIR");
    let mut configs = vec!["configs/demo.toml", "configs/demo-mos.toml"];
    let root_path = std::path::Path::new(root);
    let full = root_path.join("data/full/prose.train.jsonl").exists();
    // The SmolLM2 configs need the fetched model (scripts/fetch-model.sh).
    let model = root_path
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .exists();
    if model {
        configs.push("configs/smollm2-cpu.toml");
    } else {
        eprintln!(
            "configs/smollm2-cpu.toml not checked: the model is absent (scripts/fetch-model.sh)"
        );
    }
    if full && model {
        configs.push("configs/prod.toml");
    } else {
        eprintln!(
            "configs/prod.toml not checked: it needs data/full (scripts/build-data.sh --full) and \
             the model (scripts/fetch-model.sh)"
        );
    }
    for c in configs {
        let path = std::path::Path::new(root).join(c);
        let o = run(&["check", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{c}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        for name in ["prose", "quotes", "definitions", "qa", "code", "maths"] {
            assert!(out.contains(name), "{c}: `{name}` missing from: {out}");
        }
    }
}

#[test]
fn a_run_that_cannot_fit_in_memory_exits_2_naming_the_batch_size_before_training() {
    let (dir, cfg) = setup("");
    let p = write_file(dir.path(), "c.toml", &cfg);
    let huge = "training.batch_size=100000000";
    let t0 = std::time::Instant::now();
    let o = run(&["--config", p.to_str().unwrap(), "--set", huge]);
    // A margin over "within a second" for a loaded CI machine; an abort after allocating
    // would take far longer (or never end).
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert_input_error(
        &o,
        &["training.batch_size", "GiB", "runtime.memory_check = false"],
    );
    // Refused before anything was created: no output directory, no checkpoint.
    assert!(!dir.path().join("out").exists());
    // `check` refuses what the run would refuse, after printing the estimate.
    let o = run(&["check", "--config", p.to_str().unwrap(), "--set", huge]);
    assert_input_error(&o, &["training.batch_size"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("training activations"), "{out}");
    assert!(!out.contains(": OK"), "{out}");
    // The user who knows better can turn the check off (only `check` is run here: a run would
    // really try to allocate).
    let o = run(&[
        "check",
        "--config",
        p.to_str().unwrap(),
        "--set",
        huge,
        "--set",
        "runtime.memory_check=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_prints_the_memory_estimate_and_what_the_process_may_use() {
    let (dir, cfg) = setup("");
    let p = write_file(dir.path(), "c.toml", &cfg);
    let o = run(&["check", "--config", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "memory estimate (fused trainer)",
        "weights, gradients, AdamW moments",
        "training activations (batch x seq)",
        "prefetch queues",
        "this process may use",
    ] {
        assert!(out.contains(needle), "`{needle}` missing from: {out}");
    }
}
