//! Every shipped config is loaded by a test, so the docs cannot rot.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{asset, BIN};

fn validate(path: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(asset(path))
        .current_dir(asset(""))
        .env("CI_BOT_KEY", "sk-ci-bot")
        .env("AIGW_CALLER_KEY", "sk-app")
        .env("GOOGLE_APPLICATION_CREDENTIALS", asset("tests/assets/vertex-sa.json"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "example-secret")
        .env("GUARD_TOKEN", "example-token")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_shipped_config_validates() {
    let mut files: Vec<String> = std::fs::read_dir(asset("conf"))
        .unwrap()
        .map(|e| format!("conf/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.extend(
        [
            "loadtest/aigw.yaml",
            "loadtest/production.yaml",
            "loadtest/soak.yaml",
            "loadtest/webhook.yaml",
            "loadtest/routing.yaml",
        ]
        .map(String::from),
    );
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let (ok, out) = validate(&f);
        assert!(ok, "{f} does not validate:\n{out}");
    }
}

#[test]
fn reference_config_names_every_section() {
    let text = std::fs::read_to_string(asset("conf/aigw.reference.yaml")).unwrap();
    let sections = ["version", "server", "observability"]
        .into_iter()
        .chain(aigw::config::Kind::ALL.map(aigw::config::Kind::name))
        .map(|s| format!("{s}:"));
    for section in sections {
        assert!(
            text.lines().any(|l| l.starts_with(&section)),
            "{section} is not documented"
        );
    }
}

/// `{server}__{tool}` must name one server and tool: with servers `math` and `math_`,
/// `math___secret` would be both `math`'s `_secret` and `math_`'s `secret`, and a glob
/// written for one would reach the other.
#[test]
fn mcp_server_names_that_make_tool_names_ambiguous_are_refused() {
    common::assert_config_errors(
        r#"version: 1
mcp_servers:
  - {name: math, url: "https://tools.example/math"}
  - {name: math_, url: "https://tools.example/math2"}
  - {name: "", url: "https://tools.example/none"}
  - {name: "x_", url: "https://tools.example/x"}
"#,
        &[
            "mcp_servers[1].name: must not end with '_'",
            "mcp_servers[2].name: must not be empty",
            "mcp_servers[3].name: must not end with '_'",
        ],
        "no-secret-here",
    );
}

#[test]
fn bad_mcp_sections_are_config_errors() {
    common::assert_config_errors(
        r#"version: 1
mcp_servers:
  - {name: "a__b", url: "ftp://tools", headers: {authorization: "Bearer mcp-secret-value"}}
  - {name: ok, url: "https://tools.example/mcp", headers: {"bad header": "mcp-secret-value"}}
api_keys:
  - {name: k, key: sk-k, mcp: {servers: [ok, missing], tools: ["ok__*"]}}
  - {name: j, key: sk-j, mcp: {servers: [ok], extra: 1}}
"#,
        &[
            "mcp_servers[0].name: must not contain '__'",
            "mcp_servers[0].url: must be an http or https URL",
            "mcp_servers[1].headers.bad header: is not a valid HTTP header",
            "api_keys[0].mcp.servers[1]: no MCP server named 'missing' in mcp_servers",
            "api_keys[1].mcp.extra",
        ],
        "mcp-secret-value",
    );
}

#[test]
fn a_batch_discount_is_a_share_of_the_price() {
    common::assert_config_errors(
        r#"version: 1
provider_keys:
  - {name: oa, provider: openai, api_key: "sk-provider-secret"}
models:
  - {name: a, provider_key: oa, pricing: {input_per_mtok: 1, batch_discount: 1.5}}
  - {name: b, provider_key: oa, pricing: {input_per_mtok: 1, batch_discount: -0.1}}
  - {name: c, provider_key: oa, pricing: {input_per_mtok: 1, batch_discount: 0.5}}
"#,
        &[
            "models[0].pricing.batch_discount: must be a share of the normal price, from 0 to 1",
            "models[1].pricing.batch_discount: must be a share of the normal price, from 0 to 1",
        ],
        "sk-provider-secret",
    );
}

#[test]
fn quotas_and_cost_routing_are_checked() {
    common::assert_config_errors(
        r#"version: 1
provider_keys:
  - {name: oa, provider: openai, api_key: "sk-provider-secret"}
models:
  - {name: a, provider_key: oa, quota: {rpm: 0}}
  - {name: b, provider_key: oa, quota: {}}
  - {name: c, provider_key: oa, pricing: {input_per_mtok: 1}}
  - name: r
    quota: {rpm: 5}
    routing: {strategy: cost, input_per_output: -1, targets: [{model: a}, {model: c}]}
  - name: canaries
    routing: {targets: [{model: a, percent: 120}, {model: c, owners: []}]}
"#,
        &[
            "models[0].quota: rpm and tpm must be at least 1",
            "models[1].quota: needs rpm, tpm or both",
            "models[3].quota: a quota is what a provider grants one concrete model: set it on the targets",
            "models[3].routing.targets[0].model: strategy cost orders targets by pricing: 'a' has none",
            "models[3].routing.input_per_output: must be zero or a positive number",
            "models[4].routing.targets[0].percent: must be a share of requests, from 0 to 100",
            "models[4].routing.targets[1].owners: lists no owner: leave it out for every owner",
            "models[4].routing.targets: every target is a canary (owners or percent): one must take every request",
        ],
        "sk-provider-secret",
    );
}
