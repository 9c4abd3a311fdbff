# The balancing losses do their job: with the paper's weights (0.1, 0.1) the
# per-expert load stays balanced after warm-up; with both weights 0 the gate
# collapses onto a few experts. Deterministic, so the figures are exact for a
# given build; the bounds leave room for other BLAS builds.
head -n 2000 "$DATA/wiki.train.tokens" >"$WORK/train.txt"
run() {
    "$BIN/moe-worker" --train "$WORK/train.txt" --valid "" --d-model 32 --d-hidden 32 \
        --n-experts 8 --k 2 --batch 8 --unroll 16 --steps 400 --warmup 20 --lr 0.01 \
        --threads 1 --vocab-max 2000 --log-every 1000 --log-level warn \
        --w-importance "$1" --w-load "$1" --report "$WORK/r$1.json" >/dev/null || fail "training with weights $1"
}
run 0.1
run 0
python3 - "$WORK/r0.1.json" "$WORK/r0.json" <<'PY' || fail "balance figures out of bounds"
import json, sys
on, off = (json.load(open(p)) for p in sys.argv[1:3])
print("  weights 0.1: load CV %.3f, importance CV %.3f, max/mean load %.2f"
      % (on["load_cv"], on["importance_cv"], on["rows_routed_max_over_mean"]))
print("  weights 0:   load CV %.3f, importance CV %.3f, max/mean load %.2f"
      % (off["load_cv"], off["importance_cv"], off["rows_routed_max_over_mean"]))
ok = (on["load_cv"] < 0.15 and on["importance_cv"] < 0.3 and off["load_cv"] > 0.4
      and off["load_cv"] > 4 * on["load_cv"] and off["rows_routed_max_over_mean"] > 1.5 * on["rows_routed_max_over_mean"])
sys.exit(0 if ok else 1)
PY
