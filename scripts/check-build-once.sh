#!/usr/bin/env bash
# After `make test`, `make run` must find its binary built (issue 35): the two commands
# compile once. Cargo reports each unit it had to compile as an artifact with "fresh": false;
# any such unit here means the two builds resolved something differently (features, or a
# profile setting such as debug info, see Cargo.toml's [profile.dev.package."*"]).
set -euo pipefail
cd "$(dirname "$0")/.."
rebuilt=$(cargo build --bins --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and not m.get("fresh", True):
        print(m["package_id"])')
if [ -n "$rebuilt" ]; then
  echo "check-build-once: make run compiled again after make test:" >&2
  echo "$rebuilt" >&2
  exit 1
fi
echo "check-build-once: make run after make test compiles nothing"
