//! Tests of the GGUF reader, the pretrained loaders and their errors, on the committed tiny
//! Hugging Face checkpoint (`tests/fixtures/tiny-llama`) and GGUF files written here from it.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};

use super::gguf::{dequantize, unpermute_rows, GgmlType};
use super::pretrained::{hf_tensor_names, load_pretrained, pretrained_tokenizer, requested_names};
use super::{CpuBackend, Llama, LoadError};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

const IDS: [i64; 8] = [0, 72, 101, 108, 267, 299, 1, 2];

fn logits(model: &Llama<CpuBackend>) -> Vec<f32> {
    let device = Default::default();
    let t = Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(IDS.to_vec(), [1, 8]), &device);
    model
        .logits(model.forward_hidden(t))
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

#[test]
fn q4_1_q4_0_and_q8_0_blocks_dequantise_by_hand() {
    // Q4_1: d = 0.5, m = -1; byte j holds j (low nibble) and 15 - j (high nibble).
    let mut b = Vec::new();
    b.extend(f16_bytes(0.5));
    b.extend(f16_bytes(-1.0));
    b.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let x = dequantize(GgmlType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(x[j], j as f32 * 0.5 - 1.0, "low nibble {j}");
        assert_eq!(x[16 + j], (15 - j) as f32 * 0.5 - 1.0, "high nibble {j}");
    }
    // Q4_0: d = 2, values centred on 8.
    let mut b = Vec::new();
    b.extend(f16_bytes(2.0));
    b.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let x = dequantize(GgmlType::Q4_0, &b, 32);
    assert_eq!((x[0], x[15], x[16], x[31]), (-16.0, 14.0, 14.0, -16.0));
    // Q8_0: d = 0.25, signed bytes -16..16.
    let mut b = Vec::new();
    b.extend(f16_bytes(0.25));
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let x = dequantize(GgmlType::Q8_0, &b, 32);
    assert_eq!((x[0], x[16], x[31]), (-4.0, 0.0, 3.75));
    // Two blocks are read in order.
    let two = [b.clone(), b].concat();
    assert_eq!(dequantize(GgmlType::Q8_0, &two, 64)[32], -4.0);
}

#[test]
fn unpermute_restores_hugging_face_row_order() {
    // One head of dimension 4 stored by llama.cpp as rows [h0, h2, h1, h3] (pairs interleaved);
    // two columns so rows move as wholes.
    let gguf = [0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5];
    assert_eq!(
        unpermute_rows(&gguf, 1, 2),
        vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    );
    // Two heads: each head is unpermuted on its own.
    let gguf = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
    assert_eq!(
        unpermute_rows(&gguf, 2, 1),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
}

#[test]
fn assemble_asks_for_exactly_the_exported_names() {
    let model = load_pretrained::<CpuBackend>(&fixture(), 16, &Default::default()).unwrap();
    let cfg = model.config();
    let mut asked = requested_names(cfg);
    let mut exported: Vec<String> = hf_tensor_names(cfg).into_iter().map(|(n, _)| n).collect();
    asked.sort();
    exported.sort();
    assert_eq!(asked, exported);
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer (tests only), fed from the tiny safetensors checkpoint.

#[derive(Default)]
struct GgufWriter {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufWriter {
    fn str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }
    fn key(&mut self, k: &str, ty: u32) {
        Self::str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n_kv += 1;
    }
    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
    }
    fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.kv.extend(v.to_le_bytes());
    }
    fn string(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        Self::str(&mut self.kv, v);
    }
    fn strings(&mut self, k: &str, v: &[String]) {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            Self::str(&mut self.kv, s);
        }
    }
    fn i32s(&mut self, k: &str, v: &[i32]) {
        self.key(k, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
    }
    fn tensor_f32(&mut self, name: &str, gguf_dims: Vec<u64>, values: &[f32]) {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.push((name.into(), gguf_dims, 0, bytes));
    }
    fn finish(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in &self.tensors {
            Self::str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

/// llama.cpp's converter permutation of Q/K rows, written independently of `unpermute_rows`:
/// within each head, row `i * hd/2 + j` moves to row `2j + i`.
fn permute(rows: &[f32], n_heads: usize, d_in: usize) -> Vec<f32> {
    let hd = rows.len() / d_in / n_heads;
    let mut out = vec![0.0; rows.len()];
    for (r, chunk) in rows.chunks(d_in).enumerate() {
        let (h, within) = (r / hd, r % hd);
        let (i, j) = (within / (hd / 2), within % (hd / 2));
        let dst = h * hd + 2 * j + i;
        out[dst * d_in..(dst + 1) * d_in].copy_from_slice(chunk);
    }
    out
}

/// A GGUF file with the tiny checkpoint's weights (F32, Q/K permuted as llama.cpp does) and the
/// tiny BPE tokenizer; `skip` leaves one tensor out.
fn tiny_gguf(skip: Option<&str>) -> Vec<u8> {
    let dir = fixture();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut w = GgufWriter::default();
    w.string("general.architecture", "llama");
    w.u32("llama.embedding_length", 64);
    w.u32("llama.block_count", 2);
    w.u32("llama.feed_forward_length", 96);
    w.u32("llama.attention.head_count", 4);
    w.u32("llama.attention.head_count_kv", 2);
    w.u32("llama.rope.dimension_count", 16);
    w.f32("llama.rope.freq_base", 5000.0);
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if i < 3 { 3 } else { 1 })
        .collect();
    w.string("tokenizer.ggml.model", "gpt2");
    w.string("tokenizer.ggml.pre", "gpt2");
    w.strings("tokenizer.ggml.tokens", &tokens);
    w.i32s("tokenizer.ggml.token_type", &types);
    w.strings("tokenizer.ggml.merges", &merges);
    for (hf, shape) in hf_tensor_names(&super::pretrained_config(&dir, 16).unwrap()) {
        let name = match hf.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            "lm_head.weight" => "output.weight".to_string(),
            other => {
                let rest = other.strip_prefix("model.layers.").unwrap();
                let (l, leaf) = rest.split_once('.').unwrap();
                let g = match leaf {
                    "self_attn.q_proj.weight" => "attn_q",
                    "self_attn.k_proj.weight" => "attn_k",
                    "self_attn.v_proj.weight" => "attn_v",
                    "self_attn.o_proj.weight" => "attn_output",
                    "mlp.gate_proj.weight" => "ffn_gate",
                    "mlp.up_proj.weight" => "ffn_up",
                    "mlp.down_proj.weight" => "ffn_down",
                    "input_layernorm.weight" => "attn_norm",
                    "post_attention_layernorm.weight" => "ffn_norm",
                    _ => unreachable!("{other}"),
                };
                format!("blk.{l}.{g}.weight")
            }
        };
        if skip == Some(name.as_str()) {
            continue;
        }
        let view = st.tensor(&hf).unwrap();
        let mut v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if name.ends_with("attn_q.weight") {
            v = permute(&v, 4, shape[1]);
        } else if name.ends_with("attn_k.weight") {
            v = permute(&v, 2, shape[1]);
        }
        w.tensor_f32(&name, shape.iter().rev().map(|&s| s as u64).collect(), &v);
    }
    w.finish()
}

#[test]
fn gguf_file_loads_the_same_model_as_the_hf_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_gguf(None)).unwrap();
    let device = Default::default();
    let from_gguf = load_pretrained::<CpuBackend>(&path, 16, &device).unwrap();
    let from_hf = load_pretrained::<CpuBackend>(&fixture(), 16, &device).unwrap();
    assert_eq!(from_gguf.config(), from_hf.config());
    assert_eq!(logits(&from_gguf), logits(&from_hf));

    // The rebuilt tokenizer encodes like the tokenizer.json it was made from.
    let rebuilt = pretrained_tokenizer(&path).unwrap();
    let original = pretrained_tokenizer(&fixture()).unwrap();
    for text in ["hello world", "say <|im_start|> twice  ", "ünï 123"] {
        assert_eq!(
            rebuilt.encode(text, false).unwrap().get_ids(),
            original.encode(text, false).unwrap().get_ids(),
            "{text:?}"
        );
    }
}

/// Loads `bytes` as a GGUF file; the error, which must name the file.
fn gguf_error(bytes: Vec<u8>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let msg = match load_pretrained::<CpuBackend>(&path, 16, &Default::default()) {
        Ok(_) => panic!("loaded a broken GGUF file"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn bad_gguf_files_are_errors_naming_the_file_and_tensor() {
    let msg = gguf_error(b"NOPE and more bytes".to_vec());
    assert!(msg.contains("not a GGUF file"), "{msg}");

    let good = tiny_gguf(None);
    // Truncated in the metadata, and truncated in the tensor data.
    let msg = gguf_error(good[..200].to_vec());
    assert!(msg.contains("truncated"), "{msg}");
    let msg = gguf_error(good[..good.len() - 1000].to_vec());
    assert!(msg.contains("outside the file"), "{msg}");

    let msg = gguf_error(tiny_gguf(Some("blk.1.ffn_up.weight")));
    assert!(
        msg.contains("`blk.1.ffn_up.weight`") && msg.contains("missing"),
        "{msg}"
    );

    // An unsupported quantisation type (Q4_K = 12) in the directory names the tensor.
    let mut bad = good.clone();
    let name = b"token_embd.weight";
    let at = bad.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let ty_at = at + 4 + 2 * 8; // rank (u32) and two dimensions (u64)
    bad[ty_at..ty_at + 4].copy_from_slice(&12u32.to_le_bytes());
    let msg = gguf_error(bad);
    assert!(
        msg.contains("`token_embd.weight`") && msg.contains("type 12"),
        "{msg}"
    );

    // A huge count does not allocate: it is refused.
    let mut bad = good;
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = gguf_error(bad);
    assert!(msg.contains("implausible"), "{msg}");
}

/// Copies the tiny checkpoint to a temp dir, rewriting its tensors with `edit`.
fn edited_hf_dir(
    edit: impl Fn(
        &str,
        safetensors::Dtype,
        Vec<usize>,
        Vec<f32>,
    ) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), out.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(t) = edit(&name, view.dtype(), view.shape().to_vec(), v) {
            kept.push((name, t));
        }
    }
    let views: Vec<_> = kept
        .iter()
        .map(|(n, (dt, shape, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    std::fs::write(out.path().join("model.safetensors"), data).unwrap();
    out
}

fn as_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn f16_and_bf16_checkpoints_load_close_to_f32() {
    let device = Default::default();
    let reference = logits(&load_pretrained::<CpuBackend>(&fixture(), 16, &device).unwrap());
    let scale = reference.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (dtype, tol) in [
        (safetensors::Dtype::F16, 2e-3f32),
        (safetensors::Dtype::BF16, 2e-2f32),
    ] {
        let dir = edited_hf_dir(|_, _, shape, v| {
            let b: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            Some((dtype, shape, b))
        });
        let got = logits(&load_pretrained::<CpuBackend>(dir.path(), 16, &device).unwrap());
        let err = got
            .iter()
            .zip(&reference)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err < tol, "{dtype:?}: relative error {err}");
        assert!(
            err > 0.0,
            "{dtype:?}: the weights were not actually converted"
        );
    }
}

fn hf_error(dir: &Path) -> String {
    match load_pretrained::<CpuBackend>(dir, 16, &Default::default()) {
        Ok(_) => panic!("loaded a broken checkpoint"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_hf_directories_are_errors_naming_the_file_and_tensor() {
    let dir = edited_hf_dir(|name, dt, shape, v| {
        (name != "model.layers.0.mlp.up_proj.weight").then(|| (dt, shape, as_f32(&v)))
    });
    let msg = hf_error(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("`model.layers.0.mlp.up_proj.weight`"), "{msg}");

    let dir = edited_hf_dir(|name, dt, mut shape, v| {
        if name == "model.norm.weight" {
            shape = vec![8, 8];
        }
        Some((dt, shape, as_f32(&v)))
    });
    let msg = hf_error(dir.path());
    assert!(
        msg.contains("`model.norm.weight`") && msg.contains("[8, 8]"),
        "{msg}"
    );

    let dir = edited_hf_dir(|_, _, shape, v| Some((safetensors::Dtype::I32, shape, as_f32(&v))));
    let msg = hf_error(dir.path());
    assert!(msg.contains("not supported"), "{msg}");

    // Corrupt safetensors header; bad config values; a missing config.
    let dir = edited_hf_dir(|_, dt, shape, v| Some((dt, shape, as_f32(&v))));
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{broken}",
    )
    .unwrap();
    let msg = hf_error(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
    let cfg = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"silu\"", "\"gelu\""),
    )
    .unwrap();
    let msg = hf_error(dir.path());
    assert!(
        msg.contains("config.json") && msg.contains("`hidden_act`"),
        "{msg}"
    );
    // Preparing a run (which loads the tokenizer) already refuses it.
    let msg = pretrained_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("`hidden_act`"), "{msg}");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"default\"", "\"llama3\""),
    )
    .unwrap();
    let msg = hf_error(dir.path());
    assert!(msg.contains("`rope_parameters`"), "{msg}");
    // A model with fewer embedding rows than the tokenizer has ids.
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"vocab_size\": 300", "\"vocab_size\": 200"),
    )
    .unwrap();
    let msg = pretrained_tokenizer(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("268 token ids") && msg.contains("200 embedding rows"),
        "{msg}"
    );
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let msg = hf_error(dir.path());
    assert!(msg.contains("config.json"), "{msg}");

    let e: LoadError =
        load_pretrained::<CpuBackend>(Path::new("/no/such/model"), 16, &Default::default())
            .err()
            .unwrap();
    assert!(e.to_string().contains("/no/such/model"), "{e}");
}
