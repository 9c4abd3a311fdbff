# The threat table of the README's "Security" section, against a running
# cluster with CURVE keys (a coordinator, 2 expert servers, 1 worker, server
# 0 reached through a recording TCP proxy). While the worker trains, an
# outsider (tests/tools/attack.c) tries every attack: without a key, with a
# member's key of the wrong role, with a revoked key (of an earlier keygen),
# by replaying a recorded encrypted connection, with frames declaring 1 GB
# and with more connections than the cap. Oracle: the run's final export is
# byte-identical to an undisturbed run's; no attack got anything but error
# replies; the refusals are counted in /api/v1/cluster and /metrics.
make_corpora
K=20000
[ -n "${MOE_SANITIZE:-}" ] && K=8000 # about as long under the sanitizers
base_args() { # NAME
    A="--train $WORK/train.txt --valid= $TINY --log-level info --log-every 1000 --vocab-max 1000 --steps $K \
--checkpoint-dir $WORK/$1/ck --checkpoint-every 3000 --timeout-ms 4000 --heartbeat-timeout-ms 3000 \
--max-connections 64"
}
export_of() { # NAME
    "$BIN/moectl" export "$WORK/$1/ck" "$WORK/$1.export.safetensors" >/dev/null ||
        fail "$1: moectl export of its last checkpoint failed"
}
finish() {
    wait "$WPID0" || fail "$CL: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
    cl_stop
}

# The undisturbed run, beside the attacked one (a cluster of its own).
(
    base_args base
    cl_init base 1
    cl_server_endpoints 0 1
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    cl_worker 0
    finish
    export_of base
) >"$WORK/base.out" 2>&1 &
BASE_PID=$!

# The attacked run: server 0 behind the proxy (workers reach it there).
base_args att
cl_init att 1
free_ports 1
PROXY=$P1
cl_port 0
S0=$CLSP
/usr/bin/python3 "$IT_DIR/tcp_proxy.py" "$PROXY" "$S0" "$WORK/recorded.bin" 262144 \
    >"$WORK/proxy.log" 2>&1 &
PPID_PROXY=$!
CL_PIDS="$CL_PIDS $PPID_PROXY"
wait_up $PPID_PROXY "$WORK/proxy.log" "proxy listening" "the proxy"
cl_server_endpoints 1
SV="tcp://127.0.0.1:$PROXY,$CLSV"
cl_coord --servers "$SV"
cl_server 0 --advertise "tcp://127.0.0.1:$PROXY"
cl_server 1
cl_worker 0
S1=$(echo "$CLSV" | sed 's/.*://')
CP=${CLC##*:}
get() { /usr/bin/python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://$CLH' + sys.argv[1], timeout=10).read().decode())" "$1"; }
ATT="$BIN/moe-attack"
# outsider ATTACK ARGS...: no reply but errors, nothing else, no payload
outsider() {
    what=$1
    shift
    "$ATT" "$@" >"$WORK/attack.out" 2>&1
    st=$?
    [ $st -eq 0 ] || fail "$what: the cluster answered ($st): $(tail -n 3 "$WORK/attack.out")"
    grep -q "answered 0, errors .*, payload bytes 0" "$WORK/attack.out" ||
        fail "$what: $(tail -n 2 "$WORK/attack.out")"
    echo "  ok: $what: $(tail -n 1 "$WORK/attack.out")"
}
cl_wait_step 0 1000
# 1-7: the table's messages, without a key
outsider "1 REGISTER as worker 0" register-worker "$CLC"
outsider "2 REGISTER as server 0" register-server "$CLC" --served "tcp://127.0.0.1:$PROXY"
outsider "3 STATS of 50 future steps as worker 0" stats "$CLC" --step 300 --count 50 --width 6
outsider "4 HEARTBEAT as server 0" heartbeat "$CLC" --served "tcp://127.0.0.1:$PROXY"
outsider "5 EXPERT_FETCH of every expert, epochs 1-5" fetch "tcp://127.0.0.1:$S1" --experts 6 --epochs 5
outsider "6 an evaluation forward of 200000 rows" eval "tcp://127.0.0.1:$S1" --rows 200000 --width 16 --epochs 2
outsider "7 a made-up server, then EPOCH_WAIT with TROUBLE" trouble "$CLC" --epochs 5
# 8: frames declaring 1 GB, on 20 connections, to server 1
vm() { awk '/^VmSize/ { print $2 }' "/proc/$1/status"; }
vm0=$(vm "$SPID1")
"$ATT" bigframes "tcp://127.0.0.1:$S1" --count 20 --hold 2 >"$WORK/attack.out" 2>&1
vm1=$(vm "$SPID1")
[ $((vm1 - vm0)) -lt 262144 ] ||
    fail "8: server 1's virtual memory grew from $vm0 to $vm1 kB with 20 frames declaring 1 GB"
echo "  ok: 8 twenty 1 GB frames: server 1's virtual memory $vm0 -> $vm1 kB"
# more connections than the cap (64) to the coordinator
"$ATT" connections "$CLC" --count 100 --hold 2 >"$WORK/attack.out" 2>&1
# with a member's key of the wrong role: an error reply at most
outsider "a worker key registering as a server" register-server "$CLC" --keys "$KEYS" --as worker \
    --served "tcp://127.0.0.1:$PROXY"
grep -q "authenticated with the worker key: it cannot speak as an expert server" "$WORK/attack.out" ||
    fail "the wrong role was not named: $(cat "$WORK/attack.out")"
outsider "a server key fetching from a server" fetch "tcp://127.0.0.1:$S1" --keys "$KEYS" --as server \
    --experts 6 --epochs 3
outsider "a server key sending statistics" stats "$CLC" --keys "$KEYS" --as server --step 300 --count 3 --width 6
# a revoked key: the worker key of an earlier keygen, with today's public keys
"$BIN/moectl" keygen "$WORK/old" >/dev/null || fail "keygen old"
mkdir "$WORK/revoked"
cp "$WORK/old/worker.key" "$KEYS/coordinator.pub" "$KEYS/server.pub" "$WORK/revoked/"
outsider "a revoked worker key" register-worker "$CLC" --keys "$WORK/revoked" --as worker
outsider "a revoked worker key, fetching" fetch "tcp://127.0.0.1:$S1" --keys "$WORK/revoked" --as worker --experts 6
# a replay of the worker's recorded connection to server 0
/usr/bin/python3 "$IT_DIR/tcp_proxy.py" --replay "$S0" "$WORK/recorded.bin" >"$WORK/replay.out" 2>&1 ||
    fail "replay: $(cat "$WORK/replay.out")"
echo "  ok: replay of the worker's encrypted connection to server 0: $(cat "$WORK/replay.out")"
kill -0 "$WPID0" 2>/dev/null || echo "  (the worker finished before the last attacks; they hit a cluster at rest)"
sleep 1 # a heartbeat of each server carries its counts
get /api/v1/cluster >"$WORK/cluster.json" || fail "GET /api/v1/cluster"
get /metrics >"$WORK/metrics.txt" || fail "GET /metrics"
finish
export_of att
wait "$BASE_PID" || fail "the undisturbed run failed: $(tail -n 5 "$WORK/base.out")"
cmp -s "$WORK/base.export.safetensors" "$WORK/att.export.safetensors" ||
    fail "the export after the attacks differs from the undisturbed run's"
echo "  ok: the export at step $K is byte-identical to the undisturbed run's"
# the refusals were counted (logged lines rate-limited)
/usr/bin/python3 - "$WORK/cluster.json" <<'PY' || fail "the refusals were not counted: $(cat "$WORK/cluster.json")"
import json, sys
c = json.load(open(sys.argv[1]))
r = c["refused_connections"]
assert not c["insecure"], c["insecure"]
assert r["key"] >= 1 and r["handshake"] >= 1 and r["limit"] >= 1, r
by_id = {s["id"]: s for s in c["servers"]}
assert any(s["refused_connections_total"] >= 1 for s in by_id.values()), by_id
print("  ok: counted: coordinator %s, servers %s" % (r, [s["refused_connections_total"] for s in c["servers"]]))
PY
grep -q '^moe_insecure 0$' "$WORK/metrics.txt" || fail "/metrics: moe_insecure is not 0"
grep -Eq '^moe_coordinator_refused_connections_total\{reason="limit"\} [1-9]' "$WORK/metrics.txt" ||
    fail "/metrics: no refusal beyond the cap: $(grep refused "$WORK/metrics.txt")"
grep -q "refused a connection from 127.0.0.1: key .* is not one of this cluster's keys" \
    "$CL/coordinator.log" || fail "the revoked key was not logged: $(grep refused "$CL/coordinator.log")"
grep -q "more than 64 connections" "$CL/coordinator.log" ||
    fail "the connection cap was not logged"
grep -q "failed its secure handshake" "$CL/server-0.log" ||
    fail "the replay was not refused by server 0: $(tail -n 5 "$CL/server-0.log")"
n=$(grep -c "refused a connection" "$CL/coordinator.log")
[ "$n" -le 3 ] || fail "refusals are not rate-limited: $n lines"
echo "  ok: refusals logged once a minute per address ($n lines), counted"
