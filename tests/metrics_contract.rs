//! The metrics contract between the daemon, `telemetry::CATALOGUE`, docs/METRICS.md and the
//! Grafana dashboards: the dashboards read only catalogued metrics through a `${datasource}`
//! variable; the document lists exactly the catalogue; and everything the daemon really exports
//! is catalogued, documented, typed as catalogued (histograms as histograms, with buckets), and
//! labelled only with the catalogued labels.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use mos_runtime::telemetry::{MetricKind, CATALOGUE};

fn catalogue() -> BTreeMap<&'static str, &'static mos_runtime::telemetry::MetricDoc> {
    CATALOGUE.iter().map(|m| (m.name, m)).collect()
}

fn kind_word(k: MetricKind) -> &'static str {
    match k {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

#[test]
fn dashboards_use_only_catalogued_metrics() {
    let cat = catalogue();
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "too few panel queries: {}",
        queries.len()
    );
    let mut unknown = Vec::new();
    for q in &queries {
        let names = metric_names_in(&q.expr);
        assert!(
            !names.is_empty(),
            "{} / {}: no mos_ metric in `{}`",
            q.file,
            q.panel,
            q.expr
        );
        for n in names {
            if !cat.contains_key(n.as_str()) {
                unknown.push(format!("{} / {}: {n}", q.file, q.panel));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not in telemetry::CATALOGUE:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn dashboards_follow_the_grafana_conventions() {
    let cat = catalogue();
    let boards = dashboards();
    let titles: BTreeSet<String> = boards.iter().map(|(f, _)| f.clone()).collect();
    for want in [
        "overview.json",
        "mixture.json",
        "rewards.json",
        "evaluation.json",
        "health.json",
    ] {
        assert!(
            titles.contains(want),
            "grafana/dashboards/{want} is missing"
        );
    }
    let mut uids = BTreeSet::new();
    for (file, d) in &boards {
        assert_eq!(d["schemaVersion"], 39, "{file}: schemaVersion");
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty() && uid.len() <= 40, "{file}: uid `{uid}`");
        assert!(uids.insert(uid.to_string()), "{file}: duplicate uid {uid}");
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        // Import placeholders (`${DS_...}`, `__inputs`) would make provisioning fail.
        let text = d.to_string();
        assert!(
            !text.contains("${DS_"),
            "{file}: uses a ${{DS_...}} placeholder"
        );
        assert!(d.get("__inputs").is_none(), "{file}: has __inputs");

        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        let ds = var("datasource").unwrap_or_else(|| panic!("{file}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{file}: datasource variable type");
        assert_eq!(
            ds["query"], "prometheus",
            "{file}: datasource variable query"
        );
        let dv = var("dataset").unwrap_or_else(|| panic!("{file}: no dataset variable"));
        assert_eq!(dv["type"], "query", "{file}: dataset variable type");
        assert_eq!(dv["multi"], true, "{file}: dataset variable multi");
        assert_eq!(
            dv["includeAll"], true,
            "{file}: dataset variable include all"
        );
        assert_eq!(
            dv["datasource"]["uid"], "${datasource}",
            "{file}: dataset var"
        );
        let q = dv["query"]["query"].as_str().or(dv["query"].as_str());
        assert_eq!(
            q,
            Some("label_values(mos_mixture_weight, dataset)"),
            "{file}: dataset variable query"
        );

        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{file}: no panel");
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            let ty = p["type"].as_str().unwrap_or("?");
            assert!(
                matches!(ty, "timeseries" | "stat"),
                "{file} / {title}: type {ty}"
            );
            for k in ["h", "w", "x", "y"] {
                assert!(p["gridPos"][k].is_u64(), "{file} / {title}: gridPos.{k}");
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file} / {title}: panel datasource"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file} / {title}: no target");
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{file} / {title}: target datasource"
                );
                let expr = t["expr"].as_str().unwrap_or_default();
                // Per-dataset metrics honour the dataset filter (as a regex: multi-value and
                // "All" expand to alternatives).
                let per_dataset = metric_names_in(expr).iter().any(|n| {
                    cat.get(n.as_str())
                        .is_some_and(|m| m.labels.contains(&"dataset"))
                });
                if per_dataset {
                    assert!(
                        expr.contains("dataset=~\"$dataset\""),
                        "{file} / {title}: `{expr}` does not filter with dataset=~\"$dataset\""
                    );
                }
                assert!(
                    !expr.contains("dataset=\"$dataset\""),
                    "{file} / {title}: use =~ for the multi-value dataset variable"
                );
                // Counters are read through rate()/increase(), histograms through their buckets.
                for n in metric_names_in(expr) {
                    let Some(m) = cat.get(n.as_str()) else {
                        continue;
                    };
                    if m.kind == MetricKind::Histogram {
                        assert!(
                            !expr.contains(&format!("{n}{{")) && !expr.contains(&format!("{n})")),
                            "{file} / {title}: histogram {n} used without _bucket/_sum/_count"
                        );
                    }
                }
            }
        }
    }
}

/// Rows of the table of docs/METRICS.md: name -> the cells after the name.
fn doc_rows() -> BTreeMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/METRICS.md");
    let text = std::fs::read_to_string(&path).expect("docs/METRICS.md");
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `mos_") else {
            continue;
        };
        let cells: Vec<String> = format!("`mos_{rest}")
            .trim_end_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        let name = cells[0].trim_matches('`').to_string();
        assert!(
            rows.insert(name.clone(), cells[1..].to_vec()).is_none(),
            "docs/METRICS.md lists {name} twice"
        );
    }
    rows
}

/// The documented labels cell: label names in backticks, comma separated, or a dash.
fn labels_cell(labels: &[&str]) -> String {
    if labels.is_empty() {
        "-".to_string()
    } else {
        labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[test]
fn metrics_doc_lists_exactly_the_catalogue() {
    let rows = doc_rows();
    let documented: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let catalogued: BTreeSet<&str> = CATALOGUE.iter().map(|m| m.name).collect();
    let mut problems = Vec::new();
    for missing in catalogued.difference(&documented) {
        problems.push(format!(
            "{missing} is in the catalogue but not in docs/METRICS.md"
        ));
    }
    for extra in documented.difference(&catalogued) {
        problems.push(format!(
            "{extra} is in docs/METRICS.md but not in the catalogue"
        ));
    }
    for m in CATALOGUE {
        let Some(cells) = rows.get(m.name) else {
            continue;
        };
        // Columns: name | type | labels | unit | meaning.
        if cells.len() != 4 {
            problems.push(format!(
                "{}: expected 5 columns, got {}",
                m.name,
                cells.len() + 1
            ));
            continue;
        }
        if cells[0] != kind_word(m.kind) {
            problems.push(format!(
                "{}: type `{}`, catalogue says {}",
                m.name,
                cells[0],
                kind_word(m.kind)
            ));
        }
        if cells[1] != labels_cell(m.labels) {
            problems.push(format!(
                "{}: labels `{}`, catalogue says `{}`",
                m.name,
                cells[1],
                labels_cell(m.labels)
            ));
        }
        if cells[3] != m.help {
            problems.push(format!(
                "{}: meaning `{}`, catalogue help is `{}`",
                m.name, cells[3], m.help
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/METRICS.md is out of date with telemetry::CATALOGUE:\n{}",
        problems.join("\n")
    );
}

/// Label names of a sample line (`name{a="x",b="y"} v`), honouring quotes and escapes.
fn label_names(line: &str) -> Vec<String> {
    let Some(open) = line.find('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut name = String::new();
    let (mut in_value, mut escaped) = (false, false);
    for c in line[open + 1..].chars() {
        if in_value {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_value = false,
                _ => {}
            }
            continue;
        }
        match c {
            '}' => break,
            '"' => in_value = true,
            '=' => names.push(std::mem::take(&mut name).trim().to_string()),
            ',' => name.clear(),
            c => name.push(c),
        }
    }
    names
}

#[test]
fn everything_the_daemon_exports_is_catalogued_documented_and_typed() {
    let cat = catalogue();
    let documented = doc_rows();
    let dir = tempfile::tempdir().unwrap();
    write_corpus_with_bad_record(dir.path());
    let port = free_port();
    let mut daemon = spawn_daemon(dir.path(), 1_000_000, MOS_SCHEDULER, port, 10);
    let context = daemon.tail_fn();
    let text = wait_until(
        "the daemon's /metrics to show a step, an eval loss, rewards and a scheduler update",
        Duration::from_secs(90),
        || {
            daemon.assert_running();
            let (status, body) = http_get(port, "/metrics").ok()?;
            let ready = status == 200
                && sample_value(&body, "mos_train_step").is_some_and(|s| s > 0.0)
                && sample_value(&body, "mos_eval_loss").is_some()
                && sample_value(&body, "mos_reward").is_some()
                && sample_value(&body, "mos_scheduler_update_duration_seconds_count").is_some();
            ready.then_some(body)
        },
        context,
    );
    drop(daemon);

    let types = exposition_types(&text);
    let mut problems = Vec::new();
    // Every counter has a series from the first scrape on a healthy run, rare events
    // included (registered at zero for every dataset and every known label value), so no panel
    // of a healthy run shows "No data".
    for m in CATALOGUE.iter().filter(|m| m.kind == MetricKind::Counter) {
        let present = |labels: &str| {
            text.lines()
                .any(|l| l.starts_with(m.name) && l[m.name.len()..].starts_with(labels))
        };
        let missing = match m.labels {
            [] => !present(" "),
            ["dataset"] => !["prose", "maths"]
                .iter()
                .all(|d| present(&format!("{{dataset=\"{d}\"}}"))),
            ["actor"] => !present("{actor=\"loader\"}"),
            ["reason"] => !mos_runtime::mixture::REJECT_REASONS
                .iter()
                .all(|r| present(&format!("{{reason=\"{r}\"}}"))),
            other => {
                problems.push(format!("{}: no known values for labels {other:?}", m.name));
                false
            }
        };
        if missing {
            problems.push(format!(
                "{} has no series on a healthy run (labels {:?})",
                m.name, m.labels
            ));
        }
    }
    // Families: catalogued, documented, of the catalogued type, with a HELP line.
    for (family, ty) in types.iter().filter(|(f, _)| f.starts_with("mos_")) {
        let Some(m) = cat.get(family.as_str()) else {
            problems.push(format!(
                "{family} ({ty}) is exported but not in telemetry::CATALOGUE"
            ));
            continue;
        };
        if !documented.contains_key(family) {
            problems.push(format!("{family} is exported but not in docs/METRICS.md"));
        }
        if ty != kind_word(m.kind) {
            problems.push(format!(
                "{family} is exported as {ty}, catalogued as {}",
                kind_word(m.kind)
            ));
        }
        if !text.contains(&format!("# HELP {family} ")) {
            problems.push(format!("{family} has no HELP line"));
        }
    }
    // Samples: each belongs to a typed family; labels are the catalogued ones (plus `le`).
    for line in text.lines().filter(|l| l.starts_with("mos_")) {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        let family = if types.contains_key(series) {
            series
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s))
                .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
                .unwrap_or(series)
        };
        let Some(m) = cat.get(family) else {
            problems.push(format!("sample of an uncatalogued family: {line}"));
            continue;
        };
        for l in label_names(line) {
            let ok = m.labels.contains(&l.as_str())
                || (l == "le" && m.kind == MetricKind::Histogram && series.ends_with("_bucket"));
            if !ok {
                problems.push(format!("{family}: label `{l}` is not catalogued: {line}"));
            }
        }
    }
    // Histograms are real histograms with buckets (the exporter renders summaries unless buckets
    // are configured for the name).
    for m in CATALOGUE.iter().filter(|m| m.kind == MetricKind::Histogram) {
        if let Some(ty) = types.get(m.name) {
            let bucket = format!("{}_bucket{{le=\"", m.name);
            if ty != "histogram" || !text.contains(&bucket) {
                problems.push(format!(
                    "{} is exported as {ty} without _bucket lines",
                    m.name
                ));
            }
        }
    }
    // The run must have exported the core families, or the checks above prove little.
    for must in [
        "mos_build_info",
        "mos_train_step",
        "mos_train_loss",
        "mos_train_tokens_total",
        "mos_train_step_duration_seconds",
        "mos_trainer_data_wait_seconds_total",
        "mos_mixture_weight",
        "mos_dataset_samples_total",
        "mos_eval_loss",
        "mos_reward",
        "mos_reward_smoothed",
        "mos_scheduler_updates_total",
        "mos_scheduler_update_duration_seconds",
        "mos_loader_queue_depth",
        "mos_loader_bad_records_total",
    ] {
        if !types.contains_key(must) {
            problems.push(format!(
                "{must} was not exported by a MoS run with evaluations"
            ));
        }
    }
    let unseen: Vec<&str> = CATALOGUE
        .iter()
        .map(|m| m.name)
        .filter(|n| !types.contains_key(*n))
        .collect();
    if !unseen.is_empty() {
        eprintln!(
            "catalogued but not exported by this short run: {}",
            unseen.join(", ")
        );
    }
    assert!(
        problems.is_empty(),
        "metrics contract violations:\n{}\n--- exposition ---\n{text}",
        problems.join("\n")
    );
}
