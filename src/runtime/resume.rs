//! Resume: how a run starts over an output directory. Fresh (archiving an earlier run when
//! asked), or from the newest complete checkpoint, verified and checked against the config,
//! with the per-dataset state remapped by name when the dataset list changed.

use super::rundir::RunDir;
use super::{Prepared, RuntimeError, StartOptions};
use crate::checkpoint::{self, ActorState, RunState};
use crate::mixture::{MixtureError, MixtureSnapshot};
use crate::seed::stream_seed;
use crate::trainer::Resume;

/// Decides how the run starts: fresh, or from the newest complete checkpoint (verified, and
/// checked against the config). Blocking I/O.
pub(crate) fn find_resume(
    p: &Prepared,
    opts: &StartOptions,
    run_dir: &RunDir,
) -> Result<(Option<Resume>, Option<ActorState>), RuntimeError> {
    let out = run_dir.path();
    checkpoint::clean_partial(out);
    if opts.fresh {
        if run_dir.holds_run() {
            if !opts.overwrite {
                return Err(RuntimeError::ExistingRun {
                    path: out.to_path_buf(),
                });
            }
            run_dir.archive()?;
        }
        return Ok((None, None));
    }
    let Some((dir, manifest)) = checkpoint::latest_valid(out) else {
        if run_dir.holds_run() {
            tracing::warn!(dir = %out.display(), "the output directory holds a run without a complete checkpoint: starting over");
            run_dir.archive()?;
        }
        return Ok((None, None));
    };
    let mismatch = |message: String| RuntimeError::ResumeMismatch {
        checkpoint: dir.clone(),
        message,
    };
    let run: RunState = checkpoint::read_json(&dir, checkpoint::RUN_STATE)?;
    let actors: ActorState = checkpoint::read_json(&dir, checkpoint::ACTOR_STATE)?;
    if let Some(s) = &actors.scheduler {
        s.check_state().map_err(|e| {
            mismatch(format!(
                "the scheduler's state in it cannot take another update ({e}); start the mixture over with --fresh --overwrite, or resume an earlier checkpoint by removing this one"
            ))
        })?;
    }
    let model = p.model.clone();
    if run.model != model {
        return Err(mismatch(format!(
            "the model shape changed (checkpoint {:?}, config {:?}); a checkpoint only resumes the model it was made with. Use another runtime.output_dir, or --fresh --overwrite",
            run.model, model
        )));
    }
    if let Ok(old) = std::fs::read_to_string(dir.join(checkpoint::CONFIG)) {
        let new = toml::to_string_pretty(&*p.cfg).unwrap_or_default();
        for line in checkpoint::diff_configs(&old, &new) {
            tracing::warn!("config changed since the checkpoint: {line}");
        }
    }
    let names: Vec<String> = p.datasets.iter().map(|d| d.name.clone()).collect();
    let same_data = run.names == names && run.sizes == p.sizes;
    let (run, actors, needs_initial_probe) = if same_data {
        (run, actors, false)
    } else if !opts.allow_dataset_change {
        return Err(mismatch(format!(
            "the datasets changed: checkpoint {}, config {}. Pass --allow-dataset-change to remap the mixture, cursors and probe sets by dataset name",
            describe_datasets(&run.names, &run.sizes),
            describe_datasets(&names, &p.sizes)
        )));
    } else {
        remap(p, run, actors).map_err(|e| mismatch(e.to_string()))?
    };
    run_dir.truncate_logs(&run.logs)?;
    tracing::info!(step = manifest.step, dir = %dir.display(), "resuming from the newest complete checkpoint");
    Ok((
        Some(Resume {
            dir,
            state: run,
            needs_initial_probe,
        }),
        Some(actors),
    ))
}

fn describe_datasets(names: &[String], sizes: &[u64]) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(sizes)
        .map(|(n, s)| format!("{n}({s})"))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Remaps a checkpoint's per-dataset state onto the current dataset list, by name. Datasets
/// present in both keep their cursor, probe set, theta_0 perplexities and share of the mixture
/// (a dataset whose size changed keeps its share but restarts its stream and probe set); new
/// ones start at cursor 0 with their prior share. The MoS scorer restarts from the remapped
/// mixture with fresh Adam moments and EMA.
fn remap(
    p: &Prepared,
    run: RunState,
    actors: ActorState,
) -> Result<(RunState, ActorState, bool), MixtureError> {
    let names: Vec<String> = p.datasets.iter().map(|d| d.name.clone()).collect();
    let old_index = |name: &str| run.names.iter().position(|n| n == name);
    let kept: Vec<Option<usize>> = names
        .iter()
        .zip(&p.sizes)
        .map(|(n, &size)| old_index(n).filter(|&j| run.sizes.get(j) == Some(&size)))
        .collect();
    let remap_weights = |old: &[f64]| -> Vec<f64> {
        let mut w: Vec<f64> = names
            .iter()
            .enumerate()
            .map(|(i, n)| match old_index(n) {
                Some(j) => old.get(j).copied().unwrap_or(p.prior[i]),
                None => p.prior[i],
            })
            .collect();
        let total: f64 = w.iter().sum();
        if total > 0.0 && total.is_finite() {
            w.iter_mut().for_each(|x| *x /= total);
        } else {
            w = p.prior.clone();
        }
        w
    };
    let snapshot = |s: &MixtureSnapshot| MixtureSnapshot {
        version: s.version,
        step: s.step,
        names: names.iter().cloned().collect(),
        weights: remap_weights(&s.weights),
    };
    let pick = |v: &[u64]| -> Vec<u64> {
        kept.iter()
            .map(|k| k.and_then(|j| v.get(j).copied()).unwrap_or(0))
            .collect()
    };
    let new_run = RunState {
        names: names.clone(),
        sizes: p.sizes.clone(),
        counts: pick(&run.counts),
        cursors: pick(&run.cursors),
        active: snapshot(&run.active),
        probe_ids: kept
            .iter()
            .map(|k| {
                k.and_then(|j| run.probe_ids.get(j).cloned())
                    .unwrap_or_default()
            })
            .collect(),
        ..run.clone()
    };
    let latest = snapshot(&actors.latest);
    let cfg = &p.cfg;
    let target = cfg
        .scheduler
        .target
        .as_deref()
        .and_then(|t| cfg.dataset_index(t));
    let scheduler = match &actors.scheduler {
        Some(s) => Some(s.restarted_from(
            &cfg.scheduler,
            &latest.weights,
            target,
            stream_seed(cfg.runtime.seed, "scheduler"),
        )?),
        None => None,
    };
    let initial_ppl = actors.initial_ppl.map(|old| {
        kept.iter()
            .map(|k| k.and_then(|j| old.get(j).cloned()).unwrap_or_default())
            .collect::<Vec<Vec<f64>>>()
    });
    let needs_initial = scheduler.is_some() && kept.iter().any(Option::is_none);
    if needs_initial {
        tracing::warn!("datasets new since the checkpoint get theta_0 perplexities from the current model (their DIFF reward starts at 0)");
    }
    tracing::warn!(
        from = ?run.names,
        to = ?names,
        "dataset list changed: mixture, cursors and probe sets remapped by name; the scorer restarts from the remapped mixture"
    );
    Ok((
        new_run,
        ActorState {
            estimator: scheduler.clone(),
            scheduler,
            initial_ppl,
            latest,
        },
        needs_initial,
    ))
}
