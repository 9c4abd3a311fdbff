# Several hosts without containers: each process in its own network
# namespace with its own address (10.N.0.X/24), joined through veth pairs to
# a bridge in a "switch" namespace, so that every message really crosses
# interfaces. Coordinator on host 1, expert servers on hosts 2 and 3, the
# worker on host 4 (the checkpoint folder is shared, as a network filesystem
# would be). Checked against a loopback run of the same model, by bytes:
#   - the undisturbed run;
#   - a network cut: host 3's link goes down at step 100; the coordinator
#     notices the silence, the cluster rolls back and host 2 takes its
#     experts; the export at the end is byte-identical.
# Skipped, with a message, where namespaces cannot be created (not root).
make_corpora
tag=$(( $$ % 200 + 20 ))
ns_sw="moesw$$"
if ! ip netns add "$ns_sw" 2>"$WORK/ns.err"; then
    echo "  SKIP: cannot create network namespaces here ($(head -n 1 "$WORK/ns.err")); needs root"
    exit 0
fi
hosts="1 2 3 4"
cleanup_ns() {
    for h in $hosts; do
        ip netns pids "moeh$h$$" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "moeh$h$$" 2>/dev/null
    done
    ip netns del "$ns_sw" 2>/dev/null
}
trap cleanup_ns EXIT
ip -n "$ns_sw" link add br0 type bridge || fail "cannot create a bridge"
ip -n "$ns_sw" link set br0 up
for h in $hosts; do
    ns="moeh$h$$"
    ip netns add "$ns" || fail "cannot create namespace $ns"
    ip link add "mv$h$$" type veth peer name "mp$h$$" || fail "cannot create a veth pair"
    ip link set "mv$h$$" netns "$ns"
    ip link set "mp$h$$" netns "$ns_sw"
    ip -n "$ns" link set "mv$h$$" name eth0
    ip -n "$ns" addr add "10.$tag.0.$h/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns_sw" link set "mp$h$$" master br0
    ip -n "$ns_sw" link set "mp$h$$" up
done
addr() { echo "10.$tag.0.$1"; }
# `ip netns exec NS CMD` execs CMD in the namespace: $! is the daemon itself.

K=400
A0="--train $WORK/train.txt --valid= $TINY --log-every 1 --log-level info --steps $K \
--checkpoint-every 40 --timeout-ms 2000 --heartbeat-timeout-ms 1500"
run() { # NAME [cut]
    d="$WORK/$1"
    mkdir -p "$d"
    A="$A0 --checkpoint-dir $d/ck"
    C="tcp://$(addr 1):5550"
    ip netns exec "moeh1$$" "$BIN/moe-coordinator" $A --coordinator "$C" --http "$(addr 1):8780" --min-servers 2 \
        >"$d/coordinator.log" 2>&1 &
    c=$!
    wait_up $c "$d/coordinator.log" "dashboard at" "$1: the coordinator"
    ip netns exec "moeh2$$" "$BIN/moe-server" $A --coordinator "$C" --bind "tcp://$(addr 2):5600" >"$d/server-2.log" 2>&1 &
    s2=$!
    wait_up $s2 "$d/server-2.log" "moe-server: server .* serving on" "$1: server on host 2"
    ip netns exec "moeh3$$" "$BIN/moe-server" $A --coordinator "$C" --bind "tcp://$(addr 3):5600" >"$d/server-3.log" 2>&1 &
    s3=$!
    wait_up $s3 "$d/server-3.log" "moe-server: server .* serving on" "$1: server on host 3"
    ip netns exec "moeh4$$" "$BIN/moe-worker" $A --experts remote --coordinator "$C" >"$d/worker.log" 2>&1 &
    w=$!
    if [ "${2:-}" = cut ]; then
        n=0
        until grep -q "^step *100/" "$d/worker.log" 2>/dev/null || [ $n -gt 3000 ]; do
            sleep 0.02
            n=$((n + 1))
        done
        ip -n "$ns_sw" link set "mp3$$" down
    fi
    wait $w || fail "$1: the worker failed: $(tail -n 3 "$d/worker.log")"
    kill -TERM $s2 $s3 $c 2>/dev/null
    kill -9 $s3 2>/dev/null
    wait $s2 $s3 $c 2>/dev/null
    "$BIN/moectl" export "$d/ck" "$WORK/$1.export.safetensors" >/dev/null || fail "$1: export"
}
run hosts
grep -q "registered at tcp://$(addr 3):5600" "$WORK/hosts/coordinator.log" ||
    fail "the servers did not register with their host addresses"
# the same model on loopback, one process each
A="$A0 --checkpoint-dir $WORK/lo/ck"
cl_init lo 1
cl_coord --min-servers 2
cl_server 0
cl_server 1
cl_worker 0
wait "$WPID0" || fail "loopback run failed"
cl_stop
"$BIN/moectl" export "$WORK/lo/ck" "$WORK/lo.export.safetensors" >/dev/null || fail "loopback export"
cmp -s "$WORK/hosts.export.safetensors" "$WORK/lo.export.safetensors" || fail "4 hosts and loopback trained different models"
echo "  ok: coordinator, 2 servers and a worker on 4 network namespaces (10.$tag.0.1-4): export identical to loopback"
run cut cut
grep -q "not heard from" "$WORK/cut/coordinator.log" || fail "the cut went unnoticed"
grep -q "rolling back" "$WORK/cut/coordinator.log" || fail "no rollback after the cut"
cmp -s "$WORK/hosts.export.safetensors" "$WORK/cut.export.safetensors" || fail "after a network cut the export differs"
echo "  ok: host 3 cut off at step 100: $(sed -n 's/.*W moe-coordinator: \(server .* not heard from for [0-9.]* s\).*/\1/p' "$WORK/cut/coordinator.log" | head -n 1); rolled back; export identical"
