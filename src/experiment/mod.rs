//! Experiment grids: one file names a base config, a list of cells (strategies, as `--set`
//! overrides) and seeds; `mos-runtime experiment FILE` runs every (seed, cell) as its own
//! training run and writes a table of per-skill results with spreads and the mixture plots.
//!
//! This module is the library half: parsing and checking the file, planning the runs (every
//! cell's config is loaded and validated before anything trains), reading a finished run's logs
//! into a [`RunResult`], the report, and [`run_grid`], the pool that runs them. Each run is a
//! child process of the `mos-runtime` executable, not a runtime in this process: a crash of one
//! run cannot take the grid down, and a run interrupted half way resumes from its own
//! checkpoints on the next invocation.
//!
//! A cell is finished when `<run dir>/result.json` exists; it is written (atomically) only
//! after the run exited successfully and its log holds the final evaluation, so an interrupted
//! grid skips exactly the runs that completed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::mixture::MixtureLogLine;
use crate::report::{line_chart, read_jsonl, ReportError};
use crate::runlog::{ExactMatch, RunRecord};

mod pool;
pub use pool::{run_grid, GridEvent, GridOptions, GridOutcome};

/// Errors of the experiment runner; each names the file and, where it applies, the key or cell.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The experiment file is not valid TOML of the expected shape.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The experiment file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The experiment file parses but a key is unusable.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The experiment file.
        path: PathBuf,
        /// The key (`seeds`, `cells[2].name`, ...).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A cell's config (base file plus the cell's overrides) does not load.
    #[error("cell {cell:?} (seed {seed}): {source}")]
    Config {
        /// The cell's name.
        cell: String,
        /// The seed.
        seed: u64,
        /// The config error (names the file and key, or the `--set`).
        source: ConfigError,
    },
    /// A finished run's logs could not be read.
    #[error(transparent)]
    Log(#[from] ReportError),
    /// A run's child process could not be started.
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        /// The executable.
        exe: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A run's logs lack what a finished run has.
    #[error("{}: {message}", path.display())]
    Incomplete {
        /// The log file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
}

/// Which table a cell belongs to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Trained on every skill; compared on every skill and the macro-average.
    #[default]
    General,
    /// Aimed at `target` (MoSpec, or training on the target alone); compared on the target.
    Specialist,
}

/// One strategy of the grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// Unique; also the run directory's name (letters, digits, `-`, `_`, `+`, `.`).
    pub name: String,
    /// `section.key=value` overrides applied after the experiment's own `set`.
    #[serde(default)]
    pub set: Vec<String>,
    /// The table the cell is reported in.
    #[serde(default)]
    pub group: Group,
}

/// An experiment file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The training config every cell starts from (relative to the experiment file).
    pub base: PathBuf,
    /// Where runs and the report go (relative to the working directory, like
    /// `runtime.output_dir`).
    pub output_dir: PathBuf,
    /// Each cell runs once per seed (`runtime.seed`).
    pub seeds: Vec<u64>,
    /// Overrides applied to every cell, after the base file.
    #[serde(default)]
    pub set: Vec<String>,
    /// The skill the specialist cells aim at (their table reports it).
    #[serde(default)]
    pub target: Option<String>,
    /// A general cell every other general cell is compared with seed by seed (same seed: same
    /// initial weights and data order), which cancels most of the seed-to-seed spread.
    #[serde(default)]
    pub baseline: Option<String>,
    /// The strategies.
    pub cells: Vec<CellSpec>,
}

impl ExperimentSpec {
    /// Reads and checks an experiment file; `base` is resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec: ExperimentSpec =
            toml::from_str(&text).map_err(|e| ExperimentError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if spec.base.is_relative() {
            spec.base = path.parent().unwrap_or(Path::new(".")).join(&spec.base);
        }
        let invalid = |key: String, message: String| ExperimentError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if spec.seeds.is_empty() {
            return Err(invalid("seeds".into(), "needs at least one seed".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &spec.seeds {
            if !seen.insert(*s) {
                return Err(invalid("seeds".into(), format!("seed {s} is listed twice")));
            }
        }
        if spec.cells.is_empty() {
            return Err(invalid(
                "cells".into(),
                "needs at least one [[cells]]".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in spec.cells.iter().enumerate() {
            let ok = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_+.".contains(ch))
                && !c.name.starts_with('.');
            if !ok {
                return Err(invalid(
                    format!("cells[{i}].name"),
                    format!(
                        "{:?} is not usable as a directory name (letters, digits, - _ + .)",
                        c.name
                    ),
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(invalid(
                    format!("cells[{i}].name"),
                    format!("{:?} is used by two cells", c.name),
                ));
            }
        }
        if let Some(b) = &spec.baseline {
            if !spec
                .cells
                .iter()
                .any(|c| &c.name == b && c.group == Group::General)
            {
                return Err(invalid(
                    "baseline".into(),
                    format!("{b:?} is not the name of a general cell"),
                ));
            }
        }
        if spec.cells.iter().any(|c| c.group == Group::Specialist) && spec.target.is_none() {
            return Err(invalid(
                "target".into(),
                "specialist cells need the skill they aim at: target = \"name\"".into(),
            ));
        }
        Ok(spec)
    }
}

/// One (seed, cell) run of the grid, with its validated config.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The cell.
    pub cell: CellSpec,
    /// Its seed.
    pub seed: u64,
    /// The run's output directory.
    pub dir: PathBuf,
    /// The overrides that make this run, for `--set` (experiment, cell, seed, output dir).
    pub overrides: Vec<String>,
    /// The config those overrides give.
    pub config: Config,
}

/// Every run of the grid, seed-major (every cell of the first seed, then the next seed), so a
/// grid stopped half way has whole seeds to compare. Loads and validates each run's config.
pub fn plan(spec: &ExperimentSpec) -> Result<Vec<PlannedRun>, ExperimentError> {
    let mut runs = Vec::new();
    for &seed in &spec.seeds {
        for cell in &spec.cells {
            let dir = spec
                .output_dir
                .join("runs")
                .join(&cell.name)
                .join(format!("seed-{seed}"));
            let mut overrides = spec.set.clone();
            overrides.extend(cell.set.iter().cloned());
            overrides.push(format!("runtime.seed={seed}"));
            overrides.push(format!(
                "runtime.output_dir={}",
                toml::Value::String(dir.display().to_string())
            ));
            let config =
                Config::load(&spec.base, &overrides).map_err(|source| ExperimentError::Config {
                    cell: cell.name.clone(),
                    seed,
                    source,
                })?;
            runs.push(PlannedRun {
                cell: cell.clone(),
                seed,
                dir,
                overrides,
                config,
            });
        }
    }
    Ok(runs)
}

/// What the report needs from one finished run (`result.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// The cell.
    pub cell: String,
    /// The seed.
    pub seed: u64,
    /// Steps trained.
    pub steps: u64,
    /// Final held-out loss per skill (nats per target token).
    pub eval_loss: BTreeMap<String, f64>,
    /// Exact match per skill, where the run scored it.
    pub exact_match: BTreeMap<String, ExactMatch>,
    /// Dataset names in mixture order.
    pub names: Vec<String>,
    /// (step, mixture in force from that step on): the start, then every publish.
    pub mixture: Vec<(u64, Vec<f64>)>,
    /// Mean training throughput (tokens per second) over the run.
    pub tokens_per_second: f64,
}

/// The file that marks a run as finished.
pub const RESULT_FILE: &str = "result.json";

/// The finished result of `run`, if it has one.
pub fn finished(run: &PlannedRun) -> Option<RunResult> {
    let text = std::fs::read_to_string(run.dir.join(RESULT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads a finished run's logs into its [`RunResult`] and writes `result.json` atomically.
/// Fails when the log has no evaluation at `runtime.max_steps` (the run did not finish).
pub fn collect(run: &PlannedRun) -> Result<RunResult, ExperimentError> {
    let max_steps = run.config.runtime.max_steps;
    let log = run.dir.join("run.jsonl");
    let mut eval = None;
    let mut exact = BTreeMap::new();
    let mut tps = Vec::new();
    for (_, line) in read_jsonl::<RunRecord>(&log, true)? {
        match line {
            RunRecord::Eval { step, loss, .. } if step == max_steps => eval = Some(loss),
            RunRecord::ExactMatch { step, results, .. } if step == max_steps => {
                exact = results
                    .into_iter()
                    .map(|r| (r.dataset.clone(), r))
                    .collect();
            }
            RunRecord::Train {
                tokens_per_second, ..
            } if tokens_per_second > 0.0 => tps.push(tokens_per_second),
            _ => {}
        }
    }
    let eval = eval.ok_or_else(|| ExperimentError::Incomplete {
        path: log.clone(),
        message: format!("no evaluation at the last step ({max_steps}): the run did not finish"),
    })?;
    // A non-finite held-out loss is logged as null; a result needs numbers to average.
    let eval = eval
        .into_iter()
        .map(|(name, l)| match l {
            Some(l) => Ok((name, l)),
            None => Err(ExperimentError::Incomplete {
                path: log.clone(),
                message: format!("the held-out loss of `{name}` at step {max_steps} is not finite"),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mix_path = run.dir.join("mixture.jsonl");
    let mut names = Vec::new();
    let mut mixture = Vec::new();
    for (_, line) in read_jsonl::<MixtureLogLine>(&mix_path, false)? {
        match line {
            MixtureLogLine::Start(start) => {
                names = start.names;
                mixture.push((0, start.prior));
            }
            MixtureLogLine::Update(u) => mixture.push((u.step, u.after)),
        }
    }
    let result = RunResult {
        cell: run.cell.name.clone(),
        seed: run.seed,
        steps: max_steps,
        eval_loss: eval.into_iter().collect(),
        exact_match: exact,
        names,
        mixture,
        tokens_per_second: if tps.is_empty() {
            0.0
        } else {
            tps.iter().sum::<f64>() / tps.len() as f64
        },
    };
    let text = serde_json::to_string_pretty(&result).expect("a RunResult always serialises");
    write_atomic(&run.dir.join(RESULT_FILE), text.as_bytes())?;
    Ok(result)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    crate::fsio::write_atomic(path, bytes).map_err(|source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A cell's name with the mean and standard deviation of one quantity over its seeds.
type CellStat = (String, f64, f64);

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn pm(values: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(values);
    if values.is_empty() {
        "–".to_string()
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
}

/// Writes a Markdown table's first two lines: `strategy`, one right-aligned column per skill,
/// then the `extra` columns.
fn table_header(md: &mut String, skills: &[String], extra: &[&str]) {
    md.push_str("| strategy |");
    for col in skills
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        md.push_str(&format!(" {col} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(skills.len() + extra.len()));
    md.push('\n');
}

/// The macro-average over `skills` of `f(held-out loss)` for one run (the same divisor for
/// every run, so a run missing a skill is not flattered).
fn macro_avg(r: &RunResult, skills: &[String], f: impl Fn(f64) -> f64) -> f64 {
    skills
        .iter()
        .filter_map(|s| r.eval_loss.get(s).map(|&l| f(l)))
        .sum::<f64>()
        / skills.len() as f64
}

/// Writes the grid's report into `<output_dir>/report/`: `results.md` (the tables),
/// `results.json` (every run's result) and `mixture-<cell>.svg` (the mean mixture trajectory
/// over seeds of each cell whose mixture moves). Returns the files written.
pub fn write_report(
    spec: &ExperimentSpec,
    results: &[RunResult],
) -> Result<Vec<PathBuf>, ExperimentError> {
    let dir = spec.output_dir.join("report");
    std::fs::create_dir_all(&dir).map_err(|source| ExperimentError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let by_cell =
        |name: &str| -> Vec<&RunResult> { results.iter().filter(|r| r.cell == name).collect() };
    // Skills in the order the general runs list them.
    let skills: Vec<String> = spec
        .cells
        .iter()
        .filter(|c| c.group == Group::General)
        .flat_map(|c| by_cell(&c.name))
        .map(|r| r.names.clone())
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| {
            results
                .first()
                .map(|r| r.eval_loss.keys().cloned().collect())
                .unwrap_or_default()
        });
    let em_skills: Vec<String> = skills
        .iter()
        .filter(|s| results.iter().any(|r| r.exact_match.contains_key(*s)))
        .cloned()
        .collect();

    let mut md = String::new();
    md.push_str(&format!(
        "Seeds: {:?}. Each cell: mean ± sample standard deviation over the seeds that finished \
         (n in the last column).\n\n",
        spec.seeds
    ));
    // Table 1: held-out loss per skill and the macro-average.
    md.push_str("### Held-out loss (nats per target token; lower is better)\n\n");
    table_header(&mut md, &skills, &["macro-avg", "n"]);
    let mut macro_means: Vec<CellStat> = Vec::new();
    for c in spec.cells.iter().filter(|c| c.group == Group::General) {
        let runs = by_cell(&c.name);
        if runs.is_empty() {
            continue;
        }
        md.push_str(&format!("| {} |", c.name));
        for s in &skills {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.eval_loss.get(s).copied())
                .collect();
            md.push_str(&format!(" {} |", pm(&v, 3)));
        }
        let macros: Vec<f64> = runs.iter().map(|r| macro_avg(r, &skills, |l| l)).collect();
        let (m, sd) = mean_std(&macros);
        macro_means.push((c.name.clone(), m, sd));
        md.push_str(&format!(" **{}** | {} |\n", pm(&macros, 3), runs.len()));
    }
    // Table 1b: paired differences to the baseline, seed by seed.
    if let Some(base) = &spec.baseline {
        let base_runs = by_cell(base);
        md.push_str(&format!(
            "\n### Paired difference to `{base}` (same seed; cell minus {base}, negative is better)\n\n"
        ));
        table_header(
            &mut md,
            &skills,
            &["macro-avg", "seeds better on macro-avg"],
        );
        for c in spec
            .cells
            .iter()
            .filter(|c| c.group == Group::General && &c.name != base)
        {
            let pairs: Vec<(&RunResult, &RunResult)> = by_cell(&c.name)
                .into_iter()
                .filter_map(|r| base_runs.iter().find(|b| b.seed == r.seed).map(|b| (r, *b)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            md.push_str(&format!("| {} |", c.name));
            for s in &skills {
                let d: Vec<f64> = pairs
                    .iter()
                    .filter_map(|(r, b)| Some(r.eval_loss.get(s)? - b.eval_loss.get(s)?))
                    .collect();
                md.push_str(&format!(" {} |", pm(&d, 3)));
            }
            let d: Vec<f64> = pairs
                .iter()
                .map(|(r, b)| macro_avg(r, &skills, |l| l) - macro_avg(b, &skills, |l| l))
                .collect();
            let better = d.iter().filter(|x| **x < 0.0).count();
            md.push_str(&format!(" **{}** | {better} of {} |\n", pm(&d, 4), d.len()));
        }
    }
    // Table 2: perplexity.
    md.push_str("\n### Held-out perplexity (exp of the loss above, per seed, then averaged)\n\n");
    table_header(&mut md, &skills, &["macro-avg"]);
    for c in spec.cells.iter().filter(|c| c.group == Group::General) {
        let runs = by_cell(&c.name);
        if runs.is_empty() {
            continue;
        }
        md.push_str(&format!("| {} |", c.name));
        for s in &skills {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.eval_loss.get(s).map(|l| l.exp()))
                .collect();
            md.push_str(&format!(" {} |", pm(&v, 2)));
        }
        let macros: Vec<f64> = runs
            .iter()
            .map(|r| macro_avg(r, &skills, f64::exp))
            .collect();
        md.push_str(&format!(" {} |\n", pm(&macros, 2)));
    }
    // Table 3: exact match.
    if !em_skills.is_empty() {
        md.push_str(
            "\n### Exact match of greedy answers (fraction of held-out questions)\n\n| strategy |",
        );
        for s in &em_skills {
            md.push_str(&format!(" {s} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(em_skills.len()));
        md.push('\n');
        for c in &spec.cells {
            let runs = by_cell(&c.name);
            if runs.is_empty() {
                continue;
            }
            md.push_str(&format!("| {} |", c.name));
            for s in &em_skills {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.exact_match.get(s).map(|e| e.accuracy))
                    .collect();
                let total = runs
                    .iter()
                    .filter_map(|r| r.exact_match.get(s).map(|e| e.total))
                    .max()
                    .unwrap_or(0);
                if v.is_empty() {
                    md.push_str(" – |");
                } else {
                    md.push_str(&format!(" {} (of {total}) |", pm(&v, 3)));
                }
            }
            md.push('\n');
        }
    }
    // Table 4: the specialist comparison on the target.
    if let Some(target) = &spec.target {
        let cells: Vec<&CellSpec> = spec
            .cells
            .iter()
            .filter(|c| c.group == Group::Specialist)
            .collect();
        if !cells.is_empty() {
            md.push_str(&format!(
                "\n### Specialists for `{target}` (held-out loss and perplexity on `{target}`)\n\n| strategy | loss | perplexity | n |\n|---|---:|---:|---:|\n"
            ));
            for c in cells {
                let runs = by_cell(&c.name);
                if runs.is_empty() {
                    continue;
                }
                let l: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.eval_loss.get(target).copied())
                    .collect();
                let p: Vec<f64> = l.iter().map(|x| x.exp()).collect();
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    c.name,
                    pm(&l, 3),
                    pm(&p, 2),
                    runs.len()
                ));
            }
        }
    }
    // Winners: per skill, the best general cell and its margin over the runner-up, next to the
    // larger of their two seed spreads, so a reader sees at once whether the gap is noise.
    md.push_str("\n### Best general strategy per skill\n\n| skill | best | runner-up | gap | larger std of the two |\n|---|---|---|---:|---:|\n");
    let mut rows: Vec<(String, Vec<CellStat>)> = skills
        .iter()
        .map(|s| {
            let v = spec
                .cells
                .iter()
                .filter(|c| c.group == Group::General)
                .filter_map(|c| {
                    let vals: Vec<f64> = by_cell(&c.name)
                        .iter()
                        .filter_map(|r| r.eval_loss.get(s).copied())
                        .collect();
                    (!vals.is_empty()).then(|| {
                        let (m, sd) = mean_std(&vals);
                        (c.name.clone(), m, sd)
                    })
                })
                .collect();
            (s.clone(), v)
        })
        .collect();
    rows.push(("macro-avg".to_string(), macro_means));
    for (skill, mut v) in rows {
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        if v.len() >= 2 {
            md.push_str(&format!(
                "| {skill} | {} ({:.3}) | {} ({:.3}) | {:.3} | {:.3} |\n",
                v[0].0,
                v[0].1,
                v[1].0,
                v[1].1,
                v[1].1 - v[0].1,
                v[0].2.max(v[1].2)
            ));
        }
    }
    let md_path = dir.join("results.md");
    write_atomic(&md_path, md.as_bytes())?;
    written.push(md_path);
    let json_path = dir.join("results.json");
    let json = serde_json::to_string_pretty(results).expect("results always serialise");
    write_atomic(&json_path, json.as_bytes())?;
    written.push(json_path);

    // Mixture trajectories (the paper's Figures 2 and 4): mean over seeds of each skill's
    // sampling probability, sampled at every step where any seed's mixture changed.
    for c in &spec.cells {
        let runs = by_cell(&c.name);
        let Some(first) = runs.first() else { continue };
        let moves = runs.iter().any(|r| {
            r.mixture.windows(2).any(|w| {
                w[0].1
                    .iter()
                    .zip(&w[1].1)
                    .any(|(a, b)| (a - b).abs() > 1e-9)
            })
        });
        if !moves || first.names.is_empty() {
            continue;
        }
        let mut steps: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.mixture.iter().map(|(s, _)| *s))
            .chain(std::iter::once(first.steps))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        let series: Vec<(String, Vec<(f64, f64)>)> = first
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let pts = steps
                    .iter()
                    .map(|&st| {
                        let vals: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| {
                                r.mixture
                                    .iter()
                                    .rev()
                                    .find(|(s, _)| *s <= st)
                                    .and_then(|(_, w)| w.get(i).copied())
                            })
                            .collect();
                        (st as f64, mean_std(&vals).0)
                    })
                    .collect();
                (name.clone(), pts)
            })
            .collect();
        let path = dir.join(format!("mixture-{}.svg", c.name));
        line_chart(
            &path,
            &format!(
                "{}: sampling probability per skill (mean of {} seeds)",
                c.name,
                runs.len()
            ),
            "sampling probability",
            &series,
        )?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn spec_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        // (file name, text after the common head, words the error must contain)
        let cases: [(&str, &str, &[&str]); 5] = [
            (
                "e1.toml",
                "seeds = [1, 1]\n[[cells]]\nname = \"a\"\n",
                &["seeds", "twice"],
            ),
            (
                "e2.toml",
                "seeds = [1]\n[[cells]]\nname = \"a/b\"\n",
                &["cells[0].name"],
            ),
            (
                "e3.toml",
                "seeds = [1]\nbogus = 1\n[[cells]]\nname = \"a\"\n",
                &["bogus"],
            ),
            (
                "e4.toml",
                "seeds = [1]\n[[cells]]\nname = \"a\"\ngroup = \"specialist\"\n",
                &["target"],
            ),
            (
                "e5.toml",
                "seeds = [1]\nbaseline = \"zzz\"\n[[cells]]\nname = \"a\"\n",
                &["baseline", "zzz"],
            ),
        ];
        for (name, body, needles) in cases {
            let text = format!("base = \"b.toml\"\noutput_dir = \"o\"\n{body}");
            let p = write(dir.path(), name, &text);
            let e = ExperimentSpec::load(&p).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            for n in needles {
                assert!(e.contains(n), "`{n}` missing from: {e}");
            }
        }
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[4.0]), (4.0, 0.0));
    }
}
