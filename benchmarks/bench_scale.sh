#!/bin/sh
# Scaling at fixed k: the same model and global batch with n experts of
# D -> H -> D (default 512 -> 1024 -> 512, k = 4), n = 4 .. N, on a local
# cluster (coordinator, 2 expert servers, 1 worker). The batch is sized so
# that at the largest n an expert still averages ROWS rows per step (the
# paper's answer to the shrinking batch); compute per token is the same for
# every n. Reports tokens/s of the timed steps after the first (the fastest
# of them, which the table uses: noise on a shared machine only adds time;
# and their mean), the peak resident memory of the worker and of each
# server, and the optimizer state per expert parameter. Writes OUT.json and
# OUT.dat (n, tokens/s).
#
# Usage: bench_scale.sh BUILD_DIR OUT [EXPERTS] [ROWS] [STEPS]
#        EXPERTS: comma list (default 4,16,64,256,1024); ROWS: default 64
#        SERVER_THREADS=T in the environment: T threads per expert server
#        (default: the --threads of deploy/default.ini, as the worker)
set -eu
build=$(cd "${1:-build}" && pwd)
out=$2
list=${3:-4,16,64,256,1024}
rows=${4:-64}
steps=${5:-4}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
D=${D:-512}
H=${H:-1024}
K=4
T=32
nmax=$(echo "$list" | tr ',' '\n' | sort -n | tail -n 1)
# rows per step = B * T; each expert gets B * T * K / n on average
B=$(((rows * nmax / K + T - 1) / T))
echo "bench_scale: D=$D H=$H k=$K, batch $B x $T = $((B * T)) rows/step (>= $rows rows per expert at n=$nmax)"
: >"$out.dat"
echo "[" >"$out.json"
first=1
for n in $(echo "$list" | tr ',' ' '); do
    run="$tmp/n$n"
    A="--config deploy/default.ini --d-model $D --d-hidden $H --n-experts $n --k $K --batch $B \
--unroll $T --steps $steps --valid= --vocab-max 10000 --log-every 1 --log-level info --dropout 0 \
--timeout-ms 900000"
    sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$run" --servers 2 --workers 1 \
        ${SERVER_THREADS:+--server-threads "$SERVER_THREADS"} -- $A \
        --report "$run/report.json" >"$run.out" 2>&1 ||
        { echo "bench_scale: n=$n failed: $(tail -n 3 "$run.out")" >&2; exit 1; }
    # tokens/s of steps 2..steps (the first pays for allocation)
    python3 - "$run" "$n" "$B" "$T" "$steps" "$out" "$first" "$D" "$H" "$here" <<'PY'
import json, sys, os
run, n, B, T, steps, out, first, D, H, here = sys.argv[1:]
n, B, T, steps, D, H = int(n), int(B), int(T), int(steps), int(D), int(H)
sys.dont_write_bytecode = True  # nothing written into benchmarks/
sys.path.insert(0, here)
import cluster_log
c = cluster_log.read(run, os.path.join(run, "..", f"n{n}.out"), prefix="server-")
rep, rss, tps = c["report"], c["peak_rss_mb"], c["timed_steps"]
tok_s, tok_s_mean = c["tokens_per_sec"], c["tokens_per_sec_mean"]
params = n * (2 * D * H + D + H)
state = n * (2 * (D + H) + D + H)
r = {"n_experts": n, "batch_rows": B * T, "rows_per_expert": B * T * 4 / n, "tokens_per_sec": tok_s,
     "tokens_per_sec_mean": tok_s_mean, "timed_steps": tps,
     "worker_peak_rss_mb": rep.get("peak_rss_mb"), "server_peak_rss_mb": rss,
     "expert_params": params, "optimizer_state_floats": state,
     "optimizer_state_per_param": state / params, "blas_kernels": c["blas_kernels"]}
print(json.dumps(r))
with open(out + ".json", "a") as f:
    f.write(("" if first == "1" else ",\n") + json.dumps(r))
with open(out + ".dat", "a") as f:
    f.write(f"{n} {tok_s:.1f}\n")
PY
    first=0
done
echo "]" >>"$out.json"
