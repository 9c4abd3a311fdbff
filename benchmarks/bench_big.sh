#!/bin/sh
# The paper's largest 1B-word model size on this one machine: MoE-4096,
# 4096 experts of 512 -> 1024 -> 512 (4.3 billion expert parameters), k = 4,
# on 2 expert servers and 1 worker (local cluster, tcp loopback). Trains
# STEPS steps (default 20) and reports the step time and the peak resident
# memory of every process. Expert servers hold each expert's parameters and
# factored-Adam state, and one expert's gradient at a time. RECOMPUTE
# (none, experts or all; default none) is passed as --recompute.
# Usage: bench_big.sh BUILD_DIR OUT_JSON [STEPS] [EXPERTS]
set -eu
build=$(cd "${1:-build}" && pwd)
out=$2
steps=${3:-20}
E=${4:-4096}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
A="--config deploy/default.ini --d-model 512 --d-hidden 1024 --n-experts $E --k 4 --batch 256 \
--unroll 32 --steps $steps --valid= --vocab-max 10000 --log-every 1 --log-level info \
--timeout-ms 1800000 --threads 1 --recompute ${RECOMPUTE:-none}"
t0=$(date +%s)
sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$run/c" --servers 2 --workers 1 -- $A \
    --report "$run/report.json" >"$run/worker.out" 2>&1 ||
    { echo "bench_big: failed: $(tail -n 5 "$run/worker.out")" >&2; exit 1; }
t1=$(date +%s)
python3 - "$run" "$out" "$E" "$steps" "$((t1 - t0))" "${RECOMPUTE:-none}" <<'PY'
import json, os, re, sys
run, out, E, steps, wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
recompute = sys.argv[6]
rep = json.load(open(os.path.join(run, "report.json")))
times = []
for line in open(os.path.join(run, "worker.out")):
    m = re.match(r"step\s+(\d+)/\d+ \|\s+(\d+) tok/s", line)
    if m and int(m.group(1)) > 1:
        times.append(8192 / float(m.group(2)))
rss = {}
for f in sorted(os.listdir(os.path.join(run, "c"))):
    if f.endswith(".log"):
        for line in open(os.path.join(run, "c", f)):
            m = re.search(r"peak RSS ([0-9.]+) MB", line)
            if m:
                rss[f[:-4]] = float(m.group(1))
rss["worker"] = rep.get("peak_rss_mb")
D, H = 512, 1024
r = {"n_experts": E, "expert_params": E * (2 * D * H + D + H), "steps": rep["steps"],
     "rows_per_step": 8192, "step_time_s": sum(times) / len(times) if times else None,
     "tokens_per_sec": rep["tokens_per_sec"], "peak_rss_mb": rss,
     "total_peak_rss_mb": sum(v for v in rss.values() if v), "wall_s": wall,
     "train_ppl": rep.get("train_ppl"), "recompute": recompute,
     "blas_kernels": rep.get("blas_kernels")}
print(json.dumps(r))
json.dump(r, open(out, "w"))
PY
