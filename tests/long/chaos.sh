#!/bin/sh
# Randomised chaos run (make test-long): a coordinator, expert servers and
# two workers train a small model while, every few seconds, a random event
# hits the cluster: kill -9 of a server (restarted later on a new port),
# a new server joining, a server drained with moectl, SIGTERM of a server
# (it is drained), kill -9 of a worker (restarted at once), a moectl
# checkpoint, kill -9 of the coordinator (restarted with the same flags after
# a gap of up to 65 s, nothing else restarted). When training ends, the export of
# its last checkpoint must be byte-identical to that of an undisturbed run
# of the same configuration, whatever happened in between.
#
# Usage: chaos.sh BUILD_DIR [SECONDS] [SEED]   (defaults: 1800 s, seed from the clock)
# The number of steps is chosen from a short calibration run so that the
# chaos run lasts about SECONDS. Prints one line per event and a summary.
set -u
build=$(cd "${1:-build}" && pwd)
seconds=${2:-1800}
seed=${3:-$(date +%s)}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BIN="$build/bin"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moe-chaos-XXXXXX")
trap 'for p in $(jobs -p); do kill -9 $p 2>/dev/null; done; rm -rf "$WORK"' EXIT
. "$top/tests/integration/lib.sh"
DATA="$top/data/wikitext-2"
make_corpora
# a small model whose steps take a few milliseconds
MODEL="--d-model 32 --d-hidden 64 --n-experts 16 --k 2 --batch 8 --unroll 16 --eval-batch 3 \
--warmup 20 --lr 0.005 --threads 1 --log-every 1 --log-level info"
seed=$((seed % 2147483648))
rnd() { # N: R = a pseudo-random 0..N-1 (a linear congruential generator)
    seed=$(((seed * 1103515245 + 12345) % 2147483648))
    R=$(((seed / 65536) % $1))
}
args() { # NAME STEPS
    A="--train $WORK/train.txt --valid= $MODEL --steps $2 --checkpoint-dir $WORK/$1/ck \
--checkpoint-every 50 --timeout-ms 3000 --heartbeat-timeout-ms 2000 --keep-checkpoints 4 \
--max-rollbacks 50"
}
undisturbed() { # NAME STEPS
    args "$1" "$2"
    cl_init "$1" 2
    cl_coord --min-servers 2
    cl_server 0
    cl_server 1
    cl_worker 0
    cl_worker 1
    wait "$WPID0" || fail "$1: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
    wait "$WPID1" || fail "$1: worker 1 failed"
    cl_stop
}

# Calibration: how many steps per second undisturbed?
t0=$(now_ms)
undisturbed calib 300
ms=$(($(now_ms) - t0))
steps=$((300 * seconds * 1000 / ms / 3 * 2))
[ "$steps" -ge 600 ] || steps=600
echo "chaos: seed $seed, $steps steps (calibration: 300 steps in $ms ms), about $seconds s"

undisturbed base "$steps"
"$BIN/moectl" export "$WORK/base/ck" "$WORK/base.export.safetensors" >/dev/null || fail "export of the undisturbed run"

args chaos "$steps"
cl_init chaos 2
cl_coord --min-servers 2
cl_server 0
cl_server 1
cl_worker 0
cl_worker 1
next=2            # next server index (it serves on PORT+index)
events=0
start=$(now_ms)
alive_servers() { # LIVE = indices of server processes still running
    LIVE=""
    i=0
    while [ $i -lt $next ]; do
        eval "p=\$SPID$i"
        kill -0 "$p" 2>/dev/null && LIVE="$LIVE $i"
        i=$((i + 1))
    done
    NLIVE=$(echo $LIVE | wc -w)
}
while kill -0 "$WPID0" 2>/dev/null; do
    rnd 8
    sleep $((3 + R))
    kill -0 "$WPID0" 2>/dev/null || break
    alive_servers
    rnd 7
    t=$((($(now_ms) - start) / 1000))
    case $R in
    0) # kill -9 a server (at least one stays)
        [ "$NLIVE" -ge 2 ] || continue
        rnd "$NLIVE"
        victim=$(echo $LIVE | tr ' ' '\n' | sed -n "$((R + 1))p")
        eval "kill -9 \$SPID$victim"
        echo "  t=${t}s: kill -9 server $victim" ;;
    1) # a new server joins
        [ "$next" -lt 60 ] || continue
        cl_server_bg $next
        echo "  t=${t}s: server $next joins"
        next=$((next + 1)) ;;
    2) # drain a server through the coordinator (found by its endpoint)
        [ "$NLIVE" -ge 2 ] || continue
        rnd "$NLIVE"
        victim=$(echo $LIVE | tr ' ' '\n' | sed -n "$((R + 1))p")
        cl_port "$victim"
        slot=$("$BIN/moectl" --http "$CLH" --json status 2>/dev/null | python3 -c "
import json, sys
c = json.load(sys.stdin)
ep = 'tcp://127.0.0.1:$CLSP'
print(next((x['id'] for x in c['servers'] if x['endpoint'] == ep), ''))" 2>/dev/null)
        [ -n "$slot" ] || continue
        "$BIN/moectl" --http "$CLH" --token secret drain "$slot" >/dev/null 2>&1 &&
            echo "  t=${t}s: drain server $victim (slot $slot)" ;;
    3) # kill -9 worker 1 and restart it
        kill -9 "$WPID1" 2>/dev/null
        wait "$WPID1" 2>/dev/null
        cl_worker 1
        echo "  t=${t}s: kill -9 worker 1, restarted" ;;
    4) # an operator checkpoint
        "$BIN/moectl" --http "$CLH" --token secret checkpoint >/dev/null 2>&1 &&
            echo "  t=${t}s: moectl checkpoint" ;;
    5) # SIGTERM of a server: it is drained (at least one stays)
        [ "$NLIVE" -ge 2 ] || continue
        rnd "$NLIVE"
        victim=$(echo $LIVE | tr ' ' '\n' | sed -n "$((R + 1))p")
        eval "kill -TERM \$SPID$victim"
        echo "  t=${t}s: SIGTERM to server $victim (drain)" ;;
    6) # kill -9 of the coordinator, restarted after a gap
        rnd 64
        gap=$((R + 2))
        kill -9 "$CPID"
        wait "$CPID" 2>/dev/null
        echo "  t=${t}s: kill -9 the coordinator; restarted after $gap s"
        sleep "$gap"
        cl_coord --min-servers 2 ;;
    esac
    events=$((events + 1))
    # keep two servers running
    alive_servers
    while [ "$NLIVE" -lt 2 ]; do
        cl_server_bg $next
        echo "  t=${t}s: server $next joins (replacement)"
        next=$((next + 1))
        NLIVE=$((NLIVE + 1))
    done
done
wait "$WPID0" || fail "worker 0 failed: $(tail -n 5 "$CL/worker-0.log")"
wait "$WPID1" 2>/dev/null || true
cl_stop
elapsed=$((($(now_ms) - start) / 1000))
"$BIN/moectl" export "$WORK/chaos/ck" "$WORK/chaos.export.safetensors" >/dev/null || fail "export of the chaos run"
rollbacks=$(grep -c "rolling back" "$CL/coordinator.log")
epochs=$(grep -c "I moe-coordinator: epoch [0-9]*:" "$CL/coordinator.log")
cmp -s "$WORK/base.export.safetensors" "$WORK/chaos.export.safetensors" ||
    fail "after $events events ($epochs epochs, $rollbacks rollbacks) the export differs from the undisturbed run"
echo "chaos: ok: $steps steps in $elapsed s with $events events, $epochs epochs, $rollbacks rollbacks;" \
    "the export is byte-identical to the undisturbed run"
