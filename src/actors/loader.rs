//! The loader actor: one per dataset, it keeps a bounded crossbeam queue of tokenized examples
//! full for the trainer.
//!
//! The actor itself only supervises: in `pre_start` it spawns a dedicated OS thread that encodes
//! the dataset's stream in order (`n = start_at, start_at + 1, ...`, exactly [`example_at`](crate::data::example_at)) and
//! blocks on the bounded channel with `send_timeout`, polling a stop flag. So no blocking send ever
//! runs on a tokio worker, and the thread exits within one poll interval of the actor stopping or
//! the receiver being dropped. A panic on the thread becomes `LoaderMsg::Fail`, whose handler
//! returns an error, so the supervisor sees the loader fail.
//!
//! Ordering: examples arrive in stream order with `seq` increasing by one; nothing is skipped or
//! repeated. Restarting the actor with `start_at` = the next unconsumed `seq` (the trainer's
//! checkpointed cursor, not [`LoaderStats::produced`], which counts queued examples too) resumes
//! the same stream.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::ChatTemplate;
use crate::data::{Dataset, Example, ExampleStream, Tokenizer};
use crate::telemetry;

/// How long the producer thread blocks on a full queue before re-checking the stop flag; bounds
/// how long stopping a loader takes.
const POLL: Duration = Duration::from_millis(20);

/// The loader actor (one per dataset).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoaderActor;

/// Everything a loader needs; built by the supervisor.
#[derive(Debug)]
pub struct LoaderArgs {
    /// Index of the dataset in the config (part of the shuffle seed, and `Example::dataset`).
    pub dataset_index: usize,
    /// The loaded dataset (must have a non-empty train split).
    pub dataset: Arc<Dataset>,
    /// The tokenizer shared by every loader.
    pub tokenizer: Arc<Tokenizer>,
    /// The chat template.
    pub template: ChatTemplate,
    /// Tokens per example after truncation.
    pub seq_len: usize,
    /// The run's data seed.
    pub seed: u64,
    /// First stream position to produce (0 for a fresh run; the checkpointed cursor on resume;
    /// `position` when the supervisor restarts a failed loader).
    pub start_at: u64,
    /// Shared with the supervisor: the stream position of the next example to queue. Examples
    /// already queued stay in the channel when a loader dies, so a restarted loader continues
    /// from here and the trainer sees the stream without a gap or a repeat.
    pub position: Arc<AtomicU64>,
    /// The sending side of the bounded queue (capacity `data.prefetch`) the trainer reads.
    pub sender: Sender<Example>,
}

/// Messages of the loader actor.
#[derive(Debug)]
pub enum LoaderMsg {
    /// Internal: the producer thread failed (panicked); the actor stops with this error.
    Fail(String),
    /// Internal: the receiver was dropped; the actor stops normally.
    ReceiverGone,
    /// Query the loader's progress.
    Stats(RpcReplyPort<LoaderStats>),
}

/// A loader's progress, read from atomics (never waits on the producer thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderStats {
    /// Examples queued since this actor started.
    pub produced: u64,
    /// Stream position of the next example to be queued (`start_at + produced`).
    pub next_seq: u64,
    /// Passes over the train split completed since this actor started.
    pub epochs: u64,
}

/// Counters shared between the producer thread and the actor.
#[derive(Debug, Default)]
struct Progress {
    produced: AtomicU64,
    next_seq: AtomicU64,
    epochs: AtomicU64,
}

/// The actor's state: the producer thread and its stop flag.
#[derive(Debug)]
pub struct LoaderState {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

impl Drop for LoaderState {
    fn drop(&mut self) {
        // Covers the paths where `post_stop` is skipped (handler error, kill): the thread still
        // sees the flag and exits within one poll interval.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How the producer loop ended without an error.
enum Exit {
    Stopped,
    ReceiverGone,
}

impl Actor for LoaderActor {
    type Msg = LoaderMsg;
    type State = LoaderState;
    type Arguments = LoaderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.dataset.train.is_empty() {
            return Err(format!(
                "loader for dataset `{}` ({}): the train split is empty",
                args.dataset.name,
                args.dataset.path.display()
            )
            .into());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress {
            next_seq: AtomicU64::new(args.start_at),
            ..Progress::default()
        });
        let name = format!("loader-{}", args.dataset.name);
        let thread_stop = Arc::clone(&stop);
        let thread_progress = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    produce(&args, &thread_stop, &thread_progress)
                }));
                // The actor may already be gone (stopping): a failed cast is then irrelevant.
                let _ = match outcome {
                    Ok(Exit::Stopped) => Ok(()),
                    Ok(Exit::ReceiverGone) => myself.cast(LoaderMsg::ReceiverGone),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".to_string());
                        myself.cast(LoaderMsg::Fail(format!(
                            "loader thread for dataset `{}` panicked: {what}",
                            args.dataset.name
                        )))
                    }
                };
            })
            .map_err(|e| format!("cannot spawn thread {name}: {e}"))?;
        Ok(LoaderState {
            stop,
            thread: Some(thread),
            progress,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = state.thread.take() {
            // Join off the tokio workers; the thread notices the flag within `POLL`. Joining means
            // that once the actor reports stopped, the sender is dropped and nothing more is sent.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("loader thread did not exit cleanly");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LoaderMsg::Fail(reason) => Err(reason.into()),
            LoaderMsg::ReceiverGone => {
                tracing::debug!("loader receiver dropped; stopping");
                myself.stop(Some("receiver dropped".to_string()));
                Ok(())
            }
            LoaderMsg::Stats(reply) => {
                let p = &state.progress;
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(LoaderStats {
                    produced: p.produced.load(Ordering::Relaxed),
                    next_seq: p.next_seq.load(Ordering::Relaxed),
                    epochs: p.epochs.load(Ordering::Relaxed),
                });
                Ok(())
            }
        }
    }
}

/// The producer loop, run on the loader's own thread.
fn produce(args: &LoaderArgs, stop: &AtomicBool, progress: &Progress) -> Exit {
    let label = args.dataset.name.clone();
    let depth = metrics::gauge!(telemetry::LOADER_QUEUE_DEPTH, "dataset" => label.clone());
    let examples = metrics::counter!(telemetry::LOADER_EXAMPLES, "dataset" => label.clone());
    let epochs = metrics::counter!(telemetry::LOADER_EPOCHS, "dataset" => label);
    let len = args.dataset.train.len() as u64;
    let mut stream = ExampleStream::new(args.dataset_index, args.seed);
    let mut n = args.start_at;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Exit::Stopped;
        }
        if crate::faults::loader_panic(&args.dataset.name, n) {
            // Deliberate, from MOS_FAULTS: exercises the supervisor's restart path.
            panic!("fault injection at stream position {n}");
        }
        let mut item = stream.example(
            &args.dataset,
            &args.tokenizer,
            args.template,
            args.seq_len,
            n,
        );
        loop {
            match args.sender.send_timeout(item, POLL) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) => {
                    if stop.load(Ordering::Relaxed) {
                        return Exit::Stopped;
                    }
                    depth.set(args.sender.len() as f64);
                    item = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Exit::ReceiverGone,
            }
        }
        n += 1;
        progress.produced.fetch_add(1, Ordering::Relaxed);
        progress.next_seq.store(n, Ordering::Relaxed);
        args.position.store(n, Ordering::Release);
        examples.increment(1);
        depth.set(args.sender.len() as f64);
        if len > 0 && n.is_multiple_of(len) {
            progress.epochs.fetch_add(1, Ordering::Relaxed);
            epochs.increment(1);
        }
    }
}
