//! Offline plots of a run: reads `<output_dir>/run.jsonl` and `<output_dir>/mixture.jsonl` and
//! writes SVG charts of the mixture weights, the per-dataset held-out loss and the training loss
//! into `<output_dir>/report/`.
//!
//! It owns only reading those logs and drawing; it never touches a running runtime, so it can be
//! pointed at a finished run, a copied run directory, or a run still in progress (a half-written
//! last line, which a live writer may leave, is skipped rather than reported as an error).
//! Plots are SVG through `plotters` without its font features: SVG text is laid out by the viewer,
//! so no system font is needed on the machine that renders the report.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;

use crate::runlog::RunRecord;

/// Name of the folder, inside the run's output directory, that receives the plots.
pub const REPORT_DIR: &str = "report";

/// Why a report could not be produced. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A log could not be read or a plot file could not be created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A log line is not valid JSON of the expected shape.
    #[error("{}:{line}: {source}", path.display())]
    Parse {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A log line parses but contradicts the rest of the log (e.g. a mixture of the wrong length).
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The logs hold nothing to plot yet.
    #[error(
        "{}: no training record yet (the first is written after `runtime.log_every` steps)",
        path.display()
    )]
    NoData {
        /// The log that was expected to hold records.
        path: PathBuf,
    },
    /// plotters failed while drawing or writing an SVG file.
    #[error("{}: cannot draw the plot: {message}", path.display())]
    Plot {
        /// The SVG file being drawn.
        path: PathBuf,
        /// plotters' error, as text (its error type is generic over the backend).
        message: String,
    },
}

/// The fields of a `mixture.jsonl` update line (`mixture::UpdateRecord`, tagged
/// `"kind": "update"`; older logs have the same record untagged) that the report needs.
#[derive(Debug, Deserialize)]
struct UpdateLine {
    step: u64,
    #[serde(default)]
    before: Vec<f64>,
    after: Vec<f64>,
    names: Vec<String>,
}

/// The fields of the `mixture.jsonl` start line (`mixture::StartRecord`, `"kind": "start"`).
#[derive(Debug, Deserialize)]
struct StartLine {
    names: Vec<String>,
    /// The mixture published at start-up.
    #[serde(default)]
    prior: Vec<f64>,
}

/// Everything read from the two logs.
#[derive(Debug, Default)]
struct RunData {
    /// (step, mean training loss of the logging window).
    train_loss: Vec<(f64, f64)>,
    /// (step, weights) from the training records: the fallback mixture trajectory.
    train_mixture: Vec<(f64, Vec<f64>)>,
    /// Per dataset, in order of first appearance: (name, [(step, loss)]).
    eval: Vec<(String, Vec<(f64, f64)>)>,
    /// Dataset names from `mixture.jsonl`.
    names: Vec<String>,
    /// (step, weights in force from that step on), from `mixture.jsonl`.
    updates: Vec<(f64, Vec<f64>)>,
    /// Last training step seen anywhere, to extend the mixture to the end of the run.
    last_step: f64,
}

/// Reads the run's logs under `output_dir` and writes its plots as SVG files into
/// `<output_dir>/report/`: `mixture.svg` (stacked mixture weights over steps), `train_loss.svg`,
/// and `eval_loss.svg` when the run has evaluated at least once. Returns the paths written.
///
/// `mixture.jsonl` may be missing or empty (no scheduler update yet): the mixture then comes from
/// the training records of `run.jsonl`.
pub fn render_report(output_dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let data = read_run(output_dir)?;
    let dir = output_dir.join(REPORT_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| ReportError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut written = Vec::new();

    if !data.train_loss.is_empty() {
        let path = dir.join("train_loss.svg");
        let series = [("train loss".to_string(), data.train_loss.clone())];
        line_chart(&path, "Training loss", "loss (nats/token)", &series)?;
        written.push(path);
    }

    let (names, trajectory) = mixture_trajectory(&data);
    if !trajectory.is_empty() {
        let path = dir.join("mixture.svg");
        stacked_chart(&path, &names, &trajectory)?;
        written.push(path);
    }

    if !data.eval.is_empty() {
        let path = dir.join("eval_loss.svg");
        line_chart(
            &path,
            "Held-out loss per dataset",
            "loss (nats/token)",
            &data.eval,
        )?;
        written.push(path);
    }

    if written.is_empty() {
        return Err(ReportError::NoData {
            path: output_dir.join("run.jsonl"),
        });
    }
    Ok(written)
}

/// Reads `run.jsonl` (required) and `mixture.jsonl` (optional).
fn read_run(output_dir: &Path) -> Result<RunData, ReportError> {
    let mut data = RunData::default();
    let run_path = output_dir.join("run.jsonl");
    for (line, rec) in read_jsonl::<RunRecord>(&run_path, true)? {
        match rec {
            RunRecord::Train {
                step,
                loss,
                mixture,
                ..
            } => {
                let x = step as f64;
                data.last_step = data.last_step.max(x);
                if let Some(l) = loss.filter(|l| l.is_finite()) {
                    data.train_loss.push((x, l as f64));
                }
                if !mixture.is_empty() {
                    if let Some((_, first)) = data.train_mixture.first() {
                        if first.len() != mixture.len() {
                            return Err(ReportError::Invalid {
                                path: run_path,
                                line,
                                message: format!(
                                    "mixture has {} weights, earlier lines have {}",
                                    mixture.len(),
                                    first.len()
                                ),
                            });
                        }
                    }
                    data.train_mixture.push((x, mixture));
                }
            }
            RunRecord::Eval { step, loss, .. } => {
                let x = step as f64;
                data.last_step = data.last_step.max(x);
                for (name, l) in loss {
                    let Some(l) = l.filter(|l| l.is_finite()) else {
                        continue;
                    };
                    match data.eval.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, pts)) => pts.push((x, l)),
                        None => data.eval.push((name, vec![(x, l)])),
                    }
                }
            }
            RunRecord::Probe { .. } | RunRecord::ExactMatch { .. } | RunRecord::Other => {}
        }
    }

    let mix_path = output_dir.join("mixture.jsonl");
    let mut prior_done = false;
    for (line, v) in read_jsonl::<serde_json::Value>(&mix_path, false)? {
        let (names, step, before, after) = match v.get("kind").and_then(|k| k.as_str()) {
            Some("start") => {
                let rec: StartLine = from_value(&mix_path, line, v)?;
                // Only the first start is the run's beginning; a resumed run appends another,
                // whose mixture is the restored one, already drawn from the update lines.
                let prior = if prior_done { Vec::new() } else { rec.prior };
                (rec.names, None, prior, Vec::new())
            }
            Some("update") | None => {
                let rec: UpdateLine = from_value(&mix_path, line, v)?;
                (rec.names, Some(rec.step), rec.before, rec.after)
            }
            // Kinds this version does not know are for other readers (e.g. replay).
            Some(_) => continue,
        };
        if data.names.is_empty() {
            data.names = names.clone();
        }
        let n = data.names.len();
        let bad = |what: &str, len: usize| ReportError::Invalid {
            path: mix_path.clone(),
            line,
            message: format!("{len} {what}, the first line has {n} dataset names"),
        };
        if names != data.names {
            return Err(bad("dataset names differing", names.len()));
        }
        // The prior (start line, or the first update's `before`) is in force from step 0.
        if !prior_done && before.len() == n {
            data.updates.push((0.0, before));
            prior_done = true;
        }
        if let Some(step) = step {
            if after.len() != n {
                return Err(bad("weights", after.len()));
            }
            prior_done = true;
            data.updates.push((step as f64, after));
        }
    }
    // A resumed run appends to the same logs; sort (stably) so the lines draw left to right.
    data.updates.sort_by(|a, b| a.0.total_cmp(&b.0));
    data.train_loss.sort_by(|a, b| a.0.total_cmp(&b.0));
    data.train_mixture.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, pts) in &mut data.eval {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if let Some((s, _)) = data.updates.last() {
        data.last_step = data.last_step.max(*s);
    }
    Ok(data)
}

/// Converts one already-parsed JSONL line to its record type.
fn from_value<T: serde::de::DeserializeOwned>(
    path: &Path,
    line: usize,
    v: serde_json::Value,
) -> Result<T, ReportError> {
    serde_json::from_value(v).map_err(|source| ReportError::Parse {
        path: path.to_path_buf(),
        line,
        source,
    })
}

/// Parses every line of a JSONL file, returning (1-based line number, record). A missing file is
/// an error when `required`, otherwise an empty log. A final line without its newline is the one a
/// live writer may be in the middle of: it is skipped when it does not parse.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    required: bool,
) -> Result<Vec<(usize, T)>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReportError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, raw) in lines.iter().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(raw) {
            Ok(rec) => out.push((i + 1, rec)),
            Err(_) if !complete && i + 1 == lines.len() => break,
            Err(source) => {
                return Err(ReportError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// The mixture as a step function over training steps: names and (step, weights) corner points.
/// Prefers the scheduler's log (every update, exact steps) and falls back to the weights recorded
/// in the training records.
fn mixture_trajectory(data: &RunData) -> (Vec<String>, Vec<(f64, Vec<f64>)>) {
    let (points, n) = if !data.updates.is_empty() {
        (&data.updates, data.names.len())
    } else {
        match data.train_mixture.first() {
            Some((_, w)) => (&data.train_mixture, w.len()),
            None => return (Vec::new(), Vec::new()),
        }
    };
    let names = if data.names.len() == n {
        data.names.clone()
    } else if data.eval.len() == n {
        // Eval records list every dataset with held-out examples, in config order.
        data.eval.iter().map(|(name, _)| name.clone()).collect()
    } else {
        (0..n).map(|i| format!("dataset {i}")).collect()
    };
    // Weights hold from one publish to the next: draw vertical risers, not interpolated slopes.
    let mut corners: Vec<(f64, Vec<f64>)> = Vec::with_capacity(points.len() * 2 + 1);
    for (x, w) in points.iter() {
        if let Some((_, prev)) = corners.last() {
            let prev = prev.clone();
            corners.push((*x, prev));
        }
        corners.push((*x, w.clone()));
    }
    if let Some((x, w)) = corners.last() {
        if data.last_step > *x {
            let w = w.clone();
            corners.push((data.last_step, w));
        }
    }
    (names, corners)
}

/// Maps a plotters error to [`ReportError::Plot`] for `path`.
fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Series with at most this many points also get a marker per point.
const MARKER_MAX_POINTS: usize = 60;

/// Chart size in pixels (SVG user units).
const SIZE: (u32, u32) = (960, 540);

/// A line chart with one line per named series, over training steps.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ReportError> {
    let err = plot_err(path);
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let (x0, x1) = step_range(xs);
    let (y0, y1) = padded_range(ys, 0.05);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("step")
        .y_desc(y_desc)
        .draw()
        .map_err(&err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let anno = chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(&err)?;
        anno.label(name.as_str()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
        // Markers on sparse series: a single evaluation is a point, which a line cannot show.
        if pts.len() <= MARKER_MAX_POINTS {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(&err)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// The mixture as stacked areas: dataset `i` fills the band between the sums of weights `0..i`
/// and `0..=i`, so the bands always tile 0..1 and a growing band is a growing share.
fn stacked_chart(
    path: &Path,
    names: &[String],
    corners: &[(f64, Vec<f64>)],
) -> Result<(), ReportError> {
    let err = plot_err(path);
    let (x0, x1) = step_range(corners.iter().map(|(x, _)| *x));
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Mixture weights (stacked)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0f64..1.0)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("step")
        .y_desc("sampling probability")
        .draw()
        .map_err(&err)?;
    // Draw the tallest cumulative band first so each lower band paints over it.
    for i in (0..names.len()).rev() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = corners
            .iter()
            .map(|(x, w)| (*x, w[..=i].iter().sum::<f64>().min(1.0)))
            .collect();
        let anno = chart
            .draw_series(AreaSeries::new(pts, 0.0, color.mix(0.85).filled()).border_style(BLACK))
            .map_err(&err)?;
        anno.label(names[i].as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// 0..last step: training starts at step 0, so every chart of a run shares the same origin.
fn step_range(steps: impl Iterator<Item = f64>) -> (f64, f64) {
    let last = steps.fold(0f64, f64::max);
    // 2% headroom so the markers of the last step are not clipped by the plot's edge.
    (0.0, if last > 0.0 { last * 1.02 } else { 1.0 })
}

/// The min..max of `values`, widened by `pad` of the span on each side and never empty (plotters
/// needs a non-degenerate range, and a single logged step is a legitimate run).
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        lo -= 0.5 * lo.abs().max(1.0);
        hi += 0.5 * hi.abs().max(1.0);
    } else {
        lo -= pad * span;
        hi += pad * span;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trimmed contents of the `<text>` elements of an SVG.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>'))
            .filter_map(|(_, rest)| rest.split_once("</text>"))
            .map(|(inner, _)| inner.trim().to_string())
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const RUN: &str = r#"{"kind":"train","step":5,"loss":3.2,"lr":0.01,"tokens_per_second":100.0,"step_seconds":0.01,"data_wait_seconds":0.0,"mixture_version":0,"mixture":[0.5,0.5]}
{"kind":"train","step":10,"loss":2.9,"lr":0.01,"tokens_per_second":100.0,"step_seconds":0.01,"data_wait_seconds":0.0,"mixture_version":1,"mixture":[0.6,0.4]}
{"kind":"eval","step":10,"loss":[["a",2.5],["b",3.5]],"seconds":0.0}
"#;
    const MIX: &str = r#"{"kind":"start","names":["a","b"],"sizes":[10,10],"seed":1,"target":null,"prior":[0.5,0.5]}
{"kind":"update","step":5,"version":1,"before":[0.5,0.5],"after":[0.6,0.4],"reward":"cossim","raw":[0.1,0.2],"smoothed":[0.1,0.2],"counts":[3,2],"names":["a","b"]}
"#;

    #[test]
    fn writes_three_svgs_with_dataset_names() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.jsonl", RUN);
        write(dir.path(), "mixture.jsonl", MIX);
        let files = render_report(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["train_loss.svg", "mixture.svg", "eval_loss.svg"]);
        let mix = std::fs::read_to_string(&files[1]).unwrap();
        assert!(mix.starts_with("<svg"), "{}", &mix[..mix.len().min(80)]);
        let texts = svg_texts(&mix);
        assert!(
            texts.iter().any(|t| t == "a") && texts.iter().any(|t| t == "b"),
            "legend names in {texts:?}"
        );
    }

    #[test]
    fn partial_last_line_is_skipped_but_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.jsonl", &format!("{RUN}{{\"kind\":\"tra"));
        assert_eq!(render_report(dir.path()).unwrap().len(), 3);

        write(dir.path(), "run.jsonl", &format!("not json\n{RUN}"));
        let e = render_report(dir.path()).unwrap_err();
        assert!(matches!(e, ReportError::Parse { line: 1, .. }), "{e}");
        assert!(e.to_string().contains("run.jsonl:1:"), "{e}");
    }

    #[test]
    fn missing_run_log_and_inconsistent_mixture_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = render_report(dir.path()).unwrap_err();
        assert!(matches!(e, ReportError::Io { .. }) && e.to_string().contains("run.jsonl"));

        write(dir.path(), "run.jsonl", RUN);
        write(
            dir.path(),
            "mixture.jsonl",
            &format!(
                "{MIX}{}",
                MIX.lines().nth(1).unwrap().replace("[0.6,0.4]", "[1.0]")
            ),
        );
        let e = render_report(dir.path()).unwrap_err();
        assert!(e.to_string().contains("mixture.jsonl:3:"), "{e}");
    }

    #[test]
    fn untagged_update_lines_of_older_logs_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.jsonl", RUN);
        let legacy = MIX
            .lines()
            .nth(1)
            .unwrap()
            .replace("\"kind\":\"update\",", "");
        write(dir.path(), "mixture.jsonl", &format!("{legacy}\n"));
        let data = read_run(dir.path()).unwrap();
        assert_eq!(data.names, ["a", "b"]);
        assert_eq!(
            data.updates.len(),
            2,
            "prior from `before`, then the update"
        );
    }

    #[test]
    fn no_records_is_no_data() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.jsonl", "");
        assert!(matches!(
            render_report(dir.path()),
            Err(ReportError::NoData { .. })
        ));
    }
}
