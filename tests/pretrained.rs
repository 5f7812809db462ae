//! Pretrained checkpoints: SmolLM2 through our GGUF loader and rebuilt tokenizer (gated on the
//! fetched model), parity of the Hugging Face loader with `transformers` on a committed tiny
//! checkpoint, and export round trips.

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
