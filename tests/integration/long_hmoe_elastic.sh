# Hierarchical MoE on expert servers (issue 17, part), elastic, with
# determinism as the oracle: a third server joining, a server drained and
# kill -9 of a server mid-run each end with the export of the undisturbed
# cluster run, itself that of the in-process trainer; every placement keeps
# each group whole (servers hold 4 + 2 experts, then 2 + 2 + 2, then 6).
make_corpora
H="--moe hierarchical --groups 3 --experts-per-group 2 --k-primary 2 --k 1"
HT=$(echo "$TINY" | sed 's/--n-experts 6 //')
K=100
"$BIN/moe-worker" --train $WORK/train.txt --valid= $HT $H --steps $K \
    --checkpoint-dir "$WORK/local" >/dev/null || fail "in-process run"
"$BIN/moectl" export "$WORK/local" "$WORK/local.export.safetensors" >/dev/null ||
    fail "export of the in-process checkpoint"
base_args() { # NAME
    A="--train $WORK/train.txt --valid= $HT $H --log-every 1 --log-level info --steps $K \
--checkpoint-dir $WORK/$1/ck --checkpoint-every 10 --timeout-ms 2000 --heartbeat-timeout-ms 1500"
}
# has NAME SERVER N EPOCH: server SERVER holds N experts in epoch EPOCH
has() {
    grep -q "epoch $4: server $2 with $3 experts" "$CL/server-$2.log" ||
        fail "$1: server $2 does not hold $3 experts in epoch $4: $(grep "epoch $4: server" "$CL/server-$2.log")"
}
cl_start_pair base
cl_finish
has base 0 4 1
has base 1 2 1
cl_export_of base
cmp -s "$WORK/local.export.safetensors" "$WORK/base.export.safetensors" ||
    fail "the undisturbed cluster run differs from in-process"
echo "  ok: undisturbed run: servers hold 4 + 2 experts (whole groups), export = in-process"

cl_start_pair add
cl_wait_step 0 10
cl_server 2
cl_finish
cl_same_as_base add "a server added mid-run"
has add 0 2 2
has add 1 2 2
has add 2 2 2
grep -q "epoch 2: 3 server(s), placement version 2 (2 expert(s) moved)" "$CL/coordinator.log" ||
    fail "no epoch with 3 servers moving one group: $(grep epoch "$CL/coordinator.log")"
echo "  ok: a third server joined: one group (2 experts) moved to it, export identical"

cl_start_pair drain
cl_wait_step 0 10
"$BIN/moectl" --http "$CLH" --token secret drain 1 >"$WORK/drain.out" 2>&1 ||
    fail "moectl drain: $(cat "$WORK/drain.out")"
wait "$SPID1" || fail "the drained server exited non-zero: $(tail -n 3 "$CL/server-1.log")"
cl_finish
cl_same_as_base drain "a server drained mid-run"
has drain 0 6 2
grep -q "epoch 2: 1 server(s)" "$CL/coordinator.log" || fail "no epoch without the drained server"
echo "  ok: server 1 drained: its group moved, export identical"

cl_start_pair kill
cl_wait_step 0 10
kill -9 "$SPID1"
cl_finish
cl_same_as_base kill "kill -9 of a server"
has kill 0 6 2
grep -q "rolling back to step" "$CL/coordinator.log" || fail "no rollback after the kill"
echo "  ok: kill -9 of a server: rolled back, its group placed on the survivor, export identical"
