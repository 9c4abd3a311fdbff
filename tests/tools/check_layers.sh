#!/bin/sh
# The layering rule of the tree (docs/ARCHITECTURE.md), checked on the
# sources: every #include "..." in a part must name a header of common/, the
# generated protobuf header, or a header of the part itself. common/ knows no
# process. A part may declare parts it uses (PART:USED,...): their headers
# are allowed too. Prints FILE:LINE and what is wrong for each violation and
# exits 1; prints one summary line and exits 0 when the tree is clean.
# Usage: check_layers.sh PART_DIR[:USED,...]...   (the first is common/)
set -u
specs="$*"
parts=""
for spec in $specs; do parts="$parts ${spec%%:*}"; done
for spec in $specs; do
    part=${spec%%:*}
    uses=""
    [ "$spec" != "$part" ] && uses=$(echo "${spec#*:}" | tr ',' ' ')
    for f in "$part"/*.c "$part"/*.h; do
        [ -f "$f" ] || continue
        grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" | while IFS= read -r hit; do
            line=${hit%%:*}
            hdr=$(echo "$hit" | sed 's/.*include[[:space:]]*"\([^"]*\)".*/\1/')
            [ "$hdr" = moe.pb-c.h ] && continue
            case $hdr in */*)
                echo "$f:$line: includes \"$hdr\" by a path: name the header alone, from common/ or $part/"
                continue ;;
            esac
            [ -f "$part/$hdr" ] && continue
            [ -f "common/$hdr" ] && continue
            used=no
            for u in $uses; do [ -f "$u/$hdr" ] && used=yes; done
            [ $used = yes ] && continue
            owner=""
            for other in $parts; do
                [ -f "$other/$hdr" ] && owner=$other
            done
            if [ -n "$owner" ]; then
                echo "$f:$line: includes \"$hdr\" of $owner/: $part/ may include only common/${uses:+, $uses/} and its own headers"
            else
                echo "$f:$line: includes \"$hdr\", which is in no part of the tree"
            fi
        done
    done
done >"${TMPDIR:-/tmp}/check-layers.$$"
if [ -s "${TMPDIR:-/tmp}/check-layers.$$" ]; then
    cat "${TMPDIR:-/tmp}/check-layers.$$"
    n=$(wc -l <"${TMPDIR:-/tmp}/check-layers.$$")
    rm -f "${TMPDIR:-/tmp}/check-layers.$$"
    echo "check-layers: $n include(s) cross the layers" >&2
    exit 1
fi
rm -f "${TMPDIR:-/tmp}/check-layers.$$"
count=0
for part in $parts; do
    for f in "$part"/*.c "$part"/*.h; do [ -f "$f" ] && count=$((count + 1)); done
done
echo "check-layers: $count files in $(echo $parts | wc -w) parts, every include within its layer"
