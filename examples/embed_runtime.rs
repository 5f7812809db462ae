//! Embedding the whole runtime in a host application: start it from a `Config` inside the host's
//! own tokio runtime, watch mixture updates, pause, checkpoint, resume and stop it gracefully.
//!
//! Run: `cargo run --release --example embed_runtime -- configs/demo-mos.toml 120`
//! (config file, then the number of steps after which the host stops the run).

use std::time::Duration;

use mos_runtime::config::Config;
use mos_runtime::runtime::{Runtime, StartOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The host, not the library, installs logging (and a metrics recorder if it wants one).
    tracing_subscriber::fmt().with_target(false).init();
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "configs/demo-mos.toml".into());
    let stop_after: u64 = args.next().map_or(Ok(120), |s| s.parse())?;

    let mut cfg = Config::load(std::path::Path::new(&path), &[])?;
    cfg.runtime.output_dir = "runs/embedded".into();
    cfg.metrics.enabled = false;
    let handle = Runtime::start_with(cfg, StartOptions::default()).await?;

    // Mixture updates arrive on a watch channel; the host could forward them to its own
    // scheduler, dashboard or data service.
    let mut updates = handle.subscribe();
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let snap = updates.borrow_and_update().clone();
            let mix: Vec<String> = snap
                .names
                .iter()
                .zip(&snap.weights)
                .map(|(n, w)| format!("{n}={w:.3}"))
                .collect();
            println!(
                "host: mixture v{} at step {}: {}",
                snap.version,
                snap.step,
                mix.join(" ")
            );
        }
    });

    let mut paused_once = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let step = handle.step();
        if handle.is_finished() || step >= stop_after {
            break;
        }
        if !paused_once && step >= stop_after / 2 {
            // E.g. the host needs the device for a moment: pause, take a checkpoint, go on.
            handle.pause();
            println!("host: paused at step {}", handle.step());
            tokio::time::sleep(Duration::from_secs(1)).await;
            handle.checkpoint();
            handle.resume();
            println!("host: resumed; a checkpoint follows the next step");
            paused_once = true;
        }
    }
    handle.stop();
    let summary = handle.wait().await?;
    println!(
        "host: run stopped at step {} (loss {:.3} -> {:.3}); last checkpoint {:?}",
        summary.steps, summary.first_loss, summary.last_loss, summary.last_checkpoint
    );
    Ok(())
}
