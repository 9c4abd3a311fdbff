#!/bin/sh
# Starts a local cluster on this machine (127.0.0.1 or ipc sockets): a
# coordinator (dashboard on http://127.0.0.1:HTTP_PORT/), N expert servers and
# M data-parallel workers, waits for the workers, then stops the servers and
# the coordinator with SIGTERM (each exits 0).
#
# Ports: free ones are picked (moectl free-ports) unless --base-port is
# given; each process is checked to be up before the next is started.
# Ctrl-C (or SIGTERM to this script): the coordinator checkpoints at the next
# step boundary and stops the cluster cleanly (everyone exits 0; start again
# to resume); a second Ctrl-C kills everything at once.
#
#   deploy/launch-local.sh [--servers N] [--workers M] [--transport tcp|ipc]
#                          [--base-port P] [--http-port H] [--no-coordinator]
#                          [--bin DIR] [--run-dir DIR] [--server-threads T]
#                          [--keys DIR] -- OPTIONS...
#
# Security: every TCP socket runs CURVE with the cluster's keys, from
# --keys DIR (default RUN_DIR/keys, made with `moectl keygen` when missing);
# the coordinator's HTTP token (for moectl checkpoint and drain) is
# RUN_DIR/http-token, made when missing: moectl --token-file RUN_DIR/http-token.
#
# OPTIONS go to every process (moe-server and moe-worker share one option
# table, e.g. --config deploy/default.ini). Worker 0 prints to the terminal;
# servers and the other workers log to RUN_DIR/*.log. The exit code is worker
# 0's (or the first failing worker's).
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
base_port=
bin=build/bin
run_dir=run
use_coord=1
http_port=
server_threads=
keys=
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
    --keys) keys=$2; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "launch-local: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$run_dir"
run_abs=$(cd "$run_dir" && pwd)

# The cluster's CURVE keys and the HTTP token, made once per run folder.
[ -n "$keys" ] || keys="$run_abs/keys"
if [ ! -f "$keys/coordinator.key" ]; then
    "$bin/moectl" keygen "$keys" >/dev/null ||
        { echo "launch-local: cannot write the cluster's keys into $keys" >&2; exit 1; }
    echo "launch-local: wrote the cluster's CURVE keys into $keys" >&2
fi
token_file="$run_abs/http-token"
if [ ! -s "$token_file" ]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$token_file" && echo >>"$token_file") ||
        { echo "launch-local: cannot write $token_file" >&2; exit 1; }
fi
set -- --keys "$keys" "$@"

# Ports: servers, workers, the coordinator and its HTTP, all free now (a
# bind test), unless --base-port fixes them (PORT+i, PORT+100+r, PORT+200,
# PORT+201).
n_ports=$((n_servers + n_workers + 2))
if [ -z "$base_port" ]; then
    ports=$("$bin/moectl" free-ports "$n_ports" 2>/dev/null) ||
        { echo "launch-local: cannot find $n_ports free ports on 127.0.0.1 (is $bin/moectl built?)" >&2; exit 1; }
else
    ports=""
    i=0
    while [ $i -lt "$n_servers" ]; do ports="$ports $((base_port + i))"; i=$((i + 1)); done
    i=0
    while [ $i -lt "$n_workers" ]; do ports="$ports $((base_port + 100 + i))"; i=$((i + 1)); done
    ports="$ports $((base_port + 200)) $((base_port + 201))"
fi
port_at() { # N: the N-th port (from 1)
    echo $ports | tr ' ' '\n' | sed -n "$1p"
}
endpoint() { # kind index
    if [ "$transport" = ipc ]; then
        echo "ipc://$run_abs/$1-$2.sock"
    elif [ "$1" = server ]; then
        echo "tcp://127.0.0.1:$(port_at $(($2 + 1)))"
    else
        echo "tcp://127.0.0.1:$(port_at $((n_servers + $2 + 1)))"
    fi
}
# wait_up PID LOG PATTERN WHAT: until LOG shows PATTERN (the process is up
# and answering), or the process died (then say why and stop everything).
wait_up() {
    n=0
    until grep -q "$3" "$2" 2>/dev/null; do
        if ! kill -0 "$1" 2>/dev/null || [ $n -gt 600 ]; then
            echo "launch-local: $4 did not start: $(tail -n 3 "$2")" >&2
            cleanup
            exit 1
        fi
        sleep 0.1
        n=$((n + 1))
    done
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
# The first Ctrl-C / SIGTERM: a clean stop through the coordinator (a
# checkpoint, then everyone exits 0); the second: kill everything.
stopping=0
on_stop() {
    stopping=$((stopping + 1))
    if [ $stopping -gt 1 ] || [ -z "$coord_pid" ]; then
        echo "launch-local: killing every process" >&2
        cleanup
        exit 130
    fi
    echo "launch-local: stopping: the cluster checkpoints at the next step boundary and stops" \
        "(Ctrl-C again to kill everything)" >&2
    kill -TERM "$coord_pid" 2>/dev/null
}
trap on_stop INT TERM

coordinator=""
if [ "$use_coord" -eq 1 ]; then
    if [ "$transport" = ipc ]; then
        coordinator="ipc://$run_abs/coordinator.sock"
    else
        coordinator=""
    fi
    [ "$transport" = ipc ] || coordinator="tcp://127.0.0.1:$(port_at $((n_ports - 1)))"
    [ -n "$http_port" ] || http_port=$(port_at "$n_ports")
    "$bin/moe-coordinator" "$@" --servers "$servers" --workers "$workers" \
        --coordinator "$coordinator" --http "127.0.0.1:$http_port" --http-token-file "$token_file" \
        >"$run_abs/coordinator.log" 2>&1 &
    coord_pid=$!
    wait_up "$coord_pid" "$run_abs/coordinator.log" "dashboard at" "the coordinator"
    echo "launch-local: dashboard at http://127.0.0.1:$http_port/ (moectl --http 127.0.0.1:$http_port experts;" \
        "checkpoint and drain with --token-file $token_file)" >&2
    set -- "$@" --coordinator "$coordinator"
fi

i=0
while [ $i -lt "$n_servers" ]; do
    "$bin/moe-server" "$@" ${server_threads:+--threads "$server_threads"} --servers "$servers" \
        --workers "$workers" --server-index $i \
        --shard-out "$run_abs/server-$i.safetensors" >"$run_abs/server-$i.log" 2>&1 &
    pid=$!
    server_pids="$server_pids $pid"
    wait_up "$pid" "$run_abs/server-$i.log" "moe-server: server .* serving on" "expert server $i"
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

# wait_pid PID: its exit status, waiting again when a trapped signal
# interrupts the wait.
wait_pid() {
    while :; do
        wait "$1"
        st=$?
        kill -0 "$1" 2>/dev/null || return $st
    done
}
status=0
wait_pid "$w0" || status=$?
for p in $worker_pids; do
    [ "$p" = "$w0" ] && continue
    wait_pid "$p" || { [ $status -eq 0 ] && status=$?; }
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
    wait_pid "$coord_pid" 2>/dev/null
fi
exit $status
