# A server killed in the middle of training makes the worker exit with an
# error naming that server within the timeout (recovery comes later). The
# servers wait at most 2 s for a step in progress when stopped.
make_corpora
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 1000000 --log-every 1"
free_ports 2
S1="tcp://127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P1,$S1"
"$BIN/moe-server" $A --timeout-ms 2000 --servers "$SV" --server-index 0 >"$WORK/s0.log" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.log" "moe-server: server .* serving on" "server 0"
"$BIN/moe-server" $A --timeout-ms 2000 --servers "$SV" --server-index 1 >"$WORK/s1.log" 2>&1 &
s1=$!
wait_up $s1 "$WORK/s1.log" "moe-server: server .* serving on" "server 1"
"$BIN/moe-worker" $A --experts remote --servers "$SV" --timeout-ms 2000 >"$WORK/w.log" 2>"$WORK/w.err" &
w=$!
wait_for_step "$WORK/w.log" 20
kill -9 $s1
t0=$(date +%s%N)
wait $w
rc=$?
t1=$(date +%s%N)
kill -TERM $s0
wait $s0
stop_ms=$((($(date +%s%N) - t1) / 1000000))
ms=$(((t1 - t0) / 1000000))
[ $rc -ne 0 ] || fail "the worker exited 0 after its server died"
grep -q "expert server 1 ($S1)" "$WORK/w.err" || fail "the error does not name server 1: $(cat "$WORK/w.err")"
[ $ms -lt 4000 ] || fail "the worker took $ms ms to notice (timeout 2000 ms)"
[ $stop_ms -lt 5000 ] || fail "server 0 took $stop_ms ms to stop after SIGTERM (--timeout-ms 2000)"
echo "  ok: worker exited $rc after $ms ms: $(tail -n 1 "$WORK/w.err")"
