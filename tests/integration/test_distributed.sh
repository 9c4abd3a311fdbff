# Experts on expert servers give exactly the model of the in-process trainer:
# 2 servers + 1 worker (tcp, and ipc) are byte-identical to --experts local,
# model and optimizer state (the cluster's checkpoint, exported with moectl
# export, against the in-process checkpoint's two files). 2 workers x 2 servers on the same global batch
# are byte-identical to themselves on a rerun, and equal to 1 worker within
# a float tolerance (their dense gradients and balance statistics are summed
# in another order; see README). Recomputing activations changes no bit:
# the ipc cluster runs with --recompute experts, the second 2-worker run
# with --recompute all.
make_corpora
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 15"
L="$IT_DIR/../../deploy/launch-local.sh"
"$BIN/moe-worker" $A --checkpoint-dir "$WORK/local" >/dev/null || fail "in-process run"
ck=step-00000015
# an export does not depend on how the model was trained: the in-process
# checkpoint's export is byte for byte the cluster's below
"$BIN/moectl" export "$WORK/local" "$WORK/local.export.safetensors" >/dev/null ||
    fail "export of the in-process checkpoint"
for t in tcp ipc; do
    rc=none
    [ $t = ipc ] && rc=experts
    sh "$L" --bin "$BIN" --run-dir "$WORK/r1$t" --transport $t --servers 2 --workers 1 -- $A \
        --recompute $rc --checkpoint-dir "$WORK/r1$t/ck" >/dev/null ||
        fail "2 servers + 1 worker over $t"
    "$BIN/moectl" export "$WORK/r1$t/ck" "$WORK/r1$t.export.safetensors" >/dev/null || fail "export ($t)"
    /usr/bin/python3 "$IT_DIR/compare_safetensors.py" \
        "$WORK/local/$ck/model.safetensors+$WORK/local/$ck/optim.safetensors" "$WORK/r1$t.export.safetensors" \
        exact || fail "2 servers + 1 worker over $t differ from in-process"
    cmp "$WORK/local.export.safetensors" "$WORK/r1$t.export.safetensors" ||
        fail "the export of one process and of 2 servers + 1 worker over $t differ in bytes"
    [ -f "$WORK/r1$t/ck/$ck/manifest.json" ] || fail "no committed cluster checkpoint ($t)"
    [ -s "$WORK/r1$t/server-0.safetensors" ] || fail "server 0 wrote no shard on SIGTERM ($t)"
    echo "  ok: 2 servers + 1 worker over $t (--recompute $rc) are byte-identical to in-process (and so are their exports)"
done
# without --checkpoint-dir a cluster keeps its final model too (worker 0
# fetches the experts): the same bytes as the in-process model
sh "$L" --bin "$BIN" --run-dir "$WORK/fm" --servers 2 --workers 1 -- $A \
    --final-model "$WORK/fm/model" >"$WORK/fm.out" 2>&1 || fail "a cluster without --checkpoint-dir"
grep -q "model of step 15 written to .*fm/model" "$WORK/fm.out" ||
    fail "the cluster wrote no final model: $(tail -n 3 "$WORK/fm.out")"
"$BIN/moectl" export "$WORK/fm/model" "$WORK/fm.export.safetensors" >/dev/null 2>&1 ||
    fail "export of the cluster's final model"
cmp "$WORK/local.export.safetensors" "$WORK/fm.export.safetensors" ||
    fail "the cluster's final model differs from the in-process model"
echo "  ok: a cluster without --checkpoint-dir writes its final model, byte for byte the in-process one"
# experts of 512 -> 1024 -> 512 (4.2 MB each): worker 0 fetches 15 at a time
# (64 MiB of replies), so the final model of 20 takes two fetches, the second
# of 5, and nobody holds a second copy of a shard: the same bytes again
B="--train $WORK/train.txt --valid= $TINY --d-model 512 --d-hidden 1024 --n-experts 20 --steps 1"
"$BIN/moe-worker" $B --final-model "$WORK/big-local" >/dev/null || fail "in-process run, 512 -> 1024 -> 512"
sh "$L" --bin "$BIN" --run-dir "$WORK/big" --servers 2 --workers 1 -- $B \
    --final-model "$WORK/big/model" >"$WORK/big.out" 2>&1 || fail "a cluster of experts of 512 -> 1024 -> 512"
for m in big-local big/model; do
    "$BIN/moectl" export "$WORK/$m" "$WORK/$(echo $m | tr / -).export.safetensors" >/dev/null 2>&1 ||
        fail "export of $m"
done
cmp "$WORK/big-local.export.safetensors" "$WORK/big-model.export.safetensors" ||
    fail "a final model fetched in pieces differs from the in-process model"
echo "  ok: a final model fetched 15 experts at a time (20 experts of 4.2 MB) is byte for byte the in-process one"
for run in a b; do
    rc=none
    [ $run = b ] && rc=all
    sh "$L" --bin "$BIN" --run-dir "$WORK/r2$run" --servers 2 --workers 2 -- $A \
        --recompute $rc --checkpoint-dir "$WORK/r2$run/ck" >/dev/null ||
        fail "2 servers + 2 workers (run $run)"
done
for run in a b; do
    "$BIN/moectl" export --params-only "$WORK/r2$run/ck" "$WORK/r2$run.export.safetensors" >/dev/null ||
        fail "export (2 workers, run $run)"
done
cmp "$WORK/r2a.export.safetensors" "$WORK/r2b.export.safetensors" || fail "2 workers: a rerun is not byte-identical"
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/local/$ck/model.safetensors" \
    "$WORK/r2a.export.safetensors" 1e-4 || fail "2 workers differ from 1 worker beyond tolerance"
echo "  ok: 2 workers x 2 servers: rerun (--recompute all) byte-identical; within tolerance of 1 worker"
