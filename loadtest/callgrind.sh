#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a CPU figure that
# does not depend on the machine's load, for same-run A/Bs of builds on a busy or shared
# machine (throughput needs a quiet one: loadtest/run.sh, loadtest/ab.sh).
#
#   loadtest/callgrind.sh bare|gateway|gateway-stream BIN [BIN...]
#
# Each BIN is one build of what is measured: examples/bare_proxy for `bare`, aigw for the
# gateway rows. For each, in turn: the proxy runs under callgrind with one worker thread
# in front of the mock upstream (MOCK_BIN, default target/release/aigw), takes WARMUP
# requests, its counters are zeroed, it takes REQUESTS more (one client, CONNS keep-alive
# connections, a JSON chat completion as in loadtest/post.lua, or a stream), and the
# counters of those alone are divided by REQUESTS. ROUNDS rounds alternate the builds.
# Prints one line per build and round (KEEP=DIR keeps the dumps); needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

KIND="${1:?usage: $0 bare|gateway|gateway-stream BIN [BIN...]}"
shift
[ $# -ge 1 ] || { echo "usage: $0 bare|gateway|gateway-stream BIN [BIN...]" >&2; exit 2; }
MOCK_BIN="${MOCK_BIN:-target/release/aigw}"
REQUESTS="${REQUESTS:-2000}"
WARMUP="${WARMUP:-200}"
CONNS="${CONNS:-2}"
ROUNDS="${ROUNDS:-1}"
# Ports apart from loadtest/run.sh's, so the two never answer for each other.
MOCK_PORT=18100 PROXY_PORT=18180 ADMIN_PORT=19190

command -v valgrind >/dev/null || { echo "installing valgrind"; apt-get install -y -qq valgrind >/dev/null; }
NO_WRK=1 source loadtest/common.sh
ports_free "$MOCK_PORT" "$PROXY_PORT" "$ADMIN_PORT"

"$MOCK_BIN" mock-upstream --listen 127.0.0.1:$MOCK_PORT >/dev/null 2>&1 & PIDS+=($!)
wait_port $MOCK_PORT
sed -e "s/127.0.0.1:18080/127.0.0.1:$PROXY_PORT/; s/127.0.0.1:19090/127.0.0.1:$ADMIN_PORT/" \
  -e "s/127.0.0.1:18000/127.0.0.1:$MOCK_PORT/; s/\${AIGW_THREADS:-0}/1/" loadtest/aigw.yaml >"$WORK/aigw.yaml"

STREAM=false
[ "$KIND" = gateway-stream ] && STREAM=true

# The client: N requests over CONNS keep-alive connections, each answer read whole and
# checked (a 200 with the mock's answer), so a broken build cannot pass for a fast one.
cat >"$WORK/client.py" <<'EOF'
import http.client, json, sys, threading
port, n, conns, stream = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "true"
body = json.dumps({"model": "load-model", "stream": stream,
                   "messages": [{"role": "user", "content": "Summarise the load test in one sentence."}]})
headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-load-caller"}
errors = []
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse()
        data = r.read()
        if r.status != 200 or (b"[DONE]" not in data if stream else b"choices" not in data):
            errors.append((r.status, data[:200]))
    c.close()
ts = [threading.Thread(target=run, args=(n // conns + (1 if i < n % conns else 0),)) for i in range(conns)]
[t.start() for t in ts]
[t.join() for t in ts]
if errors:
    sys.exit(f"{len(errors)} bad answers, first: {errors[0]}")
EOF

measure() {
  local bin="$1" out="$WORK/cg" pid
  rm -rf "$out" && mkdir -p "$out"
  if [ "$KIND" = bare ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
      "$bin" 127.0.0.1:$PROXY_PORT 127.0.0.1:$MOCK_PORT 1 >/dev/null 2>"$out/log" & pid=$!
  else
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
      "$bin" serve --config "$WORK/aigw.yaml" >/dev/null 2>"$out/log" & pid=$!
  fi
  PIDS+=($pid)
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null && break; sleep 0.1; done
  python3 "$WORK/client.py" $PROXY_PORT "$WARMUP" "$CONNS" $STREAM
  callgrind_control -z "$pid" >/dev/null 2>&1
  python3 "$WORK/client.py" $PROXY_PORT "$REQUESTS" "$CONNS" $STREAM
  callgrind_control -d "$pid" >/dev/null 2>&1
  # The dump just made is the newest file with a part number.
  local dump total
  dump=$(ls -t "$out"/cg.*.* | head -n1)
  total=$(awk '/^(totals|summary):/ {print $2; exit}' "$dump")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # KEEP=DIR keeps each dump for callgrind_annotate.
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/$KIND.$(basename "$bin").$(date +%s%N)"
  printf '%s\t%s\t%d instructions/request (%s over %d requests)\n' "$KIND" "$bin" $((total / REQUESTS)) "$total" "$REQUESTS"
}

for ((r = 1; r <= ROUNDS; r++)); do
  for bin in "$@"; do measure "$bin"; done
done
