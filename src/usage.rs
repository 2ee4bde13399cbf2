//! Token usage: one count for every dialect, read from each provider's report, written in
//! each caller's shape, and priced once.
//!
//! OpenAI's convention is the model: input counts every prompt token, cache reads and
//! writes included, and output counts reasoning. Anthropic and Bedrock report uncached
//! input apart from cache reads and writes; Gemini reports thinking apart from the answer.
//! Each is brought to the one convention where it is read, so that limits, budgets,
//! metrics, logs and spans all see the same figures, and each caller gets them back in
//! its own dialect's fields.

use serde::{Deserialize, Deserializer};
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
    /// The provider reported an input count that cannot be read (see [`Count`]):
    /// `input_tokens` holds only what could be, and the charge raises it to the estimate
    /// ([`Usage::estimated`]).
    pub input_unread: bool,
    /// The same for the output count.
    pub output_unread: bool,
    /// Images an image endpoint answered with.
    pub images: u64,
    /// Milliseconds of audio a transcription or translation read (OpenAI's
    /// `usage: {"type": "duration", "seconds": ...}`).
    pub audio_ms: u64,
    /// Of `input_tokens`, audio (the Realtime API, audio chat models).
    pub audio_input_tokens: u64,
    /// Of `output_tokens`, audio.
    pub audio_output_tokens: u64,
}

/// One token count of a provider's report, read defensively: a report is the provider's
/// (or a self-hosted server's) JSON, and one odd field must cost neither the rest of the
/// report nor the charge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Count {
    /// Not reported: absent, or `null`.
    #[default]
    Absent,
    /// Reported, but not a count: negative, fractional, past what a JSON number holds
    /// exactly, a string (`"12"` included), a bool, an array or an object.
    Unreadable,
    Tokens(u64),
}

/// Floats count up to here, where every integer is still exact (2^53).
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

impl Count {
    /// A non-negative integer, or a float with no fraction (`12.0`: some OpenAI-compatible
    /// servers write their counts from Python floats) up to 2^53.
    pub fn read(v: Option<&Value>) -> Self {
        match v {
            None | Some(Value::Null) => Self::Absent,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(t), _) => Self::Tokens(t),
                (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_FLOAT => Self::Tokens(f as u64),
                _ => Self::Unreadable,
            },
            Some(_) => Self::Unreadable,
        }
    }

    /// The count of `key` in `obj` (anything but an object has none).
    pub fn of(obj: &Value, key: &str) -> Self {
        Self::read(obj.get(key))
    }

    fn reported(self) -> bool {
        self != Self::Absent
    }

    /// As a part of a whole: an unreadable part is dropped (counted as none).
    fn or_zero(self) -> u64 {
        match self {
            Self::Tokens(t) => t,
            _ => 0,
        }
    }

    /// The first of two names for one figure that was reported.
    fn or(self, other: Self) -> Self {
        if self.reported() {
            self
        } else {
            other
        }
    }
}

/// A whole count (all input, all output) from the parts a report makes it of: their sum,
/// saturating (one huge part cannot wrap it to a small number), and whether any part
/// was unreadable, in which case the sum is what is known of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Whole {
    pub tokens: u64,
    pub reported: bool,
    pub unreadable: bool,
}

impl Whole {
    pub fn of(parts: &[Count]) -> Self {
        parts.iter().fold(Self::default(), |w, p| Self {
            tokens: w.tokens.saturating_add(p.or_zero()),
            reported: w.reported || p.reported(),
            unreadable: w.unreadable || *p == Count::Unreadable,
        })
    }
}

/// A usage object in any of the shapes callers and providers use: OpenAI chat
/// (`prompt_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`), OpenAI Responses (`input_tokens`,
/// `input_tokens_details`, `output_tokens_details`) and Anthropic (`input_tokens`
/// without the `cache_read_input_tokens` and `cache_creation_input_tokens` beside it).
/// Every field is read on its own ([`Count`]), so an odd one costs only itself.
#[derive(Debug, Default, PartialEq)]
pub struct RawUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    input_tokens: Count,
    output_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
    /// `prompt_tokens_details` (or `input_tokens_details`) `.cached_tokens`.
    cached_tokens: Count,
    /// `prompt_tokens_details.cache_write_tokens`: the gateway's own, in chat answers
    /// translated from providers that bill cache writes (OpenAI has none), so they
    /// survive the chat hub on the way to Anthropic's shape, and chat callers see them.
    cache_write_tokens: Count,
    /// `completion_tokens_details` (or `output_tokens_details`) `.reasoning_tokens`.
    reasoning_tokens: Count,
    /// The input and output details' `audio_tokens`.
    audio_input_tokens: Count,
    audio_output_tokens: Count,
    /// The report is there but is no object at all.
    unreadable: bool,
    /// `seconds` of a duration report (audio), in milliseconds.
    audio_ms: Option<u64>,
}

impl RawUsage {
    /// Reads a usage report; `null` reports nothing.
    pub fn read(v: &Value) -> Self {
        let Some(o) = v.as_object() else {
            return Self {
                unreadable: !v.is_null(),
                ..Self::default()
            };
        };
        let n = |k: &str| Count::read(o.get(k));
        let details = |a: &str, b: &str| o.get(a).filter(|d| !d.is_null()).or(o.get(b));
        // The Realtime API's `response.usage` says `input_token_details`.
        let prompt = details("prompt_tokens_details", "input_tokens_details")
            .filter(|d| !d.is_null())
            .or(o.get("input_token_details"));
        let completion = details("completion_tokens_details", "output_tokens_details")
            .filter(|d| !d.is_null())
            .or(o.get("output_token_details"));
        let sub = |d: Option<&Value>, k: &str| Count::read(d.and_then(|d| d.get(k)));
        Self {
            prompt_tokens: n("prompt_tokens"),
            completion_tokens: n("completion_tokens"),
            input_tokens: n("input_tokens"),
            output_tokens: n("output_tokens"),
            cache_creation_input_tokens: n("cache_creation_input_tokens"),
            cache_read_input_tokens: n("cache_read_input_tokens"),
            cached_tokens: sub(prompt, "cached_tokens"),
            cache_write_tokens: sub(prompt, "cache_write_tokens"),
            reasoning_tokens: sub(completion, "reasoning_tokens"),
            audio_input_tokens: sub(prompt, "audio_tokens"),
            audio_output_tokens: sub(completion, "audio_tokens"),
            unreadable: false,
            audio_ms: o.get("seconds").and_then(Self::audio_ms),
        }
    }

    /// A report that is there but is no object at all.
    fn not_an_object() -> Self {
        Self {
            unreadable: true,
            ..Self::default()
        }
    }

    /// `seconds` of a duration report, in milliseconds.
    fn audio_ms(seconds: &Value) -> Option<u64> {
        seconds
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            // Saturates: a day of audio is 8.64e7 ms; a bigger report is the provider's.
            .map(|s| (s * 1000.0).round().min(u64::MAX as f64) as u64)
    }

    /// All input: OpenAI's `prompt_tokens` (or Responses' `input_tokens`) counts it; beside
    /// Anthropic's cache counts, `input_tokens` is the uncached part and the three add up.
    fn input(&self) -> Whole {
        if self.prompt_tokens.reported() {
            Whole::of(&[self.prompt_tokens])
        } else if self.cache_read_input_tokens.reported() || self.cache_creation_input_tokens.reported() {
            Whole::of(&[
                self.input_tokens,
                self.cache_read_input_tokens,
                self.cache_creation_input_tokens,
            ])
        } else {
            Whole::of(&[self.input_tokens])
        }
    }

    fn output(&self) -> Whole {
        Whole::of(&[self.completion_tokens.or(self.output_tokens)])
    }
}

/// Reads the report whatever JSON it holds: a usage object is never the reason a whole
/// answer or event fails to parse. Exactly what [`RawUsage::read`] makes of the same JSON
/// as a [`Value`], in one pass over it: no map of the report (nor of its details) is
/// built, each value is read as a `Value` on its own (a number allocates nothing) and
/// the key it is under decides where it goes; a key given twice counts as the last one,
/// as in a `Value`'s map. Building the map was most of what reading a JSON answer's usage
/// cost (callgrind).
impl<'de> Deserialize<'de> for RawUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReportVisitor)
    }
}

/// The keys a usage report and its details objects are read by; any other is skipped.
#[derive(Clone, Copy)]
enum Key {
    PromptTokens,
    CompletionTokens,
    InputTokens,
    OutputTokens,
    CacheCreationInputTokens,
    CacheReadInputTokens,
    PromptTokensDetails,
    InputTokensDetails,
    InputTokenDetails,
    CompletionTokensDetails,
    OutputTokensDetails,
    OutputTokenDetails,
    Seconds,
    CachedTokens,
    CacheWriteTokens,
    ReasoningTokens,
    AudioTokens,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "prompt_tokens" => Key::PromptTokens,
                    "completion_tokens" => Key::CompletionTokens,
                    "input_tokens" => Key::InputTokens,
                    "output_tokens" => Key::OutputTokens,
                    "cache_creation_input_tokens" => Key::CacheCreationInputTokens,
                    "cache_read_input_tokens" => Key::CacheReadInputTokens,
                    "prompt_tokens_details" => Key::PromptTokensDetails,
                    "input_tokens_details" => Key::InputTokensDetails,
                    "input_token_details" => Key::InputTokenDetails,
                    "completion_tokens_details" => Key::CompletionTokensDetails,
                    "output_tokens_details" => Key::OutputTokensDetails,
                    "output_token_details" => Key::OutputTokenDetails,
                    "seconds" => Key::Seconds,
                    "cached_tokens" => Key::CachedTokens,
                    "cache_write_tokens" => Key::CacheWriteTokens,
                    "reasoning_tokens" => Key::ReasoningTokens,
                    "audio_tokens" => Key::AudioTokens,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// One details object's counts (`Value::get` on anything but an object finds none).
#[derive(Clone, Copy, Default)]
struct DetailCounts {
    cached_tokens: Count,
    cache_write_tokens: Count,
    reasoning_tokens: Count,
    audio_tokens: Count,
}

/// A details value: `null` is passed over when the first of two names is chosen
/// ([`RawUsage::read`]'s `filter(|d| !d.is_null())`), anything else is chosen.
#[derive(Clone, Copy)]
enum Details {
    Null,
    Counts(DetailCounts),
}

impl Details {
    fn counts(d: Option<Self>) -> DetailCounts {
        match d {
            Some(Self::Counts(c)) => c,
            Some(Self::Null) | None => DetailCounts::default(),
        }
    }

    /// The first of `a` and `b` that is there and not null, else `c` (as `read` chooses).
    fn choose(a: Option<Self>, b: Option<Self>, c: Option<Self>) -> DetailCounts {
        let present = |d: &Option<Self>| matches!(d, Some(Self::Counts(_)));
        if present(&a) {
            Self::counts(a)
        } else if present(&b) {
            Self::counts(b)
        } else {
            Self::counts(c)
        }
    }
}

/// Skips the rest of an array read as something that is not an object.
fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Value>()?.is_some() {}
    Ok(())
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DetailsVisitor;
        impl<'de> serde::de::Visitor<'de> for DetailsVisitor {
            type Value = Details;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Details, E> {
                Ok(Details::Null)
            }
            fn visit_none<E>(self) -> Result<Details, E> {
                Ok(Details::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Details, E> {
                Ok(Details::Counts(DetailCounts::default()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Details, E> {
                Ok(Details::Counts(DetailCounts::default()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Details, E> {
                Ok(Details::Counts(DetailCounts::default()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Details, E> {
                Ok(Details::Counts(DetailCounts::default()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Details, E> {
                Ok(Details::Counts(DetailCounts::default()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Details, A::Error> {
                skip_seq(seq).map(|()| Details::Counts(DetailCounts::default()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
                let mut c = DetailCounts::default();
                while let Some(k) = map.next_key::<Key>()? {
                    let v: Value = map.next_value()?;
                    let slot = match k {
                        Key::CachedTokens => &mut c.cached_tokens,
                        Key::CacheWriteTokens => &mut c.cache_write_tokens,
                        Key::ReasoningTokens => &mut c.reasoning_tokens,
                        Key::AudioTokens => &mut c.audio_tokens,
                        _ => continue,
                    };
                    *slot = Count::read(Some(&v));
                }
                Ok(Details::Counts(c))
            }
        }
        d.deserialize_any(DetailsVisitor)
    }
}

struct ReportVisitor;

impl<'de> serde::de::Visitor<'de> for ReportVisitor {
    type Value = RawUsage;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<RawUsage, E> {
        Ok(RawUsage::default())
    }
    fn visit_none<E>(self) -> Result<RawUsage, E> {
        Ok(RawUsage::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<RawUsage, E> {
        Ok(RawUsage::not_an_object())
    }
    fn visit_i64<E>(self, _: i64) -> Result<RawUsage, E> {
        Ok(RawUsage::not_an_object())
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawUsage, E> {
        Ok(RawUsage::not_an_object())
    }
    fn visit_f64<E>(self, _: f64) -> Result<RawUsage, E> {
        Ok(RawUsage::not_an_object())
    }
    fn visit_str<E>(self, _: &str) -> Result<RawUsage, E> {
        Ok(RawUsage::not_an_object())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawUsage, A::Error> {
        skip_seq(seq).map(|()| RawUsage::not_an_object())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawUsage, A::Error> {
        let mut u = RawUsage::default();
        let mut details: [Option<Details>; 6] = [None; 6];
        while let Some(k) = map.next_key::<Key>()? {
            let at = match k {
                Key::PromptTokensDetails => 0,
                Key::InputTokensDetails => 1,
                Key::InputTokenDetails => 2,
                Key::CompletionTokensDetails => 3,
                Key::OutputTokensDetails => 4,
                Key::OutputTokenDetails => 5,
                _ => {
                    let v: Value = map.next_value()?;
                    let slot = match k {
                        Key::PromptTokens => &mut u.prompt_tokens,
                        Key::CompletionTokens => &mut u.completion_tokens,
                        Key::InputTokens => &mut u.input_tokens,
                        Key::OutputTokens => &mut u.output_tokens,
                        Key::CacheCreationInputTokens => &mut u.cache_creation_input_tokens,
                        Key::CacheReadInputTokens => &mut u.cache_read_input_tokens,
                        Key::Seconds => {
                            u.audio_ms = RawUsage::audio_ms(&v);
                            continue;
                        }
                        _ => continue,
                    };
                    *slot = Count::read(Some(&v));
                    continue;
                }
            };
            details[at] = Some(map.next_value::<Details>()?);
        }
        let [pt, it, itk, ct, ot, otk] = details;
        let prompt = Details::choose(pt, it, itk);
        let completion = Details::choose(ct, ot, otk);
        u.cached_tokens = prompt.cached_tokens;
        u.cache_write_tokens = prompt.cache_write_tokens;
        u.audio_input_tokens = prompt.audio_tokens;
        u.reasoning_tokens = completion.reasoning_tokens;
        u.audio_output_tokens = completion.audio_tokens;
        Ok(u)
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
    /// Reads a usage object (see [`RawUsage`]).
    pub fn from_json(v: &Value) -> Self {
        RawUsage::read(v).into()
    }

    /// A usage from its wholes and parts, as Gemini and Converse report them: an
    /// unreadable part of a whole makes the whole unread (estimated when charged); an
    /// unreadable detail (cache reads and writes, reasoning) counts as none.
    pub fn from_parts(input: Whole, output: Whole, cache_read: Count, cache_write: Count, reasoning: Count) -> Self {
        let mut u = Usage {
            input_tokens: input.tokens,
            output_tokens: output.tokens,
            cache_read_tokens: cache_read.or_zero(),
            cache_write_tokens: cache_write.or_zero(),
            reasoning_tokens: reasoning.or_zero(),
            input_unread: input.unreadable,
            output_unread: output.unreadable,
            ..Usage::default()
        };
        u.clamp();
        u
    }

    /// A report that is there but is no usage object: nothing of it can be read.
    pub fn unreadable() -> Self {
        Usage {
            input_unread: true,
            output_unread: true,
            ..Usage::default()
        }
    }

    /// Takes in one report of a stream that reports in parts (Anthropic: input with
    /// `message_start`, cumulative output with each `message_delta`): what it names
    /// replaces what was known, what it leaves out stays. A count it names but that
    /// cannot be read replaces nothing: it marks the count unread, with what was known
    /// as its floor.
    pub fn merge(&mut self, u: &RawUsage) {
        if u.unreadable {
            self.input_unread = true;
            self.output_unread = true;
            return;
        }
        let input = u.input();
        if input.unreadable {
            self.input_unread = true;
            self.input_tokens = self.input_tokens.max(input.tokens);
        } else if input.reported && input.tokens > 0 {
            // (A zero input after a non-zero one is a later event's placeholder, not a
            // count.)
            self.input_tokens = input.tokens;
            self.input_unread = false;
            self.cache_read_tokens = u.cached_tokens.or(u.cache_read_input_tokens).or_zero();
            self.cache_write_tokens = u.cache_creation_input_tokens.or(u.cache_write_tokens).or_zero();
            self.audio_input_tokens = u.audio_input_tokens.or_zero();
        }
        let output = u.output();
        if output.unreadable {
            self.output_unread = true;
        } else if output.reported {
            self.output_tokens = output.tokens;
            self.output_unread = false;
            self.audio_output_tokens = u.audio_output_tokens.or_zero();
        }
        if let Count::Tokens(r) = u.reasoning_tokens {
            self.reasoning_tokens = r;
        }
        if let Some(ms) = u.audio_ms {
            self.audio_ms = ms;
        }
        self.clamp();
    }

    /// The usage to charge when the provider's count is not all known: with `cut` (no
    /// final count at all: a stream that ended before it, or a JSON answer without one),
    /// both counts are raised to at least their estimates; else only the counts that could
    /// not be read are. The input estimate is a token per four bytes of the request, the
    /// output one the caller's (see `SseState::output_estimate`, `JsonBody::output_estimate`). Providers bill what
    /// they read and generated: an odd or missing figure must not make a request free.
    pub fn estimated(self, request_bytes: usize, output_estimate: u64, cut: bool) -> Usage {
        let input_estimate = (request_bytes as u64).div_ceil(4);
        let mut u = Usage {
            input_tokens: if cut || self.input_unread {
                self.input_tokens.max(input_estimate)
            } else {
                self.input_tokens
            },
            output_tokens: if cut || self.output_unread {
                self.output_tokens.max(output_estimate)
            } else {
                self.output_tokens
            },
            input_unread: false,
            output_unread: false,
            ..self
        };
        u.clamp();
        u
    }

    /// Adds another report's counts (a realtime session's responses, one by one).
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(o.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
        self.images = self.images.saturating_add(o.images);
        self.audio_ms = self.audio_ms.saturating_add(o.audio_ms);
        self.audio_input_tokens = self.audio_input_tokens.saturating_add(o.audio_input_tokens);
        self.audio_output_tokens = self.audio_output_tokens.saturating_add(o.audio_output_tokens);
        self.input_unread |= o.input_unread;
        self.output_unread |= o.output_unread;
    }

    /// Whether a count could not be read and is to be estimated.
    pub fn unread(&self) -> bool {
        self.input_unread || self.output_unread
    }

    /// Parts never exceed their wholes, whatever a provider reports: a cache count larger
    /// than the input must not make the uncached input (and its cost) negative.
    pub fn clamp(&mut self) {
        self.cache_read_tokens = self.cache_read_tokens.min(self.input_tokens);
        self.cache_write_tokens = self.cache_write_tokens.min(self.input_tokens - self.cache_read_tokens);
        self.reasoning_tokens = self.reasoning_tokens.min(self.output_tokens);
        self.audio_input_tokens = self.audio_input_tokens.min(self.input_tokens);
        self.audio_output_tokens = self.audio_output_tokens.min(self.output_tokens);
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

    /// Gemini's `usageMetadata`: thinking beside the candidates' tokens, not in them.
    pub fn to_gemini(&self) -> Value {
        let mut v = json!({
            "promptTokenCount": self.input_tokens,
            "candidatesTokenCount": self.output_tokens - self.reasoning_tokens,
            "totalTokenCount": self.total(),
        });
        if self.reasoning_tokens > 0 {
            v["thoughtsTokenCount"] = json!(self.reasoning_tokens);
        }
        if self.cache_read_tokens > 0 {
            v["cachedContentTokenCount"] = json!(self.cache_read_tokens);
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

    /// What these tokens cost run in a batch: the normal price times the model's
    /// `pricing.batch_discount`.
    pub fn batch_cost_usd(&self, p: &Pricing) -> f64 {
        self.cost_usd(p) * p.batch_discount.unwrap_or(crate::raw::DEFAULT_BATCH_DISCOUNT)
    }

    /// What these tokens cost in USD: uncached input at the input price, cache reads and
    /// writes at theirs (the input price when the model's pricing names none), output
    /// (reasoning included, once) at the output price; images and audio minutes at theirs.
    pub fn cost_usd(&self, p: &Pricing) -> f64 {
        let cached = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
        let write = p.cache_write_per_mtok.unwrap_or(p.input_per_mtok);
        // Audio tokens are parts of the input and output counts, priced apart when the
        // model has audio prices; uncached input is read as audio first (cache reads keep
        // the cached price, whatever their modality).
        let audio_in = self.audio_input_tokens.min(self.uncached_input());
        let audio_out = self.audio_output_tokens.min(self.output_tokens);
        ((self.uncached_input() - audio_in) as f64 * p.input_per_mtok
            + audio_in as f64 * p.audio_input_per_mtok.unwrap_or(p.input_per_mtok)
            + self.cache_read_tokens as f64 * cached
            + self.cache_write_tokens as f64 * write
            + (self.output_tokens - audio_out) as f64 * p.output_per_mtok
            + audio_out as f64 * p.audio_output_per_mtok.unwrap_or(p.output_per_mtok))
            / 1e6
            + self.images as f64 * p.per_image
            + self.audio_ms as f64 / 60_000.0 * p.per_audio_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(v: Value) -> Usage {
        Usage::from_json(&v)
    }

    /// The one-pass reader ([`RawUsage`]'s `Deserialize`) makes of a report exactly what
    /// [`RawUsage::read`] makes of it as a `Value`, odd reports included; and both fail
    /// on the same broken JSON.
    #[test]
    fn the_one_pass_reader_reads_as_the_value_reader_does() {
        let reports = [
            r#"{"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 20, "audio_tokens": 3}}"#,
            r#"{"input_tokens": 10, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4},
                "output_tokens_details": {"reasoning_tokens": 1}}"#,
            r#"{"input_tokens": 10, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 3, "output_tokens": 2}"#,
            r#"{"input_token_details": {"cached_tokens": 9, "audio_tokens": 4}, "output_token_details": {"audio_tokens": 6}}"#,
            // The first name that is there and not null is the one read, else the third.
            r#"{"prompt_tokens_details": null, "input_tokens_details": {"cached_tokens": 8}}"#,
            r#"{"prompt_tokens_details": null, "input_tokens_details": null, "input_token_details": {"cached_tokens": 6}}"#,
            r#"{"prompt_tokens_details": {"cached_tokens": 1}, "input_tokens_details": {"cached_tokens": 8}}"#,
            r#"{"prompt_tokens_details": 5, "input_tokens_details": {"cached_tokens": 8}}"#,
            r#"{"prompt_tokens_details": [1, {"cached_tokens": 2}], "completion_tokens_details": "x"}"#,
            r#"{"completion_tokens_details": null, "output_tokens_details": null, "output_token_details": null}"#,
            // Odd counts: each costs only itself.
            r#"{"prompt_tokens": -1, "completion_tokens": 12.0, "input_tokens": 1.5, "output_tokens": "7"}"#,
            r#"{"prompt_tokens": 18446744073709551615, "completion_tokens": 18446744073709551616,
                "cache_read_input_tokens": 9007199254740993.0, "cache_creation_input_tokens": true}"#,
            r#"{"prompt_tokens": [1], "completion_tokens": {"n": 1}, "input_tokens": null, "output_tokens": -0}"#,
            r#"{"prompt_tokens_details": {"cached_tokens": -3, "cache_write_tokens": 4, "audio_tokens": "1"}}"#,
            // A key given twice counts as the last one; escaped keys are the same keys.
            r#"{"prompt_tokens": 1, "prompt_tokens": 2, "prompt\u005ftokens": 3}"#,
            r#"{"prompt_tokens_details": {"cached_tokens": 1}, "prompt_tokens_details": null,
                "input_tokens_details": {"cached_tokens": 5}}"#,
            r#"{"seconds": 1.25, "type": "duration"}"#,
            r#"{"seconds": 1.25, "seconds": "2"}"#,
            r#"{"seconds": -1}"#,
            r#"{"seconds": 1e300}"#,
            r#"{"seconds": 17}"#,
            r#"{"nested": {"prompt_tokens": 5, "deep": [{"x": null}]}, "prompt_tokens": 4}"#,
            // Not objects.
            "null",
            "12",
            "\"12\"",
            "[1, 2, {\"prompt_tokens\": 1}]",
            "true",
            "{}",
            // Broken: both fail.
            r#"{"prompt_tokens": 1e999}"#,
            r#"{"prompt_tokens": 1,}"#,
            r#"{"x": "\ud800"}"#,
            r#"{"prompt_tokens_details": {"cached_tokens": 1"#,
        ];
        for r in reports {
            let one_pass = serde_json::from_str::<RawUsage>(r).map_err(|e| e.to_string());
            let via_value = serde_json::from_str::<Value>(r)
                .map(|v| RawUsage::read(&v))
                .map_err(|e| e.to_string());
            assert_eq!(
                one_pass.is_ok(),
                via_value.is_ok(),
                "{r}: {one_pass:?} against {via_value:?}"
            );
            if let (Ok(a), Ok(b)) = (one_pass, via_value) {
                assert_eq!(a, b, "{r}");
            }
        }
        // Also when read from a Value (as Anthropic's stream events are).
        let v: Value = serde_json::from_str(reports[0]).unwrap();
        assert_eq!(RawUsage::deserialize(&v).unwrap(), RawUsage::read(&v));
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
                reasoning_tokens: 20,
                ..Usage::default()
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
            per_image: 0.04,
            per_audio_minute: 0.006,
            batch_discount: None,
            audio_input_per_mtok: None,
            audio_output_per_mtok: None,
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 600_000,
            cache_write_tokens: 300_000,
            reasoning_tokens: 50_000,
            ..Usage::default()
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
        // A batch costs half by default, or the model's own share.
        assert!((u.batch_cost_usd(&plain) - (3.0 + 1.5) / 2.0).abs() < 1e-9);
        let quarter = Pricing {
            batch_discount: Some(0.25),
            ..plain
        };
        assert!((u.batch_cost_usd(&quarter) - (3.0 + 1.5) / 4.0).abs() < 1e-9);
        // Images and audio minutes at their own prices, beside any tokens.
        let media = Usage {
            images: 3,
            audio_ms: 90_000,
            ..Usage::default()
        };
        assert!((media.cost_usd(&p) - (3.0 * 0.04 + 1.5 * 0.006)).abs() < 1e-12);
    }

    #[test]
    fn realtime_audio_tokens_are_priced_apart_when_the_model_says_so() {
        // A Realtime API `response.usage`: its details say `input_token_details`.
        let u = usage(
            json!({"total_tokens": 1_400_000, "input_tokens": 1_000_000, "output_tokens": 400_000,
            "input_token_details": {"cached_tokens": 200_000, "text_tokens": 500_000, "audio_tokens": 500_000},
            "output_token_details": {"text_tokens": 100_000, "audio_tokens": 300_000}}),
        );
        assert_eq!(
            (u.cache_read_tokens, u.audio_input_tokens, u.audio_output_tokens),
            (200_000, 500_000, 300_000)
        );
        let p = Pricing {
            input_per_mtok: 4.0,
            output_per_mtok: 16.0,
            cached_input_per_mtok: Some(0.4),
            cache_write_per_mtok: None,
            per_image: 0.0,
            per_audio_minute: 0.0,
            audio_input_per_mtok: Some(32.0),
            audio_output_per_mtok: Some(64.0),
            batch_discount: None,
        };
        // 300k text x 4 + 500k audio x 32 + 200k cached x 0.4 + 100k text x 16 + 300k audio x 64.
        let want = 1.2 + 16.0 + 0.08 + 1.6 + 19.2;
        assert!((u.cost_usd(&p) - want).abs() < 1e-9, "{}", u.cost_usd(&p));
        // Without audio prices, audio costs what text costs.
        let plain = Pricing {
            audio_input_per_mtok: None,
            audio_output_per_mtok: None,
            ..p
        };
        assert!(
            (u.cost_usd(&plain) - (3.2 + 0.08 + 6.4)).abs() < 1e-9,
            "{}",
            u.cost_usd(&plain)
        );
    }

    #[test]
    fn audio_seconds_are_read_from_a_duration_report() {
        let u = usage(json!({"type": "duration", "seconds": 7.25}));
        assert_eq!((u.audio_ms, u.input_tokens), (7250, 0));
        let t = usage(json!({"type": "tokens", "input_tokens": 14, "output_tokens": 45, "total_tokens": 59}));
        assert_eq!((t.input_tokens, t.output_tokens, t.audio_ms), (14, 45, 0));
        // What is not a duration counts none; a huge one saturates, never wraps.
        for (odd, ms) in [
            (json!(-1), 0),
            (json!("7"), 0),
            (json!(null), 0),
            (json!(1e300), u64::MAX),
        ] {
            assert_eq!(usage(json!({"type": "duration", "seconds": odd})).audio_ms, ms, "{odd}");
        }
    }

    #[test]
    fn counts_are_read_one_by_one() {
        let c = |v: Value| Count::read(Some(&v));
        assert_eq!(c(json!(12)), Count::Tokens(12));
        assert_eq!(c(json!(u64::MAX)), Count::Tokens(u64::MAX));
        // A float with no fraction is a count (servers that count in Python floats)...
        assert_eq!(c(json!(12.0)), Count::Tokens(12));
        assert_eq!(c(json!(0.0)), Count::Tokens(0));
        // ...nothing else is.
        for odd in [
            json!(-1),
            json!(0.5),
            json!(1e30),
            json!("0"),
            json!("12"),
            json!(true),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(c(odd.clone()), Count::Unreadable, "{odd}");
        }
        assert_eq!(Count::read(None), Count::Absent);
        assert_eq!(c(Value::Null), Count::Absent);
    }

    #[test]
    fn an_odd_detail_costs_only_itself() {
        // OpenAI chat and Responses: the cache and reasoning details are parts of their
        // wholes; an odd one counts as none and the rest of the report stands.
        for odd in [json!(-1), json!(0.5), json!("0"), json!(null), json!({"n": 1})] {
            let u = usage(json!({"prompt_tokens": 100, "completion_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": odd, "cache_write_tokens": odd},
                "completion_tokens_details": {"reasoning_tokens": odd}}));
            assert_eq!(
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_tokens,
                    u.reasoning_tokens,
                    u.unread()
                ),
                (100, 30, 0, 0, false),
                "{odd}"
            );
            let r = usage(json!({"input_tokens": 100, "output_tokens": 30,
                "input_tokens_details": odd, "output_tokens_details": {"reasoning_tokens": odd}}));
            assert_eq!((r.input_tokens, r.output_tokens, r.unread()), (100, 30, false), "{odd}");
        }
        // `reasoning_tokens: 0.0` is a zero, `"0"` is not a count: neither zeroes the rest.
        let u = usage(json!({"prompt_tokens": 7, "completion_tokens": 3,
            "completion_tokens_details": {"reasoning_tokens": 0.0}}));
        assert_eq!((u.input_tokens, u.output_tokens, u.reasoning_tokens), (7, 3, 0));
    }

    #[test]
    fn an_odd_whole_is_estimated_and_never_zero() {
        // A top-level count that cannot be read marks that count unread, with what is
        // known as its floor; the charge raises it to the estimate.
        let u = usage(json!({"prompt_tokens": "120", "completion_tokens": 30}));
        assert!(u.input_unread && !u.output_unread);
        let charged = u.estimated(4000, 999, false);
        assert_eq!((charged.input_tokens, charged.output_tokens), (1000, 30));
        assert!(!charged.unread());
        let u = usage(json!({"prompt_tokens": 12, "completion_tokens": -1}));
        assert_eq!(u.estimated(4000, 50, false).output_tokens, 50);
        // Anthropic's input is the sum of three counts: one odd count makes it unread,
        // the others its floor.
        let a = usage(json!({"input_tokens": 10, "cache_read_input_tokens": -1,
            "cache_creation_input_tokens": 30, "output_tokens": 5}));
        assert!(a.input_unread);
        assert_eq!(a.input_tokens, 40);
        assert_eq!(
            a.estimated(40, 0, false).input_tokens,
            40,
            "the floor wins over a smaller estimate"
        );
        // A report that is no object at all: both counts are estimated.
        for odd in [json!("lots"), json!(12), json!([])] {
            let u = Usage::from_json(&odd);
            assert!(u.input_unread && u.output_unread, "{odd}");
            let charged = u.estimated(400, 20, false);
            assert_eq!((charged.input_tokens, charged.output_tokens), (100, 20));
        }
        // Deserialized inside an event or an answer, an odd report reads the same.
        #[derive(Deserialize)]
        struct Answer {
            usage: Option<RawUsage>,
        }
        let a: Answer = serde_json::from_str(r#"{"usage": {"prompt_tokens": 9, "completion_tokens": "2"}}"#).unwrap();
        let u = Usage::from(a.usage.unwrap());
        assert_eq!((u.input_tokens, u.output_unread), (9, true));
    }

    #[test]
    fn huge_counts_saturate_instead_of_wrapping() {
        let a = usage(json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": u64::MAX, "output_tokens": u64::MAX}));
        assert_eq!((a.input_tokens, a.total()), (u64::MAX, u64::MAX));
        assert!(a.uncached_input() <= a.input_tokens);
        assert!(a
            .cost_usd(&Pricing {
                input_per_mtok: 1.0,
                output_per_mtok: 1.0,
                cached_input_per_mtok: None,
                cache_write_per_mtok: None,
                per_image: 1.0,
                per_audio_minute: 1.0,
                batch_discount: None,
                audio_input_per_mtok: Some(1.0),
                audio_output_per_mtok: Some(1.0),
            })
            .is_finite());
        let p = Usage::from_parts(
            Whole::of(&[Count::Tokens(u64::MAX), Count::Tokens(2)]),
            Whole::of(&[Count::Tokens(u64::MAX), Count::Tokens(u64::MAX)]),
            Count::Tokens(u64::MAX),
            Count::Absent,
            Count::Tokens(3),
        );
        assert_eq!(
            (p.input_tokens, p.output_tokens, p.cache_read_tokens),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        assert_eq!(p.estimated(usize::MAX, u64::MAX, true).total(), u64::MAX);
    }

    #[test]
    fn a_stream_report_that_cannot_be_read_replaces_nothing() {
        let mut u = Usage::default();
        u.merge(&RawUsage::read(&json!({"input_tokens": 40, "output_tokens": 1})));
        u.merge(&RawUsage::read(&json!({"input_tokens": -3, "output_tokens": "12"})));
        assert_eq!((u.input_tokens, u.output_tokens), (40, 1));
        assert!(u.input_unread && u.output_unread);
        // A later readable report clears it.
        u.merge(&RawUsage::read(&json!({"output_tokens": 12})));
        assert_eq!((u.output_tokens, u.output_unread), (12, false));
    }
}
