# The translation model on expert servers (issue 19, point 2), with
# determinism as the oracle: both MoE layers' experts (encoder 0..3,
# decoder 4..7) live on two servers, and
#   - 1 worker x 2 servers without a coordinator (ipc), the experts placed
#     alternately (each server holds experts of both layers), writes the
#     model and optimizer state of the in-process trainer byte for byte
#     (checkpoints of steps 20 and 40, the experts fetched from the servers);
#   - with a coordinator (tcp, checkpoints every 10 steps; its placement
#     gives each server one layer's experts) the cluster's model is the same
#     bytes, its checkpoints hold 8 experts, and the coordinator's table
#     shows both layers' experts with exactly the rows routed that the
#     worker's --report counts (k per real token in each layer);
#   - kill -9 of a server mid-run (the worker paused meanwhile, so that the
#     kill lands mid-run whatever the machine's speed): the cluster rolls
#     back, places the experts on the survivor and ends with the same bytes.
K=40
mt_tiny $K
"$BIN/moe-worker" $MT --log-level warn --log-every 1000 --checkpoint-dir "$WORK/local" \
    --checkpoint-every 20 >"$WORK/local.out" 2>&1 || fail "in-process run: $(tail -n 3 "$WORK/local.out")"
L40="$WORK/local/step-$(printf %08d $K)"
M=model.safetensors

# 1. no coordinator: 1 worker x 2 servers over ipc
SV="ipc://$WORK/s0,ipc://$WORK/s1"
PL="--placement 0,1,0,1,0,1,0,1"
for i in 0 1; do
    "$BIN/moe-server" $MT $PL --log-level info --servers "$SV" --server-index $i \
        >"$WORK/s$i.log" 2>&1 &
    eval "sp$i=\$!"
done
wait_up "$sp0" "$WORK/s0.log" "serving on" "server 0"
wait_up "$sp1" "$WORK/s1.log" "serving on" "server 1"
"$BIN/moe-worker" $MT $PL --log-level warn --log-every 1000 --experts remote --servers "$SV" \
    --timeout-ms 10000 --checkpoint-dir "$WORK/static" --checkpoint-every 20 >"$WORK/static.out" 2>&1 ||
    fail "1 worker x 2 servers: $(tail -n 3 "$WORK/static.out")"
kill -TERM "$sp0" "$sp1"
wait "$sp0" "$sp1" || fail "a server exited non-zero after SIGTERM"
# the model and the optimizer state (fetched from the servers), at steps 20 and 40
for f in step-00000020/$M step-00000020/optim.safetensors step-00000040/$M step-00000040/optim.safetensors; do
    cmp "$WORK/local/$f" "$WORK/static/$f" || fail "1 worker x 2 servers: $f differs from in-process"
done
echo "  ok: 1 worker x 2 servers (ipc, no coordinator, both layers' experts on each):" \
    "the in-process model and optimizer state of steps 20 and 40 byte for byte"

# 2. and 3. with a coordinator, undisturbed and with kill -9 of server 1
base_args() { # NAME
    A="$MT --log-level info --log-every 1 --checkpoint-dir $WORK/$1/ck --checkpoint-every 10 \
--timeout-ms 2000 --heartbeat-timeout-ms 1000 --report $WORK/$1.json"
}
final_of() { echo "$WORK/$1/ck/step-$(printf %08d $K)/$M"; }
cl_start_pair base
wait "$WPID0" || fail "base: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
"$BIN/moectl" --http "$CLH" experts >"$WORK/experts.txt" 2>&1 ||
    fail "moectl experts: $(cat "$WORK/experts.txt")"
/usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$CLH/api/v1/experts', timeout=10).read().decode())" \
    >"$WORK/experts.json" || fail "GET /api/v1/experts"
cl_stop
cmp "$L40/$M" "$(final_of base)" && cmp "$L40/optim.safetensors" "$WORK/base/ck/step-00000040/optim.safetensors" ||
    fail "the coordinator's cluster differs from in-process"
/usr/bin/python3 - "$WORK/experts.json" "$WORK/base/ck/step-$(printf %08d $K)/manifest.json" \
    "$WORK/base.json" <<'PY' ||
import json, sys
x = json.load(open(sys.argv[1]))["experts"]
assert [e["id"] for e in x] == list(range(8)), x
assert [(e["layer"], e["layer_expert"]) for e in x] == \
    [("encoder", i) for i in range(4)] + [("decoder", i) for i in range(4)], x
for side in (x[:4], x[4:]):  # each layer routes every token to k = 2 of its experts
    assert sum(e["rows_routed_last"] for e in side) > 0, side
    assert sum(e["load_last"] for e in side) > 0, side
m = json.load(open(sys.argv[2]))
assert m["n_experts"] == 8, m["n_experts"]
# the worker's report: each layer routes every real token to k = 2
# experts, and the coordinator counted the same rows for each expert
r = json.load(open(sys.argv[3]))
assert r["experts"] == "remote" and r["steps"] == 40 and r["recoveries"] == 0, r
assert sum(r["rows_routed"]["encoder"]) == 2 * r["source_tokens"], r
assert sum(r["rows_routed"]["decoder"]) == 2 * r["target_tokens"], r
assert [e["rows_routed_total"] for e in x] == \
    r["rows_routed"]["encoder"] + r["rows_routed"]["decoder"], (x, r["rows_routed"])
PY
    fail "the coordinator's experts or the manifest: $(cat "$WORK/experts.json")"
grep -q "  encoder 3$" "$WORK/experts.txt" && grep -q "  decoder 0$" "$WORK/experts.txt" ||
    fail "moectl experts does not label the layers: $(cat "$WORK/experts.txt")"
expect_fail "moectl export of a translation cluster's checkpoint" \
    "export: .*base/ck is a translation model .*: use moectl translate" \
    "$BIN/moectl" export "$WORK/base/ck" "$WORK/x.safetensors"
echo "  ok: with a coordinator (each layer on one server): the in-process model byte for byte; 8 experts in its table" \
    "(encoder 0..3, decoder 4..7, each layer's rows routed and Load, the rows the worker reports) and manifests"

cl_start_pair kill
cl_wait_step 0 12
kill -STOP "$WPID0"
kill -9 "$SPID1"
kill -CONT "$WPID0"
cl_finish
cmp "$L40/$M" "$(final_of kill)" || fail "kill -9 of a server: the model differs"
grep -q "rolling back to step" "$CL/coordinator.log" || fail "no rollback after the kill"
grep -q '"recoveries": 1,' "$WORK/kill.json" || fail "the report does not count the recovery"
rec=$(sed -n 's/.*recovered in \([0-9.]*\) s.*rolled back from step \([0-9]*\) to \([0-9]*\).*/\1 s, step \2 -> \3/p' \
    "$CL/worker-0.log" | head -n 1)
[ -n "$rec" ] || fail "worker 0 did not recover: $(tail -n 3 "$CL/worker-0.log")"
grep -q "epoch 2: server 0 with 8 experts" "$CL/server-0.log" ||
    fail "the survivor does not hold all 8 experts: $(grep epoch "$CL/server-0.log")"
echo "  ok: kill -9 of server 1 after step 12: recovered in $rec, the survivor holds 8 experts," \
    "the same model byte for byte"
