//! Starts the MoS scheduler service from a `Config` value inside the host's own tokio runtime, and
//! prints every new mixture version as clients post updates.
//!
//! ```sh
//! MOS_SERVICE_TOKEN=dev-token cargo run --release --example scheduler_service -- --seconds 60
//! # in another shell:
//! python3 examples/python_client_loop.py --url http://127.0.0.1:8750 --token dev-token
//! ```
//!
//! Arguments: `--listen ADDR` (default 127.0.0.1:8750), `--seconds N` (stop after N seconds;
//! default: run until Ctrl-C).

use std::time::Duration;

use mos_runtime::config::{Config, RewardKind, TOKEN_ENV};
use mos_runtime::service;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The host builds the config in code; a file works as well (`config::load_service_config`).
    let mut cfg = Config::default();
    cfg.service.listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8750".to_string());
    cfg.scheduler.reward = RewardKind::Diff;
    cfg.scheduler.ema = true;
    cfg.scheduler.scorer_lr = 1e-3;
    if std::env::var(TOKEN_ENV).is_err() {
        return Err(format!("set {TOKEN_ENV} to the bearer token clients will send").into());
    }

    let listener = service::bind(&cfg).await?;
    // `serve` reads the token from the environment; it spawns the server on this runtime.
    let handle = service::serve(&cfg, listener).await?;
    println!("MoS scheduler service on {}", handle.url());

    let deadline = arg("--seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    // The host reads the mixture in-process, lock-free, while HTTP clients drive the updates.
    let mut seen = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(m) = handle.mixture() {
                    if seen != Some(m.version) {
                        seen = Some(m.version);
                        let w: Vec<String> = m
                            .names
                            .iter()
                            .zip(&m.weights)
                            .map(|(n, w)| format!("{n}={w:.4}"))
                            .collect();
                        println!("version {:3} step {:6}: {}", m.version, m.step, w.join(" "));
                    }
                }
            }
        }
    }
    handle.shutdown().await?;
    println!("stopped");
    Ok(())
}
