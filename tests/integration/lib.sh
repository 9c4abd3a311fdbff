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
    echo "  ok: $desc: $(grep -Em 1 -- "$pattern" "$WORK/err.txt")"
}

# wait_for_step LOG N [SECONDS]: waits (at most SECONDS, default 10) until a
# progress line of step N shows in LOG.
wait_for_step() {
    _h_n=0
    until grep -q "^step *$2/" "$1" 2>/dev/null || [ $_h_n -gt $((${3:-10} * 50)) ]; do
        sleep 0.02
        _h_n=$((_h_n + 1))
    done
}

# Small corpora cut from the bundled WikiText-2 (whole lines).
make_corpora() {
    head -n 400 "$DATA/wiki.train.tokens" >"$WORK/train.txt"
    head -n 60 "$DATA/wiki.valid.tokens" >"$WORK/valid.txt"
}

# The cluster's CURVE keys (every tcp:// socket needs them, as in the README).
KEYS=$WORK/keys
"$BIN/moectl" keygen "$KEYS" >/dev/null || fail "moectl keygen failed"

# A tiny model that trains in about a second.
TINY="--d-model 16 --d-hidden 24 --n-experts 6 --k 2 --batch 4 --unroll 8 --eval-batch 3 \
--warmup 5 --lr 0.01 --threads 1 --log-every 1000 --log-level warn --keys $KEYS"

# free_ports N: PORTS = N distinct TCP ports of 127.0.0.1 that nothing
# listens on now (a bind test, moectl free-ports); P1 .. PN name them. Other
# suites may run on this machine at the same time: never assume a port.
# Ports are bound only when a process starts, so a port handed out earlier
# in this test (listed in $WORK/ports, shared with the test's subshells) is
# never handed out again: two picks could otherwise both find it free.
free_ports() {
    PORTS=""
    _fp_n=0
    _fp_tries=0
    while [ $_fp_n -lt "$1" ]; do
        [ $_fp_tries -lt 50 ] || fail "cannot find $1 free ports"
        _fp_tries=$((_fp_tries + 1))
        _fp_new=$("$BIN/moectl" free-ports "$1") || fail "cannot find $1 free ports"
        for _fp_p in $_fp_new; do
            [ $_fp_n -lt "$1" ] || break
            grep -qx "$_fp_p" "$WORK/ports" 2>/dev/null && continue
            echo "$_fp_p" >>"$WORK/ports"
            PORTS="$PORTS${PORTS:+ }$_fp_p"
            _fp_n=$((_fp_n + 1))
        done
    done
    _fp_i=1
    for _fp_p in $PORTS; do
        eval "P$_fp_i=$_fp_p"
        _fp_i=$((_fp_i + 1))
    done
}

# count PATTERN FILE: lines of FILE matching PATTERN (0 when it is missing)
count() {
    _cn_c=$(grep -c -- "$1" "$2" 2>/dev/null)
    echo "${_cn_c:-0}"
}

# died PID WHAT LOG: fails, saying how the process ended (its exit status,
# or the signal that killed it) and the whole of its log (the last 40 lines)
# since a rare failure to start must be explainable from CI's output alone.
died() {
    wait "$1" 2>/dev/null
    _dd_st=$?
    case $_dd_st in
    127) _dd_how="status unknown: not a child of this shell" ;;
    129|13[0-9]|14[0-9]|15[0-9]) _dd_how="killed by signal $((_dd_st - 128))" ;;
    *) _dd_how="exit $_dd_st" ;;
    esac
    fail "$2 did not start ($_dd_how); its log $3:
$(tail -n 40 "$3" 2>/dev/null)"
}

# wait_up PID LOG PATTERN WHAT [SECONDS]: until LOG matches PATTERN (grep
# -E): the process is up and answering. Fails, naming WHAT and the end of
# its log, when the process dies first or after SECONDS (default 30).
wait_up() {
    _h_n=0
    until grep -Eq -- "$3" "$2" 2>/dev/null; do
        kill -0 "$1" 2>/dev/null || died "$1" "$4" "$2"
        [ $_h_n -lt $((${5:-30} * 20)) ] || fail "$4 not up after ${5:-30} s: $(tail -n 3 "$2" 2>/dev/null)"
        sleep 0.05
        _h_n=$((_h_n + 1))
    done
}

# Clusters for the elasticity tests: a coordinator, servers and workers
# started one by one (so that a test can kill, add and restart them), each
# logging into $CL/NAME.log. $A holds the options shared by every process.
# cl_init NAME WORKERS: free ports for the coordinator (CLC), its HTTP (CLH)
# and the workers' ring (CLWS); each server gets its own when first started
# (cl_port I), and keeps it across restarts.
cl_init() {
    CL=$WORK/$1
    mkdir -p "$CL"
    CLW=$2
    free_ports $((CLW + 2))
    CLC=tcp://127.0.0.1:$P1
    CLH=127.0.0.1:$P2
    CLWS=""
    if [ "$CLW" -gt 1 ]; then
        _ci_i=0
        for _ci_p in $PORTS; do
            [ $_ci_i -ge 2 ] && CLWS="$CLWS${CLWS:+,}tcp://127.0.0.1:$_ci_p"
            _ci_i=$((_ci_i + 1))
        done
    fi
    CL_PIDS=""
    CL_SERVER_PORTS=""
}
# cl_port I: the port of server I (picked once per cluster).
cl_port() {
    eval "CLSP=\${CLSP_$1:-}"
    if [ -z "$CLSP" ]; then
        free_ports 1
        CLSP=$P1
        eval "CLSP_$1=$CLSP"
    fi
}
# cl_server_endpoints I J ...: CLSV = their endpoints, comma-separated.
cl_server_endpoints() {
    CLSV=""
    for _se_i in "$@"; do
        cl_port "$_se_i"
        CLSV="$CLSV${CLSV:+,}tcp://127.0.0.1:$CLSP"
    done
}
cl_coord() { # [OPTIONS]: waits until it is up
    start_lines=$(count "dashboard at" "$CL/coordinator.log")
    MOE_HTTP_TOKEN=secret "$BIN/moe-coordinator" $A --keys "$KEYS" --workers "$CLWS" \
        --coordinator "$CLC" --http "$CLH" "$@" >>"$CL/coordinator.log" 2>&1 &
    CPID=$!
    CL_PIDS="$CL_PIDS $!"
    _h_n=0
    until [ "$(count "dashboard at" "$CL/coordinator.log")" -gt "$start_lines" ]; do
        kill -0 "$CPID" 2>/dev/null || died "$CPID" "the coordinator" "$CL/coordinator.log"
        [ $_h_n -lt 600 ] || fail "the coordinator is not up after 30 s"
        sleep 0.05
        _h_n=$((_h_n + 1))
    done
}
# cl_server I [OPTIONS]: serves on its port; waits until it registered.
cl_server() {
    cl_server_bg "$@"
    _h_n=0
    until [ "$(count "moe-server: server .* serving on" "$CL/server-$1.log")" -gt "$start_lines" ]; do
        kill -0 "$SPID" 2>/dev/null || died "$SPID" "server $1" "$CL/server-$1.log"
        [ $_h_n -lt 600 ] || fail "server $1 is not up after 30 s"
        sleep 0.05
        _h_n=$((_h_n + 1))
    done
}
# cl_server_bg I [OPTIONS]: the same without waiting (SPID, SPIDI).
cl_server_bg() {
    _sb_i=$1
    shift
    cl_port "$_sb_i"
    start_lines=$(count "moe-server: server .* serving on" "$CL/server-$_sb_i.log")
    "$BIN/moe-server" $A --keys "$KEYS" --workers "$CLWS" --coordinator "$CLC" \
        --bind "tcp://127.0.0.1:$CLSP" "$@" >>"$CL/server-$_sb_i.log" 2>&1 &
    SPID=$!
    eval "SPID$_sb_i=$!"
    CL_PIDS="$CL_PIDS $!"
}
# cl_worker R [OPTIONS]: waits until the coordinator saw it register.
cl_worker() {
    _cw_r=$1
    shift
    before=$(count "worker $_cw_r registered" "$CL/coordinator.log")
    "$BIN/moe-worker" $A --keys "$KEYS" --experts remote --workers "$CLWS" --coordinator "$CLC" \
        --rank "$_cw_r" \
        "$@" >>"$CL/worker-$_cw_r.log" 2>&1 &
    WPID=$!
    eval "WPID$_cw_r=$!"
    CL_PIDS="$CL_PIDS $!"
    _h_n=0
    until [ "$(count "worker $_cw_r registered" "$CL/coordinator.log")" -gt "$before" ]; do
        kill -0 "$WPID" 2>/dev/null || died "$WPID" "worker $_cw_r" "$CL/worker-$_cw_r.log"
        [ $_h_n -lt 600 ] || fail "worker $_cw_r did not register within 30 s"
        sleep 0.05
        _h_n=$((_h_n + 1))
    done
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
# Elastic runs compared with an undisturbed one (test_elastic, long_hmoe_elastic).
# The test defines base_args NAME, which sets A for the cluster NAME with
# --checkpoint-dir $WORK/NAME/ck and --steps $K.
# cl_export_of NAME: $WORK/NAME.export.safetensors from its last checkpoint.
cl_export_of() {
    "$BIN/moectl" export "$WORK/$1/ck" "$WORK/$1.export.safetensors" >/dev/null ||
        fail "$1: moectl export of its last checkpoint failed"
}
# cl_same_as_base NAME WHAT: its export is that of the cluster "base", and
# worker 0 did all K steps.
cl_same_as_base() {
    cl_export_of "$1"
    cmp -s "$WORK/base.export.safetensors" "$WORK/$1.export.safetensors" ||
        fail "$2: the export at step $K differs from the undisturbed run"
    grep -q "^step *$K/$K" "$CL/worker-0.log" || fail "$2: worker 0 did not finish"
}
# cl_start_pair NAME [OPTION...]: coordinator (expecting servers 0 and 1 as
# its ids 0 and 1), servers 0 and 1, worker 0; the OPTIONs go to every
# process, after base_args' (a later flag wins).
cl_start_pair() {
    base_args "$1"
    _sp_name=$1
    shift
    [ $# -gt 0 ] && A="$A $*"
    cl_init "$_sp_name" 1
    cl_server_endpoints 0 1
    cl_coord --servers "$CLSV"
    cl_server 0
    cl_server 1
    cl_worker 0
}
# cl_finish: waits for worker 0, stops the rest.
cl_finish() {
    wait "$WPID0" || fail "$CL: worker 0 failed: $(tail -n 3 "$CL/worker-0.log")"
    cl_stop
}
# mt_tiny K: MT = the options of a tiny translation model (issue 19) trained
# K steps on the first 200 pairs of the bundled corpus, in $WORK.
mt_tiny() {
    head -n 200 "$IT_DIR/../../data/bible-en-es/train.en" >"$WORK/train.en"
    head -n 200 "$IT_DIR/../../data/bible-en-es/train.es" >"$WORK/train.es"
    MT="--task translate --src-train $WORK/train.en --tgt-train $WORK/train.es --src-valid= \
--d-model 16 --d-hidden 24 --n-experts 4 --k 2 --batch 8 --steps $1 --warmup 5 --lr 0.01 \
--threads 1 --src-vocab-max 400 --tgt-vocab-max 400 --max-len 150"
}
