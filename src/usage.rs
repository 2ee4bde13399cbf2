//! Token usage: one count for every dialect, read from each provider's report, written in
//! each caller's shape, and priced once.
//!
//! OpenAI's convention is the model: input counts every prompt token, cache reads and
//! writes included, and output counts reasoning. Anthropic and Bedrock report uncached
//! input apart from cache reads and writes; Gemini reports thinking apart from the answer.
//! Each is brought to the one convention where it is read, so that limits, budgets,
//! metrics, logs and spans all see the same figures, and each caller gets them back in
//! its own dialect's fields.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::raw::Pricing;

/// Tokens of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token, cache reads and writes included (OpenAI's `prompt_tokens`).
    pub input_tokens: u64,
    /// Every output token, reasoning included (OpenAI's `completion_tokens`).
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the provider's prompt cache (Anthropic and
    /// Bedrock bill them apart).
    pub cache_write_tokens: u64,
    /// Of `output_tokens`, those spent reasoning.
    pub reasoning_tokens: u64,
}

/// A usage object in any of the shapes callers and providers use: OpenAI chat
/// (`prompt_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`), OpenAI Responses (`input_tokens`,
/// `input_tokens_details`, `output_tokens_details`) and Anthropic (`input_tokens`
/// without the `cache_read_input_tokens` and `cache_creation_input_tokens` beside it).
#[derive(Debug, Default, Deserialize)]
pub struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
    #[serde(alias = "output_tokens_details")]
    completion_tokens_details: Option<Details>,
}

#[derive(Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    /// The gateway's own, in chat answers translated from providers that bill cache
    /// writes (OpenAI has none): so they survive the chat hub on the way to Anthropic's
    /// shape, and chat callers can see them.
    cache_write_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl RawUsage {
    /// Whether this report says anything about input (Anthropic's `message_delta` may
    /// carry only the output count).
    fn has_input(&self) -> bool {
        self.prompt_tokens.is_some()
            || self.input_tokens.is_some()
            || self.cache_creation_input_tokens.is_some()
            || self.cache_read_input_tokens.is_some()
    }
}

impl From<RawUsage> for Usage {
    fn from(u: RawUsage) -> Self {
        let mut out = Usage::default();
        out.merge(&u);
        out
    }
}

impl Usage {
    /// Reads a usage object (see [`RawUsage`]); unknown shapes count as zero.
    pub fn from_json(v: &Value) -> Self {
        RawUsage::deserialize(v).map(Usage::from).unwrap_or_default()
    }

    /// Takes in one report of a stream that reports in parts (Anthropic: input with
    /// `message_start`, cumulative output with each `message_delta`): what it names
    /// replaces what was known, what it leaves out stays.
    pub fn merge(&mut self, u: &RawUsage) {
        let cache_read = u
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(u.cache_read_input_tokens);
        let cache_write = u
            .cache_creation_input_tokens
            .or(u.prompt_tokens_details.as_ref().and_then(|d| d.cache_write_tokens));
        let input = match u.prompt_tokens {
            Some(p) => Some(p),
            // Anthropic's `input_tokens` is the uncached part.
            None if u.cache_read_input_tokens.is_some() || u.cache_creation_input_tokens.is_some() => Some(
                u.input_tokens.unwrap_or(0)
                    + u.cache_read_input_tokens.unwrap_or(0)
                    + u.cache_creation_input_tokens.unwrap_or(0),
            ),
            None => u.input_tokens,
        };
        // A zero input after a non-zero one is a later event's placeholder, not a count.
        if u.has_input() && input.unwrap_or(0) > 0 {
            self.input_tokens = input.unwrap_or(0);
            self.cache_read_tokens = cache_read.unwrap_or(0);
            self.cache_write_tokens = cache_write.unwrap_or(0);
        }
        if let Some(o) = u.completion_tokens.or(u.output_tokens) {
            self.output_tokens = o;
        }
        if let Some(r) = u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens) {
            self.reasoning_tokens = r;
        }
        self.clamp();
    }

    /// Parts never exceed their wholes, whatever a provider reports: a cache count larger
    /// than the input must not make the uncached input (and its cost) negative.
    pub fn clamp(&mut self) {
        self.cache_read_tokens = self.cache_read_tokens.min(self.input_tokens);
        self.cache_write_tokens = self.cache_write_tokens.min(self.input_tokens - self.cache_read_tokens);
        self.reasoning_tokens = self.reasoning_tokens.min(self.output_tokens);
    }

    /// Input tokens billed at the full input price.
    pub fn uncached_input(&self) -> u64 {
        self.input_tokens - self.cache_read_tokens - self.cache_write_tokens
    }

    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// OpenAI's `usage` object, with `prompt_tokens_details.cache_write_tokens` when the
    /// provider billed cache writes.
    pub fn to_chat(&self) -> Value {
        let mut v = json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        });
        if self.cache_write_tokens > 0 {
            v["prompt_tokens_details"]["cache_write_tokens"] = json!(self.cache_write_tokens);
        }
        v
    }

    /// Anthropic's `usage` object: input without the cache reads and writes beside it.
    pub fn to_messages(&self) -> Value {
        json!({
            "input_tokens": self.uncached_input(),
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "output_tokens": self.output_tokens,
        })
    }

    /// What these tokens cost in USD: uncached input at the input price, cache reads and
    /// writes at theirs (the input price when the model's pricing names none), output
    /// (reasoning included, once) at the output price.
    pub fn cost_usd(&self, p: &Pricing) -> f64 {
        let cached = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
        let write = p.cache_write_per_mtok.unwrap_or(p.input_per_mtok);
        (self.uncached_input() as f64 * p.input_per_mtok
            + self.cache_read_tokens as f64 * cached
            + self.cache_write_tokens as f64 * write
            + self.output_tokens as f64 * p.output_per_mtok)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(v: Value) -> Usage {
        Usage::from_json(&v)
    }

    #[test]
    fn every_dialect_reads_to_one_convention() {
        // OpenAI chat: cached tokens are part of the prompt.
        let u = usage(json!({"prompt_tokens": 100, "completion_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 60}, "completion_tokens_details": {"reasoning_tokens": 20}}));
        assert_eq!(
            u,
            Usage {
                input_tokens: 100,
                output_tokens: 30,
                cache_read_tokens: 60,
                cache_write_tokens: 0,
                reasoning_tokens: 20
            }
        );
        // Responses: the same, with other names.
        let r = usage(json!({"input_tokens": 100, "output_tokens": 30,
            "input_tokens_details": {"cached_tokens": 60}, "output_tokens_details": {"reasoning_tokens": 20}}));
        assert_eq!(r, u);
        // Anthropic: input_tokens is the uncached part.
        let a = usage(json!({"input_tokens": 10, "cache_read_input_tokens": 60,
            "cache_creation_input_tokens": 30, "output_tokens": 5}));
        assert_eq!(
            (a.input_tokens, a.cache_read_tokens, a.cache_write_tokens),
            (100, 60, 30)
        );
        assert_eq!(a.uncached_input(), 10);
        // And back: each caller's shape round-trips.
        assert_eq!(Usage::from_json(&a.to_messages()), a);
        assert_eq!(Usage::from_json(&u.to_chat()), u);
        // Cache writes survive the chat shape (the hub between Converse and Anthropic).
        assert_eq!(Usage::from_json(&a.to_chat()), a);
    }

    #[test]
    fn a_stream_report_in_parts_keeps_what_a_later_part_leaves_out() {
        let mut u = Usage::default();
        let part = |v: Value| RawUsage::deserialize(&v).unwrap();
        u.merge(&part(
            json!({"input_tokens": 4, "cache_read_input_tokens": 90, "output_tokens": 1}),
        ));
        u.merge(&part(json!({"output_tokens": 12})));
        assert_eq!((u.input_tokens, u.cache_read_tokens, u.output_tokens), (94, 90, 12));
        // A zero input in a later event is no count.
        u.merge(&part(json!({"input_tokens": 0, "output_tokens": 13})));
        assert_eq!((u.input_tokens, u.output_tokens), (94, 13));
    }

    #[test]
    fn parts_never_exceed_wholes() {
        let u = usage(json!({"prompt_tokens": 10, "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": 500}, "completion_tokens_details": {"reasoning_tokens": 9}}));
        assert_eq!(
            (u.cache_read_tokens, u.reasoning_tokens, u.uncached_input()),
            (10, 1, 0)
        );
    }

    #[test]
    fn cost_prices_each_part_once() {
        let p = Pricing {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 600_000,
            cache_write_tokens: 300_000,
            reasoning_tokens: 50_000,
        };
        // 100k uncached x 3 + 600k x 0.3 + 300k x 3.75 + 100k x 15 (reasoning inside).
        let want = 0.3 + 0.18 + 1.125 + 1.5;
        assert!((u.cost_usd(&p) - want).abs() < 1e-9, "{}", u.cost_usd(&p));
        // Without cache prices, cached tokens cost what input costs.
        let plain = Pricing {
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            ..p
        };
        assert!((u.cost_usd(&plain) - (3.0 + 1.5)).abs() < 1e-9);
    }
}
