#!/bin/sh
# Does monitoring slow training? Trains the same steps on a local cluster
# (coordinator, 2 expert servers, 1 worker), REPEAT times quiet and REPEAT
# times while benchmarks/http_load.py hits the coordinator's HTTP port (200
# scrapers at one request per second each, malformed requests, slow
# clients, clients that close mid-response), alternating. Prints tokens/s of
# every run, the median slowdown and the coordinator's CPU time, and checks
# that the coordinator is still alive and answering under load.
# The load generator shares this machine's cores with training (real
# scrapers run elsewhere): LOAD_NICE (default "nice -n 19") keeps it to idle
# CPU; LOAD_NICE= runs it at normal priority.
# Usage: bench_monitoring.sh BUILD_DIR [STEPS] [OUT_JSON] [REPEAT]
set -eu
build=$(cd "${1:-build}" && pwd)
steps=${2:-100}
out=${3:-}
repeat=${4:-3}
LOAD_NICE=${LOAD_NICE-nice -n 19}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
A="--config deploy/default.ini --steps $steps --valid= --log-every 1000 --log-level warn --vocab-max 10000"
run() { # name [load] [port offset]
    base=$((10000 + $$ % 21000 + ${3:-0}))
    http=$((base + 201))
    sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$tmp/$1" --base-port $base --http-port $http \
        -- $A --report "$tmp/$1.json" >/dev/null 2>&1 &
    pid=$!
    if [ "${2:-}" = load ]; then
        n=0
        until grep -q "dashboard at" "$tmp/$1/coordinator.log" 2>/dev/null || [ $n -gt 100 ]; do sleep 0.1; n=$((n + 1)); done
        $LOAD_NICE python3 "$here/http_load.py" "127.0.0.1:$http" 600 200 >"$tmp/$1.load.json" 2>/dev/null &
        lp=$!
        sleep 2
        python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$http/metrics', timeout=5).read()" ||
            { echo "the coordinator stopped answering under load" >&2; exit 1; }
    fi
    wait $pid
    if [ "${2:-}" = load ]; then
        kill -TERM $lp 2>/dev/null
        wait $lp
        grep "stopped:" "$tmp/$1/coordinator.log" | sed 's/.*stopped: //' >"$tmp/$1.coord.txt"
    fi
    return 0
}
k=0
while [ $k -lt "$repeat" ]; do
    run quiet$k "" 0
    run loaded$k load 50
    k=$((k + 1))
done
python3 - "$tmp" "$out" "$repeat" "$LOAD_NICE" <<'PY'
import json, os, re, statistics, sys
d, out, rep, nice = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
qr = [json.load(open(os.path.join(d, f"quiet{k}.json"))) for k in range(rep)]
q = [x["tokens_per_sec"] for x in qr]
l = [json.load(open(os.path.join(d, f"loaded{k}.json")))["tokens_per_sec"] for k in range(rep)]
slow = [a / b - 1 for a, b in zip(q, l)]
loads = [json.load(open(os.path.join(d, f"loaded{k}.load.json"))) for k in range(rep)]
coord = [open(os.path.join(d, f"loaded{k}.coord.txt")).read().strip() for k in range(rep)]
cpu = [float(re.search(r"CPU ([0-9.]+) s", c).group(1)) for c in coord]
reqs = [int(re.search(r"^([0-9]+) HTTP requests", c).group(1)) for c in coord]
r = {"tokens_per_sec_quiet": q, "tokens_per_sec_under_http_load": l, "slowdowns": slow,
     "median_slowdown": statistics.median(slow), "load_generator_priority": nice or "normal",
     "coordinator_cpu_seconds": cpu, "http_requests": reqs, "load": loads, "coordinator": coord,
     "blas_kernels": qr[0]["blas_kernels"]}
print(json.dumps(r))
if out:
    json.dump(r, open(out, "w"))
PY
