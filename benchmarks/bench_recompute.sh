#!/bin/sh
# Activation recomputation (--recompute none|experts|all, DESIGN §10): step
# time and peak resident memory of the in-process trainer with the default
# model (deploy/default.ini), STEPS steps per run, ROUNDS rounds alternating
# the three settings (medians count; the bits are the same, as the tests
# check, so only speed and memory differ). One more run with MORE experts
# (default 512; --recompute none) measures what an expert costs in memory:
# the peak RSS per expert added, from which table.py estimates how many
# experts fit in the machine's memory under each setting. Writes OUT_JSON.
# Usage: bench_recompute.sh BUILD_DIR OUT_JSON [STEPS] [ROUNDS] [MORE]
set -eu
build=$(cd "${1:-build}" && pwd)
out=$2
steps=${3:-40}
rounds=${4:-3}
more=${5:-512}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$rounds"); do
    for m in none experts all; do
        "$build/bin/moe-worker" --config deploy/default.ini --steps "$steps" --valid= \
            --log-every 1000 --log-level warn --recompute $m --report "$tmp/$m-$r.json" >/dev/null ||
            { echo "bench_recompute: --recompute $m failed" >&2; exit 1; }
    done
done
"$build/bin/moe-worker" --config deploy/default.ini --steps "$steps" --valid= --log-every 1000 \
    --log-level warn --n-experts "$more" --report "$tmp/more.json" >/dev/null ||
    { echo "bench_recompute: --n-experts $more failed" >&2; exit 1; }
python3 - "$tmp" "$out" "$rounds" "$steps" "$more" <<'PY'
import configparser, json, os, sys
tmp, out, rounds, steps, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
med = lambda v: sorted(v)[len(v) // 2]
ini = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
ini.read("deploy/default.ini")
D, H, E = (ini.getint("model", k) for k in ("d_model", "d_hidden", "n_experts"))
res = {"model": "deploy/default.ini", "d_model": D, "d_hidden": H, "n_experts": E, "steps": steps,
       "rounds": rounds, "settings": {}}
for m in ("none", "experts", "all"):
    reps = [json.load(open(os.path.join(tmp, f"{m}-{r}.json"))) for r in range(1, rounds + 1)]
    res["blas_kernels"] = reps[0]["blas_kernels"]
    res["settings"][m] = {"tokens_per_sec": med([x["tokens_per_sec"] for x in reps]),
                          "peak_rss_mb": med([x["peak_rss_mb"] for x in reps]),
                          "runs_tokens_per_sec": [x["tokens_per_sec"] for x in reps]}
mr = json.load(open(os.path.join(tmp, "more.json")))
res["more"] = {"n_experts": more, "peak_rss_mb": mr["peak_rss_mb"], "tokens_per_sec": mr["tokens_per_sec"]}
# memory per expert: the slope of peak RSS from E to `more` experts
res["expert_mb"] = (mr["peak_rss_mb"] - res["settings"]["none"]["peak_rss_mb"]) / (more - E)
for m, v in res["settings"].items():
    print(f"--recompute {m:8s} {v['tokens_per_sec']:8.0f} tok/s  peak RSS {v['peak_rss_mb']:.1f} MB")
print(f"{more} experts: peak RSS {mr['peak_rss_mb']:.1f} MB: {res['expert_mb'] * 1024:.1f} KiB per expert")
json.dump(res, open(out, "w"))
PY
