//! The cache key: BLAKE3 over the scope, the alias, the endpoint and the request in a
//! canonical form (object keys sorted, no whitespace, strings length-prefixed), without
//! the fields that do not change the completion (`stream`, `stream_options`, `user`).
//! Field order and formatting therefore never split an entry.

use serde_json::Value;

use crate::api::Endpoint;

/// Top-level request fields that do not change what the model answers.
const IGNORED: &[&str] = &["stream", "stream_options", "user"];

/// Bumped when the canonical form or the stored format changes, so old entries are
/// never read as new ones.
const VERSION: &[u8] = b"aigw-cache-v1";

pub fn key(scope: &str, alias: &str, endpoint: Endpoint, request: &Value) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for part in [
        VERSION,
        scope.as_bytes(),
        alias.as_bytes(),
        endpoint.suffix().as_bytes(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    match request {
        Value::Object(o) => {
            let mut fields: Vec<(&String, &Value)> = o.iter().filter(|(k, _)| !IGNORED.contains(&k.as_str())).collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            h.update(&(fields.len() as u64).to_le_bytes());
            for (k, v) in fields {
                string(&mut h, k);
                canonical(&mut h, v);
            }
        }
        other => canonical(&mut h, other),
    }
    *h.finalize().as_bytes()
}

fn string(h: &mut blake3::Hasher, s: &str) {
    h.update(b"\"");
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn canonical(h: &mut blake3::Hasher, v: &Value) {
    match v {
        Value::Null => {
            h.update(b"n");
        }
        Value::Bool(b) => {
            h.update(if *b { b"t" } else { b"f" });
        }
        Value::Number(n) => {
            let text = n.to_string();
            h.update(b"#");
            h.update(&(text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        Value::String(s) => string(h, s),
        Value::Array(items) => {
            h.update(b"[");
            h.update(&(items.len() as u64).to_le_bytes());
            for item in items {
                canonical(h, item);
            }
        }
        Value::Object(o) => {
            let mut fields: Vec<(&String, &Value)> = o.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            h.update(&(fields.len() as u64).to_le_bytes());
            for (k, v) in fields {
                string(h, k);
                canonical(h, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(scope: &str, text: &str) -> [u8; 32] {
        key(
            scope,
            "m",
            Endpoint::ChatCompletions,
            &serde_json::from_str(text).unwrap(),
        )
    }

    #[test]
    fn order_whitespace_and_stream_fields_do_not_matter() {
        let a = k(
            "owner=a",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        );
        let b = k(
            "owner=a",
            r#"{ "temperature": 0, "stream": true, "stream_options": {"include_usage": true}, "user": "u1",
                 "messages": [ {"content": "hi", "role": "user"} ], "model": "m" }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn content_scope_and_nesting_do() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert_ne!(k("owner=a", base), k("owner=b", base));
        assert_ne!(
            k("owner=a", base),
            k(
                "owner=a",
                r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#
            )
        );
        // `user` is ignored only at the top level.
        assert_ne!(
            k("g", r#"{"messages":[{"role":"user","content":"x","user":"a"}]}"#),
            k("g", r#"{"messages":[{"role":"user","content":"x","user":"b"}]}"#)
        );
        // Length prefixes keep "ab"+"c" apart from "a"+"bc".
        assert_ne!(k("g", r#"{"a":["ab","c"]}"#), k("g", r#"{"a":["a","bc"]}"#));
        let messages = serde_json::json!({"model": "m"});
        assert_ne!(
            key("g", "m", Endpoint::ChatCompletions, &messages),
            key("g", "m", Endpoint::Messages, &messages)
        );
    }
}
