#!/bin/sh
# Records the golden files (tests/golden/*.canon and SHA256SUMS) from the
# build in BUILD_DIR. Only for a change of the numbers on purpose: the
# golden test exists to show that refactors change none of them.
# Usage: sh tests/golden/record.sh BUILD_DIR
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BIN=$(cd "${1:-build}/bin" && pwd)
DATA="$top/data/wikitext-2"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moe-golden-XXXXXX")
GOLDEN_DIR=$here
trap 'rm -rf "$WORK"' EXIT
. "$top/tests/integration/lib.sh"
. "$here/runs.sh"
make_corpora
for name in $GOLDEN_NAMES; do
    golden_run "$name" "$here/$name.canon"
    echo "recorded $name: $(wc -c <"$here/$name.canon") bytes"
done
(cd "$here" && sha256sum *.canon >SHA256SUMS)
cat "$here/SHA256SUMS"
