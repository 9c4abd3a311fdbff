# A coordinator + 2 expert servers + 2 workers on loopback. Servers and
# workers get the placement (and the workers the servers' addresses) from
# the coordinator, and the workers the global Importance/Load; the model after training
# equals the single-worker model within the stated tolerance; the rows routed
# per expert that the coordinator reports, summed over the run, equal exactly
# what the workers dispatched; /metrics passes a strict parser of the
# Prometheus text format; moectl shows the five experts with the most rows
# routed. Before the workers come, the servers' heartbeats with no step
# completed make the cluster stalled (--stall-heartbeats 2): /api/v1/cluster
# and moectl status say so, with each member's state. After the run,
# /api/v1/history holds every step once and its columns add up to the rows
# routed exactly; the dashboard draws one heatmap row per expert.
make_corpora
free_ports 6
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
SV="tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P4"
WK="tcp://127.0.0.1:$P5,tcp://127.0.0.1:$P6"
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 15 --servers $SV --workers $WK --coordinator $C \
--checkpoint-dir $WORK/ck"
"$BIN/moe-coordinator" $A --http "$HTTP" --http-token secret --stall-heartbeats 2 \
    >"$WORK/coord.out" 2>"$WORK/coord.err" &
coord=$!
wait_up $coord "$WORK/coord.out" "dashboard at" "the coordinator"
# the servers too learn the placement from the coordinator: only --bind
"$BIN/moe-server" $A --servers= --bind "tcp://127.0.0.1:$P3" --server-index 0 >"$WORK/s0.err" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.err" "moe-server: server .* serving on" "server 0"
"$BIN/moe-server" $A --servers= --bind "tcp://127.0.0.1:$P4" --server-index 1 >"$WORK/s1.err" 2>&1 &
s1=$!
wait_up $s1 "$WORK/s1.err" "moe-server: server .* serving on" "server 1"
get() { /usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$HTTP' + sys.argv[1], timeout=10).read().decode())" "$1"; }
# stalled: both servers loaded, no worker yet, heartbeats go on (4 a second)
/usr/bin/python3 - "$HTTP" <<'PY' || { kill $coord $s0 $s1; fail "the cluster waiting for its workers never showed as stalled"; }
import json, sys, time, urllib.request
deadline = time.time() + 20
while True:
    c = json.load(urllib.request.urlopen("http://%s/api/v1/cluster" % sys.argv[1], timeout=10))
    beats, phase = c["heartbeats_since_step"], c["phase"]
    # stalled exactly when a live server sent stall_heartbeats heartbeats
    # since a step completed while the cluster loads or runs
    assert c["stall_heartbeats"] == 2, c["stall_heartbeats"]
    assert c["stalled"] == (beats >= 2 and phase in ("loading", "running")), c
    if c["stalled"]:
        break
    assert time.time() < deadline, "not stalled after 20 s: %r" % c
    time.sleep(0.05)
states = sorted(s["state"] for s in c["servers"]), [w["state"] for w in c["workers"]]
assert states == (["serving", "serving"], ["absent", "absent"]), states
assert c["step"] == -1 and c["phase"] == "loading", c
# /metrics says so too (no step can complete before a worker joins)
m = dict(l.rsplit(" ", 1) for l in urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=10)
         .read().decode().splitlines() if l and not l.startswith("#"))
assert m["moe_stalled"] == "1" and m["moe_stall_heartbeats"] == "2", m
assert int(m["moe_heartbeats_since_step"]) >= beats, (m["moe_heartbeats_since_step"], beats)
print("  ok: stalled after %d heartbeats without a step (%s; moe_stalled 1), servers %s, workers %s"
      % (beats, phase, *states))
PY
"$BIN/moectl" --http "$HTTP" status >"$WORK/stalled.txt" || { kill $coord $s0 $s1; fail "moectl status"; }
grep -Eq "^STALLED: no step completed for [0-9]+ heartbeats \(stall_heartbeats 2\)$" "$WORK/stalled.txt" ||
    { kill $coord $s0 $s1; fail "moectl status does not say stalled: $(cat "$WORK/stalled.txt")"; }
grep -Eq "^0 +tcp://127.0.0.1:$P3 +yes +serving +3$" "$WORK/stalled.txt" ||
    { kill $coord $s0 $s1; fail "moectl status does not show server 0 serving: $(cat "$WORK/stalled.txt")"; }
# the workers find the servers through the coordinator (--servers= empty)
"$BIN/moe-worker" $A --servers= --experts remote --rank 1 --report "$WORK/r.json" >/dev/null 2>"$WORK/w1.err" &
w1=$!
"$BIN/moe-worker" $A --servers= --experts remote --rank 0 --report "$WORK/r.json" \
    >/dev/null 2>"$WORK/w0.err" || { kill $coord $s0 $s1 $w1; fail "worker 0: $(tail -n 2 "$WORK/w0.err")"; }
wait $w1 || { kill $coord $s0 $s1; fail "worker 1: $(tail -n 2 "$WORK/w1.err")"; }
get /api/v1/experts >"$WORK/experts.json" || fail "GET /api/v1/experts"
get /api/v1/history >"$WORK/history.json" || fail "GET /api/v1/history"
get '/api/v1/history?field=load' >"$WORK/history-load.json" || fail "GET /api/v1/history?field=load"
get /api/v1/cluster >"$WORK/cluster.json" || fail "GET /api/v1/cluster"
get '/api/v1/history?field=tokens' >/dev/null 2>&1 && fail "GET /api/v1/history?field=tokens was answered"
get /metrics >"$WORK/metrics.txt" || fail "GET /metrics"
"$BIN/moectl" --http "$HTTP" experts --top 5 >"$WORK/top5.txt" || fail "moectl experts --top 5"
"$BIN/moectl" --http "$HTTP" status >"$WORK/status.txt" || fail "moectl status"
"$BIN/moectl" --http "$HTTP" checkpoint >/dev/null 2>&1 && fail "checkpoint without a token was accepted"
"$BIN/moectl" --http "$HTTP" experts --groups >/dev/null 2>"$WORK/groups.err" &&
    fail "moectl experts --groups on a flat MoE exited 0"
grep -q "^moectl: experts --groups: the cluster's model is a flat MoE (no groups)$" "$WORK/groups.err" ||
    fail "moectl experts --groups on a flat MoE: $(cat "$WORK/groups.err")"
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
rows=$(grep -o 'class="heat-row"' "$WORK/dash.dom" | wc -l)
[ "$rows" -eq 6 ] || { kill $s0 $s1 $coord; fail "the dashboard's heatmap has $rows rows for 6 experts"; }
grep -q '<body[^>]*data-banner' "$WORK/dash.dom" && { kill $s0 $s1 $coord; fail "a banner on a finished cluster"; }
[ -s "$ARTIFACTS/dashboard-live.png" ] || { kill $s0 $s1 $coord; fail "no screenshot"; }
echo "  ok: dashboard: 6 bars, 6 heatmap rows, no banner, no console message, screenshot $ARTIFACTS/dashboard-live.png"
# two SIGTERMs in a row to the coordinator: it still tells the servers,
# which exit 0 at once (before, they waited coordinator_wait_s for it)
kill -TERM $coord
sleep 0.05
kill -TERM $coord
n=0
while kill -0 $s0 2>/dev/null || kill -0 $s1 2>/dev/null; do
    [ $n -lt 100 ] || { kill $s0 $s1; fail "a server still runs 5 s after two SIGTERMs to the coordinator"; }
    sleep 0.05
    n=$((n + 1))
done
grep -q "signal 15 again: stopping within 1 s" "$WORK/coord.err" || fail "no sentence on the second signal: $(tail -n 2 "$WORK/coord.err")"
echo "  ok: two SIGTERMs to the coordinator: both servers heard the stop and exited in $((n * 50)) ms"
wait $s0 || fail "server 0 did not exit 0"
wait $s1 || fail "server 1 did not exit 0"
# the stop reached every member still there (the workers, done after the
# last step, are gone): exit 0
wait $coord || fail "the coordinator exited $? after two SIGTERMs: $(tail -n 3 "$WORK/coord.err")"
# the stall before the workers came, and its end, once each in the log
[ "$(grep -c "stalled: no step completed for [0-9]* heartbeats while loading" "$WORK/coord.err")" = 1 ] &&
    [ "$(grep -c "no longer stalled: a step completed" "$WORK/coord.err")" = 1 ] ||
    fail "the stall is not logged exactly once with its end: $(grep stalled "$WORK/coord.err")"

/usr/bin/python3 - "$WORK" <<'PY' || fail "rows routed reported by the coordinator differ from what the workers dispatched"
import json, sys
w = sys.argv[1]
experts = json.load(open(w + "/experts.json"))
mine = [json.load(open(w + "/r.json"))["rows_routed"], json.load(open(w + "/r.json.rank1"))["rows_routed"]]
coord = [e["rows_routed_total"] for e in sorted(experts["experts"], key=lambda e: e["id"])]
want = [a + b for a, b in zip(*mine)]
print("  rows routed per expert (coordinator):", [int(x) for x in coord])
assert experts["step"] == 14, experts["step"]
assert experts["groups"] is None and experts["group_stats"] is None, experts
assert not any("group" in e for e in experts["experts"]), experts["experts"][0]
assert coord == want, (coord, want)
# the history: steps 0..14 once each, columns adding up to the same rows
h, hl = json.load(open(w + "/history.json")), json.load(open(w + "/history-load.json"))
assert h["field"] == "rows_routed" and hl["field"] == "load", (h["field"], hl["field"])
assert (h["first_step"], h["last_step"], h["steps_per_column"]) == (0, 14, 1), h
assert h["column_steps"] == [1] * 15 and h["n_experts"] == 6 and h["groups"] is None, h
assert len(h["rows_routed"]) == 6 and len(hl["load"]) == 6, h
assert [sum(r) for r in h["rows_routed"]] == want, ([sum(r) for r in h["rows_routed"]], want)
# the last column's Load is the Load of the last step (/api/v1/experts)
last = [e["load_last"] for e in sorted(experts["experts"], key=lambda e: e["id"])]
assert all(abs(r[-1] - l) <= 1e-6 * max(1, abs(l)) for r, l in zip(hl["load"], last)), (hl, last)
c = json.load(open(w + "/cluster.json"))
assert c["phase"] == "finished" and not c["stalled"], (c["phase"], c["stalled"])
assert [x["state"] for x in c["workers"]] == ["done", "done"], c["workers"]
print("  ok: history of 15 steps adds up to the rows routed; Load of the last column")
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
