//! What a checkpoint records besides the trainer's tensors.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CheckpointError;
use crate::mixture::{MixtureSampler, MixtureSnapshot, Strategy};
use crate::model::LlamaConfig;

/// Byte lengths of the run's append-only logs when the checkpoint was taken. On resume each log
/// is cut back to this length, so the logs describe the resumed trajectory and never mix in lines
/// from the abandoned tail of a killed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLengths {
    /// `run.jsonl`.
    pub run: u64,
    /// `samples.jsonl` (when sample tracing is on).
    pub samples: Option<u64>,
    /// `mixture.jsonl`.
    pub mixture: u64,
}

/// The trainer's side of the run: everything besides weights and optimiser moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Dataset names, in config order.
    pub names: Vec<String>,
    /// Training-split sizes, in config order (a changed size means changed data).
    pub sizes: Vec<u64>,
    /// The model shape.
    pub model: LlamaConfig,
    /// The kind of learner that wrote the weights and optimiser state (`Learner::kind`), the
    /// one record of it in a checkpoint. None in checkpoints written before it was recorded,
    /// which any learner may try (the built-in ones then name the setting they need).
    #[serde(default)]
    pub learner: Option<String>,
    /// The dataset-choice RNG.
    pub sampler: MixtureSampler,
    /// Examples drawn per dataset since the last report.
    pub counts: Vec<u64>,
    /// Per dataset, the stream position of the next example the trainer will consume.
    pub cursors: Vec<u64>,
    /// The mixture the trainer was sampling from.
    pub active: MixtureSnapshot,
    /// Mixture version the next adoption expects (reports sent so far).
    pub target_version: u64,
    /// Per dataset, the train-record indices of its probe set (MoS).
    pub probe_ids: Vec<Vec<u32>>,
    /// Log lengths at the checkpoint.
    pub logs: LogLengths,
    /// Loss of the run's first step (for the final summary).
    pub first_loss: Option<f32>,
    /// Steps skipped so far for a non-finite loss.
    pub skipped: u64,
}

impl RunState {
    /// Refuses to resume the checkpoint at `dir` with a learner of kind `run` when another
    /// kind wrote it, before any of the learner's files is read.
    pub fn check_learner(&self, dir: &Path, run: &str) -> Result<(), CheckpointError> {
        match &self.learner {
            Some(kind) if kind != run => Err(CheckpointError::LearnerMismatch {
                path: dir.to_path_buf(),
                checkpoint: kind.clone(),
                run: run.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// The scheduler's and the reward actor's side, captured in mailbox order after every report the
/// trainer sent before the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorState {
    /// The scheduler's strategy state (MoS: scorer, Adam moments, update count); None for a
    /// strategy without state, which is rebuilt from the config.
    pub scheduler: Option<Strategy>,
    /// The reward actor's estimator (MoS: its EMA state); None without a reward actor.
    pub estimator: Option<Strategy>,
    /// exp(NLL) of every probe example under theta_0.
    pub initial_ppl: Option<Vec<Vec<f64>>>,
    /// The latest published mixture.
    pub latest: MixtureSnapshot,
}

/// Keys whose values differ between two resolved configs (TOML text), as `key: old -> new`
/// lines, in key order. Used to say what changed since a checkpoint.
pub fn diff_configs(old: &str, new: &str) -> Vec<String> {
    let (Ok(a), Ok(b)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return vec!["(the stored config could not be parsed)".to_string()];
    };
    let mut fa = Vec::new();
    let mut fb = Vec::new();
    flatten("", &toml::Value::Table(a), &mut fa);
    flatten("", &toml::Value::Table(b), &mut fb);
    let ma: std::collections::BTreeMap<_, _> = fa.into_iter().collect();
    let mb: std::collections::BTreeMap<_, _> = fb.into_iter().collect();
    let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (ma.get(k), mb.get(k));
            (x != y).then(|| {
                format!(
                    "{k}: {} -> {}",
                    x.map_or("(unset)".into(), |v| v.to_string()),
                    y.map_or("(unset)".into(), |v| v.to_string())
                )
            })
        })
        .collect()
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_state(learner: Option<&str>) -> RunState {
        RunState {
            step: 10,
            names: vec!["a".into()],
            sizes: vec![4],
            model: LlamaConfig {
                vocab_size: 8,
                d_model: 4,
                n_layers: 1,
                n_heads: 1,
                n_kv_heads: 1,
                ffn_hidden: 8,
                max_seq_len: 4,
                rope_theta: 10000.0,
                norm_eps: 1e-5,
                tie_embeddings: true,
            },
            learner: learner.map(str::to_string),
            sampler: MixtureSampler::new(1),
            counts: vec![0],
            cursors: vec![10],
            active: MixtureSnapshot {
                version: 0,
                step: 0,
                names: vec!["a".to_string()].into(),
                weights: vec![1.0],
            },
            target_version: 0,
            probe_ids: vec![Vec::new()],
            logs: LogLengths {
                run: 0,
                samples: None,
                mixture: 0,
            },
            first_loss: None,
            skipped: 0,
        }
    }

    #[test]
    fn the_learner_kind_is_checked_and_older_checkpoints_without_it_still_resume() {
        let dir = Path::new("/ckpt/step-0000000010");
        let fused = run_state(Some("fused"));
        assert!(fused.check_learner(dir, "fused").is_ok());
        let err = fused.check_learner(dir, "burn").unwrap_err();
        assert!(
            matches!(&err, CheckpointError::LearnerMismatch { checkpoint, run, .. }
                if checkpoint == "fused" && run == "burn"),
            "{err}"
        );
        let text = err.to_string();
        for needle in [
            "`fused`",
            "`burn`",
            "training.cpu_kernels",
            "step-0000000010",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from: {text}");
        }

        // A run_state.json written before the kind was recorded has no such key.
        let mut json = serde_json::to_value(run_state(None)).unwrap();
        json.as_object_mut().unwrap().remove("learner");
        let old: RunState = serde_json::from_value(json).unwrap();
        assert_eq!(old.learner, None);
        assert!(old.check_learner(dir, "burn").is_ok());
        assert!(old.check_learner(dir, "custom").is_ok());
    }

    #[test]
    fn config_diff_names_changed_keys() {
        let a = "[training]\nlr = 0.01\nbatch_size = 4\n[[datasets]]\nname = \"a\"\n";
        let b = "[training]\nlr = 0.02\nbatch_size = 4\n[[datasets]]\nname = \"b\"\n";
        let d = diff_configs(a, b);
        assert_eq!(
            d,
            vec![
                "datasets[0].name: \"a\" -> \"b\"".to_string(),
                "training.lr: 0.01 -> 0.02".to_string()
            ]
        );
        assert!(diff_configs(a, a).is_empty());
    }
}
