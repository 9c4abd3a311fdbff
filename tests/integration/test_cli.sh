# One command-line grammar for every binary: --help lists only the
# program's own options, grouped; --flag=value and --flag value; an unknown
# flag names the nearest one; numbers are validated; usage errors exit 2,
# failures 1 (moectl's own grammar: test_moectl.sh). --resume takes the
# model's flags and, without --train/--valid, its recorded corpora.
make_corpora
T="--train $WORK/train.txt --valid $WORK/valid.txt"
# status WANT PATTERN CMD...: exit status WANT and PATTERN (grep -E) in its output
status() {
    want=$1
    pattern=$2
    shift 2
    "$@" >"$WORK/out.txt" 2>&1
    got=$?
    [ "$got" = "$want" ] || fail "$*: exit $got, expected $want: $(head -c 300 "$WORK/out.txt")"
    grep -Eq -- "$pattern" "$WORK/out.txt" ||
        fail "$*: output does not match /$pattern/: $(head -c 300 "$WORK/out.txt")"
}
for p in moe-worker moe-server moe-coordinator; do
    status 0 "Exit status: 0 done, 1 failed, 2 wrong command line" "$BIN/$p" --help
    cp "$WORK/out.txt" "$WORK/$p.help"
    status 2 "unknown option --n-exprets \(did you mean --n-experts\?\)" "$BIN/$p" --n-exprets 4
    status 2 "--steps: expected an integer, got \"abc\"" "$BIN/$p" --steps=abc
    status 2 "--lr: -1 is out of range" "$BIN/$p" --lr -1
    status 2 "unexpected argument \"extra\"" "$BIN/$p" --steps 3 extra
    status 2 "--log-level: expected debug, info, warn or error" "$BIN/$p" --log-level=loud
    echo "  ok: $p: --help, a suggestion, bad numbers, extra arguments: exit 2"
done
has() { grep -q -- "$2" "$WORK/$1.help" || fail "$1 --help does not list $2"; }
hasnt() { ! grep -q -- "$2" "$WORK/$1.help" || fail "$1 --help lists $2, not its option"; }
has moe-worker "--dropout"
has moe-worker "--resume"
hasnt moe-worker "--http-token-file"
hasnt moe-worker "--bind "
has moe-server "--bind"
has moe-server "--expert-beta2"
hasnt moe-server "--dropout"
hasnt moe-server "--http "
has moe-coordinator "--http-token-file"
has moe-coordinator "--min-servers"
hasnt moe-coordinator "--dropout"
hasnt moe-coordinator "--resume"
grep -q "^Model:" "$WORK/moe-worker.help" || fail "moe-worker --help is not grouped"
echo "  ok: each --help lists its program's options only, grouped"
# both spellings of a value, and a runtime failure exits 1
status 0 "validation perplexity" "$BIN/moe-worker" --train="$WORK/train.txt" --valid "$WORK/valid.txt" \
    $TINY --steps=3 --log-level=info
status 1 "nope.txt: cannot open" "$BIN/moe-worker" --train "$WORK/nope.txt" $TINY --steps 1
status 2 "is on TCP, which needs the cluster's keys" "$BIN/moe-server" --servers tcp://127.0.0.1:9
status 2 "--coordinator: the address to bind is missing" "$BIN/moe-coordinator" --keys "$KEYS"
echo "  ok: --flag=value and --flag value; a missing corpus exits 1, configurations 2"
# --resume takes the model from the checkpoint: without the shape flags the
# run goes on as it would with them, to the same bytes (--threads is the
# machine's choice, never taken from a checkpoint)
"$BIN/moe-worker" $T $TINY --steps 4 --checkpoint-dir "$WORK/ck0" >/dev/null 2>&1 ||
    fail "training the checkpoint to resume"
cp -r "$WORK/ck0" "$WORK/ck1"
"$BIN/moe-worker" $T $TINY --steps 8 --resume "$WORK/ck0" --checkpoint-dir "$WORK/ck0" \
    >/dev/null 2>&1 || fail "resuming with the model's flags"
status 0 "resumed from .*step-00000004 at step 4" "$BIN/moe-worker" $T --steps 8 --threads 1 \
    --resume "$WORK/ck1" --checkpoint-dir "$WORK/ck1" --log-level info
cmp "$WORK/ck0/step-00000008/model.safetensors" "$WORK/ck1/step-00000008/model.safetensors" ||
    fail "a resume without the model's flags trained another model"
echo "  ok: --resume adopts the checkpoint's model: the same bytes without its flags"
# ... and, without --train and --valid, the corpora it records (here not
# the default WikiText-2: other lines, another vocabulary), saying so in
# one line: the same bytes as an uninterrupted run. When they are gone, one
# sentence names the file and asks for --train.
mkdir "$WORK/corp"
sed -n 401,700p "$DATA/wiki.train.tokens" >"$WORK/corp/tr.txt"
sed -n 61,120p "$DATA/wiki.valid.tokens" >"$WORK/corp/va.txt"
TR=$(readlink -f "$WORK/corp/tr.txt")
VA=$(readlink -f "$WORK/corp/va.txt")
C2="--train $WORK/corp/tr.txt --valid $WORK/corp/va.txt"
"$BIN/moe-worker" $C2 $TINY --steps 8 --checkpoint-dir "$WORK/ra" >/dev/null 2>&1 || fail "the uninterrupted run"
"$BIN/moe-worker" $C2 $TINY --steps 4 --checkpoint-dir "$WORK/rb" >/dev/null 2>&1 || fail "the first 4 steps"
status 0 "resumed from .*step-00000004 at step 4" "$BIN/moe-worker" --steps 8 --threads 1 \
    --resume "$WORK/rb" --checkpoint-dir "$WORK/rb" --log-level info
said="I moe-worker: training on the corpora recorded in $WORK/rb/step-00000004: --train $TR, --valid $VA (give --train and --valid to train on others)"
[ "$(grep -cF "$said" "$WORK/out.txt")" = 1 ] || fail "--resume without --train does not say which corpora: $(head -c 600 "$WORK/out.txt")"
cmp "$WORK/ra/step-00000008/model.safetensors" "$WORK/rb/step-00000008/model.safetensors" ||
    fail "a resume on the recorded corpora trained another model"
mv "$WORK/corp" "$WORK/corp-gone"
status 1 "" "$BIN/moe-worker" --steps 8 --threads 1 --resume "$WORK/rb/step-00000004" \
    --checkpoint-dir "$WORK/rc"
[ "$(cat "$WORK/out.txt")" = "moe-worker: error: $WORK/rb/step-00000004 was trained on $TR, which does not exist here: give --train (and --valid) with the corpus to train on" ] ||
    fail "--resume of a checkpoint whose corpus is gone: $(cat "$WORK/out.txt")"
[ -e "$WORK/rc" ] && fail "the refused resume created its checkpoint folder"
echo "  ok: --resume without --train takes the recorded corpora (one line; bytes of an uninterrupted run); when gone: $(cut -c1-80 "$WORK/out.txt")..."
# A SIGTERM while a daemon waits for a coordinator that is not there (a
# wrong address, or it is down) stops it within one "still trying" interval
# (a quarter of --timeout-ms), exit 0, with a sentence naming the coordinator.
free_ports 2
"$BIN/moe-server" $T $TINY --timeout-ms 2000 --coordinator "tcp://127.0.0.1:$P1" \
    --bind "tcp://127.0.0.1:$P2" >"$WORK/nocoord-s.log" 2>&1 &
nsp=$!
"$BIN/moe-worker" $T $TINY --timeout-ms 2000 --experts remote --coordinator "tcp://127.0.0.1:$P1" \
    >"$WORK/nocoord-w.log" 2>&1 &
nwp=$!
wait_up $nsp "$WORK/nocoord-s.log" "cannot reach the coordinator .* still trying" "server" 10
wait_up $nwp "$WORK/nocoord-w.log" "cannot reach the coordinator .* still trying" "worker" 10
kill -TERM $nsp $nwp
wait $nsp || fail "the server waiting for its coordinator did not exit 0 after SIGTERM: $(tail -n 2 "$WORK/nocoord-s.log")"
wait $nwp || fail "the worker waiting for its coordinator did not exit 0 after SIGTERM: $(tail -n 2 "$WORK/nocoord-w.log")"
for f in s w; do
    grep -q "stopped by a signal after [0-9]* s of waiting for the coordinator at tcp://127.0.0.1:$P1" \
        "$WORK/nocoord-$f.log" || fail "no sentence on stopping: $(tail -n 2 "$WORK/nocoord-$f.log")"
done
echo "  ok: SIGTERM stops a server and a worker waiting for an absent coordinator: exit 0, one sentence"
# A SIGTERM at the start, before the program's own handlers (the BLAS
# kernels' self-test runs first; a constructor holds the signal back from
# before main: sent once /proc shows it blocked): it waits, then the usual
# stop follows, never the default's silent death (exit 143).
free_ports 3
"$BIN/moe-worker" $T $TINY --steps 1000 --final-model "$WORK/early" >"$WORK/early-w.out" 2>"$WORK/early-w.log" &
ewp=$!
"$BIN/moe-server" $T $TINY --timeout-ms 2000 --coordinator "tcp://127.0.0.1:$P1" \
    --bind "tcp://127.0.0.1:$P2" >"$WORK/early-s.log" 2>&1 &
esp=$!
"$BIN/moe-coordinator" $T $TINY --coordinator "tcp://127.0.0.1:$P1" --http "127.0.0.1:$P3" \
    --checkpoint-dir "$WORK/early-ck" >"$WORK/early-c.log" 2>&1 &
ecp=$!
held() { # PID: the program runs (not the shell's child before exec) and blocks SIGTERM (bit 14)
    case $(readlink "/proc/$1/exe" 2>/dev/null) in */moe-*) ;; *) return 1 ;; esac
    m=$(sed -n 's/^SigBlk:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null)
    [ -n "$m" ] && [ $((0x$m & 0x4000)) -ne 0 ]
}
for p in $ewp $esp $ecp; do
    n=0
    until held $p; do
        [ $n -lt 2000 ] || fail "process $p never holds SIGTERM back"
        n=$((n + 1))
    done
done
kill -TERM $ewp $esp $ecp
wait $ewp || fail "a worker signalled at its start exited $?: $(tail -n 2 "$WORK/early-w.log")"
grep -q "^stopped at step [0-9]* of 1000 (stopped by a signal)" "$WORK/early-w.out" ||
    fail "a worker signalled at its start says nothing: $(cat "$WORK/early-w.out")"
wait $esp || fail "a server signalled at its start exited $?: $(tail -n 2 "$WORK/early-s.log")"
grep -Eq "stopped by a signal|the operator stopped the cluster" "$WORK/early-s.log" || fail "a server signalled at its start says nothing: $(cat "$WORK/early-s.log")"
wait $ecp || fail "a coordinator signalled at its start exited $?: $(tail -n 2 "$WORK/early-c.log")"
grep -q "^moe-coordinator: stopped: " "$WORK/early-c.log" ||
    fail "a coordinator signalled at its start says nothing: $(tail -n 2 "$WORK/early-c.log")"
echo "  ok: SIGTERM at the start (before main's handlers): worker, server and coordinator stop the usual way, exit 0, one sentence each"
