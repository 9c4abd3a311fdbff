#!/bin/sh
# Runs every benchmark against one build and writes benchmarks/results/:
# one JSON per measurement, results.md (the table the README shows) and PNG
# plots (gnuplot). Every figure is paired with a limit measured in the same
# run: OpenBLAS sgemm on the same GEMM shapes, memcpy bandwidth, raw ZeroMQ
# throughput on the same transport and message size.
# Usage: run.sh BUILD_DIR [STEPS]   (MONITORING=0 skips the HTTP-load runs;
# BIG=1 adds the MoE-4096 run, about 15 minutes and 20 GB of memory;
# PARTS="dist scale" runs only those parts: expert step dist ppl scale big
# monitoring)
set -eu
build=$(cd "${1:-build}" && pwd)
steps=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out="$here/results"
mkdir -p "$out"
cd "$top"
PY=python3

# PARTS (default: all of them) picks what to run again; the table is built
# from the JSON files of the latest run of each part.
parts=${PARTS:-expert step dist ppl scale big monitoring}
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if want expert; then
    echo "== expert compute (one expert 512 -> 1024 -> 512) against sgemm on the same shapes"
    for t in 1 2; do
        "$build/bin/bench_expert" --threads $t --json "$out/expert_t$t.json" | tee "$out/expert_t$t.txt"
    done
fi

if want step; then
    echo "== in-process training step against sgemm on the same shapes"
    for t in 1 2; do
        "$build/bin/bench_step" --threads $t --json "$out/step_t$t.json" | tee "$out/step_t$t.txt"
    done
fi

if want dist; then
    echo "== distributed step: 2 expert servers over tcp and ipc, against in-process (3 rounds)"
    common="--config deploy/default.ini --steps $steps --valid= --log-every 1000 --log-level warn"
    # rounds alternate the four runs so that all see the same machine;
    # medians count. In-process runs with the OpenBLAS spin setting that
    # launch-local gives its processes.
    for r in 1 2 3; do
        OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}" \
            "$build/bin/moe-worker" $common --report "$out/dist_local_r$r.json" >/dev/null
        # tcp runs CURVE (the default); tcpplain is the same with --insecure
        for v in tcp:f32 ipc:f32 tcp:bf16 tcpplain:f32; do
            tr=${v%%:*}
            dt=${v##*:}
            plain=""
            [ "$tr" = tcpplain ] && plain=--insecure
            sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$out/run-$tr-$dt" \
                --transport "${tr%plain}" --servers 2 --workers 1 -- $common --wire-dtype "$dt" \
                $plain --report "$out/dist_${tr}_${dt}_r$r.json" >/dev/null 2>&1
            rm -rf "$out/run-$tr-$dt"
        done
    done
    # the message each server gets per forward or backward at the default size:
    # batch * unroll * k / servers rows of d_model floats
    rows=$((32 * 35 * 4 / 2))
    "$build/bin/bench_wire" tcp $((rows * 128 * 4)) $((rows * 128 * 2)) --json "$out/wire_tcp.json"
    "$build/bin/bench_wire" ipc $((rows * 128 * 4)) $((rows * 128 * 2)) --json "$out/wire_ipc.json"
fi

if want ppl; then
    ppl_steps=${PPL_STEPS:-300}
    echo "== wire precision: validation perplexity after $ppl_steps steps, fp32 against bf16 on the wire"
    for dt in f32 bf16; do
        sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$out/run-ppl-$dt" --transport tcp \
            --servers 2 --workers 1 -- --config deploy/default.ini --steps "$ppl_steps" \
            --log-every 1000 --log-level warn --wire-dtype "$dt" --report "$out/wireppl_$dt.json" \
            >/dev/null 2>&1
        rm -rf "$out/run-ppl-$dt"
    done
fi

if want scale; then
    echo "== scaling at fixed k = 4: 4 .. 1024 experts of 512 -> 1024 -> 512, 64 rows per expert at 1024"
    # the worker and 2 servers share the 2 cores: each server gets 1 thread
    SERVER_THREADS=${SERVER_THREADS:-1} sh "$here/bench_scale.sh" "$build" "$out/scale" \
        "${SCALE_EXPERTS:-4,16,64,256,1024}" 64 5
fi

if want big && [ "${BIG:-0}" = 1 ]; then
    echo "== MoE-4096: 4.3 billion expert parameters, 2 expert servers, 20 steps"
    sh "$here/bench_big.sh" "$build" "$out/big.json" 20 4096
fi

if want monitoring && [ "${MONITORING:-1}" != 0 ]; then
    echo "== monitoring: training with and without 200 HTTP scrapers on the coordinator"
    sh "$here/bench_monitoring.sh" "$build" 100 "$out/monitoring.json" 3
fi

$PY - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
J = lambda f: json.load(open(os.path.join(out, f)))
rows = []
for t in (1, 2):
    ex = J(f"expert_t{t}.json")
    with open(os.path.join(out, f"expert_t{t}.dat"), "w") as f:
        for r in ex:
            f.write(f"{r['rows']} {r['fraction']:.4f} {r['gflops']:.2f} {r['sgemm_gflops']:.2f}\n")
    big = [r for r in ex if r["rows"] >= 512]
    worst = min(big, key=lambda r: r["fraction"]) if big else ex[-1]
    rows.append(f"| expert compute (fwd + bwd + factored Adam), 512 -> 1024 -> 512, {t} thread(s), "
                f"{worst['rows']} rows (worst from 512 up) | {worst['gflops']:.1f} GFLOP/s | "
                f"{1e3 * worst['step_time_s']:.1f} ms per expert step | sgemm on the same shapes: "
                f"{worst['sgemm_gflops']:.1f} GFLOP/s | **{worst['fraction']:.2f}** of sgemm |")
ex = J("expert_t1.json")[0]
rows.append(f"| optimizer state per expert parameter (factored Adam) | {ex['opt_state_per_param']:.5f} | "
            f"{100 * ex['opt_state_per_param']:.2f}% of the parameter bytes | Adam: 2 (200%) | "
            f"**{ex['opt_state_per_param'] / 2:.4f}** of Adam |")
for t in (1, 2):
    r = J(f"step_t{t}.json")
    rows.append(f"| training step, in-process, {t} thread(s) | {r['tokens_per_sec']:.0f} tok/s | "
                f"{r['model_gflops']:.1f} GFLOP/s | sgemm on the same shapes: {r['sgemm_gflops']:.1f} GFLOP/s | "
                f"**{r['fraction']:.2f}** of sgemm |")
def med(v):
    v = sorted(v)
    return v[len(v) // 2]
def runs(stem):
    return [J(f"{stem}_r{r}.json") for r in (1, 2, 3)]
loc_runs = runs("dist_local")
loc = {"tokens_per_sec": med([d["tokens_per_sec"] for d in loc_runs])}
wire = {w["transport"] + str(w["bytes"]): w for f in ("wire_tcp.json", "wire_ipc.json") for w in J(f)}
for name, stem in (("tcp, fp32", "dist_tcp_f32"), ("ipc, fp32", "dist_ipc_f32"), ("tcp, bf16", "dist_tcp_bf16")):
    rr = runs(stem)
    # each round's ratio against that round's in-process run; the median counts
    ratios = [l["tokens_per_sec"] / d["tokens_per_sec"] for l, d in zip(loc_runs, rr)]
    ratio = med(ratios)
    d = dict(rr[0], tokens_per_sec=med([x["tokens_per_sec"] for x in rr]))
    tr = name.split(",")[0]
    size = 32 * 35 * 4 // 2 * 128 * (2 if "bf16" in name else 4)
    w = wire[tr + str(size)]
    rows.append(f"| step, 2 expert servers, {name} | {d['tokens_per_sec']:.0f} tok/s | "
                f"{d['wire_bytes_per_token']:.0f} wire bytes/token | raw ZeroMQ {tr} at {size} B: {w['mb_per_s']:.0f} MB/s, "
                f"{w['rtt_ms']:.2f} ms round trip | **{ratio:.3f}** x in-process step time "
                f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}) |")
rows.append(f"| step, in-process (same rounds, for the ratios; median) | {loc['tokens_per_sec']:.0f} tok/s | | | |")
if os.path.exists(os.path.join(out, "dist_tcpplain_f32_r1.json")):
    cu, pl = runs("dist_tcp_f32"), runs("dist_tcpplain_f32")
    cost = [p["tokens_per_sec"] / c["tokens_per_sec"] for c, p in zip(cu, pl)]
    rows.append(f"| CURVE: step, 2 expert servers, tcp fp32, keys against --insecure | "
                f"{med([c['tokens_per_sec'] for c in cu]):.0f} tok/s with CURVE | | "
                f"--insecure (plain tcp): {med([p['tokens_per_sec'] for p in pl]):.0f} tok/s | "
                f"**{med(cost):.3f}** x plain step time (rounds: {', '.join(f'{x:.3f}' for x in cost)}) |")
pf, pb = J("wireppl_f32.json"), J("wireppl_bf16.json")
rows.append(f"| wire precision: validation perplexity after {pf['steps']} steps (default model, 2 servers, tcp) | "
            f"bf16 on the wire: {pb['valid_ppl']:.2f} | {pb['wire_bytes_per_token']:.0f} wire bytes/token "
            f"(fp32: {pf['wire_bytes_per_token']:.0f}) | fp32 on the wire: {pf['valid_ppl']:.2f} | "
            f"**{100 * (pb['valid_ppl'] / pf['valid_ppl'] - 1):+.2f}%** perplexity with bf16 |")
sc = J("scale.json")
by = {r["n_experts"]: r for r in sc}
ref = by.get(16, sc[0])
for r in sc:
    srv = ", ".join(f"{v:.0f}" for v in r["server_peak_rss_mb"].values())
    rows.append(f"| scaling, {r['n_experts']} experts, k = 4, {r['batch_rows']} tokens/step "
                f"({r['rows_per_expert']:.0f} rows per expert) | {r['tokens_per_sec']:.0f} tok/s "
                f"(fastest of {r['timed_steps']} steps; mean {r['tokens_per_sec_mean']:.0f}) | "
                f"peak RSS worker {r['worker_peak_rss_mb']:.0f} MB, servers {srv} MB | "
                f"{ref['n_experts']} experts: {ref['tokens_per_sec']:.0f} tok/s | "
                f"**{r['tokens_per_sec'] / ref['tokens_per_sec']:.2f}** of {ref['n_experts']} experts |")
if os.path.exists(os.path.join(out, "big.json")):
    b = J("big.json")
    rss = ", ".join(f"{k} {v:.0f}" for k, v in b["peak_rss_mb"].items() if v)
    rows.append(f"| MoE-{b['n_experts']}: {b['expert_params'] / 1e9:.2f}B expert parameters, 2 servers, "
                f"{b['steps']} steps of {b['rows_per_step']} tokens | {b['step_time_s']:.1f} s/step | "
                f"peak RSS (MB): {rss} | machine memory 24 GB | **{b['total_peak_rss_mb'] / 1024:.1f} GB** "
                f"peak in all |")
table = "| measurement | speed | work | limit measured in the same run | ratio |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
if os.path.exists(os.path.join(out, "monitoring.json")):
    m = J("monitoring.json")
    table += (f"\nHTTP monitoring under load (200 scrapers + malformed, slow and disconnecting clients, "
              f"load generator at {m['load_generator_priority']}): median slowdown of training "
              f"{100 * m['median_slowdown']:.1f}% (runs: " +
              ", ".join(f"{100 * x:.1f}%" for x in m["slowdowns"]) +
              f"); coordinator CPU {', '.join(f'{c:.2f}' for c in m['coordinator_cpu_seconds'])} s "
              f"for {', '.join(str(n) for n in m['http_requests'])} requests.\n")
open(os.path.join(out, "results.md"), "w").write(table)
print(table)
PY

# Plots (gnuplot, PNG)
if command -v gnuplot >/dev/null 2>&1; then
    gnuplot <<GP
set terminal pngcairo size 800,500 font ",11" noenhanced
set output "$out/expert.png"
set title "Expert compute (forward + backward + factored Adam) as a fraction of sgemm"
set xlabel "rows routed to the expert in a step"
set ylabel "fraction of sgemm GFLOP/s, same shapes"
set logscale x 2
set yrange [0:1.2]
set grid
set key bottom right
plot "$out/expert_t1.dat" using 1:2 with linespoints lw 2 title "1 thread", \\
     "$out/expert_t2.dat" using 1:2 with linespoints lw 2 title "2 threads", \\
     0.85 with lines dt 2 lc rgb "gray" title "target 0.85"
GP
    gnuplot <<GP
set terminal pngcairo size 800,500 font ",11" noenhanced
set output "$out/scale.png"
set title "Tokens/s at fixed k = 4 as experts grow (512 -> 1024 -> 512, 2 servers)"
set xlabel "experts"
set ylabel "tokens/s"
set logscale x 2
set yrange [0:*]
set grid
plot "$out/scale.dat" using 1:2 with linespoints lw 2 title "tokens/s"
GP
    echo "plots: $out/expert.png $out/scale.png"
else
    echo "gnuplot is not installed (deploy/install-deps.sh --bench): no plots" >&2
fi
