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
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "needs oha: cargo install oha --locked" >&2; exit 1; }

TMP=$(mktemp -d -t pod-identity-ab.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

"$A" certs --out "$TMP/certs" --dns localhost --ip 127.0.0.1 >/dev/null 2>&1
jq -c . "$FIXTURE" >"$TMP/body.json"
start() {
    "$1" serve --listen "127.0.0.1:$2" --cert-dir "$TMP/certs" \
        --associations tests/fixtures/associations.yaml >"$TMP/$2.log" 2>&1 &
    PIDS+=($!)
    local i
    for i in $(seq 200); do
        curl -sf -o /dev/null --cacert "$TMP/certs/ca.crt" "https://127.0.0.1:$2/readyz" && return 0
        sleep 0.05
    done
    echo "server $1 on $2 did not get ready" >&2
    exit 1
}
start "$A" "$PORT_A"
PID_A=${PIDS[-1]}
start "$B" "$PORT_B"
PID_B=${PIDS[-1]}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
if [[ $PROTO == h2 ]]; then
    LOAD=(--http2 -c 1 -p "$STREAMS")
else
    LOAD=(--http-version 1.1 -c "$CONNS")
fi
# One run: prints "req/s p99_ms cpu_us_per_req".
run() {
    local port=$1 pid=$2 t0 t1 json
    t0=$(cpu_ticks "$pid")
    json=$(timeout $((DURATION + 30)) oha --no-tui --output-format json -z "${DURATION}s" \
        --wait-ongoing-requests-after-deadline "${LOAD[@]}" -m POST -T application/json -D "$TMP/body.json" \
        --cacert "$TMP/certs/ca.crt" "https://127.0.0.1:$port/mutate?timeout=10s")
    t1=$(cpu_ticks "$pid")
    jq -r --argjson ticks $((t1 - t0)) --argjson hz "$CLK_TCK" \
        '[.summary.requestsPerSec, .latencyPercentiles.p99 * 1000,
          ($ticks / $hz * 1e6 / ([.statusCodeDistribution[]] | add))] | @tsv' <<<"$json"
}
for port in "$PORT_A" "$PORT_B"; do
    oha --no-tui -z 2s "${LOAD[@]}" -m POST -T application/json -D "$TMP/body.json" \
        --cacert "$TMP/certs/ca.crt" "https://127.0.0.1:$port/mutate?timeout=10s" >/dev/null
done
printf '%-6s %10s %9s %12s\n' build req/s p99_ms cpu_us/req
for r in $(seq "$ROUNDS"); do
    for side in A B; do
        if [[ $side == A ]]; then out=$(run "$PORT_A" "$PID_A"); else out=$(run "$PORT_B" "$PID_B"); fi
        read -r rps p99 cpu <<<"$out"
        printf '%-6s %10.0f %9.2f %12.1f\n' "$side#$r" "$rps" "$p99" "$cpu"
        echo "$side $rps $p99 $cpu" >>"$TMP/runs"
    done
done
echo "== $PROTO, mean of $ROUNDS rounds: A=$A B=$B"
awk '{n[$1]++; r[$1]+=$2; p[$1]+=$3; c[$1]+=$4}
     END {for (s in n) printf "%s  %8.0f req/s  p99 %5.2f ms  %6.1f us CPU/req\n", s, r[s]/n[s], p[s]/n[s], c[s]/n[s]}' \
    "$TMP/runs" | sort
