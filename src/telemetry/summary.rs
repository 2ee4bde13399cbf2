//! What one finished request did: the one summary the access log and the spans read.
//! The proxy builds it from its context in the `logging` phase (`Ctx::summary`), so
//! neither writer reaches up into the request's state, and a fact they both show (the
//! caller, the model that answered, the cost) is worked out once.

use std::time::Instant;

use crate::api::Endpoint;
use crate::auth::ApiKeyEntry;
use crate::cache;
use crate::guard::Hit;
use crate::mcp::ToolCall;
use crate::provider::Target;
use crate::route::plan::{Outcome, Plan};
use crate::usage::Usage;

pub struct Summary<'a> {
    pub request_id: &'a str,
    /// The W3C trace id, when traces are on (the caller's, or a new one); else empty.
    pub trace_id: String,
    pub method: &'a str,
    pub path: &'a str,
    /// The status the caller got; 0 when nothing was written.
    pub status: u16,
    pub caller: Option<&'a ApiKeyEntry>,
    pub endpoint: Option<Endpoint>,
    /// The alias the caller asked for.
    pub alias: Option<&'a str>,
    /// The concrete model that answered, or was tried last.
    pub target: Option<&'a Target>,
    /// The candidates and the attempts made on them.
    pub plan: Option<&'a Plan>,
    pub upstream_status: Option<u16>,
    pub stream: bool,
    pub usage: Option<Usage>,
    /// The tokens are an estimate (a cut stream, an unreadable count).
    pub usage_estimated: bool,
    /// `usage` priced with the answering model's `pricing`.
    pub cost_usd: Option<f64>,
    /// The output cap the caller asked for.
    pub max_tokens: Option<u64>,
    /// The code of the error the gateway answered with, if any.
    pub error: Option<&'static str>,
    pub guard_hits: &'a [Hit],
    pub cache: Option<cache::Outcome>,
    pub started: Instant,
    /// When the first streamed event went to the caller.
    pub first_event: Option<Instant>,
    /// An MCP request's method, and the tool call it made.
    pub mcp_method: Option<&'static str>,
    pub mcp: Option<&'a ToolCall>,
    /// The caller's body, read only when a span captures content.
    pub request_body: &'a [u8],
}

impl Summary<'_> {
    pub fn owner(&self) -> &str {
        self.caller.map_or("", |c| c.owner.as_str())
    }

    pub fn key(&self) -> &str {
        self.caller.map_or("", |c| c.name.as_str())
    }

    pub fn attempts(&self) -> usize {
        self.plan.map_or(0, |p| p.attempts.len())
    }

    /// Attempts the plan moved on from (neither the answer nor one still pending).
    pub fn failovers(&self) -> usize {
        self.plan.map_or(0, |p| {
            p.attempts
                .iter()
                .filter(|a| !matches!(a.outcome, Outcome::Answered | Outcome::Pending))
                .count()
        })
    }

    /// The provider answered with a 2xx: tokens, cost and the response model are its.
    pub fn answered_ok(&self) -> bool {
        self.upstream_status.is_some_and(|s| (200..300).contains(&s))
    }
}
