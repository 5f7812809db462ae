//! A corpus of bad input, through the binary: malformed and mistyped configs, huge lines, invalid
//! UTF-8, truncated JSONL, empty files, directories where files belong. Never a panic; always a
//! message naming the input (file, line or key); exit 2 for what stops the run, exit 0 with a
//! counted and logged skip for a bad record among good ones.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn check(cfg: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the exit code, the absence of a panic, and that every needle appears.
fn expect(o: &Output, code: i32, needles: &[&str], case: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(code), "{case}: {t}");
    assert!(!t.contains("panicked"), "{case}: panic: {t}");
    for n in needles {
        assert!(t.contains(n), "{case}: `{n}` missing from: {t}");
    }
}

struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_corpus(dir.path());
        Corpus { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The tiny config with `from` replaced by `to`, written as `name`.
    fn config_with(&self, name: &str, from: &str, to: &str) -> std::path::PathBuf {
        let base = tiny_config(self.dir.path(), &self.path("out"), 5, "");
        assert!(base.contains(from), "{from}");
        write_file(self.dir.path(), name, &base.replacen(from, to, 1))
    }
}

#[test]
fn bad_configs_name_the_file_line_or_key() {
    let c = Corpus::new();
    let good = tiny_config(c.dir.path(), &c.path("out"), 5, "");

    let f = write_file(c.dir.path(), "syntax.toml", "[runtime\nseed = 1\n");
    expect(
        &check(&f, &[]),
        2,
        &["syntax.toml", "line 1"],
        "malformed TOML",
    );

    let f = c.config_with("types.toml", "max_steps = 5", "max_steps = \"five\"");
    expect(
        &check(&f, &[]),
        2,
        &["types.toml", "max_steps"],
        "wrong type",
    );

    let f = c.config_with("neg.toml", "batch_size = 4", "batch_size = -4");
    expect(&check(&f, &[]), 2, &["batch_size"], "negative size");

    let mut bytes = good.clone().into_bytes();
    bytes.splice(0..0, [0xff, 0xfe, b'\n']);
    let f = c.path("utf8.toml");
    std::fs::write(&f, bytes).unwrap();
    expect(&check(&f, &[]), 2, &["utf8.toml"], "invalid UTF-8 config");

    let f = write_file(c.dir.path(), "empty.toml", "");
    expect(
        &check(&f, &[]),
        2,
        &["empty.toml", "datasets"],
        "empty config",
    );

    expect(
        &check(c.dir.path(), &[]),
        2,
        &[&c.dir.path().display().to_string()],
        "a directory as the config",
    );

    let f = write_file(c.dir.path(), "ok.toml", &good);
    expect(
        &check(&f, &["--set", "training.lr"]),
        2,
        &["training.lr"],
        "--set without a value",
    );
    expect(
        &check(&f, &["--set", "training.lr=fast"]),
        2,
        &["training.lr"],
        "--set with a wrong type",
    );
    let o = Command::new(bin())
        .args(["check", "--config"])
        .arg(&f)
        .env("MOS_TRAINING__BATCH_SIZE", "many")
        .output()
        .unwrap();
    expect(
        &o,
        2,
        &["MOS_TRAINING__BATCH_SIZE", "batch_size"],
        "environment override with a wrong type",
    );
}

#[test]
fn bad_records_are_skipped_counted_and_named_by_file_and_line() {
    let c = Corpus::new();
    let prose = c.path("prose.jsonl");
    let mut data = std::fs::read(&prose).unwrap();
    // Line 121: a huge record (over data.max_record_bytes = 4096 set below).
    data.extend_from_slice(format!("{{\"text\": \"{}\"}}\n", "x".repeat(10_000)).as_bytes());
    // Line 122: invalid UTF-8 inside the string.
    data.extend_from_slice(b"{\"text\": \"caf\xc3\x28 au lait\"}\n");
    // Line 123: a truncated record at the end of the file, no newline.
    data.extend_from_slice(b"{\"text\": \"the cat sat on");
    std::fs::write(&prose, data).unwrap();
    let f = write_file(
        c.dir.path(),
        "ok.toml",
        &tiny_config(c.dir.path(), &c.path("out"), 5, ""),
    );
    let o = check(&f, &["--set", "data.max_record_bytes=4096"]);
    let t = text(&o);
    expect(
        &o,
        0,
        &["prose.jsonl:121", "prose.jsonl:122", "prose.jsonl:123"],
        "bad records among good ones",
    );
    // `check` prints the bad-record count of each dataset.
    let row = t.lines().find(|l| l.starts_with("prose")).unwrap();
    assert!(
        row.split_whitespace().nth(3) == Some("3"),
        "three bad records counted: {row}"
    );
}

#[test]
fn unusable_datasets_stop_start_up_naming_the_file() {
    let c = Corpus::new();
    let empty = write_file(c.dir.path(), "empty.jsonl", "");
    let f = c.config_with(
        "empty-ds.toml",
        "/prose.jsonl",
        &format!("/{}", empty.file_name().unwrap().to_str().unwrap()),
    );
    expect(&check(&f, &[]), 2, &["empty.jsonl"], "empty dataset file");

    let junk = c.path("junk.jsonl");
    std::fs::write(&junk, [0xffu8, 0x00, 0x13, 0x37, b'\n', 0x80, b'\n']).unwrap();
    let f = c.config_with("junk-ds.toml", "/prose.jsonl", "/junk.jsonl");
    expect(
        &check(&f, &[]),
        2,
        &["junk.jsonl"],
        "binary garbage dataset",
    );

    let huge = c.path("huge.jsonl");
    std::fs::write(
        &huge,
        format!("{{\"text\": \"{}\"}}\n", "y".repeat(3 << 20)),
    )
    .unwrap();
    let f = c.config_with("huge-ds.toml", "/prose.jsonl", "/huge.jsonl");
    expect(
        &check(&f, &[]),
        2,
        &["huge.jsonl"],
        "a dataset whose only line is over the record limit",
    );

    let f = c.config_with("dir-ds.toml", "/prose.jsonl", "/");
    expect(
        &check(&f, &[]),
        2,
        &["not a regular file"],
        "directory as dataset",
    );

    let f = c.config_with("missing-ds.toml", "/prose.jsonl", "/nope.jsonl");
    expect(&check(&f, &[]), 2, &["nope.jsonl"], "missing dataset");

    let base = tiny_config(c.dir.path(), &c.path("out"), 5, "");
    let with_tok = base.replacen(
        "[model]\n",
        &format!(
            "[model]\ntokenizer = \"hf\"\ntokenizer_path = \"{}\"\n",
            c.dir.path().display()
        ),
        1,
    );
    let f = write_file(c.dir.path(), "tok-dir.toml", &with_tok);
    expect(
        &check(&f, &[]),
        2,
        &[&c.dir.path().display().to_string()],
        "directory as tokenizer",
    );
    let bad_tok = write_file(c.dir.path(), "tokenizer.json", "{\"model\": 12");
    let with_tok = base.replacen(
        "[model]\n",
        &format!(
            "[model]\ntokenizer = \"hf\"\ntokenizer_path = \"{}\"\n",
            bad_tok.display()
        ),
        1,
    );
    let f = write_file(c.dir.path(), "tok-bad.toml", &with_tok);
    expect(
        &check(&f, &[]),
        2,
        &["tokenizer.json"],
        "malformed tokenizer",
    );
}

#[test]
fn a_prior_that_underflows_stops_the_run_naming_init_temperature() {
    // A tiny temperature with unequal dataset sizes gives the smaller datasets a prior of
    // exactly 0 (a -inf logit that no update could move); the run must refuse to start.
    let c = Corpus::new();
    let f = write_file(
        c.dir.path(),
        "tiny-tau.toml",
        &tiny_config(
            c.dir.path(),
            &c.path("out"),
            5,
            "[scheduler]\nstrategy = \"mos\"\ninit_temperature = 0.0001\n",
        ),
    );
    let o = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&f)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    expect(
        &o,
        2,
        &["scheduler.init_temperature", "probability exactly 0"],
        "a prior that underflows",
    );
    // `check` refuses it the same way, so "OK" means the run can start.
    expect(
        &check(&f, &[]),
        2,
        &["scheduler.init_temperature"],
        "check of a prior that underflows",
    );
    // An ordinary temperature on the same data starts (the refusal was about the prior).
    expect(
        &check(&f, &["--set", "scheduler.init_temperature=10"]),
        0,
        &["OK"],
        "the same config with an ordinary temperature",
    );
}
