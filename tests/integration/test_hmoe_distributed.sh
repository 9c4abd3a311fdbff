# Hierarchical MoE with its experts on expert servers (issue 17, part): 1
# worker x 2 servers (placing whole groups) are byte-identical to the
# in-process trainer, model and optimizer state.
make_corpora
H="--moe hierarchical --groups 3 --experts-per-group 2 --k-primary 2 --k 1"
HT=$(echo "$TINY" | sed 's/--n-experts 6 //')
A="--train $WORK/train.txt --valid $WORK/valid.txt $HT $H --steps 12"
L="$IT_DIR/../../deploy/launch-local.sh"
ck=step-00000012
"$BIN/moe-worker" $A --checkpoint-dir "$WORK/local" >/dev/null || fail "in-process run"
"$BIN/moectl" export "$WORK/local" "$WORK/local.export.safetensors" >/dev/null ||
    fail "export of the in-process checkpoint"
sh "$L" --bin "$BIN" --run-dir "$WORK/r1" --servers 2 --workers 1 -- $A \
    --checkpoint-dir "$WORK/r1/ck" >/dev/null || fail "2 servers + 1 worker"
"$BIN/moectl" export "$WORK/r1/ck" "$WORK/r1.export.safetensors" >/dev/null || fail "export of the cluster"
cmp "$WORK/local.export.safetensors" "$WORK/r1.export.safetensors" ||
    fail "the export of one process and of 2 servers + 1 worker differ in bytes"
echo "  ok: 2 servers + 1 worker are byte-identical to in-process"
