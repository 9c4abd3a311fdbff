# Hierarchical MoE in one process (issue 17): the options and what they
# refuse; a rerun and a run stopped at step 4 and resumed to 8 write the
# bytes of one straight run of 8 steps; the checkpoint names the primary
# gate, each group's gate and each group's experts; moectl eval gives
# moe-worker's validation perplexity to the last bit, and PyTorch's
# hierarchical module (deploy/torch_model.py, in the export bundle) the same
# to 1e-4.
make_corpora
PY=/usr/bin/python3
C="$BIN/moectl"
T="--train $WORK/train.txt --valid $WORK/valid.txt"
# 3 groups of 2 experts, 2 groups and 1 expert of each per row; n_experts
# is left out (it is 3 x 2)
S="--d-model 16 --d-hidden 24 --batch 4 --unroll 8 --eval-batch 3 --warmup 5 --lr 0.01 --threads 1 \
--log-every 1000 --log-level warn --dropout 0.1"
H="--moe hierarchical --groups 3 --experts-per-group 2 --k-primary 2 --k 1"
json_field() { $PY -c "import json,sys; print(repr(json.load(open(sys.argv[1]))[sys.argv[2]]))" "$1" "$2"; }

# what the options refuse: one sentence each, exit 2
refuse() {
    desc=$1
    pattern=$2
    shift 2
    "$BIN/moe-worker" $T $S --steps 1 --final-model none "$@" >/dev/null 2>"$WORK/err.txt"
    rc=$?
    [ $rc = 2 ] || fail "$desc: exit $rc, expected 2: $(cat "$WORK/err.txt")"
    grep -Eq -- "$pattern" "$WORK/err.txt" || fail "$desc: $(cat "$WORK/err.txt")"
    echo "  ok: $desc: $(head -n 1 "$WORK/err.txt")"
}
refuse "n_experts other than groups x experts_per_group" \
    "--n-experts 7 is not --groups 3 x --experts-per-group 2" $H --n-experts 7
# a flag's shape overrides the configuration file's n_experts (16 there):
# --groups 3 --experts-per-group 2 is 6 experts; a file that contradicts
# itself is named as the file
printf '[model]\nn_experts = 16\n' >"$WORK/e16.ini"
"$BIN/moe-worker" --config "$WORK/e16.ini" $T $S $H --steps 1 --final-model none \
    --report "$WORK/e16.json" >/dev/null 2>"$WORK/err.txt" ||
    fail "a config file's n_experts with --groups 3 --experts-per-group 2: $(cat "$WORK/err.txt")"
[ "$(json_field "$WORK/e16.json" n_experts)" = 6 ] ||
    fail "--groups 3 --experts-per-group 2 over a file's n_experts 16 trained $(json_field "$WORK/e16.json" n_experts) experts"
echo "  ok: --groups 3 --experts-per-group 2 over a file's n_experts = 16: 6 experts"
printf '[model]\nn_experts = 7\nmoe = hierarchical\ngroups = 3\nexperts_per_group = 2\n' >"$WORK/e7.ini"
refuse "a file whose n_experts is not groups x experts_per_group" \
    "n_experts 7 \\(from the configuration file\\) is not --groups 3 x --experts-per-group 2" \
    --config "$WORK/e7.ini" --k-primary 2 --k 1
refuse "k larger than a group" "--k 3 is larger than --experts-per-group 2" $H --k 3
refuse "k_primary larger than the groups" "--k-primary 4 is larger than --groups 3" $H --k-primary 4
refuse "an unknown --moe" "--moe: expected flat or hierarchical" --moe tree

# the memory check before allocating counts the secondary gates: 6 experts
# (parameters, factored Adam, gradients), a batch's rows at k_primary x k
# experts each, and the 3 groups' gates (4 D B + 2 (D + B) floats each):
# one byte less is refused with that figure, the figure itself passes on to
# the dense model's check
need=$($PY -c "
D, H, n, A, B = 16, 24, 6, 3, 2
P, S = 2 * D * H + H + D, 3 * H + 3 * D
print(4 * n * (2 * P + S) + 4 * 4 * 8 * 2 * 1 * (D + 2 * H) + 4 * A * (4 * D * B + 2 * (D + B)))")
MOE_MEM_AVAILABLE=$((need - 1)) "$BIN/moe-worker" $T $S $H --steps 1 --final-model none >/dev/null 2>"$WORK/err.txt" &&
    fail "too little memory for the experts and gates was not refused"
grep -q "6 experts of 16 -> 24 -> 16 (with their optimizer state and the secondary gates) needs about .* ($need bytes)" \
    "$WORK/err.txt" || fail "the memory check: $(cat "$WORK/err.txt")"
MOE_MEM_AVAILABLE=$need "$BIN/moe-worker" $T $S $H --steps 1 --final-model none >/dev/null 2>"$WORK/err.txt"
grep -q "^moe-worker: error: the dense model .* needs about" "$WORK/err.txt" ||
    fail "with $need bytes, the experts and gates should fit: $(cat "$WORK/err.txt")"
echo "  ok: the memory check counts the experts, the rows and the groups' gates: $need bytes"

# rerun and resume: the same bytes
run() { "$BIN/moe-worker" $T $S $H "$@" >/dev/null || fail "training: $*"; }
run --steps 8 --checkpoint-dir "$WORK/a" --report "$WORK/report.json"
run --steps 8 --checkpoint-dir "$WORK/b"
run --steps 4 --checkpoint-dir "$WORK/c"
"$BIN/moe-worker" $T --threads 1 --log-level warn --steps 8 --resume "$WORK/c" \
    --checkpoint-dir "$WORK/c" >/dev/null || fail "resuming the hierarchical model without its flags"
for f in model.safetensors optim.safetensors vocab.txt config.ini; do
    cmp "$WORK/a/step-00000008/$f" "$WORK/b/step-00000008/$f" || fail "rerun differs in $f"
    cmp "$WORK/a/step-00000008/$f" "$WORK/c/step-00000008/$f" || fail "4 + 4 steps differ from 8 in $f"
done
echo "  ok: a rerun and 4 steps resumed to 8 are byte-identical to 8 steps"

# the checkpoint's names and shapes (issue 17, point 5)
$PY - "$WORK/a/step-00000008" <<'EOF' || fail "checkpoint names"
import json, struct, sys
def header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])
m = header(sys.argv[1] + "/model.safetensors")
o = header(sys.argv[1] + "/optim.safetensors")
want = {"moe.w_gate": [16, 3], "moe.w_noise": [16, 3]}
for i in range(3):
    want["moe.groups.%d.w_gate" % i] = [16, 2]
    want["moe.groups.%d.w_noise" % i] = [16, 2]
    for j in range(2):
        p = "moe.groups.%d.experts.%d." % (i, j)
        want.update({p + "w1.weight": [24, 16], p + "w1.bias": [24], p + "w2.weight": [16, 24], p + "w2.bias": [16]})
for k, shape in want.items():
    assert k in m and m[k]["shape"] == shape, (k, m.get(k))
assert not [k for k in m if k.startswith("moe.experts.")], "flat expert names"
assert "moe.groups.2.experts.1.w1.weight.fadam" in o, sorted(o)[:5]
EOF
echo "  ok: moe.w_gate [16, 3], moe.groups.I.w_gate [16, 2], moe.groups.I.experts.J.w1.weight ..."

# moectl eval, export and PyTorch
"$C" eval "$WORK/a" --corpus "$WORK/valid.txt" --threads 1 --json >"$WORK/eval.json" 2>/dev/null ||
    fail "moectl eval failed"
ours=$(json_field "$WORK/report.json" valid_ppl)
theirs=$(json_field "$WORK/eval.json" perplexity)
[ "$ours" = "$theirs" ] || fail "moectl eval $theirs, moe-worker's validation $ours"
"$C" export "$WORK/a" "$WORK/bundle" >/dev/null 2>&1 || fail "moectl export to a bundle"
"$C" eval "$WORK/bundle/model.safetensors" --corpus "$WORK/valid.txt" --threads 1 --json \
    >"$WORK/eval2.json" 2>/dev/null || fail "moectl eval of the export"
[ "$(json_field "$WORK/eval2.json" perplexity)" = "$ours" ] || fail "the export evaluates otherwise"
$PY -c "import torch" 2>/dev/null || fail "PyTorch is not installed (deploy/install-deps.sh --test installs python3-torch)"
torch=$($PY "$WORK/bundle/tools/torch_model.py" "$WORK/bundle" "$WORK/valid.txt") ||
    fail "PyTorch could not load the hierarchical bundle"
$PY -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)" \
    "$theirs" "$torch" || fail "PyTorch's perplexity $torch, moectl eval $theirs"
echo "  ok: moectl eval = moe-worker's validation, $ours; the export the same; PyTorch $torch"
