//! Extended thinking as Claude does it, on Anthropic's API and through Converse: a request
//! that enables thinking gets a thinking block first, signed; a thinking block sent back
//! must carry the signature it was given, and an assistant turn that used a tool while
//! thinking was on must start with its thinking. So a test passes only when the gateway
//! carries the signed blocks across dialects unchanged.

use serde_json::Value;

/// The mock's signing key; only the mock checks its signatures.
const KEY: &[u8; 32] = b"aigw-mock-thinking-signature-key";

/// Smallest budget Anthropic takes.
const MIN_BUDGET: u64 = 1024;

pub fn sign(thinking: &str) -> String {
    blake3::keyed_hash(KEY, thinking.as_bytes()).to_hex().to_string()
}

/// What the model "thinks" about a request: a line naming the question.
pub fn thought(question: &str) -> String {
    let q: String = question.chars().take(60).collect();
    format!("The user asks: {q}. I should answer briefly.")
}

/// The budget an Anthropic-style `thinking` object enables, checked as Anthropic does
/// against `max_tokens`; `Ok(None)` when thinking is off.
pub fn budget(thinking: &Value, max_tokens: Option<u64>) -> Result<Option<u64>, String> {
    if thinking["type"] != "enabled" {
        return Ok(None);
    }
    let b = thinking["budget_tokens"]
        .as_u64()
        .ok_or("thinking.budget_tokens: Field required")?;
    if b < MIN_BUDGET {
        return Err(format!(
            "thinking.budget_tokens: Input should be greater than or equal to {MIN_BUDGET}"
        ));
    }
    if max_tokens.is_some_and(|m| m <= b) {
        return Err("`max_tokens` must be greater than `thinking.budget_tokens`".into());
    }
    Ok(Some(b))
}

/// Checks the thinking in an Anthropic request's assistant turns.
pub fn check_messages(req: &Value, enabled: bool) -> Result<(), String> {
    let turns = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    check(turns, enabled, |b| match b["type"].as_str() {
        Some("thinking") => Some(Block::Signed(b["thinking"].as_str()?, b["signature"].as_str()?)),
        Some("redacted_thinking") => Some(Block::Redacted),
        Some("tool_use") => Some(Block::ToolUse),
        _ => Some(Block::Other),
    })
}

/// The same for a Converse request (`reasoningContent` blocks).
pub fn check_converse(req: &Value, enabled: bool) -> Result<(), String> {
    let turns = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    check(turns, enabled, |b| {
        if let Some(r) = b.get("reasoningContent") {
            if r.get("redactedContent").is_some() {
                return Some(Block::Redacted);
            }
            let t = &r["reasoningText"];
            return Some(Block::Signed(t["text"].as_str()?, t["signature"].as_str()?));
        }
        Some(if b.get("toolUse").is_some() {
            Block::ToolUse
        } else {
            Block::Other
        })
    })
}

enum Block<'a> {
    Signed(&'a str, &'a str),
    Redacted,
    ToolUse,
    Other,
}

fn check<'a>(turns: &'a [Value], enabled: bool, read: impl Fn(&'a Value) -> Option<Block<'a>>) -> Result<(), String> {
    let last_assistant = turns.iter().rposition(|m| m["role"] == "assistant");
    for (i, m) in turns.iter().enumerate().filter(|(_, m)| m["role"] == "assistant") {
        let blocks = m["content"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut first = true;
        for b in blocks {
            match read(b) {
                None => return Err(format!("messages.{i}: a thinking block without its signature")),
                Some(Block::Signed(text, sig)) if sign(text) != sig => {
                    return Err(format!("messages.{i}: Invalid `signature` in `thinking` block"))
                }
                Some(Block::ToolUse) if enabled && first && Some(i) == last_assistant => {
                    return Err(format!(
                    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. \
                         When `thinking` is enabled, a final `assistant` message must start with a thinking block."
                ))
                }
                _ => {}
            }
            first = false;
        }
    }
    Ok(())
}
