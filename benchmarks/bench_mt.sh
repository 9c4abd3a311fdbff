#!/bin/sh
# Translation quality (issue 19): the MoE translation model against a dense
# one of the same compute per token, each trained in one process for the
# same wall time on data/bible-en-es, then scored on its test split.
#   MoE:   --n-experts E --k K --d-hidden H in each MoE layer
#   dense: --n-experts 1 --k 1 --d-hidden K*H (one expert as wide as the K
#          active experts together: the same FLOPs per token)
# Both models train at the same time, one thread each (BENCH_MT_THREADS),
# so that whatever else the machine runs slows both alike: the two get
# the same wall time on the same cores. Each gets SECONDS of training (a
# SIGTERM ends it; the model of the step reached is validated and
# written), then moectl translate (beam 4,
# GNMT length penalty 0.6) translates test.en and moectl bleu scores it
# against test.es. Writes OUT_DIR/mt.json and OUT_DIR/mt.md: test BLEU,
# validation perplexity, tokens/s, parameters and steps of each model, and
# OUT_DIR/mt_NAME.hyp, the translations.
# Usage: bench_mt.sh BUILD_DIR OUT_DIR [SECONDS] [D] [E] [K] [H]
#   (defaults: 3600 s, D 128, E 32, K 4, H 256; BENCH_MT_THREADS 1)
set -eu
build=$(cd "${1:-build}" && pwd)
outdir=$2
secs=${3:-3600}
D=${4:-128}
E=${5:-32}
K=${6:-4}
H=${7:-256}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cd "$top"
mkdir -p "$outdir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data=data/bible-en-es
common="--task translate --d-model $D --batch 32 --steps 1000000000 --lr 0.002 --warmup 400 \
--dropout 0.1 --log-every 500 --threads ${BENCH_MT_THREADS:-1} --src-vocab-max 8000 --tgt-vocab-max 8000"
train() {
    name=$1
    shift
    echo "bench_mt: training $name for $secs s: $*" >&2
    # shellcheck disable=SC2086
    timeout -s TERM --preserve-status "$secs" "$build/bin/moe-worker" $common "$@" \
        --final-model "$tmp/$name" >"$tmp/$name.log" 2>&1 ||
        { echo "bench_mt: training $name failed: $(tail -n 3 "$tmp/$name.log")" >&2; return 1; }
}
score() {
    name=$1
    "$build/bin/moectl" translate "$tmp/$name" --input "$data/test.en" --beam 4 \
        >"$tmp/$name.hyp" 2>"$tmp/$name.translate.log" ||
        { echo "bench_mt: translating with $name failed: $(tail -n 3 "$tmp/$name.translate.log")" >&2; exit 1; }
    "$build/bin/moectl" bleu "$data/test.es" "$tmp/$name.hyp" >"$tmp/$name.bleu"
    cp "$tmp/$name.hyp" "$outdir/mt_$name.hyp"
}
train moe --n-experts "$E" --k "$K" --d-hidden "$H" &
moe_pid=$!
train dense --n-experts 1 --k 1 --d-hidden $((K * H)) &
dense_pid=$!
ok=1
wait "$moe_pid" || ok=0
wait "$dense_pid" || ok=0
[ "$ok" = 1 ] || exit 1
score moe
score dense
python3 - "$tmp" "$outdir" "$secs" "$D" "$E" "$K" "$H" <<'PY'
import json, os, re, sys
tmp, out, secs, D, E, K, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
res = {"seconds": secs, "d_model": D, "corpus": "data/bible-en-es", "models": {}}
for name in ("moe", "dense"):
    log = open(f"{tmp}/{name}.log").read()
    t = re.search(r"trained (\d+) steps in ([\d.]+) s: (\d+) target tokens/s; (\d+) parameters "
                  r"\((\d+) dense, (\d+) in 2 x (\d+) experts\)", log)
    v = re.search(r"validation perplexity ([\d.]+) after \d+ steps .*cross-entropy ([\d.]+)", log)
    b = re.search(r"BLEU = ([\d.]+) \(([\d.]+)\)", open(f"{tmp}/{name}.bleu").read())
    k = re.search(r"BLAS kernels: (\S+)", log)
    res["models"][name] = {
        "steps": int(t[1]), "train_seconds": float(t[2]), "tokens_per_sec": int(t[3]),
        "parameters": int(t[4]), "dense_parameters": int(t[5]), "expert_parameters": int(t[6]),
        "experts_per_layer": int(t[7]), "k": K if name == "moe" else 1,
        "d_hidden": H if name == "moe" else K * H,
        "valid_perplexity": float(v[1]), "valid_cross_entropy": float(v[2]),
        "test_bleu": float(b[1]), "blas_kernels": k[1] if k else "?"}
m, d = res["models"]["moe"], res["models"]["dense"]
res["bleu_gain"] = m["test_bleu"] - d["test_bleu"]
json.dump(res, open(f"{out}/mt.json", "w"), indent=1)
with open(f"{out}/mt.md", "w") as f:
    thr = os.environ.get("BENCH_MT_THREADS", "1")
    f.write(f"## Translation: MoE against dense (data/bible-en-es, {secs} s of training, "
            f"both at once, {thr} thread(s) each)\n\n")
    f.write("| model | experts x k x H | parameters | steps | target tokens/s | valid ppl | test BLEU |\n")
    f.write("|---|---|---:|---:|---:|---:|---:|\n")
    for name, r in res["models"].items():
        f.write(f"| {name} | {r['experts_per_layer']} x {r['k']} x {r['d_hidden']} | "
                f"{r['parameters']:,} | {r['steps']} | {r['tokens_per_sec']} | "
                f"{r['valid_perplexity']:.2f} | {r['test_bleu']:.2f} |\n")
    f.write(f"\nMoE - dense: {res['bleu_gain']:+.2f} BLEU (kernels {m['blas_kernels']}).\n")
print(open(f"{out}/mt.md").read())
PY
