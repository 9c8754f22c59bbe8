#!/usr/bin/env bash
# A/B load test of two builds of the webhook: both serve the same certificates and
# associations, and oha drives them in turn (A, B, A, B, ...) with the same body, so a change
# is measured against what it replaces under the same machine conditions.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY
#   PROTO=h1 DURATION=5 ROUNDS=6 FIXTURE=... scripts/bench-ab.sh A B
#
# Knobs (environment): PROTO h2 (1 connection x STREAMS streams, default) or h1 (CONNS
# connections), DURATION seconds per run (5), ROUNDS (4), FIXTURE (fixture 01, sent compact).
# Prints req/s, p99 and server CPU per request for every run and the mean of each build.
set -euo pipefail

cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: $0 BINARY_A BINARY_B" >&2; exit 2; }
A=$1 B=$2
PROTO=${PROTO:-h2}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-4}
STREAMS=${STREAMS:-64}
CONNS=${CONNS:-64}
FIXTURE=${FIXTURE:-tests/fixtures/admission/01-pod-single-container-sa-app-apply-dryrun.json}
PORT_A=${PORT_A:-18543}
PORT_B=$((PORT_A + 1))
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

"$A" certs --out "$TMP/certs" --dns localhost --ip 127.0.0.1 >/dev/null 2>&1
jq -c . "$FIXTURE" >"$TMP/body.json"
start() {
    "$1" serve --listen "127.0.0.1:$2" --cert-dir "$TMP/certs" \
        --associations tests/fixtures/associations.yaml >"$TMP/$2.log" 2>&1 &
    PIDS+=($!)
    wait_ready "$2" "$!"
}
start "$A" "$PORT_A"
PID_A=${PIDS[-1]}
start "$B" "$PORT_B"
PID_B=${PIDS[-1]}

# Warm-up, then A and B in turn.
DURATION_RUN=$DURATION DURATION=2
load "$PID_A" "$PORT_A" "$PROTO" "$TMP/body.json" >/dev/null
load "$PID_B" "$PORT_B" "$PROTO" "$TMP/body.json" >/dev/null
DURATION=$DURATION_RUN
printf '%-6s %10s %9s %12s\n' build req/s p99_ms cpu_us/req
for r in $(seq "$ROUNDS"); do
    for side in A B; do
        if [[ $side == A ]]; then pid=$PID_A port=$PORT_A; else pid=$PID_B port=$PORT_B; fi
        read -r rps _p50 p99 _ok _errors cpu < <(load "$pid" "$port" "$PROTO" "$TMP/body.json")
        printf '%-6s %10.0f %9.2f %12.1f\n' "$side#$r" "$rps" "$p99" "$cpu"
        echo "$side $rps $p99 $cpu" >>"$TMP/runs"
    done
done
echo "== $PROTO, mean of $ROUNDS rounds: A=$A B=$B"
awk '{n[$1]++; r[$1]+=$2; p[$1]+=$3; c[$1]+=$4}
     END {for (s in n) printf "%s  %8.0f req/s  p99 %5.2f ms  %6.1f us CPU/req\n", s, r[s]/n[s], p[s]/n[s], c[s]/n[s]}' \
    "$TMP/runs" | sort
