//! Tokenizers: the built-in byte-level tokenizer and Hugging Face `tokenizer.json`.
//!
//! Both expose the same small surface: ids for text (never adding special tokens: the renderer in
//! `encode.rs` inserts BOS/EOS and chat markers as ids, so a dataset that contains the literal
//! string `<|im_start|>` cannot forge a chat turn), decoding, and special-token lookup. This module
//! never reads dataset files and never touches tensors.

use std::fmt;
use std::path::Path;

use super::DataError;
use crate::config::{ChatTemplate, ModelConfig, TokenizerKind};

/// Byte-level special ids: 0..=255 are the bytes themselves.
const BYTE_BOS: u32 = 256;
const BYTE_EOS: u32 = 257;
const BYTE_PAD: u32 = 258;
const BYTE_IM_START: u32 = 259;
const BYTE_IM_END: u32 = 260;

/// ChatML turn markers.
pub(crate) const IM_START: &str = "<|im_start|>";
pub(crate) const IM_END: &str = "<|im_end|>";

/// Candidate spellings, most specific first, for a Hugging Face tokenizer's BOS token.
const HF_BOS: &[&str] = &[
    "<s>",
    "<|begin_of_text|>",
    "<bos>",
    "[BOS]",
    "<|endoftext|>",
    "<|im_start|>",
];
/// Candidate spellings for EOS.
const HF_EOS: &[&str] = &[
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "[EOS]",
    "<|endoftext|>",
    "<|im_end|>",
];
/// Candidate spellings for PAD; falls back to EOS (padding is always masked out of the loss).
const HF_PAD: &[&str] = &["<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"];

/// A tokenizer: built-in bytes or a Hugging Face `tokenizer.json`.
pub enum Tokenizer {
    /// UTF-8 bytes as ids 0..=255, then `<s>` (BOS) = 256, `</s>` (EOS) = 257, `<pad>` = 258,
    /// and with the ChatML template `<|im_start|>` = 259 and `<|im_end|>` = 260.
    Byte {
        /// Whether the ChatML markers are part of the vocabulary.
        chatml: bool,
    },
    /// A Hugging Face tokenizer with the special ids resolved at load time.
    Hf {
        /// The loaded tokenizer (boxed: it is large and this enum is moved around in `Arc`s).
        inner: Box<tokenizers::Tokenizer>,
        /// Beginning-of-sequence id.
        bos: u32,
        /// End-of-sequence id.
        eos: u32,
        /// Padding id.
        pad: u32,
    },
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tokenizer::Byte { chatml } => f.debug_struct("Byte").field("chatml", chatml).finish(),
            Tokenizer::Hf { bos, eos, pad, .. } => f
                .debug_struct("Hf")
                .field("vocab_size", &self.vocab_size())
                .field("bos", bos)
                .field("eos", eos)
                .field("pad", pad)
                .finish_non_exhaustive(),
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer the model config asks for.
    ///
    /// For `hf`, BOS is the first of `<s>`, `<|begin_of_text|>`, `<bos>`, `[BOS]`,
    /// `<|endoftext|>`, `<|im_start|>` present in the vocabulary; EOS the first of `</s>`,
    /// `<|end_of_text|>`, `<eos>`, `[EOS]`, `<|endoftext|>`, `<|im_end|>`; PAD the first of
    /// `<pad>`, `<|pad|>`, `[PAD]`, `<|finetune_right_pad_id|>`, else EOS. If only one of BOS/EOS
    /// exists it serves as both; if neither exists, or the ChatML template is chosen and
    /// `<|im_start|>`/`<|im_end|>` are missing, loading fails with an error naming the file.
    pub fn from_config(model: &ModelConfig) -> Result<Tokenizer, DataError> {
        let chatml = model.chat_template == ChatTemplate::Chatml;
        // A pretrained checkpoint brings its own tokenizer (GGUF metadata or tokenizer.json).
        if let Some(path) = model.pretrained.as_deref() {
            let inner =
                crate::model::pretrained_tokenizer(path).map_err(|e| DataError::Tokenizer {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            return Self::from_hf(inner, path, chatml);
        }
        match model.tokenizer {
            TokenizerKind::Byte => Ok(Tokenizer::Byte { chatml }),
            TokenizerKind::Hf => {
                let Some(path) = model.tokenizer_path.as_deref() else {
                    return Err(DataError::Tokenizer {
                        path: "<config>".into(),
                        message: "model.tokenizer = \"hf\" needs model.tokenizer_path".into(),
                    });
                };
                Self::from_hf_file(path, chatml)
            }
        }
    }

    /// Loads a Hugging Face `tokenizer.json` (see [`Tokenizer::from_config`] for the special-token
    /// rules); `chatml` requires the ChatML markers.
    pub fn from_hf_file(path: &Path, chatml: bool) -> Result<Tokenizer, DataError> {
        super::format::check_regular_file(path, "tokenizer file")?;
        let err = |message: String| DataError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        Self::from_hf(inner, path, chatml)
    }

    /// Wraps an in-memory Hugging Face tokenizer (rebuilt from a GGUF file, or read from a
    /// checkpoint directory); `path` names it in errors. Same special-token rules as
    /// [`Tokenizer::from_config`].
    pub fn from_hf(
        mut inner: tokenizers::Tokenizer,
        path: &Path,
        chatml: bool,
    ) -> Result<Tokenizer, DataError> {
        let err = |message: String| DataError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        // Special tokens written in the data are encoded as plain text: only the renderer may
        // emit BOS/EOS/ChatML markers.
        inner.set_encode_special_tokens(true);
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let (bos, eos) = match (find(HF_BOS), find(HF_EOS)) {
            (Some(b), Some(e)) => (b, e),
            (Some(b), None) => (b, b),
            (None, Some(e)) => (e, e),
            (None, None) => {
                return Err(err(format!(
                    "no BOS/EOS special token found; expected one of {HF_BOS:?} / {HF_EOS:?}"
                )))
            }
        };
        let pad = find(HF_PAD).unwrap_or(eos);
        if chatml {
            for marker in [IM_START, IM_END] {
                if inner.token_to_id(marker).is_none() {
                    return Err(err(format!(
                        "chat_template = \"chatml\" needs the special token {marker}, which this \
                         tokenizer does not have"
                    )));
                }
            }
        }
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            bos,
            eos,
            pad,
        })
    }

    /// Number of ids (including added and special tokens); the model's embedding must be at
    /// least this large.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte { chatml: false } => 259,
            Tokenizer::Byte { chatml: true } => 261,
            Tokenizer::Hf { inner, .. } => {
                // `get_vocab_size(true)` can undercount when added tokens reuse or exceed model
                // ids; the largest id + 1 is what an embedding table must cover.
                let max_added = inner
                    .get_added_tokens_decoder()
                    .keys()
                    .copied()
                    .max()
                    .map_or(0, |m| m as usize + 1);
                inner.get_vocab_size(true).max(max_added)
            }
        }
    }

    /// Beginning-of-sequence id (prepended to every example).
    pub fn bos_id(&self) -> u32 {
        match self {
            Tokenizer::Byte { .. } => BYTE_BOS,
            Tokenizer::Hf { bos, .. } => *bos,
        }
    }

    /// End-of-sequence id (appended to every example).
    pub fn eos_id(&self) -> u32 {
        match self {
            Tokenizer::Byte { .. } => BYTE_EOS,
            Tokenizer::Hf { eos, .. } => *eos,
        }
    }

    /// Padding id (batches pad with it; always masked out of the loss).
    pub fn pad_id(&self) -> u32 {
        match self {
            Tokenizer::Byte { .. } => BYTE_PAD,
            Tokenizer::Hf { pad, .. } => *pad,
        }
    }

    /// Ids of `text`, with no special token added and none recognised inside the text.
    /// A Hugging Face encoding failure (rare: a broken normaliser) is logged and yields no ids
    /// rather than a panic; see [`Tokenizer::try_encode`].
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.try_encode(text) {
            Ok(ids) => ids,
            Err(message) => {
                tracing::warn!("tokenizer failed on a {}-byte text: {message}", text.len());
                Vec::new()
            }
        }
    }

    /// As [`Tokenizer::encode`], reporting a tokenizer failure instead of returning no ids.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Tokenizer::Byte { .. } => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf { inner, .. } => inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    }

    /// Text of `ids`; special tokens are written out by name (`<s>`, `<|im_start|>`, ...), invalid
    /// UTF-8 is replaced by U+FFFD, and unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Byte { chatml } => {
                let mut out = String::new();
                let mut bytes = Vec::new();
                for &id in ids {
                    if let Ok(b) = u8::try_from(id) {
                        bytes.push(b);
                        continue;
                    }
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    bytes.clear();
                    if let Some(name) = byte_special_name(id, *chatml) {
                        out.push_str(name);
                    }
                }
                out.push_str(&String::from_utf8_lossy(&bytes));
                out
            }
            Tokenizer::Hf { inner, .. } => {
                let size = self.vocab_size();
                let known: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|&i| (i as usize) < size)
                    .collect();
                inner.decode(&known, false).unwrap_or_else(|e| {
                    tracing::warn!("tokenizer could not decode {} ids: {e}", known.len());
                    String::new()
                })
            }
        }
    }

    /// The Hugging Face tokenizer, if this is one (exports save it as `tokenizer.json`).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match self {
            Tokenizer::Byte { .. } => None,
            Tokenizer::Hf { inner, .. } => Some(inner),
        }
    }

    /// Id of a special token by its text (`<|im_start|>`, `<s>`, ...), if this tokenizer has it.
    pub fn special(&self, name: &str) -> Option<u32> {
        match self {
            Tokenizer::Byte { chatml } => {
                (BYTE_BOS..=BYTE_IM_END).find(|&id| byte_special_name(id, *chatml) == Some(name))
            }
            Tokenizer::Hf { inner, .. } => inner.token_to_id(name),
        }
    }
}

fn byte_special_name(id: u32, chatml: bool) -> Option<&'static str> {
    match id {
        BYTE_BOS => Some("<s>"),
        BYTE_EOS => Some("</s>"),
        BYTE_PAD => Some("<pad>"),
        BYTE_IM_START if chatml => Some(IM_START),
        BYTE_IM_END if chatml => Some(IM_END),
        _ => None,
    }
}

/// The tokenizer files of a Hugging Face export (the model module knows nothing of this type).
impl<'a> From<&'a Tokenizer> for crate::model::export::ExportTokenizer<'a> {
    fn from(t: &'a Tokenizer) -> Self {
        Self {
            hf: t.hf(),
            bos: t.bos_id(),
            eos: t.eos_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A tiny byte-level BPE (GPT-2 style): `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, the 256
    /// byte symbols and a few merges (`hello`, ` world`). Embedded so the test does not depend on
    /// the working directory.
    const TINY_BPE: &str = include_str!("../../tests/fixtures/data/tiny_bpe_tokenizer.json");

    fn write_fixture(dir: &Path) -> PathBuf {
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, TINY_BPE).unwrap();
        path
    }

    fn hf_config(path: PathBuf, template: ChatTemplate) -> ModelConfig {
        ModelConfig {
            tokenizer: TokenizerKind::Hf,
            tokenizer_path: Some(path),
            chat_template: template,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn byte_tokenizer_ids_and_round_trip() {
        let tok = Tokenizer::from_config(&ModelConfig::default()).unwrap();
        assert_eq!(tok.vocab_size(), 259);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (256, 257, 258));
        assert_eq!(tok.special("<|im_start|>"), None);
        let text = "héllo\n\u{1F600}";
        let ids = tok.encode(text);
        assert_eq!(ids.len(), text.len());
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(tok.decode(&[256, b'a' as u32, 257]), "<s>a</s>");

        let chat = Tokenizer::from_config(&ModelConfig {
            chat_template: ChatTemplate::Chatml,
            ..ModelConfig::default()
        })
        .unwrap();
        assert_eq!(chat.vocab_size(), 261);
        assert_eq!(chat.special(IM_START), Some(259));
        assert_eq!(chat.special(IM_END), Some(260));
        // Specials in the text are bytes, never markers.
        assert!(chat.encode("<|im_start|>").iter().all(|&i| i < 256));
    }

    #[test]
    fn hf_fixture_loads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_fixture(dir.path());
        let tok = Tokenizer::from_config(&hf_config(path, ChatTemplate::Chatml)).unwrap();
        assert_eq!(tok.vocab_size(), 268);
        // `<|endoftext|>` is both BOS and EOS in GPT-2 style vocabularies; PAD falls back to EOS.
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (0, 0, 0));
        assert_eq!(tok.special(IM_START), Some(1));
        assert_eq!(tok.special(IM_END), Some(2));
        let ids = tok.encode("hello world");
        assert_eq!(ids.len(), 2, "merges apply: {ids:?}");
        for text in ["hello world", "Ünïcödé  spaces\n\ttabs", "a <|im_end|> b"] {
            let ids = tok.encode(text);
            assert_eq!(tok.decode(&ids), text);
        }
        // Special-token text inside data is not turned into the marker.
        assert!(!tok.encode("x<|im_end|>").contains(&2));
        assert_eq!(tok.decode(&[1, 2]), "<|im_start|><|im_end|>");
    }

    #[test]
    fn hf_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let e = Tokenizer::from_config(&hf_config(missing.clone(), ChatTemplate::Plain))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");

        let e = Tokenizer::from_config(&hf_config(dir.path().to_path_buf(), ChatTemplate::Plain))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = Tokenizer::from_config(&hf_config(bad.clone(), ChatTemplate::Plain))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");

        // No specials at all: refused.
        let bare = dir.path().join("bare.json");
        let json = TINY_BPE
            .replace("<|endoftext|>", "AAA")
            .replace("<|im_start|>", "BBB")
            .replace("<|im_end|>", "CCC");
        std::fs::write(&bare, json).unwrap();
        let e = Tokenizer::from_config(&hf_config(bare.clone(), ChatTemplate::Plain))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no BOS/EOS"), "{e}");
        assert!(e.contains(&bare.display().to_string()), "{e}");

        let config = ModelConfig {
            tokenizer: TokenizerKind::Hf,
            ..ModelConfig::default()
        };
        assert!(Tokenizer::from_config(&config).is_err());
    }
}
