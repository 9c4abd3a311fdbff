# The checkpoint's tensors load into PyTorch modules (deploy/torch_model.py,
# the module export bundles carry) by name and shape alone,
# and PyTorch computes the same validation perplexity as moe-worker: the
# flat model (with --moe-sigmoid, with --no-residual) and the hierarchical
# one (issue 17, point 5: 4 groups of 3 experts, top 2 of each level),
# trained in one process and on 1 worker x 2 expert servers (which hold
# the secondary gates: moe.groups.I.w_gate in their shard files). For the
# hierarchical model moectl eval of the checkpoint gives moe-worker's
# validation perplexity to the last bit, moectl export writes the
# documented names, the cluster's export is the in-process one byte for
# byte, and PyTorch agrees with moectl eval to 1e-4.
make_corpora
PY=/usr/bin/python3
$PY -c "import torch" 2>/dev/null || fail "PyTorch is not installed (deploy/install-deps.sh --test installs python3-torch)"
C="$BIN/moectl"
T="--train $WORK/train.txt --valid $WORK/valid.txt"
json_field() { $PY -c "import json,sys; print(repr(json.load(open(sys.argv[1]))[sys.argv[2]]))" "$1" "$2"; }
# every model is evaluated by one Python process at the end (PyTorch's import
# is the slow part): lines "LABEL MODEL MOECTL_PPL"
: >"$WORK/models.txt"
for variant in sigmoid residual; do
    opt=--moe-sigmoid
    [ $variant = residual ] && opt=--no-residual
    "$BIN/moe-worker" $T $TINY --steps 15 $opt --checkpoint-dir "$WORK/$variant" \
        --report "$WORK/$variant.json" >/dev/null || fail "training ($opt)"
    echo "$opt $WORK/$variant/step-00000015 $(json_field "$WORK/$variant.json" valid_ppl)" >>"$WORK/models.txt"
done

# the hierarchical model, in one process and on 1 worker x 2 servers
H="--moe hierarchical --groups 4 --experts-per-group 3 --k-primary 2 --k 2"
A="$T $(echo "$TINY" | sed 's/--n-experts 6 //') $H --steps 15"
"$BIN/moe-worker" $A --checkpoint-dir "$WORK/hl" --report "$WORK/hl.json" >/dev/null ||
    fail "training the hierarchical model in one process"
sh "$IT_DIR/../../deploy/launch-local.sh" --bin "$BIN" --run-dir "$WORK/cl" --servers 2 --workers 1 -- $A \
    --checkpoint-dir "$WORK/hc" --report "$WORK/hc.json" >"$WORK/cl.out" 2>&1 ||
    fail "training the hierarchical model on 1 worker x 2 servers: $(tail -n 3 "$WORK/cl.out")"
for how in hl hc; do
    "$C" eval "$WORK/$how" --corpus "$WORK/valid.txt" --threads 1 --json >"$WORK/$how.eval.json" 2>"$WORK/err.txt" ||
        fail "moectl eval of the hierarchical checkpoint ($how): $(cat "$WORK/err.txt")"
    ours=$(json_field "$WORK/$how.json" valid_ppl)
    theirs=$(json_field "$WORK/$how.eval.json" perplexity)
    [ "$ours" = "$theirs" ] || fail "$how: moectl eval $theirs, moe-worker's validation $ours"
    "$C" export "$WORK/$how" "$WORK/$how.bundle" >/dev/null 2>&1 || fail "moectl export ($how)"
    cmp "$WORK/$how.bundle/tools/torch_model.py" "$IT_DIR/../../deploy/torch_model.py" ||
        fail "the bundle's torch_model.py is not deploy/torch_model.py"
    echo "hierarchical-$how $WORK/$how.bundle $theirs" >>"$WORK/models.txt"
done
cmp "$WORK/hl.bundle/model.safetensors" "$WORK/hc.bundle/model.safetensors" ||
    fail "the cluster's export differs from the in-process one"
echo "  ok: hierarchical, in one process and on 2 servers: moectl eval = moe-worker's validation," \
    "$(json_field "$WORK/hc.json" valid_ppl); the exports byte-identical"
# the names: the worker holds the primary gate, each server its groups'
# gates and experts (with their optimizer state); the export all of them
$PY - "$WORK/hc/step-00000015" "$WORK/hc.bundle/model.safetensors" <<'EOF' || fail "checkpoint names"
import json, struct, sys
def names(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return {k: v["shape"] for k, v in json.loads(raw[8 : 8 + n]).items() if k != "__metadata__"}
D, Hd, A, B = 16, 24, 4, 3
def group(i):
    g = {"moe.groups.%d.w_gate" % i: [D, B], "moe.groups.%d.w_noise" % i: [D, B]}
    for j in range(B):
        p = "moe.groups.%d.experts.%d." % (i, j)
        g.update({p + "w1.weight": [Hd, D], p + "w1.bias": [Hd], p + "w2.weight": [D, Hd], p + "w2.bias": [D]})
    return g
gates = {"moe.w_gate": [D, A], "moe.w_noise": [D, A]}
ck = sys.argv[1]
w, s0, s1 = (names("%s/%s.safetensors" % (ck, f)) for f in ("worker-0", "server-0", "server-1"))
assert {k: v for k, v in w.items() if k.startswith("moe.") and "adam" not in k} == gates, sorted(w)
for shard, gs in ((s0, (0, 1)), (s1, (2, 3))):
    want = {}
    for i in gs:
        want.update(group(i))
    assert {k: v for k, v in shard.items() if not k.endswith(".fadam")} == want, sorted(shard)
    assert sorted(k for k in shard if k.endswith(".fadam")) == sorted(k + ".fadam" for k in want), sorted(shard)
e = names(sys.argv[2])
want = dict(gates)
for i in range(A):
    want.update(group(i))
assert {k: v for k, v in e.items() if k.startswith("moe.") and not k.endswith(("adam_m", "adam_v", "fadam"))} == want, sorted(e)
EOF
echo "  ok: worker-0 holds moe.w_gate [16, 4], server 0 moe.groups.{0,1}.w_gate [16, 3] and their experts," \
    "server 1 groups 2 and 3; the export moe.groups.I.experts.J.w1.weight ..."

$PY - "$IT_DIR/../../deploy" "$WORK/valid.txt" "$WORK/models.txt" <<'EOF' || fail "PyTorch's perplexity"
import sys
sys.path.insert(0, sys.argv[1])
import torch_model
bad = 0
for line in open(sys.argv[3]):
    label, path, ours = line.split()
    model, vocab, config = torch_model.load(path)
    theirs = torch_model.perplexity(model, vocab, sys.argv[2], int(config.get("train", "eval_batch")),
                                    int(config.get("train", "unroll")))
    ok = abs(theirs - float(ours)) <= 1e-4 * float(ours)
    print("  %s (%s): moe-worker / moectl eval valid ppl %s, PyTorch %.10g" % ("ok" if ok else "FAIL", label, ours, theirs))
    bad += not ok
sys.exit(bad)
EOF
