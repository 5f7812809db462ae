//! `mos-runtime experiment`: a grid of cells x seeds runs as child processes, the report has
//! every cell with spreads, finished runs are skipped on the next invocation (an interrupted
//! grid continues), and a bad experiment file is refused before anything trains.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// A base config (qa scored by exact match) and an experiment over it.
fn setup(dir: &Path, cells: &str) -> std::path::PathBuf {
    write_corpus(dir);
    let base = tiny_config(dir, &dir.join("unused"), 6, "")
        .replace("name = \"qa\"\n", "name = \"qa\"\nexact_match = true\n");
    write_file(dir, "base.toml", &base);
    let out = dir.join("grid");
    write_file(
        dir,
        "grid.toml",
        &format!(
            r#"
base = "base.toml"
output_dir = "{}"
seeds = [1, 2]
target = "maths"
{baseline}set = ["scheduler.update_every=2", "scheduler.probe_size=4"]
{cells}
"#,
            out.display(),
            baseline = if cells.contains("name = \"uniform\"") {
                "baseline = \"uniform\"\n"
            } else {
                ""
            },
        ),
    )
}

const CELLS: &str = r#"
[[cells]]
name = "uniform"
set = ['scheduler.strategy="uniform"']

[[cells]]
name = "mos-diff"
set = ['scheduler.strategy="mos"', 'scheduler.reward="diff"', "scheduler.scorer_lr=0.1"]

[[cells]]
name = "maths-only"
group = "specialist"
set = ['data.only=["maths"]', 'scheduler.strategy="uniform"']
"#;

#[test]
fn grid_runs_reports_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let grid = setup(dir.path(), CELLS);
    let g = grid.to_str().unwrap();
    let o = run(&["experiment", g, "--jobs", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.matches(": running").count(), 6, "{out}");

    let report = dir.path().join("grid/report");
    let md = std::fs::read_to_string(report.join("results.md")).unwrap();
    for needle in [
        "Paired difference to `uniform`",
        "seeds better on macro-avg",
        "| uniform |",
        "| mos-diff |",
        "| maths-only |",
        "macro-avg",
        "±",
        "Exact match",
        "qa",
    ] {
        assert!(md.contains(needle), "`{needle}` missing from:\n{md}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("results.json")).unwrap())
            .unwrap();
    let runs = results.as_array().unwrap();
    assert_eq!(runs.len(), 6);
    // The specialist trained on maths alone; the others on all four skills.
    for r in runs {
        let n = r["eval_loss"].as_object().unwrap().len();
        let want = if r["cell"] == "maths-only" { 1 } else { 4 };
        assert_eq!(n, want, "{r}");
        if r["cell"] != "maths-only" {
            let em = &r["exact_match"]["qa"];
            assert!(em["total"].as_u64().unwrap() > 0, "{r}");
        }
    }
    // MoS moved its mixture, so it has a trajectory plot; the static cells do not.
    assert!(report.join("mixture-mos-diff.svg").exists());
    assert!(!report.join("mixture-uniform.svg").exists());

    // A second invocation runs nothing; after losing one result it runs exactly that one.
    let o = run(&["experiment", g]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert_eq!(out.matches("finished earlier, skipped").count(), 6, "{out}");
    assert_eq!(out.matches(": running").count(), 0, "{out}");
    std::fs::remove_file(dir.path().join("grid/runs/mos-diff/seed-2/result.json")).unwrap();
    let o = run(&["experiment", g]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.matches(": running").count(), 1, "{out}");
    assert!(out.contains("mos-diff seed 2: done"), "{out}");
}

#[test]
fn bad_cell_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let grid = setup(
        dir.path(),
        "[[cells]]\nname = \"a\"\nset = ['scheduler.strategy=\"uniform\"']\n\n[[cells]]\nname = \"b\"\nset = ['data.only=[\"nope\"]']\n",
    );
    let o = run(&["experiment", grid.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("cell \"b\"") && err.contains("data.only") && err.contains("nope"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("grid/logs").exists(), "nothing may run");
}
