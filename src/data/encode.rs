//! Rendering records through a chat template into token ids with a response mask, and the
//! truncation rule that keeps response tokens.
//!
//! Rendering works on pieces (text, or a special id inserted directly) so template markers are
//! never produced by tokenizing user text. Pure functions only: no I/O, no tensors.

use super::tokenizer::{IM_END, IM_START};
use super::{ChatMessage, Record, Tokenizer};
use crate::config::ChatTemplate;

/// One tokenized example: `tokens = BOS + rendered record + EOS`, truncated to `seq_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids; `tokens[0]` is BOS.
    pub tokens: Vec<u32>,
    /// Same length as `tokens`; `response_mask[k]` is true iff token `k` is a response token the
    /// model is trained to predict (from tokens `0..k`). Always false at position 0.
    pub response_mask: Vec<bool>,
}

impl Encoded {
    /// Number of training targets (true entries of the mask).
    pub fn targets(&self) -> usize {
        self.response_mask.iter().filter(|&&m| m).count()
    }
}

/// A rendered fragment: text to tokenize, or an id inserted as is; with its target flag.
enum Piece<'a> {
    Text(std::borrow::Cow<'a, str>, bool),
    Special(&'static str, bool),
}

/// Encodes `record` for training or evaluation.
///
/// Templates (`|...|` marks the tokens whose mask is true):
/// - text, any template: `BOS |text EOS|`;
/// - prompt/response, `plain`: `BOS User: {prompt}\nAssistant: |{response} EOS|`;
/// - chat, `plain`: per message `{Role}: {content}\n` with the role's first letter upper-cased;
///   for assistant messages `{content}\n` is a target; the final EOS is a target iff the last
///   message is the assistant's;
/// - chat, `chatml`: per message `<|im_start|>{role}\n{content}<|im_end|>\n`, the assistant's
///   `{content}<|im_end|>` are targets; the final EOS is not (a ChatML model stops at
///   `<|im_end|>`); prompt/response is rendered as a user and an assistant message.
///
/// If the tokenizer lacks the ChatML markers (a byte tokenizer built for the plain template),
/// they are tokenized as text.
///
/// Truncation, when the whole exceeds `seq_len`: the part before the first target token (the
/// prompt) is cut from the left, BOS kept, so that at least `min(response_len, seq_len / 2)`
/// tokens from the first target on survive; then the tail is cut to `seq_len`. Since every record
/// accepted by the loader has at least one target, every example with `seq_len >= 2` keeps at
/// least one target.
pub fn encode_record(
    tok: &Tokenizer,
    record: &Record,
    template: ChatTemplate,
    seq_len: usize,
) -> Encoded {
    let template = template.resolve(tok);
    let pieces = render(record, template);
    let mut tokens = vec![tok.bos_id()];
    let mut mask = vec![false];
    for piece in pieces {
        match piece {
            Piece::Text(text, target) => {
                let ids = tok.encode(&text);
                mask.extend(std::iter::repeat_n(target, ids.len()));
                tokens.extend(ids);
            }
            Piece::Special(name, target) => match tok.special(name) {
                Some(id) => {
                    tokens.push(id);
                    mask.push(target);
                }
                None => {
                    let ids = tok.encode(name);
                    mask.extend(std::iter::repeat_n(target, ids.len()));
                    tokens.extend(ids);
                }
            },
        }
    }
    tokens.push(tok.eos_id());
    mask.push(eos_is_target(record, template));
    truncate(tokens, mask, seq_len)
}

/// Encodes every record (eval sets, probe sets) with [`encode_record`].
pub fn encode_all(
    tok: &Tokenizer,
    records: &[Record],
    template: ChatTemplate,
    seq_len: usize,
) -> Vec<Encoded> {
    records
        .iter()
        .map(|r| encode_record(tok, r, template, seq_len))
        .collect()
}

fn eos_is_target(record: &Record, template: ChatTemplate) -> bool {
    match (record, template) {
        (Record::Text(_), _) => true,
        (Record::PromptResponse { .. }, ChatTemplate::Plain | ChatTemplate::Auto) => true,
        (Record::Chat(m), ChatTemplate::Plain | ChatTemplate::Auto) => {
            m.last().is_some_and(ChatMessage::is_assistant)
        }
        (_, ChatTemplate::Chatml) => false,
    }
}

fn render(record: &Record, template: ChatTemplate) -> Vec<Piece<'_>> {
    use std::borrow::Cow::{Borrowed, Owned};
    match (record, template) {
        (Record::Text(text), _) => vec![Piece::Text(Borrowed(text), true)],
        (Record::PromptResponse { prompt, response }, ChatTemplate::Plain | ChatTemplate::Auto) => {
            vec![
                Piece::Text(Owned(format!("User: {prompt}\nAssistant: ")), false),
                Piece::Text(Borrowed(response), true),
            ]
        }
        (Record::PromptResponse { prompt, response }, ChatTemplate::Chatml) => {
            let mut out = Vec::new();
            chatml_message(&mut out, "user", prompt, false);
            chatml_message(&mut out, "assistant", response, true);
            out
        }
        (Record::Chat(messages), ChatTemplate::Plain | ChatTemplate::Auto) => {
            let mut out = Vec::new();
            for m in messages {
                let role = capitalise(&m.role);
                if m.is_assistant() {
                    out.push(Piece::Text(Owned(format!("{role}: ")), false));
                    out.push(Piece::Text(Owned(format!("{}\n", m.content)), true));
                } else {
                    out.push(Piece::Text(
                        Owned(format!("{role}: {}\n", m.content)),
                        false,
                    ));
                }
            }
            out
        }
        (Record::Chat(messages), ChatTemplate::Chatml) => {
            let mut out = Vec::new();
            for m in messages {
                chatml_message(&mut out, &m.role, &m.content, m.is_assistant());
            }
            out
        }
    }
}

/// Token ids of `record` up to and including `prefix` as the start of its final assistant turn:
/// the prompt the model sees when asked to produce the rest of the answer (no end markers, no
/// EOS). `None` for plain text and for chats that do not end with an assistant turn.
pub(crate) fn encode_context(
    tok: &Tokenizer,
    record: &Record,
    template: ChatTemplate,
    prefix: &str,
) -> Option<Vec<u32>> {
    use std::borrow::Cow::{Borrowed, Owned};
    let template = template.resolve(tok);
    let mut pieces = match (record, template) {
        (Record::Text(_), _) => return None,
        (Record::PromptResponse { prompt, .. }, ChatTemplate::Plain | ChatTemplate::Auto) => {
            vec![Piece::Text(
                Owned(format!("User: {prompt}\nAssistant: ")),
                false,
            )]
        }
        (Record::PromptResponse { prompt, .. }, ChatTemplate::Chatml) => {
            let mut out = Vec::new();
            chatml_message(&mut out, "user", prompt, false);
            out.push(Piece::Special(IM_START, false));
            out.push(Piece::Text(Borrowed("assistant\n"), false));
            out
        }
        (Record::Chat(messages), t) => {
            let (last, earlier) = messages.split_last()?;
            if !last.is_assistant() {
                return None;
            }
            let head = Record::Chat(earlier.to_vec());
            let mut out: Vec<Piece<'static>> = render(&head, t)
                .into_iter()
                .map(|p| match p {
                    Piece::Text(text, target) => Piece::Text(Owned(text.into_owned()), target),
                    Piece::Special(name, target) => Piece::Special(name, target),
                })
                .collect();
            match t {
                ChatTemplate::Chatml => {
                    out.push(Piece::Special(IM_START, false));
                    out.push(Piece::Text(Owned(format!("{}\n", last.role)), false));
                }
                ChatTemplate::Plain | ChatTemplate::Auto => {
                    out.push(Piece::Text(
                        Owned(format!("{}: ", capitalise(&last.role))),
                        false,
                    ));
                }
            }
            out
        }
    };
    pieces.push(Piece::Text(Borrowed(prefix), false));
    let mut tokens = vec![tok.bos_id()];
    for piece in pieces {
        match piece {
            Piece::Text(text, _) => tokens.extend(tok.encode(&text)),
            Piece::Special(name, _) => match tok.special(name) {
                Some(id) => tokens.push(id),
                None => tokens.extend(tok.encode(name)),
            },
        }
    }
    Some(tokens)
}

fn chatml_message<'a>(out: &mut Vec<Piece<'a>>, role: &str, content: &'a str, target: bool) {
    use std::borrow::Cow::{Borrowed, Owned};
    out.push(Piece::Special(IM_START, false));
    out.push(Piece::Text(Owned(format!("{role}\n")), false));
    out.push(Piece::Text(Borrowed(content), target));
    out.push(Piece::Special(IM_END, target));
    out.push(Piece::Text(Borrowed("\n"), false));
}

fn capitalise(role: &str) -> String {
    let mut chars = role.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Applies the truncation rule of [`encode_record`].
fn truncate(tokens: Vec<u32>, mask: Vec<bool>, seq_len: usize) -> Encoded {
    if tokens.len() <= seq_len {
        return Encoded {
            tokens,
            response_mask: mask,
        };
    }
    // Prompt = tokens[1..first); response = tokens[first..] (everything from the first target on).
    let first = mask.iter().position(|&m| m).unwrap_or(tokens.len());
    let prompt_len = first.saturating_sub(1);
    let response_len = tokens.len() - first;
    let keep_response = response_len.min(seq_len / 2);
    let prompt_room = seq_len.saturating_sub(1).saturating_sub(keep_response);
    let drop = prompt_len.saturating_sub(prompt_room);
    if seq_len == 0 {
        return Encoded {
            tokens: Vec::new(),
            response_mask: Vec::new(),
        };
    }
    // BOS, then the kept tail of the prompt and the response, cut to `seq_len`.
    let start = 1 + drop;
    let take = seq_len - 1;
    let mut out_tokens = Vec::with_capacity(seq_len);
    let mut out_mask = Vec::with_capacity(seq_len);
    out_tokens.push(tokens[0]);
    out_mask.push(false);
    out_tokens.extend(tokens.get(start..).unwrap_or(&[]).iter().take(take));
    out_mask.extend(mask.get(start..).unwrap_or(&[]).iter().take(take));
    Encoded {
        tokens: out_tokens,
        response_mask: out_mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn byte(template: ChatTemplate) -> Tokenizer {
        Tokenizer::from_config(&ModelConfig {
            chat_template: template,
            ..ModelConfig::default()
        })
        .unwrap()
    }

    /// The full rendered string, and the concatenation of the target tokens.
    fn show(tok: &Tokenizer, e: &Encoded) -> (String, String) {
        assert_eq!(e.tokens.len(), e.response_mask.len());
        assert!(!e.response_mask[0]);
        let targets: Vec<u32> = e
            .tokens
            .iter()
            .zip(&e.response_mask)
            .filter(|(_, &m)| m)
            .map(|(&t, _)| t)
            .collect();
        (tok.decode(&e.tokens), tok.decode(&targets))
    }

    fn chat(turns: &[(&str, &str)]) -> Record {
        Record::Chat(
            turns
                .iter()
                .map(|(r, c)| ChatMessage {
                    role: r.to_string(),
                    content: c.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn text_every_token_after_bos_is_a_target() {
        for template in [ChatTemplate::Plain, ChatTemplate::Chatml] {
            let tok = byte(template);
            let e = encode_record(&tok, &Record::Text("abc".into()), template, 64);
            assert_eq!(show(&tok, &e), ("<s>abc</s>".into(), "abc</s>".into()));
        }
    }

    #[test]
    fn prompt_response_plain() {
        let tok = byte(ChatTemplate::Plain);
        let r = Record::PromptResponse {
            prompt: "hi".into(),
            response: "yo".into(),
        };
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 64);
        assert_eq!(
            show(&tok, &e),
            ("<s>User: hi\nAssistant: yo</s>".into(), "yo</s>".into())
        );
        assert_eq!(e.targets(), 3);
    }

    #[test]
    fn prompt_response_chatml() {
        let tok = byte(ChatTemplate::Chatml);
        let r = Record::PromptResponse {
            prompt: "hi".into(),
            response: "yo".into(),
        };
        let e = encode_record(&tok, &r, ChatTemplate::Chatml, 128);
        assert_eq!(
            show(&tok, &e),
            (
                "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n</s>"
                    .into(),
                "yo<|im_end|>".into()
            )
        );
        // The markers are single ids.
        assert_eq!(e.tokens.iter().filter(|&&t| t == 259).count(), 2);
    }

    #[test]
    fn chat_plain_masks_assistant_turns_only() {
        let tok = byte(ChatTemplate::Plain);
        let r = chat(&[
            ("system", "be nice"),
            ("user", "q1"),
            ("assistant", "a1"),
            ("user", "q2"),
            ("assistant", "a2"),
        ]);
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 256);
        assert_eq!(
            show(&tok, &e),
            (
                "<s>System: be nice\nUser: q1\nAssistant: a1\nUser: q2\nAssistant: a2\n</s>".into(),
                "a1\na2\n</s>".into()
            )
        );
        // A chat ending on a user turn: EOS is not a target.
        let r = chat(&[("assistant", "a"), ("user", "q")]);
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 256);
        assert_eq!(show(&tok, &e).1, "a\n");
    }

    #[test]
    fn chat_chatml() {
        let tok = byte(ChatTemplate::Chatml);
        let r = chat(&[("user", "q"), ("assistant", "a"), ("user", "q2")]);
        let e = encode_record(&tok, &r, ChatTemplate::Chatml, 256);
        assert_eq!(
            show(&tok, &e),
            (
                "<s><|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n\
                 <|im_start|>user\nq2<|im_end|>\n</s>"
                    .into(),
                "a<|im_end|>".into()
            )
        );
    }

    #[test]
    fn chatml_markers_fall_back_to_text_without_specials() {
        let tok = byte(ChatTemplate::Plain);
        let r = chat(&[("user", "q"), ("assistant", "a")]);
        let e = encode_record(&tok, &r, ChatTemplate::Chatml, 256);
        assert!(e.tokens[1..e.tokens.len() - 1].iter().all(|&t| t < 256));
        assert_eq!(show(&tok, &e).1, "a<|im_end|>");
    }

    #[test]
    fn truncation_keeps_response_tokens() {
        let tok = byte(ChatTemplate::Plain);
        let prompt = "p".repeat(100);
        let response = "r".repeat(10);
        let r = Record::PromptResponse {
            prompt: prompt.clone(),
            response: response.clone(),
        };
        // Whole response (10 + EOS = 11) fits in seq_len / 2 = 16: the prompt is cut from the left.
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 32);
        assert_eq!(e.tokens.len(), 32);
        assert_eq!(e.tokens[0], tok.bos_id());
        assert_eq!(show(&tok, &e).1, format!("{response}</s>"));
        assert!(show(&tok, &e).0.ends_with("\nAssistant: rrrrrrrrrr</s>"));

        // A long response keeps at least seq_len / 2 response tokens and loses its tail.
        let r = Record::PromptResponse {
            prompt,
            response: "r".repeat(100),
        };
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 32);
        assert_eq!(e.tokens.len(), 32);
        assert_eq!(e.targets(), 16);
        assert!(!e.response_mask[0]);

        // A short prompt is not cut; the response fills the rest.
        let r = Record::PromptResponse {
            prompt: "hi".into(),
            response: "r".repeat(100),
        };
        let e = encode_record(&tok, &r, ChatTemplate::Plain, 64);
        let prefix = "<s>User: hi\nAssistant: ";
        assert!(show(&tok, &e).0.starts_with(prefix));
        assert_eq!(e.targets(), 64 - (prefix.len() - "<s>".len() + 1));

        // Plain text is simply cut at the tail.
        let e = encode_record(&tok, &Record::Text("x".repeat(50)), ChatTemplate::Plain, 8);
        assert_eq!(show(&tok, &e), ("<s>xxxxxxx".into(), "xxxxxxx".into()));

        // Degenerate lengths never panic and keep the mask aligned.
        for seq_len in 0..4 {
            let e = encode_record(&tok, &r, ChatTemplate::Plain, seq_len);
            assert_eq!(e.tokens.len(), seq_len);
            assert_eq!(e.response_mask.len(), seq_len);
            if seq_len >= 2 {
                assert!(e.targets() >= 1);
            }
        }
    }

    #[test]
    fn encode_all_matches_encode_record() {
        let tok = byte(ChatTemplate::Plain);
        let records = vec![Record::Text("a".into()), chat(&[("assistant", "b")])];
        let all = encode_all(&tok, &records, ChatTemplate::Plain, 16);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1],
            encode_record(&tok, &records[1], ChatTemplate::Plain, 16)
        );
    }
}
