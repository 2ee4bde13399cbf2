//! `multipart/form-data` uploads (audio transcriptions and translations, image edits,
//! and `/v1/files`): for the first, the alias is the form's `model` field, rewritten
//! there to the upstream model.
//!
//! The form is parsed by `multer`, read from the body the gateway already holds in
//! pieces of [`PIECE`] bytes, so the parser never holds more than a piece and the text
//! fields: a file part is read and dropped as it goes, never copied whole. The body that
//! goes upstream is the caller's, byte for byte, with only the `model` value (and the
//! values a masking guardrail changed) spliced in at their spans; part headers are never
//! re-written.
//!
//! `multer` gives values, not offsets, so the spans come from the delimiters
//! (`\r\n--boundary`, RFC 2046), and the two readings are checked against each other:
//! the same number of parts, each text value at its span byte for byte. A form the two
//! read differently (a boundary inside the data, a preamble, odd padding) is refused, so
//! what the guardrails and the allowlist saw is what the provider gets.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use memchr::memmem;

use crate::error::GwError;

/// The most parts one form may have: OpenAI's forms have a dozen at most.
pub const MAX_PARTS: usize = 128;
/// The most bytes one text field (a part without a filename) may hold: held in memory to
/// be checked, unlike files.
pub const MAX_TEXT: usize = 1024 * 1024;
/// What the parser is fed at a time.
const PIECE: usize = 64 * 1024;

/// One field of the form that is text (no filename): scanned by the request guardrails.
#[derive(Debug, Clone)]
pub struct TextField {
    pub name: String,
    pub value: String,
    /// The value's bytes in the body.
    pub span: Range<usize>,
}

/// What the gateway reads of a form.
#[derive(Debug)]
pub struct FormView {
    pub model: String,
    pub model_span: Range<usize>,
    /// Every text field but `model`, in order.
    pub texts: Vec<TextField>,
}

impl FormView {
    /// The view the rest of the gateway reads (`stream`, `n`, ...), with the model's span.
    pub fn view(&self) -> super::body::BodyView {
        let n = self
            .texts
            .iter()
            .find(|t| t.name == "n")
            .and_then(|t| t.value.trim().parse().ok());
        super::body::BodyView::form(self.model.clone(), self.model_span.clone(), n)
    }
}

fn bad(msg: impl Into<String>) -> GwError {
    GwError::InvalidRequest(msg.into())
}

/// The boundary of a `multipart/form-data` Content-Type; a clear error for anything else.
pub fn boundary(content_type: Option<&[u8]>) -> Result<String, GwError> {
    let wrong =
        || bad("This endpoint takes a multipart/form-data upload (Content-Type: multipart/form-data; boundary=...).");
    let ct = content_type
        .and_then(|v| std::str::from_utf8(v).ok())
        .ok_or_else(wrong)?;
    let media = ct.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(wrong());
    }
    let b = multer::parse_boundary(ct).map_err(|_| wrong())?;
    // RFC 2046: 1 to 70 characters.
    if b.is_empty() || b.len() > 70 || b.bytes().any(|c| c.is_ascii_control()) {
        return Err(wrong());
    }
    Ok(b)
}

/// Feeds the body to the parser a piece at a time: it pauses after each piece, so the
/// parser's buffer holds one piece, not the whole body (it reads all that is ready).
struct Pieces {
    body: Bytes,
    at: usize,
    paused: bool,
}

impl Stream for Pieces {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.at >= self.body.len() {
            return Poll::Ready(None);
        }
        if !self.paused {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        let end = (self.at + PIECE).min(self.body.len());
        let piece = self.body.slice(self.at..end);
        self.at = end;
        Poll::Ready(Some(Ok(piece)))
    }
}

/// A part as `multer` read it.
struct Part {
    name: String,
    file_name: Option<String>,
    /// The value of a text part.
    text: Option<Vec<u8>>,
}

/// One part of a form, as both readings agree on it.
#[derive(Debug, Clone)]
pub struct FormPart {
    pub name: String,
    /// The part's filename: a file part. Its value is not read, only placed.
    pub file_name: Option<String>,
    /// The part's value in the body: a file's bytes are `body.slice(value)`, no copy.
    pub value: Range<usize>,
    /// A text part's value (UTF-8, at most [`MAX_TEXT`] bytes).
    pub text: Option<String>,
}

/// Reads a form into its parts. `files` names the fields that may carry a file (a part
/// with a filename); every other part must be text. Refused with a 400: a part without
/// a name or with two, a file where text belongs, more than [`MAX_PARTS`] parts, a text
/// field over [`MAX_TEXT`] bytes or not UTF-8, a form that does not end with its closing
/// delimiter, and a form the delimiters split otherwise than the parser.
pub fn read(body: &Bytes, boundary: &str, files: &[&str]) -> Result<Vec<FormPart>, GwError> {
    let parts = futures_executor::block_on(read_parts(body.clone(), boundary, files))?;
    let spans = part_spans(body, boundary)?;
    if spans.len() != parts.len() {
        return Err(bad("The form's parts could not be told apart unambiguously."));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (part, (headers, value)) in parts.into_iter().zip(spans) {
        if !count_names_once(&body[headers]) {
            return Err(bad("A part of the form names its field more than once."));
        }
        let text = match part.text {
            None => None,
            Some(text) => {
                // The delimiters' reading and the parser's must agree on every text.
                if body[value.clone()] != text[..] {
                    return Err(bad("The form's parts could not be told apart unambiguously."));
                }
                Some(
                    String::from_utf8(text)
                        .map_err(|_| bad(format!("The form field '{}' is not UTF-8 text.", part.name)))?,
                )
            }
        };
        out.push(FormPart {
            name: part.name,
            file_name: part.file_name,
            value,
            text,
        });
    }
    Ok(out)
}

/// Parses a form whose `model` field names the alias ([`read`], and then: no or two
/// `model` fields, or an empty one, are refused).
pub fn parse(body: &Bytes, boundary: &str, files: &[&str]) -> Result<FormView, GwError> {
    let mut model = None;
    let mut texts = Vec::new();
    for part in read(body, boundary, files)? {
        let Some(text) = part.text else {
            continue;
        };
        if part.name == "model" {
            if model.is_some() {
                return Err(bad("The form has more than one `model` field."));
            }
            model = Some((text, part.value));
        } else {
            texts.push(TextField {
                name: part.name,
                value: text,
                span: part.value,
            });
        }
    }
    let (model, model_span) = model.ok_or_else(|| bad("The form needs a `model` field."))?;
    if model.is_empty() {
        return Err(bad("`model` must not be empty."));
    }
    Ok(FormView {
        model,
        model_span,
        texts,
    })
}

async fn read_parts(body: Bytes, boundary: &str, files: &[&str]) -> Result<Vec<Part>, GwError> {
    let len = body.len() as u64;
    // The first piece comes at once: multer 3.1 gives up on a stream that has nothing
    // for it on its very first poll (it looks for the first boundary only once more).
    let pieces = Pieces {
        body,
        at: 0,
        paused: true,
    };
    let limits = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(len));
    let mut form = multer::Multipart::with_constraints(pieces, boundary, limits);
    let unreadable = |e: multer::Error| bad(format!("The multipart form could not be read: {e}."));
    let mut parts = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(unreadable)? {
        if parts.len() == MAX_PARTS {
            return Err(bad(format!("The form has more than {MAX_PARTS} parts.")));
        }
        if field
            .headers()
            .get_all(http::header::CONTENT_DISPOSITION)
            .iter()
            .count()
            != 1
        {
            return Err(bad("Every part of the form needs one Content-Disposition header."));
        }
        let name = field
            .name()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("Every part of the form needs a name."))?
            .to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let file = file_name.is_some();
        if file && !files.contains(&name.as_str()) {
            return Err(bad(format!("The form field '{name}' must be text, not a file.")));
        }
        let mut text = (!file).then(Vec::new);
        while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
            if let Some(t) = text.as_mut() {
                if t.len() + chunk.len() > MAX_TEXT {
                    return Err(bad(format!(
                        "The form field '{name}' is over {MAX_TEXT} bytes (send files with a filename)."
                    )));
                }
                t.extend_from_slice(&chunk);
            }
            // A file's bytes are dropped as they are read.
        }
        parts.push(Part { name, file_name, text });
    }
    Ok(parts)
}

/// A part's header block and its value, as byte ranges of the body.
type PartSpan = (Range<usize>, Range<usize>);

/// Each part's header block and value, as the delimiters place them. The body must start
/// with the first delimiter (no preamble) and end with the closing one (an epilogue
/// after it is allowed, as RFC 2046 says, and ignored by both readings).
fn part_spans(body: &[u8], boundary: &str) -> Result<Vec<PartSpan>, GwError> {
    let unclear = || bad("The form's parts could not be told apart unambiguously.");
    let first = format!("--{boundary}");
    if !body.starts_with(first.as_bytes()) {
        return Err(unclear());
    }
    let delimiter = format!("\r\n--{boundary}");
    let finder = memmem::Finder::new(delimiter.as_bytes());
    let mut out = Vec::new();
    // Just past the current delimiter's boundary.
    let mut at = first.len();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        // Transport padding, then the line's end.
        let pad = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(unclear());
        }
        let start = at + pad + 2;
        let end = finder.find(&body[start..]).map(|i| start + i).ok_or_else(unclear)?;
        let part = &body[start..end];
        // A part with no header block has its value right after the empty line.
        let split = if part.starts_with(b"\r\n") {
            Some(0)
        } else {
            memmem::find(part, b"\r\n\r\n").map(|i| i + 2)
        };
        let split = split.ok_or_else(unclear)?;
        out.push((start..start + split, start + split + 2..end));
        at = end + delimiter.len();
    }
}

/// Whether a part's header block names its field once: `name=` (or `name*=`) in one
/// Content-Disposition, not twice, where parsers disagree on which one counts.
fn count_names_once(headers: &[u8]) -> bool {
    let lower = headers.to_ascii_lowercase();
    let names = memmem::find_iter(&lower, b"name").filter(|&i| {
        let before = i.checked_sub(1).map(|j| lower[j]);
        let after = lower[i + 4..].iter().find(|b| !b.is_ascii_whitespace());
        // `filename` is the file's, not the field's.
        !matches!(before, Some(b'e')) && matches!(after, Some(b'=' | b'*'))
    });
    names.count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (name, file, value) in parts {
            out.extend_from_slice(format!("--{B}\r\n").as_bytes());
            match file {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
            }
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        Bytes::from(out)
    }

    fn err(body: &[u8]) -> String {
        parse(&Bytes::copy_from_slice(body), B, &["file"])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_model_is_found_and_spliced_and_nothing_else_moves() {
        let audio: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body = form(&[
            ("file", Some("a.wav"), &audio),
            ("model", None, b"alias"),
            ("prompt", None, b"hi"),
        ]);
        let v = parse(&body, B, &["file"]).unwrap();
        assert_eq!(v.model, "alias");
        assert_eq!(&body[v.model_span.clone()], b"alias");
        assert_eq!(v.texts.len(), 1);
        assert_eq!((v.texts[0].name.as_str(), v.texts[0].value.as_str()), ("prompt", "hi"));
        let out = super::super::body::splice(&body, vec![(v.model_span.clone(), b"whisper-1"[..].into())]);
        let want = form(&[
            ("file", Some("a.wav"), &audio),
            ("model", None, b"whisper-1"),
            ("prompt", None, b"hi"),
        ]);
        assert_eq!(out, want);
        // The rewritten form reads back with the new model.
        assert_eq!(parse(&out, B, &["file"]).unwrap().model, "whisper-1");
    }

    #[test]
    fn hostile_forms_are_refused() {
        // Two models: which one a provider reads is its parser's choice.
        let two = form(&[("model", None, b"a"), ("model", None, b"b")]);
        assert!(err(&two).contains("more than one `model`"), "{}", err(&two));
        // A model that is a file, and a file where text belongs.
        assert!(err(&form(&[("model", Some("m"), b"a")])).contains("must be text"));
        assert!(err(&form(&[("model", None, b"a"), ("prompt", Some("p.txt"), b"x")])).contains("must be text"));
        // A file whose *filename* is `model` is just a file.
        let named = form(&[("file", Some("model"), b"RIFF"), ("model", None, b"a")]);
        assert_eq!(parse(&named, B, &["file"]).unwrap().model, "a");
        // No model at all.
        assert!(err(&form(&[("prompt", None, b"x")])).contains("needs a `model`"));
        // No closing delimiter.
        let full = form(&[("model", None, b"a")]);
        let cut = &full[..full.len() - format!("--{B}--\r\n").len()];
        assert!(err(cut).contains("could not be read"));
        // The boundary inside a value splits the part: the piece after it has no headers.
        let inside = form(&[
            ("model", None, b"a"),
            ("file", Some("f"), format!("x\r\n--{B}\r\nmodel\r\n").as_bytes()),
        ]);
        assert!(parse(&inside, B, &["file"]).is_err());
        // Two names in one Content-Disposition, and two Content-Disposition headers.
        let twice =
            format!("--{B}\r\nContent-Disposition: form-data; name=\"prompt\"; name=\"model\"\r\n\r\na\r\n--{B}--\r\n");
        assert!(parse(&Bytes::from(twice), B, &["file"]).is_err());
        let two_cd = format!("--{B}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--{B}--\r\n");
        // (multer keeps one of the two; the header block still names two fields.)
        let e = err(two_cd.as_bytes());
        assert!(
            e.contains("one Content-Disposition") || e.contains("more than once"),
            "{e}"
        );
        // A preamble is legal but read differently by parsers: refused.
        let mut pre = b"hello\r\n".to_vec();
        pre.extend_from_slice(&form(&[("model", None, b"a")]));
        assert!(parse(&Bytes::from(pre), B, &["file"]).is_err());
        // A name-less part.
        let nameless = format!("--{B}\r\nContent-Disposition: form-data\r\n\r\na\r\n--{B}--\r\n");
        assert!(err(nameless.as_bytes()).contains("needs a name"));
        // Too many parts.
        let many: Vec<(String, Option<&str>, &[u8])> =
            (0..=MAX_PARTS).map(|i| (format!("f{i}"), None, &b"x"[..])).collect();
        let refs: Vec<(&str, Option<&str>, &[u8])> = many.iter().map(|(n, f, v)| (n.as_str(), *f, *v)).collect();
        assert!(err(&form(&refs)).contains("more than"));
        // A huge text field.
        let big = vec![b'a'; MAX_TEXT + 1];
        assert!(err(&form(&[("model", None, b"a"), ("prompt", None, &big)])).contains("over"));
        // Not UTF-8.
        assert!(err(&form(&[("model", None, b"\xff")])).contains("UTF-8"));
    }

    #[test]
    fn content_types() {
        assert_eq!(boundary(Some(b"multipart/form-data; boundary=abc")).unwrap(), "abc");
        assert_eq!(boundary(Some(b"Multipart/Form-Data; boundary=\"a b\"")).unwrap(), "a b");
        for bad in [
            &b"application/json"[..],
            b"multipart/form-data",
            b"multipart/mixed; boundary=a",
            b"",
        ] {
            assert!(boundary(Some(bad)).is_err());
        }
        assert!(boundary(None).is_err());
    }
}
