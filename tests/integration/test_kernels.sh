# The BLAS kernel choice on whatever machine this runs on (machines differ,
# and some set OPENBLAS_CORETYPE): prints what it found (CPU, the
# environment, OpenBLAS's own choice) and what the programs chose, then
# checks the rules of DESIGN §4 and §10:
# * every process logs exactly one "BLAS kernels:" line (set, why, sgemm
#   rate); an OPENBLAS_CORETYPE in the environment is kept, with every
#   option; auto never picks a set below OpenBLAS's own choice;
# * a wrong --blas-kernels or --recompute is one sentence and exit 2;
# * the set is recorded in reports and checkpoints; resuming with another
#   set warns naming both, and --strict-determinism refuses;
# * joining a cluster with another set: the coordinator warns naming both,
#   and refuses under --strict-determinism;
# * --recompute experts and all train the same bytes as none.
make_corpora
A="--train $WORK/train.txt --valid= $TINY --log-level info"
kline() { grep -o 'BLAS kernels: .*' "$1"; }
kset() { kline "$1" | sed 's/^BLAS kernels: \([A-Za-z0-9_]*\) .*/\1/'; }

flags=$(grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' |
    grep -E '^(avx|avx2|fma|avx512f|avx512bw|avx512vl|avx512_bf16)$' | tr '\n' ' ')
echo "  found: $(grep -m 1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //'); flags: ${flags:-none}"
echo "  found: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-(unset)}"

"$BIN/moe-worker" $A --steps 2 --blas-kernels keep >/dev/null 2>"$WORK/keep.log" ||
    fail "--blas-kernels keep: $(cat "$WORK/keep.log")"
"$BIN/moe-worker" $A --steps 2 --report "$WORK/auto.json" --checkpoint-dir "$WORK/ck" \
    >/dev/null 2>"$WORK/auto.log" || fail "--blas-kernels auto: $(cat "$WORK/auto.log")"
for m in keep auto; do
    [ "$(count 'BLAS kernels:' "$WORK/$m.log")" -eq 1 ] ||
        fail "$m: want one BLAS kernels line: $(cat "$WORK/$m.log")"
    kline "$WORK/$m.log" | grep -Eq 'self-test passed\), sgemm [0-9.]+ GFLOP/s on [0-9]+ threads$' ||
        fail "$m: the line lacks the self-test or the rate: $(kline "$WORK/$m.log")"
done
own=$(kset "$WORK/keep.log")
chosen=$(kset "$WORK/auto.log")
echo "  found: OpenBLAS's own choice: $(kline "$WORK/keep.log")"
echo "  chose: $(kline "$WORK/auto.log")"
if [ -n "${OPENBLAS_CORETYPE+x}" ]; then
    [ "$chosen" = "$own" ] || fail "OPENBLAS_CORETYPE is set, yet auto chose $chosen, not $own"
    kline "$WORK/auto.log" | grep -q "OPENBLAS_CORETYPE=.* is set in the environment" ||
        fail "the line does not say OPENBLAS_CORETYPE is set: $(kline "$WORK/auto.log")"
    echo "  ok: the environment's OPENBLAS_CORETYPE is kept"
elif [ "$chosen" != "$own" ]; then
    kline "$WORK/auto.log" | grep -q "OpenBLAS chose $own; the CPU has " ||
        fail "switched from $own to $chosen without saying why: $(kline "$WORK/auto.log")"
    echo "  ok: auto switched from $own to $chosen"
else
    echo "  ok: auto kept OpenBLAS's own choice $own"
fi
# a set by name: the program re-executes itself with it (when the
# environment does not pin one and the CPU runs it)
if [ -z "${OPENBLAS_CORETYPE+x}" ] && echo " $flags" | grep -q ' avx2 '; then
    "$BIN/moe-worker" $A --steps 1 --blas-kernels haswell >/dev/null 2>"$WORK/name.log" ||
        fail "--blas-kernels haswell: $(cat "$WORK/name.log")"
    [ "$(kset "$WORK/name.log")" = Haswell ] || fail "--blas-kernels haswell: $(kline "$WORK/name.log")"
    echo "  ok: --blas-kernels haswell: $(kline "$WORK/name.log")"
fi

# wrong values: one sentence, exit 2, before anything else
for p in moe-worker moe-server moe-coordinator; do
    for bad in "--blas-kernels turbo" "--recompute sometimes"; do
        # otherwise complete command lines: the sentence must be about the value
        "$BIN/$p" $bad --train "$WORK/train.txt" --coordinator tcp://127.0.0.1:1 --keys "$KEYS" \
            >"$WORK/bad.out" 2>"$WORK/bad.err"
        st=$?
        [ $st -eq 2 ] || fail "$p $bad: exit $st, want 2: $(cat "$WORK/bad.err")"
        [ "$(wc -l <"$WORK/bad.err")" -eq 1 ] || fail "$p $bad: not one line: $(cat "$WORK/bad.err")"
        grep -q -- "error: ${bad%% *}: .*${bad#* }" "$WORK/bad.err" ||
            fail "$p $bad: the sentence does not name the option and value: $(cat "$WORK/bad.err")"
    done
done
echo "  ok: wrong values exit 2 with one sentence: $(cat "$WORK/bad.err")"

# a user's OPENBLAS_CORETYPE is kept, whatever the option asks (x86 only)
other=Prescott
[ "$chosen" = Prescott ] && other=Core2
if [ -n "$flags" ]; then
    OPENBLAS_CORETYPE=$other "$BIN/moe-worker" $A --steps 1 --blas-kernels auto >/dev/null \
        2>"$WORK/env.log" || fail "OPENBLAS_CORETYPE=$other: $(cat "$WORK/env.log")"
    [ "$(kset "$WORK/env.log")" = "$other" ] || fail "OPENBLAS_CORETYPE=$other not kept: $(kline "$WORK/env.log")"
    echo "  ok: OPENBLAS_CORETYPE=$other kept: $(kline "$WORK/env.log")"
fi

# recorded in the report and the checkpoint
grep -q "\"blas_kernels\": \"$chosen\"" "$WORK/auto.json" || fail "the report does not name $chosen"
meta=$(/usr/bin/python3 -c '
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
print(json.loads(raw[8:8 + n])["__metadata__"].get("blas_kernels", ""))' \
    "$WORK/ck/step-00000002/optim.safetensors") || fail "cannot read the checkpoint's metadata"
[ "$meta" = "$chosen" ] || fail "the checkpoint records \"$meta\", not $chosen"
echo "  ok: report and checkpoint record $chosen"

# resuming with another set: a warning naming both; strict: refused
if [ -n "$flags" ]; then
    OPENBLAS_CORETYPE=$other "$BIN/moe-worker" $A --steps 4 --resume "$WORK/ck" \
        --checkpoint-dir "$WORK/ck" >/dev/null 2>"$WORK/resume.log" ||
        fail "resume with $other: $(cat "$WORK/resume.log")"
    grep -q "W moe-worker: .*computed with the BLAS kernels $chosen and this process runs $other" \
        "$WORK/resume.log" || fail "no warning naming $chosen and $other: $(cat "$WORK/resume.log")"
    echo "  ok: $(grep -o 'step-00000002/optim.safetensors was computed.*' "$WORK/resume.log")"
    expect_fail "resume with $other under --strict-determinism" \
        "computed with the BLAS kernels $chosen and this process runs $other.*strict-determinism" \
        env OPENBLAS_CORETYPE=$other "$BIN/moe-worker" $A --steps 4 --resume "$WORK/ck/step-00000002" \
        --strict-determinism
fi

# recompute: the same bytes
for r in none experts all; do
    "$BIN/moe-worker" $A --log-level warn --steps 6 --recompute $r --checkpoint-dir "$WORK/rc-$r" \
        >/dev/null || fail "--recompute $r"
done
for r in experts all; do
    for f in model.safetensors optim.safetensors; do
        cmp "$WORK/rc-none/step-00000006/$f" "$WORK/rc-$r/step-00000006/$f" ||
            fail "--recompute $r changed $f"
    done
done
echo "  ok: --recompute experts and all train the same bytes as none"

# a cluster: a member with another set is warned about, or refused
[ -n "$flags" ] || { echo "  SKIP: cluster checks need an x86 CPU (OPENBLAS_CORETYPE=$other)"; return 0; }
for strict in no yes; do
    S=""
    [ $strict = yes ] && S=--strict-determinism
    A="--train $WORK/train.txt --valid= $TINY --log-level info --steps 4 $S"
    cl_init "cl-$strict" 1
    cl_server_endpoints 0
    cl_coord --servers "$CLSV"
    cl_server 0
    OPENBLAS_CORETYPE=$other "$BIN/moe-worker" $A --experts remote --coordinator "$CLC" --rank 0 \
        >"$CL/worker-0.log" 2>&1
    st=$?
    for p in coordinator server-0; do
        [ "$(count 'BLAS kernels:' "$CL/$p.log")" -eq 1 ] ||
            fail "$p: want one BLAS kernels line: $(grep 'BLAS kernels' "$CL/$p.log")"
        [ "$(kset "$CL/$p.log")" = "$chosen" ] || fail "$p chose $(kset "$CL/$p.log"), not $chosen"
    done
    if [ $strict = no ]; then
        [ $st -eq 0 ] || fail "a worker on $other did not train: $(tail -n 3 "$CL/worker-0.log")"
        grep -q "W moe-coordinator: worker 0 runs the BLAS kernels $other and the cluster $chosen" \
            "$CL/coordinator.log" || fail "no warning: $(tail -n 5 "$CL/coordinator.log")"
        echo "  ok: $(grep -o 'worker 0 runs the BLAS kernels.*' "$CL/coordinator.log" | head -n 1)"
    else
        [ $st -ne 0 ] || fail "--strict-determinism: a worker on $other was let in"
        grep -q "worker 0 runs the BLAS kernels $other and the cluster $chosen.*refused" \
            "$CL/worker-0.log" || fail "no refusal naming both: $(tail -n 3 "$CL/worker-0.log")"
        echo "  ok: refused: $(grep -o 'worker 0 runs the BLAS kernels.*' "$CL/worker-0.log" | head -n 1)"
    fi
    cl_kill_all
done
