//! The Python package `clients/python` (mos_client) against a real service on loopback: its
//! standard-library unittest suite (`clients/python/tests`) runs under `python3 -m unittest`,
//! with the service's URL and token in the environment, and the mixture log its updates wrote
//! must replay bit for bit.
//!
//! Needs `python3` (3.8+) on PATH (`.ci/install-python.sh` installs it). Without it the test
//! prints why and passes, unless `MOS_REQUIRE_PYTHON` is set (CI sets it), in which case a
//! missing interpreter is a failure. The torch/transformers end-to-end test in the same folder
//! skips itself (with a message) where those packages are absent; `scripts/python-e2e.sh` runs it
//! in a virtual environment that has them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mos_runtime::config::{Config, Secret};
use mos_runtime::service;

const TOKEN: &str = "python-client-token-0123456789";

/// `python3`'s version line, or None when the test should be skipped (missing, not required).
fn python() -> Option<String> {
    let required = std::env::var_os("MOS_REQUIRE_PYTHON").is_some_and(|v| !v.is_empty());
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.version.split()[0]); assert sys.version_info >= (3, 8)",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        other => {
            let why = match other {
                Ok(o) => format!(
                    "python3 is older than 3.8 or broken: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("python3 is not on PATH ({e})"),
            };
            assert!(
                !required,
                "{why}; MOS_REQUIRE_PYTHON is set (install it with .ci/install-python.sh)"
            );
            println!("SKIPPED: {why} (install it with .ci/install-python.sh)");
            None
        }
    }
}

#[test]
fn the_python_client_tests_pass_against_the_service() {
    let Some(version) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mixture.jsonl");
    let mut cfg = Config::default();
    cfg.runtime.seed = 7;
    cfg.scheduler = diff_ema();
    cfg.service.token = Some(Secret::new(TOKEN));
    cfg.service.mixture_log = Some(log.clone());
    let rt = tokio_rt();
    let handle = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        service::serve_with_env(&cfg, listener, &[]).await.unwrap()
    });

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client_dir = root.join("clients/python");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(client_dir.join("tests"))
        .current_dir(dir.path())
        .env("PYTHONPATH", &client_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("MOS_SERVICE_URL", handle.url())
        .env("MOS_SERVICE_TOKEN", TOKEN)
        .env("MOS_RUNTIME_BIN", bin())
        .output()
        .unwrap();
    // unittest reports on stderr.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("python {version}:\n{report}");
    assert!(out.status.success(), "the Python tests failed:\n{report}");
    let ran: usize = report
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `Ran N tests` line:\n{report}"));
    // Guards against a discovery that silently finds (or imports) nothing.
    assert!(ran >= 30, "only {ran} Python tests ran:\n{report}");
    // The standard-library tests never skip; only the torch end-to-end test may.
    for line in report.lines().filter(|l| l.contains("... skipped")) {
        assert!(
            line.contains("test_torch_e2e"),
            "a standard-library test skipped: {line}"
        );
    }
    assert!(!report.contains(TOKEN), "the token is in the test output");

    // What the Python client posted is in the service's log, and it replays bit for bit.
    let history = handle.core().history(0, None).unwrap();
    let last = handle.mixture().unwrap();
    rt.block_on(handle.shutdown()).unwrap();
    assert!(
        history.updates.len() >= 3,
        "the Python tests applied {} updates",
        history.updates.len()
    );
    let replayed = mos_runtime::replay::replay(&log).unwrap();
    assert_eq!(replayed.updates, history.updates.len());
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&replayed.last), bits(&last.weights));
}
