#!/usr/bin/env bash
# Shared by scripts/bench.sh and scripts/bench-ab.sh (sourced, not run): a temp dir cleaned up
# with every process started, oha on PATH, readiness, CPU and RSS readings, and one oha load.
# The caller sets DURATION, STREAMS and CONNS; certificates are expected in $TMP/certs.

TMP=$(mktemp -d -t pod-identity-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { say "$0 needs $1 on PATH"; exit 1; }; }

export PATH="$HOME/.cargo/bin:$PATH"
need curl
need jq
need awk
if ! command -v oha >/dev/null; then
    say "oha not found: cargo install oha --locked"
    cargo install oha --locked
fi
CLK_TCK=$(getconf CLK_TCK)

# --- helpers ---------------------------------------------------------------------------------
now_ns() { date +%s%N; }

# Waits (at most 60 s) for GET /readyz to answer 200 from process PID.
wait_ready() {
    local port=$1 pid=$2 deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        if curl -sf -o /dev/null --max-time 1 --cacert "$TMP/certs/ca.crt" "https://127.0.0.1:$port/readyz"; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { say "server on port $port exited"; exit 1; }
        sleep 0.005
    done
    say "server on port $port not ready after 60 s"
    exit 1
}

# Total CPU (user + system, every thread) of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# A field of /proc/PID/status (VmRSS, VmHWM), in KiB.
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# Runs oha for DURATION seconds; prints "rps p50_ms p99_ms ok errors cpu_us_per_req".
load() {
    local pid=$1 port=$2 proto=$3 body=$4 out=$TMP/oha.json t0 t1
    local args=(--no-tui --output-format json -z "${DURATION}s" --wait-ongoing-requests-after-deadline
        -m POST -D "$body" -T application/json --cacert "$TMP/certs/ca.crt")
    if [[ $proto == h2 ]]; then
        args+=(--http2 -c 1 -p "$STREAMS")
    else
        args+=(--http-version 1.1 -c "$CONNS")
    fi
    t0=$(cpu_ticks "$pid")
    timeout $((DURATION + 60)) oha "${args[@]}" "https://127.0.0.1:$port/mutate?timeout=10s" >"$out"
    t1=$(cpu_ticks "$pid")
    jq -r --arg ticks "$((t1 - t0))" --arg hz "$CLK_TCK" '
        (.statusCodeDistribution["200"] // 0) as $ok
        | ([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0) as $bad
        | ([.errorDistribution | to_entries[] | .value] | add // 0) as $err
        | [ .summary.requestsPerSec, .latencyPercentiles.p50 * 1000, .latencyPercentiles.p99 * 1000,
            $ok, ($bad + $err),
            (if $ok > 0 then ($ticks | tonumber) / ($hz | tonumber) * 1e6 / $ok else 0 end) ]
        | map(tostring) | join(" ")' "$out"
}
