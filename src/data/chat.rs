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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use super::*;
    use crate::data::{encode_record, ChatMessage, Record};

    /// The tiny byte-level BPE fixture: `<|endoftext|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2.
    fn chatml_tokenizer() -> Tokenizer {
        let json = include_str!("../../tests/fixtures/data/tiny_bpe_tokenizer.json");
        let inner = tokenizers::Tokenizer::from_str(json).unwrap();
        Tokenizer::from_hf(inner, Path::new("tiny_bpe_tokenizer.json"), false).unwrap()
    }

    fn targets(tok: &Tokenizer, e: &crate::data::Encoded) -> String {
        let ids: Vec<u32> = e
            .tokens
            .iter()
            .zip(&e.response_mask)
            .filter(|(_, &m)| m)
            .map(|(&t, _)| t)
            .collect();
        tok.decode(&ids)
    }

    #[test]
    fn auto_follows_the_tokenizer() {
        let hf = chatml_tokenizer();
        assert_eq!(ChatTemplate::Auto.resolve(&hf), ChatTemplate::Chatml);
        assert_eq!(ChatTemplate::Plain.resolve(&hf), ChatTemplate::Plain);
        let byte = Tokenizer::Byte { chatml: false };
        assert_eq!(ChatTemplate::Auto.resolve(&byte), ChatTemplate::Plain);
        assert_eq!(
            ChatTemplate::Chatml.resolve(&byte),
            ChatTemplate::Chatml,
            "an explicit choice is kept"
        );
    }

    #[test]
    fn auto_renders_chatml_with_loss_on_assistant_tokens_only() {
        let tok = chatml_tokenizer();
        let pr = Record::PromptResponse {
            prompt: "hi".into(),
            response: "hello world".into(),
        };
        let e = encode_record(&tok, &pr, ChatTemplate::Auto, 256);
        assert_eq!(
            tok.decode(&e.tokens),
            "<|endoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello world\
             <|im_end|>\n<|endoftext|>"
        );
        // Markers are single ids, never tokenized text.
        assert_eq!(e.tokens.iter().filter(|&&t| t == 1).count(), 2);
        assert_eq!(targets(&tok, &e), "hello world<|im_end|>");

        let chat = Record::Chat(vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            },
            ChatMessage {
                role: "assistant".into(),
                content: "hello".into(),
            },
        ]);
        let e = encode_record(&tok, &chat, ChatTemplate::Auto, 256);
        assert!(tok
            .decode(&e.tokens)
            .contains("<|im_start|>system\nbe brief<|im_end|>"));
        assert_eq!(targets(&tok, &e), "hello<|im_end|>");

        // Plain text stays plain: no markers, every token after BOS is a target.
        let text = Record::Text("hello world".into());
        let e = encode_record(&tok, &text, ChatTemplate::Auto, 256);
        assert_eq!(
            tok.decode(&e.tokens),
            "<|endoftext|>hello world<|endoftext|>"
        );
        assert_eq!(targets(&tok, &e), "hello world<|endoftext|>");
    }
}
