#!/usr/bin/env bash
# Load test of the credential agent's cached answer: one pod token, credentials cached after
# the first call, then oha for a fixed time over HTTP/1.1 keep-alive.
#   scripts/bench-agent.sh [SECONDS] [CONNECTIONS]
# Needs oha (`cargo install oha --locked`). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --bin pod-identity-webhook >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/pod-identity-webhook agent --backend local --associations examples/associations.yaml \
  --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.05; done
# An (unsigned) projected-token-shaped JWT for pi-demo/app; the local backend reads its claims.
token=$(python3 - <<'PY'
import base64, json, time
b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
exp = int(time.time()) + 3600
print(b({"alg": "RS256"}) + "." + b({"aud": ["service.cce.pods"], "exp": exp, "sub": "system:serviceaccount:pi-demo:app",
  "kubernetes.io": {"namespace": "pi-demo", "serviceaccount": {"name": "app"}, "pod": {"name": "bench"}}}) + ".c2ln")
PY
)
curl -sf -X POST -H "Authorization: $token" -d '{}' "http://127.0.0.1:$port/v1/credentials" >/dev/null
echo "== agent, cached answer, HTTP/1.1, $conns connections, ${secs}s"
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
oha --no-tui -z "${secs}s" -c "$conns" -m POST -d '{}' -H "Authorization: $token" "http://127.0.0.1:$port/v1/credentials" \
  | grep -E "Success rate|Requests/sec|Slowest|Fastest|Average|50.00%|99.00%|\[200\]|\[4|\[5"
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
hits=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^podidentity_agent_cache_hits_total/ {print $2}')
calls=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^podidentity_agent_upstream_calls_total/ {s+=$2} END {print s}')
tck=$(getconf CLK_TCK)
echo "cache hits: $hits, upstream calls: $calls"
python3 -c "print(f'server CPU per answer: {($t1-$t0)/$tck/max($hits,1)*1e6:.1f} us')"
grep -E "VmRSS|VmHWM" /proc/$pid/status
