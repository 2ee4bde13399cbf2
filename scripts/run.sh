#!/usr/bin/env bash
# `make run`: the bundled mock upstream plus the gateway with conf/aigw.yaml, in the
# foreground. Ctrl-C stops both.
set -euo pipefail
BIN=${1:-target/debug/aigw}
CONFIG=${AIGW_CONFIG:-conf/aigw.yaml}

"$BIN" validate --config "$CONFIG"
"$BIN" mock-upstream --listen 127.0.0.1:8000 --api-key "${AIGW_MOCK_KEY:-sk-mock-provider}" &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT

cat <<'TRY'

aigw is starting on http://127.0.0.1:8080 (admin: http://127.0.0.1:9090/readyz).
Try it from another terminal:

  curl -s http://127.0.0.1:8080/v1/chat/completions \
    -H 'Authorization: Bearer sk-demo-caller' -H 'Content-Type: application/json' \
    -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'

  python3 - <<'PY'
  from openai import OpenAI   # pip install openai
  client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="sk-demo-caller")
  r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
  print(r.choices[0].message.content)
  for chunk in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                              messages=[{"role": "user", "content": "Stream, please"}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)
  print()
  PY

Ask the same question twice: the second answer comes from the cache (curl -i shows
x-aigw-cache: hit). Guardrails: AIGW_CONFIG=conf/guardrails.yaml make run (docs/guardrails.md).
TRY
"$BIN" serve --config "$CONFIG"
