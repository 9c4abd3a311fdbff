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
