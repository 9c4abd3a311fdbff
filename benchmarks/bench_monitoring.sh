#!/bin/sh
# Does monitoring slow training? Trains the same steps on a local cluster
# (coordinator, 2 expert servers, 1 worker) twice: once quiet, once while
# benchmarks/http_load.py hits the coordinator's HTTP port (200 scrapers at
# one request per second each, malformed requests, slow clients, clients
# that close mid-response). Prints tokens/s of both and their ratio, and
# checks the coordinator is still alive and answering.
# Usage: bench_monitoring.sh BUILD_DIR [STEPS] [OUT_JSON]
set -eu
build=$(cd "${1:-build}" && pwd)
steps=${2:-60}
out=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
A="--config deploy/default.ini --steps $steps --valid= --log-every 1000 --log-level warn --vocab-max 10000"
run() { # name [load]
    base=$((10000 + $$ % 21000 + ${3:-0}))
    http=$((base + 201))
    sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$tmp/$1" --base-port $base --http-port $http \
        -- $A --report "$tmp/$1.json" >/dev/null 2>&1 &
    pid=$!
    if [ "${2:-}" = load ]; then
        n=0
        until grep -q "dashboard at" "$tmp/$1/coordinator.log" 2>/dev/null || [ $n -gt 100 ]; do sleep 0.1; n=$((n + 1)); done
        ${LOAD_NICE:-} python3 "$here/http_load.py" "127.0.0.1:$http" 600 200 >"$tmp/load.json" 2>/dev/null &
        lp=$!
        sleep 2
        python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$http/metrics', timeout=5).read()" ||
            { echo "the coordinator stopped answering under load" >&2; exit 1; }
    fi
    wait $pid
    if [ "${2:-}" = load ]; then
        kill -TERM $lp 2>/dev/null
        wait $lp
        grep "stopped:" "$tmp/$1/coordinator.log" | sed 's/.*stopped: //' >"$tmp/coord.txt"
    fi
    return 0
}
run quiet "" 0
run loaded load 50
python3 - "$tmp" "$out" <<'PY'
import json, sys, os
d, out = sys.argv[1], sys.argv[2]
q = json.load(open(os.path.join(d, "quiet.json")))["tokens_per_sec"]
l = json.load(open(os.path.join(d, "loaded.json")))["tokens_per_sec"]
load = json.load(open(os.path.join(d, "load.json"))) if os.path.exists(os.path.join(d, "load.json")) else {}
coord = open(os.path.join(d, "coord.txt")).read().strip() if os.path.exists(os.path.join(d, "coord.txt")) else ""
r = {"tokens_per_sec_quiet": q, "tokens_per_sec_under_http_load": l, "slowdown": q / l - 1, "load": load,
     "coordinator": coord}
print(json.dumps(r))
if out:
    json.dump(r, open(out, "w"))
PY
