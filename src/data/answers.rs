//! Exact-match items: held-out records split into the context the model is given and the short
//! reference answer it must produce by greedy decoding. Pure functions only.

use super::encode::encode_context;
use super::{Record, Tokenizer};
use crate::config::ChatTemplate;

/// One exact-match question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerItem {
    /// Token ids the model continues (BOS first; left-truncated to fit).
    pub context: Vec<u32>,
    /// The reference answer, as written in the data.
    pub answer: String,
    /// Tokens of the reference answer: greedy decoding stops two tokens after this many.
    pub answer_tokens: usize,
}

/// Why a record gave no item (counted and reported, never silently dropped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSkips {
    /// Plain-text records, or chats that do not end with an assistant turn.
    pub no_answer: usize,
    /// The marker does not occur in the response, or the answer after it is empty.
    pub no_marker: usize,
    /// The answer is longer than `max_answer_tokens`.
    pub too_long: usize,
}

/// Builds up to `limit` items from `records` (in order). With `marker`, the answer is the
/// trimmed text after the marker's last occurrence in the final assistant turn and the turn up
/// to and including the marker is part of the context (for maths: the worked solution is
/// given and the final answer is asked for); without it the whole turn is the answer. Contexts
/// longer than `seq_len - max_answer_tokens - 2` keep BOS and lose their oldest tokens.
pub fn answer_items(
    tok: &Tokenizer,
    records: &[Record],
    template: ChatTemplate,
    seq_len: usize,
    marker: Option<&str>,
    max_answer_tokens: usize,
    limit: usize,
) -> (Vec<AnswerItem>, AnswerSkips) {
    let mut items = Vec::new();
    let mut skips = AnswerSkips::default();
    let room = seq_len.saturating_sub(max_answer_tokens + 2).max(2);
    for record in records {
        if items.len() >= limit {
            break;
        }
        let Some(response) = final_turn(record) else {
            skips.no_answer += 1;
            continue;
        };
        let (prefix, answer) = match marker {
            Some(m) => match response.rfind(m) {
                Some(at) => (&response[..at + m.len()], response[at + m.len()..].trim()),
                None => {
                    skips.no_marker += 1;
                    continue;
                }
            },
            None => ("", response.trim()),
        };
        if answer.is_empty() {
            skips.no_marker += 1;
            continue;
        }
        let answer_tokens = tok.encode(answer).len();
        if answer_tokens > max_answer_tokens {
            skips.too_long += 1;
            continue;
        }
        // The marker is followed by a space in the data ("Answer: 239"); keeping it in the
        // context means the model is asked for the answer itself, not for the space.
        let prefix = match marker {
            Some(_) if response[prefix.len()..].starts_with(' ') => &response[..prefix.len() + 1],
            _ => prefix,
        };
        let Some(mut context) = encode_context(tok, record, template, prefix) else {
            skips.no_answer += 1;
            continue;
        };
        if context.len() > room {
            let cut = context.len() - room;
            context.drain(1..=cut);
        }
        items.push(AnswerItem {
            context,
            answer: answer.to_string(),
            answer_tokens,
        });
    }
    (items, skips)
}

fn final_turn(record: &Record) -> Option<&str> {
    match record {
        Record::Text(_) => None,
        Record::PromptResponse { response, .. } => Some(response),
        Record::Chat(messages) => messages
            .last()
            .filter(|m| m.is_assistant())
            .map(|m| m.content.as_str()),
    }
}

/// The comparison form of an answer: lower case, whitespace runs collapsed to one space, and
/// surrounding whitespace and trailing sentence punctuation removed. Anything else (digits,
/// signs, inner punctuation) must match exactly.
pub fn normalize_answer(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed
        .trim_end_matches(['.', '!', '?', ';', ','])
        .trim()
        .to_lowercase()
}

/// Whether the generated text answers `reference` exactly (after [`normalize_answer`]).
pub fn is_exact_match(generated: &str, reference: &str) -> bool {
    normalize_answer(generated) == normalize_answer(reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::ChatMessage;

    fn byte() -> Tokenizer {
        Tokenizer::from_config(&ModelConfig::default()).unwrap()
    }

    fn pr(prompt: &str, response: &str) -> Record {
        Record::PromptResponse {
            prompt: prompt.into(),
            response: response.into(),
        }
    }

    #[test]
    fn marker_splits_solution_from_final_answer() {
        let tok = byte();
        let recs = [pr("Count them.", "There are 3 + 4.\n\nAnswer: 7")];
        let (items, skips) = answer_items(
            &tok,
            &recs,
            ChatTemplate::Plain,
            128,
            Some("Answer:"),
            8,
            10,
        );
        assert_eq!(skips, AnswerSkips::default());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].answer, "7");
        let ctx = tok.decode(&items[0].context[1..]);
        assert_eq!(
            ctx,
            "User: Count them.\nAssistant: There are 3 + 4.\n\nAnswer: "
        );
        // The context is exactly what training shows before the answer's tokens.
        let full = crate::data::encode_record(&tok, &recs[0], ChatTemplate::Plain, 128);
        assert_eq!(
            &full.tokens[..items[0].context.len()],
            &items[0].context[..]
        );
    }

    #[test]
    fn chat_context_ends_at_the_assistant_header() {
        let tok = byte();
        let rec = Record::Chat(vec![
            ChatMessage {
                role: "user".into(),
                content: "Capital of France?".into(),
            },
            ChatMessage {
                role: "assistant".into(),
                content: "Paris".into(),
            },
        ]);
        for t in [ChatTemplate::Plain, ChatTemplate::Chatml] {
            let (items, _) = answer_items(&tok, std::slice::from_ref(&rec), t, 128, None, 8, 10);
            assert_eq!(items[0].answer, "Paris");
            let full = crate::data::encode_record(&tok, &rec, t, 128);
            let n = items[0].context.len();
            assert_eq!(&full.tokens[..n], &items[0].context[..], "{t:?}");
            assert!(
                full.response_mask[n],
                "the next token is the answer's first ({t:?})"
            );
        }
    }

    #[test]
    fn skips_are_counted_by_reason() {
        let tok = byte();
        let recs = [
            Record::Text("just text".into()),
            pr("q", "no marker here"),
            pr("q", "Answer: a very long answer that does not fit"),
            pr("q", "Answer: ok"),
        ];
        let (items, skips) = answer_items(
            &tok,
            &recs,
            ChatTemplate::Plain,
            128,
            Some("Answer:"),
            8,
            10,
        );
        assert_eq!(items.len(), 1);
        assert_eq!(
            skips,
            AnswerSkips {
                no_answer: 1,
                no_marker: 1,
                too_long: 1
            }
        );
    }

    #[test]
    fn long_contexts_keep_bos_and_the_end() {
        let tok = byte();
        let recs = [pr(&"x".repeat(500), "Answer: 42")];
        let (items, _) = answer_items(&tok, &recs, ChatTemplate::Plain, 64, Some("Answer:"), 8, 10);
        let ctx = &items[0].context;
        assert_eq!(ctx.len(), 64 - 8 - 2);
        assert_eq!(ctx[0], tok.bos_id());
        assert!(tok.decode(&ctx[1..]).ends_with("Answer: "));
    }

    #[test]
    fn normalisation_is_lenient_only_on_case_space_and_final_punctuation() {
        assert!(is_exact_match(" Paris.\n", "paris"));
        assert!(is_exact_match("James  Cameron", "james cameron"));
        assert!(!is_exact_match("239", "2390"));
        assert!(!is_exact_match("-1", "1"));
    }
}
