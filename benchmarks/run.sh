#!/bin/sh
# Runs every benchmark against one build and writes benchmarks/results/:
# one JSON per measurement and results.md, the table the README shows.
# Every figure is paired with a limit measured in the same run: OpenBLAS
# sgemm on the step's GEMM shapes, raw ZeroMQ throughput on the same
# transport and message size. Usage: run.sh BUILD_DIR [STEPS]
set -eu
build=$(cd "${1:-build}" && pwd)
steps=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out="$here/results"
mkdir -p "$out"
cd "$top"
PY=python3
json() { $PY -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

echo "== in-process training step against sgemm on the same shapes"
for t in 1 2; do
    "$build/bin/bench_step" --threads $t --json "$out/step_t$t.json" | tee "$out/step_t$t.txt"
done

echo "== distributed step: 2 expert servers over tcp and ipc, against in-process"
common="--config deploy/default.ini --steps $steps --valid= --log-every 1000 --log-level warn"
"$build/bin/moe-worker" $common --report "$out/dist_local.json" >/dev/null
for v in tcp:f32 ipc:f32 tcp:bf16; do
    tr=${v%%:*}
    dt=${v##*:}
    sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$out/run-$tr-$dt" --transport "$tr" \
        --servers 2 --workers 1 -- $common --wire-dtype "$dt" \
        --report "$out/dist_${tr}_$dt.json" >/dev/null 2>&1
    rm -rf "$out/run-$tr-$dt"
done
# the message each server gets per forward or backward at the default size:
# batch * unroll * k / servers rows of d_model floats
rows=$((32 * 35 * 4 / 2))
"$build/bin/bench_wire" tcp $((rows * 128 * 4)) $((rows * 128 * 2)) --json "$out/wire_tcp.json"
"$build/bin/bench_wire" ipc $((rows * 128 * 4)) $((rows * 128 * 2)) --json "$out/wire_ipc.json"

$PY - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
J = lambda f: json.load(open(os.path.join(out, f)))
rows = []
for t in (1, 2):
    r = J(f"step_t{t}.json")
    rows.append(f"| training step, in-process, {t} thread(s) | {r['tokens_per_sec']:.0f} tok/s | "
                f"{r['model_gflops']:.1f} GFLOP/s | sgemm on the same shapes: {r['sgemm_gflops']:.1f} GFLOP/s | "
                f"**{r['fraction']:.2f}** of sgemm |")
loc = J("dist_local.json")
wire = {w["transport"] + str(w["bytes"]): w for f in ("wire_tcp.json", "wire_ipc.json") for w in J(f)}
for name, f in (("tcp, fp32", "dist_tcp_f32.json"), ("ipc, fp32", "dist_ipc_f32.json"), ("tcp, bf16", "dist_tcp_bf16.json")):
    d = J(f)
    ratio = loc["tokens_per_sec"] / d["tokens_per_sec"]
    tr = name.split(",")[0]
    size = 32 * 35 * 4 // 2 * 128 * (2 if "bf16" in name else 4)
    w = wire[tr + str(size)]
    rows.append(f"| step, 2 expert servers, {name} | {d['tokens_per_sec']:.0f} tok/s | "
                f"{d['wire_bytes_per_token']:.0f} wire bytes/token | raw ZeroMQ {tr} at {size} B: {w['mb_per_s']:.0f} MB/s, "
                f"{w['rtt_ms']:.2f} ms round trip | **{ratio:.3f}** x in-process step time |")
rows.append(f"| step, in-process (same run, for the ratios) | {loc['tokens_per_sec']:.0f} tok/s | | | |")
table = "| measurement | speed | work | limit measured in the same run | ratio |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
open(os.path.join(out, "results.md"), "w").write(table)
print(table)
PY
