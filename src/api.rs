//! The API formats aigw speaks, with no behaviour of their own: the caller's dialect and
//! endpoint, a provider's wire format, and the request id both sides carry. Every layer
//! names them; they import nothing of the crate.

use http::HeaderName;
use pingora::http::RequestHeader;

/// The API family a caller speaks (OpenAI's, Anthropic's or Google's Gemini API): the
/// shapes of its answers and its error envelope. Which of its endpoints it called is
/// [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    #[default]
    OpenAi,
    Anthropic,
    Gemini,
}

/// The data-plane endpoints that go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    /// Anthropic Messages.
    Messages,
    /// OpenAI's Responses API: passed through to OpenAI-style providers only.
    Responses,
    /// Gemini's `generateContent` / `streamGenerateContent`: called by Gemini-format
    /// callers (`/v1beta/models/{alias}:generateContent`), and upstream of chat and
    /// messages callers on Gemini targets.
    GenerateContent,
    /// Bedrock's `converse` / `converse-stream`. Upstream only.
    Converse,
    /// OpenAI's legacy completions (`prompt` in, `choices[].text` out).
    Completions,
    Moderations,
    ImageGenerations,
    /// `multipart/form-data`: the image and mask are files, the alias a form field.
    ImageEdits,
    /// `multipart/form-data`, like `ImageEdits`.
    AudioTranscriptions,
    /// `multipart/form-data`, like `ImageEdits`.
    AudioTranslations,
    /// JSON in, audio bytes out (passed through as they arrive).
    AudioSpeech,
    /// Gemini's `countTokens`: native on Gemini targets, estimated by the gateway on others.
    CountTokens,
    /// Gemini's `embedContent` and `batchEmbedContents`: native on Gemini, translated to
    /// OpenAI-style embeddings.
    EmbedContent,
    BatchEmbedContents,
    /// OpenAI's Realtime API: a WebSocket session (`GET /v1/realtime?model=`), relayed
    /// message by message (`proxy::realtime`). OpenAI-style providers only.
    Realtime,
}

impl Endpoint {
    /// The path after the API version prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Embeddings => "/embeddings",
            Self::Messages => "/messages",
            Self::Responses => "/responses",
            Self::GenerateContent => ":generateContent",
            Self::Converse => "/converse",
            Self::Completions => "/completions",
            Self::Moderations => "/moderations",
            Self::ImageGenerations => "/images/generations",
            Self::ImageEdits => "/images/edits",
            Self::AudioTranscriptions => "/audio/transcriptions",
            Self::AudioTranslations => "/audio/translations",
            Self::AudioSpeech => "/audio/speech",
            Self::CountTokens => ":countTokens",
            Self::EmbedContent => ":embedContent",
            Self::BatchEmbedContents => ":batchEmbedContents",
            Self::Realtime => "/realtime",
        }
    }

    /// Whether callers send this endpoint a `multipart/form-data` upload, not JSON.
    pub fn multipart(self) -> bool {
        matches!(
            self,
            Self::ImageEdits | Self::AudioTranscriptions | Self::AudioTranslations
        )
    }

    /// Whether a successful answer of this endpoint may be other than JSON or SSE (audio
    /// bytes; a transcript as plain text, SRT or VTT): passed through as it comes.
    pub fn media_answer(self) -> bool {
        matches!(
            self,
            Self::AudioSpeech | Self::AudioTranscriptions | Self::AudioTranslations
        )
    }

    /// Whether this endpoint answers with images, counted for `pricing.per_image`.
    pub fn images(self) -> bool {
        matches!(self, Self::ImageGenerations | Self::ImageEdits)
    }

    /// The Gemini method a path names after its `:` (`models/{alias}:{method}`), and
    /// whether it streams.
    pub fn from_gemini_method(method: &str) -> Option<(Endpoint, bool)> {
        Some(match method {
            "generateContent" => (Self::GenerateContent, false),
            "streamGenerateContent" => (Self::GenerateContent, true),
            "countTokens" => (Self::CountTokens, false),
            "embedContent" => (Self::EmbedContent, false),
            "batchEmbedContents" => (Self::BatchEmbedContents, false),
            _ => return None,
        })
    }

    /// The dialect a caller of this endpoint speaks (and gets its errors in).
    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages => Dialect::Anthropic,
            Self::GenerateContent | Self::CountTokens | Self::EmbedContent | Self::BatchEmbedContents => {
                Dialect::Gemini
            }
            _ => Dialect::OpenAi,
        }
    }

    /// `gen_ai.operation.name` of the OpenTelemetry GenAI conventions.
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions | Self::Messages | Self::Responses | Self::GenerateContent | Self::Converse => "chat",
            Self::Embeddings | Self::EmbedContent | Self::BatchEmbedContents => "embeddings",
            // Not an operation of the conventions; the closest name for what it is.
            Self::CountTokens => "count_tokens",
            Self::Completions => "text_completion",
            Self::Moderations => "moderation",
            Self::ImageGenerations | Self::ImageEdits => "image_generation",
            Self::AudioTranscriptions => "transcription",
            Self::AudioTranslations => "translation",
            Self::AudioSpeech => "speech",
            Self::Realtime => "realtime",
        }
    }

    /// The endpoint a provider speaking `wire` is called on for this one; `None` when it
    /// cannot serve it at all.
    pub fn upstream(self, wire: Wire) -> Option<Endpoint> {
        match (self, wire) {
            // Gemini-format callers: native on Gemini, else through the chat hub (content)
            // or OpenAI's embeddings; `countTokens` elsewhere is the gateway's estimate.
            (
                Self::GenerateContent | Self::CountTokens | Self::EmbedContent | Self::BatchEmbedContents,
                Wire::Gemini,
            ) => Some(self),
            (Self::GenerateContent, Wire::OpenAi) => Some(Self::ChatCompletions),
            (Self::GenerateContent, Wire::Anthropic) => Some(Self::Messages),
            (Self::GenerateContent, Wire::Converse) => Some(Self::Converse),
            (Self::EmbedContent | Self::BatchEmbedContents, Wire::OpenAi) => Some(Self::Embeddings),
            (Self::CountTokens | Self::EmbedContent | Self::BatchEmbedContents, _) => None,
            (Self::ChatCompletions | Self::Messages, Wire::Gemini) => Some(Self::GenerateContent),
            (Self::ChatCompletions | Self::Messages, Wire::Converse) => Some(Self::Converse),
            (_, Wire::Gemini | Wire::Converse) => None,
            (Self::Converse, _) => None,
            // Embeddings, Responses and the rest of OpenAI's surface: OpenAI-style only.
            (_, Wire::Anthropic) if !matches!(self, Self::ChatCompletions | Self::Messages) => None,
            (Self::ChatCompletions | Self::Messages, Wire::Anthropic) => Some(Self::Messages),
            (Self::Messages, _) => Some(Self::ChatCompletions),
            (e, _) => Some(e),
        }
    }
}

/// The wire format a provider's API speaks for one model: what the request is translated
/// to and the answer from. The provider kind decides the rest (URL, credentials); one
/// kind may speak several formats (Vertex AI: Gemini's, and Anthropic's for Claude).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's chat completions, embeddings and responses.
    OpenAi,
    /// Anthropic's Messages.
    Anthropic,
    /// Gemini's generateContent.
    Gemini,
    /// Bedrock's Converse (streams in AWS's binary event stream).
    Converse,
}

impl Wire {
    /// The Content-Type of this format's streamed answers.
    pub fn stream_media(self) -> &'static str {
        match self {
            Wire::Converse => "application/vnd.amazon.eventstream",
            Wire::OpenAi | Wire::Anthropic | Wire::Gemini => "text/event-stream",
        }
    }
}

impl Wire {
    /// The dialect of a provider speaking this format, when callers of that dialect reach
    /// it untranslated; `None` for Converse, which every caller reaches through
    /// translation.
    pub fn dialect(self) -> Option<Dialect> {
        match self {
            Wire::Anthropic => Some(Dialect::Anthropic),
            // Gemini callers reach a Gemini provider untranslated; others translate.
            Wire::Gemini => Some(Dialect::Gemini),
            Wire::Converse => None,
            Wire::OpenAi => Some(Dialect::OpenAi),
        }
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` when it is sane, else a new one.
pub fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
