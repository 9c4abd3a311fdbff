#!/bin/sh
# Runs every benchmark against one build and writes benchmarks/results/:
# one JSON per measurement, results.md (the table the README shows) and PNG
# plots (gnuplot). Every figure is paired with a limit measured in the same
# run: OpenBLAS sgemm on the same GEMM shapes with the best correct kernel
# set of this machine, memcpy bandwidth, raw ZeroMQ throughput on the same
# transport and message size.
# Usage: run.sh BUILD_DIR [STEPS]   (MONITORING=0 skips the HTTP-load runs;
# BIG=1 adds the MoE-4096 runs, one per --recompute setting, about 8 minutes
# and 20 GB of memory each; PARTS="dist scale" runs only those parts:
# kernels expert step dist codec ppl scale recompute big monitoring)
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
parts=${PARTS:-kernels expert step dist codec ppl scale recompute big monitoring}
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# The kernel sets first: which one the programs choose, OpenBLAS's own
# choice, and the best correct one, which every later limit is measured
# with (MOE_BENCH_BEST_KERNELS, read by gemm_rate.c). It runs again with
# every part that measures against sgemm, so that the limits of a run are
# measured with the best set of that run.
if want kernels || want expert || want step || [ ! -f "$out/kernels.json" ]; then
    echo "== BLAS kernel sets: self-test and sgemm of every set this CPU runs (3 rounds)"
    "$build/bin/bench_gemm" --survey --threads 2 --rounds 3 --json "$out/kernels.json"
fi
MOE_BENCH_BEST_KERNELS=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["best"])' \
    "$out/kernels.json")
export MOE_BENCH_BEST_KERNELS
echo "== limits are measured with the BLAS kernels $MOE_BENCH_BEST_KERNELS"

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
    "$build/bin/bench_step" --threads 2 --d-model 512 --d-hidden 1024 --n-experts 16 --k 4 \
        --batch 32 --unroll 35 --json "$out/step_d512_t2.json" | tee "$out/step_d512_t2.txt"
fi

if want dist; then
    echo "== distributed step: 2 expert servers over tcp and ipc, against in-process (3 rounds)"
    common="--config deploy/default.ini --steps $steps --valid= --log-every 1000 --log-level warn"
    # rounds alternate the runs so that all see the same machine; medians
    # count. In-process runs with the OpenBLAS spin setting that
    # launch-local gives its processes. tcp runs CURVE where the build has
    # it (the default there); tcpplain is the same with --insecure.
    variants="tcp:f32 ipc:f32 tcp:bf16"
    rm -f "$out"/dist_tcpplain_f32_r*.json
    if "$build/bin/moe-worker" --help 2>&1 | grep -q -e --insecure; then
        variants="$variants tcpplain:f32"
    fi
    for r in 1 2 3; do
        OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}" \
            "$build/bin/moe-worker" $common --report "$out/dist_local_r$r.json" >/dev/null
        for v in $variants; do
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

if want codec; then
    echo "== bf16 on the wire: a round trip through the codec, float32 against bf16 (7 rounds)"
    rows=$((32 * 35 * 4 / 2))
    for t in tcp ipc; do
        "$build/bin/bench_wire" --codec $t $rows 128 --json "$out/codec_$t.json"
    done
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

if want recompute; then
    echo "== --recompute none, experts, all: default model in-process, 3 alternating rounds"
    sh "$here/bench_recompute.sh" "$build" "$out/recompute.json" 40 3
fi

if want big && [ "${BIG:-0}" = 1 ]; then
    for m in none experts all; do
        echo "== MoE-4096: 4.3 billion expert parameters, 2 expert servers, 20 steps, --recompute $m"
        RECOMPUTE=$m sh "$here/bench_big.sh" "$build" "$out/big_$m.json" 20 4096
    done
fi

if want monitoring && [ "${MONITORING:-1}" != 0 ]; then
    echo "== monitoring: training with and without 200 HTTP scrapers on the coordinator"
    sh "$here/bench_monitoring.sh" "$build" 100 "$out/monitoring.json" 3
fi

$PY "$here/table.py" "$out"

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
