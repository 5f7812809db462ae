//! Choosing the chat template: `model.chat_template = "auto"` (the default) becomes ChatML when
//! the tokenizer has the ChatML markers `<|im_start|>` and `<|im_end|>` as tokens (SmolLM2 and
//! other ChatML-tuned checkpoints), and the plain `User: ... Assistant: ...` rendering otherwise
//! (the built-in byte tokenizer of a model trained from scratch). Plain-text records are never
//! templated. The rendering itself lives in `encode.rs`.

use super::tokenizer::{IM_END, IM_START};
use super::Tokenizer;
use crate::config::ChatTemplate;

impl ChatTemplate {
    /// The concrete template for `tok`: `Auto` resolved as described in the module docs, any
    /// other choice unchanged.
    pub fn resolve(self, tok: &Tokenizer) -> ChatTemplate {
        match self {
            ChatTemplate::Auto => {
                if tok.special(IM_START).is_some() && tok.special(IM_END).is_some() {
                    ChatTemplate::Chatml
                } else {
                    ChatTemplate::Plain
                }
            }
            other => other,
        }
    }
}
