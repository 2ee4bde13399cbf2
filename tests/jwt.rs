//! JWT callers end to end: tokens from a configured issuer, verified with a key set read
//! from a file, fetched over HTTP from the mock's identity provider, or found through
//! OpenID Connect discovery; each kind of bad token refused alike.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn rsa(kid: &str) -> Self {
        let rsa = Rsa::generate(2048).unwrap();
        let jwk =
            json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
        let pem = PKey::from_rsa(rsa).unwrap().private_key_to_pem_pkcs8().unwrap();
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&pem).unwrap(),
            jwk,
        }
    }

    fn ec(kid: &str) -> Self {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let (mut x, mut y) = (openssl::bn::BigNum::new().unwrap(), openssl::bn::BigNum::new().unwrap());
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap())
            .unwrap();
        let coord = |n: &openssl::bn::BigNum| b64(&n.to_vec_padded(32).unwrap());
        let jwk = json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": coord(&x), "y": coord(&y)});
        let pem = PKey::from_ec_key(ec).unwrap().private_key_to_pem_pkcs8().unwrap();
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&pem).unwrap(),
            jwk,
        }
    }

    fn ed25519(kid: &str) -> Self {
        let k = PKey::generate_ed25519().unwrap();
        let jwk = json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&k.raw_public_key().unwrap())});
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(&k.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signed, but naming key `kid` in the header.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn write_set(path: &Path, signers: &[&Signer]) {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk.clone()).collect();
    std::fs::write(path, json!({ "keys": keys }).to_string()).unwrap();
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const ISS: &str = "https://sso.example.test";

fn claims(owner: &str, models: &[&str]) -> Value {
    json!({"iss": ISS, "aud": "aigw", "team": owner, "aigw_models": models, "exp": now() + 600, "iat": now()})
}

async fn chat_as(gw: &Gateway, token: &str, model: &str) -> (u16, String) {
    let r = post_as(gw, token, "/v1/chat/completions", &chat_body(model)).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

const FILE_CONFIG: &str = r#"{SERVER}
  admin_keys: [{key: adm-jwt}]
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat, pricing: {input_per_mtok: 0, output_per_mtok: 1000}}
  - {name: emb, provider_key: mock, model: upstream-emb}
rate_limits:
  - {name: per-owner, requests_per_minute: 3}
budgets:
  - {name: jwt-daily, usd: 100, period: day}
jwt:
  - name: corp
    issuer: "https://sso.example.test"
    audience: [aigw, aigw-batch]
    jwks_file: "{JWKS}"
    owner_claim: team
    models_claim: aigw_models
    rate_limit: per-owner
    budget: jwt-daily
api_keys:
  - {name: main, key: "{CALLER_KEY}", owner: team-a}
"#;

#[tokio::test]
async fn tokens_from_a_key_file_are_callers_with_their_owner_models_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (rsa, ec, ed) = (Signer::rsa("rsa-1"), Signer::ec("ec-1"), Signer::ed25519("ed-1"));
    write_set(&jwks, &[&rsa, &ec, &ed]);
    let mock = Mock::start();
    let config = FILE_CONFIG.replace("{JWKS}", jwks.to_str().unwrap());
    let gw = Gateway::start_with(&config, &mock, &[("RUST_LOG", "debug")]);

    // Each algorithm, each its own owner.
    for (signer, owner) in [(&rsa, "owner-rsa"), (&ec, "owner-ec"), (&ed, "owner-ed")] {
        let (status, body) = chat_as(&gw, &signer.sign(&claims(owner, &["chat"])), "chat").await;
        assert_eq!(status, 200, "{:?}: {body}", signer.alg);
    }
    // The models claim: only what it grants.
    let (status, _) = chat_as(&gw, &rsa.sign(&claims("owner-rsa", &["chat"])), "emb").await;
    assert_eq!(status, 403);
    let (status, _) = chat_as(&gw, &rsa.sign(&claims("owner-none", &[])), "chat").await;
    assert_eq!(status, 403, "an empty grant grants nothing");
    let listed = get_json(
        &format!("{}/v1/models", gw.url()),
        &ed.sign(&claims("owner-ed", &["emb"])),
    )
    .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["emb"]);
    // The second audience is accepted too.
    let mut batch = claims("owner-ec", &["chat"]);
    batch["aud"] = json!(["other", "aigw-batch"]);
    assert_eq!(chat_as(&gw, &ec.sign(&batch), "chat").await.0, 200);

    // The owner's limit holds across tokens: three a minute, then 429; another owner is
    // untouched, and so are static keys.
    for i in 0..3 {
        let t = rsa.sign(
            &json!({"iss": ISS, "aud": "aigw", "team": "limited", "aigw_models": ["chat"], "exp": now() + 600 + i}),
        );
        assert_eq!(chat_as(&gw, &t, "chat").await.0, 200, "request {i}");
    }
    let (status, _) = chat_as(&gw, &ed.sign(&claims("limited", &["chat"])), "chat").await;
    assert_eq!(status, 429, "the same owner with another key's token");
    assert_eq!(
        chat_as(&gw, &ec.sign(&claims("unlimited", &["chat"])), "chat").await.0,
        200
    );
    assert_eq!(chat_as(&gw, CALLER_KEY, "chat").await.0, 200);

    // The access log and the metrics know the caller by its owner and the issuer's name.
    let lines = gw.access_lines_until(1, |l| l.contains("owner-ed"));
    let line: Value = serde_json::from_str(lines.iter().find(|l| l.contains("owner-ed")).unwrap()).unwrap();
    assert_eq!(line["owner"], "jwt:corp/owner-ed");
    assert_eq!(line["key"], "corp");
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"aigw_requests_total{model="chat",owner="jwt:corp/owner-rsa",status="200"} 1"#),
        "{m}"
    );
    // The issuer's budget, counted per owner: 8 output tokens at $1,000 per million.
    let spend = spend_of(&gw, "adm-jwt", "jwt:corp/owner-ec").await;
    assert_eq!(spend["budget"], "jwt-daily", "{spend}");
    assert!((spend["spent_usd"].as_f64().unwrap() - 0.016).abs() < 1e-9, "{spend}");

    // Every bad token: the same 401, whatever is wrong with it.
    let forger = Signer::rsa("rsa-1");
    let mut bad: Vec<(&str, String)> = vec![
        (
            "expired",
            rsa.sign(&json!({"iss": ISS, "aud": "aigw", "team": "x", "exp": now() - 120})),
        ),
        (
            "not yet valid",
            rsa.sign(&json!({"iss": ISS, "aud": "aigw", "team": "x", "exp": now() + 900, "nbf": now() + 600})),
        ),
        (
            "wrong audience",
            rsa.sign(&json!({"iss": ISS, "aud": "other", "team": "x", "exp": now() + 600})),
        ),
        (
            "no audience",
            rsa.sign(&json!({"iss": ISS, "team": "x", "exp": now() + 600})),
        ),
        ("no expiry", rsa.sign(&json!({"iss": ISS, "aud": "aigw", "team": "x"}))),
        (
            "unknown issuer",
            rsa.sign(&json!({"iss": "https://evil.test", "aud": "aigw", "team": "x", "exp": now() + 600})),
        ),
        (
            "no owner",
            rsa.sign(&json!({"iss": ISS, "aud": "aigw", "exp": now() + 600})),
        ),
        ("forged", forger.sign(&claims("owner-rsa", &["chat"]))),
        (
            "unknown kid",
            Signer::ed25519("ed-9").sign(&claims("owner-ed", &["chat"])),
        ),
        (
            "key of another family",
            Signer::ec("rsa-1").sign(&claims("owner-rsa", &["chat"])),
        ),
    ];
    // Tampered: a signed token with another owner pasted in.
    let good = rsa.sign(&claims("owner-rsa", &["chat"]));
    let parts: Vec<&str> = good.split('.').collect();
    let payload = b64(claims("team-a", &["chat", "emb"]).to_string().as_bytes());
    bad.push(("tampered", format!("{}.{payload}.{}", parts[0], parts[2])));
    // `alg: none`, and HS256 keyed with the RSA key's public modulus (algorithm confusion).
    let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    bad.push(("alg none", format!("{none}.{}.", parts[1])));
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("owner-rsa", &["chat"]),
        &EncodingKey::from_secret(rsa.jwk["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    bad.push(("hmac", hs));
    let (_, reference) = chat_as(&gw, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "chat").await;
    for (what, token) in &bad {
        let (status, body) = chat_as(&gw, token, "chat").await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body, reference, "{what}: one answer for every bad token");
    }
    let m = metrics_text(&gw).await;
    for reason in [
        "expired",
        "not_yet_valid",
        "audience",
        "signature",
        "unknown_key",
        "algorithm",
        "owner",
        "unknown_issuer",
    ] {
        assert!(
            m.contains(&format!("reason=\"{reason}\"")),
            "no {reason} rejection in:\n{m}"
        );
    }
    // Nothing of any token reaches a log, at debug level either.
    std::thread::sleep(Duration::from_millis(300));
    let logs = format!("{}\n{}", gw.log_text(), gw.access_lines().join("\n"));
    for (what, token) in bad
        .iter()
        .map(|(w, t)| (*w, t.as_str()))
        .chain([("good", good.as_str())])
    {
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!logs.contains(part), "{what}: a part of the token is in the logs");
        }
    }

    // Rotation: a new key set in the file, read on SIGHUP.
    let next = Signer::ed25519("ed-2");
    write_set(&jwks, &[&next]);
    gw.signal("HUP");
    let token = next.sign(&claims("owner-next", &["chat"]));
    let mut status = 0;
    for _ in 0..50 {
        status = chat_as(&gw, &token, "chat").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the rotated key after SIGHUP");
    assert_eq!(
        chat_as(&gw, &rsa.sign(&claims("owner-rsa", &["chat"])), "chat").await.0,
        401,
        "the retired key"
    );
}

/// Two issuers and a static key, each with an owner `carol`, and an issuer mapped onto the
/// static keys' owners: `{JWKS}` is one key set for all.
const OWNERS_CONFIG: &str = r#"{SERVER}
  admin_keys: [{key: adm-owners}]
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: "x?echo", cache: per-owner, pricing: {input_per_mtok: 0, output_per_mtok: 1000}}
rate_limits:
  - {name: two, requests_per_minute: 2}
budgets:
  - {name: daily, usd: 100, period: day}
cache:
  - {name: per-owner, ttl_s: 300}
jwt:
  - {name: corp, issuer: "https://corp.test", audience: aigw, jwks_file: "{JWKS}", rate_limit: two, budget: daily}
  - {name: partner, issuer: "https://partner.test", audience: aigw, jwks_file: "{JWKS}", rate_limit: two, budget: daily}
{MAPPED}api_keys:
  - {name: carol-key, key: sk-carol-static, owner: carol, rate_limit: two, budget: daily}
"#;

async fn chat_cached(gw: &Gateway, credential: &str, prompt: &str) -> (u16, String) {
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": prompt}]});
    let r = post_as(gw, credential, "/v1/chat/completions", &body).await;
    let cache = r
        .headers()
        .get("x-aigw-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), cache)
}

#[tokio::test]
async fn owners_of_different_issuers_and_keys_share_nothing_unless_the_config_maps_them() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = Signer::ed25519("k");
    write_set(&jwks, &[&signer]);
    let carol_of = |iss: &str| signer.sign(&json!({"iss": iss, "aud": "aigw", "sub": "carol", "exp": now() + 600}));
    let (corp, partner, mapped) = (
        carol_of("https://corp.test"),
        carol_of("https://partner.test"),
        carol_of("https://mapped.test"),
    );
    let prompt = unique("owners");
    let mock = Mock::start();
    let config = OWNERS_CONFIG
        .replace("{JWKS}", jwks.to_str().unwrap())
        .replace("{MAPPED}", "");
    let gw = Gateway::start(&config, &mock);

    // corp's carol spends her two requests a minute, the second from the cache.
    assert_eq!(chat_cached(&gw, &corp, &prompt).await, (200, "miss".into()));
    assert_eq!(chat_cached(&gw, &corp, &prompt).await, (200, "hit".into()));
    assert_eq!(chat_cached(&gw, &corp, &prompt).await.0, 429);
    // partner's carol and the static key's carol are other owners: their own limit, their
    // own cache entries.
    assert_eq!(chat_cached(&gw, &partner, &prompt).await, (200, "miss".into()));
    assert_eq!(chat_cached(&gw, "sk-carol-static", &prompt).await, (200, "miss".into()));
    assert_eq!(chat_cached(&gw, &partner, &prompt).await, (200, "hit".into()));
    assert_eq!(chat_cached(&gw, &partner, &prompt).await.0, 429);

    // Spend, the access log and the metrics name each owner with its source.
    for owner in ["jwt:corp/carol", "jwt:partner/carol", "carol"] {
        let spend = spend_of(&gw, "adm-owners", owner).await;
        assert_eq!(spend["budget"], "daily", "{owner}: {spend}");
    }
    let lines = gw.access_lines_until(7, |l| l.contains("carol"));
    for owner in ["jwt:corp/carol", "jwt:partner/carol", "carol"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!(r#""owner":"{owner}""#))),
            "{owner}: {lines:?}"
        );
    }
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"aigw_requests_total{model="chat",owner="jwt:corp/carol",status="429"} 1"#),
        "{m}"
    );
    drop(gw);

    // An issuer the config maps onto the static keys' owners shares carol's limit and
    // cache with the static key; the other issuers still do not.
    let config = OWNERS_CONFIG.replace("{JWKS}", jwks.to_str().unwrap()).replace(
        "{MAPPED}",
        &format!(
            "  - {{name: mapped, issuer: \"https://mapped.test\", audience: aigw, jwks_file: \"{}\", rate_limit: two, owner_namespace: keys}}\n",
            jwks.display()
        ),
    );
    let gw = Gateway::start(&config, &mock);
    let prompt = unique("mapped");
    assert_eq!(chat_cached(&gw, "sk-carol-static", &prompt).await, (200, "miss".into()));
    assert_eq!(chat_cached(&gw, &mapped, &prompt).await, (200, "hit".into()));
    assert_eq!(chat_cached(&gw, &mapped, &prompt).await.0, 429);
    assert_eq!(chat_cached(&gw, "sk-carol-static", &prompt).await.0, 429);
    assert_eq!(chat_cached(&gw, &corp, &prompt).await, (200, "miss".into()));
    let status = get_json(&format!("{}/admin/v1/status", gw.admin_url()), "adm-owners").await;
    let namespaces: Vec<&str> = status["jwt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["owner_namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["jwt:corp", "jwt:partner", "keys"]);
}

#[test]
fn owner_namespaces_and_caller_names_are_checked_when_the_config_loads() {
    let config = r#"version: 1
jwt:
  - {name: billing, issuer: "https://a.test", audience: x, jwks_url: "https://a.test/jwks"}
  - {name: "team/x", issuer: "https://b.test", audience: x, jwks_url: "https://b.test/jwks"}
  - {name: c, issuer: "https://c.test", audience: x, jwks_url: "https://c.test/jwks", owner_namespace: tenant-acme}
  - {name: d, issuer: "https://d.test", audience: x, jwks_url: "https://d.test/jwks", owner_namespace: "jwt:ghost"}
  - {name: e, issuer: "https://e.test", audience: x, jwks_url: "https://e.test/jwks", owner_namespace: "jwt:f"}
  - {name: f, issuer: "https://f.test", audience: x, jwks_url: "https://f.test/jwks", owner_namespace: keys}
  - {name: g, issuer: "https://g.test", audience: x, jwks_url: "https://g.test/jwks", owner_namespace: "jwt:billing"}
api_keys:
  - {name: billing, key: sk-billing-1}
  - {name: k2, key: sk-k2-1, owner: "jwt:corp/carol"}
  - {name: "JWT:corp/dave", key: sk-k3-1}
"#;
    assert_config_errors(
        config,
        &[
            "jwt[0].name: an api_keys entry is named 'billing' too",
            "jwt[1].name: must not contain '/'",
            "jwt[2].owner_namespace: must be keys or jwt:<an issuer's name>",
            "jwt[3].owner_namespace: no JWT issuer named 'ghost' in jwt",
            "jwt[4].owner_namespace: jwt:f keeps its owners in another namespace",
            "api_keys[1].owner: must not start with 'jwt:'",
            "api_keys[2].name: must not start with 'jwt:' (it marks the owners of JWT issuers); as the owner",
        ],
        "sk-billing-1",
    );
}

impl Signer {
    /// Signed with this header, written as JSON text (jsonwebtoken's `Header` cannot carry
    /// `crit`).
    fn sign_with_header(&self, header: &str, claims: &Value) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.alg).unwrap();
        format!("{message}.{sig}")
    }
}

#[tokio::test]
async fn tokens_with_critical_extensions_or_disguised_owners_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = Signer::ed25519("k");
    write_set(&jwks, &[&signer]);
    let mock = Mock::start();
    let config = format!(
        r#"{{SERVER}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: chat, provider_key: mock, model: upstream-chat}}
jwt:
  - {{name: corp, issuer: "{ISS}", audience: aigw, jwks_file: "{}", owner_claim: team}}
"#,
        jwks.display()
    );
    let gw = Gateway::start(&config, &mock);
    let claims = claims("carol", &[]);
    let header = |extra: &str| format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"k"{extra}}}"#);
    // The same header without `crit`, and with a parameter nobody must understand: taken.
    for extra in ["", r#","x-note":"crit""#] {
        let token = signer.sign_with_header(&header(extra), &claims);
        assert_eq!(chat_as(&gw, &token, "chat").await.0, 200, "{extra}");
    }
    let (_, reference) = chat_as(&gw, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "chat").await;
    for extra in [
        r#","crit":["exp"]"#,
        r#","crit":["x-aigw-ignored"],"x-aigw-ignored":true"#,
        r#","b64":false,"crit":["b64"]"#,
        r#","crit":[]"#,
        r#","cr\u0069t":["exp"]"#,
    ] {
        let token = signer.sign_with_header(&header(extra), &claims);
        let (status, body) = chat_as(&gw, &token, "chat").await;
        assert_eq!((status, body.as_str()), (401, reference.as_str()), "{extra}");
    }
    // Owners that would read as someone else, or break the log line they are written on.
    for owner in [
        "carol\u{202e}nimda",
        "\u{2066}carol\u{2069}",
        "carol\u{200f}",
        "carol\u{2028}admin",
        "car\u{200b}ol",
        "carol\u{1b}[2K",
        "carol ",
    ] {
        let token = signer.sign(&json!({"iss": ISS, "aud": "aigw", "team": owner, "exp": now() + 600}));
        let (status, body) = chat_as(&gw, &token, "chat").await;
        assert_eq!((status, body.as_str()), (401, reference.as_str()), "{owner:?}");
    }
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"aigw_jwt_rejections_total{issuer="corp",reason="critical_extension"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"aigw_jwt_rejections_total{issuer="corp",reason="owner"} 7"#),
        "{m}"
    );

    // Owners in the config follow the same rule.
    assert_config_errors(
        "version: 1\napi_keys:\n  - {name: a, key: sk-owner-a1, owner: \"team\\u202Ea\"}\n  - {name: \"b\\u2028c\", key: sk-owner-b1}\n  - {name: d, key: sk-owner-d1, owner: \"d\\u200D\"}\n",
        &[
            "api_keys[0].owner: must not hold U+202E",
            "api_keys[1].name: must not hold U+2028",
            "api_keys[2].owner: must not hold U+200D",
        ],
        "sk-owner-a1",
    );
}

const URL_CONFIG: &str = r#"{SERVER}
provider_keys:
  - {name: mock, provider: openai_compatible, base_url: "{MOCK}/v1", api_key: "{PROVIDER_KEY}"}
models:
  - {name: chat, provider_key: mock, model: upstream-chat}
jwt:
  - {name: corp, issuer: "https://sso.example.test", audience: aigw, jwks_url: "{MOCK}/idp/jwks", owner_claim: team}
"#;

fn fetches(mock: &Mock) -> u64 {
    mock.stats()["jwks_fetches"].as_u64().unwrap()
}

/// Sends `n` tokens with made-up `kid`s at once; each must be refused.
async fn flood_unknown_kids(gw: &Gateway, n: usize) {
    let signer = Signer::ed25519("x");
    let tokens: Vec<String> = (0..n)
        .map(|i| signer.sign_as(&format!("made-up-{i}"), &claims("owner", &["chat"])))
        .collect();
    let answers = futures_util::future::join_all(tokens.iter().map(|t| chat_as(gw, t, "chat"))).await;
    assert!(answers.iter().all(|(s, _)| *s == 401), "{answers:?}");
}

#[tokio::test]
async fn a_key_set_over_http_is_refetched_for_an_unknown_kid_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (a, b) = (Signer::rsa("a"), Signer::ed25519("b"));
    write_set(&jwks, &[&a]);
    let mock = Mock::with_jwks(&jwks);
    let gw = Gateway::start(URL_CONFIG, &mock);

    // The first fetch, in the background or for the first token, whichever comes first.
    assert_eq!(
        chat_as(&gw, &a.sign(&claims("owner-a", &["chat"])), "chat").await.0,
        200
    );
    assert_eq!(fetches(&mock), 1);

    // The provider rotates in key b. Tokens with made-up kids cannot make the gateway
    // fetch again so soon, and neither can b's until the interval passed.
    write_set(&jwks, &[&a, &b]);
    flood_unknown_kids(&gw, 20).await;
    assert_eq!(fetches(&mock), 1, "a flood of unknown kids fetched the key set");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        chat_as(&gw, &b.sign(&claims("owner-b", &["chat"])), "chat").await.0,
        200,
        "b after one refetch"
    );
    assert_eq!(fetches(&mock), 2);
    flood_unknown_kids(&gw, 20).await;
    assert_eq!(fetches(&mock), 2);

    // The provider goes away: the keys fetched last keep serving.
    std::fs::remove_file(&jwks).unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    flood_unknown_kids(&gw, 5).await;
    assert_eq!(fetches(&mock), 3, "one refetch, which failed");
    assert_eq!(
        chat_as(&gw, &a.sign(&claims("owner-a", &["chat"])), "chat").await.0,
        200
    );
    assert_eq!(
        chat_as(&gw, &b.sign(&claims("owner-b", &["chat"])), "chat").await.0,
        200
    );
    let m = metrics_text(&gw).await;
    assert!(
        m.contains(r#"aigw_jwks_fetches_total{issuer="corp",outcome="ok"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"aigw_jwks_fetches_total{issuer="corp",outcome="error"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn discovery_finds_the_key_set_from_the_issuer_alone() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let signer = Signer::ec("k1");
    write_set(&jwks, &[&signer]);
    let mock = Mock::with_jwks(&jwks);
    let issuer = format!("{}/idp", mock.url());
    let config = format!(
        r#"{{SERVER}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "{{MOCK}}/v1", api_key: "{{PROVIDER_KEY}}"}}
models:
  - {{name: chat, provider_key: mock, model: upstream-chat}}
jwt:
  - {{name: idp, issuer: "{issuer}", audience: aigw, models: [chat]}}
"#
    );
    let gw = Gateway::start(&config, &mock);
    // The background fetch comes within a second or two of the start.
    assert!(
        wait_until_async(|| async { fetches(&mock) >= 1 }).await,
        "no fetch in the background"
    );
    let token = signer.sign(&json!({"iss": issuer, "aud": "aigw", "sub": "svc-1", "exp": now() + 60}));
    let (status, body) = chat_as(&gw, &token, "chat").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fetches(&mock), 1);
    // The issuer's models cap what its tokens reach; the owner is `sub` by default.
    let other = signer.sign(&json!({"iss": issuer, "aud": "aigw", "sub": "svc-1", "exp": now() + 60}));
    assert_eq!(
        get_json(&format!("{}/v1/models", gw.url()), &other).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let lines = gw.access_lines_until(1, |l| l.contains("svc-1"));
    assert!(
        lines.iter().any(|l| l.contains(r#""owner":"jwt:idp/svc-1""#)),
        "{lines:?}"
    );
}

#[test]
fn bad_jwt_sections_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_set = dir.path().join("bad.json");
    std::fs::write(&not_a_set, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0LXZhbHVl"}]}"#).unwrap();
    let config = format!(
        r#"version: 1
jwt:
  - {{name: a, issuer: "https://a.test", jwks_file: /nonexistent/jwks.json}}
  - {{name: b, issuer: "https://b.test", audience: x, jwks_file: "{bad}", jwks_url: "https://b.test/jwks"}}
  - {{name: c, issuer: "https://c.test", audience: x, jwks_file: "{bad}", rate_limit: nope, models: [missing]}}
  - {{name: d, issuer: "http://idp.internal", audience: x}}
  - {{name: e, issuer: "https://c.test", audience: x, jwks_url: "https://c.test/jwks", refresh_s: 1, leeway_s: 3600}}
"#,
        bad = not_a_set.display()
    );
    assert_config_errors(
        &config,
        &[
            "jwt[0].audience: name the audience",
            "jwt[0].jwks_file: cannot read '/nonexistent/jwks.json'",
            "jwt[1]: set jwks_file or jwks_url, not both",
            "jwt[2].jwks_file: ",
            "has no signing key aigw can use",
            "jwt[2].rate_limit: no rate limit named 'nope'",
            "jwt[2].models[0]: no model named 'missing'",
            "jwt[3].issuer: must be an https URL",
            "jwt[4].issuer: jwt[2] has the same issuer",
            "jwt[4].refresh_s: must be between 10 and 86400",
            "jwt[4].leeway_s: must be at most 300",
        ],
        "c2VjcmV0LXZhbHVl",
    );
}
