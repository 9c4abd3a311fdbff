# Two runs with the same seed and flags write byte-identical checkpoints; a
# run stopped at step 6 and resumed to step 12 writes the same bytes as one
# run of 12 steps; another seed gives different bytes.
make_corpora
run() { "$BIN/moe-worker" --train "$WORK/train.txt" --valid "$WORK/valid.txt" $TINY "$@" >/dev/null; }
run --steps 12 --checkpoint-dir "$WORK/a" || fail "run a"
run --steps 12 --checkpoint-dir "$WORK/b" || fail "run b"
run --steps 6 --checkpoint-dir "$WORK/c" || fail "run c (first half)"
run --steps 12 --checkpoint-dir "$WORK/c" --resume "$WORK/c" || fail "run c (resumed)"
run --steps 12 --checkpoint-dir "$WORK/d" --seed 2 || fail "run d"
for f in model.safetensors optim.safetensors vocab.txt config.ini; do
    cmp "$WORK/a/step-00000012/$f" "$WORK/b/step-00000012/$f" || fail "rerun differs in $f"
    cmp "$WORK/a/step-00000012/$f" "$WORK/c/step-00000012/$f" || fail "resumed run differs in $f"
done
cmp -s "$WORK/a/step-00000012/model.safetensors" "$WORK/d/step-00000012/model.safetensors" &&
    fail "seed 2 gave the same model as seed 1"
[ "$(cat "$WORK/c/latest")" = "step-00000012" ] || fail "latest does not name step 12"
echo "  ok: rerun and resume are byte-identical; another seed differs"
