# A coordinator + 2 expert servers + 2 workers on loopback. Servers and
# workers get the placement (and the workers the servers' addresses) from
# the coordinator, and the workers the global Importance/Load; the model after training
# equals the single-worker model within the stated tolerance; the rows routed
# per expert that the coordinator reports, summed over the run, equal exactly
# what the workers dispatched; /metrics passes a strict parser of the
# Prometheus text format; moectl shows the five most loaded experts.
make_corpora
free_ports 6
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P4"
WK="tcp://127.0.0.1:$P5,tcp://127.0.0.1:$P6"
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 15 --servers $SV --workers $WK --coordinator $C \
--checkpoint-dir $WORK/ck"
"$BIN/moe-coordinator" $A --http "$HTTP" --http-token secret >"$WORK/coord.out" 2>"$WORK/coord.err" &
coord=$!
wait_up $coord "$WORK/coord.out" "dashboard at" "the coordinator"
# the servers too learn the placement from the coordinator: only --bind
"$BIN/moe-server" $A --servers= --bind "tcp://127.0.0.1:$P3" --server-index 0 >"$WORK/s0.err" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.err" "moe-server: server .* serving on" "server 0"
"$BIN/moe-server" $A --servers= --bind "tcp://127.0.0.1:$P4" --server-index 1 >"$WORK/s1.err" 2>&1 &
s1=$!
wait_up $s1 "$WORK/s1.err" "moe-server: server .* serving on" "server 1"
# the workers find the servers through the coordinator (--servers= empty)
"$BIN/moe-worker" $A --servers= --experts remote --rank 1 --report "$WORK/r.json" >/dev/null 2>"$WORK/w1.err" &
w1=$!
"$BIN/moe-worker" $A --servers= --experts remote --rank 0 --report "$WORK/r.json" \
    >/dev/null 2>"$WORK/w0.err" || { kill $coord $s0 $s1 $w1; fail "worker 0: $(tail -n 2 "$WORK/w0.err")"; }
wait $w1 || { kill $coord $s0 $s1; fail "worker 1: $(tail -n 2 "$WORK/w1.err")"; }
get() { /usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$HTTP' + sys.argv[1], timeout=10).read().decode())" "$1"; }
get /api/v1/experts >"$WORK/experts.json" || fail "GET /api/v1/experts"
get /metrics >"$WORK/metrics.txt" || fail "GET /metrics"
"$BIN/moectl" --http "$HTTP" experts --top 5 >"$WORK/top5.txt" || fail "moectl experts --top 5"
"$BIN/moectl" --http "$HTTP" status >"$WORK/status.txt" || fail "moectl status"
"$BIN/moectl" --http "$HTTP" checkpoint >/dev/null 2>&1 && fail "checkpoint without a token was accepted"
# The live dashboard in headless Chromium: no console message, one bar per
# expert; the screenshot is kept in $ARTIFACTS.
CHROME=$(command -v chromium || true)
[ -n "$CHROME" ] || { kill $s0 $s1 $coord; fail "chromium is not installed (deploy/install-deps.sh --test)"; }
mkdir -p "$ARTIFACTS"
for mode in dom shot; do
    if [ $mode = dom ]; then out="--dump-dom"; else out="--screenshot=$ARTIFACTS/dashboard-live.png"; fi
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-domain-reliability --no-default-browser-check --no-pings --disable-extensions \
        --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
        --user-data-dir="$(mktemp -d "$WORK/chrome-XXXXXX")" --window-size=1280,900 \
        --virtual-time-budget=4000 --enable-logging=stderr --v=0 $out "http://$HTTP/" \
        >"$WORK/dash.$mode" 2>"$WORK/dash.$mode.log" || { kill $s0 $s1 $coord; fail "chromium failed"; }
done
grep ':CONSOLE' "$WORK/dash.dom.log" "$WORK/dash.shot.log" && { kill $s0 $s1 $coord; fail "the dashboard printed console messages (above)"; }
bars=$(grep -o 'class="expert-bar"' "$WORK/dash.dom" | wc -l)
[ "$bars" -eq 6 ] || { kill $s0 $s1 $coord; fail "the dashboard shows $bars bars for 6 experts"; }
[ -s "$ARTIFACTS/dashboard-live.png" ] || { kill $s0 $s1 $coord; fail "no screenshot"; }
echo "  ok: dashboard: 6 bars, no console message, screenshot $ARTIFACTS/dashboard-live.png"
kill -TERM $s0 $s1 $coord
wait $s0 || fail "server 0 did not exit 0"
wait $s1 || fail "server 1 did not exit 0"
wait $coord || fail "the coordinator did not exit 0 on SIGTERM"

/usr/bin/python3 - "$WORK" <<'PY' || fail "rows routed reported by the coordinator differ from what the workers dispatched"
import json, sys
w = sys.argv[1]
experts = json.load(open(w + "/experts.json"))
mine = [json.load(open(w + "/r.json"))["rows_routed"], json.load(open(w + "/r.json.rank1"))["rows_routed"]]
coord = [e["rows_routed_total"] for e in sorted(experts["experts"], key=lambda e: e["id"])]
want = [a + b for a, b in zip(*mine)]
print("  rows routed per expert (coordinator):", [int(x) for x in coord])
assert experts["step"] == 14, experts["step"]
sys.exit(0 if coord == want else 1)
PY
/usr/bin/python3 "$IT_DIR/prom_check.py" --moe "$WORK/metrics.txt" || fail "/metrics is not valid Prometheus text format"
[ "$(grep -c '^[0-9]' "$WORK/top5.txt")" -eq 5 ] || fail "moectl experts --top 5 did not print 5 rows: $(cat "$WORK/top5.txt")"
sed 's/^/    /' "$WORK/top5.txt"
"$BIN/moe-worker" --train "$WORK/train.txt" --valid "$WORK/valid.txt" $TINY --steps 15 \
    --checkpoint-dir "$WORK/one" >/dev/null || fail "single worker run"
"$BIN/moectl" export --params-only "$WORK/ck" "$WORK/ck.export.safetensors" >/dev/null || fail "moectl export"
/usr/bin/python3 "$IT_DIR/compare_safetensors.py" "$WORK/one/step-00000015/model.safetensors" \
    "$WORK/ck.export.safetensors" 1e-4 || fail "2 workers with the coordinator differ from 1 worker"
echo "  ok: coordinator statistics, rows routed exact, /metrics valid, moectl"
