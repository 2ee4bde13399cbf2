//! The resource kinds: each a list section of the config file, a path of the admin API
//! (`/admin/v1/{kind}`) and a key prefix in the config store (`{prefix}/{kind}/{name}`).
//! One enum, so that a kind added here is known to all three.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ProviderKeys,
    Models,
    ApiKeys,
    Jwt,
    RateLimits,
    Budgets,
    Guardrails,
    Cache,
    McpServers,
}

impl Kind {
    /// Every kind, in the order a config file lists them.
    pub const ALL: [Kind; 9] = [
        Kind::ProviderKeys,
        Kind::Models,
        Kind::ApiKeys,
        Kind::Jwt,
        Kind::RateLimits,
        Kind::Budgets,
        Kind::Guardrails,
        Kind::Cache,
        Kind::McpServers,
    ];

    /// The section's name in the config file, the admin API and the store.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ProviderKeys => "provider_keys",
            Kind::Models => "models",
            Kind::ApiKeys => "api_keys",
            Kind::Jwt => "jwt",
            Kind::RateLimits => "rate_limits",
            Kind::Budgets => "budgets",
            Kind::Guardrails => "guardrails",
            Kind::Cache => "cache",
            Kind::McpServers => "mcp_servers",
        }
    }

    /// One item of this kind, as error messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::ProviderKeys => "provider key",
            Kind::Models => "model",
            Kind::ApiKeys => "caller key",
            Kind::Jwt => "JWT issuer",
            Kind::RateLimits => "rate limit",
            Kind::Budgets => "budget",
            Kind::Guardrails => "guardrail",
            Kind::Cache => "cache",
            Kind::McpServers => "MCP server",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Fields that hold a secret, as JSON pointers: a provider's key, AWS secret and
    /// session token; a caller's plaintext key.
    pub fn secret_fields(self) -> &'static [&'static str] {
        match self {
            Kind::ProviderKeys => &["/api_key", "/aws/secret_access_key", "/aws/session_token"],
            Kind::ApiKeys => &["/key"],
            Kind::Guardrails => &["/service/aws/secret_access_key", "/service/aws/session_token"],
            _ => &[],
        }
    }

    /// URL fields: their userinfo, query and fragment may carry a credential, shown
    /// marked ([`crate::outbound::marked`]).
    pub fn url_fields(self) -> &'static [&'static str] {
        match self {
            Kind::McpServers => &["/url"],
            Kind::Jwt => &["/jwks_url"],
            Kind::Guardrails => &[
                "/service/url",
                "/service/analyzer_url",
                "/service/anonymizer_url",
                "/service/base_url",
            ],
            _ => &[],
        }
    }

    /// Objects (JSON pointers) whose every value may be a secret: a provider's extra
    /// `headers` often carry the credential of an OpenAI-compatible server, a webhook
    /// guardrail's its token.
    pub fn secret_maps(self) -> &'static [&'static str] {
        match self {
            Kind::ProviderKeys | Kind::McpServers => &["/headers"],
            Kind::Guardrails => &["/service/headers"],
            _ => &[],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("server"), None);
    }
}
