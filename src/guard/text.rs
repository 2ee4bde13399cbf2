//! Where the text is in requests and completions of both dialects. The walkers hand every
//! text to a callback that may rewrite it in place (masking).

use serde_json::Value;

use super::Shape;
use crate::provider::Endpoint;

/// Why a request's content could not be read as text.
pub type Unscannable = &'static str;

/// Calls `f` on every text the caller sends: chat messages (string or text parts, tool
/// results, earlier tool call arguments), Anthropic system prompts and content blocks
/// (text, tool results, tool inputs), embedding inputs. Non-text parts (images, audio,
/// files) are skipped; content of a shape neither API defines is `Err`.
pub fn request_texts(v: &mut Value, endpoint: Endpoint, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    match endpoint {
        Endpoint::ChatCompletions => {
            for m in messages(v)? {
                let Value::Object(m) = m else {
                    return Err("a message is not an object");
                };
                if let Some(c) = m.get_mut("content") {
                    chat_content(c, f)?;
                }
                if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                    for call in calls {
                        if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                            f(args);
                        }
                    }
                }
            }
            Ok(())
        }
        Endpoint::Messages => {
            if let Some(system) = v.get_mut("system") {
                blocks(system, f)?;
            }
            for m in messages(v)? {
                let Value::Object(m) = m else {
                    return Err("a message is not an object");
                };
                if let Some(c) = m.get_mut("content") {
                    blocks(c, f)?;
                }
            }
            Ok(())
        }
        Endpoint::Responses => {
            if let Some(Value::String(s)) = v.get_mut("instructions") {
                f(s);
            }
            input(v, f, &mut |item, f| {
                let Value::Object(item) = item else {
                    return Err("an input item is not an object");
                };
                match item.get("type").and_then(Value::as_str) {
                    // A message (the type may be left out): text or text parts.
                    None | Some("message") => match item.get_mut("content") {
                        Some(c @ Value::String(_)) | Some(c @ Value::Array(_)) => {
                            text_parts(c, &["input_text", "output_text"], f)
                        }
                        _ => Err("a message has no content"),
                    },
                    Some(kind @ ("function_call_output" | "function_call")) => {
                        let field = if kind == "function_call" { "arguments" } else { "output" };
                        if let Some(Value::String(s)) = item.get_mut(field) {
                            f(s);
                        }
                        Ok(())
                    }
                    Some(_) => Ok(()),
                }
            })
        }
        // Never a caller's endpoint: requests are scanned before translation.
        Endpoint::GenerateContent => Err("not a caller endpoint"),
        Endpoint::Embeddings => input(v, f, &mut |item, f| {
            match item {
                Value::String(s) => f(s),
                // Token ids (numbers, or lists of them) carry no text to scan.
                Value::Number(_) => {}
                Value::Array(ids) if ids.iter().all(Value::is_number) => {}
                _ => return Err("an input item is neither text nor token ids"),
            }
            Ok(())
        }),
    }
}

type ItemReader<'a> = dyn FnMut(&mut Value, &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> + 'a;

/// The `input` field of embeddings and responses: absent, a string, or a list of items
/// that `item` reads.
fn input(v: &mut Value, f: &mut dyn FnMut(&mut String), item: &mut ItemReader<'_>) -> Result<(), Unscannable> {
    match v.get_mut("input") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            f(s);
            Ok(())
        }
        Some(Value::Array(items)) => items.iter_mut().try_for_each(|i| item(i, f)),
        Some(_) => Err("input is neither text nor a list"),
    }
}

fn messages(v: &mut Value) -> Result<&mut [Value], Unscannable> {
    match v.get_mut("messages") {
        None | Some(Value::Null) => Ok(&mut []),
        Some(Value::Array(a)) => Ok(a.as_mut_slice()),
        Some(_) => Err("messages is not a list"),
    }
}

/// OpenAI chat content: a string, or a list of parts of which `text` parts carry text.
fn chat_content(c: &mut Value, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    text_parts(c, &["text"], f)
}

/// Content as a string, or as typed parts of which the `kinds` carry a `text`.
fn text_parts(c: &mut Value, kinds: &[&str], f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    match c {
        Value::Null => Ok(()),
        Value::String(s) => {
            f(s);
            Ok(())
        }
        Value::Array(parts) => {
            for p in parts {
                let Value::Object(p) = p else {
                    return Err("a content part is not an object");
                };
                match p.get("type").and_then(Value::as_str) {
                    Some(k) if kinds.contains(&k) => match p.get_mut("text") {
                        Some(Value::String(s)) => f(s),
                        _ => return Err("a text part has no text"),
                    },
                    Some(_) => {}
                    None => return Err("a content part has no type"),
                }
            }
            Ok(())
        }
        _ => Err("content is neither text nor a list of parts"),
    }
}

/// Anthropic content: a string, or blocks: `text`, `tool_result` (string or blocks) and
/// `tool_use` input (every string in it).
fn blocks(c: &mut Value, f: &mut dyn FnMut(&mut String)) -> Result<(), Unscannable> {
    match c {
        Value::Null => Ok(()),
        Value::String(s) => {
            f(s);
            Ok(())
        }
        Value::Array(items) => {
            for b in items {
                let Value::Object(b) = b else {
                    return Err("a content block is not an object");
                };
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => match b.get_mut("text") {
                        Some(Value::String(s)) => f(s),
                        _ => return Err("a text block has no text"),
                    },
                    Some("tool_result") => {
                        if let Some(inner) = b.get_mut("content") {
                            blocks(inner, f)?;
                        }
                    }
                    Some("tool_use") => {
                        if let Some(input) = b.get_mut("input") {
                            every_string(input, f);
                        }
                    }
                    Some(_) => {}
                    None => return Err("a content block has no type"),
                }
            }
            Ok(())
        }
        _ => Err("content is neither text nor a list of blocks"),
    }
}

fn every_string(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| every_string(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| every_string(x, f)),
        _ => {}
    }
}

/// What the response-stage callback did with one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Keep,
    Changed,
    /// The choice (or message) this text is in must be withheld.
    Block,
}

/// Calls `f` on every text of a completion of this shape (message content and tool call
/// arguments; Anthropic text blocks and tool inputs; Responses output text and function
/// call arguments) and applies blocks. Returns whether the completion changed.
pub fn response_texts(v: &mut Value, shape: Shape, f: &mut dyn FnMut(&mut String) -> Edit) -> bool {
    let mut changed = false;
    match shape {
        Shape::Responses => {
            let mut block = false;
            if let Some(Value::Array(output)) = v.get_mut("output") {
                for item in output.iter_mut() {
                    match item.get("type").and_then(Value::as_str) {
                        Some("message") => {
                            for part in item["content"].as_array_mut().into_iter().flatten() {
                                if let Some(Value::String(s)) = part.get_mut("text") {
                                    apply(f(s), &mut changed, &mut block);
                                }
                            }
                        }
                        Some("function_call") => {
                            if let Some(Value::String(s)) = item.get_mut("arguments") {
                                apply(f(s), &mut changed, &mut block);
                            }
                        }
                        _ => {}
                    }
                }
                if block {
                    output.clear();
                }
            }
            if block {
                // How the Responses API reports its own content filter.
                v["status"] = Value::from("incomplete");
                v["incomplete_details"] = serde_json::json!({"reason": "content_filter"});
            }
        }
        Shape::Chat => {
            let Some(Value::Array(choices)) = v.get_mut("choices") else {
                return false;
            };
            for choice in choices {
                let mut block = false;
                if let Some(msg) = choice.get_mut("message") {
                    if let Some(Value::String(s)) = msg.get_mut("content") {
                        apply(f(s), &mut changed, &mut block);
                    }
                    if let Some(Value::Array(calls)) = msg.get_mut("tool_calls") {
                        for call in calls {
                            if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                                apply(f(args), &mut changed, &mut block);
                            }
                        }
                    }
                    if block {
                        if let Value::Object(m) = msg {
                            m.insert("content".into(), Value::Null);
                            m.remove("tool_calls");
                        }
                    }
                }
                if block {
                    choice["finish_reason"] = Value::from("content_filter");
                }
            }
        }
        Shape::Messages => {
            let mut block = false;
            if let Some(Value::Array(content)) = v.get_mut("content") {
                for b in content.iter_mut() {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(Value::String(s)) = b.get_mut("text") {
                                apply(f(s), &mut changed, &mut block);
                            }
                        }
                        Some("tool_use") => {
                            if let Some(input) = b.get_mut("input") {
                                every_string(input, &mut |s: &mut String| apply(f(s), &mut changed, &mut block));
                            }
                        }
                        _ => {}
                    }
                }
                if block {
                    content.clear();
                }
            }
            if block {
                v["stop_reason"] = Value::from("refusal");
            }
        }
    }
    changed
}

fn apply(e: Edit, changed: &mut bool, block: &mut bool) {
    match e {
        Edit::Keep => {}
        Edit::Changed => *changed = true,
        Edit::Block => {
            *changed = true;
            *block = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn collect(mut v: Value, e: Endpoint) -> Result<Vec<String>, Unscannable> {
        let mut out = Vec::new();
        request_texts(&mut v, e, &mut |s: &mut String| out.push(s.clone()))?;
        Ok(out)
    }

    #[test]
    fn chat_texts_include_parts_tools_and_results() {
        let v = json!({"model": "m", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"b\"}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "c"},
        ]});
        assert_eq!(
            collect(v, Endpoint::ChatCompletions).unwrap(),
            ["sys", "a", "{\"q\":\"b\"}", "c"]
        );
    }

    #[test]
    fn messages_texts_include_system_and_tool_blocks() {
        let v = json!({"model": "m", "system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": ["b"]}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "c"}]}]},
        ]});
        assert_eq!(collect(v, Endpoint::Messages).unwrap(), ["sys", "a", "b", "c"]);
    }

    #[test]
    fn unknown_shapes_are_reported() {
        assert!(collect(json!({"messages": "hi"}), Endpoint::ChatCompletions).is_err());
        assert!(collect(
            json!({"messages": [{"role": "user", "content": 5}]}),
            Endpoint::ChatCompletions
        )
        .is_err());
        assert!(collect(
            json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
            Endpoint::ChatCompletions
        )
        .is_err());
        assert!(collect(
            json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            Endpoint::Messages
        )
        .is_err());
        assert!(collect(json!({"input": {"a": 1}}), Endpoint::Embeddings).is_err());
        assert_eq!(
            collect(json!({"input": [[1, 2], "x"]}), Endpoint::Embeddings).unwrap(),
            ["x"]
        );
    }

    #[test]
    fn blocked_choice_is_withheld() {
        let mut v = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "bad"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "good"}, "finish_reason": "stop"},
        ]});
        let changed = response_texts(&mut v, Shape::Chat, &mut |s: &mut String| {
            if s == "bad" {
                Edit::Block
            } else {
                Edit::Keep
            }
        });
        assert!(changed);
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["choices"][1]["message"]["content"], "good");

        let mut a = json!({"content": [{"type": "text", "text": "bad"}], "stop_reason": "end_turn"});
        response_texts(&mut a, Shape::Messages, &mut |_: &mut String| Edit::Block);
        assert_eq!(a["content"], json!([]));
        assert_eq!(a["stop_reason"], "refusal");
    }
}
