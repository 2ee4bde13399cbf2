//! The mock's prompt cache, as Anthropic and Bedrock keep one: everything up to a request's
//! last breakpoint (`cache_control` on a block or tool, or a Converse `cachePoint`) is
//! written the first time that prefix is seen and read every time after. Usage reports
//! then say which, so a test sees both that breakpoints reached the provider and that
//! the gateway counts and prices cached tokens.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;

use super::{text_len, tokens_of};

/// Prefixes remembered; the oldest are not evicted, the set is simply cleared when full.
const MAX_PREFIXES: usize = 4096;

#[derive(Default)]
pub struct PromptCache(Mutex<HashSet<blake3::Hash>>);

/// Cache tokens of one request: read from the cache, or written to it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hit {
    pub read: u64,
    pub write: u64,
}

impl PromptCache {
    /// An Anthropic Messages request: tools, then system blocks, then message blocks, in
    /// the order Anthropic caches them; a breakpoint ends the prefix with its block.
    pub fn anthropic(&self, req: &Value, input: u64) -> Hit {
        let mut items: Vec<&Value> = Vec::new();
        items.extend(req["tools"].as_array().into_iter().flatten());
        items.extend(req["system"].as_array().into_iter().flatten());
        for m in req["messages"].as_array().into_iter().flatten() {
            match m["content"].as_array() {
                Some(blocks) => items.extend(blocks),
                None => items.push(&m["content"]),
            }
        }
        let last = items.iter().rposition(|b| b["cache_control"].is_object());
        self.hit(last.map(|i| &items[..=i]), input)
    }

    /// A Converse request: tools, system, then message blocks; a `cachePoint` entry ends
    /// the prefix before it.
    pub fn converse(&self, req: &Value, input: u64) -> Hit {
        let mut items: Vec<&Value> = Vec::new();
        items.extend(req["toolConfig"]["tools"].as_array().into_iter().flatten());
        items.extend(req["system"].as_array().into_iter().flatten());
        for m in req["messages"].as_array().into_iter().flatten() {
            items.extend(m["content"].as_array().into_iter().flatten());
        }
        let last = items.iter().rposition(|b| b.get("cachePoint").is_some());
        self.hit(last.map(|i| &items[..i]), input)
    }

    fn hit(&self, prefix: Option<&[&Value]>, input: u64) -> Hit {
        let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
            return Hit::default();
        };
        let mut h = blake3::Hasher::new();
        for item in prefix {
            h.update(item.to_string().as_bytes());
        }
        let tokens = tokens_of(prefix.iter().map(|v| text_len(v)).sum()).min(input);
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&h.finalize()) {
            return Hit { read: tokens, write: 0 };
        }
        if seen.len() >= MAX_PREFIXES {
            seen.clear();
        }
        seen.insert(h.finalize());
        Hit { read: 0, write: tokens }
    }
}
