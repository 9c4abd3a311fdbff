#!/bin/sh
# Hierarchical MoE against flat (issue 17, points 6 and 7).
#
# (a) Speed and memory at each size of SIZES (default 256, 1024 and 4096
#     experts of D -> H -> D = 512 -> 1024 -> 512; the hierarchical models
#     16 x 16, 32 x 32 and 64 x 64 groups x experts): a local cluster of a
#     coordinator, 2 expert servers and 1 worker trains STEPS steps of each,
#     flat (k = K_FLAT, default 4) and hierarchical (k_primary K1 = 2, k K2 = 2:
#     the same K1 x K2 = 4 experts per token, so the same expert compute per
#     token); tokens/s (the fastest timed step after the first: noise on a
#     shared machine only adds time; and their mean) and the peak resident
#     memory of every process (MoE-4096-h on 2 servers must fit in 24 GB).
#     The gate alone (benchmarks/bench_gate.c, the worker's gate code on the
#     step's rows): time per step and GEMM FLOPs per row, flat against
#     hierarchical, each against sgemm on the same shapes measured in the
#     same run (the target: 4096-h at most 1/16 of flat-4096's FLOPs). A
#     flat model of FLAT_REF (16) experts at k = K1 x K2 is the tokens/s
#     reference measured in the same run (the target: 1024-h at least 0.9
#     of it).
# (b) Quality (QUALITY=1, the default): WikiText-2, the default model
#     (deploy/default.ini) with Q_EXPERTS (256) experts flat (k = K_FLAT)
#     and hierarchical Q_GROUPS x Q_PER (16 x 16, K1 x K2), in one process,
#     Q_STEPS (3000) steps each: equal steps, equal expert compute per
#     token; validation perplexity on the whole validation split and the
#     ratio hierarchical / flat (the target: within 3%, as the paper's 35.7
#     against 36.0).
# Every figure names the OpenBLAS kernel set it ran with (the worker's and
# servers' reports and logs; bench_gate's own and its limit's).
#
# Writes OUT_DIR/hmoe.json (every run's figures) and OUT_DIR/hmoe.md (the
# table). Reduced sizes for a quick check, e.g.
#   SIZES="16:4x4" D=32 H=64 BATCH=4 UNROLL=8 STEPS=3 VOCAB=2000 \
#   Q_EXPERTS=16 Q_GROUPS=4 Q_PER=4 Q_STEPS=5 Q_ARGS="--d-model 32 --d-hidden 64" \
#   Q_VALID_TOKENS=2000 sh benchmarks/bench_hmoe.sh build /tmp/out
# Environment (defaults): SIZES ("256:16x16 1024:32x32 4096:64x64"), D (512),
# H (1024), BATCH (256), UNROLL (32), STEPS (6), ROUNDS (1), VOCAB (10000), THREADS (1
# per process: 3 processes on 2 cores), K_FLAT (4), K1 (2), K2 (2),
# FLAT_REF (16; 0 skips it), GATE_SECONDS (0.5), QUALITY (1), Q_EXPERTS
# (256), Q_GROUPS (16), Q_PER (16), Q_STEPS (3000), Q_ARGS (""),
# Q_VALID_TOKENS (0: all).
# SMOKE=1 gives every unset one the quick check's sizes above (about 20 s;
# its figures measure nothing, write them elsewhere than results/).
# Usage: bench_hmoe.sh BUILD_DIR [OUT_DIR]   (OUT_DIR: benchmarks/results)
set -eu
if [ "${SMOKE:-0}" = 1 ]; then
    : "${SIZES:=16:4x4}" "${D:=32}" "${H:=64}" "${BATCH:=4}" "${UNROLL:=8}" "${STEPS:=3}" "${ROUNDS:=2}"
    : "${VOCAB:=2000}" "${GATE_SECONDS:=0.02}" "${FLAT_REF:=4}" "${Q_EXPERTS:=16}" "${Q_GROUPS:=4}"
    : "${Q_PER:=4}" "${Q_STEPS:=5}" "${Q_VALID_TOKENS:=2000}"
    : "${Q_ARGS:=--d-model 32 --d-hidden 64 --batch 4 --unroll 8}"
fi
build=$(cd "${1:-build}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
mkdir -p "${2:-$here/results}"
out=$(cd "${2:-$here/results}" && pwd)
cd "$top"
SIZES=${SIZES:-"256:16x16 1024:32x32 4096:64x64"}
D=${D:-512}
H=${H:-1024}
BATCH=${BATCH:-256}
UNROLL=${UNROLL:-32}
STEPS=${STEPS:-6}
ROUNDS=${ROUNDS:-1}
VOCAB=${VOCAB:-10000}
THREADS=${THREADS:-1}
K_FLAT=${K_FLAT:-4}
K1=${K1:-2}
K2=${K2:-2}
FLAT_REF=${FLAT_REF:-16}
GATE_SECONDS=${GATE_SECONDS:-0.5}
QUALITY=${QUALITY:-1}
Q_EXPERTS=${Q_EXPERTS:-256}
Q_GROUPS=${Q_GROUPS:-16}
Q_PER=${Q_PER:-16}
Q_STEPS=${Q_STEPS:-3000}
Q_ARGS=${Q_ARGS:-}
Q_VALID_TOKENS=${Q_VALID_TOKENS:-0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
runs="$tmp/runs"
mkdir -p "$runs"

# cluster NAME OPTIONS...: STEPS steps on a local cluster (coordinator, 2
# servers, 1 worker); its report and logs stay in $runs/NAME.
cluster() {
    name=$1
    shift
    echo "bench_hmoe: $name ($*)" >&2
    sh deploy/launch-local.sh --bin "$build/bin" --run-dir "$runs/$name" --servers 2 --workers 1 -- \
        --config deploy/default.ini --d-model "$D" --d-hidden "$H" --batch "$BATCH" \
        --unroll "$UNROLL" --steps "$STEPS" --valid= --vocab-max "$VOCAB" --threads "$THREADS" \
        --log-every 1 --log-level info --dropout 0 --timeout-ms 1800000 --final-model none "$@" \
        --report "$runs/$name/report.json" >"$runs/$name.out" 2>&1 ||
        { echo "bench_hmoe: $name failed: $(tail -n 5 "$runs/$name.out")" >&2; exit 1; }
}

# (a) speed, memory and the gate, flat and hierarchical at each size; the
# cluster runs in ROUNDS rounds, each running every model once in the same
# order, so that all see the same machine (medians count)
for size in $SIZES; do
    E=${size%%:*}
    shape=${size#*:}
    A=${shape%%x*}
    B=${shape#*x}
    [ "$((A * B))" -eq "$E" ] || { echo "bench_hmoe: $size: $A x $B is not $E" >&2; exit 2; }
    echo "== $E experts: gate alone, flat (k $K_FLAT) against $A x $B (k $K1, $K2), $((BATCH * UNROLL)) rows" >&2
    "$build/bin/bench_gate" --d-model "$D" --rows "$((BATCH * UNROLL))" --experts "$E" --k "$K_FLAT" \
        --groups "$A" --experts-per-group "$B" --k-primary "$K1" --k-secondary "$K2" \
        --threads 2 --seconds "$GATE_SECONDS" --json "$runs/gate-$E.json" 2>/dev/null >&2
done
r=1
while [ $r -le "$ROUNDS" ]; do
    for size in $SIZES; do
        E=${size%%:*}
        shape=${size#*:}
        A=${shape%%x*}
        B=${shape#*x}
        cluster "flat-$E-r$r" --n-experts "$E" --k "$K_FLAT"
        cluster "hier-$E-r$r" --n-experts "$E" --moe hierarchical --groups "$A" --experts-per-group "$B" \
            --k-primary "$K1" --k "$K2"
    done
    [ "$FLAT_REF" -gt 0 ] && cluster "flat-$FLAT_REF-ref-r$r" --n-experts "$FLAT_REF" --k "$((K1 * K2))"
    r=$((r + 1))
done

# (b) quality: equal steps, equal expert compute per token, in one process
if [ "$QUALITY" = 1 ]; then
    for how in flat hier; do
        if [ $how = flat ]; then
            m="--n-experts $Q_EXPERTS --k $K_FLAT"
        else
            m="--n-experts $((Q_GROUPS * Q_PER)) --moe hierarchical --groups $Q_GROUPS --experts-per-group $Q_PER --k-primary $K1 --k $K2"
        fi
        echo "bench_hmoe: quality, $how ($m), $Q_STEPS steps" >&2
        # shellcheck disable=SC2086
        "$build/bin/moe-worker" --config deploy/default.ini $Q_ARGS $m --steps "$Q_STEPS" \
            --valid-max-tokens "$Q_VALID_TOKENS" --log-every 1000 --log-level warn \
            --final-model none --report "$runs/quality-$how.json" >"$runs/quality-$how.out" 2>&1 ||
            { echo "bench_hmoe: quality $how failed: $(tail -n 5 "$runs/quality-$how.out")" >&2; exit 1; }
    done
fi

python3 - "$here" "$runs" "$out" "$SIZES" "$D" "$H" "$BATCH" "$UNROLL" "$STEPS" "$ROUNDS" "$K_FLAT" "$K1" "$K2" \
    "$FLAT_REF" "$QUALITY" "$Q_EXPERTS" "$Q_GROUPS" "$Q_PER" "$Q_STEPS" "$Q_ARGS" <<'PY'
import json, os, sys
(here, runs, out, sizes, D, H, B, T, steps, rounds, kf, k1, k2, ref, quality, qe, qg, qp, qsteps,
 qargs) = sys.argv[1:]
D, H, B, T, steps, rounds, kf, k1, k2, ref = map(int, (D, H, B, T, steps, rounds, kf, k1, k2, ref))
rows = B * T

sys.dont_write_bytecode = True  # nothing written into benchmarks/
sys.path.insert(0, here)
import cluster_log

def median(v):
    v = sorted(v)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2

def run(name):
    """A model's cluster runs, one a round: tokens/s (the median of the
    rounds' fastest step, and of their means), the peak RSS of every
    process (the largest of the rounds) and the kernel sets."""
    cs = [cluster_log.read(os.path.join(runs, "%s-r%d" % (name, r)),
                           os.path.join(runs, "%s-r%d.out" % (name, r))) for r in range(1, rounds + 1)]
    per = [dict(c["peak_rss_mb"], worker=c["worker_peak_rss_mb"]) for c in cs]
    rss = {}
    for p in per:
        for k, v in p.items():
            rss[k] = max(rss.get(k) or 0, v or 0)
    return {"tokens_per_sec": median([c["tokens_per_sec"] for c in cs]),
            "tokens_per_sec_mean": median([c["tokens_per_sec_mean"] for c in cs]),
            "rounds_tokens_per_sec": [c["tokens_per_sec"] for c in cs],
            "timed_steps": cs[0]["timed_steps"], "peak_rss_mb": rss,
            "total_peak_rss_mb": max(sum(v for v in p.values() if v) for p in per),
            "blas_kernels": "/".join(sorted({c["blas_kernels"] for c in cs})),
            "train_ppl": cs[0]["report"].get("train_ppl")}

def ratio(a, b):
    """The median over the rounds of a's tokens/s over b's (same round)."""
    return median([x / y for x, y in zip(a["rounds_tokens_per_sec"], b["rounds_tokens_per_sec"])])

res = {"d_model": D, "d_hidden": H, "rows_per_step": rows, "steps": steps, "rounds": rounds, "k_flat": kf,
       "k_primary": k1, "k": k2, "servers": 2, "workers": 1, "sizes": []}
for size in sizes.split():
    E, shape = size.split(":")
    A, Bg = map(int, shape.split("x"))
    E = int(E)
    g = json.load(open(os.path.join(runs, "gate-%d.json" % E)))
    f, h = run("flat-%d" % E), run("hier-%d" % E)
    res["sizes"].append({
        "experts": E, "groups": A, "experts_per_group": Bg,
        "expert_params": E * (2 * D * H + D + H), "flat": f, "hierarchical": h,
        "tokens_per_sec_ratio": ratio(h, f),
        "gate": g,
        "gate_flops_per_row_flat": g["flat"]["gemm_flops_per_row"],
        "gate_flops_per_row_hier": g["hierarchical"]["gemm_flops_per_row"],
        "gate_flops_ratio": g["flops_ratio"],
        "gate_step_s_flat": g["flat"]["step_s"], "gate_step_s_hier": g["hierarchical"]["step_s"],
    })
if ref > 0:
    res["flat_ref"] = dict(run("flat-%d-ref" % ref), experts=ref, k=k1 * k2)
if quality == "1":
    q = {}
    for how in ("flat", "hier"):
        rep = json.load(open(os.path.join(runs, "quality-%s.json" % how)))
        q[how] = {k: rep.get(k) for k in ("valid_ppl", "train_ppl", "tokens_per_sec", "steps",
                                          "blas_kernels", "blas_threads", "peak_rss_mb")}
    q.update({"experts": int(qe), "groups": int(qg), "experts_per_group": int(qp),
              "steps": int(qsteps), "extra_args": qargs, "config": "deploy/default.ini",
              "ppl_ratio": q["hier"]["valid_ppl"] / q["flat"]["valid_ppl"]})
    res["quality"] = q
json.dump(res, open(os.path.join(out, "hmoe.json"), "w"), indent=1)

L = ["# Hierarchical MoE against flat (benchmarks/bench_hmoe.sh)", "",
     "Experts of %d -> %d -> %d; %d rows a step; 2 expert servers and 1 worker; flat k = %d, "
     "hierarchical k_primary %d x k %d (the same experts per token). tokens/s: the fastest of "
     "%d timed steps (mean beside it), the median of %d round(s) that each ran every model; "
     "ratios are the medians of the rounds' ratios. Gate: bench_gate on the step's rows, time "
     "per step and GEMM FLOPs per row, each with its fraction of sgemm on the same shapes "
     "(same run)." % (D, H, D, rows, kf, k1, k2, steps - 1, rounds), "",
     "| experts | model | tokens/s (mean) | peak RSS, all processes | gate ms/step (of sgemm) "
     "| gate GEMM FLOP/row | BLAS kernels |", "|---|---|---|---|---|---|---|"]
for s in res["sizes"]:
    g = s["gate"]
    for name, r, gg in (("flat", s["flat"], g["flat"]),
                        ("%d x %d" % (s["groups"], s["experts_per_group"]), s["hierarchical"],
                         g["hierarchical"])):
        L.append("| %d | %s | %.0f (%.0f) | %.0f MB | %.2f (%.2f) | %.0f | %s; gate %s, limit %s |"
                 % (s["experts"], name, r["tokens_per_sec"], r["tokens_per_sec_mean"],
                    r["total_peak_rss_mb"], 1e3 * gg["step_s"], gg["fraction_of_sgemm"],
                    gg["gemm_flops_per_row"], r["blas_kernels"], g["kernels"], g["kernels_best"]))
    L.append("| %d | hierarchical / flat | %.3f | | %.3f | %.4f (1/%.1f) | |"
             % (s["experts"], s["tokens_per_sec_ratio"], g["time_ratio"], g["flops_ratio"],
                1 / g["flops_ratio"]))
if "flat_ref" in res:
    r = res["flat_ref"]
    L.append("| %d | flat, k %d (reference) | %.0f (%.0f) | %.0f MB | | | %s |"
             % (r["experts"], r["k"], r["tokens_per_sec"], r["tokens_per_sec_mean"],
                r["total_peak_rss_mb"], r["blas_kernels"]))
    L.append("")
    L.append("Hierarchical tokens/s over the flat-%d reference (k %d): " % (r["experts"], r["k"]) +
             ", ".join("%d-h %.3f" % (s["experts"], ratio(s["hierarchical"], r))
                       for s in res["sizes"]) + ".")
if "quality" in res:
    q = res["quality"]
    L += ["", "Quality: %s%s, %d steps, WikiText-2 validation perplexity: flat-%d (k %d) %.2f, "
          "%d x %d (k %d x %d) %.2f; hierarchical / flat %.4f (kernels %s, %s thread(s))."
          % (q["config"], (" " + q["extra_args"]) if q["extra_args"] else "", q["steps"],
             q["experts"], kf, q["flat"]["valid_ppl"], q["groups"], q["experts_per_group"], k1, k2,
             q["hier"]["valid_ppl"], q["ppl_ratio"], q["flat"]["blas_kernels"],
             q["flat"]["blas_threads"])]
open(os.path.join(out, "hmoe.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
