//! `report::render_report` on the output of a real (tiny, MoS, evaluating) run: it writes the
//! three SVG plots, each a complete SVG naming the datasets it draws.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use mos_runtime::report::render_report;

#[test]
fn report_of_a_tiny_run_writes_svg_plots() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let out = dir.path().join("out");
    let cfg = tiny_config(dir.path(), &out, 30, MOS_SCHEDULER);
    let p = write_file(dir.path(), "run.toml", &cfg);
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(&p)
        .args(["--set", "runtime.eval_every=10"]);
    let mut run = ChildGuard::spawn("mos-runtime run", &mut cmd, dir.path().join("run.log"));
    let context = run.tail_fn();
    let status = wait_until(
        "the 30-step run to finish",
        Duration::from_secs(180),
        || run.child.try_wait().unwrap(),
        context,
    );
    assert!(
        status.success(),
        "run failed ({status})\n{}",
        run.log_tail()
    );

    let files = render_report(&out).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["train_loss.svg", "mixture.svg", "eval_loss.svg"]);
    for f in &files {
        assert!(f.starts_with(out.join("report")), "{}", f.display());
        let svg = std::fs::read_to_string(f).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.len() > 1000,
            "{}: not a complete SVG ({} bytes)",
            f.display(),
            svg.len()
        );
    }
    for f in &files[1..] {
        let svg = std::fs::read_to_string(f).unwrap();
        for ds in ["prose", "maths", "qa", "quotes"] {
            assert!(
                svg.contains(ds),
                "{}: no legend entry for {ds}",
                f.display()
            );
        }
    }
}
