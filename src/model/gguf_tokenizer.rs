//! Rebuilds a Hugging Face tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! GGUF stores a GPT-2-style byte-level BPE as its token texts (`tokenizer.ggml.tokens`, already
//! in the byte-to-unicode alphabet, `Ġ` for a space), its merges (`"a b"` strings), the token
//! types (3 = control, 4 = user-defined) and the name of the pre-tokenizer (`tokenizer.ggml.pre`).
//! We rebuild the equivalent `tokenizers` pipeline: BPE(vocab, merges), then the pre-tokenizer
//! the name stands for, a ByteLevel decoder, and the control/user-defined tokens as added tokens
//! so `<|im_start|>` and `<|im_end|>` are single ids.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::gguf::{GgufFile, Value};
use super::pretrained::LoadError;

/// llama.cpp's token type for control tokens (`<|im_start|>`, `<|endoftext|>`...).
const TOKEN_CONTROL: i64 = 3;
/// llama.cpp's token type for user-defined added tokens.
const TOKEN_USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by `g`'s metadata.
///
/// Supported: `tokenizer.ggml.model = "gpt2"` with `tokenizer.ggml.pre` = `smollm` (individual
/// digits, then byte level without a prefix space, as SmolLM2's `tokenizer.json`) or
/// `gpt2`/`default` (byte level only). Other pre-tokenizers use regexes we do not reproduce, so
/// they are refused rather than silently tokenized differently.
pub(super) fn build(g: &GgufFile) -> Result<tokenizers::Tokenizer, LoadError> {
    let err = |message: String| LoadError::Tokenizer {
        path: g.path().to_path_buf(),
        message,
    };
    let model = g
        .get("tokenizer.ggml.model")?
        .as_str()
        .ok_or_else(|| g.key_err("tokenizer.ggml.model", "must be a string"))?;
    if model != "gpt2" {
        return Err(g.key_err(
            "tokenizer.ggml.model",
            &format!("`{model}` is not supported (only the byte-level BPE `gpt2`)"),
        ));
    }
    let pre = match g.metadata.get("tokenizer.ggml.pre") {
        Some(v) => v
            .as_str()
            .ok_or_else(|| g.key_err("tokenizer.ggml.pre", "must be a string"))?,
        None => "default",
    };
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(true)
        .use_regex(true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "gpt-2" | "default" => byte_level.into(),
        other => {
            return Err(g.key_err(
                "tokenizer.ggml.pre",
                &format!("pre-tokenizer `{other}` is not supported (smollm, gpt2, default are)"),
            ))
        }
    };

    let tokens = g.get_strings("tokenizer.ggml.tokens")?;
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        // A duplicate text would make the id of that text ambiguous.
        if vocab.insert((*t).to_string(), id as u32).is_some() {
            return Err(g.key_err(
                "tokenizer.ggml.tokens",
                &format!("token text {t:?} appears twice"),
            ));
        }
    }
    let merges = g
        .get_strings("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    g.key_err(
                        "tokenizer.ggml.merges",
                        &format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("cannot build BPE: {e}")))?;

    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    let types: Vec<i64> = match g.metadata.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::I64(x) => Some(*x),
                Value::U64(x) => i64::try_from(*x).ok(),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| g.key_err("tokenizer.ggml.token_type", "must be integers"))?,
        Some(_) => return Err(g.key_err("tokenizer.ggml.token_type", "must be an array")),
        None => Vec::new(),
    };
    // The added tokens already exist in the BPE vocabulary, so they keep their ids. Control
    // tokens are special (skipped when decoding with `skip_special_tokens`), user-defined are not.
    let added = |kind: i64| -> Vec<AddedToken> {
        types
            .iter()
            .zip(&tokens)
            .filter(|(ty, _)| **ty == kind)
            .map(|(_, t)| AddedToken::from(*t, kind == TOKEN_CONTROL).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&added(TOKEN_CONTROL));
    tok.add_tokens(&added(TOKEN_USER_DEFINED));
    Ok(tok)
}
