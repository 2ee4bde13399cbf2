#!/usr/bin/env bash
# A/B of two gateway builds, in one run on this machine: `loadtest/ab.sh BIN_A BIN_B`
# (release binaries, e.g. the last commit's in a worktree and this tree's). One mock (B's)
# serves both; both gateways run loadtest/aigw.yaml on their own ports; wrk rounds
# alternate A and B so that the machine's drift falls on both. Prints req/s and CPU µs
# per request of every round and the median ratio B/A per scenario. Bounded: ROUNDS x 2 x
# DURATION seconds per scenario. CONFIG_B=FILE runs B with another config (one build, two
# settings). CONFIG=loadtest/production.yaml compares the two under
# the production profile instead (with its limits and budget in the local Redis when one
# answers).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: loadtest/ab.sh BIN_A BIN_B}
B=${2:?usage: loadtest/ab.sh BIN_A BIN_B}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
# shellcheck source=loadtest/common.sh
. loadtest/common.sh
CONFIG=${CONFIG:-loadtest/aigw.yaml}
# A listens where the config says; B ten ports above (admin: one above).
PA=$(sed -n 's/.*listen: \["127.0.0.1:\([0-9]*\)"\].*/\1/p' "$CONFIG" | head -1)
AA=$(sed -n 's/.*admin_listen: "127.0.0.1:\([0-9]*\)".*/\1/p' "$CONFIG" | head -1)
PB=$((PA + 10)); AB=$((AA + 1))
ports_free 18000 "$PA" "$PB" "$AA" "$AB"

cp "$CONFIG" "$WORK/a.yaml"
if [ "$CONFIG" != loadtest/aigw.yaml ] && redis-cli ping >/dev/null 2>&1; then
  sed -i -e '/^  admin_listen:/a\  redis: {url: "redis://127.0.0.1:6379/0"}' "$WORK/a.yaml"
fi
# CONFIG_B: B runs another config (same ports as CONFIG), to compare two settings of one build.
cp "${CONFIG_B:-$CONFIG}" "$WORK/b0.yaml"
if [ "${CONFIG_B:-$CONFIG}" != loadtest/aigw.yaml ] && redis-cli ping >/dev/null 2>&1; then
  sed -i -e '/^  admin_listen:/a\  redis: {url: "redis://127.0.0.1:6379/0"}' "$WORK/b0.yaml"
fi
sed -e "s/127.0.0.1:$PA/127.0.0.1:$PB/; s/127.0.0.1:$AA/127.0.0.1:$AB/" "$WORK/b0.yaml" >"$WORK/b.yaml"
"$B" mock-upstream --listen 127.0.0.1:18000 >/dev/null 2>&1 & PIDS+=($!)
wait_port 18000
RUST_LOG=warn "$A" serve --config "$WORK/a.yaml" >/dev/null 2>"$WORK/a.log" & GA=$!; PIDS+=($GA)
RUST_LOG=warn "$B" serve --config "$WORK/b.yaml" >/dev/null 2>"$WORK/b.log" & GB=$!; PIDS+=($GB)
wait_port "$PA"
wait_port "$PB"

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
one() { # port pid stream [VAR=value...] -> "rps cpu_us"
  local before after line
  before=$(ticks "$2")
  line=$(env BODY_STREAM="$3" "${@:4}" wrk -t2 -c"$CONNS" -d"${DURATION}s" -s loadtest/post.lua "http://127.0.0.1:$1/v1/chat/completions" | grep '^RESULT')
  after=$(ticks "$2")
  read -r _ reqs dur _ _ _ errs <<<"$line"
  [ "$errs" = 0 ] || echo "warning: $errs errors on port $1" >&2
  awk -v r="$reqs" -v d="$dur" -v a="$after" -v b="$before" -v hz="$HZ" \
    'BEGIN{printf "%.0f %.1f\n", r/(d/1e6), (a-b)/hz*1e6/r}'
}

echo "# A/B, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $CONNS connections, $ROUNDS rounds of ${DURATION}s, $CONFIG"
echo "A: $A"
echo "B: $B${CONFIG_B:+ with $CONFIG_B}"
echo
echo "| scenario | A req/s | B req/s | B/A req/s (median) | A µs/req | B µs/req | B/A CPU (median) |"
echo "|---|---|---|---|---|---|---|"
scenario() { # name stream [env...]
  local name=$1 stream=$2; shift 2
  local ar=() br=() ac=() bc=() rr=() cr=()
  for _ in $(seq "$ROUNDS"); do
    read -r r1 c1 <<<"$(one "$PA" "$GA" "$stream" "$@")"
    read -r r2 c2 <<<"$(one "$PB" "$GB" "$stream" "$@")"
    ar+=("$r1"); br+=("$r2"); ac+=("$c1"); bc+=("$c2")
    rr+=("$(awk -v a="$r1" -v b="$r2" 'BEGIN{printf "%.3f", b/a}')")
    cr+=("$(awk -v a="$c1" -v b="$c2" 'BEGIN{printf "%.3f", b/a}')")
  done
  echo "| $name | ${ar[*]} | ${br[*]} | $(printf '%s\n' "${rr[@]}" | median) | ${ac[*]} | ${bc[*]} | $(printf '%s\n' "${cr[@]}" | median) |"
}
scenario "JSON" 0 LOAD_MODEL=load-model
scenario "stream" 1 LOAD_MODEL=load-model
if grep -q limited-model "$CONFIG" && [ -z "${PLAIN_ONLY:-}" ]; then
  scenario "limits + guardrails, JSON" 0 LOAD_MODEL=limited-model LOAD_KEY=sk-load-limited
  scenario "limits + guardrails, stream" 1 LOAD_MODEL=limited-model LOAD_KEY=sk-load-limited
fi
