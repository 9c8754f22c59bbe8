#!/usr/bin/env bash
# Load test of the webhook against its floor (examples/floor.rs: the same TLS + HTTP stack
# answering a fixed response of the same size without admission work), plus server CPU per
# admission, RSS and start-to-ready with 100 000 associations. BENCHMARKS.md has the figures
# and what they mean.
#
#   scripts/bench.sh                 # everything (about 4 minutes with the defaults)
#   DURATION=30 ROUNDS=3 scripts/bench.sh
#
# Knobs (environment): DURATION seconds per load run (10), ROUNDS of the webhook/floor
# alternation (2), STREAMS HTTP/2 streams on one connection (64), CONNS HTTP/1.1 connections
# (64), FIXTURE request body (the typical fixture 01, 3 KB; fixture 17 is the large one, 20 KB),
# N associations in the large set (100000), COMPACT=0 to send the fixture as stored (by default
# it is sent without its indentation: the API server sends compact JSON, the fixture files are
# re-indented for reading), PORT_BASE first of the three 127.0.0.1 ports used (18443),
# SKIP_BUILD=1, CARGO_TARGET_DIR as for cargo. Traffic goes to 127.0.0.1 only; every process started here
# is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
STREAMS=${STREAMS:-64}
CONNS=${CONNS:-64}
FIXTURE=${FIXTURE:-tests/fixtures/admission/01-pod-single-container-sa-app-apply-dryrun.json}
COMPACT=${COMPACT:-1}
N=${N:-100000}
PORT_BASE=${PORT_BASE:-18443}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/pod-identity-webhook
FLOOR=$TARGET/release/examples/floor
W_PORT=$PORT_BASE
F_PORT=$((PORT_BASE + 1))
BIG_PORT=$((PORT_BASE + 2))

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

# --- build and tools -------------------------------------------------------------------------
if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --examples --bins
fi

for b in "$BIN" "$FLOOR"; do
    [[ -x $b ]] || { say "$b is missing: build with cargo build --release --examples --bins (same CARGO_TARGET_DIR)"; exit 1; }
done

fmt_row() { # name rps p50 p99 ok errors cpu
    awk -v n="$1" -v r="$2" -v a="$3" -v b="$4" -v o="$5" -v e="$6" -v c="$7" \
        'BEGIN {printf "%-22s %10.0f %9.2f %9.2f %9d %7d %10.1f\n", n, r, a, b, o, e, c}'
}
header() { printf '%-22s %10s %9s %9s %9s %7s %10s\n' run 'req/s' 'p50 ms' 'p99 ms' ok errors 'CPU us/req'; }

# N associations (two of them the fixtures' pi-demo/app and pi-demo/worker, so the load is
# real mutations) in the cloud API's record shape, as JSON and as YAML.
gen_associations() {
    awk -v n="$N" -v fmt="$1" 'BEGIN {
        if (fmt == "json") print "{\"associations\": ["; else print "associations:";
        for (i = 0; i < n; i++) {
            if (i == 0) { ns = "pi-demo"; sa = "app" } else if (i == 1) { ns = "pi-demo"; sa = "worker" }
            else { ns = sprintf("ns-%d", int(i / 100)); sa = sprintf("sa-%d", i % 100) }
            uid = sprintf("%08x-0000-4000-8000-%012x", i, i)
            if (fmt == "json")
                printf "%s{\"namespace\":\"%s\",\"serviceAccount\":\"%s\",\"agencyName\":\"agency-%d\",\"tags\":[{\"key\":\"team\",\"value\":\"team-%d\"},{\"key\":\"env\",\"value\":\"prod\"}],\"uid\":\"%s\",\"clusterId\":\"46db1d50-b49f-48e5-a312-27645af73405\",\"createdAt\":\"2026-11-20T08:15:30Z\",\"modifiedAt\":\"2026-11-20T08:15:30Z\"}\n", (i ? "," : ""), ns, sa, i, i % 37, uid
            else
                printf "- namespace: %s\n  serviceAccount: %s\n  agencyName: agency-%d\n  tags:\n  - key: team\n    value: team-%d\n  - key: env\n    value: prod\n  uid: %s\n  clusterId: 46db1d50-b49f-48e5-a312-27645af73405\n  createdAt: \"2026-11-20T08:15:30Z\"\n  modifiedAt: \"2026-11-20T08:15:30Z\"\n", ns, sa, i, i % 37, uid
        }
        if (fmt == "json") print "]}";
    }'
}

# Starts the webhook; sets STARTED_PID and READY_MS (process start to /readyz 200).
start_webhook() {
    local port=$1 assoc=$2 log=$3 t0
    t0=$(now_ns)
    "$BIN" serve --associations "$assoc" --cert-dir "$TMP/certs" --listen "127.0.0.1:$port" 2>"$log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_ready "$port" "$STARTED_PID"
    READY_MS=$(( ($(now_ns) - t0) / 1000000 ))
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

if [[ $COMPACT == 1 ]]; then
    # Whitespace outside strings only: every token stays byte for byte.
    perl -0777 -pe 's/("(?:[^"\\]|\\.)*")|\s+/defined $1 ? $1 : ""/ge' "$FIXTURE" >"$TMP/body.json"
    FIXTURE=$TMP/body.json
fi

# --- the machine -----------------------------------------------------------------------------
say "== machine"
say "nproc: $(nproc)"
lscpu | head -n 20 >&2 || true
free -h >&2
say "load average now: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews timings)"
say "oha: $(oha --version)"
say "fixture: $FIXTURE ($(wc -c <"$FIXTURE") bytes); $DURATION s per run, $ROUNDS rounds"

# --- webhook with the fixture associations, and the floor ------------------------------------
start_webhook "$W_PORT" tests/fixtures/associations.yaml "$TMP/webhook.log"
W_PID=$STARTED_PID
W_READY_MS=$READY_MS
sleep 1
W_IDLE_KIB=$(status_kib "$W_PID" VmRSS)
"$FLOOR" --listen "127.0.0.1:$F_PORT" --cert-dir "$TMP/certs" --fixture "$FIXTURE" 2>"$TMP/floor.log" &
F_PID=$!
PIDS+=("$F_PID")
wait_ready "$F_PORT" "$F_PID"

# Same response size from both, checked rather than assumed.
W_RESP=$(curl -sf --cacert "$TMP/certs/ca.crt" -H 'Content-Type: application/json' --data-binary "@$FIXTURE" "https://127.0.0.1:$W_PORT/mutate?timeout=10s" | wc -c)
F_RESP=$(curl -sf --cacert "$TMP/certs/ca.crt" -H 'Content-Type: application/json' --data-binary "@$FIXTURE" "https://127.0.0.1:$F_PORT/mutate?timeout=10s" | wc -c)
say "response bytes: webhook $W_RESP, floor $F_RESP"
[[ $W_RESP == "$F_RESP" ]] || { say "response sizes differ"; exit 1; }

say "== warm-up (2 s each, not reported)"
SAVED=$DURATION
DURATION=2
for proto in h2 h1; do
    load "$W_PID" "$W_PORT" "$proto" "$FIXTURE" >/dev/null
    load "$F_PID" "$F_PORT" "$proto" "$FIXTURE" >/dev/null
done
DURATION=$SAVED

say "== load: webhook and floor alternately; h2 = 1 connection x $STREAMS streams, h1 = $CONNS connections"
declare -A SUM
RESULTS=$TMP/results.txt
: >"$RESULTS"
header
for ((round = 1; round <= ROUNDS; round++)); do
    for proto in h2 h1; do
        for server in webhook floor; do
            if [[ $server == webhook ]]; then pid=$W_PID port=$W_PORT; else pid=$F_PID port=$F_PORT; fi
            read -r rps p50 p99 ok errors cpu < <(load "$pid" "$port" "$proto" "$FIXTURE")
            fmt_row "$server $proto #$round" "$rps" "$p50" "$p99" "$ok" "$errors" "$cpu"
            echo "$server $proto $rps $p50 $p99 $ok $errors $cpu" >>"$RESULTS"
        done
    done
done
W_HWM_KIB=$(status_kib "$W_PID" VmHWM)
W_LOAD_KIB=$(status_kib "$W_PID" VmRSS)
F_HWM_KIB=$(status_kib "$F_PID" VmHWM)

say "== summary (mean over rounds)"
printf '%-8s %12s %12s %7s %12s %12s %7s %14s %14s\n' proto 'webhook r/s' 'floor r/s' ratio 'webhook p99' 'floor p99' ratio 'webhook us/req' 'floor us/req'
for proto in h2 h1; do
    awk -v p="$proto" '
        $2 == p && $1 == "webhook" {wr += $3; wp += $5; wc += $8; we += $7; n++}
        $2 == p && $1 == "floor" {fr += $3; fp += $5; fc += $8; fe += $7; m++}
        END {printf "%-8s %12.0f %12.0f %7.2f %10.2fms %10.2fms %7.2f %14.1f %14.1f   errors: webhook %d, floor %d\n",
            p, wr / n, fr / m, (wr / n) / (fr / m), wp / n, fp / m, (wp / n) / (fp / m), wc / n, fc / m, we, fe}' "$RESULTS"
done
say "webhook (fixture associations): ready after $W_READY_MS ms; RSS idle $(mib "$W_IDLE_KIB") MiB, after load $(mib "$W_LOAD_KIB") MiB, peak (VmHWM) $(mib "$W_HWM_KIB") MiB"
say "floor: peak RSS (VmHWM) $(mib "$F_HWM_KIB") MiB"
say "webhook counters: $(curl -sf --cacert "$TMP/certs/ca.crt" "https://127.0.0.1:$W_PORT/metrics" | grep '^podidentity_admissions_total' | tr '\n' ' ')"
stop "$F_PID"
stop "$W_PID"

# --- N associations --------------------------------------------------------------------------
say "== $N associations"
gen_associations json >"$TMP/assoc.json"
gen_associations yaml >"$TMP/assoc.yaml"
say "files: JSON $(wc -c <"$TMP/assoc.json") bytes, YAML $(wc -c <"$TMP/assoc.yaml") bytes"
for fmt in json yaml; do
    # Best of three: the first start also pays for cold caches.
    best=
    for _ in 1 2 3; do
        start_webhook "$BIG_PORT" "$TMP/assoc.$fmt" "$TMP/big.log"
        pid=$STARTED_PID
        idle=$(status_kib "$pid" VmRSS)
        [[ -z $best || $READY_MS -lt $best ]] && best=$READY_MS
        say "  $fmt: start to /readyz 200 in $READY_MS ms; RSS idle $(mib "$idle") MiB"
        stop "$pid"
    done
    say "$fmt: start to ready, best of 3: $best ms"
done
start_webhook "$BIG_PORT" "$TMP/assoc.json" "$TMP/big.log"
BIG_PID=$STARTED_PID
sleep 1
BIG_IDLE_KIB=$(status_kib "$BIG_PID" VmRSS)
header
read -r rps p50 p99 ok errors cpu < <(load "$BIG_PID" "$BIG_PORT" h2 "$FIXTURE")
fmt_row "webhook-${N} h2" "$rps" "$p50" "$p99" "$ok" "$errors" "$cpu"
say "webhook ($N associations, JSON): RSS idle $(mib "$BIG_IDLE_KIB") MiB, peak under load (VmHWM) $(mib "$(status_kib "$BIG_PID" VmHWM)") MiB"
stop "$BIG_PID"
