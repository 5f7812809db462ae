//! The `mos-runtime` binary: a thin shell over the library. It parses arguments, loads the config,
//! installs logging and the Prometheus exporter (the library never does), runs, and maps errors to
//! exit codes: 0 success, 1 runtime failure, 2 bad configuration or input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use mos_runtime::config::Config;
use mos_runtime::runtime::{prepare, run_until_done, RuntimeError, StartOptions};
use mos_runtime::telemetry;
use mos_runtime::trainer::RunSummary;

#[derive(Parser, Debug)]
#[command(
    name = "mos-runtime",
    version,
    about = "Fine-tune language models on many datasets while MoS learns the mixture"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set runtime.max_steps=50` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Start from step 0 even if `runtime.output_dir` holds checkpoints (refused over an
    /// existing run unless `--overwrite` is given too).
    #[arg(long, global = true)]
    fresh: bool,
    /// With `--fresh`: archive the existing run to `output_dir/archive/<time>/` and start over.
    #[arg(long, global = true, requires = "fresh")]
    overwrite: bool,
    /// Resume even though the dataset list changed since the checkpoint (the mixture, loader
    /// cursors and probe sets are remapped by dataset name).
    #[arg(long, global = true)]
    allow_dataset_change: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the training daemon (the default when no subcommand is given).
    Run,
    /// Validate the config and datasets and print a summary, without training.
    Check,
    /// Re-run the scheduler on the rewards recorded in a mixture log and check that it
    /// reproduces every recorded mixture exactly.
    Replay {
        /// A `mixture.jsonl` written by a run.
        #[arg(long)]
        log: PathBuf,
    },
    /// Serve only the MoS scheduler over HTTP (`[service]` and `[scheduler]` of the config):
    /// clients register datasets, post probe statistics and read the mixture.
    Serve,
    /// Run a grid of strategies x seeds from an experiment file (one training run per cell, as
    /// a child process), skipping runs already finished, then write the results table and the
    /// mixture plots under the experiment's `output_dir/report/`.
    Experiment {
        /// The experiment file (e.g. experiments/six-skills.toml).
        file: PathBuf,
        /// Only (re)write the report from the runs already finished.
        #[arg(long)]
        report_only: bool,
        /// Print the planned runs and their overrides, then stop.
        #[arg(long)]
        dry_run: bool,
        /// Runs at a time (each gets cores / jobs rayon threads). Small models train faster
        /// as two single-threaded runs than as one run on two threads.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Render SVG plots (mixture weights, eval loss, training loss) from a run's logs.
    Report {
        /// The run's output directory.
        output_dir: PathBuf,
    },
}

/// An error already worth its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

fn input_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

/// The error and its causes on one line. The library's errors keep their causes as `source`
/// and most also quote them in their own message, so a cause whose text is already in the line
/// is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", report(&f.error));
            ExitCode::from(f.code)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let path = cli.config.clone().ok_or_else(|| {
        input_error(anyhow::anyhow!(
            "no config given: pass --config FILE (e.g. --config configs/demo.toml)"
        ))
    })?;
    Config::load(&path, &cli.set).map_err(input_error)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Some(Command::Replay { ref log }) => replay(log),
        Some(Command::Report { ref output_dir }) => {
            let files = mos_runtime::report::render_report(output_dir).map_err(input_error)?;
            for f in files {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Some(Command::Check) => check(load_config(&cli)?),
        Some(Command::Experiment {
            ref file,
            report_only,
            dry_run,
            jobs,
        }) => experiment(file, report_only, dry_run, jobs),
        Some(Command::Serve) => serve(&cli),
        Some(Command::Run) | None => {
            let opts = StartOptions {
                fresh: cli.fresh,
                overwrite: cli.overwrite,
                allow_dataset_change: cli.allow_dataset_change,
                rollbacks: 0,
            };
            daemon(load_config(&cli)?, opts)
        }
    }
}

/// `serve`: the scheduler alone behind HTTP until SIGINT/SIGTERM. Its config needs no
/// `[[datasets]]`; bad config, a missing token or an unusable address exit with 2.
fn serve(cli: &Cli) -> Result<(), Failure> {
    let path = cli.config.clone().ok_or_else(|| {
        input_error(anyhow::anyhow!(
            "no config given: pass --config FILE (e.g. --config configs/service.toml)"
        ))
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let cfg =
        mos_runtime::config::load_service_config(&path, &cli.set, &env).map_err(input_error)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mos-service")
        .build()?;
    rt.block_on(async move {
        let listener = mos_runtime::service::bind(&cfg)
            .await
            .map_err(input_error)?;
        let handle = mos_runtime::service::serve_with_env(&cfg, listener, &env)
            .await
            .map_err(input_error)?;
        // The token is deliberately not part of this line (nor of any other).
        tracing::info!(
            "MoS scheduler service on {} (writes need the bearer token; API: {}/v1/openapi.yaml)",
            handle.url(),
            handle.url()
        );
        wait_signal().await;
        tracing::info!("signal received: stopping the service");
        handle.shutdown().await?;
        Ok(())
    })
}

/// `experiment`: runs the grid's unfinished (seed, cell) pairs as child processes of this
/// executable (`mos_runtime::experiment::run_grid`), printing each run's progress, then the
/// report. The exit code is 1 if any run failed.
fn experiment(
    file: &std::path::Path,
    report_only: bool,
    dry_run: bool,
    jobs: usize,
) -> Result<(), Failure> {
    use mos_runtime::experiment::{run_grid, ExperimentSpec, GridEvent, GridOptions};
    let spec = ExperimentSpec::load(file).map_err(input_error)?;
    let opts = GridOptions {
        exe: std::env::current_exe().context("cannot locate the mos-runtime executable")?,
        jobs,
        dry_run,
        report_only,
        threads: std::env::var("RAYON_NUM_THREADS").ok(),
    };
    let outcome = run_grid(&spec, &opts, |event| match event {
        GridEvent::Skipped { label } => println!("{label}: finished earlier, skipped"),
        GridEvent::WouldRun { label, overrides } => {
            println!(
                "{label}: would run with --set {}",
                overrides.join(" --set ")
            )
        }
        GridEvent::Started { label, log } => {
            println!("{label}: running (log: {})", log.display())
        }
        GridEvent::Done {
            label,
            seconds,
            mean_eval_loss,
        } => println!("{label}: done in {seconds:.0} s, mean held-out loss {mean_eval_loss:.4}"),
        GridEvent::Failed { label, reason } => eprintln!("{label}: {reason}"),
    })
    .map_err(|e| match e {
        mos_runtime::experiment::ExperimentError::Spawn { .. } => Failure::from(e),
        other => input_error(other),
    })?;
    if dry_run {
        return Ok(());
    }
    if outcome.results.is_empty() {
        println!("no finished runs yet: nothing to report");
    }
    for f in &outcome.report {
        println!("wrote {}", f.display());
    }
    if outcome.failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{} run(s) failed: {}",
            outcome.failed.len(),
            outcome.failed.join(", ")
        )
        .into())
    }
}

fn replay(log: &std::path::Path) -> Result<(), Failure> {
    use mos_runtime::replay::ReplayError;
    match mos_runtime::replay::replay(log) {
        Ok(r) => {
            println!(
                "replay OK: {} updates ({} learned) reproduced bit for bit; final mixture {:?}",
                r.updates, r.learned, r.last
            );
            Ok(())
        }
        Err(e @ ReplayError::Mismatch { .. }) => Err(Failure {
            code: 1,
            error: anyhow::anyhow!("replay diverged from {}: {e}", log.display()),
        }),
        Err(e) => Err(input_error(e)),
    }
}

/// Errors that come from the user's input (config, data) exit with 2; the rest with 1.
fn classify(e: RuntimeError) -> Failure {
    match e {
        RuntimeError::Config(_) | RuntimeError::Data(_) | RuntimeError::Mixture(_) => {
            input_error(e)
        }
        RuntimeError::OutputDir { .. }
        | RuntimeError::BackendUnavailable(_)
        | RuntimeError::ExistingRun { .. }
        | RuntimeError::ResumeMismatch { .. }
        | RuntimeError::Pretrained(_)
        | RuntimeError::Init { .. }
        | RuntimeError::Memory { .. } => input_error(e),
        other => other.into(),
    }
}

fn check(cfg: Config) -> Result<(), Failure> {
    let source = cfg
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let p = prepare(cfg).map_err(classify)?;
    // The shape of a pretrained checkpoint comes from its own metadata (read by `prepare`).
    let llama = p.model.clone();
    println!(
        "strategy {:?}, backend {}, {} steps, batch {} x seq {}",
        p.cfg.scheduler.strategy,
        p.cfg.runtime.backend,
        p.cfg.runtime.max_steps,
        p.cfg.training.batch_size,
        p.cfg.training.seq_len
    );
    println!(
        "{:<16} {:>9} {:>7} {:>6} {:>9}  path",
        "dataset", "train", "eval", "bad", "mixture"
    );
    for (d, w) in p.datasets.iter().zip(&p.prior) {
        println!(
            "{:<16} {:>9} {:>7} {:>6} {:>9.4}  {}",
            d.name,
            d.train.len(),
            d.eval.len(),
            d.bad_records,
            w,
            d.path.display()
        );
    }
    println!(
        "model: {} layers, d_model {}, {} heads ({} kv), vocab {}: {} parameters",
        llama.n_layers,
        llama.d_model,
        llama.n_heads,
        llama.n_kv_heads,
        llama.vocab_size,
        llama.num_params()
    );
    if let Some(init) = &p.init {
        // A run over an output directory with a checkpoint resumes it instead, so say so here
        // rather than let "OK" suggest the init will be used.
        let resumes = !mos_runtime::checkpoint::list(&p.cfg.runtime.output_dir).is_empty();
        println!(
            "initial weights from model.init = {init}: shape matches ({}){}",
            init.shape,
            if resumes {
                "; not used while runtime.output_dir holds a checkpoint, which a run resumes instead"
            } else {
                ""
            }
        );
    }
    use mos_runtime::runtime::memory;
    let estimate = memory::estimate(&p);
    print!("{estimate}");
    let limit = memory::memory_limit();
    match limit {
        Some(l) => println!(
            "this process may use {} ({})",
            memory::human_bytes(l.bytes as f64),
            l.source
        ),
        None => println!("this platform does not say how much memory the process may use"),
    }
    // `check` refuses what a run would refuse, so "OK" means the run can start.
    memory::refuse_over(&estimate, p.cfg.runtime.memory_check, limit).map_err(classify)?;
    println!("config {source}: OK");
    Ok(())
}

fn install_metrics(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.metrics.enabled {
        return Ok(());
    }
    let addr: std::net::SocketAddr = cfg
        .metrics
        .listen
        .parse()
        .context("metrics.listen is not a socket address")?;
    // Bind once ourselves first: the exporter binds on a background task, where a port in use
    // would only be logged, after training had started.
    std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} (metrics.listen): is another process using the port?")
    })?;
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for m in telemetry::CATALOGUE {
        if m.kind == telemetry::MetricKind::Histogram {
            builder = builder
                .set_buckets_for_metric(
                    Matcher::Full(m.name.to_string()),
                    telemetry::histogram_buckets(m.name),
                )
                .context("histogram buckets")?;
        }
    }
    builder
        .install()
        .with_context(|| format!("cannot serve metrics on {addr} (metrics.listen)"))?;
    telemetry::describe();
    metrics::gauge!(telemetry::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "backend" => cfg.runtime.backend.to_string())
    .set(1.0);
    tracing::info!("metrics on http://{addr}/metrics");
    Ok(())
}

/// `run`: the runtime until the run ends (`runtime::run_until_done`, which also makes the
/// rollbacks of `training.on_nonfinite = "rollback"`). The first SIGINT/SIGTERM asks for a
/// clean stop; a second one, or `runtime.shutdown_grace_secs` without an end, exits at once
/// with 130.
fn daemon(cfg: Config, start: StartOptions) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mos-worker")
        .build()?;
    rt.block_on(async move {
        install_metrics(&cfg).map_err(input_error)?;
        let grace = Duration::from_secs(cfg.runtime.shutdown_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_signal().await;
            tracing::warn!(
                "signal received: finishing the current step and writing a checkpoint (again to exit now)"
            );
            let _ = stop_tx.send(true);
            tokio::select! {
                _ = wait_signal() => eprintln!("second signal: exiting now"),
                _ = tokio::time::sleep(grace) => {
                    eprintln!("grace period of {}s exceeded: exiting now", grace.as_secs());
                }
            }
            std::process::exit(130);
        });
        let summary = run_until_done(cfg, start, stop_rx)
            .await
            .map_err(classify)?;
        print_summary(&summary);
        Ok(())
    })
}

fn print_summary(summary: &RunSummary) {
    println!(
        "finished: {} steps in {:.1}s ({:.0} tokens/s), loss {:.4} -> {:.4}{}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_second,
        summary.first_loss,
        summary.last_loss,
        if summary.interrupted {
            " (stopped on request)"
        } else {
            ""
        }
    );
    if let Some(from) = summary.resumed_from {
        println!("resumed from the checkpoint at step {from}");
    }
    if let Some(dir) = &summary.last_checkpoint {
        println!("last checkpoint: {}", dir.display());
    }
    if !summary.eval.is_empty() {
        println!("held-out loss per dataset:");
        for (name, loss) in &summary.eval {
            println!("  {name:<16} {loss:.4}");
        }
    }
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
