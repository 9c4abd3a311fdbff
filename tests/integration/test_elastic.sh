# Elastic expert servers, consistent checkpoints and recovery (DESIGN §6),
# with determinism as the oracle: every run below ends with the export of
# its last checkpoint (moectl export: one canonical file, whatever the
# number of servers) byte-identical to that of an undisturbed run.
#   - a third server added mid-run (experts move to it, placement version up)
#   - a server drained mid-run (moectl drain; the server exits 0)
#   - kill -9 of a server mid-run (detected within 5 s, rollback, replay)
#   - kill -9 of a server while it writes a checkpoint (the previous one is
#     used; the half-written one never gets a manifest)
#   - every process killed, then all started again (resumes from the last
#     manifest)
#   - a flipped byte in a shard file (moectl verify and the coordinator's
#     restart name the file; the previous checkpoint is used)
#   - kill -9 of the coordinator mid-run, restarted with the same flags after
#     a gap (20 s; 5 s in the sanitizer build): servers and workers ride it
#     out, logging what they wait for, and training continues without
#     restarting any of them
make_corpora
K=400
base_args() { # NAME
    A="--train $WORK/train.txt --valid= $TINY --log-every 1 --log-level info --steps $K \
--checkpoint-dir $WORK/$1/ck --checkpoint-every 40 --timeout-ms 2000 --heartbeat-timeout-ms 1500"
}

# 1. The undisturbed run.
t0=$(now_ms)
cl_start_pair base
cl_finish
base_ms=$(($(now_ms) - t0))
cl_export_of base
echo "  ok: undisturbed run: $K steps in $base_ms ms, checkpoint every 40 steps"

# 2. A third server joins at step 100.
cl_start_pair add
cl_wait_step 0 100
cl_server 2
cl_finish
cl_same_as_base add "a server added mid-run"
grep -q "epoch 2: 3 server(s), placement version 2" "$CL/coordinator.log" ||
    fail "no epoch with 3 servers: $(grep epoch "$CL/coordinator.log")"
moved=$(sed -n 's/.*epoch 2: 3 server(s), placement version 2 (\([0-9]*\) expert(s) moved).*/\1/p' "$CL/coordinator.log")
[ "${moved:-0}" -ge 1 ] || fail "no expert moved to the new server"
mig=$(sed -n 's/.*migration: \([0-9.]*\) ms per expert.*/\1/p' "$CL/server-2.log" | head -n 1)
[ -n "$mig" ] || fail "the new server reports no migration"
echo "  ok: server added at step 100: $moved of 6 experts moved ($mig ms per expert read), export identical"

# 3. Server 1 drained at step 100.
cl_start_pair drain
cl_wait_step 0 100
"$BIN/moectl" --http "$CLH" --token secret drain 1 >"$WORK/drain.out" 2>&1 ||
    fail "moectl drain: $(cat "$WORK/drain.out")"
wait "$SPID1" || fail "the drained server exited non-zero: $(tail -n 3 "$CL/server-1.log")"
grep -q "drained" "$CL/server-1.log" || fail "server 1 does not say it was drained"
cl_finish
cl_same_as_base drain "a server drained mid-run"
grep -q "epoch 2: 1 server(s)" "$CL/coordinator.log" || fail "no epoch without the drained server"
echo "  ok: server 1 drained at step 100: it exited 0, its experts moved, export identical"

# 4. kill -9 of server 1 at step 100.
t0=$(now_ms)
cl_start_pair kill
cl_wait_step 0 100
kill -9 "$SPID1"
wait "$WPID0" || fail "$CL: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
/usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$CLH/metrics', timeout=10).read().decode())" \
    >"$WORK/kill.metrics" || fail "GET /metrics after the kill"
cl_stop
kill_ms=$(($(now_ms) - t0))
cl_same_as_base kill "kill -9 of a server"
# /metrics counts the loss and the rollback; the dead server's series went
# with its slot (the alert MoEServerLost watches the counter)
grep -qx 'moe_servers_lost_total 1' "$WORK/kill.metrics" &&
    grep -qx 'moe_rollbacks_total 1' "$WORK/kill.metrics" &&
    ! grep -q '^moe_server_up{server="1"}' "$WORK/kill.metrics" ||
    fail "/metrics after the kill: $(grep -E '^moe_(servers_lost|rollbacks)_total|^moe_server_up' "$WORK/kill.metrics")"
det=$(sed -n 's/.*server [0-9]* (.*) not heard from for \([0-9.]*\) s.*/\1/p' "$CL/coordinator.log" | head -n 1)
[ -n "$det" ] || fail "the coordinator did not notice the dead server"
awk -v d="$det" 'BEGIN { exit !(d < 5) }' || fail "detection took $det s"
grep -q "rolling back to step" "$CL/coordinator.log" || fail "no rollback"
rec=$(sed -n 's/.*recovered in \([0-9.]*\) s.*rolled back from step \([0-9]*\) to \([0-9]*\).*/\1 s, step \2 -> \3/p' "$CL/worker-0.log" | head -n 1)
echo "  ok: kill -9 at step 100: detected after $det s of silence, worker recovered in $rec," \
    "$((kill_ms - base_ms)) ms lost in all; export identical"

# 5. kill -9 of server 1 while it writes the checkpoint of step 160.
t0=$(now_ms)
base_args ckill
cl_init ckill 1
cl_coord --min-servers 2
cl_server 0
MOE_FAULT_KILL_IN_CHECKPOINT=160 cl_server 1
cl_worker 0
cl_finish
cl_same_as_base ckill "kill -9 during a checkpoint"
grep -q "killing this server while it writes" "$CL/server-1.log" || fail "the fault was not injected"
grep -q "rolling back to step 120" "$CL/coordinator.log" ||
    fail "not rolled back to the previous checkpoint (120): $(grep rolling "$CL/coordinator.log")"
echo "  ok: kill -9 while writing the checkpoint of step 160: rolled back to step 120, export identical"

# 6. Every process killed at step 200, then started again.
cl_start_pair restart
cl_wait_step 0 200
cl_kill_all
last=$(ls "$WORK/restart/ck" | grep '^step-' | tail -n 1)
cl_coord --min-servers 2
cl_server 0
cl_server 1
cl_worker 0
cl_finish
cl_same_as_base restart "a restart of the whole cluster"
grep -q "resuming from" "$CL/coordinator.log" || fail "the coordinator did not resume"
echo "  ok: everything killed after step 200, restarted: resumed from $(sed -n 's/.*resuming from .*(step \([0-9]*\)).*/step \1/p' "$CL/coordinator.log" | head -n 1), export identical"

# 6b. An operator checkpoint: without periodic checkpoints, `moectl
# checkpoint` at step 150 is the only one between step 0 and the last step.
base_args opck
A="$A --checkpoint-every 0"
cl_init opck 1
cl_coord --min-servers 2
cl_server 0
cl_server 1
cl_worker 0
cl_wait_step 0 150
"$BIN/moectl" --http "$CLH" --token secret checkpoint >"$WORK/ck.out" 2>&1 ||
    fail "moectl checkpoint: $(cat "$WORK/ck.out")"
wait "$WPID0" || fail "opck: worker 0 failed"
cl_stop
extra=$(sed -n 's/.*checkpoint of step \([0-9]*\) committed.*/\1/p' "$CL/coordinator.log" |
    awk -v k=$K '$1 > 0 && $1 < k' | head -n 1)
[ -n "$extra" ] && [ "$extra" -gt 150 ] ||
    fail "moectl checkpoint at step 150 committed no checkpoint: $(grep committed "$CL/coordinator.log")"
echo "  ok: moectl checkpoint at step 150 committed the checkpoint of step $extra"

# 7. A flipped byte in a shard file of the newest checkpoint.
ck="$WORK/base/ck"
newest=$(ls "$ck" | grep '^step-' | tail -n 1)
prev=$(ls "$ck" | grep '^step-' | tail -n 2 | head -n 1)
f="$ck/$newest/server-0.safetensors"
size=$(stat -c %s "$f")
printf '\377' | dd of="$f" bs=1 seek=$((size - 7)) conv=notrunc 2>/dev/null
expect_fail "moectl verify of a flipped byte" "server-0.safetensors" "$BIN/moectl" verify "$ck/$newest"
base_args base
cl_init flip 1
"$BIN/moe-coordinator" $A --coordinator "$CLC" --http "$CLH" >"$CL/coordinator.log" 2>&1 &
c=$!
n=0
until grep -q "resuming from" "$CL/coordinator.log" 2>/dev/null || [ $n -gt 100 ]; do sleep 0.05; n=$((n + 1)); done
kill -TERM $c
wait $c
grep -q "server-0.safetensors" "$CL/coordinator.log" ||
    fail "the coordinator does not name the corrupted file: $(cat "$CL/coordinator.log")"
grep -q "resuming from $ck/$prev" "$CL/coordinator.log" ||
    fail "the coordinator does not fall back to $prev: $(cat "$CL/coordinator.log")"
echo "  ok: a flipped byte in $newest/server-0.safetensors is named; the restart uses $prev"

# 8. Two workers; worker 1 killed at step 100 and started again: it rejoins,
# everyone rolls back to the last checkpoint, and the export equals that of
# an undisturbed 2-worker run.
start2() { # NAME
    base_args "$1"
    cl_init "$1" 2
    cl_server_endpoints 0 1
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    cl_worker 0
    cl_worker 1
}
start2 base2
wait "$WPID1" || fail "2 workers: worker 1 failed"
cl_finish
cl_export_of base2
start2 wkill
cl_wait_step 1 100
kill -9 "$WPID1"
wait "$WPID1" 2>/dev/null
cl_worker 1
wait "$WPID1" || fail "the restarted worker 1 failed: $(tail -n 3 "$CL/worker-1.log")"
cl_finish
cl_export_of wkill
cmp -s "$WORK/base2.export.safetensors" "$WORK/wkill.export.safetensors" || fail "after a worker restart the export differs"
grep -q "worker 1 restarted" "$CL/coordinator.log" || fail "the coordinator did not see the restart"
echo "  ok: worker 1 of 2 killed at step 100 and restarted: $(sed -n 's/.*W moe-coordinator: \(rolling back to step [0-9]*\).*/\1/p' "$CL/coordinator.log" | head -n 1), export identical to an undisturbed 2-worker run"

# 9. kill -9 of the coordinator at step 100; after a gap it is started again
# with the same flags. Nothing else is restarted: the servers register again,
# everyone rolls back to the last checkpoint, and the export is identical.
GAP=20
[ -n "${MOE_SANITIZE:-}" ] && GAP=5
cl_start_pair ckdead
cl_wait_step 0 100
kill -9 "$CPID"
wait "$CPID" 2>/dev/null
sleep "$GAP"
grep -q "step *[0-9]*/$K" "$CL/worker-0.log" || fail "no progress line before the gap"
at=$(sed -n "s/^step *\([0-9]*\)\/.*/step \1/p" "$CL/worker-0.log" | tail -n 1)
silent='cannot reach the coordinator|coordinator .*(did not answer|has not answered|no answer)'
waits=$(grep -Ec "$silent" "$CL/server-0.log")
wwaits=$(grep -Ec "$silent" "$CL/worker-0.log")
[ "$waits" -ge $((GAP / 6)) ] || fail "server 0 logged $waits lines about the silent coordinator in $GAP s"
[ "$wwaits" -ge $((GAP / 6)) ] || fail "worker 0 logged $wwaits lines about the silent coordinator in $GAP s"
kill -0 "$SPID0" && kill -0 "$SPID1" && kill -0 "$WPID0" || fail "a member gave up during a $GAP s gap"
cl_coord --servers "$CLSV"
cl_finish
cl_same_as_base ckdead "kill -9 and restart of the coordinator"
grep -q "registering again" "$CL/server-0.log" || fail "server 0 did not register again"
grep -q "resuming from" "$CL/coordinator.log" || fail "the restarted coordinator did not resume"
echo "  ok: coordinator killed at step 100 ($at), restarted after $GAP s: server 0 logged $waits" \
    "and worker 0 $wwaits lines while waiting, none restarted; export identical"
