//! The scheduler as a service (`mos-runtime serve`), end to end on loopback: the Python client's
//! training-like loop, token checks on every write, refused payloads that change nothing,
//! concurrent clients, the route list against `docs/openapi.yaml`, and bit-identical mixtures
//! between the service, the built-in actors and a real training run's log.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mos_runtime::actors::{MixingPlan, ProbeReport, RewardMsg};
use mos_runtime::config::{Config, RewardKind, SchedulerConfig, Secret};
use mos_runtime::mixture::{MixtureLogLine, MosScheduler, StartRecord, UpdateRecord};
use mos_runtime::seed::stream_seed;
use mos_runtime::service::{self, ServiceHandle};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";

// ---------------------------------------------------------------------------------------------
// A minimal blocking HTTP/1.1 client (one request per connection), so the tests need no HTTP
// client crate and talk to the service exactly as an outside process would.

struct Reply {
    status: u16,
    headers: String,
    body: Value,
}

fn send_raw(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let timeout = Duration::from_secs(20);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading the whole body; a failed write is
    // then expected, and the answer is still there to read.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").expect("no end of headers");
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("no status");
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    };
    Reply {
        status,
        headers: headers.to_string(),
        body,
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    send_raw(addr, &head, body)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None, b"")
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    let bearer = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        path,
        Some(&bearer),
        body.to_string().as_bytes(),
    )
}

// ---------------------------------------------------------------------------------------------
// Service fixtures.

fn service_config(scheduler: SchedulerConfig) -> Config {
    let mut cfg = Config::default();
    cfg.runtime.seed = 7;
    cfg.scheduler = scheduler;
    cfg.service.token = Some(Secret::new(TOKEN));
    cfg.service.max_body_bytes = 4096;
    cfg
}

fn start(rt: &tokio::runtime::Runtime, cfg: &Config) -> ServiceHandle {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        service::serve_with_env(cfg, listener, &[]).await.unwrap()
    })
}

const NAMES: [&str; 4] = ["maths", "medicine", "chat", "nlp"];
const SIZES: [u64; 4] = [26200, 5200, 9300, 62600];

fn register(addr: SocketAddr) -> Reply {
    let datasets: Vec<Value> = NAMES
        .iter()
        .zip(SIZES)
        .map(|(n, s)| json!({"name": n, "size": s}))
        .collect();
    post(addr, "/v1/datasets", &json!({ "datasets": datasets }))
}

/// Deterministic, plausible per-example NLLs: update `k` of dataset `i`, probe example `j`.
fn nll(k: usize, i: usize, j: usize) -> f64 {
    let start = 2.5 + 0.3 * i as f64 + 0.01 * j as f64;
    start * (0.5 + 0.5 * (-(k as f64) * (0.05 + 0.1 * i as f64)).exp())
}

fn nll_rows(k: usize, probe: usize) -> Vec<Vec<f64>> {
    (0..NAMES.len())
        .map(|i| (0..probe).map(|j| nll(k, i, j)).collect())
        .collect()
}

/// What a refused request must not change: the version, the mixture and the history.
fn observable(handle: &ServiceHandle) -> (Option<u64>, Option<Vec<u64>>, usize) {
    let snap = handle.mixture();
    let history = handle
        .core()
        .history(0, None)
        .map(|h| h.updates.len())
        .unwrap_or(0);
    (
        snap.as_ref().map(|s| s.version),
        snap.map(|s| s.weights.iter().map(|w| w.to_bits()).collect()),
        history,
    )
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_python_client_loop_runs_against_the_service() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        // CI sets MOS_REQUIRE_PYTHON (and installs python3 with .ci/install-python.sh), so
        // there a missing interpreter fails instead of skipping.
        assert!(
            std::env::var_os("MOS_REQUIRE_PYTHON").is_none_or(|v| v.is_empty()),
            "python3 is not installed and MOS_REQUIRE_PYTHON is set"
        );
        println!("SKIPPED: python3 is not installed");
        return;
    }
    let rt = tokio_rt();
    let handle = start(&rt, &service_config(diff_ema()));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python_client_loop.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--url", &handle.url(), "--token", TOKEN, "--updates", "8"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("final version 8: 8 updates applied"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    let snap = handle.mixture().unwrap();
    assert_eq!(snap.version, 8);
    let history = handle.core().history(0, None).unwrap();
    assert_eq!(history.updates.len(), 8);
    let moved = history
        .start
        .prior
        .iter()
        .zip(&snap.weights)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the mixture did not move: {moved}");
    // The last mixture the script printed is the service's, to the printed precision.
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("step"))
        .unwrap();
    for (n, w) in snap.names.iter().zip(&snap.weights) {
        assert!(
            last.contains(&format!("{n}={w:.4}")),
            "{last} vs {n}={w:.4}"
        );
    }
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn every_write_needs_the_token_and_a_refusal_changes_nothing() {
    let rt = tokio_rt();
    let handle = start(&rt, &service_config(diff_ema()));
    let addr = handle.addr();
    let writes: Vec<_> = service::routes()
        .into_iter()
        .filter(|(m, _)| m.as_str() == "POST")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(writes, ["/v1/datasets", "/v1/updates"]);
    let register_body = json!({"datasets": [{"name": "a", "size": 10}, {"name": "b", "size": 20}]});
    let update_body = json!({"rewards": [1.0, 2.0]});
    let bad_auth = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("bearer {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer ".to_string()),
    ];
    for registered in [false, true] {
        if registered {
            assert_eq!(post(addr, "/v1/datasets", &register_body).status, 201);
        }
        let before = observable(&handle);
        for path in &writes {
            let body = if *path == "/v1/datasets" {
                &register_body
            } else {
                &update_body
            };
            for auth in &bad_auth {
                let r = request(
                    addr,
                    "POST",
                    path,
                    auth.as_deref(),
                    body.to_string().as_bytes(),
                );
                assert_eq!(r.status, 401, "{path} with {auth:?}: {:?}", r.body);
                assert!(
                    r.body["error"].as_str().unwrap().contains("Authorization")
                        || r.body["error"].as_str().unwrap().contains("token"),
                    "{:?}",
                    r.body
                );
                assert!(
                    r.headers
                        .to_ascii_lowercase()
                        .contains("www-authenticate: bearer"),
                    "{}",
                    r.headers
                );
            }
        }
        assert_eq!(observable(&handle), before);
        assert_eq!(
            get(addr, "/v1/health").body["registered"],
            json!(registered)
        );
    }
    // The right token works (so the refusals above were about the token, not the payload).
    assert_eq!(post(addr, "/v1/updates", &update_body).status, 200);
    assert_eq!(handle.mixture().unwrap().version, 1);
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn the_service_refuses_to_start_without_a_token() {
    let rt = tokio_rt();
    let mut cfg = service_config(diff_ema());
    cfg.service.token = None;
    for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
        let err = rt
            .block_on(async {
                let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
                service::serve_with_env(&cfg, listener, &[]).await
            })
            .expect_err("started without a token");
        let msg = err.to_string();
        assert!(msg.contains("no bearer token"), "{msg}");
        assert_eq!(
            msg.contains("not a loopback address"),
            bind.starts_with("0.0.0.0"),
            "{msg}"
        );
    }
    // The environment variable is a token source.
    let env = vec![(
        mos_runtime::config::TOKEN_ENV.to_string(),
        "from-env".to_string(),
    )];
    let handle = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        service::serve_with_env(&cfg, listener, &env).await.unwrap()
    });
    let r = request(
        handle.addr(),
        "POST",
        "/v1/datasets",
        Some("Bearer from-env"),
        br#"{"datasets":[{"name":"a","size":1}]}"#,
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn malformed_and_oversized_payloads_are_refused_without_a_state_change() {
    let rt = tokio_rt();
    let handle = start(&rt, &service_config(diff_ema()));
    let addr = handle.addr();
    // Before registration: reads and updates say so, and a bad registration registers nothing.
    assert_eq!(get(addr, "/v1/mixture").status, 409);
    assert_eq!(
        post(addr, "/v1/updates", &json!({"rewards": [1.0]})).status,
        409
    );
    let bad_registrations = [
        (json!({"datasets": []}), 422, "datasets"),
        (
            json!({"datasets": [{"name": "a", "size": 1}, {"name": "a", "size": 2}]}),
            422,
            "datasets[1].name",
        ),
        (
            json!({"datasets": [{"name": "a b", "size": 1}]}),
            422,
            "datasets[0].name",
        ),
        (json!({"datasets": [{"name": "a", "size": 0}]}), 422, "size"),
        (
            json!({"datasets": [{"name": "a", "size": -1}]}),
            400,
            "datasets[0].size",
        ),
        (
            json!({"datasets": [{"name": "a", "size": 1, "weight": 2}]}),
            400,
            "weight",
        ),
        (json!({"dataset": []}), 400, "dataset"),
    ];
    for (body, status, needle) in &bad_registrations {
        let r = post(addr, "/v1/datasets", body);
        assert_eq!(r.status, *status, "{body}: {:?}", r.body);
        let msg = r.body["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: `{needle}` not in {msg}");
        assert_eq!(observable(&handle), (None, None, 0));
    }
    assert_eq!(register(addr).status, 201);
    // One good update, so the EMA state exists and a refused update could disturb it.
    let good = json!({"step": 10, "nll": {"now": nll_rows(1, 4), "initial": nll_rows(0, 4)}});
    assert_eq!(post(addr, "/v1/updates", &good).status, 200);
    let before = observable(&handle);
    let mut ragged = nll_rows(2, 4);
    ragged[2].pop();
    let mut negative = nll_rows(2, 4);
    negative[1][0] = -800.0; // exp(-800) = 0: a zero perplexity
    let mut empty = nll_rows(2, 4);
    empty[3].clear();
    let init = nll_rows(0, 4);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed JSON"),
        (b"".to_vec(), 400, "malformed JSON"),
        (b"[1, 2]".to_vec(), 400, "malformed JSON"),
        (
            br#"{"rewards": [NaN, 1, 1, 1]}"#.to_vec(),
            400,
            "malformed JSON",
        ),
        (br#"{"rewards": [1e999, 1, 1, 1]}"#.to_vec(), 400, "rewards"),
        (b"\xff\xfe{}".to_vec(), 400, "malformed JSON"),
        (
            br#"{"rewards": [1, 1, 1, "x"]}"#.to_vec(),
            400,
            "rewards[3]",
        ),
        (
            br#"{"rewards": [1, 1, 1, 1], "bogus": 1}"#.to_vec(),
            400,
            "bogus",
        ),
        (
            br#"{"rewards": [1, 1, 1]}"#.to_vec(),
            422,
            "rewards: expected 4 entries",
        ),
        (br#"{}"#.to_vec(), 422, "exactly one of"),
        (
            json!({"rewards": [1, 1, 1, 1], "nll": {"now": init, "initial": init}})
                .to_string()
                .into_bytes(),
            422,
            "exactly one of",
        ),
        (
            json!({"embeddings": [[1.0], [1.0], [1.0], [1.0]]})
                .to_string()
                .into_bytes(),
            422,
            "embeddings",
        ),
        (
            json!({"nll": {"now": ragged, "initial": init}})
                .to_string()
                .into_bytes(),
            422,
            "dataset `chat`",
        ),
        (
            json!({"nll": {"now": negative, "initial": init}})
                .to_string()
                .into_bytes(),
            422,
            "dataset `medicine`",
        ),
        (
            json!({"nll": {"now": empty, "initial": init}})
                .to_string()
                .into_bytes(),
            422,
            "dataset `nlp`",
        ),
        (
            json!({"nll": {"now": nll_rows(2, 4)[..3].to_vec(), "initial": init}})
                .to_string()
                .into_bytes(),
            422,
            "nll.now",
        ),
        (
            json!({"perplexities": {"now": init, "initial": init}, "counts": [1, 2]})
                .to_string()
                .into_bytes(),
            422,
            "counts",
        ),
        (
            json!({"rewards": [1, 1, 1, 1], "datasets": ["maths", "medicine", "chat", "law"]})
                .to_string()
                .into_bytes(),
            422,
            "unknown dataset `law`",
        ),
        (
            json!({"rewards": [1, 1, 1, 1], "datasets": ["maths", "maths", "chat", "nlp"]})
                .to_string()
                .into_bytes(),
            422,
            "listed twice",
        ),
        (
            json!({"rewards": [1, 1, 1, 1], "datasets": ["maths", "chat", "nlp"]})
                .to_string()
                .into_bytes(),
            422,
            "datasets",
        ),
        // Finite rewards whose sum overflows would turn the scorer into NaN.
        (
            json!({"rewards": [1e308, 1e308, 1, 1]})
                .to_string()
                .into_bytes(),
            422,
            "non-finite mixture",
        ),
    ];
    for (body, status, needle) in &cases {
        let bearer = format!("Bearer {TOKEN}");
        let r = request(addr, "POST", "/v1/updates", Some(&bearer), body);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(r.status, *status, "{shown}: {:?}", r.body);
        let msg = r.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: no JSON error: {:?}", r.body));
        assert!(msg.contains(needle), "{shown}: `{needle}` not in `{msg}`");
        assert_eq!(observable(&handle), before, "{shown} changed the state");
    }
    // Registering twice is refused too.
    assert_eq!(register(addr).status, 409);
    // Oversized: declared by Content-Length (refused before the body is read) ...
    let bearer = format!("Bearer {TOKEN}");
    let head = format!("POST /v1/updates HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {bearer}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n");
    let r = send_raw(addr, &head, b"");
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("max_body_bytes"));
    // ... and chunked, without a length (refused once the limit is crossed).
    let big = json!({"rewards": vec![0.125; 1000]}).to_string();
    assert!(big.len() > 4096);
    let head = format!("POST /v1/updates HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {bearer}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let r = send_raw(addr, &head, chunked.as_bytes());
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(observable(&handle), before);
    // Unknown routes, wrong methods and bad queries answer JSON errors.
    assert_eq!(get(addr, "/v1/nope").status, 404);
    assert!(get(addr, "/v1/nope").body["error"].is_string());
    let r = request(addr, "DELETE", "/v1/mixture", None, b"");
    assert_eq!(r.status, 405);
    assert!(r.body["error"].as_str().unwrap().contains("/v1/mixture"));
    let r = get(addr, "/v1/history?since=abc");
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("query"));
    assert_eq!(get(addr, "/v1/history?limit=0").status, 400);
    assert_eq!(observable(&handle), before);
    // Finally the state still accepts a good update, continuing from where it was.
    let (_, _, history) = before;
    let r = post(
        addr,
        "/v1/updates",
        &json!({"rewards": [2.0, 1.0, 1.0, 0.5]}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["version"], json!(history + 1));
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn concurrent_clients_are_served_and_versions_count_accepted_updates() {
    let rt = tokio_rt();
    let handle = start(&rt, &service_config(diff_ema()));
    let addr = handle.addr();
    assert_eq!(register(addr).status, 201);
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for i in 0..50usize {
                    match i % 5 {
                        0 | 1 => {
                            let k = t * 50 + i;
                            // No `step`: clients racing each other would send steps out of order,
                            // which the service refuses (409); the default step never goes back.
                            let body = json!({"nll": {"now": nll_rows(k % 7 + 1, 3), "initial": nll_rows(0, 3)}});
                            let r = post(addr, "/v1/updates", &body);
                            assert_eq!(r.status, 200, "{:?}", r.body);
                            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        2 => {
                            // A refused write among the accepted ones.
                            let r = post(addr, "/v1/updates", &json!({"rewards": [1.0]}));
                            assert_eq!(r.status, 422, "{:?}", r.body);
                        }
                        3 => {
                            let r = get(addr, "/v1/mixture");
                            assert_eq!(r.status, 200, "{:?}", r.body);
                            let sum: f64 = floats(&r.body["weights"]).iter().sum();
                            assert!((sum - 1.0).abs() < 1e-9);
                        }
                        _ => {
                            let r = get(addr, &format!("/v1/history?since={}&limit=5", i));
                            assert_eq!(r.status, 200, "{:?}", r.body);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(accepted, 8 * 20);
    let snap = handle.mixture().unwrap();
    assert_eq!(snap.version, accepted);
    // The history is one chain: versions 1..=N, each update starting where the previous ended.
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let r = get(addr, &format!("/v1/history?since={since}"));
        let page: Vec<UpdateRecord> = serde_json::from_value(r.body["updates"].clone()).unwrap();
        if page.is_empty() {
            break;
        }
        since = page.last().unwrap().version;
        all.extend(page);
    }
    assert_eq!(all.len() as u64, accepted);
    let start: StartRecord =
        serde_json::from_value(get(addr, "/v1/datasets").body["start"].clone()).unwrap();
    let mut prev = start.prior;
    for (k, u) in all.iter().enumerate() {
        assert_eq!(u.version, k as u64 + 1);
        assert_eq!(
            bits(&u.before),
            bits(&prev),
            "update {} does not continue the chain",
            u.version
        );
        prev = u.after.clone();
    }
    assert_eq!(bits(&prev), bits(&snap.weights));
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn every_route_is_in_the_openapi_spec_and_nothing_else() {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"),
    )
    .unwrap();
    // A small reader for the spec's fixed layout: `paths:` at column 0, each path two spaces in,
    // each method four spaces in.
    let mut documented = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ") {
            let m = m.trim_end().trim_end_matches(':');
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                documented.insert((m.to_ascii_uppercase(), path.clone().unwrap()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = service::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect();
    assert_eq!(routed.len(), 7, "{routed:?}");
    assert_eq!(routed, documented, "routes and docs/openapi.yaml disagree");
    // Every write documents 401, 413 and 422; the spec is what the service serves.
    for write in ["/v1/datasets:", "/v1/updates:"] {
        let section = spec.split(&format!("  {write}\n")).nth(1).unwrap();
        let post = section.split("    post:").nth(1).unwrap();
        let post = post.split("\n  /").next().unwrap();
        for code in ["\"401\"", "\"413\"", "\"422\"", "\"400\""] {
            assert!(post.contains(code), "{write} post lacks {code}");
        }
    }
    // Every `$ref` points at a component the spec defines: `components:` at column 0, its
    // sections two spaces in, their entries four spaces in.
    let mut defined = BTreeSet::new();
    let (mut in_components, mut section) = (false, String::new());
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_components = line.trim_end() == "components:";
        } else if !in_components {
        } else if let Some(s) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            section = s.trim_end().trim_end_matches(':').to_string();
        } else if let Some(n) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            if let Some(name) = n.trim_end().strip_suffix(':') {
                defined.insert(format!("{section}/{name}"));
            }
        }
    }
    assert!(defined.contains("schemas/Error"), "{defined:?}");
    for r in spec.split("$ref: \"#/components/").skip(1) {
        let target = r.split('"').next().unwrap();
        assert!(
            defined.contains(target),
            "dangling $ref #/components/{target}"
        );
    }
    assert_eq!(service::OPENAPI_YAML, spec);
}

/// Spawns the built-in reward and scheduler actors exactly as `Runtime::start` wires them (minus
/// the trainer), feeds them probe reports, and returns the mixture log's updates.
fn run_actors(
    settings: &SchedulerConfig,
    seed: u64,
    reports: Vec<ProbeReport>,
    log: &std::path::Path,
) -> Vec<UpdateRecord> {
    let rt = tokio_rt();
    rt.block_on(async {
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        let mos = MosScheduler::new(settings, &SIZES, None, seed).unwrap();
        let actors = MixingPlan {
            reward_capacity: 64,
            ..MixingPlan::new(
                names,
                SIZES.to_vec(),
                settings.clone(),
                seed,
                mos_runtime::mixture::Strategy::Mos(Box::new(mos)),
                log.to_path_buf(),
            )
        }
        .spawn(None)
        .await
        .unwrap();
        let board = actors.mixing.board.clone();
        let reward = actors.mixing.reward.clone().unwrap();
        let expected = reports.iter().filter(|r| !r.initial).count() as u64;
        for r in reports {
            assert!(reward.try_send(RewardMsg::Probe(r)).is_ok());
        }
        let mut rx = board.subscribe();
        tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|s| s.version == expected),
        )
        .await
        .unwrap()
        .unwrap();
        actors.stop(Duration::from_secs(30)).await;
    });
    mos_runtime::runlog::read_all::<MixtureLogLine>(log)
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            MixtureLogLine::Update(u) => Some(u),
            MixtureLogLine::Start(_) => None,
        })
        .collect()
}

fn assert_same_trajectory(actors: &[UpdateRecord], served: &[UpdateRecord]) {
    assert_eq!(actors.len(), served.len());
    for (a, s) in actors.iter().zip(served) {
        assert_eq!(a.version, s.version);
        assert_eq!(
            bits(&a.before),
            bits(&s.before),
            "before, version {}",
            a.version
        );
        assert_eq!(bits(&a.raw), bits(&s.raw), "raw, version {}", a.version);
        assert_eq!(
            bits(&a.smoothed),
            bits(&s.smoothed),
            "smoothed, version {}",
            a.version
        );
        assert_eq!(
            bits(&a.after),
            bits(&s.after),
            "after, version {}",
            a.version
        );
    }
}

#[test]
fn the_service_and_the_built_in_actors_give_bit_identical_mixtures() {
    let dir = tempfile::tempdir().unwrap();
    let updates = 12;
    let probe = 6;
    // DIFF + EMA from per-example NLLs; then COSSIM from embeddings (one probe example per
    // dataset, so the actors' f32 mean is the f64 the service receives). MLP scorer for COSSIM,
    // so that the seed derivation is compared too.
    let cossim = SchedulerConfig {
        reward: RewardKind::Cossim,
        ema: true,
        scorer: mos_runtime::config::ScorerKind::Mlp,
        ..diff_ema()
    };
    let embedding = |k: usize, i: usize| -> Vec<f32> {
        (0..5)
            .map(|d| ((k * 7 + i * 3 + d) % 11) as f32 * 0.25 - 1.0 + i as f32 * 0.5)
            .collect()
    };
    for (name, settings) in [("diff", diff_ema()), ("cossim", cossim)] {
        let seed = stream_seed(7, "scheduler");
        let mut reports = vec![ProbeReport {
            step: 0,
            initial: true,
            nll: nll_rows(0, probe),
            embeddings: vec![],
            counts: vec![0; 4],
            seconds: 0.0,
        }];
        for k in 1..=updates {
            reports.push(ProbeReport {
                step: k as u64 * 10,
                initial: false,
                nll: nll_rows(k, probe),
                embeddings: (0..4).map(|i| vec![embedding(k, i)]).collect(),
                counts: vec![k as u64, 2, 3, 4],
                seconds: 0.0,
            });
        }
        let actors = run_actors(
            &settings,
            seed,
            reports,
            &dir.path().join(format!("{name}.jsonl")),
        );

        let rt = tokio_rt();
        let mut cfg = service_config(settings.clone());
        cfg.service.max_body_bytes = 1 << 20;
        let handle = start(&rt, &cfg);
        let addr = handle.addr();
        let prior = register(addr);
        assert_eq!(prior.status, 201);
        assert_eq!(
            bits(&floats(&prior.body["weights"])),
            bits(&actors[0].before),
            "{name}: prior"
        );
        let mut served = Vec::new();
        for k in 1..=updates {
            let body = if settings.reward == RewardKind::Diff {
                json!({"step": k * 10, "counts": [k, 2, 3, 4], "nll": {"now": nll_rows(k, probe), "initial": nll_rows(0, probe)}})
            } else {
                let z: Vec<Vec<f64>> = (0..4)
                    .map(|i| embedding(k, i).into_iter().map(f64::from).collect())
                    .collect();
                json!({"step": k * 10, "counts": [k, 2, 3, 4], "embeddings": z})
            };
            let r = post(addr, "/v1/updates", &body);
            assert_eq!(r.status, 200, "{:?}", r.body);
            served.push(serde_json::from_value::<UpdateRecord>(r.body).unwrap());
        }
        assert_same_trajectory(&actors, &served);
        let moved = (actors[0].before[0] - actors.last().unwrap().after[0]).abs();
        assert!(
            moved > 1e-4,
            "{name}: the mixture barely moved ({moved}), a weak comparison"
        );
        rt.block_on(handle.shutdown()).unwrap();
    }
}

#[test]
fn a_training_runs_recorded_rewards_replay_through_the_service_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra = "[scheduler]\nstrategy = \"mos\"\nreward = \"diff\"\nema = true\nupdate_every = 4\nprobe_size = 8\nscorer_lr = 0.001";
    let mut cfg = load_tiny(dir.path(), "run", 32, extra);
    // Deterministic mode never drops a report, so a loaded machine still yields every update
    // this test counts on (a slow scheduler otherwise makes the trainer skip probe reports).
    cfg.runtime.deterministic = true;
    tokio_rt().block_on(async {
        mos_runtime::runtime::Runtime::start(cfg)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
    });
    let lines =
        mos_runtime::runlog::read_all::<MixtureLogLine>(&dir.path().join("run/mixture.jsonl"))
            .unwrap();
    let MixtureLogLine::Start(run_start) = &lines[0] else {
        panic!("no start record")
    };
    let recorded: Vec<&UpdateRecord> = lines
        .iter()
        .filter_map(|l| match l {
            MixtureLogLine::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert!(recorded.len() >= 6, "only {} updates", recorded.len());

    // The service gets the run's scheduler settings and seed, the datasets by name and size,
    // and each update's recorded rewards; it also writes its own mixture log.
    let rt = tokio_rt();
    let mut scfg = service_config(run_start.scheduler.clone());
    scfg.service.mixture_log = Some(dir.path().join("served.jsonl"));
    let handle = start(&rt, &scfg);
    let addr = handle.addr();
    let datasets: Vec<Value> = run_start
        .names
        .iter()
        .zip(&run_start.sizes)
        .map(|(n, s)| json!({"name": n, "size": s}))
        .collect();
    let prior = post(addr, "/v1/datasets", &json!({"datasets": datasets}));
    assert_eq!(prior.status, 201);
    assert_eq!(
        bits(&floats(&prior.body["weights"])),
        bits(&run_start.prior)
    );
    let served_start: StartRecord =
        serde_json::from_value(get(addr, "/v1/datasets").body["start"].clone()).unwrap();
    assert_eq!(served_start.seed, run_start.seed);
    for u in &recorded {
        let r = post(
            addr,
            "/v1/updates",
            &json!({"step": u.step, "counts": u.counts, "rewards": u.smoothed}),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        let s: UpdateRecord = serde_json::from_value(r.body).unwrap();
        assert_eq!(bits(&s.before), bits(&u.before), "before, step {}", u.step);
        assert_eq!(bits(&s.after), bits(&u.after), "after, step {}", u.step);
    }
    rt.block_on(handle.shutdown()).unwrap();
    let replayed = mos_runtime::replay::replay(&dir.path().join("served.jsonl")).unwrap();
    assert_eq!(replayed.updates, recorded.len());
    assert_eq!(bits(&replayed.last), bits(&recorded.last().unwrap().after));
}

#[test]
fn the_serve_subcommand_starts_answers_and_never_prints_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "service.toml",
        "[service]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tok\"\n[scheduler]\nreward = \"diff\"\n",
    );
    // Without a token the command refuses to start, as a bad-input error (exit 2).
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "service.token_file=absent",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("service.token_file") && err.contains("absent"),
        "{err}"
    );
    assert!(
        err.contains("service.toml"),
        "the message names the config file: {err}"
    );
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "service.listen=nowhere",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("service.listen"), "{err}");

    write_file(dir.path(), "tok", &format!("{TOKEN}\n"));
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .env_remove(mos_runtime::config::TOKEN_ENV);
    let mut child = ChildGuard::spawn("serve", &mut cmd, dir.path().join("serve.log"));
    let log = child.log.clone();
    let addr: SocketAddr = wait_until(
        "the service's address in its log",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).ok()?;
            let rest = text.split("service on http://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        },
        child.tail_fn(),
    );
    child.assert_running();
    let health = get(addr, "/v1/health").body;
    assert_eq!(health["status"], json!("ok"));
    // The API version a client checks is the one the served OpenAPI document states.
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml"),
    )
    .unwrap();
    let info_version = spec
        .split("info:")
        .nth(1)
        .and_then(|info| info.lines().find_map(|l| l.trim().strip_prefix("version:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap();
    assert_eq!(health["api"], json!(info_version));
    assert_eq!(register(addr).status, 201);
    let wrong = request(addr, "POST", "/v1/updates", Some("Bearer nope"), b"{}");
    assert_eq!(wrong.status, 401);
    let r = post(
        addr,
        "/v1/updates",
        &json!({"nll": {"now": nll_rows(1, 2), "initial": nll_rows(0, 2)}}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(get(addr, "/v1/mixture").body["version"], json!(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(TOKEN), "the token is in the log:\n{text}");
}

#[test]
fn arrays_in_another_order_named_by_datasets_give_the_same_update() {
    let rt = tokio_rt();
    let a = start(&rt, &service_config(diff_ema()));
    let b = start(&rt, &service_config(diff_ema()));
    assert_eq!(register(a.addr()).status, 201);
    assert_eq!(register(b.addr()).status, 201);
    let now = nll_rows(3, 4);
    let initial = nll_rows(0, 4);
    // Registration order is maths, medicine, chat, nlp; b gets the rows as nlp, chat, maths, medicine.
    let perm = [3, 2, 0, 1];
    let pick =
        |rows: &Vec<Vec<f64>>| -> Vec<Vec<f64>> { perm.iter().map(|&i| rows[i].clone()).collect() };
    let names: Vec<&str> = perm.iter().map(|&i| NAMES[i]).collect();
    let ra = post(
        a.addr(),
        "/v1/updates",
        &json!({"counts": [1, 2, 3, 4], "nll": {"now": now, "initial": initial}}),
    );
    let rb = post(
        b.addr(),
        "/v1/updates",
        &json!({"datasets": names, "counts": [4, 3, 1, 2], "nll": {"now": pick(&now), "initial": pick(&initial)}}),
    );
    assert_eq!(
        (ra.status, rb.status),
        (200, 200),
        "{:?} {:?}",
        ra.body,
        rb.body
    );
    let (ua, ub): (UpdateRecord, UpdateRecord) = (
        serde_json::from_value(ra.body).unwrap(),
        serde_json::from_value(rb.body).unwrap(),
    );
    assert_eq!(ub.counts, vec![1, 2, 3, 4]);
    assert_eq!(bits(&ua.raw), bits(&ub.raw));
    assert_eq!(bits(&ua.after), bits(&ub.after));
    // Different rewards per dataset, so a wrong permutation would have shown.
    assert!(ua.raw.windows(2).all(|w| w[0] != w[1]), "{:?}", ua.raw);
    rt.block_on(a.shutdown()).unwrap();
    rt.block_on(b.shutdown()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Issue 20: no request may freeze, corrupt or crash the service.

/// The service of `configs/service.toml`, as a new user starts it, on a free loopback port.
fn start_shipped(rt: &tokio::runtime::Runtime, log: Option<&std::path::Path>) -> ServiceHandle {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/service.toml");
    let mut cfg = mos_runtime::config::load_service_config(
        &path,
        &["service.listen=\"127.0.0.1:0\"".to_string()],
        &[],
    )
    .unwrap();
    cfg.service.token = Some(Secret::new(TOKEN));
    cfg.service.mixture_log = log.map(std::path::Path::to_path_buf);
    rt.block_on(async {
        let listener = service::bind(&cfg).await.unwrap();
        service::serve_with_env(&cfg, listener, &[]).await.unwrap()
    })
}

#[test]
fn the_issue_20_sequence_refuses_the_absurd_update_and_the_mixture_keeps_moving() {
    let rt = tokio_rt();
    let handle = start_shipped(&rt, None);
    let addr = handle.addr();
    let r = post(
        addr,
        "/v1/datasets",
        &json!({"datasets": [{"name": "a", "size": 10}, {"name": "b", "size": 20}]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let prior = floats(&r.body["weights"]);
    assert!((prior[0] - 0.483).abs() < 5e-4, "{prior:?}");
    let r = post(
        addr,
        "/v1/updates",
        &json!({"step": 1, "rewards": [0.5, 1.0]}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut last = floats(&r.body["after"]);
    assert!((last[1] - 0.600).abs() < 5e-4, "{last:?}");

    // The absurd update is refused, naming the field and the range, and changes nothing.
    let before = observable(&handle);
    let r = post(
        addr,
        "/v1/updates",
        &json!({"step": 2, "rewards": [1e300, -5]}),
    );
    assert_eq!(r.status, 422, "{:?}", r.body);
    let msg = r.body["error"].as_str().unwrap();
    assert!(
        msg.contains("rewards[0]") && msg.contains("accepted range"),
        "{msg}"
    );
    assert_eq!(observable(&handle), before);
    // So is a step that goes backwards.
    let r = post(
        addr,
        "/v1/updates",
        &json!({"step": 0, "rewards": [0.5, 1.0]}),
    );
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("step"));
    assert_eq!(observable(&handle), before);

    // Ordinary updates go on moving the mixture towards the larger reward.
    for step in 3..8 {
        let r = post(
            addr,
            "/v1/updates",
            &json!({"step": step, "rewards": [0.5, 1.0]}),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        let after = floats(&r.body["after"]);
        assert!(after[1] > last[1], "step {step}: {last:?} -> {after:?}");
        last = after;
    }
    assert_eq!(handle.mixture().unwrap().version, 6);
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn a_step_that_goes_backwards_is_refused_and_an_omitted_one_never_goes_back() {
    let rt = tokio_rt();
    let handle = start(&rt, &service_config(diff_ema()));
    let addr = handle.addr();
    assert_eq!(register(addr).status, 201);
    let ok = |step: Option<u64>| {
        let mut body = json!({"rewards": [2.0, 1.0, 1.0, 0.5]});
        if let Some(s) = step {
            body["step"] = json!(s);
        }
        post(addr, "/v1/updates", &body)
    };
    assert_eq!(ok(Some(10)).status, 200);
    let before = observable(&handle);
    let r = ok(Some(9));
    assert_eq!(r.status, 409, "{:?}", r.body);
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.contains("step: 9") && msg.contains("10"), "{msg}");
    assert_eq!(observable(&handle), before);
    // The same step again is not backwards.
    assert_eq!(ok(Some(10)).status, 200);
    // Without a step the record takes the new version (3) or the last step (10), the larger.
    let r = ok(None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["version"].clone(), r.body["step"].clone()),
        (json!(3), json!(10))
    );
    assert_eq!(ok(Some(5)).status, 409);
    let steps: Vec<u64> = handle
        .core()
        .history(0, None)
        .unwrap()
        .updates
        .iter()
        .map(|u| u.step)
        .collect();
    assert_eq!(steps, [10, 10, 10]);
    rt.block_on(handle.shutdown()).unwrap();
}

#[test]
fn a_prior_entry_of_zero_is_refused_at_registration_naming_its_cause() {
    let rt = tokio_rt();
    let tiny = SchedulerConfig {
        init_temperature: mos_runtime::config::Temperature(1e-4),
        ..diff_ema()
    };
    let handle = start(&rt, &service_config(tiny));
    let addr = handle.addr();
    // q_tau underflows to exactly 0 for `a`: its logit would be -inf and the mixture frozen.
    let r = post(
        addr,
        "/v1/datasets",
        &json!({"datasets": [{"name": "a", "size": 10}, {"name": "b", "size": 20}]}),
    );
    assert_eq!(r.status, 422, "{:?}", r.body);
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.contains("scheduler.init_temperature"), "{msg}");
    assert_eq!(observable(&handle), (None, None, 0));
    // An empty dataset among others is refused by name.
    let r = post(
        addr,
        "/v1/datasets",
        &json!({"datasets": [{"name": "a", "size": 5}, {"name": "b", "size": 0}]}),
    );
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("datasets[1].size"),
        "{:?}",
        r.body
    );
    assert_eq!(observable(&handle), (None, None, 0));
    // Equal sizes never underflow, whatever the temperature; the registration then learns.
    let r = post(
        addr,
        "/v1/datasets",
        &json!({"datasets": [{"name": "a", "size": 10}, {"name": "b", "size": 10}]}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = post(addr, "/v1/updates", &json!({"rewards": [1.0, 0.5]}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(floats(&r.body["after"])[0] > 0.5);
    rt.block_on(handle.shutdown()).unwrap();
}

/// One request of the property test below, drawn at random: mostly well-formed updates with
/// ordinary or extreme values, often malformed or out of order, sometimes a read, a wrong token
/// or a second registration. Returns the method, the path, whether to send the token, and the
/// body.
fn random_request(
    rng: &mut rand_chacha::ChaCha8Rng,
    names: &[String],
    step: &mut u64,
) -> (&'static str, String, bool, Vec<u8>) {
    use rand::Rng;
    let n = names.len();
    let extreme = |rng: &mut rand_chacha::ChaCha8Rng, ordinary: f64| -> Value {
        // One value in five is extreme, so that most vectors are still ordinary ones.
        match rng.random_range(0..40) {
            0 => json!(1e300),
            1 => json!(-1e300),
            2 => json!(1e6),
            3 => json!(-1e6),
            4 => json!(0.0),
            5 => json!(1e-300),
            6 => json!(f64::MAX),
            7 => json!(10f64.powi(rng.random_range(-12..12))),
            _ => json!(ordinary),
        }
    };
    let rows = if rng.random_range(0..15) == 0 {
        n + 1
    } else {
        n
    };
    let mut body = match rng.random_range(0..20) {
        0..=5 => {
            let r: Vec<Value> = (0..rows)
                .map(|_| {
                    let x = rng.random_range(0.0..2.0);
                    extreme(rng, x)
                })
                .collect();
            json!({ "rewards": r })
        }
        6..=10 => {
            let len = rng.random_range(1..4);
            let initial: Vec<Vec<f64>> = (0..rows)
                .map(|_| (0..len).map(|_| rng.random_range(1.0..4.0)).collect())
                .collect();
            let now: Vec<Vec<Value>> = initial
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|&x| {
                            let y = x * rng.random_range(0.5..1.2);
                            extreme(rng, y)
                        })
                        .collect()
                })
                .collect();
            if rng.random_bool(0.5) {
                json!({"nll": {"now": now, "initial": initial}})
            } else {
                json!({"perplexities": {"now": now, "initial": initial}})
            }
        }
        11..=14 => {
            let dim = rng.random_range(1..5);
            let z: Vec<Vec<Value>> = (0..rows)
                .map(|_| {
                    (0..dim)
                        .map(|_| {
                            let x = rng.random_range(-1.0..1.0);
                            extreme(rng, x)
                        })
                        .collect()
                })
                .collect();
            json!({ "embeddings": z })
        }
        15 => {
            // Malformed bytes: garbage, a truncated body, a wrong type, a literal JSON lacks.
            let raw: &[&[u8]] = &[
                b"{\"rewards\": [1, 2",
                b"\xff\x00{}",
                b"{\"rewards\": \"many\"}",
                b"{\"rewards\": [1e999, 1]}",
                b"{\"rewards\": [NaN]}",
                b"[]",
                b"",
            ];
            let body = raw[rng.random_range(0..raw.len())].to_vec();
            return ("POST", "/v1/updates".into(), true, body);
        }
        16 => {
            let path = [
                "/v1/mixture",
                "/v1/health",
                "/v1/history?since=1&limit=3",
                "/v1/nope",
            ][rng.random_range(0..4)];
            return ("GET", path.into(), false, Vec::new());
        }
        17 => {
            let body = json!({"datasets": [{"name": "x", "size": 3}]}).to_string();
            return ("POST", "/v1/datasets".into(), true, body.into_bytes());
        }
        18 => {
            let body = json!({"rewards": vec![1.0; n]}).to_string();
            return ("POST", "/v1/updates".into(), false, body.into_bytes());
        }
        _ => json!({"rewards": vec![1.0; n], "bogus": true}),
    };
    // Steps: mostly increasing, sometimes absent, sometimes out of order.
    match rng.random_range(0..6) {
        0 => {}
        1 => body["step"] = json!(rng.random_range(0..(*step).max(1))),
        _ => {
            *step += rng.random_range(0..3);
            body["step"] = json!(*step);
        }
    }
    if rng.random_range(0..8) == 0 {
        let mut order: Vec<&String> = names.iter().collect();
        order.reverse();
        body["datasets"] = json!(order);
    }
    (
        "POST",
        "/v1/updates".into(),
        true,
        body.to_string().into_bytes(),
    )
}

/// The whole scheduler state behind the service is sound (independently of the checks the
/// update runs: through the accessors), and an ordinary update on a copy moves the mixture.
fn assert_live_state_sound(handle: &ServiceHandle, kind: RewardKind, what: &str) {
    use mos_runtime::mixture::{MixtureStrategy, Strategy as S, UpdateInput};
    let Some(S::Mos(m)) = handle.core().strategy() else {
        panic!("{what}: no MoS scheduler")
    };
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    assert!(finite(m.scorer().params()), "{what}: scorer");
    assert!(finite(m.adam().first_moment()), "{what}: Adam m");
    assert!(finite(m.adam().second_moment()), "{what}: Adam v");
    assert!(m.smoothed().is_none_or(finite), "{what}: EMA");
    let mut copy = S::Mos(m);
    let before = copy.probs();
    assert!(
        before.iter().all(|p| p.is_finite() && *p > 0.0),
        "{what}: {before:?}"
    );
    let r: Vec<f64> = (0..before.len())
        .map(|i| 0.25 + 0.5 * (i % 2) as f64)
        .collect();
    let after = copy
        .apply(&UpdateInput {
            reward: kind,
            raw: r.clone(),
            smoothed: r,
        })
        .unwrap_or_else(|e| panic!("{what}: an ordinary update was refused: {e}"));
    let moved = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b).abs() / b)
        .fold(0.0, f64::max);
    assert!(moved > 1e-9, "{what}: the mixture cannot move ({moved:e})");
}

#[test]
fn random_request_sequences_never_fail_the_service_or_freeze_the_mixture() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        diff_ema(),
        SchedulerConfig {
            reward: RewardKind::Cossim,
            scorer: mos_runtime::config::ScorerKind::Mlp,
            ..diff_ema()
        },
        SchedulerConfig {
            ema: false,
            target: Some("d0".into()),
            ..diff_ema()
        },
    ];
    let allowed = [200, 201, 400, 401, 404, 405, 409, 413, 422];
    for (case, settings) in cases.into_iter().enumerate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2000 + case as u64);
        let kind = settings.reward;
        let log = dir.path().join(format!("case{case}.jsonl"));
        let mut cfg = service_config(SchedulerConfig {
            scorer_steps: 40,
            ..settings
        });
        cfg.service.max_body_bytes = 1 << 16;
        cfg.service.mixture_log = Some(log.clone());
        let rt = tokio_rt();
        let handle = start(&rt, &cfg);
        let addr = handle.addr();
        let n = rng.random_range(2..6);
        let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
        let datasets: Vec<Value> = names
            .iter()
            .map(|name| json!({"name": name, "size": rng.random_range(1..1_000_000u64)}))
            .collect();
        assert_eq!(
            post(addr, "/v1/datasets", &json!({ "datasets": datasets })).status,
            201
        );

        let accepted = Arc::new(std::sync::Mutex::new(Vec::<UpdateRecord>::new()));
        let check = |r: &Reply, what: &str| {
            assert!(
                allowed.contains(&r.status),
                "{what}: status {} {:?}",
                r.status,
                r.body
            );
        };
        let send = |(method, path, auth, body): (&str, String, bool, Vec<u8>)| {
            let bearer = format!("Bearer {TOKEN}");
            let a = auth.then_some(bearer.as_str());
            (path.clone(), request(addr, method, &path, a, &body))
        };
        // One client, the state inspected after every accepted update.
        let mut step = 0;
        for k in 0..60 {
            let req = random_request(&mut rng, &names, &mut step);
            let (path, r) = send(req);
            let what = format!("case {case}, request {k} ({path})");
            check(&r, &what);
            if path == "/v1/updates" && r.status == 200 {
                let u: UpdateRecord = serde_json::from_value(r.body).unwrap();
                accepted.lock().unwrap().push(u);
                assert_live_state_sound(&handle, kind, &what);
            }
        }
        // Several clients at once.
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let names = names.clone();
                let accepted = accepted.clone();
                std::thread::spawn(move || {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case as u64 * 100 + t);
                    let mut step = 60;
                    for k in 0..40 {
                        let (method, path, auth, body) =
                            random_request(&mut rng, &names, &mut step);
                        let bearer = format!("Bearer {TOKEN}");
                        let r =
                            request(addr, method, &path, auth.then_some(bearer.as_str()), &body);
                        assert!(
                            allowed.contains(&r.status),
                            "case {case}, thread {t}, request {k} ({path}): {} {:?}",
                            r.status,
                            r.body
                        );
                        if path == "/v1/updates" && r.status == 200 {
                            let u: UpdateRecord = serde_json::from_value(r.body).unwrap();
                            accepted.lock().unwrap().push(u);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_live_state_sound(&handle, kind, &format!("case {case}, after the clients"));

        // `history` holds every accepted version once, in order, each continuing the previous.
        let history = handle.core().history(0, None).unwrap();
        let mut accepted = accepted.lock().unwrap().clone();
        accepted.sort_by_key(|u| u.version);
        assert!(
            accepted.len() >= 30,
            "case {case}: only {} accepted",
            accepted.len()
        );
        assert_eq!(history.updates.len(), accepted.len(), "case {case}");
        let mut prev = history.start.prior.clone();
        let mut last_step = 0;
        for (k, (h, a)) in history.updates.iter().zip(&accepted).enumerate() {
            assert_eq!(h.version, k as u64 + 1, "case {case}");
            assert_eq!(
                h, a,
                "case {case}: version {} as answered and as recorded",
                h.version
            );
            assert_eq!(
                bits(&h.before),
                bits(&prev),
                "case {case}: version {}",
                h.version
            );
            assert!(
                h.step >= last_step,
                "case {case}: step went back at {}",
                h.version
            );
            prev = h.after.clone();
            last_step = h.step;
        }
        assert_eq!(bits(&prev), bits(&handle.mixture().unwrap().weights));
        // A following ordinary update moves the mixture, through the API too.
        let r = post(addr, "/v1/updates", &json!({"rewards": vec![1.0; n]}));
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_ne!(bits(&floats(&r.body["after"])), bits(&prev), "case {case}");
        rt.block_on(handle.shutdown()).unwrap();
        // `replay` of the service's log reproduces every version bit for bit.
        let replayed = mos_runtime::replay::replay(&log).unwrap();
        assert_eq!(replayed.updates, accepted.len() + 1, "case {case}");
        assert_eq!(bits(&replayed.last), bits(&floats(&r.body["after"])));
    }
}
