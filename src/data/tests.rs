//! Tests of loading, splitting and ordering (format- and template-level tests live next to the
//! code in `encode.rs` and `tokenizer.rs`; the loader actor's are in `actors/loader_tests.rs`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::config::{ChatTemplate, DataConfig, DatasetConfig, DatasetFormat, ModelConfig};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn ds_cfg(path: PathBuf, format: DatasetFormat) -> DatasetConfig {
    DatasetConfig {
        name: "ds".into(),
        path,
        format,
        separator: None,
        eval_path: None,
        eval_fraction: Some(0.0),
        weight: None,
        exact_match: false,
        answer_marker: None,
    }
}

pub(crate) fn byte_tok() -> Tokenizer {
    Tokenizer::from_config(&ModelConfig::default()).unwrap()
}

/// A minimal in-test metrics recorder (counters only), used with `with_local_recorder`.
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn counter(&self, name: &str, dataset: &str) -> u64 {
        let key = format!("{name}{{dataset={dataset}}}");
        self.counters
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let c = Arc::clone(self.counters.lock().unwrap().entry(name).or_default());
        metrics::Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn jsonl_parses_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.jsonl",
        br#"{"text": "hello", "id": 7}
{"prompt": "q", "response": "a", "meta": {"x": 1}}
{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
"#,
    );
    let ds = load_dataset(
        &ds_cfg(path, DatasetFormat::Jsonl),
        &DataConfig::default(),
        1,
    )
    .unwrap();
    assert_eq!(ds.bad_records, 0);
    assert!(ds.eval.is_empty());
    assert_eq!(
        ds.train,
        vec![
            Record::Text("hello".into()),
            Record::PromptResponse {
                prompt: "q".into(),
                response: "a".into()
            },
            Record::Chat(vec![
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into()
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: "yo".into()
                },
            ]),
        ]
    );
}

#[test]
fn malformed_jsonl_lines_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"\xEF\xBB\xBF{\"text\": \"good one\"}\r\n"); // BOM + CRLF: fine
    bytes.extend_from_slice(b"{bad json\n");
    bytes.extend_from_slice(b"{\"text\": 5}\n");
    bytes.extend_from_slice(b"{\"prompt\": \"only prompt\"}\n");
    bytes.extend_from_slice(b"{\"text\": \"\xff\xfe\"}\n");
    bytes.extend_from_slice(format!("{{\"text\": \"{}\"}}\n", "x".repeat(500)).as_bytes());
    bytes.extend_from_slice(b"[1, 2]\n");
    bytes
        .extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}\n");
    bytes.extend_from_slice(b"{\"text\": \"   \"}\n");
    bytes.extend_from_slice(b"{\"other\": \"key\"}\n");
    bytes.extend_from_slice(b"\n   \n"); // blank lines: not records, not bad
    bytes.extend_from_slice(b"{\"text\": \"good two\"}\n");
    bytes.extend_from_slice(b"{\"text\": \"trunc"); // truncated last line, no newline
    let path = write(dir.path(), "m.jsonl", &bytes);
    let data = DataConfig {
        max_record_bytes: 200,
        ..DataConfig::default()
    };
    let recorder = TestRecorder::default();
    let ds = metrics::with_local_recorder(&recorder, || {
        load_dataset(&ds_cfg(path, DatasetFormat::Jsonl), &data, 1).unwrap()
    });
    assert_eq!(
        ds.train,
        vec![
            Record::Text("good one".into()),
            Record::Text("good two".into())
        ]
    );
    assert_eq!(ds.bad_records, 10);
    assert_eq!(
        recorder.counter(crate::telemetry::LOADER_BAD_RECORDS, "ds"),
        10
    );
}

#[test]
fn many_bad_lines_do_not_break_loading() {
    // More bad lines than the warning cap: still counted exactly.
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!("{{\"text\": {i}}}\n{{\"text\": \"ok {i}\"}}\n"));
    }
    let path = write(dir.path(), "b.jsonl", text.as_bytes());
    let ds = load_dataset(
        &ds_cfg(path, DatasetFormat::Jsonl),
        &DataConfig::default(),
        1,
    )
    .unwrap();
    assert_eq!((ds.train.len(), ds.bad_records), (100, 100));
}

#[test]
fn empty_all_bad_missing_and_directory_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataConfig::default();
    let empty = write(dir.path(), "empty.jsonl", b"");
    let all_bad = write(dir.path(), "bad.jsonl", b"{nope\n{\"text\": 1}\n");
    let blank_text = write(dir.path(), "blank.txt", b"\n\n  \n\n");
    let missing = dir.path().join("missing.jsonl");
    for (path, format, needle) in [
        (&empty, DatasetFormat::Jsonl, "no valid record"),
        (&all_bad, DatasetFormat::Jsonl, "2 malformed"),
        (&blank_text, DatasetFormat::Text, "no valid record"),
        (&missing, DatasetFormat::Jsonl, "does not exist"),
        (
            &dir.path().to_path_buf(),
            DatasetFormat::Jsonl,
            "not a regular file",
        ),
    ] {
        let e = load_dataset(&ds_cfg(path.clone(), format), &data, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(needle), "{e}");
    }
    // A bad eval file is refused naming the eval file.
    let good = write(dir.path(), "good.jsonl", b"{\"text\": \"a\"}\n");
    let mut cfg = ds_cfg(good, DatasetFormat::Jsonl);
    cfg.eval_path = Some(missing.clone());
    let e = load_dataset(&cfg, &data, 1).unwrap_err().to_string();
    assert!(
        e.contains("eval file") && e.contains(&missing.display().to_string()),
        "{e}"
    );
}

#[test]
fn text_format_separators() {
    let dir = tempfile::tempdir().unwrap();
    // Default: blank lines separate records; records are trimmed; runs of blank lines are fine.
    let path = write(
        dir.path(),
        "a.txt",
        b"  first record\nline two  \n\n\n\nsecond\r\n\r\n   \nthird\n",
    );
    let ds = load_dataset(
        &ds_cfg(path, DatasetFormat::Text),
        &DataConfig::default(),
        1,
    )
    .unwrap();
    assert_eq!(
        ds.train,
        vec![
            Record::Text("first record\nline two".into()),
            Record::Text("second".into()),
            Record::Text("third".into()),
        ]
    );
    assert_eq!(ds.bad_records, 0);

    // A custom separator line; blank lines stay inside records; empty records are ignored;
    // invalid UTF-8 and oversized records are bad.
    let mut bytes =
        b"para one\n\npara two\n---\n---\n  ---  \nsecond\n---\n\xff\xfe\n---\n".to_vec();
    bytes.extend_from_slice("y".repeat(300).as_bytes());
    bytes.extend_from_slice(b"\n---\nlast");
    let path = write(dir.path(), "b.txt", &bytes);
    let mut cfg = ds_cfg(path, DatasetFormat::Text);
    cfg.separator = Some("---".into());
    let data = DataConfig {
        max_record_bytes: 200,
        ..DataConfig::default()
    };
    let ds = load_dataset(&cfg, &data, 1).unwrap();
    assert_eq!(
        ds.train,
        vec![
            Record::Text("para one\n\npara two".into()),
            Record::Text("second".into()),
            Record::Text("last".into()),
        ]
    );
    assert_eq!(ds.bad_records, 2);
}

fn numbered_jsonl(dir: &Path, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let mut text = String::new();
    for i in range {
        text.push_str(&format!("{{\"text\": \"record number {i}\"}}\n"));
    }
    write(dir, name, text.as_bytes())
}

#[test]
fn hash_split_is_stable_and_roughly_right() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataConfig::default();
    let mut cfg = ds_cfg(
        numbered_jsonl(dir.path(), "a.jsonl", 0..2000),
        DatasetFormat::Jsonl,
    );
    cfg.eval_fraction = Some(0.2);
    let a = load_dataset(&cfg, &data, 7).unwrap();
    let b = load_dataset(&cfg, &data, 7).unwrap();
    assert_eq!((&a.train, &a.eval), (&b.train, &b.eval));
    let frac = a.eval.len() as f64 / 2000.0;
    assert!((0.17..0.23).contains(&frac), "eval fraction {frac}");

    // Adding records never moves existing ones.
    cfg.path = numbered_jsonl(dir.path(), "b.jsonl", 0..3000);
    let c = load_dataset(&cfg, &data, 7).unwrap();
    let c_eval: BTreeSet<_> = c.eval.iter().map(|r| format!("{r:?}")).collect();
    assert!(a.eval.iter().all(|r| c_eval.contains(&format!("{r:?}"))));
    assert_eq!(c.train.len() + c.eval.len(), 3000);

    // Another seed gives another split; the default fraction applies without an override.
    cfg.path = numbered_jsonl(dir.path(), "a2.jsonl", 0..2000);
    let d = load_dataset(&cfg, &data, 8).unwrap();
    assert_ne!(a.eval, d.eval);
    cfg.eval_fraction = None;
    let e = load_dataset(&cfg, &data, 7).unwrap();
    let frac = e.eval.len() as f64 / 2000.0;
    assert!((0.03..0.07).contains(&frac), "default eval fraction {frac}");
}

#[test]
fn eval_path_and_empty_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataConfig::default();
    let mut cfg = ds_cfg(
        numbered_jsonl(dir.path(), "t.jsonl", 0..10),
        DatasetFormat::Jsonl,
    );
    cfg.eval_path = Some(numbered_jsonl(dir.path(), "e.jsonl", 100..103));
    cfg.eval_fraction = Some(0.5); // ignored with an eval file
    let ds = load_dataset(&cfg, &data, 1).unwrap();
    assert_eq!((ds.train.len(), ds.eval.len()), (10, 3));

    let mut cfg = ds_cfg(
        numbered_jsonl(dir.path(), "one.jsonl", 0..1),
        DatasetFormat::Jsonl,
    );
    cfg.eval_fraction = Some(0.999_999_9);
    let e = load_dataset(&cfg, &data, 1).unwrap_err().to_string();
    assert!(
        e.contains("no training record") && e.contains("one.jsonl"),
        "{e}"
    );
}

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    for len in [0usize, 1, 2, 17, 1000] {
        let o = epoch_order(3, 1, 5, len);
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..len as u32).collect::<Vec<_>>());
        assert_eq!(o, epoch_order(3, 1, 5, len));
    }
    let base = epoch_order(3, 1, 5, 1000);
    assert_ne!(base, epoch_order(3, 1, 6, 1000));
    assert_ne!(base, epoch_order(3, 2, 5, 1000));
    assert_ne!(base, epoch_order(4, 1, 5, 1000));
}

#[test]
fn probe_indices_are_distinct_sorted_and_their_own_stream() {
    let p = probe_indices(1000, 64, 9, 2);
    assert_eq!(p.len(), 64);
    assert!(p.windows(2).all(|w| w[0] < w[1]));
    assert!(p.iter().all(|&i| i < 1000));
    assert_eq!(p, probe_indices(1000, 64, 9, 2));
    assert_ne!(p, probe_indices(1000, 64, 9, 3));
    let mut first_epoch: Vec<u32> = epoch_order(9, 2, 0, 1000)[..64].to_vec();
    first_epoch.sort_unstable();
    assert_ne!(p, first_epoch);
    assert_eq!(probe_indices(10, 64, 9, 2), (0..10).collect::<Vec<_>>());
    assert!(probe_indices(0, 64, 9, 2).is_empty());
}

/// A dataset of `n` prompt/response records (also used by the loader actor's tests).
pub(crate) fn small_dataset(n: usize) -> Dataset {
    Dataset {
        name: "small".into(),
        path: "small.jsonl".into(),
        train: (0..n)
            .map(|i| Record::PromptResponse {
                prompt: format!("q{i}"),
                response: format!("a{i}"),
            })
            .collect(),
        eval: Vec::new(),
        bad_records: 0,
    }
}

#[test]
fn example_at_follows_the_epoch_order() {
    let ds = small_dataset(7);
    let tok = byte_tok();
    for n in 0..30u64 {
        let ex = example_at(&ds, 1, &tok, ChatTemplate::Plain, 32, 5, n);
        let expected = epoch_order(5, 1, n / 7, 7)[(n % 7) as usize];
        assert_eq!((ex.dataset, ex.index, ex.seq), (1, expected, n));
        let enc = encode_record(&tok, &ds.train[expected as usize], ChatTemplate::Plain, 32);
        assert_eq!(
            (ex.tokens, ex.response_mask),
            (enc.tokens, enc.response_mask)
        );
    }
    // Each epoch visits every record once.
    let seen: BTreeSet<u32> = (7..14)
        .map(|n| example_at(&ds, 1, &tok, ChatTemplate::Plain, 32, 5, n).index)
        .collect();
    assert_eq!(seen.len(), 7);
    // An empty train split cannot panic.
    let empty = small_dataset(0);
    let ex = example_at(&empty, 0, &tok, ChatTemplate::Plain, 32, 5, 3);
    assert_eq!(ex.tokens, vec![tok.bos_id()]);
}
