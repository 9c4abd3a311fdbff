# What an operator does to a running cluster, with determinism as the oracle
# (every run that goes on ends with an export byte-identical to an
# undisturbed run's) and a sentence for every refusal:
#   - a server or a worker whose configuration differs is refused (it exits
#     non-zero naming the keys) and the cluster trains on, no rollback
#   - a server started without --workers (the README's join) takes the
#     worker list from the coordinator
#   - SIGTERM: a server of several is drained (exit 0, no rollback); a worker
#     or the coordinator checkpoint and stop the whole cluster (all exit 0),
#     and starting it again resumes to the same bytes
#   - server ids: stable in logs, moectl and drain; a dead server's slot is
#     pruned; draining an unknown or dead server is a 409 with a sentence;
#     malformed ids are a 400
#   - a model too large for the machine fails at once with the bytes
#   - the livelock guard: a failure that repeats without progress (a server
#     without memory for its shard; a full disk on a small tmpfs) stops the
#     cluster, every process exits non-zero with the cause, the last
#     committed checkpoint verifies and no partial folder is left
make_corpora
K=300
base_args() { # NAME
    A="--train $WORK/train.txt --valid= $TINY --vocab-max 1000 --log-every 1 --log-level info \
--steps $K --checkpoint-dir $WORK/$1/ck --checkpoint-every 40 --timeout-ms 2000 \
--heartbeat-timeout-ms 1500"
}
export_of() { # NAME
    "$BIN/moectl" export "$WORK/$1/ck" "$WORK/$1.export.safetensors" >/dev/null ||
        fail "$1: moectl export of its last checkpoint failed"
}
same_as() { # NAME BASE WHAT
    export_of "$1"
    cmp -s "$WORK/$2.export.safetensors" "$WORK/$1.export.safetensors" ||
        fail "$3: the export at step $K differs from the undisturbed run"
}
start() { # NAME WORKERS: coordinator expecting servers 0 and 1, the servers, the workers
    base_args "$1"
    cl_init "$1" "$2"
    cl_server_endpoints 0 1
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    r=0
    while [ $r -lt "$2" ]; do
        cl_worker $r
        r=$((r + 1))
    done
}
finish() { # waits for every worker, then stops the rest
    for r in $(seq 0 $((CLW - 1))); do
        eval "p=\$WPID$r"
        wait "$p" || fail "$CL: worker $r failed: $(tail -n 3 "$CL/worker-$r.log")"
    done
    cl_stop
}
# exits_within PID SECONDS: the process ends within SECONDS; EXIT = its status
exits_within() {
    n=0
    while kill -0 "$1" 2>/dev/null; do
        [ $n -lt $(($2 * 20)) ] || fail "process $1 still runs after $2 s"
        sleep 0.05
        n=$((n + 1))
    done
    wait "$1"
    EXIT=$?
}
no_rollback() { # WHAT
    ! grep -q "rolling back" "$CL/coordinator.log" ||
        fail "$1: the cluster rolled back: $(grep "rolling back" "$CL/coordinator.log" | head -n 2)"
}

start base 1
finish
export_of base
grep -q "training finished: step $K of $K, last checkpoint .*step-$(printf %08d $K)" "$CL/coordinator.log" ||
    fail "the coordinator does not say that training finished: $(grep -i "finish\|step 300" "$CL/coordinator.log")"
start base2 2
finish
export_of base2
echo "  ok: undisturbed runs with 1 and 2 workers, $K steps"

# 1. Configuration agreement.
start mismatch 1
cl_wait_step 0 50
free_ports 1
"$BIN/moe-server" $A --workers "$CLWS" --coordinator "$CLC" --d-hidden 32 --lr 0.02 \
    --bind "tcp://127.0.0.1:$P1" >"$WORK/bad-server.log" 2>&1 &
bad=$!
exits_within $bad 20
[ $EXIT -ne 0 ] || fail "a server with another d_hidden exited 0"
grep -q "d_hidden is 32 here and 24 in the cluster" "$WORK/bad-server.log" ||
    fail "the refusal does not name d_hidden: $(tail -n 2 "$WORK/bad-server.log")"
grep -q "lr is 0.02" "$WORK/bad-server.log" || fail "the refusal does not name lr"
"$BIN/moe-worker" $A --experts remote --coordinator "$CLC" --rank 0 --unroll 9 \
    >"$WORK/bad-worker.log" 2>&1 &
badw=$!
exits_within $badw 20
[ $EXIT -ne 0 ] || fail "a worker with another unroll exited 0"
grep -q "unroll is 9 here and 8 in the cluster" "$WORK/bad-worker.log" ||
    fail "the worker's refusal does not name unroll: $(tail -n 2 "$WORK/bad-worker.log")"
finish
same_as mismatch base "refused processes"
no_rollback "refused processes"
echo "  ok: refused: $(grep -o 'configuration differs.*' "$WORK/bad-server.log" | head -n 1)"
echo "  ok: refused: $(grep -o 'unroll is [^;]*' "$WORK/bad-worker.log" | head -n 1); the cluster trained on, export identical, no rollback"

# 1b. Two servers claiming one endpoint: a second server advertising
# server 1's address (a config copied to another machine) is refused with a
# sentence and exits non-zero; server 1 and the training go on, no rollback.
# Then server 1 is killed and started again at once (its heartbeats stop):
# that is a restart, accepted after a short wait, rolled back and replayed.
start dup 1
cl_wait_step 0 50
kill -STOP "$WPID0"
free_ports 1
"$BIN/moe-server" $A --workers "$CLWS" --coordinator "$CLC" --bind "tcp://127.0.0.1:$P1" \
    --advertise "tcp://127.0.0.1:$CLSP_1" >"$WORK/dup-server.log" 2>&1 &
dup=$!
exits_within $dup 20
kill -CONT "$WPID0"
[ $EXIT -ne 0 ] || fail "a second server at server 1's endpoint exited 0"
said="another expert server is already serving at tcp://127.0.0.1:$CLSP_1 (server 1, alive): each server needs its own --advertise (or --bind) address"
grep -qF "$said" "$WORK/dup-server.log" ||
    fail "the second server's refusal: $(tail -n 2 "$WORK/dup-server.log")"
no_rollback "a second server at server 1's endpoint"
grep -q "registering again\|refused" "$CL/server-1.log" && fail "server 1 was disturbed: $(tail -n 3 "$CL/server-1.log")"
cl_wait_step 0 100
kill -9 "$SPID1"
wait "$SPID1" 2>/dev/null
cl_server 1
finish
same_as dup base "a second server at server 1's endpoint, then server 1 restarted"
grep -q "server 1 (tcp://127.0.0.1:$CLSP_1) restarted and lost its experts" "$CL/coordinator.log" ||
    fail "the restart of server 1 was not seen as one: $(grep -i "server 1\|rolling" "$CL/coordinator.log" | tail -n 4)"
echo "  ok: refused: $(grep -oF "$said" "$WORK/dup-server.log" | head -n 1); no rollback;" \
    "server 1 killed and started again: a restart, export identical"

# 2. A server that joins the README's way, without --workers, in a 2-worker
# cluster: it takes the worker list from the coordinator.
start join2 2
cl_wait_step 0 100
cl_port 2
"$BIN/moe-server" $A --coordinator "$CLC" --bind "tcp://127.0.0.1:$CLSP" >>"$CL/server-2.log" 2>&1 &
SPID2=$!
CL_PIDS="$CL_PIDS $SPID2"
finish
same_as join2 base2 "a server joined without --workers"
grep -q "the cluster's workers (from the coordinator)" "$CL/server-2.log" ||
    fail "the new server did not take the worker list: $(head -n 3 "$CL/server-2.log")"
grep -q "epoch [0-9]*: 3 server(s)" "$CL/coordinator.log" || fail "the new server never joined"
no_rollback "a server joined without --workers"
echo "  ok: a server without --workers joined 2 workers at step 100; export identical, no rollback"

# 3. Signals.
start sigserver 1
cl_wait_step 0 100
kill -TERM "$SPID1"
exits_within "$SPID1" 30
[ $EXIT -eq 0 ] || fail "server 1 exited $EXIT after SIGTERM"
grep -q "drained" "$CL/server-1.log" || fail "server 1 was not drained: $(tail -n 3 "$CL/server-1.log")"
finish
same_as sigserver base "SIGTERM of a server"
no_rollback "SIGTERM of a server"
echo "  ok: SIGTERM of server 1 at step 100: drained, exit 0, no rollback, export identical"

for who in worker coordinator; do
    start "sig$who" 1
    cl_wait_step 0 100
    if [ $who = worker ]; then kill -TERM "$WPID0"; else kill -TERM "$CPID"; fi
    for p in $WPID0 $SPID0 $SPID1 $CPID; do
        exits_within "$p" 30
        [ $EXIT -eq 0 ] || fail "SIGTERM of the $who: a process exited $EXIT: $(tail -n 2 "$CL"/*.log)"
    done
    at=$(sed -n 's/^stopped at step \([0-9]*\) .*/\1/p' "$CL/worker-0.log")
    [ -n "$at" ] || fail "SIGTERM of the $who: the worker does not say where it stopped"
    [ -f "$WORK/sig$who/ck/step-$(printf %08d "$at")/manifest.json" ] ||
        fail "SIGTERM of the $who: no committed checkpoint of step $at"
    CL_PIDS=""
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    cl_worker 0
    finish
    same_as "sig$who" base "SIGTERM of the $who, then a restart"
    echo "  ok: SIGTERM of the $who at step 100: checkpoint of step $at, all 4 processes exit 0;" \
        "restarted: export identical"
done

# A second SIGTERM stops the coordinator within a second. A member that
# has not heard of the stop by then (server 1, frozen) is named and the
# status is 1.
start sigtwice 1
cl_wait_step 0 20
kill -STOP "$SPID1"
kill -TERM "$CPID"
sleep 0.05
kill -TERM "$CPID"
exits_within "$CPID" 5
[ $EXIT -eq 1 ] || fail "two SIGTERMs with server 1 frozen: the coordinator exited $EXIT"
grep -q "error: stopped by a second signal before server 1[ ,].*heard of the stop" "$CL/coordinator.log" ||
    fail "two SIGTERMs with server 1 frozen: no sentence naming it: $(tail -n 2 "$CL/coordinator.log")"
kill -CONT "$SPID1"
cl_kill_all
echo "  ok: two SIGTERMs, server 1 frozen: the coordinator exits 1 within 5 s naming server 1"

# 4. Server ids: a joining server is server 2 everywhere; draining by id;
# a dead server is pruned; bad drains are refused with a sentence.
start ids 1
cl_wait_step 0 60
# the worker waits (SIGSTOP) until server 2 is due to join: on loaded
# cores the 300 steps could end before it is up
kill -STOP "$WPID0"
cl_server 2
n=0
until grep -q "server 2 joins at the next step boundary" "$CL/coordinator.log"; do
    [ $n -lt 600 ] || { kill -CONT "$WPID0"; fail "server 2 never joins: $(tail -n 3 "$CL/coordinator.log")"; }
    sleep 0.05
    n=$((n + 1))
done
kill -CONT "$WPID0"
grep -q "as server 2" "$CL/server-2.log" || fail "the third server is not server 2: $(head -n 2 "$CL/server-2.log")"
n=0
until "$BIN/moectl" --http "$CLH" status 2>/dev/null | grep -Eq "^2 +tcp://127.0.0.1:$CLSP +yes +[a-z]+ +[1-9]"; do
    [ $n -lt 200 ] || fail "moectl status never shows server 2 with experts: $("$BIN/moectl" --http "$CLH" status)"
    sleep 0.05
    n=$((n + 1))
done
"$BIN/moectl" --http "$CLH" --token secret drain 2 >"$WORK/drain.out" 2>&1 || fail "moectl drain 2: $(cat "$WORK/drain.out")"
exits_within "$SPID2" 30
[ $EXIT -eq 0 ] || fail "server 2 exited $EXIT after its drain"
grep -q "drained" "$CL/server-2.log" || fail "moectl drain 2 did not drain server 2"
kill -9 "$SPID0"
wait "$SPID0" 2>/dev/null
n=0
until grep -q "server 0 .* removed from the cluster" "$CL/coordinator.log"; do
    [ $n -lt 1200 ] || fail "the dead server 0 was never pruned in 60 s: $(tail -n 5 "$CL/coordinator.log")"
    sleep 0.05
    n=$((n + 1))
done
"$BIN/moectl" --http "$CLH" status >"$WORK/status.txt" || fail "moectl status"
grep -Eq "^0 +tcp://" "$WORK/status.txt" && fail "the dead server 0 is still listed: $(cat "$WORK/status.txt")"
post() { /usr/bin/python3 - "$CLH" "$1" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request("http://%s%s" % (sys.argv[1], sys.argv[2]), method="POST",
                             headers={"Authorization": "Bearer secret"})
try:
    r = urllib.request.urlopen(req, timeout=10)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}
for q in "server=4294967296" "server=-1" "server=abc" "server=" "other=1"; do
    out=$(post "/api/v1/drain?$q")
    [ "${out%% *}" = 400 ] || fail "drain?$q answered $out, expected 400"
done
out=$(post "/api/v1/drain?server=7")
[ "${out%% *}" = 409 ] && echo "$out" | grep -q "no server 7" || fail "drain of an unknown server: $out"
"$BIN/moectl" --http "$CLH" --token secret drain 0 >/dev/null 2>"$WORK/drain0.err" &&
    fail "moectl drain of the dead server 0 succeeded"
grep -q "moectl: drain: there is no server 0" "$WORK/drain0.err" ||
    fail "moectl drain 0: $(cat "$WORK/drain0.err")"
finish
same_as ids base "a join, a drain by id and a dead server"
echo "  ok: server 2 joined and was drained by id; dead server 0 pruned; drain of 7: $(echo "$out" | cut -c1-60)...;" \
    "bad ids 400; export identical"

# 5. Sizes are checked before memory is taken.
t0=$(now_ms)
expect_fail "a model too large for the machine" "needs about .* bytes.*available" \
    "$BIN/moe-worker" --train "$WORK/train.txt" --valid= --n-experts 1000 --d-hidden 1000000 --steps 1
ms=$(($(now_ms) - t0))
[ $ms -lt 1000 ] || fail "the size check took $ms ms"
echo "  ok: --n-experts 1000 --d-hidden 1000000 refused in $ms ms"

# 6. The livelock guard: a server that cannot hold its experts joins; every
# load of the epoch fails the same way; after 3 rollbacks the cluster stops.
guard_check() { # CKDIR CAUSE-PATTERN: every log names the cause; the checkpoints are sound
    for f in "$CL"/*.log; do
        grep -Eq -- "$2" "$f" || fail "$CL: $(basename "$f") does not name the cause /$2/: $(tail -n 2 "$f")"
    done
    "$BIN/moectl" verify "$1" >"$WORK/verify.txt" 2>&1 ||
        fail "$CL: the last committed checkpoint does not verify: $(cat "$WORK/verify.txt")"
    for d in "$1"/step-*; do
        [ -f "$d/manifest.json" ] || fail "$CL: a partial checkpoint folder is left: $d"
    done
}
start nomem 1
cl_wait_step 0 60
MOE_MEM_AVAILABLE=1000 cl_server_bg 2
for p in $WPID0 $SPID0 $SPID1 $SPID2 $CPID; do
    exits_within "$p" 60
    [ $EXIT -ne 0 ] || fail "nomem: process $p exited 0"
done
guard_check "$WORK/nomem/ck" "server 2 cannot load epoch [0-9]+: its [0-9]+ experts .* needs about"
echo "  ok: a server without memory for its experts: $(grep -c "rolling back" "$CL/coordinator.log") rollbacks," \
    "then every process exited non-zero: $(tail -n 1 "$CL/worker-0.log" | cut -c1-150)..."

# ... and a full disk: the checkpoint folder on a small tmpfs.
# disk_cluster NAME SIZE: a cluster checkpointing there, every process of
# which must exit non-zero (the tmpfs stays mounted: umount it after).
disk_cluster() {
    mount -t tmpfs -o size=$2 tmpfs "$WORK/tmpfs" 2>"$WORK/mount.err" || return 1
    cl_start_pair "$1" --checkpoint-dir "$WORK/tmpfs/ck"
    for p in $WPID0 $SPID0 $SPID1 $CPID; do
        exits_within "$p" 60
        [ $EXIT -ne 0 ] || { umount "$WORK/tmpfs"; fail "$1: process $p exited 0"; }
    done
}
mkdir -p "$WORK/tmpfs"
if disk_cluster disk 1m; then
    ( guard_check "$WORK/tmpfs/ck" "No space left on device" ) || { umount "$WORK/tmpfs"; exit 1; }
    echo "  ok: full disk (1 MiB tmpfs): $(grep -c "rolling back" "$CL/coordinator.log") rollbacks, then" \
        "every process exited non-zero: $(tail -n 1 "$CL/worker-0.log" | cut -c1-160)"
    umount "$WORK/tmpfs"
    # so full that the epoch's first checkpoint (step 0) fails: the worker
    # reports it (it used to exit alone, the others waiting for it forever)
    disk_cluster disk0 64k || fail "cannot mount the tmpfs again: $(cat "$WORK/mount.err")"
    for f in "$CL"/*.log; do
        grep -q "cannot write its checkpoint of step 0: .*No space left on device, and there is no committed checkpoint to roll back to$" "$f" ||
            { umount "$WORK/tmpfs"; fail "disk0: $(basename "$f") does not name the cause: $(tail -n 2 "$f")"; }
    done
    ls "$WORK/tmpfs/ck" | grep -q "^step-" && { umount "$WORK/tmpfs"; fail "disk0: a partial checkpoint folder is left"; }
    echo "  ok: full disk at the first checkpoint (64 KiB tmpfs): every process exited non-zero naming the cause"
    umount "$WORK/tmpfs"
else
    echo "  skipped: the full-disk case needs a tmpfs mount (root): $(cat "$WORK/mount.err")"
fi
