"""Fixtures: the real aigw binary as mock upstream and as gateway, on ephemeral ports."""

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("AIGW_BIN", str(ROOT / "target" / "debug" / "aigw"))
PROVIDER_KEY = "sk-py-provider-key"
CALLER_KEY = "sk-py-caller-key"
# The identity provider whose tokens the gateway takes (the `jwt` section below).
JWT_ISSUER = "https://sso.py.test"
JWT_KEY = Ed25519PrivateKey.generate()


def jwt_token(owner: str, models: list, **claims) -> str:
    """A token of the configured issuer for `owner`, allowed `models`."""
    body = {"iss": JWT_ISSUER, "aud": "aigw", "sub": owner, "models": models, "exp": int(time.time()) + 300}
    body.update(claims)
    return jwt.encode(body, JWT_KEY, algorithm="EdDSA", headers={"kid": "py-1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


CONFIG = """
version: 1
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
provider_keys:
  - name: mock
    provider: openai_compatible
    base_url: "http://127.0.0.1:{mock}/v1"
    api_key: "{provider_key}"
  - name: mock-anthropic
    provider: anthropic
    base_url: "http://127.0.0.1:{mock}"
    api_key: "{provider_key}"
  - name: mock-gemini
    provider: gemini
    base_url: "http://127.0.0.1:{mock}"
    api_key: "{provider_key}"
  - name: mock-vertex
    provider: vertex
    base_url: "http://127.0.0.1:{mock}"
    vertex: {{project: aigw-py, location: us-east5, credentials_file: "{vertex_key}"}}
  - name: mock-bedrock
    provider: bedrock
    base_url: "http://127.0.0.1:{mock}"
    aws: {{region: us-east-1, access_key_id: AKIDAIGWPY, secret_access_key: "{provider_key}"}}
models:
  - {{name: claude-mock, provider_key: mock-anthropic, model: mock-claude}}
  - {{name: gemini-mock, provider_key: mock-gemini, model: gemini-2.5-flash}}
  - {{name: vertex-gemini, provider_key: mock-vertex, model: gemini-2.5-flash}}
  - {{name: vertex-claude, provider_key: mock-vertex, model: "claude-sonnet-4@20250514"}}
  - {{name: bedrock-nova, provider_key: mock-bedrock, model: "amazon.nova-lite-v1:0"}}
  - {{name: bedrock-claude, provider_key: mock-bedrock, model: "anthropic.claude-sonnet-4-5-v1:0"}}
  - {{name: reasoner, provider_key: mock, model: "r1?reasoning=9"}}
  - {{name: small-claude, provider_key: mock-anthropic, model: "c?error=context_length"}}
  - {{name: small-bedrock, provider_key: mock-bedrock, model: "b?error=context_length"}}
  - name: long-context
    routing:
      retry_on: [429, 503, context_length_exceeded]
      targets: [{{model: small-claude}}, {{model: small-bedrock, priority: 1}}, {{model: gpt-4o-mini, priority: 2}}]
  - {{name: gpt-4o-mini, provider_key: mock, model: mock-gpt}}
  - {{name: text-embedding-3-small, provider_key: mock}}
  - {{name: rate-limited, provider_key: mock, model: "x?status=429&retry_after=1"}}
  - {{name: forbidden-model, provider_key: mock}}
  - {{name: guarded-echo, provider_key: mock, model: "x?echo", guardrails: [py-pii, py-codenames]}}
  - {{name: guarded-claude, provider_key: mock-anthropic, model: "c?echo", guardrails: [py-pii, py-codenames]}}
  - {{name: cached-echo, provider_key: mock, model: "x?echo", cache: py-cache}}
  - {{name: plain-echo, provider_key: mock, model: "x?echo"}}
  - {{name: cached-claude, provider_key: mock-anthropic, model: "c?echo", cache: py-cache}}
  - {{name: instruct, provider_key: mock, model: "gpt-3.5-turbo-instruct?echo"}}
  - {{name: moderation, provider_key: mock, model: omni-moderation-latest}}
  - {{name: image-model, provider_key: mock, model: gpt-image-1}}
  - {{name: whisper, provider_key: mock, model: whisper-1}}
  - {{name: tts, provider_key: mock, model: tts-1}}
  - {{name: realtime, provider_key: mock, model: gpt-realtime, guardrails: [py-codenames]}}
  - {{name: realtime-says, provider_key: mock, model: "gpt-realtime?say=the+falcon+flies", guardrails: [py-codenames]}}
cache:
  - {{name: py-cache, ttl_s: 300}}
guardrails:
  - {{name: py-pii, pack: "{root}/filters/pii.yaml", action: mask}}
  - {{name: py-codenames, rules: [{{kind: keyword, words: [falcon], whole_word: true}}], stage: response, action: block}}
  - {{name: py-secrets, pack: "{root}/filters/secrets.yaml", stage: request, action: block}}
api_keys:
  - {{name: py, key: "{caller_key}", models: [gpt-4o-mini, text-embedding-3-small, rate-limited, claude-mock, gemini-mock, vertex-gemini, vertex-claude, bedrock-nova, bedrock-claude, reasoner, long-context, instruct, moderation, image-model, whisper, tts]}}
  - {{name: py-realtime, key: sk-py-realtime, models: [realtime, realtime-says]}}
  - {{name: py-realtime-one, key: sk-py-realtime-one, models: [realtime], rate_limit: one-at-once}}
  - {{name: py-openai-limited, key: sk-py-openai-limited, rate_limit: one-per-minute}}
  - {{name: py-anthropic-limited, key: sk-py-anthropic-limited, rate_limit: one-per-minute}}
  - {{name: py-guarded, key: sk-py-guarded, guardrails: [py-secrets]}}
  - {{name: py-free, key: sk-py-free}}
rate_limits:
  - {{name: one-per-minute, requests_per_minute: 1}}
  - {{name: one-at-once, concurrency: 1}}
jwt:
  - {{name: py-sso, issuer: "{jwt_issuer}", audience: aigw, jwks_file: "{jwks}", models_claim: models}}
"""


@pytest.fixture(scope="session")
def gateway():
    mock_port, port, admin = free_port(), free_port(), free_port()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        mock = subprocess.Popen(
            [
                BIN, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}", "--api-key", PROVIDER_KEY, "--threads", "1",
                "--google-public-key", str(ROOT / "tests" / "assets" / "vertex-test-key.pub.pem"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(mock)
        wait_port(mock_port, mock, "mock upstream")
        # A service account key file whose token endpoint is the mock's.
        vertex_key = Path(tmp) / "vertex-sa.json"
        vertex_key.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "private_key_id": "py",
                    "private_key": (ROOT / "tests" / "assets" / "vertex-test-key.pem").read_text(),
                    "client_email": "gateway@aigw-py.iam.gserviceaccount.com",
                    "token_uri": f"http://127.0.0.1:{mock_port}/token",
                }
            )
        )
        jwks = Path(tmp) / "jwks.json"
        public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(JWT_KEY.public_key()))
        jwks.write_text(json.dumps({"keys": [dict(public, kid="py-1", use="sig")]}))
        cfg = Path(tmp) / "aigw.yaml"
        cfg.write_text(
            CONFIG.format(
                port=port,
                admin=admin,
                mock=mock_port,
                provider_key=PROVIDER_KEY,
                caller_key=CALLER_KEY,
                root=ROOT,
                vertex_key=vertex_key,
                jwt_issuer=JWT_ISSUER,
                jwks=jwks,
            )
        )
        gw = subprocess.Popen([BIN, "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gw)
        wait_port(port, gw, "gateway")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            for p in procs:
                p.kill()
                p.wait()
