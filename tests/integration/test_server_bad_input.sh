# Malformed and out-of-turn messages sent to a running expert server in the
# middle of training each get an error reply; the server keeps serving, and
# the final model is byte-identical to a run without the garbage.
make_corpora
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 150 --log-every 1 --log-level info"
free_ports 2
port=$P1
SV="tcp://127.0.0.1:$P1,tcp://127.0.0.1:$P2"
"$BIN/moe-server" $A --servers "$SV" --server-index 0 --max-message-mb 1 >"$WORK/s0.log" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.log" "moe-server: server .* serving on" "server 0"
"$BIN/moe-server" $A --servers "$SV" --server-index 1 >"$WORK/s1.log" 2>&1 &
s1=$!
wait_up $s1 "$WORK/s1.log" "moe-server: server .* serving on" "server 1"
"$BIN/moe-worker" $A --experts remote --servers "$SV" --checkpoint-dir "$WORK/garbage" \
    >"$WORK/w.log" 2>&1 &
w=$!
# wait until training is under way, then send the garbage
wait_for_step "$WORK/w.log" 5
# the oversized case sends 4096 / (16 x 4) + 16 = 80 rows: more than any worker of
# this model sends (batch 4 x unroll 8 x k 2 = 64), still under the frame limit
"$BIN/moe-wire-probe" "tcp://127.0.0.1:$port" 16 4096 "$KEYS" >"$WORK/probe.txt"
probe=$?
sed 's/^/    /' "$WORK/probe.txt"
wait $w || { kill $s0 $s1; fail "the worker failed: $(tail -n 3 "$WORK/w.log")"; }
kill -TERM $s0 $s1
wait $s0 || fail "server 0 did not exit 0 after SIGTERM"
wait $s1 || fail "server 1 did not exit 0 after SIGTERM"
[ $probe -eq 0 ] || fail "some bad messages got no error reply"
grep -q "rejected 1[0-9]" "$WORK/s0.log" || fail "server 0 did not count the rejected messages: $(tail -n 1 "$WORK/s0.log")"
"$BIN/moe-worker" --train "$WORK/train.txt" --valid "$WORK/valid.txt" $TINY --steps 150 \
    --checkpoint-dir "$WORK/clean" >/dev/null || fail "in-process run"
for f in model.safetensors optim.safetensors; do
    cmp "$WORK/clean/step-00000150/$f" "$WORK/garbage/step-00000150/$f" ||
        fail "$f differs from the run without garbage"
done
echo "  ok: every bad message got an error reply; the final model is byte-identical"
