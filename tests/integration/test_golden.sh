# Golden files: three small models (default options in one process, the
# same with --moe-sigmoid, and 2 expert servers + 2 workers with a
# coordinator) trained with the reference GEMM must give exactly the
# tensors recorded in tests/golden/ (SHA256SUMS) before the layering
# refactor, and keep giving them (tests/golden/runs.sh, record.sh).
GOLDEN_DIR=$(cd "$IT_DIR/../golden" && pwd)
. "$GOLDEN_DIR/runs.sh"
make_corpora
for name in $GOLDEN_NAMES; do
    golden_run "$name" "$WORK/$name.canon"
    want=$(sed -n "s/^\([0-9a-f]*\)  $name.canon$/\1/p" "$GOLDEN_DIR/SHA256SUMS")
    got=$(sha256sum "$WORK/$name.canon" | cut -d' ' -f1)
    [ -n "$want" ] || fail "no golden hash for $name in $GOLDEN_DIR/SHA256SUMS"
    if [ "$got" != "$want" ]; then
        cmp "$GOLDEN_DIR/$name.canon" "$WORK/$name.canon" | head -n 1
        fail "golden run $name: sha256 $got, the golden file has $want"
    fi
    echo "  ok: $name: $(wc -c <"$WORK/$name.canon") bytes, sha256 ${got%????????????????????????????????????????????????????????}... identical to tests/golden/$name.canon"
done
