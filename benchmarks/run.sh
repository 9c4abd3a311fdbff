#!/bin/sh
# Runs every benchmark of this folder against one build and writes the
# results into benchmarks/results/ (one JSON per benchmark, and a Markdown
# table). Usage: run.sh BUILD_DIR
set -eu
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/results"
mkdir -p "$out"
echo "== bench_step (default model, 2 threads)"
"$build/bin/bench_step" --threads 2 --json "$out/step_t2.json" | tee "$out/step_t2.txt"
echo "== bench_step (default model, 1 thread)"
"$build/bin/bench_step" --threads 1 --json "$out/step_t1.json" | tee "$out/step_t1.txt"
{
    echo "| benchmark | threads | tokens/s | model GFLOP/s | sgemm GFLOP/s (same shapes) | fraction |"
    echo "|---|---|---|---|---|---|"
    for t in 1 2; do
        python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('| training step, in-process | %d | %.0f | %.1f | %.1f | %.2f |' % (r['threads'], r['tokens_per_sec'], r['model_gflops'], r['sgemm_gflops'], r['fraction']))" "$out/step_t$t.json"
    done
} >"$out/results.md"
cat "$out/results.md"
