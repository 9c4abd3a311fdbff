# moectl's command line, against a live coordinator (no servers needed):
#   - the address as HOST:PORT, http://HOST:PORT and http://HOST:PORT/, with
#     --http VALUE or --http=VALUE, options before or after the command
#   - usage errors exit 2 with one sentence (unknown options and commands
#     suggest the nearest; numbers are validated, never a silent 0)
#   - runtime failures exit 1 with one sentence, never raw JSON; --json
#     prints the coordinator's JSON
#   - at the end a server and a worker train 5 steps without a checkpoint
#     folder (the cluster stays "running"): the worker tells its final
#     validation, the writing of its final model and its end; moectl status
#     shows it done, never the cluster stalled (--stall-heartbeats 2)
make_corpora
free_ports 4
C="tcp://127.0.0.1:$P1"
HTTP="127.0.0.1:$P2"
A="--train $WORK/train.txt --valid $WORK/valid.txt $TINY --steps 5 --servers tcp://127.0.0.1:$P3 \
--coordinator $C"
"$BIN/moe-coordinator" $A --http "$HTTP" --http-token secret --stall-heartbeats 2 --log-level info \
    >"$WORK/coord.out" 2>&1 &
coord=$!
wait_up $coord "$WORK/coord.out" "dashboard at" "the coordinator"
M="$BIN/moectl"
# expect RC PATTERN ARGS...: exit status RC and PATTERN (grep -E) in stdout+stderr
expect() {
    want=$1
    pattern=$2
    shift 2
    "$M" "$@" >"$WORK/out.txt" 2>&1
    got=$?
    [ "$got" = "$want" ] || fail "moectl $*: exit $got, expected $want: $(head -c 300 "$WORK/out.txt")"
    grep -Eq -- "$pattern" "$WORK/out.txt" ||
        fail "moectl $*: output does not match /$pattern/: $(head -c 300 "$WORK/out.txt")"
    echo "  ok: moectl $* -> $got: $(head -n 1 "$WORK/out.txt")"
}
# one sentence: a single line on stderr, no JSON
one_sentence() {
    [ "$(wc -l <"$WORK/out.txt")" -eq 1 ] || fail "moectl $*: more than one line: $(cat "$WORK/out.txt")"
    ! grep -q '[{}]' "$WORK/out.txt" || fail "moectl $*: raw JSON in the error: $(cat "$WORK/out.txt")"
}
for addr in "$HTTP" "http://$HTTP" "http://$HTTP/"; do
    expect 0 "^epoch 0, " --http "$addr" status
    expect 0 "^epoch 0, " status --http="$addr"
done
expect 0 '"servers"' --json --http "$HTTP" status
expect 0 "^EXPERT +SERVER" experts --http "$HTTP" --top 3 --sort importance
expect 0 "^EXPERT +SERVER +ROWS ROUTED +SHARE +TOTAL ROUTED +IMPORTANCE +LOAD" experts --http "$HTTP" --top=3 --sort=rows
expect 0 "sorted by rows routed \\(over the run\\)" experts --http "$HTTP" --sort total
expect 0 "sorted by Load \\(last step\\)" experts --http "$HTTP" --sort=load
# usage errors: 2, nothing sent
expect 2 "unknown command \"stauts\" \(did you mean status\?\)" --http "$HTTP" stauts
expect 2 "unknown option --htp \(did you mean --http\?\)" --htp "$HTTP" status
one_sentence --htp status
expect 2 "unknown option --bogus-flag" status --bogus-flag
expect 2 "--top: expected a number of rows from 1, got \"abc\"" experts --top abc
expect 2 "--top: expected a number of rows from 1, got \"0\"" experts --top=0
expect 2 "--sort: expected rows, total, load or importance" experts --sort lod
expect 2 "--http: expected HOST:PORT or http://HOST:PORT" --http nocolon status
expect 2 "--http: only http:// addresses" --http "https://$HTTP" status
expect 2 "--http: the port must be a number from 1 to 65535" --http 127.0.0.1:99999 status
expect 2 "--http: missing value" status --http
expect 2 "drain needs more arguments; usage: moectl drain SERVER" drain
expect 2 "drain: SERVER must be a server id" --http "$HTTP" --token secret drain x
expect 2 "export needs more arguments" export "$WORK/ck"
expect 2 "status takes fewer arguments" status now
expect 2 "free-ports: the count must be a number from 1 to 1000" free-ports 3x
expect 2 "^usage: moectl"
expect 0 "^usage: moectl" --help
# runtime failures: 1, one sentence
expect 1 "moectl: checkpoint: a valid bearer token \(http_token\) is required \(HTTP 401\)" \
    --http "$HTTP" checkpoint
one_sentence checkpoint
expect 1 '"error"' --json --http "$HTTP" checkpoint
expect 1 "moectl: drain: there is no server 7 .*\(HTTP 409\)" --http "$HTTP" --token secret drain 7
one_sentence drain 7
expect 1 "cannot connect to the coordinator at 127.0.0.1:$P4" --http "127.0.0.1:$P4" status
one_sentence status
# an HTTP server that is not the coordinator: one line naming the likely mistake
mkdir "$WORK/www"
(cd "$WORK/www" && exec /usr/bin/python3 -m http.server --bind 127.0.0.1 "$P4") >/dev/null 2>&1 &
www=$!
n=0
while "$M" --http "127.0.0.1:$P4" status 2>&1 | grep -q "cannot connect"; do
    [ $n -lt 100 ] || { kill $www; fail "python3 -m http.server did not start"; }
    sleep 0.05
    n=$((n + 1))
done
expect 1 "moectl: /api/v1/cluster: HTTP 404 without the coordinator's JSON error \(is this the coordinator's --http address\?\)" \
    --http "127.0.0.1:$P4" status
one_sentence status
kill $www
wait $www 2>/dev/null
expect 1 "no such directory" verify "$WORK/nothing"
# the token from a file or the environment, never needed on the command line
printf 'secret\n' >"$WORK/token"
printf 'wrong\n' >"$WORK/wrong"
expect 1 "there is no server 7 .*\(HTTP 409\)" --http "$HTTP" --token-file "$WORK/token" drain 7
expect 1 "a valid bearer token .*\(HTTP 401\)" --http "$HTTP" --token-file "$WORK/wrong" drain 7
MOE_HTTP_TOKEN=secret expect 1 "there is no server 7 .*\(HTTP 409\)" --http "$HTTP" drain 7
expect 2 "cannot read the token file" --http "$HTTP" --token-file "$WORK/none" drain 7
expect 1 "keygen: .*already exists" keygen "$KEYS"
expect 0 "wrote the cluster's keys into" keygen "$WORK/newkeys"
# a finished run without --checkpoint-dir: the worker's activities, then no stall
"$BIN/moe-server" $A --server-index 0 >"$WORK/s0.out" 2>&1 &
s0=$!
wait_up $s0 "$WORK/s0.out" "moe-server: server .* serving on" "server 0"
"$BIN/moe-worker" $A --experts remote >"$WORK/w.out" 2>&1 || { kill $coord $s0; fail "the worker: $(tail -n 2 "$WORK/w.out")"; }
said=$(sed -n 's/.* I moe-coordinator: \(worker 0 is .*\)/\1/p' "$WORK/coord.out" | tr '\n' ';')
[ "$said" = "worker 0 is validating;worker 0 is writing the final model;worker 0 is finished;" ] ||
    { kill $coord $s0; fail "the worker's activities as the coordinator heard them: $said"; }
n=0
until "$M" --json --http "$HTTP" status | grep -q '"heartbeats_since_step": *[3-9]'; do
    [ $n -lt 100 ] || { kill $coord $s0; fail "server 0 sent no heartbeats after the run"; }
    sleep 0.05
    n=$((n + 1))
done
"$M" --http "$HTTP" status >"$WORK/status.txt" 2>&1 || { kill $coord $s0; fail "moectl status"; }
grep -q "STALLED" "$WORK/status.txt" && { kill $coord $s0; fail "a finished run shows as stalled: $(cat "$WORK/status.txt")"; }
grep -Eq "^0 +(yes|no) +done +4 +[0-9]+ +[0-9.]+  \(finished\)$" "$WORK/status.txt" ||
    { kill $coord $s0; fail "moectl status does not show worker 0 done: $(cat "$WORK/status.txt")"; }
# nor in the log (a stall while loading, before the worker came, may be)
[ "$(grep -c "stalled: no step completed for [0-9]* heartbeats while running" "$WORK/coord.out")" = 0 ] ||
    { kill $coord $s0; fail "the coordinator logged a stall: $(grep stalled "$WORK/coord.out")"; }
echo "  ok: the coordinator heard: $said moectl status: $(grep -E "^0 +(yes|no) +done" "$WORK/status.txt"), not stalled"
kill -TERM $coord
wait $coord
wait $s0 || fail "server 0 exited $? after the coordinator's stop"
# the coordinator takes its token from a file or MOE_HTTP_TOKEN; an unreadable file is a usage error
"$BIN/moe-coordinator" $A --http-token-file "$WORK/none" >"$WORK/c2.out" 2>&1
[ $? -eq 2 ] && grep -q "cannot read the token file" "$WORK/c2.out" ||
    fail "an unreadable --http-token-file: $(cat "$WORK/c2.out")"
echo "  ok: moe-coordinator --http-token-file (missing): $(head -n 1 "$WORK/c2.out")"
