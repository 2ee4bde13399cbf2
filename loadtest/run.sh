#!/usr/bin/env bash
# `make loadtest`: mock upstream, nginx (bare reverse proxy) and the release gateway on
# this machine, driven by wrk at fixed connection counts. Prints a Markdown table and
# saves it under loadtest/results/. Every run is bounded: DURATION seconds per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/aigw
BARE=target/release/examples/bare_proxy
DURATION=${DURATION:-10}
CONNS=${CONNS:-"1 64 256"}
THREADS=${WRK_THREADS:-2}
OUT=loadtest/results/$(date -u +%Y-%m-%d)-$(hostname -s).md
n=2; base=${OUT%.md}
while [ -e "$OUT" ]; do OUT=$base-$n.md; n=$((n + 1)); done   # never overwrite a result
# shellcheck source=loadtest/common.sh
. loadtest/common.sh
# oha offers a fixed request rate (wrk cannot), for the latency run at the end.
command -v oha >/dev/null || { echo "installing oha (cargo, a few minutes once)"; cargo install --locked -q oha; }
command -v nginx >/dev/null || { echo "installing nginx"; apt-get install -y -qq nginx-light >/dev/null; }

ports_free 18000 18080 18081 18082 18083 18084 18085 18086 18087 19090 19092 19093 19095 19096 19097

"$BIN" mock-upstream --listen 127.0.0.1:18000 >/dev/null 2>&1 & PIDS+=($!)
wait_port 18000
cp loadtest/nginx.conf "$WORK/nginx.conf"
nginx -p "$WORK" -c "$WORK/nginx.conf"
wait_port 18081
RUST_LOG=warn "$BIN" serve --config loadtest/aigw.yaml >/dev/null 2>"$WORK/gw.log" & GW=$!; PIDS+=($GW)
wait_port 18080
# Pingora with no gateway logic, same allocator, profile and threads: what Pingora costs.
"$BARE" 127.0.0.1:18084 127.0.0.1:18000 "${AIGW_THREADS:-0}" >/dev/null 2>"$WORK/bare.log" & BARE_PID=$!; PIDS+=($BARE_PID)
wait_port 18084
# The same gateway with its rate limits in Redis, to measure the Redis round trip.
REDIS_URL=${AIGW_REDIS_URL:-redis://127.0.0.1:6379/0}
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  sed -e 's/127.0.0.1:18080/127.0.0.1:18082/; s/127.0.0.1:19090/127.0.0.1:19092/' \
      -e "/^  admin_listen:/a\\  redis: {url: \"$REDIS_URL\"}" loadtest/aigw.yaml >"$WORK/aigw-redis.yaml"
  RUST_LOG=warn "$BIN" serve --config "$WORK/aigw-redis.yaml" >/dev/null 2>"$WORK/gw-redis.log" & GWR=$!; PIDS+=($GWR)
  wait_port 18082
else
  echo "no Redis at $REDIS_URL: the Redis row is skipped"
  GWR=""
fi

# The same gateway exporting a trace of every request to the mock's OTLP sink.
sed -e 's/127.0.0.1:18080/127.0.0.1:18083/; s/127.0.0.1:19090/127.0.0.1:19093/' loadtest/aigw.yaml >"$WORK/aigw-traces.yaml"
printf 'observability:\n  otlp: {endpoint: "http://127.0.0.1:18000/v1/traces", sample_ratio: 1.0}\n' >>"$WORK/aigw-traces.yaml"
RUST_LOG=warn "$BIN" serve --config "$WORK/aigw-traces.yaml" >/dev/null 2>"$WORK/gw-traces.log" & GWT=$!; PIDS+=($GWT)
wait_port 18083

# The production profile (loadtest/production.yaml): limits in Redis when one answers,
# three guardrail packs, every request traced, access log, pricing and a budget.
if [ -n "$GWR" ]; then
  sed -e "/^  admin_listen:/a\\  redis: {url: \"$REDIS_URL\"}" loadtest/production.yaml >"$WORK/production.yaml"
else
  cp loadtest/production.yaml "$WORK/production.yaml"
fi
# Its access log goes to a file, as in production (not to /dev/null: issue 37).
RUST_LOG=warn "$BIN" serve --config "$WORK/production.yaml" >"$WORK/production-access.log" 2>"$WORK/gw-production.log" & GWP=$!; PIDS+=($GWP)
wait_port 18085

# One webhook guardrail service (loadtest/webhook.yaml), the mock as the service.
RUST_LOG=warn "$BIN" serve --config loadtest/webhook.yaml >/dev/null 2>"$WORK/gw-webhook.log" & GWH=$!; PIDS+=($GWH)
wait_port 18086

# Routing: failover against least_latency with provider quotas (loadtest/routing.yaml),
# the quotas in Redis when one answers.
if [ -n "$GWR" ]; then
  sed -e "/^  admin_listen:/a\\  redis: {url: \"$REDIS_URL\"}" loadtest/routing.yaml >"$WORK/routing.yaml"
else
  cp loadtest/routing.yaml "$WORK/routing.yaml"
fi
RUST_LOG=warn "$BIN" serve --config "$WORK/routing.yaml" >/dev/null 2>"$WORK/gw-routing.log" & GWQ=$!; PIDS+=($GWQ)
wait_port 18087

nginx_pids() { pgrep -f "nginx: worker process" | tr '\n' ' '; }
# "user kernel" clock ticks of these processes: the split says where a proxy's time goes
# (its own code, or the kernel's loopback TCP and wake-ups, which every proxy pays).
cpu_ticks() { local u=0 k=0; for p in "$@"; do read -r pu pk < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); k=$((k + pk)); done; echo "$u $k"; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
HZ=$(getconf CLK_TCK)

{
  echo "# aigw load test, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -m), ${DURATION}s per row"
  echo
  echo "| scenario | conns | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU µs/req (user/kernel) | RSS MiB | vs direct | vs nginx |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} | tee "$OUT"

GW_PEAK=0   # the best req/s of the plain gateway row, for the fixed-rate run
# Throughput ratios against the rows run first at the same connection count: direct to
# the mock, and nginx (its streaming row for streaming scenarios).
declare -A BASE CPU P50
ratio() { [ -n "${BASE[$2]:-}" ] && awk -v a="$1" -v b="${BASE[$2]}" 'BEGIN{printf "%.2fx", a/b}' || echo "-"; }
run() { # name url stream pids...
  local name=$1 url=$2 stream=$3; shift 3
  for c in $CONNS; do
    local t=$THREADS; [ "$c" -lt "$t" ] && t=$c
    local before; before=$(cpu_ticks "$@")
    local line
    line=$(BODY_STREAM=$stream wrk -t"$t" -c"$c" -d"${DURATION}s" -s loadtest/post.lua "$url" | grep '^RESULT')
    local after; after=$(cpu_ticks "$@")
    read -r _ reqs dur p50 p99 p999 errs <<<"$line"
    local rps cpu rss
    rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN{printf "%.0f", r/(d/1e6)}')
    cpu=$(awk -v a="$after" -v b="$before" -v hz="$HZ" -v r="$reqs" 'BEGIN{ split(a, x, " "); split(b, y, " ");
      u = (x[1]-y[1])/hz*1e6; k = (x[2]-y[2])/hz*1e6;
      if (r>0) printf "%.1f (%.1f/%.1f)", (u+k)/r, u/r, k/r; else print "-"}')
    rss=$(awk -v k="$(rss_kib "$@")" 'BEGIN{printf "%.1f", k/1024}')
    [ "$name" = gateway ] && [ "$rps" -gt "$GW_PEAK" ] && GW_PEAK=$rps
    case $name in
      gateway) BASE[gw0$c]=$rps ;;
      "gateway streaming") BASE[gw1$c]=$rps ;;
      "direct to mock") BASE[direct$c]=$rps ;;
      nginx) BASE[nginx0$c]=$rps ;;
      "nginx streaming") BASE[nginx1$c]=$rps ;;
      "production profile") BASE[prod0$c]=$rps ;;
      "production profile streaming") BASE[prod1$c]=$rps ;;
      "gateway, echo, varied prompts") BASE[echo0$c]=$rps ;;
      "gateway + webhook guardrail") BASE[hook0$c]=$rps ;;
      "gateway streaming, echo, varied prompts") BASE[echo1$c]=$rps ;;
      "gateway + webhook guardrail streaming") BASE[hook1$c]=$rps ;;
      "routed, failover") BASE[fail0$c]=$rps ;;
      "routed, least_latency + quotas") BASE[lat0$c]=$rps ;;
    esac
    CPU[$name$c]=$(awk -v k="$cpu" 'BEGIN{split(k, x, " "); print x[1]}')
    P50[$name$c]=$p50
    printf '| %s | %s | %s | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s |\n' "$name" "$c" "$rps" \
      "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" \
      "$(awk -v v="$p999" 'BEGIN{print v/1000}')" "$errs" "$cpu" "$rss" \
      "$(ratio "$rps" "direct$c")" "$(ratio "$rps" "nginx$stream$c")" | tee -a "$OUT"
  done
}

MOCK_PID=${PIDS[0]}
# shellcheck disable=SC2046
run "direct to mock" http://127.0.0.1:18000/v1/chat/completions 0 "$MOCK_PID"
# shellcheck disable=SC2046
run "nginx" http://127.0.0.1:18081/v1/chat/completions 0 $(nginx_pids)
run "bare Pingora proxy" http://127.0.0.1:18084/v1/chat/completions 0 "$BARE_PID"
run "gateway" http://127.0.0.1:18080/v1/chat/completions 0 "$GW"
LOAD_KEY=sk-load-limited LOAD_MODEL=limited-model \
  run "gateway + limits + guardrails, local" http://127.0.0.1:18080/v1/chat/completions 0 "$GW"
if [ -n "$GWR" ]; then
  # shellcheck disable=SC2046
  LOAD_KEY=sk-load-limited LOAD_MODEL=limited-model \
    run "gateway + limits + guardrails, Redis" http://127.0.0.1:18082/v1/chat/completions 0 "$GWR" $(pgrep -x redis-server | head -1)
  read -r rmin rmax ravg rn <<<"$(timeout 3 redis-cli -u "$REDIS_URL" --latency --raw || true)"
  REDIS_RTT="Redis round trip (redis-cli --latency, idle, ${rn:-0} samples): avg ${ravg:-?} ms, min ${rmin:-?}, max ${rmax:-?}."
fi
run "gateway + traces (100% sampled)" http://127.0.0.1:18083/v1/chat/completions 0 "$GWT"
LOAD_MODEL=cached-model run "gateway, cache hit" http://127.0.0.1:18080/v1/chat/completions 0 "$GW"
# shellcheck disable=SC2046
run "production profile" http://127.0.0.1:18085/v1/chat/completions 0 "$GWP" $([ -n "$GWR" ] && pgrep -x redis-server | head -1)
# shellcheck disable=SC2046
run "nginx streaming" http://127.0.0.1:18081/v1/chat/completions 1 $(nginx_pids)
run "bare Pingora streaming" http://127.0.0.1:18084/v1/chat/completions 1 "$BARE_PID"
run "gateway streaming" http://127.0.0.1:18080/v1/chat/completions 1 "$GW"
LOAD_MODEL=cached-model run "gateway streaming, cache hit" http://127.0.0.1:18080/v1/chat/completions 1 "$GW"
# shellcheck disable=SC2046
run "production profile streaming" http://127.0.0.1:18085/v1/chat/completions 1 "$GWP" $([ -n "$GWR" ] && pgrep -x redis-server | head -1)
# The cost of one webhook guardrail (both stages: two calls a request; every prompt
# different, so no verdict is reused), against the same gateway and echo model without it.
VARY=1 LOAD_MODEL=echo-model run "gateway, echo, varied prompts" http://127.0.0.1:18086/v1/chat/completions 0 "$GWH"
VARY=1 LOAD_MODEL=hook-model run "gateway + webhook guardrail" http://127.0.0.1:18086/v1/chat/completions 0 "$GWH"
VARY=1 LOAD_MODEL=echo-model run "gateway streaming, echo, varied prompts" http://127.0.0.1:18086/v1/chat/completions 1 "$GWH"
VARY=1 LOAD_MODEL=hook-model run "gateway + webhook guardrail streaming" http://127.0.0.1:18086/v1/chat/completions 1 "$GWH"
# Routing's own cost: the same two targets by failover, and by least_latency with a
# provider quota on each (in Redis when one answers; its CPU is counted with the gateway's).
LOAD_MODEL=failover-model run "routed, failover" http://127.0.0.1:18087/v1/chat/completions 0 "$GWQ"
# shellcheck disable=SC2046
LOAD_MODEL=latency-model run "routed, least_latency + quotas" http://127.0.0.1:18087/v1/chat/completions 0 "$GWQ" $([ -n "$GWR" ] && pgrep -x redis-server | head -1)
{
  echo
  echo "least_latency with provider quotas$([ -n "$GWR" ] && echo " in Redis") against failover, same gateway and targets:"
  for c in $CONNS; do
    awk -v c="$c" -v r="$(ratio "${BASE[lat0$c]:-0}" "fail0$c")" -v cf="${CPU[routed, failover$c]:-0}" \
      -v cl="${CPU[routed, least_latency + quotas$c]:-0}" -v pf="${P50[routed, failover$c]:-0}" -v pl="${P50[routed, least_latency + quotas$c]:-0}" \
      'BEGIN{printf "- %s connections: %s req/s, CPU %+.1f µs/req, p50 %+.3f ms\n", c, r, cl-cf, (pl-pf)/1000}'
  done
} | tee -a "$OUT"
{
  echo
  echo "One webhook guardrail against the same gateway without it (the gateway's CPU; the mock answers the calls, at its speed):"
  for c in $CONNS; do
    for s in 0 1; do
      e="gateway, echo, varied prompts"; h="gateway + webhook guardrail"; what=JSON
      [ $s = 1 ] && e="gateway streaming, echo, varied prompts" && h="gateway + webhook guardrail streaming" && what=streaming
      awk -v c="$c" -v w="$what" -v r="$(ratio "${BASE[hook$s$c]:-0}" "echo$s$c")" -v ce="${CPU[$e$c]:-0}" -v ch="${CPU[$h$c]:-0}" \
        -v pe="${P50[$e$c]:-0}" -v ph="${P50[$h$c]:-0}" \
        'BEGIN{printf "- %s connections, %s: %s req/s, CPU %+.1f µs/req, p50 %+.3f ms\n", c, w, r, ch-ce, (ph-pe)/1000}'
    done
  done
} | tee -a "$OUT"
{
  echo
  echo "The production profile against the plain gateway at the same connections (JSON, streaming):"
  for c in $CONNS; do
    echo "- $c connections: $(ratio "${BASE[prod0$c]:-0}" "gw0$c") JSON, $(ratio "${BASE[prod1$c]:-0}" "gw1$c") streaming"
  done
} | tee -a "$OUT"

# One row each swings by 10-15% on a shared 2-core VM: the ratio the issue's goal reads is
# also taken in RATIO_ROUNDS alternating rounds (plain, production, plain, ...) at 64
# connections, as the median of the rounds' ratios.
RATIO_ROUNDS=${RATIO_ROUNDS:-3}
rps_of() { # url stream
  local line
  line=$(BODY_STREAM=$2 wrk -t"$THREADS" -c64 -d"${DURATION}s" -s loadtest/post.lua "$1" | grep '^RESULT')
  read -r _ reqs dur _ <<<"$line"
  awk -v r="$reqs" -v d="$dur" 'BEGIN{printf "%.0f", r/(d/1e6)}'
}
for stream in 0 1; do
  ratios=()
  for _ in $(seq "$RATIO_ROUNDS"); do
    plain=$(rps_of http://127.0.0.1:18080/v1/chat/completions $stream)
    prod=$(rps_of http://127.0.0.1:18085/v1/chat/completions $stream)
    ratios+=("$(awk -v a="$prod" -v b="$plain" 'BEGIN{printf "%.3f", a/b}')")
  done
  what=JSON; [ $stream = 1 ] && what=streaming
  echo "- alternating, $RATIO_ROUNDS rounds at 64 connections, $what: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | median)x" | tee -a "$OUT"
done

# Latency at fixed rates, open-loop (oha, corrected for coordinated omission): half the
# gateway's peak, and 1,000 req/s (issue 37's goal: what a proxy adds when it is not
# busy); straight to the mock and through each proxy, the difference being what it adds.
BODY='{"model":"load-model","stream":false,"messages":[{"role":"user","content":"Summarise the load test in one sentence."}]}'
fixed() { # rate url
  oha --no-tui --output-format json -z "${DURATION}s" -c 64 -q "$1" --latency-correction \
    -m POST -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-load-caller' -d "$BODY" "$2" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]; print("%.0f %.3f %.3f %.3f %.4f" % (s["requestsPerSec"], p["p50"]*1e3, p["p99"]*1e3, p["p99.9"]*1e3, s["successRate"]))'
}
for RATE in $((GW_PEAK / 2)) 1000; do
  {
    echo
    if [ "$RATE" = 1000 ]; then
      echo "Fixed rate: 1000 req/s, 64 connections, open loop (oha):"
    else
      echo "Fixed rate: $RATE req/s (half the gateway's peak), 64 connections, open loop (oha):"
    fi
    echo
    echo "| target | req/s | p50 ms | p99 ms | p99.9 ms | success |"
    echo "|---|---|---|---|---|---|"
  } | tee -a "$OUT"
  read -r d_rps d50 d99 d999 dok <<<"$(fixed "$RATE" http://127.0.0.1:18000/v1/chat/completions)"
  echo "| direct to mock | $d_rps | $d50 | $d99 | $d999 | $dok |" | tee -a "$OUT"
  for t in "nginx:18081" "bare Pingora:18084" "gateway:18080"; do
    IFS=: read -r name port <<<"$t"
    read -r rps p50 p99 p999 ok <<<"$(fixed "$RATE" "http://127.0.0.1:$port/v1/chat/completions")"
    echo "| $name | $rps | $p50 | $p99 | $p999 | $ok |" | tee -a "$OUT"
    added=$(awk -v a="$p50" -v b="$d50" -v c="$p99" -v d="$d99" -v e="$p999" -v f="$d999" 'BEGIN{printf "%.3f | %.3f | %.3f", a-b, c-d, e-f}')
    echo "| added by $name | | $added | |" | tee -a "$OUT"
  done
done

echo
[ -n "${REDIS_RTT:-}" ] && echo "$REDIS_RTT" | tee -a "$OUT" && echo
DROPPED=$(curl -s http://127.0.0.1:19093/metrics | awk '/^aigw_trace_spans_dropped_total/{s+=$2} END{print s+0}')
echo "Spans dropped by the traced gateway: $DROPPED" | tee -a "$OUT"
echo "CPU and RSS are of the proxy under test (the mock for the direct row; gateway + Redis for the Redis row, and for the production rows when Redis runs). Saved to $OUT"
