#!/usr/bin/env bash
# `make soak`: the release gateway under mixed traffic for SOAK_SECONDS (default 300):
# successes, streams, failovers, provider 503s, streams cut by the provider, cache hits,
# guardrail masking and 429s from wrk, while curl loops hang up mid-stream. The gateway's
# RSS is sampled throughout. It passes when, once the load stops, nothing is in flight and
# no concurrency slot is held, and RSS over the last three quarters of the run stayed
# within SOAK_RSS_SLACK_MIB (default 8). First it measures memory per idle kept-alive
# connection. Prints a Markdown report and saves it under loadtest/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${AIGW_BIN:-target/release/aigw}
SECONDS_TOTAL=${SOAK_SECONDS:-300}
SLACK_MIB=${SOAK_RSS_SLACK_MIB:-8}
CONNS=${SOAK_CONNS:-32}
IDLE=${SOAK_IDLE_CONNS:-2000}
OUT=loadtest/results/$(date -u +%Y-%m-%d)-soak-$(hostname -s).md
n=2; base=${OUT%.md}
while [ -e "$OUT" ]; do OUT=$base-$n.md; n=$((n + 1)); done
# shellcheck source=loadtest/common.sh
. loadtest/common.sh
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
metric() { curl -s http://127.0.0.1:19190/metrics | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }

"$BIN" mock-upstream --listen 127.0.0.1:18100 >/dev/null 2>&1 & PIDS+=($!)
wait_port 18100
RUST_LOG=warn "$BIN" serve --config loadtest/soak.yaml >/dev/null 2>"$WORK/gw.log" & GW=$!; PIDS+=($GW)
wait_port 18180

# Memory per idle connection, on the fresh gateway (after load the allocator's free pages
# would hide it): RSS with IDLE kept-alive connections open, minus before.
BEFORE_IDLE=$(rss_kib "$GW")
mkfifo "$WORK/hold"
python3 loadtest/idle.py 127.0.0.1 18180 "$IDLE" sk-soak-caller <"$WORK/hold" >"$WORK/idle.out" & IDLER=$!; PIDS+=($IDLER)
exec 7>"$WORK/hold"
for _ in $(seq 600); do grep -q READY "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
sleep 1
WITH_IDLE=$(rss_kib "$GW")
exec 7>&-
wait "$IDLER" || true
PER_CONN=$(awk -v a="$WITH_IDLE" -v b="$BEFORE_IDLE" -v n="$IDLE" 'BEGIN{printf "%.1f", (a-b)/n}')


# Callers that hang up mid-stream: three loops of curl giving up after 150 ms of a slow stream.
END=$((SECONDS + SECONDS_TOTAL))
for _ in 1 2 3; do
  (while [ $SECONDS -lt $END ]; do
     curl -s -o /dev/null --max-time 0.15 http://127.0.0.1:18180/v1/chat/completions \
       -H 'Authorization: Bearer sk-soak-caller' -H 'Content-Type: application/json' \
       -d '{"model":"soak-slow","stream":true,"messages":[{"role":"user","content":"hi"}]}' || true
   done) & PIDS+=($!)
done

wrk -t2 -c"$CONNS" -d"${SECONDS_TOTAL}s" -s loadtest/soak.lua http://127.0.0.1:18180 >"$WORK/wrk.out" & WRK=$!; PIDS+=($WRK)
SAMPLES=()
STEP=$(( SECONDS_TOTAL / 20 > 0 ? SECONDS_TOTAL / 20 : 1 ))
while kill -0 "$WRK" 2>/dev/null; do
  SAMPLES+=("$(rss_kib "$GW")")
  sleep "$STEP"
done
wait "$WRK" || true
sleep 2   # the curl loops end with the deadline; their last requests finish
read -r _ reqs dur p50 p99 errs <<<"$(grep '^RESULT' "$WORK/wrk.out")"

INFLIGHT=$(metric aigw_inflight_requests)
SLOTS=$(metric aigw_ratelimit_concurrency_in_use)
CANCELLED=$(curl -s http://127.0.0.1:18100/_mock/stats | sed -n 's/.*"cancelled_streams":\([0-9]*\).*/\1/p')
Q=$(( ${#SAMPLES[@]} / 4 ))
REF=${SAMPLES[$Q]}
MAX=$REF
for s in "${SAMPLES[@]:$Q}"; do [ "$s" -gt "$MAX" ] && MAX=$s; done
LAST=${SAMPLES[-1]}
GROWTH_MIB=$(awk -v a="$MAX" -v b="$REF" 'BEGIN{printf "%.1f", (a-b)/1024}')
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

STATUS=$(curl -s http://127.0.0.1:19190/metrics | awk '/^aigw_requests_total/ {match($0, /status="[0-9]+"/); s = substr($0, RSTART + 8, RLENGTH - 9); c[s] += $NF} END {for (k in c) printf "%s: %d, ", k, c[k]}')
VERDICT=PASS
[ "$INFLIGHT" = "0" ] || VERDICT=FAIL
[ "$SLOTS" = "0" ] || VERDICT=FAIL
awk -v g="$GROWTH_MIB" -v s="$SLACK_MIB" 'BEGIN{exit !(g <= s)}' || VERDICT=FAIL

{
  echo "# aigw soak, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -m), ${SECONDS_TOTAL}s"
  echo
  echo "| what | figure |"
  echo "|---|---|"
  echo "| requests (wrk, $CONNS connections, mixed) | $reqs in $(awk -v d="$dur" 'BEGIN{printf "%.0f", d/1e6}') s, p50 $(awk -v v="$p50" 'BEGIN{print v/1000}') ms, p99 $(awk -v v="$p99" 'BEGIN{print v/1000}') ms, socket errors $errs |"
  echo "| statuses the gateway answered | ${STATUS%, } |"
  echo "| streams the callers abandoned, seen cancelled by the mock | $CANCELLED |"
  echo "| in flight after the load | $INFLIGHT |"
  echo "| concurrency slots held after the load | $SLOTS |"
  echo "| RSS at 1/4 of the run, peak after it, at the end | $(mib "$REF") / $(mib "$MAX") / $(mib "$LAST") MiB (growth $GROWTH_MIB MiB, slack $SLACK_MIB) |"
  echo "| RSS samples (MiB, every ${STEP} s) | $(for s in "${SAMPLES[@]}"; do printf '%s ' "$(mib "$s")"; done)|"
  echo "| memory per idle kept-alive connection ($IDLE open) | $PER_CONN KiB ($(mib "$BEFORE_IDLE") -> $(mib "$WITH_IDLE") MiB) |"
  echo "| verdict | $VERDICT |"
} | tee "$OUT"
echo "Saved to $OUT"
[ "$VERDICT" = PASS ]
