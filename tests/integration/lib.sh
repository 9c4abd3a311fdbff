# Shared helpers of the integration tests (sourced by each test_*.sh).
# Each test gets $BIN (the build's bin folder), $WORK (a fresh temporary
# folder removed afterwards) and the small corpora below.

set -u

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# expect_fail DESCRIPTION PATTERN COMMAND...: the command must exit non-zero
# and print PATTERN (grep -E) on stderr.
expect_fail() {
    desc=$1
    pattern=$2
    shift 2
    if "$@" >"$WORK/out.txt" 2>"$WORK/err.txt"; then
        fail "$desc: expected failure, got exit 0"
    fi
    grep -Eq -- "$pattern" "$WORK/err.txt" ||
        fail "$desc: stderr does not match /$pattern/: $(cat "$WORK/err.txt")"
    echo "  ok: $desc: $(head -n 1 "$WORK/err.txt")"
}

# wait_for_step LOG N [SECONDS]: waits (at most SECONDS, default 10) until a
# progress line of step N shows in LOG.
wait_for_step() {
    n=0
    until grep -q "^step *$2/" "$1" 2>/dev/null || [ $n -gt $((${3:-10} * 50)) ]; do
        sleep 0.02
        n=$((n + 1))
    done
}

# Small corpora cut from the bundled WikiText-2 (whole lines).
make_corpora() {
    head -n 400 "$DATA/wiki.train.tokens" >"$WORK/train.txt"
    head -n 60 "$DATA/wiki.valid.tokens" >"$WORK/valid.txt"
}

# A tiny model that trains in about a second.
TINY="--d-model 16 --d-hidden 24 --n-experts 6 --k 2 --batch 4 --unroll 8 --eval-batch 3 \
--warmup 5 --lr 0.01 --threads 1 --log-every 1000 --log-level warn"

# Clusters for the elasticity tests: a coordinator, servers and workers
# started one by one (so that a test can kill, add and restart them), each
# logging into $CL/NAME.log. $A holds the options shared by every process.
# cl_init NAME PORT WORKERS: ports PORT.. (servers PORT+i, workers PORT+100+r,
# coordinator PORT+200, HTTP PORT+201).
cl_init() {
    CL=$WORK/$1
    mkdir -p "$CL"
    CLP=$2
    CLW=$3
    CLWS=""
    if [ "$CLW" -gt 1 ]; then
        i=0
        while [ $i -lt "$CLW" ]; do
            CLWS="$CLWS${CLWS:+,}tcp://127.0.0.1:$((CLP + 100 + i))"
            i=$((i + 1))
        done
    fi
    CLC=tcp://127.0.0.1:$((CLP + 200))
    CLH=127.0.0.1:$((CLP + 201))
    CL_PIDS=""
}
cl_coord() { # [OPTIONS]
    "$BIN/moe-coordinator" $A --workers "$CLWS" --coordinator "$CLC" --http "$CLH" \
        --http-token secret "$@" >>"$CL/coordinator.log" 2>&1 &
    CPID=$!
    CL_PIDS="$CL_PIDS $!"
}
cl_server() { # I: serves on PORT+I
    "$BIN/moe-server" $A --workers "$CLWS" --coordinator "$CLC" \
        --bind "tcp://127.0.0.1:$((CLP + $1))" >>"$CL/server-$1.log" 2>&1 &
    eval "SPID$1=$!"
    CL_PIDS="$CL_PIDS $!"
}
cl_worker() { # R
    "$BIN/moe-worker" $A --experts remote --workers "$CLWS" --coordinator "$CLC" --rank "$1" \
        >>"$CL/worker-$1.log" 2>&1 &
    eval "WPID$1=$!"
    CL_PIDS="$CL_PIDS $!"
}
# cl_wait_step R N: until worker R printed step N (at most 60 s).
cl_wait_step() {
    wait_for_step "$CL/worker-$1.log" "$2" 60
    grep -q "^step *$2/" "$CL/worker-$1.log" || fail "worker $1 never reached step $2"
}
# cl_stop: SIGTERM to whatever still runs, then wait for all.
cl_stop() {
    for p in $CL_PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $CL_PIDS; do wait "$p" 2>/dev/null; done
    CL_PIDS=""
}
# cl_kill_all: SIGKILL every process of the cluster.
cl_kill_all() {
    for p in $CL_PIDS; do kill -9 "$p" 2>/dev/null; done
    for p in $CL_PIDS; do wait "$p" 2>/dev/null; done
    CL_PIDS=""
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
