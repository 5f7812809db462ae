//! Shared fixtures for the integration tests: a small synthetic corpus in several formats and a
//! tiny-model config that trains in a few milliseconds per step on CPU.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Writes four small datasets (jsonl text, prompt/response, chat, plain text) under `dir`.
pub(crate) fn write_corpus(dir: &Path) {
    let mut text = String::new();
    for i in 0..120 {
        text.push_str(&format!(
            "{{\"text\": \"the cat sat on the mat number {i} and the dog ran after it\"}}\n"
        ));
    }
    std::fs::write(dir.join("prose.jsonl"), text).unwrap();

    let mut pr = String::new();
    for i in 0..80 {
        pr.push_str(&format!(
            "{{\"prompt\": \"what is {i} plus {i}?\", \"response\": \"{i} plus {i} is {}\"}}\n",
            2 * i
        ));
    }
    std::fs::write(dir.join("maths.jsonl"), pr).unwrap();

    let mut chat = String::new();
    for i in 0..60 {
        chat.push_str(&format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"name colour {i}\"}}, {{\"role\": \"assistant\", \"content\": \"colour {i} is blue\"}}]}}\n"
        ));
    }
    std::fs::write(dir.join("qa.jsonl"), chat).unwrap();

    let mut quotes = String::new();
    for i in 0..100 {
        quotes.push_str(&format!("a stitch in time saves {i} more\n%\n"));
    }
    std::fs::write(dir.join("quotes.txt"), quotes).unwrap();
}

/// A config for the corpus of [`write_corpus`] with a tiny model.
pub(crate) fn tiny_config(dir: &Path, out: &Path, steps: u64, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[runtime]
seed = 7
max_steps = {steps}
output_dir = "{out}"
log_every = 5
eval_every = 0

[metrics]
enabled = false

[model]
d_model = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
ffn_hidden = 64

[training]
batch_size = 4
seq_len = 48
lr = 0.01
warmup_steps = 2
eval_examples = 8

[data]
eval_fraction = 0.1
prefetch = 16

{extra}

[[datasets]]
name = "prose"
path = "{d}/prose.jsonl"
format = "jsonl"

[[datasets]]
name = "maths"
path = "{d}/maths.jsonl"
format = "jsonl"

[[datasets]]
name = "qa"
path = "{d}/qa.jsonl"
format = "jsonl"

[[datasets]]
name = "quotes"
path = "{d}/quotes.txt"
format = "text"
separator = "%"
"#,
        out = out.display()
    )
}

/// Writes `text` as `name` in `dir` and returns its path.
pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Path of the built binary.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mos-runtime"))
}

// ---------------------------------------------------------------------------------------------
// Observability helpers (tests/prometheus.rs, tests/metrics_contract.rs, tests/report.rs): run the
// daemon binary with its Prometheus endpoint on a free loopback port, talk plain HTTP to it, and
// read the Grafana dashboards' query expressions.

/// The `[scheduler]` section that makes the daemon emit reward metrics quickly on the tiny corpus.
pub(crate) const MOS_SCHEDULER: &str =
    "[scheduler]\nstrategy = \"mos\"\nupdate_every = 5\nprobe_size = 8";

/// A child process that is killed and reaped when dropped, so that a failing assertion never
/// leaves a daemon or a Prometheus server running.
pub(crate) struct ChildGuard {
    /// The process.
    pub child: std::process::Child,
    /// What it is, for messages.
    pub name: &'static str,
    /// File receiving its stdout and stderr.
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr sent to `log`.
    pub(crate) fn spawn(name: &'static str, cmd: &mut std::process::Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name, log }
    }

    /// The last lines of its output, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        (self.tail_fn())()
    }

    /// A closure giving [`ChildGuard::log_tail`] without borrowing the guard, for
    /// [`wait_until`]'s context while another closure polls the process.
    pub(crate) fn tail_fn(&self) -> impl Fn() -> String {
        let (name, log) = (self.name, self.log.clone());
        move || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let start = text.len().saturating_sub(3000);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            format!("--- last output of {name} ---\n{}", &text[start..])
        }
    }

    /// Panics (with its output) if the process has already exited.
    pub(crate) fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status})\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL: the tests have what they need by now, and a clean shutdown is tested elsewhere.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` returning (status, body). HTTP/1.0 so that servers
/// answer without chunked encoding and close the connection at the end of the body.
pub(crate) fn http_get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(10);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of HTTP headers")
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters pass through).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Polls `probe` every 200 ms until it returns `Some` or `timeout` passes; then panics with `what`
/// and the text of `context` (e.g. a child's last output).
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// [`write_corpus`] plus one malformed line in `prose.jsonl`, so that the bad-record counter is
/// exported too.
pub(crate) fn write_corpus_with_bad_record(dir: &Path) {
    write_corpus(dir);
    let p = dir.join("prose.jsonl");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("this line is not json\n");
    std::fs::write(p, text).unwrap();
}

/// Writes a tiny config under `dir` (the corpus must be there already) and starts the daemon
/// binary on it, serving metrics on 127.0.0.1:`port` and evaluating every `eval_every` steps
/// (0: only at the end).
pub(crate) fn spawn_daemon(
    dir: &Path,
    steps: u64,
    extra: &str,
    port: u16,
    eval_every: u64,
) -> ChildGuard {
    let cfg = tiny_config(dir, &dir.join("out"), steps, extra);
    let p = write_file(dir, "daemon.toml", &cfg);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config")
        .arg(&p)
        .args(["--set", "metrics.enabled=true"])
        .arg("--set")
        .arg(format!("metrics.listen=127.0.0.1:{port}"))
        .arg("--set")
        .arg(format!("runtime.eval_every={eval_every}"))
        .env("RUST_LOG", "info");
    ChildGuard::spawn("mos-runtime daemon", &mut cmd, dir.join("daemon.log"))
}

/// The first sample value of metric `name` (any labels) in a Prometheus text exposition.
pub(crate) fn sample_value(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
}

/// Metric family names and their `# TYPE` in a Prometheus text exposition.
pub(crate) fn exposition_types(exposition: &str) -> std::collections::BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// Names of every sample line (series name without labels) in a Prometheus text exposition.
pub(crate) fn exposition_sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The folder of the Grafana dashboards.
pub(crate) fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards")
}

/// One query of one dashboard panel.
#[derive(Debug, Clone)]
pub(crate) struct PanelQuery {
    /// Dashboard file name.
    pub file: String,
    /// Panel title.
    pub panel: String,
    /// The PromQL expression, as written in the dashboard.
    pub expr: String,
}

/// Every panel target expression of every dashboard JSON (rows' nested panels included).
pub(crate) fn dashboard_queries() -> Vec<PanelQuery> {
    fn walk(file: &str, panels: &serde_json::Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        file: file.to_string(),
                        panel: title.clone(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(file, &p["panels"], out);
        }
    }
    let mut out = Vec::new();
    for (file, json) in dashboards() {
        walk(&file, &json["panels"], &mut out);
    }
    out
}

/// Every dashboard JSON of [`dashboards_dir`], parsed, with its file name, sorted by name.
pub(crate) fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().to_string(), json)
        })
        .collect()
}

/// The `mos_` metric names used in a PromQL expression, with the `_bucket`, `_sum` and `_count`
/// series suffixes of histograms stripped.
pub(crate) fn metric_names_in(expr: &str) -> std::collections::BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut out = std::collections::BTreeSet::new();
    let mut i = 0;
    while let Some(off) = expr[i..].find("mos_") {
        let start = i + off;
        // Only at a token start: `xmos_y` is not a metric name.
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let mut name = &expr[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                    break;
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 4);
    }
    out
}

/// A dashboard expression made runnable outside Grafana: `$dataset` matches every dataset (as the
/// variable's "All" value `.+` does) and the interval macros become fixed windows.
pub(crate) fn substitute_grafana_vars(expr: &str) -> String {
    expr.replace("${dataset}", ".+")
        .replace("$dataset", ".+")
        .replace("$__rate_interval", "10s")
        .replace("$__interval", "10s")
        .replace("$__range", "1m")
}

/// Writes the tiny config for `out` under `dir` and loads it as a user would (file, no
/// environment, no overrides).
pub(crate) fn load_tiny(
    dir: &Path,
    out: &str,
    steps: u64,
    extra: &str,
) -> mos_runtime::config::Config {
    let text = tiny_config(dir, &dir.join(out), steps, extra);
    let p = write_file(dir, &format!("{out}.toml"), &text);
    mos_runtime::config::Config::load_with_env(&p, &[], &[]).unwrap()
}

/// A tokio runtime shaped like the binary's (two workers).
pub(crate) fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The service tests' MoS scheduler: DIFF rewards with the EMA, a small scorer budget.
pub(crate) fn diff_ema() -> mos_runtime::config::SchedulerConfig {
    use mos_runtime::config::{RewardKind, SchedulerConfig, Strategy};
    SchedulerConfig {
        strategy: Strategy::Mos,
        reward: RewardKind::Diff,
        ema: true,
        scorer_lr: 1e-3,
        scorer_steps: 50,
        ..SchedulerConfig::default()
    }
}
