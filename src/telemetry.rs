//! The metrics contract: every metric name, its type, unit and description, in one place.
//!
//! Library code records through the `metrics` facade using these constants; it never installs a
//! recorder (the binary or the embedding host does). [`describe`] registers the descriptions, which
//! `promtool check metrics` requires, and [`CATALOGUE`] is the documented list that tests compare
//! against what the program really emits. Labels are bounded: `dataset` comes from the config,
//! `reward` is `cossim` or `diff` and `reason` is one of `mixture::REJECT_REASONS`; a step
//! number is never a label.

/// Kind of a metric in the Prometheus exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Instantaneous value.
    Gauge,
    /// Histogram with the explicit buckets of [`histogram_buckets`].
    Histogram,
}

/// One documented metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// Full metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// What it means.
    pub help: &'static str,
}

macro_rules! metrics_catalogue {
    ($( $konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal; )*) => {
        $(
            #[doc = $help]
            pub const $konst: &str = $name;
        )*
        /// Every metric the runtime can emit, documented.
        pub const CATALOGUE: &[MetricDoc] = &[
            $( MetricDoc { name: $name, kind: MetricKind::$kind, labels: &[$($label),*], help: $help }, )*
        ];
    };
}

metrics_catalogue! {
    BUILD_INFO = "mos_build_info", Gauge, ["version", "backend"], "Always 1; labels carry the crate version and the configured backend.";
    MIXTURE_WEIGHT = "mos_mixture_weight", Gauge, ["dataset"], "Current sampling probability of each dataset (0..1).";
    MIXTURE_VERSION = "mos_mixture_version", Gauge, [], "Version number of the published mixture; increments on every publish.";
    TRAIN_STEP = "mos_train_step", Gauge, [], "Optimiser steps completed.";
    TRAIN_LOSS = "mos_train_loss", Gauge, [], "Training loss (mean over target tokens) of the last step.";
    TRAIN_LR = "mos_train_learning_rate", Gauge, [], "Learning rate used by the last step.";
    TRAIN_TOKENS = "mos_train_tokens_total", Counter, [], "Tokens fed to the model in training steps (padding excluded).";
    TRAIN_STEP_DURATION = "mos_train_step_duration_seconds", Histogram, [], "Wall time of one training step, batch assembly included.";
    TRAIN_STEPS_SKIPPED = "mos_train_steps_skipped_total", Counter, [], "Steps skipped because the loss was not finite.";
    DATA_WAIT = "mos_trainer_data_wait_seconds_total", Counter, [], "Time the trainer spent waiting for loaders, in whole seconds (the fraction is carried to the next increment).";
    DATA_WAIT_BATCH = "mos_trainer_data_wait_seconds", Histogram, [], "Time the trainer waited for loaders while assembling one batch; its _sum is the total wait at full resolution.";
    DATASET_SAMPLES = "mos_dataset_samples_total", Counter, ["dataset"], "Training examples drawn from each dataset.";
    EVAL_LOSS = "mos_eval_loss", Gauge, ["dataset"], "Held-out loss of each dataset at the last evaluation.";
    EVAL_EXACT_MATCH = "mos_eval_exact_match", Gauge, ["dataset"], "Fraction of held-out short answers reproduced exactly by greedy decoding at the end of the run.";
    EVAL_DURATION = "mos_eval_duration_seconds", Histogram, [], "Wall time of one evaluation over every dataset's held-out examples.";
    LOADER_QUEUE_DEPTH = "mos_loader_queue_depth", Gauge, ["dataset"], "Examples waiting in each loader's prefetch queue.";
    LOADER_BAD_RECORDS = "mos_loader_bad_records_total", Counter, ["dataset"], "Malformed records skipped while reading each dataset.";
    LOADER_EXAMPLES = "mos_loader_examples_total", Counter, ["dataset"], "Examples tokenized and queued by each loader.";
    LOADER_EPOCHS = "mos_loader_epochs_total", Counter, ["dataset"], "Passes each loader completed over its training split.";
    REPORTS_DROPPED = "mos_reports_dropped_total", Counter, [], "Trainer reports dropped because a receiver's queue was full.";
    SCHEDULER_UPDATES = "mos_scheduler_updates_total", Counter, [], "Mixture updates performed by the scheduler.";
    SCHEDULER_UPDATES_REJECTED = "mos_scheduler_updates_rejected_total", Counter, ["reason"], "Mixture updates refused, by reason; the mixture was kept and the run went on (a reward out of range or not finite, bad probe statistics, or a new scorer state that would not be finite, could no longer move or would give a dataset probability 0).";
    SCHEDULER_UPDATE_DURATION = "mos_scheduler_update_duration_seconds", Histogram, [], "Wall time of one scheduler update (scorer optimisation included).";
    REWARD = "mos_reward", Gauge, ["dataset", "reward"], "Raw reward of each dataset at the last update.";
    REWARD_SMOOTHED = "mos_reward_smoothed", Gauge, ["dataset", "reward"], "Reward after EMA smoothing (equal to the raw reward when the EMA is off).";
    PROBE_DURATION = "mos_probe_duration_seconds", Histogram, [], "Wall time of one batched probe forward pass over every dataset's probe set.";
    ACTOR_RESTARTS = "mos_actor_restarts_total", Counter, ["actor"], "Actor restarts performed by the supervisor (actor is loader, the one kind it restarts; the log names the dataset).";
    DATASETS_LIVE = "mos_datasets_live", Gauge, [], "Datasets whose loader is running (a failed loader is out until restarted; a dropped one for good).";
    DATASETS_DROPPED = "mos_datasets_dropped_total", Counter, [], "Datasets dropped from the run after their loader kept failing.";
    CHECKPOINT_DURATION = "mos_checkpoint_duration_seconds", Histogram, [], "Wall time to write one checkpoint.";
    CHECKPOINTS_WRITTEN = "mos_checkpoints_written_total", Counter, [], "Checkpoints committed.";
    CHECKPOINT_FAILURES = "mos_checkpoint_failures_total", Counter, [], "Checkpoints that could not be written (the run goes on; the previous checkpoint stays).";
    CHECKPOINTS_INVALID = "mos_checkpoints_invalid_total", Counter, [], "Damaged or incomplete checkpoints skipped at start-up.";
    ROLLBACKS = "mos_rollbacks_total", Counter, [], "Rollbacks to the last checkpoint after repeated non-finite losses.";
    MIXTURE_LATE = "mos_mixture_late_total", Counter, [], "Update boundaries at which the previous report's mixture was not yet published (the trainer went on with the older one).";
}

/// Buckets for a histogram metric, chosen for the durations it measures.
pub fn histogram_buckets(name: &str) -> &'static [f64] {
    match name {
        TRAIN_STEP_DURATION => &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
        SCHEDULER_UPDATE_DURATION | DATA_WAIT_BATCH => &[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
        ],
        _ => &[
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    }
}

/// The values a bounded label can take that are known before the run starts, besides `dataset`
/// (the config's dataset names). A labelled counter is registered at zero for each of them.
pub const LABEL_VALUES: &[(&str, &[&str])] = &[("actor", &["loader"])];

/// Registers every counter of the catalogue at zero, for every label value known at start
/// (`datasets` for the `dataset` label, [`LABEL_VALUES`] for the others), so dashboards and
/// alerts see a series and a rate of 0 from the first scrape instead of "no data" until the
/// first rare event. Returns how many series it registered. A label whose values belong to a
/// layer above this one (`reason`, from `mixture::REJECT_REASONS`) is registered by its owner:
/// the scheduler actor registers each reason when it starts.
pub fn register_counters_at_zero(datasets: &[String]) -> usize {
    let mut registered = 0;
    for m in CATALOGUE.iter().filter(|m| m.kind == MetricKind::Counter) {
        match m.labels {
            [] => {
                metrics::counter!(m.name).increment(0);
                registered += 1;
            }
            [label] => {
                let values: Vec<String> = if *label == "dataset" {
                    datasets.to_vec()
                } else {
                    match LABEL_VALUES.iter().find(|(l, _)| l == label) {
                        Some((_, v)) => v.iter().map(|s| s.to_string()).collect(),
                        None => continue,
                    }
                };
                for v in values {
                    metrics::counter!(m.name, *label => v).increment(0);
                    registered += 1;
                }
            }
            _ => {}
        }
    }
    registered
}

/// Registers the description of every metric with the installed recorder.
pub fn describe() {
    for m in CATALOGUE {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => {
                let unit = metrics::Unit::Seconds;
                metrics::describe_histogram!(m.name, unit, m.help)
            }
        }
    }
}
