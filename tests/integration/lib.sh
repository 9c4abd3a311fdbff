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

# wait_for_step LOG N: waits (at most 10 s) until a progress line of step N
# shows in LOG.
wait_for_step() {
    n=0
    until grep -q "^step *$2/" "$1" 2>/dev/null || [ $n -gt 200 ]; do
        sleep 0.05
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
