//! A whole (non-streamed) JSON answer: collected without a copy, its usage read, and,
//! when the caller's dialect differs from the provider's, translated whole by the
//! provider's adapter.

use bytes::Bytes;

use crate::api::{Dialect, Wire};
use crate::error::GwError;
use crate::stream::{usage_value, UsageOnly, USAGE_KEY_REV};
use crate::usage::{RawUsage, Usage};

/// What to do with a whole (non-streamed) JSON response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonTranslate {
    /// Forward as it is; only read the usage.
    None,
    AnthropicToChat {
        created: i64,
    },
    ChatToAnthropic,
    /// A response in a format reached only through translation (Gemini, Converse), to
    /// chat (and on to Anthropic's shape for Anthropic callers).
    ToChat {
        from: Wire,
        created: i64,
        to_anthropic: bool,
        /// Names the answer when the provider does not.
        model: String,
    },
    /// A provider error body, re-shaped into the caller's envelope (same status).
    Error {
        status: u16,
        to_anthropic: bool,
    },
    /// A Gemini answer to a Gemini caller: forwarded as it is, its `usageMetadata` read.
    GeminiNative,
    /// Any other format's content answer to a Gemini caller, through chat.
    ToGemini {
        from: Wire,
        created: i64,
        model: String,
    },
    /// OpenAI-style embeddings to `embedContent` (or `batchEmbedContents`) callers.
    EmbeddingsToGemini {
        batch: bool,
    },
    /// A provider error body in Google's envelope (same status).
    ErrorToGemini {
        status: u16,
    },
}

/// Collects a JSON response body (by reference, no copy) to read its usage at the end,
/// and, when the dialects differ, holds it back to translate it whole.
#[derive(Debug)]
pub struct JsonBody {
    parts: Vec<Bytes>,
    len: usize,
    over: bool,
    pub translate: JsonTranslate,
    /// Held back whole even without translation (a guardrail must see it first); the
    /// caller's dialect, for the error when it is too large to check.
    pub hold: Option<Dialect>,
    /// How much of a passed-through body is kept whole: [`Self::LIMIT`] when it is wanted
    /// whole after the end (cache fill, trace), else [`Self::SCAN`]. Beyond it, only the
    /// tail is kept, for the usage.
    pub keep: usize,
}

impl JsonBody {
    pub const LIMIT: usize = 32 * 1024 * 1024;
    /// Passed-through bodies up to this size are parsed whole for their usage.
    pub const SCAN: usize = 1024 * 1024;
    /// What is kept of a passed-through body over [`Self::LIMIT`] to read its usage from:
    /// OpenAI and Anthropic put `usage` last (a huge embeddings batch is the real case).
    const TAIL: usize = 64 * 1024;

    pub fn new(translate: JsonTranslate) -> Self {
        Self {
            parts: Vec::new(),
            len: 0,
            over: false,
            translate,
            hold: None,
            keep: Self::LIMIT,
        }
    }

    /// The dialect the translated body is in.
    fn caller_dialect(&self) -> Dialect {
        match self.translate {
            JsonTranslate::ChatToAnthropic
            | JsonTranslate::ToChat { to_anthropic: true, .. }
            | JsonTranslate::Error { to_anthropic: true, .. } => Dialect::Anthropic,
            JsonTranslate::GeminiNative
            | JsonTranslate::ToGemini { .. }
            | JsonTranslate::EmbeddingsToGemini { .. }
            | JsonTranslate::ErrorToGemini { .. } => Dialect::Gemini,
            _ => Dialect::OpenAi,
        }
    }

    /// The output tokens of an answer whose provider's count could not be read: a token
    /// per four bytes of it (its JSON around the text makes that more, never less).
    pub fn output_estimate(&self) -> u64 {
        (self.len as u64).div_ceil(4)
    }

    /// Whether the body is held back until its end (translation) or forwarded as it comes.
    pub fn holds(&self) -> bool {
        self.hold.is_some() || !matches!(self.translate, JsonTranslate::None | JsonTranslate::GeminiNative)
    }

    pub fn push(&mut self, chunk: &Bytes) {
        if self.over && self.holds() {
            return;
        }
        self.len += chunk.len();
        self.parts.push(chunk.clone());
        let limit = if self.holds() { Self::LIMIT } else { self.keep };
        if self.len > limit {
            self.over = true;
            if self.holds() {
                self.parts.clear();
                return;
            }
            // Passed through: only the tail is kept, where the usage is. Leading parts go
            // while what stays after them still covers TAIL.
            let mut kept: usize = self.parts.iter().map(Bytes::len).sum();
            let mut drop = 0;
            for p in &self.parts {
                if kept - p.len() < Self::TAIL {
                    break;
                }
                kept -= p.len();
                drop += 1;
            }
            self.parts.drain(..drop);
        }
    }

    /// The usage, the body as received, and the body to send when it was held:
    /// translated when translating, else as received.
    pub fn finish(&mut self) -> (Option<Usage>, Bytes, Option<Bytes>) {
        let parts = std::mem::take(&mut self.parts);
        let whole: Bytes = match parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        };
        // Read from the same parse as the translation, below.
        let mut usage = match self.translate {
            JsonTranslate::ToChat { .. } | JsonTranslate::ToGemini { .. } => None,
            JsonTranslate::None if self.over && self.hold.is_none() => {
                return (usage_in_tail(&whole), Bytes::new(), None);
            }
            // Too large to keep whole: its count could not be read, and is estimated.
            JsonTranslate::GeminiNative if self.over => Some(Usage::unreadable()),
            JsonTranslate::GeminiNative => super::gemini::native_usage(&whole),
            _ => serde_json::from_slice::<UsageOnly>(&whole)
                .ok()
                .and_then(|u| u.usage)
                .map(Usage::from),
        };
        let not_json = |d| GwError::UpstreamError("The provider's answer is not valid JSON.".into()).body(d);
        let translated = match &self.translate {
            JsonTranslate::GeminiNative if self.hold.is_none() => {
                let whole = if self.over { Bytes::new() } else { whole };
                return (usage, whole, None);
            }
            JsonTranslate::None | JsonTranslate::GeminiNative => match self.hold {
                Some(_) if !self.over => return (usage, whole.clone(), Some(whole)),
                Some(dialect) => {
                    let e = GwError::UpstreamError("The provider's answer is too large to check.".into());
                    return (usage, whole, Some(e.body(dialect)));
                }
                None => return (usage, whole, None),
            },
            _ if self.over => GwError::UpstreamError("The provider's answer is too large to translate.".into())
                .body(self.caller_dialect()),
            JsonTranslate::Error { status, to_anthropic } => {
                Bytes::from(super::anthropic::translate_error(&whole, *status, *to_anthropic).to_string())
            }
            JsonTranslate::ErrorToGemini { status } => {
                Bytes::from(super::gemini::translate_error(&whole, *status).to_string())
            }
            JsonTranslate::EmbeddingsToGemini { batch } => match super::gemini::embeddings_to_gemini(&whole, *batch) {
                Some(out) => Bytes::from(out),
                None => not_json(Dialect::Gemini),
            },
            JsonTranslate::ToGemini { from, created, model } => {
                match serde_json::from_slice::<serde_json::Value>(&whole) {
                    Ok(v) => {
                        let chat = match from {
                            Wire::OpenAi => v,
                            Wire::Anthropic => super::anthropic::messages_response_to_chat(&v, *created),
                            Wire::Gemini | Wire::Converse => {
                                let (used, chat) = super::answer_to_chat(*from, &v, *created, model);
                                usage = Some(used);
                                chat
                            }
                        };
                        if usage.is_none() {
                            usage = Some(crate::usage::Usage::from_json(&chat["usage"]));
                        }
                        Bytes::from(super::gemini::chat_response_to_gemini(&chat).to_string())
                    }
                    Err(_) => not_json(Dialect::Gemini),
                }
            }
            JsonTranslate::AnthropicToChat { created } => match serde_json::from_slice(&whole) {
                Ok(v) => Bytes::from(super::anthropic::messages_response_to_chat(&v, *created).to_string()),
                Err(_) => not_json(Dialect::OpenAi),
            },
            JsonTranslate::ChatToAnthropic => match serde_json::from_slice(&whole) {
                Ok(v) => Bytes::from(super::anthropic::chat_response_to_messages(&v).to_string()),
                Err(_) => not_json(Dialect::Anthropic),
            },
            JsonTranslate::ToChat {
                from,
                created,
                to_anthropic,
                model,
            } => match serde_json::from_slice::<serde_json::Value>(&whole) {
                Ok(v) => {
                    let (used, chat) = super::answer_to_chat(*from, &v, *created, model);
                    usage = Some(used);
                    let out = if *to_anthropic {
                        super::anthropic::chat_response_to_messages(&chat)
                    } else {
                        chat
                    };
                    Bytes::from(out.to_string())
                }
                Err(_) => not_json(self.caller_dialect()),
            },
        };
        (usage, whole, Some(translated))
    }
}

/// The usage object of a JSON body of which only the end is known: the value of the last
/// `"usage"` key that holds one (see [`usage_value`]).
fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let mut end = tail.len();
    while let Some(at) = USAGE_KEY_REV.rfind(&tail[..end]) {
        end = at;
        let Some(rest) = usage_value(tail, at) else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<RawUsage>();
        if let Some(Ok(u)) = values.next() {
            return Some(Usage::from(u));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_across_chunks() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let mut j = JsonBody::new(JsonTranslate::None);
        j.push(&Bytes::copy_from_slice(&body[..10]));
        j.push(&Bytes::copy_from_slice(&body[10..]));
        let (usage, _, translated) = j.finish();
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Usage::default()
            })
        );
        assert!(translated.is_none());
    }

    #[test]
    fn a_passed_through_body_over_the_limit_keeps_only_its_tail_for_the_usage() {
        // A huge embeddings answer: `usage` is the last key, after ~40 MiB of vectors.
        let row = Bytes::from(format!(",{{\"embedding\":[{}]}}", vec!["0.125"; 20_000].join(",")));
        for keep in [JsonBody::LIMIT, JsonBody::SCAN] {
            let mut j = JsonBody::new(JsonTranslate::None);
            j.keep = keep;
            j.push(&Bytes::from_static(
                b"{\"object\":\"list\",\"data\":[{\"usage\":\"usage\"}",
            ));
            while j.len <= keep + JsonBody::TAIL {
                j.push(&row);
                let kept: usize = j.parts.iter().map(Bytes::len).sum();
                assert!(kept <= keep + row.len(), "kept {kept} bytes");
            }
            j.push(&Bytes::from_static(
                b"],\"model\":\"m\",\"usage\" : {\"prompt_tokens\":42,\"total_tokens\":42}}",
            ));
            let kept: usize = j.parts.iter().map(Bytes::len).sum();
            assert!(kept < JsonBody::TAIL + 2 * row.len(), "kept {kept} bytes");
            let (usage, whole, held) = j.finish();
            assert_eq!(usage.map(|u| u.input_tokens), Some(42));
            assert!(whole.is_empty() && held.is_none());
        }
    }

    #[test]
    fn usage_in_a_tail_skips_strings_and_values_named_usage() {
        let tail = br#"a"usage": 1}, {"k": "usage"}], "usage": {"input_tokens": 5, "output_tokens": 6}}"#;
        assert_eq!(
            usage_in_tail(tail),
            Some(Usage {
                input_tokens: 5,
                output_tokens: 6,
                ..Usage::default()
            })
        );
        assert_eq!(usage_in_tail(br#"0.5, 0.25], "note": "usage"}"#), None);
        assert_eq!(usage_in_tail(br#""usage": {"prompt_tokens": 1"#), None);
    }

    #[test]
    fn a_held_body_over_the_limit_keeps_nothing() {
        let mut j = JsonBody::new(JsonTranslate::ChatToAnthropic);
        let chunk = Bytes::from(vec![b' '; 1 << 20]);
        for _ in 0..40 {
            j.push(&chunk);
        }
        assert!(j.parts.is_empty());
        let (_, _, held) = j.finish();
        let v: serde_json::Value = serde_json::from_slice(&held.unwrap()).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("too large"), "{v}");
    }
}
