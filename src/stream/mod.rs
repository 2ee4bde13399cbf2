//! Streamed and whole responses: SSE framing, token usage extraction, and removal of the
//! usage chunk the gateway asked for on the caller's behalf.
//!
//! Events are forwarded as soon as they are complete. A chunk that ends on an event
//! boundary (the usual case) is forwarded as the same `Bytes`, without a copy; only an
//! event split across chunks is held back until its end arrives.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem::{Finder, FinderRev};
use serde::Deserialize;

use crate::usage::{RawUsage, Usage};

pub mod translate;

// Searchers built once: `memmem::find` builds one on every call, which showed up in
// profiles of streams, where every event is searched.
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
pub(crate) static USAGE_KEY_REV: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"usage\""));
static DONE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"[DONE]"));
static MESSAGE_STOP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"message_stop"));
static RESPONSE_COMPLETED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"response.completed\""));
static RESPONSE_INCOMPLETE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"response.incomplete\""));

/// The bytes after the colon of a `"usage"` key found at `at`, or None when what was found
/// is not a key: inside a JSON string the quotes would be escaped, and a `"usage"` string
/// value has no colon after it.
pub(crate) fn usage_value(json: &[u8], at: usize) -> Option<&[u8]> {
    json[at + b"\"usage\"".len()..].trim_ascii_start().strip_prefix(b":")
}

/// Whether an event has a `"usage"` key holding an object. OpenAI streams that were asked
/// for usage carry `"usage":null` in every chunk and numbers only in the last; parsing
/// every chunk was most of what a stream cost the gateway (callgrind).
fn carries_usage(event: &[u8]) -> bool {
    USAGE_KEY
        .find_iter(event)
        .any(|at| usage_value(event, at).is_some_and(|v| v.trim_ascii_start().first() == Some(&b'{')))
}

#[derive(Deserialize)]
pub(crate) struct UsageOnly {
    pub(crate) usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    choices: Option<Vec<serde::de::IgnoredAny>>,
    usage: Option<RawUsage>,
}

/// The end of the first complete event in `buf` (just past its blank line), if any.
/// Accepts `\n\n`, `\r\n\r\n` and mixed line endings, as the SSE spec does.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// The `data:` payload of one event (several data lines joined by `\n`). An event of one
/// data line, nearly every event, is borrowed: this runs for every event of every stream.
pub fn event_data(event: &[u8]) -> Cow<'_, [u8]> {
    fn data_of(line: &[u8]) -> Option<&[u8]> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(b"data:")?;
        Some(rest.strip_prefix(b" ").unwrap_or(rest))
    }
    let mut lines = event.split(|&b| b == b'\n').filter_map(data_of);
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = Vec::with_capacity(first.len() + second.len() + 1);
    out.extend_from_slice(first);
    for line in std::iter::once(second).chain(lines) {
        out.push(b'\n');
        out.extend_from_slice(line);
    }
    Cow::Owned(out)
}

/// Appends one SSE event: an `event:` line when `name` is given, then the JSON `data:`.
pub fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &serde_json::Value) {
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Serializing a Value cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// A stream translation from the provider's dialect to the caller's, one upstream
/// event's `data:` payload at a time.
pub trait Translate: std::fmt::Debug + Send + Sync {
    /// One upstream event -> zero or more caller events appended to `out`.
    fn event(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The upstream stream ended: a clean ending, or an error event when the provider's
    /// stream broke off before its own end marker.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Tokens reported so far.
    fn usage(&self) -> Usage;
    /// The provider's own end marker arrived: [`Self::usage`] is its final count.
    fn complete(&self) -> bool;
}

/// How the events of one response are handled.
#[derive(Debug)]
pub enum Mode {
    /// OpenAI-style passthrough; optionally drop the usage chunk the gateway asked for.
    OpenAi { strip_usage: bool },
    /// Anthropic passthrough: usage from `message_start` and `message_delta`.
    Anthropic,
    /// OpenAI Responses passthrough: usage from the final `response.completed` (or
    /// `response.incomplete`) event.
    Responses,
    /// Every event is translated into the caller's dialect.
    Translate(Box<dyn Translate>),
}

/// Per-response state of an SSE stream.
#[derive(Debug)]
pub struct SseState {
    carry: BytesMut,
    mode: Mode,
    pub usage: Option<Usage>,
    /// The provider's end marker arrived (`[DONE]`, `message_stop`, `response.completed`).
    saw_done: bool,
    /// An event passed [`MAX_EVENT_BYTES`].
    overflow: bool,
    /// The provider's final usage arrived (it may come before the end marker).
    usage_final: bool,
    /// Events seen, their bytes, and the smallest (what an event costs without text):
    /// the estimate of a stream cut before its usage.
    events: u64,
    event_bytes: u64,
    smallest_event: u64,
    /// How the upstream's bytes are cut into events.
    framing: Framing,
    /// SSE: the last chunk ended in a CR (a line end, whatever follows).
    pending_cr: bool,
    /// SSE: bytes have arrived (a byte-order mark is read only at the start), and the
    /// first ones while they may still be one.
    started: bool,
    head: Vec<u8>,
}

/// The largest SSE event a stream may carry (a Gemini image inline is a few MiB); beyond
/// it the stream ends with an error event.
pub const MAX_EVENT_BYTES: usize = 8 << 20;

impl SseState {
    pub fn new(strip_usage: bool) -> Self {
        Self::with_mode(Mode::OpenAi { strip_usage })
    }

    pub fn with_mode(mode: Mode) -> Self {
        Self {
            carry: BytesMut::new(),
            mode,
            usage: None,
            saw_done: false,
            overflow: false,
            usage_final: false,
            events: 0,
            event_bytes: 0,
            smallest_event: u64::MAX,
            framing: Framing::Sse,
            pending_cr: false,
            started: false,
            head: Vec::new(),
        }
    }

    /// Line ends as the SSE spec reads them (CRLF, LF or a lone CR) become LF, and a
    /// byte-order mark at the start of the stream goes, before anything reads the events:
    /// every reader in the gateway (usage, translation, the guardrails) splits lines at LF,
    /// and a caller's SDK that also ends lines at a lone CR must read no line they did not.
    fn normalize(&mut self, mut chunk: Bytes) -> Bytes {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if !self.started && self.head.is_empty() && chunk.len() >= BOM.len() {
            self.started = true;
            if chunk.starts_with(BOM) {
                chunk = chunk.slice(BOM.len()..);
            }
        }
        if !self.started {
            // The first bytes wait until they are known to start with a mark or not.
            let mut head = std::mem::take(&mut self.head);
            head.extend_from_slice(&chunk);
            if head.len() < BOM.len() && BOM.starts_with(&head) {
                self.head = head;
                return Bytes::new();
            }
            self.started = true;
            chunk = Bytes::from(head);
            if chunk.starts_with(BOM) {
                chunk = chunk.slice(BOM.len()..);
            }
        }
        if !self.pending_cr && memchr::memchr(b'\r', &chunk).is_none() {
            return chunk;
        }
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk.iter() {
            if std::mem::take(&mut self.pending_cr) {
                out.push(b'\n');
                if b == b'\n' {
                    continue;
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
        Bytes::from(out)
    }

    /// The upstream answers in AWS's event stream (a translating mode only).
    pub fn decode_event_stream(&mut self) {
        self.framing = Framing::AwsEvents(Default::default());
    }

    /// [`Self::feed`] for AWS's event stream: whole frames are decoded (length-prefixed,
    /// CRC-checked) and translated; a partial one waits in `carry`, which may grow to
    /// [`MAX_EVENT_BYTES`] by the bytes that arrived, whatever length a frame declares.
    fn feed_frames(&mut self, chunk: Bytes) -> Bytes {
        use aws_smithy_eventstream::frame::DecodedFrame;
        if !matches!(self.framing, Framing::AwsEvents(_)) {
            // After a broken frame nothing more is read.
            return Bytes::new();
        }
        self.carry.extend_from_slice(&chunk);
        let mut out = Vec::new();
        while let Framing::AwsEvents(decoder) = &mut self.framing {
            let data = match decoder.decode_frame(&mut self.carry) {
                Ok(DecodedFrame::Incomplete) => break,
                Ok(DecodedFrame::Complete(m)) => {
                    self.events += 1;
                    self.event_bytes += m.payload().len() as u64;
                    self.smallest_event = self.smallest_event.min(m.payload().len() as u64);
                    converse_event(&m)
                }
                Err(_) => {
                    // A frame that fails its checks: nothing after it can be trusted.
                    self.framing = Framing::Broken;
                    self.carry = BytesMut::new();
                    b"{\"exception\":{\"message\":\"The provider sent a malformed stream frame.\"}}".to_vec()
                }
            };
            if let Mode::Translate(t) = &mut self.mode {
                t.event(&data, &mut out);
                self.usage = Some(t.usage());
            }
        }
        if self.carry.len() > MAX_EVENT_BYTES {
            self.overflow = true;
            self.carry = BytesMut::new();
        }
        Bytes::from(out)
    }

    /// Takes the next chunk from upstream; returns what to send to the caller now.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.overflow {
            return Bytes::new();
        }
        if !matches!(self.framing, Framing::Sse) {
            return self.feed_frames(chunk);
        }
        let chunk = self.normalize(chunk);
        let data = if self.carry.is_empty() {
            chunk
        } else {
            // An event still incomplete stays in `carry` (appended to, never copied back and
            // forth): only the bytes that just arrived, and the two before them, can hold
            // its end.
            let from = self.carry.len().saturating_sub(2);
            let mut seam = self.carry[from..].to_vec();
            seam.extend_from_slice(&chunk[..chunk.len().min(2)]);
            let ends = event_end(&seam).is_some() || event_end(&chunk).is_some();
            if !ends {
                // Checked before the bytes are kept: the limit bounds what is allocated.
                if self.carry.len() + chunk.len() > MAX_EVENT_BYTES {
                    self.overflow = true;
                    self.carry = BytesMut::new();
                } else {
                    self.carry.extend_from_slice(&chunk);
                }
                return Bytes::new();
            }
            self.carry.extend_from_slice(&chunk);
            self.carry.split().freeze()
        };
        let mut pos = 0;
        let translating = matches!(self.mode, Mode::Translate(_));
        // Passthrough output is a slice of `data` until an event is dropped; translated
        // output is always built anew.
        let mut rebuilt: Option<BytesMut> = translating.then(BytesMut::new);
        let mut scratch = Vec::new();
        while let Some(len) = event_end(&data[pos..]) {
            let event = &data[pos..pos + len];
            self.events += 1;
            self.event_bytes += len as u64;
            self.smallest_event = self.smallest_event.min(len as u64);
            if translating {
                scratch.clear();
                self.translate(event, &mut scratch);
                if let Some(out) = rebuilt.as_mut() {
                    out.extend_from_slice(&scratch);
                }
            } else {
                let keep = self.inspect(event);
                match (&mut rebuilt, keep) {
                    (Some(out), true) => out.extend_from_slice(event),
                    (None, false) => rebuilt = Some(BytesMut::from(&data[..pos])),
                    _ => {}
                }
            }
            pos += len;
        }
        if pos < data.len() {
            self.carry.extend_from_slice(&data[pos..]);
            self.check_size();
        }
        match rebuilt {
            Some(out) => out.freeze(),
            None => data.slice(..pos),
        }
    }

    /// An event that grows past [`MAX_EVENT_BYTES`] without its end: the stream is broken
    /// (or hostile). Nothing more is read or buffered; the response ends with an error.
    fn check_size(&mut self) {
        if self.carry.len() > MAX_EVENT_BYTES {
            self.overflow = true;
            self.carry = BytesMut::new();
        }
    }

    /// Whether an event went past [`MAX_EVENT_BYTES`].
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Whether the provider's stream reached its own end marker. A stream that ends
    /// before it is broken (and must not pass for a clean finish).
    pub fn complete(&self) -> bool {
        match &self.mode {
            Mode::Translate(t) => t.complete(),
            _ => self.saw_done,
        }
    }

    /// The output tokens of what was streamed so far, without parsing it (a stream is cut
    /// rarely, its events counted always): a token per event (OpenAI sends one per chunk,
    /// whatever padding it adds), or a token per four bytes of what the events carry beyond
    /// the smallest one's size (Anthropic and Gemini send several tokens per event),
    /// whichever is more.
    pub fn output_estimate(&self) -> u64 {
        let beyond = self
            .event_bytes
            .saturating_sub(self.events.saturating_mul(self.smallest_event.min(self.event_bytes)));
        self.events.max(beyond.div_ceil(4))
    }

    /// Whether the provider's final usage arrived. A stream cut before it (the caller
    /// hung up, the provider broke off) has at most part of its usage.
    pub fn usage_final(&self) -> bool {
        self.usage_final || self.complete()
    }

    /// Whether the events pass through untranslated (a translator ends a broken stream
    /// with its own error event).
    pub fn passthrough(&self) -> bool {
        !matches!(self.mode, Mode::Translate(_))
    }

    /// At the end of the stream: a passthrough stream's incomplete last event is passed on
    /// as it is; a translated stream that did not end properly ends with an error event.
    pub fn finish(&mut self) -> Bytes {
        let head = std::mem::take(&mut self.head);
        self.carry.extend_from_slice(&head);
        if std::mem::take(&mut self.pending_cr) {
            self.carry.extend_from_slice(b"\n");
        }
        let rest = self.carry.split().freeze();
        if let Mode::Translate(t) = &mut self.mode {
            let mut out = Vec::new();
            // A partial binary frame is no event: the translator ends the stream.
            if !rest.is_empty() && matches!(self.framing, Framing::Sse) {
                t.event(&event_data(&rest), &mut out);
            }
            t.finish(&mut out);
            self.usage = Some(t.usage());
            return Bytes::from(out);
        }
        if !rest.is_empty() {
            self.inspect(&rest);
        }
        rest
    }

    fn translate(&mut self, event: &[u8], out: &mut Vec<u8>) {
        if let Mode::Translate(t) = &mut self.mode {
            t.event(&event_data(event), out);
            self.usage = Some(t.usage());
        }
    }

    /// Records usage and the end marker; returns false when the event must not reach the
    /// caller.
    fn inspect(&mut self, event: &[u8]) -> bool {
        match self.mode {
            Mode::Anthropic => {
                if MESSAGE_STOP.find(event).is_some() {
                    self.saw_done = true;
                }
                if carries_usage(event) {
                    if let Ok(ev) = serde_json::from_slice::<AnthropicUsageEvent>(&event_data(event)) {
                        let u = self.usage.get_or_insert_with(Usage::default);
                        // `message_delta` carries the final output count.
                        self.usage_final |= ev.usage.is_some();
                        if let Some(raw) = ev.message.map(|m| m.usage).or(ev.usage) {
                            u.merge(&raw);
                        }
                    }
                }
                true
            }
            Mode::OpenAi { strip_usage } => {
                if DONE.find(event).is_some() && *event_data(event) == *b"[DONE]" {
                    self.saw_done = true;
                    return true;
                }
                // Cheap pre-check: only events that carry a usage object are parsed.
                if !carries_usage(event) {
                    return true;
                }
                let Ok(chunk) = serde_json::from_slice::<ChunkUsage>(&event_data(event)) else {
                    return true;
                };
                let Some(u) = chunk.usage else { return true };
                // The usage chunk comes last, with the final counts.
                self.usage = Some(u.into());
                self.usage_final = true;
                let usage_only = chunk.choices.is_none_or(|c| c.is_empty());
                !(strip_usage && usage_only)
            }
            Mode::Responses => {
                let last = RESPONSE_COMPLETED.find(event).is_some() || RESPONSE_INCOMPLETE.find(event).is_some();
                if last {
                    self.saw_done = true;
                    if let Ok(ev) = serde_json::from_slice::<ResponsesEvent>(&event_data(event)) {
                        self.usage = ev.response.and_then(|r| r.usage).map(Usage::from);
                    }
                }
                true
            }
            Mode::Translate(_) => true,
        }
    }
}

#[derive(Deserialize)]
struct ResponsesEvent {
    response: Option<UsageOnly>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    usage: RawUsage,
}

#[derive(Deserialize)]
struct AnthropicUsageEvent {
    message: Option<AnthropicMessage>,
    usage: Option<RawUsage>,
}

/// How an upstream's bytes are cut into events.
#[derive(Debug, Default)]
enum Framing {
    /// Server-sent events (every provider but Bedrock).
    #[default]
    Sse,
    /// AWS's binary event stream (Bedrock): frames are decoded here and each message
    /// reaches the translator as `{"<event type>": payload}`.
    AwsEvents(aws_smithy_eventstream::frame::MessageFrameDecoder),
    /// A frame failed its checks: the rest of the stream is dropped.
    Broken,
}

/// One message of AWS's event stream as the JSON a Converse translator reads: an event
/// as `{"<:event-type>": payload}` (the ConverseStream output union), an exception or
/// error as `{"exception": {"type", "message"}}`. An event's payload is spliced in as it
/// came: the translator's own parse is the one that checks it.
fn converse_event(m: &aws_smithy_types::event_stream::Message) -> Vec<u8> {
    let header = |name: &str| {
        m.headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str().to_owned())
    };
    let v = match header(":message-type").as_deref() {
        Some("event") => {
            let name = serde_json::to_string(&header(":event-type").unwrap_or_default()).unwrap_or_default();
            let mut out = Vec::with_capacity(name.len() + m.payload().len() + 3);
            out.push(b'{');
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(m.payload());
            out.push(b'}');
            return out;
        }
        Some("exception") => {
            let payload: serde_json::Value = serde_json::from_slice(m.payload()).unwrap_or_default();
            serde_json::json!({"exception": {
            "type": header(":exception-type"),
                "message": payload["message"].as_str().or(payload["Message"].as_str())
                    .unwrap_or("The provider reported an error mid-stream."),
            }})
        }
        _ => serde_json::json!({"exception": {
            "type": header(":error-code"),
            "message": header(":error-message").unwrap_or_else(|| "The provider reported an error mid-stream.".into()),
        }}),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod estimate_tests {
    use super::*;

    #[test]
    fn streamed_output_is_estimated_from_events_and_their_bytes() {
        // OpenAI: a token per chunk, however padded (`obfuscation`) the chunks are.
        let mut s = SseState::new(false);
        for i in 0..30 {
            let pad = "x".repeat(i % 7 * 10);
            s.feed(Bytes::from(format!(
                "data: {{\"obfuscation\":\"{pad}\",\"choices\":[{{\"delta\":{{\"content\":\"ab\"}}}}]}}\n\n"
            )));
        }
        assert!(s.output_estimate() >= 30, "{}", s.output_estimate());
        // Anthropic: a few large deltas carry many tokens; their bytes count.
        let mut s = SseState::with_mode(Mode::Anthropic);
        s.feed(Bytes::from_static(b"event: ping\ndata: {\"type\":\"ping\"}\n\n"));
        for _ in 0..3 {
            let text = "word ".repeat(80);
            s.feed(Bytes::from(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n")));
        }
        assert!(s.output_estimate() >= 200, "{}", s.output_estimate());
        let u = Usage {
            input_tokens: 100,
            output_tokens: 0,
            ..Usage::default()
        }
        .estimated(40, 11, true);
        assert_eq!(
            u,
            Usage {
                input_tokens: 100,
                output_tokens: 11,
                ..Usage::default()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, SseState) {
        let mut s = SseState::new(strip);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&s.finish());
        (out, s)
    }

    /// A lone CR ends a line for the caller's SDK as it does in the SSE spec, and a
    /// byte-order mark at the start is not part of the first line: every reader here
    /// sees the lines the caller will, whatever the provider's line ends or chunking.
    #[test]
    fn line_ends_and_a_byte_order_mark_read_as_the_caller_reads_them() {
        let lf = STREAM.as_bytes();
        let cr = STREAM.replace('\n', "\r");
        let crlf = STREAM.replace('\n', "\r\n");
        let bom = format!("\u{FEFF}{STREAM}");
        for variant in [cr.as_bytes(), crlf.as_bytes(), bom.as_bytes()] {
            // Whole, and cut at every byte (a CRLF split across chunks).
            let (out, s) = run(&[variant], false);
            assert_eq!(out, lf);
            assert!(s.usage.is_some() && s.complete());
            let cut: Vec<&[u8]> = variant.chunks(1).collect();
            let (out, _) = run(&cut, false);
            assert_eq!(out, lf);
        }
    }

    #[test]
    fn passes_through_and_reads_usage() {
        let (out, s) = run(&[STREAM.as_bytes()], false);
        assert_eq!(out, STREAM.as_bytes());
        assert_eq!(
            s.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 2,
                ..Usage::default()
            })
        );
        assert!(s.complete());
    }

    #[test]
    fn strips_the_injected_usage_chunk_at_every_split_point() {
        let expected = STREAM.replace(
            "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
            "",
        );
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let (out, s) = run(&[&bytes[..split], &bytes[split..]], true);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {split}");
            assert_eq!(s.usage.unwrap().output_tokens, 2);
            assert!(s.complete());
        }
    }

    #[test]
    fn only_events_with_a_usage_object_are_parsed_for_usage() {
        assert!(carries_usage(br#"data: {"usage":{"prompt_tokens":1}}"#));
        assert!(carries_usage(b"data: {\"usage\" :\n {\"prompt_tokens\":1}}"));
        assert!(carries_usage(br#"data: {"a":"usage","usage":{}}"#));
        assert!(!carries_usage(br#"data: {"choices":[],"usage":null}"#));
        assert!(!carries_usage(br#"data: {"kind":"usage"}"#));
        assert!(!carries_usage(br#"data: {"text":"say \"usage\": {"}"#));
        assert!(!carries_usage(br#"data: {"usage""#));
    }

    #[test]
    fn whole_events_are_not_copied() {
        let mut s = SseState::new(false);
        let chunk = Bytes::from_static(b"data: {\"a\":1}\n\n");
        let out = s.feed(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn crlf_and_multiline_events() {
        assert_eq!(event_end(b"data: x\r\n\r\nrest"), Some(11));
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(&*event_data(b"event: e\ndata: a\ndata: b\n\n"), b"a\nb");
    }

    #[test]
    fn malformed_events_pass_through_untouched() {
        let (out, s) = run(&[b"data: {\"usage\": nope\n\n", b"data: partial"], true);
        assert_eq!(out, b"data: {\"usage\": nope\n\ndata: partial");
        assert!(s.usage.is_none());
        assert!(!s.complete());
    }
}

#[cfg(test)]
mod event_stream_tests {
    use super::*;
    use crate::provider::bedrock::BedrockToChat;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

    fn frame(event_type: &str, payload: &str) -> Vec<u8> {
        let m = Message::new_from_parts(
            vec![
                Header::new(":message-type", HeaderValue::String("event".into())),
                Header::new(":event-type", HeaderValue::String(event_type.to_owned().into())),
            ],
            Bytes::from(payload.to_owned()),
        );
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&m, &mut out).unwrap();
        out
    }

    fn state() -> SseState {
        let mut s = SseState::with_mode(Mode::Translate(Box::new(BedrockToChat::new(false, 0, "m"))));
        s.decode_event_stream();
        s
    }

    #[test]
    fn a_broken_frame_ends_the_stream_and_nothing_after_it_is_read() {
        let mut s = state();
        let mut good = frame("messageStart", r#"{"role":"assistant"}"#);
        good.extend(frame(
            "contentBlockDelta",
            r#"{"delta":{"text":"Hi"},"contentBlockIndex":0}"#,
        ));
        let mut broken = frame(
            "contentBlockDelta",
            r#"{"delta":{"text":"there"},"contentBlockIndex":0}"#,
        );
        let last = broken.len() - 1;
        broken[last] ^= 0xff; // the message CRC no longer matches
        let mut out = s.feed(Bytes::from(good)).to_vec();
        out.extend_from_slice(&s.feed(Bytes::from(broken)));
        out.extend_from_slice(&s.feed(Bytes::from(frame("messageStop", r#"{"stopReason":"end_turn"}"#))));
        out.extend_from_slice(&s.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"content\":\"Hi\""), "{text}");
        assert!(text.contains("malformed stream frame"), "{text}");
        assert!(!text.contains("there") && !text.contains("[DONE]"), "{text}");
        assert!(!s.complete());
    }

    #[test]
    fn an_event_payload_that_is_not_json_ends_the_stream() {
        let mut s = state();
        let mut out = s.feed(Bytes::from(frame("messageStart", "not json"))).to_vec();
        out.extend_from_slice(&s.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("malformed stream event"), "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
    }
}
