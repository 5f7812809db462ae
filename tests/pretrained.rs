//! Pretrained checkpoints: SmolLM2 through our GGUF loader and rebuilt tokenizer (gated on the
//! fetched model), parity of the Hugging Face loader with `transformers` on a committed tiny
//! checkpoint, export round trips, and a fine-tuning run that starts from a checkpoint.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use mos_runtime::model::{load_pretrained, pretrained_tokenizer, CpuBackend, Llama};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Logits `[time, vocab]` of one sequence, flattened row-major.
fn logits(model: &Llama<CpuBackend>, ids: &[u32]) -> (usize, Vec<f32>) {
    let device = Default::default();
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens =
        Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device);
    let out = model.logits(model.forward_hidden(tokens));
    let vocab = out.dims()[2];
    (vocab, out.into_data().into_vec::<f32>().unwrap())
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn smollm2_gguf_says_paris() {
    let path = repo(SMOLLM2);
    if !path.is_file() {
        eprintln!(
            "SKIPPED smollm2_gguf_says_paris: {} is absent (run scripts/fetch-model.sh)",
            path.display()
        );
        return;
    }
    let tok = pretrained_tokenizer(&path).unwrap();
    let enc = tok.encode("The capital of France is", false).unwrap();
    assert_eq!(enc.get_ids(), &[504, 3575, 282, 4649, 314]);
    // The ChatML markers are single ids (added special tokens), and decoding round-trips.
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let text = "Digits 12345, spaces  and ünïcode.";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), text);

    let model = load_pretrained::<CpuBackend>(&path, 32, &Default::default()).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.vocab_size,
            c.d_model,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.ffn_hidden
        ),
        (49152, 576, 30, 9, 3, 1536)
    );
    assert!(c.tie_embeddings && model.lm_head.is_none());
    let (vocab, l) = logits(&model, enc.get_ids());
    let last = &l[(enc.get_ids().len() - 1) * vocab..];
    let top = argmax(last);
    assert_eq!(
        top,
        7042,
        "top next token {top} = {:?}",
        tok.id_to_token(top as u32)
    );
    assert_eq!(tok.decode(&[7042], false).unwrap(), " Paris");
}

/// `max |a - b| / max |b|` over all entries.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

struct Reference {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(repo("tests/fixtures/tiny-llama/reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    Reference { ids, logits }
}

#[test]
fn hf_directory_matches_transformers_logits() {
    let dir = repo("tests/fixtures/tiny-llama");
    let model = load_pretrained::<CpuBackend>(&dir, 64, &Default::default()).unwrap();
    let c = model.config();
    assert_eq!((c.n_heads, c.n_kv_heads, c.rope_theta), (4, 2, 5000.0));
    assert!(!c.tie_embeddings && model.lm_head.is_some());
    let r = reference();
    let (vocab, ours) = logits(&model, &r.ids);
    assert_eq!(vocab, 300);
    let err = rel_err(&ours, &r.logits);
    eprintln!("tiny-llama logits: relative error {err:e} vs transformers");
    assert!(err < 1e-4, "relative error {err:e} vs transformers");
    // The tokenizer of the directory loads too.
    let tok = pretrained_tokenizer(&dir).unwrap();
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
}

/// Exports `model` to a temp dir and returns it.
fn export(model: &Llama<CpuBackend>, tok: &tokenizers::Tokenizer) -> tempfile::TempDir {
    use mos_runtime::model::export::{export_hf_dir, ExportTokenizer};
    let out = tempfile::tempdir().unwrap();
    let t = ExportTokenizer {
        hf: Some(tok),
        bos: 0,
        eos: 0,
    };
    export_hf_dir(model, t, out.path()).unwrap();
    out
}

#[test]
fn export_round_trip_gives_identical_logits() {
    let dir = repo("tests/fixtures/tiny-llama");
    let model = load_pretrained::<CpuBackend>(&dir, 64, &Default::default()).unwrap();
    let tok = pretrained_tokenizer(&dir).unwrap();
    let out = export(&model, &tok);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let back = load_pretrained::<CpuBackend>(out.path(), 64, &Default::default()).unwrap();
    assert_eq!(back.config(), model.config());
    let r = reference();
    let (_, a) = logits(&model, &r.ids);
    let (_, b) = logits(&back, &r.ids);
    assert_eq!(a, b, "exported weights differ");

    // A tied model (SmolLM2's layout) round-trips too: no lm_head tensor is written.
    let tied = mos_runtime::model::LlamaConfig {
        tie_embeddings: true,
        ..model.config().clone()
    }
    .init_seeded::<CpuBackend>(7, &Default::default());
    let out = export(&tied, &tok);
    let back = load_pretrained::<CpuBackend>(out.path(), 64, &Default::default()).unwrap();
    assert!(back.lm_head.is_none());
    assert_eq!(logits(&tied, &r.ids).1, logits(&back, &r.ids).1);
}

/// The Python interpreter with torch + transformers: `MOS_PYTHON`, else `python3`, if it can
/// import both.
fn python_with_transformers() -> Option<String> {
    let py = std::env::var("MOS_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
fn export_loads_in_transformers_with_the_same_logits() {
    let Some(py) = python_with_transformers() else {
        eprintln!(
            "SKIPPED export_loads_in_transformers_with_the_same_logits: no Python with torch and \
             transformers (set MOS_PYTHON to an interpreter that has them)"
        );
        return;
    };
    let dir = repo("tests/fixtures/tiny-llama");
    let tok = pretrained_tokenizer(&dir).unwrap();
    let r = reference();
    // A tied model that never came from transformers: only our exporter wrote these files.
    let model = mos_runtime::model::LlamaConfig {
        vocab_size: 300,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_hidden: 96,
        max_seq_len: 64,
        rope_theta: 2500.0,
        norm_eps: 1e-6,
        tie_embeddings: true,
    }
    .init_seeded::<CpuBackend>(11, &Default::default());
    let out = export(&model, &tok);
    let mut cmd = std::process::Command::new(py);
    cmd.arg(repo("scripts/hf_logits.py")).arg(out.path());
    cmd.args(r.ids.iter().map(|i| i.to_string()));
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "transformers failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs: Vec<f32> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let (_, ours) = logits(&model, &r.ids);
    let err = rel_err(&ours, &theirs);
    eprintln!("exported model in transformers: relative error {err:e}");
    assert!(err < 1e-4, "relative error {err:e} vs transformers");
}

#[test]
fn fine_tuning_a_checkpoint_trains_and_exports_what_it_saved() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpus(dir.path());
    let mut cfg = common::load_tiny(dir.path(), "run", 20, "");
    cfg.model.pretrained = Some(repo("tests/fixtures/tiny-llama"));
    cfg.runtime.export_hf = true;
    cfg.training.lr = 3e-3;
    let summary = common::tokio_rt().block_on(async {
        let h = mos_runtime::runtime::Runtime::start(cfg).await.unwrap();
        h.wait().await.unwrap()
    });
    assert_eq!(summary.steps, 20);
    assert!(
        summary.last_loss < summary.first_loss,
        "loss {} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    let out = dir.path().join("run");
    // The tiny tokenizer has the ChatML markers, so `auto` became ChatML.
    let resolved = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(
        resolved.contains("chat_template = \"chatml\""),
        "{resolved}"
    );

    // The export holds the trained weights: the same logits as model.mpk, not the checkpoint's.
    let device = Default::default();
    let seq_len = 48;
    let exported = load_pretrained::<CpuBackend>(&out.join("hf"), seq_len, &device).unwrap();
    let saved = load_pretrained::<CpuBackend>(&repo("tests/fixtures/tiny-llama"), seq_len, &device)
        .unwrap()
        .load_file(&out.join("model.mpk"), &device)
        .unwrap();
    let start = load_pretrained::<CpuBackend>(&repo("tests/fixtures/tiny-llama"), seq_len, &device)
        .unwrap();
    let ids = reference().ids;
    assert_eq!(logits(&exported, &ids).1, logits(&saved, &ids).1);
    assert_ne!(logits(&exported, &ids).1, logits(&start, &ids).1);
    assert!(out.join("hf/tokenizer.json").is_file());
}
