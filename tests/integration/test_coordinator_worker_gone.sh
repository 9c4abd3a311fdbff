# A worker killed in the middle of training makes the other worker fail
# within the timeout, never hang, with an error that names what stopped
# answering (the all-reduce names the missing rank; a server or the
# coordinator says a worker of the step may be gone); the coordinator keeps
# serving and exits 0 on SIGTERM.
make_corpora
free_ports 6
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P4"
WK="tcp://127.0.0.1:$P5,tcp://127.0.0.1:$P6"
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 1000000 --log-every 1 --servers $SV --workers $WK --coordinator $C --timeout-ms 2000"
"$BIN/moe-coordinator" $A --http "$HTTP" >"$WORK/coord.log" 2>&1 &
coord=$!
wait_up $coord "$WORK/coord.log" "dashboard at" "the coordinator"
"$BIN/moe-server" $A --server-index 0 >"$WORK/s0.log" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.log" "moe-server: server .* serving on" "server 0"
"$BIN/moe-server" $A --server-index 1 >"$WORK/s1.log" 2>&1 &
s1=$!
wait_up $s1 "$WORK/s1.log" "moe-server: server .* serving on" "server 1"
"$BIN/moe-worker" $A --experts remote --rank 1 >/dev/null 2>&1 &
w1=$!
"$BIN/moe-worker" $A --experts remote --rank 0 >"$WORK/w0.log" 2>"$WORK/w0.err" &
w0=$!
wait_for_step "$WORK/w0.log" 10
kill -9 $w1
t0=$(date +%s%N)
wait $w0
rc=$?
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
/usr/bin/python3 -c "import urllib.request; urllib.request.urlopen('http://$HTTP/api/v1/cluster', timeout=5).read()" ||
    fail "the coordinator stopped answering"
kill -TERM $s0 $s1 $coord
wait $coord || fail "the coordinator did not exit 0"
wait $s0 $s1
[ $rc -ne 0 ] || fail "worker 0 exited 0 after worker 1 died"
grep -Eq "did not answer|no message from rank 1" "$WORK/w0.err" || fail "unclear error: $(cat "$WORK/w0.err")"
[ $ms -lt 5000 ] || fail "worker 0 took $ms ms to give up (timeout 2000 ms)"
echo "  ok: worker 0 exited $rc after $ms ms: $(tail -n 1 "$WORK/w0.err")"

# With checkpoints, a SIGTERM to the coordinator of a cluster whose only
# worker was killed (no step can come, the cluster is stalled) stops it at
# once from the last checkpoint: before, it waited for "the next step". The
# server, in the middle of the dead worker's step, gives it --timeout-ms.
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 1000000 --log-every 1 \
--checkpoint-dir $WORK/ck --checkpoint-every 5 --stall-heartbeats 2 --log-level info --timeout-ms 2000"
cl_init stalled 1
cl_server_endpoints 0
cl_coord --servers "$CLSV"
cl_server 0
cl_worker 0
cl_wait_step 0 10
kill -9 $WPID0
wait $WPID0 2>/dev/null
/usr/bin/python3 - "$CLH" <<'PY' || { cl_kill_all; fail "the cluster without its worker never showed as stalled"; }
import json, sys, time, urllib.request
deadline = time.time() + 10
while not json.load(urllib.request.urlopen("http://%s/api/v1/cluster" % sys.argv[1], timeout=5))["stalled"]:
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.05)
PY
kill -TERM $CPID
for p in $CPID $SPID0; do
    n=0
    while kill -0 $p 2>/dev/null; do
        [ $n -lt 100 ] || { tail -n 4 "$CL"/*.log; cl_kill_all; fail "process $p still runs 5 s after SIGTERM to the stalled coordinator"; }
        sleep 0.05
        n=$((n + 1))
    done
    wait $p || fail "process $p did not exit 0: $(tail -n 2 "$CL/coordinator.log")"
done
grep -q "no checkpoint waits for the next step" "$CL/coordinator.log" ||
    fail "the coordinator does not say why it stops at once: $(tail -n 3 "$CL/coordinator.log")"
echo "  ok: SIGTERM to a stalled coordinator (its worker killed): coordinator and server exit 0 at once"
