# The checkpoint's tensors load into PyTorch modules (deploy/torch_model.py,
# the module export bundles carry) by name and shape alone,
# and PyTorch computes the same validation perplexity as moe-worker.
make_corpora
PY=/usr/bin/python3
$PY -c "import torch" 2>/dev/null || fail "PyTorch is not installed (deploy/install-deps.sh --test installs python3-torch)"
for variant in "--moe-sigmoid" "--no-residual"; do
    rm -rf "$WORK/ck" "$WORK/report.json"
    "$BIN/moe-worker" --train "$WORK/train.txt" --valid "$WORK/valid.txt" $TINY --steps 15 \
        $variant --checkpoint-dir "$WORK/ck" --report "$WORK/report.json" >/dev/null || fail "training ($variant)"
    ours=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['valid_ppl'])" "$WORK/report.json")
    theirs=$($PY "$IT_DIR/../../deploy/torch_model.py" "$WORK/ck/step-00000015" "$WORK/valid.txt") ||
        fail "PyTorch could not load or evaluate the checkpoint ($variant)"
    $PY -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-4 * b else 1)" "$ours" "$theirs" ||
        fail "perplexity differs ($variant): moe-worker $ours, PyTorch $theirs"
    echo "  ok ($variant): moe-worker valid ppl $ours, PyTorch $theirs"
done
