# The translation model with two workers on two expert servers (issue 19,
# point 2; make test-long): each worker trains half of every batch's
# pairs, the workers sum the dense gradients and both MoE layers'
# Importance, Load and rows routed in rank order, through their ring
# (no coordinator) or through the coordinator. Both give the same bytes,
# a rerun too; the model is within 1e-4 of one worker's (the sums run in
# another order). And a one-worker cluster killed whole (kill -9) and
# started again resumes from its last checkpoint to the in-process model,
# and so does one that a third server joins mid-run (experts of both
# layers migrate with their optimizer state).
K=40
mt_tiny $K
MT="$MT --keys $KEYS"
M=model.safetensors
"$BIN/moe-worker" $MT --log-level warn --log-every 1000 --final-model "$WORK/one" \
    >"$WORK/one.out" 2>&1 || fail "one worker: $(tail -n 3 "$WORK/one.out")"

# the ring: 2 workers x 2 servers, twice
free_ports 4
WS="tcp://127.0.0.1:$P1,tcp://127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P4"
for run in a b; do
    for i in 0 1; do
        "$BIN/moe-server" $MT --log-level info --servers "$SV" --workers "$WS" --server-index $i \
            >"$WORK/s$i$run.log" 2>&1 &
        eval "sp$i=\$!"
    done
    wait_up "$sp0" "$WORK/s0$run.log" "serving on" "server 0"
    wait_up "$sp1" "$WORK/s1$run.log" "serving on" "server 1"
    "$BIN/moe-worker" $MT --log-level warn --log-every 1000 --experts remote --servers "$SV" \
        --workers "$WS" --rank 1 --timeout-ms 10000 >"$WORK/w1$run.out" 2>&1 &
    w1=$!
    "$BIN/moe-worker" $MT --log-level warn --log-every 1000 --experts remote --servers "$SV" \
        --workers "$WS" --rank 0 --timeout-ms 10000 --final-model "$WORK/ring$run" \
        >"$WORK/w0$run.out" 2>&1 || fail "worker 0 (run $run): $(tail -n 3 "$WORK/w0$run.out")"
    wait "$w1" || fail "worker 1 (run $run): $(tail -n 3 "$WORK/w1$run.out")"
    [ ! -e "$WORK/ring$run/$M.rank1" ] || fail "worker 1 wrote a model"
    kill -TERM "$sp0" "$sp1"
    wait "$sp0" "$sp1"
done
cmp "$WORK/ringa/$M" "$WORK/ringb/$M" || fail "2 workers x 2 servers: a rerun differs"
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/one/$M" "$WORK/ringa/$M" 1e-4 >"$WORK/cmp.txt" ||
    fail "2 workers differ from 1 beyond 1e-4: $(cat "$WORK/cmp.txt")"
cmp -s "$WORK/one/$M" "$WORK/ringa/$M" && fail "2 workers gave one worker's bytes: did each train half?"
echo "  ok: 2 workers x 2 servers (ring): a rerun byte-identical;$(sed -n 's/.*largest difference \([^ ]*\) .*/ within \1 of one worker/p' "$WORK/cmp.txt" | head -n 1)"

# the coordinator: the same bytes as the ring
base_args() { # NAME
    A="$MT --log-level info --log-every 1 --checkpoint-dir $WORK/$1/ck --checkpoint-every 10 \
--timeout-ms 2000 --heartbeat-timeout-ms 1000"
}
base_args coord
cl_init coord 2
cl_server_endpoints 0 1
cl_coord --servers "$CLSV"
cl_server 0
cl_server 1
cl_worker 1
cl_worker 0
wait "$WPID1" || fail "worker 1 failed: $(tail -n 3 "$CL/worker-1.log")"
cl_finish
cmp "$WORK/ringa/$M" "$WORK/coord/ck/step-$(printf %08d $K)/$M" ||
    fail "2 workers through the coordinator differ from their ring"
[ -s "$WORK/coord/ck/step-$(printf %08d $K)/worker-1.safetensors" ] ||
    fail "worker 1 wrote no file of the cluster checkpoint"
echo "  ok: 2 workers x 2 servers through the coordinator: the ring's bytes"

# paused_after_15 NAME: a one-worker cluster on servers 0 and 1, its
# worker stopped (SIGSTOP) once it logged step 15
paused_after_15() {
    base_args "$1"
    cl_init "$1" 1
    cl_server_endpoints 0 1
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    cl_worker 0
    cl_wait_step 0 15
    kill -STOP "$WPID0"
}

# every process of a one-worker cluster killed (-9) after step 15, then
# started again: the coordinator resumes from the last checkpoint, and the
# model is the in-process one byte for byte
paused_after_15 restart
cl_kill_all
cl_coord --servers "$CLSV"
cl_server 0
cl_server 1
cl_worker 0
cl_finish
grep -q "resuming from" "$CL/coordinator.log" || fail "the coordinator did not resume"
cmp "$WORK/one/$M" "$WORK/restart/ck/step-$(printf %08d $K)/$M" ||
    fail "the restarted cluster's model differs from the in-process one"
echo "  ok: the whole cluster killed after step 15 and started again: resumed from" \
    "$(sed -n 's/.*resuming from .*(step \([0-9]*\)).*/step \1/p' "$CL/coordinator.log" | head -n 1)," \
    "the in-process model byte for byte"

# a third server joins a one-worker cluster after step 15: experts of both
# layers move to it with their optimizer state, the model is the same bytes
paused_after_15 join
cl_server 2
kill -CONT "$WPID0"
cl_finish
moved=$(sed -n 's/.*epoch 2: 3 server(s), placement version 2 (\([0-9]*\) expert(s) moved).*/\1/p' "$CL/coordinator.log")
[ "${moved:-0}" -ge 1 ] || fail "no expert moved to the third server: $(grep epoch "$CL/coordinator.log")"
cmp "$WORK/one/$M" "$WORK/join/ck/step-$(printf %08d $K)/$M" ||
    fail "with a server joining: the model differs from the in-process one"
echo "  ok: a third server joined after step 15: $moved of 8 experts moved, the in-process model byte for byte"
