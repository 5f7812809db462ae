//! The model shape a config implies for a run trained from scratch.

use crate::config::Config;
use crate::data::Tokenizer;
use crate::model::LlamaConfig;

/// The model shape implied by a config and its tokenizer.
pub fn llama_config(cfg: &Config, tok: &Tokenizer) -> LlamaConfig {
    let m = &cfg.model;
    LlamaConfig {
        vocab_size: tok.vocab_size(),
        d_model: m.d_model,
        n_layers: m.n_layers,
        n_heads: m.n_heads,
        n_kv_heads: m.n_kv_heads,
        ffn_hidden: m.ffn_hidden,
        max_seq_len: cfg.training.seq_len,
        rope_theta: m.rope_theta,
        norm_eps: m.norm_eps,
        tie_embeddings: m.tie_embeddings,
    }
}
