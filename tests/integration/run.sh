#!/bin/sh
# Runs every tests/integration/test_*.sh (with MOE_IT_KIND=long: every
# long_*.sh, the slower ones of make test-long) against one build folder, each in a
# fresh temporary folder and its own process group, with a time limit.
# Usage: run.sh BUILD_DIR [NAME...]   (NAME: run only test_NAME.sh;
# MOE_IT_SKIP="NAME...": all but these)
# Ends with the line "N passed, N failed".
set -u
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BIN=$(cd "$build/bin" && pwd)
DATA="$top/data/wikitext-2"
IT_DIR=$here
ARTIFACTS=$(cd "$build" && pwd)/test-artifacts
export BIN DATA IT_DIR ARTIFACTS
pass=0
failed=0
shift
only="$*"
kind=${MOE_IT_KIND:-test}
for t in "$here"/"$kind"_*.sh; do
    name=$(basename "$t" .sh)
    if echo " ${MOE_IT_SKIP:-} " | grep -q " ${name#"$kind"_} "; then
        continue
    fi
    if [ -n "$only" ] && ! echo " $only " | grep -q " ${name#"$kind"_} "; then
        continue
    fi
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/moe-it-XXXXXX")
    export WORK
    echo "== $name"
    # Its own process group, so that whatever a failing test leaves running
    # is killed before the next test starts.
    t0=$(date +%s)
    # in its folder: what a test leaves in the working directory goes with it
    setsid timeout 600 sh -c "cd '$WORK' && . '$here/lib.sh'; . '$t'" &
    pid=$!
    if wait $pid; then
        pass=$((pass + 1))
        echo "PASS $name ($(($(date +%s) - t0)) s)"
    else
        failed=$((failed + 1))
        echo "FAIL $name ($(($(date +%s) - t0)) s)"
    fi
    kill -9 -$pid 2>/dev/null
    rm -rf "$WORK"
done
echo "integration: $pass passed, $failed failed"
[ "$failed" -eq 0 ]
