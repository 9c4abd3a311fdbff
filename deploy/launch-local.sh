#!/bin/sh
# Starts a local cluster on this machine (127.0.0.1 or ipc sockets): a
# coordinator (dashboard on http://127.0.0.1:HTTP_PORT/), N expert servers and
# M data-parallel workers, waits for the workers, then stops the servers and
# the coordinator with SIGTERM (servers finish their step, write their shard,
# exit 0).
#
#   deploy/launch-local.sh [--servers N] [--workers M] [--transport tcp|ipc]
#                          [--base-port P] [--http-port H] [--no-coordinator]
#                          [--bin DIR] [--run-dir DIR] [--server-threads T]
#                          -- OPTIONS...
#
# OPTIONS go to every process (moe-server and moe-worker share one option
# table, e.g. --config deploy/default.ini). Worker 0 prints to the terminal;
# servers and the other workers log to RUN_DIR/*.log. The exit code is worker
# 0's (or the first failing worker's). Ctrl-C stops everything.
# --server-threads T gives each expert server T compute threads instead of
# OPTIONS' --threads (on one machine the processes share its cores).
set -u
# The processes share this machine's cores: OpenBLAS threads that spin for
# work after each product (by default for about 2^28 cycles) take the cores
# from the other processes, so they sleep almost at once here unless the
# environment says otherwise.
export OPENBLAS_THREAD_TIMEOUT="${OPENBLAS_THREAD_TIMEOUT:-4}"

n_servers=2
n_workers=1
transport=tcp
base_port=$((10000 + $$ % 22000))
bin=build/bin
run_dir=run
use_coord=1
http_port=
server_threads=
while [ $# -gt 0 ]; do
    case "$1" in
    --servers) n_servers=$2; shift 2 ;;
    --workers) n_workers=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    --http-port) http_port=$2; shift 2 ;;
    --no-coordinator) use_coord=0; shift ;;
    --bin) bin=$2; shift 2 ;;
    --run-dir) run_dir=$2; shift 2 ;;
    --) shift; break ;;
    --server-threads) server_threads=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "launch-local: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$run_dir"
run_abs=$(cd "$run_dir" && pwd)

endpoint() { # kind index
    if [ "$transport" = ipc ]; then
        echo "ipc://$run_abs/$1-$2.sock"
    elif [ "$1" = server ]; then
        echo "tcp://127.0.0.1:$((base_port + $2))"
    else
        echo "tcp://127.0.0.1:$((base_port + 100 + $2))"
    fi
}
servers=""
i=0
while [ $i -lt "$n_servers" ]; do
    servers="$servers${servers:+,}$(endpoint server $i)"
    i=$((i + 1))
done
workers=""
if [ "$n_workers" -gt 1 ]; then
    i=0
    while [ $i -lt "$n_workers" ]; do
        workers="$workers${workers:+,}$(endpoint worker $i)"
        i=$((i + 1))
    done
fi

server_pids=""
worker_pids=""
coord_pid=""
cleanup() {
    for p in $worker_pids $server_pids $coord_pid; do kill -9 "$p" 2>/dev/null; done
}
trap 'cleanup; exit 130' INT TERM

coordinator=""
if [ "$use_coord" -eq 1 ]; then
    if [ "$transport" = ipc ]; then
        coordinator="ipc://$run_abs/coordinator.sock"
    else
        coordinator="tcp://127.0.0.1:$((base_port + 200))"
    fi
    [ -n "$http_port" ] || http_port=$((base_port + 201))
    "$bin/moe-coordinator" "$@" --servers "$servers" --workers "$workers" \
        --coordinator "$coordinator" --http "127.0.0.1:$http_port" \
        >"$run_abs/coordinator.log" 2>&1 &
    coord_pid=$!
    n=0
    until grep -q "dashboard at" "$run_abs/coordinator.log" 2>/dev/null; do
        if ! kill -0 "$coord_pid" 2>/dev/null || [ $n -gt 100 ]; then
            echo "launch-local: the coordinator did not start: $(tail -n 3 "$run_abs/coordinator.log")" >&2
            cleanup
            exit 1
        fi
        sleep 0.1
        n=$((n + 1))
    done
    echo "launch-local: dashboard at http://127.0.0.1:$http_port/ (moectl --http 127.0.0.1:$http_port experts)" >&2
    set -- "$@" --coordinator "$coordinator"
fi

i=0
while [ $i -lt "$n_servers" ]; do
    "$bin/moe-server" "$@" ${server_threads:+--threads "$server_threads"} --servers "$servers" \
        --workers "$workers" --server-index $i \
        --shard-out "$run_abs/server-$i.safetensors" >"$run_abs/server-$i.log" 2>&1 &
    server_pids="$server_pids $!"
    i=$((i + 1))
done
echo "launch-local: $n_servers expert server(s) at $servers; logs in $run_dir/" >&2

i=1
while [ $i -lt "$n_workers" ]; do
    "$bin/moe-worker" "$@" --experts remote --servers "$servers" --workers "$workers" --rank $i \
        >"$run_abs/worker-$i.log" 2>&1 &
    worker_pids="$worker_pids $!"
    i=$((i + 1))
done
"$bin/moe-worker" "$@" --experts remote --servers "$servers" --workers "$workers" --rank 0 &
w0=$!
worker_pids="$w0 $worker_pids"

status=0
wait "$w0" || status=$?
for p in $worker_pids; do
    [ "$p" = "$w0" ] && continue
    wait "$p" || { [ $status -eq 0 ] && status=$?; }
done

# Stop the servers: SIGTERM, then SIGKILL after 30 s.
for p in $server_pids; do kill -TERM "$p" 2>/dev/null; done
for p in $server_pids; do
    n=0
    while kill -0 "$p" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    if kill -0 "$p" 2>/dev/null; then
        echo "launch-local: server $p did not stop in 30 s; killing it" >&2
        kill -9 "$p" 2>/dev/null
        status=${status:-1}
    fi
    wait "$p" 2>/dev/null
done
if [ -n "$coord_pid" ]; then
    kill -TERM "$coord_pid" 2>/dev/null
    wait "$coord_pid" 2>/dev/null
fi
exit $status
