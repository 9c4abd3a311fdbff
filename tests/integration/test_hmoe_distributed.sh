# Hierarchical MoE with its experts on expert servers (issue 17, part): 1
# worker x 2 servers, with a coordinator and with the static placement
# without one, are byte-identical to the in-process trainer, model and
# optimizer state (moectl export of the checkpoints); both place whole
# groups (3 groups of 2: server 0 holds groups 0 and 1, server 1 group 2).
make_corpora
H="--moe hierarchical --groups 3 --experts-per-group 2 --k-primary 2 --k 1"
HT=$(echo "$TINY" | sed 's/--n-experts 6 //')
K=40
A="--train $WORK/train.txt --valid= $HT $H --steps $K"
L="$IT_DIR/../../deploy/launch-local.sh"
# (with a validation at step 20 and at the end: the groups' evaluation
# forwards, which the servers answer at once, give the same perplexity)
V="--valid $WORK/valid.txt --valid-every 20 --valid-max-tokens 200"
"$BIN/moe-worker" $A $V --checkpoint-dir "$WORK/local" --report "$WORK/local.json" >"$WORK/local.out" ||
    fail "in-process run"
vppl() { /usr/bin/python3 -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['valid_ppl']))" "$1"; }
"$BIN/moectl" export "$WORK/local" "$WORK/local.export.safetensors" >/dev/null ||
    fail "export of the in-process checkpoint"
grep "valid" "$WORK/local.out" >"$WORK/local.valid"
[ "$(wc -l <"$WORK/local.valid")" = 2 ] || fail "in-process: not two validations: $(cat "$WORK/local.out")"
for how in coordinator static; do
    opt=
    [ $how = static ] && opt=--no-coordinator
    sh "$L" --bin "$BIN" --run-dir "$WORK/$how" --servers 2 --workers 1 $opt -- $A $V \
        --checkpoint-dir "$WORK/$how/ck" --report "$WORK/$how.json" >"$WORK/$how.out" 2>&1 ||
        fail "2 servers + 1 worker ($how)"
    "$BIN/moectl" export "$WORK/$how/ck" "$WORK/$how.export.safetensors" >/dev/null ||
        fail "export ($how)"
    cmp "$WORK/local.export.safetensors" "$WORK/$how.export.safetensors" ||
        fail "2 servers + 1 worker ($how placement) differ from in-process in bytes"
    grep "valid" "$WORK/$how.out" | cmp -s - "$WORK/local.valid" ||
        fail "$how: validation differs from in-process: $(grep valid "$WORK/$how.out")"
    [ "$(vppl "$WORK/$how.json")" = "$(vppl "$WORK/local.json")" ] ||
        fail "$how: validation perplexity $(vppl "$WORK/$how.json"), in-process $(vppl "$WORK/local.json")"
done
echo "  ok: 2 servers + 1 worker (coordinator, static placement) are byte-identical to in-process;" \
    "validation perplexity the same to the last bit: $(vppl "$WORK/local.json")"
# the shard each server wrote on SIGTERM names whole groups only
for how in coordinator static; do
    /usr/bin/python3 - "$WORK/$how" <<'PYEOF' || fail "$how: the groups are not placed whole"
import json, re, struct, sys
def groups(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    names = [k for k in json.loads(raw[8 : 8 + n]) if k != "__metadata__"]
    return sorted({(int(m.group(1)), int(m.group(2))) for k in names
                   for m in [re.match(r"moe\.groups\.(\d+)\.experts\.(\d+)\.", k)] if m})
g0, g1 = groups(sys.argv[1] + "/server-0.safetensors"), groups(sys.argv[1] + "/server-1.safetensors")
assert g0 == [(0, 0), (0, 1), (1, 0), (1, 1)] and g1 == [(2, 0), (2, 1)], (g0, g1)
PYEOF
done
echo "  ok: server 0 holds groups 0 and 1 (4 experts), server 1 group 2 (its shard file's names)"
# 2 workers x 2 servers (the workers' ring sums Importance_H, the secondary
# loads and the per-group factors of Load_H): a rerun is byte-identical, and
# the model is that of 1 worker within a float tolerance (sums in another
# order); the coordinator sums the same vectors in the same rank order
for run in a b c; do
    opt=--no-coordinator
    [ $run = c ] && opt=
    sh "$L" --bin "$BIN" --run-dir "$WORK/w2$run" --servers 2 --workers 2 $opt -- $A \
        --checkpoint-dir "$WORK/w2$run/ck" >/dev/null 2>&1 || fail "2 servers + 2 workers (run $run)"
    "$BIN/moectl" export --params-only "$WORK/w2$run/ck" "$WORK/w2$run.export.safetensors" >/dev/null ||
        fail "export (2 workers, run $run)"
done
cmp "$WORK/w2a.export.safetensors" "$WORK/w2b.export.safetensors" || fail "2 workers: a rerun differs"
cmp "$WORK/w2a.export.safetensors" "$WORK/w2c.export.safetensors" ||
    fail "2 workers: the coordinator's sums give other bytes than the ring's"
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/local/step-000000$K/model.safetensors" \
    "$WORK/w2a.export.safetensors" 1e-4 || fail "2 workers differ from 1 worker beyond tolerance"
echo "  ok: 2 workers x 2 servers: a rerun is byte-identical, with a coordinator too; within 1e-4 of 1 worker"
