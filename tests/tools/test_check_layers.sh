#!/bin/sh
# The checker of the layering rule must catch what it promises: run on a
# copy of the parts' headers with one forbidden include planted in each
# direction, it must exit 1 and name each file and line; on the clean copy
# it must exit 0; a declared use (PART:USED) is allowed, in that direction
# only. Usage: test_check_layers.sh PART_DIR[:USED,...]...
set -u
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/layers-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for spec in "$@"; do
    part=${spec%%:*}
    mkdir -p "$tmp/$part"
    cp "$part"/*.h "$tmp/$part/" 2>/dev/null
done
cd "$tmp" || exit 1
sh "$here/check_layers.sh" "$@" >out.txt 2>&1 || {
    echo "test_check_layers: the clean copy fails: $(cat out.txt)"
    exit 1
}
# a server including the trainer, a worker including the expert server,
# common including the coordinator
printf '/* a */\n#include "trainer.h"\n' >server/expert/bad1.c
printf '\n\n#include "expert_server.h"\n' >worker/bad2.c
printf '#include "coord.h"\n' >common/bad3.c
printf '#include "nowhere.h"\n' >worker/bad4.c
printf '#include "../../worker/trainer.h"\n' >server/coordinator/bad5.c
# the declared use (moectl runs the worker's model) holds one way only
printf '#include "model.h"\n' >server/moectl/ok6.c
printf '#include "moectl_export.h"\n' >worker/bad6.c
if sh "$here/check_layers.sh" "$@" >out.txt 2>&1; then
    echo "test_check_layers: forbidden includes were not caught"
    exit 1
fi
for want in 'server/expert/bad1.c:2: includes "trainer.h" of worker/' \
    'worker/bad2.c:3: includes "expert_server.h" of server/expert/' \
    'common/bad3.c:1: includes "coord.h" of server/coordinator/' \
    'worker/bad4.c:1: includes "nowhere.h", which is in no part' \
    'server/coordinator/bad5.c:1: includes "../../worker/trainer.h" by a path' \
    'worker/bad6.c:1: includes "moectl_export.h" of server/moectl/'; do
    grep -qF "$want" out.txt || {
        echo "test_check_layers: missing \"$want\" in: $(cat out.txt)"
        exit 1
    }
done
if grep -q ok6.c out.txt; then
    echo "test_check_layers: the declared use moectl -> worker was refused: $(cat out.txt)"
    exit 1
fi
echo "test_check_layers: 6 planted includes caught with file and line, the declared use allowed"
